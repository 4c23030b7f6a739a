/* ggml block types against the gguf package (tests/fixtures/gguf_quant.safetensors
   from tools/ref/make_gguf_quant_fixtures.py, gguf 0.19.0): every supported
   type dequantizes bit for bit as gguf.quants.dequantize, on the package's own
   quantized blocks where it can quantize the type and on hand-made blocks
   (extreme, subnormal, zero and negative-zero fp16 scales, zero blocks) for
   all. Then the frozen linear over such blocks: the products decode W into
   the GEMM's panels and equal peft_gemm on the dequantized floats bit for
   bit; the LoRA op over it matches finite differences of a double reference. */
#include "harness.h"

static const int all_types[] = { PEFT_GGML_F32,  PEFT_GGML_F16,  PEFT_GGML_BF16, PEFT_GGML_Q8_0,
                                 PEFT_GGML_Q4_0, PEFT_GGML_Q4_1, PEFT_GGML_Q5_0, PEFT_GGML_Q5_1,
                                 PEFT_GGML_Q2_K, PEFT_GGML_Q3_K, PEFT_GGML_Q4_K, PEFT_GGML_Q5_K,
                                 PEFT_GGML_Q6_K };
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

static const char *fixture(void) {
    static char path[512];
    snprintf(path, sizeof path, "%s/gguf_quant.safetensors", th_fixtures());
    return path;
}

/* raw bytes of a U8 tensor of the fixture */
static uint8_t *fx_bytes(const char *name, long *n) {
    peft_safetensors st;
    if (peft_st_open(&st, fixture()) != PEFT_OK) return NULL;
    const peft_st_entry *e = peft_st_find(&st, name);
    uint8_t *d = NULL;
    if (e && e->dtype == PEFT_DT_U8) {
        d = malloc(e->nbytes + 1);
        memcpy(d, st.data + e->offset, e->nbytes);
        *n = (long)e->nbytes;
    }
    peft_st_close(&st);
    return d;
}

/* first index where two float arrays differ in their bits, or -1 */
static long first_diff(const float *a, const float *b, long n) {
    for (long i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float)) != 0) return i;
    return -1;
}

TEST(test_ggml_type_table) {
    static const struct {
        int type, block;
        size_t size;
        const char *name;
    } want[] = { { PEFT_GGML_F32, 1, 4, "F32" },       { PEFT_GGML_F16, 1, 2, "F16" },
                 { PEFT_GGML_BF16, 1, 2, "BF16" },     { PEFT_GGML_Q4_0, 32, 18, "Q4_0" },
                 { PEFT_GGML_Q4_1, 32, 20, "Q4_1" },   { PEFT_GGML_Q5_0, 32, 22, "Q5_0" },
                 { PEFT_GGML_Q5_1, 32, 24, "Q5_1" },   { PEFT_GGML_Q8_0, 32, 34, "Q8_0" },
                 { PEFT_GGML_Q2_K, 256, 84, "Q2_K" },  { PEFT_GGML_Q3_K, 256, 110, "Q3_K" },
                 { PEFT_GGML_Q4_K, 256, 144, "Q4_K" }, { PEFT_GGML_Q5_K, 256, 176, "Q5_K" },
                 { PEFT_GGML_Q6_K, 256, 210, "Q6_K" } };
    for (int i = 0; i < (int)(sizeof want / sizeof want[0]); i++) {
        CHECK(peft_ggml_block_size(want[i].type) == want[i].block, "%s block size", want[i].name);
        CHECK(peft_ggml_type_size(want[i].type) == want[i].size, "%s type size", want[i].name);
        const char *nm = peft_ggml_type_name(want[i].type);
        CHECK(nm && strcmp(nm, want[i].name) == 0, "type %d name %s", want[i].type, nm ? nm : "(null)");
        size_t rb = 0;
        CHECK_OK(peft_ggml_row_bytes(want[i].type, 3 * want[i].block, &rb));
        CHECK(rb == 3 * want[i].size, "%s: row of 3 blocks is %zu bytes", want[i].name, rb);
        if (want[i].block > 1)
            CHECK(peft_ggml_row_bytes(want[i].type, want[i].block + 1, &rb) == PEFT_ERR_FORMAT,
                  "%s: ragged row refused", want[i].name);
    }
    int unsupported[] = { 9 /* Q8_1 */, 15 /* Q8_K */, 16 /* IQ2_XXS */, 4, 5, 29, 31, -1, 1000 };
    for (int i = 0; i < (int)(sizeof unsupported / sizeof unsupported[0]); i++) {
        size_t rb;
        CHECK(!peft_ggml_type_name(unsupported[i]) && peft_ggml_block_size(unsupported[i]) == 0 &&
                  peft_ggml_type_size(unsupported[i]) == 0,
              "type %d must be unsupported", unsupported[i]);
        CHECK(peft_ggml_row_bytes(unsupported[i], 256, &rb) == PEFT_ERR_UNSUPPORTED, "type %d row bytes",
              unsupported[i]);
    }
}

/* one fixture pair: raw blocks and gguf's floats; whole rows, then ranges */
static void check_pair(int type, const char *what) {
    const char *tn = peft_ggml_type_name(type);
    char k[96];
    long nraw = 0, nd = 0;
    snprintf(k, sizeof k, "%s.%s.raw", tn, what);
    uint8_t *raw = fx_bytes(k, &nraw);
    float *deq = NULL;
    snprintf(k, sizeof k, "%s.%s.deq", tn, what);
    REQUIRE(raw && th_read_ref(fixture(), k, &deq, &nd), "fixture %s.%s", tn, what);
    size_t rb = 0;
    REQUIRE_OK(peft_ggml_row_bytes(type, nd, &rb));
    REQUIRE(rb == (size_t)nraw, "%s %s: %ld floats take %zu bytes, the fixture has %ld", tn, what, nd, rb,
            nraw);
    float *mine = malloc(sizeof(float) * (size_t)(nd + 1));
    peft_ggml_dequantize(type, raw, nd, mine);
    long d = first_diff(mine, deq, nd);
    CHECK(d < 0, "%s %s: element %ld is %a, gguf.quants.dequantize gives %a", tn, what, d,
          d < 0 ? 0.0 : (double)mine[d], d < 0 ? 0.0 : (double)deq[d]);
    /* any range of a row through the qmatrix: the same floats */
    peft_qmatrix q = { type, 1, nd, rb, raw, NULL, 0 };
    peft_rng r;
    peft_rng_seed(&r, (uint64_t)type);
    long bad = 0;
    for (int t = 0; t < 200; t++) {
        int64_t c0 = (int64_t)(peft_rng_uniform(&r) * (float)nd),
                len = 1 + (int64_t)(peft_rng_uniform(&r) * 300.0f);
        if (c0 >= nd) c0 = nd - 1;
        if (c0 + len > nd) len = nd - c0;
        uint32_t fence = 0xABABABAB, after;
        memset(mine, 0xAB, sizeof(float) * (size_t)(len + 1));
        peft_qmatrix_decode(&q, 0, c0, len, mine);
        memcpy(&after, mine + len, 4);
        if (first_diff(mine, deq + c0, len) >= 0 || after != fence) bad++;
    }
    CHECK(bad == 0, "%s %s: %ld of 200 ranges decode differently", tn, what, bad);
    free(raw);
    free(deq);
    free(mine);
}

TEST(test_ggml_dequantize_matches_gguf) {
    for (int i = 0; i < N_TYPES; i++) {
        int t = all_types[i];
        check_pair(t, "hand");
        if (peft_ggml_block_size(t) == 256 || t == PEFT_GGML_F32)
            continue; /* gguf cannot quantize K-quants */
        check_pair(t, "quant");
    }
}

/* the quantize helper equals gguf.quants.quantize byte for byte */
TEST(test_ggml_quantize_matches_gguf) {
    int types[3] = { PEFT_GGML_Q8_0, PEFT_GGML_Q4_0, PEFT_GGML_Q4_1 };
    for (int i = 0; i < 3; i++) {
        const char *tn = peft_ggml_type_name(types[i]);
        char k[96];
        long nraw, ns;
        float *src;
        snprintf(k, sizeof k, "%s.quant.raw", tn);
        uint8_t *raw = fx_bytes(k, &nraw);
        snprintf(k, sizeof k, "%s.quant.src", tn);
        REQUIRE(raw && th_read_ref(fixture(), k, &src, &ns), "fixture %s", tn);
        uint8_t *mine = calloc(1, (size_t)nraw);
        REQUIRE_OK(peft_ggml_quantize(types[i], src, ns, mine));
        long d = -1;
        for (long j = 0; j < nraw && d < 0; j++)
            if (mine[j] != raw[j]) d = j;
        CHECK(d < 0, "%s: byte %ld is %02x, gguf.quants.quantize writes %02x", tn, d, d < 0 ? 0 : mine[d],
              d < 0 ? 0 : raw[d]);
        free(raw);
        free(src);
        free(mine);
    }
    float x[32] = { 0 };
    uint8_t b[256];
    CHECK(peft_ggml_quantize(PEFT_GGML_Q4_K, x, 256, b) == PEFT_ERR_UNSUPPORTED,
          "Q4_K quantizing is not offered");
    CHECK(peft_ggml_quantize(PEFT_GGML_Q8_0, x, 31, b) != PEFT_OK, "31 values are not whole blocks");
}

/* byte offsets of the fp16 scale fields of a block: set to small values so
   that random codes give weights of a sane size */
static void scale_offsets(int type, int *o, int *n) {
    *n = 1;
    o[0] = 0;
    switch (type) {
    case PEFT_GGML_Q4_1:
    case PEFT_GGML_Q5_1:
    case PEFT_GGML_Q4_K:
    case PEFT_GGML_Q5_K:
        *n = 2;
        o[1] = 2;
        break;
    case PEFT_GGML_Q2_K:
        *n = 2;
        o[0] = 80;
        o[1] = 82;
        break;
    case PEFT_GGML_Q3_K:
        o[0] = 108;
        break;
    case PEFT_GGML_Q6_K:
        o[0] = 208;
        break;
    default:
        break;
    }
}

/* a random frozen W [rows, cols] of a type, owned by the matrix */
static int random_qmatrix(peft_qmatrix *q, int type, int64_t rows, int64_t cols, peft_rng *r) {
    memset(q, 0, sizeof *q);
    q->type = type;
    q->rows = rows;
    q->cols = cols;
    if (peft_ggml_row_bytes(type, cols, &q->row_bytes) != PEFT_OK) return 0;
    uint8_t *d = malloc(q->row_bytes * (size_t)rows);
    q->owned = d;
    q->data = d;
    int bs = peft_ggml_block_size(type);
    size_t ts = peft_ggml_type_size(type), nb = q->row_bytes * (size_t)rows / ts;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *p = d + b * ts;
        if (bs == 1) {
            float v = 0.1f * peft_rng_normal(r);
            uint16_t h = type == PEFT_GGML_F16 ? peft_f32_to_f16(v) : peft_f32_to_bf16(v);
            if (type == PEFT_GGML_F32)
                memcpy(p, &v, 4);
            else {
                p[0] = (uint8_t)h;
                p[1] = (uint8_t)(h >> 8);
            }
            continue;
        }
        for (size_t k = 0; k < ts; k++) p[k] = (uint8_t)(peft_rng_u64(r) >> 56);
        int off[2], n;
        scale_offsets(type, off, &n);
        for (int k = 0; k < n; k++) {
            uint16_t h = peft_f32_to_f16((k ? 0.002f : 0.01f) * (0.5f + peft_rng_uniform(r)) *
                                         (bs == 256 ? 0.1f : 1.0f));
            p[off[k]] = (uint8_t)h;
            p[off[k] + 1] = (uint8_t)(h >> 8);
        }
    }
    return 1;
}

/* The ggml products decode W straight into the GEMM's packed panels: on
   shapes with several K slices that cut blocks (and K-quant sub-blocks) in
   two, two column slices and ragged strips, x·Wᵀ and dy·W equal peft_gemm
   on the dequantized floats bit for bit, on 1 and 2 threads. */
TEST(test_qmatrix_linear_packs_like_floats) {
    int N = 37, out = 1100;
    peft_rng r;
    peft_rng_seed(&r, 16);
    peft_graph *g = peft_graph_new();
    int threads = peft_get_threads();
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti], bs = peft_ggml_block_size(type);
        int in = bs == 256 ? 1280 : bs == 32 ? 736 : 701; /* 4 or 3 K slices of 320 or 246: blocks cut */
        peft_qmatrix q;
        REQUIRE(random_qmatrix(&q, type, out, in, &r), "qmatrix %s", peft_ggml_type_name(type));
        float *wd = malloc(sizeof(float) * out * in);
        for (int o = 0; o < out; o++)
            peft_ggml_dequantize(type, q.data + (size_t)o * q.row_bytes, in, wd + (size_t)o * in);
        int64_t sx[2] = { N, in };
        peft_tensor *x = peft_param_new("x", 2, sx);
        peft_param_set_trainable(x, 1);
        for (int i = 0; i < N * in; i++) x->data[i] = peft_rng_normal(&r);
        float *R = malloc(sizeof(float) * N * out),
              *ref = malloc(sizeof(float) * (size_t)N * (out > in ? out : in));
        for (int i = 0; i < N * out; i++) R[i] = peft_rng_normal(&r);
        for (int t = 1; t <= 2; t++) {
            peft_set_threads(t);
            peft_graph_reset(g);
            memset(x->grad, 0, sizeof(float) * N * in);
            peft_tensor *y = peft_qmatrix_linear(g, x, &q);
            REQUIRE(y, "forward: %s", peft_last_error());
            REQUIRE_OK(peft_backward_seed(g, y, R));
            peft_gemm(0, 1, N, out, in, x->data, in, wd, in, 0.0f, ref, out);
            CHECK(memcmp(ref, y->data, sizeof(float) * N * out) == 0,
                  "%s, %d threads: x·Wᵀ differs from the float product "
                  "(rel %.3g)",
                  peft_ggml_type_name(type), t, th_rel_err_f(ref, y->data, N * out));
            peft_gemm(0, 0, N, in, out, R, out, wd, in, 0.0f, ref, in);
            CHECK(memcmp(ref, x->grad, sizeof(float) * N * in) == 0,
                  "%s, %d threads: dy·W differs from the float product "
                  "(rel %.3g)",
                  peft_ggml_type_name(type), t, th_rel_err_f(ref, x->grad, N * in));
        }
        peft_param_free(x);
        peft_qmatrix_free(&q);
        CHECK(!q.data && !q.owned, "qmatrix_free clears the matrix");
        free(wd);
        free(R);
        free(ref);
    }
    peft_set_threads(threads);
    /* refused: a row size that disagrees with the type, an unsupported
       type, an input of the wrong width */
    uint8_t blocks[4 * 144] = { 0 };
    int64_t sx[2] = { 3, 256 }, sw[2] = { 3, 512 };
    peft_tensor *x = peft_param_new("x", 2, sx), *xw = peft_param_new("x", 2, sw);
    peft_qmatrix bad[3] = { { PEFT_GGML_Q4_K, 4, 256, 143, blocks, NULL, 0 },
                            { 9 /* Q8_1 */, 4, 256, 144, blocks, NULL, 0 },
                            { PEFT_GGML_Q4_K, 4, 256, 144, blocks, NULL, 0 } };
    for (int k = 0; k < 3; k++) {
        peft_graph_reset(g);
        peft_tensor *y = peft_qmatrix_linear(g, k < 2 ? x : xw, &bad[k]);
        CHECK(!y && *peft_last_error(), "bad case %d must be refused", k);
    }
    peft_graph_reset(g);
    CHECK(peft_qmatrix_linear(g, x, &bad[2]) != NULL, "the good matrix works: %s", peft_last_error());
    peft_param_free(x);
    peft_param_free(xw);
    peft_graph_free(g);
}

/* peft_qmatrix_lora_linear against a double-precision reference over the
   dequantized W: the forward, and the gradients of x, A and B against
   central differences (L = Σ R ⊙ y is linear in each of them for a fixed
   dropout mask, so the differences are exact up to double rounding) */
typedef struct {
    int N, in, out, r;
    float s, p;
} qlctx;
static void ql_ref(const qlctx *c, const double *x, const float *wd, const double *A, const double *B,
                   const uint8_t *mask, double *y) {
    double keep = (double)(1.0f / (1.0f - c->p));
    for (int n = 0; n < c->N; n++) {
        double u[8];
        for (int k = 0; k < c->r; k++) {
            u[k] = 0;
            for (int i = 0; i < c->in; i++) {
                double xv = x[n * c->in + i];
                if (mask) xv = mask[n * c->in + i] ? xv * keep : 0.0;
                u[k] += xv * A[k * c->in + i];
            }
        }
        for (int o = 0; o < c->out; o++) {
            double acc = 0, l = 0;
            for (int i = 0; i < c->in; i++) acc += x[n * c->in + i] * (double)wd[(size_t)o * c->in + i];
            for (int k = 0; k < c->r; k++) l += u[k] * B[o * c->r + k];
            y[n * c->out + o] = acc + (double)c->s * l;
        }
    }
}
static double ql_loss(const qlctx *c, const double *x, const float *wd, const double *A, const double *B,
                      const uint8_t *mask, const float *R, double *y) {
    ql_ref(c, x, wd, A, B, mask, y);
    double L = 0;
    for (int j = 0; j < c->N * c->out; j++) L += y[j] * R[j];
    return L;
}

TEST(test_fd_qmatrix_lora_linear) {
    struct {
        int type;
        qlctx c;
    } cases[] = { { PEFT_GGML_Q4_0, { 4, 64, 7, 3, 0.8f, 0.0f } },
                  { PEFT_GGML_Q6_K, { 3, 256, 5, 2, 2.0f, 0.0f } },
                  { PEFT_GGML_Q4_K, { 5, 256, 6, 3, 0.5f, 0.25f } },
                  { PEFT_GGML_F16, { 3, 20, 9, 2, 1.0f, 0.5f } } };
    for (int ci = 0; ci < 4; ci++) {
        qlctx c = cases[ci].c;
        const char *tn = peft_ggml_type_name(cases[ci].type);
        peft_rng r;
        peft_rng_seed(&r, 160 + (uint64_t)ci);
        peft_qmatrix q;
        REQUIRE(random_qmatrix(&q, cases[ci].type, c.out, c.in, &r), "qmatrix");
        float *wd = malloc(sizeof(float) * c.out * c.in);
        for (int o = 0; o < c.out; o++) peft_qmatrix_decode(&q, o, 0, c.in, wd + (size_t)o * c.in);
        float wmax = 0;
        for (int j = 0; j < c.out * c.in; j++) wmax = fmaxf(wmax, fabsf(wd[j]));
        int64_t sx[2] = { c.N, c.in }, sa[2] = { c.r, c.in }, sb[2] = { c.out, c.r };
        peft_tensor *x = peft_param_new("x", 2, sx), *A = peft_param_new("A", 2, sa),
                    *B = peft_param_new("B", 2, sb);
        peft_tensor *ts[3] = { x, A, B };
        double *xd[3];
        for (int t = 0; t < 3; t++) {
            peft_param_set_trainable(ts[t], 1);
            xd[t] = malloc(sizeof(double) * ts[t]->n);
            for (int64_t j = 0; j < ts[t]->n; j++) xd[t][j] = ts[t]->data[j] = peft_rng_normal(&r);
        }
        /* the op's dropout mask, drawn as peft_lora_linear documents it: one
           key from the caller's rng, row n from a generator seeded with
           key + n, two 24-bit uniforms per 64-bit draw, dropped when u < p */
        uint8_t *mask = NULL;
        if (c.p > 0) {
            peft_rng dr;
            peft_rng_seed(&dr, 99);
            uint64_t key = peft_rng_u64(&dr), bits = 0;
            mask = malloc((size_t)c.N * c.in);
            for (int n = 0; n < c.N; n++) {
                peft_rng row;
                peft_rng_seed(&row, key + (uint64_t)n);
                for (int i = 0; i < c.in; i++) {
                    if (!(i & 1)) bits = peft_rng_u64(&row);
                    double u = (double)((i & 1 ? bits >> 16 : bits >> 40) & 0xFFFFFF) / 16777216.0;
                    mask[n * c.in + i] = !(u < c.p);
                }
            }
        }
        peft_graph *g = peft_graph_new();
        peft_rng dr;
        peft_rng_seed(&dr, 99);
        peft_tensor *y = peft_qmatrix_lora_linear(g, x, &q, A, B, c.s, c.p, c.p > 0 ? &dr : NULL);
        REQUIRE(y, "%s: forward: %s", tn, peft_last_error());
        float *R = malloc(sizeof(float) * c.N * c.out);
        double *yd = malloc(sizeof(double) * c.N * c.out);
        for (int j = 0; j < c.N * c.out; j++) R[j] = peft_rng_normal(&r);
        REQUIRE_OK(peft_backward_seed(g, y, R));
        ql_ref(&c, xd[0], wd, xd[1], xd[2], mask, yd);
        double ferr = th_rel_err_fd(y->data, yd, c.N * c.out);
        CHECK(ferr < 1e-5, "%s: forward differs from the double reference: rel err %.3g", tn, ferr);
        const double h = 1e-6;
        for (int t = 0; t < 3; t++) {
            double *fd = malloc(sizeof(double) * ts[t]->n);
            for (int64_t j = 0; j < ts[t]->n; j++) {
                double x0 = xd[t][j];
                xd[t][j] = x0 + h;
                double lp = ql_loss(&c, xd[0], wd, xd[1], xd[2], mask, R, yd);
                xd[t][j] = x0 - h;
                double lm = ql_loss(&c, xd[0], wd, xd[1], xd[2], mask, R, yd);
                xd[t][j] = x0;
                fd[j] = (lp - lm) / (2 * h);
            }
            double err = th_rel_err_fd(ts[t]->grad, fd, (long)ts[t]->n);
            CHECK(err < 2e-4, "%s: gradient of %c differs from finite differences: rel err %.3g", tn,
                  "xAB"[t], err);
            free(fd);
        }
        CHECK(wmax > 0, "%s: a non-zero weight", tn);
        for (int t = 0; t < 3; t++) {
            peft_param_free(ts[t]);
            free(xd[t]);
        }
        free(mask);
        free(R);
        free(yd);
        free(wd);
        peft_qmatrix_free(&q);
        peft_graph_free(g);
    }
}

/* A small model whose block linears are random blocks of `type`, and its
   float twin holding the same weights dequantized (same seed otherwise). */
static int qm_twins(peft_model **qm, peft_model **fl, int type, uint64_t seed) {
    peft_config c;
    if (peft_config_preset(&c, "tiny") != PEFT_OK) return 0;
    c.n_layers = 2;
    c.vocab_size = 128;
    c.max_seq_len = 64;
    if (peft_model_new(qm, &c, 1, seed) != PEFT_OK || peft_model_new(fl, &c, 1, seed) != PEFT_OK) return 0;
    peft_rng r;
    peft_rng_seed(&r, seed + 1);
    for (int l = 0; l < c.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            peft_linear_site *S = &(*qm)->layers[l].lin[s], *F = &(*fl)->layers[l].lin[s];
            peft_qmatrix *q = malloc(sizeof *q);
            if (!random_qmatrix(q, type, S->w->shape[0], S->w->shape[1], &r)) {
                free(q);
                return 0;
            }
            for (int64_t o = 0; o < q->rows; o++)
                peft_qmatrix_decode(q, o, 0, q->cols, F->w->data + o * q->cols);
            free(S->w->data);
            S->w->data = NULL;
            S->qm = q;
        }
    return 1;
}

/* Every method that keeps W frozen trains over a GGUF-typed base exactly
   as over the same weights in floats: the decoded panels equal the float
   ones, so losses and trained parameters agree bit for bit (dropout
   included: the same seed draws the same masks). Full fine-tuning, merging
   and saving the base are refused with a message; peft_model_dequantize
   gives the float model, whose merge equals the float twin's. */
/* Data-parallel steps over a base held in ggml blocks (Q4_K decoded in the
   GEMM's packing, on two threads at once): LoRA with dropout on every site
   gets the one-tape step's loss and gradients, to fp32 rounding (shards sum
   the weight gradients in two halves; bound 1e-5). */
TEST(test_qmatrix_data_parallel) {
    peft_model *q1, *f1, *q2, *f2;
    REQUIRE(qm_twins(&q1, &f1, PEFT_GGML_Q4_K, 41) && qm_twins(&q2, &f2, PEFT_GGML_Q4_K, 41), "twins: %s",
            peft_last_error());
    peft_method m = peft_method_defaults(PEFT_LORA);
    m.seed = 5;
    m.lora_r = 4;
    m.lora_dropout = 0.1f;
    m.lora_targets = 0x7F;
    REQUIRE_OK(peft_attach(q1, &m));
    REQUIRE_OK(peft_attach(q2, &m));
    int tok[4 * 24], tgt[4 * 24];
    for (int i = 0; i < 96; i++) {
        tok[i] = (i * 7 + 3) % 128;
        tgt[i] = (tok[i] * 5 + 1) % 128;
    }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    char why[200];
    double gap = th_data_parallel_gap(q1, q2, &o, tok, tgt, 4, 24, why, sizeof why);
    if (gap < 0 && strstr(why, "without threads")) SKIP("%s", why);
    CHECK(gap >= 0 && gap < 1e-5, "ggml base: shards vs one tape: gap %.3g (%s)", gap, why);
    peft_model_free(q1);
    peft_model_free(f1);
    peft_model_free(q2);
    peft_model_free(f2);
}

TEST(test_qmatrix_model_trains_like_floats) {
    int types[] = { PEFT_GGML_Q4_K, PEFT_GGML_Q8_0, PEFT_GGML_Q6_K };
    peft_method_kind kinds[PEFT_N_METHODS];
    int n_kinds = th_builtin_kinds(kinds, 0);
    int tok[2 * 24], tgt[2 * 24];
    for (int i = 0; i < 48; i++) {
        tok[i] = (i * 7 + 3) % 128;
        tgt[i] = (tok[i] * 5 + 1) % 128;
    }
    for (int ti = 0; ti < 3; ti++)
        for (int k = 0; k < n_kinds; k++) {
            if (ti > 0 && k > 0) continue; /* every method on one type, LoRA on the others */
            const char *tn = peft_ggml_type_name(types[ti]), *mn = peft_method_name(kinds[k]);
            peft_model *q, *f;
            REQUIRE(qm_twins(&q, &f, types[ti], 30 + (uint64_t)k), "twins: %s", peft_last_error());
            if (k == 0) {
                peft_method full = peft_method_defaults(PEFT_FULL);
                CHECK(peft_attach(q, &full) == PEFT_ERR_UNSUPPORTED &&
                          strstr(peft_last_error(), "full fine-tuning"),
                      "%s: full fine-tuning over ggml blocks must be refused: %s", tn, peft_last_error());
                CHECK(peft_model_quantize(q, PEFT_NF4, 1) == PEFT_ERR_UNSUPPORTED,
                      "%s: NF4 over ggml blocks must be refused", tn);
                CHECK(peft_param_set_trainable(q->layers[0].lin[PEFT_Q].w, 1) == PEFT_ERR_UNSUPPORTED,
                      "%s: a weight held in ggml blocks cannot be made trainable", tn);
                double bits = peft_model_linear_bits(q);
                double want = 8.0 * (double)peft_ggml_type_size(types[ti]) / peft_ggml_block_size(types[ti]);
                CHECK(fabs(bits - want) < 1e-9, "%s: %.4f bits per linear weight, want %.4f", tn, bits, want);
            }
            peft_method m = peft_method_defaults(kinds[k]);
            m.seed = 5;
            if (kinds[k] == PEFT_LORA) {
                m.lora_r = 4;
                m.lora_dropout = 0.1f;
                m.lora_targets = 0x7F;
            }
            REQUIRE_OK(peft_attach(q, &m));
            REQUIRE_OK(peft_attach(f, &m));
            if (k == 2) peft_model_set_checkpointing(q, 1), peft_model_set_checkpointing(f, 1);
            peft_trainer_opts o = peft_trainer_defaults();
            o.lr = 1e-2f;
            peft_trainer *tq = peft_trainer_new(q, &o), *tf = peft_trainer_new(f, &o);
            REQUIRE(tq && tf, "trainers");
            float lq[4], lf[4];
            for (int s = 0; s < 4; s++) {
                REQUIRE_OK(peft_trainer_step(tq, tok, tgt, 2, 24, &lq[s]));
                REQUIRE_OK(peft_trainer_step(tf, tok, tgt, 2, 24, &lf[s]));
            }
            CHECK(memcmp(lq, lf, sizeof lq) == 0,
                  "%s %s: losses %.7g %.7g %.7g %.7g vs float base %.7g %.7g %.7g %.7g", tn, mn, lq[0], lq[1],
                  lq[2], lq[3], lf[0], lf[1], lf[2], lf[3]);
            CHECK(lq[3] < lq[0], "%s %s: loss %.4f -> %.4f does not fall", tn, mn, lq[0], lq[3]);
            peft_tensor **pq, **pf;
            int nq = peft_model_trainable(q, &pq), nf = peft_model_trainable(f, &pf);
            CHECK(nq == nf && nq > 0, "%s %s: %d vs %d trainable tensors", tn, mn, nq, nf);
            long diff = 0;
            for (int i = 0; i < nq && i < nf; i++)
                diff += memcmp(pq[i]->data, pf[i]->data, sizeof(float) * pq[i]->n) != 0;
            CHECK(diff == 0, "%s %s: %ld trained tensors differ from the float base's", tn, mn, diff);
            free(pq);
            free(pf);
            if (kinds[k] == PEFT_LORA) {
                CHECK(peft_lora_merge(q) == PEFT_ERR_UNSUPPORTED,
                      "%s: merging into ggml blocks must be refused", tn);
                char dir[600];
                snprintf(dir, sizeof dir, "%s/qm_save", th_tmpdir());
                CHECK(peft_model_save(q, dir) == PEFT_ERR_UNSUPPORTED,
                      "%s: saving ggml blocks as a float model is refused", tn);
                REQUIRE_OK(peft_model_dequantize(q));
                CHECK(!q->layers[0].lin[PEFT_Q].qm && q->layers[0].lin[PEFT_Q].w->data, "%s: dequantized",
                      tn);
                REQUIRE_OK(peft_lora_merge(q));
                REQUIRE_OK(peft_lora_merge(f));
                for (int l = 0; l < q->cfg.n_layers; l++)
                    for (int s = 0; s < PEFT_N_SITES; s++) {
                        peft_tensor *a = q->layers[l].lin[s].w, *b = f->layers[l].lin[s].w;
                        CHECK(memcmp(a->data, b->data, sizeof(float) * a->n) == 0,
                              "%s: merged layer %d site %d differs", tn, l, s);
                    }
            }
            peft_trainer_free(tq);
            peft_trainer_free(tf);
            peft_model_free(q);
            peft_model_free(f);
        }
}

/* A GGUF base's embedding (and an untied output) kept in ggml blocks: the
   lookup decodes the rows it takes and the classifier decodes W's panels,
   so logits, cached generation, the fused loss and LoRA training with
   trainable tokens / a trained lm_head copy equal those of the same
   values in floats bit for bit; the model holds no float copy of the table,
   and its allocated bits per base weight count the table at its block size. */
TEST(test_qmatrix_embedding_like_floats) {
    /* the fused loss over several chunks of logits (8 MB under make test): the
       float W packed once for all chunks, the ggml one decoded per chunk */
    {
        peft_rng r;
        peft_rng_seed(&r, 3);
        int N = 640, V = 4096, D = 64;
        peft_qmatrix W;
        REQUIRE(random_qmatrix(&W, PEFT_GGML_Q8_0, V, D, &r), "qmatrix");
        int64_t sw[2] = { V, D }, sx[2] = { N, D };
        peft_tensor *wf = peft_param_new("w", 2, sw), *xq = peft_param_new("xq", 2, sx),
                    *xf = peft_param_new("xf", 2, sx);
        for (int o = 0; o < V; o++) peft_qmatrix_decode(&W, o, 0, D, wf->data + (size_t)o * D);
        int *t = malloc(sizeof(int) * N);
        for (int i = 0; i < N; i++) t[i] = i % 7 == 0 ? -100 : (int)(peft_rng_u64(&r) % (uint64_t)V);
        for (int i = 0; i < N * D; i++) xq->data[i] = xf->data[i] = peft_rng_normal(&r);
        peft_param_set_trainable(xq, 1);
        peft_param_set_trainable(xf, 1);
        peft_graph *g = peft_graph_new(), *g2 = peft_graph_new();
        peft_tensor *lq = peft_qmatrix_linear_cross_entropy(g, xq, &W, t),
                    *lf = peft_linear_cross_entropy(g2, xf, wf, t);
        REQUIRE(lq && lf, "fused loss: %s", peft_last_error());
        REQUIRE_OK(peft_backward(g, lq));
        REQUIRE_OK(peft_backward(g2, lf));
        CHECK(lq->data[0] == lf->data[0] && memcmp(xq->grad, xf->grad, sizeof(float) * N * D) == 0,
              "fused loss over Q8_0 blocks: %.9g vs %.9g over floats, or dx differs", lq->data[0],
              lf->data[0]);
        int bad_id = V;
        peft_graph_reset(g);
        CHECK(!peft_qmatrix_embedding(g, &W, &bad_id, 1) && strstr(peft_last_error(), "out of range"),
              "an id past the table is refused: %s", peft_last_error());
        peft_graph_free(g);
        peft_graph_free(g2);
        free(t);
        peft_qmatrix_free(&W);
        peft_param_free(wf);
        peft_param_free(xq);
        peft_param_free(xf);
    }
    int types[2] = { PEFT_GGML_Q4_1, PEFT_GGML_Q6_K };
    int tok[2 * 24], tgt[2 * 24];
    for (int i = 0; i < 48; i++) {
        tok[i] = (i * 7 + 3) % 128;
        tgt[i] = i % 5 == 0 ? -100 : (tok[i] * 5 + 1) % 128;
    }
    for (int tied = 0; tied < 2; tied++) {
        const char *tn = peft_ggml_type_name(types[tied]);
        peft_config c;
        REQUIRE_OK(peft_config_preset(&c, "tiny"));
        c.n_layers = 2;
        c.vocab_size = 128;
        c.max_seq_len = 64;
        c.tie_embeddings = tied;
        peft_model *q, *f;
        REQUIRE_OK(peft_model_new(&q, &c, 1, 40 + (uint64_t)tied));
        REQUIRE_OK(peft_model_new(&f, &c, 1, 40 + (uint64_t)tied));
        peft_rng r;
        peft_rng_seed(&r, 9);
        double want_bytes = 0;
        for (int k = 0; k < 2 - tied; k++) {
            peft_tensor *p = k ? q->lm_head : q->embed, *pf = k ? f->lm_head : f->embed;
            peft_qmatrix *m = malloc(sizeof *m);
            REQUIRE(random_qmatrix(m, types[tied], p->shape[0], p->shape[1], &r), "qmatrix %s", tn);
            for (int64_t o = 0; o < m->rows; o++)
                peft_qmatrix_decode(m, o, 0, m->cols, pf->data + o * m->cols);
            free(p->data);
            p->data = NULL;
            if (k) q->head_qm = m;
            else q->embed_qm = q->head_qm = m;
            want_bytes += (double)peft_qmatrix_bytes(m);
        }
        want_bytes += 4.0 * (double)(peft_model_base_count(q) - q->embed->n - (tied ? 0 : q->lm_head->n));
        double bits = peft_model_base_bits(q), want = 8.0 * want_bytes / (double)peft_model_base_count(q);
        CHECK(fabs(bits - want) < 1e-9 && bits < 32.0,
              "%s: %.4f bits per base weight as allocated, want %.4f", tn, bits, want);
        peft_graph *gq = peft_graph_new(), *gf = peft_graph_new();
        peft_graph_set_grad(gq, 0);
        peft_graph_set_grad(gf, 0);
        peft_tensor *lq = peft_model_forward(q, gq, tok, 2, 24), *lf = peft_model_forward(f, gf, tok, 2, 24);
        REQUIRE(lq && lf, "forward: %s", peft_last_error());
        CHECK(memcmp(lq->data, lf->data, sizeof(float) * lf->n) == 0, "%s tied %d: logits differ", tn, tied);
        peft_kv_cache *cq, *cf;
        REQUIRE_OK(peft_kv_cache_new(&cq, q, 2, 32));
        REQUIRE_OK(peft_kv_cache_new(&cf, f, 2, 32));
        long diff = 0;
        for (int s = 0; s < 3; s++) {           /* a prefill, then one token at a time */
            int T = s ? 1 : 8;
            peft_graph_reset(gq);
            peft_graph_reset(gf);
            lq = peft_model_forward_cached(q, gq, cq, tok + 8 * s, 2, T);
            lf = peft_model_forward_cached(f, gf, cf, tok + 8 * s, 2, T);
            REQUIRE(lq && lf, "cached forward: %s", peft_last_error());
            diff += memcmp(lq->data, lf->data, sizeof(float) * lf->n) != 0;
        }
        CHECK(diff == 0, "%s tied %d: cached logits differ in %ld calls", tn, tied, diff);
        peft_kv_cache_free(cq);
        peft_kv_cache_free(cf);
        peft_graph_free(gq);
        peft_graph_free(gf);
        peft_method m = peft_method_defaults(PEFT_LORA);
        m.seed = 5;
        m.lora_r = 4;
        m.lora_targets = 0x7F;
        if (tied) {                              /* rows of the tied table trained, the rest decoded */
            m.n_trainable_tokens = 2;
            m.trainable_tokens[0] = 3;
            m.trainable_tokens[1] = 66;
        } else
            m.modules_to_save = PEFT_SAVE_LM_HEAD;
        REQUIRE_OK(peft_attach(q, &m));
        REQUIRE_OK(peft_attach(f, &m));
        peft_model_set_checkpointing(q, tied);
        peft_model_set_checkpointing(f, tied);
        peft_trainer_opts o = peft_trainer_defaults();
        o.lr = 1e-2f;
        peft_trainer *tq = peft_trainer_new(q, &o), *tf = peft_trainer_new(f, &o);
        REQUIRE(tq && tf, "trainers");
        float sq[3], sf[3];
        for (int s = 0; s < 3; s++) {
            REQUIRE_OK(peft_trainer_step(tq, tok, tgt, 2, 24, &sq[s]));
            REQUIRE_OK(peft_trainer_step(tf, tok, tgt, 2, 24, &sf[s]));
        }
        CHECK(memcmp(sq, sf, sizeof sq) == 0, "%s tied %d: losses %.7g %.7g %.7g vs floats %.7g %.7g %.7g",
              tn, tied, sq[0], sq[1], sq[2], sf[0], sf[1], sf[2]);
        CHECK(sq[2] < sq[0], "%s tied %d: loss %.4f -> %.4f does not fall", tn, tied, sq[0], sq[2]);
        peft_tensor **pq, **pf;
        int nq = peft_model_trainable(q, &pq), nf = peft_model_trainable(f, &pf);
        CHECK(nq == nf && nq > 0, "%s: %d vs %d trainable tensors", tn, nq, nf);
        diff = 0;
        for (int i = 0; i < nq && i < nf; i++)
            diff += memcmp(pq[i]->data, pf[i]->data, sizeof(float) * pq[i]->n) != 0;
        CHECK(diff == 0, "%s tied %d: %ld trained tensors differ from the float base's", tn, tied, diff);
        free(pq);
        free(pf);
        CHECK(!q->embed->data && (tied || !q->lm_head->data), "%s: the table was decoded into floats", tn);
        CHECK(peft_model_save(q, th_tmpdir()) == PEFT_ERR_UNSUPPORTED &&
                  strstr(peft_last_error(), "embed_tokens"),
              "%s: saving a table in ggml blocks as floats is refused naming it: %s", tn, peft_last_error());
        REQUIRE_OK(peft_model_dequantize(q));
        CHECK(!q->embed_qm && !q->head_qm &&
                  memcmp(q->embed->data, f->embed->data, sizeof(float) * f->embed->n) == 0 &&
                  memcmp(q->lm_head->data, f->lm_head->data, sizeof(float) * f->lm_head->n) == 0,
              "%s tied %d: dequantized tables differ", tn, tied);
        CHECK(peft_model_base_bits(q) == 32.0, "%s: all floats after dequantize", tn);
        peft_trainer_free(tq);
        peft_trainer_free(tf);
        peft_model_free(q);
        peft_model_free(f);
    }
}
