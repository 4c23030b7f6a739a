/* 4-bit storage against bitsandbytes (tests/fixtures/nf4.safetensors from
   tools/ref/make_nf4_fixtures.py). Packed bytes, fp32 absmax, nested absmax
   and dequantized values must be identical, with two documented exceptions:
   - the sign of zero: bnb's CPU FP4 decoders disagree with each other (its C
     kernel decodes code 8 as −0 on some shapes, its torch path as +0), so
     dequantized values are compared with ==, not memcmp;
   - the 8-bit codes of double quantization: bnb's bucketed search lands one
     code off for a few values in crowded regions; ours brackets exactly.
     They must agree on ≥ 97% of blocks and never differ by more than 4
     codes (observed: 7 of 257 blocks, 1 code each). */
#include "harness.h"

static float *fx(const char *name, long *n) {
    char path[512];
    float *d;
    snprintf(path, sizeof path, "%s/nf4.safetensors", th_fixtures());
    return th_read_ref(path, name, &d, n) ? d : NULL;
}

/* raw bytes of a U8 tensor */
static uint8_t *fx_u8(const char *name, long *n) {
    char path[512];
    snprintf(path, sizeof path, "%s/nf4.safetensors", th_fixtures());
    peft_safetensors st;
    if (peft_st_open(&st, path) != PEFT_OK) return NULL;
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

TEST(test_q4_codes_match_bnb) {
    long n;
    float *nf4 = fx("nf4_code", &n), *fp4 = fx("fp4_code", &n), *dyn = fx("dynamic_map", &n);
    REQUIRE(nf4 && fp4 && dyn && n == 256, "fixture");
    CHECK(memcmp(nf4, peft_q4_code(PEFT_NF4), 64) == 0, "NF4 code table");
    CHECK(memcmp(fp4, peft_q4_code(PEFT_FP4), 64) == 0, "FP4 code table");
    CHECK(memcmp(dyn, peft_dynamic_map(), 1024) == 0, "dynamic 8-bit map");
    free(nf4); free(fp4); free(dyn);
}

TEST(test_q4_bytes_match_bnb) {
    const char *types[2] = { "nf4", "fp4" };
    for (int i = 0; i < 4; i++) {
        char name[64];
        long n;
        snprintf(name, sizeof name, "w%d", i);
        float *w = fx(name, &n);
        REQUIRE(w, "fixture %s", name);
        for (int t = 0; t < 2; t++)
            for (int dq = 0; dq < 2; dq++) {
                char p[64], k[96];
                long np, na, nn, nd, no;
                snprintf(p, sizeof p, "%s_%d_%d", types[t], dq, i);
                snprintf(k, sizeof k, "%s.packed", p);
                uint8_t *packed = fx_u8(k, &np);
                float *offset = NULL;
                if (dq) { snprintf(k, sizeof k, "%s.offset", p); offset = fx(k, &no); }
                peft_q4 q;
                REQUIRE_OK(peft_q4_quantize(&q, w, n, t ? PEFT_FP4 : PEFT_NF4, dq, offset));
                REQUIRE(packed && np == (n + 1) / 2, "%s packed", p);
                CHECK(memcmp(packed, q.packed, np) == 0, "%s: packed bytes differ from bitsandbytes", p);
                snprintf(k, sizeof k, "%s.absmax", p);
                if (dq) {
                    uint8_t *qa = fx_u8(k, &na);
                    REQUIRE(qa && na == q.n_blocks, "%s: absmax codes", p);
                    long same = 0, worst = 0;
                    for (long b = 0; b < na; b++) {
                        long dlt = labs((long)qa[b] - (long)q.qabsmax[b]);
                        same += dlt == 0;
                        if (dlt > worst) worst = dlt;
                    }
                    CHECK(same >= 0.97 * na && worst <= 4, "%s: 8-bit absmax codes: %ld of %ld equal, worst %ld", p, same, na, worst);
                    snprintf(k, sizeof k, "%s.nested_absmax", p);
                    float *nest = fx(k, &nn);
                    CHECK(nest && nn == q.n_nested && memcmp(nest, q.nested_absmax, 4 * nn) == 0, "%s: nested absmax differs", p);
                    snprintf(k, sizeof k, "%s.nested_code", p);
                    float *code = fx(k, &nd);
                    CHECK(code && memcmp(code, peft_dynamic_map(), 1024) == 0, "%s: nested map differs", p);
                    /* our own mean (double accumulation) against torch's float mean */
                    peft_q4 own;
                    REQUIRE_OK(peft_q4_quantize(&own, w, n, t ? PEFT_FP4 : PEFT_NF4, 1, NULL));
                    CHECK(fabsf(own.offset - offset[0]) <= 2e-7f * fabsf(offset[0]), "%s: offset %.9g vs bnb %.9g", p, own.offset, offset[0]);
                    peft_q4_free(&own);
                    free(qa); free(nest); free(code); free(offset);
                } else {
                    float *am = fx(k, &na);
                    CHECK(am && na == q.n_blocks && memcmp(am, q.absmax, 4 * na) == 0, "%s: absmax differs", p);
                    free(am);
                }
                snprintf(k, sizeof k, "%s.deq", p);
                float *deq = fx(k, &nd);
                if (deq) {
                    float *mine = malloc(sizeof(float) * n);
                    peft_q4_dequantize(&q, 0, n, mine);
                    long bad = 0;
                    for (long j = 0; j < n; j++) bad += !(mine[j] == deq[j]);
                    CHECK(bad == 0, "%s: %ld dequantized weights differ from bnb", p, bad);
                    free(mine); free(deq);
                }
                peft_q4_free(&q);
                free(packed);
            }
        free(w);
    }
}

TEST(test_q4_bits_per_parameter) {
    int64_t n = 64 * 256 * 8;
    float *w = malloc(sizeof(float) * n);
    peft_rng r;
    peft_rng_seed(&r, 3);
    for (int64_t i = 0; i < n; i++) w[i] = 0.02f * peft_rng_normal(&r);
    peft_q4 q;
    REQUIRE_OK(peft_q4_quantize(&q, w, n, PEFT_NF4, 1, NULL));
    double bits = 8.0 * (double)peft_q4_bytes(&q) / (double)n;
    CHECK(fabs(bits - (4 + 8.0 / 64 + 32.0 / (64 * 256))) < 1e-3, "NF4+DQ: %.4f bits per parameter", bits);
    peft_q4_free(&q);
    REQUIRE_OK(peft_q4_quantize(&q, w, n, PEFT_NF4, 0, NULL));
    bits = 8.0 * (double)peft_q4_bytes(&q) / (double)n;
    CHECK(fabs(bits - 4.5) < 1e-6, "NF4: %.4f bits per parameter", bits);
    peft_q4_free(&q);
    free(w);
}

/* the 4-bit linear op: forward equals x·dequant(W)ᵀ in double, backward
   matches finite differences of that reference (W frozen) */
TEST(test_fd_q4_linear) {
    int N = 5, in = 70, out = 9;     /* blocks straddle rows: 70 is not a multiple of 64 */
    peft_rng r;
    peft_rng_seed(&r, 8);
    float *wf = malloc(sizeof(float) * out * in), *wd = malloc(sizeof(float) * out * in);
    for (int i = 0; i < out * in; i++) wf[i] = peft_rng_normal(&r);
    peft_q4 q;
    REQUIRE_OK(peft_q4_quantize(&q, wf, (int64_t)out * in, PEFT_NF4, 1, NULL));
    peft_q4_dequantize(&q, 0, (int64_t)out * in, wd);
    int64_t sx[2] = { N, in };
    peft_tensor *x = peft_param_new("x", 2, sx);
    peft_param_set_trainable(x, 1);
    for (int i = 0; i < N * in; i++) x->data[i] = peft_rng_normal(&r);
    peft_graph *g = peft_graph_new();
    peft_tensor *y = peft_q4_linear(g, x, &q, out, in);
    REQUIRE(y, "forward: %s", peft_last_error());
    float R[5 * 9];
    for (int i = 0; i < N * out; i++) R[i] = peft_rng_normal(&r);
    REQUIRE_OK(peft_backward_seed(g, y, R));
    double ferr = 0, gerr = 0, gmax = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < in; i++) s += (double)x->data[n * in + i] * wd[o * in + i];
            ferr = fmax(ferr, fabs(s - y->data[n * out + o]) / (fabs(s) + 1e-3));
        }
    /* L = Σ R ⊙ x·Wᵀ is linear in x: the central difference is exact in double */
    for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) {
            double gref = 0;
            for (int o = 0; o < out; o++) gref += R[n * out + o] * (double)wd[o * in + i];
            gerr = fmax(gerr, fabs(gref - x->grad[n * in + i]));
            gmax = fmax(gmax, fabs(gref));
        }
    CHECK(ferr < 1e-4, "q4_linear forward rel err %.3g", ferr);
    CHECK(gerr / gmax < 1e-5, "q4_linear input gradient rel err %.3g", gerr / gmax);
    peft_graph_free(g);
    peft_param_free(x);
    peft_q4_free(&q);
    free(wf); free(wd);
}
