/* 4-bit storage against bitsandbytes (tests/fixtures/nf4.safetensors from
   tools/ref/make_nf4_fixtures.py). Packed bytes, fp32 absmax, nested absmax
   and dequantized values must be identical, with one documented exception:
   the sign of zero: bnb's CPU FP4 decoders disagree with each other (its C
   kernel decodes code 8 as −0 on some shapes, its torch path as +0), so
   dequantized values are compared with ==, not memcmp
   (the 8-bit codes of double quantization use bnb's grid snapping and are
   compared byte for byte). */
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
                peft_q4 q;                    /* from the raw tensor alone: our own offset */
                REQUIRE_OK(peft_q4_quantize(&q, w, n, t ? PEFT_FP4 : PEFT_NF4, dq, NULL));
                if (dq) CHECK(q.offset == offset[0], "%s: offset %.9g vs bnb %.9g", p, q.offset, offset[0]);
                REQUIRE(packed && np == (n + 1) / 2, "%s packed", p);
                CHECK(memcmp(packed, q.packed, np) == 0, "%s: packed bytes differ from bitsandbytes", p);
                snprintf(k, sizeof k, "%s.absmax", p);
                if (dq) {
                    uint8_t *qa = fx_u8(k, &na);
                    REQUIRE(qa && na == q.n_blocks, "%s: absmax codes", p);
                    long same = 0;
                    for (long b = 0; b < na; b++) same += qa[b] == q.qabsmax[b];
                    CHECK(same == na, "%s: 8-bit absmax codes: %ld of %ld equal bnb's", p, same, na);
                    snprintf(k, sizeof k, "%s.nested_absmax", p);
                    float *nest = fx(k, &nn);
                    CHECK(nest && nn == q.n_nested && memcmp(nest, q.nested_absmax, 4 * nn) == 0,
                          "%s: nested absmax differs", p);
                    snprintf(k, sizeof k, "%s.nested_code", p);
                    float *code = fx(k, &nd);
                    CHECK(code && memcmp(code, peft_dynamic_map(), 1024) == 0, "%s: nested map differs", p);
                    free(qa); free(nest); free(code); free(offset);
                } else {
                    float *am = fx(k, &na);
                    CHECK(am && na == q.n_blocks && memcmp(am, q.absmax, 4 * na) == 0, "%s: absmax differs",
                          p);
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

/* A random W [out, in] in NF4 (double quantization) with its dequantized
   floats in wd, and a trainable random x [N, in]; NULL when quantizing fails. */
static peft_tensor *q4_case(peft_rng *r, int N, int in, int out, peft_q4 *q, float **wf, float **wd) {
    *wf = malloc(sizeof(float) * out * in);
    *wd = malloc(sizeof(float) * out * in);
    for (int i = 0; i < out * in; i++) (*wf)[i] = peft_rng_normal(r);
    if (peft_q4_quantize(q, *wf, (int64_t)out * in, PEFT_NF4, 1, NULL) != PEFT_OK) return NULL;
    peft_q4_dequantize(q, 0, (int64_t)out * in, *wd);
    int64_t sx[2] = { N, in };
    peft_tensor *x = peft_param_new("x", 2, sx);
    peft_param_set_trainable(x, 1);
    for (int i = 0; i < N * in; i++) x->data[i] = peft_rng_normal(r);
    return x;
}

/* the 4-bit linear op: forward equals x·dequant(W)ᵀ in double, backward
   matches finite differences of that reference (W frozen) */
TEST(test_fd_q4_linear) {
    int N = 5, in = 70, out = 9;     /* blocks straddle rows: 70 is not a multiple of 64 */
    peft_rng r;
    peft_rng_seed(&r, 8);
    float *wf, *wd;
    peft_q4 q;
    peft_tensor *x = q4_case(&r, N, in, out, &q, &wf, &wd);
    REQUIRE(x, "quantize: %s", peft_last_error());
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
    /* the fused QLoRA op equals q4_linear + the LoRA term (both checked by
       finite differences on their own) in output and in every gradient */
    int rk = 3;
    int64_t sa[2] = { rk, in }, sb[2] = { out, rk };
    peft_tensor *A = peft_param_new("A", 2, sa), *Bm = peft_param_new("B", 2, sb);
    peft_param_set_trainable(A, 1);
    peft_param_set_trainable(Bm, 1);
    for (int i = 0; i < rk * in; i++) A->data[i] = peft_rng_normal(&r);
    for (int i = 0; i < out * rk; i++) Bm->data[i] = peft_rng_normal(&r);
    float *grads[2][3];
    float *ys[2];
    for (int k = 0; k < 2; k++) {
        memset(x->grad, 0, sizeof(float) * N * in);
        memset(A->grad, 0, sizeof(float) * rk * in);
        memset(Bm->grad, 0, sizeof(float) * out * rk);
        peft_graph_reset(g);
        peft_tensor *yk = k ? peft_add(g, peft_q4_linear(g, x, &q, out, in),
                                       peft_lora_linear(g, x, NULL, A, Bm, 0.7f, 0, NULL))
                            : peft_qlora_linear(g, x, &q, A, Bm, 0.7f, 0, NULL);
        REQUIRE(yk, "qlora forward %d: %s", k, peft_last_error());
        REQUIRE_OK(peft_backward_seed(g, yk, R));
        ys[k] = malloc(sizeof(float) * N * out);
        memcpy(ys[k], yk->data, sizeof(float) * N * out);
        peft_tensor *ts[3] = { x, A, Bm };
        for (int t = 0; t < 3; t++) {
            grads[k][t] = malloc(sizeof(float) * ts[t]->n);
            memcpy(grads[k][t], ts[t]->grad, sizeof(float) * ts[t]->n);
        }
    }
    CHECK(th_rel_err_f(ys[0], ys[1], N * out) < 1e-6, "qlora_linear output vs q4_linear + lora term");
    CHECK(th_rel_err_f(grads[0][0], grads[1][0], N * in) < 1e-6, "qlora_linear dx");
    CHECK(th_rel_err_f(grads[0][1], grads[1][1], rk * in) < 1e-6, "qlora_linear dA");
    CHECK(th_rel_err_f(grads[0][2], grads[1][2], out * rk) < 1e-6, "qlora_linear dB");
    for (int k = 0; k < 2; k++) { free(ys[k]); for (int t = 0; t < 3; t++) free(grads[k][t]); }
    peft_param_free(A); peft_param_free(Bm);
    peft_graph_free(g);
    peft_param_free(x);
    peft_q4_free(&q);
    free(wf); free(wd);
}

/* The 4-bit products decode W straight into the GEMM's packed panels. On
   shapes with several K and column slices, ragged strips and rows that
   start on an odd nibble (in = 701) the results equal peft_gemm on the
   dequantized floats bit for bit: the panels hold the same numbers and the
   same kernels add them in the same order. Both thread counts. */
TEST(test_q4_linear_packs_like_floats) {
    int N = 37, in = 701, out = 1100;
    peft_rng r;
    peft_rng_seed(&r, 21);
    float *wf, *wd;
    peft_q4 q;
    peft_tensor *x = q4_case(&r, N, in, out, &q, &wf, &wd);
    REQUIRE(x, "quantize: %s", peft_last_error());
    float *R = malloc(sizeof(float) * N * out),
          *ref = malloc(sizeof(float) * (size_t)N * (out > in ? out : in));
    for (int i = 0; i < N * out; i++) R[i] = peft_rng_normal(&r);
    peft_graph *g = peft_graph_new();
    int threads = peft_get_threads();
    for (int t = 1; t <= 2; t++) {
        peft_set_threads(t);
        peft_graph_reset(g);
        memset(x->grad, 0, sizeof(float) * N * in);
        peft_tensor *y = peft_q4_linear(g, x, &q, out, in);
        REQUIRE(y, "forward: %s", peft_last_error());
        REQUIRE_OK(peft_backward_seed(g, y, R));
        peft_gemm(0, 1, N, out, in, x->data, in, wd, in, 0.0f, ref, out);
        CHECK(memcmp(ref, y->data, sizeof(float) * N * out) == 0,
              "%d threads: x·Wᵀ differs from the float product (rel %.3g)", t,
              th_rel_err_f(ref, y->data, N * out));
        peft_gemm(0, 0, N, in, out, R, out, wd, in, 0.0f, ref, in);
        CHECK(memcmp(ref, x->grad, sizeof(float) * N * in) == 0,
              "%d threads: dy·W differs from the float product (rel %.3g)", t,
              th_rel_err_f(ref, x->grad, N * in));
    }
    peft_set_threads(threads);
    peft_graph_free(g);
    peft_param_free(x);
    peft_q4_free(&q);
    free(wf); free(wd); free(R); free(ref);
}

/* Folders written by `peft quantize` load in transformers + bitsandbytes with
   the same weights (tools/ref/check_bnb_folder.py recorded transformers'
   logits); peft.h must reproduce those logits from the same folder. */
TEST(test_bnb_folders_match_transformers) {
    const char *names[] = { "q4_nf4_dq", "q4_fp4" };
    char base[512];
    snprintf(base, sizeof base, "%s/llama_w64/ref.safetensors", th_fixtures());
    float *tf; long nt;
    REQUIRE(th_read_ref(base, "tokens", &tf, &nt), "tokens");
    int tok[64];
    for (long i = 0; i < nt; i++) tok[i] = (int)tf[i];
    for (int k = 0; k < 2; k++) {
        char dir[512], path[700];
        snprintf(dir, sizeof dir, "%s/%s", th_fixtures(), names[k]);
        snprintf(path, sizeof path, "%s/result.json", dir);
        peft_json *j;
        REQUIRE_OK(peft_json_load(&j, path));
        const peft_json *ok = peft_json_get(j, "ok");
        CHECK(ok && ok->number == 1, "%s: transformers did not load it with identical weights", names[k]);
        peft_json_free(j);
        peft_model *m;
        REQUIRE_OK(peft_model_load(&m, dir));
        CHECK(m->cfg.q4 && m->layers[0].lin[PEFT_Q].q4 && !m->layers[0].lin[PEFT_Q].w->data,
              "%s: loaded as 4-bit", names[k]);
        double bits = peft_model_linear_bits(m);
        CHECK(k == 0 ? bits < 4.2 : fabs(bits - 4.5) < 1e-9, "%s: %.4f bits per linear parameter", names[k],
              bits);
        snprintf(path, sizeof path, "%s/bnb_logits.safetensors", dir);
        float *ref; long n;
        REQUIRE(th_read_ref(path, "logits", &ref, &n), "logits");
        peft_graph *g = peft_graph_new();
        peft_tensor *lg = peft_model_forward(m, g, tok, 2, (int)(nt / 2));
        REQUIRE(lg && lg->n == n, "forward: %s", peft_last_error());
        double e = th_rel_err_f(lg->data, ref, n);
        CHECK(e < 1e-4, "%s: logits vs transformers+bitsandbytes rel err %.3g", names[k], e);
        /* writing it again gives the same bytes */
        char again[512];
        snprintf(again, sizeof again, "%s/%s_again", th_tmpdir(), names[k]);
        REQUIRE_OK(peft_model_save(m, again));
        unsigned char *a, *b; size_t na, nb;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        REQUIRE_OK(peft_read_file(path, &a, &na));
        snprintf(path, sizeof path, "%s/model.safetensors", again);
        REQUIRE_OK(peft_read_file(path, &b, &nb));
        CHECK(na == nb && memcmp(a, b, na) == 0, "%s: re-saving changes the file", names[k]);
        free(a); free(b); free(ref);
        peft_graph_free(g);
        peft_model_free(m);
    }
    free(tf);
}

/* QLoRA: at init the adapted model is the 4-bit base bit for bit; trained
   on the same data and seed it tracks fp32 LoRA closely. */
TEST(test_qlora_zero_init_and_vs_lora) {
    char base[512];
    snprintf(base, sizeof base, "%s/llama_w64", th_fixtures());
    peft_model *q0, *q, *l;
    REQUIRE_OK(peft_model_load(&q0, base));
    REQUIRE_OK(peft_model_quantize(q0, PEFT_NF4, 1));
    REQUIRE_OK(peft_model_load(&q, base));
    REQUIRE_OK(peft_model_load(&l, base));
    peft_method mq = peft_method_defaults(PEFT_QLORA), ml = peft_method_defaults(PEFT_LORA);
    mq.lora_r = ml.lora_r = 8; mq.lora_alpha = ml.lora_alpha = 16; mq.lora_dropout = 0;
    ml.lora_targets = mq.lora_targets;
    mq.seed = ml.seed = 3;
    REQUIRE_OK(peft_attach(q, &mq));
    REQUIRE_OK(peft_attach(l, &ml));
    CHECK(peft_model_trainable_count(q) == peft_model_trainable_count(l), "same LoRA parameters");
    int tok[4 * 16], tgt[4 * 16];
    for (int i = 0; i < 64; i++) { tok[i] = (i * 7) % 64; tgt[i] = (tok[i] * 3 + 1) % 64; }
    peft_graph *g0 = peft_graph_new(), *g1 = peft_graph_new();
    peft_tensor *a = peft_model_forward(q0, g0, tok, 4, 16), *b = peft_model_forward(q, g1, tok, 4, 16);
    REQUIRE(a && b, "forward");
    CHECK(memcmp(a->data, b->data, sizeof(float) * a->n) == 0, "QLoRA at init differs from its 4-bit base");
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 5e-3f;
    peft_trainer *tq = peft_trainer_new(q, &o), *tl = peft_trainer_new(l, &o);
    float lq = 0, ll = 0, first = 0, x;
    for (int s = 0; s < 40; s++) {
        REQUIRE_OK(peft_trainer_step(tq, tok, tgt, 4, 16, &x));
        if (s == 0) first = x;
        if (s >= 35) lq += x / 5;
        REQUIRE_OK(peft_trainer_step(tl, tok, tgt, 4, 16, &x));
        if (s >= 35) ll += x / 5;
    }
    /* the base differs by NF4's rounding only: the final losses must agree
       to within 10% of the starting loss, and both must have learned */
    CHECK(fabsf(lq - ll) < 0.1f * first, "QLoRA %.4f vs LoRA %.4f (start %.4f)", lq, ll, first);
    CHECK(lq < 0.6f * first && ll < 0.6f * first, "both learn: %.3f, %.3f from %.3f", lq, ll, first);
    CHECK(peft_lora_merge(q) == PEFT_ERR_UNSUPPORTED, "merging into a 4-bit base is refused");
    peft_trainer_free(tq); peft_trainer_free(tl);
    peft_graph_free(g0); peft_graph_free(g1);
    peft_model_free(q0); peft_model_free(q); peft_model_free(l);
}

/* 8-bit blockwise quantization (bnb's quantize_blockwise, signed and
   unsigned dynamic maps, blocks of 256) byte for byte. */
TEST(test_blockwise8_matches_bnb) {
    long n, nq, na, nm;
    float *x = fx("b8_x", &n), *um = fx("unsigned_map", &nm);
    REQUIRE(x && um && nm == 256, "fixture");
    CHECK(memcmp(um, peft_dynamic_map_unsigned(), 1024) == 0, "unsigned dynamic map differs from bnb's");
    const char *names[2] = { "b8_signed", "b8_unsigned" };
    for (int k = 0; k < 2; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s.q", names[k]);
        uint8_t *q = fx_u8(key, &nq);
        snprintf(key, sizeof key, "%s.absmax", names[k]);
        float *am = fx(key, &na);
        REQUIRE(q && am && nq == n, "fixture %s", names[k]);
        float *in = malloc(sizeof(float) * n), *myam = malloc(sizeof(float) * na);
        uint8_t *mine = malloc((size_t)n);
        for (long i = 0; i < n; i++) in[i] = k ? fabsf(x[i]) : x[i];
        peft_quantize_blockwise8(in, n, 256, k ? um : peft_dynamic_map(), mine, myam);
        long same = 0;
        for (long i = 0; i < n; i++) same += mine[i] == q[i];
        CHECK(same == n, "%s: %ld of %ld codes equal bnb's", names[k], same, n);
        CHECK(memcmp(myam, am, sizeof(float) * na) == 0, "%s: absmax", names[k]);
        free(in); free(myam); free(mine); free(q); free(am);
    }
    free(x); free(um);
}

/* A folder saved by transformers + bitsandbytes with bnb_4bit_quant_storage=bfloat16
   (FSDP-QLoRA): the packed bytes are stored as BF16 [n/4, 1] (tools/ref/make_bnb_storage_fixture.py).
   It loads as 4-bit and its logits equal transformers'. */
TEST(test_bnb_quant_storage_bf16) {
    char dir[512], path[700];
    snprintf(dir, sizeof dir, "%s/q4_nf4_bf16storage", th_fixtures());
    snprintf(path, sizeof path, "%s/bnb_logits.safetensors", dir);
    float *tf, *ref; long nt, n;
    REQUIRE(th_read_ref(path, "tokens", &tf, &nt) && th_read_ref(path, "logits", &ref, &n), "fixture");
    int tok[64];
    for (long i = 0; i < nt && i < 64; i++) tok[i] = (int)tf[i];
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    CHECK(m->cfg.q4 && m->cfg.q4_double && m->layers[0].lin[PEFT_DOWN].q4, "loaded as 4-bit nf4 + double "
                                                                           "quantization");
    peft_graph *g = peft_graph_new();
    peft_tensor *lg = peft_model_forward(m, g, tok, 2, (int)(nt / 2));
    REQUIRE(lg && lg->n == n, "forward: %s", peft_last_error());
    double e = th_rel_err_f(lg->data, ref, n);
    CHECK(e < 1e-4, "logits vs transformers+bitsandbytes (bf16 storage) rel err %.3g", e);
    peft_graph_free(g);
    peft_model_free(m);
    free(tf); free(ref);
    /* a storage dtype bitsandbytes does not have is refused by name */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/q4_storage_bad", th_tmpdir());
    char cmd[2400];
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && cp -r %s %s && sed -i 's/\"bnb_4bit_quant_storage\": \"bfloat16\"/"
             "\"bnb_4bit_quant_storage\": \"float64\"/' %s/config.json",
             bad, dir, bad, bad);
    REQUIRE(system(cmd) == 0, "setup");
    CHECK(peft_model_load(&m, bad) != PEFT_OK && strstr(peft_last_error(), "bnb_4bit_quant_storage"),
          "float64 storage: %s", peft_last_error());
}
