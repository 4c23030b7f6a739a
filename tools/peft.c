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

/* ------------------------------------------------------------------ info */
static const char *INFO_HELP =
    "usage: peft info MODEL_DIR\n"
    "       peft info --preset NAME\n"
    "       peft info --list\n\n"
    "Prints a model's configuration and parameter counts (from config.json or a\n"
    "built-in preset; no weights are loaded).\n";

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
    if (argc < 1) return usage_error("info", "a model folder or --preset NAME is needed", NULL);
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) { fputs(INFO_HELP, stdout); return 0; }
    if (!strcmp(argv[0], "--list")) {
        for (int i = 0; peft_preset_name(i); i++) {
            char b[40];
            peft_config_preset(&c, peft_preset_name(i));
            printf("%-16s %20s parameters\n", peft_preset_name(i), commas(peft_config_param_count(&c), b));
        }
        return 0;
    }
    if (!strcmp(argv[0], "--preset")) {
        if (argc < 2) return usage_error("info", "--preset needs a name", NULL);
        if (peft_config_preset(&c, argv[1]) != PEFT_OK) return fail();
        print_config(&c, argv[1]);
        return 0;
    }
    if (argv[0][0] == '-') return usage_error("info", "unknown option", argv[0]);
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", argv[0]);
    if (peft_config_load(&c, path) != PEFT_OK) return fail();
    print_config(&c, argv[0]);
    return 0;
}

/* ---------------------------------------------------------- model flags */
typedef struct { const char *model, *preset; uint64_t seed; } model_src;

static int load_model(const model_src *src, peft_model **m) {
    if (src->model) return peft_model_load(m, src->model) == PEFT_OK ? 0 : fail();
    if (src->preset) return peft_model_from_preset(m, src->preset, 1, src->seed) == PEFT_OK ? 0 : fail();
    return 1;
}

/* ---------------------------------------------------------------- logits */
static const char *LOGITS_HELP =
    "usage: peft logits (--model DIR | --preset NAME [--seed S]) --tokens 1,2,3 --out FILE\n\n"
    "Runs one sequence forward and writes its logits as float32, little-endian,\n"
    "row-major [T, vocab] to FILE (atomically).\n"
    "  --threads N   worker threads (default 1)\n";

static int cmd_logits(int argc, char **argv) {
    model_src src = { 0, 0, 0 };
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
    "as bytes) with AdamW, printing the loss of every step.\n"
    "  --method full         what to train (full: every parameter)\n"
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
    "  --out DIR             save the trained model folder there\n";

static int cmd_train(int argc, char **argv) {
    model_src src = { 0, 0, 0 };
    const char *data = NULL, *out = NULL, *method = "full";
    int steps = 100, B = 4, T = 64, threads = 1;
    peft_trainer_opts o = peft_trainer_defaults();
    o.schedule = PEFT_SCHED_COSINE;
    o.weight_decay = 0;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(TRAIN_HELP, stdout); return 0; }
        if (!v) return usage_error("train", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--preset")) src.preset = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--method")) method = v;
        else if (!strcmp(a, "--seed")) src.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--steps")) ok = parse_int(v, &steps) && steps > 0;
        else if (!strcmp(a, "--batch")) ok = parse_int(v, &B) && B > 0;
        else if (!strcmp(a, "--seq")) ok = parse_int(v, &T) && T > 0;
        else if (!strcmp(a, "--grad-accum")) ok = parse_int(v, &o.grad_accum) && o.grad_accum > 0;
        else if (!strcmp(a, "--warmup")) ok = parse_int(v, &o.warmup_steps);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, &threads) && threads > 0;
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
    if (strcmp(method, "full") != 0) return usage_error("train", "unknown --method (available: full)", method);
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
    peft_model_set_trainable_all(m, 1);
    char b1[40], b2[40];
    printf("training %s parameters of %s (%s), %lld tokens of data\n", commas(peft_model_trainable_count(m), b1),
           commas(peft_model_base_count(m), b2), method, (long long)n);
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
        if (peft_model_save(m, out) != PEFT_OK) rc = fail();
        else printf("saved %s\n", out);
    }
    free(tok); free(tgt); free(ids);
    peft_trainer_free(tr);
    peft_model_free(m);
    return rc;
}

static const char *MAIN_HELP =
    "usage: peft COMMAND [options]   (peft COMMAND --help for each)\n\n"
    "  info     configuration and parameter counts of a model or preset\n"
    "  logits   run a sequence forward and write its logits\n"
    "  train    fine-tune a model on a token or text file\n";

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(MAIN_HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    fprintf(stderr, "peft: unknown command '%s'\n%s", argv[1], MAIN_HELP);
    return 2;
}
