/* demo — the survey's comparison on a CPU in minutes (`make demo`).

   1. builds a synthetic world (peft_demo_world_new): facts about invented
      people, sums, letter reversal; a pre-training corpus and Alpaca-style
      instructions with a held-out test split;
   2. pre-trains a tiny LLaMA-3-style model (GQA, RoPE, SwiGLU) on the corpus;
   3. checks the zero-init claim: at step 0 every method's logits equal the
      base model's, bit for bit;
   4. fine-tunes that base with full fine-tuning, LoRA, LLaMA-Adapter V1 and
      V2, LLaMA-Excitor and QLoRA, each on its recipe (the RECIPES table
      below), three seeds each (data order, initialisation, dropout);
   5. prints the table (mean ± sd over the seeds) and writes results.md,
      results.json, loss.svg (mean curves, band = min..max over seeds),
      accuracy.svg (exact match against steps) and tradeoff.svg (error bars)
      into the output folder (default demo/).
   With --full (`make demo-full`) it then runs the survey's experiments on the
   same base: LoRA's rank sweep, QLoRA against LoRA, LoRA's placement, and
   LLaMA-Adapter's zero-init against random-init gates, into full.md/json.

   build/demo [--out DIR] [--quick] [--full] [--threads N] [--seed S]
              [--seeds N] [--base DIR] [--methods a,b] [--steps N] [--lr X]
              [--set key=value;key=value]
   --threads N uses N cores: pre-training runs N threads, fine-tuning N runs
   at once (one thread each, in child processes). --quick runs a few steps
   per phase (what the tests use). --base reuses a pre-trained base folder;
   --methods, --steps, --lr and --set override the recipes (experiments);
   --set takes method keys (peft_method_set) and the trainer's weight_decay,
   beta2, max_grad_norm, schedule (constant|cosine|linear) and warmup_epochs. */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "peft_tools.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

static double now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static _Noreturn void die(const char *what) {
    fprintf(stderr, "\ndemo: %s: %s\n", what, peft_last_error());
    exit(1);
}

/* ============================================================================
   RECIPES — the demo's training recipes, a row per method. A row states only
   what is scaled to this 1.6M-parameter base, each value with its reason;
   every other value is the method's paper recipe as the library's method
   registry holds it (peft_method_get(kind)->defaults: weight decay, AdamW
   beta2, gradient clip, schedule, warm-up, the method's own settings), read
   at run time (resolve_recipe). A value its source does not state (0 in the
   registry) is the trainer's default (peft_trainer_defaults). One epoch =
   224 instructions = 14 steps of 16. results.md's recipe table marks every
   value: paper (the library's default), trainer, or demo (scaled here).
   ============================================================================ */
typedef enum {
    WARM_RATIO,  /* the registry's warmup_ratio of this run's steps: the source states a share */
    WARM_EPOCHS, /* the registry's warmup_ratio x its epochs, kept in epochs: the source states
                    epochs (LLaMA-Adapter: 2 of 5), and the run here is longer, not its epochs */
    WARM_SCALED  /* the row's warmup_epochs: the source states steps of a run of another length */
} warm_kind;

typedef struct {
    const char *name;    /* a label: the method's name for the main rows               */
    const char *method;  /* peft_method_parse name: its registry entry holds the paper's values */
    float lr, epochs;    /* always scaled: the sources train 124M-65B models on other data */
    warm_kind warm;
    float warmup_epochs; /* WARM_SCALED only                                           */
    const char *keys;    /* scaled values, "key=value;...": method keys (peft_method_set) and
                            trainer keys (weight_decay, beta2, max_grad_norm, schedule,
                            warmup_epochs); "" none */
} demo_recipe;

static const demo_recipe RECIPES[] = {
    /* full fine-tuning, Alpaca's recipe: lr 1e-3 and 6 epochs (Alpaca: 2e-5 over 3 epochs, for 7B;
       fewer epochs leave the tiny base short of its plateau) */
    {"full", "full", 1e-3f, 6.0f, WARM_RATIO, 0, ""},
    /* LoRA: lr 1e-2 (the paper: 2e-4 for GPT-2 M), 6 epochs like full fine-tuning; alpha 16: the
       survey's experiment (a) is r 8, alpha 16 on q,v (the registry holds PEFT's alpha 8);
       warm-up: the paper's 500 steps are 1.9% of its 26,290 (E2E: 42,061 examples, 5 epochs,
       batch 8), the same share of 6 epochs here */
    {"lora", "lora", 1e-2f, 6.0f, WARM_SCALED, 0.114f, "lora_alpha=16"},
    /* LLaMA-Adapter V1: lr 0.1 and 18 epochs. Adam moves a parameter about lr per step, and the
       paper's run (8,125 steps at 1.1e-3) adds up to ~4.6 of lr; 6 epochs here are 84 steps,
       too few for the prompts to leave N(0, 1) (see the README) */
    {"adapter-v1", "adapter-v1", 1e-1f, 18.0f, WARM_EPOCHS, 0, ""},
    /* LLaMA-Adapter V2: lr 3e-2, 6 epochs (it also trains bias, scale and norms) */
    {"adapter-v2", "adapter-v2", 3e-2f, 6.0f, WARM_EPOCHS, 0, ""},
    /* LLaMA-Excitor: lr 1e-2, 24 epochs and 10 prompts, the best tried here (the README): with the
       paper's 30 prompts it stayed at 3-6% at every lr and length tried */
    {"excitor", "excitor", 1e-2f, 24.0f, WARM_EPOCHS, 0, "excitor_len=10"},
    /* QLoRA: lr 1e-2 and 6 epochs (the paper: 2e-4, for 7B-65B); r 4 keeps the paper's rank per
       width (64 of 4,096; 4 of 192), alpha 8 = 2r, LoRA's row's scale (the paper: alpha 16 with
       r 64), dropout 0.05 (the paper's for 33B/65B; 0.1 for 7B/13B) */
    {"qlora", "qlora", 1e-2f, 6.0f, WARM_RATIO, 0, "lora_r=4;lora_alpha=8;lora_dropout=0.05"},
};
enum { N_RECIPES = (int)(sizeof RECIPES / sizeof RECIPES[0]) };
/* ========================================================================== */

enum { BATCH = 16, MAX_SEEDS = 8, MAX_STEPS = 2048, MAX_EVALS = 64, MAX_JOBS = 256 };

/* what one run (a recipe, a seed) measured */
typedef struct {
    double trainable, pct, seconds, cpu_s, tok_s, mem_mb, act_mb, final_loss, acc, fam[PEFT_N_TASKS];
    int steps, n_curve, n_eval;
    float curve[MAX_STEPS];
    int eval_step[MAX_EVALS];
    float eval_acc[MAX_EVALS];
    double rss_mb;
    int ok;
} run_out;

/* where a recipe's value comes from (results.md marks each) */
enum { SRC_PAPER, SRC_TRAINER, SRC_DEMO };
static const char *const SRC_NAME[] = {"paper", "trainer", "demo"};
enum { F_LR, F_SCHEDULE, F_WARMUP, F_EPOCHS, F_WD, F_BETA2, F_CLIP, N_FIELDS };

/* a recipe with the run's overrides applied and the registry's values read (resolve_recipe) */
typedef struct {
    demo_recipe r;
    char keys[512]; /* the row's keys, then --set's */
    peft_sched_kind schedule;
    float weight_decay, beta2, max_grad_norm;
    float warmup_ratio;  /* of the run's steps; used when warmup_epochs < 0 */
    float warmup_epochs; /* -1: warmup_ratio */
    int src[N_FIELDS];   /* SRC_* of each value */
    int random_gate;     /* ablation: gates drawn N(0, 1) instead of zero */
} job_recipe;

typedef struct {
    const job_recipe *jr;
    uint64_t seed;
    run_out *out;
} job;

static int eval_stride = 1; /* --quick evaluates every 12th test item */
static int quick = 0;
static const char *base_dir;
static peft_demo_world world;

static double cpu_s(void) {
    return (double)clock() / CLOCKS_PER_SEC;
}

/* memory of the training state: weights as stored (4-bit for QLoRA), and
   gradients and AdamW state of the trainable part. (Activations are
   reported apart: at this tiny scale they dwarf the weights.) */
static double train_memory_mb(const peft_model *m, const peft_trainer *tr) {
    double frozen = 0;
    double trainable = (double)peft_model_trainable_count(m);
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i]->requires_grad && m->params[i]->data) frozen += 4.0 * (double)m->params[i]->n;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].q4) frozen += (double)peft_q4_bytes(m->layers[l].lin[s].q4);
    return (frozen + 4.0 * trainable + 4.0 * trainable + (double)peft_adamw_state_bytes(&tr->opt)) /
           1048576.0;
}

/* Greedy answers for all test items at once with a KV cache: the prompts
   are right-padded into one prefill, each row is then rewound to its own
   length (causal attention: the padding never touched the real positions),
   and every step feeds one token per row; finished rows are emptied and fed
   a dummy token (the batch keeps its shape). Returns exact match %. */
static double evaluate(peft_model *m, const peft_demo_world *w, double *fam) {
    const peft_demo_item *its[512];
    int n = 0, P = 0, T = 0, V = m->cfg.vocab_size;
    for (int i = w->n_train; i < w->n_items && n < 512; i += eval_stride) its[n++] = &w->items[i];
    for (int b = 0; b < n; b++) {
        if (its[b]->n_prompt > P) P = its[b]->n_prompt;
        if (its[b]->n_ids > T) T = its[b]->n_ids;
    }
    size_t nb = n > 0 ? (size_t)n : 1;
    int *feed = calloc(nb * (size_t)(P > 0 ? P : 1), sizeof(int)), *len = malloc(sizeof(int) * nb);
    int *done = calloc(nb, sizeof(int)), *ok = malloc(sizeof(int) * nb);
    peft_kv_cache *cache;
    if (!feed || !len || !done || !ok || peft_kv_cache_new(&cache, m, n, T + 1) != PEFT_OK)
        die("out of memory");
    for (int b = 0; b < n; b++) {
        memcpy(feed + (size_t)b * P, its[b]->ids, sizeof(int) * its[b]->n_prompt);
        len[b] = its[b]->n_prompt;
        ok[b] = 1;
    }
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    peft_tensor *lg = peft_model_forward_cached(m, g, cache, feed, n, P);
    if (!lg) die("evaluation");
    for (int b = 0; b < n; b++) peft_kv_cache_set_len(cache, b, len[b]);
    for (int step = 0; lg; step++) {
        int active = 0, rowT = step == 0 ? P : 1;
        for (int b = 0; b < n; b++) {
            int at = step == 0 ? len[b] - 1 : 0;
            if (done[b]) {
                feed[b] = 0;
                continue;
            }
            /* argmax */
            int best = peft_sample(lg->data + ((size_t)b * rowT + at) * V, V, NULL, NULL, NULL, NULL);
            if (best != its[b]->ids[len[b]]) ok[b] = 0;
            feed[b] = best;
            len[b]++;
            if (best == 2 || !ok[b] || len[b] >= its[b]->n_ids) done[b] = 1;
            active |= !done[b];
        }
        if (!active) break;
        /* a 1-token dummy row */
        for (int b = 0; b < n; b++)
            if (done[b]) peft_kv_cache_set_len(cache, b, 0);
        peft_graph_reset(g);
        lg = peft_model_forward_cached(m, g, cache, feed, n, 1);
        if (!lg) die("evaluation");
    }
    int right[PEFT_N_TASKS] = {0}, count[PEFT_N_TASKS] = {0}, all = 0;
    for (int b = 0; b < n; b++) {
        int good = ok[b] && len[b] == its[b]->n_ids;
        right[its[b]->family] += good;
        count[its[b]->family]++;
        all += good;
    }
    if (fam)
        for (int f = 0; f < PEFT_N_TASKS; f++) fam[f] = count[f] ? 100.0 * right[f] / count[f] : 0;
    peft_graph_free(g);
    peft_kv_cache_free(cache);
    free(feed);
    free(len);
    free(done);
    free(ok);
    return 100.0 * all / n;
}

static int recipe_steps(const demo_recipe *r) {
    int per_epoch = (world.n_train + BATCH - 1) / BATCH;
    int s = (int)(r->epochs * per_epoch + 0.5f);
    if (quick) s = 3;
    return s < 1 ? 1 : s > MAX_STEPS ? MAX_STEPS : s;
}

/* the trainer's keys in a recipe's keys (the rest are peft_method_set keys) */
static const char *const TRAINER_KEYS[] = {"weight_decay", "beta2", "max_grad_norm", "schedule",
                                           "warmup_epochs"};

static int trainer_key(const char *key) {
    for (size_t i = 0; i < sizeof TRAINER_KEYS / sizeof *TRAINER_KEYS; i++)
        if (!strcmp(key, TRAINER_KEYS[i])) return (int)i;
    return -1;
}

/* Calls fn on each key=value of a recipe's keys; a pair without '=' ends the demo. */
static void each_key(const char *keys, void (*fn)(void *ctx, const char *key, const char *value), void *ctx) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", keys);
    for (char *kv = strtok(buf, ";"); kv; kv = strtok(NULL, ";")) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "demo: bad key '%s' (want key=value)\n", kv);
            exit(2);
        }
        *eq = 0;
        fn(ctx, kv, eq + 1);
    }
}

static int has_key(const char *keys, const char *key) {
    size_t n = strlen(key);
    for (const char *p = keys; (p = strstr(p, key)); p += n)
        if ((p == keys || p[-1] == ';') && p[n] == '=') return 1;
    return 0;
}

static peft_method_kind recipe_kind(const demo_recipe *r) {
    peft_method_kind kind = PEFT_FULL;
    if (peft_method_parse(r->method, &kind) != PEFT_OK) die(r->name);
    return kind;
}

static void set_method_key(void *ctx, const char *key, const char *value) {
    if (trainer_key(key) >= 0) return;
    if (peft_method_set((peft_method *)ctx, key, value) != PEFT_OK) die(key);
}

/* the method of a recipe: the library's defaults (the paper's), then the recipe's method keys */
static peft_method recipe_method(const job_recipe *jr, uint64_t seed) {
    peft_method m = peft_method_defaults(recipe_kind(&jr->r));
    m.seed = seed;
    each_key(jr->keys, set_method_key, &m);
    return m;
}

static void set_trainer_key(void *ctx, const char *key, const char *value) {
    job_recipe *jr = ctx;
    int k = trainer_key(key);
    if (k < 0) return;
    char *end;
    float v = strtof(value, &end);
    int number = end != value && !*end;
    if (k == 3) {
        int known = !strcmp(value, "constant") || !strcmp(value, "cosine") || !strcmp(value, "linear");
        if (!known) {
            fprintf(stderr, "demo: schedule '%s' (want constant, cosine or linear)\n", value);
            exit(2);
        }
        jr->schedule = !strcmp(value, "constant") ? PEFT_SCHED_CONSTANT
                       : !strcmp(value, "cosine") ? PEFT_SCHED_COSINE
                                                  : PEFT_SCHED_LINEAR;
        jr->src[F_SCHEDULE] = SRC_DEMO;
        return;
    }
    if (!number || v < 0) {
        fprintf(stderr, "demo: %s=%s (want a number >= 0)\n", key, value);
        exit(2);
    }
    static const int field[] = {F_WD, F_BETA2, F_CLIP, F_SCHEDULE, F_WARMUP};
    float *dst[] = {&jr->weight_decay, &jr->beta2, &jr->max_grad_norm, NULL, &jr->warmup_epochs};
    *dst[k] = v;
    jr->src[field[k]] = SRC_DEMO;
}

/* Reads the paper's values from the registry (the method's defaults) into a
   recipe, the trainer's defaults where the source states none, then the
   recipe's trainer keys. A row whose warm-up rule does not fit its registry
   entry (a ratio asked of a source that gives steps) ends the demo: the
   table and the registry disagree. */
static void resolve_recipe(job_recipe *jr) {
    const peft_method_recipe *d = &peft_method_get(recipe_kind(&jr->r))->defaults;
    peft_trainer_opts t = peft_trainer_defaults();
    jr->schedule = (peft_sched_kind)d->schedule;
    jr->weight_decay = d->weight_decay;
    jr->beta2 = d->beta2 > 0 ? d->beta2 : t.beta2;
    jr->max_grad_norm = d->max_grad_norm > 0 ? d->max_grad_norm : t.max_grad_norm;
    jr->src[F_LR] = SRC_DEMO;
    jr->src[F_EPOCHS] = SRC_DEMO;
    jr->src[F_SCHEDULE] = SRC_PAPER;
    jr->src[F_WD] = SRC_PAPER;
    jr->src[F_BETA2] = d->beta2 > 0 ? SRC_PAPER : SRC_TRAINER;
    jr->src[F_CLIP] = d->max_grad_norm > 0 ? SRC_PAPER : SRC_TRAINER;
    jr->src[F_WARMUP] = jr->r.warm == WARM_SCALED ? SRC_DEMO : SRC_PAPER;
    jr->warmup_ratio = 0;
    jr->warmup_epochs = -1;
    if (jr->r.warm != WARM_SCALED && !(d->warmup_ratio > 0 && (jr->r.warm == WARM_RATIO || d->epochs > 0))) {
        fprintf(stderr, "demo: %s: its registry entry states no warm-up %s\n", jr->r.name,
                jr->r.warm == WARM_RATIO ? "ratio" : "in epochs");
        exit(2);
    }
    if (jr->r.warm == WARM_RATIO) jr->warmup_ratio = d->warmup_ratio;
    if (jr->r.warm == WARM_EPOCHS) jr->warmup_epochs = d->warmup_ratio * (float)d->epochs;
    if (jr->r.warm == WARM_SCALED) jr->warmup_epochs = jr->r.warmup_epochs;
    each_key(jr->keys, set_trainer_key, jr);
}

/* One fine-tuning run: the base, the recipe's method (seeded: its
   initialisation and dropout), the seed's data order; the loss at every
   step, exact match every epoch and at the end. */
static void run_job(const job *jb) {
    const job_recipe *jr = jb->jr;
    run_out *r = jb->out;
    memset(r, 0, sizeof *r);
    peft_method meth = recipe_method(jr, jb->seed);
    peft_model *m;
    if (peft_model_load(&m, base_dir) != PEFT_OK) die(base_dir);
    if (peft_attach(m, &meth) != PEFT_OK) die(jr->r.name);
    if (jr->random_gate) {
        peft_rng gr;
        peft_rng_seed(&gr, jb->seed + 1000);
        for (int l = 0; l < m->cfg.n_layers; l++) {
            peft_tensor *gt = m->layers[l].attn.gate ? m->layers[l].attn.gate : m->layers[l].attn.ex_gate;
            for (int64_t i = 0; gt && i < gt->n; i++) gt->data[i] = peft_rng_normal(&gr);
        }
    }
    r->trainable = (double)peft_model_trainable_count(m);
    r->pct = 100.0 * r->trainable / (double)peft_model_base_count(m);
    int S = recipe_steps(&jr->r);
    int per_epoch = (world.n_train + BATCH - 1) / BATCH;
    peft_trainer_opts fo = peft_trainer_defaults();
    fo.lr = jr->r.lr;
    fo.total_steps = S;
    float warm = jr->warmup_epochs >= 0 ? jr->warmup_epochs * (float)per_epoch : jr->warmup_ratio * (float)S;
    fo.warmup_steps = (int)(warm + 0.5f);
    if (fo.warmup_steps >= S) fo.warmup_steps = S / 10;
    fo.schedule = jr->schedule;
    fo.max_grad_norm = jr->max_grad_norm;
    fo.beta2 = jr->beta2;
    fo.weight_decay = jr->weight_decay;
    peft_trainer *ft = peft_trainer_new(m, &fo);
    if (!ft) die("trainer");
    peft_rng order;
    peft_rng_seed(&order, jb->seed * 1000003u + 7);
    int *tok = malloc(sizeof(int) * BATCH * 128), *tgt = malloc(sizeof(int) * BATCH * 128);
    if (!tok || !tgt) die("out of memory");
    double tokens = 0, train_s = 0, t0 = now_s(), c0 = cpu_s();
    for (int s = 0; s < S; s++) {
        const peft_demo_item *batch[BATCH];
        for (int b = 0; b < BATCH; b++)
            batch[b] = &world.items[peft_rng_u64(&order) % (uint64_t)world.n_train];
        int TT = peft_demo_batch(batch, BATCH, tok, tgt);
        float loss = 0;
        double ts = now_s();
        if (peft_trainer_step(ft, tok, tgt, BATCH, TT, &loss) != PEFT_OK) die(jr->r.name);
        train_s += now_s() - ts;
        r->curve[r->n_curve++] = loss;
        tokens += (double)BATCH * TT;
        int last = s == S - 1;
        if (((s + 1) % per_epoch == 0 || last) && r->n_eval < MAX_EVALS) {
            r->eval_step[r->n_eval] = s + 1;
            r->eval_acc[r->n_eval++] = (float)evaluate(m, &world, last ? r->fam : NULL);
        }
    }
    r->steps = S;
    r->seconds = now_s() - t0;
    r->cpu_s = cpu_s() - c0;
    r->tok_s = tokens / (train_s > 0 ? train_s : 1e-9);
    r->mem_mb = train_memory_mb(m, ft);
    r->act_mb = (double)peft_trainer_arena_bytes(ft) / 1048576.0;
    int tail = S < 10 ? S : 10;
    for (int s = S - tail; s < S; s++) r->final_loss += r->curve[s] / tail;
    r->acc = r->eval_acc[r->n_eval - 1];
    r->rss_mb = (double)peft_peak_rss() / 1048576.0;
    r->ok = 1;
    free(tok);
    free(tgt);
    peft_trainer_free(ft);
    peft_model_free(m);
}

/* Runs the jobs, `workers` at a time: each in a child process with one
   thread (these tiny matrices gain little from a second thread; two runs
   at once use two cores fully), its result passed back through a file. */
static void run_jobs(job *jobs, int n, int workers, const char *out, const char *what) {
    double t0 = now_s();
    int done = 0;
    if (workers <= 1) {
        for (int i = 0; i < n; i++) {
            run_job(&jobs[i]);
            run_out *r = jobs[i].out;
            printf("  %-3d/%-3d %-22s seed %llu  %4d steps %6.1f s  loss %.3f  exact match %5.1f%%\n", ++done,
                   n, jobs[i].jr->r.name, (unsigned long long)jobs[i].seed, r->steps, r->seconds,
                   r->final_loss, r->acc);
            fflush(stdout);
        }
    } else {
        pid_t pids[64] = {0};
        int slot_job[64];
        int next = 0, running = 0;
        for (int i = 0; i < 64; i++) slot_job[i] = -1;
        fflush(stdout);
        while (done < n) {
            while (running < workers && next < n) {
                int slot = 0;
                while (slot < workers && pids[slot] != 0) slot++;
                pid_t pid = fork();
                if (pid < 0) {
                    perror("demo: fork");
                    exit(1);
                }
                if (pid == 0) {
                    peft_set_threads(1);
                    run_job(&jobs[next]);
                    char path[600];
                    snprintf(path, sizeof path, "%s/.job-%d", out, next);
                    FILE *f = fopen(path, "wb");
                    if (!f || fwrite(jobs[next].out, sizeof(run_out), 1, f) != 1 || fclose(f) != 0) _exit(1);
                    _exit(0);
                }
                pids[slot] = pid;
                slot_job[slot] = next++;
                running++;
            }
            int st;
            pid_t pid = wait(&st);
            if (pid < 0) {
                perror("demo: wait");
                exit(1);
            }
            int slot = 0;
            while (slot < workers && pids[slot] != pid) slot++;
            if (slot == workers) continue;
            int k = slot_job[slot];
            pids[slot] = 0;
            slot_job[slot] = -1;
            running--;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "demo: the run %s seed %llu failed\n", jobs[k].jr->r.name,
                        (unsigned long long)jobs[k].seed);
                exit(1);
            }
            char path[600];
            snprintf(path, sizeof path, "%s/.job-%d", out, k);
            FILE *f = fopen(path, "rb");
            if (!f || fread(jobs[k].out, sizeof(run_out), 1, f) != 1) die(path);
            fclose(f);
            remove(path);
            run_out *r = jobs[k].out;
            printf("  %-3d/%-3d %-22s seed %llu  %4d steps %6.1f s  loss %.3f  exact match %5.1f%%\n", ++done,
                   n, jobs[k].jr->r.name, (unsigned long long)jobs[k].seed, r->steps, r->seconds,
                   r->final_loss, r->acc);
            fflush(stdout);
        }
    }
    printf("  %s: %d runs in %.0f s\n", what, n, now_s() - t0);
}

/* mean, sample standard deviation, min and max of one field over the seeds */
typedef struct {
    double mean, sd, lo, hi;
} stat4;
static stat4 stats(const run_out *rs, int n, size_t offset) {
    stat4 s = {0, 0, INFINITY, -INFINITY};
    for (int i = 0; i < n; i++) {
        double v = *(const double *)((const char *)&rs[i] + offset);
        s.mean += v / n;
        s.lo = fmin(s.lo, v);
        s.hi = fmax(s.hi, v);
    }
    for (int i = 0; i < n && n > 1; i++) {
        double v = *(const double *)((const char *)&rs[i] + offset);
        s.sd += (v - s.mean) * (v - s.mean) / (n - 1);
    }
    s.sd = sqrt(s.sd);
    return s;
}
#define STAT(rs, n, field) stats(rs, n, offsetof(run_out, field))

/* a recipe's runs over the seeds */
typedef struct {
    const job_recipe *jr;
    run_out *runs; /* [n_seeds] */
    int n;
} group;

static int want_method(const char *list, const char *name) {
    if (!list) return 1;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
    return 0;
}

/* CPU seconds of the finished child processes (the parallel runs) */
static double children_cpu_s(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_CHILDREN, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static const char *sched_name(peft_sched_kind k) {
    return k == PEFT_SCHED_CONSTANT ? "constant" : k == PEFT_SCHED_COSINE ? "cosine" : "linear";
}

/* full fine-tuning's mean exact match, the "% of full" denominator */
static double full_acc = 0;

static void print_table(FILE *f, const group *gs, int n, const int *zero_ok) {
    fprintf(f, "  %-22s %6s %10s %7s %7s %8s %7s %13s %13s %7s", "method", "steps", "trainable", "% base",
            "CPU s", "tok/s", "w+opt MB", "loss", "EM % ± sd", "% full");
    for (int t = 0; t < PEFT_N_TASKS; t++) fprintf(f, " %10s", peft_task_name(t));
    fprintf(f, "%s\n", zero_ok ? "  step-0 = base" : "");
    for (int k = 0; k < n; k++) {
        const run_out *r = gs[k].runs;
        int ns = gs[k].n;
        stat4 a = STAT(r, ns, acc), l = STAT(r, ns, final_loss), c = STAT(r, ns, cpu_s),
              t = STAT(r, ns, tok_s);
        fprintf(f, "  %-22s %6d %10.0f %7.3f %7.1f %8.0f %7.2f %6.3f ± %.3f %6.1f ± %4.1f %7.0f",
                gs[k].jr->r.name, r[0].steps, r[0].trainable, r[0].pct, c.mean, t.mean, r[0].mem_mb, l.mean,
                l.sd, a.mean, a.sd, full_acc > 0 ? 100.0 * a.mean / full_acc : 0.0);
        for (int q = 0; q < PEFT_N_TASKS; q++) {
            double m = 0;
            for (int i = 0; i < ns; i++) m += r[i].fam[q] / ns;
            fprintf(f, " %10.1f", m);
        }
        if (zero_ok) fprintf(f, "  %s", zero_ok[k] ? "yes" : "NO");
        fprintf(f, "\n");
    }
}

/* the markdown table of a set of groups (results.md and full.md) */
static void md_table(FILE *f, const group *gs, int n, const int *zero_ok) {
    fprintf(f,
            "| method | steps | trainable | %% of base | CPU s per run | tokens/s | weights+optimizer MB | "
            "activations MB | final loss | exact match %% (mean ± sd) | min–max | %% of full |");
    for (int t = 0; t < PEFT_N_TASKS; t++) fprintf(f, " %s %% |", peft_task_name(t));
    if (zero_ok) fprintf(f, " step-0 logits = base |");
    fprintf(f, "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (int t = 0; t < PEFT_N_TASKS; t++) fprintf(f, "---:|");
    if (zero_ok) fprintf(f, ":---:|");
    fprintf(f, "\n");
    for (int k = 0; k < n; k++) {
        const run_out *r = gs[k].runs;
        int ns = gs[k].n;
        stat4 a = STAT(r, ns, acc), l = STAT(r, ns, final_loss), c = STAT(r, ns, cpu_s),
              t = STAT(r, ns, tok_s);
        stat4 act = STAT(r, ns, act_mb);
        fprintf(f,
                "| %s | %d | %.0f | %.3f | %.1f | %.0f | %.2f | %.1f | %.3f ± %.3f | %.1f ± %.1f | %.1f–%.1f "
                "| %.0f |",
                gs[k].jr->r.name, r[0].steps, r[0].trainable, r[0].pct, c.mean, t.mean, r[0].mem_mb, act.mean,
                l.mean, l.sd, a.mean, a.sd, a.lo, a.hi, full_acc > 0 ? 100.0 * a.mean / full_acc : 0.0);
        for (int q = 0; q < PEFT_N_TASKS; q++) {
            double m = 0;
            for (int i = 0; i < ns; i++) m += r[i].fam[q] / ns;
            fprintf(f, " %.1f |", m);
        }
        if (zero_ok) fprintf(f, " %s |", zero_ok[k] ? "yes" : "NO");
        fprintf(f, "\n");
    }
}

/* a recipe's warm-up in words */
static void warmup_text(char *buf, size_t cap, const job_recipe *jr) {
    if (jr->warmup_epochs >= 0)
        snprintf(buf, cap, "%g epochs", jr->warmup_epochs);
    else
        snprintf(buf, cap, "%g%% of the run", 100.0 * jr->warmup_ratio);
}

/* the method's own settings as the run uses them, each marked paper (the
   library's default) or demo (the recipe's keys or --set) */
static void method_text(char *buf, size_t cap, const job_recipe *jr) {
    peft_method m = recipe_method(jr, 0);
    const char *k = jr->keys;
    size_t n = 0;
    buf[0] = 0;
#define ADD(...) (n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__))
#define SRC(key) SRC_NAME[has_key(k, key) ? SRC_DEMO : SRC_PAPER]
    if (m.kind == PEFT_LORA || m.kind == PEFT_QLORA) {
        ADD("r %d (%s), alpha %g (%s), dropout %g (%s), ", m.lora_r, SRC("lora_r"), m.lora_alpha,
            SRC("lora_alpha"), m.lora_dropout, SRC("lora_dropout"));
        if (m.lora_targets == (1u << PEFT_N_SITES) - 1)
            ADD("every linear");
        else
            for (int s = 0, first = 1; s < PEFT_N_SITES; s++)
                if (m.lora_targets & 1u << s) {
                    ADD("%s%s", first ? "" : ",", peft_site_name((peft_site)s));
                    first = 0;
                }
        ADD(" (%s)", SRC("lora_targets"));
    } else if (m.kind == PEFT_ADAPTER_V1 || m.kind == PEFT_ADAPTER_V2) {
        ADD("%d prompts (%s), ", m.adapter_len, SRC("adapter_len"));
        if (m.adapter_layers > 0)
            ADD("top %d layers (%s)", m.adapter_layers, SRC("adapter_layers"));
        else
            ADD("top 30/32 of the layers (%s)", SRC("adapter_layers"));
    } else if (m.kind == PEFT_EXCITOR) {
        ADD("%d prompts (%s), rank %d (%s), ", m.excitor_len, SRC("excitor_len"), m.excitor_rank,
            SRC("excitor_rank"));
        if (m.excitor_layers > 0)
            ADD("top %d layers (%s)", m.excitor_layers, SRC("excitor_layers"));
        else
            ADD("top 30/32 of the layers (%s)", SRC("excitor_layers"));
    } else {
        ADD("—");
    }
#undef SRC
#undef ADD
}

static void md_recipes(FILE *f, const group *gs, int n) {
    fprintf(f,
            "| method | lr | schedule | warm-up | epochs | weight decay | beta2 | clip | method settings |\n"
            "|---|---|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < n; k++) {
        const job_recipe *jr = gs[k].jr;
        char warm[64], meth[512];
        warmup_text(warm, sizeof warm, jr);
        method_text(meth, sizeof meth, jr);
        const int *c = jr->src;
        fprintf(f, "| %s | %g (%s) | %s (%s) | %s (%s) | %g (%s) | %g (%s) | %g (%s) | %g (%s) | %s |\n",
                jr->r.name, jr->r.lr, SRC_NAME[c[F_LR]], sched_name(jr->schedule), SRC_NAME[c[F_SCHEDULE]],
                warm, SRC_NAME[c[F_WARMUP]], jr->r.epochs, SRC_NAME[c[F_EPOCHS]], jr->weight_decay,
                SRC_NAME[c[F_WD]], jr->beta2, SRC_NAME[c[F_BETA2]], jr->max_grad_norm, SRC_NAME[c[F_CLIP]],
                meth);
    }
}

static void json_group(FILE *f, const group *g, const int *zero_ok, int last) {
    const run_out *r = g->runs;
    int ns = g->n;
    stat4 a = STAT(r, ns, acc), l = STAT(r, ns, final_loss), c = STAT(r, ns, cpu_s), t = STAT(r, ns, tok_s);
    stat4 act = STAT(r, ns, act_mb), rss = STAT(r, ns, rss_mb);
    const job_recipe *jr = g->jr;
    const demo_recipe *rc = &jr->r;
    fprintf(f,
            "    {\"method\": \"%s\", \"recipe\": {\"method\": \"%s\", \"lr\": %g, \"schedule\": \"%s\", "
            "\"warmup_epochs\": %g, \"warmup_ratio\": %g, \"epochs\": %g, \"weight_decay\": %g, "
            "\"beta2\": %g, \"max_grad_norm\": %g, \"keys\": \"%s\"%s,\n",
            rc->name, rc->method, rc->lr, sched_name(jr->schedule), jr->warmup_epochs, jr->warmup_ratio,
            rc->epochs, jr->weight_decay, jr->beta2, jr->max_grad_norm, jr->keys,
            jr->random_gate ? ", \"random_gate\": true" : "");
    static const char *const field_name[N_FIELDS] = {"lr", "schedule", "warmup", "epochs",
                                                      "weight_decay", "beta2", "max_grad_norm"};
    fprintf(f, "     \"source\": {");
    for (int i = 0; i < N_FIELDS; i++)
        fprintf(f, "%s\"%s\": \"%s\"", i ? ", " : "", field_name[i], SRC_NAME[jr->src[i]]);
    fprintf(f, "}},\n");
    fprintf(
        f,
        "     \"steps\": %d, \"trainable\": %.0f, \"percent_of_base\": %.5f, \"cpu_seconds_per_run\": %.2f, "
        "\"tokens_per_second\": %.1f, \"weights_optimizer_mb\": %.3f, \"activations_mb\": %.2f, "
        "\"peak_rss_mb\": %.1f,\n",
        r[0].steps, r[0].trainable, r[0].pct, c.mean, t.mean, r[0].mem_mb, act.mean, rss.mean);
    fprintf(f,
            "     \"final_loss\": {\"mean\": %.4f, \"sd\": %.4f}, \"exact_match\": {\"mean\": %.2f, \"sd\": "
            "%.2f, "
            "\"min\": %.2f, \"max\": %.2f, \"seeds\": [",
            l.mean, l.sd, a.mean, a.sd, a.lo, a.hi);
    for (int i = 0; i < ns; i++) fprintf(f, "%s%.2f", i ? ", " : "", r[i].acc);
    fprintf(f, "]}, \"percent_of_full\": %.1f, \"by_family\": {",
            full_acc > 0 ? 100.0 * a.mean / full_acc : 0.0);
    for (int q = 0; q < PEFT_N_TASKS; q++) {
        double m = 0;
        for (int i = 0; i < ns; i++) m += r[i].fam[q] / ns;
        fprintf(f, "%s\"%s\": %.2f", q ? ", " : "", peft_task_name(q), m);
    }
    fprintf(f, "},\n     \"exact_match_by_step\": {\"steps\": [");
    for (int e = 0; e < r[0].n_eval; e++) fprintf(f, "%s%d", e ? ", " : "", r[0].eval_step[e]);
    fprintf(f, "], \"mean\": [");
    for (int e = 0; e < r[0].n_eval; e++) {
        double m = 0;
        for (int i = 0; i < ns; i++) m += r[i].eval_acc[e] / ns;
        fprintf(f, "%s%.2f", e ? ", " : "", m);
    }
    fprintf(f, "]}");
    if (zero_ok) fprintf(f, ", \"step0_logits_equal_base\": %s", *zero_ok ? "true" : "false");
    fprintf(f, "}%s\n", last ? "" : ",");
}

/* mean curve and its min..max band over the seeds, for a plot */
typedef struct {
    double *x, *y, *lo, *hi;
} band;
static band make_band(const group *g, int acc_curve) {
    const run_out *r = g->runs;
    int n = acc_curve ? r[0].n_eval : r[0].n_curve;
    band b;
    b.x = malloc(sizeof(double) * (size_t)(n + 1));
    b.y = malloc(sizeof(double) * (size_t)(n + 1));
    b.lo = malloc(sizeof(double) * (size_t)(n + 1));
    b.hi = malloc(sizeof(double) * (size_t)(n + 1));
    if (!b.x || !b.y || !b.lo || !b.hi) die("out of memory");
    for (int i = 0; i < n; i++) {
        b.x[i] = acc_curve ? r[0].eval_step[i] : i + 1;
        b.y[i] = 0;
        b.lo[i] = INFINITY;
        b.hi[i] = -INFINITY;
        for (int s = 0; s < g->n; s++) {
            double v = acc_curve ? r[s].eval_acc[i] : r[s].curve[i];
            b.y[i] += v / g->n;
            b.lo[i] = fmin(b.lo[i], v);
            b.hi[i] = fmax(b.hi[i], v);
        }
    }
    return b;
}
static void free_band(band *b) {
    free(b->x);
    free(b->y);
    free(b->lo);
    free(b->hi);
}

static void plot_curves(const char *path, const char *title, const char *ylabel, const group *gs, int n,
                        int acc_curve) {
    peft_series s[16] = {{0}};
    band bs[16];
    const double *lo[16] = {0}, *hi[16] = {0};
    if (n > 16) n = 16;
    for (int k = 0; k < n; k++) {
        bs[k] = make_band(&gs[k], acc_curve);
        s[k].name = gs[k].jr->r.name;
        s[k].x = bs[k].x;
        s[k].y = bs[k].y;
        s[k].n = acc_curve ? gs[k].runs[0].n_eval : gs[k].runs[0].n_curve;
        s[k].points_only = 0;
        lo[k] = bs[k].lo;
        hi[k] = bs[k].hi;
    }
    if (peft_svg_plot_range(path, title, "step", ylabel, 0, s, lo, hi, n) != PEFT_OK) die(path);
    for (int k = 0; k < n; k++) free_band(&bs[k]);
}

/* accuracy (mean, min..max error bars) against x, one point per group */
static void plot_points(const char *path, const char *title, const char *xlabel, int log_x, const group *gs,
                        int n, const double *xs) {
    peft_series s[16] = {{0}};
    double px[16], py[16], plo[16], phi[16];
    const double *lo[16] = {0}, *hi[16] = {0};
    if (n > 16) n = 16;
    for (int k = 0; k < n; k++) {
        stat4 a = STAT(gs[k].runs, gs[k].n, acc);
        px[k] = xs ? xs[k] : gs[k].runs[0].trainable;
        py[k] = a.mean;
        plo[k] = a.lo;
        phi[k] = a.hi;
        s[k].name = gs[k].jr->r.name;
        s[k].x = &px[k];
        s[k].y = &py[k];
        s[k].n = 1;
        s[k].points_only = 1;
        lo[k] = &plo[k];
        hi[k] = &phi[k];
    }
    if (peft_svg_plot_range(path, title, xlabel, "exact match % (mean, bars: min..max)", log_x, s, lo, hi,
                            n) != PEFT_OK)
        die(path);
}

static void write_results(const char *out, const group *gs, int n, const int *zero_ok, double base_params,
                          double pretrain_s, float pretrain_loss, int n_seeds) {
    char path[600];
    snprintf(path, sizeof path, "%s/results.md", out);
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    fprintf(f, "# peft.h demo results (%s)\n\n", date);
    fprintf(f, "Base: tiny LLaMA-3-style model, %.0f parameters, pre-trained", base_params);
    if (pretrain_s > 0) fprintf(f, " %.0f s to loss %.3f", pretrain_s, pretrain_loss);
    fprintf(f,
            " on the synthetic corpus. Each method on its recipe (below), batch %d, %d seeds (data order, "
            "initialisation, dropout); exact match on %d held-out instructions. CPU s: one run on one "
            "thread.\n\n",
            BATCH, n_seeds, world.n_items - world.n_train);
    md_table(f, gs, n, zero_ok);
    fprintf(f, "\nRecipes (tools/demo.c, RECIPES). Each value's source: paper = the library's method default "
               "(the paper's value, peft_method_get(kind)->defaults); trainer = peft_trainer_defaults() (the "
               "source states none); demo = scaled to this base (its reason beside the row in RECIPES). One "
               "epoch = %d steps of %d:\n\n",
            (world.n_train + BATCH - 1) / BATCH, BATCH);
    md_recipes(f, gs, n);
    int max_eval = 0;
    for (int k = 0; k < n; k++)
        if (gs[k].runs[0].n_eval > max_eval) max_eval = gs[k].runs[0].n_eval;
    fprintf(f, "\nExact match %% (mean over the seeds) after each epoch (the last: at the run's end):\n\n"
               "| method |");
    for (int e = 0; e < max_eval; e++) fprintf(f, " %d |", e + 1);
    fprintf(f, "\n|---|");
    for (int e = 0; e < max_eval; e++) fprintf(f, "---:|");
    fprintf(f, "\n");
    for (int k = 0; k < n; k++) {
        const run_out *r = gs[k].runs;
        fprintf(f, "| %s |", gs[k].jr->r.name);
        for (int e = 0; e < max_eval; e++) {
            double m = 0;
            for (int i = 0; i < gs[k].n && e < r[0].n_eval; i++) m += r[i].eval_acc[e] / gs[k].n;
            if (e < r[0].n_eval)
                fprintf(f, " %.1f |", m);
            else
                fprintf(f, " |");
        }
        fprintf(f, "\n");
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/results.json", out);
    f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f,
            "{\n  \"date\": \"%s\",\n  \"base_parameters\": %.0f,\n  \"seeds\": %d,\n  \"batch\": %d,\n"
            "  \"test_items\": %d,\n  \"methods\": [\n",
            date, base_params, n_seeds, BATCH, world.n_items - world.n_train);
    for (int k = 0; k < n; k++) json_group(f, &gs[k], zero_ok ? &zero_ok[k] : NULL, k + 1 == n);
    fprintf(f, "  ]\n}\n");
    fclose(f);
    snprintf(path, sizeof path, "%s/loss.svg", out);
    plot_curves(path, "Fine-tuning loss per method (mean, band: min..max over seeds)", "training loss", gs, n,
                0);
    snprintf(path, sizeof path, "%s/accuracy.svg", out);
    plot_curves(path, "Exact match against steps (mean, band: min..max over seeds)", "exact match %", gs, n,
                1);
    snprintf(path, sizeof path, "%s/tradeoff.svg", out);
    plot_points(path, "Accuracy vs trainable parameters", "trainable parameters", 1, gs, n, NULL);
}

/* a job_recipe from a row of RECIPES with a label and extra keys */
static void derive(job_recipe *jr, const char *base_name, const char *label, const char *keys) {
    for (int k = 0; k < N_RECIPES; k++)
        if (!strcmp(RECIPES[k].name, base_name)) jr->r = RECIPES[k];
    jr->r.name = label;
    snprintf(jr->keys, sizeof jr->keys, "%s", keys ? keys : jr->r.keys);
    jr->random_gate = 0;
    resolve_recipe(jr);
}

/* The survey's experiments on the demo's base (--full): (a) is the main
   table's LoRA row; (b) LoRA's rank sweep on q,v with alpha = 2r; (c)
   QLoRA against LoRA with the same adapter; LoRA's placement; and
   LLaMA-Adapter's zero-init against random-init gates. */
static void run_full(const char *out, int threads, uint64_t seed, int n_seeds, const group *mains,
                     int n_main) {
    static job_recipe fr[32];
    static char labels[32][48];
    static run_out fruns[32][MAX_SEEDS];
    static job fjobs[MAX_JOBS];
    const run_out *reuse[32] = {0}; /* a configuration the main table already ran */
    int n = 0;
    static const int ranks[6] = {1, 2, 4, 8, 16, 32};
    int rank0 = n;
    for (int i = 0; i < 6; i++) {
        char keys[96];
        snprintf(labels[n], sizeof labels[n], "lora r%d", ranks[i]);
        snprintf(keys, sizeof keys, "lora_r=%d;lora_alpha=%d", ranks[i], 2 * ranks[i]);
        derive(&fr[n], "lora", labels[n], keys);
        n++;
    }
    int q0 = n;
    derive(&fr[n++], "qlora", "lora (qlora's adapter)", NULL);
    fr[n - 1].r.method = "lora";
    snprintf(fr[n - 1].keys, sizeof fr[n - 1].keys, "%s;lora_targets=all-linear", fr[n - 1].r.keys);
    derive(&fr[n++], "qlora", "qlora", NULL);
    int p0 = n;
    derive(&fr[n++], "lora", "lora q,v", NULL);
    derive(&fr[n++], "lora", "lora attention q,k,v,o",
           "lora_r=8;lora_alpha=16;lora_targets=q_proj,k_proj,v_proj,o_proj");
    derive(&fr[n++], "lora", "lora attention+MLP", "lora_r=8;lora_alpha=16;lora_targets=all-linear");
    derive(&fr[n++], "lora", "lora attn+MLP top half",
           "lora_r=8;lora_alpha=16;lora_targets=all-linear;lora_layers=2,3");
    int z0 = n;
    derive(&fr[n++], "adapter-v1", "adapter-v1 zero gate", NULL);
    derive(&fr[n++], "adapter-v1", "adapter-v1 random gate", NULL);
    fr[n - 1].random_gate = 1;
    derive(&fr[n++], "excitor", "excitor zero gate", NULL);
    derive(&fr[n++], "excitor", "excitor random gate", NULL);
    fr[n - 1].random_gate = 1;
    /* the same recipe as a main row (same keys, zero gates): its runs, not new ones */
    for (int k = 0; k < n; k++)
        for (int i = 0; i < n_main && !fr[k].random_gate; i++)
            if (!strcmp(mains[i].jr->r.method, fr[k].r.method) && !strcmp(mains[i].jr->keys, fr[k].keys) &&
                mains[i].jr->r.lr == fr[k].r.lr && mains[i].jr->r.epochs == fr[k].r.epochs &&
                !mains[i].jr->random_gate && mains[i].n == n_seeds)
                reuse[k] = mains[i].runs;
    int nj = 0, n_new = 0;
    for (int k = 0; k < n; k++) n_new += !reuse[k];
    for (int s = 0; s < n_seeds; s++)
        for (int k = 0; k < n; k++) {
            if (reuse[k]) continue;
            fjobs[nj].jr = &fr[k];
            fjobs[nj].seed = seed + (uint64_t)s;
            fjobs[nj++].out = &fruns[k][s];
        }
    printf("\n[full] the survey's experiments: %d configurations (%d new) x %d seeds, %d at a time\n", n,
           n_new, n_seeds, threads);
    run_jobs(fjobs, nj, threads, out, "experiments");
    for (int k = 0; k < n; k++)
        if (reuse[k]) memcpy(fruns[k], reuse[k], sizeof(run_out) * (size_t)n_seeds);
    group g[32];
    for (int k = 0; k < n; k++) {
        g[k].jr = &fr[k];
        g[k].runs = fruns[k];
        g[k].n = n_seeds;
    }
    /* diminishing returns: the first rank from which doubling gains < 1 point */
    int knee = -1;
    for (int i = 0; i + 1 < 6 && knee < 0; i++)
        if (STAT(g[rank0 + i + 1].runs, n_seeds, acc).mean - STAT(g[rank0 + i].runs, n_seeds, acc).mean < 1.0)
            knee = i;
    char path[600];
    snprintf(path, sizeof path, "%s/full.md", out);
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f, "# The survey's experiments on the demo's base (%d seeds each)\n\n", n_seeds);
    fprintf(f, "## (b) LoRA rank sweep (q,v, alpha = 2r)\n\n");
    md_table(f, g + rank0, 6, NULL);
    if (knee >= 0)
        fprintf(f, "\nDiminishing returns from r = %d: doubling the rank gains < 1 point of exact match.\n",
                ranks[knee]);
    else
        fprintf(f, "\nEvery doubling of the rank gained at least 1 point here.\n");
    fprintf(
        f,
        "\n## (c) QLoRA against LoRA (the same adapter; the base in NF4 + double quantization or fp32)\n\n");
    md_table(f, g + q0, 2, NULL);
    fprintf(f,
            "\nPeak resident memory of the run's process: LoRA %.1f MB, QLoRA %.1f MB (the world and the "
            "evaluation included).\n",
            STAT(g[q0].runs, n_seeds, rss_mb).mean, STAT(g[q0 + 1].runs, n_seeds, rss_mb).mean);
    fprintf(f, "\n## LoRA placement (r 8, alpha 16)\n\n");
    md_table(f, g + p0, 4, NULL);
    fprintf(f, "\n## Zero-init against random-init gates (gates N(0, 1) at step 0)\n\n");
    md_table(f, g + z0, 4, NULL);
    fprintf(f, "\nThe LLaMA-Adapter paper (ScienceQA): zero-init 84.04, random-init 40.77.\n");
    fclose(f);
    snprintf(path, sizeof path, "%s/full.json", out);
    f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f, "{\n  \"seeds\": %d,\n  \"rank_knee\": %d,\n  \"experiments\": [\n", n_seeds,
            knee >= 0 ? ranks[knee] : 0);
    for (int k = 0; k < n; k++) json_group(f, &g[k], NULL, k + 1 == n);
    fprintf(f, "  ]\n}\n");
    fclose(f);
    double rx[6];
    for (int i = 0; i < 6; i++) rx[i] = ranks[i];
    snprintf(path, sizeof path, "%s/rank.svg", out);
    plot_points(path, "LoRA rank sweep (q,v, alpha = 2r)", "rank r", 1, g + rank0, 6, rx);
    printf("\n");
    print_table(stdout, g, n, NULL);
    if (knee >= 0)
        printf("  rank sweep: diminishing returns (< 1 point per doubling) from r = %d\n", ranks[knee]);
    printf("  wrote %s/full.md, full.json, rank.svg\n", out);
}

int main(int argc, char **argv) {
    const char *out = "demo", *methods = NULL, *sets = "";
    int threads = 2, n_seeds = 3, full = 0, steps_override = 0;
    float lr_override = 0;
    uint64_t seed = 1;
    base_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--full"))
            full = 1;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seeds") && i + 1 < argc)
            n_seeds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--base") && i + 1 < argc)
            base_dir = argv[++i];
        else if (!strcmp(argv[i], "--methods") && i + 1 < argc)
            methods = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps_override = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lr") && i + 1 < argc)
            lr_override = strtof(argv[++i], NULL);
        else if (!strcmp(argv[i], "--set") && i + 1 < argc)
            sets = argv[++i];
        else {
            fprintf(stderr,
                    "usage: demo [--out DIR] [--quick] [--full] [--threads N] [--seed S] [--seeds N]\n"
                    "            [--base DIR] [--methods a,b] [--steps N] [--lr X] [--set k=v;k=v]\n");
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (n_seeds < 1) n_seeds = 1;
    if (n_seeds > MAX_SEEDS) n_seeds = MAX_SEEDS;
    if (quick) {
        eval_stride = 12;
        if (n_seeds > 2) n_seeds = 2;
    }
    char path[512], base_path[512];
    snprintf(path, sizeof path, "mkdir -p '%s'", out);
    if (system(path) != 0) {
        fprintf(stderr, "demo: cannot create %s\n", out);
        return 1;
    }
    double t_start = now_s(), c_start = cpu_s() + children_cpu_s();
    printf("demo: %s%s, %d seeds, %d cores\n", quick ? "quick" : "the comparison",
           full ? " and the survey's experiments (--full)" : "", n_seeds, threads);

    /* 1. the world */
    printf("[1/5] synthetic world\n");
    if (peft_demo_world_new(&world, seed) != PEFT_OK) die("world");
    printf("  %d words, corpus of %lld tokens, %d train and %d test instructions (Alpaca template)\n",
           world.n_words, (long long)world.n_corpus, world.n_train, world.n_items - world.n_train);

    /* 2. pre-train the base */
    double pretrain_s = 0;
    float ema = 0;
    if (base_dir) {
        printf("[2/5] the base: %s (given)\n", base_dir);
    } else {
        printf("[2/5] pre-training a tiny LLaMA-3-style base\n");
        peft_set_threads(threads);
        peft_config c;
        peft_config_preset(&c, "tiny");
        c.dim = 192;
        c.hidden_dim = 512;
        c.n_layers = 4;
        c.n_heads = 6;
        c.n_kv_heads = 2;
        c.head_dim = 32;
        c.vocab_size = (world.n_words + 7) / 8 * 8;
        c.max_seq_len = 128;
        c.bos_id = 1;
        c.eos_id = 2;
        peft_model *base;
        if (peft_model_new(&base, &c, 1, seed) != PEFT_OK) die("base model");
        peft_method fm = peft_method_defaults(PEFT_FULL);
        peft_attach(base, &fm);
        int P = quick ? 4 : 500, T = 64;
        peft_trainer_opts o = peft_trainer_defaults();
        o.lr = 3e-3f;
        o.warmup_steps = P / 20;
        o.total_steps = P;
        o.schedule = PEFT_SCHED_COSINE;
        o.min_lr = 3e-4f;
        peft_trainer *tr = peft_trainer_new(base, &o);
        int *tok = malloc(sizeof(int) * BATCH * 128), *tgt = malloc(sizeof(int) * BATCH * 128);
        peft_rng rng;
        peft_rng_seed(&rng, seed);
        double t0 = now_s();
        float loss = 0;
        for (int s = 0; s < P; s++) {
            peft_batch_sample(&rng, world.corpus, world.n_corpus, BATCH, T, tok, tgt);
            if (peft_trainer_step(tr, tok, tgt, BATCH, T, &loss) != PEFT_OK) die("pre-training");
            ema = s ? 0.95f * ema + 0.05f * loss : loss;
            double el = now_s() - t0;
            if (s % 5 == 0 || s == P - 1)
                peft_progress(stdout, "pretrain", s + 1, P, ema, 0, (double)(s + 1) * BATCH * T / el, el);
        }
        pretrain_s = now_s() - t0;
        printf("  base: %lld parameters, loss %.3f after %.0f s\n", (long long)peft_model_base_count(base),
               ema, pretrain_s);
        peft_trainer_free(tr);
        free(tok);
        free(tgt);
        snprintf(base_path, sizeof base_path, "%s/base", out);
        if (peft_model_save(base, base_path) != PEFT_OK) die(base_path);
        peft_model_free(base);
        base_dir = base_path;
    }
    peft_set_threads(1);

    /* the recipes of this run, with the command line's overrides */
    static job_recipe jrs[N_RECIPES];
    int n_rec = 0;
    for (int k = 0; k < N_RECIPES; k++) {
        if (!want_method(methods, RECIPES[k].name)) continue;
        job_recipe *jr = &jrs[n_rec++];
        jr->r = RECIPES[k];
        if (lr_override > 0) jr->r.lr = lr_override;
        if (steps_override > 0) jr->r.epochs = (float)steps_override / ((world.n_train + BATCH - 1) / BATCH);
        snprintf(jr->keys, sizeof jr->keys, "%s%s%s", RECIPES[k].keys, *RECIPES[k].keys && *sets ? ";" : "",
                 sets);
        resolve_recipe(jr);
    }

    /* 3. zero init: step-0 logits against the base's */
    printf("[3/5] zero init: each method's logits at step 0 against the base model's\n");
    int zero_ok[N_RECIPES];
    {
        enum { NZ = 4 };
        const peft_demo_item *its[NZ];
        for (int b = 0; b < NZ; b++) its[b] = &world.items[world.n_train + b * 17];
        int tok[NZ * 128], tgt[NZ * 128];
        int T = peft_demo_batch(its, NZ, tok, tgt);
        peft_model *b0 = NULL, *bq = NULL;
        if (peft_model_load(&b0, base_dir) != PEFT_OK || peft_model_load(&bq, base_dir) != PEFT_OK)
            die(base_dir);
        if (peft_model_quantize(bq, PEFT_NF4, 1) != PEFT_OK) die("quantize");
        peft_graph *g0 = peft_graph_new(), *gq = peft_graph_new(), *g = peft_graph_new();
        peft_graph_set_grad(g0, 0);
        peft_graph_set_grad(gq, 0);
        peft_graph_set_grad(g, 0);
        peft_tensor *l0 = peft_model_forward(b0, g0, tok, NZ, T),
                    *lq = peft_model_forward(bq, gq, tok, NZ, T);
        if (!l0 || !lq) die("forward");
        printf("  step-0 logits == base, bit for bit:");
        for (int k = 0; k < n_rec; k++) {
            peft_method meth = recipe_method(&jrs[k], seed);
            peft_model *m;
            if (peft_model_load(&m, base_dir) != PEFT_OK || peft_attach(m, &meth) != PEFT_OK)
                die(jrs[k].r.name);
            peft_graph_reset(g);
            peft_tensor *lg = peft_model_forward(m, g, tok, NZ, T);
            if (!lg) die("forward");
            const peft_tensor *ref = meth.kind == PEFT_QLORA ? lq : l0;
            zero_ok[k] = lg->n == ref->n && memcmp(lg->data, ref->data, sizeof(float) * (size_t)lg->n) == 0;
            printf("  %s %s%s", jrs[k].r.name, zero_ok[k] ? "yes" : "NO",
                   meth.kind == PEFT_QLORA ? " (NF4 base)" : "");
            peft_model_free(m);
        }
        printf("\n");
        peft_graph_free(g0);
        peft_graph_free(gq);
        peft_graph_free(g);
        peft_model_free(b0);
        peft_model_free(bq);
    }

    /* 4. every method on its recipe, over the seeds */
    static run_out runs[N_RECIPES][MAX_SEEDS];
    static job jobs[MAX_JOBS];
    int n_jobs = 0;
    for (int s = 0; s < n_seeds; s++)
        for (int k = 0; k < n_rec; k++) {
            jobs[n_jobs].jr = &jrs[k];
            jobs[n_jobs].seed = seed + (uint64_t)s;
            jobs[n_jobs++].out = &runs[k][s];
        }
    printf("[4/5] fine-tuning: %d methods x %d seeds, each on its recipe, %d at a time\n", n_rec, n_seeds,
           threads);
    run_jobs(jobs, n_jobs, threads, out, "fine-tuning");

    /* 5. the table and the files */
    printf("[5/5] results (exact match on %d held-out instructions, mean ± sd over %d seeds)\n\n",
           world.n_items - world.n_train, n_seeds);
    group gs[N_RECIPES];
    for (int k = 0; k < n_rec; k++) {
        gs[k].jr = &jrs[k];
        gs[k].runs = runs[k];
        gs[k].n = n_seeds;
        if (!strcmp(jrs[k].r.name, "full")) full_acc = STAT(runs[k], n_seeds, acc).mean;
    }
    print_table(stdout, gs, n_rec, zero_ok);
    peft_model *bm;
    if (peft_model_load(&bm, base_dir) != PEFT_OK) die(base_dir);
    double base_params = (double)peft_model_base_count(bm);
    peft_model_free(bm);
    write_results(out, gs, n_rec, zero_ok, base_params, pretrain_s, ema, n_seeds);
    printf("\n  wrote %s/results.md, results.json, loss.svg, accuracy.svg, tradeoff.svg (%.0f s wall, %.0f s "
           "CPU)\n",
           out, now_s() - t_start, cpu_s() + children_cpu_s() - c_start);
    if (full)
        run_full(out, threads, seed, n_seeds, gs, n_rec);
    else
        printf("  (the survey's experiments: make demo-full)\n");
    double cpu_total = cpu_s() + children_cpu_s();
    printf("\n  ran: world, %s, zero-init check, %d methods x %d seeds%s; total %.0f s wall, %.0f s CPU\n",
           pretrain_s > 0 ? "pre-training" : "the given base", n_rec, n_seeds,
           full ? ", the survey's experiments" : "", now_s() - t_start, cpu_total - c_start);
    peft_demo_world_free(&world);
    return 0;
}
