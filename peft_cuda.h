/* peft_cuda.h — the optional CUDA layer of peft.h (issue 20): plain-C entry
   points, one per op direction, mirroring the CPU ops' math in peft.h.

   Why a second file: the kernels are CUDA C++ and need nvcc, while peft.h
   is C11 that gcc and clang build with libc and libm alone (and its
   implementation is not valid C++). So peft.h stays the single stb-style
   header of the CPU library; the GPU code is one more translation unit,
   peft_cuda.cu, compiled by nvcc and linked in. peft.h includes this file
   (inside its declarations, after the types it uses) only when PEFT_CUDA
   is defined; without it nothing here exists.

   Conventions: every pointer named here is DEVICE memory unless its comment
   says "host"; matrices are row-major with row strides (lda, ...) as in
   peft_gemm; gradients ACCUMULATE (+=) as the CPU tape does, except where
   a `beta` says otherwise. A NULL gradient pointer skips that gradient.
   Calls are asynchronous on one stream (peft_cuda_sync waits); those that
   return an int give 0 on success and otherwise fail with a message in
   peft_cuda_error(). Without a device, peft_cuda_device_count() is 0 and
   peft_cuda_init fails with "no CUDA device". */
#ifndef PEFT_CUDA_H
#define PEFT_CUDA_H

/* ---- device, errors, precision ---------------------------------------------- */
typedef enum {
    PEFT_CUDA_FP32 = 0, /* cuBLAS fp32, no tensor cores (the default: matches the CPU)   */
    PEFT_CUDA_TF32, /* fp32 storage, TF32 tensor cores (10-bit mantissa products)     */
    PEFT_CUDA_BF16 /* fp32 storage, BF16 tensor-core products, fp32 accumulation     */
} peft_cuda_precision;

PEFTDEF int peft_cuda_device_count(void); /* 0: no driver or no device (never fails) */
PEFTDEF int peft_cuda_init(int device, peft_cuda_precision precision);
PEFTDEF void peft_cuda_shutdown(void);
PEFTDEF const char *peft_cuda_error(void); /* the last failure, "" if none */
PEFTDEF int peft_cuda_device_name(char *buf, size_t n);
PEFTDEF int peft_cuda_sync(void);
/* device memory now in use and the peak since init (cudaMemGetInfo), bytes */
PEFTDEF int peft_cuda_mem_info(size_t *used, size_t *peak_used, size_t *total);

/* ---- memory --------------------------------------------------------------------
   Plain allocations (cudaMalloc) for parameters; one arena (one cudaMalloc,
   bump allocation, 256-byte aligned) for a step's activations, reset
   between steps as peft_graph_reset resets the CPU arena. */
PEFTDEF void *peft_cuda_malloc(size_t bytes); /* NULL + error on failure */
PEFTDEF void peft_cuda_free(void *p);
PEFTDEF int peft_cuda_upload(void *dst, const void *host_src, size_t bytes);
PEFTDEF int peft_cuda_download(void *host_dst, const void *src, size_t bytes);
PEFTDEF int peft_cuda_zero(void *dst, size_t bytes);
PEFTDEF int peft_cuda_arena_init(size_t bytes);
PEFTDEF void *peft_cuda_arena_alloc(size_t bytes); /* NULL + error when the arena is full */
PEFTDEF void peft_cuda_arena_reset(void);
PEFTDEF size_t peft_cuda_arena_peak(void);

/* ---- GEMM (cuBLAS) -------------------------------------------------------------
   C[M,N] = beta·C + alpha·op(A)[M,K]·op(B)[K,N], peft_gemm's row-major
   convention; the products use the precision given to peft_cuda_init. */
PEFTDEF int peft_cuda_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc);
/* How that call is handed to column-major cuBLAS: row-major C = op(A)·op(B)
   is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLAS gets (transa, transb, m, n,
   k) = (tB, tA, N, M, K) with B as its first operand and A as its second,
   the leading dimensions unchanged. Inline so that build/test-cuda checks
   the mapping against a column-major reference on any machine. */
typedef struct {
    int transa, transb, m, n, k;
} peft_cuda_gemm_plan;
static inline peft_cuda_gemm_plan peft_cuda_plan_gemm(int tA, int tB, int M, int N, int K) {
    peft_cuda_gemm_plan p;
    p.transa = tB;
    p.transb = tA;
    p.m = N;
    p.n = M;
    p.k = K;
    return p;
}

/* ---- ops: forward and backward ---------------------------------------------------
   Each mirrors the CPU op of the same name in peft.h's OPS section. */
/* y[r] = E[ids[r]];  dE[ids[r]] += dy[r]            E [V, D], ids device [n] */
PEFTDEF int peft_cuda_embedding_fwd(const float *E, int64_t D, const int *ids, int n, float *y);
PEFTDEF int peft_cuda_embedding_bwd(const float *dy, int64_t D, const int *ids, int n, float *dE);

/* y = w ⊙ x·r, r = 1/sqrt(mean(x²) + eps) per row, rs [R] kept for backward */
PEFTDEF int peft_cuda_rmsnorm_fwd(const float *x, const float *w, int64_t R, int64_t D, float eps, float *y,
                                  float *rs);
PEFTDEF int peft_cuda_rmsnorm_bwd(const float *x, const float *w, const float *dy, const float *rs, int64_t R,
                                  int64_t D, float *dx, float *dw);

/* dst (+)= rotate(src) by sign·θ, θ = pos·inv_freq; row r at position
   start[r / T] + r % T (start NULL: 0). cos/sin [n_pos, rot_dim/2].
   Forward: sign 1, accumulate 0; backward: sign −1, accumulate 1. */
PEFTDEF int peft_cuda_rope(float *dst, const float *src, int64_t rows, int n_heads, int T, int head_dim,
                           int rot_dim, int interleaved, const float *cos_t, const float *sin_t,
                           const int *start, float sign, int accumulate);

/* Causal GQA attention with the adapter prompts and the Excitor logit term,
   one pass of online softmax per query row (no [T, T] matrix anywhere):
     S_tj = s·q_t·(k_j + Gx_h·x_j), j ≤ t;  o_t = Σ_j softmax(S)_j v_j
     o_t += G_h · Σ_i softmax(s·q_t·pk_i)_i pv_i            (all K prompts)
   G and Gx are per-head device arrays [H] holding the gate VALUES (tanh
   already applied where the method asks); NULL means no prompts / no
   Excitor. lse [B·H·T] and lse_p [B·H·T] (when K > 0) are kept for the
   backward, which recomputes P from them. dG, dGx [H] receive ∂L/∂G_h and
   ∂L/∂Gx_h (the caller applies tanh's derivative). */
typedef struct {
    const float *q, *k, *v; /* [B·T, H·hd], [B·T, KV·hd], [B·T, KV·hd]          */
    const float *pk, *pv; /* [K or B·K, KV·hd] or NULL                          */
    const float *x; /* Excitor's extra keys, like k, or NULL              */
    const float *G, *Gx; /* [H] gate values or NULL                             */
    float *o, *lse, *lse_p; /* [B·T, H·hd], [B·H·T], [B·H·T]                       */
    const float *dout; /* backward: dL/do                                     */
    float *dq, *dk, *dv, *dpk, *dpv, *dx, *dG, *dGx; /* backward, accumulated; NULL skips */
    int B, T, H, KV, hd, K, prompt_batched;
} peft_cuda_attn;
PEFTDEF int peft_cuda_attention_fwd(peft_cuda_attn *a);
PEFTDEF int peft_cuda_attention_bwd(peft_cuda_attn *a);

/* Excitor's key reconstruction (peft_prompt_attend): o = softmax(q·pkᵀ/√d)·pv with q [N,d],
   pk [K,d], pv [K,e], unmasked; P [N,K] kept. Backward: dpv += Pᵀ·do, dP = do·pvᵀ,
   dS = P⊙(dP − rowsum(P⊙dP))/√d, dq += dS·pk, dpk += dSᵀ·q; scratch: N·K floats */
PEFTDEF int peft_cuda_prompt_attend_fwd(const float *q, const float *pk, const float *pv, int N, int d, int K,
                                        int e, float *P, float *o);
PEFTDEF int peft_cuda_prompt_attend_bwd(const float *q, const float *pk, const float *pv, const float *P,
                                        const float *dout, int N, int d, int K, int e, float *dq, float *dpk,
                                        float *dpv, float *scratch);

/* y = silu(g) ⊙ u;  dg += dy·u·σ(g)·(1 + g·(1 − σ(g))), du += dy·silu(g) */
PEFTDEF int peft_cuda_swiglu_fwd(const float *g, const float *u, int64_t n, float *y);
PEFTDEF int peft_cuda_swiglu_bwd(const float *g, const float *u, const float *dy, int64_t n, float *dg,
                                 float *du);

/* LLaMA-Adapter V2: o = s ⊙ (y + b) per column of y [R, C];
   dy += s ⊙ do, db += Σ_rows s ⊙ do, ds += Σ_rows do ⊙ (y + b) */
PEFTDEF int peft_cuda_bias_scale_fwd(const float *y, const float *b, const float *s, int64_t R, int64_t C,
                                     float *o);
PEFTDEF int peft_cuda_bias_scale_bwd(const float *y, const float *b, const float *s, const float *dout,
                                     int64_t R, int64_t C, float *dy, float *db, float *ds);

/* y = a + b;  y = s·x;  y += alpha·x (the backward of add, scale and bias) */
PEFTDEF int peft_cuda_add_fwd(const float *a, const float *b, int64_t n, float *y);
PEFTDEF int peft_cuda_scale_fwd(const float *x, float s, int64_t n, float *y);
PEFTDEF int peft_cuda_axpy(float *y, const float *x, float alpha, int64_t n);
/* o = y + b per column of y [R, C];  db += Σ_rows do (rows in order; dy += do is an axpy) */
PEFTDEF int peft_cuda_add_bias_fwd(const float *y, const float *b, int64_t R, int64_t C, float *o);
PEFTDEF int peft_cuda_add_bias_bwd(const float *dout, int64_t R, int64_t C, float *db);
/* T = E with row idx[i] replaced by R[i] (E, T [V, D]; R [n, D]; idx device [n], distinct);
   dE[r] += dT[r] for the rows r not replaced, dR[i] += dT[idx[i]]; scratch: V bytes */
PEFTDEF int peft_cuda_replace_rows_fwd(const float *E, const float *Rw, const int *idx, int n, int64_t V,
                                       int64_t D, float *T);
PEFTDEF int peft_cuda_replace_rows_bwd(const float *dT, const int *idx, int n, int64_t V, int64_t D,
                                       float *dE, float *dR, uint8_t *scratch);
/* Cross-entropy on logits z [R, V] (peft_cross_entropy): lse [R] kept, loss_rows [R]
   = lse − z[t] (0 where t = −100; the caller sums in row order and divides by N');
   backward dz += (softmax(z) − onehot(t))·scale with scale = dL/N' */
PEFTDEF int peft_cuda_cross_entropy_fwd(const float *z, const int *targets, int64_t R, int64_t V, float *lse,
                                        float *loss_rows);
PEFTDEF int peft_cuda_cross_entropy_bwd(const float *z, const int *targets, const float *lse, int64_t R,
                                        int64_t V, float scale, float *dz);

/* 4-bit weights (bitsandbytes' NF4/FP4 layout, peft_q4) on the device:
   packed codes two per byte (first element high nibble), per-64 absmax, or
   double-quantized 8-bit absmax codes with per-256 fp32 scales + offset. */
typedef struct {
    int type; /* peft_q4_type                              */
    float code[16]; /* its 16 values (peft_q4_code)              */
    int64_t n, n_blocks;
    int double_quant;
    uint8_t *packed; /* (n + 1) / 2                               */
    float *absmax; /* n_blocks, or NULL when double-quantized  */
    uint8_t *qabsmax; /* n_blocks                                  */
    float *nested_absmax; /* (n_blocks + 255) / 256                    */
    float offset;
} peft_cuda_q4;
/* copies a host peft_q4 to the device (fills *d; free with peft_cuda_q4_free) */
PEFTDEF int peft_cuda_q4_upload(peft_cuda_q4 *d, const peft_q4 *host);
PEFTDEF void peft_cuda_q4_free(peft_cuda_q4 *d);
/* decodes elements [start, start + count) into out (a check of the decoder) */
PEFTDEF int peft_cuda_q4_dequantize(const peft_cuda_q4 *W, int64_t start, int64_t count, float *out);
/* y [N, out] = x·Wᵀ, and dx [N, in] = beta·dx + dy·W, decoding W in the kernel */
PEFTDEF int peft_cuda_q4_linear_fwd(const float *x, const peft_cuda_q4 *W, int N, int out, int in, float *y);
PEFTDEF int peft_cuda_q4_linear_bwd(const float *dy, const peft_cuda_q4 *W, int N, int out, int in,
                                    float beta, float *dx);

/* ggml-typed frozen weights (peft_qmatrix) on the device: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
   Q5_0 and Q5_1 rows decoded in the kernel as peft_qmatrix_decode does (the K-quants are
   refused at upload, by name). */
typedef struct {
    int type; /* peft_ggml_type */
    int64_t rows, cols;
    size_t row_bytes;
    uint8_t *data; /* rows · row_bytes */
} peft_cuda_qmatrix;
PEFTDEF int peft_cuda_qmatrix_upload(peft_cuda_qmatrix *d, const peft_qmatrix *host);
PEFTDEF void peft_cuda_qmatrix_free(peft_cuda_qmatrix *d);
/* y [N, rows] = x·Wᵀ;  dx [N, cols] = beta·dx + dy·W */
PEFTDEF int peft_cuda_qmatrix_linear_fwd(const float *x, const peft_cuda_qmatrix *W, int N, float *y);
PEFTDEF int peft_cuda_qmatrix_linear_bwd(const float *dy, const peft_cuda_qmatrix *W, int N, float beta,
                                         float *dx);

/* LoRA dropout: the CPU's mask exactly (row n from peft_rng seeded key + n,
   two 24-bit uniforms per draw, kept when u ≥ ⌈p·2^24⌉): mask [N·in] bytes,
   xt = x ⊙ mask·keep. key: the one peft_rng_u64 draw the CPU op takes. */
PEFTDEF int peft_cuda_dropout(const float *x, uint64_t key, int N, int in, float p, float keep, uint8_t *mask,
                              float *xt);
/* y = x·Wᵀ + s·(x̃·Aᵀ)·Bᵀ with W fp32 (W), 4-bit (Wq), ggml blocks (Wm) or absent (all NULL);
   x̃ = xt when mask is given, else x. u [N, r] is kept for the backward;
   scratch: N·r floats. */
PEFTDEF int peft_cuda_lora_fwd(const float *x, const float *xt, const float *W, const peft_cuda_q4 *Wq,
                               const peft_cuda_qmatrix *Wm, const float *A, const float *Bm, int N, int in,
                               int out, int r, float s, float *y, float *u, float *scratch);
/* du = s·dy·B;  dB += s·dyᵀ·u;  dA += duᵀ·x̃;  dW += dyᵀ·x;
   dx = x_beta·dx + dy·W (or the frozen W) + (du·A) ⊙ mask·keep.
   scratch: N·r + N·in floats. */
PEFTDEF int peft_cuda_lora_bwd(const float *x, const float *xt, const uint8_t *mask, float keep,
                               const float *W, const peft_cuda_q4 *Wq, const peft_cuda_qmatrix *Wm,
                               const float *A, const float *Bm, const float *u, const float *dy, int N,
                               int in, int out, int r, float s, float *dx, float x_beta, float *dW, float *dA,
                               float *dB, float *scratch);

/* Fused classifier + cross-entropy, as peft_linear_cross_entropy: z = x·Wᵀ
   in chunks of `chunk` rows (scratch: chunk·V floats for z), per row
   loss_r = lse(z_r) − z_r[t_r] (0 for t_r = −100) into loss_rows [R], and
   dx = dz·W, dW += dzᵀ·x with dz = (softmax − onehot)·grad_scale
   (grad_scale = dL/N', the CPU's 1/N' times the upstream gradient). The
   caller sums loss_rows in row order on the host (deterministic, as CPU). */
PEFTDEF int peft_cuda_linear_ce(const float *x, const float *W, const int *targets, int R, int D, int V,
                                int chunk, float grad_scale, float *loss_rows, float *dx, float *dW,
                                float *scratch);

/* ---- optimizer --------------------------------------------------------------------
   AdamW in torch's order with the scalars peft_adamw_step forms in double:
   w *= decay; m += w1·(g − m); v = b2·v + w2·g²;
   w −= step_size · m / (√v / bc2_sqrt + eps). */
typedef struct {
    float decay, w1, b2, w2, step_size, bc2_sqrt, eps;
} peft_cuda_adam;
PEFTDEF int peft_cuda_adamw(const peft_cuda_adam *k, float *w, const float *g, float *m, float *v, int64_t n);
/* 8-bit states (bnb's blockwise scheme, blocks of 256): m with the signed
   dynamic map, v with the unsigned one, dequantized, updated and
   requantized per block as the CPU does (nearest code after the 65,536-
   point grid snap, ties to the lower code). am, av [ceil(n/256)]. */
PEFTDEF int peft_cuda_adamw8(const peft_cuda_adam *k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                             float *am, float *av, int64_t n);
/* Σ g² over the tensors (in double; per-block partials summed in a fixed
   order, so deterministic), and g *= coef. grads: a HOST array of device
   pointers. */
PEFTDEF int peft_cuda_grad_sumsq(float *const *grads, const int64_t *ns, int count, double *sumsq);
PEFTDEF int peft_cuda_scale(float *g, int64_t n, double coef); /* g = (float)(g·coef) */
/* torch.nn.utils.clip_grad_norm_ on device tensors: returns the norm
   before clipping through *norm; scales by max_norm/(norm + 1e-6) when < 1. */
PEFTDEF int peft_cuda_clip_grad_norm(float *const *grads, const int64_t *ns, int count, double max_norm,
                                     double *norm);

/* ---- the paged optimizer ------------------------------------------------------------
   bitsandbytes' paged AdamW for real: states in cudaMallocManaged memory,
   which the driver pages between host and device; each tensor's states are
   prefetched to the device before its update (and may be evicted under
   pressure). An allocation never asks for more managed memory than
   cudaMemGetInfo reports free (a larger request fails with a message). */
PEFTDEF void *peft_cuda_managed_alloc(size_t bytes);
PEFTDEF int peft_cuda_prefetch(const void *p, size_t bytes); /* to the device, on the stream */
PEFTDEF void peft_cuda_managed_free(void *p);

/* ---- the device code's arithmetic, run on the host -----------------------------------
   The parts that must reproduce the CPU bit for bit, compiled for both
   sides from one source (__host__ __device__), so that build/test-cuda
   checks them against peft.h where no GPU is: */
/* row n of the LoRA dropout (mask and x̃ for `in` inputs) */
PEFTDEF void peft_cuda_host_dropout_row(const float *x, uint64_t key, int n, int in, uint32_t cut, float keep,
                                        uint8_t *mask, float *xt);
/* the 8-bit code of x in a block of absmax am (code: 256 values) */
PEFTDEF uint8_t peft_cuda_host_quantize8(const float *code, float x, float am);
/* AdamW over host arrays through the kernels' element update (fp32 states), and
   the 8-bit kernel's block steps (dequantize, update, block absmax, requantize) */
PEFTDEF void peft_cuda_host_adamw(const peft_cuda_adam *k, float *w, const float *g, float *m, float *v,
                                  int64_t n);
PEFTDEF void peft_cuda_host_adamw8(const peft_cuda_adam *k, float *w, const float *g, uint8_t *qm,
                                   uint8_t *qv, float *am, float *av, int64_t n);
/* element (row, col) of a ggml-typed weight whose data is in HOST memory */
PEFTDEF float peft_cuda_host_qmatrix_at(const peft_cuda_qmatrix *W, int64_t row, int64_t col);
/* element e of a 4-bit weight whose arrays are in HOST memory */
PEFTDEF float peft_cuda_host_q4_at(const peft_cuda_q4 *W, int64_t e);

/* ---- the backend table ------------------------------------------------------------------
   peft_backend_cuda(): every entry of peft.h's backend table (see its BACKENDS manual) on these kernels,
   for peft_backend_register and peft_backend_use after peft_cuda_init. Memory: managed throughout, so
   that host code (tensor headers, losses, logits, gates, saving) reads the same pointers the kernels
   use: a program using this backend defines, before including peft.h with PEFT_IMPLEMENTATION,
       #define PEFT_MALLOC(n)     peft_cuda_heap_alloc(n)
       #define PEFT_REALLOC(p, n) peft_cuda_heap_realloc(p, n)
       #define PEFT_FREE(p)       peft_cuda_heap_free(p)
   and calls peft_cuda_heap_device(1) after peft_cuda_init: from then on the library's allocations are
   CUDA managed memory (pooled: blocks up to 1 MiB come from 64 MiB chunks); before it, and when the
   device is off, plain malloc (PEFT_FREE tells the two apart by the pointer, so either may be freed
   at any time, and free() stays right for what was allocated while the device was off; code that
   frees the library's buffers with free() after that defines free and realloc as
   peft_cuda_heap_free and peft_cuda_heap_realloc after its includes, as tools/peft.c does). Each op
   fails (PEFT_ERR_ARG, naming the op and the tensor) on a tensor the device cannot read; the cached
   attention (generation) and a GGUF token_embd lookup run peft.h's CPU kernel over the managed
   memory once the stream is idle; a GGUF output matrix in the fused loss and the K-quant linears are
   refused by name. Every entry waits for its kernels before it returns. */
PEFTDEF const peft_backend *peft_backend_cuda(void);
PEFTDEF void peft_cuda_heap_device(int on);
PEFTDEF void *peft_cuda_heap_alloc(size_t bytes);
PEFTDEF void *peft_cuda_heap_realloc(void *p, size_t bytes);
PEFTDEF void peft_cuda_heap_free(void *p);

#endif /* PEFT_CUDA_H */
