/* peft_cuda.cu — the CUDA layer of peft.h (declared in peft_cuda.h; why it is
   a separate file is said there). Compiled by nvcc with PEFT_CUDA defined;
   links against an object that holds peft.h's implementation (for the code
   tables it reads: peft_q4_code, peft_dynamic_map[_unsigned]).

   The kernels are written to be plainly correct rather than fast: one
   thread or one warp per output row or element, the reductions in a fixed
   order where the CPU's are (so results are deterministic), atomics only
   where several query rows add into one key/value row. Built with
   --fmad=false so that an element-wise formula rounds as the CPU's does
   (gcc under -std=c11 contracts nothing). */
#include "peft.h"

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- errors and state ---------------------------------------------------------- */
static char peft__cu_err[512];
static int peft__cu_ready;
static cudaStream_t peft__cu_stream;
static cublasHandle_t peft__cu_blas;
static peft_cuda_precision peft__cu_prec;
static size_t peft__cu_peak_used;

static int peft__cu_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(peft__cu_err, sizeof peft__cu_err, fmt, ap);
    va_end(ap);
    return 1;
}
#define PEFT__CU(call)                                                                                       \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) return peft__cu_fail("cuda: %s: %s", #call, cudaGetErrorString(e_));          \
    } while (0)
#define PEFT__CU_LAUNCHED(name)                                                                              \
    do {                                                                                                     \
        cudaError_t e_ = cudaGetLastError();                                                                 \
        if (e_ != cudaSuccess) return peft__cu_fail("cuda: kernel %s: %s", name, cudaGetErrorString(e_));    \
    } while (0)
#define PEFT__CU_READY()                                                                                     \
    do {                                                                                                     \
        if (!peft__cu_ready) return peft__cu_fail("cuda: peft_cuda_init was not called");                    \
    } while (0)

static unsigned peft__cu_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b);
}
static void peft__cu_note_peak(void) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot - fr > peft__cu_peak_used)
        peft__cu_peak_used = tot - fr;
}

/* bnb's signed and unsigned dynamic maps (8-bit optimizer states, double-
   quantized 4-bit absmax), copied from peft.h's tables at init */
__constant__ float peft__cu_smap[256];
__constant__ float peft__cu_umap[256];

extern "C" {

PEFTDEF const char *peft_cuda_error(void) { return peft__cu_err; }

PEFTDEF int peft_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver: not sticky, just none */
        return 0;
    }
    return n;
}

PEFTDEF int peft_cuda_init(int device, peft_cuda_precision precision) {
    if (peft__cu_ready) return 0;
    if (peft_cuda_device_count() <= device) return peft__cu_fail("cuda: no CUDA device %d", device);
    PEFT__CU(cudaSetDevice(device));
    PEFT__CU(cudaStreamCreateWithFlags(&peft__cu_stream, cudaStreamNonBlocking));
    if (cublasCreate(&peft__cu_blas) != CUBLAS_STATUS_SUCCESS)
        return peft__cu_fail("cuda: cublasCreate failed");
    cublasSetStream(peft__cu_blas, peft__cu_stream);
    cublasMath_t mode = precision == PEFT_CUDA_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH;
    if (precision == PEFT_CUDA_BF16) mode = CUBLAS_DEFAULT_MATH;
    if (cublasSetMathMode(peft__cu_blas, mode) != CUBLAS_STATUS_SUCCESS)
        return peft__cu_fail("cuda: cublasSetMathMode failed");
    PEFT__CU(cudaMemcpyToSymbol(peft__cu_smap, peft_dynamic_map(), 256 * sizeof(float)));
    PEFT__CU(cudaMemcpyToSymbol(peft__cu_umap, peft_dynamic_map_unsigned(), 256 * sizeof(float)));
    peft__cu_prec = precision;
    peft__cu_ready = 1;
    peft__cu_note_peak();
    return 0;
}

PEFTDEF int peft_cuda_device_name(char *buf, size_t n) {
    cudaDeviceProp p;
    int dev = 0;
    PEFT__CU(cudaGetDevice(&dev));
    PEFT__CU(cudaGetDeviceProperties(&p, dev));
    snprintf(buf, n, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / 1073741824.0);
    return 0;
}

PEFTDEF int peft_cuda_sync(void) {
    PEFT__CU_READY();
    PEFT__CU(cudaStreamSynchronize(peft__cu_stream));
    return 0;
}

PEFTDEF int peft_cuda_mem_info(size_t *used, size_t *peak_used, size_t *total) {
    size_t fr = 0, tot = 0;
    PEFT__CU(cudaMemGetInfo(&fr, &tot));
    if (tot - fr > peft__cu_peak_used) peft__cu_peak_used = tot - fr;
    if (used) *used = tot - fr;
    if (peak_used) *peak_used = peft__cu_peak_used;
    if (total) *total = tot;
    return 0;
}

/* ---- memory ----------------------------------------------------------------------- */
PEFTDEF void *peft_cuda_malloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        peft__cu_fail("cuda: cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    peft__cu_note_peak();
    return p;
}
PEFTDEF void peft_cuda_free(void *p) {
    if (p) cudaFree(p);
}
PEFTDEF int peft_cuda_upload(void *dst, const void *src, size_t bytes) {
    PEFT__CU_READY();
    /* Default: the source may be the heap's managed memory (peft_backend_cuda), where a stated
       direction would not match the pointer */
    PEFT__CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, peft__cu_stream));
    PEFT__CU(cudaStreamSynchronize(peft__cu_stream)); /* the host buffer may go away */
    return 0;
}
PEFTDEF int peft_cuda_download(void *dst, const void *src, size_t bytes) {
    PEFT__CU_READY();
    PEFT__CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, peft__cu_stream));
    PEFT__CU(cudaStreamSynchronize(peft__cu_stream));
    return 0;
}
PEFTDEF int peft_cuda_zero(void *dst, size_t bytes) {
    PEFT__CU_READY();
    PEFT__CU(cudaMemsetAsync(dst, 0, bytes, peft__cu_stream));
    return 0;
}

static char *peft__cu_arena;
static size_t peft__cu_arena_cap, peft__cu_arena_used, peft__cu_arena_peak;

PEFTDEF int peft_cuda_arena_init(size_t bytes) {
    PEFT__CU_READY();
    if (peft__cu_arena) cudaFree(peft__cu_arena);
    peft__cu_arena = NULL;
    peft__cu_arena_cap = peft__cu_arena_used = 0;
    void *p = peft_cuda_malloc(bytes);
    if (!p) return 1;
    peft__cu_arena = (char *)p;
    peft__cu_arena_cap = bytes;
    return 0;
}
PEFTDEF void *peft_cuda_arena_alloc(size_t bytes) {
    size_t at = (peft__cu_arena_used + 255) / 256 * 256;
    if (!peft__cu_arena || at + bytes > peft__cu_arena_cap) {
        peft__cu_fail("cuda: the device arena (%zu bytes) cannot hold %zu more bytes", peft__cu_arena_cap,
                      bytes);
        return NULL;
    }
    peft__cu_arena_used = at + bytes;
    if (peft__cu_arena_used > peft__cu_arena_peak) peft__cu_arena_peak = peft__cu_arena_used;
    return peft__cu_arena + at;
}
PEFTDEF void peft_cuda_arena_reset(void) { peft__cu_arena_used = 0; }
PEFTDEF size_t peft_cuda_arena_peak(void) { return peft__cu_arena_peak; }

PEFTDEF void peft_cuda_shutdown(void) {
    if (!peft__cu_ready) return;
    if (peft__cu_arena) cudaFree(peft__cu_arena);
    peft__cu_arena = NULL;
    peft__cu_arena_cap = peft__cu_arena_used = peft__cu_arena_peak = 0;
    cublasDestroy(peft__cu_blas);
    cudaStreamDestroy(peft__cu_stream);
    peft__cu_ready = 0;
}

/* ---- GEMM ---------------------------------------------------------------------------
   The mapping to column-major cuBLAS is peft_cuda_plan_gemm's (peft_cuda.h). */
PEFTDEF int peft_cuda_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc) {
    PEFT__CU_READY();
    if (M <= 0 || N <= 0) return 0;
    peft_cuda_gemm_plan p = peft_cuda_plan_gemm(tA, tB, M, N, K);
    cublasOperation_t ta = p.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t s;
    if (peft__cu_prec == PEFT_CUDA_BF16)
        s = cublasGemmEx(peft__cu_blas, ta, tb, p.m, p.n, p.k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                         &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT);
    else
        s = cublasSgemm(peft__cu_blas, ta, tb, p.m, p.n, p.k, &alpha, B, ldb, A, lda, &beta, C, ldc);
    if (s != CUBLAS_STATUS_SUCCESS)
        return peft__cu_fail("cuda: cuBLAS gemm %dx%dx%d failed (status %d)", M, N, K, (int)s);
    return 0;
}

} /* extern "C" */

/* ---- embedding ------------------------------------------------------------------------ */
__global__ void peft__k_embed_fwd(const float *E, int64_t D, const int *ids, int64_t total, float *y) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    y[i] = E[(int64_t)ids[i / D] * D + i % D];
}
/* several rows may hold one id: their adds meet in dE, hence the atomics */
__global__ void peft__k_embed_bwd(const float *dy, int64_t D, const int *ids, int64_t total, float *dE) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    atomicAdd(dE + (int64_t)ids[i / D] * D + i % D, dy[i]);
}

/* ---- RMSNorm: a block of 256 threads per row ------------------------------------------- */
#define PEFT__CU_RT 256
__device__ float peft__cu_block_sum(float v, float *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}
__device__ double peft__cu_block_sum_d(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}
__global__ void peft__k_rms_fwd(const float *x, const float *w, int64_t D, float eps, float *y, float *rs) {
    __shared__ float sh[PEFT__CU_RT];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) ss += xr[j] * xr[j];
    ss = peft__cu_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)D + eps);
    if (threadIdx.x == 0) rs[blockIdx.x] = inv;
    float *yr = y + (int64_t)blockIdx.x * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = w[j] * (xr[j] * inv);
}
__global__ void peft__k_rms_dx(const float *x, const float *w, const float *dy, const float *rs, int64_t D,
                               float *dx) {
    __shared__ double sh[PEFT__CU_RT];
    const float *xr = x + (int64_t)blockIdx.x * D, *dr = dy + (int64_t)blockIdx.x * D;
    float inv = rs[blockIdx.x];
    double dot = 0.0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dot += (double)w[j] * dr[j] * xr[j];
    dot = peft__cu_block_sum_d(dot, sh);
    float c = (float)(dot * inv * inv * inv / (double)D);
    float *d = dx + (int64_t)blockIdx.x * D;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) d[j] += inv * w[j] * dr[j] - xr[j] * c;
}
/* dw: one thread per column, rows added in order (the CPU's order) */
__global__ void peft__k_rms_dw(const float *x, const float *dy, const float *rs, int64_t R, int64_t D,
                               float *dw) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    float acc = dw[j];
    for (int64_t r = 0; r < R; r++) acc += dy[r * D + j] * x[r * D + j] * rs[r];
    dw[j] = acc;
}

/* ---- RoPE: a thread per (row, head) ------------------------------------------------------ */
__global__ void peft__k_rope(float *dst, const float *src, int64_t rows, int n_heads, int T, int hd, int rot,
                             int interleaved, const float *ct, const float *st, const int *start, float sign,
                             int accumulate) {
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * n_heads) return;
    int64_t r = idx / n_heads;
    int h = (int)(idx % n_heads), half = rot / 2;
    int pos = (int)(r % T) + (start ? start[r / T] : 0);
    const float *c = ct + (int64_t)pos * half, *s = st + (int64_t)pos * half;
    int64_t off = r * (int64_t)n_heads * hd + (int64_t)h * hd;
    const float *x = src + off;
    float *y = dst + off;
    for (int i = 0; i < half; i++) {
        int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        float xa = x[ia], xb = x[ib], sn = sign * s[i];
        float ya = xa * c[i] - xb * sn, yb = xb * c[i] + xa * sn;
        if (accumulate) {
            y[ia] += ya;
            y[ib] += yb;
        } else {
            y[ia] = ya;
            y[ib] = yb;
        }
    }
    for (int i = rot; i < hd; i++) y[i] = accumulate ? y[i] + x[i] : x[i];
}

/* ---- attention: a warp per (sequence, query head, query row) ------------------------------
   Each lane holds head dims lane, lane+32, ... (up to 8 of them: hd ≤ 256).
   The forward streams the keys once with the online softmax (running max
   m, running sum l, rescaled accumulator), so nothing of size T×T exists;
   lse = m + log l per row is all the backward needs to rebuild P. */
#define PEFT__CU_HD_PER_LANE 8
#define PEFT__CU_WARPS 4

__device__ float peft__cu_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

struct peft__cu_attn_k {
    const float *q, *k, *v, *pk, *pv, *x, *G, *Gx, *dout;
    float *o, *lse, *lse_p, *dq, *dk, *dv, *dpk, *dpv, *dx, *dG, *dGx;
    int B, T, H, KV, hd, K, prompt_batched;
};

/* the row's coordinates: b, h, t and the offsets of its q row and kv column */
struct peft__cu_row {
    int b, h, t, lane;
    int64_t qoff, kvcol, qw, kw;
    bool valid;
};
__device__ peft__cu_row peft__cu_attn_row(const peft__cu_attn_k &a) {
    peft__cu_row r;
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    r.lane = threadIdx.x % 32;
    r.valid = w < (int64_t)a.B * a.H * a.T;
    r.t = (int)(w % a.T);
    r.h = (int)((w / a.T) % a.H);
    r.b = (int)(w / ((int64_t)a.T * a.H));
    r.qw = (int64_t)a.H * a.hd;
    r.kw = (int64_t)a.KV * a.hd;
    r.qoff = ((int64_t)r.b * a.T + r.t) * r.qw + (int64_t)r.h * a.hd;
    r.kvcol = (int64_t)(r.h / (a.H / a.KV)) * a.hd;
    return r;
}

__global__ void peft__k_attn_fwd(peft__cu_attn_k a) {
    peft__cu_row r = peft__cu_attn_row(a);
    if (!r.valid) return;
    const float scale = 1.0f / sqrtf((float)a.hd);
    float qv[PEFT__CU_HD_PER_LANE], acc[PEFT__CU_HD_PER_LANE];
    int nd = 0;
    for (int d = r.lane; d < a.hd; d += 32) {
        qv[nd] = a.q[r.qoff + d];
        acc[nd] = 0.0f;
        nd++;
    }
    float gx = a.x ? a.Gx[r.h] : 0.0f;
    float m = -INFINITY, l = 0.0f;
    int64_t base = (int64_t)r.b * a.T * r.kw + r.kvcol;
    for (int j = 0; j <= r.t; j++) {
        const float *kj = a.k + base + (int64_t)j * r.kw, *xj = a.x ? a.x + base + (int64_t)j * r.kw : NULL;
        float part = 0.0f;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) part += qv[i] * (xj ? kj[d] + gx * xj[d] : kj[d]);
        float s = peft__cu_warp_sum(part) * scale;
        float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        const float *vj = a.v + base + (int64_t)j * r.kw;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) acc[i] = acc[i] * corr + p * vj[d];
        m = mn;
    }
    float *orow = a.o + r.qoff;
    for (int i = 0, d = r.lane; i < nd; i++, d += 32) orow[d] = acc[i] / l;
    int64_t row = ((int64_t)r.b * a.H + r.h) * a.T + r.t;
    if (r.lane == 0) a.lse[row] = m + logf(l);
    if (!a.K) return;
    /* the prompt branch: all K prompts, unmasked, gated */
    int64_t pbase = (a.prompt_batched ? (int64_t)r.b * a.K : 0) * r.kw + r.kvcol;
    m = -INFINITY;
    l = 0.0f;
    for (int i = 0; i < nd; i++) acc[i] = 0.0f;
    for (int j = 0; j < a.K; j++) {
        const float *kj = a.pk + pbase + (int64_t)j * r.kw, *vj = a.pv + pbase + (int64_t)j * r.kw;
        float part = 0.0f;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) part += qv[i] * kj[d];
        float s = peft__cu_warp_sum(part) * scale;
        float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) acc[i] = acc[i] * corr + p * vj[d];
        m = mn;
    }
    float G = a.G ? a.G[r.h] : 0.0f;
    for (int i = 0, d = r.lane; i < nd; i++, d += 32) orow[d] += G * (acc[i] / l);
    if (r.lane == 0) a.lse_p[row] = m + logf(l);
}

/* Backward, per query row, P rebuilt from lse:
     D = Σ_j P_j (do·v_j)  (the token branch's own rowsum: o less the prompts)
     dS_j = P_j (do·v_j − D)·s;  dq += dS_j k'_j;  dk_j += dS_j q;  dv_j += P_j do
     dx_j += Gx·dS_j q;  dGx += dS_j (q·x_j)
   prompts with dop = G·do: dPp_i = dop·pv_i, rs = Σ Pp_i dPp_i,
     dSp_i = Pp_i (dPp_i − rs)·s;  dq += dSp_i pk_i;  dpk_i += dSp_i q;
     dpv_i += Pp_i dop;  dG += do·op.
   Key/value rows are shared by the query rows (and heads) that read them:
   their gradients are added with atomics. */
__global__ void peft__k_attn_bwd(peft__cu_attn_k a) {
    peft__cu_row r = peft__cu_attn_row(a);
    if (!r.valid) return;
    const float scale = 1.0f / sqrtf((float)a.hd);
    float qv[PEFT__CU_HD_PER_LANE], dov[PEFT__CU_HD_PER_LANE], dqa[PEFT__CU_HD_PER_LANE];
    int nd = 0;
    for (int d = r.lane; d < a.hd; d += 32) {
        qv[nd] = a.q[r.qoff + d];
        dov[nd] = a.dout[r.qoff + d];
        dqa[nd] = 0.0f;
        nd++;
    }
    float gx = a.x ? a.Gx[r.h] : 0.0f;
    int64_t row = ((int64_t)r.b * a.H + r.h) * a.T + r.t;
    float lse = a.lse[row];
    int64_t base = (int64_t)r.b * a.T * r.kw + r.kvcol;
    float Dsum = 0.0f;
    for (int j = 0; j <= r.t; j++) {
        const float *kj = a.k + base + (int64_t)j * r.kw, *xj = a.x ? a.x + base + (int64_t)j * r.kw : NULL;
        const float *vj = a.v + base + (int64_t)j * r.kw;
        float ps = 0.0f, pd = 0.0f;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
            ps += qv[i] * (xj ? kj[d] + gx * xj[d] : kj[d]);
            pd += dov[i] * vj[d];
        }
        float p = expf(peft__cu_warp_sum(ps) * scale - lse);
        Dsum += p * peft__cu_warp_sum(pd);
    }
    float dgx = 0.0f;
    for (int j = 0; j <= r.t; j++) {
        int64_t off = base + (int64_t)j * r.kw;
        const float *kj = a.k + off, *xj = a.x ? a.x + off : NULL, *vj = a.v + off;
        float ps = 0.0f, pd = 0.0f, px = 0.0f;
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
            ps += qv[i] * (xj ? kj[d] + gx * xj[d] : kj[d]);
            pd += dov[i] * vj[d];
            if (xj) px += qv[i] * xj[d];
        }
        float p = expf(peft__cu_warp_sum(ps) * scale - lse);
        float ds = p * (peft__cu_warp_sum(pd) - Dsum) * scale;
        if (xj) dgx += ds * peft__cu_warp_sum(px);
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
            dqa[i] += ds * (xj ? kj[d] + gx * xj[d] : kj[d]);
            if (a.dk) atomicAdd(a.dk + off + d, ds * qv[i]);
            if (a.dx && xj) atomicAdd(a.dx + off + d, gx * ds * qv[i]);
            if (a.dv) atomicAdd(a.dv + off + d, p * dov[i]);
        }
    }
    if (a.dGx && a.x && r.lane == 0) atomicAdd(a.dGx + r.h, dgx);
    if (a.K) {
        int64_t pbase = (a.prompt_batched ? (int64_t)r.b * a.K : 0) * r.kw + r.kvcol;
        float G = a.G ? a.G[r.h] : 0.0f, lp = a.lse_p[row], rs = 0.0f, dg = 0.0f;
        for (int j = 0; j < a.K; j++) {
            const float *kj = a.pk + pbase + (int64_t)j * r.kw, *vj = a.pv + pbase + (int64_t)j * r.kw;
            float ps = 0.0f, pd = 0.0f;
            for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
                ps += qv[i] * kj[d];
                pd += dov[i] * vj[d];
            }
            float pp = expf(peft__cu_warp_sum(ps) * scale - lp), dvo = peft__cu_warp_sum(pd);
            rs += pp * G * dvo; /* dPp_i = G·(do·pv_i) */
            dg += pp * dvo; /* do·op = Σ_i Pp_i (do·pv_i) */
        }
        for (int j = 0; j < a.K; j++) {
            int64_t off = pbase + (int64_t)j * r.kw;
            const float *kj = a.pk + off, *vj = a.pv + off;
            float ps = 0.0f, pd = 0.0f;
            for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
                ps += qv[i] * kj[d];
                pd += dov[i] * vj[d];
            }
            float pp = expf(peft__cu_warp_sum(ps) * scale - lp);
            float ds = pp * (G * peft__cu_warp_sum(pd) - rs) * scale;
            for (int i = 0, d = r.lane; i < nd; i++, d += 32) {
                dqa[i] += ds * kj[d];
                if (a.dpk) atomicAdd(a.dpk + off + d, ds * qv[i]);
                if (a.dpv) atomicAdd(a.dpv + off + d, pp * G * dov[i]);
            }
        }
        if (a.dG && r.lane == 0) atomicAdd(a.dG + r.h, dg);
    }
    if (a.dq)
        for (int i = 0, d = r.lane; i < nd; i++, d += 32) a.dq[r.qoff + d] += dqa[i];
}

/* ---- prompt attention (Excitor): a thread per row of P [N, K] ---------------------------------- */
__global__ void peft__k_softmax_rows(float *P, int N, int K, float sc) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= N) return;
    float *p = P + (int64_t)r * K, mx = -INFINITY, sum = 0.0f;
    for (int i = 0; i < K; i++) {
        p[i] *= sc;
        mx = fmaxf(mx, p[i]);
    }
    for (int i = 0; i < K; i++) {
        p[i] = expf(p[i] - mx);
        sum += p[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < K; i++) p[i] *= inv;
}
/* dS = P⊙(dP − rowsum(P⊙dP))·sc, in place over dP */
__global__ void peft__k_softmax_bwd_rows(const float *P, float *dS, int N, int K, float sc) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= N) return;
    const float *p = P + (int64_t)r * K;
    float *ds = dS + (int64_t)r * K, rs = 0.0f;
    for (int i = 0; i < K; i++) rs += p[i] * ds[i];
    for (int i = 0; i < K; i++) ds[i] = p[i] * (ds[i] - rs) * sc;
}

/* ---- SwiGLU ------------------------------------------------------------------------------- */
__global__ void peft__k_swiglu_fwd(const float *g, const float *u, int64_t n, float *y) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    y[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}
__global__ void peft__k_swiglu_bwd(const float *g, const float *u, const float *dy, int64_t n, float *dg,
                                   float *du) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 1.0f / (1.0f + expf(-g[j]));
    if (du) du[j] += dy[j] * g[j] * s;
    if (dg) dg[j] += dy[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
}

/* ---- bias and scale (Adapter V2) -------------------------------------------------------------- */
__global__ void peft__k_bs_fwd(const float *y, const float *b, const float *s, int64_t R, int64_t C,
                               float *o) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= R * C) return;
    int64_t c = i % C;
    o[i] = s[c] * (y[i] + b[c]);
}
__global__ void peft__k_bs_dy(const float *s, const float *dout, int64_t R, int64_t C, float *dy) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= R * C) return;
    dy[i] += s[i % C] * dout[i];
}
/* the column sums: one thread per column, rows in order (the CPU's order) */
__global__ void peft__k_bs_cols(const float *y, const float *b, const float *s, const float *dout, int64_t R,
                                int64_t C, float *db, float *ds) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float ab = db ? db[c] : 0.0f, as = ds ? ds[c] : 0.0f;
    for (int64_t r = 0; r < R; r++) {
        ab += s[c] * dout[r * C + c];
        as += dout[r * C + c] * (y[r * C + c] + b[c]);
    }
    if (db) db[c] = ab;
    if (ds) ds[c] = as;
}

/* ---- add, scale, bias, replaced rows ------------------------------------------------------------- */
__global__ void peft__k_add(const float *a, const float *b, int64_t n, float *y) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) y[j] = a[j] + b[j];
}
__global__ void peft__k_scale_into(const float *x, float s, int64_t n, float *y) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) y[j] = s * x[j];
}
__global__ void peft__k_axpy(float *y, const float *x, float alpha, int64_t n) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) y[j] += alpha * x[j];
}
__global__ void peft__k_bias_fwd(const float *y, const float *b, int64_t R, int64_t C, float *o) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < R * C) o[i] = y[i] + b[i % C];
}
/* one thread per column, rows in order (the CPU's order) */
__global__ void peft__k_bias_cols(const float *dout, int64_t R, int64_t C, float *db) {
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = db[c];
    for (int64_t r = 0; r < R; r++) acc += dout[r * C + c];
    db[c] = acc;
}
/* row i of R over row idx[i] of T (the indices are distinct: no two writes meet) */
__global__ void peft__k_rows_scatter(const float *Rw, const int *idx, int n, int64_t D, float *T) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (int64_t)n * D) return;
    T[(int64_t)idx[k / D] * D + k % D] = Rw[k];
}
__global__ void peft__k_rows_flag(const int *idx, int n, uint8_t *flag) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) flag[idx[i]] = 1;
}
__global__ void peft__k_rows_bwd_E(const float *dT, const uint8_t *flag, int64_t V, int64_t D, float *dE) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < V * D && !flag[k / D]) dE[k] += dT[k];
}
__global__ void peft__k_rows_bwd_R(const float *dT, const int *idx, int n, int64_t D, float *dR) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < (int64_t)n * D) dR[k] += dT[(int64_t)idx[k / D] * D + k % D];
}

/* ---- 4-bit decode and the 4-bit linear ------------------------------------------------------------ */
struct peft__cu_q4k {
    float code[16];
    const uint8_t *packed, *qabsmax;
    const float *absmax, *nested;
    float offset;
    int dq;
};
static peft__cu_q4k peft__cu_q4_args(const peft_cuda_q4 *W) {
    peft__cu_q4k k;
    memcpy(k.code, W->code, sizeof k.code);
    k.packed = W->packed;
    k.qabsmax = W->qabsmax;
    k.absmax = W->absmax;
    k.nested = W->nested_absmax;
    k.offset = W->offset;
    k.dq = W->double_quant;
    return k;
}
/* element e of W: its code times its block's scale; the double-quantized
   scale rounds twice (product, then sum), as peft_q4_block_scale does.
   smap: the signed dynamic map (constant memory on the device). */
__host__ __device__ float peft__cu_q4_at(const peft__cu_q4k &w, const float *smap, int64_t e) {
    int64_t b = e / 64;
    float sc = w.absmax ? w.absmax[b] : 0.0f;
    if (w.dq) {
#ifdef __CUDA_ARCH__
        sc = __fadd_rn(__fmul_rn(smap[w.qabsmax[b]], w.nested[b / 256]), w.offset);
#else
        float prod = smap[w.qabsmax[b]] * w.nested[b / 256]; /* host: nothing contracted (ISO C++) */
        sc = prod + w.offset;
#endif
    }
    uint8_t byte = w.packed[e / 2];
    return w.code[(e & 1) ? (byte & 0x0F) : (byte >> 4)] * sc;
}
__global__ void peft__k_q4_decode(peft__cu_q4k w, int64_t start, int64_t count, float *out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = peft__cu_q4_at(w, peft__cu_smap, start + i);
}
/* ggml rows: element (row, col), as peft_qmatrix_decode gives it. 32-blocks hold
   an fp16 d (and m), then the codes: low nibbles are elements 0-15, high nibbles
   16-31, the fifth bit of element e is bit e of qh; x = d·(q − off) or d·q + m
   (two roundings: nothing is contracted, --fmad=false) */
struct peft__cu_qmk {
    const uint8_t *data;
    size_t row_bytes;
    int type;
};
__host__ __device__ float peft__cu_h2f(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    return peft_f16_to_f32(h);
#endif
}
__host__ __device__ uint32_t peft__cu_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
__host__ __device__ float peft__cu_qm_at(const peft__cu_qmk &w, int64_t row, int64_t col) {
    const uint8_t *p = w.data + (size_t)row * w.row_bytes;
    int e = (int)(col % 32);
    int64_t blk = col / 32;
    switch (w.type) {
    case PEFT_GGML_F32: {
        uint32_t b = peft__cu_le32(p + 4 * col);
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    case PEFT_GGML_F16:
        return peft__cu_h2f(p + 2 * col);
    case PEFT_GGML_BF16: {
        uint32_t b = (uint32_t)(p[2 * col] | p[2 * col + 1] << 8) << 16;
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    case PEFT_GGML_Q8_0: {
        const uint8_t *b = p + blk * 34;
        return peft__cu_h2f(b) * (float)(int8_t)b[2 + e];
    }
    case PEFT_GGML_Q4_0: {
        const uint8_t *b = p + blk * 18;
        int q = e < 16 ? b[2 + e] & 15 : b[2 + e - 16] >> 4;
        return peft__cu_h2f(b) * (float)(q - 8);
    }
    case PEFT_GGML_Q4_1: {
        const uint8_t *b = p + blk * 20;
        int q = e < 16 ? b[4 + e] & 15 : b[4 + e - 16] >> 4;
        float t = peft__cu_h2f(b) * (float)q;
        return t + peft__cu_h2f(b + 2);
    }
    case PEFT_GGML_Q5_0: {
        const uint8_t *b = p + blk * 22;
        uint32_t qh = peft__cu_le32(b + 2);
        int q = (e < 16 ? b[6 + e] & 15 : b[6 + e - 16] >> 4) | (int)((qh >> e) & 1) << 4;
        return peft__cu_h2f(b) * (float)(q - 16);
    }
    case PEFT_GGML_Q5_1: {
        const uint8_t *b = p + blk * 24;
        uint32_t qh = peft__cu_le32(b + 4);
        int q = (e < 16 ? b[8 + e] & 15 : b[8 + e - 16] >> 4) | (int)((qh >> e) & 1) << 4;
        float t = peft__cu_h2f(b) * (float)q;
        return t + peft__cu_h2f(b + 2);
    }
    default:
        return 0.0f; /* refused at upload */
    }
}

/* the frozen weights as the tiled kernels read them: W[o, i] */
struct peft__cu_wq4 {
    peft__cu_q4k k;
    int in;
    __device__ float at(int64_t o, int64_t i) const { return peft__cu_q4_at(k, peft__cu_smap, o * in + i); }
};
struct peft__cu_wqm {
    peft__cu_qmk k;
    __device__ float at(int64_t o, int64_t i) const { return peft__cu_qm_at(k, o, i); }
};

/* 16×16 tiles through shared memory, W decoded as its tile is loaded.
   Forward  y[n,o]  = Σ_i x[n,i]·W[o,i]
   Backward dx[n,i] = beta·dx[n,i] + Σ_o dy[n,o]·W[o,i] */
#define PEFT__CU_TILE 16
template <class Wt>
__global__ void peft__k_frozen_fwd(const float *x, Wt w, int N, int out, int in, float *y) {
    __shared__ float xs[PEFT__CU_TILE][PEFT__CU_TILE], ws[PEFT__CU_TILE][PEFT__CU_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int n = blockIdx.y * PEFT__CU_TILE + ty, o = blockIdx.x * PEFT__CU_TILE + tx;
    int wo = blockIdx.x * PEFT__CU_TILE + ty; /* the W row this thread loads */
    float acc = 0.0f;
    for (int k0 = 0; k0 < in; k0 += PEFT__CU_TILE) {
        int k = k0 + tx;
        xs[ty][tx] = n < N && k < in ? x[(int64_t)n * in + k] : 0.0f;
        ws[ty][tx] = wo < out && k < in ? w.at(wo, k) : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < PEFT__CU_TILE; kk++) acc += xs[ty][kk] * ws[tx][kk];
        __syncthreads();
    }
    if (n < N && o < out) y[(int64_t)n * out + o] = acc;
}
template <class Wt>
__global__ void peft__k_frozen_bwd(const float *dy, Wt w, int N, int out, int in, float beta, float *dx) {
    __shared__ float ds[PEFT__CU_TILE][PEFT__CU_TILE], ws[PEFT__CU_TILE][PEFT__CU_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int n = blockIdx.y * PEFT__CU_TILE + ty, i = blockIdx.x * PEFT__CU_TILE + tx;
    float acc = 0.0f;
    for (int o0 = 0; o0 < out; o0 += PEFT__CU_TILE) {
        int o = o0 + tx, wo = o0 + ty;
        ds[ty][tx] = n < N && o < out ? dy[(int64_t)n * out + o] : 0.0f;
        ws[ty][tx] = wo < out && i < in ? w.at(wo, i) : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < PEFT__CU_TILE; kk++) acc += ds[ty][kk] * ws[kk][tx];
        __syncthreads();
    }
    if (n < N && i < in) {
        float *d = dx + (int64_t)n * in + i;
        *d = beta == 0.0f ? acc : beta * *d + acc;
    }
}

/* ---- LoRA dropout: the CPU's generator (splitmix64 seeding, xoroshiro128+) ------------------------- */
__host__ __device__ uint64_t peft__cu_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* row n: its own generator seeded key + n, one 64-bit draw per two inputs */
__host__ __device__ void peft__cu_dropout_row(const float *x, uint64_t key, int n, int in, uint32_t cut,
                                              float keep, uint8_t *mask, float *xt) {
    uint64_t seed = key + (uint64_t)n;
    uint64_t s0 = peft__cu_splitmix(&seed), s1 = peft__cu_splitmix(&seed), bits = 0;
    int64_t o = (int64_t)n * in;
    for (int j = 0; j < in; j++) {
        if (!(j & 1)) {
            uint64_t a = s0, b = s1;
            bits = a + b;
            b ^= a;
            s0 = ((a << 24) | (a >> 40)) ^ b ^ (b << 16);
            s1 = (b << 37) | (b >> 27);
        }
        uint32_t u = (uint32_t)(j & 1 ? bits >> 16 : bits >> 40) & 0xFFFFFFu;
        uint8_t m = u >= cut;
        mask[o + j] = m;
        xt[o + j] = m ? x[o + j] * keep : 0.0f;
    }
}
__global__ void peft__k_dropout(const float *x, uint64_t key, int N, int in, uint32_t cut, float keep,
                                uint8_t *mask, float *xt) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) peft__cu_dropout_row(x, key, n, in, cut, keep, mask, xt);
}
/* dx += t ⊙ mask·keep */
__global__ void peft__k_mask_add(const float *t, const uint8_t *mask, float keep, int64_t n, float *dx) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) dx[j] += mask[j] ? t[j] * keep : 0.0f;
}
__global__ void peft__k_scale(float *g, int64_t n, double coef) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) g[j] = (float)(g[j] * coef);
}

/* ---- fused classifier + cross-entropy: a block per row of the chunk ------------------------------- */
__global__ void peft__k_ce_rows(float *z, const int *t, int64_t V, float grad_scale, int want_grad,
                                float *loss) {
    __shared__ float shm[PEFT__CU_RT];
    __shared__ double shd[PEFT__CU_RT];
    float *zr = z + (int64_t)blockIdx.x * V;
    int tg = t[blockIdx.x];
    if (tg == -100) { /* no loss, no gradient on this row */
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) zr[j] = 0.0f;
        if (threadIdx.x == 0) loss[blockIdx.x] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, zr[j]);
    shm[threadIdx.x] = mx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shm[threadIdx.x] = fmaxf(shm[threadIdx.x], shm[threadIdx.x + s]);
        __syncthreads();
    }
    mx = shm[0];
    double se = 0.0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) se += (double)expf(zr[j] - mx);
    se = peft__cu_block_sum_d(se, shd);
    float zt = zr[tg];
    __syncthreads(); /* every thread has read z[t] before it changes */
    if (threadIdx.x == 0) loss[blockIdx.x] = mx + (float)log(se) - zt;
    if (!want_grad) return;
    float sc = (float)(1.0 / se) * grad_scale;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x)
        zr[j] = expf(zr[j] - mx) * sc - (j == tg ? grad_scale : 0.0f);
}

/* ---- cross-entropy on given logits: a block per row --------------------------------------------- */
__device__ float peft__cu_row_lse(const float *zr, int64_t V) {
    __shared__ float shm[PEFT__CU_RT];
    __shared__ double shd[PEFT__CU_RT];
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, zr[j]);
    shm[threadIdx.x] = mx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shm[threadIdx.x] = fmaxf(shm[threadIdx.x], shm[threadIdx.x + s]);
        __syncthreads();
    }
    mx = shm[0];
    double se = 0.0;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) se += (double)expf(zr[j] - mx);
    se = peft__cu_block_sum_d(se, shd);
    return mx + (float)log(se);
}
__global__ void peft__k_xent_fwd(const float *z, const int *t, int64_t V, float *lse, float *loss) {
    int tg = t[blockIdx.x];
    if (tg == -100) { /* the whole block leaves together */
        if (threadIdx.x == 0) {
            lse[blockIdx.x] = 0.0f;
            loss[blockIdx.x] = 0.0f;
        }
        return;
    }
    const float *zr = z + (int64_t)blockIdx.x * V;
    float l = peft__cu_row_lse(zr, V);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = l;
        loss[blockIdx.x] = l - zr[tg];
    }
}
__global__ void peft__k_xent_bwd(const float *z, const int *t, const float *lse, int64_t V, float scale,
                                 float *dz) {
    int tg = t[blockIdx.x];
    if (tg == -100) return;
    const float *zr = z + (int64_t)blockIdx.x * V;
    float *dr = dz + (int64_t)blockIdx.x * V, l = lse[blockIdx.x];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        float d = dr[j] + expf(zr[j] - l) * scale;
        dr[j] = j == tg ? d - scale : d; /* the CPU adds, then subtracts: two roundings */
    }
}

/* ---- AdamW ---------------------------------------------------------------------------------------- */
__host__ __device__ void peft__cu_adam1(const peft_cuda_adam &k, float *w, float g, float *m, float *v) {
    *w *= k.decay;
    *m += k.w1 * (g - *m);
    *v = k.b2 * *v + k.w2 * g * g;
    float denom = sqrtf(*v) / k.bc2_sqrt + k.eps;
    *w += -k.step_size * (*m / denom);
}
__global__ void peft__k_adamw(peft_cuda_adam k, float *w, const float *g, float *m, float *v, int64_t n) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j < n) peft__cu_adam1(k, w + j, g[j], m + j, v + j);
}
/* peft__nearest_code on the device: largest lo with code[lo] ≤ g, then the
   upper neighbour when strictly nearer */
__host__ __device__ uint8_t peft__cu_nearest(const float *code, double g) {
    if (g <= (double)code[0]) return 0;
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((double)code[mid] <= g)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo < 255 && fabs((double)code[lo + 1] - g) < fabs(g - (double)code[lo])) lo++;
    return (uint8_t)lo;
}
/* peft_quantize_blockwise8's element: x/absmax snapped to the 65,536-point
   grid (rint, half to even, as lrintf), then the nearest code. A NaN (0/0
   for an all-zero block) takes grid point 0, as lrintf's out-of-range value
   clamps there on the CPU. */
__host__ __device__ uint8_t peft__cu_q8(const float *code, float x, float am) {
    float t = (x / am + 1.0f) * 32767.5f;
#ifdef __CUDA_ARCH__
    long long kq = t >= 0.0f ? (t <= 65535.0f ? __float2ll_rn(t) : 65535) : 0;
#else
    long long kq = t >= 0.0f ? (t <= 65535.0f ? llrintf(t) : 65535) : 0;
#endif
    return peft__cu_nearest(code, (double)kq / 32767.5 - 1.0);
}
/* one block of 256 threads per quantization block */
__global__ void peft__k_adamw8(peft_cuda_adam k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                               float *am, float *av, int64_t n) {
    __shared__ float sm[256], sv[256];
    int64_t blk = blockIdx.x, j = blk * 256 + threadIdx.x;
    bool in = j < n;
    float mb = 0.0f, vb = 0.0f;
    if (in) {
        mb = peft__cu_smap[qm[j]] * am[blk];
        vb = peft__cu_umap[qv[j]] * av[blk];
        peft__cu_adam1(k, w + j, g[j], &mb, &vb);
    }
    sm[threadIdx.x] = in ? fabsf(mb) : -3.402823466e38f;
    sv[threadIdx.x] = in ? fabsf(vb) : -3.402823466e38f;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            sm[threadIdx.x] = fmaxf(sm[threadIdx.x], sm[threadIdx.x + s]);
            sv[threadIdx.x] = fmaxf(sv[threadIdx.x], sv[threadIdx.x + s]);
        }
        __syncthreads();
    }
    float nam = sm[0], nav = sv[0];
    if (!in) return;
    qm[j] = peft__cu_q8(peft__cu_smap, mb, nam);
    qv[j] = peft__cu_q8(peft__cu_umap, vb, nav);
    if (threadIdx.x == 0) {
        am[blk] = nam;
        av[blk] = nav;
    }
}
/* Σ g² in double: each block's threads stride the tensor, then a fixed tree */
#define PEFT__CU_NORM_BLOCKS 256
__global__ void peft__k_sumsq(const float *g, int64_t n, double *partial) {
    __shared__ double sh[PEFT__CU_RT];
    double s = 0.0;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += (int64_t)gridDim.x * blockDim.x)
        s += (double)g[j] * g[j];
    s = peft__cu_block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* ================================================================================================ */
extern "C" {

PEFTDEF int peft_cuda_embedding_fwd(const float *E, int64_t D, const int *ids, int n, float *y) {
    PEFT__CU_READY();
    int64_t total = (int64_t)n * D;
    peft__k_embed_fwd<<<peft__cu_blocks(total, 256), 256, 0, peft__cu_stream>>>(E, D, ids, total, y);
    PEFT__CU_LAUNCHED("embedding_fwd");
    return 0;
}
PEFTDEF int peft_cuda_embedding_bwd(const float *dy, int64_t D, const int *ids, int n, float *dE) {
    PEFT__CU_READY();
    int64_t total = (int64_t)n * D;
    peft__k_embed_bwd<<<peft__cu_blocks(total, 256), 256, 0, peft__cu_stream>>>(dy, D, ids, total, dE);
    PEFT__CU_LAUNCHED("embedding_bwd");
    return 0;
}

PEFTDEF int peft_cuda_rmsnorm_fwd(const float *x, const float *w, int64_t R, int64_t D, float eps, float *y,
                                  float *rs) {
    PEFT__CU_READY();
    if (R <= 0) return 0;
    peft__k_rms_fwd<<<(unsigned)R, PEFT__CU_RT, 0, peft__cu_stream>>>(x, w, D, eps, y, rs);
    PEFT__CU_LAUNCHED("rmsnorm_fwd");
    return 0;
}
PEFTDEF int peft_cuda_rmsnorm_bwd(const float *x, const float *w, const float *dy, const float *rs, int64_t R,
                                  int64_t D, float *dx, float *dw) {
    PEFT__CU_READY();
    if (R <= 0) return 0;
    if (dx) peft__k_rms_dx<<<(unsigned)R, PEFT__CU_RT, 0, peft__cu_stream>>>(x, w, dy, rs, D, dx);
    PEFT__CU_LAUNCHED("rmsnorm_dx");
    if (dw) peft__k_rms_dw<<<peft__cu_blocks(D, 128), 128, 0, peft__cu_stream>>>(x, dy, rs, R, D, dw);
    PEFT__CU_LAUNCHED("rmsnorm_dw");
    return 0;
}

PEFTDEF int peft_cuda_rope(float *dst, const float *src, int64_t rows, int n_heads, int T, int head_dim,
                           int rot_dim, int interleaved, const float *cos_t, const float *sin_t,
                           const int *start, float sign, int accumulate) {
    PEFT__CU_READY();
    if (rot_dim > head_dim || rot_dim % 2)
        return peft__cu_fail("cuda rope: rot_dim must be even and ≤ head_dim");
    int64_t n = rows * n_heads;
    peft__k_rope<<<peft__cu_blocks(n, 128), 128, 0, peft__cu_stream>>>(
        dst, src, rows, n_heads, T, head_dim, rot_dim, interleaved, cos_t, sin_t, start, sign, accumulate);
    PEFT__CU_LAUNCHED("rope");
    return 0;
}

static int peft__cu_attn_check(const peft_cuda_attn *a, peft__cu_attn_k *k) {
    if (a->KV < 1 || a->H % a->KV || a->hd < 1 || a->hd > 32 * PEFT__CU_HD_PER_LANE)
        return peft__cu_fail("cuda attention: heads must be a multiple of kv heads, head_dim in [1, %d]",
                             32 * PEFT__CU_HD_PER_LANE);
    if (a->K && (!a->pk || !a->pv || !a->lse_p))
        return peft__cu_fail("cuda attention: prompts need pk, pv and lse_p");
    if (a->x && !a->Gx) return peft__cu_fail("cuda attention: extra keys need their gate values Gx");
    k->q = a->q;
    k->k = a->k;
    k->v = a->v;
    k->pk = a->pk;
    k->pv = a->pv;
    k->x = a->x;
    k->G = a->G;
    k->Gx = a->Gx;
    k->dout = a->dout;
    k->o = a->o;
    k->lse = a->lse;
    k->lse_p = a->lse_p;
    k->dq = a->dq;
    k->dk = a->dk;
    k->dv = a->dv;
    k->dpk = a->dpk;
    k->dpv = a->dpv;
    k->dx = a->dx;
    k->dG = a->dG;
    k->dGx = a->dGx;
    k->B = a->B;
    k->T = a->T;
    k->H = a->H;
    k->KV = a->KV;
    k->hd = a->hd;
    k->K = a->K;
    k->prompt_batched = a->prompt_batched;
    return 0;
}
PEFTDEF int peft_cuda_attention_fwd(peft_cuda_attn *a) {
    PEFT__CU_READY();
    peft__cu_attn_k k;
    if (peft__cu_attn_check(a, &k)) return 1;
    int64_t rows = (int64_t)a->B * a->H * a->T;
    peft__k_attn_fwd<<<peft__cu_blocks(rows, PEFT__CU_WARPS), 32 * PEFT__CU_WARPS, 0, peft__cu_stream>>>(k);
    PEFT__CU_LAUNCHED("attention_fwd");
    return 0;
}
PEFTDEF int peft_cuda_attention_bwd(peft_cuda_attn *a) {
    PEFT__CU_READY();
    peft__cu_attn_k k;
    if (peft__cu_attn_check(a, &k)) return 1;
    if (!a->dout) return peft__cu_fail("cuda attention backward: no output gradient");
    int64_t rows = (int64_t)a->B * a->H * a->T;
    peft__k_attn_bwd<<<peft__cu_blocks(rows, PEFT__CU_WARPS), 32 * PEFT__CU_WARPS, 0, peft__cu_stream>>>(k);
    PEFT__CU_LAUNCHED("attention_bwd");
    return 0;
}

PEFTDEF int peft_cuda_prompt_attend_fwd(const float *q, const float *pk, const float *pv, int N, int d, int K,
                                        int e, float *P, float *o) {
    PEFT__CU_READY();
    if (peft_cuda_gemm(0, 1, N, K, d, 1.0f, q, d, pk, d, 0.0f, P, K)) return 1;
    peft__k_softmax_rows<<<peft__cu_blocks(N, 128), 128, 0, peft__cu_stream>>>(P, N, K,
                                                                               1.0f / sqrtf((float)d));
    PEFT__CU_LAUNCHED("prompt_attend softmax");
    return peft_cuda_gemm(0, 0, N, e, K, 1.0f, P, K, pv, e, 0.0f, o, e);
}
PEFTDEF int peft_cuda_prompt_attend_bwd(const float *q, const float *pk, const float *pv, const float *P,
                                        const float *dout, int N, int d, int K, int e, float *dq, float *dpk,
                                        float *dpv, float *scratch) {
    PEFT__CU_READY();
    float *dS = scratch;
    if (peft_cuda_gemm(0, 1, N, K, e, 1.0f, dout, e, pv, e, 0.0f, dS, K)) return 1; /* dP */
    peft__k_softmax_bwd_rows<<<peft__cu_blocks(N, 128), 128, 0, peft__cu_stream>>>(P, dS, N, K,
                                                                                   1.0f / sqrtf((float)d));
    PEFT__CU_LAUNCHED("prompt_attend softmax bwd");
    if (dpv && peft_cuda_gemm(1, 0, K, e, N, 1.0f, P, K, dout, e, 1.0f, dpv, e)) return 1;
    if (dq && peft_cuda_gemm(0, 0, N, d, K, 1.0f, dS, K, pk, d, 1.0f, dq, d)) return 1;
    if (dpk && peft_cuda_gemm(1, 0, K, d, N, 1.0f, dS, K, q, d, 1.0f, dpk, d)) return 1;
    return 0;
}
PEFTDEF int peft_cuda_swiglu_fwd(const float *g, const float *u, int64_t n, float *y) {
    PEFT__CU_READY();
    peft__k_swiglu_fwd<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(g, u, n, y);
    PEFT__CU_LAUNCHED("swiglu_fwd");
    return 0;
}
PEFTDEF int peft_cuda_swiglu_bwd(const float *g, const float *u, const float *dy, int64_t n, float *dg,
                                 float *du) {
    PEFT__CU_READY();
    peft__k_swiglu_bwd<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(g, u, dy, n, dg, du);
    PEFT__CU_LAUNCHED("swiglu_bwd");
    return 0;
}

PEFTDEF int peft_cuda_bias_scale_fwd(const float *y, const float *b, const float *s, int64_t R, int64_t C,
                                     float *o) {
    PEFT__CU_READY();
    peft__k_bs_fwd<<<peft__cu_blocks(R * C, 256), 256, 0, peft__cu_stream>>>(y, b, s, R, C, o);
    PEFT__CU_LAUNCHED("bias_scale_fwd");
    return 0;
}
PEFTDEF int peft_cuda_bias_scale_bwd(const float *y, const float *b, const float *s, const float *dout,
                                     int64_t R, int64_t C, float *dy, float *db, float *ds) {
    PEFT__CU_READY();
    if (dy) peft__k_bs_dy<<<peft__cu_blocks(R * C, 256), 256, 0, peft__cu_stream>>>(s, dout, R, C, dy);
    PEFT__CU_LAUNCHED("bias_scale_dy");
    if (db || ds)
        peft__k_bs_cols<<<peft__cu_blocks(C, 128), 128, 0, peft__cu_stream>>>(y, b, s, dout, R, C, db, ds);
    PEFT__CU_LAUNCHED("bias_scale_cols");
    return 0;
}

PEFTDEF int peft_cuda_add_fwd(const float *a, const float *b, int64_t n, float *y) {
    PEFT__CU_READY();
    peft__k_add<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(a, b, n, y);
    PEFT__CU_LAUNCHED("add");
    return 0;
}
PEFTDEF int peft_cuda_scale_fwd(const float *x, float s, int64_t n, float *y) {
    PEFT__CU_READY();
    peft__k_scale_into<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(x, s, n, y);
    PEFT__CU_LAUNCHED("scale_fwd");
    return 0;
}
PEFTDEF int peft_cuda_axpy(float *y, const float *x, float alpha, int64_t n) {
    PEFT__CU_READY();
    peft__k_axpy<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(y, x, alpha, n);
    PEFT__CU_LAUNCHED("axpy");
    return 0;
}
PEFTDEF int peft_cuda_add_bias_fwd(const float *y, const float *b, int64_t R, int64_t C, float *o) {
    PEFT__CU_READY();
    peft__k_bias_fwd<<<peft__cu_blocks(R * C, 256), 256, 0, peft__cu_stream>>>(y, b, R, C, o);
    PEFT__CU_LAUNCHED("add_bias_fwd");
    return 0;
}
PEFTDEF int peft_cuda_add_bias_bwd(const float *dout, int64_t R, int64_t C, float *db) {
    PEFT__CU_READY();
    peft__k_bias_cols<<<peft__cu_blocks(C, 128), 128, 0, peft__cu_stream>>>(dout, R, C, db);
    PEFT__CU_LAUNCHED("add_bias_bwd");
    return 0;
}
PEFTDEF int peft_cuda_replace_rows_fwd(const float *E, const float *Rw, const int *idx, int n, int64_t V,
                                       int64_t D, float *T) {
    PEFT__CU_READY();
    PEFT__CU(
        cudaMemcpyAsync(T, E, sizeof(float) * (size_t)(V * D), cudaMemcpyDeviceToDevice, peft__cu_stream));
    int64_t k = (int64_t)n * D;
    peft__k_rows_scatter<<<peft__cu_blocks(k, 256), 256, 0, peft__cu_stream>>>(Rw, idx, n, D, T);
    PEFT__CU_LAUNCHED("replace_rows_fwd");
    return 0;
}
PEFTDEF int peft_cuda_replace_rows_bwd(const float *dT, const int *idx, int n, int64_t V, int64_t D,
                                       float *dE, float *dR, uint8_t *scratch) {
    PEFT__CU_READY();
    if (dE) {
        PEFT__CU(cudaMemsetAsync(scratch, 0, (size_t)V, peft__cu_stream));
        peft__k_rows_flag<<<peft__cu_blocks(n, 128), 128, 0, peft__cu_stream>>>(idx, n, scratch);
        PEFT__CU_LAUNCHED("replace_rows flags");
        peft__k_rows_bwd_E<<<peft__cu_blocks(V * D, 256), 256, 0, peft__cu_stream>>>(dT, scratch, V, D, dE);
        PEFT__CU_LAUNCHED("replace_rows dE");
    }
    if (dR) {
        int64_t k = (int64_t)n * D;
        peft__k_rows_bwd_R<<<peft__cu_blocks(k, 256), 256, 0, peft__cu_stream>>>(dT, idx, n, D, dR);
        PEFT__CU_LAUNCHED("replace_rows dR");
    }
    return 0;
}
PEFTDEF int peft_cuda_cross_entropy_fwd(const float *z, const int *targets, int64_t R, int64_t V, float *lse,
                                        float *loss_rows) {
    PEFT__CU_READY();
    if (R <= 0) return 0;
    peft__k_xent_fwd<<<(unsigned)R, PEFT__CU_RT, 0, peft__cu_stream>>>(z, targets, V, lse, loss_rows);
    PEFT__CU_LAUNCHED("cross_entropy_fwd");
    return 0;
}
PEFTDEF int peft_cuda_cross_entropy_bwd(const float *z, const int *targets, const float *lse, int64_t R,
                                        int64_t V, float scale, float *dz) {
    PEFT__CU_READY();
    if (R <= 0) return 0;
    peft__k_xent_bwd<<<(unsigned)R, PEFT__CU_RT, 0, peft__cu_stream>>>(z, targets, lse, V, scale, dz);
    PEFT__CU_LAUNCHED("cross_entropy_bwd");
    return 0;
}

/* ---- 4-bit weights ---------------------------------------------------------------------------------- */
PEFTDEF void peft_cuda_q4_free(peft_cuda_q4 *d) {
    if (!d) return;
    peft_cuda_free(d->packed);
    peft_cuda_free(d->absmax);
    peft_cuda_free(d->qabsmax);
    peft_cuda_free(d->nested_absmax);
    memset(d, 0, sizeof *d);
}
PEFTDEF int peft_cuda_q4_upload(peft_cuda_q4 *d, const peft_q4 *h) {
    PEFT__CU_READY();
    memset(d, 0, sizeof *d);
    d->type = (int)h->type;
    memcpy(d->code, peft_q4_code(h->type), sizeof d->code);
    d->n = h->n;
    d->n_blocks = h->n_blocks;
    d->double_quant = h->double_quant;
    d->offset = h->offset;
    size_t pb = (size_t)(h->n + 1) / 2, nb = (size_t)h->n_blocks, nn = (size_t)(h->n_blocks + 255) / 256;
    d->packed = (uint8_t *)peft_cuda_malloc(pb);
    int bad = !d->packed || peft_cuda_upload(d->packed, h->packed, pb);
    if (!bad && h->double_quant) {
        d->qabsmax = (uint8_t *)peft_cuda_malloc(nb);
        d->nested_absmax = (float *)peft_cuda_malloc(nn * sizeof(float));
        bad = !d->qabsmax || !d->nested_absmax || peft_cuda_upload(d->qabsmax, h->qabsmax, nb) ||
              peft_cuda_upload(d->nested_absmax, h->nested_absmax, nn * sizeof(float));
    } else if (!bad) {
        d->absmax = (float *)peft_cuda_malloc(nb * sizeof(float));
        bad = !d->absmax || peft_cuda_upload(d->absmax, h->absmax, nb * sizeof(float));
    }
    if (bad) {
        peft_cuda_q4_free(d);
        return 1;
    }
    return 0;
}
PEFTDEF int peft_cuda_q4_dequantize(const peft_cuda_q4 *W, int64_t start, int64_t count, float *out) {
    PEFT__CU_READY();
    if (start < 0 || count < 0 || start + count > W->n)
        return peft__cu_fail("cuda q4: range outside the weight");
    peft__k_q4_decode<<<peft__cu_blocks(count, 256), 256, 0, peft__cu_stream>>>(peft__cu_q4_args(W), start,
                                                                                count, out);
    PEFT__CU_LAUNCHED("q4_decode");
    return 0;
}
PEFTDEF int peft_cuda_q4_linear_fwd(const float *x, const peft_cuda_q4 *W, int N, int out, int in, float *y) {
    PEFT__CU_READY();
    if (W->n != (int64_t)out * in) return peft__cu_fail("cuda q4_linear: weight size differs from out·in");
    dim3 th(PEFT__CU_TILE, PEFT__CU_TILE);
    dim3 gr((unsigned)((out + PEFT__CU_TILE - 1) / PEFT__CU_TILE),
            (unsigned)((N + PEFT__CU_TILE - 1) / PEFT__CU_TILE));
    peft__cu_wq4 w = {peft__cu_q4_args(W), in};
    peft__k_frozen_fwd<<<gr, th, 0, peft__cu_stream>>>(x, w, N, out, in, y);
    PEFT__CU_LAUNCHED("q4_linear_fwd");
    return 0;
}
PEFTDEF int peft_cuda_q4_linear_bwd(const float *dy, const peft_cuda_q4 *W, int N, int out, int in,
                                    float beta, float *dx) {
    PEFT__CU_READY();
    if (W->n != (int64_t)out * in) return peft__cu_fail("cuda q4_linear: weight size differs from out·in");
    dim3 th(PEFT__CU_TILE, PEFT__CU_TILE);
    dim3 gr((unsigned)((in + PEFT__CU_TILE - 1) / PEFT__CU_TILE),
            (unsigned)((N + PEFT__CU_TILE - 1) / PEFT__CU_TILE));
    peft__cu_wq4 w = {peft__cu_q4_args(W), in};
    peft__k_frozen_bwd<<<gr, th, 0, peft__cu_stream>>>(dy, w, N, out, in, beta, dx);
    PEFT__CU_LAUNCHED("q4_linear_bwd");
    return 0;
}

/* ---- ggml-typed weights ----------------------------------------------------------------------------- */
PEFTDEF void peft_cuda_qmatrix_free(peft_cuda_qmatrix *d) {
    if (!d) return;
    peft_cuda_free(d->data);
    memset(d, 0, sizeof *d);
}
PEFTDEF int peft_cuda_qmatrix_upload(peft_cuda_qmatrix *d, const peft_qmatrix *h) {
    PEFT__CU_READY();
    memset(d, 0, sizeof *d);
    switch (h->type) {
    case PEFT_GGML_F32:
    case PEFT_GGML_F16:
    case PEFT_GGML_BF16:
    case PEFT_GGML_Q8_0:
    case PEFT_GGML_Q4_0:
    case PEFT_GGML_Q4_1:
    case PEFT_GGML_Q5_0:
    case PEFT_GGML_Q5_1:
        break;
    default: {
        const char *name = peft_ggml_type_name(h->type);
        return peft__cu_fail("cuda: ggml type %s is not decoded on the device (F32, F16, BF16, Q8_0, Q4_0, "
                             "Q4_1, Q5_0, Q5_1 are)",
                             name ? name : "(unknown)");
    }
    }
    size_t bytes = (size_t)h->rows * h->row_bytes;
    d->data = (uint8_t *)peft_cuda_malloc(bytes);
    if (!d->data || peft_cuda_upload(d->data, h->data, bytes)) {
        peft_cuda_qmatrix_free(d);
        return 1;
    }
    d->type = h->type;
    d->rows = h->rows;
    d->cols = h->cols;
    d->row_bytes = h->row_bytes;
    return 0;
}
static peft__cu_wqm peft__cu_qm_args(const peft_cuda_qmatrix *W) {
    peft__cu_wqm w;
    w.k.data = W->data;
    w.k.row_bytes = W->row_bytes;
    w.k.type = W->type;
    return w;
}
PEFTDEF int peft_cuda_qmatrix_linear_fwd(const float *x, const peft_cuda_qmatrix *W, int N, float *y) {
    PEFT__CU_READY();
    int out = (int)W->rows, in = (int)W->cols;
    dim3 th(PEFT__CU_TILE, PEFT__CU_TILE);
    dim3 gr((unsigned)((out + PEFT__CU_TILE - 1) / PEFT__CU_TILE),
            (unsigned)((N + PEFT__CU_TILE - 1) / PEFT__CU_TILE));
    peft__k_frozen_fwd<<<gr, th, 0, peft__cu_stream>>>(x, peft__cu_qm_args(W), N, out, in, y);
    PEFT__CU_LAUNCHED("qmatrix_linear_fwd");
    return 0;
}
PEFTDEF int peft_cuda_qmatrix_linear_bwd(const float *dy, const peft_cuda_qmatrix *W, int N, float beta,
                                         float *dx) {
    PEFT__CU_READY();
    int out = (int)W->rows, in = (int)W->cols;
    dim3 th(PEFT__CU_TILE, PEFT__CU_TILE);
    dim3 gr((unsigned)((in + PEFT__CU_TILE - 1) / PEFT__CU_TILE),
            (unsigned)((N + PEFT__CU_TILE - 1) / PEFT__CU_TILE));
    peft__k_frozen_bwd<<<gr, th, 0, peft__cu_stream>>>(dy, peft__cu_qm_args(W), N, out, in, beta, dx);
    PEFT__CU_LAUNCHED("qmatrix_linear_bwd");
    return 0;
}

/* ---- LoRA ------------------------------------------------------------------------------------------- */
PEFTDEF int peft_cuda_dropout(const float *x, uint64_t key, int N, int in, float p, float keep, uint8_t *mask,
                              float *xt) {
    PEFT__CU_READY();
    uint32_t cut = (uint32_t)ceil((double)p * 16777216.0);
    peft__k_dropout<<<peft__cu_blocks(N, 64), 64, 0, peft__cu_stream>>>(x, key, N, in, cut, keep, mask, xt);
    PEFT__CU_LAUNCHED("dropout");
    return 0;
}
PEFTDEF int peft_cuda_lora_fwd(const float *x, const float *xt, const float *W, const peft_cuda_q4 *Wq,
                               const peft_cuda_qmatrix *Wm, const float *A, const float *Bm, int N, int in,
                               int out, int r, float s, float *y, float *u, float *scratch) {
    (void)scratch; /* s·u is folded into the GEMM's alpha */
    const float *xd = xt ? xt : x;
    if (peft_cuda_gemm(0, 1, N, r, in, 1.0f, xd, in, A, in, 0.0f, u, r)) return 1; /* u = x̃·Aᵀ */
    if (W && peft_cuda_gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out)) return 1; /* x·Wᵀ     */
    if (!W && Wq && peft_cuda_q4_linear_fwd(x, Wq, N, out, in, y)) return 1;
    if (!W && !Wq && Wm && peft_cuda_qmatrix_linear_fwd(x, Wm, N, y)) return 1;
    float beta = W || Wq || Wm ? 1.0f : 0.0f;
    return peft_cuda_gemm(0, 1, N, out, r, s, u, r, Bm, r, beta, y, out); /* + s·u·Bᵀ */
}
PEFTDEF int peft_cuda_lora_bwd(const float *x, const float *xt, const uint8_t *mask, float keep,
                               const float *W, const peft_cuda_q4 *Wq, const peft_cuda_qmatrix *Wm,
                               const float *A, const float *Bm, const float *u, const float *dy, int N,
                               int in, int out, int r, float s, float *dx, float x_beta, float *dW, float *dA,
                               float *dB, float *scratch) {
    PEFT__CU_READY();
    float *du = scratch, *tmp = scratch + (size_t)N * r;
    const float *xd = mask ? xt : x;
    if (peft_cuda_gemm(0, 0, N, r, out, s, dy, out, Bm, r, 0.0f, du, r)) return 1; /* du = s·dy·B  */
    if (dB && peft_cuda_gemm(1, 0, out, r, N, s, dy, out, u, r, 1.0f, dB, r)) return 1; /* dB += s·dyᵀu */
    if (dA && peft_cuda_gemm(1, 0, r, in, N, 1.0f, du, r, xd, in, 1.0f, dA, in)) return 1; /* dA += duᵀ·x̃ */
    if (dW && W && peft_cuda_gemm(1, 0, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in)) return 1;
    if (!dx) return 0;
    if (W) {
        if (peft_cuda_gemm(0, 0, N, in, out, 1.0f, dy, out, W, in, x_beta, dx, in)) return 1;
    } else if (Wq) {
        if (peft_cuda_q4_linear_bwd(dy, Wq, N, out, in, x_beta, dx)) return 1;
    } else if (Wm) {
        if (peft_cuda_qmatrix_linear_bwd(dy, Wm, N, x_beta, dx)) return 1;
    } else if (x_beta == 0.0f) {
        if (peft_cuda_zero(dx, sizeof(float) * (size_t)N * in)) return 1;
    }
    if (!mask) return peft_cuda_gemm(0, 0, N, in, r, 1.0f, du, r, A, in, 1.0f, dx, in);
    if (peft_cuda_gemm(0, 0, N, in, r, 1.0f, du, r, A, in, 0.0f, tmp, in)) return 1; /* through dropout */
    int64_t n = (int64_t)N * in;
    peft__k_mask_add<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(tmp, mask, keep, n, dx);
    PEFT__CU_LAUNCHED("lora mask");
    return 0;
}

/* ---- fused classifier + cross-entropy ------------------------------------------------------------ */
PEFTDEF int peft_cuda_linear_ce(const float *x, const float *W, const int *targets, int R, int D, int V,
                                int chunk, float grad_scale, float *loss_rows, float *dx, float *dW,
                                float *scratch) {
    PEFT__CU_READY();
    if (chunk < 1) return peft__cu_fail("cuda linear_ce: chunk must be at least 1 row");
    int want = dx || dW;
    for (int c0 = 0; c0 < R; c0 += chunk) {
        int c = R - c0 < chunk ? R - c0 : chunk;
        const float *xc = x + (size_t)c0 * D;
        if (peft_cuda_gemm(0, 1, c, V, D, 1.0f, xc, D, W, D, 0.0f, scratch, V)) return 1; /* z = x·Wᵀ */
        peft__k_ce_rows<<<(unsigned)c, PEFT__CU_RT, 0, peft__cu_stream>>>(scratch, targets + c0, V,
                                                                          grad_scale, want, loss_rows + c0);
        PEFT__CU_LAUNCHED("ce_rows");
        if (dx && peft_cuda_gemm(0, 0, c, D, V, 1.0f, scratch, V, W, D, 0.0f, dx + (size_t)c0 * D, D))
            return 1;
        if (dW && peft_cuda_gemm(1, 0, V, D, c, 1.0f, scratch, V, xc, D, 1.0f, dW, D)) return 1;
    }
    return 0;
}

/* ---- optimizer ----------------------------------------------------------------------------------------- */
PEFTDEF int peft_cuda_adamw(const peft_cuda_adam *k, float *w, const float *g, float *m, float *v,
                            int64_t n) {
    PEFT__CU_READY();
    peft__k_adamw<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(*k, w, g, m, v, n);
    PEFT__CU_LAUNCHED("adamw");
    return 0;
}
PEFTDEF int peft_cuda_adamw8(const peft_cuda_adam *k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                             float *am, float *av, int64_t n) {
    PEFT__CU_READY();
    peft__k_adamw8<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(*k, w, g, qm, qv, am, av, n);
    PEFT__CU_LAUNCHED("adamw8");
    return 0;
}
PEFTDEF int peft_cuda_grad_sumsq(float *const *grads, const int64_t *ns, int count, double *sumsq) {
    PEFT__CU_READY();
    double *part = (double *)peft_cuda_malloc(sizeof(double) * PEFT__CU_NORM_BLOCKS);
    double host[PEFT__CU_NORM_BLOCKS], total = 0.0;
    if (!part) return 1;
    for (int i = 0; i < count; i++) {
        if (!grads[i] || ns[i] <= 0) continue;
        peft__k_sumsq<<<PEFT__CU_NORM_BLOCKS, PEFT__CU_RT, 0, peft__cu_stream>>>(grads[i], ns[i], part);
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(host, part, sizeof host, cudaMemcpyDeviceToHost, peft__cu_stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(peft__cu_stream);
        if (e != cudaSuccess) {
            peft_cuda_free(part);
            return peft__cu_fail("cuda grad norm: %s", cudaGetErrorString(e));
        }
        for (int b = 0; b < PEFT__CU_NORM_BLOCKS; b++) total += host[b]; /* block order: deterministic */
    }
    peft_cuda_free(part);
    *sumsq = total;
    return 0;
}
PEFTDEF int peft_cuda_scale(float *g, int64_t n, double coef) {
    PEFT__CU_READY();
    peft__k_scale<<<peft__cu_blocks(n, 256), 256, 0, peft__cu_stream>>>(g, n, coef);
    PEFT__CU_LAUNCHED("scale");
    return 0;
}
PEFTDEF int peft_cuda_clip_grad_norm(float *const *grads, const int64_t *ns, int count, double max_norm,
                                     double *norm) {
    double ss = 0.0;
    if (peft_cuda_grad_sumsq(grads, ns, count, &ss)) return 1;
    *norm = sqrt(ss);
    if (!(max_norm > 0) || !isfinite(*norm)) return 0;
    double coef = max_norm / (*norm + 1e-6);
    if (coef >= 1.0) return 0;
    for (int i = 0; i < count; i++) {
        if (!grads[i] || ns[i] <= 0) continue;
        peft__k_scale<<<peft__cu_blocks(ns[i], 256), 256, 0, peft__cu_stream>>>(grads[i], ns[i], coef);
        PEFT__CU_LAUNCHED("clip");
    }
    return 0;
}

/* ---- paged optimizer states ------------------------------------------------------------------------ */
PEFTDEF void *peft_cuda_managed_alloc(size_t bytes) {
    size_t fr = 0, tot = 0;
    cudaError_t e = cudaMemGetInfo(&fr, &tot);
    if (e != cudaSuccess) {
        peft__cu_fail("cuda: cudaMemGetInfo: %s", cudaGetErrorString(e));
        return NULL;
    }
    if (bytes > fr) {
        peft__cu_fail(
            "cuda: %zu bytes of managed memory asked for, %zu free on the device: refused (a larger "
            "managed allocation can hang the GPU)",
            bytes, fr);
        return NULL;
    }
    void *p = NULL;
    e = cudaMallocManaged(&p, bytes ? bytes : 1, cudaMemAttachGlobal);
    if (e != cudaSuccess) {
        peft__cu_fail("cuda: cudaMallocManaged of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    peft__cu_note_peak();
    return p;
}
PEFTDEF int peft_cuda_prefetch(const void *p, size_t bytes) {
    PEFT__CU_READY();
    int dev = 0;
    PEFT__CU(cudaGetDevice(&dev));
#if CUDART_VERSION >= 13000
    cudaMemLocation loc;
    memset(&loc, 0, sizeof loc);
    loc.type = cudaMemLocationTypeDevice;
    loc.id = dev;
    PEFT__CU(cudaMemPrefetchAsync(p, bytes, loc, 0, peft__cu_stream));
#else
    PEFT__CU(cudaMemPrefetchAsync(p, bytes, dev, peft__cu_stream));
#endif
    return 0;
}
PEFTDEF void peft_cuda_managed_free(void *p) {
    if (p) cudaFree(p);
}

/* ---- the device arithmetic on the host (checked by build/test-cuda anywhere) ---------------------- */
PEFTDEF void peft_cuda_host_dropout_row(const float *x, uint64_t key, int n, int in, uint32_t cut, float keep,
                                        uint8_t *mask, float *xt) {
    peft__cu_dropout_row(x, key, n, in, cut, keep, mask, xt);
}
PEFTDEF uint8_t peft_cuda_host_quantize8(const float *code, float x, float am) {
    return peft__cu_q8(code, x, am);
}
/* the AdamW kernels' steps, element by element and block by block, in the kernels' order */
PEFTDEF void peft_cuda_host_adamw(const peft_cuda_adam *k, float *w, const float *g, float *m, float *v,
                                  int64_t n) {
    for (int64_t j = 0; j < n; j++) peft__cu_adam1(*k, w + j, g[j], m + j, v + j);
}
PEFTDEF void peft_cuda_host_adamw8(const peft_cuda_adam *k, float *w, const float *g, uint8_t *qm,
                                   uint8_t *qv, float *am, float *av, int64_t n) {
    const float *smap = peft_dynamic_map(), *umap = peft_dynamic_map_unsigned();
    for (int64_t blk = 0; blk * 256 < n; blk++) {
        float mb[256], vb[256], nam = -3.402823466e38f, nav = -3.402823466e38f;
        int64_t j0 = blk * 256, len = n - j0 < 256 ? n - j0 : 256;
        for (int64_t i = 0; i < len; i++) {
            mb[i] = smap[qm[j0 + i]] * am[blk];
            vb[i] = umap[qv[j0 + i]] * av[blk];
            peft__cu_adam1(*k, w + j0 + i, g[j0 + i], &mb[i], &vb[i]);
            nam = fmaxf(nam, fabsf(mb[i]));
            nav = fmaxf(nav, fabsf(vb[i]));
        }
        for (int64_t i = 0; i < len; i++) {
            qm[j0 + i] = peft__cu_q8(smap, mb[i], nam);
            qv[j0 + i] = peft__cu_q8(umap, vb[i], nav);
        }
        am[blk] = nam;
        av[blk] = nav;
    }
}
PEFTDEF float peft_cuda_host_qmatrix_at(const peft_cuda_qmatrix *W, int64_t row, int64_t col) {
    return peft__cu_qm_at(peft__cu_qm_args(W).k, row, col);
}
PEFTDEF float peft_cuda_host_q4_at(const peft_cuda_q4 *W, int64_t e) {
    return peft__cu_q4_at(peft__cu_q4_args(W), peft_dynamic_map(), e);
}

} /* extern "C" */

/* ==== the backend table (peft_backend_cuda) ==============================================================
   Memory design: managed memory throughout. The CUDA builds route peft.h's PEFT_MALLOC, PEFT_REALLOC and
   PEFT_FREE to peft_cuda_heap_* (tools/peft.c and tests/test_cuda.c define them before including peft.h),
   and the table's alloc (the step arena, the KV cache) hands out managed memory too. So every tensor,
   parameter, gradient, optimizer state, RoPE table and 4-bit array the library makes can be read by the
   kernels AND by the host code that still reads tensor headers, losses, logits and gates: no pointer is
   translated, no model is "moved", and nothing else in peft.h changes. Why not device memory and uploads:
   peft.h keeps host data (headers, saved ids) in the arena and reads parameters on the host (saving,
   merging, sampling); managed memory keeps all of that correct with no second copy to keep coherent.
   Every entry synchronizes the stream before it returns: host code may read what a kernel wrote at any
   point after an op (the loss, the logits, a gate), and a per-op sync (microseconds) is the simple
   correct rule. Every op first checks that the tensors it reads are device-accessible (managed or device
   memory) and fails naming the op and the tensor otherwise: never a kernel reading host memory. */
#include <pthread.h>

#include <malloc.h>

static pthread_mutex_t peft__heap_lock = PTHREAD_MUTEX_INITIALIZER;
static int peft__heap_on, peft__heap_was_on;
/* While the device is off a block is plain malloc memory (no header: free() and PEFT_FREE are the same
   then, as code that frees a library buffer with free() expects). Once it is on, a block is managed
   memory with a 64-byte header (magic, size class, bytes): classes 6..20 (64 B .. 1 MiB) are carved
   from 64 MiB managed chunks and kept on a free list per class; larger ones are their own
   cudaMallocManaged allocation (class 0). PEFT_FREE tells the two apart by the pointer's attributes. */
#define PEFT__HEAP_MAGIC 0x70656674637564ull
#define PEFT__HEAP_CHUNK ((size_t)64 << 20)
typedef struct {
    uint64_t magic;
    uint64_t cls;
    uint64_t bytes;
    uint64_t pad[5];
} peft__heap_hdr;
static void *peft__heap_free_list[21];
static char *peft__heap_chunk;
static size_t peft__heap_chunk_used;

static void peft__heap_advise(void *p, size_t bytes) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return;
#if CUDART_VERSION >= 13000
    cudaMemLocation loc;
    memset(&loc, 0, sizeof loc);
    loc.type = cudaMemLocationTypeDevice;
    loc.id = dev;
    cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, loc);
    cudaMemLocation host;
    memset(&host, 0, sizeof host);
    host.type = cudaMemLocationTypeHost;
    cudaMemAdvise(p, bytes, cudaMemAdviseSetAccessedBy, host);
#else
    cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, dev);
    cudaMemAdvise(p, bytes, cudaMemAdviseSetAccessedBy, cudaCpuDeviceId);
#endif
    cudaGetLastError(); /* advice is a hint: a refusal is not an error */
}
/* advise: the step arena's blocks, where the host writes tensor headers beside the data the kernels
   write, stay on the device and the host maps them (no page migrating back and forth each op); the
   heap's blocks (parameters, states) migrate on first touch and then stay where they are used */
static void *peft__heap_managed(size_t bytes, int advise) {
    void *p = NULL;
    if (cudaMallocManaged(&p, bytes, cudaMemAttachGlobal) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    if (advise) peft__heap_advise(p, bytes);
    return p;
}
/* the header of one of the heap's managed blocks, or NULL for host memory */
static peft__heap_hdr *peft__heap_header(void *p) {
    if (!peft__heap_was_on) return NULL;
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    if (a.type != cudaMemoryTypeManaged) return NULL;
    peft__heap_hdr *h = (peft__heap_hdr *)p - 1;
    if (h->magic != PEFT__HEAP_MAGIC) abort(); /* managed but not ours: a bug, never a silent leak */
    return h;
}

extern "C" {

PEFTDEF void peft_cuda_heap_device(int on) {
    peft__heap_on = on;
    if (on) peft__heap_was_on = 1;
}

PEFTDEF void *peft_cuda_heap_alloc(size_t bytes) {
    if (!peft__heap_on) return malloc(bytes ? bytes : 1);
    size_t need = bytes + sizeof(peft__heap_hdr);
    if (need < bytes) return NULL;
    peft__heap_hdr *h = NULL;
    uint64_t cls = 0;
    if (need > ((size_t)1 << 20)) {
        h = (peft__heap_hdr *)peft__heap_managed(need, 0);
    } else {
        cls = 6;
        while (((size_t)1 << cls) < need) cls++;
        size_t size = (size_t)1 << cls;
        pthread_mutex_lock(&peft__heap_lock);
        if (peft__heap_free_list[cls]) {
            h = (peft__heap_hdr *)peft__heap_free_list[cls];
            peft__heap_free_list[cls] = *(void **)(h + 1);
        } else {
            if (!peft__heap_chunk || peft__heap_chunk_used + size > PEFT__HEAP_CHUNK) {
                peft__heap_chunk = (char *)peft__heap_managed(PEFT__HEAP_CHUNK, 0); /* never freed */
                peft__heap_chunk_used = 0;
            }
            if (peft__heap_chunk) {
                h = (peft__heap_hdr *)(peft__heap_chunk + peft__heap_chunk_used);
                peft__heap_chunk_used += size;
            }
        }
        pthread_mutex_unlock(&peft__heap_lock);
    }
    if (!h) return NULL;
    h->magic = PEFT__HEAP_MAGIC;
    h->cls = cls;
    h->bytes = bytes;
    return h + 1;
}
PEFTDEF void peft_cuda_heap_free(void *p) {
    if (!p) return;
    peft__heap_hdr *h = peft__heap_header(p);
    if (!h) {
        free(p);
        return;
    }
    h->magic = 0;
    if (h->cls == 0) {
        cudaDeviceSynchronize(); /* a kernel may still read it */
        cudaFree(h);
        return;
    }
    pthread_mutex_lock(&peft__heap_lock);
    *(void **)(h + 1) = peft__heap_free_list[h->cls];
    peft__heap_free_list[h->cls] = h;
    pthread_mutex_unlock(&peft__heap_lock);
}
PEFTDEF void *peft_cuda_heap_realloc(void *p, size_t bytes) {
    if (!p) return peft_cuda_heap_alloc(bytes);
    peft__heap_hdr *h = peft__heap_header(p);
    if (!h && !peft__heap_on) return realloc(p, bytes ? bytes : 1);
    if (h && h->cls >= 6 && bytes + sizeof *h <= ((size_t)1 << h->cls)) {
        h->bytes = bytes;
        return p;
    }
    size_t old = h ? (size_t)h->bytes : malloc_usable_size(p); /* a host block moves to managed memory */
    void *q = peft_cuda_heap_alloc(bytes);
    if (!q) return NULL; /* p stays as it was */
    memcpy(q, p, old < bytes ? old : bytes);
    peft_cuda_heap_free(p);
    return q;
}

} /* extern "C" */

/* ---- the table's entries ---- */
static int peft__cb_accessible(const void *p) {
    if (!p) return 1;
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return a.type == cudaMemoryTypeManaged || a.type == cudaMemoryTypeDevice;
}
static peft_status peft__cb_fail(peft_graph *g, const peft_op *op, const char *what) {
    char msg[700];
    snprintf(msg, sizeof msg, "cuda backend: op %s: %s", peft_op_name(op->kind), what);
    return peft_graph_fail(g, PEFT_ERR_ARG, msg);
}
/* after the op's kernels: wait for them (see above) and turn a failure into the graph's */
static peft_status peft__cb_done(peft_graph *g, const peft_op *op, int rc) {
    if (!rc) rc = peft_cuda_sync();
    if (!rc) return PEFT_OK;
    return peft__cb_fail(g, op, peft_cuda_error());
}
/* every tensor the op reads or writes is device-accessible */
static peft_status peft__cb_check(peft_graph *g, const peft_op *op, int backward) {
    char msg[300];
    for (int j = -1; j < 8; j++) {
        const peft_tensor *t = j < 0 ? op->out : op->in[j];
        if (!t) continue;
        int bad = !peft__cb_accessible(t->data);
        if (backward && t->requires_grad && t->grad && !peft__cb_accessible(t->grad)) bad = 1;
        if (!bad) continue;
        snprintf(msg, sizeof msg,
                 "tensor %s (%s %d) is in host memory, which the device cannot read (allocate through "
                 "peft_cuda_heap_alloc: see peft_backend_cuda)",
                 t->name ? t->name : "(activation)", j < 0 ? "output" : "input", j);
        return peft__cb_fail(g, op, msg);
    }
    return PEFT_OK;
}
/* a gradient to accumulate into, cleared first while it is fresh (see the BACKENDS manual) */
static float *peft__cb_grad(peft_tensor *t) {
    if (!t || !t->requires_grad || !t->grad) return NULL;
    if (t->grad_fresh) {
        peft_cuda_zero(t->grad, (size_t)t->n * sizeof(float));
        t->grad_fresh = 0;
    }
    return t->grad;
}
static int64_t peft__cb_cols(const peft_tensor *t) { return t->shape[t->ndim - 1]; }
static int64_t peft__cb_rows(const peft_tensor *t) { return t->n / peft__cb_cols(t); }
/* host ids copied into the graph's (managed) scratch */
static const int *peft__cb_ids(peft_graph *g, const int *ids, int64_t n) {
    if (!ids || n <= 0) return NULL;
    int *d = (int *)peft_graph_scratch(g, (size_t)n * sizeof(int));
    if (d) memcpy(d, ids, (size_t)n * sizeof(int));
    return d;
}
static float *peft__cb_floats(peft_graph *g, int64_t n) {
    return (float *)peft_graph_scratch(g, (size_t)(n > 0 ? n : 1) * sizeof(float));
}
#define PEFT__CB_FWD_BEGIN(g, op)                                                                            \
    do {                                                                                                     \
        peft_status s_ = peft__cb_check(g, op, 0);                                                           \
        if (s_ != PEFT_OK) return s_;                                                                        \
    } while (0)
#define PEFT__CB_BWD_BEGIN(g, op)                                                                            \
    do {                                                                                                     \
        if (peft__cb_check(g, op, 1) != PEFT_OK) return;                                                     \
    } while (0)

static peft_status peft__cb_embedding(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    const int *ids = peft__cb_ids(g, op->ids, op->i[0]);
    if (!ids && op->i[0] > 0) return PEFT_ERR_NOMEM;
    return peft__cb_done(g, op, peft_cuda_embedding_fwd(op->in[0]->data, peft__cb_cols(op->in[0]), ids,
                                                        op->i[0], op->out->data));
}
static void peft__cb_embedding_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    float *dE = peft__cb_grad(op->in[0]);
    if (!dE) return;
    const int *ids = peft__cb_ids(g, op->ids, op->i[0]);
    if (!ids && op->i[0] > 0) return;
    peft__cb_done(g, op, peft_cuda_embedding_bwd(op->out->grad, peft__cb_cols(op->in[0]), ids, op->i[0], dE));
}

static peft_status peft__cb_replace_rows(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *E = op->in[0];
    const int *idx = peft__cb_ids(g, op->ids, op->i[0]);
    if (!idx && op->i[0] > 0) return PEFT_ERR_NOMEM;
    return peft__cb_done(g, op, peft_cuda_replace_rows_fwd(E->data, op->in[1]->data, idx, op->i[0],
                                                           E->shape[0],
                                                           peft__cb_cols(E), op->out->data));
}
static void peft__cb_replace_rows_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *E = op->in[0];
    float *dE = peft__cb_grad(E);
    float *dR = peft__cb_grad(op->in[1]);
    if (!dE && !dR) return;
    const int *idx = peft__cb_ids(g, op->ids, op->i[0]);
    uint8_t *flag = (uint8_t *)peft_graph_scratch(g, (size_t)E->shape[0]);
    if ((!idx && op->i[0] > 0) || !flag) return;
    peft__cb_done(g, op, peft_cuda_replace_rows_bwd(op->out->grad, idx, op->i[0], E->shape[0],
                                                    peft__cb_cols(E),
                                                    dE, dR, flag));
}

/* y [N, out] = x·Wᵀ;  dx = dy·W (stored while fresh), dW += dyᵀ·x */
static peft_status peft__cb_linear(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *x = op->in[0], *W = op->in[1];
    int in = (int)W->shape[1], out = (int)W->shape[0], N = (int)(x->n / in);
    return peft__cb_done(g, op, peft_cuda_gemm(0, 1, N, out, in, 1.0f, x->data, in, W->data, in, 0.0f,
                                               op->out->data, out));
}
static void peft__cb_linear_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *x = op->in[0], *W = op->in[1];
    int in = (int)W->shape[1], out = (int)W->shape[0], N = (int)(x->n / in);
    const float *dy = op->out->grad;
    int rc = 0;
    if (x->requires_grad && x->grad) {
        float beta = x->grad_fresh ? 0.0f : 1.0f;
        rc = peft_cuda_gemm(0, 0, N, in, out, 1.0f, dy, out, W->data, in, beta, x->grad, in);
        x->grad_fresh = 0;
    }
    if (!rc && W->requires_grad && W->grad)
        rc = peft_cuda_gemm(1, 0, out, in, N, 1.0f, dy, out, x->data, in, 1.0f, peft__cb_grad(W), in);
    peft__cb_done(g, op, rc);
}

static peft_status peft__cb_rmsnorm(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *x = op->in[0];
    return peft__cb_done(g, op, peft_cuda_rmsnorm_fwd(x->data, op->in[1]->data, peft__cb_rows(x),
                                                      peft__cb_cols(x),
                                                      op->f[0], op->out->data, op->saved));
}
static void peft__cb_rmsnorm_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *x = op->in[0], *w = op->in[1];
    float *dx = peft__cb_grad(x);
    float *dw = peft__cb_grad(w);
    if (!dx && !dw) return;
    peft__cb_done(g, op, peft_cuda_rmsnorm_bwd(x->data, w->data, op->out->grad, op->saved, peft__cb_rows(x),
                                               peft__cb_cols(x), dx, dw));
}

/* the RoPE table's rows the op reads, where the device can read them */
static int peft__cb_rope_args(peft_graph *g, peft_op *op, const float **c, const float **s,
                              const int **start) {
    const peft_rope_table *rt = (const peft_rope_table *)op->aux;
    int64_t rows = peft__cb_rows(op->in[0]);
    int T = op->i[1];
    int64_t nb = T > 0 ? rows / T : 0;
    *start = peft__cb_ids(g, op->ids, nb);
    if (op->ids && nb > 0 && !*start) return 1;
    *c = rt->cos;
    *s = rt->sin;
    if (peft__cb_accessible(rt->cos) && peft__cb_accessible(rt->sin)) return 0;
    int64_t half = rt->rot_dim / 2, n = (int64_t)rt->n_pos * half;
    float *cc = peft__cb_floats(g, n), *ss = peft__cb_floats(g, n);
    if (!cc || !ss) return 1;
    memcpy(cc, rt->cos, (size_t)n * sizeof(float));
    memcpy(ss, rt->sin, (size_t)n * sizeof(float));
    *c = cc;
    *s = ss;
    return 0;
}
static peft_status peft__cb_rope(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    const peft_rope_table *rt = (const peft_rope_table *)op->aux;
    const float *c, *s;
    const int *start;
    if (peft__cb_rope_args(g, op, &c, &s, &start)) return PEFT_ERR_NOMEM;
    peft_tensor *x = op->in[0];
    return peft__cb_done(g, op, peft_cuda_rope(op->out->data, x->data, peft__cb_rows(x), op->i[0], op->i[1],
                                               rt->head_dim, rt->rot_dim, rt->interleaved, c, s, start, 1.0f,
                                                   0));
}
static void peft__cb_rope_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    const peft_rope_table *rt = (const peft_rope_table *)op->aux;
    peft_tensor *x = op->in[0];
    float *dx = peft__cb_grad(x);
    if (!dx) return;
    const float *c, *s;
    const int *start;
    if (peft__cb_rope_args(g, op, &c, &s, &start)) return;
    peft__cb_done(g, op, peft_cuda_rope(dx, op->out->grad, peft__cb_rows(x), op->i[0], op->i[1], rt->head_dim,
                                        rt->rot_dim, rt->interleaved, c, s, start, -1.0f, 1));
}

/* the gate values per head, as peft.h's attention uses them: tanh(g) (paper) or g, one value or H */
static void peft__cb_gates(const peft_tensor *t, int use_tanh, int H, float *out) {
    for (int h = 0; h < H; h++) {
        float v = t ? t->data[t->n == 1 ? 0 : h] : 0.0f;
        out[h] = use_tanh ? tanhf(v) : v;
    }
}
static int peft__cb_attn_args(peft_graph *g, peft_op *op, peft_cuda_attn *a) {
    memset(a, 0, sizeof *a);
    a->B = op->i[0];
    a->T = op->i[1];
    a->H = op->i[2];
    a->KV = op->i[3];
    a->hd = op->i[4];
    a->K = op->i[5];
    a->prompt_batched = op->i[6];
    a->q = op->in[0]->data;
    a->k = op->in[1]->data;
    a->v = op->in[2]->data;
    a->pk = op->in[3] ? op->in[3]->data : NULL;
    a->pv = op->in[4] ? op->in[4]->data : NULL;
    a->x = op->in[6] ? op->in[6]->data : NULL;
    a->o = op->out->data;
    int64_t bht = (int64_t)a->B * a->H * a->T;
    float *G = peft__cb_floats(g, 4 * (int64_t)a->H);
    if (!G) return 1;
    peft__cb_gates(op->in[5], op->i[7], a->H, G);
    peft__cb_gates(op->in[7], 0, a->H, G + a->H);
    a->G = a->K ? G : NULL;
    a->Gx = a->x ? G + a->H : NULL;
    a->lse = op->saved;
    a->lse_p = a->K ? op->saved + bht : NULL;
    return 0;
}
static peft_status peft__cb_attention(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    int64_t bht = (int64_t)op->i[0] * op->i[2] * op->i[1];
    op->saved = peft__cb_floats(g, 2 * bht);
    if (!op->saved) return PEFT_ERR_NOMEM;
    peft_cuda_attn a;
    if (peft__cb_attn_args(g, op, &a)) return PEFT_ERR_NOMEM;
    return peft__cb_done(g, op, peft_cuda_attention_fwd(&a));
}
static void peft__cb_attention_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_cuda_attn a;
    if (peft__cb_attn_args(g, op, &a)) return;
    int H = a.H;
    const float *G = a.G;
    float *dG = peft__cb_floats(g, 2 * (int64_t)H);
    if (!dG) return;
    memset(dG, 0, 2 * (size_t)H * sizeof(float));
    a.dout = op->out->grad;
    a.dq = peft__cb_grad(op->in[0]);
    a.dk = peft__cb_grad(op->in[1]);
    a.dv = peft__cb_grad(op->in[2]);
    a.dpk = peft__cb_grad(op->in[3]);
    a.dpv = peft__cb_grad(op->in[4]);
    a.dx = peft__cb_grad(op->in[6]);
    a.dG = a.K ? dG : NULL;
    a.dGx = a.x ? dG + H : NULL;
    if (peft__cb_done(g, op, peft_cuda_attention_bwd(&a)) != PEFT_OK) return;
    /* the gates' chain rule on the host, as peft.h's attention backward */
    peft_tensor *gate = op->in[5], *xgate = op->in[7];
    int use_tanh = op->i[7];
    if (a.K && gate && gate->requires_grad && gate->grad)
        for (int h = 0; h < H; h++)
            gate->grad[gate->n == 1 ? 0 : h] += use_tanh ? dG[h] * (1.0f - G[h] * G[h]) : dG[h];
    if (a.x && xgate && xgate->requires_grad && xgate->grad)
        for (int h = 0; h < H; h++) xgate->grad[xgate->n == 1 ? 0 : h] += dG[H + h];
}

/* the KV cache's attention (generation; no backward): peft.h's kernel on the host, over the cache's and
   the op's managed memory once the stream is idle; correct, not fast (generate's decode steps) */
static peft_status peft__cb_attention_cached(peft_graph *g, peft_op *op) {
    if (peft_cuda_sync()) return peft__cb_fail(g, op, peft_cuda_error());
    return peft_backend_cpu()->op[PEFT_OP_ATTENTION_CACHED].forward(g, op);
}
/* a GGUF model's token_embd rows, decoded on the host from the frozen (host) blocks into the managed
   output: B·T rows per step; the same reason as above */
static peft_status peft__cb_qmatrix_embedding(peft_graph *g, peft_op *op) {
    if (!peft__cb_accessible(op->out->data)) return peft__cb_check(g, op, 0);
    if (peft_cuda_sync()) return peft__cb_fail(g, op, peft_cuda_error());
    return peft_backend_cpu()->op[PEFT_OP_QMATRIX_EMBEDDING].forward(g, op);
}

static peft_status peft__cb_prompt_attend(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    return peft__cb_done(g, op, peft_cuda_prompt_attend_fwd(op->in[0]->data, op->in[1]->data, op->in[2]->data,
                                                            op->i[0], op->i[1], op->i[2], op->i[3], op->saved,
                                                            op->out->data));
}
static void peft__cb_prompt_attend_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    float *scratch = peft__cb_floats(g, (int64_t)op->i[0] * op->i[2]);
    if (!scratch) return;
    peft__cb_done(g, op, peft_cuda_prompt_attend_bwd(op->in[0]->data, op->in[1]->data, op->in[2]->data,
                                                     op->saved, op->out->grad, op->i[0], op->i[1], op->i[2],
                                                     op->i[3], peft__cb_grad(op->in[0]),
                                                         peft__cb_grad(op->in[1]),
                                                     peft__cb_grad(op->in[2]), scratch));
}

/* the frozen bases (4-bit, ggml blocks) copied to the device for the call and freed after it: correct
   and simple; a cache keyed by the weight would save the copy (QLoRA and GGUF only) */
typedef struct {
    peft_cuda_q4 q4;
    peft_cuda_qmatrix qm;
    int is_q4, is_qm;
} peft__cb_frozen;
static int peft__cb_frozen_up(peft__cb_frozen *f, const void *w, int is_qmatrix) {
    memset(f, 0, sizeof *f);
    if (!w) return 0;
    if (is_qmatrix) {
        f->is_qm = 1;
        return peft_cuda_qmatrix_upload(&f->qm, (const peft_qmatrix *)w);
    }
    f->is_q4 = 1;
    return peft_cuda_q4_upload(&f->q4, (const peft_q4 *)w);
}
static void peft__cb_frozen_free(peft__cb_frozen *f) {
    peft_cuda_sync();
    if (f->is_q4) peft_cuda_q4_free(&f->q4);
    if (f->is_qm) peft_cuda_qmatrix_free(&f->qm);
}

static peft_status peft__cb_q4_linear(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft__cb_frozen f;
    int out = op->i[0], in = op->i[1], N = (int)(op->in[0]->n / in);
    int rc = peft__cb_frozen_up(&f, op->aux, op->i[2]);
    if (!rc && f.is_qm) rc = peft_cuda_qmatrix_linear_fwd(op->in[0]->data, &f.qm, N, op->out->data);
    else if (!rc) rc = peft_cuda_q4_linear_fwd(op->in[0]->data, &f.q4, N, out, in, op->out->data);
    peft_status s = peft__cb_done(g, op, rc);
    peft__cb_frozen_free(&f);
    return s;
}
static void peft__cb_q4_linear_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *x = op->in[0];
    if (!x->requires_grad || !x->grad) return;
    peft__cb_frozen f;
    int out = op->i[0], in = op->i[1], N = (int)(x->n / in);
    float beta = x->grad_fresh ? 0.0f : 1.0f;
    int rc = peft__cb_frozen_up(&f, op->aux, op->i[2]);
    if (!rc && f.is_qm) rc = peft_cuda_qmatrix_linear_bwd(op->out->grad, &f.qm, N, beta, x->grad);
    else if (!rc) rc = peft_cuda_q4_linear_bwd(op->out->grad, &f.q4, N, out, in, beta, x->grad);
    x->grad_fresh = 0;
    peft__cb_done(g, op, rc);
    peft__cb_frozen_free(&f);
}

/* LoRA: saved = u [N, r] then x̃ [N, in] (with dropout); aux = the mask (N·in bytes) or NULL; f[1] = keep */
static peft_status peft__cb_lora_linear(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    int N = op->i[0], in = op->i[1], out = op->i[2], r = op->i[3];
    float p = op->f[2];
    int drop = p > 0.0f;
    float keep = drop ? 1.0f / (1.0f - p) : 1.0f;
    op->f[1] = keep;
    op->saved = peft__cb_floats(g, (int64_t)N * r + (drop ? (int64_t)N * in : 0));
    float *scratch = peft__cb_floats(g, (int64_t)N * r);
    uint8_t *mask = drop ? (uint8_t *)peft_graph_scratch(g, (size_t)N * in) : NULL;
    if (!op->saved || !scratch || (drop && !mask)) return PEFT_ERR_NOMEM;
    op->aux = mask;
    float *xt = drop ? op->saved + (int64_t)N * r : NULL;
    const float *x = op->in[0]->data;
    int rc = drop ? peft_cuda_dropout(x, op->seed, N, in, p, keep, mask, xt) : 0;
    peft__cb_frozen f;
    if (!rc) rc = peft__cb_frozen_up(&f, op->aux2, op->i[4]);
    else memset(&f, 0, sizeof f);
    if (!rc)
        rc = peft_cuda_lora_fwd(x, xt, op->in[1] ? op->in[1]->data : NULL, f.is_q4 ? &f.q4 : NULL,
                                f.is_qm ? &f.qm : NULL, op->in[2]->data, op->in[3]->data, N, in, out, r,
                                    op->f[0],
                                op->out->data, op->saved, scratch);
    peft_status s = peft__cb_done(g, op, rc);
    peft__cb_frozen_free(&f);
    return s;
}
static void peft__cb_lora_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    int N = op->i[0], in = op->i[1], out = op->i[2], r = op->i[3];
    int drop = op->aux != NULL;
    peft_tensor *x = op->in[0], *W = op->in[1];
    float *scratch = peft__cb_floats(g, (int64_t)N * r + (int64_t)N * in);
    if (!scratch) return;
    float *dx = x->requires_grad ? x->grad : NULL;
    float x_beta = x->grad_fresh ? 0.0f : 1.0f;
    peft__cb_frozen f;
    int rc = peft__cb_frozen_up(&f, op->aux2, op->i[4]);
    if (!rc)
        rc = peft_cuda_lora_bwd(x->data, drop ? op->saved + (int64_t)N * r : NULL, (const uint8_t *)op->aux,
                                op->f[1], W ? W->data : NULL, f.is_q4 ? &f.q4 : NULL, f.is_qm ? &f.qm : NULL,
                                op->in[2]->data, op->in[3]->data, op->saved, op->out->grad, N, in, out, r,
                                    op->f[0],
                                dx, x_beta, peft__cb_grad(W), peft__cb_grad(op->in[2]),
                                    peft__cb_grad(op->in[3]),
                                scratch);
    if (dx) x->grad_fresh = 0;
    peft__cb_done(g, op, rc);
    peft__cb_frozen_free(&f);
}

static peft_status peft__cb_add_bias(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *y = op->in[0];
    return peft__cb_done(g, op, peft_cuda_add_bias_fwd(y->data, op->in[1]->data, peft__cb_rows(y),
                                                       peft__cb_cols(y), op->out->data));
}
static void peft__cb_add_bias_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *y = op->in[0];
    float *dy = peft__cb_grad(y);
    float *db = peft__cb_grad(op->in[1]);
    int rc = dy ? peft_cuda_axpy(dy, op->out->grad, 1.0f, y->n) : 0;
    if (!rc && db) rc = peft_cuda_add_bias_bwd(op->out->grad, peft__cb_rows(y), peft__cb_cols(y), db);
    peft__cb_done(g, op, rc);
}

static peft_status peft__cb_bias_scale(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *y = op->in[0];
    return peft__cb_done(g, op, peft_cuda_bias_scale_fwd(y->data, op->in[1]->data, op->in[2]->data,
                                                         peft__cb_rows(y), peft__cb_cols(y), op->out->data));
}
static void peft__cb_bias_scale_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *y = op->in[0];
    float *dy = peft__cb_grad(y);
    float *db = peft__cb_grad(op->in[1]);
    float *ds = peft__cb_grad(op->in[2]);
    peft__cb_done(g, op, peft_cuda_bias_scale_bwd(y->data, op->in[1]->data, op->in[2]->data, op->out->grad,
                                                  peft__cb_rows(y), peft__cb_cols(y), dy, db, ds));
}

static peft_status peft__cb_swiglu(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    return peft__cb_done(g, op, peft_cuda_swiglu_fwd(op->in[0]->data, op->in[1]->data, op->in[0]->n,
                                                     op->out->data));
}
static void peft__cb_swiglu_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    float *dg = peft__cb_grad(op->in[0]);
    float *du = peft__cb_grad(op->in[1]);
    peft__cb_done(g, op, peft_cuda_swiglu_bwd(op->in[0]->data, op->in[1]->data, op->out->grad, op->in[0]->n,
                                              dg, du));
}

static peft_status peft__cb_add(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    return peft__cb_done(g, op, peft_cuda_add_fwd(op->in[0]->data, op->in[1]->data, op->in[0]->n,
                                                  op->out->data));
}
static void peft__cb_add_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    int rc = 0;
    for (int j = 0; j < 2 && !rc; j++) {
        float *d = peft__cb_grad(op->in[j]);
        if (d) rc = peft_cuda_axpy(d, op->out->grad, 1.0f, op->in[j]->n);
    }
    peft__cb_done(g, op, rc);
}

static peft_status peft__cb_scale(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    return peft__cb_done(g, op, peft_cuda_scale_fwd(op->in[0]->data, op->f[0], op->in[0]->n, op->out->data));
}
static void peft__cb_scale_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    float *dx = peft__cb_grad(op->in[0]);
    if (dx) peft__cb_done(g, op, peft_cuda_axpy(dx, op->out->grad, op->f[0], op->in[0]->n));
}

/* rows with a target, and Σ loss_rows over them in row order (the CPU's order) */
static int peft__cb_loss_sum(const int *targets, const float *loss_rows, int64_t R, double *total) {
    int valid = 0;
    *total = 0.0;
    for (int64_t r = 0; r < R; r++) {
        if (targets[r] == -100) continue;
        *total += loss_rows[r];
        valid++;
    }
    return valid;
}
static peft_status peft__cb_cross_entropy(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *z = op->in[0];
    int64_t R = peft__cb_rows(z), V = peft__cb_cols(z);
    const int *t = peft__cb_ids(g, op->ids, R);
    float *rows = peft__cb_floats(g, R);
    if (!t || !rows) return PEFT_ERR_NOMEM;
    peft_status s = peft__cb_done(g, op, peft_cuda_cross_entropy_fwd(z->data, t, R, V, op->saved, rows));
    if (s != PEFT_OK) return s;
    double total;
    int valid = peft__cb_loss_sum(op->ids, rows, R, &total);
    op->out->data[0] = valid ? (float)(total / valid) : 0.0f;
    op->i[0] = valid;
    return PEFT_OK;
}
static void peft__cb_xent_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    peft_tensor *z = op->in[0];
    int64_t R = peft__cb_rows(z), V = peft__cb_cols(z);
    float *dz = peft__cb_grad(z);
    if (!dz || !op->i[0]) return;
    const int *t = peft__cb_ids(g, op->ids, R);
    if (!t) return;
    float scale = op->out->grad[0] / (float)op->i[0];
    peft__cb_done(g, op, peft_cuda_cross_entropy_bwd(z->data, t, op->saved, R, V, scale, dz));
}

/* the fused classifier + loss: the forward forms dL/dx and dL/dW (for dL = 1) as the CPU op does, kept in
   saved (dx [R, D] then dW [V, D] when asked); the backward scales them by the upstream gradient */
static peft_status peft__cb_lce(peft_graph *g, peft_op *op) {
    PEFT__CB_FWD_BEGIN(g, op);
    peft_tensor *x = op->in[0], *w = op->in[1];
    if (!w)
        return peft__cb_fail(g, op,
                             "a ggml-typed output matrix (a GGUF model's output.weight) has no CUDA kernel "
                             "yet: train GGUF models on the CPU backend");
    int R = (int)peft__cb_rows(x), D = (int)peft__cb_cols(x), V = (int)w->shape[0];
    int want_dx = op->i[0], want_dw = op->i[1];
    int chunk = (int)((int64_t)(64 << 20) / (V > 0 ? V : 1));
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    const int *t = peft__cb_ids(g, op->ids, R);
    float *rows = peft__cb_floats(g, R);
    float *scratch = peft__cb_floats(g, (int64_t)chunk * V);
    float *dx = want_dx ? peft__cb_floats(g, (int64_t)R * D) : NULL;
    float *dW = want_dw ? peft__cb_floats(g, (int64_t)V * D) : NULL;
    if ((R > 0 && !t) || !rows || !scratch || (want_dx && !dx) || (want_dw && !dW)) return PEFT_ERR_NOMEM;
    int valid = 0;
    for (int r = 0; r < R; r++) valid += op->ids[r] != -100;
    int rc = dW ? peft_cuda_zero(dW, (size_t)V * D * sizeof(float)) : 0;
    if (!rc)
        rc = peft_cuda_linear_ce(x->data, w->data, t, R, D, V, chunk, valid ? 1.0f / (float)valid : 0.0f,
                                 rows, dx,
                                 dW, scratch);
    peft_status s = peft__cb_done(g, op, rc);
    if (s != PEFT_OK) return s;
    double total;
    peft__cb_loss_sum(op->ids, rows, R, &total);
    op->out->data[0] = valid ? (float)(total / valid) : 0.0f;
    op->saved = dx;
    op->aux = dW;
    return PEFT_OK;
}
static void peft__cb_lce_bw(peft_graph *g, peft_op *op) {
    PEFT__CB_BWD_BEGIN(g, op);
    float dL = op->out->grad[0];
    peft_tensor *x = op->in[0], *w = op->in[1];
    int rc = 0;
    float *dx = op->saved ? peft__cb_grad(x) : NULL;
    if (dx) rc = peft_cuda_axpy(dx, op->saved, dL, x->n);
    float *dW = op->aux ? peft__cb_grad(w) : NULL;
    if (!rc && dW) rc = peft_cuda_axpy(dW, (const float *)op->aux, dL, w->n);
    peft__cb_done(g, op, rc);
}

/* ---- the table's non-op entries ---- */
static void *peft__cb_alloc(size_t bytes) { return peft__heap_managed(bytes ? bytes : 1, 1); }
static void peft__cb_free(void *p) {
    if (!p) return;
    cudaDeviceSynchronize();
    cudaFree(p);
}
static void peft__cb_zero(float *p, int64_t n) {
    if (n <= 0) return;
    if (peft__cb_accessible(p) && !peft_cuda_zero(p, (size_t)n * sizeof(float)) && !peft_cuda_sync()) return;
    cudaDeviceSynchronize();
    {
        memset(p, 0, (size_t)n * sizeof(float));
    }
}
static void peft__cb_copy(float *dst, const float *src, int64_t n) {
    if (n <= 0) return;
    cudaDeviceSynchronize();
    cudaMemcpy(dst, src, (size_t)n * sizeof(float), cudaMemcpyDefault);
}
/* the model code's GEMMs outside a graph (merging LoRA into W) run on cuBLAS over managed memory; a host
   operand (a caller's stack or malloc buffer) takes peft.h's GEMM after the stream is idle */
static void peft__cb_gemm(int tA, int tB, int M, int N, int K, const float *A, int lda, const float *B,
                          int ldb,
                          float beta, float *C, int ldc) {
    if (peft__cb_accessible(A) && peft__cb_accessible(B) && peft__cb_accessible(C) &&
        !peft_cuda_gemm(tA, tB, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc) && !peft_cuda_sync())
        return;
    cudaDeviceSynchronize();
    peft_gemm(tA, tB, M, N, K, A, lda, B, ldb, beta, C, ldc);
}
/* the decoders' callers are host code (merging, dequantizing a base): they decode on the host */
static void peft__cb_q4_decode(const peft_q4 *q, int64_t start, int64_t count, float *out) {
    cudaDeviceSynchronize();
    peft_q4_dequantize(q, start, count, out);
}
static void peft__cb_qmatrix_decode(const peft_qmatrix *q, int64_t row, int64_t col, int64_t n, float *out) {
    cudaDeviceSynchronize();
    peft_qmatrix_decode(q, row, col, n, out);
}
static peft_cuda_adam peft__cb_adam(const peft_adamw_scalars *k) {
    peft_cuda_adam a;
    a.decay = k->decay;
    a.w1 = k->w1;
    a.b2 = k->b2;
    a.w2 = k->w2;
    a.step_size = k->step_size;
    a.bc2_sqrt = k->bc2_sqrt;
    a.eps = k->eps;
    return a;
}
/* states the device cannot read (the paged optimizer's mmap'ed file) take the kernel's own element update
   on the host (peft_cuda_host_adamw: the same arithmetic) once the stream is idle */
static void peft__cb_adamw(const peft_adamw_scalars *k, float *w, const float *g, float *m, float *v,
                           int64_t n) {
    peft_cuda_adam a = peft__cb_adam(k);
    if (peft__cb_accessible(w) && peft__cb_accessible(g) && peft__cb_accessible(m) &&
        peft__cb_accessible(v) &&
        !peft_cuda_adamw(&a, w, g, m, v, n) && !peft_cuda_sync())
        return;
    cudaDeviceSynchronize();
    peft_cuda_host_adamw(&a, w, g, m, v, n);
}
static void peft__cb_adamw8(const peft_adamw_scalars *k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                            float *am, float *av, int64_t n) {
    peft_cuda_adam a = peft__cb_adam(k);
    if (peft__cb_accessible(w) && peft__cb_accessible(g) && peft__cb_accessible(qm) &&
        peft__cb_accessible(qv) &&
        peft__cb_accessible(am) && peft__cb_accessible(av) && !peft_cuda_adamw8(&a, w, g, qm, qv, am, av,
                                                                                n) &&
        !peft_cuda_sync())
        return;
    cudaDeviceSynchronize();
    peft_cuda_host_adamw8(&a, w, g, qm, qv, am, av, n);
}
static double peft__cb_sum_squares(const float *x, int64_t n, double acc) {
    double s = 0.0;
    float *p = (float *)x;
    if (peft__cb_accessible(x) && !peft_cuda_grad_sumsq(&p, &n, 1, &s)) return acc + s;
    cudaDeviceSynchronize();
    for (int64_t j = 0; j < n; j++) acc += (double)x[j] * x[j];
    return acc;
}
static void peft__cb_scale_by(float *x, int64_t n, double coef) {
    if (peft__cb_accessible(x) && !peft_cuda_scale(x, n, coef) && !peft_cuda_sync()) return;
    cudaDeviceSynchronize();
    for (int64_t j = 0; j < n; j++) x[j] = (float)(x[j] * coef);
}

/* an op with no CUDA entry yet (one peft.h gained after this table was written): refused by name, never
   run on the host over device data */
static peft_status peft__cb_missing(peft_graph *g, peft_op *op) {
    return peft__cb_fail(g, op, "no CUDA kernel for this op yet: run this model on the CPU backend");
}
static void peft__cb_missing_bw(peft_graph *g, peft_op *op) { peft__cb_missing(g, op); }

static peft_backend peft__cb_table;

extern "C" {

PEFTDEF const peft_backend *peft_backend_cuda(void) {
    peft_backend *b = &peft__cb_table;
    if (b->name) return b;
    b->place = PEFT_PLACE_CUDA;
    b->op[PEFT_OP_EMBEDDING].forward = peft__cb_embedding;
    b->op[PEFT_OP_EMBEDDING].backward = peft__cb_embedding_bw;
    b->op[PEFT_OP_REPLACE_ROWS].forward = peft__cb_replace_rows;
    b->op[PEFT_OP_REPLACE_ROWS].backward = peft__cb_replace_rows_bw;
    b->op[PEFT_OP_LINEAR].forward = peft__cb_linear;
    b->op[PEFT_OP_LINEAR].backward = peft__cb_linear_bw;
    b->op[PEFT_OP_RMSNORM].forward = peft__cb_rmsnorm;
    b->op[PEFT_OP_RMSNORM].backward = peft__cb_rmsnorm_bw;
    b->op[PEFT_OP_ROPE].forward = peft__cb_rope;
    b->op[PEFT_OP_ROPE].backward = peft__cb_rope_bw;
    b->op[PEFT_OP_ATTENTION].forward = peft__cb_attention;
    b->op[PEFT_OP_ATTENTION].backward = peft__cb_attention_bw;
    b->op[PEFT_OP_ATTENTION_CACHED].forward = peft__cb_attention_cached;
    b->op[PEFT_OP_Q4_LINEAR].forward = peft__cb_q4_linear;
    b->op[PEFT_OP_Q4_LINEAR].backward = peft__cb_q4_linear_bw;
    b->op[PEFT_OP_QMATRIX_LINEAR].forward = peft__cb_q4_linear;
    b->op[PEFT_OP_QMATRIX_LINEAR].backward = peft__cb_q4_linear_bw;
    b->op[PEFT_OP_LORA_LINEAR].forward = peft__cb_lora_linear;
    b->op[PEFT_OP_LORA_LINEAR].backward = peft__cb_lora_bw;
    b->op[PEFT_OP_ADD_BIAS].forward = peft__cb_add_bias;
    b->op[PEFT_OP_ADD_BIAS].backward = peft__cb_add_bias_bw;
    b->op[PEFT_OP_BIAS_SCALE].forward = peft__cb_bias_scale;
    b->op[PEFT_OP_BIAS_SCALE].backward = peft__cb_bias_scale_bw;
    b->op[PEFT_OP_PROMPT_ATTEND].forward = peft__cb_prompt_attend;
    b->op[PEFT_OP_PROMPT_ATTEND].backward = peft__cb_prompt_attend_bw;
    b->op[PEFT_OP_SWIGLU].forward = peft__cb_swiglu;
    b->op[PEFT_OP_SWIGLU].backward = peft__cb_swiglu_bw;
    b->op[PEFT_OP_ADD].forward = peft__cb_add;
    b->op[PEFT_OP_ADD].backward = peft__cb_add_bw;
    b->op[PEFT_OP_SCALE].forward = peft__cb_scale;
    b->op[PEFT_OP_SCALE].backward = peft__cb_scale_bw;
    b->op[PEFT_OP_CROSS_ENTROPY].forward = peft__cb_cross_entropy;
    b->op[PEFT_OP_CROSS_ENTROPY].backward = peft__cb_xent_bw;
    b->op[PEFT_OP_LINEAR_CROSS_ENTROPY].forward = peft__cb_lce;
    b->op[PEFT_OP_LINEAR_CROSS_ENTROPY].backward = peft__cb_lce_bw;
    b->op[PEFT_OP_QMATRIX_EMBEDDING].forward = peft__cb_qmatrix_embedding;
    for (int k = 0; k < PEFT_OP_COUNT; k++)
        if (!b->op[k].forward) {
            b->op[k].forward = peft__cb_missing;
            b->op[k].backward = peft__cb_missing_bw;
        }
    b->alloc = peft__cb_alloc;
    b->free = peft__cb_free;
    b->zero = peft__cb_zero;
    b->copy = peft__cb_copy;
    b->gemm = peft__cb_gemm;
    b->q4_decode = peft__cb_q4_decode;
    b->qmatrix_decode = peft__cb_qmatrix_decode;
    b->adamw = peft__cb_adamw;
    b->adamw_8bit = peft__cb_adamw8;
    b->sum_squares = peft__cb_sum_squares;
    b->scale = peft__cb_scale_by;
    b->name = "cuda";
    return b;
}

} /* extern "C" */
