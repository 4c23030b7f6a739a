/* A minimal test harness: each test is a function; CHECK records failures
   with file:line and a message; SKIP ends a test as skipped. The runner
   prints one line per test and ends with "N passed, N failed, N skipped". */
#ifndef PEFT_TEST_HARNESS_H
#define PEFT_TEST_HARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stdarg.h>
#include <sys/wait.h>
#ifdef PEFT_TEST_CUDA
/* build/test-cuda-ops (`make cuda`): the suite with the library's memory through the CUDA heap, and
   the CUDA backend registered beside the CPU one when a device is there (test_backend.c) */
#define PEFT_MALLOC(n) peft_cuda_heap_alloc(n)
#define PEFT_REALLOC(p, n) peft_cuda_heap_realloc(p, n)
#define PEFT_FREE(p) peft_cuda_heap_free(p)
#endif
#include "../peft.h"
#ifdef PEFT_TEST_CUDA
/* the tests free library buffers with free(): through the heap, which tells its blocks from malloc's */
#define free(p) peft_cuda_heap_free(p)
#define realloc(p, n) peft_cuda_heap_realloc(p, n)
#endif

typedef struct { int failed, skipped; char skip_reason[256]; } th_state;
extern th_state th_cur;

#define CHECK(cond, ...) do { if (!(cond)) { th_cur.failed++; \
    fprintf(stderr, "    FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); \
    fprintf(stderr, "\n"); } } while (0)
#define REQUIRE(cond, ...) do { if (!(cond)) { CHECK(cond, __VA_ARGS__); return; } } while (0)
#define SKIP(...) do { th_cur.skipped = 1; snprintf(th_cur.skip_reason, sizeof th_cur.skip_reason, __VA_ARGS__); return; } while (0)
#define CHECK_OK(expr) do { peft_status s_ = (expr); CHECK(s_ == PEFT_OK, "%s -> %s: %s", #expr, \
    peft_status_name(s_), peft_last_error()); } while (0)
#define REQUIRE_OK(expr) do { peft_status s_ = (expr); REQUIRE(s_ == PEFT_OK, "%s -> %s: %s", #expr, \
    peft_status_name(s_), peft_last_error()); } while (0)

/* max|a-b| / max|b|: the relative error measure used throughout the tests */
double th_rel_err_f(const float *a, const float *b, long n);
double th_rel_err_fd(const float *a, const double *b, long n);
const char *th_fixtures(void);       /* tests/fixtures */
const char *th_shared(void);         /* ../shared/data, or NULL if absent */
/* ../shared/data/<rel> if that file exists, else NULL (the caller skips) */
const char *th_shared_file(const char *rel);
#define SHARED_OR_SKIP(var, rel) const char *var = th_shared_file(rel); if (!var) SKIP("%s not present in ../shared/data", rel)
const char *th_tmpdir(void);         /* a fresh per-run scratch folder */
int th_tmpdir_used(void);
void th_tmpdir_remove(void);         /* removes it (kept when PEFT_KEEP_TMP is set) */
const char *th_tmp_text(const char *name, const char *text);   /* th_tmpdir()/name holding text; its path */
int th_truncated_copy(const char *src, const char *dst, size_t drop);   /* src less its last drop bytes; 1 = done */
int th_read_ref(const char *path, const char *name, float **out, long *n); /* 1 = found */
/* A model folder of tests/fixtures/<name> against its ref.safetensors from
   transformers (tools/ref/make_*_fixtures.py): logits to 1e-4 relative (fp32
   with other summation orders: ~1e-6 seen), the loss to 1e-5 relative, every
   parameter's gradient to 1e-3 relative. extra (may be NULL) then checks what
   is particular to the model, with the model after backward. */
typedef void (*th_fixture_extra)(peft_model *m, const char *ref, const char *name);
void th_check_hf_fixture(const char *name, th_fixture_extra extra);

/* build/peft, or $PEFT_BIN */
const char *th_peft_bin(void);
/* Runs `peft ARGS` (a printf format), stdout+stderr into out; returns the exit
   status, -1 when it did not exit normally */
int th_run_peft(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Runs a shell line (a printf format); a failure is reported on stderr, not as a check */
void th_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The built-in methods, in registry order (a method a test registers has no
   fixtures). all = 0: those whose adapter sits on an unchanged float base:
   not full (it has no adapter) and not qlora (it quantizes the base). */
int th_builtin_kinds(peft_method_kind *out, int all);

/* One micro-batch (B x T from tok/tgt) of model a with data-parallel steps
   off and of b (a's twin: same weights and method) with them on, both on 2
   threads with options o. Returns the larger of the loss's relative gap and
   the gradients' (th_rel_err_f per trainable tensor), or -1 when a step
   failed, the build has no threads or b's step was not 2 shards (why says). */
double th_data_parallel_gap(peft_model *a, peft_model *b, const peft_trainer_opts *o, const int *tok,
                            const int *tgt, int B, int T, char *why, size_t cap);

#define TEST(name) void name(void)
#endif
