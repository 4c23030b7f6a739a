/* peft — command line front end of peft.h. A thin layer: parse flags, call
   the library, print. Every failure prints peft_last_error() and exits 1
   (2 for usage errors). */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "peft_tools.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#include <float.h>
#include <signal.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/stat.h>
#include <dlfcn.h>
#include <strings.h>
#include <errno.h>

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "peft %s: %s%s%s\nTry 'peft %s --help'.\n", cmd, msg, arg ? ": " : "", arg ? arg : "",
            cmd);
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
/* the thread count without --threads: PEFT_THREADS, else the cores this
   process may run on (affinity mask, cgroup quota; peft_available_cpus) */
static int default_threads = 1;
static int set_default_threads(void) {
    const char *e = getenv("PEFT_THREADS");
    if (!e || !*e) {
        default_threads = peft_available_cpus();
        if (default_threads > PEFT_MAX_THREADS) default_threads = PEFT_MAX_THREADS;
        return 0;
    }
    if (!parse_int(e, &default_threads) || default_threads < 1 || default_threads > 1024) {
        fprintf(stderr, "peft: error: PEFT_THREADS must be a number of threads from 1 to 1024, not '%s'\n", e);
        return 2;
    }
    return 0;
}
static int parse_float(const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || !isfinite(v) || fabs(v) > FLT_MAX) return 0; /* 1e300 does not fit a float */
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
    "--fusion-layers", "--fusion-dim", "--excitor-len", "--excitor-rank", "--excitor-layers",
    "--modules-to-save", "--lora-bias", "--trainable-tokens", "--moe-targets", NULL };

static const char *METHOD_HELP =
    "  --method M            full | lora | adapter-v1 | adapter-v2 | excitor | qlora (default full)\n"
    "  --lora-r R            LoRA rank (default 8; QLoRA 64)\n"
    "  --lora-alpha A        LoRA alpha (default 8; QLoRA 16); scale = alpha/r\n"
    "  --lora-dropout P      dropout on the LoRA branch (default 0)\n"
    "  --lora-targets LIST   q_proj,v_proj (default) | any of q k v o gate up down | all-linear\n"
    "  --lora-init I         kaiming (PEFT's default) | gaussian\n"
    "  --lora-layers LIST    layers to adapt, e.g. 0-3,7 (default all)\n"
    "  --lora-rslora 1       rank-stabilised scale alpha/sqrt(r)\n"
    "  --modules-to-save M   lm_head,embed_tokens: train full copies, saved with the adapter (PEFT's\n"
    "                        modules_to_save; merge puts them in the model; GGUF export refuses them)\n"
    "  --lora-bias 1         a trained bias on lora_B (PEFT's lora_bias)\n"
    "  --trainable-tokens L  token ids, e.g. 3,7: their embed_tokens rows trained (PEFT's\n"
    "                        trainable_token_indices; also lm_head's when tied)\n"
    "  --moe-targets LIST    LLaMA-4: router, experts (gate_up_proj and down_proj), router-full\n"
    "                        (a trained copy of the router), none (default); with --lora-targets none:\n"
    "                        the MoE sites alone\n"
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
        if (!strcmp(a, METHOD_FLAGS[i]) && mf->n < 32) {
            mf->keys[mf->n] = a;
            mf->vals[mf->n++] = v;
            return 1;
        }
    return 0;
}

/* A bad method name or value is a usage error: exit 2, as for every flag. */
static int build_method(const method_flags *mf, peft_method *out, uint64_t seed) {
    peft_method_kind kind = PEFT_FULL;
    if (mf->method && peft_method_parse(mf->method, &kind) != PEFT_OK) {
        fprintf(stderr, "peft: error: %s\n", peft_last_error());
        return 2;
    }
    *out = peft_method_defaults(kind);
    out->seed = seed;
    for (int i = 0; i < mf->n; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s", mf->keys[i] + 2);
        for (char *p = key; *p; p++) if (*p == '-') *p = '_';
        if (peft_method_set(out, key, mf->vals[i]) != PEFT_OK) {
            fprintf(stderr, "peft: error: %s: %s\n", mf->keys[i], peft_last_error());
            return 2;
        }
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

/* LLaMA-4: the mixture of experts and the parameters a token uses */
static void print_llama4(const peft_config *c) {
    char b1[40], b2[40];
    int moe = 0, nope = 0;
    for (int l = 0; l < c->n_layers; l++) {
        moe += peft_layer_is_moe(c, l);
        nope += !peft_layer_has_rope(c, l);
    }
    printf("experts          %d routed (top-%d, expert width %d) + 1 shared, in %d of %d layers "
           "(dense width %d)\n", c->n_experts, c->top_k, c->hidden_dim, moe, c->n_layers, c->hidden_dim_mlp);
    printf("attention        NoPE in %d layers%s; RoPE layers: %s%s", nope,
           c->temp_tuning ? " (temperature tuned)" : "", c->qk_norm ? "QK L2 norm, " : "", "chunks of ");
    printf("%d tokens\n", c->attn_chunk);
    int64_t total = peft_config_param_count(c), active = peft_config_active_count(c);
    double unit = total >= 1e9 ? 1e9 : 1e6;
    const char *u = total >= 1e9 ? "B" : "M";
    printf("total / active   %.1f%s / %.1f%s parameters (%s / %s per token)\n", total / unit, u,
           active / unit, u, commas(total, b1), commas(active, b2));
}

static void print_config(const peft_config *c, const char *what) {
    char b1[40], b2[40], b3[40];
    int64_t total = peft_config_param_count(c);
    int64_t emb = (int64_t)c->vocab_size * c->dim;
    printf("model            %s\n", what);
    printf("hidden_size      %d\nintermediate     %d\nlayers           %d\n", c->dim, c->hidden_dim,
           c->n_layers);
    printf("heads            %d (kv %d, head_dim %d)\n", c->n_heads, c->n_kv_heads, c->head_dim);
    printf("vocab            %d%s\nmax positions    %d\n", c->vocab_size,
           c->tie_embeddings ? " (tied embeddings)" : "", c->max_seq_len);
    printf("rms_norm_eps     %g\nrope_theta       %g", c->norm_eps, c->rope_theta);
    if (c->rope_type == PEFT_ROPE_LLAMA3)
        printf(" (llama3 scaling: factor %g, low %g, high %g, original %d)", c->rope_factor, c->rope_low_freq,
               c->rope_high_freq, c->rope_orig_max_pos);
    if (c->rope_type == PEFT_ROPE_LINEAR) printf(" (linear scaling: factor %g)", c->rope_factor);
    printf("\nparameters       %s (embeddings %s, transformer blocks %s)\n", commas(total, b1),
           commas(emb * (c->tie_embeddings ? 1 : 2), b2),
           commas(total - emb * (c->tie_embeddings ? 1 : 2), b3));
    printf("fp32 weights     %.1f MB\n", total * 4.0 / 1e6);
    if (c->llama4) print_llama4(c);
}

static int check_weights(const char *dir, const peft_config *c);
/* a GGUF model file: .gguf, or GGUF's magic */
static int is_gguf(const char *p) {
    size_t n = strlen(p);
    char magic[4] = { 0 };
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    return (n > 5 && !strcmp(p + n - 5, ".gguf")) || (got == 4 && !memcmp(magic, "GGUF", 4));
}

/* peft info model.gguf: the configuration its llama.* keys give, then what
   its tensors are stored as (bits per weight from their bytes) */
static int info_gguf(const char *path, peft_config *c) {
    peft_gguf g;
    memset(c, 0, sizeof *c);
    if (peft_gguf_open(&g, path) != PEFT_OK) return fail();
    char kind[32] = "model";
    peft_gguf_string(peft_gguf_find(&g, "general.type"), kind, sizeof kind);
    int adapter = !strcmp(kind, "adapter");          /* a LoRA for llama.cpp: no config, its tensors */
    if (!adapter && peft_gguf_config(&g, c) != PEFT_OK) {
        peft_gguf_close(&g);
        return fail();
    }
    if (adapter) printf("model            %s (a GGUF adapter: general.type adapter)\n", path);
    else print_config(c, path);
    char name[256] = "", tok[64] = "", pre[64] = "";
    peft_gguf_string(peft_gguf_find(&g, "general.name"), name, sizeof name);
    peft_gguf_string(peft_gguf_find(&g, "tokenizer.ggml.model"), tok, sizeof tok);
    peft_gguf_string(peft_gguf_find(&g, "tokenizer.ggml.pre"), pre, sizeof pre);
    printf("gguf             version %u, %lld tensors, %lld keys, %s%s%s\n", g.version,
           (long long)g.n_tensors, (long long)g.n_kv, g.mapped ? "mapped" : "read", name[0] ? ", name " : "",
           name);
    if (tok[0])
        printf("tokenizer        %s%s%s%s\n", tok, pre[0] ? " (pre " : "", pre, pre[0] ? ")" : "");
    printf("%-16s %8s %16s %14s %8s\n", "storage", "tensors", "weights", "bytes", "bits/w");
    double all_e = 0, all_b = 0;
    for (int type = 0; type < 64; type++) {
        double elems = 0, bytes = 0;
        int count = 0;
        for (int64_t i = 0; i < g.n_tensors; i++) {
            const peft_gguf_tensor *t = &g.tensors[i];
            if (t->type != type) continue;
            double e = 1;
            for (int d = 0; d < t->ndim; d++) e *= (double)t->ne[d];
            elems += e;
            bytes += (double)t->nbytes;
            count++;
        }
        if (!count) continue;
        char b1[40], b2[40];
        printf("%-16s %8d %16s %14s %8.3f%s\n", peft_gguf_type_name(type), count, commas((int64_t)elems, b1),
               commas((int64_t)bytes, b2), 8.0 * bytes / elems,
               peft_ggml_block_size(type) ? "" : "  (not decoded)");
        all_e += elems;
        all_b += bytes;
    }
    char b1[40], b2[40];
    printf("%-16s %8lld %16s %14s %8.3f\n", "all", (long long)g.n_tensors, commas((int64_t)all_e, b1),
           commas((int64_t)all_b, b2), all_e > 0 ? 8.0 * all_b / all_e : 0.0);
    peft_gguf_close(&g);
    peft_model *m;
    if (!adapter && peft_model_load(&m, path) == PEFT_OK) {   /* what peft.h holds the weights in */
        printf("as loaded        %.3f bits per base weight allocated (ggml blocks kept; norms fp32)\n",
               peft_model_base_bits(m));
        peft_model_free(m);
    }
    return 0;
}

static int cmd_info(int argc, char **argv) {
    peft_config c;
    method_flags mf = { 0 };
    const char *preset = NULL, *dir = NULL;
    for (int i = 0; i < argc;) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(INFO_HELP, stdout);
            fputs(METHOD_HELP, stdout);
            return 0;
        }
        if (!strcmp(a, "--list")) {
            for (int k = 0; peft_preset_name(k); k++) {
                char b[40];
                peft_config_preset(&c, peft_preset_name(k));
                printf("%-16s %20s parameters\n", peft_preset_name(k),
                       commas(peft_config_param_count(&c), b));
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
    else if (is_gguf(dir)) {
        if (info_gguf(dir, &c)) return 1;
        if (c.dim == 0) return 0;                     /* an adapter: nothing to count */
    }
    else {
        char path[1024];
        snprintf(path, sizeof path, "%s/config.json", dir);
        if (peft_config_load(&c, path) != PEFT_OK) return fail();
        if (c.unused[0]) fprintf(stderr, "peft: warning: %s: keys not used: %s\n", path, c.unused);
    }
    if (preset || !is_gguf(dir)) print_config(&c, preset ? preset : dir);
    if (!preset && !is_gguf(dir) && check_weights(dir, &c)) return 1;
    if (mf.method) {
        peft_method m;
        int bm = build_method(&mf, &m, 0);
        if (bm) return bm;
        char b1[40];
        int64_t n = peft_method_param_count(&c, &m), base = peft_config_param_count(&c);
        printf("method           %s\ntrainable        %s (%.4f%% of the base model)\n",
               peft_method_name(m.kind), commas(n, b1), 100.0 * (double)n / (double)base);
    }
    return 0;
}

/* ---------------------------------------------------------- model flags */
typedef struct { const char *model, *preset, *adapter; uint64_t seed; } model_src;

/* --model DIR or --preset NAME (random init from --seed), then --adapter DIR. */
static int load_model(const model_src *src, peft_model **m) {
    peft_status s = src->model ? peft_model_load(m, src->model)
                               : peft_model_from_preset(m, src->preset, 1, src->seed);
    if (s != PEFT_OK) return fail();
    if (src->model && (*m)->cfg.unused[0])
        fprintf(stderr, "peft: warning: %s/config.json: keys not used: %s\n", src->model, (*m)->cfg.unused);
    if (src->adapter && peft_adapter_load(*m, src->adapter) != PEFT_OK) {
        peft_model_free(*m);
        *m = NULL;
        return fail();
    }
    return 0;
}

/* ---------------------------------------------------------------- logits */
static const char *LOGITS_HELP =
        "usage: peft logits (--model DIR | --preset NAME [--seed S]) [--adapter DIR] --tokens 1,2,3 --out "
        "FILE\n\n"
        "Runs one sequence forward and writes its logits as float32, little-endian,\n"
        "row-major [T, vocab] to FILE (atomically).\n"
        "  --threads N   worker threads (default: $PEFT_THREADS, else the cores available)\n"
        "  --precision P fp32 (default) | bf16 (frozen block linears in bf16, fp32 sums)\n";

static int cmd_logits(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *tokens_arg = NULL, *out = NULL;
    int threads = default_threads;
    peft_precision prec = PEFT_PRECISION_FP32;
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
        else if (!strcmp(a, "--threads")) {
            if (!parse_int(v, &threads) || threads < 1) return usage_error("logits", "bad --threads", v);
        } else if (!strcmp(a, "--precision")) {
            if (peft_precision_parse(v, &prec) != PEFT_OK) return usage_error("logits", "bad --precision", v);
        } else
            return usage_error("logits", "unknown option", a);
    }
    if (!src.model && !src.preset) return usage_error("logits", "--model or --preset is required", NULL);
    if (!tokens_arg || !out) return usage_error("logits", "--tokens and --out are required", NULL);
    int cap = 16, T = 0, *tok = malloc(sizeof(int) * cap);
    for (const char *p = tokens_arg; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 2000000000) {
            free(tok);
            return usage_error("logits", "--tokens must be comma-separated ids", tokens_arg);
        }
        if (T == cap) tok = realloc(tok, sizeof(int) * (cap *= 2));
        tok[T++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') {
            free(tok);
            return usage_error("logits", "--tokens must be comma-separated ids", tokens_arg);
        }
    }
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) { free(tok); return 1; }
    if (prec != PEFT_PRECISION_FP32 && peft_model_set_precision(m, prec) != PEFT_OK) {
        peft_model_free(m);
        free(tok);
        return fail();
    }
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
    "usage: peft train (--model DIR | --preset NAME) --data PATH [options]\n"
    "       peft train --resume RUN_DIR [options that change]\n\n"
    "Fine-tunes on PATH with AdamW. PATH is an Alpaca .json, a .jsonl of Alpaca,\n"
    "{prompt, completion} or {text} records, a folder with train.jsonl (and\n"
    "valid.jsonl for evaluation), plain .txt, or a file of token ids. Prompts\n"
    "are masked from the loss. The tokenizer comes from the model folder\n"
    "(tokenizer.json or tokenizer.bin) or --tokenizer.\n\n"
    "Writes into --out: the adapter (PEFT layout; the whole model for full),\n"
    "train_config.json (every setting, for --config to repeat the run),\n"
    "log.jsonl, loss.svg, and checkpoint-N/ folders every --save-every steps.\n"
    "  --config FILE         JSON with the same keys as the flags (lora_r, lr, ...); flags win\n"
    "  --tokenizer PATH      tokenizer.json / tokenizer.bin (default: from the model folder)\n"
    "  --chat-template NAME  chatml | llama2 | llama3 | alpaca: the format of chat data\n"
    "                        ({\"messages\": [...]} records; default: the tokenizer_config.json\n"
    "                        chat_template, recognised by family); loss on assistant turns only\n"
    "  --epochs E            passes over the data (default 1)\n"
    "  --max-steps N         optimizer steps (overrides --epochs; --steps is the same)\n"
    "  --batch B             examples per micro-batch (default 4)\n"
    "  --seq T               longest example in tokens (default 256; longer ones are cut)\n"
    "  --grad-accum K        micro-batches per step\n"
    "  --lr X                peak learning rate\n"
    "  --min-lr X            final learning rate for cosine/linear\n"
    "  --schedule S          constant | cosine | linear (over the run's steps, after warm-up)\n"
    "  --warmup N            warm-up steps\n"
    "  --weight-decay X      AdamW weight decay\n"
    "  --max-grad-norm X     clip the global gradient norm (0 = off)\n"
    "  --adam-beta1 X, --adam-beta2 X, --adam-epsilon X   AdamW's β1, β2 and ε\n"
    "  --eval-every N        evaluate every N steps (default 0 = at the end only, when\n"
    "                        there is held-out data: valid.jsonl or 5% of the examples)\n"
    "  --save-every N        checkpoint every N steps (default 0 = none)\n"
    "  --resume DIR          continue a run (its folder or one checkpoint-N) exactly\n"
    "  --seed S              data order, held-out split and random init (default 0)\n"
    "  --threads N           worker threads (default: $PEFT_THREADS, else the cores available)\n"
    "  --optim O             adamw | paged (paged AdamW emulation) | 8bit (8-bit states)\n"
    "  --optim-budget-mb X   resident budget of the paged optimizer (default 64)\n"
    "  --checkpoint-activations 1  keep only block inputs, recompute in backward\n"
    "                        (same gradients, a fraction of the activation memory)\n"
    "  --precision P         fp32 (default) | bf16: frozen block linears stored in bf16 and\n"
    "                        multiplied in bf16 with fp32 sums (AVX512-BF16; else decoded to fp32);\n"
    "                        what trains, its gradients and AdamW stay fp32\n"
    "  --out DIR             output folder (required unless --no-save); one that holds files is\n"
    "                        refused unless --overwrite (or continue it with --resume)\n"
    "  --overwrite           replace the run in a non-empty --out (its checkpoints and log go)\n"
    "  --no-save             train without writing anything (timing, trying settings)\n"
    "  --stop-on-divergence  stop with an error when the loss sits at ln(vocab) for 10 steps or\n"
    "                        rises far above the first step's (a warning otherwise)\n";

/* Every setting as a string under its config key ("lora_r", "max_steps"),
   filled from --config or the run being resumed, then from the flags. */
typedef struct { char key[32]; char val[512]; } setting;
typedef struct { setting s[64]; int n; } settings;

static const char *TRAIN_KEYS[] = { "model",
                                    "preset",
                                    "data",
                                    "tokenizer",
                                    "out",
                                    "epochs",
                                    "max_steps",
                                    "batch",
                                    "seq",
                                    "grad_accum",
                                    "lr",
                                    "min_lr",
                                    "schedule",
                                    "warmup",
                                    "weight_decay",
                                    "max_grad_norm",
                                    "eval_every",
                                    "save_every",
                                    "seed",
                                    "adam_beta1",
                                    "adam_beta2",
                                    "adam_epsilon",
                                    "threads",
                                    "optim",
                                    "optim_budget_mb",
                                    "method",
                                    "checkpoint_activations",
                                    "stop_on_divergence",
                                    "precision",
                                    NULL };

/* the settings written as JSON numbers; every other one (paths, names, lists) is a string */
static const char *NUMERIC_KEYS[] = { "epochs",
                                      "max_steps",
                                      "batch",
                                      "seq",
                                      "grad_accum",
                                      "lr",
                                      "min_lr",
                                      "warmup",
                                      "weight_decay",
                                      "max_grad_norm",
                                      "adam_beta1",
                                      "adam_beta2",
                                      "adam_epsilon",
                                      "eval_every",
                                      "save_every",
                                      "threads",
                                      "optim_budget_mb",
                                      "checkpoint_activations",
                                      "stop_on_divergence",
                                      "lora_r",
                                      "lora_alpha",
                                      "lora_dropout",
                                      "lora_rslora",
                                      "adapter_len",
                                      "adapter_layers",
                                      "fusion_layers",
                                      "fusion_dim",
                                      "excitor_len",
                                      "excitor_rank",
                                      "excitor_layers",
                                      NULL };

/* -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? : what JSON accepts as a number ("0x10", "1e3 ", "+1" are not) */
static int json_number(const char *v) {
    const char *p = v;
    if (*p == '-') p++;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (*p >= '0' && *p <= '9') p++;
    else return 0;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return 0;
        while (*p >= '0' && *p <= '9') p++;
    }
    return *p == 0;
}

static int known_key(const char *k) {
    for (int i = 0; TRAIN_KEYS[i]; i++) if (!strcmp(k, TRAIN_KEYS[i])) return 1;
    if (!strcmp(k, "chat_template")) return 1;
    for (int i = 0; METHOD_FLAGS[i]; i++) {
        char mk[64];
        snprintf(mk, sizeof mk, "%s", METHOD_FLAGS[i] + 2);
        for (char *p = mk; *p; p++) if (*p == '-') *p = '_';
        if (!strcmp(k, mk)) return 1;
    }
    return 0;
}
static const char *get(const settings *st, const char *key) {
    for (int i = 0; i < st->n; i++) if (!strcmp(st->s[i].key, key)) return st->s[i].val;
    return NULL;
}
static int put(settings *st, const char *key, const char *val) {
    for (int i = 0; i < st->n; i++)
        if (!strcmp(st->s[i].key, key)) { snprintf(st->s[i].val, sizeof st->s[i].val, "%s", val); return 1; }
    if (st->n == 64) return 0;
    snprintf(st->s[st->n].key, sizeof st->s[st->n].key, "%s", key);
    snprintf(st->s[st->n].val, sizeof st->s[st->n].val, "%s", val);
    st->n++;
    return 1;
}

/* The trainer's settings come from the library's one set of defaults,
   peft_trainer_defaults(), so that a run of `peft train` and a C program
   with peft_trainer_new(m, NULL) (and the same total_steps) train alike. */
static const char *schedule_name(peft_sched_kind k) {
    return k == PEFT_SCHED_COSINE ? "cosine" : k == PEFT_SCHED_LINEAR ? "linear" : "constant";
}

typedef struct { const char *key; double value; } trainer_default;

static int trainer_defaults(trainer_default *out) {
    peft_trainer_opts d = peft_trainer_defaults();
    trainer_default all[] = { { "lr", d.lr }, { "min_lr", d.min_lr }, { "warmup", d.warmup_steps },
                              { "weight_decay", d.weight_decay }, { "max_grad_norm", d.max_grad_norm },
                              { "grad_accum", d.grad_accum }, { "adam_beta1", d.beta1 },
                              { "adam_beta2", d.beta2 }, { "adam_epsilon", d.eps } };
    int n = (int)(sizeof all / sizeof all[0]);
    memcpy(out, all, sizeof all);
    return n;
}

static void print_trainer_defaults(FILE *f) {
    trainer_default d[16];
    int n = trainer_defaults(d);
    fprintf(f, "\nTrainer defaults (peft_trainer_defaults(), the same for the C API):\n ");
    fprintf(f, " schedule %s", schedule_name(peft_trainer_defaults().schedule));
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%s %g", i % 5 == 4 ? "\n  " : "  ", d[i].key, d[i].value);
    fprintf(f, "\n\n");
}

/* the trainer's settings still unset → the library's defaults */
static int put(settings *st, const char *key, const char *val);
static const char *get(const settings *st, const char *key);
static void put_trainer_defaults(settings *st) {
    trainer_default d[16];
    int n = trainer_defaults(d);
    char v[32];
    for (int i = 0; i < n; i++)
        if (!get(st, d[i].key)) {
            snprintf(v, sizeof v, "%g", d[i].value);
            put(st, d[i].key, v);
        }
    if (!get(st, "schedule")) put(st, "schedule", schedule_name(peft_trainer_defaults().schedule));
}

/* a JSON object of settings → st; unknown keys are an error naming the file */
static int read_settings(settings *st, const char *path) {
    peft_json *j;
    if (peft_json_load(&j, path) != PEFT_OK) return fail();
    if (j->type != PEFT_JSON_OBJECT) {
        peft_json_free(j);
        fprintf(stderr, "peft: error: %s: expected a JSON object\n", path);
        return 1;
    }
    for (const peft_json *c = j->child; c; c = c->next) {
        char key[64], val[512];
        snprintf(key, sizeof key, "%s", c->key);
        for (char *p = key; *p; p++) if (*p == '-') *p = '_';
        if (!known_key(key)) {
            fprintf(stderr, "peft: error: %s: unknown setting \"%s\"\n", path, c->key);
            peft_json_free(j);
            return 1;
        }
        if (c->type == PEFT_JSON_STRING) snprintf(val, sizeof val, "%s", c->string);
        else if (c->type == PEFT_JSON_NUMBER && c->number == floor(c->number) && fabs(c->number) < 1e15)
            snprintf(val, sizeof val, "%lld", (long long)c->number);
        else if (c->type == PEFT_JSON_NUMBER) snprintf(val, sizeof val, "%.9g", c->number);
        else if (c->type == PEFT_JSON_BOOL) snprintf(val, sizeof val, "%d", c->number != 0);
        else if (c->type == PEFT_JSON_NULL) continue;
        else {
            fprintf(stderr, "peft: error: %s: \"%s\" must be a string or a number\n", path, c->key);
            peft_json_free(j);
            return 1;
        }
        put(st, key, val);
    }
    peft_json_free(j);
    return 0;
}

static int write_settings(const settings *st, const char *path) {
    char buf[65536];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "{\n");
    for (int i = 0; i < st->n && n < sizeof buf - 1100; i++) {
        const char *v = st->s[i].val;
        int numeric = 0;
        for (int k = 0; NUMERIC_KEYS[k]; k++) numeric |= !strcmp(st->s[i].key, NUMERIC_KEYS[k]);
        numeric = numeric && json_number(v);
        n += (size_t)snprintf(buf + n, sizeof buf - n, "  \"%s\": ", st->s[i].key);
        if (numeric) n += (size_t)snprintf(buf + n, sizeof buf - n, "%s", v);
        else {
            buf[n++] = '"';
            for (const char *p = v; *p && n < sizeof buf - 16; p++) {
                if ((unsigned char)*p < 0x20) {
                    n += (size_t)snprintf(buf + n, sizeof buf - n, "\\u%04x", *p);
                    continue;
                }
                if (*p == '"' || *p == '\\') buf[n++] = '\\';
                buf[n++] = *p;
            }
            buf[n++] = '"';
        }
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\n", i + 1 < st->n ? "," : "");
    }
    n += (size_t)snprintf(buf + n, sizeof buf - n, "}\n");
    return peft_write_file_atomic(path, buf, n) == PEFT_OK ? 0 : fail();
}

static int dir_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}
static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* --resume accepts a run folder (the newest checkpoint-N inside) or one checkpoint */
static int find_checkpoint(const char *path, char *ckpt, size_t n, char *run, size_t rn) {
    char probe[1200];
    snprintf(probe, sizeof probe, "%s/trainer.safetensors", path);
    if (file_exists(probe)) {
        snprintf(ckpt, n, "%s", path);
        snprintf(run, rn, "%s", path);
        char *slash = strrchr(run, '/');
        if (slash) *slash = 0; else snprintf(run, rn, ".");
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) { fprintf(stderr, "peft: error: %s: cannot open the run folder\n", path); return 1; }
    long best = -1;
    for (struct dirent *e; (e = readdir(d));) {
        long k;
        char tail;
        if (sscanf(e->d_name, "checkpoint-%ld%c", &k, &tail) == 1 && k > best) {
            snprintf(probe, sizeof probe, "%s/%s/trainer.safetensors", path, e->d_name);
            if (file_exists(probe)) best = k;
        }
    }
    closedir(d);
    if (best < 0) {
        fprintf(stderr, "peft: error: %s: no checkpoint-N with a trainer.safetensors inside\n", path);
        return 1;
    }
    snprintf(ckpt, n, "%s/checkpoint-%ld", path, best);
    snprintf(run, rn, "%s", path);
    return 0;
}

static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) { remove(path); return; }
    char child[1200];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_tree(child);
    }
    closedir(d);
    rmdir(path);
}

/* ------------------------------------------------------- output folders */
/* Folders that --out names are written whole: into OUT.tmp/ beside it, then
   swapped in by two renames, so a full disk or a crash leaves the previous
   folder or the new one, never a mix (checkpoint-N/ folders the same way). */
static int replace_dir(const char *tmp, const char *final) {
    char old[1300];
    snprintf(old, sizeof old, "%s.old", final);
    remove_tree(old);
    int had = dir_exists(final);
    if (had && rename(final, old) != 0) {
        fprintf(stderr, "peft: error: cannot move %s aside: %s\n", final, strerror(errno));
        return 1;
    }
    if (rename(tmp, final) != 0) {
        int err = errno;
        if (had) rename(old, final);
        fprintf(stderr, "peft: error: cannot rename %s to %s: %s\n", tmp, final, strerror(err));
        return 1;
    }
    if (had) remove_tree(old);
    return 0;
}

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* What a model folder holds; an existing --out with anything else in it (a
   home folder given by mistake) is refused rather than replaced. */
/* the files peft.h writes into a model folder: any other name in --out is
   the user's (notes.txt, data.json, README.md), and the folder is not replaced */
static int model_folder_file(const char *name) {
    static const char *const names[] = { "config.json", "model.safetensors", "model.safetensors.index.json",
                                         "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                         "special_tokens_map.json", "tokenizer.model", "tokenizer.bin", NULL };
    for (int i = 0; names[i]; i++)
        if (!strcmp(name, names[i])) return 1;
    return !strncmp(name, "model-", 6) && ends_with(name, ".safetensors");    /* a shard */
}

/* OUT.tmp beside OUT (trailing slashes dropped), emptied; 1 if OUT may not be replaced */
static int begin_folder(const char *out, char *clean, char *tmp, size_t n) {
    snprintf(clean, n, "%s", out);
    for (size_t k = strlen(clean); k > 1 && clean[k - 1] == '/'; k--) clean[k - 1] = 0;
    if (file_exists(clean)) {
        fprintf(stderr, "peft: error: %s is a file; --out names a folder\n", clean);
        return 1;
    }
    DIR *d = opendir(clean);
    for (struct dirent *e; d && (e = readdir(d));) {
        char child[1300];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(child, sizeof child, "%s/%s", clean, e->d_name);
        if (dir_exists(child) ? strcmp(e->d_name, "adapter") != 0 : !model_folder_file(e->d_name)) {
            fprintf(stderr, "peft: error: %s exists and holds %s, which no model folder has: "
                    "give a new or empty folder\n", clean, e->d_name);
            closedir(d);
            return 1;
        }
    }
    if (d) closedir(d);
    snprintf(tmp, n, "%s.tmp", clean);
    remove_tree(tmp);
    return 0;
}

/* The files a tokenizer needs, so that the folder written is usable alone
   (generate, train) without --tokenizer: from --tokenizer when it was given,
   else from the source model folder. */
static const char *const TOKENIZER_FILES[] = { "tokenizer.json", "tokenizer_config.json",
    "generation_config.json", "special_tokens_map.json", "tokenizer.model", "tokenizer.bin", NULL };

static int copy_tokenizer_files(const char *src_dir, const char *tok, const char *dst) {
    for (int i = 0; TOKENIZER_FILES[i]; i++) {
        char from[1300] = "", to[1300];
        const char *name = TOKENIZER_FILES[i];
        if (tok && file_exists(tok) && ((!strcmp(name, "tokenizer.json") && ends_with(tok, ".json")) ||
                                        (!strcmp(name, "tokenizer.bin") && !ends_with(tok, ".json"))))
            snprintf(from, sizeof from, "%s", tok);
        const char *dirs[2] = { tok && dir_exists(tok) ? tok : NULL,
                                src_dir && dir_exists(src_dir) ? src_dir : NULL };
        for (int k = 0; k < 2 && !from[0]; k++) {
            if (!dirs[k]) continue;
            snprintf(from, sizeof from, "%s/%s", dirs[k], name);
            if (!file_exists(from)) from[0] = 0;
        }
        if (!from[0]) continue;
        snprintf(to, sizeof to, "%s/%s", dst, name);
        unsigned char *data;
        size_t n;
        if (peft_read_file(from, &data, &n) != PEFT_OK) return fail();
        peft_status st = peft_write_file_atomic(to, data, n);
        free(data);
        if (st != PEFT_OK) return fail();
    }
    return 0;
}

/* after the writes into tmp (rc = their result): tokenizer files, then the swap */
static int end_folder(const char *tmp, const char *out, int rc, const char *src_dir, const char *tok) {
    if (!rc) rc = copy_tokenizer_files(src_dir, tok, tmp);
    if (!rc) rc = replace_dir(tmp, out);
    if (rc) remove_tree(tmp);
    return rc;
}

/* LLaMA-4's load balance from the MoE sites' counts (tokens routed to each expert,
   every forward since the model was loaded): summed over the MoE layers, with
   max/mean per expert there and in the worst layer (1.0 is perfectly balanced). */
static void print_moe_balance(const peft_model *m) {
    const peft_config *c = &m->cfg;
    if (!c->llama4 || c->n_experts < 1 || c->n_experts > 1024) return;
    int64_t sum[1024] = { 0 }, total = 0;
    double worst = 0;
    int worst_l = -1, n_moe = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const int64_t *k = m->layers[l].moe.counts;
        if (!k) continue;
        int64_t mx = 0, t = 0;
        for (int e = 0; e < c->n_experts; e++) {
            sum[e] += k[e];
            t += k[e];
            if (k[e] > mx) mx = k[e];
        }
        n_moe++;
        double r = t ? (double)mx * c->n_experts / (double)t : 0;
        if (r > worst) { worst = r; worst_l = l; }
    }
    int64_t mx = 0;
    for (int e = 0; e < c->n_experts; e++) {
        total += sum[e];
        if (sum[e] > mx) mx = sum[e];
    }
    if (!n_moe || !total) return;
    printf("experts          tokens per expert over %d MoE layers:", n_moe);
    for (int e = 0; e < c->n_experts && e < 16; e++) printf(" %lld", (long long)sum[e]);
    if (c->n_experts > 16) printf(" ...");
    printf("; max/mean %.2f (worst layer %d: %.2f)\n", (double)mx * c->n_experts / (double)total, worst_l,
           worst);
}

/* ------------------------------------------------ info: the weight files */
typedef struct { char name[96]; int64_t n; int found; } want_tensor;

/* The tensors config.json implies, named as transformers names them. */
static int expected_tensors(const peft_config *c, want_tensor *w, int cap) {
    int64_t D = c->dim, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim,
            F = c->hidden_dim;
    int n = 0;
#define WANT(cnt, ...)                                                                                       \
    do {                                                                                                     \
        if (n < cap) {                                                                                       \
            snprintf(w[n].name, sizeof w[n].name, __VA_ARGS__);                                              \
            w[n].n = (cnt);                                                                                  \
            w[n].found = 0;                                                                                  \
        }                                                                                                    \
        n++;                                                                                                 \
    } while (0)
    WANT((int64_t)c->vocab_size * D, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers; l++) {
        WANT(D, "model.layers.%d.input_layernorm.weight", l);
        WANT(D, "model.layers.%d.post_attention_layernorm.weight", l);
        WANT(Q * D, "model.layers.%d.self_attn.q_proj.weight", l);
        WANT(KV * D, "model.layers.%d.self_attn.k_proj.weight", l);
        WANT(KV * D, "model.layers.%d.self_attn.v_proj.weight", l);
        WANT(D * Q, "model.layers.%d.self_attn.o_proj.weight", l);
        WANT(F * D, "model.layers.%d.mlp.gate_proj.weight", l);
        WANT(F * D, "model.layers.%d.mlp.up_proj.weight", l);
        WANT(D * F, "model.layers.%d.mlp.down_proj.weight", l);
        if (c->attn_bias) {
            WANT(Q, "model.layers.%d.self_attn.q_proj.bias", l);
            WANT(KV, "model.layers.%d.self_attn.k_proj.bias", l);
            WANT(KV, "model.layers.%d.self_attn.v_proj.bias", l);
            WANT(D, "model.layers.%d.self_attn.o_proj.bias", l);
        }
        if (c->mlp_bias) {
            WANT(F, "model.layers.%d.mlp.gate_proj.bias", l);
            WANT(F, "model.layers.%d.mlp.up_proj.bias", l);
            WANT(D, "model.layers.%d.mlp.down_proj.bias", l);
        }
    }
    WANT(D, "model.norm.weight");
    if (!c->tie_embeddings) WANT((int64_t)c->vocab_size * D, "lm_head.weight");
#undef WANT
    return n;
}

/* Reads the safetensors headers of a model folder (a few KB, whatever the
   weights weigh) and reports tensor count, dtypes and bytes; a truncated
   file, sizes that lie, and tensors missing from or foreign to config.json
   are errors (exit 1). */
static int check_weights(const char *dir, const peft_config *c) {
    char path[1300];
    const char *files[512];
    int nf = 0, rc = 0, problems = 0;
    peft_json *index = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char where[1300];                                  /* the file or index that names the weights */
    snprintf(where, sizeof where, "%s", path);
    if (file_exists(path)) files[nf++] = "model.safetensors";
    else {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (!file_exists(path)) {
            printf("weights          none (no model.safetensors or index)\n");
            return 0;
        }
        snprintf(where, sizeof where, "%s", path);
        if (peft_json_load(&index, path) != PEFT_OK) return fail();
        const peft_json *wm = peft_json_get(index, "weight_map");
        if (!wm || wm->type != PEFT_JSON_OBJECT) {
            fprintf(stderr, "peft: error: %s: no 'weight_map' object\n", path);
            peft_json_free(index);
            return 1;
        }
        for (const peft_json *f = wm->child; f && nf < 512; f = f->next) {
            if (f->type != PEFT_JSON_STRING || strchr(f->string, '/')) {
                fprintf(stderr, "peft: error: %s: weight_map entry '%s' is not a file of the folder\n", path,
                        f->key);
                peft_json_free(index);
                return 1;
            }
            int seen = 0;
            for (int k = 0; k < nf && !seen; k++) seen = !strcmp(files[k], f->string);
            if (!seen) files[nf++] = f->string;
        }
    }
    int cap = 4 + c->n_layers * 16;
    want_tensor *want = calloc((size_t)cap, sizeof *want);
    if (!want) { peft_json_free(index); fprintf(stderr, "peft: error: out of memory\n"); return 1; }
    int nw = expected_tensors(c, want, cap), count = 0, dcount[PEFT_DT_COUNT + 1] = { 0 };
    double bytes = 0;
    for (int f = 0; f < nf && !rc; f++) {
        peft_safetensors st;
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        if (peft_st_open_header(&st, path) != PEFT_OK) { rc = fail(); break; }
        bytes += (double)st.file_size;
        for (int i = 0; i < st.n; i++) {
            const peft_st_entry *e = &st.entries[i];
            int64_t cnt = 1;
            for (int d = 0; d < e->ndim; d++) cnt *= e->shape[d];
            count++;
            dcount[e->dtype <= PEFT_DT_COUNT ? e->dtype : PEFT_DT_COUNT]++;
            int hit = -1, aux = 0;
            for (int k = 0; k < nw && hit < 0; k++) {
                size_t L = strlen(want[k].name);
                if (!strcmp(e->name, want[k].name)) hit = k;
                else if (c->q4 && !strncmp(e->name, want[k].name, L) && e->name[L] == '.')
                    aux = 1; /* .absmax, .quant_map ... */
            }
            if (hit >= 0) {
                want[hit].found++;
                /* a 4-bit linear is its packed bytes, whatever dtype stores them */
                int is_q4 = c->q4 && strstr(e->name, "_proj.weight") != NULL;
                int ok = is_q4 ? e->nbytes == (size_t)((want[hit].n + 1) / 2) : cnt == want[hit].n;
                if (!ok && problems++ < 10)
                    fprintf(stderr, "peft: error: %s: tensor '%s' has %lld elements (%zu bytes), "
                            "config.json implies %lld\n", path, e->name, (long long)cnt, e->nbytes,
                            (long long)want[hit].n);
            } else if (!aux && !(c->tie_embeddings && !strcmp(e->name, "lm_head.weight"))) {
                if (problems++ < 10)
                    fprintf(stderr, "peft: error: %s: tensor '%s' is not part of the model config.json "
                            "describes\n", path, e->name);
            }
        }
        peft_st_close(&st);
    }
    for (int k = 0; k < nw && !rc; k++)
        if (!want[k].found && problems++ < 10)
            fprintf(stderr, "peft: error: %s: tensor '%s' is missing\n", where, want[k].name);
    if (!rc) {
        char b1[40];
        printf("weights          %d file%s, %d tensors (", nf, nf == 1 ? "" : "s", count);
        int first = 1;
        for (int d = 0; d <= PEFT_DT_COUNT; d++)
            if (dcount[d]) {
                printf("%s%s %d", first ? "" : ", ",
                       d < PEFT_DT_COUNT ? peft_dtype_name((peft_dtype)d) : "unknown", dcount[d]);
                first = 0;
            }
        printf("), %s bytes\n", commas((int64_t)bytes, b1));
    }
    if (!rc && problems) {
        fprintf(stderr, "peft: error: %s: %d inconsistenc%s between the weight files and config.json\n",
                where, problems, problems == 1 ? "y" : "ies");
        rc = 1;
    }
    free(want);
    peft_json_free(index);
    return rc;
}

typedef struct {
    peft_model *m;
    peft_trainer *tr;
    const peft_method *meth;
    double *loss, *eval_x, *eval_y;
    int n_loss, n_eval;
} run_state;

static int save_result(const run_state *rs, const char *dir) {
    peft_status st =
            rs->meth->kind == PEFT_FULL ? peft_model_save(rs->m, dir) : peft_adapter_save(rs->m, dir);
    return st == PEFT_OK ? 0 : fail();
}

/* checkpoint-N.tmp/ (adapter + trainer.safetensors), then renamed into place */
static int save_checkpoint(const run_state *rs, const char *out, int step, const peft_data_pos *pos) {
    char tmp[1200], final[1200], path[1300];
    snprintf(tmp, sizeof tmp, "%s/checkpoint-%d.tmp", out, step);
    snprintf(final, sizeof final, "%s/checkpoint-%d", out, step);
    remove_tree(tmp);
    int rc = save_result(rs, tmp);
    snprintf(path, sizeof path, "%s/trainer.safetensors", tmp);
    if (!rc && peft_checkpoint_save(rs->tr, pos, path) != PEFT_OK) rc = fail();
    if (!rc) rc = replace_dir(tmp, final);
    if (rc) remove_tree(tmp);
    return rc;
}

static void write_plot(const run_state *rs, const char *out) {
    char path[1200];
    snprintf(path, sizeof path, "%s/loss.svg", out);
    double *x = malloc(sizeof(double) * (size_t)(rs->n_loss + 1));
    if (!x) return;
    for (int i = 0; i < rs->n_loss; i++) x[i] = i + 1;
    peft_series s[2] = { { "train", x, rs->loss, rs->n_loss, 0 },
                         { "eval", rs->eval_x, rs->eval_y, rs->n_eval, 0 } };
    if (peft_svg_plot(path, "loss", "step", "loss", 0, s, rs->n_eval ? 2 : 1) != PEFT_OK)
        fprintf(stderr, "peft: warning: %s\n", peft_last_error());
    free(x);
}

static double eval_loss(peft_model *m, const peft_dataset *d, int B, int T, int pad) {
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    int *tok = malloc(sizeof(int) * (size_t)B * T), *tgt = malloc(sizeof(int) * (size_t)B * T), idx[256];
    double sum = 0;
    long count = 0;
    for (int at = 0; at < d->n && tok && tgt; at += B) {
        int nb = d->n - at < B ? d->n - at : B;
        for (int b = 0; b < nb; b++) idx[b] = at + b;
        int L = peft_dataset_batch(d, idx, nb, T, pad, tok, tgt), n = 0;
        for (int i = 0; i < nb * L; i++) n += tgt[i] != -100;
        peft_graph_reset(g);
        peft_tensor *lt = peft_model_loss(m, g, tok, tgt, nb, L);
        if (lt && n) { sum += (double)lt->data[0] * n; count += n; }
    }
    free(tok); free(tgt);
    peft_graph_free(g);
    return count ? sum / (double)count : NAN;
}

/* the flags of train that take no value */
static int train_switch(const char *a) {
    return !strcmp(a, "--overwrite") || !strcmp(a, "--no-save") || !strcmp(a, "--stop-on-divergence");
}

static int dir_nonempty(const char *p) {
    DIR *d = opendir(p);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n > 0;
}

/* --overwrite: the old run's checkpoints and log go first (a later --resume must not find them) */
static void clear_run(const char *out) {
    DIR *d = opendir(out);
    char child[1300];
    for (struct dirent *e; d && (e = readdir(d));) {
        /* checkpoint-N and checkpoint-N.tmp only: checkpoint-mine/ is the user's */
        const char *p = !strncmp(e->d_name, "checkpoint-", 11) ? e->d_name + 11 : "";
        size_t digits = strspn(p, "0123456789");
        int ckpt = digits > 0 && (!p[digits] || !strcmp(p + digits, ".tmp"));
        if (!ckpt && strcmp(e->d_name, "log.jsonl") && strcmp(e->d_name, "loss.svg")) continue;
        snprintf(child, sizeof child, "%s/%s", out, e->d_name);
        remove_tree(child);
    }
    if (d) closedir(d);
}

static int cmd_train(int argc, char **argv) {
    settings st = { .n = 0 };
    const char *resume = NULL, *config = NULL;
    int overwrite = 0, no_save = 0;
    for (int i = 0; i < argc; i += 2) {                 /* --help, --config and --resume first */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(TRAIN_HELP, stdout);
            print_trainer_defaults(stdout);
            fputs(METHOD_HELP, stdout);
            return 0;
        }
        if (train_switch(argv[i])) { i--; continue; }
        if (i + 1 >= argc) return usage_error("train", "option needs a value", argv[i]);
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
        if (!strcmp(argv[i], "--resume")) resume = argv[i + 1];
    }
    char ckpt[1200] = "", run_dir[1200] = "", path[1400];
    if (resume) {
        if (find_checkpoint(resume, ckpt, sizeof ckpt, run_dir, sizeof run_dir)) return 1;
        snprintf(path, sizeof path, "%s/train_config.json", run_dir);
        if (read_settings(&st, path)) return 1;
        put(&st, "out", run_dir);
    }
    if (config && read_settings(&st, config)) return 1;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i];
        if (train_switch(a)) {
            if (!strcmp(a, "--overwrite")) overwrite = 1;
            else if (!strcmp(a, "--no-save")) no_save = 1;
            else put(&st, "stop_on_divergence", "1");
            i--;
            continue;
        }
        if (!strcmp(a, "--config") || !strcmp(a, "--resume")) continue;
        if (strncmp(a, "--", 2)) return usage_error("train", "unexpected argument", a);
        char key[64];
        snprintf(key, sizeof key, "%s", !strcmp(a, "--steps") ? "--max-steps" : a);
        memmove(key, key + 2, strlen(key + 2) + 1);
        for (char *p = key; *p; p++) if (*p == '-') *p = '_';
        if (!known_key(key)) return usage_error("train", "unknown option", a);
        put(&st, key, argv[i + 1]);
    }
    /* defaults for what is still unset, so the written config is complete */
    put_trainer_defaults(&st);
    char threads_text[16];
    snprintf(threads_text, sizeof threads_text, "%d", default_threads);
    const char *defaults[][2] = { { "epochs", "1" },     { "batch", "4" },
                                  { "seq", "256" },      { "eval_every", "0" },
                                  { "save_every", "0" }, { "seed", "0" },
                                  { "threads", threads_text }, { "optim", "adamw" },
                                  { "method", "full" },  { "stop_on_divergence", "0" },
                                  { "precision", "fp32" } };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (!get(&st, defaults[i][0])) put(&st, defaults[i][0], defaults[i][1]);

    /* parse the resolved settings */
    model_src src = { get(&st, "model"), get(&st, "preset"), NULL, strtoull(get(&st, "seed"), NULL, 10) };
    const char *data = get(&st, "data"), *out = get(&st, "out"), *tokp = get(&st, "tokenizer");
    int epochs = 1, max_steps = 0, B = 4, T = 256, threads = default_threads, eval_every = 0, save_every = 0;
    int ok = 1;
    int stop_div = 0;
    peft_trainer_opts o = peft_trainer_defaults();
    const char *bad = NULL;
#define INT_SETTING(k, var, cond) \
    if (ok && get(&st, k) && !(parse_int(get(&st, k), &var) && (cond))) { \
        ok = 0; \
        bad = k; \
    }
#define FLOAT_SETTING(k, var, cond) \
    if (ok && get(&st, k) && !(parse_float(get(&st, k), &var) && (cond))) { \
        ok = 0; \
        bad = k; \
    }
    INT_SETTING("epochs", epochs, epochs > 0)
    INT_SETTING("max_steps", max_steps, max_steps > 0)
    INT_SETTING("batch", B, B > 0 && B <= 256)
    INT_SETTING("seq", T, T > 1)
    INT_SETTING("grad_accum", o.grad_accum, o.grad_accum > 0 && o.grad_accum <= 65536)
    INT_SETTING("warmup", o.warmup_steps, 1)
    INT_SETTING("threads", threads, threads > 0 && threads <= 1024)
    INT_SETTING("stop_on_divergence", stop_div, stop_div <= 1)
    INT_SETTING("eval_every", eval_every, 1)
    INT_SETTING("save_every", save_every, 1)
    if (ok && (!*get(&st, "seed") || strspn(get(&st, "seed"), "0123456789") != strlen(get(&st, "seed")))) {
        ok = 0;
        bad = "seed";
    }
    FLOAT_SETTING("lr", o.lr, o.lr > 0)
    FLOAT_SETTING("min_lr", o.min_lr, o.min_lr >= 0)
    FLOAT_SETTING("weight_decay", o.weight_decay, o.weight_decay >= 0)
    FLOAT_SETTING("max_grad_norm", o.max_grad_norm, o.max_grad_norm >= 0)
    FLOAT_SETTING("adam_beta1", o.beta1, o.beta1 >= 0 && o.beta1 < 1)
    FLOAT_SETTING("adam_beta2", o.beta2, o.beta2 >= 0 && o.beta2 < 1)
    FLOAT_SETTING("adam_epsilon", o.eps, o.eps > 0)
    int budget_mb = 64, ckpt_act = 0;
    INT_SETTING("optim_budget_mb", budget_mb, budget_mb > 0)
    INT_SETTING("checkpoint_activations", ckpt_act, ckpt_act <= 1)
    o.optim_budget_bytes = (size_t)budget_mb << 20;
    const char *sched = get(&st, "schedule"), *optim = get(&st, "optim");
    if (ok && !strcmp(sched, "constant")) o.schedule = PEFT_SCHED_CONSTANT;
    else if (ok && !strcmp(sched, "cosine")) o.schedule = PEFT_SCHED_COSINE;
    else if (ok && !strcmp(sched, "linear")) o.schedule = PEFT_SCHED_LINEAR;
    else if (ok) { ok = 0; bad = "schedule"; }
    o.paged_optim = !strcmp(optim, "paged");
    o.optim_8bit = !strcmp(optim, "8bit");
    if (ok && !o.paged_optim && !o.optim_8bit && strcmp(optim, "adamw")) { ok = 0; bad = "optim"; }
    if (ok && peft_precision_parse(get(&st, "precision"), &o.precision) != PEFT_OK) {
        ok = 0;
        bad = "precision";
    }
    if (!ok) return usage_error("train", "bad value for", bad);
    if (!src.model && !src.preset) return usage_error("train", "--model or --preset is required", NULL);
    if (!data) return usage_error("train", "--data is required", NULL);
    if (!out && !no_save)
        return usage_error("train", "--out DIR is needed to keep what is trained (--no-save trains without "
                           "saving)", NULL);
    if (out && no_save) return usage_error("train", "--no-save and --out exclude each other", NULL);
    if (out && !ckpt[0] && !overwrite && dir_nonempty(out)) {
        fprintf(stderr, "peft train: %s is not empty (an earlier run?): --resume %s continues it, "
                "--overwrite replaces it, or give another --out\n", out, out);
        return 2;
    }
    method_flags mf = { .method = get(&st, "method") };
    for (int i = 0; i < st.n; i++)
        for (int k = 0; METHOD_FLAGS[k]; k++) {
            char mk[64];
            snprintf(mk, sizeof mk, "%s", METHOD_FLAGS[k] + 2);
            for (char *p = mk; *p; p++) if (*p == '-') *p = '_';
            if (!strcmp(mk, st.s[i].key) && mf.n < 32) {
                mf.keys[mf.n] = METHOD_FLAGS[k];
                mf.vals[mf.n++] = st.s[i].val;
            }
        }
    peft_method_kind kind;
    if (peft_method_parse(mf.method, &kind) != PEFT_OK)
        return usage_error("train", "unknown --method (full, lora, adapter-v1, adapter-v2, excitor, qlora)",
                           mf.method);
    peft_method meth;
    int bm = build_method(&mf, &meth, src.seed);
    if (bm) return bm;
    peft_set_threads(threads);

    /* model, tokenizer, data */
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    peft_tokenizer tok, *tk = NULL;
    memset(&tok, 0, sizeof tok);
    const char *tsrc = tokp ? tokp : src.model;
    char tprobe[1200] = "";
    if (tsrc && !tokp && dir_exists(tsrc)) {
        snprintf(tprobe, sizeof tprobe, "%s/tokenizer.json", tsrc);
        if (!file_exists(tprobe)) snprintf(tprobe, sizeof tprobe, "%s/tokenizer.bin", tsrc);
        if (!file_exists(tprobe)) tprobe[0] = 0;
    } else if (tokp) snprintf(tprobe, sizeof tprobe, "%s", tokp);
    else if (tsrc && is_gguf(tsrc)) snprintf(tprobe, sizeof tprobe, "%s", tsrc);   /* its own tokenizer */
    if (tprobe[0]) {
        if (peft_tokenizer_load(&tok, tprobe, m->cfg.vocab_size) != PEFT_OK) {
            peft_model_free(m);
            return fail();
        }
        if (tok.unused[0])
            fprintf(stderr, "peft: warning: tokenizer_config.json beside %s: not applied: %s\n", tprobe,
                    tok.unused);
        peft_tokenizer_use_config_eos(&tok, &m->cfg); /* no tokenizer_config.json eos_token: config.json's */
        tk = &tok;
        const char *ct = get(&st, "chat_template");
        if (ct && (tok.chat = peft_chat_family(ct)) < 0) {
            peft_tokenizer_free(&tok);
            peft_model_free(m);
            return usage_error("train", "--chat-template must be chatml, llama2, llama3 or alpaca", ct);
        }
    }
    char train_path[1200], valid_path[1200] = "";
    snprintf(train_path, sizeof train_path, "%s", data);
    if (dir_exists(data)) {
        snprintf(train_path, sizeof train_path, "%s/train.jsonl", data);
        snprintf(valid_path, sizeof valid_path, "%s/valid.jsonl", data);
        if (!file_exists(valid_path)) valid_path[0] = 0;
    }
    peft_dataset ds, held;
    memset(&held, 0, sizeof held);
    int rc = 0;
    if (peft_dataset_load(&ds, train_path, tk, T + 1) != PEFT_OK) {
        peft_tokenizer_free(&tok);
        peft_model_free(m);
        return fail();
    }
    if (valid_path[0]) {
        if (peft_dataset_load(&held, valid_path, tk, T + 1) != PEFT_OK) rc = fail();
    } else if (eval_every > 0 && ds.n >= 20) {
        if (peft_dataset_split(&ds, &held, ds.n / 20, src.seed) != PEFT_OK) rc = fail();
    }
    for (int64_t i = 0; !rc && i < ds.n_tokens; i++)
        if (ds.ids[i] < 0 || ds.ids[i] >= m->cfg.vocab_size) {
            fprintf(stderr, "peft: error: %s: token id %d is outside the model's vocabulary (%d)\n",
                    train_path, ds.ids[i], m->cfg.vocab_size);
            rc = 1;
        }
    if (!rc && peft_attach(m, &meth) != PEFT_OK) rc = fail();
    if (!rc && peft_model_trainable_count(m) == 0) {
        fprintf(stderr, "peft: error: %s would train 0 parameters of this model: check its settings\n",
                peft_method_name(meth.kind));
        rc = 1;
    }
    peft_model_set_checkpointing(m, ckpt_act);
    /* in 64 bits: --epochs 1000000000 must not wrap around to a small or negative count */
    int64_t per_epoch = (ds.n + (int64_t)B * o.grad_accum - 1) / ((int64_t)B * o.grad_accum);
    int64_t steps64 = max_steps ? max_steps : (int64_t)epochs * per_epoch;
    if (!rc && steps64 > 10000000) {
        fprintf(stderr, "peft train: %lld optimizer steps (%s): more than 10^7 is not a run this tool makes; "
                "lower --epochs or --max-steps\n", (long long)steps64,
                max_steps ? "--max-steps" : "--epochs x steps per epoch");
        rc = 2;
    }
    int steps = rc ? 0 : (int)steps64;
    o.total_steps = steps;
    peft_trainer *tr = rc ? NULL : peft_trainer_new(m, &o);
    if (!rc && !tr) rc = fail();
    peft_data_pos pos = { 0, 0, 0 };
    if (!rc && ckpt[0]) {
        snprintf(path, sizeof path, "%s/trainer.safetensors", ckpt);
        if (peft_checkpoint_load(tr, &pos, path) != PEFT_OK) rc = fail();
        else if (pos.cursor > ds.n || tr->step > steps) {
            fprintf(stderr, "peft: error: %s: the checkpoint is at step %d, example %lld of an epoch, "
                    "outside this run (%d steps, %d examples): resumed with other data or settings?\n",
                    path, tr->step, (long long)pos.cursor, steps, ds.n);
            rc = 1;
        } else printf("resuming from %s at step %d\n", ckpt, tr->step);
    }
    if (!rc && out) {
        char mk[1300];
        snprintf(mk, sizeof mk, "%s", out);
        for (char *p = mk + 1; *p; p++) if (*p == '/') { *p = 0; mkdir(mk, 0755); *p = '/'; }
        mkdir(mk, 0755);
        if (!dir_exists(out)) { fprintf(stderr, "peft: error: cannot create %s\n", out); rc = 1; }
        if (!rc && !ckpt[0] && overwrite) clear_run(out);
        snprintf(path, sizeof path, "%s/train_config.json", out);
        if (!rc) rc = write_settings(&st, path);
    }
    char b1[40], b2[40];
    if (!rc)
        printf("training %s parameters (%.4f%% of %s) with %s: %d examples (%lld tokens; %d cut to --seq, "
               "%d dropped: no target within --seq), %d held out, %d steps\n",
               commas(peft_model_trainable_count(m), b1),
               100.0 * (double)peft_model_trainable_count(m) / (double)peft_model_base_count(m),
               commas(peft_model_base_count(m), b2), peft_method_name(meth.kind), ds.n,
               (long long)ds.n_tokens, ds.n_truncated, ds.n_dropped, held.n, steps);

    /* the log: lines of earlier steps survive a resume, later ones (past the checkpoint) go */
    run_state rs = { m,
                     tr,
                     &meth,
                     calloc((size_t)steps + 1, sizeof(double)),
                     calloc((size_t)steps + 2, sizeof(double)),
                     calloc((size_t)steps + 2, sizeof(double)),
                     0,
                     0 };
    if (!rc && (!rs.loss || !rs.eval_x || !rs.eval_y)) {
        fprintf(stderr, "peft: error: out of memory for %d steps\n", steps);
        rc = 1;
    }
    FILE *log = NULL;
    if (!rc && out) {
        snprintf(path, sizeof path, "%s/log.jsonl", out);
        unsigned char *old = NULL;
        size_t on = 0;
        if (ckpt[0] && peft_read_file(path, &old, &on) == PEFT_OK) {
            char tmp[1500];
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *w = fopen(tmp, "w");
            for (char *line = (char *)old, *next; w && line < (char *)old + on && *line; line = next) {
                next = strchr(line, '\n');
                if (!next) break;
                *next++ = 0;
                const char *sp = strstr(line, "\"step\": ");
                int sn = sp ? atoi(sp + 8) : 0;
                if (sn > tr->step) continue;
                fprintf(w, "%s\n", line);
                const char *lp = strstr(line, "\"loss\": "), *ep = strstr(line, "\"eval_loss\": ");
                if (lp && sn >= 1 && sn <= steps) {
                    rs.loss[sn - 1] = atof(lp + 8);
                    if (sn > rs.n_loss) rs.n_loss = sn;
                }
                if (ep && rs.n_eval < steps + 1) {
                    rs.eval_x[rs.n_eval] = sn;
                    rs.eval_y[rs.n_eval++] = atof(ep + 13);
                }
            }
            if (w) { fclose(w); rename(tmp, path); }
            free(old);
        }
        log = fopen(path, ckpt[0] ? "a" : "w");
        if (!log) { fprintf(stderr, "peft: error: cannot write %s\n", path); rc = 1; }
    }

    int *order = malloc(sizeof(int) * (size_t)ds.n), *tokb = malloc(sizeof(int) * (size_t)B * T),
        *tgtb = malloc(sizeof(int) * (size_t)B * T);
    if (!order || !tokb || !tgtb) { fprintf(stderr, "peft: error: out of memory\n"); rc = 1; }
    if (!rc) peft_dataset_order(ds.n, src.seed, (int)pos.epoch, order);
    const char *crash = getenv("PEFT_CRASH_AFTER_STEP");  /* tests: die like a killed process */
    int tty = isatty(2), pad = m->cfg.eos_id >= 0 ? m->cfg.eos_id : 0;
    double t0 = now_s(), tokens_run = 0;
    int start_step = tr ? tr->step : 0;
    /* a learning rate that destroyed the model: the loss pinned at ln(vocab) (uniform predictions)
       though the first step's was below it, or far above the first step's */
    double ln_v = logf((float)m->cfg.vocab_size), first_loss = rs.n_loss && rs.loss[0] > 0 ? rs.loss[0] : NAN;
    int flat = 0, high = 0, warned = 0;
    while (!rc && tr->step < steps) {
        double ts = now_s(), sum = 0, ntok = 0;
        for (int k = 0; k < o.grad_accum && !rc; k++) {
            int idx[256];
            for (int b = 0; b < B; b++) {
                if (pos.cursor >= ds.n) {
                    pos.epoch++;
                    pos.cursor = 0;
                    peft_dataset_order(ds.n, src.seed, (int)pos.epoch, order);
                }
                idx[b] = order[pos.cursor++];
            }
            int L = peft_dataset_batch(&ds, idx, B, T, pad, tokb, tgtb);
            float loss;
            if (peft_trainer_step(tr, tokb, tgtb, B, L, &loss) != PEFT_OK) { rc = fail(); break; }
            sum += loss;
            ntok += (double)B * L;
        }
        if (rc) break;
        pos.tokens += (int64_t)ntok;
        tokens_run += ntok;
        int s = tr->step;
        double loss = sum / o.grad_accum, el = now_s() - t0, tps = tokens_run / (el > 0 ? el : 1e-9);
        rs.loss[s - 1] = loss;
        rs.n_loss = s;
        if (isnan(first_loss)) first_loss = loss;
        flat = first_loss < 0.95 * ln_v && fabs(loss - ln_v) < 0.03 * ln_v ? flat + 1 : 0;
        high = loss > first_loss + fmax(first_loss, 1.0) ? high + 1 : 0;
        if (!warned && (flat >= 10 || high >= 3)) {
            warned = 1;
            if (tty) fprintf(stderr, "\n");
            fprintf(stderr, "peft: %s: step %d: the loss is %.4f, %s (step 1: %.4f, ln(vocab) %.4f): the "
                    "learning rate (%g) has likely destroyed the model%s\n", stop_div ? "error" : "warning",
                    s, loss, flat >= 10 ? "stuck at ln(vocab), uniform predictions, for 10 steps"
                                        : "far above where it started",
                    first_loss, ln_v, o.lr,
                    stop_div ? "; stopped (--stop-on-divergence)" : "; --stop-on-divergence stops such runs");
            if (stop_div) { rc = 1; break; }
        }
        if (log)
            fprintf(log,
                    "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, \"tokens\": %lld, "
                    "\"tok_s\": %.1f, \"epoch\": %lld, \"elapsed_s\": %.3f}\n",
                    s, loss, tr->last_lr, tr->last_grad_norm, (long long)pos.tokens, ntok / (now_s() - ts),
                    (long long)pos.epoch, el);
        /* ETA from this run's pace */
        if (tty)
            peft_progress(stderr, "train", s, steps, loss, tr->last_lr, tps,
                          el * s / (double)(s - start_step));
        else
            printf("step %4d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %.0f tok/s\n", s, steps, loss,
                   tr->last_lr, tr->last_grad_norm, tps);
        fflush(stdout);
        if (held.n && ((eval_every && s % eval_every == 0) || s == steps)) {
            double el2 = eval_loss(m, &held, B, T, pad);
            rs.eval_x[rs.n_eval] = s;
            rs.eval_y[rs.n_eval++] = el2;
            if (log) fprintf(log, "{\"step\": %d, \"eval_loss\": %.6f}\n", s, el2);
            if (tty) fprintf(stderr, "\n");
            printf("step %4d  eval loss %.4f (%d held-out examples)\n", s, el2, held.n);
        }
        if (log) fflush(log);
        if (out && save_every && s % save_every == 0 && s < steps) {
            if (save_checkpoint(&rs, out, s, &pos)) { rc = 1; break; }
            write_plot(&rs, out);
        }
        if (crash && atoi(crash) == s) raise(SIGKILL);
    }
    if (!rc) printf("done: %d steps in %.1f s\n", steps, now_s() - t0);
    if (!rc) print_moe_balance(m);
    if (!rc && out) {
        rc = save_result(&rs, out);
        if (!rc && meth.kind == PEFT_FULL)
            rc = copy_tokenizer_files(src.model, tokp, out); /* a usable model folder */
        write_plot(&rs, out);
        if (!rc) printf("saved %s (%s, train_config.json, log.jsonl, loss.svg)\n", out,
                        meth.kind == PEFT_FULL ? "model" : "adapter");
    }
    if (log) fclose(log);
    free(order); free(tokb); free(tgtb);
    free(rs.loss); free(rs.eval_x); free(rs.eval_y);
    peft_dataset_free(&ds);
    peft_dataset_free(&held);
    peft_tokenizer_free(&tok);
    if (tr) peft_trainer_free(tr);
    peft_model_free(m);
    return rc;
}

/* ----------------------------------------------------------------- bench */
static const char *BENCH_HELP =
    "usage: peft bench (--preset NAME | --model DIR) [--method M [method flags]]\n"
    "                  [--batch B] [--seq T] [--steps N] [--threads K]\n"
    "                  [--optim adamw|paged|8bit] [--optim-budget-mb X] [--checkpoint-activations 1]\n"
    "                  [--precision fp32|bf16]\n"
    "       peft bench --gemm --preset NAME [--batch B] [--seq T] [--threads K] [--precision bf16]\n\n"
    "Times training steps on random tokens and prints one line per figure:\n"
    "tokens/s, step ms (median), GFLOP/s (model FLOPs: 2 per weight per token\n"
    "forward, 2 more for the input gradient, 2 more per trainable weight, plus\n"
    "attention), MFU against an FMA peak measured in the same run, peak RSS, and\n"
    "the memory the method and optimizer take.\n"
    "--gemm times the matrix products of the preset's linears at batch x seq tokens\n"
    "(forward, input gradient, weight gradient) against OpenBLAS when libopenblas is\n"
    "installed (looked up at run time; never needed).\n"
    "--precision bf16: training steps with the frozen block linears in bf16 (bf16 products,\n"
    "fp32 sums); with --gemm, the bf16 products x·Wᵀ and dy·W against fp32 peft_gemm instead.\n";

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- `peft bench --gemm`: the training shapes against OpenBLAS --------------------
   Every linear of the preset at M = batch·seq tokens, in the three products
   training runs (y = x·Wᵀ, dx = dy·W, dW = dyᵀ·x). OpenBLAS is looked up at
   run time (dlopen: $PEFT_OPENBLAS, else libopenblas) and only compared
   with, never required. Its builds with 64-bit integers (numpy's
   scipy-openblas: prefixed names, suffix 64_) are called through their own
   type. */
typedef void (*sgemm_fn)(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc);
typedef void (*sgemm64_fn)(int order, int ta, int tb, long long M, long long N, long long K, float alpha,
                           const float *A, long long lda, const float *B, long long ldb, float beta, float *C,
                           long long ldc);
typedef struct {
    sgemm_fn sgemm;
    sgemm64_fn sgemm64;
} blas_lib;

static void blas_sgemm(const blas_lib *b, int tA, int tB, int M, int N, int K, const float *A, const float *B,
                       float *C) {
    if (b->sgemm)
        b->sgemm(101, tA ? 112 : 111, tB ? 112 : 111, M, N, K, 1.0f, A, tA ? M : K, B, tB ? K : N, 0.0f, C,
                 N);
    else
        b->sgemm64(101, tA ? 112 : 111, tB ? 112 : 111, M, N, K, 1.0f, A, tA ? M : K, B, tB ? K : N, 0.0f, C,
                   N);
}

/* The vector instructions of OpenBLAS's kernel `core` (its corename):
   0 SSE, 1 AVX, 2 AVX2, 3 AVX-512; -1 a name not in this list. Built for
   one target, OpenBLAS reports it in capitals: compared without case. */
static int openblas_core_level(const char *core) {
    static const struct {
        const char *name;
        int level;
    } cores[] = { { "katmai", 0 },      { "coppermine", 0 }, { "northwood", 0 },  { "prescott", 0 },
                  { "banias", 0 },      { "atom", 0 },       { "core2", 0 },      { "penryn", 0 },
                  { "dunnington", 0 },  { "nehalem", 0 },    { "athlon", 0 },     { "opteron", 0 },
                  { "opteron_sse3", 0 }, { "barcelona", 0 }, { "nano", 0 },       { "bobcat", 0 },
                  { "sandybridge", 1 }, { "bulldozer", 1 },  { "piledriver", 1 }, { "steamroller", 1 },
                  { "haswell", 2 },     { "excavator", 2 },  { "zen", 2 },        { "skylakex", 3 },
                  { "cooperlake", 3 },  { "sapphirerapids", 3 } };
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        if (!strcasecmp(core, cores[i].name)) return cores[i].level;
    return -1;
}

/* "" when `core` is OpenBLAS's own kernel for this CPU, else why not: a
   generic target, or one for an older CPU than this one (a ratio against
   it would measure OpenBLAS's build, not its kernels) */
static const char *openblas_core_generic(const char *core) {
    static const char *generic[] = { "generic", "unknown",         "armv7",
                                     "armv8",   "riscv64_generic", "power_generic" };
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (!strcasecmp(core, generic[i])) return "a generic target";
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    int cpu = __builtin_cpu_supports("avx512f") ? 3 : __builtin_cpu_supports("avx2") ? 2
              : __builtin_cpu_supports("avx")   ? 1
                                                : 0;
    int level = openblas_core_level(core);
    static const char *isa[] = { "SSE", "AVX", "AVX2", "AVX-512" };
    static char why[96];
    if (level < 0) return "not a kernel this list knows";
    if (level < cpu) {
        snprintf(why, sizeof why, "a kernel for an older CPU (%s on this %s CPU)", isa[level], isa[cpu]);
        return why;
    }
#endif
    return "";
}

/* the median of `reps` timed calls after one untimed (page faults, first
   touch). Both libraries keep their threads spinning for a while after a
   call (peft.h up to 0.2 ms, OpenBLAS up to ~0.1 s), which would steal the
   cores from the other one timed next: each side's timing ends with a pause
   that lets its threads go to sleep. */
static double time_gemm(const blas_lib *blas, int tA, int tB, int M, int N, int K, const float *A,
                        const float *B, float *C, int reps) {
    double t[9];
    if (reps > 9) reps = 9;
    for (int r = -1; r < reps; r++) {
        double t0 = now_s();
        if (blas) blas_sgemm(blas, tA, tB, M, N, K, A, B, C);
        else peft_gemm(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, 0.0f, C, N);
        if (r >= 0) t[r] = now_s() - t0;
    }
    struct timespec pause = { 0, blas ? 200000000L : 20000000L };
    nanosleep(&pause, NULL);
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    return t[reps / 2];
}

static int bench_gemm(const char *preset, int B, int T, int threads) {
    peft_config c;
    if (peft_config_preset(&c, preset) != PEFT_OK) return fail();
    peft_set_threads(threads);
    blas_lib bl = { NULL, NULL }, *blas = NULL;
    const char *path = getenv("PEFT_OPENBLAS"), *core = "unknown", *why = "";
    void *lib = path && *path ? dlopen(path, RTLD_NOW) : NULL;
    if (path && *path && !lib) fprintf(stderr, "peft: warning: PEFT_OPENBLAS=%s: %s\n", path, dlerror());
    if (!lib && !(path && *path)) lib = dlopen("libopenblas.so.0", RTLD_NOW);
    if (!lib && !(path && *path)) lib = dlopen("libopenblas.so", RTLD_NOW);
    if (lib) {
        /* plain names, else numpy's scipy-openblas (64-bit integers) */
        const char *(*corename)(void) = (const char *(*)(void))dlsym(lib, "openblas_get_corename");
        void (*set)(int) = (void (*)(int))dlsym(lib, "openblas_set_num_threads");
        bl.sgemm = (sgemm_fn)dlsym(lib, "cblas_sgemm");
        if (!bl.sgemm) {
            bl.sgemm64 = (sgemm64_fn)dlsym(lib, "scipy_cblas_sgemm64_");
            corename = (const char *(*)(void))dlsym(lib, "scipy_openblas_get_corename64_");
            set = (void (*)(int))dlsym(lib, "scipy_openblas_set_num_threads64_");
        }
        if (bl.sgemm || bl.sgemm64) blas = &bl;
        if (set) set(threads);
        if (corename && corename()) core = corename();
        why = openblas_core_generic(core);
    }
    double peak = peft_fma_peak_gflops() * threads;
    int M = B * T, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
    struct {
        const char *name;
        int out, in;
    } lin[] = { { "q_proj", q, c.dim },
                { "k/v_proj", kv, c.dim },
                { "o_proj", c.dim, q },
                { "gate/up_proj", c.hidden_dim, c.dim },
                { "down_proj", c.dim, c.hidden_dim },
                { "lm_head", c.vocab_size, c.dim } };
    printf("GEMM at the training shapes of %s, M = %d tokens, %d threads; FMA peak %.1f GFLOP/s (measured)\n",
           preset, M, threads, peak);
    /* a ratio against OpenBLAS running some other CPU's kernel says nothing about peft.h */
    int ratio_ok = blas && !*why;
    if (blas) printf("OpenBLAS kernel %s%s%s\n", core, *why ? ": " : " (its own kernel for this CPU)", why);
    if (blas && !ratio_ok)
        printf("warning: OpenBLAS runs %s: no ratio is reported (use an OpenBLAS that knows this CPU, or set "
               "OPENBLAS_CORETYPE to its kernel)\n", why);
    printf("%-13s %-8s %6s %6s %6s %10s %10s %7s %7s\n", "linear", "product", "M", "N", "K", "peft.h",
           blas ? "OpenBLAS" : "-", "ratio", "% peak");
    double tot_ours = 0, tot_blas = 0, flops_all = 0;
    double ratios[64];
    int nr = 0;
    for (size_t l = 0; l < sizeof lin / sizeof lin[0]; l++) {
        int shapes[3][5] = { { 0, 1, M, lin[l].out, lin[l].in },
                             { 0, 0, M, lin[l].in, lin[l].out },
                             { 1, 0, lin[l].out, lin[l].in, M } };
        const char *prod[3] = { "x·Wᵀ", "dy·W", "dyᵀ·x" };
        for (int k = 0; k < 3; k++) {
            int tA = shapes[k][0], tB = shapes[k][1], m = shapes[k][2], n = shapes[k][3], kk = shapes[k][4];
            float *A = malloc(sizeof(float) * (size_t)m * kk), *Bm = malloc(sizeof(float) * (size_t)kk * n),
                  *C = malloc(sizeof(float) * (size_t)m * n);
            if (!A || !Bm || !C) {
                free(A);
                free(Bm);
                free(C);
                fprintf(stderr, "peft: error: out of memory\n");
                return 1;
            }
            for (size_t i = 0; i < (size_t)m * kk; i++) A[i] = (float)(i % 13) * 0.01f;
            for (size_t i = 0; i < (size_t)kk * n; i++) Bm[i] = (float)(i % 7) * 0.01f;
            double fl = 2.0 * m * n * kk;
            int reps = fl > 2e10 ? 3 : 5;
            double to = time_gemm(NULL, tA, tB, m, n, kk, A, Bm, C, reps),
                   tb = blas ? time_gemm(blas, tA, tB, m, n, kk, A, Bm, C, reps) : 0;
            tot_ours += to; tot_blas += tb; flops_all += fl;
            if (blas && nr < 64) ratios[nr++] = tb / to;
            printf("%-13s %-8s %6d %6d %6d %10.1f", lin[l].name, prod[k], m, n, kk, fl / to / 1e9);
            if (ratio_ok) printf(" %10.1f %6.2fx", fl / tb / 1e9, tb / to);
            else if (blas) printf(" %10.1f %7s", fl / tb / 1e9, "-");
            else printf(" %10s %7s", "-", "-");
            printf(" %6.0f%%\n", 100.0 * fl / to / 1e9 / peak);
            free(A); free(Bm); free(C);
        }
    }
    printf("all shapes       peft.h %.1f GFLOP/s (%.0f%% of peak)", flops_all / tot_ours / 1e9,
           100.0 * flops_all / tot_ours / 1e9 / peak);
    if (ratio_ok) {
        qsort(ratios, (size_t)nr, sizeof(double), cmp_double);
        printf(", OpenBLAS %.1f GFLOP/s; time ratio %.2fx, median shape ratio %.2fx",
               flops_all / tot_blas / 1e9, tot_blas / tot_ours, ratios[nr / 2]);
    } else if (blas)
        printf(", OpenBLAS %.1f GFLOP/s (kernel %s, %s: no ratio)", flops_all / tot_blas / 1e9, core, why);
    else printf(" (OpenBLAS not found: no comparison)");
    printf("\n");
    if (lib) dlclose(lib);
    return 0;
}

/* ---- `peft bench --gemm --precision bf16`: bf16 products against fp32 -------------
   The products with a frozen weight that --precision bf16 changes, x·Wᵀ and dy·W,
   for every block linear of the preset at M = batch·seq tokens: fp32 peft_gemm,
   the bf16 weight decoded to fp32 in the packing (the fallback without
   AVX512-BF16) and the bf16 products (vdpbf16ps), each the median of 5 calls
   (dy·W added to C, as the input gradient is when it is not the first). */
/* on 1 thread the process's CPU time (a busy machine's other work does not
   count), else the wall clock */
static double bf16_clock(void) {
    if (peft_get_threads() > 1) return now_s();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* the product exactly as the op runs it (peft__frozen_product: the bf16
   kernel, or the decode path when W's bf16_compute is 0) */
static double time_bf16_op(const peft_qmatrix *W, const float *a, int M, float *C, int backward, int reps) {
    double t[9];
    int out = (int)W->rows, in = (int)W->cols;
    for (int r = -1; r < reps; r++) {
        double t0 = bf16_clock();
        if (peft__frozen_product(1, W, backward, a, M, out, in, C, !backward) != PEFT_OK) return -1;
        if (r >= 0) t[r] = bf16_clock() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    return t[reps / 2];
}

static int bench_gemm_bf16(const char *preset, int B, int T, int threads) {
    peft_config c;
    if (peft_config_preset(&c, preset) != PEFT_OK) return fail();
    peft_set_threads(threads);
    int M = B * T, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
    struct {
        const char *name;
        int out, in;
    } lin[] = { { "q_proj", q, c.dim },
                { "k/v_proj", kv, c.dim },
                { "o_proj", c.dim, q },
                { "gate/up_proj", c.hidden_dim, c.dim },
                { "down_proj", c.dim, c.hidden_dim } };
    int dot = peft_bf16_dot_available();
    printf("bf16 GEMM at the shapes of %s's block linears, M = %d tokens, %d threads (%s); %s\n", preset, M,
           threads, threads == 1 ? "CPU time" : "wall time",
           dot ? "AVX512-BF16" : "no AVX512-BF16 (or PEFT_NO_BF16): the bf16 column is the fallback");
    printf("%-13s %-6s %6s %6s %6s %10s %12s %10s %7s\n", "linear", "product", "M", "N", "K", "fp32",
           "bf16-decode", "bf16", "ratio");
    double tf = 0, tb = 0, tdec = 0;
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    for (size_t l = 0; l < sizeof lin / sizeof lin[0]; l++) {
        int out = lin[l].out, in = lin[l].in;
        int64_t sx[2] = { M, in };
        peft_tensor *x = peft_param_new("x", 2, sx);
        float *w = malloc(sizeof(float) * (size_t)out * in), *dy = malloc(sizeof(float) * (size_t)M * out),
              *C = malloc(sizeof(float) * (size_t)M * (out > in ? out : in));
        uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)out * in);
        if (!x || !w || !dy || !C || !wb) {
            fprintf(stderr, "peft: error: out of memory\n");
            return 1;
        }
        for (int64_t i = 0; i < x->n; i++) x->data[i] = peft_rng_normal(&rng);
        for (size_t i = 0; i < (size_t)M * out; i++) dy[i] = peft_rng_normal(&rng);
        for (size_t i = 0; i < (size_t)out * in; i++) {
            wb[i] = peft_f32_to_bf16(0.05f * peft_rng_normal(&rng));
            w[i] = peft_bf16_to_f32(wb[i]);
        }
        peft_qmatrix W = { PEFT_GGML_BF16, out, in, 2 * (size_t)in, (const uint8_t *)wb, NULL, 1 };
        peft_qmatrix Wd = W;
        Wd.bf16_compute = 0;
        const char *prod[2] = { "x·Wᵀ", "dy·W" };
        for (int k = 0; k < 2; k++) {
            int n = k ? in : out, kk = k ? out : in;
            double t32[9];
            for (int r = -1; r < 5; r++) {
                double t0 = bf16_clock();
                if (!k) peft_gemm(0, 1, M, out, in, x->data, in, w, in, 0.0f, C, out);
                else peft_gemm(0, 0, M, in, out, dy, out, w, in, 1.0f, C, in);
                if (r >= 0) t32[r] = bf16_clock() - t0;
            }
            qsort(t32, 5, sizeof(double), cmp_double);
            const float *a = k ? dy : x->data;
            double f32 = t32[2], fdec = time_bf16_op(&Wd, a, M, C, k, 5);
            double fb = time_bf16_op(&W, a, M, C, k, 5);
            if (fdec < 0 || fb < 0) return fail();
            double fl = 2.0 * M * n * kk;
            tf += f32; tb += fb; tdec += fdec;
            printf("%-13s %-8s %6d %6d %6d %10.1f %12.1f %10.1f %6.2fx\n", lin[l].name, prod[k], M, n, kk,
                   fl / f32 / 1e9, fl / fdec / 1e9, fl / fb / 1e9, f32 / fb);
        }
        peft_param_free(x);
        free(w); free(dy); free(C); free(wb);
    }
    printf("all shapes       bf16 %.2fx the fp32 GEMM's speed (decode fallback %.2fx)\n", tf / tb, tf / tdec);
    return 0;
}

static int cmd_bench(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    method_flags mf = { 0 };
    const char *optim = "adamw";
    int B = 4, T = 64, steps = 5, threads = default_threads, budget_mb = 64, gemm = 0, ckpt_act = 0;
    peft_precision prec = PEFT_PRECISION_FP32;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(BENCH_HELP, stdout);
            fputs(METHOD_HELP, stdout);
            return 0;
        }
        if (!strcmp(a, "--gemm")) { gemm = 1; i--; continue; }
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
        else if (!strcmp(a, "--checkpoint-activations")) ok = parse_int(v, &ckpt_act) && ckpt_act <= 1;
        else if (!strcmp(a, "--precision")) ok = peft_precision_parse(v, &prec) == PEFT_OK;
        else return usage_error("bench", "unknown option", a);
        if (!ok) return usage_error("bench", "bad value for", a);
    }
    if (!src.model && !src.preset) return usage_error("bench", "--model or --preset is required", NULL);
    if (gemm) {
        if (!src.preset) return usage_error("bench", "--gemm takes a --preset", NULL);
        if (prec == PEFT_PRECISION_BF16) return bench_gemm_bf16(src.preset, B, T, threads);
        return bench_gemm(src.preset, B, T, threads);
    }
    if (strcmp(optim, "adamw") && strcmp(optim, "paged") && strcmp(optim, "8bit"))
        return usage_error("bench", "--optim must be adamw, paged or 8bit", optim);
    peft_method meth;
    int bm = build_method(&mf, &meth, 0);
    if (bm) return bm;
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    if (peft_attach(m, &meth) != PEFT_OK) { peft_model_free(m); return fail(); }
    peft_model_set_checkpointing(m, ckpt_act);
    peft_trainer_opts o = peft_trainer_defaults();
    o.paged_optim = !strcmp(optim, "paged");
    o.optim_8bit = !strcmp(optim, "8bit");
    o.optim_budget_bytes = (size_t)budget_mb << 20;
    o.precision = prec;
    peft_trainer *tr = peft_trainer_new(m, &o);
    if (!tr) { peft_model_free(m); return fail(); }
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    double *ms = malloc(sizeof(double) * steps), *cpu = malloc(sizeof(double) * steps);
    int rc = 0;
    for (int s = 0; s <= steps && !rc; s++) {                 /* step 0 warms up */
        for (int i = 0; i < B * T; i++) { tok[i] = (int)(peft_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size); }
        for (int i = 0; i < B * T; i++) tgt[i] = tok[(i + 1) % (B * T)];
        float loss;
        struct timespec c0, c1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        double t0 = now_s();
        if (peft_trainer_step(tr, tok, tgt, B, T, &loss) != PEFT_OK) rc = fail();
        if (s > 0) ms[s - 1] = 1000.0 * (now_s() - t0);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        if (s > 0) cpu[s - 1] = 1000.0 * ((double)(c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9);
    }
    if (!rc) {
        qsort(ms, (size_t)steps, sizeof(double), cmp_double);
        double med = ms[steps / 2];
        const peft_config *c = &m->cfg;
        double tokens = (double)B * T, base = (double)peft_model_base_count(m),
               train = (double)peft_model_trainable_count(m);
        /* QK and PV */
        double attn = 4.0 * c->n_layers * (double)c->n_heads * c->head_dim * T * (T + 1) / 2.0 * B;
        double flops = (4.0 * base + 2.0 * train) * tokens + 3.0 * attn;
        char b1[40];
        printf("model            %s, method %s, batch %d x seq %d, %d threads, optimizer %s\n",
               src.preset ? src.preset : src.model, peft_method_name(meth.kind), B, T, threads, optim);
        if (prec == PEFT_PRECISION_BF16)
            printf("precision        bf16 frozen block linears (%s)\n",
                   peft_bf16_dot_available() ? "AVX512-BF16 products" : "no AVX512-BF16: decoded to fp32");
        printf("trainable        %s parameters (%.4f%%)\n", commas((int64_t)train, b1), 100.0 * train / base);
        printf("tokens/s         %.1f\n", tokens / (med / 1000.0));
        printf("step ms (median) %.1f\n", med);
        qsort(cpu, (size_t)steps, sizeof(double), cmp_double);
        printf("cpu ms/step      %.1f (median CPU time of the process, all threads)\n", cpu[steps / 2]);
        double gfs = flops / (med / 1000.0) / 1e9, peak = peft_fma_peak_gflops() * threads;
        printf("GFLOP/s          %.2f\n", gfs);
        printf("MFU              %.1f%% (of a measured FMA peak of %.1f GFLOP/s on %d threads)\n",
               100.0 * gfs / peak, peak, threads);
        printf("peak RSS MB      %.1f\n", (double)peft_peak_rss() / 1048576.0);
        size_t act =
                peft_graph_arena_bytes(tr->graph) + (m->recompute ? peft_graph_arena_bytes(m->recompute) : 0);
        printf("activations MB   %.1f (tape arena%s)\n", (double)act / 1048576.0,
               ckpt_act ? " + one block's recompute" : "");
        printf("optimizer MB     %.1f (state %s)\n", (double)peft_adamw_state_bytes(&tr->opt) / 1048576.0,
               optim);
        if (m->cfg.q4)
            printf("bits/frozen lin  %.3f (4-bit storage, from allocated bytes)\n",
                   peft_model_linear_bits(m));
        else if (m->gguf)
            printf("bits/frozen lin  %.3f (ggml blocks of the GGUF, from their bytes)\n",
                   peft_model_linear_bits(m));
        else if (prec == PEFT_PRECISION_BF16)
            printf("bits/frozen lin  %.3f (bf16)\n", peft_model_linear_bits(m));
        if (m->cfg.q4 || m->gguf)
            printf("bits/base weight %.3f (every base weight as allocated: embedding, output, norms too)\n",
                   peft_model_base_bits(m));
        print_moe_balance(m);
        if (o.paged_optim)
            printf("pager            %ld pages evicted, %ld loaded, %.1f MB moved, peak resident %.1f MB\n",
                   tr->opt.stats.pages_evicted, tr->opt.stats.pages_loaded,
                   (double)tr->opt.stats.bytes_moved / 1048576.0,
                   (double)tr->opt.stats.peak_resident / 1048576.0);
    }
    free(tok); free(tgt); free(ms); free(cpu);
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
    char dir[1100], tmp[1100];
    if (begin_folder(out, dir, tmp, sizeof dir)) return 1;
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    int rc = 0;
    if (m->cfg.q4) { fprintf(stderr, "peft: error: %s is already quantized\n", src.model); rc = 1;
    } else if (peft_model_quantize(m, t, dq) != PEFT_OK || peft_model_save_quantized(m, tmp) != PEFT_OK)
        rc = fail();
    rc = end_folder(tmp, dir, rc, src.model, NULL);
    if (!rc)
        printf("wrote %s: %s%s, %.3f bits per block-linear parameter\n", out, quant,
               dq ? " + double quantization" : "", peft_model_linear_bits(m));
    peft_model_free(m);
    return rc;
}

/* -------------------------------------------------------------- generate */
static const char *GENERATE_HELP =
    "usage: peft generate --model M [--adapter A] (--prompt TEXT [--alpaca] | --chat TEXT [--system TEXT]\n"
    "                     | --tokens 1,2,3) [--chat-template NAME] [--tokenizer PATH] [--max-new N]\n"
    "                     [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty X]\n"
    "                     [--seed S] [--print-ids] [--threads N] [--precision fp32|bf16]\n\n"
    "Continues a prompt with a KV cache, streaming the text (or, with --print-ids, the\n"
    "ids separated by spaces). Temperature 0 (the default) is greedy. Stops at the\n"
    "model's EOS or after --max-new tokens. --alpaca wraps the prompt in the Stanford\n"
    "Alpaca template (the instruction; answers start after \"### Response:\") and\n"
    "prints the answer alone. --chat sends TEXT as the user's message in the model's chat\n"
    "template (tokenizer_config.json chat_template, or --chat-template chatml|llama2|llama3|\n"
    "alpaca), after --system's message, and prints the answer alone.\n"
    "Stops at any EOS id of config.json, generation_config.json and the tokenizer's\n"
    "eos_token. generation_config.json's do_sample, temperature, top_p, top_k,\n"
    "max_new_tokens, max_length and repetition_penalty are the defaults of the flags.\n"
    "The tokenizer comes from the model folder (tokenizer.json or tokenizer.bin) or\n"
    "--tokenizer (a tokenizer.json, or llama2.c's tokenizer.bin).\n"
    "--precision bf16 stores the frozen block linears in bf16 and multiplies them in bf16\n"
    "with fp32 sums (AVX512-BF16; else decoded to fp32).\n";

typedef struct {
    const peft_tokenizer *tok;
    int prev, print_ids, count;
    const int *stop;
    int n_stop;
} gen_ctx;

static int on_token(void *vctx, int id) {
    gen_ctx *c = (gen_ctx *)vctx;
    int is_stop = 0;
    for (int k = 0; k < c->n_stop; k++) is_stop |= id == c->stop[k];
    if (c->print_ids) printf("%s%d", c->count ? " " : "", id);
    else if (c->tok && !is_stop) {
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
    const char *prompt = NULL, *tokens_arg = NULL, *tok_path = NULL, *chat = NULL, *system = NULL,
               *chat_name = NULL;
    int max_new = 64, print_ids = 0, alpaca = 0, threads = default_threads;
    peft_precision prec = PEFT_PRECISION_FP32;
    int set_max_new = 0, set_temp = 0, set_top_p = 0, set_top_k = 0, set_rep = 0;
    peft_sampler sm = { 0.0f, 1.0f, 0, 0, 1.0f, NULL, 0 };
    for (int i = 0; i < argc;) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(GENERATE_HELP, stdout); return 0; }
        if (!strcmp(a, "--print-ids")) { print_ids = 1; i++; continue; }
        if (!strcmp(a, "--alpaca")) { alpaca = 1; i++; continue; }
        if (!v) return usage_error("generate", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--tokens")) tokens_arg = v;
        else if (!strcmp(a, "--tokenizer")) tok_path = v;
        else if (!strcmp(a, "--chat")) chat = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--chat-template")) chat_name = v;
        else if (!strcmp(a, "--max-new")) ok = (set_max_new = parse_int(v, &max_new)) && max_new > 0;
        else if (!strcmp(a, "--temperature"))
            ok = (set_temp = parse_float(v, &sm.temperature)) && sm.temperature >= 0;
        else if (!strcmp(a, "--top-p"))
            ok = (set_top_p = parse_float(v, &sm.top_p)) && sm.top_p > 0 && sm.top_p <= 1;
        else if (!strcmp(a, "--top-k")) ok = (set_top_k = parse_int(v, &sm.top_k)) && sm.top_k >= 0;
        else if (!strcmp(a, "--repetition-penalty"))
            ok = (set_rep = parse_float(v, &sm.repetition_penalty)) && sm.repetition_penalty > 0;
        else if (!strcmp(a, "--seed")) sm.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, &threads) && threads > 0;
        else if (!strcmp(a, "--precision")) ok = peft_precision_parse(v, &prec) == PEFT_OK;
        else return usage_error("generate", "unknown option", a);
        if (!ok) return usage_error("generate", "bad value for", a);
        i += 2;
    }
    if (!src.model) return usage_error("generate", "--model is required", NULL);
    if (!!prompt + !!tokens_arg + !!chat != 1)
        return usage_error("generate", "give exactly one of --prompt, --chat and --tokens", NULL);
    if (alpaca && !prompt) return usage_error("generate", "--alpaca needs --prompt", NULL);
    if ((system || chat_name) && !chat)
        return usage_error("generate", "--system and --chat-template need --chat", NULL);
    int chat_family = 0;
    if (chat_name && (chat_family = peft_chat_family(chat_name)) < 0)
        return usage_error("generate", "--chat-template must be chatml, llama2, llama3 or alpaca", chat_name);
    char tprobe[1200];
    snprintf(tprobe, sizeof tprobe, "%s/tokenizer.json", src.model);
    int folder_tok = dir_exists(src.model) && file_exists(tprobe);
    snprintf(tprobe, sizeof tprobe, "%s/tokenizer.bin", src.model);
    folder_tok |= dir_exists(src.model) && file_exists(tprobe);
    folder_tok |= is_gguf(src.model);
    if ((prompt || chat) && !tok_path && !folder_tok)
        return usage_error(
            "generate", "--prompt and --chat need a tokenizer: the model folder has none, give --tokenizer",
            NULL);
    peft_set_threads(threads);
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    if (prec != PEFT_PRECISION_FP32 && peft_model_set_precision(m, prec) != PEFT_OK) {
        peft_model_free(m);
        return fail();
    }
    if (folder_tok && !tok_path)
        tok_path = src.model; /* the model folder's own tokenizer (text for --tokens too) */
    peft_tokenizer tok;
    char *templ = NULL;
    int have_tok = 0, rc = 0, n = 0, cap = 4096, stop[3 * PEFT_MAX_EOS + 1], n_stop = 0;
    int *ids = NULL, *out = NULL;
    /* generation_config.json: the defaults of the flags not given, and more EOS ids */
    peft_generation_config gc;
    char gpath[1200];
    snprintf(gpath, sizeof gpath, "%s/generation_config.json", src.model);
    int have_gc = dir_exists(src.model) && file_exists(gpath);
    if (have_gc && peft_generation_config_load(&gc, gpath) != PEFT_OK) {
        rc = fail();
        goto done;
    }
    if (have_gc) {
        if (gc.unused[0]) fprintf(stderr, "peft: warning: %s: not applied: %s\n", gpath, gc.unused);
        if (!set_max_new && gc.max_new_tokens > 0) max_new = gc.max_new_tokens;
        else if (!set_max_new && gc.max_length > 0)
            max_new = -gc.max_length; /* resolved once the prompt is known */
        if (!set_rep && gc.repetition_penalty > 0) sm.repetition_penalty = gc.repetition_penalty;
        if (!set_temp && gc.do_sample == 1) {                 /* greedy unless do_sample, as generate() */
            sm.temperature = gc.temperature >= 0 ? gc.temperature : 1.0f;
            if (!set_top_p && gc.top_p > 0) sm.top_p = gc.top_p;
            if (!set_top_k && gc.top_k >= 0) sm.top_k = gc.top_k;
            fprintf(stderr,
                    "peft: sampling as %s says (temperature %g, top_p %g, top_k %d); --temperature 0 for "
                    "greedy\n",
                    gpath, sm.temperature, sm.top_p, sm.top_k);
        }
        for (int k = 0; k < gc.n_eos; k++) stop[n_stop++] = gc.eos_ids[k];
    }
    for (int k = 0; k < m->cfg.n_eos; k++) stop[n_stop++] = m->cfg.eos_ids[k];
    if (m->cfg.eos_id >= 0) stop[n_stop++] = m->cfg.eos_id;
    ids = malloc(sizeof(int) * cap);
    out = malloc(sizeof(int) * (size_t)(max_new > 0 ? max_new : -max_new));
    if (!ids || !out) {
        fprintf(stderr, "peft: error: out of memory\n");
        rc = 1;
        goto done;
    }
    if (tok_path) {
        if (peft_tokenizer_load(&tok, tok_path, m->cfg.vocab_size) != PEFT_OK) { rc = fail(); goto done; }
        if (tok.unused[0])
            fprintf(stderr, "peft: warning: tokenizer_config.json beside %s: not applied: %s\n", tok_path,
                    tok.unused);
        peft_tokenizer_use_config_eos(&tok, &m->cfg);
        have_tok = 1;
        if (tok.eos_id >= 0) stop[n_stop++] = tok.eos_id;
    }
    if (chat) {
        peft_chat_message msgs[2] = { { "system", system }, { "user", chat } };
        n = peft_chat_encode(&tok, chat_family, system ? msgs : msgs + 1, system ? 2 : 1, 1, ids, NULL, cap);
        if (n < 0) {
            rc = fail();
            goto done;
        }
    }
    if (prompt && alpaca) {
        size_t tn = strlen(prompt) + 512;
        templ = malloc(tn);
        if (!templ) { rc = 1; goto done; }
        peft_alpaca_prompt(prompt, "", templ, tn);
        prompt = templ;
    }
    if (prompt) {
        n = peft_tokenizer_encode(&tok, prompt, 1, 0, ids, cap);
        if (n < 0) { fprintf(stderr, "peft: error: prompt too long\n"); rc = 1; goto done; }
        for (int i = 0; i < n; i++)          /* a tokenizer with more tokens than the model's vocabulary */
            if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size) {
                fprintf(stderr,
                        "peft: error: %s: the prompt's token %d is id %d (\"%s\"), outside the "
                        "model's vocabulary (vocab_size %d; the tokenizer has %d tokens)\n",
                        tok_path, i, ids[i], ids[i] < tok.n ? tok.pieces[ids[i]] : "?", m->cfg.vocab_size,
                        tok.n);
                rc = 1;
                goto done;
            }
    } else if (tokens_arg) {
        for (const char *p = tokens_arg; *p && n < cap;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 0 || v >= m->cfg.vocab_size) {
                rc = usage_error("generate", "--tokens must be ids within the vocabulary", tokens_arg);
                goto done;
            }
            ids[n++] = (int)v;
            p = *end == ',' ? end + 1 : end;
            if (*end && *end != ',') {
                rc = usage_error("generate", "--tokens must be comma-separated ids", tokens_arg);
                goto done;
            }
        }
    }
    if (n < 1 || n >= m->cfg.max_seq_len) {
        fprintf(stderr, "peft: error: the prompt has %d tokens; the model takes 1 to %d positions\n", n,
                m->cfg.max_seq_len - 1);
        rc = 1;
        goto done;
    }
    if (max_new < 0) max_new = -max_new - n > 0 ? -max_new - n : 1;      /* max_length counts the prompt */
    {
        gen_ctx ctx = { have_tok ? &tok : NULL, n ? ids[n - 1] : 1, print_ids, 0, stop, n_stop };
        if (prompt && !print_ids && !alpaca) fputs(prompt, stdout);   /* --alpaca, --chat: the answer alone */
        sm.stop = stop;
        sm.n_stop = n_stop;
        peft_graph *g = peft_graph_new();
        int got = g ? peft_generate(m, g, ids, n, max_new, m->cfg.eos_id, &sm, out, on_token, &ctx) : -1;
        printf("\n");
        if (got < 0) {
            fprintf(stderr, "peft: error: generation failed: %s\n", peft_last_error());
            rc = 1;
        }
        peft_graph_free(g);
    }
done:
    if (have_tok) peft_tokenizer_free(&tok);
    free(ids); free(out); free(templ);
    peft_model_free(m);
    return rc;
}

/* ----------------------------------------------------------------- merge */
static const char *MERGE_HELP =
    "usage: peft merge --model DIR --adapter DIR --out DIR\n\n"
    "Folds an adapter into the base weights and writes a plain Hugging Face model\n"
    "folder (config.json + model.safetensors, F32). LoRA: W += (alpha/r) B A.\n"
    "A GGUF base (--model model.gguf) is decoded to fp32 first, and its byte-level\n"
    "tokenizer written as tokenizer.json + tokenizer_config.json.\n"
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
    if (!src.model || !src.adapter || !out)
        return usage_error("merge", "--model, --adapter and --out are required", NULL);
    char dir[1100], tmp[1100];
    if (begin_folder(out, dir, tmp, sizeof dir)) return 1;
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    int rc = 0, v1 = 0;
    char apath[1200];
    snprintf(apath, sizeof apath, "%s/adapter", tmp);
    /* a GGUF base: its blocks decoded to fp32 first (the merged model is a float one) */
    if (m->gguf && peft_model_dequantize(m) != PEFT_OK) {
        peft_model_free(m);
        return fail();
    }
    if (m->method.kind == PEFT_ADAPTER_V2) {
        if (peft_v2_merge(m) != PEFT_OK || peft_model_save(m, tmp) != PEFT_OK) rc = fail();
        else if ((v1 = m->method.kind == PEFT_ADAPTER_V1) && peft_adapter_save(m, apath) != PEFT_OK)
            rc = fail();
    } else if (m->method.kind != PEFT_LORA) {
        fprintf(stderr,
                "peft: error: %s: a %s adapter cannot be merged into the weights (LoRA and adapter-v2 can)\n",
                src.adapter, peft_method_name(m->method.kind));
        rc = 1;
    } else if (peft_lora_merge(m) != PEFT_OK || peft_model_save(m, tmp) != PEFT_OK) rc = fail();
    if (!rc && is_gguf(src.model)) {                 /* the GGUF's tokenizer, as tokenizer.json */
        if (peft_gguf_write_tokenizer(src.model, tmp) == PEFT_OK)
            printf("wrote tokenizer.json from %s\n", src.model);
        else fprintf(stderr, "peft: note: no tokenizer.json written: %s\n", peft_last_error());
    }
    rc = end_folder(tmp, dir, rc, src.model, NULL);
    if (!rc && m->method.kind == PEFT_LORA) printf("merged %s into %s\n", src.adapter, dir);
    else if (!rc)
        printf("merged the bias/scale of %s into %s%s%s%s\n", src.adapter, dir,
               v1 ? "; the gated prompts are in " : "", v1 ? dir : "", v1 ? "/adapter" : "");
    peft_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- export */
static const char *EXPORT_HELP =
    "usage: peft export --adapter A [--model M] --format peft|gguf --out PATH\n\n"
    "Writes an adapter for other tools: peft (a PEFT folder: adapter_config.json +\n"
    "adapter_model.safetensors, what Hugging Face PEFT loads) or gguf (one file that\n"
    "llama.cpp loads with --lora; LoRA only). The base model is --model, or the\n"
    "adapter's base_model_name_or_path when that is a local folder.\n";

static int cmd_export(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    const char *format = NULL, *out = NULL;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(EXPORT_HELP, stdout); return 0; }
        if (!v) return usage_error("export", "option needs a value", a);
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--format")) format = v;
        else if (!strcmp(a, "--out")) out = v;
        else return usage_error("export", "unknown option", a);
    }
    if (!src.adapter || !format || !out)
        return usage_error("export", "--adapter, --format and --out are required", NULL);
    if (strcmp(format, "peft") && strcmp(format, "gguf"))
        return usage_error("export", "--format must be peft or gguf", format);
    char base[1200] = "";
    if (!src.model) {                                   /* the adapter names its base */
        char cfg[1200];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", src.adapter);
        peft_json *j;
        if (peft_json_load(&j, cfg) != PEFT_OK) return fail();
        const peft_json *b = peft_json_get(j, "base_model_name_or_path");
        if (b && b->type == PEFT_JSON_STRING) snprintf(base, sizeof base, "%s", b->string);
        peft_json_free(j);
        if (!base[0] || (!dir_exists(base) && !is_gguf(base)))
            return usage_error("export",
                               "give --model: the adapter's base_model_name_or_path is not a local folder",
                               base[0] ? base : NULL);
        src.model = base;
    }
    peft_model *m;
    if (load_model(&src, &m)) return 1;
    peft_status st = !strcmp(format, "gguf") ? peft_adapter_export_gguf(m, out) : peft_adapter_save(m, out);
    int rc = st == PEFT_OK ? 0 : fail();
    if (!rc) printf("wrote %s (%s)\n", out, format);
    peft_model_free(m);
    return rc;
}

static const char *MAIN_HELP =
    "usage: peft COMMAND [options]   (peft COMMAND --help for each)\n\n"
    "  info     configuration and parameter counts of a model or preset\n"
    "  logits   run a sequence forward and write its logits\n"
    "  train    fine-tune a model (full or a PEFT method) on Alpaca/JSONL/text data\n"
    "  merge    fold a LoRA adapter into the base weights\n"
    "  quantize store a model's block linears in 4 bits (bitsandbytes layout)\n"
    "  bench    time training steps: tokens/s, GFLOP/s, peak memory\n"
    "  generate continue a prompt (greedy or sampled), with or without an adapter\n"
    "  export   write an adapter as a PEFT folder or a llama.cpp GGUF file\n"
    "\n  peft --version prints the version of peft.h\n";

#ifdef PEFT_CUDA
/* peft cuda (the PEFT_CUDA build only): the device the CUDA layer finds.
   Exit 0 with "no CUDA device" where there is none. */
static int cmd_cuda(void) {
    int n = peft_cuda_device_count();
    if (n == 0) {
        printf("no CUDA device\n");
        return 0;
    }
    char name[256];
    size_t used = 0, peak = 0, total = 0;
    if (peft_cuda_init(0, PEFT_CUDA_FP32) || peft_cuda_device_name(name, sizeof name) ||
        peft_cuda_mem_info(&used, &peak, &total)) {
        fprintf(stderr, "peft cuda: %s\n", peft_cuda_error());
        return 1;
    }
    printf("%d CUDA device(s); device 0: %s, %.1f of %.1f GiB in use\n", n, name, (double)used / 1073741824.0,
           (double)total / 1073741824.0);
    peft_cuda_shutdown();
    return 0;
}
#endif

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(MAIN_HELP, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("peft %s\n", PEFT_VERSION_STRING);
        return 0;
    }
    if (set_default_threads()) return 2;
    if (!strcmp(argv[1], "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "merge")) return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(argv[1], "export")) return cmd_export(argc - 2, argv + 2);
#ifdef PEFT_CUDA
    if (!strcmp(argv[1], "cuda")) return cmd_cuda();
#endif
    fprintf(stderr, "peft: unknown command '%s'\n%s", argv[1], MAIN_HELP);
    return 2;
}
