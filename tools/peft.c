/* peft — command line front end of peft.h. A thin layer: parse flags, call
   the library, print. Every failure prints peft_last_error() and exits 1
   (2 for usage errors). */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#ifdef PEFT_CUDA
/* build/peft-cuda: the library's memory is CUDA managed memory once --device cuda is on (see
   peft_backend_cuda in peft_cuda.h): the kernels and the host read the same pointers */
#define PEFT_MALLOC(n) peft_cuda_heap_alloc(n)
#define PEFT_REALLOC(p, n) peft_cuda_heap_realloc(p, n)
#define PEFT_FREE(p) peft_cuda_heap_free(p)
#endif
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
#include <ctype.h>
#ifdef PEFT_CUDA
/* the tool's own free and realloc calls may meet the library's managed blocks (peft_read_file's
   buffer, a list the caller frees): the heap tells its blocks from malloc's by the pointer */
#define free(p) peft_cuda_heap_free(p)
#define realloc(p, n) peft_cuda_heap_realloc(p, n)
#endif

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "peft %s: %s%s%s\nTry 'peft %s --help'.\n", cmd, msg, arg ? ": " : "", arg ? arg : "",
            cmd);
    return 2;
}
/* A flag's value refused, naming the flag, the value and what it takes:
   "peft train: --lr: abc is not a number > 0". */
static int bad_value(const char *cmd, const char *flag, const char *value, const char *want) {
    /* a whole number past the most the flag takes (parse_int's 10^9 when want names no bound):
       out of range, not "not a whole number" */
    const char *digits = value + (value[0] == '+');
    long long low = 0, high = 1000000000;
    int bounded = sscanf(want, "a whole number from %lld to %lld", &low, &high) == 2;
    if ((bounded || sscanf(want, "a whole number >= %lld", &low) == 1) && *digits &&
        strspn(digits, "0123456789") == strlen(digits) && strtod(digits, NULL) > (double)high) {
        fprintf(stderr, "peft %s: %s: '%s' is out of range: a whole number from %lld to %lld\nTry 'peft %s "
                "--help'.\n", cmd, flag, value, low, high, cmd);
        return 2;
    }
    fprintf(stderr, "peft %s: %s: '%s' is not %s\nTry 'peft %s --help'.\n", cmd, flag, value, want, cmd);
    return 2;
}
static int fail(void) {
    fprintf(stderr, "peft: error: %s\n", peft_last_error());
    return 1;
}

/* --device cpu|cuda (train, bench, generate, logits): taken out of argv before the command parses
   it. With cuda, --precision is taken too and names cuBLAS's products (fp32, tf32 or bf16 tensor
   cores, fp32 storage throughout): the model itself stays fp32. */
static const char *DEVICE_HELP =
    "  --device cpu|cuda     where the steps run (default cpu; cuda needs build/peft-cuda, `make cuda`);\n"
    "                        with cuda, --precision fp32|tf32|bf16 picks cuBLAS's products\n";
#ifdef PEFT_CUDA
static int use_cuda;
static peft_cuda_precision cuda_prec = PEFT_CUDA_FP32;
#endif
static int take_device(const char *cmd, int *argc, char **argv) {
    const char *dev = "cpu", *prec = NULL;
    for (int i = 0; i + 1 < *argc; i++)
        if (!strcmp(argv[i], "--device")) dev = argv[i + 1];
    if (strcmp(dev, "cpu") && strcmp(dev, "cuda")) return usage_error(cmd, "--device must be cpu or cuda",
                                                                      dev);
    int cuda = !strcmp(dev, "cuda"), o = 0;
    for (int i = 0; i < *argc; i++) {
        int take = i + 1 < *argc && (!strcmp(argv[i], "--device") || (cuda && !strcmp(argv[i],
                                                                                      "--precision")));
        if (!take) {
            argv[o++] = argv[i];
            continue;
        }
        if (!strcmp(argv[i], "--precision")) prec = argv[i + 1];
        i++;
    }
    *argc = o;
    if (!cuda) return 0;
#ifndef PEFT_CUDA
    (void)prec;
    return usage_error(cmd, "--device cuda needs the CUDA build: build/peft-cuda (`make cuda`); this is the "
                            "CPU build", NULL);
#else
    if (prec && !strcmp(prec, "tf32")) cuda_prec = PEFT_CUDA_TF32;
    else if (prec && !strcmp(prec, "bf16")) cuda_prec = PEFT_CUDA_BF16;
    else if (prec && strcmp(prec, "fp32")) return usage_error(cmd, "--precision must be fp32, tf32 or bf16",
                                                              prec);
    if (peft_cuda_init(0, cuda_prec)) {
        fprintf(stderr, "peft %s: --device cuda: %s\n", cmd, peft_cuda_error());
        return 1;
    }
    peft_cuda_heap_device(1);
    if (peft_backend_register(peft_backend_cuda()) != PEFT_OK) return fail();
    peft_backend_use(peft_backend_cuda());
    use_cuda = 1;
    return 0;
#endif
}
/* bench's device lines: the GPU, cuBLAS's precision and the device memory in use at the end (all of
   cudaMemGetInfo's: the CUDA context included) */
static void device_report(void) {
#ifdef PEFT_CUDA
    if (!use_cuda) return;
    char name[256];
    size_t used = 0, peak = 0, total = 0;
    if (peft_cuda_device_name(name, sizeof name)) snprintf(name, sizeof name, "?");
    peft_cuda_sync();
    peft_cuda_mem_info(&used, &peak, &total);
    static const char *const precs[] = { "fp32", "tf32", "bf16" };
    printf("device           cuda: %s, cuBLAS %s products\n", name, precs[cuda_prec]);
    printf("peak GPU MB      %.1f (device memory in use, CUDA context included)\n",
           (double)(used > peak ? used : peak) / 1048576.0);
#endif
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
        fprintf(stderr, "peft: error: PEFT_THREADS must be a number of threads from 1 to 1024, not '%s'\n",
                e);
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
/* --method NAME and the methods' settings, from the library's method
   registry: the flag of setting lora_r is --lora-r. Collected while
   parsing, applied at the end so that they may come before or after
   --method. */
typedef struct { const char *method; const char *keys[32], *vals[32]; int n; } method_flags;

/* The i-th distinct setting over every registered method (lora and qlora share theirs); NULL past the end. */
static const peft_method_key *method_key(int i) {
    /* the distinct keys, collected once (methods register before main's parsing) */
    static const peft_method_key *keys[256];
    static int n_keys = -1;
    if (n_keys < 0) {
        n_keys = 0;
        for (int k = 0; k < peft_method_count(); k++) {
            const peft_method_def *d = peft_method_get((peft_method_kind)k);
            for (int g = 0; g < 3; g++)
                for (const peft_method_key *key = d->keys[g]; key && key->key; key++) {
                    int dup = 0;
                    for (int j = 0; j < n_keys && !dup; j++) dup = !strcmp(keys[j]->key, key->key);
                    if (!dup && n_keys < (int)(sizeof keys / sizeof keys[0])) keys[n_keys++] = key;
                }
        }
    }
    return i >= 0 && i < n_keys ? keys[i] : NULL;
}

/* lora_r -> --lora-r */
static const char *key_flag(const char *key, char *buf, size_t cap) {
    snprintf(buf, cap, "--%s", key);
    for (char *p = buf; *p; p++)
        if (*p == '_') *p = '-';
    return buf;
}

/* "lora, qlora": the methods that read setting key */
static const char *key_methods(const char *key, char *buf, size_t cap) {
    buf[0] = 0;
    for (int k = 0; k < peft_method_count(); k++) {
        const peft_method_def *d = peft_method_get((peft_method_kind)k);
        int has = 0;
        for (int g = 0; g < 3; g++)
            for (const peft_method_key *x = d->keys[g]; x && x->key; x++) has |= !strcmp(x->key, key);
        size_t L = strlen(buf);
        if (has) snprintf(buf + L, cap - L, "%s%s", L ? ", " : "", d->name);
    }
    return buf;
}

static void print_method_help(FILE *f) {
    fprintf(f, "  --method M            the method (default full; lora for a GGUF model, whose block\n"
               "                        weights are not float and cannot train fully):\n");
    for (int k = 0; k < peft_method_count(); k++) {
        const peft_method_def *d = peft_method_get((peft_method_kind)k);
        fprintf(f, "      %-12s %s\n", d->name, d->title);
    }
    char prev[256] = "", owners[256], flag[64], head[96];
    for (int i = 0; method_key(i); i++) {
        const peft_method_key *k = method_key(i);
        if (strcmp(key_methods(k->key, owners, sizeof owners), prev)) {
            fprintf(f, "  settings of %s:\n", owners);
            snprintf(prev, sizeof prev, "%s", owners);
        }
        snprintf(head, sizeof head, "%s %s", key_flag(k->key, flag, sizeof flag), k->arg);
        fprintf(f, "  %-21s ", head);
        for (const char *p = k->help; *p; p++) {
            fputc(*p, f);
            if (*p == '\n') fprintf(f, "%24s", "");
        }
        fputc('\n', f);
    }
}

/* Returns 1 if a/v was a method flag (stored), 0 if not. */
static int take_method_flag(method_flags *mf, const char *a, const char *v) {
    if (!strcmp(a, "--method")) {
        mf->method = v;
        return 1;
    }
    char flag[64];
    for (int i = 0; method_key(i); i++)
        if (!strcmp(a, key_flag(method_key(i)->key, flag, sizeof flag)) && mf->n < 32) {
            mf->keys[mf->n] = method_key(i)->key;
            mf->vals[mf->n++] = v;
            return 1;
        }
    return 0;
}

/* A bad method name or value is a usage error: exit 2, as for every flag. */
static int build_method(const method_flags *mf, peft_method *out, uint64_t seed) {
    peft_method_kind kind = PEFT_FULL;
    if (mf->method && peft_method_parse(mf->method, &kind) != PEFT_OK) {
        fprintf(stderr, "peft: error: --method: %s\n", peft_last_error());
        return 2;
    }
    *out = peft_method_defaults(kind);
    out->seed = seed;
    for (int i = 0; i < mf->n; i++) {
        char flag[64];
        if (peft_method_set(out, mf->keys[i], mf->vals[i]) != PEFT_OK) {
            key_flag(mf->keys[i], flag, sizeof flag);
            fprintf(stderr, "peft: error: %s: %s\n", flag, peft_last_error());
            return 2;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ info */
/* The registry as the README's methods table (a test holds the README to it). */
static void print_methods_table(FILE *f) {
    fprintf(f, "| `--method` | method | section | what trains | zero-init |\n|---|---|---|---|---|\n");
    for (int k = 0; k < peft_method_count(); k++) {
        const peft_method_def *d = peft_method_get((peft_method_kind)k);
        fprintf(f, "| `%s` | %s | `%s` | %s | %s |\n", d->name, d->title, d->section, d->trains,
                d->zero_init);
    }
}


static const char *INFO_HELP =
    "usage: peft info MODEL_DIR [--method M [method flags]]\n"
    "       peft info --preset NAME [--method M [method flags]]\n"
    "       peft info --list\n"
    "       peft info --methods\n\n"
    "Prints a model's configuration and parameter counts (from config.json or a\n"
    "built-in preset; no weights are loaded). With --method, the parameters that\n"
    "method trains and their share of the base model. --methods: the methods\n"
    "as a Markdown table (the README's).\n";

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
            print_method_help(stdout);
            return 0;
        }
        if (!strcmp(a, "--methods")) {
            print_methods_table(stdout);
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
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(LOGITS_HELP, stdout);
            fputs(DEVICE_HELP, stdout);
            return 0;
        }
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
    "                        there is held-out data: valid.jsonl, else 5% of the examples, at least 1)\n"
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
    "  --overwrite           replace the run in a non-empty --out (its checkpoints, log and result go)\n"
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
                                      "seed",
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
    for (int i = 0; method_key(i); i++)
        if (!strcmp(k, method_key(i)->key)) return 1;
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
        for (int k = 0; method_key(k); k++)
            numeric |= method_key(k)->number && !strcmp(st->s[i].key, method_key(k)->key);
        /* a seed past 10^15 stays a string: a JSON reader's double would round it */
        numeric = numeric && json_number(v) && (strcmp(st->s[i].key, "seed") || strlen(v) <= 15);
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

/* train_config.json names model, data and tokenizer by absolute paths: `peft train --resume RUN`
   from another folder reads the same files (the paths as given are relative to where train ran) */
static const char *const PATH_KEYS[] = { "model", "data", "tokenizer", NULL };

static int write_run_settings(const settings *st, const char *path) {
    settings *abs = malloc(sizeof *abs);
    if (!abs) {
        fprintf(stderr, "peft: error: out of memory\n");
        return 1;
    }
    *abs = *st;
    char cwd[4096], full[4700];
    for (int k = 0; PATH_KEYS[k]; k++) {
        const char *v = get(abs, PATH_KEYS[k]);
        struct stat sb;
        /* the current folder joined in front (getcwd: POSIX, where realpath is XSI); "./" dropped */
        if (!v || v[0] == '/' || stat(v, &sb) != 0 || !getcwd(cwd, sizeof cwd)) continue;
        while (v[0] == '.' && v[1] == '/') v += 2;
        int len = snprintf(full, sizeof full, "%s/%s", cwd, strcmp(v, ".") ? v : "");
        if (len > 0 && (size_t)len < sizeof abs->s[0].val) put(abs, PATH_KEYS[k], full);
    }
    int rc = write_settings(abs, path);
    free(abs);
    return rc;
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

/* The newest "step" in RUN/log.jsonl (0: none). */
static int last_logged_step(const char *run) {
    char path[1300], line[1024];
    snprintf(path, sizeof path, "%s/log.jsonl", run);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int last = 0;
    while (fgets(line, sizeof line, f)) {
        const char *sp = strstr(line, "\"step\": ");
        if (sp && atoi(sp + 8) > last) last = atoi(sp + 8);
    }
    fclose(f);
    return last;
}

/* A run is finished when its log reached its last step and its result (adapter or model) is saved. */
static int run_finished(const char *run, int steps) {
    char path[1300];
    if (last_logged_step(run) < steps) return 0;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", run);
    if (file_exists(path)) return 1;
    snprintf(path, sizeof path, "%s/model.safetensors", run);
    return file_exists(path);
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
    static const char *const names[] = { "config.json",
                                         "model.safetensors",
                                         "model.safetensors.index.json",
                                         "tokenizer.json",
                                         "tokenizer_config.json",
                                         "generation_config.json",
                                         "special_tokens_map.json",
                                         "chat_template.jinja",
                                         "tokenizer.model",
                                         "tokenizer.bin",
                                         NULL };
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
    "generation_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model",
    "tokenizer.bin", NULL };

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

/* --overwrite: the old run's checkpoints, log and saved result go first (a later --resume must not
   find them, and a run stopped early must not leave the old adapter beside the new config and
   log); a model folder's files stay when --out is the folder the model is read from */
static void clear_run(const char *out, const char *model) {
    DIR *d = opendir(out);
    char child[1300];
    struct stat so, sm;
    int model_here = model && stat(out, &so) == 0 && stat(model, &sm) == 0 && so.st_dev == sm.st_dev &&
                     so.st_ino == sm.st_ino;
    for (struct dirent *e; d && (e = readdir(d));) {
        /* checkpoint-N and checkpoint-N.tmp only: checkpoint-mine/ is the user's */
        const char *p = !strncmp(e->d_name, "checkpoint-", 11) ? e->d_name + 11 : "";
        size_t digits = strspn(p, "0123456789");
        int ckpt = digits > 0 && (!p[digits] || !strcmp(p + digits, ".tmp"));
        int result = !strcmp(e->d_name, "adapter_model.safetensors") ||
                     !strcmp(e->d_name, "adapter_config.json") ||
                     (!model_here && model_folder_file(e->d_name));
        if (!ckpt && !result && strcmp(e->d_name, "log.jsonl") && strcmp(e->d_name, "loss.svg")) continue;
        snprintf(child, sizeof child, "%s/%s", out, e->d_name);
        remove_tree(child);
    }
    if (d) closedir(d);
}

/* One `peft train` run: the resolved settings, what they parse to, and
   what the run holds while it trains. cmd_train runs its phases in order;
   each returns 0 to go on, an exit status to stop (-1: stop, exit 0). */
typedef struct {
    settings st;
    char ckpt[1200], run_dir[1200];         /* --resume: the checkpoint and its run folder */
    settings *run_st;                       /* --resume: the run's train_config.json as read */
    int overwrite, no_save;
    model_src src;
    const char *data, *out, *tokp;
    int epochs, max_steps, B, T, threads, eval_every, save_every, stop_div, ckpt_act, steps;
    peft_trainer_opts o;
    peft_method meth;
    peft_model *m;
    peft_tokenizer tok, *tk;
    peft_dataset ds, held;
    char train_path[1200];
    peft_trainer *tr;
    peft_data_pos pos;
    run_state rs;
    FILE *log;
    double elapsed0;                        /* elapsed_s at the checkpoint: the log's clock goes on */
    int *order, *tokb, *tgtb;
    int pad, tty;
} train_job;

/* A path that the resumed run's train_config.json names (no flag replaced it) and that is not there:
   the error names the file, the key and the path (a run written with relative paths, resumed from
   another folder). 1: missing. */
static int resume_paths_missing(const train_job *j) {
    char flag[64];
    for (int k = 0; PATH_KEYS[k]; k++) {
        const char *was = get(j->run_st, PATH_KEYS[k]), *now = get(&j->st, PATH_KEYS[k]);
        struct stat sb;
        if (!was || !now || strcmp(was, now) || stat(now, &sb) == 0) continue;
        fprintf(stderr, "peft: error: %s/train_config.json: \"%s\": %s: no such file or folder%s; give %s "
                "to say where it is now\n", j->run_dir, PATH_KEYS[k], now,
                now[0] == '/' ? "" : " (a relative path, read from the current folder)",
                key_flag(PATH_KEYS[k], flag, sizeof flag));
        return 1;
    }
    return 0;
}

/* --help, then the settings: the resumed run's, --config's, the flags', the defaults. -1: go on. */
static int train_resolve(train_job *j, int argc, char **argv) {
    settings *st = &j->st;
    const char *resume = NULL, *config = NULL;
    char path[1400];
    for (int i = 0; i < argc; i += 2) {                 /* --help, --config and --resume first */
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(TRAIN_HELP, stdout);
            fputs(DEVICE_HELP, stdout);
            print_trainer_defaults(stdout);
            print_method_help(stdout);
            return 0;
        }
        if (train_switch(argv[i])) {
            i--;
            continue;
        }
        if (i + 1 >= argc) return usage_error("train", "option needs a value", argv[i]);
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
        if (!strcmp(argv[i], "--resume")) resume = argv[i + 1];
    }
    if (resume) {
        if (find_checkpoint(resume, j->ckpt, sizeof j->ckpt, j->run_dir, sizeof j->run_dir)) return 1;
        snprintf(path, sizeof path, "%s/train_config.json", j->run_dir);
        if (read_settings(st, path)) return 1;
        put(st, "out", j->run_dir);
        j->run_st = malloc(sizeof *j->run_st);
        if (!j->run_st) {
            fprintf(stderr, "peft: error: out of memory\n");
            return 1;
        }
        *j->run_st = *st;
    }
    if (config && read_settings(st, config)) return 1;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i];
        if (train_switch(a)) {
            if (!strcmp(a, "--overwrite"))
                j->overwrite = 1;
            else if (!strcmp(a, "--no-save"))
                j->no_save = 1;
            else
                put(st, "stop_on_divergence", "1");
            i--;
            continue;
        }
        if (!strcmp(a, "--config") || !strcmp(a, "--resume")) continue;
        if (strncmp(a, "--", 2)) return usage_error("train", "unexpected argument", a);
        char key[64];
        snprintf(key, sizeof key, "%s", !strcmp(a, "--steps") ? "--max-steps" : a);
        memmove(key, key + 2, strlen(key + 2) + 1);
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_';
        if (!known_key(key)) return usage_error("train", "unknown option", a);
        put(st, key, argv[i + 1]);
    }
    /* defaults for what is still unset, so the written config is complete */
    put_trainer_defaults(st);
    char threads_text[16];
    snprintf(threads_text, sizeof threads_text, "%d", default_threads);
    const char *defaults[][2] = { { "epochs", "1" },     { "batch", "4" },
                                  { "seq", "256" },      { "eval_every", "0" },
                                  { "save_every", "0" }, { "seed", "0" },
                                  { "threads", threads_text }, { "optim", "adamw" },
                                  { "stop_on_divergence", "0" }, { "precision", "fp32" } };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        if (!get(st, defaults[i][0])) put(st, defaults[i][0], defaults[i][1]);
    if (j->run_st && resume_paths_missing(j)) return 1;
    /* a GGUF model's block weights are not float: full fine-tuning is refused there, LoRA is not */
    const char *model_arg = get(st, "model");
    if (!get(st, "method")) put(st, "method", model_arg && is_gguf(model_arg) ? "lora" : "full");
    return -1;
}

/* The method from the settings (--method and its settings, in any order). */
static int train_method(train_job *j) {
    const settings *st = &j->st;
    method_flags mf = { .method = get(st, "method") };
    for (int i = 0; i < st->n; i++)
        for (int k = 0; method_key(k); k++)
            if (!strcmp(method_key(k)->key, st->s[i].key) && mf.n < 32) {
                mf.keys[mf.n] = method_key(k)->key;
                mf.vals[mf.n++] = st->s[i].val;
            }
    peft_method_kind kind;
    if (peft_method_parse(mf.method, &kind) != PEFT_OK) {
        char names[512] = "";
        for (int k = 0; k < peft_method_count(); k++) {
            size_t L = strlen(names);
            const char *name = peft_method_name((peft_method_kind)k);
            snprintf(names + L, sizeof names - L, "%s%s", k ? ", " : "", name);
        }
        return bad_value("train", "--method", mf.method, names);
    }
    return build_method(&mf, &j->meth, j->src.seed);
}

/* The resolved settings → numbers, names and the method; a bad one names its flag and value. */
static int train_parse(train_job *j) {
    const settings *st = &j->st;
    model_src src = { get(st, "model"), get(st, "preset"), NULL, strtoull(get(st, "seed"), NULL, 10) };
    j->src = src;
    j->data = get(st, "data");
    j->out = get(st, "out");
    j->tokp = get(st, "tokenizer");
    j->epochs = 1;
    j->B = 4;
    j->T = 256;
    j->threads = default_threads;
    j->o = peft_trainer_defaults();
    peft_trainer_opts *o = &j->o;
    int ok = 1, budget_mb = 64;
    const char *bad = NULL, *want = NULL;
#define INT_SETTING(k, var, cond, what) \
    if (ok && get(st, k) && !(parse_int(get(st, k), &var) && (cond))) { \
        ok = 0; \
        bad = k; \
        want = what; \
    }
#define FLOAT_SETTING(k, var, cond, what) \
    if (ok && get(st, k) && !(parse_float(get(st, k), &var) && (cond))) { \
        ok = 0; \
        bad = k; \
        want = what; \
    }
    INT_SETTING("epochs", j->epochs, j->epochs > 0, "a whole number >= 1")
    INT_SETTING("max_steps", j->max_steps, j->max_steps > 0 && j->max_steps <= 10000000,
                "a whole number from 1 to 10000000")
    INT_SETTING("batch", j->B, j->B > 0 && j->B <= 256, "a whole number from 1 to 256")
    INT_SETTING("seq", j->T, j->T > 1, "a whole number >= 2")
    INT_SETTING("grad_accum", o->grad_accum, o->grad_accum > 0 && o->grad_accum <= 65536,
                "a whole number from 1 to 65536")
    INT_SETTING("warmup", o->warmup_steps, 1, "a whole number >= 0")
    INT_SETTING("threads", j->threads, j->threads > 0 && j->threads <= 1024, "a whole number from 1 to 1024")
    INT_SETTING("stop_on_divergence", j->stop_div, j->stop_div <= 1, "0 or 1")
    INT_SETTING("eval_every", j->eval_every, 1, "a whole number >= 0")
    INT_SETTING("save_every", j->save_every, 1, "a whole number >= 0")
    const char *seed = get(st, "seed");
    if (ok && (!*seed || strspn(seed, "0123456789") != strlen(seed))) {
        ok = 0;
        bad = "seed";
        want = "a whole number >= 0";
    }
    FLOAT_SETTING("lr", o->lr, o->lr > 0, "a number > 0")
    FLOAT_SETTING("min_lr", o->min_lr, o->min_lr >= 0, "a number >= 0")
    FLOAT_SETTING("weight_decay", o->weight_decay, o->weight_decay >= 0, "a number >= 0")
    FLOAT_SETTING("max_grad_norm", o->max_grad_norm, o->max_grad_norm >= 0, "a number >= 0")
    FLOAT_SETTING("adam_beta1", o->beta1, o->beta1 >= 0 && o->beta1 < 1, "a number in [0, 1)")
    FLOAT_SETTING("adam_beta2", o->beta2, o->beta2 >= 0 && o->beta2 < 1, "a number in [0, 1)")
    FLOAT_SETTING("adam_epsilon", o->eps, o->eps > 0, "a number > 0")
    INT_SETTING("optim_budget_mb", budget_mb, budget_mb > 0, "a whole number >= 1")
    INT_SETTING("checkpoint_activations", j->ckpt_act, j->ckpt_act <= 1, "0 or 1")
#undef INT_SETTING
#undef FLOAT_SETTING
    o->optim_budget_bytes = (size_t)budget_mb << 20;
    const char *sched = get(st, "schedule"), *optim = get(st, "optim");
    if (ok && !strcmp(sched, "constant"))
        o->schedule = PEFT_SCHED_CONSTANT;
    else if (ok && !strcmp(sched, "cosine"))
        o->schedule = PEFT_SCHED_COSINE;
    else if (ok && !strcmp(sched, "linear"))
        o->schedule = PEFT_SCHED_LINEAR;
    else if (ok) {
        ok = 0;
        bad = "schedule";
        want = "constant, cosine or linear";
    }
    o->paged_optim = !strcmp(optim, "paged");
    o->optim_8bit = !strcmp(optim, "8bit");
    if (ok && !o->paged_optim && !o->optim_8bit && strcmp(optim, "adamw")) {
        ok = 0;
        bad = "optim";
        want = "adamw, paged or 8bit";
    }
    if (ok && peft_precision_parse(get(st, "precision"), &o->precision) != PEFT_OK) {
        ok = 0;
        bad = "precision";
        want = "fp32 or bf16";
    }
    char flag[64];
    if (!ok) return bad_value("train", key_flag(bad, flag, sizeof flag), get(st, bad), want);
    if (!j->src.model && !j->src.preset) return usage_error("train", "--model or --preset is required", NULL);
    if (!j->data) return usage_error("train", "--data is required", NULL);
    if (!j->out && !j->no_save)
        return usage_error("train", "--out DIR is needed to keep what is trained (--no-save trains without "
                           "saving)", NULL);
    if (j->out && j->no_save) return usage_error("train", "--no-save and --out exclude each other", NULL);
    if (j->out && !j->ckpt[0] && !j->overwrite && dir_nonempty(j->out)) {
        fprintf(stderr, "peft train: %s is not empty (an earlier run?): --resume %s continues it, "
                "--overwrite replaces it, or give another --out\n", j->out, j->out);
        return 2;
    }
    return train_method(j);
}

/* The tokenizer: --tokenizer, the model folder's tokenizer.json / .bin, or a GGUF's own. */
static int train_tokenizer(train_job *j) {
    const char *tsrc = j->tokp ? j->tokp : j->src.model;
    char tprobe[1200] = "";
    if (tsrc && !j->tokp && dir_exists(tsrc)) {
        snprintf(tprobe, sizeof tprobe, "%s/tokenizer.json", tsrc);
        if (!file_exists(tprobe)) snprintf(tprobe, sizeof tprobe, "%s/tokenizer.bin", tsrc);
        if (!file_exists(tprobe)) tprobe[0] = 0;
    } else if (j->tokp)
        snprintf(tprobe, sizeof tprobe, "%s", j->tokp);
    else if (tsrc && is_gguf(tsrc))
        snprintf(tprobe, sizeof tprobe, "%s", tsrc);   /* its own tokenizer */
    if (!tprobe[0]) return 0;
    if (peft_tokenizer_load(&j->tok, tprobe, j->m->cfg.vocab_size) != PEFT_OK) return fail();
    if (j->tok.unused[0])
        fprintf(stderr, "peft: warning: tokenizer_config.json beside %s: not applied: %s\n", tprobe,
                j->tok.unused);
    /* no tokenizer_config.json eos_token: config.json's */
    peft_tokenizer_use_config_eos(&j->tok, &j->m->cfg);
    j->tk = &j->tok;
    const char *ct = get(&j->st, "chat_template");
    if (ct && (j->tok.chat = peft_chat_family(ct)) < 0)
        return usage_error("train", "--chat-template must be chatml, llama2, llama3 or alpaca", ct);
    return 0;
}

/* The examples: a file, or a folder's train.jsonl (+ valid.jsonl held out; else 5% when evaluating). */
static int train_data(train_job *j) {
    char valid_path[1200] = "";
    snprintf(j->train_path, sizeof j->train_path, "%s", j->data);
    if (dir_exists(j->data)) {
        snprintf(j->train_path, sizeof j->train_path, "%s/train.jsonl", j->data);
        snprintf(valid_path, sizeof valid_path, "%s/valid.jsonl", j->data);
        if (!file_exists(valid_path)) valid_path[0] = 0;
    }
    if (peft_dataset_load(&j->ds, j->train_path, j->tk, j->T + 1) != PEFT_OK) return fail();
    if (valid_path[0]) {
        if (peft_dataset_load(&j->held, valid_path, j->tk, j->T + 1) != PEFT_OK) return fail();
    } else if (j->eval_every > 0) {
        /* 5%, and at least one example: --eval-every never evaluates nothing in silence */
        int n = j->ds.n, keep = n / 20 > 1 ? n / 20 : 1;
        if (n < 2) {
            fprintf(stderr, "peft train: --eval-every %d needs held-out examples: %s has %d example%s to "
                    "train on and none to spare; give a folder with train.jsonl and valid.jsonl, or drop "
                    "--eval-every\n", j->eval_every, j->train_path, n, n == 1 ? "" : "s");
            return 2;
        }
        if (peft_dataset_split(&j->ds, &j->held, keep, j->src.seed) != PEFT_OK) return fail();
        printf("held out %d of %d examples for --eval-every (5%%, at least 1; a folder with valid.jsonl "
               "chooses them)\n", keep, n);
    }
    for (int64_t i = 0; i < j->ds.n_tokens; i++)
        if (j->ds.ids[i] < 0 || j->ds.ids[i] >= j->m->cfg.vocab_size) {
            fprintf(stderr, "peft: error: %s: token id %d is outside the model's vocabulary (%d)\n",
                    j->train_path, j->ds.ids[i], j->m->cfg.vocab_size);
            return 1;
        }
    return 0;
}

/* The model, its tokenizer and the data. */
static int train_load(train_job *j) {
    peft_set_threads(j->threads);
    if (load_model(&j->src, &j->m)) return 1;
    int rc = train_tokenizer(j);
    return rc ? rc : train_data(j);
}

/* A method setting the model refuses ("lora_layers names layer 40 but the model has 2 layers"): the
   error names the flag it came from and its value. */
static int attach_failed(const train_job *j) {
    const char *msg = peft_last_error();
    char flag[64];
    for (int i = 0; method_key(i); i++) {
        const char *key = method_key(i)->key, *val = get(&j->st, key);
        size_t kl = strlen(key);
        for (const char *p = val ? strstr(msg, key) : NULL; p; p = strstr(p + 1, key)) {
            int word = (p == msg || !(isalnum((unsigned char)p[-1]) || p[-1] == '_')) &&
                       !(isalnum((unsigned char)p[kl]) || p[kl] == '_');
            if (!word) continue;
            fprintf(stderr, "peft train: %s %s: %s\n", key_flag(key, flag, sizeof flag), val, msg);
            return 1;
        }
    }
    return fail();
}

/* A checkpoint that does not load into this run's trainable tensors: the method settings that differ
   from the run's train_config.json, by flag, with both values (a shape's bytes say nothing to the user). */
static int resume_load_failed(const train_job *j) {
    char flag[64], path[1300], dflt[64];
    int differ = 0;
    peft_json *ac = NULL;                   /* the checkpoint's adapter_config.json: a default's value */
    snprintf(path, sizeof path, "%s/adapter_config.json", j->ckpt);
    if (file_exists(path) && peft_json_load(&ac, path) != PEFT_OK) ac = NULL;
    for (int i = -1; j->run_st && (i < 0 || method_key(i)); i++) {
        const char *key = i < 0 ? "method" : method_key(i)->key;
        const char *was = get(j->run_st, key), *now = get(&j->st, key);
        if (!was && !now) continue;
        if (was && now && !strcmp(was, now)) continue;
        /* PEFT's name of a setting absent from train_config.json: lora_r is "r", lora_alpha itself */
        const char *under = strchr(key, '_');
        const peft_json *v = ac ? peft_json_get(ac, key) : NULL;
        if (!v && ac && under) v = peft_json_get(ac, under + 1);
        if (!was && v && v->type == PEFT_JSON_NUMBER) {
            snprintf(dflt, sizeof dflt, "%g (its default)", v->number);
            was = dflt;
        }
        fprintf(stderr, "peft: error: %s %s: the checkpoint %s was trained with %s %s "
                "(%s/train_config.json); a resumed run keeps the shapes of what it trains: drop %s or start "
                "a new run\n",
                key_flag(key, flag, sizeof flag), now ? now : "(the default)", j->ckpt, key,
                was ? was : "at its default", j->run_dir, flag);
        differ++;
    }
    peft_json_free(ac);
    if (!differ) return fail();
    fprintf(stderr, "peft: (the checkpoint: %s)\n", peft_last_error());
    return 1;
}

/* The method attached, the step count, the trainer (from the checkpoint when resuming), the output folder. */
static int train_prepare(train_job *j) {
    char path[1400];
    if (peft_attach(j->m, &j->meth) != PEFT_OK) return attach_failed(j);
    if (peft_model_trainable_count(j->m) == 0) {
        fprintf(stderr, "peft: error: %s would train 0 parameters of this model: check its settings\n",
                peft_method_name(j->meth.kind));
        return 1;
    }
    peft_model_set_checkpointing(j->m, j->ckpt_act);
    /* in 64 bits: --epochs 1000000000 must not wrap around to a small or negative count */
    int64_t per_step = (int64_t)j->B * j->o.grad_accum;
    int64_t per_epoch = (j->ds.n + per_step - 1) / per_step;
    int64_t steps64 = j->max_steps ? j->max_steps : (int64_t)j->epochs * per_epoch;
    if (steps64 > 10000000) {
        fprintf(stderr, "peft train: %lld optimizer steps (%s): more than 10^7 is not a run this tool makes; "
                "lower --epochs or --max-steps\n", (long long)steps64,
                j->max_steps ? "--max-steps" : "--epochs x steps per epoch");
        return 2;
    }
    j->steps = (int)steps64;
    j->o.total_steps = j->steps;
    j->tr = peft_trainer_new(j->m, &j->o);
    if (!j->tr) return fail();
    if (j->ckpt[0]) {
        snprintf(path, sizeof path, "%s/trainer.safetensors", j->ckpt);
        if (peft_checkpoint_load(j->tr, &j->pos, path) != PEFT_OK) return resume_load_failed(j);
        if (j->pos.cursor > j->ds.n || j->tr->step > j->steps) {
            fprintf(stderr, "peft: error: %s: the checkpoint is at step %d, example %lld of an epoch, "
                    "outside this run (%d steps, %d examples): resumed with other data or settings?\n",
                    path, j->tr->step, (long long)j->pos.cursor, j->steps, j->ds.n);
            return 1;
        }
        /* its log reached the last step with the result saved: nothing is left to train, and nothing
           is written (train_config.json keeps the settings the run was trained with) */
        if (j->out && run_finished(j->out, j->steps)) {
            printf("%s: the run is finished (%d of %d steps, its %s saved): nothing to resume from %s "
                   "(step %d); raise --max-steps or --epochs to train further\n", j->out, j->steps, j->steps,
                   j->meth.kind == PEFT_FULL ? "model" : "adapter", j->ckpt, j->tr->step);
            return -1;
        }
        printf("resuming from %s at step %d\n", j->ckpt, j->tr->step);
    }
    if (j->out) {
        char mk[1300];
        snprintf(mk, sizeof mk, "%s", j->out);
        for (char *p = mk + 1; *p; p++)
            if (*p == '/') {
                *p = 0;
                mkdir(mk, 0755);
                *p = '/';
            }
        int made = mkdir(mk, 0755) == 0 ? 0 : errno;
        if (!dir_exists(j->out)) {
            fprintf(stderr, "peft: error: cannot create %s: %s\n", j->out, strerror(made ? made : ENOENT));
            return 1;
        }
        if (!j->ckpt[0] && j->overwrite) clear_run(j->out, get(&j->st, "model"));
        snprintf(path, sizeof path, "%s/train_config.json", j->out);
        if (write_run_settings(&j->st, path)) return 1;
    }
    char b1[40], b2[40];
    int64_t trainable = peft_model_trainable_count(j->m), base = peft_model_base_count(j->m);
    printf("training %s parameters (%.4f%% of %s) with %s: %d examples (%lld tokens; %d cut to --seq, "
           "%d dropped: no target within --seq), %d held out, %d steps\n",
           commas(trainable, b1), 100.0 * (double)trainable / (double)base, commas(base, b2),
           peft_method_name(j->meth.kind), j->ds.n, (long long)j->ds.n_tokens, j->ds.n_truncated,
           j->ds.n_dropped, j->held.n, j->steps);
    size_t n_steps = (size_t)j->steps;
    run_state rs = { j->m, j->tr, &j->meth, calloc(n_steps + 1, sizeof(double)),
                     calloc(n_steps + 2, sizeof(double)), calloc(n_steps + 2, sizeof(double)), 0, 0 };
    j->rs = rs;
    j->order = malloc(sizeof(int) * (size_t)j->ds.n);
    j->tokb = malloc(sizeof(int) * (size_t)j->B * j->T);
    j->tgtb = malloc(sizeof(int) * (size_t)j->B * j->T);
    if (!rs.loss || !rs.eval_x || !rs.eval_y || !j->order || !j->tokb || !j->tgtb) {
        fprintf(stderr, "peft: error: out of memory for %d steps\n", j->steps);
        return 1;
    }
    peft_dataset_order(j->ds.n, j->src.seed, (int)j->pos.epoch, j->order);
    return 0;
}

/* One line of an old log kept on resume: its loss and eval loss back into the plot's series. */
static void train_keep_log_line(train_job *j, const char *line, int sn) {
    run_state *rs = &j->rs;
    const char *lp = strstr(line, "\"loss\": "), *ep = strstr(line, "\"eval_loss\": ");
    const char *tp = strstr(line, "\"elapsed_s\": ");
    if (tp) j->elapsed0 = atof(tp + 13);                 /* the run's clock at the checkpoint */
    if (lp && sn >= 1 && sn <= j->steps) {
        rs->loss[sn - 1] = atof(lp + 8);
        if (sn > rs->n_loss) rs->n_loss = sn;
    }
    if (ep && rs->n_eval < j->steps + 1) {
        rs->eval_x[rs->n_eval] = sn;
        rs->eval_y[rs->n_eval++] = atof(ep + 13);
    }
}

/* log.jsonl: on resume, lines of earlier steps survive and later ones (past the checkpoint) go. */
static int train_open_log(train_job *j) {
    if (!j->out) return 0;
    char path[1400];
    snprintf(path, sizeof path, "%s/log.jsonl", j->out);
    unsigned char *old = NULL;
    size_t on = 0;
    if (j->ckpt[0] && peft_read_file(path, &old, &on) == PEFT_OK) {
        char tmp[1500];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *w = fopen(tmp, "w");
        for (char *line = (char *)old, *next; w && line < (char *)old + on && *line; line = next) {
            next = strchr(line, '\n');
            if (!next) break;
            *next++ = 0;
            const char *sp = strstr(line, "\"step\": ");
            int sn = sp ? atoi(sp + 8) : 0;
            if (sn > j->tr->step) continue;
            fprintf(w, "%s\n", line);
            train_keep_log_line(j, line, sn);
        }
        if (w) {
            fclose(w);
            rename(tmp, path);
        }
        free(old);
    }
    j->log = fopen(path, j->ckpt[0] ? "a" : "w");
    if (!j->log) {
        fprintf(stderr, "peft: error: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

/* One optimizer step: grad_accum micro-batches in the data order; their mean loss and token count. */
static int train_step(train_job *j, double *loss, double *ntok) {
    double sum = 0;
    *ntok = 0;
    for (int k = 0; k < j->o.grad_accum; k++) {
        int idx[256];
        for (int b = 0; b < j->B; b++) {
            if (j->pos.cursor >= j->ds.n) {
                j->pos.epoch++;
                j->pos.cursor = 0;
                peft_dataset_order(j->ds.n, j->src.seed, (int)j->pos.epoch, j->order);
            }
            idx[b] = j->order[j->pos.cursor++];
        }
        int L = peft_dataset_batch(&j->ds, idx, j->B, j->T, j->pad, j->tokb, j->tgtb);
        float l;
        if (peft_trainer_step(j->tr, j->tokb, j->tgtb, j->B, L, &l) != PEFT_OK) return fail();
        sum += l;
        *ntok += (double)j->B * L;
    }
    *loss = sum / j->o.grad_accum;
    j->pos.tokens += (int64_t)*ntok;
    return 0;
}

/* A learning rate that destroyed the model: the loss pinned at ln(vocab) (uniform predictions)
   though the first step's was below it, or far above the first step's. 1: stop the run. */
typedef struct { double ln_v, first; int flat, high, warned; } divergence;

static int train_diverged(train_job *j, divergence *dv, int s, double loss) {
    if (isnan(dv->first)) dv->first = loss;
    dv->flat = dv->first < 0.95 * dv->ln_v && fabs(loss - dv->ln_v) < 0.03 * dv->ln_v ? dv->flat + 1 : 0;
    dv->high = loss > dv->first + fmax(dv->first, 1.0) ? dv->high + 1 : 0;
    if (dv->warned || (dv->flat < 10 && dv->high < 3)) return 0;
    dv->warned = 1;
    if (j->tty) fprintf(stderr, "\n");
    fprintf(stderr, "peft: %s: step %d: the loss is %.4f, %s (step 1: %.4f, ln(vocab) %.4f): the "
            "learning rate (%g) has likely destroyed the model%s\n", j->stop_div ? "error" : "warning",
            s, loss, dv->flat >= 10 ? "stuck at ln(vocab), uniform predictions, for 10 steps"
                                    : "far above where it started",
            dv->first, dv->ln_v, j->o.lr,
            j->stop_div ? "; stopped (--stop-on-divergence)" : "; --stop-on-divergence stops such runs");
    return j->stop_div;
}

/* The step's log line and progress; el: seconds of this process's run, tps its tokens/s. */
static void train_report(train_job *j, int s, double loss, double ntok, double step_s, double el,
                         double tps, int start_step) {
    const peft_trainer *tr = j->tr;
    if (j->log)
        fprintf(j->log,
                "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, \"tokens\": %lld, "
                "\"tok_s\": %.1f, \"epoch\": %lld, \"elapsed_s\": %.3f}\n",
                s, loss, tr->last_lr, tr->last_grad_norm, (long long)j->pos.tokens, ntok / step_s,
                (long long)j->pos.epoch, j->elapsed0 + el);
    /* ETA from this run's pace */
    if (j->tty)
        peft_progress(stderr, "train", s, j->steps, loss, tr->last_lr, tps,
                      el * s / (double)(s - start_step));
    else
        printf("step %4d/%d  loss %.4f  lr %.3g  grad-norm %.3g  %.0f tok/s\n", s, j->steps, loss,
               tr->last_lr, tr->last_grad_norm, tps);
    fflush(stdout);
}

/* The held-out loss every --eval-every steps and at the end. */
static void train_eval(train_job *j, int s) {
    if (!j->held.n || !((j->eval_every && s % j->eval_every == 0) || s == j->steps)) return;
    double el = eval_loss(j->m, &j->held, j->B, j->T, j->pad);
    j->rs.eval_x[j->rs.n_eval] = s;
    j->rs.eval_y[j->rs.n_eval++] = el;
    if (j->log) fprintf(j->log, "{\"step\": %d, \"eval_loss\": %.6f}\n", s, el);
    if (j->tty) fprintf(stderr, "\n");
    printf("step %4d  eval loss %.4f (%d held-out example%s)\n", s, el, j->held.n, j->held.n == 1 ? "" : "s");
}

/* The tests' crash hook: PEFT_CRASH_AFTER_STEP=N dies like a killed process after step N;
   PEFT_INTERRUPT_AFTER_STEP=N is a Ctrl-C there. */
static void test_crash_hook(int step) {
    const char *crash = getenv("PEFT_CRASH_AFTER_STEP"), *intr = getenv("PEFT_INTERRUPT_AFTER_STEP");
    if (crash && atoi(crash) == step) raise(SIGKILL);
    if (intr && atoi(intr) == step) raise(SIGINT);
}

/* Ctrl-C (SIGINT) or SIGTERM while training: the handler only records the signal (async-signal-safe)
   and is reset by it, so that a second Ctrl-C stops at once; the loop ends after the step it is in,
   naming the last checkpoint saved. */
static volatile sig_atomic_t train_signal;
static void on_train_signal(int sig) {
    static const char note[] = "\npeft train: stopping after this step (a second Ctrl-C stops at once)\n";
    train_signal = sig;
    ssize_t w = write(2, note, sizeof note - 1);
    (void)w;
}
static void train_catch_signals(int on) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on ? on_train_signal : SIG_DFL;
    sa.sa_flags = on ? SA_RESETHAND : 0;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* The line a stopped run ends with: where it can go on from. Returns the exit status, 128 + signal. */
static int train_stopped(const train_job *j, int s, const char *last_ckpt) {
    int sig = (int)train_signal;
    if (j->tty) fprintf(stderr, "\n");
    fprintf(stderr, "peft train: stopped by %s after step %d of %d; ", sig == SIGTERM ? "SIGTERM" : "SIGINT",
            s, j->steps);
    if (last_ckpt[0])
        fprintf(stderr, "the last checkpoint saved is %s (peft train --resume %s goes on from it)\n",
                last_ckpt, j->out);
    else if (j->out)
        fprintf(stderr, "no checkpoint was saved (--save-every N saves one every N steps)\n");
    else
        fprintf(stderr, "nothing was saved (--no-save)\n");
    return 128 + sig;
}

static int train_loop(train_job *j) {
    j->tty = isatty(2);
    j->pad = j->m->cfg.eos_id >= 0 ? j->m->cfg.eos_id : 0;
    double t0 = now_s(), tokens_run = 0;
    int start_step = j->tr->step;
    double first = j->rs.n_loss && j->rs.loss[0] > 0 ? j->rs.loss[0] : NAN;
    divergence dv = { logf((float)j->m->cfg.vocab_size), first, 0, 0, 0 };
    char last_ckpt[1300];
    snprintf(last_ckpt, sizeof last_ckpt, "%s", j->ckpt);
    train_signal = 0;
    train_catch_signals(1);
    while (j->tr->step < j->steps) {
        double ts = now_s(), loss, ntok;
        int rc = train_step(j, &loss, &ntok);
        if (rc) return rc;
        tokens_run += ntok;
        int s = j->tr->step;
        double el = now_s() - t0, tps = tokens_run / (el > 0 ? el : 1e-9);
        j->rs.loss[s - 1] = loss;
        j->rs.n_loss = s;
        if (train_diverged(j, &dv, s, loss)) return 1;
        train_report(j, s, loss, ntok, now_s() - ts, el, tps, start_step);
        train_eval(j, s);
        if (j->log) fflush(j->log);
        if (j->out && j->save_every && s % j->save_every == 0 && s < j->steps) {
            if (save_checkpoint(&j->rs, j->out, s, &j->pos)) return 1;
            snprintf(last_ckpt, sizeof last_ckpt, "%s/checkpoint-%d", j->out, s);
            write_plot(&j->rs, j->out);
        }
        test_crash_hook(s);
        if (train_signal) return train_stopped(j, s, last_ckpt);
    }
    train_catch_signals(0);
    printf("done: %d steps in %.1f s\n", j->steps, now_s() - t0);
    print_moe_balance(j->m);
    return 0;
}

/* The adapter (or model, with its tokenizer files: a usable folder) and the plot. */
static int train_finish(train_job *j) {
    if (!j->out) return 0;
    int rc = save_result(&j->rs, j->out);
    if (!rc && j->meth.kind == PEFT_FULL) rc = copy_tokenizer_files(j->src.model, j->tokp, j->out);
    write_plot(&j->rs, j->out);
    if (!rc)
        printf("saved %s (%s, train_config.json, log.jsonl, loss.svg)\n", j->out,
               j->meth.kind == PEFT_FULL ? "model" : "adapter");
    return rc;
}

static void train_free(train_job *j) {
    if (j->log) fclose(j->log);
    free(j->run_st);
    free(j->order);
    free(j->tokb);
    free(j->tgtb);
    free(j->rs.loss);
    free(j->rs.eval_x);
    free(j->rs.eval_y);
    peft_dataset_free(&j->ds);
    peft_dataset_free(&j->held);
    peft_tokenizer_free(&j->tok);
    if (j->tr) peft_trainer_free(j->tr);
    if (j->m) peft_model_free(j->m);
    free(j);
}

static int cmd_train(int argc, char **argv) {
    train_job *j = calloc(1, sizeof *j);
    if (!j) {
        fprintf(stderr, "peft: error: out of memory\n");
        return 1;
    }
    int rc = train_resolve(j, argc, argv);      /* -1: go on; --help and usage errors end here */
    if (rc != -1) {
        train_free(j);
        return rc;
    }
    rc = train_parse(j);
    if (!rc) rc = train_load(j);
    if (!rc) rc = train_prepare(j);
    if (!rc) rc = train_open_log(j);
    if (!rc) rc = train_loop(j);
    if (!rc) rc = train_finish(j);
    train_free(j);
    return rc < 0 ? 0 : rc;                    /* -1: a finished run, nothing to do */
}

/* ----------------------------------------------------------------- bench */
static const char *BENCH_HELP =
    "usage: peft bench (--preset NAME | --model DIR) [--method M [method flags]]\n"
    "                  [--batch B] [--seq T] [--steps N] [--threads K]\n"
    "                  [--optim adamw|paged|8bit] [--optim-budget-mb X] [--checkpoint-activations 1]\n"
    "                  [--precision fp32|bf16] [--data PATH]\n"
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
    "fp32 sums); with --gemm, the bf16 products x·Wᵀ and dy·W against fp32 peft_gemm instead.\n"
    "--data PATH: batches of PATH's examples instead of random tokens, read as `peft train`\n"
    "reads them (its formats, the model's tokenizer, prompts masked, each batch padded to its\n"
    "longest example, at most --seq), taken in file order and over again; the figures are the\n"
    "median step's, at its padded length.\n";

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

/* one timed step of bench: its wall time, padded length and targets with loss */
typedef struct {
    double ms;
    int len, targets;
} bench_step;

static int cmp_bench_step(const void *a, const void *b) {
    double x = ((const bench_step *)a)->ms, y = ((const bench_step *)b)->ms;
    return (x > y) - (x < y);
}

/* bench --data's tokenizer and examples (NULL: none) */
static void bench_data_free(train_job *dj) {
    if (!dj) return;
    peft_dataset_free(&dj->ds);
    peft_dataset_free(&dj->held);
    peft_tokenizer_free(&dj->tok);
    free(dj);
}

static int cmd_bench(int argc, char **argv) {
    model_src src = { 0, 0, 0, 0 };
    method_flags mf = { 0 };
    const char *optim = "adamw";
    int B = 4, T = 64, steps = 5, threads = default_threads, budget_mb = 64, gemm = 0, ckpt_act = 0;
    peft_precision prec = PEFT_PRECISION_FP32;
    const char *data = NULL;
    for (int i = 0; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(BENCH_HELP, stdout);
            fputs(DEVICE_HELP, stdout);
            print_method_help(stdout);
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
        else if (!strcmp(a, "--data")) data = v;
        else return usage_error("bench", "unknown option", a);
        /* every number flag of bench is a count >= 1 but the 0/1 switch */
        if (!ok)
            return bad_value("bench", a, v, strcmp(a, "--checkpoint-activations") ? "a whole number >= 1"
                                                                                  : "0 or 1");
    }
    if (!src.model && !src.preset) return usage_error("bench", "--model or --preset is required", NULL);
    if (gemm) {
        if (!src.preset) return usage_error("bench", "--gemm takes a --preset", NULL);
        if (data) return usage_error("bench", "--gemm takes no --data", data);
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
    /* --data: the tokenizer and examples exactly as `peft train` finds and reads them */
    train_job *dj = data ? (train_job *)calloc(1, sizeof *dj) : NULL;
    if (data) {
        int drc = 1;
        if (dj) {
            dj->src = src;
            dj->m = m;
            dj->data = data;
            dj->T = T;
            drc = train_tokenizer(dj);
            if (!drc) drc = train_data(dj);
            if (!drc && dj->ds.n < 1) {
                fprintf(stderr, "peft: error: %s: no example with a target within %d tokens\n", data, T);
                drc = 1;
            }
        } else {
            fprintf(stderr, "peft: error: out of memory\n");
        }
        if (drc) {
            bench_data_free(dj);
            peft_model_free(m);
            return drc;
        }
    }
    if (peft_attach(m, &meth) != PEFT_OK) {
        bench_data_free(dj);
        peft_model_free(m);
        return fail();
    }
    peft_model_set_checkpointing(m, ckpt_act);
    peft_trainer_opts o = peft_trainer_defaults();
    o.paged_optim = !strcmp(optim, "paged");
    o.optim_8bit = !strcmp(optim, "8bit");
    o.optim_budget_bytes = (size_t)budget_mb << 20;
    o.precision = prec;
    peft_trainer *tr = peft_trainer_new(m, &o);
    if (!tr) {
        bench_data_free(dj);
        peft_model_free(m);
        return fail();
    }
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    double *ms = malloc(sizeof(double) * steps), *cpu = malloc(sizeof(double) * steps);
    /* with --data: each step's padded length (ms[] and len[] sorted together), its targets with loss */
    bench_step *st = malloc(sizeof(bench_step) * steps);
    int rc = 0, L = T, pad = m->cfg.eos_id >= 0 ? m->cfg.eos_id : 0;
    int *idx = dj ? malloc(sizeof(int) * B) : NULL;
    if (dj && !idx) {
        fprintf(stderr, "peft: error: out of memory\n");
        rc = 1;
    }
    for (int s = 0; s <= steps && !rc; s++) {                 /* step 0 warms up */
        if (dj) {
            for (int b = 0; b < B; b++) idx[b] = (int)(((int64_t)s * B + b) % dj->ds.n);
            L = peft_dataset_batch(&dj->ds, idx, B, T, pad, tok, tgt);
        } else {
            for (int i = 0; i < B * T; i++) tok[i] = (int)(peft_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size);
            for (int i = 0; i < B * T; i++) tgt[i] = tok[(i + 1) % (B * T)];
        }
        float loss;
        struct timespec c0, c1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        double t0 = now_s();
        if (peft_trainer_step(tr, tok, tgt, B, L, &loss) != PEFT_OK) rc = fail();
        if (s > 0) ms[s - 1] = 1000.0 * (now_s() - t0);
        if (s > 0 && st) {
            st[s - 1].ms = ms[s - 1];
            st[s - 1].len = L;
            st[s - 1].targets = 0;
            for (int i = 0; i < B * L; i++) st[s - 1].targets += tgt[i] != -100;
        }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        if (s > 0) cpu[s - 1] = 1000.0 * ((double)(c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) * 1e-9);
    }
    if (!rc && (!st || !ms || !cpu || !tok || !tgt)) {
        fprintf(stderr, "peft: error: out of memory\n");
        rc = 1;
    }
    if (!rc) {
        qsort(ms, (size_t)steps, sizeof(double), cmp_double);
        double med = ms[steps / 2];
        qsort(st, (size_t)steps, sizeof(bench_step), cmp_bench_step);
        T = st[steps / 2].len;                  /* the median step's padded length */
        const peft_config *c = &m->cfg;
        double tokens = (double)B * T, base = (double)peft_model_base_count(m),
               train = (double)peft_model_trainable_count(m);
        /* QK and PV */
        double attn = 4.0 * c->n_layers * (double)c->n_heads * c->head_dim * T * (T + 1) / 2.0 * B;
        double flops = (4.0 * base + 2.0 * train) * tokens + 3.0 * attn;
        char b1[40];
        printf("model            %s, method %s, batch %d x seq %d, %d threads, optimizer %s\n",
               src.preset ? src.preset : src.model, peft_method_name(meth.kind), B, T, threads, optim);
        if (dj)
            printf("data             %s: %d examples (%d cut to --seq, %d dropped: no target within --seq), "
                   "batches in file order; the median step padded to %d tokens, %d targets with loss\n",
                   data, dj->ds.n, dj->ds.n_truncated, dj->ds.n_dropped, T, st[steps / 2].targets);
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
        int64_t loops, solo;
        peft_parallel_stats(&loops, &solo);
        int shards = peft_trainer_shards(tr, B);
        if (shards > 1)
            printf("data-parallel    %d shards of %d sequences per step, one per thread\n", shards,
                   B / shards);
        else if (threads > 1)
            printf("data-parallel    no: one tape per step, its loops spread over the threads\n");
        if (threads > 1)
            printf("solo loops       %.1f%% of %lld parallel loops ran on the calling thread alone "
                   "(the machine was busy)\n",
                   loops ? 100.0 * (double)solo / (double)loops : 0.0, (long long)loops);
        device_report();
        size_t act =
                peft_trainer_arena_bytes(tr) + (m->recompute ? peft_graph_arena_bytes(m->recompute) : 0);
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
    free(tok); free(tgt); free(ms); free(cpu); free(st); free(idx);
    bench_data_free(dj);
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
    int trim;            /* the answer alone (--alpaca, --chat): its leading blank lines and spaces dropped */
} gen_ctx;

static int on_token(void *vctx, int id) {
    gen_ctx *c = (gen_ctx *)vctx;
    int is_stop = 0;
    for (int k = 0; k < c->n_stop; k++) is_stop |= id == c->stop[k];
    if (c->print_ids) printf("%s%d", c->count ? " " : "", id);
    else if (c->tok && !is_stop) {
        char b[8];
        const char *piece = peft_tokenizer_decode(c->tok, c->prev, id, b);
        if (c->trim) piece += strspn(piece, " \t\r\n");
        c->trim = c->trim && !*piece;
        fputs(piece, stdout);
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
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(GENERATE_HELP, stdout);
            fputs(DEVICE_HELP, stdout);
            return 0;
        }
        if (!strcmp(a, "--print-ids")) { print_ids = 1; i++; continue; }
        if (!strcmp(a, "--alpaca")) { alpaca = 1; i++; continue; }
        if (!v) return usage_error("generate", "option needs a value", a);
        const char *want = "a whole number >= 1";
        if (!strcmp(a, "--model")) src.model = v;
        else if (!strcmp(a, "--adapter")) src.adapter = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--tokens")) tokens_arg = v;
        else if (!strcmp(a, "--tokenizer")) tok_path = v;
        else if (!strcmp(a, "--chat")) chat = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--chat-template")) chat_name = v;
        else if (!strcmp(a, "--max-new")) ok = (set_max_new = parse_int(v, &max_new)) && max_new > 0;
        else if (!strcmp(a, "--temperature")) {
            ok = (set_temp = parse_float(v, &sm.temperature)) && sm.temperature >= 0;
            want = "a number >= 0";
        } else if (!strcmp(a, "--top-p")) {
            ok = (set_top_p = parse_float(v, &sm.top_p)) && sm.top_p > 0 && sm.top_p <= 1;
            want = "a number in (0, 1]";
        } else if (!strcmp(a, "--top-k")) {
            ok = (set_top_k = parse_int(v, &sm.top_k)) && sm.top_k >= 0;
            want = "a whole number >= 0";
        } else if (!strcmp(a, "--repetition-penalty")) {
            ok = (set_rep = parse_float(v, &sm.repetition_penalty)) && sm.repetition_penalty > 0;
            want = "a number > 0";
        } else if (!strcmp(a, "--seed")) sm.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) ok = parse_int(v, &threads) && threads > 0;
        else if (!strcmp(a, "--precision")) ok = peft_precision_parse(v, &prec) == PEFT_OK;
        else return usage_error("generate", "unknown option", a);
        if (!ok) return bad_value("generate", a, v, want);
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
        gen_ctx ctx = { have_tok ? &tok : NULL, n ? ids[n - 1] : 1, print_ids, 0, stop, n_stop,
                        alpaca || chat };
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
    "adapter's base_model_name_or_path when that is a local folder. A peft --out is a new\n"
    "or empty folder, or one that holds a previous export (replaced); a gguf --out is a file.\n";

/* The base model of an adapter inside a run folder (ADAPTER/train_config.json or, for a checkpoint-N,
   ADAPTER/../train_config.json): its "model" replaces base when that exists. */
static void run_model_path(const char *adapter, char *base, size_t cap) {
    static const char *const where[2] = { "%s/train_config.json", "%s/../train_config.json" };
    for (int k = 0; k < 2; k++) {
        char cfg[1300];
        peft_json *j;
        snprintf(cfg, sizeof cfg, where[k], adapter);
        if (!file_exists(cfg) || peft_json_load(&j, cfg) != PEFT_OK) continue;
        const peft_json *mp = peft_json_get(j, "model");
        int found = mp && mp->type == PEFT_JSON_STRING && (dir_exists(mp->string) || is_gguf(mp->string));
        if (found) snprintf(base, cap, "%s", mp->string);
        peft_json_free(j);
        if (found) return;
    }
}

/* --out of export: gguf names a file, not a folder; a peft folder is new, empty or a previous export
   (its two files, replaced): an adapter written among other files would mix with them. 1: refused. */
static int export_out_refused(const char *format, const char *out) {
    if (!strcmp(format, "gguf")) {
        if (!dir_exists(out)) return 0;
        fprintf(stderr, "peft export: --out %s is a folder; --format gguf writes one file: name it "
                "(e.g. %s/adapter.gguf)\n", out, out);
        return 1;
    }
    if (file_exists(out)) {
        fprintf(stderr, "peft export: --out %s is a file; --format peft writes a folder\n", out);
        return 1;
    }
    DIR *d = opendir(out);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
            !strcmp(e->d_name, "adapter_config.json") || !strcmp(e->d_name, "adapter_model.safetensors"))
            continue;
        fprintf(stderr, "peft export: --out %s holds %s, which a PEFT adapter folder has not: give a new or "
                "empty folder (a previous export there is replaced)\n", out, e->d_name);
        closedir(d);
        return 1;
    }
    if (d) closedir(d);
    return 0;
}

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
    if (export_out_refused(format, out)) return 2;
    char base[1200] = "";
    if (!src.model) {                                   /* the adapter names its base */
        char cfg[1200];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", src.adapter);
        peft_json *j;
        if (peft_json_load(&j, cfg) != PEFT_OK) return fail();
        const peft_json *b = peft_json_get(j, "base_model_name_or_path");
        if (b && b->type == PEFT_JSON_STRING) snprintf(base, sizeof base, "%s", b->string);
        peft_json_free(j);
        /* the name as the model was given to train (PEFT writes it so): relative to where train ran.
           A run folder (or its checkpoint-N) knows the absolute path: its train_config.json "model". */
        if (base[0] && !dir_exists(base) && !is_gguf(base)) run_model_path(src.adapter, base, sizeof base);
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
    if (!strcmp(argv[1], "logits") || !strcmp(argv[1], "train") || !strcmp(argv[1], "bench") ||
        !strcmp(argv[1], "generate")) {
        int dc = argc - 2;
        int drc = take_device(argv[1], &dc, argv + 2);
        if (drc) return drc;
        argc = dc + 2;
    }
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
