/* The backend table: registration, dispatch, and two test-only backends.
   "reference" wraps the CPU backend with the plain definitions (the linear
   op and the GEMM through peft_gemm_ref, the attention output through
   peft_attention_ref): the op checks of test_ops.c (fd_run) run against it
   as against the CPU one, the way ggml's test-backend-ops compares every
   backend with the CPU. "counting" forwards every entry to the CPU backend
   and counts the calls: a training step, a merge and a cached generation
   under it show that model code reaches every kernel through the table. */
#include "harness.h"

/* ---- reference: the CPU backend with the plain linear, GEMM and attention ---- */
static peft_status ref_linear(peft_graph *g, peft_op *op) {
    (void)g;
    peft_tensor *x = op->in[0], *W = op->in[1];
    int in = (int)W->shape[1], out = (int)W->shape[0], N = (int)(x->n / in);
    peft_gemm_ref(0, 1, N, out, in, x->data, in, W->data, in, 0.0f, op->out->data, out);
    return PEFT_OK;
}
static void ref_linear_bw(peft_graph *g, peft_op *op) {
    (void)g;
    peft_tensor *x = op->in[0], *W = op->in[1];
    int in = (int)W->shape[1], out = (int)W->shape[0], N = (int)(x->n / in);
    const float *dy = op->out->grad;
    if (x->requires_grad)
        peft_gemm_ref(0, 0, N, in, out, dy, out, W->data, in, x->grad_fresh ? 0.0f : 1.0f, x->grad, in);
    x->grad_fresh = 0;
    if (W->requires_grad) peft_gemm_ref(1, 0, out, in, N, dy, out, x->data, in, 1.0f, W->grad, in);
}

static double *to_double(const peft_tensor *t) {
    if (!t) return NULL;
    double *d = malloc(sizeof(double) * (size_t)t->n);
    for (int64_t j = 0; j < t->n; j++) d[j] = t->data[j];
    return d;
}

/* the CPU forward keeps the probabilities its backward needs; the output
   is then replaced by the plain definition's, in double */
static peft_status ref_attention(peft_graph *g, peft_op *op) {
    peft_status s = peft_backend_cpu()->op[PEFT_OP_ATTENTION].forward(g, op);
    if (s != PEFT_OK) return s;
    int B = op->i[0], T = op->i[1], H = op->i[2], KV = op->i[3], hd = op->i[4];
    double *in[8];
    for (int k = 0; k < 8; k++) in[k] = to_double(op->in[k]);
    peft_attn_ref_extras ex;
    memset(&ex, 0, sizeof ex);
    ex.pk = in[3];
    ex.pv = in[4];
    ex.n_prompts = op->i[5];
    ex.prompt_batched = op->i[6];
    ex.gate = in[5];
    ex.n_gate = op->in[5] ? (int)op->in[5]->n : 0;
    ex.gate_tanh = op->i[7];
    ex.x = in[6];
    ex.x_gate = in[7];
    ex.n_x_gate = op->in[7] ? (int)op->in[7]->n : 0;
    double *o = malloc(sizeof(double) * (size_t)op->out->n);
    peft_attention_ref(in[0], in[1], in[2], B, T, H, KV, hd, &ex, o);
    for (int64_t j = 0; j < op->out->n; j++) op->out->data[j] = (float)o[j];
    free(o);
    for (int k = 0; k < 8; k++) free(in[k]);
    return PEFT_OK;
}

static peft_backend ref_backend;

/* registers the test backends once (the registry has no removal) */
void test_backends_register(void) {
    static int done;
    if (done) return;
    done = 1;
    ref_backend = *peft_backend_cpu();
    ref_backend.name = "reference";
    ref_backend.op[PEFT_OP_LINEAR].forward = ref_linear;
    ref_backend.op[PEFT_OP_LINEAR].backward = ref_linear_bw;
    ref_backend.op[PEFT_OP_ATTENTION].forward = ref_attention;
    ref_backend.gemm = peft_gemm_ref;
    if (peft_backend_register(&ref_backend) != PEFT_OK)
        fprintf(stderr, "    registering the reference backend: %s\n", peft_last_error());
#ifdef PEFT_TEST_CUDA
    /* every op check (fd_run) and GEMM shape check runs on the CUDA backend too */
    if (peft_cuda_device_count() == 0) {
        printf("no CUDA device: the CUDA backend is not registered\n");
    } else if (peft_cuda_init(0, PEFT_CUDA_FP32) || peft_backend_register(peft_backend_cuda()) != PEFT_OK) {
        fprintf(stderr, "    registering the CUDA backend: %s %s\n", peft_cuda_error(), peft_last_error());
    } else {
        peft_cuda_heap_device(1);
    }
#endif
}

/* ---- counting: every entry forwarded to the CPU backend, counted ---- */
static long n_fwd[PEFT_OP_COUNT], n_bw[PEFT_OP_COUNT], n_gemm, n_decode, n_adamw, n_adamw8, n_sumsq,
    n_scale, n_alloc, n_zero, n_copy;
static peft_status cnt_fwd(peft_graph *g, peft_op *op) {
    n_fwd[op->kind]++;
    return peft_backend_cpu()->op[op->kind].forward(g, op);
}
static void cnt_bw(peft_graph *g, peft_op *op) {
    n_bw[op->kind]++;
    peft_backend_cpu()->op[op->kind].backward(g, op);
}
static void *cnt_alloc(size_t n) {
    n_alloc++;
    return peft_backend_cpu()->alloc(n);
}
static void cnt_zero(float *p, int64_t n) {
    n_zero++;
    peft_backend_cpu()->zero(p, n);
}
static void cnt_copy(float *d, const float *s, int64_t n) {
    n_copy++;
    peft_backend_cpu()->copy(d, s, n);
}
static void cnt_gemm(int tA, int tB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc) {
    n_gemm++;
    peft_backend_cpu()->gemm(tA, tB, M, N, K, A, lda, B, ldb, beta, C, ldc);
}
static void cnt_qm(const peft_qmatrix *q, int64_t row, int64_t col, int64_t n, float *out) {
    n_decode++;
    peft_backend_cpu()->qmatrix_decode(q, row, col, n, out);
}
static void cnt_adamw(const peft_adamw_scalars *k, float *w, const float *g, float *m, float *v, int64_t n) {
    n_adamw++;
    peft_backend_cpu()->adamw(k, w, g, m, v, n);
}
static void cnt_adamw8(const peft_adamw_scalars *k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                       float *am, float *av, int64_t n) {
    n_adamw8++;
    peft_backend_cpu()->adamw_8bit(k, w, g, qm, qv, am, av, n);
}
static double cnt_sumsq(const float *x, int64_t n, double acc) {
    n_sumsq++;
    return peft_backend_cpu()->sum_squares(x, n, acc);
}
static void cnt_scale(float *x, int64_t n, double coef) {
    n_scale++;
    peft_backend_cpu()->scale(x, n, coef);
}
static peft_backend cnt_backend;
static const peft_backend *counting_backend(void) {
    static int done;
    if (!done) {
        done = 1;
        cnt_backend = *peft_backend_cpu();
        cnt_backend.name = "counting";
        for (int k = 0; k < PEFT_OP_COUNT; k++) {
            cnt_backend.op[k].forward = cnt_fwd;
            if (k != PEFT_OP_ATTENTION_CACHED) cnt_backend.op[k].backward = cnt_bw;
        }
        cnt_backend.alloc = cnt_alloc;
        cnt_backend.zero = cnt_zero;
        cnt_backend.copy = cnt_copy;
        cnt_backend.gemm = cnt_gemm;
        cnt_backend.qmatrix_decode = cnt_qm;
        cnt_backend.adamw = cnt_adamw;
        cnt_backend.adamw_8bit = cnt_adamw8;
        cnt_backend.sum_squares = cnt_sumsq;
        cnt_backend.scale = cnt_scale;
        if (peft_backend_register(&cnt_backend) != PEFT_OK)
            fprintf(stderr, "    registering the counting backend: %s\n", peft_last_error());
    }
    return &cnt_backend;
}

TEST(test_backend_registry) {
    test_backends_register();
    const peft_backend *cpu = peft_backend_cpu();
    REQUIRE(peft_backend_count() >= 2 && peft_backend_get(0) == cpu, "the CPU backend is registered first");
    CHECK(strcmp(cpu->name, "cpu") == 0 && cpu->place == PEFT_PLACE_HOST, "cpu backend: name and place");
    CHECK(peft_backend_get(peft_backend_count()) == NULL && peft_backend_get(-1) == NULL, "get past the end");
    CHECK(peft_backend_current() == cpu, "the CPU backend is the default");
    CHECK(strcmp(peft_op_name(PEFT_OP_LINEAR_CROSS_ENTROPY), "linear_cross_entropy") == 0 &&
          strcmp(peft_op_name(PEFT_OP_COUNT), "?") == 0, "op names");
    /* a table with a missing entry is refused, naming it */
    peft_backend bad = *cpu;
    bad.name = "incomplete";
    bad.op[PEFT_OP_SWIGLU].backward = NULL;
    CHECK(peft_backend_register(&bad) == PEFT_ERR_ARG && strstr(peft_last_error(), "backward") &&
          strstr(peft_last_error(), "swiglu"), "missing backward not named: %s", peft_last_error());
    bad = *cpu;
    bad.name = "incomplete";
    bad.adamw_8bit = NULL;
    CHECK(peft_backend_register(&bad) == PEFT_ERR_ARG && strstr(peft_last_error(), "adamw_8bit"),
          "missing entry not named: %s", peft_last_error());
    CHECK(peft_backend_register(cpu) == PEFT_ERR_ARG && strstr(peft_last_error(), "already"),
          "the CPU backend registered twice");
    int n = peft_backend_count();
    bad = *cpu;
    bad.name = "reference";
    CHECK(peft_backend_register(&bad) == PEFT_ERR_ARG && peft_backend_count() == n, "a name taken twice");
    /* a graph computes on the backend in use when it was made; its tensors
       carry that backend's place */
    const peft_backend *ref = NULL;
    for (int i = 0; i < peft_backend_count(); i++)
        if (strcmp(peft_backend_get(i)->name, "reference") == 0) ref = peft_backend_get(i);
    REQUIRE(ref, "the reference backend is registered");
    CHECK(peft_backend_use(ref) == cpu && peft_backend_current() == ref, "use returns the previous backend");
    peft_graph *g = peft_graph_new();
    CHECK(peft_backend_use(NULL) == ref && peft_backend_current() == cpu, "use(NULL) is the CPU backend");
    REQUIRE(g && peft_graph_backend(g) == ref, "the graph keeps its backend");
    /* the reference linear is peft_gemm_ref's product exactly: the op went
       through the graph's table, not the CPU kernel */
    enum { N = 37, IN = 45, OUT = 29 };
    peft_tensor *x = peft_tensor_2d(g, N, IN), *W = peft_tensor_2d(g, OUT, IN);
    REQUIRE(x && W, "tensors");
    CHECK(x->place == PEFT_PLACE_HOST, "place");
    peft_rng r;
    peft_rng_seed(&r, 3);
    for (int j = 0; j < N * IN; j++) x->data[j] = peft_rng_normal(&r);
    for (int j = 0; j < OUT * IN; j++) W->data[j] = peft_rng_normal(&r);
    peft_tensor *y = peft_linear(g, x, W);
    REQUIRE(y, "linear: %s", peft_last_error());
    float *want = malloc(sizeof(float) * N * OUT);
    peft_gemm_ref(0, 1, N, OUT, IN, x->data, IN, W->data, IN, 0.0f, want, OUT);
    CHECK(memcmp(want, y->data, sizeof(float) * N * OUT) == 0, "the reference backend's linear did not run");
    free(want);
    void *p = peft_graph_scratch(g, 100);
    CHECK(p != NULL, "graph scratch");
    peft_graph_free(g);
}

/* A LoRA training step with clipping, a merge, and a cached generation,
   under the counting backend: every op the model uses is counted, the
   optimizer and clipping go through the table, and the numbers are the
   CPU backend's exactly. */
static int run_model(float *loss, float *w0, int *gen) {
    peft_config c;
    if (peft_config_preset(&c, "tiny") != PEFT_OK) return 0;
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.vocab_size = 64;
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 5) != PEFT_OK) return 0;
    peft_method meth = peft_method_defaults(PEFT_LORA);
    meth.lora_dropout = 0.1f;
    if (peft_attach(m, &meth) != PEFT_OK) return 0;
    peft_trainer_opts o = peft_trainer_defaults();
    o.max_grad_norm = 1e-3f;            /* clipping scales every step */
    peft_trainer *tr = peft_trainer_new(m, &o);
    int tok[2 * 12], tgt[2 * 12];
    for (int i = 0; i < 24; i++) {
        tok[i] = (i * 7) % 64;
        tgt[i] = i % 5 ? (i * 3) % 64 : -100;       /* every fifth row without a loss */
    }
    for (int s = 0; s < 2; s++)
        if (!tr || peft_trainer_step(tr, tok, tgt, 2, 12, &loss[s]) != PEFT_OK) return 0;
    peft_trainer_free(tr);
    if (peft_lora_merge(m) != PEFT_OK) return 0;
    *w0 = m->layers[0].lin[PEFT_Q].w->data[5];
    peft_graph *g = peft_graph_new();
    int prompt[3] = { 1, 2, 3 };
    int k = peft_generate_greedy(m, g, prompt, 3, 6, -1, gen);
    peft_graph_free(g);
    peft_model_free(m);
    return k == 6;
}

TEST(test_backend_dispatch_from_model_code) {
    float loss_cpu[2], loss_cnt[2], w_cpu, w_cnt;
    int gen_cpu[6], gen_cnt[6];
    REQUIRE(run_model(loss_cpu, &w_cpu, gen_cpu), "CPU run: %s", peft_last_error());
    const peft_backend *old = peft_backend_use(counting_backend());
    int ok = run_model(loss_cnt, &w_cnt, gen_cnt);
    peft_backend_use(old);
    REQUIRE(ok, "counting run: %s", peft_last_error());
    CHECK(memcmp(loss_cpu, loss_cnt, sizeof loss_cpu) == 0 && w_cpu == w_cnt &&
          memcmp(gen_cpu, gen_cnt, sizeof gen_cpu) == 0, "the counting backend changed the numbers");
    int used[] = { PEFT_OP_EMBEDDING, PEFT_OP_LINEAR, PEFT_OP_RMSNORM, PEFT_OP_ROPE, PEFT_OP_ATTENTION,
                   PEFT_OP_ATTENTION_CACHED, PEFT_OP_LORA_LINEAR, PEFT_OP_SWIGLU, PEFT_OP_ADD,
                   PEFT_OP_LINEAR_CROSS_ENTROPY };
    for (size_t i = 0; i < sizeof used / sizeof used[0]; i++)
        CHECK(n_fwd[used[i]] > 0, "%s: no forward through the table", peft_op_name(used[i]));
    int trained[] = { PEFT_OP_RMSNORM, PEFT_OP_ROPE, PEFT_OP_ATTENTION, PEFT_OP_LORA_LINEAR,
                      PEFT_OP_SWIGLU, PEFT_OP_ADD, PEFT_OP_LINEAR_CROSS_ENTROPY };
    for (size_t i = 0; i < sizeof trained / sizeof trained[0]; i++)
        CHECK(n_bw[trained[i]] > 0, "%s: no backward through the table", peft_op_name(trained[i]));
    CHECK(n_gemm > 0, "the LoRA merge's product did not go through the table");
    CHECK(n_adamw > 0 && n_sumsq > 0 && n_scale > 0, "optimizer %ld, clip %ld/%ld", n_adamw, n_sumsq,
          n_scale);
    CHECK(n_alloc > 0 && n_zero > 0, "arena %ld, zero %ld", n_alloc, n_zero);
    CHECK(n_copy > 0, "the KV cache's appends did not go through the table");
}

/* tools/check_backend.sh passes on peft.h and fails on a copy whose model
   code calls the GEMM directly */
TEST(test_backend_grep_check) {
    FILE *f = fopen("tools/check_backend.sh", "r");
    if (!f) SKIP("tools/check_backend.sh not found (run from the repository root)");
    fclose(f);
    CHECK(system("sh tools/check_backend.sh peft.h") == 0, "model code calls a kernel directly (see above)");
    char broken[600];
    snprintf(broken, sizeof broken, "%s/peft_direct_call.h", th_tmpdir());
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "sed 's|^PEFTDEF peft_status peft_lora_merge(peft_model \\*m) {$|&\\n    "
             "peft_gemm(0, 0, 1, 1, 1, 0, 1, 0, 1, 0.0f, 0, 1);|' peft.h > %s && "
             "grep -q '^    peft_gemm(0, 0, 1' %s", broken, broken);
    REQUIRE(system(cmd) == 0, "could not make the broken copy");
    snprintf(cmd, sizeof cmd, "sh tools/check_backend.sh %s > /dev/null", broken);
    CHECK(system(cmd) != 0, "the check passed a direct GEMM call in model code");
}
