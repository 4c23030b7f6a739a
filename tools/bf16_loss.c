/* bf16_loss — does --precision bf16 train like fp32? (`make bench`'s bf16 loss line)

   Fine-tunes the demo's pre-trained base (build/demo writes it into OUT/base)
   with the demo's LoRA recipe (r 8, alpha 16 on q,v; lr 1e-2, cosine with
   warm-up, clip 1, batch 16 of the world's Alpaca-template instructions) for
   --steps steps, once per seed and variant, each run on one thread:
     fp32        the reference
     fp32+1ulp   fp32 with the learning rate one ulp larger: a change that
                 should not matter: how fast a tiny difference grows
     fp32+lr2^-8 fp32 with the learning rate 2^-8 (0.4%) larger: a change of
                 the size of bf16's rounding (unit roundoff 2^-8) that no recipe
                 would notice; its distance to fp32 is the floor of a change of
                 that size in a chaotic run
     bf16        --precision bf16 (the fallback without AVX512-BF16 or with
                 PEFT_NO_BF16=1: bf16 storage decoded to fp32)
   The seed sets the data order, LoRA's initialisation and dropout, as in the
   demo. At lr 1e-2 the run is chaotic: any difference grows ~25% a step
   from step ~10 (a one-ulp change of lr reaches percents by step 60, bf16's
   or a 2^-8 larger lr's by step 20), so the step losses of two runs
   decorrelate and one run's loss at step 100 cannot be compared to 1%.
   What is compared is its expectation, estimated paired: per seed, the loss
   averaged over the last 10 steps relative to fp32's of the same seed; the
   mean of that over the seeds with its standard error, for bf16 and for the
   floor (fp32+lr2^-8, a change of the same size as bf16's rounding), and
   whether the 90% interval of bf16's gap lies inside ±1% (equivalence by two
   one-sided tests at 5%: 10 seeds are too few, 256 resolve it). Before
   the chaos sets in the runs agree step by step: also printed, the largest
   mean |relative gap| over steps 1-10 (bf16's numerics, not yet amplified).

   build/bf16_loss --base DIR [--steps N] [--seeds N (10)] [--seed S] [--jobs J]
                   [--variants fp32+1ulp,fp32+lr2^-8,bf16] [--curves FILE] [--batches FILE]
   --jobs runs J runs at once (child processes, one thread each; default 2);
   --curves writes every loss as CSV (variant,seed,step,loss); --batches FILE
   writes the runs' batches and stops (for tools/ref/bf16_loss_torch.py). */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "peft_tools.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { BATCH = 16, MAX_STEPS = 1000, MAX_SEEDS = 256, N_VARIANTS = 4, TAIL = 10, HEAD = 10 };

static const char *const VARIANTS[N_VARIANTS] = { "fp32", "fp32+1ulp", "fp32+lr2^-8", "bf16" };

static _Noreturn void die(const char *what) {
    fprintf(stderr, "bf16_loss: %s: %s\n", what, peft_last_error());
    exit(1);
}

/* one run of the demo's LoRA recipe (tools/demo.c, RECIPES row "lora", run_job) */
static void run(const peft_demo_world *w, const char *base, int variant, uint64_t seed, int steps,
                float *curve) {
    peft_method meth = peft_method_defaults(PEFT_LORA);
    meth.seed = seed;
    if (peft_method_set(&meth, "lora_r", "8") != PEFT_OK) die("lora_r");
    if (peft_method_set(&meth, "lora_alpha", "16") != PEFT_OK) die("lora_alpha");
    peft_model *m;
    if (peft_model_load(&m, base) != PEFT_OK) die(base);
    if (peft_attach(m, &meth) != PEFT_OK) die("lora");
    int per_epoch = (w->n_train + BATCH - 1) / BATCH;
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    if (variant == 1) o.lr = nextafterf(o.lr, 1.0f);
    if (variant == 2) o.lr *= 1.0f + 1.0f / 256;
    o.total_steps = steps;
    o.warmup_steps = (int)(0.6f * per_epoch + 0.5f);
    if (o.warmup_steps >= steps) o.warmup_steps = steps / 10;
    o.schedule = PEFT_SCHED_COSINE;
    o.max_grad_norm = 1.0f;
    o.beta2 = 0.999f;
    o.weight_decay = 0.0f;
    o.precision = variant == 3 ? PEFT_PRECISION_BF16 : PEFT_PRECISION_FP32;
    peft_trainer *tr = peft_trainer_new(m, &o);
    if (!tr) die("trainer");
    peft_rng order;
    peft_rng_seed(&order, seed * 1000003u + 7);
    int *tok = malloc(sizeof(int) * BATCH * 128), *tgt = malloc(sizeof(int) * BATCH * 128);
    if (!tok || !tgt) die("out of memory");
    for (int s = 0; s < steps; s++) {
        const peft_demo_item *batch[BATCH];
        for (int b = 0; b < BATCH; b++) batch[b] = &w->items[peft_rng_u64(&order) % (uint64_t)w->n_train];
        int T = peft_demo_batch(batch, BATCH, tok, tgt);
        if (peft_trainer_step(tr, tok, tgt, BATCH, T, &curve[s]) != PEFT_OK) die("step");
    }
    free(tok);
    free(tgt);
    peft_trainer_free(tr);
    peft_model_free(m);
}

/* --batches: every run's batches (the same for every variant of a seed) for
   tools/ref/bf16_loss_torch.py: int32 n_seeds, steps, B; then per seed and
   step int32 T, tokens [B, T], targets [B, T] (-100: no loss) */
static int write_batches(const peft_demo_world *w, uint64_t seed, int n_seeds, int steps, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int32_t head[3] = { n_seeds, steps, BATCH };
    int ok = fwrite(head, sizeof head, 1, f) == 1;
    static int tok[BATCH * 128], tgt[BATCH * 128];
    for (int s = 0; s < n_seeds && ok; s++) {
        peft_rng order;
        peft_rng_seed(&order, (seed + (uint64_t)s) * 1000003u + 7);
        for (int t = 0; t < steps && ok; t++) {
            const peft_demo_item *batch[BATCH];
            for (int b = 0; b < BATCH; b++) batch[b] = &w->items[peft_rng_u64(&order) % (uint64_t)w->n_train];
            int32_t T = peft_demo_batch(batch, BATCH, tok, tgt);
            size_t n = (size_t)BATCH * (size_t)T;
            ok = fwrite(&T, sizeof T, 1, f) == 1;
            ok = ok && fwrite(tok, sizeof(int), n, f) == n;
            ok = ok && fwrite(tgt, sizeof(int), n, f) == n;
        }
    }
    return fclose(f) == 0 && ok;
}

static double tail_mean(const float *c, int steps) {
    int n = steps < TAIL ? steps : TAIL;
    double s = 0;
    for (int i = steps - n; i < steps; i++) s += c[i];
    return s / n;
}

/* the runs, `jobs` at a time in child processes; each passes its curve back through a pipe */
static void run_all(const peft_demo_world *w, const char *base, const int *on, uint64_t seed, int n_seeds,
                    int steps, int jobs, float (*c)[MAX_SEEDS][MAX_STEPS]) {
    int n = 0, list[N_VARIANTS * MAX_SEEDS];
    for (int s = 0; s < n_seeds; s++)
        for (int v = 0; v < N_VARIANTS; v++)
            if (on[v]) list[n++] = v * MAX_SEEDS + s;
    if (jobs <= 1) {
        for (int k = 0; k < n; k++) run(w, base, list[k] / MAX_SEEDS, seed + list[k] % MAX_SEEDS, steps,
                                        c[list[k] / MAX_SEEDS][list[k] % MAX_SEEDS]);
        return;
    }
    int fd[N_VARIANTS * MAX_SEEDS];
    pid_t pid[N_VARIANTS * MAX_SEEDS];
    for (int k = 0, done = 0; done < n;) {
        if (k < n && k - done < jobs) {
            int p[2];
            if (pipe(p) != 0) die("pipe");
            fflush(NULL);
            pid[k] = fork();
            if (pid[k] < 0) die("fork");
            if (pid[k] == 0) {
                float *curve = c[list[k] / MAX_SEEDS][list[k] % MAX_SEEDS];
                close(p[0]);
                run(w, base, list[k] / MAX_SEEDS, seed + list[k] % MAX_SEEDS, steps, curve);
                size_t bytes = sizeof(float) * (size_t)steps, off = 0;
                while (off < bytes) {
                    ssize_t r = write(p[1], (const char *)curve + off, bytes - off);
                    if (r <= 0) _exit(1);
                    off += (size_t)r;
                }
                _exit(0);
            }
            close(p[1]);
            fd[k++] = p[0];
            continue;
        }
        /* the oldest running job: read its curve to the end, then reap it */
        float *curve = c[list[done] / MAX_SEEDS][list[done] % MAX_SEEDS];
        size_t bytes = sizeof(float) * (size_t)steps, off = 0;
        while (off < bytes) {
            ssize_t r = read(fd[done], (char *)curve + off, bytes - off);
            if (r <= 0) break;
            off += (size_t)r;
        }
        close(fd[done]);
        int st = 0;
        waitpid(pid[done], &st, 0);
        if (off < bytes || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bf16_loss: the run of %s, seed %llu failed\n", VARIANTS[list[done] / MAX_SEEDS],
                    (unsigned long long)(seed + list[done] % MAX_SEEDS));
            exit(1);
        }
        done++;
    }
}

int main(int argc, char **argv) {
    const char *base = NULL, *curves = NULL, *batches = NULL, *want = "fp32+lr2^-8,bf16";
    int steps = 100, n_seeds = 10, jobs = 2;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bf16_loss: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--base")) base = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--seeds")) n_seeds = atoi(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--jobs")) jobs = atoi(v);
        else if (!strcmp(a, "--variants")) want = v;
        else if (!strcmp(a, "--curves")) curves = v;
        else if (!strcmp(a, "--batches")) batches = v;
        else {
            fprintf(stderr, "bf16_loss: unknown option %s\n", a);
            return 2;
        }
    }
    if (!base || steps < 1 || steps > MAX_STEPS || n_seeds < 2 || n_seeds > MAX_SEEDS || jobs < 1) {
        fprintf(stderr, "usage: bf16_loss --base DIR [--steps 1..%d] [--seeds 2..%d] [--seed S] [--jobs J] "
                        "[--variants fp32+1ulp,fp32+lr2^-8,bf16] [--curves FILE] [--batches FILE]\n",
                MAX_STEPS, MAX_SEEDS);
        return 2;
    }
    int on[N_VARIANTS] = { 1 };   /* fp32 always: every gap is against it */
    for (int v = 1; v < N_VARIANTS; v++) {
        const char *p = strstr(want, VARIANTS[v]);
        size_t n = strlen(VARIANTS[v]);
        while (p && ((p > want && p[-1] != ',') || (p[n] && p[n] != ','))) p = strstr(p + 1, VARIANTS[v]);
        on[v] = p != NULL;
    }
    peft_set_threads(1);
    peft_demo_world w;
    if (peft_demo_world_new(&w, 1) != PEFT_OK) die("world");
    if (batches) {
        if (!write_batches(&w, seed, n_seeds, steps, batches)) {
            fprintf(stderr, "bf16_loss: cannot write %s\n", batches);
            return 1;
        }
        printf("wrote %s\n", batches);
        return 0;
    }
    static float c[N_VARIANTS][MAX_SEEDS][MAX_STEPS];
    run_all(&w, base, on, seed, n_seeds, steps, jobs, c);
    FILE *f = curves ? fopen(curves, "w") : NULL;
    if (curves && !f) {
        fprintf(stderr, "bf16_loss: cannot write %s\n", curves);
        return 1;
    }
    if (f) fprintf(f, "variant,seed,step,loss\n");
    for (int v = 0; f && v < N_VARIANTS; v++)
        for (int s = 0; on[v] && s < n_seeds; s++)
            for (int t = 0; t < steps; t++)
                fprintf(f, "%s,%llu,%d,%.7g\n", VARIANTS[v], (unsigned long long)(seed + s), t + 1,
                        c[v][s][t]);
    if (f && fclose(f) != 0) {
        fprintf(stderr, "bf16_loss: cannot write %s\n", curves);
        return 1;
    }
    int tail = steps < TAIL ? steps : TAIL, head = steps < HEAD ? steps : HEAD;
    printf("demo LoRA r 8 alpha 16 q,v, lr 1e-2 cosine, batch %d, %d steps, seeds %llu..%llu; bf16 products: "
           "%s\n", BATCH, steps, (unsigned long long)seed, (unsigned long long)(seed + n_seeds - 1),
           peft_bf16_dot_available() ? "AVX512-BF16" : "none (bf16 storage decoded to fp32)");
    printf("per seed: loss averaged over steps %d-%d; gap: relative to fp32's of the same seed, "
           "mean ± standard error over the seeds\n", steps - tail + 1, steps);
    double gap[N_VARIANTS] = { 0 }, se[N_VARIANTS] = { 0 }, early[N_VARIANTS] = { 0 };
    for (int v = 0; v < N_VARIANTS; v++) {
        if (!on[v]) continue;
        double d[MAX_SEEDS], var = 0;
        printf("%-12s", VARIANTS[v]);
        for (int s = 0; s < n_seeds; s++) {
            d[s] = tail_mean(c[v][s], steps) / tail_mean(c[0][s], steps) - 1;
            gap[v] += d[s] / n_seeds;
            printf(" %.4f", tail_mean(c[v][s], steps));
        }
        for (int s = 0; s < n_seeds; s++) var += (d[s] - gap[v]) * (d[s] - gap[v]);
        se[v] = sqrt(var / (n_seeds - 1) / n_seeds);
        for (int t = 0; t < head; t++) {
            double m = 0;
            for (int s = 0; s < n_seeds; s++) m += fabs((double)c[v][s][t] / c[0][s][t] - 1) / n_seeds;
            if (m > early[v]) early[v] = m;
        }
        if (v) printf("  gap %+.2f%% ± %.2f%%  steps 1-%d within %.2f%%", 100 * gap[v], 100 * se[v], head,
                      100 * early[v]);
        printf("\n");
    }
    if (on[3]) {
        printf("bf16 vs fp32 loss after %d demo steps: %+.2f%% ± %.2f%% "
               "(mean of steps %d-%d, paired over %d seeds)",
               steps, 100 * gap[3], 100 * se[3], steps - tail + 1, steps, n_seeds);
        if (on[2]) printf("; floor, fp32 with lr 2^-8 larger: %+.2f%% ± %.2f%%", 100 * gap[2], 100 * se[2]);
        /* equivalence by two one-sided tests at 5%: the 90% interval inside +-1% */
        double lo = gap[3] - 1.645 * se[3], hi = gap[3] + 1.645 * se[3];
        printf("; steps 1-%d within %.2f%%; 90%% interval [%+.2f%%, %+.2f%%]: %s\n", head, 100 * early[3],
               100 * lo, 100 * hi, lo > -0.01 && hi < 0.01 ? "within 1% (two one-sided tests at 5%)"
                                                           : "not shown within 1% (more seeds narrow it)");
    }
    peft_demo_world_free(&w);
    return 0;
}
