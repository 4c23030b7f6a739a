/* Finite-difference gradient checks for every op, against double-precision
   reference forwards written independently here (attention's is the
   library's plain peft_attention_ref, not its fast kernel). The loss is L = Σ y ⊙ R for
   a fixed random R; the analytic gradient (fp32, from the op's backward) must
   match central differences of the double reference (h = 1e-6) to 2e-4
   relative: fp32 rounding over these short reductions stays near 1e-6, and a
   wrong term in a backward is off by O(1). The forward must match the double
   reference to 1e-5 relative. */
#include "harness.h"
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#define MAXIN 8
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

static void fd_run_on(fd_case *c, const char *what, uint64_t seed) {
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
    double *Rd = malloc(sizeof(double) * (size_t)c->out_len),
           *yd = malloc(sizeof(double) * (size_t)c->out_len);
    for (long k = 0; k < c->out_len; k++) { R[k] = peft_rng_normal(&rng); Rd[k] = R[k]; }
    CHECK_OK(peft_backward_seed(g, y, R));
    fd_loss(c, xd, Rd, yd);
    double ferr = th_rel_err_fd(y->data, yd, c->out_len);
    CHECK(ferr < 1e-5, "%s: forward differs from the double reference: rel err %.3g", what, ferr);
    const double h = 1e-6;
    for (int i = 0; i < c->n_in; i++) {
        if (c->no_grad[i]) {
            CHECK(in[i]->grad == NULL, "%s: frozen input got a gradient buffer", what);
            continue;
        }
        double *fd = malloc(sizeof(double) * (size_t)c->len[i]);
        for (long k = 0; k < c->len[i]; k++) {
            double x0 = xd[i][k];
            xd[i][k] = x0 + h; double lp = fd_loss(c, xd, Rd, yd);
            xd[i][k] = x0 - h; double lm = fd_loss(c, xd, Rd, yd);
            xd[i][k] = x0;
            fd[k] = (lp - lm) / (2 * h);
        }
        double err = th_rel_err_fd(in[i]->grad, fd, c->len[i]);
        CHECK(err < 2e-4, "%s: gradient of input %d differs from finite differences: rel err %.3g", what, i,
              err);
        free(fd);
    }
    for (int i = 0; i < c->n_in; i++) { peft_param_free(in[i]); free(xd[i]); }
    free(R); free(Rd); free(yd);
    peft_graph_free(g);
}

/* every check against every registered backend (the CPU one and the test
   backends of test_backend.c), as ggml's test-backend-ops does */
void test_backends_register(void);
static void fd_run(fd_case *c, const char *what, uint64_t seed) {
    test_backends_register();
    for (int b = 0; b < peft_backend_count(); b++) {
        char name[200];
        snprintf(name, sizeof name, "%s [backend %s]", what, peft_backend_get(b)->name);
        const peft_backend *old = peft_backend_use(peft_backend_get(b));
        fd_run_on(c, name, seed);
        peft_backend_use(old);
    }
}

static void set2(fd_case *c, int i, int64_t r, int64_t cols) {
    c->ndim[i] = 2; c->shape[i][0] = r; c->shape[i][1] = cols; c->len[i] = (long)(r * cols);
}
static void set1(fd_case *c, int i, int64_t n) {
    c->ndim[i] = 1; c->shape[i][0] = n; c->len[i] = (long)n;
}

/* ---- linear ---- */
typedef struct { int N, in, out; } lin_ctx;
static peft_tensor *lin_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_linear(g, x[0], x[1]);
}
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
static peft_tensor *emb_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    emb_ctx *c = vc;
    return peft_embedding(g, x[0], c->ids, c->n);
}
static void emb_ref(double **x, double *y, void *vc) {
    emb_ctx *c = vc;
    for (int r = 0; r < c->n; r++)
        for (int j = 0; j < c->D; j++) y[r * c->D + j] = x[0][c->ids[r] * c->D + j];
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
static peft_tensor *rms_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    rms_ctx *c = vc;
    return peft_rmsnorm(g, x[0], x[1], c->eps);
}
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
static peft_tensor *rope_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    rope_ctx *c = vc;
    return peft_rope(g, x[0], c->H, &c->rt, c->B, c->T);
}
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
    peft_attention_ref(x[0], x[1], x[2], c->B, c->T, c->H, c->KV, c->hd, NULL, y);
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

/* ---- attention with gated prompts and the Excitor logit term ---- */
typedef struct { int B, T, H, KV, hd, K, batched, tanh_gate, n_gate, excitor; } atx_ctx;
static peft_tensor *atx_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    atx_ctx *c = vc;
    peft_attn_extras ex = { 0 };
    if (c->K) {
        ex.pk = x[3];
        ex.pv = x[4];
        ex.n_prompts = c->K;
        ex.gate = x[5];
        ex.gate_tanh = c->tanh_gate;
    }
    if (c->excitor) { ex.x = x[6]; ex.x_gate = x[7]; }
    return peft_attention_ex(g, x[0], x[1], x[2], c->B, c->T, c->H, c->KV, c->hd, &ex);
}
static void atx_ref(double **x, double *y, void *vc) {
    atx_ctx *c = vc;
    peft_attn_ref_extras ex = { 0 };
    if (c->K) {
        ex.pk = x[3];
        ex.pv = x[4];
        ex.n_prompts = c->K;
        ex.prompt_batched = c->batched;
        ex.gate = x[5];
        ex.n_gate = c->n_gate;
        ex.gate_tanh = c->tanh_gate;
    }
    if (c->excitor) {
        ex.x = x[6];
        ex.x_gate = x[7];
        ex.n_x_gate = c->H;
    }
    peft_attention_ref(x[0], x[1], x[2], c->B, c->T, c->H, c->KV, c->hd, &ex, y);
}
TEST(test_fd_attention_prompts_excitor) {
    atx_ctx cases[] = {
        { 2, 5, 4, 2, 3, 3, 0, 1, 4, 0 },    /* shared prompts, per-head tanh gates (paper V1)  */
        { 2, 4, 4, 2, 3, 2, 1, 1, 4, 0 },    /* per-sequence prompts (V2 early fusion)          */
        { 1, 5, 3, 3, 4, 4, 0, 0, 1, 0 },    /* one raw gate per layer (PEFT AdaptionPrompt)     */
        { 2, 5, 4, 2, 3, 0, 0, 0, 0, 1 },    /* Excitor: gated extra keys on the logits          */
        { 2, 4, 4, 1, 2, 2, 0, 1, 4, 1 },    /* both at once, one kv head                        */
    };
    for (int s = 0; s < 5; s++) {
        atx_ctx ac = cases[s];
        fd_case c = { 0 };
        int Bp = ac.batched ? ac.B : 1;
        c.n_in = 8;
        set2(&c, 0, ac.B * ac.T, ac.H * ac.hd);
        set2(&c, 1, ac.B * ac.T, ac.KV * ac.hd);
        set2(&c, 2, ac.B * ac.T, ac.KV * ac.hd);
        set2(&c, 3, Bp * (ac.K ? ac.K : 1), ac.KV * ac.hd);
        set2(&c, 4, Bp * (ac.K ? ac.K : 1), ac.KV * ac.hd);
        set1(&c, 5, ac.n_gate ? ac.n_gate : 1);
        set2(&c, 6, ac.B * ac.T, ac.KV * ac.hd);
        set1(&c, 7, ac.H);
        if (!ac.K) c.no_grad[3] = c.no_grad[4] = c.no_grad[5] = 1;
        if (!ac.excitor) c.no_grad[6] = c.no_grad[7] = 1;
        c.out_len = c.len[0]; c.fwd = atx_fwd; c.ref = atx_ref; c.ctx = &ac; c.scale = 1;
        fd_run(&c, "attention with prompts/excitor", 60 + s);
    }
}

/* Zero gates: bit-identical to plain attention, and no gradient reaches the
   prompts (LLaMA-Adapter's zero-init argument). */
TEST(test_attention_zero_gate_exact) {
    enum { B = 2, T = 6, H = 4, KV = 2, hd = 4, K = 3 };
    peft_rng r;
    peft_rng_seed(&r, 9);
    int64_t sq[2] = { B * T, H * hd }, sk[2] = { B * T, KV * hd }, sp[2] = { K, KV * hd }, sg[1] = { H };
    peft_tensor *q = peft_param_new("q", 2, sq), *k = peft_param_new("k", 2, sk),
                *v = peft_param_new("v", 2, sk);
    peft_tensor *pk = peft_param_new("pk", 2, sp), *pv = peft_param_new("pv", 2, sp),
                *gt = peft_param_new("g", 1, sg);
    peft_tensor *x = peft_param_new("x", 2, sk), *xg = peft_param_new("xg", 1, sg);
    peft_tensor *all[8] = { q, k, v, pk, pv, gt, x, xg };
    for (int i = 0; i < 8; i++) {
        if (i != 5 && i != 7) for (int64_t j = 0; j < all[i]->n; j++) all[i]->data[j] = peft_rng_normal(&r);
        peft_param_set_trainable(all[i], 1);
    }
    peft_graph *g = peft_graph_new();
    peft_tensor *o0 = peft_attention(g, q, k, v, B, T, H, KV, hd);
    peft_attn_extras ex = { pk, pv, K, gt, 1, x, xg };
    peft_tensor *o1 = peft_attention_ex(g, q, k, v, B, T, H, KV, hd, &ex);
    REQUIRE(o0 && o1, "forward");
    CHECK(memcmp(o0->data, o1->data, sizeof(float) * o0->n) == 0,
          "zero gates must give bit-identical output");
    float seed[B * T * H * hd];
    for (int i = 0; i < B * T * H * hd; i++) seed[i] = peft_rng_normal(&r);
    REQUIRE_OK(peft_backward_seed(g, o1, seed));
    int zero = 1;
    for (int64_t j = 0; j < pk->n; j++) if (pk->grad[j] != 0 || pv->grad[j] != 0) zero = 0;
    CHECK(zero, "prompt gradients must be exactly zero while the gate is zero");
    float gsum = 0;
    for (int h = 0; h < H; h++) gsum += fabsf(gt->grad[h]);
    CHECK(gsum > 0, "the gate itself must receive a gradient");
    for (int i = 0; i < 8; i++) peft_param_free(all[i]);
    peft_graph_free(g);
}

/* ---- LoRA linear (with and without dropout) ---- */
typedef struct { int N, in, out, r; float s, p; uint64_t seed; } lora_ctx;
static peft_tensor *lora_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    lora_ctx *c = vc;
    static peft_rng rng;
    peft_rng_seed(&rng, c->seed);
    return peft_lora_linear(g, x[0], x[1], x[2], x[3], c->s, c->p, c->p > 0 ? &rng : NULL);
}
static void lora_ref(double **x, double *y, void *vc) {
    lora_ctx *c = vc;
    peft_rng rng;
    peft_rng_seed(&rng, c->seed);
    double *xd = malloc(sizeof(double) * c->N * c->in), u[64];
    /* row n's mask: a generator seeded with key + n, two 24-bit uniforms
       per 64-bit draw (bits 40-63, then 16-39); dropped when u < p */
    uint64_t key = peft_rng_u64(&rng), bits = 0;
    for (int n = 0; n < c->N; n++) {
        peft_rng row;
        peft_rng_seed(&row, key + (uint64_t)n);
        for (int i = 0; i < c->in; i++) {
            int j = n * c->in + i;
            if (!(i & 1)) bits = peft_rng_u64(&row);
            double u = (double)((i & 1 ? bits >> 16 : bits >> 40) & 0xFFFFFF) / 16777216.0;
            xd[j] = c->p > 0 ? (u < c->p ? 0 : x[0][j] * (double)(1.0f / (1.0f - c->p))) : x[0][j];
        }
    }
    for (int n = 0; n < c->N; n++) {
        for (int k = 0; k < c->r; k++) {
            u[k] = 0;
            for (int i = 0; i < c->in; i++) u[k] += xd[n * c->in + i] * x[2][k * c->in + i];
        }
        for (int o = 0; o < c->out; o++) {
            double acc = 0, l = 0;
            for (int i = 0; i < c->in; i++) acc += x[0][n * c->in + i] * x[1][o * c->in + i];
            for (int k = 0; k < c->r; k++) l += u[k] * x[3][o * c->r + k];
            y[n * c->out + o] = acc + (double)c->s * l;
        }
    }
    free(xd);
}
TEST(test_fd_lora_linear) {
    lora_ctx cases[] = { { 5, 7, 6, 3, 2.0f, 0.0f, 1 },
                         { 6, 9, 4, 2, 0.5f, 0.3f, 2 },
                         { 1, 3, 5, 1, 1.0f, 0.0f, 3 } };
    for (int s = 0; s < 3; s++) {
        lora_ctx lc = cases[s];
        fd_case c = { 0 };
        c.n_in = 4;
        set2(&c, 0, lc.N, lc.in);
        set2(&c, 1, lc.out, lc.in);
        set2(&c, 2, lc.r, lc.in);
        set2(&c, 3, lc.out, lc.r);
        c.no_grad[1] = 1;                         /* the frozen base weight */
        c.out_len = lc.N * lc.out; c.fwd = lora_fwd; c.ref = lora_ref; c.ctx = &lc; c.scale = 1;
        fd_run(&c, "lora_linear", 70 + s);
        c.no_grad[1] = 0;
        fd_run(&c, "lora_linear (trainable W)", 80 + s);
    }
}

/* ---- V2 bias/scale ---- */
typedef struct { int R, C; } bs_ctx;
static peft_tensor *bs_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_bias_scale(g, x[0], x[1], x[2]);
}
static void bs_ref(double **x, double *y, void *vc) {
    bs_ctx *c = vc;
    for (int r = 0; r < c->R; r++)
        for (int j = 0; j < c->C; j++) y[r * c->C + j] = x[2][j] * (x[0][r * c->C + j] + x[1][j]);
}
TEST(test_fd_bias_scale) {
    bs_ctx bc = { 5, 6 };
    fd_case c = { 0 };
    c.n_in = 3; set2(&c, 0, bc.R, bc.C); set1(&c, 1, bc.C); set1(&c, 2, bc.C);
    c.out_len = bc.R * bc.C; c.fwd = bs_fwd; c.ref = bs_ref; c.ctx = &bc; c.scale = 1;
    fd_run(&c, "bias_scale", 90);
}

static peft_tensor *ab_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_add_bias(g, x[0], x[1]);
}
static void ab_ref(double **x, double *y, void *vc) {
    bs_ctx *c = vc;
    for (int r = 0; r < c->R; r++)
        for (int j = 0; j < c->C; j++) y[r * c->C + j] = x[0][r * c->C + j] + x[1][j];
}
TEST(test_fd_add_bias) {
    bs_ctx bc = { 4, 7 };
    fd_case c = { 0 };
    c.n_in = 2; set2(&c, 0, bc.R, bc.C); set1(&c, 1, bc.C);
    c.out_len = bc.R * bc.C; c.fwd = ab_fwd; c.ref = ab_ref; c.ctx = &bc; c.scale = 1;
    fd_run(&c, "add_bias", 92);
}

/* ---- prompt attention (Excitor reconstruction) ---- */
typedef struct { int N, d, K, e; } pa_ctx;
static peft_tensor *pa_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_prompt_attend(g, x[0], x[1], x[2]);
}
static void pa_ref(double **x, double *y, void *vc) {
    pa_ctx *c = vc;
    double p[32];
    for (int n = 0; n < c->N; n++) {
        double mx = -1e300, sum = 0;
        for (int i = 0; i < c->K; i++) {
            double s = 0;
            for (int j = 0; j < c->d; j++) s += x[0][n * c->d + j] * x[1][i * c->d + j];
            p[i] = s / sqrt((double)c->d);
            if (p[i] > mx) mx = p[i];
        }
        for (int i = 0; i < c->K; i++) { p[i] = exp(p[i] - mx); sum += p[i]; }
        for (int j = 0; j < c->e; j++) {
            double s = 0;
            for (int i = 0; i < c->K; i++) s += p[i] / sum * x[2][i * c->e + j];
            y[n * c->e + j] = s;
        }
    }
}
TEST(test_fd_prompt_attend) {
    pa_ctx pc = { 6, 4, 5, 3 };
    fd_case c = { 0 };
    c.n_in = 3; set2(&c, 0, pc.N, pc.d); set2(&c, 1, pc.K, pc.d); set2(&c, 2, pc.K, pc.e);
    c.out_len = pc.N * pc.e; c.fwd = pa_fwd; c.ref = pa_ref; c.ctx = &pc; c.scale = 1;
    fd_run(&c, "prompt_attend", 91);
}

/* ---- swiglu, add, scale ---- */
static peft_tensor *swi_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_swiglu(g, x[0], x[1]);
}
static void swi_ref(double **x, double *y, void *c) {
    long n = *(long *)c;
    for (long i = 0; i < n; i++) y[i] = x[0][i] / (1 + exp(-x[0][i])) * x[1][i];
}
static peft_tensor *add_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_add(g, x[0], x[1]);
}
static void add_ref(double **x, double *y, void *c) {
    long n = *(long *)c;
    for (long i = 0; i < n; i++) y[i] = x[0][i] + x[1][i];
}
static peft_tensor *scl_fwd(peft_graph *g, peft_tensor **x, void *c) {
    (void)c;
    return peft_scale(g, x[0], -0.37f);
}
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
static peft_tensor *ce_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    ce_ctx *c = vc;
    return peft_cross_entropy(g, x[0], c->tg);
}
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

/* Parallel work runs flush-to-zero on x86 (denormals cost ~100 cycles per
   operation; see peft__ftz_enter): a product of denormal inputs is exactly
   0 on any thread count, where IEEE arithmetic gives 40·1e-39·1e10 = 4e-28,
   and the caller's MXCSR is the same afterwards. */
TEST(test_parallel_flushes_denormals) {
#if defined(__SSE2__) && !defined(PEFT_KEEP_DENORMALS)
    enum { M = 40, N = 40, K = 40 };
    static float A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++) A[i] = 1e-39f;                  /* denormal */
    for (int i = 0; i < K * N; i++) B[i] = 1e10f;
    int threads = peft_get_threads();
    for (int t = 1; t <= 2; t++) {
        peft_set_threads(t);
        unsigned before = _mm_getcsr();
        peft_gemm(0, 0, M, N, K, A, K, B, N, 0.0f, C, N);
        CHECK(_mm_getcsr() == before, "%d threads: MXCSR %#x after the product, %#x before", t, _mm_getcsr(),
              before);
        int nonzero = 0;
        for (int i = 0; i < M * N; i++) nonzero += C[i] != 0.0f;
        CHECK(nonzero == 0, "%d threads: %d of %d outputs non-zero (C[0] = %g): denormals not flushed", t,
              nonzero, M * N, C[0]);
    }
    peft_set_threads(threads);
#else
    SKIP("flush-to-zero applies to x86 builds without PEFT_KEEP_DENORMALS");
#endif
}

/* ---- gemm: every transposition on ragged shapes equals the reference ---- */
TEST(test_gemm_shapes) {
    test_backends_register();
    int dims[] = { 1, 7, 33, 130, 257 };
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    for (int a = 0; a < 5; a++) for (int b = 0; b < 5; b++) for (int k = 0; k < 5; k += 2) {
        int M = dims[a], N = dims[b], K = dims[k];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        float *C0 = malloc(sizeof(float) * M * N);
        for (int i = 0; i < M * K; i++) A[i] = peft_rng_normal(&rng);
        for (int i = 0; i < K * N; i++) B[i] = peft_rng_normal(&rng);
        for (int t = 0; t < 4; t++) {
            int tA = t & 1, tB = t >> 1;
            float beta = (t == 3) ? 0.5f : (float)(t & 1);
            for (int i = 0; i < M * N; i++) C0[i] = C2[i] = peft_rng_normal(&rng);
            peft_gemm_ref(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, beta, C2, N);
            /* peft_gemm, then every registered backend's GEMM entry, from the same C */
            for (int be = -1; be < peft_backend_count(); be++) {
                memcpy(C1, C0, sizeof(float) * (size_t)M * N);
                if (be < 0) peft_gemm(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, beta, C1, N);
                else peft_backend_get(be)->gemm(tA, tB, M, N, K, A, tA ? M : K, B, tB ? K : N, beta, C1, N);
                /* different summation orders: allow fp32 rounding over K terms */
                double err = th_rel_err_f(C1, C2, (long)M * N);
                CHECK(err < 1e-5, "gemm [%s] tA=%d tB=%d M=%d N=%d K=%d rel err %.3g",
                      be < 0 ? "peft_gemm" : peft_backend_get(be)->name, tA, tB, M, N, K, err);
            }
        }
        free(A); free(B); free(C0); free(C1); free(C2);
    }
    /* past one K slice (700 = 3 slices of 234) and one column slice (1500 = 768 + 732),
       and threads: two threads give the same bits twice and the same bits as one;
       130 x 2100 keeps each thread's packed A across the three column slices */
    int big[][3] = { { 37, 1500, 700 }, { 200, 70, 1300 }, { 1, 2049, 5 }, { 130, 2100, 700 } };
    for (int c = 0; c < 4; c++) {
        int M = big[c][0], N = big[c][1], K = big[c][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
        float *C[4];
        for (int i = 0; i < 4; i++) C[i] = calloc((size_t)M * N, sizeof(float));
        for (int i = 0; i < M * K; i++) A[i] = peft_rng_normal(&rng);
        for (int i = 0; i < K * N; i++) B[i] = peft_rng_normal(&rng);
        int keep = peft_get_threads();
        peft_set_threads(1);
        peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C[0], N);
        peft_set_threads(2);
        peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C[1], N);
        peft_gemm(0, 1, M, N, K, A, K, B, K, 0.0f, C[2], N);
        peft_set_threads(keep);
        peft_gemm_ref(0, 1, M, N, K, A, K, B, K, 0.0f, C[3], N);
        CHECK(th_rel_err_f(C[0], C[3], (long)M * N) < 1e-5, "gemm %dx%dx%d vs reference", M, N, K);
        CHECK(!memcmp(C[1], C[2], sizeof(float) * (size_t)M * N),
              "gemm %dx%dx%d: two threads, two runs differ", M, N, K);
        CHECK(!memcmp(C[0], C[1], sizeof(float) * (size_t)M * N), "gemm %dx%dx%d: 1 and 2 threads differ", M,
              N, K);
        free(A); free(B);
        for (int i = 0; i < 4; i++) free(C[i]);
    }
}

TEST(test_backward_needs_scalar_and_skips_frozen) {
    CHECK(peft_check_cpu() == PEFT_OK, "this CPU runs this build's kernels: %s", peft_last_error());
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

/* ---- fused classifier + cross-entropy: the same loss and gradients as
   cross_entropy(linear(x, w)), against the double reference ---- */
typedef struct { int R, D, V; int tg[8]; } lce_ctx;
static peft_tensor *lce_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    lce_ctx *c = vc;
    return peft_linear_cross_entropy(g, x[0], x[1], c->tg);
}
static void lce_ref(double **x, double *y, void *vc) {
    lce_ctx *c = vc;
    double tot = 0, z[16];
    int n = 0;
    for (int r = 0; r < c->R; r++) {
        if (c->tg[r] == -100) continue;
        double mx = -1e300, s = 0;
        for (int j = 0; j < c->V; j++) {
            z[j] = 0;
            for (int d = 0; d < c->D; d++) z[j] += x[0][r * c->D + d] * x[1][j * c->D + d];
            if (z[j] > mx) mx = z[j];
        }
        for (int j = 0; j < c->V; j++) s += exp(z[j] - mx);
        tot += mx + log(s) - z[c->tg[r]];
        n++;
    }
    y[0] = n ? tot / n : 0;
}
TEST(test_fd_linear_cross_entropy) {
    lce_ctx cc = { 6, 5, 11, { 3, -100, 10, 0, -100, 7 } };
    fd_case c = { 0 };
    c.n_in = 2; set2(&c, 0, cc.R, cc.D); set2(&c, 1, cc.V, cc.D);
    c.out_len = 1; c.fwd = lce_fwd; c.ref = lce_ref; c.ctx = &cc; c.scale = 1;
    fd_run(&c, "linear_cross_entropy", 51);
    c.no_grad[1] = 1;                             /* a frozen classifier (LoRA's case) */
    fd_run(&c, "linear_cross_entropy, frozen w", 52);
}

/* chunked (the test build holds 8 MB of logits at a time, PEFT_LCE_CHUNK_MB:
   a 40,000-word vocabulary makes 7 chunks of 48 rows, and W is packed once
   for all of them): the fused op equals cross_entropy(linear) in loss and in
   both gradients */
TEST(test_linear_cross_entropy_chunks) {
    int R = 500, D = 8, V = 40000;
    int64_t sx[2] = { R, D }, sw[2] = { V, D };
    peft_tensor *x = peft_param_new("x", 2, sx), *w = peft_param_new("w", 2, sw);
    peft_param_set_trainable(x, 1);
    peft_param_set_trainable(w, 1);
    peft_rng r;
    peft_rng_seed(&r, 9);
    for (int64_t i = 0; i < x->n; i++) x->data[i] = peft_rng_normal(&r);
    for (int64_t i = 0; i < w->n; i++) w->data[i] = 0.3f * peft_rng_normal(&r);
    int *t = malloc(sizeof(int) * R);
    for (int i = 0; i < R; i++) t[i] = i % 3 == 0 ? -100 : (int)(peft_rng_u64(&r) % (uint64_t)V);
    float loss[2], *gx[2], *gw[2];
    for (int k = 0; k < 2; k++) {
        peft_graph *g = peft_graph_new();
        memset(x->grad, 0, sizeof(float) * (size_t)x->n);
        memset(w->grad, 0, sizeof(float) * (size_t)w->n);
        peft_tensor *L =
                k ? peft_linear_cross_entropy(g, x, w, t) : peft_cross_entropy(g, peft_linear(g, x, w), t);
        REQUIRE(L, "forward %d: %s", k, peft_last_error());
        REQUIRE_OK(peft_backward(g, L));
        loss[k] = L->data[0];
        gx[k] = malloc(sizeof(float) * (size_t)x->n); memcpy(gx[k], x->grad, sizeof(float) * (size_t)x->n);
        gw[k] = malloc(sizeof(float) * (size_t)w->n); memcpy(gw[k], w->grad, sizeof(float) * (size_t)w->n);
        peft_graph_free(g);
    }
    CHECK(fabsf(loss[0] - loss[1]) <= 1e-5f * fabsf(loss[0]), "loss %g vs %g", loss[0], loss[1]);
    CHECK(th_rel_err_f(gx[1], gx[0], x->n) < 1e-4, "dx rel err %.3g", th_rel_err_f(gx[1], gx[0], x->n));
    CHECK(th_rel_err_f(gw[1], gw[0], w->n) < 1e-4, "dw rel err %.3g", th_rel_err_f(gw[1], gw[0], w->n));
    for (int k = 0; k < 2; k++) { free(gx[k]); free(gw[k]); }
    free(t);
    peft_param_free(x); peft_param_free(w);
}

/* ---- replaced rows (trainable tokens) ---- */
typedef struct { int V, D, n, N, as_weight; int idx[4]; } rr_ctx;
static peft_tensor *rr_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    rr_ctx *c = vc;
    peft_tensor *T = peft_replace_rows(g, x[0], x[1], c->idx, c->n);
    return c->as_weight ? peft_linear(g, x[2], T) : T;    /* as a tied lm_head uses it */
}
static void rr_ref(double **x, double *y, void *vc) {
    rr_ctx *c = vc;
    double *T = malloc(sizeof(double) * c->V * c->D);
    for (int k = 0; k < c->V * c->D; k++) T[k] = x[0][k];
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->D; j++) T[c->idx[i] * c->D + j] = x[1][i * c->D + j];
    if (!c->as_weight)
        for (int k = 0; k < c->V * c->D; k++) y[k] = T[k];
    for (int r = 0; c->as_weight && r < c->N; r++)
        for (int v = 0; v < c->V; v++) {
            double s = 0;
            for (int j = 0; j < c->D; j++) s += x[2][r * c->D + j] * T[v * c->D + j];
            y[r * c->V + v] = s;
        }
    free(T);
}
TEST(test_fd_replace_rows) {
    for (int w = 0; w < 2; w++)
        for (int frozen = 0; frozen < 2; frozen++) {
            rr_ctx rc = { 7, 5, 3, 4, w, { 5, 0, 3 } };
            fd_case c = { 0 };
            c.n_in = w ? 3 : 2;
            set2(&c, 0, rc.V, rc.D);
            set2(&c, 1, rc.n, rc.D);
            if (w) set2(&c, 2, rc.N, rc.D);
            c.no_grad[0] = frozen;              /* the base table is frozen under LoRA */
            c.out_len = w ? rc.N * rc.V : rc.V * rc.D;
            c.fwd = rr_fwd; c.ref = rr_ref; c.ctx = &rc; c.scale = 1;
            fd_run(&c, w ? "replace_rows as a weight" : "replace_rows", 40 + 2 * w + frozen);
        }
    /* repeated or out-of-range rows are refused */
    peft_graph *g = peft_graph_new();
    int64_t se[2] = { 4, 2 }, sr[2] = { 2, 2 };
    peft_tensor *E = peft_param_new(NULL, 2, se), *R = peft_param_new(NULL, 2, sr);
    int rep[2] = { 1, 1 }, out[2] = { 1, 4 };
    CHECK(!peft_replace_rows(g, E, R, rep, 2) && strstr(peft_last_error(), "repeated"), "repeated rows: %s",
          peft_last_error());
    peft_graph_reset(g);
    CHECK(!peft_replace_rows(g, E, R, out, 2) && strstr(peft_last_error(), "range"), "row 4 of 4: %s",
          peft_last_error());
    peft_param_free(E);
    peft_param_free(R);
    peft_graph_free(g);
}

/* ==== LLaMA-4 mixture of experts: QK L2 norm, row scale, chunked attention, router, experts ==== */

/* ---- l2norm ---- */
typedef struct { int R, G; float eps; } l2_ctx;
static peft_tensor *l2_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    l2_ctx *c = vc;
    return peft_l2norm(g, x[0], c->G, c->eps);
}
static void l2_ref(double **x, double *y, void *vc) {
    l2_ctx *c = vc;
    for (int r = 0; r < c->R; r++) {
        double ss = 0;
        for (int j = 0; j < c->G; j++) ss += x[0][r * c->G + j] * x[0][r * c->G + j];
        double inv = 1 / sqrt(ss / c->G + c->eps);
        for (int j = 0; j < c->G; j++) y[r * c->G + j] = x[0][r * c->G + j] * inv;
    }
}
TEST(test_fd_l2norm) {
    l2_ctx lc = { 6 * 3, 8, 1e-5f };          /* 6 rows of 3 heads of 8 */
    fd_case c = { 0 };
    c.n_in = 1; set2(&c, 0, 6, 3 * 8);
    c.out_len = 6 * 24; c.fwd = l2_fwd; c.ref = l2_ref; c.ctx = &lc; c.scale = 1;
    fd_run(&c, "l2norm", 60);
}

/* ---- row scale ---- */
typedef struct { int R, C, P; float s[8]; } rs_ctx;
static peft_tensor *rs_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    rs_ctx *c = vc;
    return peft_row_scale(g, x[0], c->s, c->P);
}
static void rs_ref(double **x, double *y, void *vc) {
    rs_ctx *c = vc;
    for (int r = 0; r < c->R; r++)
        for (int j = 0; j < c->C; j++) y[r * c->C + j] = c->s[r % c->P] * x[0][r * c->C + j];
}
TEST(test_fd_row_scale) {
    rs_ctx rc = { 6, 5, 3, { 1.0f, 1.5f, -0.25f } };
    fd_case c = { 0 };
    c.n_in = 1; set2(&c, 0, rc.R, rc.C);
    c.out_len = rc.R * rc.C; c.fwd = rs_fwd; c.ref = rs_ref; c.ctx = &rc; c.scale = 1;
    fd_run(&c, "row_scale", 61);
}

/* ---- chunked attention ---- */
typedef struct { int B, T, H, KV, hd, chunk; } ca_ctx;
static peft_tensor *ca_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    ca_ctx *c = vc;
    return peft_attention_chunked(g, x[0], x[1], x[2], c->B, c->T, c->H, c->KV, c->hd, c->chunk);
}
static void ca_ref(double **x, double *y, void *vc) {
    ca_ctx *c = vc;
    int qw = c->H * c->hd, kw = c->KV * c->hd;
    double p[64];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int t = 0; t < c->T; t++) {
                int kh = h / (c->H / c->KV), lo = t / c->chunk * c->chunk;
                double mx = -1e300, sum = 0;
                for (int j = lo; j <= t; j++) {
                    double s = 0;
                    for (int d = 0; d < c->hd; d++)
                        s += x[0][(b * c->T + t) * qw + h * c->hd + d] *
                             x[1][(b * c->T + j) * kw + kh * c->hd + d];
                    p[j] = s / sqrt((double)c->hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = lo; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                for (int d = 0; d < c->hd; d++) {
                    double o = 0;
                    for (int j = lo; j <= t; j++)
                        o += p[j] / sum * x[2][(b * c->T + j) * kw + kh * c->hd + d];
                    y[(b * c->T + t) * qw + h * c->hd + d] = o;
                }
            }
}
TEST(test_fd_attention_chunked) {
    int chunks[] = { 3, 1, 16 };              /* chunks that split the sequence, single tokens, none */
    for (int i = 0; i < 3; i++) {
        ca_ctx ac = { 2, 7, 4, 2, 4, chunks[i] };
        fd_case c = { 0 };
        c.n_in = 3; set2(&c, 0, ac.B * ac.T, ac.H * ac.hd); set2(&c, 1, ac.B * ac.T, ac.KV * ac.hd);
        set2(&c, 2, ac.B * ac.T, ac.KV * ac.hd);
        c.out_len = ac.B * ac.T * ac.H * ac.hd; c.fwd = ca_fwd; c.ref = ca_ref; c.ctx = &ac; c.scale = 1;
        fd_run(&c, "attention_chunked", 62 + i);
    }
    /* a chunk as long as the sequence is plain causal attention (the library's reference) */
    peft_graph *g = peft_graph_new();
    int64_t sq[2] = { 14, 16 }, sk[2] = { 14, 8 };
    peft_tensor *q = peft_param_new(NULL, 2, sq), *k = peft_param_new(NULL, 2, sk),
                *v = peft_param_new(NULL, 2, sk);
    peft_rng r;
    peft_rng_seed(&r, 5);
    for (int j = 0; j < 14 * 16; j++) q->data[j] = peft_rng_normal(&r);
    for (int j = 0; j < 14 * 8; j++) { k->data[j] = peft_rng_normal(&r); v->data[j] = peft_rng_normal(&r); }
    peft_tensor *o = peft_attention_chunked(g, q, k, v, 2, 7, 4, 2, 4, 7);
    double qd[14 * 16], kd[14 * 8], vd[14 * 8], od[14 * 16];
    for (int j = 0; j < 14 * 16; j++) qd[j] = q->data[j];
    for (int j = 0; j < 14 * 8; j++) { kd[j] = k->data[j]; vd[j] = v->data[j]; }
    peft_attention_ref(qd, kd, vd, 2, 7, 4, 2, 4, NULL, od);
    REQUIRE(o, "chunked attention failed: %s", peft_last_error());
    CHECK(th_rel_err_fd(o->data, od, 14 * 16) < 1e-5, "chunk = T differs from causal attention");
    peft_param_free(q); peft_param_free(k); peft_param_free(v);
    peft_graph_free(g);
}

/* ---- router: top-k of the logits, sigmoid of the chosen ones ---- */
typedef struct { int N, E, K; } rt_ctx;
static peft_tensor *rt_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    rt_ctx *c = vc;
    const int *idx;
    return peft_moe_route(g, x[0], c->K, &idx);
}
static void rt_ref(double **x, double *y, void *vc) {
    rt_ctx *c = vc;
    for (int n = 0; n < c->N; n++) {
        int taken[16] = { 0 };
        for (int j = 0; j < c->K; j++) {
            int best = -1;
            for (int e = 0; e < c->E; e++)
                if (!taken[e] && (best < 0 || x[0][n * c->E + e] > x[0][n * c->E + best])) best = e;
            taken[best] = 1;
            y[n * c->K + j] = 1 / (1 + exp(-x[0][n * c->E + best]));
        }
    }
}
TEST(test_fd_moe_route) {
    for (int K = 1; K <= 3; K += 2) {
        rt_ctx rc = { 9, 5, K };
        fd_case c = { 0 };
        c.n_in = 1; set2(&c, 0, rc.N, rc.E);
        c.out_len = rc.N * rc.K; c.fwd = rt_fwd; c.ref = rt_ref; c.ctx = &rc; c.scale = 1;
        fd_run(&c, "moe_route", 65 + K);
    }
    /* the chosen experts, largest first */
    peft_graph *g = peft_graph_new();
    int64_t sh[2] = { 1, 4 };
    peft_tensor *z = peft_param_new(NULL, 2, sh);
    float zz[4] = { 0.5f, 2.0f, -1.0f, 1.0f };
    memcpy(z->data, zz, sizeof zz);
    const int *idx;
    peft_tensor *s = peft_moe_route(g, z, 2, &idx);
    REQUIRE(s && idx, "route failed");
    CHECK(idx[0] == 1 && idx[1] == 3, "top-2 of {0.5, 2, -1, 1} is {1, 3}, got {%d, %d}", idx[0], idx[1]);
    CHECK(!peft_moe_route(g, z, 5, &idx) && strstr(peft_last_error(), "top_k"), "top_k 5 of 4: %s",
          peft_last_error());
    peft_param_free(z);
    peft_graph_free(g);
}

/* ---- routed experts: grouped GEMMs over each expert's tokens ---- */
typedef struct { int N, D, F, E, K; int idx[64]; } ex_ctx;
/* a 3-d view of a 2-d parameter: same data and gradient buffer */
static peft_tensor *view3(peft_graph *g, peft_tensor *p, int64_t a, int64_t b, int64_t c) {
    int64_t sh[3] = { a, b, c };
    peft_tensor *v = peft_tensor_new(g, 3, sh);
    v->data = p->data;
    v->grad = p->grad;
    v->requires_grad = p->requires_grad;
    v->is_param = 1;
    return v;
}
static peft_tensor *ex_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    ex_ctx *c = vc;
    return peft_moe_experts(g, x[0], x[1], c->idx, view3(g, x[2], c->E, c->D, 2 * c->F),
                            view3(g, x[3], c->E, c->F, c->D));
}
static void ex_ref(double **x, double *y, void *vc) {
    ex_ctx *c = vc;
    int D = c->D, F = c->F;
    for (int i = 0; i < c->N * D; i++) y[i] = 0;
    for (int n = 0; n < c->N; n++)
        for (int j = 0; j < c->K; j++) {
            int e = c->idx[n * c->K + j];
            double s = x[1][n * c->K + j], a[16];
            const double *GU = x[2] + (long)e * D * 2 * F, *DN = x[3] + (long)e * F * D;
            for (int f = 0; f < F; f++) {
                double hg = 0, hu = 0;
                for (int d = 0; d < D; d++) {
                    hg += s * x[0][n * D + d] * GU[d * 2 * F + f];
                    hu += s * x[0][n * D + d] * GU[d * 2 * F + F + f];
                }
                a[f] = hg / (1 + exp(-hg)) * hu;
            }
            for (int d = 0; d < D; d++)
                for (int f = 0; f < F; f++) y[n * D + d] += a[f] * DN[f * D + d];
        }
}
TEST(test_fd_moe_experts) {
    /* 7 tokens, 4 experts (expert 2 gets none), top-1 and top-2 */
    ex_ctx e1 = { 7, 6, 5, 4, 1, { 0, 3, 1, 0, 3, 3, 1 } };
    ex_ctx e2 = { 7, 6, 5, 4, 2, { 0, 3, 1, 0, 3, 1, 0, 1, 3, 0, 1, 3, 0, 3 } };
    ex_ctx *cases[2] = { &e1, &e2 };
    for (int i = 0; i < 2; i++) {
        ex_ctx *ec = cases[i];
        for (int frozen = 0; frozen < 2; frozen++) {
            fd_case c = { 0 };
            c.n_in = 4; set2(&c, 0, ec->N, ec->D); set2(&c, 1, ec->N, ec->K);
            set2(&c, 2, ec->E * ec->D, 2 * ec->F); set2(&c, 3, ec->E * ec->F, ec->D);
            c.no_grad[2] = c.no_grad[3] = frozen;  /* frozen experts: LoRA elsewhere, router trained */
            c.out_len = ec->N * ec->D; c.fwd = ex_fwd; c.ref = ex_ref; c.ctx = ec; c.scale = 0.7f;
            fd_run(&c, frozen ? "moe_experts (frozen experts)" : "moe_experts", 70 + 2 * i + frozen);
        }
    }
}

/* ---- routed experts with LoRA in PEFT's target_parameters layout ---- */
typedef struct { ex_ctx ex; int r; float scale; } exl_ctx;
static peft_tensor *exl_fwd(peft_graph *g, peft_tensor **x, void *vc) {
    exl_ctx *c = vc;
    ex_ctx *e = &c->ex;
    return peft_moe_experts_lora(g, x[0], x[1], e->idx, view3(g, x[2], e->E, e->D, 2 * e->F),
                                 view3(g, x[3], e->E, e->F, e->D), x[4], x[5], x[6], x[7], c->scale);
}
/* W_e + s·B_e·A_e with B_e[i, j] = B[i, j·E + e], A_e = rows e·r .. of A, then the plain experts */
static void exl_ref(double **x, double *y, void *vc) {
    exl_ctx *c = vc;
    ex_ctx *e = &c->ex;
    int D = e->D, F = e->F, E = e->E, r = c->r;
    double *W[2];
    for (int k = 0; k < 2; k++) {
        long in = k ? F : D, out = k ? D : 2 * F;
        const double *A = x[4 + 2 * k], *B = x[5 + 2 * k];
        W[k] = malloc(sizeof(double) * (size_t)(E * in * out));
        for (int ex = 0; ex < E; ex++)
            for (long i = 0; i < in; i++)
                for (long o = 0; o < out; o++) {
                    double d = 0;
                    for (int j = 0; j < r; j++) d += B[i * r * E + j * E + ex] * A[(ex * r + j) * out + o];
                    W[k][(ex * in + i) * out + o] = x[2 + k][(ex * in + i) * out + o] + c->scale * d;
                }
    }
    double *xx[4] = { x[0], x[1], W[0], W[1] };
    ex_ref(xx, y, e);
    free(W[0]);
    free(W[1]);
}
TEST(test_fd_moe_experts_lora) {
    exl_ctx c2 = { { 7, 6, 5, 4, 2, { 0, 3, 1, 0, 3, 1, 0, 1, 3, 0, 1, 3, 0, 3 } }, 2, 1.5f };
    for (int frozen = 0; frozen < 2; frozen++) {
        ex_ctx *ec = &c2.ex;
        int rE = c2.r * ec->E;
        fd_case c = { 0 };
        c.n_in = 8; set2(&c, 0, ec->N, ec->D); set2(&c, 1, ec->N, ec->K);
        set2(&c, 2, ec->E * ec->D, 2 * ec->F); set2(&c, 3, ec->E * ec->F, ec->D);
        set2(&c, 4, rE, 2 * ec->F); set2(&c, 5, ec->D, rE); set2(&c, 6, rE, ec->D); set2(&c, 7, ec->F, rE);
        c.no_grad[2] = c.no_grad[3] = 1;        /* experts frozen, as under LoRA */
        c.no_grad[0] = c.no_grad[1] = frozen;   /* first layer: nothing upstream trains */
        c.out_len = ec->N * ec->D; c.fwd = exl_fwd; c.ref = exl_ref; c.ctx = &c2; c.scale = 0.6f;
        fd_run(&c, frozen ? "moe_experts_lora (only LoRA trains)" : "moe_experts_lora", 80 + frozen);
    }
}
