/* Allocation-failure sweep: PEFT_MALLOC / PEFT_REALLOC fail on their N-th
   call (counted over both), for every N over one end-to-end sequence

     load → attach LoRA → trainer → 2 steps → adapter save → checkpoint save
     → checkpoint load → reload + adapter load → greedy generation → quantize
     (NF4, double quant) → forward

   on the tiny model of tests/fixtures/llama_mha. Each N runs in a child
   process (so the per-thread packing buffers start empty every time and a
   crash is seen as a crash). After the failed call the allocator works
   again: a call that failed must have said so (status != OK, or NULL / -1,
   with a message) and is retried on the same objects, which must then
   succeed; the run's results (losses, the adapter and checkpoint files, the
   generated ids, the quantized model's logits) must equal, bit for bit, those
   of the run without a failure. That holds whether the failed call reported
   the error or recovered by itself (the GEMM falls back to packing on the
   stack): "usable, or as it was".

     make oom                       every N (build/oom_sweep)
     build/oom_sweep STRIDE [FIRST] every STRIDE-th N from FIRST (CI samples)
     build/oom_sweep -n N           one N in this process, for a debugger

   Built with ASan + UBSan (make oom). Single-threaded so that the N-th call
   is the same call on every run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

static long oom_calls;       /* allocations so far in this run */
static long oom_fail_at;     /* the call that fails (0: none) */
static int  oom_failed;      /* it has happened */

static void *oom_malloc(size_t n) {
    if (++oom_calls == oom_fail_at) { oom_failed = 1; return NULL; }
    return malloc(n);
}
static void *oom_realloc(void *p, size_t n) {
    if (++oom_calls == oom_fail_at) { oom_failed = 1; return NULL; }
    return realloc(p, n);
}
#define PEFT_MALLOC(n) oom_malloc(n)
#define PEFT_REALLOC(p, n) oom_realloc(p, n)
#define PEFT_IMPLEMENTATION
#include "../peft.h"

/* what one run produces; compared field by field with the baseline */
typedef struct {
    float  loss[2];
    uint64_t adapter_hash, ckpt_hash, logits_hash;
    int    n_gen, gen[8];
    int    retried;          /* calls that failed and were retried */
    int    reported;         /* 1: a call reported the failure */
    char   step[64];         /* where the failure was (the call's name) */
    char   bad[256];         /* a broken rule, or "" */
} oom_result;

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}
static uint64_t file_hash(const char *path) {
    FILE *f = fopen(path, "rb");
    uint64_t h = 1469598103934665603ull;
    unsigned char buf[4096];
    size_t k;
    if (!f) return 0;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) h = fnv(buf, k, h);
    fclose(f);
    return h;
}

static oom_result R;

/* One call of the sequence: on failure it must have said so, then the same
   call (allocation working again) must succeed. `ok` is the call's success test. */
#define CALL(name, ok_expr, call) do { \
    peft__errbuf[0] = 0; \
    int failed_before_ = oom_failed; \
    call; \
    if (!(ok_expr)) { \
        if (failed_before_ || !oom_failed) { \
            snprintf(R.bad, sizeof R.bad, "%s failed without an injected failure: %s", name, \
                     peft_last_error()); \
            return; \
        } \
        if (!peft__errbuf[0]) { \
            snprintf(R.bad, sizeof R.bad, "%s failed without a message", name); \
            return; \
        } \
        R.retried++; \
        R.reported = 1; \
        snprintf(R.step, sizeof R.step, "%s", name); \
        peft__errbuf[0] = 0; \
        call; \
        if (!(ok_expr)) { \
            snprintf(R.bad, sizeof R.bad, "%s retried after a failure fails: %s", name, peft_last_error()); \
            return; \
        } \
    } else if (oom_failed && !failed_before_) \
        snprintf(R.step, sizeof R.step, "%s (recovered)", name); \
} while (0)

static void run_sequence(const char *fixtures, const char *tmp) {
    char model_dir[512], adapter_dir[600], ckpt[600];
    snprintf(model_dir, sizeof model_dir, "%s/llama_mha", fixtures);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", tmp);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", tmp);
    peft_model *m = NULL, *m2 = NULL;
    peft_trainer *tr = NULL;
    peft_graph *g = NULL;
    peft_status s = PEFT_OK;
    int tok[2 * 16], tgt[2 * 16];
    for (int i = 0; i < 32; i++) { tok[i] = (i * 7 + 3) % 64; tgt[i] = (i * 7 + 10) % 64; }
    tgt[5] = -100;

    CALL("peft_model_load", s == PEFT_OK, s = peft_model_load(&m, model_dir));
    peft_method lora = peft_method_defaults(PEFT_LORA);
    lora.lora_r = 4;
    lora.lora_alpha = 8.0f;
    lora.lora_dropout = 0.1f;                 /* the dropout stream must survive a failed step */
    lora.lora_targets = PEFT__ALL_LINEAR;
    CALL("peft_attach", s == PEFT_OK, s = peft_attach(m, &lora));
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    CALL("peft_trainer_new", tr != NULL, tr = peft_trainer_new(m, &o));
    for (int k = 0; k < 2; k++)
        CALL("peft_trainer_step", s == PEFT_OK, s = peft_trainer_step(tr, tok, tgt, 2, 16, &R.loss[k]));
    CALL("peft_adapter_save", s == PEFT_OK, s = peft_adapter_save(m, adapter_dir));
    peft_data_pos pos = { 1, 7, 123 }, pos2;
    CALL("peft_checkpoint_save", s == PEFT_OK, s = peft_checkpoint_save(tr, &pos, ckpt));
    CALL("peft_checkpoint_load", s == PEFT_OK, s = peft_checkpoint_load(tr, &pos2, ckpt));
    peft_trainer_free(tr);
    peft_model_free(m);

    CALL("peft_model_load (2)", s == PEFT_OK, s = peft_model_load(&m2, model_dir));
    CALL("peft_adapter_load", s == PEFT_OK, s = peft_adapter_load(m2, adapter_dir));
    CALL("peft_graph_new", g != NULL, g = peft_graph_new());
    int prompt[3] = { 1, 17, 33 };
    CALL("peft_generate_greedy", R.n_gen >= 0,
         R.n_gen = peft_generate_greedy(m2, g, prompt, 3, 8, -1, R.gen));
    CALL("peft_model_quantize", s == PEFT_OK, s = peft_model_quantize(m2, PEFT_NF4, 1));
    peft_tensor *lg = NULL;
    CALL("peft_model_forward", lg != NULL, (peft_graph_reset(g), lg = peft_model_forward(m2, g, tok, 2, 16)));
    R.logits_hash = fnv(lg->data, (size_t)lg->n * sizeof(float), 1469598103934665603ull);
    peft_graph_free(g);
    peft_model_free(m2);
    char f[700];
    snprintf(f, sizeof f, "%s/adapter_model.safetensors", adapter_dir);
    R.adapter_hash = file_hash(f);
    snprintf(f, sizeof f, "%s/adapter_config.json", adapter_dir);
    R.adapter_hash ^= file_hash(f) * 3;
    R.ckpt_hash = file_hash(ckpt);
}

/* one N in a child; its result comes back through a pipe */
static int run_child(long fail_at, const char *fixtures, oom_result *out, long *calls) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        char tmp[64] = "/tmp/peft-oom-XXXXXX";   /* fresh: /tmp and pids are reused */
        if (!mkdtemp(tmp)) _exit(5);
        peft_set_threads(1);
        oom_fail_at = fail_at;
        memset(&R, 0, sizeof R);
        run_sequence(fixtures, tmp);
        long c = oom_calls;
        if (write(fd[1], &R, sizeof R) != (ssize_t)sizeof R) _exit(3);
        if (write(fd[1], &c, sizeof c) != (ssize_t)sizeof c) _exit(3);
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
        if (system(cmd) != 0) _exit(4);
        if (R.bad[0]) _exit(0);  /* the objects of a broken run are not freed: no leak report on top */
        exit(0);                 /* exit(): LeakSanitizer checks what the run left */
    }
    close(fd[1]);
    size_t got = 0;
    ssize_t k;
    while (got < sizeof *out && (k = read(fd[0], (char *)out + got, sizeof *out - got)) > 0) got += (size_t)k;
    if (got == sizeof *out && read(fd[0], calls, sizeof *calls) != (ssize_t)sizeof *calls) got = 0;
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    if (got != sizeof *out)
        return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 200 + (WIFEXITED(st) ? WEXITSTATUS(st) : 0);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 100 + WEXITSTATUS(st);
}

static const char *differs(const oom_result *a, const oom_result *b) {
    if (memcmp(a->loss, b->loss, sizeof a->loss)) return "the training losses";
    if (a->adapter_hash != b->adapter_hash) return "the saved adapter";
    if (a->ckpt_hash != b->ckpt_hash) return "the checkpoint";
    if (a->n_gen != b->n_gen || memcmp(a->gen, b->gen, sizeof(int) * (size_t)(a->n_gen > 0 ? a->n_gen : 0)))
        return "the generated ids";
    if (a->logits_hash != b->logits_hash) return "the quantized model's logits";
    return NULL;
}

int main(int argc, char **argv) {
    const char *fixtures = getenv("PEFT_FIXTURES") ? getenv("PEFT_FIXTURES") : "tests/fixtures";
    if (argc > 2 && strcmp(argv[1], "-n") == 0) {           /* one N, in process */
        char tmp[64] = "/tmp/peft-oom-XXXXXX";
        if (!mkdtemp(tmp)) return 5;
        peft_set_threads(1);
        oom_fail_at = atol(argv[2]);
        run_sequence(fixtures, tmp);
        printf("N=%ld calls=%ld step=%s bad=%s loss %.6f %.6f\n", oom_fail_at, oom_calls, R.step, R.bad,
               R.loss[0], R.loss[1]);
        return R.bad[0] != 0;
    }
    long stride = argc > 1 ? atol(argv[1]) : 1, first = argc > 2 ? atol(argv[2]) : 1;
    if (stride < 1) stride = 1;
    if (first < 1) first = 1;
    oom_result base, r;
    long total = 0, calls;
    if (run_child(0, fixtures, &base, &total) != 0 || base.bad[0]) {
        fprintf(stderr, "oom_sweep: the run without failures fails: %s\n", base.bad);
        return 1;
    }
    printf("oom_sweep: %ld allocation points; losses %.6f %.6f, %d ids generated; "
           "failing N = %ld, %ld, ...\n",
           total, base.loss[0], base.loss[1], base.n_gen, first, first + stride);
    long runs = 0, reported = 0, recovered = 0, bad = 0;
    for (long n = first; n <= total; n += stride) {
        memset(&r, 0, sizeof r);
        int rc = run_child(n, fixtures, &r, &calls);
        runs++;
        const char *d = rc == 0 && !r.bad[0] ? differs(&r, &base) : NULL;
        if (rc != 0 || r.bad[0] || d) {
            bad++;
            if (rc != 0)
                printf("  N=%ld: the child ended with %d (crash or sanitizer report; after a failure in "
                       "%s)\n",
                       n, rc, r.step[0] ? r.step : "?");
            else if (r.bad[0]) printf("  N=%ld: %s\n", n, r.bad);
            else printf("  N=%ld: failure in %s: %s differ from the run without failures\n", n, r.step, d);
            continue;
        }
        if (r.reported) reported++;
        else if (++recovered <= 20) printf("  N=%ld: recovered inside %s\n", n, r.step);
    }
    printf("oom_sweep: %ld runs: %ld clean errors (retried: same results), %ld recovered inside the call "
           "(same results), %ld broken\n", runs, reported, recovered, bad);
    return bad != 0;
}
