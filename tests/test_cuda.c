/* build/test-cuda: every CUDA kernel of peft_cuda.cu against the CPU op of
   peft.h on the same inputs, forward and every gradient (`make cuda`).
   Without a CUDA device (or driver) it prints "no CUDA device: skipped" and
   exits 0. `build/test-cuda NAME` runs the cases whose name holds NAME.

   Error measure: max_i |gpu_i − cpu_i| / max(max_i |cpu_i|, 1e-30) — the
   error relative to the tensor's scale, so that entries that cancel to
   near zero (gradients) do not demand an impossible relative precision.
   Each case states its tolerance and why. */
#define PEFT_IMPLEMENTATION
/* the library's memory through the CUDA heap (managed memory once the device is on), as build/peft-cuda:
   the backend-table cases run the library's own model code on the device */
#define PEFT_MALLOC(n) peft_cuda_heap_alloc(n)
#define PEFT_REALLOC(p, n) peft_cuda_heap_realloc(p, n)
#define PEFT_FREE(p) peft_cuda_heap_free(p)
#include "../peft.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* the tests' free() calls may meet the library's managed blocks: through the heap */
#define free(p) peft_cuda_heap_free(p)
#define realloc(p, n) peft_cuda_heap_realloc(p, n)

static int n_pass, n_fail, n_skip, case_failed;
static const char *filter;
static peft_rng rng;

static void fill(float *p, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) p[i] = (2.0f * peft_rng_uniform(&rng) - 1.0f) * scale;
}
static float *host(int64_t n, float scale) {
    float *p = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!p) {
        fprintf(stderr, "test-cuda: out of host memory\n");
        exit(1);
    }
    fill(p, n, scale);
    return p;
}
/* a device copy of n floats (from h, or zeros) */
static float *dev(const float *h, int64_t n) {
    float *d = (float *)peft_cuda_malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!d) {
        fprintf(stderr, "test-cuda: %s\n", peft_cuda_error());
        exit(1);
    }
    if (h ? peft_cuda_upload(d, h, sizeof(float) * (size_t)n)
          : peft_cuda_zero(d, sizeof(float) * (size_t)n)) {
        fprintf(stderr, "test-cuda: %s\n", peft_cuda_error());
        exit(1);
    }
    return d;
}
static int *dev_ints(const int *h, int n) {
    int *d = (int *)peft_cuda_malloc(sizeof(int) * (size_t)n);
    if (!d || peft_cuda_upload(d, h, sizeof(int) * (size_t)n)) {
        fprintf(stderr, "%s\n", peft_cuda_error());
        exit(1);
    }
    return d;
}
static void ok(int rc, const char *what) {
    if (rc) {
        printf("    %s: %s\n", what, peft_cuda_error());
        case_failed = 1;
    }
}
/* compares a device tensor with the CPU's values, within tol of their scale */
static void cmp(const char *what, const float *d, const float *cpu, int64_t n, double tol) {
    float *g = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!g || peft_cuda_download(g, d, sizeof(float) * (size_t)n)) {
        printf("    %s: download failed: %s\n", what, peft_cuda_error());
        case_failed = 1;
        free(g);
        return;
    }
    double scale = 1e-30, err = 0.0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)cpu[i]));
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - cpu[i]);
        if (!(e <= err)) err = e; /* NaN counts as the largest */
    }
    double rel = err / scale;
    int good = rel <= tol;
    printf("    %-28s rel err %.3g (tol %.1g)%s\n", what, rel, tol, good ? "" : "  FAIL");
    if (!good) case_failed = 1;
    free(g);
}
static peft_tensor *param(int64_t rows, int64_t cols, float scale, int trainable) {
    int64_t shape[2] = {rows, cols};
    peft_tensor *t = peft_param_new(NULL, 2, shape);
    if (!t) exit(1);
    fill(t->data, t->n, scale);
    if (trainable) peft_param_set_trainable(t, 1);
    return t;
}

/* ---- GEMM: cuBLAS fp32 against the CPU reference, all four transposes.
   Tolerance 1e-5: both sum K = 48 products of magnitude ≤ 1 in fp32 in
   different orders; the worst-case difference is about K·2⁻²⁴ ≈ 3e-6 of
   the scale. */
static void t_gemm(void) {
    int M = 33, N = 29, K = 48;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            float *A = host((int64_t)M * K, 1), *B = host((int64_t)K * N, 1), *C = host((int64_t)M * N, 1);
            float *dA = dev(A, (int64_t)M * K), *dB = dev(B, (int64_t)K * N), *dC = dev(C, (int64_t)M * N);
            int lda = ta ? M : K, ldb = tb ? K : N;
            peft_gemm_ref(ta, tb, M, N, K, A, lda, B, ldb, 0.5f, C, N);
            ok(peft_cuda_gemm(ta, tb, M, N, K, 1.0f, dA, lda, dB, ldb, 0.5f, dC, N), "gemm");
            char name[32];
            snprintf(name, sizeof name, "C (tA %d, tB %d)", ta, tb);
            cmp(name, dC, C, (int64_t)M * N, 1e-5);
            free(A);
            free(B);
            free(C);
            peft_cuda_free(dA);
            peft_cuda_free(dB);
            peft_cuda_free(dC);
        }
}

/* ---- embedding: the forward is a copy (exact); the backward adds repeated
   ids' rows with atomics in any order: 1e-6 (a few fp32 adds). */
static void t_embedding(void) {
    int V = 50, D = 24, n = 40;
    int ids[40];
    for (int i = 0; i < n; i++) ids[i] = (int)(peft_rng_u64(&rng) % 12); /* many repeats */
    peft_tensor *E = param(V, D, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *y = peft_embedding(g, E, ids, n);
    float *seed = host((int64_t)n * D, 1);
    peft_backward_seed(g, y, seed);
    float *dE = dev(E->data, E->n), *dy = dev(NULL, (int64_t)n * D), *dgE = dev(NULL, E->n),
          *dseed = dev(seed, y->n);
    int *dids = dev_ints(ids, n);
    ok(peft_cuda_embedding_fwd(dE, D, dids, n, dy), "fwd");
    ok(peft_cuda_embedding_bwd(dseed, D, dids, n, dgE), "bwd");
    cmp("y", dy, y->data, y->n, 0.0);
    cmp("dE", dgE, E->grad, E->n, 1e-6);
    peft_graph_free(g);
    peft_param_free(E);
    free(seed);
}

/* ---- RMSNorm: per-row sums of D = 200 squares in another order (1e-6 of
   the row scale), and dw sums 64 rows in the CPU's order: 1e-5. */
static void t_rmsnorm(void) {
    int R = 64, D = 200;
    peft_tensor *x = param(R, D, 2, 1), *w = param(1, D, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *y = peft_rmsnorm(g, x, w, 1e-5f);
    float *seed = host(y->n, 1);
    peft_backward_seed(g, y, seed);
    float *dx = dev(x->data, x->n), *dw = dev(w->data, w->n), *dyv = dev(NULL, y->n), *rs = dev(NULL, R);
    float *ds = dev(seed, y->n), *gx = dev(NULL, x->n), *gw = dev(NULL, w->n);
    ok(peft_cuda_rmsnorm_fwd(dx, dw, R, D, 1e-5f, dyv, rs), "fwd");
    ok(peft_cuda_rmsnorm_bwd(dx, dw, ds, rs, R, D, gx, gw), "bwd");
    cmp("y", dyv, y->data, y->n, 1e-5);
    cmp("dx", gx, x->grad, x->n, 1e-5);
    cmp("dw", gw, w->grad, w->n, 1e-5);
    peft_graph_free(g);
    peft_param_free(x);
    peft_param_free(w);
    free(seed);
}

/* ---- RoPE, both layouts, a partial rotation (rot_dim < head_dim): the
   same products and sums element by element, no contraction either side
   (--fmad=false, gcc -std=c11): 1e-6. */
static void t_rope(void) {
    int B = 2, T = 9, H = 3, hd = 16, rot = 12, npos = 16;
    for (int il = 0; il < 2; il++) {
        float *ct = host((int64_t)npos * rot / 2, 1), *st = host((int64_t)npos * rot / 2, 1);
        peft_rope_table rt = {hd, rot, il, npos, ct, st};
        peft_tensor *x = param((int64_t)B * T, (int64_t)H * hd, 1, 1);
        peft_graph *g = peft_graph_new();
        peft_tensor *y = peft_rope(g, x, H, &rt, B, T);
        float *seed = host(y->n, 1);
        peft_backward_seed(g, y, seed);
        float *dct = dev(ct, (int64_t)npos * rot / 2), *dst = dev(st, (int64_t)npos * rot / 2);
        float *dx = dev(x->data, x->n), *dyv = dev(NULL, y->n), *dseed = dev(seed, y->n),
              *gx = dev(NULL, x->n);
        ok(peft_cuda_rope(dyv, dx, (int64_t)B * T, H, T, hd, rot, il, dct, dst, NULL, 1.0f, 0), "fwd");
        ok(peft_cuda_rope(gx, dseed, (int64_t)B * T, H, T, hd, rot, il, dct, dst, NULL, -1.0f, 1), "bwd");
        cmp(il ? "y (interleaved)" : "y (rotate_half)", dyv, y->data, y->n, 1e-6);
        cmp(il ? "dx (interleaved)" : "dx (rotate_half)", gx, x->grad, x->n, 1e-6);
        peft_graph_free(g);
        peft_param_free(x);
        free(ct);
        free(st);
        free(seed);
    }
}

/* ---- attention: GQA (H = 4 over KV = 2), an odd T, hd = 40 (lanes hold 1
   or 2 dims), with and without the prompts (tanh gates) and the Excitor
   keys. The CPU exponentiates with peft__exp (≤ 4.3 ulp) and forms P with
   blocked GEMMs; the GPU uses expf and the online softmax: forward 2e-5.
   The backward sums dS over up to T = 37 rows per key, with the
   cancellation in P⊙(dP − rowsum): 1e-4. */
static void t_attention_case(int extras) {
    int B = 2, T = 37, H = 4, KV = 2, hd = 40, K = 5;
    peft_tensor *q = param((int64_t)B * T, (int64_t)H * hd, 1, 1),
                *k = param((int64_t)B * T, (int64_t)KV * hd, 1, 1);
    peft_tensor *v = param((int64_t)B * T, (int64_t)KV * hd, 1, 1);
    peft_tensor *pk = param(K, (int64_t)KV * hd, 1, 1), *pv = param(K, (int64_t)KV * hd, 1, 1);
    peft_tensor *gate = param(1, H, 1, 1), *xk = param((int64_t)B * T, (int64_t)KV * hd, 1, 1);
    peft_tensor *xg = param(1, H, 0.5f, 1);
    peft_attn_extras ex = {pk, pv, K, gate, 1, xk, xg};
    peft_graph *g = peft_graph_new();
    peft_tensor *o = peft_attention_ex(g, q, k, v, B, T, H, KV, hd, extras ? &ex : NULL);
    float *seed = host(o->n, 1);
    peft_backward_seed(g, o, seed);
    float G[64], Gx[64];
    for (int h = 0; h < H; h++) {
        G[h] = tanhf(gate->data[h]);
        Gx[h] = xg->data[h];
    }
    peft_cuda_attn a;
    memset(&a, 0, sizeof a);
    a.B = B;
    a.T = T;
    a.H = H;
    a.KV = KV;
    a.hd = hd;
    a.K = extras ? K : 0;
    a.q = dev(q->data, q->n);
    a.k = dev(k->data, k->n);
    a.v = dev(v->data, v->n);
    a.o = dev(NULL, o->n);
    a.lse = dev(NULL, (int64_t)B * H * T);
    a.lse_p = dev(NULL, (int64_t)B * H * T);
    a.dout = dev(seed, o->n);
    a.dq = dev(NULL, q->n);
    a.dk = dev(NULL, k->n);
    a.dv = dev(NULL, v->n);
    if (extras) {
        a.pk = dev(pk->data, pk->n);
        a.pv = dev(pv->data, pv->n);
        a.x = dev(xk->data, xk->n);
        a.G = dev(G, H);
        a.Gx = dev(Gx, H);
        a.dpk = dev(NULL, pk->n);
        a.dpv = dev(NULL, pv->n);
        a.dx = dev(NULL, xk->n);
        a.dG = dev(NULL, H);
        a.dGx = dev(NULL, H);
    }
    ok(peft_cuda_attention_fwd(&a), "fwd");
    ok(peft_cuda_attention_bwd(&a), "bwd");
    cmp("o", a.o, o->data, o->n, 2e-5);
    cmp("dq", a.dq, q->grad, q->n, 1e-4);
    cmp("dk", a.dk, k->grad, k->n, 1e-4);
    cmp("dv", a.dv, v->grad, v->n, 1e-4);
    if (extras) {
        cmp("dpk", a.dpk, pk->grad, pk->n, 1e-4);
        cmp("dpv", a.dpv, pv->grad, pv->n, 1e-4);
        cmp("dx (Excitor keys)", a.dx, xk->grad, xk->n, 1e-4);
        cmp("dGx (Excitor gate)", a.dGx, xg->grad, H, 1e-4);
        /* the kernel gives dL/dG; the gate's gradient goes through tanh */
        float dG[64], want[64];
        if (peft_cuda_download(dG, a.dG, sizeof(float) * (size_t)H)) case_failed = 1;
        for (int h = 0; h < H; h++) {
            want[h] = gate->grad[h];
            dG[h] *= 1.0f - G[h] * G[h];
        }
        float *d = dev(dG, H);
        cmp("dgate (through tanh)", d, want, H, 1e-4);
        peft_cuda_free(d);
    }
    peft_graph_free(g);
    peft_tensor *all[8] = {q, k, v, pk, pv, gate, xk, xg};
    for (int i = 0; i < 8; i++) peft_param_free(all[i]);
    free(seed);
}
static void t_attention(void) { t_attention_case(0); }
static void t_attention_extras(void) { t_attention_case(1); }

/* ---- Excitor's prompt attention: products over d = 32 and K = 6 in other
   orders, expf against peft__exp: 1e-5 forward, 1e-5 backward (K small) */
static void t_prompt_attend(void) {
    int N = 20, d = 32, K = 6, e = 24;
    peft_tensor *q = param(N, d, 1, 1), *pk = param(K, d, 1, 1), *pv = param(K, e, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *o = peft_prompt_attend(g, q, pk, pv);
    float *seed = host(o->n, 1);
    peft_backward_seed(g, o, seed);
    float *dq = dev(q->data, q->n), *dpk = dev(pk->data, pk->n), *dpv = dev(pv->data, pv->n);
    float *P = dev(NULL, (int64_t)N * K), *dout = dev(NULL, o->n), *ds = dev(seed, o->n);
    float *gq = dev(NULL, q->n), *gpk = dev(NULL, pk->n), *gpv = dev(NULL, pv->n),
          *scr = dev(NULL, (int64_t)N * K);
    ok(peft_cuda_prompt_attend_fwd(dq, dpk, dpv, N, d, K, e, P, dout), "fwd");
    ok(peft_cuda_prompt_attend_bwd(dq, dpk, dpv, P, ds, N, d, K, e, gq, gpk, gpv, scr), "bwd");
    cmp("o", dout, o->data, o->n, 1e-5);
    cmp("dq", gq, q->grad, q->n, 1e-5);
    cmp("dpk", gpk, pk->grad, pk->n, 1e-5);
    cmp("dpv", gpv, pv->grad, pv->n, 1e-5);
    peft_graph_free(g);
    peft_param_free(q);
    peft_param_free(pk);
    peft_param_free(pv);
    free(seed);
}

/* ---- SwiGLU: expf against peft__exp (≤ 4.3 ulp): 2e-6 of the scale. */
static void t_swiglu(void) {
    int64_t n = 3000;
    peft_tensor *ga = param(1, n, 4, 1), *up = param(1, n, 2, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *y = peft_swiglu(g, ga, up);
    float *seed = host(n, 1);
    peft_backward_seed(g, y, seed);
    float *dg = dev(ga->data, n), *du = dev(up->data, n), *dy = dev(NULL, n), *ds = dev(seed, n);
    float *gg = dev(NULL, n), *gu = dev(NULL, n);
    ok(peft_cuda_swiglu_fwd(dg, du, n, dy), "fwd");
    ok(peft_cuda_swiglu_bwd(dg, du, ds, n, gg, gu), "bwd");
    cmp("y", dy, y->data, n, 2e-6);
    cmp("dgate", gg, ga->grad, n, 2e-6);
    cmp("dup", gu, up->grad, n, 2e-6);
    peft_graph_free(g);
    peft_param_free(ga);
    peft_param_free(up);
    free(seed);
}

/* ---- Adapter V2 bias and scale: the same formula per element and the
   column sums in the CPU's row order: 1e-6. */
static void t_bias_scale(void) {
    int R = 40, C = 72;
    peft_tensor *y = param(R, C, 1, 1), *b = param(1, C, 1, 1), *s = param(1, C, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *o = peft_bias_scale(g, y, b, s);
    float *seed = host(o->n, 1);
    peft_backward_seed(g, o, seed);
    float *dyv = dev(y->data, y->n), *db = dev(b->data, C), *dsv = dev(s->data, C), *dout = dev(NULL, o->n);
    float *dseed = dev(seed, o->n), *gy = dev(NULL, y->n), *gb = dev(NULL, C), *gs = dev(NULL, C);
    ok(peft_cuda_bias_scale_fwd(dyv, db, dsv, R, C, dout), "fwd");
    ok(peft_cuda_bias_scale_bwd(dyv, db, dsv, dseed, R, C, gy, gb, gs), "bwd");
    cmp("o", dout, o->data, o->n, 1e-6);
    cmp("dy", gy, y->grad, y->n, 1e-6);
    cmp("db", gb, b->grad, C, 1e-6);
    cmp("ds", gs, s->grad, C, 1e-6);
    peft_graph_free(g);
    peft_param_free(y);
    peft_param_free(b);
    peft_param_free(s);
    free(seed);
}

/* ---- residual add, scale, plain bias: element-wise, the same single
   rounding (exact); the bias column sums in the CPU's row order: 1e-6 */
static void t_add_scale_bias(void) {
    int R = 30, C = 50;
    int64_t n = (int64_t)R * C;
    peft_tensor *a = param(R, C, 1, 1), *b = param(R, C, 1, 1), *bias = param(1, C, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *y = peft_add(g, a, b), *z = peft_scale(g, y, 0.7f), *o = peft_add_bias(g, z, bias);
    float *seed = host(n, 1);
    peft_backward_seed(g, o, seed);
    float *da = dev(a->data, n), *db = dev(b->data, n), *dbias = dev(bias->data, C), *dy = dev(NULL, n);
    float *dz = dev(NULL, n), *dout = dev(NULL, n), *ds = dev(seed, n), *gz = dev(NULL, n),
          *gy = dev(NULL, n);
    float *gbias = dev(NULL, C);
    ok(peft_cuda_add_fwd(da, db, n, dy), "add");
    ok(peft_cuda_scale_fwd(dy, 0.7f, n, dz), "scale");
    ok(peft_cuda_add_bias_fwd(dz, dbias, R, C, dout), "add_bias");
    ok(peft_cuda_add_bias_bwd(ds, R, C, gbias), "add_bias bwd");
    ok(peft_cuda_axpy(gz, ds, 1.0f, n), "bias dy");
    ok(peft_cuda_axpy(gy, gz, 0.7f, n), "scale dx");
    cmp("y = s·(a + b) + bias", dout, o->data, n, 0.0);
    cmp("dbias", gbias, bias->grad, C, 1e-6);
    cmp("da", gy, a->grad, n, 0.0);
    cmp("db", gy, b->grad, n, 0.0);
    peft_graph_free(g);
    peft_param_free(a);
    peft_param_free(b);
    peft_param_free(bias);
    free(seed);
}

/* ---- replaced rows (PEFT's trainable tokens): copies and single adds: exact */
static void t_replace_rows(void) {
    int V = 40, D = 24, n = 5;
    int idx[5] = {3, 17, 0, 39, 22};
    peft_tensor *E = param(V, D, 1, 1), *Rw = param(n, D, 1, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *T = peft_replace_rows(g, E, Rw, idx, n);
    float *seed = host(T->n, 1);
    peft_backward_seed(g, T, seed);
    float *dE = dev(E->data, E->n), *dR = dev(Rw->data, Rw->n), *dT = dev(NULL, T->n), *ds = dev(seed, T->n);
    float *gE = dev(NULL, E->n), *gR = dev(NULL, Rw->n);
    int *didx = dev_ints(idx, n);
    uint8_t *scratch = (uint8_t *)peft_cuda_malloc((size_t)V);
    ok(peft_cuda_replace_rows_fwd(dE, dR, didx, n, V, D, dT), "fwd");
    ok(peft_cuda_replace_rows_bwd(ds, didx, n, V, D, gE, gR, scratch), "bwd");
    cmp("T", dT, T->data, T->n, 0.0);
    cmp("dE", gE, E->grad, E->n, 0.0);
    cmp("dR", gR, Rw->grad, Rw->n, 0.0);
    peft_graph_free(g);
    peft_param_free(E);
    peft_param_free(Rw);
    free(seed);
}

/* ---- cross-entropy on logits (unfused), a row ignored (−100): lse with
   the exponentials summed in double on both sides (1e-6); dz through expf
   against peft__exp (≤ 4.3 ulp): 1e-6 */
static void t_cross_entropy(void) {
    int R = 12, V = 500;
    int t[12];
    for (int i = 0; i < R; i++) t[i] = i == 4 ? -100 : (int)(peft_rng_u64(&rng) % (uint64_t)V);
    peft_tensor *z = param(R, V, 4, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *L = peft_cross_entropy(g, z, t);
    peft_backward(g, L);
    float *dz = dev(z->data, z->n), *lse = dev(NULL, R), *loss = dev(NULL, R), *gz = dev(NULL, z->n);
    int *dt = dev_ints(t, R);
    ok(peft_cuda_cross_entropy_fwd(dz, dt, R, V, lse, loss), "fwd");
    ok(peft_cuda_cross_entropy_bwd(dz, dt, lse, R, V, 1.0f / (float)(R - 1), gz), "bwd");
    float lr[12];
    double total = 0.0;
    if (peft_cuda_download(lr, loss, sizeof lr)) case_failed = 1;
    for (int i = 0; i < R; i++) total += lr[i];
    float mean = (float)(total / (R - 1)), *dm = dev(&mean, 1);
    cmp("loss", dm, L->data, 1, 1e-6);
    cmp("dz", gz, z->grad, z->n, 1e-6);
    peft_graph_free(g);
    peft_param_free(z);
}

/* ---- NF4/FP4 (double-quantized and not): the decode is exact (same codes,
   same two roundings of the scale); the linear sums in 16-wide tiles
   against the CPU's panels: 1e-5. */
static void t_q4(void) {
    int N = 21, out = 48, in = 130; /* in·out not a multiple of 64·256: partial blocks */
    for (int t = 0; t < 2; t++)
        for (int dq = 0; dq < 2; dq++) {
            float *w = host((int64_t)out * in, 1);
            peft_q4 q;
            if (peft_q4_quantize(&q, w, (int64_t)out * in, t ? PEFT_FP4 : PEFT_NF4, dq, NULL) != PEFT_OK) {
                case_failed = 1;
                free(w);
                return;
            }
            printf("    %s%s:\n", t ? "FP4" : "NF4", dq ? ", double-quantized" : "");
            peft_cuda_q4 dw;
            ok(peft_cuda_q4_upload(&dw, &q), "upload");
            float *ref = host(q.n, 0), *dec = dev(NULL, q.n);
            peft_q4_dequantize(&q, 0, q.n, ref);
            ok(peft_cuda_q4_dequantize(&dw, 0, q.n, dec), "decode");
            cmp("decoded W", dec, ref, q.n, 0.0);
            peft_tensor *x = param(N, in, 1, 1);
            peft_graph *g = peft_graph_new();
            peft_tensor *y = peft_q4_linear(g, x, &q, out, in);
            float *seed = host(y->n, 1);
            peft_backward_seed(g, y, seed);
            float *dx = dev(x->data, x->n), *dy = dev(NULL, y->n), *ds = dev(seed, y->n),
                  *gx = dev(NULL, x->n);
            ok(peft_cuda_q4_linear_fwd(dx, &dw, N, out, in, dy), "fwd");
            ok(peft_cuda_q4_linear_bwd(ds, &dw, N, out, in, 1.0f, gx), "bwd");
            cmp("y", dy, y->data, y->n, 1e-5);
            cmp("dx", gx, x->grad, x->n, 1e-5);
            peft_graph_free(g);
            peft_param_free(x);
            peft_cuda_q4_free(&dw);
            peft_q4_free(&q);
            free(w);
            free(ref);
            free(seed);
        }
}

/* ---- LoRA (fp32 W, trainable W too) and QLoRA (NF4 base), with dropout 0.1
   drawn on the device from the CPU's generator: the masks must be equal
   (else y would differ by whole dropped terms), then chains of GEMMs in
   other orders: 1e-5. */
static void t_lora_case(int quant) {
    int N = 24, in = 96, out = 80, r = 8;
    float s = 2.0f, p = 0.1f, keep = 1.0f / (1.0f - p);
    peft_tensor *x = param(N, in, 1, 1), *W = param(out, in, 0.3f, !quant), *A = param(r, in, 0.3f, 1);
    peft_tensor *Bm = param(out, r, 0.3f, 1);
    peft_q4 q;
    memset(&q, 0, sizeof q);
    if (quant && peft_q4_quantize(&q, W->data, W->n, PEFT_NF4, 1, NULL) != PEFT_OK) {
        case_failed = 1;
        return;
    }
    peft_rng r1;
    peft_rng_seed(&r1, 42);
    peft_rng r2 = r1;
    uint64_t key = peft_rng_u64(&r2); /* the draw the CPU op takes */
    peft_graph *g = peft_graph_new();
    peft_tensor *y =
        quant ? peft_qlora_linear(g, x, &q, A, Bm, s, p, &r1) : peft_lora_linear(g, x, W, A, Bm, s, p, &r1);
    float *seed = host(y->n, 1);
    peft_backward_seed(g, y, seed);
    float *dx = dev(x->data, x->n), *dW = dev(W->data, W->n), *dA = dev(A->data, A->n),
          *dB = dev(Bm->data, Bm->n);
    float *dy = dev(NULL, y->n), *u = dev(NULL, (int64_t)N * r), *xt = dev(NULL, x->n), *ds = dev(seed, y->n);
    float *gx = dev(NULL, x->n), *gW = dev(NULL, W->n), *gA = dev(NULL, A->n), *gB = dev(NULL, Bm->n);
    float *scratch = dev(NULL, (int64_t)N * r + (int64_t)N * in);
    uint8_t *mask = (uint8_t *)peft_cuda_malloc((size_t)N * in);
    peft_cuda_q4 wq;
    memset(&wq, 0, sizeof wq);
    if (quant) ok(peft_cuda_q4_upload(&wq, &q), "upload");
    ok(peft_cuda_dropout(dx, key, N, in, p, keep, mask, xt), "dropout");
    ok(peft_cuda_lora_fwd(dx, xt, quant ? NULL : dW, quant ? &wq : NULL, NULL, dA, dB, N, in, out, r, s, dy,
                          u, scratch),
       "fwd");
    ok(peft_cuda_lora_bwd(dx, xt, mask, keep, quant ? NULL : dW, quant ? &wq : NULL, NULL, dA, dB, u, ds, N,
                          in, out, r, s, gx, 1.0f, quant ? NULL : gW, gA, gB, scratch),
       "bwd");
    cmp("y", dy, y->data, y->n, 1e-5);
    cmp("dx", gx, x->grad, x->n, 1e-5);
    cmp("dA", gA, A->grad, A->n, 1e-5);
    cmp("dB", gB, Bm->grad, Bm->n, 1e-5);
    if (!quant) cmp("dW", gW, W->grad, W->n, 1e-5);
    peft_graph_free(g);
    peft_param_free(x);
    peft_param_free(W);
    peft_param_free(A);
    peft_param_free(Bm);
    peft_cuda_q4_free(&wq);
    peft_q4_free(&q);
    free(seed);
}
static void t_lora(void) { t_lora_case(0); }
static void t_qlora(void) { t_lora_case(1); }

/* ---- fused classifier + cross-entropy, a fifth of the rows ignored
   (−100), in chunks of 7 rows: the loss is lse − z_t with exp sums in
   double on both sides (1e-6), the gradients GEMMs over V = 300: 1e-5. */
static void t_linear_ce(void) {
    int R = 30, D = 40, V = 300, chunk = 7;
    int t[30];
    for (int i = 0; i < R; i++) t[i] = i % 5 == 3 ? -100 : (int)(peft_rng_u64(&rng) % (uint64_t)V);
    int nv = 0;
    for (int i = 0; i < R; i++) nv += t[i] != -100;
    peft_tensor *x = param(R, D, 1, 1), *w = param(V, D, 0.5f, 1);
    peft_graph *g = peft_graph_new();
    peft_tensor *L = peft_linear_cross_entropy(g, x, w, t);
    peft_backward(g, L);
    float *dxv = dev(x->data, x->n), *dwv = dev(w->data, w->n), *gx = dev(NULL, x->n), *gw = dev(NULL, w->n);
    float *loss = dev(NULL, R), *z = dev(NULL, (int64_t)chunk * V);
    int *dt = dev_ints(t, R);
    ok(peft_cuda_linear_ce(dxv, dwv, dt, R, D, V, chunk, 1.0f / (float)nv, loss, gx, gw, z), "linear_ce");
    float lr[30];
    double total = 0.0;
    if (peft_cuda_download(lr, loss, sizeof lr)) case_failed = 1;
    for (int i = 0; i < R; i++) total += lr[i];
    float mean = (float)(total / nv), *dm = dev(&mean, 1);
    cmp("loss", dm, L->data, 1, 1e-6);
    cmp("dx", gx, x->grad, x->n, 1e-5);
    cmp("dW", gw, w->grad, w->n, 1e-5);
    peft_graph_free(g);
    peft_param_free(x);
    peft_param_free(w);
}

/* ---- AdamW: the scalars as peft_adamw_step forms them (in double) */
static peft_cuda_adam adam_scalars(const peft_adamw_opts *o, int64_t t, float lr) {
    peft_cuda_adam k;
    double b1 = o->beta1, b2 = o->beta2;
    k.decay = (float)(1.0 - (double)lr * o->weight_decay);
    k.w1 = (float)(1.0 - b1);
    k.b2 = o->beta2;
    k.w2 = (float)(1.0 - b2);
    k.step_size = (float)((double)lr / (1.0 - pow(b1, (double)t)));
    k.bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)t));
    k.eps = o->eps;
    return k;
}
/* fp32 states: the same element-wise formula, IEEE sqrt and division on
   both sides and nothing contracted, so equal up to 1e-7 of the scale
   after 3 steps (expected bit-equal). 8-bit states: a code can flip where
   m/absmax lands within an ulp of a midpoint, so the weights get 1e-6
   (one code step moves a weight by at most lr·(code gap)). Then the paged
   variant: the fp32 update on cudaMallocManaged states, prefetched, must
   equal the plain one exactly. */
static void t_adamw_case(int bits8) {
    int64_t n = 1000; /* 4 blocks of 256, the last partial */
    int64_t shape[1] = {n};
    peft_tensor *p = peft_param_new(NULL, 1, shape);
    fill(p->data, n, 1);
    peft_param_set_trainable(p, 1);
    peft_adamw_opts o = peft_adamw_defaults();
    o.state_8bit = bits8;
    o.state8_min_elems = 1;
    peft_adamw opt;
    if (peft_adamw_init(&opt, &p, 1, &o) != PEFT_OK) {
        case_failed = 1;
        peft_param_free(p);
        return;
    }
    float *w = dev(p->data, n), *gd = dev(NULL, n), *m = dev(NULL, n), *v = dev(NULL, n);
    uint8_t *qm = NULL, *qv = NULL;
    float *am = NULL, *av = NULL;
    int64_t nb = (n + 255) / 256;
    if (bits8) {
        qm = (uint8_t *)peft_cuda_malloc((size_t)n);
        qv = (uint8_t *)peft_cuda_malloc((size_t)n);
        am = dev(opt.am[0], nb);
        av = dev(opt.av[0], nb);
        ok(peft_cuda_upload(qm, opt.qm[0], (size_t)n) || peft_cuda_upload(qv, opt.qv[0], (size_t)n),
           "states");
    }
    for (int step = 1; step <= 3; step++) {
        fill(p->grad, n, 0.1f * (float)step);
        ok(peft_cuda_upload(gd, p->grad, sizeof(float) * (size_t)n), "grad");
        peft_adamw_step(&opt, 1e-3f);
        peft_cuda_adam k = adam_scalars(&o, step, 1e-3f);
        if (bits8)
            ok(peft_cuda_adamw8(&k, w, gd, qm, qv, am, av, n), "adamw8");
        else
            ok(peft_cuda_adamw(&k, w, gd, m, v, n), "adamw");
    }
    cmp(bits8 ? "w (8-bit states)" : "w (fp32 states)", w, p->data, n, bits8 ? 1e-6 : 1e-7);
    if (!bits8) cmp("m", m, opt.m[0], n, 1e-7);
    if (!bits8) { /* the paged variant */
        float *pw = dev(NULL, n), *pm = (float *)peft_cuda_managed_alloc(sizeof(float) * (size_t)n);
        float *pv = (float *)peft_cuda_managed_alloc(sizeof(float) * (size_t)n);
        if (!pm || !pv) {
            printf("    managed: %s\n", peft_cuda_error());
            case_failed = 1;
        } else {
            float *w0 = host(n, 1), *ref = dev(NULL, n), *rm = dev(NULL, n), *rv = dev(NULL, n);
            ok(peft_cuda_upload(pw, w0, sizeof(float) * (size_t)n) ||
                   peft_cuda_upload(ref, w0, sizeof(float) * (size_t)n),
               "upload");
            ok(peft_cuda_sync(), "sync");
            memset(pm, 0, sizeof(float) * (size_t)n); /* managed: the host writes it directly */
            memset(pv, 0, sizeof(float) * (size_t)n);
            for (int step = 1; step <= 2; step++) {
                peft_cuda_adam k = adam_scalars(&o, step, 1e-3f);
                ok(peft_cuda_prefetch(pm, sizeof(float) * (size_t)n) ||
                       peft_cuda_prefetch(pv, sizeof(float) * (size_t)n),
                   "prefetch");
                ok(peft_cuda_adamw(&k, pw, gd, pm, pv, n), "paged adamw");
                ok(peft_cuda_adamw(&k, ref, gd, rm, rv, n), "adamw");
            }
            float *refh = host(n, 0);
            if (peft_cuda_download(refh, ref, sizeof(float) * (size_t)n)) case_failed = 1;
            cmp("w (paged states)", pw, refh, n, 0.0);
            free(w0);
            free(refh);
        }
        peft_cuda_managed_free(pm);
        peft_cuda_managed_free(pv);
        /* a request beyond the device's free memory is refused, not made */
        size_t used = 0, peak = 0, total = 0;
        ok(peft_cuda_mem_info(&used, &peak, &total), "mem_info");
        void *big = peft_cuda_managed_alloc(total + ((size_t)1 << 30));
        int refused = big == NULL && strstr(peft_cuda_error(), "refused") != NULL;
        printf("    managed request over free memory: %s\n", refused ? "refused" : "NOT refused  FAIL");
        if (!refused) case_failed = 1;
        peft_cuda_managed_free(big);
    }
    peft_adamw_free(&opt);
    peft_param_free(p);
}
static void t_adamw(void) { t_adamw_case(0); }
static void t_adamw8(void) { t_adamw_case(1); }

/* ---- gradient clipping: Σ g² in double in another order (1e-12 of the
   norm), then the same double product per element: 1e-7. */
static void t_clip(void) {
    int64_t ns[3] = {1000, 37, 4096};
    peft_tensor *ps[3];
    float *dg[3];
    for (int i = 0; i < 3; i++) {
        int64_t shape[1] = {ns[i]};
        ps[i] = peft_param_new(NULL, 1, shape);
        peft_param_set_trainable(ps[i], 1);
        fill(ps[i]->grad, ns[i], 1);
        dg[i] = dev(ps[i]->grad, ns[i]);
    }
    double cpu = peft_clip_grad_norm(ps, 3, 1.0), gpu = 0.0;
    ok(peft_cuda_clip_grad_norm(dg, ns, 3, 1.0, &gpu), "clip");
    double rel = fabs(gpu - cpu) / cpu;
    printf("    %-28s rel err %.3g (tol 1e-12)%s\n", "norm", rel, rel <= 1e-12 ? "" : "  FAIL");
    if (rel > 1e-12) case_failed = 1;
    for (int i = 0; i < 3; i++) cmp("clipped g", dg[i], ps[i]->grad, ns[i], 1e-7);
    for (int i = 0; i < 3; i++) peft_param_free(ps[i]);
}

/* ---- the arena: bump allocation, alignment, refusal past its size, reset */
static void t_arena(void) {
    ok(peft_cuda_arena_init((size_t)1 << 20), "arena_init");
    void *a = peft_cuda_arena_alloc(1000), *b = peft_cuda_arena_alloc(1000);
    int good = a && b && ((uintptr_t)b - (uintptr_t)a) == 1024 && (uintptr_t)b % 256 == 0;
    void *c = peft_cuda_arena_alloc((size_t)1 << 20);
    good = good && c == NULL;
    peft_cuda_arena_reset();
    good = good && peft_cuda_arena_alloc(16) == a;
    printf("    bump, align, refuse, reset: %s\n", good ? "ok" : "FAIL");
    if (!good) case_failed = 1;
}

/* ---- 20-step training runs against the CPU's losses (LoRA, QLoRA,
   Adapter V1; ≤ 1e-3 relative in fp32) need the ops routed through the
   backend table (peft_backend), which this layer is written for but not yet
   wired into: reported as skipped until then, never as passed. */
static void t_training(void) {
    printf("    skipped: the 20-step LoRA / QLoRA / Adapter-V1 runs need peft_cuda_* wired into the backend "
           "table\n");
    case_failed = -1;
}

/* ================================================================================
   Host checks: the device code's bit-exact parts, compiled for the host from the
   same source (peft_cuda.cu's __host__ __device__ functions), against peft.h.
   These run on every machine, GPU or not. */

/* BLAS semantics, column-major: C = alpha·op(A)·op(B) + beta·C, op(X)[i][j] of an
   (m×k or k×n) operand read from X stored column-major with leading dim ldx */
static void colmajor_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0.0;
            for (int l = 0; l < k; l++) {
                double a = ta ? A[l + (int64_t)i * lda] : A[i + (int64_t)l * lda];
                double b = tb ? B[j + (int64_t)l * ldb] : B[l + (int64_t)j * ldb];
                acc += a * b;
            }
            C[i + (int64_t)j * ldc] = (float)(alpha * acc + beta * C[i + (int64_t)j * ldc]);
        }
}
/* peft_cuda_gemm's hand-over to cuBLAS, through a column-major reference:
   the same numbers as peft_gemm_ref for all four transposes and padded
   leading dimensions (1e-6: double sums on one side, fp32 on the other) */
static void h_gemm_plan(void) {
    int M = 7, N = 5, K = 6;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
            float *A = host((int64_t)(ta ? K : M) * lda, 1), *B = host((int64_t)(tb ? N : K) * ldb, 1);
            float *C = host((int64_t)M * ldc, 1), *C2 = host((int64_t)M * ldc, 0);
            memcpy(C2, C, sizeof(float) * (size_t)M * (size_t)ldc);
            peft_gemm_ref(ta, tb, M, N, K, A, lda, B, ldb, 0.5f, C, ldc);
            peft_cuda_gemm_plan p = peft_cuda_plan_gemm(ta, tb, M, N, K);
            colmajor_sgemm(p.transa, p.transb, p.m, p.n, p.k, 1.0f, B, ldb, A, lda, 0.5f, C2, ldc);
            double err = 0.0;
            for (int r = 0; r < M; r++)
                for (int c = 0; c < N; c++) err = fmax(err, fabs((double)C[r * ldc + c] - C2[r * ldc + c]));
            printf("    tA %d tB %d: max err %.3g (tol 1e-5)%s\n", ta, tb, err, err <= 1e-5 ? "" : "  FAIL");
            if (!(err <= 1e-5)) case_failed = 1;
            free(A);
            free(B);
            free(C);
            free(C2);
        }
}
/* the LoRA dropout mask and x̃, row by row: equal to the CPU's, byte for byte */
static void h_dropout(void) {
    int N = 6, in = 97; /* odd: the last draw half used */
    float p = 0.3f, keep = 1.0f / (1.0f - p);
    float *x = host((int64_t)N * in, 1), *xt = host((int64_t)N * in, 0), *xt2 = host((int64_t)N * in, 0);
    uint8_t *mask = (uint8_t *)malloc((size_t)N * in), *mask2 = (uint8_t *)malloc((size_t)N * in);
    uint64_t key = peft_rng_u64(&rng);
    peft__dropout_args da = {x, xt, mask, key, in, p, keep};
    peft__dropout_rows(&da, 0, N);
    uint32_t cut = (uint32_t)ceil((double)p * 16777216.0);
    for (int n = 0; n < N; n++) peft_cuda_host_dropout_row(x, key, n, in, cut, keep, mask2, xt2);
    int same =
        memcmp(mask, mask2, (size_t)N * in) == 0 && memcmp(xt, xt2, sizeof(float) * (size_t)N * in) == 0;
    int kept = 0;
    for (int j = 0; j < N * in; j++) kept += mask[j];
    printf("    mask and x̃ equal: %s (%d of %d kept)\n", same ? "yes" : "NO  FAIL", kept, N * in);
    if (!same) case_failed = 1;
    free(x);
    free(xt);
    free(xt2);
    free(mask);
    free(mask2);
}
/* 8-bit codes of the optimizer states: equal to peft_quantize_blockwise8's,
   with both maps, on random blocks, values on the grid's midpoints and an
   all-zero block */
static void h_quantize8(void) {
    int n = 1024;
    float *x = host(n, 1), absmax[4];
    for (int i = 256; i < 512; i++) x[i] = (float)((i % 64) - 32) / 32767.5f; /* near grid points */
    for (int i = 512; i < 768; i++) x[i] = 0.0f; /* absmax 0: 0/0 */
    for (int i = 768; i < n; i++) x[i] = fabsf(x[i]) * 1e-3f; /* small, unsigned */
    const float *maps[2] = {peft_dynamic_map(), peft_dynamic_map_unsigned()};
    for (int mi = 0; mi < 2; mi++) {
        uint8_t q[1024];
        float *xs = host(n, 0);
        for (int i = 0; i < n; i++) xs[i] = mi ? fabsf(x[i]) : x[i];
        peft_quantize_blockwise8(xs, n, 256, maps[mi], q, absmax);
        int diff = 0;
        for (int i = 0; i < n; i++)
            diff += peft_cuda_host_quantize8(maps[mi], xs[i], absmax[i / 256]) != q[i];
        printf("    %s map: %d of %d codes differ%s\n", mi ? "unsigned" : "signed", diff, n,
               diff ? "  FAIL" : "");
        if (diff) case_failed = 1;
        free(xs);
    }
    free(x);
}
/* the in-kernel 4-bit decode: equal to peft_q4_dequantize, NF4 and FP4, with
   and without double quantization */
static void h_q4_decode(void) {
    int64_t n = 64 * 300 + 17; /* more than 256 blocks, a partial last one */
    float *w = host(n, 1), *ref = host(n, 0);
    for (int t = 0; t < 2; t++)
        for (int dq = 0; dq < 2; dq++) {
            peft_q4 q;
            if (peft_q4_quantize(&q, w, n, t ? PEFT_FP4 : PEFT_NF4, dq, NULL) != PEFT_OK) {
                case_failed = 1;
                continue;
            }
            peft_cuda_q4 h; /* the device struct, pointing at host arrays */
            memset(&h, 0, sizeof h);
            h.type = (int)q.type;
            memcpy(h.code, peft_q4_code(q.type), sizeof h.code);
            h.n = q.n;
            h.n_blocks = q.n_blocks;
            h.double_quant = q.double_quant;
            h.packed = q.packed;
            h.absmax = q.absmax;
            h.qabsmax = q.qabsmax;
            h.nested_absmax = q.nested_absmax;
            h.offset = q.offset;
            peft_q4_dequantize(&q, 0, n, ref);
            int64_t diff = 0;
            for (int64_t e = 0; e < n; e++) diff += peft_cuda_host_q4_at(&h, e) != ref[e];
            printf("    %s%s: %lld of %lld values differ%s\n", t ? "FP4" : "NF4", dq ? " (double-quant)" : "",
                   (long long)diff, (long long)n, diff ? "  FAIL" : "");
            if (diff) case_failed = 1;
            peft_q4_free(&q);
        }
    free(w);
    free(ref);
}

typedef struct {
    const char *name;
    void (*fn)(void);
} tcase;
static void t_qmatrix(void);
/* ---- the backend table: 20 training steps on the CUDA backend against the CPU backend ----
   One tiny LLaMA (2 layers, dim 64, GQA 4/2 heads, vocab 128), the same seed, tokens and targets
   (every fifth target -100), AdamW with clipping: the loss of each step within 1e-3 of the CPU's,
   relative (fp32 products on both sides; the sums differ in order only, ~1e-6 per op, and 20 steps
   of AdamW at lr 1e-2 are not expected to amplify that past 1e-4 on a loss near ln 128). lr 1e-2
   rather than 1e-3 so that the losses move enough for a wrong update to show: see
   host_table_compare_fails. */
static int table_run(const peft_backend *be, peft_method_kind kind, float *loss, int steps) {
    const peft_backend *old = peft_backend_use(be);
    int good = 0;
    peft_config c;
    peft_model *m = NULL;
    peft_trainer *tr = NULL;
    if (peft_config_preset(&c, "tiny") != PEFT_OK) goto out;
    c.dim = 64;
    c.hidden_dim = 128;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 128;
    if (peft_model_new(&m, &c, 1, 7) != PEFT_OK) goto out;
    peft_method meth = peft_method_defaults(kind);
    if (kind == PEFT_LORA) meth.lora_dropout = 0.1f;
    if (peft_attach(m, &meth) != PEFT_OK) goto out;
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    o.max_grad_norm = 1.0f;
    tr = peft_trainer_new(m, &o);
    if (!tr) goto out;
    enum { B = 2, T = 16 };
    int tok[B * T], tgt[B * T];
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < B * T; i++) {
            tok[i] = (i * 7 + s * 13) % 128;
            tgt[i] = i % 5 ? (i * 3 + s) % 128 : -100;
        }
        if (peft_trainer_step(tr, tok, tgt, B, T, &loss[s]) != PEFT_OK) goto out;
    }
    good = 1;
out:
    if (!good) printf("    %s run: %s\n", be ? be->name : "cpu", peft_last_error());
    peft_trainer_free(tr);
    if (m) peft_model_free(m);
    peft_backend_use(old);
    return good;
}
/* the worst step's relative loss difference between the CPU backend and `be`, or -1 when a run fails */
static double table_worst(const peft_backend *be, peft_method_kind kind, float *cpu, float *gpu, int steps) {
    if (!table_run(NULL, kind, cpu, steps) || !table_run(be, kind, gpu, steps)) return -1.0;
    double worst = 0.0;
    for (int s = 0; s < steps; s++)
        worst = fmax(worst, fabs((double)gpu[s] - cpu[s]) / fmax(fabs(cpu[s]), 1e-30));
    return worst;
}
static void table_train(peft_method_kind kind) {
    enum { STEPS = 20 };
    float cpu[STEPS], gpu[STEPS];
    double worst = table_worst(peft_backend_cuda(), kind, cpu, gpu, STEPS);
    if (worst < 0) {
        case_failed = 1;
        return;
    }
    int good = worst <= 1e-3 && cpu[STEPS - 1] < cpu[0];
    printf("    loss %.5f -> %.5f (cpu) %.5f -> %.5f (cuda), worst step rel err %.3g (tol 1e-3)%s\n", cpu[0],
           cpu[STEPS - 1], gpu[0], gpu[STEPS - 1], worst, good ? "" : "  FAIL");
    if (!good) case_failed = 1;
}
static void t_table_lora(void) { table_train(PEFT_LORA); }
static void t_table_qlora(void) { table_train(PEFT_QLORA); }
static void t_table_adapter_v1(void) { table_train(PEFT_ADAPTER_V1); }
/* a tensor in plain host memory is refused by name, never read by a kernel */
static void t_table_refuses_host(void) {
    const peft_backend *old = peft_backend_use(peft_backend_cuda());
    peft_graph *g = peft_graph_new();
    peft_tensor *x = peft_tensor_2d(g, 2, 4);
    float *hostbuf = (float *)malloc(sizeof(float) * 8);
    float *keep = x ? x->data : NULL;
    if (x) x->data = hostbuf;
    peft_tensor *y = x ? peft_scale(g, x, 2.0f) : NULL;
    int good = x && !y && strstr(peft_last_error(), "host memory") && strstr(peft_last_error(), "scale");
    printf("    scale on a host tensor: %s%s\n", y ? "ran" : peft_last_error(), good ? "" : "  FAIL");
    if (!good) case_failed = 1;
    if (x) x->data = keep;
    free(hostbuf);
    peft_graph_free(g);
    peft_backend_use(old);
}

static const tcase cases[] = {
    {"table_lora_20_steps", t_table_lora},
    {"table_qlora_20_steps", t_table_qlora},
    {"table_adapter_v1_20_steps", t_table_adapter_v1},
    {"table_refuses_host_memory", t_table_refuses_host},
    {"gemm", t_gemm},
    {"embedding", t_embedding},
    {"rmsnorm", t_rmsnorm},
    {"rope", t_rope},
    {"attention", t_attention},
    {"attention_extras", t_attention_extras},
    {"prompt_attend", t_prompt_attend},
    {"swiglu", t_swiglu},
    {"bias_scale", t_bias_scale},
    {"add_scale_bias", t_add_scale_bias},
    {"replace_rows", t_replace_rows},
    {"cross_entropy", t_cross_entropy},
    {"q4_linear", t_q4},
    {"qmatrix_linear", t_qmatrix},
    {"lora", t_lora},
    {"qlora", t_qlora},
    {"linear_ce", t_linear_ce},
    {"adamw", t_adamw},
    {"adamw8", t_adamw8},
    {"clip", t_clip},
    {"arena", t_arena},
    {"training_runs", t_training},
};

/* ggml rows of `type` for a rows×cols weight: quantized from random values
   where peft.h quantizes that type (Q8_0, Q4_0, Q4_1), random bytes with
   tamed fp16 scales otherwise (every code and bit pattern exercised) */
static int make_qmatrix(peft_qmatrix *q, int type, int64_t rows, int64_t cols) {
    memset(q, 0, sizeof *q);
    size_t rb = 0;
    if (peft_ggml_row_bytes(type, cols, &rb) != PEFT_OK) return 1;
    uint8_t *d = (uint8_t *)PEFT_MALLOC(rb * (size_t)rows); /* peft_qmatrix_free frees it */
    if (!d) return 1;
    float *w = host(rows * cols, 1);
    int quantized = type == PEFT_GGML_Q8_0 || type == PEFT_GGML_Q4_0 || type == PEFT_GGML_Q4_1;
    if (quantized) {
        if (peft_ggml_quantize(type, w, rows * cols, d) != PEFT_OK) {
            free(w);
            free(d);
            return 1;
        }
    } else {
        for (size_t i = 0; i < rb * (size_t)rows; i++) d[i] = (uint8_t)peft_rng_u64(&rng);
        if (type == PEFT_GGML_F32) memcpy(d, w, sizeof(float) * (size_t)(rows * cols));
        if (type == PEFT_GGML_F16 || type == PEFT_GGML_BF16 || type == PEFT_GGML_Q5_0 ||
            type == PEFT_GGML_Q5_1)
            for (int64_t r = 0; r < rows;
                 r++) { /* scales (and F16/BF16 values) kept finite: exponent < max */
                uint8_t *row = d + (size_t)r * rb;
                size_t step = type == PEFT_GGML_Q5_0 ? 22 : type == PEFT_GGML_Q5_1 ? 24 : 2;
                size_t nscale = type == PEFT_GGML_Q5_1 ? 2 : 1;
                for (size_t o = 0; o + 1 < rb; o += step)
                    for (size_t k = 0; k < nscale; k++) row[o + 2 * k + 1] &= 0x3B; /* |x| < 1 or so */
            }
    }
    free(w);
    q->type = type;
    q->rows = rows;
    q->cols = cols;
    q->row_bytes = rb;
    q->data = d;
    q->owned = d;
    return 0;
}
static const char *type_name(int t) {
    const char *n = peft_ggml_type_name(t);
    return n ? n : "?";
}
static const int qm_types[8] = {PEFT_GGML_F32,  PEFT_GGML_F16,  PEFT_GGML_BF16, PEFT_GGML_Q8_0,
                                PEFT_GGML_Q4_0, PEFT_GGML_Q4_1, PEFT_GGML_Q5_0, PEFT_GGML_Q5_1};
/* the in-kernel ggml decode: bit-equal to peft_qmatrix_decode for every type it takes */
static void h_qmatrix_decode(void) {
    int64_t rows = 5, cols = 96;
    for (int t = 0; t < 8; t++) {
        peft_qmatrix q;
        if (make_qmatrix(&q, qm_types[t], rows, cols)) {
            case_failed = 1;
            continue;
        }
        peft_cuda_qmatrix h = {q.type, q.rows, q.cols, q.row_bytes, (uint8_t *)q.owned};
        float *ref = host(cols, 0);
        int64_t diff = 0;
        for (int64_t r = 0; r < rows; r++) {
            peft_qmatrix_decode(&q, r, 0, cols, ref);
            for (int64_t c = 0; c < cols; c++) {
                float v = peft_cuda_host_qmatrix_at(&h, r, c);
                diff += memcmp(&v, &ref[c], sizeof v) != 0;
            }
        }
        printf("    %-5s %lld of %lld values differ%s\n", type_name(q.type), (long long)diff,
               (long long)(rows * cols), diff ? "  FAIL" : "");
        if (diff) case_failed = 1;
        free(ref);
        peft_qmatrix_free(&q);
    }
}

/* ---- ggml-typed frozen linears (Q8_0, Q4_1, Q5_1) and a LoRA over a Q4_1 base:
   the decode is exact (host-checked), the products sum in 16-wide tiles
   against the CPU's panels: 1e-5 */
static void t_qmatrix(void) {
    int N = 19, out = 40, in = 96, r = 4;
    int types[3] = {PEFT_GGML_Q8_0, PEFT_GGML_Q4_1, PEFT_GGML_Q5_1};
    for (int t = 0; t < 3; t++) {
        peft_qmatrix q;
        if (make_qmatrix(&q, types[t], out, in)) {
            case_failed = 1;
            continue;
        }
        printf("    %s:\n", type_name(q.type));
        peft_cuda_qmatrix dw;
        ok(peft_cuda_qmatrix_upload(&dw, &q), "upload");
        peft_tensor *x = param(N, in, 1, 1);
        peft_graph *g = peft_graph_new();
        peft_tensor *y = peft_qmatrix_linear(g, x, &q);
        float *seed = host(y->n, 1);
        peft_backward_seed(g, y, seed);
        float *dx = dev(x->data, x->n), *dy = dev(NULL, y->n), *ds = dev(seed, y->n), *gx = dev(NULL, x->n);
        ok(peft_cuda_qmatrix_linear_fwd(dx, &dw, N, dy), "fwd");
        ok(peft_cuda_qmatrix_linear_bwd(ds, &dw, N, 1.0f, gx), "bwd");
        cmp("y", dy, y->data, y->n, 1e-5);
        cmp("dx", gx, x->grad, x->n, 1e-5);
        peft_graph_free(g);
        if (types[t] == PEFT_GGML_Q4_1) { /* LoRA over the ggml base, no dropout */
            peft_tensor *A = param(r, in, 0.3f, 1), *Bm = param(out, r, 0.3f, 1);
            memset(x->grad, 0, sizeof(float) * (size_t)x->n);
            g = peft_graph_new();
            y = peft_qmatrix_lora_linear(g, x, &q, A, Bm, 2.0f, 0.0f, NULL);
            peft_backward_seed(g, y, seed);
            float *dA = dev(A->data, A->n), *dB = dev(Bm->data, Bm->n), *u = dev(NULL, (int64_t)N * r);
            float *gA = dev(NULL, A->n), *gB = dev(NULL, Bm->n), *gx2 = dev(NULL, x->n);
            float *scr = dev(NULL, (int64_t)N * r + (int64_t)N * in);
            ok(peft_cuda_lora_fwd(dx, NULL, NULL, NULL, &dw, dA, dB, N, in, out, r, 2.0f, dy, u, scr),
               "lora fwd");
            ok(peft_cuda_lora_bwd(dx, NULL, NULL, 1.0f, NULL, NULL, &dw, dA, dB, u, ds, N, in, out, r, 2.0f,
                                  gx2, 1.0f, NULL, gA, gB, scr),
               "lora bwd");
            cmp("LoRA y", dy, y->data, y->n, 1e-5);
            cmp("LoRA dx", gx2, x->grad, x->n, 1e-5);
            cmp("LoRA dA", gA, A->grad, A->n, 1e-5);
            cmp("LoRA dB", gB, Bm->grad, Bm->n, 1e-5);
            peft_graph_free(g);
            peft_param_free(A);
            peft_param_free(Bm);
        }
        peft_param_free(x);
        peft_cuda_qmatrix_free(&dw);
        peft_qmatrix_free(&q);
        free(seed);
    }
    /* a K-quant is refused at upload, by name */
    peft_qmatrix k4;
    memset(&k4, 0, sizeof k4);
    k4.type = PEFT_GGML_Q4_K;
    k4.rows = 1;
    k4.cols = 256;
    k4.row_bytes = 144;
    k4.data = (const uint8_t *)"";
    peft_cuda_qmatrix dk;
    int refused = peft_cuda_qmatrix_upload(&dk, &k4) != 0 && strstr(peft_cuda_error(), "Q4_K") != NULL;
    printf("    Q4_K upload refused by name: %s\n", refused ? "yes" : "NO  FAIL");
    if (!refused) case_failed = 1;
}

/* AdamW, fp32 and 8-bit states, 3 steps: the kernels' update on the host equals
   peft_adamw_step bit for bit (weights, moments, codes, block absmax) */
static void h_adamw(void) {
    for (int bits8 = 0; bits8 < 2; bits8++) {
        int64_t n = 1000, nb = (n + 255) / 256;
        int64_t shape[1] = {n};
        peft_tensor *p = peft_param_new(NULL, 1, shape);
        fill(p->data, n, 1);
        peft_param_set_trainable(p, 1);
        peft_adamw_opts o = peft_adamw_defaults();
        o.state_8bit = bits8;
        o.state8_min_elems = 1;
        peft_adamw opt;
        if (peft_adamw_init(&opt, &p, 1, &o) != PEFT_OK) {
            case_failed = 1;
            peft_param_free(p);
            return;
        }
        float *w = host(n, 0), *m = host(n, 0), *v = host(n, 0), *am = host(nb, 0), *av = host(nb, 0);
        uint8_t *qm = (uint8_t *)malloc((size_t)n), *qv = (uint8_t *)malloc((size_t)n);
        memcpy(w, p->data, sizeof(float) * (size_t)n);
        memset(m, 0, sizeof(float) * (size_t)n);
        memset(v, 0, sizeof(float) * (size_t)n);
        if (bits8) {
            memcpy(qm, opt.qm[0], (size_t)n);
            memcpy(qv, opt.qv[0], (size_t)n);
            memcpy(am, opt.am[0], sizeof(float) * (size_t)nb);
            memcpy(av, opt.av[0], sizeof(float) * (size_t)nb);
        }
        for (int step = 1; step <= 3; step++) {
            fill(p->grad, n, 0.1f * (float)step);
            peft_adamw_step(&opt, 1e-3f);
            peft_cuda_adam k = adam_scalars(&o, step, 1e-3f);
            if (bits8)
                peft_cuda_host_adamw8(&k, w, p->grad, qm, qv, am, av, n);
            else
                peft_cuda_host_adamw(&k, w, p->grad, m, v, n);
        }
        int same = memcmp(w, p->data, sizeof(float) * (size_t)n) == 0;
        if (bits8)
            same = same && memcmp(qm, opt.qm[0], (size_t)n) == 0 && memcmp(qv, opt.qv[0], (size_t)n) == 0 &&
                   memcmp(am, opt.am[0], sizeof(float) * (size_t)nb) == 0 &&
                   memcmp(av, opt.av[0], sizeof(float) * (size_t)nb) == 0;
        else
            same = same && memcmp(m, opt.m[0], sizeof(float) * (size_t)n) == 0 &&
                   memcmp(v, opt.v[0], sizeof(float) * (size_t)n) == 0;
        printf("    %s states, 3 steps: %s\n", bits8 ? "8-bit" : "fp32", same ? "bit-equal" : "DIFFER  FAIL");
        if (!same) case_failed = 1;
        peft_adamw_free(&opt);
        peft_param_free(p);
        free(w);
        free(m);
        free(v);
        free(am);
        free(av);
        free(qm);
        free(qv);
    }
}

/* the CPU half of the table cases, here on any machine: the three methods train 20 steps on this
   configuration with every allocation through the CUDA heap (host mode: malloc with its header) and
   the loss falls */
static void h_table_cpu_runs(void) {
    peft_method_kind kinds[3] = {PEFT_LORA, PEFT_QLORA, PEFT_ADAPTER_V1};
    for (int k = 0; k < 3; k++) {
        float loss[20];
        int good = table_run(NULL, kinds[k], loss, 20) && loss[19] < loss[0];
        printf("    %-10s loss %.5f -> %.5f%s\n", peft_method_name(kinds[k]), loss[0], good ? loss[19] : 0.0f,
               good ? "" : "  FAIL");
        if (!good) case_failed = 1;
    }
}

/* the table cases' comparison can fail: a copy of the CPU table matches the CPU losses exactly, and one
   whose AdamW applies each update twice (a slip in an optimizer kernel) is caught at 1e-3. (A forward
   0.1% off, SwiGLU's, moves these losses by only ~2e-6: the loss check is for the whole step's wiring;
   the per-op checks of test-cuda and test-cuda-ops are the ones that see small kernel errors.) */
static void broken_adamw(const peft_adamw_scalars *k, float *w, const float *g, float *m, float *v,
                         int64_t n) {
    peft_backend_cpu()->adamw(k, w, g, m, v, n);
    peft_backend_cpu()->adamw(k, w, g, m, v, n);
}
static void h_table_compare_fails(void) {
    static peft_backend same, broken;
    same = *peft_backend_cpu();
    same.name = "cpu-copy";
    broken = same;
    broken.name = "cpu-broken-adamw";
    broken.adamw = broken_adamw;
    float cpu[20], other[20];
    double w_same = table_worst(&same, PEFT_LORA, cpu, other, 20);
    double w_broken = table_worst(&broken, PEFT_LORA, cpu, other, 20);
    int good = w_same == 0.0 && w_broken > 1e-3;
    printf("    copy of the CPU table: worst %.3g (want 0); AdamW twice: worst %.3g (want > 1e-3)%s\n",
           w_same, w_broken, good ? "" : "  FAIL");
    if (!good) case_failed = 1;
}

/* peft_backend_cuda() fills every entry the registry asks for (an op peft.h gains later included: it is
   refused by name), without touching the device */
static void h_table_complete(void) {
    static peft_backend copy;
    copy = *peft_backend_cuda();
    copy.name = "cuda-table-copy";
    int good = peft_backend_register(&copy) == PEFT_OK && copy.place == PEFT_PLACE_CUDA;
    printf("    every entry filled: %s%s\n", good ? "yes" : peft_last_error(), good ? "" : "  FAIL");
    if (!good) case_failed = 1;
}

static const tcase host_cases[] = {
    {"host_table_complete", h_table_complete},
    {"host_table_compare_fails", h_table_compare_fails},
    {"host_table_cpu_runs", h_table_cpu_runs},
    {"host_gemm_plan", h_gemm_plan},           {"host_dropout", h_dropout},
    {"host_quantize8", h_quantize8},           {"host_q4_decode", h_q4_decode},
    {"host_qmatrix_decode", h_qmatrix_decode}, {"host_adamw", h_adamw},
};

static void run(const tcase *c, int device) {
    if (filter && !strstr(c->name, filter)) return;
    printf("%s\n", c->name);
    case_failed = 0;
    c->fn();
    if (device && peft_cuda_sync()) {
        printf("    %s\n", peft_cuda_error());
        case_failed = 1;
    }
    if (case_failed < 0)
        n_skip++;
    else if (case_failed) {
        n_fail++;
        printf("  FAIL %s\n", c->name);
    } else
        n_pass++;
}

int main(int argc, char **argv) {
    filter = argc > 1 ? argv[1] : NULL;
    peft_rng_seed(&rng, 20);
    for (size_t i = 0; i < sizeof host_cases / sizeof host_cases[0]; i++) run(&host_cases[i], 0);
    size_t n_dev = sizeof cases / sizeof cases[0];
    if (peft_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        for (size_t i = 0; i < n_dev; i++) n_skip += !filter || strstr(cases[i].name, filter) != NULL;
    } else if (peft_cuda_init(0, PEFT_CUDA_FP32)) {
        printf("test-cuda: %s\n", peft_cuda_error());
        n_fail++;
    } else if (peft_backend_register(peft_backend_cuda()) != PEFT_OK) {
        printf("test-cuda: %s\n", peft_last_error());
        n_fail++;
    } else {
        char name[256];
        peft_cuda_heap_device(1);
        if (peft_cuda_device_name(name, sizeof name) == 0) printf("device: %s\n", name);
        for (size_t i = 0; i < n_dev; i++) run(&cases[i], 1);
        peft_cuda_shutdown();
    }
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail ? 1 : 0;
}
