/* --precision bf16: the bf16 products (AVX512-BF16) and their fallback,
   against float64 references, and a training run against fp32. */
#include "harness.h"

/* a BF16 matrix [rows, cols] of N(0, 0.1) values, owned */
static int bf16_matrix(peft_qmatrix *q, int64_t rows, int64_t cols, peft_rng *r) {
    memset(q, 0, sizeof *q);
    uint16_t *d = malloc(sizeof(uint16_t) * (size_t)(rows * cols));
    if (!d) return 0;
    for (int64_t e = 0; e < rows * cols; e++) d[e] = peft_f32_to_bf16(0.1f * peft_rng_normal(r));
    q->type = PEFT_GGML_BF16;
    q->rows = rows;
    q->cols = cols;
    q->row_bytes = 2 * (size_t)cols;
    q->data = (const uint8_t *)d;
    q->owned = d;
    q->bf16_compute = 1;
    return 1;
}

static float bf16_round(float v) { return peft_bf16_to_f32(peft_f32_to_bf16(v)); }

/* y = x·Wᵀ and x.grad = g0 + dy·W through peft_qmatrix_linear */
static int bf16_products(const peft_qmatrix *W, const float *x, const float *dy, const float *g0, int N,
                         float *y, float *dx) {
    int out = (int)W->rows, in = (int)W->cols;
    int64_t sx[2] = { N, in };
    peft_tensor *xt = peft_param_new("x", 2, sx);
    if (!xt || peft_param_set_trainable(xt, 1) != PEFT_OK) return 0;
    memcpy(xt->data, x, sizeof(float) * (size_t)N * in);
    memcpy(xt->grad, g0, sizeof(float) * (size_t)N * in);
    peft_graph *g = peft_graph_new();
    peft_tensor *yt = g ? peft_qmatrix_linear(g, xt, W) : NULL;
    int ok = yt && peft_backward_seed(g, yt, dy) == PEFT_OK;
    if (ok) {
        memcpy(y, yt->data, sizeof(float) * (size_t)N * out);
        memcpy(dx, xt->grad, sizeof(float) * (size_t)N * in);
    }
    peft_graph_free(g);
    peft_param_free(xt);
    return ok;
}

/* The error bound of an fp32-accumulated sum of K exact products (and, in
   dx, the K + 1-th term g0): |c − Σ| ≤ (K + 1)·2⁻²⁴·(|g0| + Σ|aₖ·bₖ|), the
   first-order bound of recursive summation in any order. Checks every
   element of both products against float64 sums over a (rounded to bf16
   when round_a) and the bf16 W; returns the largest error / bound. */
static double bf16_worst(const peft_qmatrix *W, const float *x, const float *dy, const float *g0, int N,
                         const float *y, const float *dx, int round_a) {
    int out = (int)W->rows, in = (int)W->cols;
    double worst = 0, u = ldexp(1.0, -24);
    float *w = malloc(sizeof(float) * (size_t)out * in);
    for (int o = 0; o < out; o++) peft_qmatrix_decode(W, o, 0, in, w + (size_t)o * in);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < out; o++) {
            double s = 0, a = 0;
            for (int k = 0; k < in; k++) {
                float xv = round_a ? bf16_round(x[(size_t)i * in + k]) : x[(size_t)i * in + k];
                double p = (double)xv * w[(size_t)o * in + k];
                s += p;
                a += fabs(p);
            }
            double err = fabs(y[(size_t)i * out + o] - s), bound = (in + 1) * u * a + 1e-30;
            if (err / bound > worst) worst = err / bound;
        }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < in; k++) {
            double s = g0[(size_t)i * in + k], a = fabs(s);
            for (int o = 0; o < out; o++) {
                float dv = round_a ? bf16_round(dy[(size_t)i * out + o]) : dy[(size_t)i * out + o];
                double p = (double)dv * w[(size_t)o * in + k];
                s += p;
                a += fabs(p);
            }
            double err = fabs(dx[(size_t)i * in + k] - s), bound = (out + 2) * u * a + 1e-30;
            if (err / bound > worst) worst = err / bound;
        }
    free(w);
    return worst;
}

/* shapes with several K slices (odd K: a last pair half empty), two
   column slices, ragged 12-row and 32-column strips, and a few rows */
static const struct { int N, out, in; } bf16_shapes[] = { { 37, 1100, 701 }, { 5, 96, 1283 }, { 1, 33, 64 },
                                                          { 26, 2051, 40 } };

static void bf16_case(int si, peft_rng *r, peft_qmatrix *W, float **x, float **dy, float **g0) {
    int N = bf16_shapes[si].N, out = bf16_shapes[si].out, in = bf16_shapes[si].in;
    bf16_matrix(W, out, in, r);
    *x = malloc(sizeof(float) * (size_t)N * in);
    *dy = malloc(sizeof(float) * (size_t)N * out);
    *g0 = malloc(sizeof(float) * (size_t)N * in);
    for (int i = 0; i < N * in; i++) (*x)[i] = peft_rng_normal(r);
    for (int i = 0; i < N * out; i++) (*dy)[i] = peft_rng_normal(r);
    for (int i = 0; i < N * in; i++) (*g0)[i] = 0.5f * peft_rng_normal(r);
}

/* The vdpbf16ps products equal the float64 products of the bf16-rounded
   inputs to within the fp32 accumulation bound; on 1 and 2 threads alike,
   bit for bit. */
TEST(test_bf16_dot_matches_f64) {
    if (!peft_bf16_dot_available()) SKIP("no AVX512-BF16 here (or PEFT_NO_BF16 set)");
    peft_rng r;
    peft_rng_seed(&r, 71);
    int threads = peft_get_threads();
    for (int si = 0; si < (int)(sizeof bf16_shapes / sizeof bf16_shapes[0]); si++) {
        int N = bf16_shapes[si].N, out = bf16_shapes[si].out, in = bf16_shapes[si].in;
        peft_qmatrix W;
        float *x, *dy, *g0;
        bf16_case(si, &r, &W, &x, &dy, &g0);
        float *y1 = malloc(sizeof(float) * N * out), *dx1 = malloc(sizeof(float) * N * in),
              *y2 = malloc(sizeof(float) * N * out), *dx2 = malloc(sizeof(float) * N * in);
        peft_set_threads(1);
        REQUIRE(bf16_products(&W, x, dy, g0, N, y1, dx1), "products: %s", peft_last_error());
        peft_set_threads(2);
        REQUIRE(bf16_products(&W, x, dy, g0, N, y2, dx2), "products: %s", peft_last_error());
        double worst = bf16_worst(&W, x, dy, g0, N, y1, dx1, 1);
        CHECK(worst <= 1.0, "%dx%dx%d: an error %.3g times the fp32 accumulation bound", N, out, in, worst);
        CHECK(memcmp(y1, y2, sizeof(float) * N * out) == 0 && memcmp(dx1, dx2, sizeof(float) * N * in) == 0,
              "%dx%dx%d: 1 and 2 threads differ", N, out, in);
        /* the activations are rounded: against the unrounded ones the error is far above the bound */
        CHECK(bf16_worst(&W, x, dy, g0, N, y1, dx1, 0) > 4.0, "%dx%dx%d: x and dy were not rounded to bf16",
              N, out, in);
        peft_qmatrix_free(&W);
        free(x); free(dy); free(g0); free(y1); free(dx1); free(y2); free(dx2);
    }
    peft_set_threads(threads);
}

/* PEFT_NO_BF16=1 (or a CPU without the instruction): bf16 storage decoded
   into fp32 panels, fp32 activations: the float64 product of the unrounded
   activations and the bf16 W within the same bound; and bit for bit the
   fp32 GEMM on the decoded W. Where the dot kernel runs, the two differ by
   no more than both bounds plus the rounding of the activations,
   Σ|aₖ − ãₖ|·|wₖ|. */
TEST(test_bf16_fallback_matches_f64) {
    const char *was = getenv("PEFT_NO_BF16");
    char saved[64] = "";
    if (was) snprintf(saved, sizeof saved, "%s", was);
    int dot = peft_bf16_dot_available();
    setenv("PEFT_NO_BF16", "1", 1);
    CHECK(!peft_bf16_dot_available(), "PEFT_NO_BF16=1 must turn the bf16 dot products off");
    peft_rng r;
    peft_rng_seed(&r, 72);
    for (int si = 0; si < (int)(sizeof bf16_shapes / sizeof bf16_shapes[0]); si++) {
        int N = bf16_shapes[si].N, out = bf16_shapes[si].out, in = bf16_shapes[si].in;
        peft_qmatrix W;
        float *x, *dy, *g0;
        bf16_case(si, &r, &W, &x, &dy, &g0);
        float *y = malloc(sizeof(float) * N * out), *dx = malloc(sizeof(float) * N * in),
              *yd = malloc(sizeof(float) * N * out), *dxd = malloc(sizeof(float) * N * in),
              *w = malloc(sizeof(float) * out * in), *ref = malloc(sizeof(float) * N * (out > in ? out : in));
        setenv("PEFT_NO_BF16", "1", 1);
        REQUIRE(bf16_products(&W, x, dy, g0, N, y, dx), "products: %s", peft_last_error());
        double worst = bf16_worst(&W, x, dy, g0, N, y, dx, 0);
        CHECK(worst <= 1.0, "fallback %dx%dx%d: an error %.3g times the bound", N, out, in, worst);
        for (int o = 0; o < out; o++) peft_qmatrix_decode(&W, o, 0, in, w + (size_t)o * in);
        peft_gemm(0, 1, N, out, in, x, in, w, in, 0.0f, ref, out);
        CHECK(memcmp(ref, y, sizeof(float) * N * out) == 0,
              "fallback %dx%dx%d: x·Wᵀ is not the fp32 GEMM's", N, out, in);
        memcpy(ref, g0, sizeof(float) * N * in);
        peft_gemm(0, 0, N, in, out, dy, out, w, in, 1.0f, ref, in);
        CHECK(memcmp(ref, dx, sizeof(float) * N * in) == 0, "fallback %dx%dx%d: dy·W is not the fp32 GEMM's",
              N, out, in);
        if (dot) {
            unsetenv("PEFT_NO_BF16");
            REQUIRE(bf16_products(&W, x, dy, g0, N, yd, dxd), "products: %s", peft_last_error());
            double u = ldexp(1.0, -24), worst_pair = 0;
            for (int i = 0; i < N; i++)
                for (int o = 0; o < out; o++) {
                    double a = 0, da = 0;
                    for (int k = 0; k < in; k++) {
                        float xv = x[(size_t)i * in + k], wv = w[(size_t)o * in + k];
                        a += fabs((double)xv * wv);
                        da += fabs((double)(xv - bf16_round(xv)) * wv);
                    }
                    double bound = 2.0 * (in + 1) * u * (a + da) + da + 1e-30;
                    double e = fabs((double)yd[(size_t)i * out + o] - y[(size_t)i * out + o]) / bound;
                    if (e > worst_pair) worst_pair = e;
                }
            CHECK(worst_pair <= 1.0, "%dx%dx%d: dot and fallback differ by %.3g times the bound", N, out, in,
                  worst_pair);
            CHECK(memcmp(yd, y, sizeof(float) * N * out) != 0, "%dx%dx%d: the dot kernel did not run", N, out,
                  in);
        }
        peft_qmatrix_free(&W);
        free(x); free(dy); free(g0); free(y); free(dx); free(yd); free(dxd); free(w); free(ref);
    }
    if (was) setenv("PEFT_NO_BF16", saved, 1);
    else unsetenv("PEFT_NO_BF16");
}

/* A LoRA run in bf16 follows the fp32 one: 40 steps of the same batches,
   every loss within 1% of fp32's (measured: 0.18% at worst); the frozen linears
   take 16 bits a weight, the trained ones stay fp32, and set_precision
   fp32 brings float weights back. */
/* Data-parallel steps with bf16 frozen linears (the bf16 products on two
   threads at once): LoRA gets the one-tape bf16 step's loss and gradients,
   to fp32 rounding (bound 1e-5: both sides round the same bf16 inputs). */
TEST(test_bf16_data_parallel) {
    peft_model *a, *b;
    REQUIRE_OK(peft_model_from_preset(&a, "tiny", 1, 9));
    REQUIRE_OK(peft_model_from_preset(&b, "tiny", 1, 9));
    peft_method m = peft_method_defaults(PEFT_LORA);
    m.lora_r = 8;
    m.lora_targets = 0x7F;
    m.lora_dropout = 0.1f;
    m.seed = 3;
    REQUIRE_OK(peft_attach(a, &m));
    REQUIRE_OK(peft_attach(b, &m));
    enum { B = 4, T = 32 };
    int tok[B * T], tgt[B * T], V = a->cfg.vocab_size;
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int)((i * 37 + i / T) % V);
        tgt[i] = (tok[i] * 3 + 1) % V;
    }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 3e-3f;
    o.precision = PEFT_PRECISION_BF16;
    char why[200];
    double gap = th_data_parallel_gap(a, b, &o, tok, tgt, B, T, why, sizeof why);
    if (gap < 0 && strstr(why, "without threads")) SKIP("%s", why);
    CHECK(gap >= 0 && gap < 1e-5, "bf16: shards vs one tape: gap %.3g (%s)", gap, why);
    peft_model_free(a);
    peft_model_free(b);
}

TEST(test_bf16_training_follows_fp32) {
    peft_model *f, *b;
    REQUIRE_OK(peft_model_from_preset(&f, "tiny", 1, 9));
    REQUIRE_OK(peft_model_from_preset(&b, "tiny", 1, 9));
    peft_method m = peft_method_defaults(PEFT_LORA);
    m.lora_r = 8;
    m.lora_targets = 0x7F;
    m.seed = 3;
    REQUIRE_OK(peft_attach(f, &m));
    REQUIRE_OK(peft_attach(b, &m));
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 3e-3f;
    peft_trainer *tf = peft_trainer_new(f, &o);
    o.precision = PEFT_PRECISION_BF16;
    peft_trainer *tb = peft_trainer_new(b, &o);
    REQUIRE(tf && tb, "trainers: %s", peft_last_error());
    CHECK(fabs(peft_model_linear_bits(b) - 16.0) < 1e-9, "bf16 linears take %.3f bits",
          peft_model_linear_bits(b));
    CHECK(b->layers[0].lin[PEFT_Q].qm && !b->layers[0].lin[PEFT_Q].w->data, "q_proj is not stored in bf16");
    CHECK(b->head_bf16 && b->lm_head->data, "the frozen (tied) lm_head has no bf16 copy beside its floats");
    int B = 4, T = 32, V = f->cfg.vocab_size;
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    double worst = 0;
    float lf = 0, lb = 0, first = 0;
    for (int s = 0; s < 40; s++) {
        for (int i = 0; i < B * T; i++) {                 /* a learnable pattern: next = 3·tok + 1 */
            tok[i] = (int)((i * 37 + (s % 4) * 11 + i / T) % V);
            tgt[i] = (tok[i] * 3 + 1) % V;
        }
        REQUIRE_OK(peft_trainer_step(tf, tok, tgt, B, T, &lf));
        REQUIRE_OK(peft_trainer_step(tb, tok, tgt, B, T, &lb));
        if (s == 0) first = lf;
        double rel = fabs((double)lb - lf) / lf;
        if (rel > worst) worst = rel;
    }
    CHECK(lf < 0.9f * first, "fp32 loss %.4f -> %.4f: the run does not learn", first, lf);
    CHECK(worst <= 0.01, "bf16 losses differ from fp32 by up to %.3g%% (last %.5f vs %.5f)", 100 * worst, lb,
          lf);
    /* full fine-tuning: nothing is frozen, nothing turns bf16 */
    peft_model *full;
    REQUIRE_OK(peft_model_from_preset(&full, "tiny", 1, 9));
    peft_method fm = peft_method_defaults(PEFT_FULL);
    REQUIRE_OK(peft_attach(full, &fm));
    REQUIRE_OK(peft_model_set_precision(full, PEFT_PRECISION_BF16));
    CHECK(!full->layers[0].lin[PEFT_Q].qm && full->layers[0].lin[PEFT_Q].w->data,
          "a trained weight must stay fp32");
    peft_model_free(full);
    /* back to fp32: float weights, equal to the bf16 values */
    uint16_t h0;
    memcpy(&h0, b->layers[1].lin[PEFT_DOWN].qm->data, 2);
    REQUIRE_OK(peft_model_set_precision(b, PEFT_PRECISION_FP32));
    CHECK(!b->layers[1].lin[PEFT_DOWN].qm && b->layers[1].lin[PEFT_DOWN].w->data &&
              b->layers[1].lin[PEFT_DOWN].w->data[0] == peft_bf16_to_f32(h0),
          "fp32 again: down_proj is not float, or not its bf16 value");
    peft_precision p;
    CHECK(peft_precision_parse("fp16", &p) == PEFT_ERR_ARG && strstr(peft_last_error(), "fp16"),
          "precision fp16 must be refused by name: %s", peft_last_error());
    free(tok);
    free(tgt);
    peft_trainer_free(tf);
    peft_trainer_free(tb);
    peft_model_free(f);
    peft_model_free(b);
}

/* The command line: logits of the transformers fixture model with
   --precision bf16 stay within bf16's rounding of fp32's (and are not
   fp32's), a bad value is refused by name, bench reports the bf16 base. */
TEST(test_cli_precision_bf16) {
    char out[4096], l1[600], l2[600];
    snprintf(l1, sizeof l1, "%s/bf16_f32.bin", th_tmpdir());
    snprintf(l2, sizeof l2, "%s/bf16_b16.bin", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --tokens 1,5,9,3,7 --out %s",
                      th_fixtures(), l1) == 0, "logits: %s", out);
    CHECK(th_run_peft(out, sizeof out,
                      "logits --model %s/llama_mha --tokens 1,5,9,3,7 --out %s --precision bf16",
                      th_fixtures(), l2) == 0,
          "logits bf16: %s", out);
    unsigned char *d1, *d2;
    size_t n1, n2;
    if (peft_read_file(l1, &d1, &n1) == PEFT_OK && peft_read_file(l2, &d2, &n2) == PEFT_OK) {
        double rel = n1 == n2 ? th_rel_err_f((float *)d2, (float *)d1, (long)(n1 / 4)) : 1.0;
        CHECK(n1 == n2 && rel < 0.03 && rel > 0, "bf16 logits: relative difference %.3g from fp32's", rel);
        free(d1);
        free(d2);
    } else
        CHECK(0, "logits files missing");
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --tokens 1 --out %s --precision fp16",
                      th_fixtures(), l2) == 2 && strstr(out, "precision") && strstr(out, "fp16"),
          "--precision fp16 must be refused by name: %s", out);
    CHECK(th_run_peft(out, sizeof out, "bench --preset tiny --method lora --batch 1 --seq 8 --steps 1 "
                      "--precision bf16") == 0 && strstr(out, "16.000 (bf16)"),
          "bench --precision bf16: %s", out);
}
