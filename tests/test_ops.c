/* Finite-difference gradient checks for every op, against double-precision
   reference forwards written independently here. The loss is L = Σ y ⊙ R for
   a fixed random R; the analytic gradient (fp32, from the op's backward) must
   match central differences of the double reference (h = 1e-6) to 2e-4
   relative: fp32 rounding over these short reductions stays near 1e-6, and a
   wrong term in a backward is off by O(1). The forward must match the double
   reference to 1e-5 relative. */
#include "harness.h"

#define MAXIN 4
typedef struct {
    int n_in;
    long len[MAXIN];
    int ndim[MAXIN];
    int64_t shape[MAXIN][2];
    int no_grad[MAXIN];         /* inputs that are not differentiated */
    long out_len;
    peft_tensor *(*fwd)(peft_graph *, peft_tensor **, void *);
    void (*ref)(double **, double *, void *);
    void *ctx;
    float scale;                /* input magnitude */
} fd_case;

static double fd_loss(fd_case *c, double **x, const double *R, double *y) {
    c->ref(x, y, c->ctx);
    double L = 0;
    for (long i = 0; i < c->out_len; i++) L += y[i] * R[i];
    return L;
}

static void fd_run(fd_case *c, const char *what, uint64_t seed) {
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    peft_graph *g = peft_graph_new();
    peft_tensor *in[MAXIN];
    double *xd[MAXIN];
    for (int i = 0; i < c->n_in; i++) {
        in[i] = peft_param_new(NULL, c->ndim[i], c->shape[i]);
        peft_param_set_trainable(in[i], !c->no_grad[i]);
        xd[i] = malloc(sizeof(double) * (size_t)c->len[i]);
        for (long k = 0; k < c->len[i]; k++) {
            in[i]->data[k] = c->scale * peft_rng_normal(&rng);
            xd[i][k] = in[i]->data[k];
        }
    }
    peft_tensor *y = c->fwd(g, in, c->ctx);
    REQUIRE(y && y->n == c->out_len, "%s: forward failed or wrong size: %s", what, peft_last_error());
    float *R = malloc(sizeof(float) * (size_t)c->out_len);
    double *Rd = malloc(sizeof(double) * (size_t)c->out_len), *yd = malloc(sizeof(double) * (size_t)c->out_len);
    for (long k = 0; k < c->out_len; k++) { R[k] = peft_rng_normal(&rng); Rd[k] = R[k]; }
    CHECK_OK(peft_backward_seed(g, y, R));
    fd_loss(c, xd, Rd, yd);
    double ferr = th_rel_err_fd(y->data, yd, c->out_len);
    CHECK(ferr < 1e-5, "%s: forward differs from the double reference: rel err %.3g", what, ferr);
    const double h = 1e-6;
    for (int i = 0; i < c->n_in; i++) {
        if (c->no_grad[i]) { CHECK(in[i]->grad == NULL, "%s: frozen input got a gradient buffer", what); continue; }
        double *fd = malloc(sizeof(double) * (size_t)c->len[i]);
        for (long k = 0; k < c->len[i]; k++) {
            double x0 = xd[i][k];
            xd[i][k] = x0 + h; double lp = fd_loss(c, xd, Rd, yd);
            xd[i][k] = x0 - h; double lm = fd_loss(c, xd, Rd, yd);
            xd[i][k] = x0;
            fd[k] = (lp - lm) / (2 * h);
        }
        double err = th_rel_err_fd(in[i]->grad, fd, c->len[i]);
        CHECK(err < 2e-4, "%s: gradient of input %d differs from finite differences: rel err %.3g", what, i, err);
        free(fd);
    }
    for (int i = 0; i < c->n_in; i++) { peft_param_free(in[i]); free(xd[i]); }
    free(R); free(Rd); free(yd);
    peft_graph_free(g);
}

static void set2(fd_case *c, int i, int64_t r, int64_t cols) {
    c->ndim[i] = 2; c->shape[i][0] = r; c->shape[i][1] = cols; c->len[i] = (long)(r * cols);
}
static void set1(fd_case *c, int i, int64_t n) {
    c->ndim[i] = 1; c->shape[i][0] = n; c->len[i] = (long)n;
}

/* ---- linear ---- */
typedef struct { int N, in, out; } lin_ctx;
static peft_tensor *lin_fwd(peft_graph *g, peft_tensor **x, void *c) { (void)c; return peft_linear(g, x[0], x[1]); }
static void lin_ref(double **x, double *y, void *vc) {
    lin_ctx *c = vc;
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->out; o++) {
            double s = 0;
            for (int i = 0; i < c->in; i++) s += x[0][n * c->in + i] * x[1][o * c->in + i];
            y[n * c->out + o] = s;
        }
}
TEST(test_fd_linear) {
    int shapes[][3] = { { 5, 7, 3 }, { 1, 33, 9 }, { 9, 4, 17 } };
    for (int s = 0; s < 3; s++) {
        lin_ctx lc = { shapes[s][0], shapes[s][1], shapes[s][2] };
        fd_case c = { 0 };
        c.n_in = 2; set2(&c, 0, lc.N, lc.in); set2(&c, 1, lc.out, lc.in);
        c.out_len = lc.N * lc.out; c.fwd = lin_fwd; c.ref = lin_ref; c.ctx = &lc; c.scale = 1;
        fd_run(&c, "linear", 10 + s);
        c.no_grad[1] = 1;               /* frozen weight: only dx */
        fd_run(&c, "linear (frozen W)", 20 + s);
    }
}

/* ---- embedding ---- */
typedef struct { int n, V, D; int ids[8]; } emb_ctx;
static peft_tensor *emb_fwd(peft_graph *g, peft_tensor **x, void *vc) { emb_ctx *c = vc; return peft_embedding(g, x[0], c->ids, c->n); }
static void emb_ref(double **x, double *y, void *vc) {
    emb_ctx *c = vc;
    for (int r = 0; r < c->n; r++) for (int j = 0; j < c->D; j++) y[r * c->D + j] = x[0][c->ids[r] * c->D + j];
}
TEST(test_fd_embedding) {
    emb_ctx ec = { 6, 5, 4, { 3, 0, 3, 4, 1, 3 } };   /* repeated ids accumulate */
    fd_case c = { 0 };
    c.n_in = 1; set2(&c, 0, ec.V, ec.D);
    c.out_len = ec.n * ec.D; c.fwd = emb_fwd; c.ref = emb_ref; c.ctx = &ec; c.scale = 1;
    fd_run(&c, "embedding", 3);
}

/* ---- rmsnorm ---- */
typedef struct { int R, D; float eps; } rms_ctx;
static peft_tensor *rms_fwd(peft_graph *g, peft_tensor **x, void *vc) { rms_ctx *c = vc; return peft_rmsnorm(g, x[0], x[1], c->eps); }
static void rms_ref(double **x, double *y, void *vc) {
    rms_ctx *c = vc;
    for (int r = 0; r < c->R; r++) {
        double ss = 0;
        for (int j = 0; j < c->D; j++) ss += x[0][r * c->D + j] * x[0][r * c->D + j];
        double inv = 1 / sqrt(ss / c->D + c->eps);
        for (int j = 0; j < c->D; j++) y[r * c->D + j] = x[1][j] * x[0][r * c->D + j] * inv;
    }
}
TEST(test_fd_rmsnorm) {
    rms_ctx rc = { 4, 11, 1e-5f };
    fd_case c = { 0 };
    c.n_in = 2; set2(&c, 0, rc.R, rc.D); set1(&c, 1, rc.D);
    c.out_len = rc.R * rc.D; c.fwd = rms_fwd; c.ref = rms_ref; c.ctx = &rc; c.scale = 1;
    fd_run(&c, "rmsnorm", 4);
}

/* ---- rope ---- */
typedef struct { int B, T, H, hd; peft_rope_table rt; float cs[64], sn[64]; } rope_ctx;
static peft_tensor *rope_fwd(peft_graph *g, peft_tensor **x, void *vc) { rope_ctx *c = vc; return peft_rope(g, x[0], c->H, &c->rt, c->B, c->T); }
static void rope_ref(double **x, double *y, void *vc) {
    rope_ctx *c = vc;
    int half = c->hd / 2;
    for (int r = 0; r < c->B * c->T; r++) {
        int pos = r % c->T;
        for (int h = 0; h < c->H; h++) {
            const double *xi = x[0] + (r * c->H + h) * c->hd;
            double *yo = y + (r * c->H + h) * c->hd;
            for (int i = 0; i < half; i++) {
                int a = c->rt.interleaved ? 2 * i : i, b = c->rt.interleaved ? 2 * i + 1 : i + half;
                double cs = c->cs[pos * half + i], sn = c->sn[pos * half + i];
                yo[a] = xi[a] * cs - xi[b] * sn;
                yo[b] = xi[b] * cs + xi[a] * sn;
            }
        }
    }
}
TEST(test_fd_rope) {
    for (int inter = 0; inter < 2; inter++) {
        rope_ctx rc = { 2, 5, 3, 6, { 0 }, { 0 }, { 0 } };
        for (int p = 0; p < rc.T; p++)
            for (int i = 0; i < rc.hd / 2; i++) {
                float ang = p * powf(10000.f, -2.f * i / rc.hd);
                rc.cs[p * 3 + i] = cosf(ang); rc.sn[p * 3 + i] = sinf(ang);
            }
        rc.rt.head_dim = rc.hd; rc.rt.rot_dim = rc.hd; rc.rt.interleaved = inter;
        rc.rt.n_pos = rc.T; rc.rt.cos = rc.cs; rc.rt.sin = rc.sn;
        fd_case c = { 0 };
        c.n_in = 1; set2(&c, 0, rc.B * rc.T, rc.H * rc.hd);
        c.out_len = c.len[0]; c.fwd = rope_fwd; c.ref = rope_ref; c.ctx = &rc; c.scale = 1;
        fd_run(&c, inter ? "rope (interleaved)" : "rope (rotate_half)", 5 + inter);
    }
}

/* ---- attention ---- */
typedef struct { int B, T, H, KV, hd; } att_ctx;
static peft_tensor *att_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    att_ctx *c = vc;
    return peft_attention(g, x[0], x[1], x[2], c->B, c->T, c->H, c->KV, c->hd);
}
static void att_ref(double **x, double *y, void *vc) {
    att_ctx *c = vc;
    int grp = c->H / c->KV;
    double p[64];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int t = 0; t < c->T; t++) {
                const double *q = x[0] + ((b * c->T + t) * c->H + h) * c->hd;
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const double *k = x[1] + ((b * c->T + j) * c->KV + h / grp) * c->hd;
                    double s = 0;
                    for (int d = 0; d < c->hd; d++) s += q[d] * k[d];
                    p[j] = s / sqrt((double)c->hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                double *o = y + ((b * c->T + t) * c->H + h) * c->hd;
                for (int d = 0; d < c->hd; d++) {
                    double s = 0;
                    for (int j = 0; j <= t; j++) s += p[j] / sum * x[2][((b * c->T + j) * c->KV + h / grp) * c->hd + d];
                    o[d] = s;
                }
            }
}
TEST(test_fd_attention) {
    att_ctx cases[] = { { 2, 5, 4, 2, 3 }, { 1, 6, 3, 3, 4 }, { 2, 4, 4, 1, 2 } };
    for (int s = 0; s < 3; s++) {
        att_ctx ac = cases[s];
        fd_case c = { 0 };
        c.n_in = 3;
        set2(&c, 0, ac.B * ac.T, ac.H * ac.hd);
        set2(&c, 1, ac.B * ac.T, ac.KV * ac.hd);
        set2(&c, 2, ac.B * ac.T, ac.KV * ac.hd);
        c.out_len = c.len[0]; c.fwd = att_fwd; c.ref = att_ref; c.ctx = &ac; c.scale = 1;
        fd_run(&c, "attention", 30 + s);
    }
}

/* ---- swiglu, add, scale ---- */
static peft_tensor *swi_fwd(peft_graph *g, peft_tensor **x, void *c) { (void)c; return peft_swiglu(g, x[0], x[1]); }
static void swi_ref(double **x, double *y, void *c) {
    long n = *(long *)c;
    for (long i = 0; i < n; i++) y[i] = x[0][i] / (1 + exp(-x[0][i])) * x[1][i];
}
static peft_tensor *add_fwd(peft_graph *g, peft_tensor **x, void *c) { (void)c; return peft_add(g, x[0], x[1]); }
static void add_ref(double **x, double *y, void *c) {
    long n = *(long *)c;
    for (long i = 0; i < n; i++) y[i] = x[0][i] + x[1][i];
}
static peft_tensor *scl_fwd(peft_graph *g, peft_tensor **x, void *c) { (void)c; return peft_scale(g, x[0], -0.37f); }
static void scl_ref(double **x, double *y, void *c) {
    long n = *(long *)c;
    for (long i = 0; i < n; i++) y[i] = (double)-0.37f * x[0][i];
}
TEST(test_fd_elementwise) {
    long n = 3 * 7;
    fd_case c = { 0 };
    c.n_in = 2; set2(&c, 0, 3, 7); set2(&c, 1, 3, 7);
    c.out_len = n; c.ctx = &n; c.scale = 2;
    c.fwd = swi_fwd; c.ref = swi_ref; fd_run(&c, "swiglu", 40);
    c.fwd = add_fwd; c.ref = add_ref; fd_run(&c, "add", 41);
    c.n_in = 1; c.fwd = scl_fwd; c.ref = scl_ref; fd_run(&c, "scale", 42);
}

/* ---- cross-entropy ---- */
typedef struct { int R, V; int tg[8]; } ce_ctx;
static peft_tensor *ce_fwd(peft_graph *g, peft_tensor **x, void *vc) { ce_ctx *c = vc; return peft_cross_entropy(g, x[0], c->tg); }
static void ce_ref(double **x, double *y, void *vc) {
    ce_ctx *c = vc;
    double tot = 0; int n = 0;
    for (int r = 0; r < c->R; r++) {
        if (c->tg[r] == -100) continue;
        double mx = -1e300, s = 0;
        for (int j = 0; j < c->V; j++) if (x[0][r * c->V + j] > mx) mx = x[0][r * c->V + j];
        for (int j = 0; j < c->V; j++) s += exp(x[0][r * c->V + j] - mx);
        tot += mx + log(s) - x[0][r * c->V + c->tg[r]];
        n++;
    }
    y[0] = n ? tot / n : 0;
}
TEST(test_fd_cross_entropy) {
    ce_ctx cc = { 5, 9, { 3, -100, 8, 0, 3 } };
    fd_case c = { 0 };
    c.n_in = 1; set2(&c, 0, cc.R, cc.V);
    c.out_len = 1; c.fwd = ce_fwd; c.ref = ce_ref; c.ctx = &cc; c.scale = 2;
    fd_run(&c, "cross_entropy", 50);
}

/* ---- gemm: every transposition on ragged shapes equals the reference ---- */
TEST(test_gemm_shapes) {
    int dims[] = { 1, 7, 33, 130, 257 };
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    for (int a = 0; a < 5; a++) for (int b = 0; b < 5; b++) for (int k = 0; k < 5; k += 2) {
        int M = dims[a], N = dims[b], K = dims[k];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) A[i] = peft_rng_normal(&rng);
        for (int i = 0; i < K * N; i++) B[i] = peft_rng_normal(&rng);
        for (int t = 0; t < 4; t++) {
            int tA = t & 1, tB = t >> 1;
            float beta = (t == 3) ? 0.5f : (float)(t & 1);
            for (int i = 0; i < M * N; i++) C1[i] = C2[i] = peft_rng_normal(&rng);
            peft_gemm(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, beta, C1, N);
            peft_gemm_ref(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, beta, C2, N);
            /* different summation orders: allow fp32 rounding over K terms */
            double err = th_rel_err_f(C1, C2, (long)M * N);
            CHECK(err < 1e-5, "gemm tA=%d tB=%d M=%d N=%d K=%d rel err %.3g", tA, tB, M, N, K, err);
        }
        free(A); free(B); free(C1); free(C2);
    }
}

TEST(test_backward_needs_scalar_and_skips_frozen) {
    peft_graph *g = peft_graph_new();
    int64_t s[2] = { 2, 3 };
    peft_tensor *x = peft_param_new("x", 2, s), *w = peft_param_new("w", 2, (int64_t[]){ 4, 3 });
    peft_tensor *y = peft_linear(g, x, w);                  /* nothing trainable */
    CHECK(y && !y->requires_grad, "an op over frozen inputs must not need a gradient");
    CHECK(peft_backward(g, y) != PEFT_OK, "backward of a non-scalar must be refused");
    CHECK(w->grad == NULL && x->grad == NULL, "frozen parameters own no gradient buffer");
    peft_param_free(x); peft_param_free(w);
    peft_graph_free(g);
}
