/* The worker pool (peft_parallel_for) and the default thread count
   (peft_available_cpus, the cgroup quota parser, the tools' PEFT_THREADS). */
#include "harness.h"
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>

/* ---- the pool ---------------------------------------------------------- */
typedef struct {
    int64_t n;
    _Atomic int *visits; /* per index: how many calls covered it */
    int64_t *chunk_end;  /* per index that begins a chunk: where it ends */
    float *x, *y;        /* y = f(x) element-wise */
    double *partial;     /* per chunk (at its begin): a sum in index order */
    int nested;          /* each call also runs a loop of its own inside */
    _Atomic int calls;
} pool_ctx;

static void pool_inner(void *vctx, int64_t b, int64_t e) {
    _Atomic int *hits = (_Atomic int *)vctx;
    for (int64_t i = b; i < e; i++)
        atomic_fetch_add(&hits[i], 1);
}

static void pool_fn(void *vctx, int64_t b, int64_t e) {
    pool_ctx *c = (pool_ctx *)vctx;
    atomic_fetch_add(&c->calls, 1);
    if (b < 0 || e > c->n || b >= e) return; /* seen as missing or doubled visits */
    c->chunk_end[b] = e;
    double s = 0.0;
    for (int64_t i = b; i < e; i++) {
        atomic_fetch_add(&c->visits[i], 1);
        c->y[i] = sinf(c->x[i]) * 3.0f + c->x[i] * c->x[i];
        s += c->y[i];
    }
    c->partial[b] = s;
    if (c->nested) {
        _Atomic int hits[7];
        for (int i = 0; i < 7; i++)
            atomic_init(&hits[i], 0);
        peft_parallel_for(7, 1, pool_inner, hits); /* inline: this thread is inside a loop */
        for (int i = 0; i < 7; i++)
            if (atomic_load(&hits[i]) != 1) c->chunk_end[b] = -1;
    }
}

/* one loop over n indices: 0 when every index was visited once; the chunk
   bounds, y and the in-order sum of the per-chunk partial sums come back */
static int pool_run(int64_t n, int64_t min_chunk, int nested, int64_t *bounds, float *y, double *sum) {
    pool_ctx c;
    memset(&c, 0, sizeof c);
    c.n = n;
    c.nested = nested;
    c.visits = calloc((size_t)n + 1, sizeof *c.visits);
    c.chunk_end = bounds;
    c.x = malloc(sizeof(float) * ((size_t)n + 1));
    c.y = y;
    c.partial = calloc((size_t)n + 1, sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        c.x[i] = (float)(i % 97) * 0.37f - 11.0f;
        bounds[i] = 0;
    }
    atomic_init(&c.calls, 0);
    peft_parallel_for(n, min_chunk, pool_fn, &c);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += atomic_load(&c.visits[i]) != 1 || bounds[i] < 0;
    *sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (bounds[i]) *sum += c.partial[i];
    free(c.visits);
    free(c.x);
    free(c.partial);
    return bad;
}

/* Many loops, tiny and odd-sized, nested, on 1..8 threads: every index in
   exactly one call; on a given thread count the chunk bounds and a sum of
   per-chunk partial sums are the same bits run after run; the element-wise
   results are the same bits on every thread count. */
TEST(test_threads_pool_chunks) {
    int keep = peft_get_threads();
    int64_t sizes[] = {0, 1, 2, 3, 5, 7, 8, 9, 16, 31, 64, 100, 257, 1000, 4099, 100003};
    int64_t mins[] = {1, 2, 3, 16, 1000};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (size_t mi = 0; mi < sizeof mins / sizeof mins[0]; mi++) {
            int64_t n = sizes[si], mc = mins[mi];
            size_t cnt = (size_t)n + 1;
            int64_t *b0 = malloc(sizeof(int64_t) * cnt), *b1 = malloc(sizeof(int64_t) * cnt);
            float *y0 = calloc(cnt, sizeof(float)), *y1 = calloc(cnt, sizeof(float));
            double s0 = 0.0, s1 = 0.0;
            peft_set_threads(1);
            CHECK(pool_run(n, mc, 0, b0, y0, &s0) == 0,
                  "n %lld min %lld, 1 thread: an index not visited once", (long long)n, (long long)mc);
            for (int t = 2; t <= 8; t++) {
                peft_set_threads(t);
                for (int rep = 0; rep < 2; rep++) {
                    int nested = (int)((si + mi + (size_t)rep) % 2);
                    int bad = pool_run(n, mc, nested, rep ? b1 : b0, y1, rep ? &s1 : &s0);
                    CHECK(bad == 0, "n %lld min %lld, %d threads%s: %d indices not visited once",
                          (long long)n, (long long)mc, t, nested ? ", nested" : "", bad);
                    CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)n),
                          "n %lld, %d threads: results differ from 1", (long long)n, t);
                }
                CHECK(!memcmp(b0, b1, sizeof(int64_t) * (size_t)n) && s0 == s1,
                      "n %lld min %lld, %d threads: chunk bounds or partial sums differ between two runs",
                      (long long)n, (long long)mc, t);
                int64_t chunks = 0, shortest = n;
                for (int64_t i = 0; i < n; i++)
                    if (b0[i]) {
                        chunks++;
                        if (b0[i] - i < shortest) shortest = b0[i] - i;
                    }
                CHECK(n < 2 * mc || shortest >= mc, "n %lld min %lld, %d threads: a chunk of %lld",
                      (long long)n, (long long)mc, t, (long long)shortest);
                CHECK(chunks <= (n / mc > 1 ? n / mc : 1), "n %lld min %lld: %lld chunks", (long long)n,
                      (long long)mc, (long long)chunks);
            }
            free(b0);
            free(b1);
            free(y0);
            free(y1);
        }
    /* many short loops back to back: no wake-up lost, nothing run twice */
    for (int t = 2; t <= 4; t++) {
        peft_set_threads(t);
        int64_t b[8];
        float y[8];
        double s;
        int bad = 0;
        for (int i = 0; i < 20000; i++)
            bad += pool_run(3 + i % 5, 1, 0, b, y, &s);
        CHECK(bad == 0, "%d threads, 20000 tiny loops: %d indices not visited once", t, bad);
    }
    peft_set_threads(keep);
}

/* A thread that is held up (here: asleep inside its first chunk, as if the
   OS had put it aside for another program) delays the loop by that chunk
   only: the caller takes the rest of that thread's share. */
static _Thread_local int pool_is_caller;
typedef struct {
    _Atomic int slept, by_caller, total;
} late_ctx;
static void late_fn(void *vctx, int64_t b, int64_t e) {
    late_ctx *c = (late_ctx *)vctx;
    (void)b;
    (void)e;
    /* the caller's chunks take 2 ms each, so the worker is there before they are done */
    struct timespec ts = {0, 2 * 1000000L};
    if (!pool_is_caller && !atomic_exchange(&c->slept, 1)) ts.tv_nsec = 150 * 1000000L;
    if (pool_is_caller || ts.tv_nsec > 2 * 1000000L) nanosleep(&ts, NULL);
    atomic_fetch_add(&c->total, 1);
    if (pool_is_caller) atomic_fetch_add(&c->by_caller, 1);
}

TEST(test_threads_pool_late_thread) {
    int keep = peft_get_threads();
    peft_set_threads(2);
    if (peft_get_threads() < 2) {
        peft_set_threads(keep);
        SKIP("built without threads");
    }
    pool_is_caller = 1;
    int caller_all = 0, runs = 0;
    for (int r = 0; r < 3 && runs < 1; r++) {
        late_ctx c;
        atomic_init(&c.slept, 0);
        atomic_init(&c.by_caller, 0);
        atomic_init(&c.total, 0);
        peft_parallel_for(64, 1, late_fn, &c); /* 2 threads: 8 chunks, 4 per share */
        CHECK(atomic_load(&c.total) == 8, "%d chunks run, want 8", atomic_load(&c.total));
        if (!atomic_load(&c.slept)) {
            caller_all++;
            continue;
        } /* the worker came too late to take any */
        runs++;
        CHECK(atomic_load(&c.by_caller) == 7,
              "the caller ran %d of 8 chunks while the worker slept in one: "
              "want 7 (it takes the sleeper's share)",
              atomic_load(&c.by_caller));
    }
    CHECK(runs == 1 || caller_all == 3, "no run with the worker in it");
    pool_is_caller = 0;
    peft_set_threads(keep);
}

/* The GEMM on 1..8 threads, every path of its split (row strips, row blocks
   cut into column parts, the packed A kept across column slices): the same
   bits on every thread count. */
TEST(test_threads_gemm_identical) {
    int keep = peft_get_threads();
    int shapes[][3] = {{5, 300, 70}, {40, 1100, 350}, {400, 1100, 400}, {97, 64, 1000}};
    peft_rng rng;
    peft_rng_seed(&rng, 5);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)K * N);
        float *C0 = malloc(sizeof(float) * (size_t)M * N), *C1 = malloc(sizeof(float) * (size_t)M * N);
        for (int i = 0; i < M * K; i++)
            A[i] = peft_rng_normal(&rng);
        for (int i = 0; i < K * N; i++)
            B[i] = peft_rng_normal(&rng);
        peft_set_threads(1);
        peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C0, N);
        for (int t = 2; t <= 8; t++) {
            peft_set_threads(t);
            memset(C1, 0xff, sizeof(float) * (size_t)M * N);
            peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C1, N);
            CHECK(!memcmp(C0, C1, sizeof(float) * (size_t)M * N), "gemm %dx%dx%d: %d threads differ from 1",
                  M, N, K, t);
        }
        free(A);
        free(B);
        free(C0);
        free(C1);
    }
    peft_set_threads(keep);
}

/* The busy-machine tests: the pool on every available core (2 to 8), 0 when
   built without threads; and k CPU-bound child processes (other programs, as
   on a real machine: threads of ours would count in our CPU time), each
   bounded by alarm(), started and then killed. */
static int busy_threads(void) {
    int cpus = peft_available_cpus(), keep = peft_get_threads();
    peft_set_threads(cpus < 2 ? 2 : cpus > 8 ? 8 : cpus);
    if (peft_get_threads() >= 2) return peft_get_threads();
    peft_set_threads(keep);
    return 0;
}
static int busy_start(pid_t *pids, int k) {
    int n = 0;
    for (int i = 0; i < k; i++) {
        pid_t p = fork();
        if (p == 0) {
            alarm(30);
            for (volatile unsigned long c = 0;; c++) {}
        }
        if (p > 0) pids[n++] = p;
    }
    return n;
}
static void busy_stop(const pid_t *pids, int n) {
    for (int i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
}

/* A busy machine: as many CPU-bound processes beside us as we have threads
   less one, so the pool's threads get about half a core each. The pool must
   notice (its parallel loops get under 0.65 cores per thread) and run loops
   on the caller alone for a while; it would go on waiting for threads the OS
   put aside otherwise. */
TEST(test_threads_solo_on_busy_machine) {
#ifdef PEFT_NO_SOLO
    SKIP("built with PEFT_NO_SOLO");
#endif
    int keep = peft_get_threads(), n = busy_threads();
    if (!n) SKIP("built without threads");
    pid_t busy[8];
    int n_busy = busy_start(busy, n - 1);
    int M = 384, N = 384, K = 256;
    float *A = calloc((size_t)M * K, sizeof(float)), *B = calloc((size_t)K * N, sizeof(float)),
          *C = malloc(sizeof(float) * (size_t)M * N);
    int64_t loops0, solo0, loops, solo;
    peft_parallel_stats(&loops0, &solo0);
    struct timespec t0, t;
    timespec_get(&t0, TIME_UTC);
    do {                                             /* ~1 ms loops until one runs solo, 5 s at most */
        peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C, N);
        peft_parallel_stats(&loops, &solo);
        timespec_get(&t, TIME_UTC);
    } while (solo == solo0 && (t.tv_sec - t0.tv_sec) + 1e-9 * (t.tv_nsec - t0.tv_nsec) < 5.0);
    busy_stop(busy, n_busy);
    CHECK(n_busy == n - 1, "could start %d of %d busy processes", n_busy, n - 1);
    CHECK(loops > loops0, "no parallel loop ran");
    CHECK(solo > solo0, "%d threads beside %d busy processes: none of %lld loops ran solo", n, n_busy,
          (long long)(loops - loops0));
    free(A);
    free(B);
    free(C);
    peft_set_threads(keep);
}

/* The same busy machine, inside training: whole steps on one tape are
   timed on every thread and solo (the trainer marks each step). Under
   contention a step runs wholly solo (the solo trial) right after one that
   ran on every thread (the pool trial). Data-parallel steps are one loop of
   whole shards and stay on every thread: nothing runs solo. */
TEST(test_threads_solo_trial_steps) {
#ifdef PEFT_NO_SOLO
    SKIP("built with PEFT_NO_SOLO");
#endif
    int keep = peft_get_threads(), n = busy_threads();
    if (!n) SKIP("built without threads");
    peft_model *m;
    REQUIRE_OK(peft_model_from_preset(&m, "stories15m", 1, 3));
    peft_method meth = peft_method_defaults(PEFT_LORA);
    REQUIRE_OK(peft_attach(m, &meth));
    peft_trainer *tr = peft_trainer_new(m, NULL);
    REQUIRE(tr, "trainer: %s", peft_last_error());
    enum { B = 2, T = 64, STEPS = 6 };
    int tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 37 + 11) % m->cfg.vocab_size;
        tgt[i] = (i * 53 + 5) % m->cfg.vocab_size;
    }
    pid_t busy[8];
    int n_busy = busy_start(busy, n - 1);
    int64_t l[STEPS + 1], so[STEPS + 1], dl[2], ds[2];
    peft_set_data_parallel(0);
    peft_parallel_stats(&l[0], &so[0]);
    for (int s = 0; s < STEPS; s++) {
        float loss;
        CHECK_OK(peft_trainer_step(tr, tok, tgt, B, T, &loss));
        peft_parallel_stats(&l[s + 1], &so[s + 1]);
    }
    peft_set_data_parallel(1);
    peft_parallel_stats(&dl[0], &ds[0]);
    for (int s = 0; s < STEPS; s++) {
        float loss;
        CHECK_OK(peft_trainer_step(tr, tok, tgt, B, T, &loss));
    }
    peft_parallel_stats(&dl[1], &ds[1]);
    busy_stop(busy, n_busy);
    CHECK(dl[1] - dl[0] == STEPS && ds[1] == ds[0], "data-parallel steps: %lld loops for %d steps, %lld solo",
          (long long)(dl[1] - dl[0]), STEPS, (long long)(ds[1] - ds[0]));
    int trial = -1;
    for (int s = 1; s < STEPS && trial < 0; s++)   /* step s solo, step s-1 on every thread */
        if (l[s + 1] > l[s] && so[s + 1] - so[s] == l[s + 1] - l[s] && so[s] == so[s - 1] && l[s] > l[s - 1])
            trial = s;
    CHECK(trial > 0, "%d threads beside %d busy processes: no step ran solo after one on every thread", n,
          n_busy);
    peft_trainer_free(tr);
    peft_model_free(m);
    peft_set_threads(keep);
}

/* ---- the thread count ---------------------------------------------------- */
TEST(test_threads_cpu_quota_parse) {
    struct {
        const char *text;
        int want;
    } cases[] = {
        {"max 100000\n", 0},
        {"max 100000", 0},
        {"max", 0}, /* v2: no limit */
        {"150000 100000\n", 2},
        {"100000 100000", 1},
        {"50000 100000", 1}, /* rounded up */
        {"250000 100000", 3},
        {"200000 50000\n", 4},
        {"1000 100000", 1},
        {"-1 100000", 0},
        {"-1 100000\n", 0},
        {"300000 100000", 3}, /* v1: quota, period */
        {"", -1},
        {"\n", -1},
        {"abc 100000", -1}, /* not a quota */
        {"0 100000", -1},
        {"100000 0", -1},
        {"100000 -5", -1},
        {"100000 100000 7", -1},
        {"1e5 100000", -1},
        {"100000x 100000", -1},
        {"maximum 1", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = peft_parse_cpu_max(cases[i].text);
        CHECK(got == cases[i].want, "peft_parse_cpu_max(\"%s\") = %d, want %d", cases[i].text, got,
              cases[i].want);
    }
    int n = peft_available_cpus();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(n >= 1 && (online < 1 || n <= online), "peft_available_cpus() = %d, %ld cores online", n, online);
}

/* The tools' default thread count: the cores available (taskset limits
   them), PEFT_THREADS over it, --threads over both; a bad PEFT_THREADS is
   refused by name. */
TEST(test_threads_cli_default) {
    static char out[8192];
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (!probe) SKIP("%s not built", th_peft_bin());
    fclose(probe);
    const char *args = "bench --preset tiny --steps 1 --batch 1 --seq 8";
    char want[64], cmd[1024];
    int avail = peft_available_cpus();
    if (avail > 64) avail = 64;                 /* PEFT_MAX_THREADS of the tools' build */
    snprintf(want, sizeof want, ", %d threads,", avail);
    snprintf(cmd, sizeof cmd, "env -u PEFT_THREADS %s %s 2>&1", th_peft_bin(), args);
    FILE *p0 = popen(cmd, "r");
    size_t got0 = p0 ? fread(out, 1, sizeof out - 1, p0) : 0;
    out[got0] = 0;
    CHECK(p0 && pclose(p0) == 0 && strstr(out, want), "no PEFT_THREADS: want '%s' in: %s", want, out);
    int rc = th_run_peft(out, sizeof out, "%s --threads 1", args);
    CHECK(rc == 0 && strstr(out, ", 1 threads,"), "--threads 1: %s", out);
    snprintf(cmd, sizeof cmd, "PEFT_THREADS=3 %s %s 2>&1", th_peft_bin(), args);
    FILE *p = popen(cmd, "r");
    size_t got = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = 0;
    CHECK(p && pclose(p) == 0 && strstr(out, ", 3 threads,"), "PEFT_THREADS=3: %s", out);
    snprintf(cmd, sizeof cmd, "PEFT_THREADS=3 %s %s --threads 2 2>&1", th_peft_bin(), args);
    p = popen(cmd, "r");
    got = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = 0;
    CHECK(p && pclose(p) == 0 && strstr(out, ", 2 threads,"), "PEFT_THREADS=3 --threads 2: %s", out);
    snprintf(cmd, sizeof cmd, "PEFT_THREADS=two %s %s 2>&1", th_peft_bin(), args);
    p = popen(cmd, "r");
    got = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = 0;
    int st = p ? pclose(p) : -1;
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(out, "PEFT_THREADS"), "PEFT_THREADS=two: %s", out);
    if (system("taskset -c 0 true >/dev/null 2>&1") != 0) return; /* no taskset here: the rest is skipped */
    snprintf(cmd, sizeof cmd, "taskset -c 0 env -u PEFT_THREADS %s %s 2>&1", th_peft_bin(), args);
    p = popen(cmd, "r");
    got = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[got] = 0;
    CHECK(p && pclose(p) == 0 && strstr(out, ", 1 threads,"), "taskset -c 0: want 1 thread: %s", out);
}

/* `bench --gemm` names OpenBLAS's kernel and gives no ratio against a
   generic one or one for an older CPU. A stand-in OpenBLAS (a plain loop,
   built here, its corename from the environment) plays the library. */
TEST(test_threads_bench_gemm_openblas_core) {
    static char out[16384];
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (!probe) SKIP("%s not built", th_peft_bin());
    fclose(probe);
    const char *src = th_tmp_text(
        "fakeblas.c",
        "#include <stdlib.h>\n"
        "const char *openblas_get_corename(void) { return getenv(\"FAKE_OPENBLAS_CORE\"); }\n"
        "void openblas_set_num_threads(int n) { (void)n; }\n"
        "void cblas_sgemm(int o, int ta, int tb, int M, int N, int K, float al, const float *A, int lda,\n"
        "                 const float *B, int ldb, float be, float *C, int ldc) {\n"
        "    (void)o; (void)be;\n"
        "    for (int i = 0; i < M; i++) for (int j = 0; j < N; j++) {\n"
        "        float s = 0.0f;\n"
        "        for (int k = 0; k < K; k++)\n"
        "            s += (ta == 112 ? A[k * lda + i] : A[i * lda + k]) * (tb == 112 ? B[j * ldb + k] : B[k "
        "* ldb + j]);\n"
        "        C[i * ldc + j] = al * s;\n"
        "    }\n"
        "}\n");
    char lib[700], cmd[2048];
    snprintf(lib, sizeof lib, "%s/libfakeblas.so", th_tmpdir());
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O2 -o %s %s >/dev/null 2>&1", lib, src);
    if (system(cmd) != 0) SKIP("no C compiler to build a stand-in OpenBLAS");
    /* refused: Prescott's SSE kernel on a CPU with AVX, else a generic target */
    const char *old_core = "generic";
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    if (__builtin_cpu_supports("avx")) old_core = "Prescott";
#endif
    struct {
        const char *core;
        int want;
    } cases[] = {{old_core, 0}, {"Sapphirerapids", 1}};
    for (int i = 0; i < 2; i++) {
        int want = cases[i].want;
        snprintf(cmd, sizeof cmd,
                 "FAKE_OPENBLAS_CORE=%s PEFT_OPENBLAS=%s %s bench --gemm --preset tiny --batch 1 "
                 "--seq 16 --threads 1 2>&1",
                 cases[i].core, lib, th_peft_bin());
        FILE *p = popen(cmd, "r");
        size_t got = p ? fread(out, 1, sizeof out - 1, p) : 0;
        out[got] = 0;
        int st = p ? pclose(p) : -1;
        char name[64];
        snprintf(name, sizeof name, "OpenBLAS kernel %s", cases[i].core);
        CHECK(st == 0 && strstr(out, name), "%s: the kernel is not named: %s", cases[i].core, out);
        if (want)
            CHECK(strstr(out, "time ratio") && !strstr(out, "warning"), "%s: want a ratio: %s", cases[i].core,
                  out);
        else
            CHECK(!strstr(out, "time ratio") && strstr(out, "warning") && strstr(out, "no ratio"),
                  "%s: want a warning and no ratio: %s", cases[i].core, out);
    }
}
