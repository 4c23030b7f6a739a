/* peft — command line front end of peft.h. A thin layer: parse flags, call
   the library, print. Every failure prints peft_last_error() and exits 1
   (2 for usage errors). */
#define PEFT_IMPLEMENTATION
#include "../peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "peft %s: %s%s%s\nTry 'peft %s --help'.\n", cmd, msg, arg ? ": " : "", arg ? arg : "", cmd);
    return 2;
}
static int fail(void) {
    fprintf(stderr, "peft: error: %s\n", peft_last_error());
    return 1;
}

/* 6738415616 -> "6,738,415,616" */
static const char *commas(int64_t v, char *buf) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)(v < 0 ? -v : v)), o = 0;
    if (v < 0) buf[o++] = '-';
    for (int i = 0; i < n; i++) {
        buf[o++] = tmp[i];
        if ((n - i - 1) % 3 == 0 && i + 1 < n) buf[o++] = ',';
    }
    buf[o] = 0;
    return buf;
}

static double now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Parses a non-negative integer or a float flag value; returns 0 on junk. */
static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < 0 || v > 1000000000) return 0;
    *out = (int)v;
    return 1;
}
static int parse_float(const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !isfinite(v)) return 0;
    *out = (float)v;
    return 1;
}

/* ---------------------------------------------------------- method flags */
/* --method NAME and the methods' hyper-parameters: --lora-r 8 is the
   library's "lora_r" setting. Collected while parsing, applied at the end
   so that they may come before or after --method. */
typedef struct { const char *method; const char *keys[32], *vals[32]; int n; } method_flags;

static const char *const METHOD_FLAGS[] = { "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-targets",
    "--lora-init", "--lora-layers", "--lora-rslora", "--adapter-len", "--adapter-layers", "--adapter-gate",
    "--fusion-layers", "--fusion-dim", "--excitor-len", "--excitor-rank", "--excitor-layers", NULL };

static const char *METHOD_HELP =
    "  --method M            full | lora | adapter-v1 | adapter-v2 | excitor | qlora (default full)\n"
    "  --lora-r R            LoRA rank (default 8; QLoRA 64)\n"
    "  --lora-alpha A        LoRA alpha (default 8; QLoRA 16); scale = alpha/r\n"
    "  --lora-dropout P      dropout on the LoRA branch (default 0)\n"
    "  --lora-targets LIST   q_proj,v_proj (default) | any of q k v o gate up down | all-linear\n"
    "  --lora-init I         kaiming (PEFT's default) | gaussian\n"
    "  --lora-layers LIST    layers to adapt, e.g. 0-3,7 (default all)\n"
    "  --lora-rslora 1       rank-stabilised scale alpha/sqrt(r)\n"
    "  --adapter-len K       LLaMA-Adapter prompts per layer (default 10)\n"
    "  --adapter-layers L    adapted top layers (default: 30/32 of the model's)\n"
    "  --adapter-gate G      head (tanh gate per head, the paper) | peft (one raw gate, PEFT's)\n"
    "  --fusion-layers F     adapter-v2 early-fusion layers (default 0)\n"
    "  --fusion-dim D        width of the condition vectors for early fusion\n"
    "  --excitor-len K       Excitor prompts (default 30)\n"
    "  --excitor-rank R      Excitor bottleneck rank (default 16)\n"
    "  --excitor-layers L    adapted top layers (default: 30/32 of the model's)\n";

/* Returns 1 if a/v was a method flag (stored), 0 if not. */
static int take_method_flag(method_flags *mf, const char *a, const char *v) {
    if (!strcmp(a, "--method")) { mf->method = v; return 1; }
    for (int i = 0; METHOD_FLAGS[i]; i++)
        if (!strcmp(a, METHOD_FLAGS[i]) && mf->n < 32) { mf->keys[mf->n] = a; mf->vals[mf->n++] = v; return 1; }
    return 0;
}

static int build_method(const method_flags *mf, peft_method *out, uint64_t seed) {
    peft_method_kind kind = PEFT_FULL;
    if (mf->method && peft_method_parse(mf->method, &kind) != PEFT_OK) return fail();
    *out = peft_method_defaults(kind);
    out->seed = seed;
    for (int i = 0; i < mf->n; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s", mf->keys[i] + 2);
        for (char *p = key; *p; p++) if (*p == '-') *p = '_';
        if (peft_method_set(out, key, mf->vals[i]) != PEFT_OK) return fail();
    }
    return 0;
}

/* ------------------------------------------------------------------ info */
static const char *INFO_HELP =
    "usage: peft info MODEL_DIR [--method M [method flags]]\n"
    "       peft info --preset NAME [--method M [method flags]]\n"
    "       peft info --list\n\n"
    "Prints a model's configuration and parameter counts (from config.json or a\n"
    "built-in preset; no weights are loaded). With --method, the parameters that\n"
    "method trains and their share of the base model.\n";

static void print_config(const peft_config *c, const char *what) {
    char b1[40], b2[40], b3[40];
    int64_t total = peft_config_param_count(c);
    int64_t emb = (int64_t)c->vocab_size * c->dim;
    printf("model            %s\n", what);
    printf("hidden_size      %d\nintermediate     %d\nlayers           %d\n", c->dim, c->hidden_dim, c->n_layers);
    printf("heads            %d (kv %d, head_dim %d)\n", c->n_heads, c->n_kv_heads, c->head_dim);
    printf("vocab            %d%s\nmax positions    %d\n", c->vocab_size, c->tie_embeddings ? " (tied embeddings)" : "", c->max_seq_len);
    printf("rms_norm_eps     %g\nrope_theta       %g", c->norm_eps, c->rope_theta);
    if (c->rope_type == PEFT_ROPE_LLAMA3)
        printf(" (llama3 scaling: factor %g, low %g, high %g, original %d)", c->rope_factor, c->rope_low_freq,
               c->rope_high_freq, c->rope_orig_max_pos);
    if (c->rope_type == PEFT_ROPE_LINEAR) printf(" (linear scaling: factor %g)", c->rope_factor);
    printf("\nparameters       %s (embeddings %s, transformer blocks %s)\n", commas(total, b1), commas(emb * (c->tie_embeddings ? 1 : 2), b2),
           commas(total - emb * (c->tie_embeddings ? 1 : 2), b3));
    printf("fp32 weights     %.1f MB\n", total * 4.0 / 1e6);
}

static int cmd_info(int argc, char **argv) {
    peft_config c;
    method_flags mf = { 0 };
    const char *preset = NULL, *dir = NULL;
    for (int i = 0; i < argc;) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(INFO_HELP, stdout); fputs(METHOD_HELP, stdout); return 0; }
        if (!strcmp(a, "--list")) {
            for (int k = 0; peft_preset_name(k); k++) {
                char b[40];
                peft_config_preset(&c, peft_preset_name(k));
                printf("%-16s %20s parameters\n", peft_preset_name(k), commas(peft_config_param_count(&c), b));
            }
            return 0;
        }
        if (a[0] != '-') { dir = a; i++; continue; }
        if (!v) return usage_error("info", "option needs a value", a);
        if (!strcmp(a, "--preset")) preset = v;
        else if (!take_method_flag(&mf, a, v)) return usage_error("info", "unknown option", a);
        i += 2;
    }
    if (!preset && !dir) return usage_error("info", "a model folder or --preset NAME is needed", NULL);
    if (preset) { if (peft_config_preset(&c, preset) != PEFT_OK) return fail(); }
    else {
        char path[1024];
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (peft_config_load(&c, path) != PEFT_OK) return fail();
    }
    print_config(&c, preset ? preset : dir);
    if (mf.method) {
        peft_method m;
        if (build_method(&mf, &m, 0)) return 1;
        char b1[40];
        int64_t n = peft_method_param_count(&c, &m), base = peft_config_param_count(&c);
        printf("method           %s\ntrainable        %s (%.4f%% of the base model)\n", peft_method_name(m.kind), commas(n, b1),
               100.0 * (double)n / (double)base);
    }
    return 0;
}

/* ---------------------------------------------------------- model flags */
typedef struct { const char *model, *preset, *adapter; uint64_t seed; } model_src;

/* --model DIR or --preset NAME (random init from --seed), then --adapter DIR. */
static int load_model(const model_src *src, peft_model **m) {
    peft_status s = src->model ? peft_model_load(m, src->model) : peft_model_from_preset(m, src->preset, 1, src->seed);
    if (s != PEFT_OK) return fail();
    if (src->adapter && peft_adapter_load(*m, src->adapter) != PEFT_OK) { peft_model_free(*m); *m = NULL; return fail(); }
    return 0;
}

/* ---------------------------------------------------------------- logits */
static const char *LOGITS_HELP =
    "usage: peft logits (--model DIR | --preset NAME [--seed S]) [--adapter DIR] --tokens 1,2,3 --out FILE\n\n"
    "Runs one sequence forward and writes its logits as float32, little-endian,\n"
    "row-major [T, vocab] to FILE (atomically).\n"
    "  --threads N   worker threads (default 1)\n";

static int cmd_logits(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *tokens_arg = NULL, *out = NULL;
    int threads = 1;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(LOGITS_HELP, stdout); return 0; }
        if (!v) return usage_error("logits", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--preset")) src.preset = v;
        else if (!strcmp(a, "--seed")) src.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--tokens")) tokens_arg = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--threads")) { if (!parse_int(v, &threads) || threads < 1) return usage_error("logits", "bad --threads", v); }
        else return usage_error("logits", "unknown option", a);
    }
    if (!src.model && !src.preset) return usage_error("logits", "--model or --preset is required", NULL);
    if (!tokens_arg || !out) return usage_error("logits", "--tokens and --out are required", NULL);
    int cap = 16, T = 0, *tok = malloc(sizeof(int) * cap);
    for (const char *p = tokens_arg; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 2000000000) { free(tok); return usage_error("logits", "--tokens must be comma-separated ids", tokens_arg); }
        if (T == cap) tok = realloc(tok, sizeof(int) * (cap *= 2));
        tok[T++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') { free(tok); return usage_error("logits", "--tokens must be comma-separated ids", tokens_arg); }
    }
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) { free(tok); return 1; }
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    peft_tensor *lg = peft_model_forward(m, g, tok, 1, T);
    int rc = 0;
    if (!lg || peft_write_file_atomic(out, lg->data, sizeof(float) * (size_t)lg->n) != PEFT_OK) rc = fail();
    else printf("wrote %s: [%d, %d] float32\n", out, T, m->cfg.vocab_size);
    peft_graph_free(g);
    peft_model_free(m);
    free(tok);
    return rc;
}

/* ----------------------------------------------------------------- train */
static const char *TRAIN_HELP =
    "usage: peft train (--model DIR | --preset NAME) --data FILE [options]\n\n"
    "Fine-tunes on FILE (token ids separated by spaces/commas, or plain text read\n"
    "as bytes) with AdamW, printing the loss of every step. --out saves the\n"
    "adapter folder (PEFT layout), or the whole model for --method full.\n"
    "  --steps N             optimizer steps (default 100)\n"
    "  --batch B             sequences per micro-batch (default 4)\n"
    "  --seq T               tokens per sequence (default 64)\n"
    "  --grad-accum K        micro-batches per step (default 1)\n"
    "  --lr X                peak learning rate (default 1e-3)\n"
    "  --min-lr X            final learning rate for cosine/linear (default 0)\n"
    "  --schedule S          constant | cosine | linear (default cosine)\n"
    "  --warmup N            warm-up steps (default 0)\n"
    "  --weight-decay X      AdamW weight decay (default 0)\n"
    "  --max-grad-norm X     clip the global gradient norm (default 1; 0 = off)\n"
    "  --seed S              data order and random init (default 0)\n"
    "  --threads N           worker threads (default 1)\n"
    "  --optim O             adamw | paged (paged AdamW emulation) | 8bit (8-bit states)\n"
    "  --optim-budget-mb X   resident budget of the paged optimizer (default 64)\n"
    "  --out DIR             save the adapter (or, for full, the model folder) there\n";

static int cmd_train(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    method_flags mf = { 0 };
    const char *data = NULL, *out = NULL;
    int steps = 100, B = 4, T = 64, threads = 1;
    peft_trainer_opts o = peft_trainer_defaults();
    o.schedule = PEFT_SCHED_COSINE;
    o.weight_decay = 0;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(TRAIN_HELP, stdout); fputs(METHOD_HELP, stdout); return 0; }
        if (!v) return usage_error("train", "option needs a value", a);
        if (take_method_flag(&mf, a, v)) continue;
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--preset")) src.preset = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--seed")) src.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--steps")) ok = parse_int(v, &steps) && steps > 0;
        else if (!strcmp(a, "--batch")) ok = parse_int(v, &B) && B > 0;
        else if (!strcmp(a, "--seq")) ok = parse_int(v, &T) && T > 0;
        else if (!strcmp(a, "--grad-accum")) ok = parse_int(v, &o.grad_accum) && o.grad_accum > 0;
        else if (!strcmp(a, "--warmup")) ok = parse_int(v, &o.warmup_steps);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, &threads) && threads > 0;
        else if (!strcmp(a, "--optim")) {
            o.paged_optim = !strcmp(v, "paged");
            o.optim_8bit = !strcmp(v, "8bit");
            ok = o.paged_optim || o.optim_8bit || !strcmp(v, "adamw");
        } else if (!strcmp(a, "--optim-budget-mb")) {
            int mb;
            ok = parse_int(v, &mb) && mb > 0;
            o.optim_budget_bytes = (size_t)mb << 20;
        }
        else if (!strcmp(a, "--lr")) ok = parse_float(v, &o.lr) && o.lr > 0;
        else if (!strcmp(a, "--min-lr")) ok = parse_float(v, &o.min_lr) && o.min_lr >= 0;
        else if (!strcmp(a, "--weight-decay")) ok = parse_float(v, &o.weight_decay) && o.weight_decay >= 0;
        else if (!strcmp(a, "--max-grad-norm")) ok = parse_float(v, &o.max_grad_norm) && o.max_grad_norm >= 0;
        else if (!strcmp(a, "--schedule")) {
            if (!strcmp(v, "constant")) o.schedule = PEFT_SCHED_CONSTANT;
            else if (!strcmp(v, "cosine")) o.schedule = PEFT_SCHED_COSINE;
            else if (!strcmp(v, "linear")) o.schedule = PEFT_SCHED_LINEAR;
            else ok = 0;
        } else return usage_error("train", "unknown option", a);
        if (!ok) return usage_error("train", "bad value for", a);
    }
    if (!src.model && !src.preset) return usage_error("train", "--model or --preset is required", NULL);
    if (!data) return usage_error("train", "--data is required", NULL);
    peft_method meth;
    if (mf.method && strcmp(mf.method, "full") && strcmp(mf.method, "lora") && strcmp(mf.method, "adapter-v1") &&
        strcmp(mf.method, "adapter-v2") && strcmp(mf.method, "excitor") && strcmp(mf.method, "qlora"))
        return usage_error("train", "unknown --method (full, lora, adapter-v1, adapter-v2, excitor, qlora)", mf.method);
    if (build_method(&mf, &meth, src.seed)) return 1;
    o.total_steps = steps;
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    int *ids;
    int64_t n;
    if (peft_tokens_load(data, m->cfg.vocab_size, &ids, &n) != PEFT_OK) { peft_model_free(m); return fail(); }
    if (n < T + 1) {
        fprintf(stderr, "peft: error: %s: %lld tokens, fewer than --seq + 1 = %d\n", data, (long long)n, T + 1);
        free(ids); peft_model_free(m);
        return 1;
    }
    if (peft_attach(m, &meth) != PEFT_OK) { free(ids); peft_model_free(m); return fail(); }
    char b1[40], b2[40];
    printf("training %s parameters (%.4f%% of %s) with %s, %lld tokens of data\n", commas(peft_model_trainable_count(m), b1),
           100.0 * (double)peft_model_trainable_count(m) / (double)peft_model_base_count(m),
           commas(peft_model_base_count(m), b2), peft_method_name(meth.kind), (long long)n);
    peft_trainer *tr = peft_trainer_new(m, &o);
    peft_rng rng;
    peft_rng_seed(&rng, src.seed);
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    int rc = 0;
    double t0 = now_s();
    for (int s = 0; s < steps && !rc; s++) {
        double ts = now_s(), sum = 0;
        for (int k = 0; k < o.grad_accum && !rc; k++) {
            float loss;
            peft_batch_sample(&rng, ids, n, B, T, tok, tgt);
            if (peft_trainer_step(tr, tok, tgt, B, T, &loss) != PEFT_OK) rc = fail();
            sum += loss;
        }
        if (rc) break;
        double dt = now_s() - ts;
        printf("step %4d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %.0f tok/s\n", s + 1, steps, sum / o.grad_accum,
               tr->last_lr, tr->last_grad_norm, (double)B * T * o.grad_accum / dt);
        fflush(stdout);
    }
    if (!rc) printf("done in %.1f s\n", now_s() - t0);
    if (!rc && out) {
        peft_status st = meth.kind == PEFT_FULL ? peft_model_save(m, out) : peft_adapter_save(m, out);
        if (st != PEFT_OK) rc = fail();
        else printf("saved %s\n", out);
    }
    free(tok); free(tgt); free(ids);
    peft_trainer_free(tr);
    peft_model_free(m);
    return rc;
}

/* ----------------------------------------------------------------- bench */
static const char *BENCH_HELP =
    "usage: peft bench (--preset NAME | --model DIR) [--method M [method flags]]\n"
    "                  [--batch B] [--seq T] [--steps N] [--threads K]\n"
    "                  [--optim adamw|paged|8bit] [--optim-budget-mb X]\n\n"
    "Times training steps on random tokens and prints one line per figure:\n"
    "tokens/s, step ms (median), GFLOP/s (model FLOPs: 2 per weight per token\n"
    "forward, 2 more for the input gradient, 2 more per trainable weight, plus\n"
    "attention), peak RSS, and the memory the method and optimizer take.\n";

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmd_bench(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    method_flags mf = { 0 };
    const char *optim = "adamw";
    int B = 4, T = 64, steps = 5, threads = 1, budget_mb = 64;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(BENCH_HELP, stdout); fputs(METHOD_HELP, stdout); return 0; }
        if (!v) return usage_error("bench", "option needs a value", a);
        if (take_method_flag(&mf, a, v)) continue;
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--preset")) src.preset = v;
        else if (!strcmp(a, "--optim")) optim = v;
        else if (!strcmp(a, "--batch")) ok = parse_int(v, &B) && B > 0;
        else if (!strcmp(a, "--seq")) ok = parse_int(v, &T) && T > 0;
        else if (!strcmp(a, "--steps")) ok = parse_int(v, &steps) && steps > 0;
        else if (!strcmp(a, "--threads")) ok = parse_int(v, &threads) && threads > 0;
        else if (!strcmp(a, "--optim-budget-mb")) ok = parse_int(v, &budget_mb) && budget_mb > 0;
        else return usage_error("bench", "unknown option", a);
        if (!ok) return usage_error("bench", "bad value for", a);
    }
    if (!src.model && !src.preset) return usage_error("bench", "--model or --preset is required", NULL);
    if (strcmp(optim, "adamw") && strcmp(optim, "paged") && strcmp(optim, "8bit"))
        return usage_error("bench", "--optim must be adamw, paged or 8bit", optim);
    peft_method meth;
    if (build_method(&mf, &meth, 0)) return 1;
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    if (peft_attach(m, &meth) != PEFT_OK) { peft_model_free(m); return fail(); }
    peft_trainer_opts o = peft_trainer_defaults();
    o.paged_optim = !strcmp(optim, "paged");
    o.optim_8bit = !strcmp(optim, "8bit");
    o.optim_budget_bytes = (size_t)budget_mb << 20;
    peft_trainer *tr = peft_trainer_new(m, &o);
    if (!tr) { peft_model_free(m); return fail(); }
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    double *ms = malloc(sizeof(double) * steps);
    int rc = 0;
    for (int s = 0; s <= steps && !rc; s++) {                 /* step 0 warms up */
        for (int i = 0; i < B * T; i++) { tok[i] = (int)(peft_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size); }
        for (int i = 0; i < B * T; i++) tgt[i] = tok[(i + 1) % (B * T)];
        float loss;
        double t0 = now_s();
        if (peft_trainer_step(tr, tok, tgt, B, T, &loss) != PEFT_OK) rc = fail();
        if (s > 0) ms[s - 1] = 1000.0 * (now_s() - t0);
    }
    if (!rc) {
        qsort(ms, (size_t)steps, sizeof(double), cmp_double);
        double med = ms[steps / 2];
        const peft_config *c = &m->cfg;
        double tokens = (double)B * T, base = (double)peft_model_base_count(m), train = (double)peft_model_trainable_count(m);
        double attn = 4.0 * c->n_layers * (double)c->n_heads * c->head_dim * T * (T + 1) / 2.0 * B;  /* QK and PV */
        double flops = (4.0 * base + 2.0 * train) * tokens + 3.0 * attn;
        char b1[40];
        printf("model            %s, method %s, batch %d x seq %d, %d threads, optimizer %s\n",
               src.preset ? src.preset : src.model, peft_method_name(meth.kind), B, T, threads, optim);
        printf("trainable        %s parameters (%.4f%%)\n", commas((int64_t)train, b1), 100.0 * train / base);
        printf("tokens/s         %.1f\n", tokens / (med / 1000.0));
        printf("step ms (median) %.1f\n", med);
        printf("GFLOP/s          %.2f\n", flops / (med / 1000.0) / 1e9);
        printf("peak RSS MB      %.1f\n", (double)peft_peak_rss() / 1048576.0);
        printf("optimizer MB     %.1f (state %s)\n", (double)peft_adamw_state_bytes(&tr->opt) / 1048576.0, optim);
        if (m->cfg.q4) printf("bits/frozen lin  %.3f (4-bit storage, from allocated bytes)\n", peft_model_linear_bits(m));
        if (o.paged_optim)
            printf("pager            %ld pages evicted, %ld loaded, %.1f MB moved, peak resident %.1f MB\n",
                   tr->opt.stats.pages_evicted, tr->opt.stats.pages_loaded, (double)tr->opt.stats.bytes_moved / 1048576.0,
                   (double)tr->opt.stats.peak_resident / 1048576.0);
    }
    free(tok); free(tgt); free(ms);
    peft_trainer_free(tr);
    peft_model_free(m);
    return rc;
}

/* -------------------------------------------------------------- quantize */
static const char *QUANTIZE_HELP =
    "usage: peft quantize --model DIR --out DIR [--quant nf4|fp4|int4] [--double-quant]\n\n"
    "Stores every block linear in 4 bits (blocks of 64; double quantization adds\n"
    "8-bit absmax codes) and writes a model folder in the layout transformers +\n"
    "bitsandbytes use (nf4 and fp4). Embeddings, norms and lm_head stay fp32.\n";

static int cmd_quantize(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *out = NULL, *quant = "nf4";
    int dq = 0;
    for (int i = 0; i < argc;) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(QUANTIZE_HELP, stdout); return 0; }
        if (!strcmp(a, "--double-quant")) { dq = 1; i++; continue; }
        if (!v) return usage_error("quantize", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--quant")) quant = v;
        else return usage_error("quantize", "unknown option", a);
        i += 2;
    }
    if (!src.model || !out) return usage_error("quantize", "--model and --out are required", NULL);
    peft_q4_type t;
    if (!strcmp(quant, "nf4")) t = PEFT_NF4;
    else if (!strcmp(quant, "fp4")) t = PEFT_FP4;
    else if (!strcmp(quant, "int4")) t = PEFT_INT4;
    else return usage_error("quantize", "--quant must be nf4, fp4 or int4", quant);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    int rc = 0;
    if (m->cfg.q4) { fprintf(stderr, "peft: error: %s is already quantized\n", src.model); rc = 1; }
    else if (peft_model_quantize(m, t, dq) != PEFT_OK || peft_model_save_quantized(m, out) != PEFT_OK) rc = fail();
    else printf("wrote %s: %s%s, %.3f bits per block-linear parameter\n", out, quant, dq ? " + double quantization" : "",
                peft_model_linear_bits(m));
    peft_model_free(m);
    return rc;
}

/* -------------------------------------------------------------- generate */
static const char *GENERATE_HELP =
    "usage: peft generate --model M [--adapter A] (--prompt TEXT --tokenizer tokenizer.bin | --tokens 1,2,3)\n"
    "                     [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--print-ids]\n\n"
    "Continues a prompt, streaming the text (or, with --print-ids, the ids separated by\n"
    "spaces). Temperature 0 (the default) is greedy. Stops at EOS (id 2) or --max-new.\n"
    "--tokenizer reads a llama2.c tokenizer.bin (SentencePiece BPE, LLaMA-1/2 vocabulary).\n";

typedef struct { const peft_tokenizer *tok; int prev, print_ids, count; } gen_ctx;

static int on_token(void *vctx, int id) {
    gen_ctx *c = (gen_ctx *)vctx;
    if (c->print_ids) printf("%s%d", c->count ? " " : "", id);
    else if (c->tok && id != 2) {
        char b[8];
        fputs(peft_tokenizer_decode(c->tok, c->prev, id, b), stdout);
    }
    fflush(stdout);
    c->prev = id;
    c->count++;
    return 0;
}

static int cmd_generate(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *prompt = NULL, *tokens_arg = NULL, *tok_path = NULL;
    int max_new = 64, print_ids = 0;
    peft_sampler sm = { 0.0f, 1.0f, 0, 0 };
    for (int i = 0; i < argc;) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(GENERATE_HELP, stdout); return 0; }
        if (!strcmp(a, "--print-ids")) { print_ids = 1; i++; continue; }
        if (!v) return usage_error("generate", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--tokens")) tokens_arg = v;
        else if (!strcmp(a, "--tokenizer")) tok_path = v;
        else if (!strcmp(a, "--max-new")) ok = parse_int(v, &max_new) && max_new > 0;
        else if (!strcmp(a, "--temperature")) ok = parse_float(v, &sm.temperature) && sm.temperature >= 0;
        else if (!strcmp(a, "--top-p")) ok = parse_float(v, &sm.top_p) && sm.top_p > 0 && sm.top_p <= 1;
        else if (!strcmp(a, "--top-k")) ok = parse_int(v, &sm.top_k);
        else if (!strcmp(a, "--seed")) sm.seed = strtoull(v, NULL, 10);
        else return usage_error("generate", "unknown option", a);
        if (!ok) return usage_error("generate", "bad value for", a);
        i += 2;
    }
    if (!src.model) return usage_error("generate", "--model is required", NULL);
    if (!prompt == !tokens_arg) return usage_error("generate", "give exactly one of --prompt and --tokens", NULL);
    if (prompt && !tok_path) return usage_error("generate", "--prompt needs --tokenizer (a llama2.c tokenizer.bin)", NULL);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    peft_tokenizer tok;
    int have_tok = 0, rc = 0, n = 0, cap = 4096;
    int *ids = malloc(sizeof(int) * cap), *out = malloc(sizeof(int) * (size_t)max_new);
    if (tok_path) {
        if (peft_tokenizer_load_llama2c(&tok, tok_path, m->cfg.vocab_size) != PEFT_OK) { rc = fail(); goto done; }
        have_tok = 1;
    }
    if (prompt) {
        n = peft_tokenizer_encode(&tok, prompt, 1, 0, ids, cap);
        if (n < 0) { fprintf(stderr, "peft: error: prompt too long\n"); rc = 1; goto done; }
    } else {
        for (const char *p = tokens_arg; *p && n < cap;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 0 || v >= m->cfg.vocab_size) { rc = usage_error("generate", "--tokens must be ids within the vocabulary", tokens_arg); goto done; }
            ids[n++] = (int)v;
            p = *end == ',' ? end + 1 : end;
            if (*end && *end != ',') { rc = usage_error("generate", "--tokens must be comma-separated ids", tokens_arg); goto done; }
        }
    }
    {
        gen_ctx ctx = { have_tok ? &tok : NULL, n ? ids[n - 1] : 1, print_ids, 0 };
        if (prompt && !print_ids) fputs(prompt, stdout);
        peft_graph *g = peft_graph_new();
        peft_generate(m, g, ids, n, max_new, m->cfg.eos_id, &sm, out, on_token, &ctx);
        printf("\n");
        peft_graph_free(g);
    }
done:
    if (have_tok) peft_tokenizer_free(&tok);
    free(ids); free(out);
    peft_model_free(m);
    return rc;
}

/* ----------------------------------------------------------------- merge */
static const char *MERGE_HELP =
    "usage: peft merge --model DIR --adapter DIR --out DIR\n\n"
    "Folds an adapter into the base weights and writes a plain Hugging Face model\n"
    "folder (config.json + model.safetensors, F32). LoRA: W += (alpha/r) B A.\n"
    "LLaMA-Adapter V2: W' = diag(s) W and biases s (b0 + b) (attention_bias and\n"
    "mlp_bias become true); its gated prompts cannot be folded and are written\n"
    "as a LLaMA-Adapter V1 adapter in DIR/adapter.\n";

static int cmd_merge(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *out = NULL;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(MERGE_HELP, stdout); return 0; }
        if (!v) return usage_error("merge", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--out")) out = v;
        else return usage_error("merge", "unknown option", a);
    }
    if (!src.model || !src.adapter || !out) return usage_error("merge", "--model, --adapter and --out are required", NULL);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    int rc = 0;
    if (m->method.kind == PEFT_ADAPTER_V2) {
        char apath[1100];
        snprintf(apath, sizeof apath, "%s/adapter", out);
        if (peft_v2_merge(m) != PEFT_OK || peft_model_save(m, out) != PEFT_OK) rc = fail();
        else if (m->method.kind == PEFT_ADAPTER_V1 && peft_adapter_save(m, apath) != PEFT_OK) rc = fail();
        else printf("merged the bias/scale of %s into %s%s%s\n", src.adapter, out,
                    m->method.kind == PEFT_ADAPTER_V1 ? "; the gated prompts are in " : "",
                    m->method.kind == PEFT_ADAPTER_V1 ? apath : "");
    } else if (m->method.kind != PEFT_LORA) {
        fprintf(stderr, "peft: error: %s: a %s adapter cannot be merged into the weights (LoRA and adapter-v2 can)\n",
                src.adapter, peft_method_name(m->method.kind));
        rc = 1;
    } else if (peft_lora_merge(m) != PEFT_OK || peft_model_save(m, out) != PEFT_OK) rc = fail();
    else printf("merged %s into %s\n", src.adapter, out);
    peft_model_free(m);
    return rc;
}

static const char *MAIN_HELP =
    "usage: peft COMMAND [options]   (peft COMMAND --help for each)\n\n"
    "  info     configuration and parameter counts of a model or preset\n"
    "  logits   run a sequence forward and write its logits\n"
    "  train    fine-tune a model (full or a PEFT method) on a token or text file\n"
    "  merge    fold a LoRA adapter into the base weights\n"
    "  quantize store a model's block linears in 4 bits (bitsandbytes layout)\n"
    "  bench    time training steps: tokens/s, GFLOP/s, peak memory\n"
    "  generate continue a prompt (greedy or sampled), with or without an adapter\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(MAIN_HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "merge")) return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc - 2, argv + 2);
    fprintf(stderr, "peft: unknown command '%s'\n%s", argv[1], MAIN_HELP);
    return 2;
}
