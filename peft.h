/* peft.h — parameter-efficient fine-tuning of LLaMA models on a CPU, in one C header.

   ============================================================================
   WHAT IT IS
   ============================================================================
   A single-header C library (stb style) that loads LLaMA-family checkpoints
   (Hugging Face folders with safetensors), runs them forward, differentiates
   them with a small tape-based autodiff and fine-tunes them: fully, or with the
   parameter-efficient methods of the LLaMA PEFT survey (LoRA, LLaMA-Adapter V1,
   LLaMA-Adapter V2, LLaMA-Excitor, QLoRA). It depends on libc and libm only;
   pthreads are used when available.

   Every number it computes is checked against the Python reference stack
   (transformers, peft, torch) by the tests in tests/, on fixtures written by
   the scripts in tools/ref/.

   ============================================================================
   QUICK START
   ============================================================================
       #define PEFT_IMPLEMENTATION
       #include "peft.h"

       int main(void) {
           peft_model *m;
           if (peft_model_load(&m, "path/to/hf-model-folder") != PEFT_OK) {
               fprintf(stderr, "%s\n", peft_last_error());
               return 1;
           }
           peft_method lora = peft_method_defaults(PEFT_LORA);  // r 8, q_proj+v_proj
           peft_attach(m, &lora);                                // base frozen, B = 0
           peft_trainer *tr = peft_trainer_new(m, NULL);         // AdamW
           int tokens[]  = {1, 450, 4996, 17354, 1701, 432};
           int targets[] = {450, 4996, 17354, 1701, 432, -100};  // -100: no loss
           float loss;
           for (int step = 0; step < 10; step++) {
               peft_trainer_step(tr, tokens, targets, 1, 6, &loss);
               printf("step %d loss %.4f\n", step, loss);
           }
           peft_adapter_save(m, "my-adapter");                   // loads in HF PEFT
           peft_trainer_free(tr);
           peft_model_free(m);
       }

   Exactly one C file defines PEFT_IMPLEMENTATION before including this header;
   every other file includes it plainly and sees only the declarations.
   Compile with -O3 -march=native (cc -O3 -march=native app.c -lm -lpthread):
   the GEMM is hand-tiled, but GCC vectorises the element-wise loops (exp,
   softmax, norms) only at -O3, about 1.3x on a whole training step.

   ============================================================================
   BUILD MACROS
   ============================================================================
     PEFT_IMPLEMENTATION   emit the implementation in this translation unit
     PEFTDEF               linkage of the public functions (default: extern;
                           define as `static` for a private copy)
     PEFT_MALLOC(n)        allocator        (default malloc)
     PEFT_REALLOC(p, n)    reallocator      (default realloc)
     PEFT_FREE(p)          deallocator      (default free)
     PEFT_ASSERT(x)        internal invariant check (default assert)
     PEFT_NO_THREADS       build without pthreads (single-threaded kernels)
     PEFT_MAX_THREADS      upper bound on worker threads (default 64)
     PEFT_SPIN_US          how long an idle worker spins before it sleeps
                           (default 200 µs; no spinning with more threads
                           than available cores)
     PEFT_NO_SOLO          never run loops on the caller alone when the
                           machine is busy (see peft_set_solo)
     PEFT_LCE_CHUNK_MB     logits the fused classifier + loss holds at once
                           (default 128 MB; fewer, larger products are faster)
     PEFT_KEEP_DENORMALS   keep denormal floats in the parallel kernels (by
                           default they run flush-to-zero on x86: denormals
                           cost ~100 cycles each; the caller's MXCSR is kept)

   ============================================================================
   API OVERVIEW (reading order of the implementation below)
   ============================================================================
     errors      peft_status, peft_last_error(), peft_status_name()
     RNG         peft_rng_seed/uniform/normal — deterministic, seedable
     tensors     peft_tensor: f32 compute data, optional gradient buffer,
                 row-major shape/stride; parameters are trainable or frozen
                 (frozen ones never own a gradient buffer)
     4-bit       peft_q4: NF4/FP4/Int4 blocks of 64 in bitsandbytes' layout,
                 double quantization, 8-bit blockwise codes
     ggml types  peft_qmatrix: frozen weights kept in GGUF's block types (F32,
                 F16, BF16, Q4_0 … Q8_0, Q2_K … Q6_K), decoded inside the GEMM
     kernels     peft_gemm (packed, register-tiled, threaded), peft_check_cpu
     backends    peft_backend: the table every op and kernel call goes through
                 (the CPU one by default; see BACKENDS below)
     tape        peft_graph: an arena for activations plus the op record;
                 peft_backward() walks it in reverse
     ops         embedding, linear, rmsnorm, rope, causal GQA attention (with
                 gated prompts and an additive logit term), swiglu, add,
                 cross-entropy, LoRA linear, 4-bit linear, bias, bias/scale,
                 prompt attention — forward and backward side by side;
                 peft_attention_ref: the attention written plainly, in double
     LLaMA       peft_config (config.json or a preset), peft_model (load/save
                 safetensors, forward, loss), linear and attention sites
     methods     peft_method + peft_attach: LoRA, LLaMA-Adapter V1 and V2,
                 LLaMA-Excitor, QLoRA (one section each, headed by its
                 equation); merge; adapters saved in PEFT's layout; one
                 registry entry per method (peft_method_def: defaults,
                 settings, attach, count, adapter keys), peft_method_register
     optimizer   AdamW in torch's order (plain, paged, 8-bit states),
                 global-norm clipping, schedules
     trainer     one loop for every method: forward, loss, backward, clip,
                 step, with gradient accumulation; checkpoints (exact resume)
     files       JSON reader, safetensors reader/writer (strict validation,
                 atomic writes), F16/BF16, HF and bitsandbytes 4-bit folders,
                 llama2.c .bin (legacy, ak42 v1/v2), adapter folders, GGUF
                 LoRA adapters for llama.cpp; GGUF models (mapped, strict
                 validation, block linears kept in their ggml types)
     tokenizers  llama2.c tokenizer.bin, Hugging Face tokenizer.json (BPE,
                 SentencePiece-style and byte-level) with tokenizer_config.json
                 (eos_token, chat_template by family: peft_chat_encode),
                 a GGUF's tokenizer.ggml.*
     data        Alpaca / JSONL / chat / text datasets with prompt masking, batches;
                 generation with a KV cache (greedy or sampled)
     version     PEFT_VERSION_MAJOR/MINOR/PATCH, PEFT_VERSION_STRING

   Not in this header: the tooling of the command line tool, the demo and
   the examples lives in tools/peft_tools.h (same stb style, its own
   PEFT_TOOLS_IMPLEMENTATION): the demo's synthetic world (peft_demo_world),
   SVG plots (peft_svg_plot), the progress bar (peft_progress), the FMA-peak
   probe (peft_fma_peak_gflops) and the peak-RSS reader (peft_peak_rss).

   Conventions: every call that can fail returns peft_status; on failure
   peft_last_error() returns a sentence naming the file and the problem.
   Weights are stored [out_features, in_features] and y = x·Wᵀ, as in PyTorch.

   ============================================================================
   THREADS
   ============================================================================
   The library's own state is per thread where it can be: the error message
   (peft_last_error) and its status, the GEMM's packing buffers, the
   attention and LoRA scratch, and the sort contexts of the tokenizer and
   the sampler. What is shared, and so the caller's to serialise:
     - the worker pool: peft_set_threads(n) sets it for the process, and
       with n > 1 only one application thread at a time may run library
       work (forward, backward, a trainer or optimizer step, the GEMM,
       quantization, generation). Call peft_set_threads itself while no
       other thread is inside the library. With n = 1 (the default) every
       loop runs inline on its caller: distinct objects on distinct
       threads are then independent. A loop is cut into a few chunks per
       thread; each thread runs its own share first and then takes what is
       left of the others', so another program taking a core slows a step
       in proportion, instead of stalling every loop; on a machine so busy
       that the pool's loops get little more than one core, they run on the
       calling thread alone for a while (peft_set_solo, "solo loops" in the
       pool's section). A LoRA or adapter training step with a batch that
       is a multiple of n runs as n data-parallel shards instead, one whole
       forward and backward per thread, meeting once per step
       (peft_set_data_parallel, "data-parallel steps" in the trainer's
       section). Results are the same bits whichever thread ran which
       chunk or shard. peft_available_cpus() says
       how many cores the process may use (affinity mask, cgroup quota):
       the tools' default thread count (PEFT_THREADS overrides it).
     - every object: a model, graph, trainer, optimizer, KV cache or
       tokenizer is used by one thread at a time. A forward writes to its
       model (the dropout RNG, the RoPE table, the checkpointing tape), so
       two threads never share a model, even to run forwards.
   Pure functions (peft_q4_code, peft_status_name, peft_method_defaults,
   peft_config_preset, peft_f16_to_f32 and the like) are safe anywhere.

   ============================================================================
   BACKENDS: how to add one
   ============================================================================
   Every op's forward and backward, the GEMM, the 4-bit and ggml block
   decoders, the AdamW update, clipping's reductions and the step arena's
   memory go through a peft_backend: a struct of plain C function pointers
   (pointers, sizes, strides; no stdio), so device pointers flow through it
   unchanged. The CPU backend (peft_backend_cpu(), registered first, the
   default) points at the kernels of this file; model and method code never
   call a kernel directly (tools/check_backend.sh checks it, `make test` runs
   that check). A graph computes on the backend in use when it was made; the
   optimizer, clipping and model code outside a graph on the one in use now.

   A new backend is a `static peft_backend` with every entry filled in:
     name, place        "cuda", PEFT_PLACE_CUDA (PEFT_PLACE_HOST for a host one)
     op[k].forward      for each peft_op_kind k: peft_status f(g, op). The op's
                        front end (peft_linear …) has checked the shapes, made
                        op->out (from the graph's arena, so in the backend's
                        memory) and filled op's fields; the comment above each
                        CPU forward (peft__cpu_<op> in OPS) lists them. Compute
                        out; keep what the backward needs in op->saved or
                        op->aux (from peft_graph_scratch(g, bytes)). Return
                        PEFT_OK or an error (the graph is then marked failed).
     op[k].backward     void f(g, op), on the recorded copy of op: add each
                        input's gradient into in[j]->grad for the inputs with
                        requires_grad (dx is stored, not added, while
                        in[0]->grad_fresh: then clear that flag). Scratch
                        comes from peft_graph_scratch, which marks the graph
                        failed when it returns NULL (then return at once).
                        NULL only for PEFT_OP_ATTENTION_CACHED (no backward).
     alloc, free        the arena's blocks (64 bytes of slack are asked for
                        alignment) and the KV cache's keys, values and
                        prompts; free(NULL) does nothing. The arena also
                        holds peft_tensor headers and the tape's saved ids,
                        so for now a device backend returns memory the host
                        can read and write (CUDA managed memory).
     zero, copy         p[0..n) = 0; dst[0..n) = src[0..n) (the KV cache's
                        appends, checkpointing's block input and output)
     gemm               C = beta·C + op(A)·op(B), as peft_gemm
     q4_decode, qmatrix_decode   as peft_q4_dequantize, peft_qmatrix_decode
     adamw, adamw_8bit  one AdamW update of n elements with the step's
                        peft_adamw_scalars (fp32 states; blockwise 8-bit codes
                        with one absmax per 256); the paged path calls adamw
                        one page at a time
     sum_squares, scale clipping: acc + Σ x² in double, in order; x ·= coef
   then peft_backend_register(&b) (refused, naming it, when an entry is
   missing) and peft_backend_use(&b) before making graphs. The op tests
   (tests/test_ops.c, fd_run) run every check against every registered
   backend; tests/test_backend.c registers a reference backend (the plain
   GEMM and attention) and a counting one as examples. Starting from a copy
   of the CPU table (b = *peft_backend_cpu()) and replacing entries one at a
   time keeps every step testable.

   ============================================================================
   READING GUIDE
   ============================================================================
   The implementation is ordered for the compiler (kernels before the ops
   that call them). To learn how fine-tuning works, read it in this order
   instead; find each part by its banner (the quoted titles below).

     1. The model, forward and backward
        "TENSORS" and "TAPE: the step arena and the op record": what a
        tensor is, how ops record their backward, how peft_backward walks it.
        "OPS: each forward with its backward beside it", in the order
        "---- linear", "---- RMSNorm", "---- RoPE", "---- reference
        attention" (the definition, plainly; the fast "---- causal attention
        with grouped-query heads, ..." computes the same), "---- SwiGLU",
        "---- cross-entropy". Each op's math is in the comment above it.
        "LLaMA: configuration, presets, parameters, forward": the block's
        equations in the banner, then "---- forward" (peft__block).
     2. Where methods attach
        "METHODS: what attaches where", then "---- the forward at a linear
        site" and "---- the attention sites"; "METHOD REGISTRY" lists every
        method with its defaults and settings.
     3. The methods, each headed by its equation
        "LoRA — Hu et al. 2021" with its op "---- LoRA linear";
        "LLaMA-Adapter V1" with the prompt branch of the attention op;
        "LLaMA-Adapter V2" with "---- bias and scale (LLaMA-Adapter V2)";
        "LLaMA-Excitor" with "---- attention over a few prompts" and the
        logit term of the attention op;
        "QLoRA" with "KERNELS: 4-bit and 8-bit blockwise quantization" and
        "---- 4-bit linear".
     4. Training
        "OPTIMIZERS: AdamW, clipping, schedules", then "TRAINER: one loop
        for every method" and "---- gradient checkpointing".
     5. The engineering, when you need it
        "KERNELS: matrix multiply" (packing, micro-kernel, threads; its plain
        definition is peft_gemm_ref), "PLATFORM" ("---- thread pool"),
        "FILES" (JSON, safetensors, model and adapter folders, GGUF),
        "TOKENIZERS", "DATA", "GENERATION".
*/
#ifndef PEFT_H
#define PEFT_H

/* Semantic versioning: MAJOR changes break the API or the file formats,
   MINOR adds to them, PATCH fixes. CHANGELOG.md says what each one holds. */
#define PEFT_VERSION_MAJOR 0
#define PEFT_VERSION_MINOR 1
#define PEFT_VERSION_PATCH 0
#define PEFT__STR2(x) #x
#define PEFT__STR(x) PEFT__STR2(x)
#define PEFT_VERSION_STRING PEFT__STR(PEFT_VERSION_MAJOR) "." PEFT__STR(PEFT_VERSION_MINOR) "." \
                            PEFT__STR(PEFT_VERSION_PATCH)

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifndef PEFTDEF
#define PEFTDEF extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */
typedef enum {
    PEFT_OK = 0,
    PEFT_ERR_ARG,         /* a caller passed something invalid            */
    PEFT_ERR_IO,          /* open/read/write/rename failed                 */
    PEFT_ERR_FORMAT,      /* a file is malformed (JSON, safetensors)       */
    PEFT_ERR_SHAPE,       /* tensor shapes disagree with the config        */
    PEFT_ERR_CONFIG,      /* unknown or unsupported configuration value    */
    PEFT_ERR_NOMEM,       /* allocation failed                             */
    PEFT_ERR_NUMERIC,     /* NaN/Inf loss or gradient                      */
    PEFT_ERR_UNSUPPORTED  /* valid input this build does not handle        */
} peft_status;

PEFTDEF const char *peft_last_error(void);
PEFTDEF const char *peft_status_name(peft_status s);

/* ------------------------------------------------------------------- RNG */
typedef struct { uint64_t s[2]; int has_spare; float spare; } peft_rng;
PEFTDEF void     peft_rng_seed(peft_rng *r, uint64_t seed);
PEFTDEF uint64_t peft_rng_u64(peft_rng *r);
PEFTDEF float    peft_rng_uniform(peft_rng *r);          /* [0, 1)      */
PEFTDEF float    peft_rng_normal(peft_rng *r);           /* N(0, 1)     */

/* --------------------------------------------------------------- tensors */
#define PEFT_MAX_DIMS 4
#define PEFT_MAX_EOS  8            /* end-of-sequence ids a model may list   */

/* Where a tensor's data and gradient live: the host, or (under PEFT_CUDA) a
   device. A backend computes on the tensors of its place (see BACKENDS). */
typedef enum {
    PEFT_PLACE_HOST = 0
#ifdef PEFT_CUDA
    , PEFT_PLACE_CUDA           /* reserved for the CUDA backend          */
#endif
} peft_place;

typedef struct peft_tensor {
    float   *data;
    float   *grad;                  /* NULL unless requires_grad          */
    int64_t  shape[PEFT_MAX_DIMS];
    int64_t  stride[PEFT_MAX_DIMS]; /* in elements, row-major             */
    int      ndim;
    int64_t  n;                     /* number of elements                 */
    int      requires_grad;
    int      is_param;              /* owned by a model, outlives a step  */
    const char *name;               /* parameter name (HF key) or NULL    */
    int      grad_fresh;            /* backward: grad not yet written; the
                                       first op stores instead of adding  */
    peft_place place;               /* where data and grad live (host: 0) */
} peft_tensor;

/* A parameter: malloc'ed data, and a gradient buffer only when trainable. */
PEFTDEF peft_tensor *peft_param_new(const char *name, int ndim, const int64_t *shape);
PEFTDEF peft_status  peft_param_set_trainable(peft_tensor *p, int trainable);
PEFTDEF void         peft_param_free(peft_tensor *p);

/* ---------------------------------------------------------------- 4-bit */
/* Blockwise 4-bit storage as bitsandbytes lays it out: row-major elements in
   blocks of 64, one absmax per block, two codes per byte with the first
   element in the high nibble. Double quantization stores the absmax values as
   8-bit codes of bnb's signed dynamic map (blocks of 256, one fp32 scale
   each) around their mean. */
typedef enum { PEFT_NF4 = 0, PEFT_FP4, PEFT_INT4 } peft_q4_type;

typedef struct {
    peft_q4_type type;
    int64_t  n, n_blocks, n_nested;
    int      blocksize, nested_blocksize;  /* 64, 256                          */
    uint8_t *packed;                       /* (n + 1) / 2 bytes                */
    float   *absmax;                       /* n_blocks (NULL when double-quantized) */
    int      double_quant;
    uint8_t *qabsmax;                      /* n_blocks 8-bit codes             */
    float   *nested_absmax;                /* n_nested                          */
    float    offset;                       /* mean of the absmax values        */
} peft_q4;

PEFTDEF const float *peft_q4_code(peft_q4_type t);     /* the 16 values of a code */
PEFTDEF const float *peft_dynamic_map(void);            /* bnb's signed 8-bit map (256) */
PEFTDEF const float *peft_dynamic_map_unsigned(void);   /* and its unsigned one (8-bit optimizer v) */
/* offset: NULL computes the mean of the absmax values (in double); pass a value
   to reproduce a file bit for bit (bnb takes torch's float32 mean, whose
   summation order depends on the CPU's vector width). */
PEFTDEF peft_status peft_q4_quantize(peft_q4 *q, const float *w, int64_t n, peft_q4_type t,
                                     int double_quant, const float *offset);
PEFTDEF float       peft_q4_block_scale(const peft_q4 *q, int64_t block);
PEFTDEF void        peft_q4_dequantize(const peft_q4 *q, int64_t start, int64_t count, float *out);
PEFTDEF size_t      peft_q4_bytes(const peft_q4 *q);    /* what the storage allocates */
PEFTDEF void        peft_q4_free(peft_q4 *q);
/* 8-bit blockwise quantization with a 256-entry code (nearest code, ties to
   the lower one), bitsandbytes' CPU semantics. */
PEFTDEF void        peft_quantize_blockwise8(const float *x, int64_t n, int blocksize, const float *code,
                                             uint8_t *q, float *absmax);
PEFTDEF void        peft_dequantize_blockwise8(const uint8_t *q, int64_t n, int blocksize, const float *code,
                                               const float *absmax, float *out);

/* ------------------------------------------------------- ggml block types */
/* Tensor types of ggml / GGUF files, ggml's numbering. Quantized types are
   blocks of 32 (Q4_0 … Q8_0) or 256 elements (the K-quants) along a row, each
   block its fp16 scale(s) and packed codes; peft.h decodes them as
   gguf.quants.dequantize (gguf-py 0.19.0) does, bit for bit. */
typedef enum { PEFT_GGML_F32 = 0, PEFT_GGML_F16 = 1, PEFT_GGML_Q4_0 = 2, PEFT_GGML_Q4_1 = 3,
               PEFT_GGML_Q5_0 = 6, PEFT_GGML_Q5_1 = 7, PEFT_GGML_Q8_0 = 8, PEFT_GGML_Q2_K = 10,
               PEFT_GGML_Q3_K = 11, PEFT_GGML_Q4_K = 12, PEFT_GGML_Q5_K = 13, PEFT_GGML_Q6_K = 14,
               PEFT_GGML_BF16 = 30 } peft_ggml_type;
PEFTDEF const char *peft_ggml_type_name(int type);     /* "Q4_K"…; NULL when not supported */
PEFTDEF int         peft_ggml_block_size(int type);    /* elements per block; 0 = not supported */
PEFTDEF size_t      peft_ggml_type_size(int type);     /* bytes per block; 0 = not supported */
/* bytes of a row of n elements; PEFT_ERR_FORMAT when n is not a whole number of
   blocks, PEFT_ERR_UNSUPPORTED for a type not listed above */
PEFTDEF peft_status peft_ggml_row_bytes(int type, int64_t n, size_t *bytes);
/* n (a multiple of the block size) elements from src into floats, as ggml's
   dequantize_row_* and gguf.quants.dequantize */
PEFTDEF void        peft_ggml_dequantize(int type, const void *src, int64_t n, float *dst);
/* n floats (a multiple of the block size) into Q8_0, Q4_0 or Q4_1 blocks as
   gguf.quants.quantize does (for tests and tools; PEFT_ERR_UNSUPPORTED for
   the other types) */
PEFTDEF peft_status peft_ggml_quantize(int type, const float *src, int64_t n, void *dst);
/* A frozen weight [rows = out, cols = in] in a ggml block type, row-major,
   blocks along rows. */
typedef struct {
    int            type;        /* peft_ggml_type                                   */
    int64_t        rows, cols;
    size_t         row_bytes;
    const uint8_t *data;        /* rows * row_bytes bytes (e.g. in a mapped file)    */
    void          *owned;       /* freed with the matrix when not NULL              */
    int            bf16_compute;/* BF16 only: products in bf16 with fp32 accumulation
                                   (peft_model_set_precision); 0: decoded to fp32   */
} peft_qmatrix;
/* floats of row `row`, columns [col, col + n) (any range, not only whole blocks) */
PEFTDEF void        peft_qmatrix_decode(const peft_qmatrix *q, int64_t row, int64_t col, int64_t n,
                                        float *out);
PEFTDEF void        peft_qmatrix_free(peft_qmatrix *q);   /* frees owned, not q itself */
/* what the storage takes: rows · row_bytes */
PEFTDEF size_t      peft_qmatrix_bytes(const peft_qmatrix *q);

/* ---------------------------------------------------------------- kernels */
/* C[M,N] = beta*C + op(A)[M,K] · op(B)[K,N]; op(X) = Xᵀ when tX != 0.
   Leading dimensions are row strides of A, B, C as stored. */
PEFTDEF void peft_gemm(int tA, int tB, int M, int N, int K,
                       const float *A, int lda, const float *B, int ldb,
                       float beta, float *C, int ldc);
PEFTDEF void peft_gemm_ref(int tA, int tB, int M, int N, int K,
                           const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc);
PEFTDEF void peft_set_threads(int n);
PEFTDEF int  peft_get_threads(void);
/* fn(ctx, begin, end) over [0, n) on the worker threads, one call per chunk
   of at least min_chunk indices; each index is in exactly one call, and the
   chunks' bounds depend only on n, min_chunk and peft_get_threads(), never
   on which thread runs which chunk. Returns when every chunk is done. A call
   from inside fn runs inline; the rules of THREADS in the manual apply. */
PEFTDEF void peft_parallel_for(int64_t n, int64_t min_chunk,
                               void (*fn)(void *ctx, int64_t begin, int64_t end), void *ctx);
/* Parallel loops since the start, and how many of them ran on the calling
   thread alone because the machine was too busy for the others to help (see
   "solo loops" in the thread pool's section). Either pointer may be NULL. */
PEFTDEF void peft_parallel_stats(int64_t *loops, int64_t *solo_loops);
/* What the pool does on a busy machine. PEFT_SOLO_AUTO (the default)
   measures the cores its parallel loops get and runs them on the calling
   thread alone while that gets more done; PEFT_SOLO_NEVER always hands
   chunks to every thread; PEFT_SOLO_ALWAYS runs every loop on the caller,
   cut into the chunks of peft_get_threads() threads (the tests use it to
   show results do not change). Resets the measurements, as does
   peft_set_threads. */
typedef enum { PEFT_SOLO_AUTO, PEFT_SOLO_NEVER, PEFT_SOLO_ALWAYS } peft_solo_mode;
PEFTDEF void peft_set_solo(peft_solo_mode mode);
/* Data-parallel training steps (on by default; see "data-parallel steps" in
   the trainer's section): with n threads and a batch that is a multiple of
   n, a LoRA or adapter step runs as n shards, one per thread, each a whole
   forward and backward of B/n sequences, and adds their gradients. 0: every
   step on one tape, its loops spread over the threads. */
PEFTDEF void peft_set_data_parallel(int on);
/* Cores this process may run on: its CPU affinity mask (Linux), capped by
   the CPU quota of its cgroup (v2 cpu.max of the cgroup and its ancestors,
   v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up; else the online
   cores (sysconf). At least 1: the default thread count of the tools. */
PEFTDEF int peft_available_cpus(void);
/* The cores a cgroup CPU quota allows, from the text of a v2 cpu.max file
   ("max 100000", "150000 100000") or of v1's quota and period joined by a
   space ("-1 100000", "50000 100000"): quota / period rounded up, at least
   1; 0 when there is no limit; -1 when the text is not one of these. */
PEFTDEF int peft_parse_cpu_max(const char *text);
/* The kernels are compiled for the build machine's ISA (-march=native):
   this refuses, with a clear error, to run AVX-512/AVX2/FMA code on a CPU
   without them (instead of dying of SIGILL). Models call it on creation. */
PEFTDEF peft_status peft_check_cpu(void);
/* 1 when products with bf16 weights (--precision bf16) run on AVX512-BF16
   (vdpbf16ps: bf16 pairs multiplied into fp32 sums); 0 when the CPU or the
   build lacks it, or the environment sets PEFT_NO_BF16=1: the weights then
   stay bf16 and are decoded to fp32 for an fp32 product. */
PEFTDEF int peft_bf16_dot_available(void);

/* ------------------------------------------------------------------- tape */
typedef struct peft_graph peft_graph;
PEFTDEF peft_graph *peft_graph_new(void);
/* Starts a new step: every tensor of the previous one is gone (copy out
   what you need first); the arena's memory is kept for the next step. */
PEFTDEF void        peft_graph_reset(peft_graph *g);
PEFTDEF void        peft_graph_free(peft_graph *g);
PEFTDEF void        peft_graph_set_grad(peft_graph *g, int enabled);
PEFTDEF size_t      peft_graph_arena_bytes(const peft_graph *g);
PEFTDEF long        peft_graph_system_allocs(const peft_graph *g);
/* Seeds d(out)=1 (out must be a scalar) and runs every backward in reverse.
   Gradients land in the parameters and in leaf tensors (made with
   peft_tensor_new, requires_grad set). An op output's gradient is released
   once the backward has passed its producer (its buffer serves later ones:
   a step holds a few activation gradients, not one per activation), so
   afterwards an op output's `grad` is NULL, as PyTorch frees non-leaf ones. */
PEFTDEF peft_status peft_backward(peft_graph *g, peft_tensor *out);
/* Same, seeding d(out) with the given values (out->n of them): for any tensor. */
PEFTDEF peft_status peft_backward_seed(peft_graph *g, peft_tensor *out, const float *seed);
/* A fresh activation tensor from the step arena (contents uninitialised). */
PEFTDEF peft_tensor *peft_tensor_new(peft_graph *g, int ndim, const int64_t *shape);
PEFTDEF peft_tensor *peft_tensor_2d(peft_graph *g, int64_t rows, int64_t cols);

/* -------------------------------------------------------------------- ops */
/* Each op computes its forward now and, when any input needs a gradient,
   records its backward on the tape. Shapes: rows are tokens (B*T). */
PEFTDEF peft_tensor *peft_embedding(peft_graph *g, peft_tensor *table, const int *ids, int n);
PEFTDEF peft_tensor *peft_linear(peft_graph *g, peft_tensor *x, peft_tensor *w);
/* E [V, D] with row idx[i] replaced by row i of R [n, D] (PEFT's trainable
   tokens: index_copy); the indices must be distinct and below V. */
PEFTDEF peft_tensor *peft_replace_rows(peft_graph *g, peft_tensor *E, peft_tensor *R, const int *idx, int n);
PEFTDEF peft_tensor *peft_rmsnorm(peft_graph *g, peft_tensor *x, peft_tensor *w, float eps);
typedef struct {
    int head_dim, rot_dim, interleaved;
    int n_pos;                   /* rows in cos/sin                       */
    const float *cos, *sin;      /* [n_pos, rot_dim/2]                    */
} peft_rope_table;
PEFTDEF peft_tensor *peft_rope(peft_graph *g, peft_tensor *x, int n_heads,
                               const peft_rope_table *rt, int B, int T);
PEFTDEF peft_tensor *peft_attention(peft_graph *g, peft_tensor *q, peft_tensor *k,
                                    peft_tensor *v, int B, int T, int n_heads,
                                    int n_kv_heads, int head_dim);
/* Attention with the methods' attention sites: gated adapter prompts with
   their own softmax, and a gated additive term on the logits (Excitor). */
#ifndef PEFT_MAX_HEADS
#define PEFT_MAX_HEADS 256
#endif
typedef struct {
    peft_tensor *pk, *pv;    /* prompt keys/values [K or B*K, kv_heads*head_dim] */
    int          n_prompts;  /* K                                              */
    peft_tensor *gate;       /* [n_heads] or [1]                                */
    int          gate_tanh;  /* G = tanh(gate) (paper) or the raw gate (PEFT)   */
    peft_tensor *x;          /* extra keys [B*T, kv_heads*head_dim]: logits += γ·q·x/√d */
    peft_tensor *x_gate;     /* γ, [n_heads] or [1], used raw                   */
} peft_attn_extras;
PEFTDEF peft_tensor *peft_attention_ex(peft_graph *g, peft_tensor *q, peft_tensor *k, peft_tensor *v,
                                       int B, int T, int n_heads, int n_kv_heads, int head_dim,
                                       const peft_attn_extras *ex);
/* The same attention written plainly, as peft_gemm_ref is for the GEMM: the
   definition to read and to test the fast one against. Scalar loops, double
   precision in and out (so that it also serves finite differences), no
   allocation, no tape. Layouts as above: q and o [B*T, n_heads*head_dim];
   k, v and x [B*T, n_kv_heads*head_dim]; pk, pv [K, ...] shared or
   [B*K, ...] one set per sequence (prompt_batched); gates 1 or n_heads
   values; a NULL gate is 0. */
typedef struct {
    const double *pk, *pv;           /* prompt keys/values, or NULL          */
    int           n_prompts;         /* K                                     */
    int           prompt_batched;    /* pk/pv hold B*K rows                   */
    const double *gate;              /* prompt gate: G = tanh(gate) or gate   */
    int           n_gate, gate_tanh;
    const double *x, *x_gate;        /* Excitor's extra keys and γ, or NULL   */
    int           n_x_gate;
} peft_attn_ref_extras;
PEFTDEF void peft_attention_ref(const double *q, const double *k, const double *v, int B, int T,
                                int n_heads, int n_kv_heads, int head_dim,
                                const peft_attn_ref_extras *ex, double *o);
/* y = x·Wᵀ with W in 4-bit storage [out, in]; the matrix product decodes W
   straight into its packed panels, never into an fp32 matrix. W is frozen. */
PEFTDEF peft_tensor *peft_q4_linear(peft_graph *g, peft_tensor *x, const peft_q4 *W, int out, int in);
/* LoRA: x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ without ever forming W + B·A.
   W = NULL gives the LoRA term alone. rng = NULL disables dropout (evaluation);
   otherwise one value is drawn from rng, k, and row n's mask comes from a
   generator seeded with k + n (the same on any number of threads). */
PEFTDEF peft_tensor *peft_lora_linear(peft_graph *g, peft_tensor *x, peft_tensor *W, peft_tensor *A,
                                      peft_tensor *B, float scale, float dropout, peft_rng *rng);
/* QLoRA: the same over a 4-bit base W [out, in], as one op (the base's output
   is not a separate tensor, nor its gradient). */
PEFTDEF peft_tensor *peft_qlora_linear(peft_graph *g, peft_tensor *x, const peft_q4 *W, peft_tensor *A,
                                       peft_tensor *B, float scale, float dropout, peft_rng *rng);
/* y [N, out] = x [N, in]·Wᵀ over a ggml-typed frozen W [out, in], decoded into
   the GEMM's packed panels (no fp32 copy of W); the input gradient goes
   through the same decoding, W never gets one. PEFT_ERR_SHAPE when x's width
   is not W->cols; PEFT_ERR_ARG for a matrix without data, an unsupported
   type or a row_bytes that disagrees with its type and cols. */
PEFTDEF peft_tensor *peft_qmatrix_linear(peft_graph *g, peft_tensor *x, const peft_qmatrix *W);
/* LoRA over it: x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ, as peft_lora_linear / peft_qlora_linear */
PEFTDEF peft_tensor *peft_qmatrix_lora_linear(peft_graph *g, peft_tensor *x, const peft_qmatrix *W,
                                              peft_tensor *A, peft_tensor *B, float scale, float dropout,
                                              peft_rng *rng);
/* x [n, cols] = rows ids[0..n) of a ggml-typed frozen table E [rows = vocab,
   cols = dim], each row decoded alone (no fp32 copy of E is made); no
   gradient flows to E. PEFT_ERR_ARG for an id outside [0, rows) or a matrix
   qmatrix_linear refuses. */
PEFTDEF peft_tensor *peft_qmatrix_embedding(peft_graph *g, const peft_qmatrix *E, const int *ids, int n);
/* peft_linear_cross_entropy over a ggml-typed frozen W [vocab, in]: the
   logits' panels of W decoded in the GEMM's packing, chunk by chunk; x gets
   its gradient, W none. Errors as peft_linear_cross_entropy and
   peft_qmatrix_linear. */
PEFTDEF peft_tensor *peft_qmatrix_linear_cross_entropy(peft_graph *g, peft_tensor *x, const peft_qmatrix *W,
                                                       const int *targets);
/* y + b per output column (HF's attention_bias / mlp_bias). */
PEFTDEF peft_tensor *peft_add_bias(peft_graph *g, peft_tensor *y, peft_tensor *b);
/* LLaMA-Adapter V2: s ⊙ (y + b) per output column. */
PEFTDEF peft_tensor *peft_bias_scale(peft_graph *g, peft_tensor *y, peft_tensor *b, peft_tensor *s);
/* softmax(q·pkᵀ/√d)·pv over K prompts, unmasked (Excitor's reconstruction). */
PEFTDEF peft_tensor *peft_prompt_attend(peft_graph *g, peft_tensor *q, peft_tensor *pk, peft_tensor *pv);
PEFTDEF peft_tensor *peft_swiglu(peft_graph *g, peft_tensor *gate, peft_tensor *up);
PEFTDEF peft_tensor *peft_add(peft_graph *g, peft_tensor *a, peft_tensor *b);
/* Mean cross-entropy over rows whose target is not -100 (a scalar). */
PEFTDEF peft_tensor *peft_cross_entropy(peft_graph *g, peft_tensor *logits, const int *targets);
/* The classifier and the cross-entropy in one op: the same loss as
   peft_cross_entropy(peft_linear(x, w)) without ever holding the [rows,
   vocab] logits — a chunk of rows at a time, only rows with a target. */
PEFTDEF peft_tensor *peft_linear_cross_entropy(peft_graph *g, peft_tensor *x, peft_tensor *w,
                                               const int *targets);
PEFTDEF peft_tensor *peft_scale(peft_graph *g, peft_tensor *x, float s);

/* --------------------------------------------------------------- backends */
/* Every op's forward and backward, the GEMM, the frozen-storage decoders,
   the optimizer update, clipping's reductions and the arena's memory go
   through one table of plain C function pointers: a backend. The CPU one is
   registered first and is the default; the manual's "BACKENDS" says what a
   new one fills in. An op is computed by the backend of its graph (the one
   in use when the graph was made). */
typedef enum {
    PEFT_OP_EMBEDDING = 0, PEFT_OP_REPLACE_ROWS, PEFT_OP_LINEAR, PEFT_OP_RMSNORM, PEFT_OP_ROPE,
    PEFT_OP_ATTENTION, PEFT_OP_ATTENTION_CACHED, PEFT_OP_Q4_LINEAR, PEFT_OP_QMATRIX_LINEAR,
    PEFT_OP_LORA_LINEAR, PEFT_OP_ADD_BIAS, PEFT_OP_BIAS_SCALE, PEFT_OP_PROMPT_ATTEND, PEFT_OP_SWIGLU,
    PEFT_OP_ADD, PEFT_OP_SCALE, PEFT_OP_CROSS_ENTROPY, PEFT_OP_LINEAR_CROSS_ENTROPY,
    PEFT_OP_QMATRIX_EMBEDDING, PEFT_OP_L2NORM, PEFT_OP_ROW_SCALE, PEFT_OP_ATTENTION_CHUNKED,
    PEFT_OP_MOE_ROUTE, PEFT_OP_MOE_EXPERTS,
    PEFT_OP_COUNT
} peft_op_kind;
PEFTDEF const char *peft_op_name(int kind);         /* "linear" …; "?" past the end */

/* One op: what its forward reads and writes, and what its backward finds on
   the tape. The op's front end (peft_linear …) checks shapes, makes `out`
   and fills the fields; the forward computes out (and may keep values in
   saved/aux for its backward); the backward adds into the inputs' grad
   (dx stored, not added, when in[0]->grad_fresh: then clear the flag).
   The fields of each kind are listed above its front end in OPS. */
typedef struct peft_op {
    int          kind;          /* peft_op_kind                              */
    peft_tensor *out;
    peft_tensor *in[8];
    const int   *ids;           /* token ids, targets or row indices         */
    int          i[8];
    float        f[4];
    uint64_t     seed;          /* LoRA dropout: the mask's key              */
    float       *saved;         /* values the forward keeps for backward     */
    const void  *aux;           /* op-specific constant (a RoPE table …)     */
    const void  *aux2;          /* a second one (QLoRA's 4-bit base)         */
    void (*custom_backward)(peft_graph *g, struct peft_op *n);   /* tape nodes that are no
                                                                     backend op (checkpointing) */
} peft_op;

/* AdamW's per-step scalars (torch's order, see OPTIMIZERS): w *= decay;
   m += w1·(g − m); v = b2·v + w2·g²; w −= step_size·m/(√v/bc2_sqrt + eps) */
typedef struct { float decay, w1, b2, w2, step_size, bc2_sqrt, eps; } peft_adamw_scalars;

typedef struct peft_backend {
    const char *name;
    peft_place  place;
    struct {
        peft_status (*forward)(peft_graph *g, peft_op *op);
        void        (*backward)(peft_graph *g, peft_op *op);   /* NULL for ATTENTION_CACHED and
                                                                  QMATRIX_EMBEDDING: frozen only */
    } op[PEFT_OP_COUNT];
    void *(*alloc)(size_t bytes);                  /* the step arena's blocks */
    void  (*free)(void *p);
    void  (*zero)(float *p, int64_t n);
    void  (*copy)(float *dst, const float *src, int64_t n);   /* within the backend's memory */
    void  (*gemm)(int tA, int tB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc);   /* as peft_gemm */
    void  (*q4_decode)(const peft_q4 *q, int64_t start, int64_t count, float *out);
    void  (*qmatrix_decode)(const peft_qmatrix *q, int64_t row, int64_t col, int64_t n, float *out);
    void  (*adamw)(const peft_adamw_scalars *k, float *w, const float *g, float *m, float *v, int64_t n);
    /* m, v in blockwise 8-bit codes: qm, qv (n bytes), absmax am, av per 256 */
    void  (*adamw_8bit)(const peft_adamw_scalars *k, float *w, const float *g, uint8_t *qm, uint8_t *qv,
                        float *am, float *av, int64_t n);
    double (*sum_squares)(const float *x, int64_t n, double acc);  /* acc + Σ x², in order */
    void  (*scale)(float *x, int64_t n, double coef);              /* x = (float)(x·coef)  */
} peft_backend;

#ifndef PEFT_MAX_BACKENDS
#define PEFT_MAX_BACKENDS 8
#endif
PEFTDEF const peft_backend *peft_backend_cpu(void);
/* Adds a backend to the list (kept by pointer: it must outlive its use);
   refuses one with an entry missing, naming it. */
PEFTDEF peft_status peft_backend_register(const peft_backend *b);
PEFTDEF int         peft_backend_count(void);            /* registered, the CPU one first */
PEFTDEF const peft_backend *peft_backend_get(int i);     /* NULL past the end */
/* The backend of graphs made from now on and of the optimizer, clipping and
   model code outside a graph (NULL: the CPU one); returns the previous one.
   Process-wide, as peft_set_threads. */
PEFTDEF const peft_backend *peft_backend_use(const peft_backend *b);
PEFTDEF const peft_backend *peft_backend_current(void);
PEFTDEF const peft_backend *peft_graph_backend(const peft_graph *g);
/* Scratch from the graph's step arena (gone at the next reset); NULL and
   the graph marked failed when out of memory. For backend entries. */
PEFTDEF void       *peft_graph_scratch(peft_graph *g, size_t bytes);
/* For backend entries: marks g failed (later ops no-op; g may be NULL) and
   records msg as peft_last_error(); returns s. */
PEFTDEF peft_status peft_graph_fail(peft_graph *g, peft_status s, const char *msg);

/* ------------------------------------------------------------------ LLaMA */
typedef enum { PEFT_ROPE_DEFAULT = 0, PEFT_ROPE_LLAMA3, PEFT_ROPE_LINEAR } peft_rope_type;

typedef struct {
    int   dim;             /* hidden_size                                  */
    int   hidden_dim;      /* intermediate_size                            */
    int   n_layers;
    int   n_heads;
    int   n_kv_heads;
    int   head_dim;
    int   vocab_size;
    int   max_seq_len;     /* max_position_embeddings                      */
    float norm_eps;
    float rope_theta;
    peft_rope_type rope_type;
    float rope_factor, rope_low_freq, rope_high_freq;
    int   rope_orig_max_pos;
    int   rope_interleaved;/* llama2.c / Meta layout instead of rotate_half */
    int   tie_embeddings;
    int   bos_id, eos_id;
    int   eos_ids[PEFT_MAX_EOS], n_eos; /* every id of eos_token_id (an int or a list, as LLaMA-3-Instruct
                                           ships it); eos_id is the first. n_eos 0: none given */
    int   attn_bias, mlp_bias; /* HF attention_bias / mlp_bias: q,k,v,o and gate,up,down have biases */
    int   q4;              /* block linears stored in 4 bits (bnb folder)  */
    peft_q4_type q4_type;
    int   q4_double;
    /* LLaMA-4 text decoder (model_type llama4_text); all 0 for LLaMA-1/2/3 */
    int   llama4;
    int   n_experts, top_k;   /* num_local_experts, num_experts_per_tok (0: no MoE layer) */
    int   moe_step;           /* interleave_moe_layer_step: layer l is MoE iff (l + 1) % moe_step == 0 */
    int   hidden_dim_mlp;     /* intermediate_size_mlp: the width of the dense layers' MLP */
    int   nope_interval;      /* no_rope_layer_interval: layer l has no RoPE iff (l + 1) % it == 0 */
    int   qk_norm;            /* use_qk_norm: weightless L2 norm of q, k per head on RoPE layers */
    int   attn_chunk;         /* attention_chunk_size: RoPE layers attend within chunks (0: none) */
    int   temp_tuning;        /* attn_temperature_tuning on NoPE layers, with floor_scale, attn_scale */
    float floor_scale, attn_scale;
    char  unused[256];     /* config.json keys unknown here, "key, key" ("" if none), for the
                              caller to warn: never applied (see peft_config_load) */
} peft_config;

PEFTDEF peft_status peft_config_preset(peft_config *c, const char *name);
PEFTDEF const char *peft_preset_name(int i);                /* NULL past end */
PEFTDEF peft_status peft_config_load(peft_config *c, const char *config_json_path);
PEFTDEF int64_t     peft_config_param_count(const peft_config *c);
/* LLaMA-1/2 feed-forward width: multiple_of * ceil(int(ffn_mult*int(8d/3)) / multiple_of). */
PEFTDEF int         peft_llama_ffn_dim(int dim, int multiple_of, float ffn_mult);
PEFTDEF peft_status peft_config_validate(const peft_config *c, const char *where);

/* ---- attachment sites --------------------------------------------------------
   Every block linear is a site where a method can add a parallel term (LoRA),
   wrap the output (V2 bias/scale) or, later, replace the weight's storage
   (QLoRA). Attention has a site for gated prompts and one for a logit term. */
typedef enum { PEFT_Q = 0, PEFT_K, PEFT_V, PEFT_O, PEFT_GATE, PEFT_UP, PEFT_DOWN, PEFT_N_SITES } peft_site;
PEFTDEF const char *peft_site_name(peft_site s);      /* "q_proj" … "down_proj" */

typedef struct {
    peft_tensor *w;                  /* base weight [out, in]                     */
    peft_tensor *b;                  /* base bias [out] (attention_bias / mlp_bias) */
    peft_tensor *lora_A, *lora_B;    /* LoRA: [r, in], [out, r]                   */
    peft_tensor *lora_bias;          /* LoRA: lora_B's bias [out] (PEFT lora_bias)  */
    float        lora_scale;         /* alpha/r (or alpha/√r with rsLoRA)         */
    peft_tensor *bias, *scale;       /* LLaMA-Adapter V2: s ⊙ (W x + b)           */
    peft_q4     *q4;                 /* QLoRA: 4-bit storage of w (w->data freed) */
    peft_qmatrix *qm;                /* GGUF: w stored in a ggml type (w->data NULL;
                                        PEFT_MALLOC'ed, freed with the model) */
    peft_tensor *custom[2];          /* a registered method's tensors (its site_out reads them) */
} peft_linear_site;

typedef struct {
    peft_tensor *prompt, *gate;      /* adapter prompts [1, K, dim], gates [H]/[1] */
    peft_tensor *fusion_gate;        /* V2 early fusion: gates [H] for condition prompts */
    peft_tensor *ex_prompt, *ex_down, *ex_up, *ex_gate;   /* LLaMA-Excitor        */
} peft_attn_site;

/* LLaMA-4's mixture of experts (see "LLaMA-4: mixture of experts"): the router
   and the routed experts of a MoE layer; the shared expert is the layer's
   gate/up/down sites. All NULL in a dense layer. */
typedef struct {
    peft_tensor *router;      /* [E, dim]        feed_forward.router.weight            */
    peft_tensor *gate_up;     /* [E, dim, 2F]    feed_forward.experts.gate_up_proj (x·W) */
    peft_tensor *down;        /* [E, F, dim]     feed_forward.experts.down_proj    (x·W) */
    int64_t     *counts;      /* [E] tokens routed to each expert, summed over forwards */
    int         *trace;       /* caller's buffer, NULL: none; each forward writes its tokens' chosen
                                 experts here, [tokens, top_k] row-major, up to trace_cap entries */
    int64_t      trace_cap;
    /* what methods attach (see "PEFT on MoE sites"), NULL when nothing */
    peft_tensor *router_A, *router_B;          /* LoRA on the router: [r, dim], [E, r]          */
    float        router_scale;
    peft_tensor *router_copy;                  /* the router tuned: a trainable copy [E, dim]   */
    peft_tensor *gate_up_A, *gate_up_B;        /* LoRA on the experts, PEFT's layout:           */
    peft_tensor *down_A, *down_B;              /*   [r·E, 2F], [dim, r·E]; [r·E, dim], [F, r·E] */
    float        experts_scale;
} peft_moe_site;

typedef struct {
    peft_tensor     *attn_norm, *ffn_norm;
    peft_linear_site lin[PEFT_N_SITES];
    peft_attn_site   attn;
    peft_moe_site    moe;
} peft_layer;

/* ---- methods ------------------------------------------------------------------ */
typedef enum { PEFT_FULL = 0, PEFT_LORA, PEFT_ADAPTER_V1, PEFT_ADAPTER_V2, PEFT_EXCITOR, PEFT_QLORA,
               PEFT_N_METHODS } peft_method_kind;
#ifndef PEFT_MAX_LAYERS
#define PEFT_MAX_LAYERS 256
#endif
#ifndef PEFT_MAX_TRAINABLE_TOKENS
#define PEFT_MAX_TRAINABLE_TOKENS 256
#endif
#ifndef PEFT_METHOD_CUSTOM
#define PEFT_METHOD_CUSTOM 8
#endif
/* modules_to_save: full copies trained and saved with the adapter (PEFT's ModulesToSaveWrapper) */
enum { PEFT_SAVE_EMBED = 1, PEFT_SAVE_LM_HEAD = 2 };

typedef struct {
    peft_method_kind kind;
    /* LoRA / QLoRA */
    int      lora_r;
    float    lora_alpha, lora_dropout;
    int      lora_rslora;            /* scale alpha/√r instead of alpha/r          */
    unsigned lora_targets;           /* bit (1 << peft_site) per target            */
    int      lora_init_gaussian;     /* A ~ N(0, 1/r) instead of kaiming-uniform   */
    uint8_t  lora_layers[PEFT_MAX_LAYERS]; /* all zero: every layer; else 1 = adapted */
    /* Per-(layer, site) LoRA, for adapters whose sites are not a layers x sites
       grid or whose ranks differ (PEFT's regex target_modules, exclude_modules,
       rank_pattern, alpha_pattern): when any lora_site_on[l] is non-zero, site s
       of layer l is adapted iff bit s of lora_site_on[l] is set, and lora_targets
       / lora_layers are not used. A non-zero lora_site_r[l][s] gives that site's
       rank, with lora_site_alpha[l][s] its alpha; zero: lora_r and lora_alpha. */
    uint8_t  lora_site_on[PEFT_MAX_LAYERS];
    uint16_t lora_site_r[PEFT_MAX_LAYERS][PEFT_N_SITES];
    float    lora_site_alpha[PEFT_MAX_LAYERS][PEFT_N_SITES];
    int      lora_bias;              /* PEFT lora_bias: lora_B has a bias [out], scaled like B·A */
    unsigned modules_to_save;        /* PEFT_SAVE_EMBED | PEFT_SAVE_LM_HEAD: trained full copies */
    int      n_trainable_tokens;     /* PEFT trainable_token_indices: embed_tokens rows replaced */
    int      trainable_tokens[PEFT_MAX_TRAINABLE_TOKENS];
    /* LLaMA-Adapter V1 / V2 */
    int      adapter_len, adapter_layers;  /* K prompts in the top L layers        */
    int      adapter_peft_gate;      /* PEFT's variant: one raw gate per layer     */
    int      fusion_layers, fusion_dim;    /* V2: early layers fed by a condition   */
    /* LLaMA-Excitor */
    int      excitor_len, excitor_rank, excitor_layers;
    uint64_t seed;
    double   custom[PEFT_METHOD_CUSTOM];   /* a registered method's own settings (its set hook) */
    /* LLaMA-4 MoE sites (kind LoRA, with lora_r/lora_alpha): bits PEFT_MOE_* for LoRA on the
       router and on the routed experts' tensors; moe_router_full trains a copy of the router */
    unsigned moe_lora;
    int      moe_router_full;
} peft_method;
enum { PEFT_MOE_ROUTER = 1, PEFT_MOE_GATE_UP = 2, PEFT_MOE_DOWN = 4 };

/* Defaults from the papers (and PEFT's defaults for LoRA); *_layers = 0 means
   "the paper's share": the top 30/32 of the model's layers. */
PEFTDEF peft_method peft_method_defaults(peft_method_kind kind);
PEFTDEF const char *peft_method_name(peft_method_kind kind);   /* "lora" … */
PEFTDEF peft_status peft_method_parse(const char *name, peft_method_kind *kind);
/* Sets one hyper-parameter by name (lora_r, lora_alpha, lora_dropout,
   lora_rslora, lora_targets "q_proj,v_proj" | "all-linear", lora_init
   "kaiming"|"gaussian", lora_layers "0,1,5" | "all", adapter_len,
   adapter_layers, adapter_gate "head"|"peft", fusion_layers, fusion_dim,
   excitor_len, excitor_rank, excitor_layers, seed, modules_to_save
   "lm_head,embed_tokens" | "none", lora_bias, trainable_tokens "3,7" | "none"). */
PEFTDEF peft_status peft_method_set(peft_method *m, const char *key, const char *value);
/* Trainable parameters the method would add to a model of this config,
   without allocating anything (full fine-tuning: every parameter). */
PEFTDEF int64_t     peft_method_param_count(const peft_config *c, const peft_method *m);

typedef struct peft_model {
    peft_config  cfg;
    peft_tensor *embed, *norm, *lm_head;   /* lm_head == embed when tied    */
    peft_layer  *layers;
    peft_tensor **params;                  /* base parameters, HF order     */
    int          n_params;
    peft_method  method;                   /* what is attached (PEFT_FULL: nothing) */
    peft_tensor **extra;                   /* the method's own parameters   */
    int          n_extra, cap_extra;
    peft_tensor *fusion_proj;              /* V2: condition → prompt [dim, cond_dim] */
    float       *cond;                     /* V2 condition vectors (copied)  */
    int          cond_rows, cond_batched;
    int          lora_merged;
    peft_tensor *save_embed, *save_head;   /* modules_to_save copies (NULL: none) */
    peft_tensor *tokens_delta;             /* trainable_token_indices: new rows [n, dim] */
    peft_tensor *tokens_table;             /* embed with those rows replaced (frozen) */
    peft_tensor *tokens_step;              /* the table of the last forward (an op output when
                                              the delta trains), for a tied lm_head */
    int          training;                 /* dropout on                     */
    int          checkpointing;            /* keep block inputs only, recompute in backward */
    struct peft_graph *recompute;          /* scratch tape for that recompute */
    peft_rng     rng;                      /* dropout stream                 */
    peft_rope_table rope;
    float       *rope_buf;
    char         path[512];
    struct peft_gguf *gguf;                /* a GGUF base: the mapped file its weights live in */
    peft_qmatrix *head_bf16;               /* --precision bf16: a bf16 copy of the frozen lm_head
                                              for its products (NULL: none) */
    peft_qmatrix *embed_qm, *head_qm;      /* a GGUF base: embed / an untied lm_head kept in ggml
                                              blocks (its ->data NULL); head_qm == embed_qm when
                                              tied. PEFT_MALLOC'ed, freed with the model */
} peft_model;

/* init: 0 = zeros (no weights), 1 = random N(0, 0.02) with unit norms. */
PEFTDEF peft_status peft_model_new(peft_model **out, const peft_config *c, int init, uint64_t seed);
PEFTDEF peft_status peft_model_from_preset(peft_model **out, const char *preset, int init, uint64_t seed);
/* A Hugging Face folder: config.json + model.safetensors (or the sharded
   index), a llama2.c legacy .bin file (interleaved RoPE), or a GGUF file of a
   LLaMA model (.gguf or GGUF's magic; see peft_gguf_open): block linears
   other than F32 stay in their ggml blocks (site qm), and so do the embedding
   and an untied output (embed_qm, head_qm); norms are decoded to fp32, Q/K
   rows put back in Hugging Face's order. */
PEFTDEF peft_status peft_model_load(peft_model **out, const char *dir);
/* Writes config.json + model.safetensors (F32) into dir (created if needed), atomically. */
PEFTDEF peft_status peft_model_save(const peft_model *m, const char *dir);
PEFTDEF void        peft_model_free(peft_model *m);
/* Gradient checkpointing: the forward keeps only each block's input (and
   the dropout RNG state); backward re-runs one block at a time on a scratch
   tape and backpropagates through it. Same gradients, bit for bit; the
   activation arena shrinks to about one block's worth plus the logits. */
PEFTDEF void        peft_model_set_checkpointing(peft_model *m, int on);
PEFTDEF peft_tensor *peft_model_param(const peft_model *m, const char *name);
PEFTDEF void        peft_model_set_trainable_all(peft_model *m, int trainable);
PEFTDEF int64_t     peft_model_base_count(const peft_model *m);      /* base parameters */
PEFTDEF int64_t     peft_model_trainable_count(const peft_model *m); /* incl. adapters  */
/* The trainable tensors (base and method) in a stable order; caller frees. */
PEFTDEF int         peft_model_trainable(const peft_model *m, peft_tensor ***list);

/* Attaches a method: freezes the base (except what the method trains) and
   creates the method's parameters with their zero-init. One method at a
   time; PEFT_FULL makes every base parameter trainable. */
PEFTDEF peft_status peft_attach(peft_model *m, const peft_method *method);

/* ---- the method registry ------------------------------------------------------
   A method is one entry: its name, its source, its defaults (the paper's
   hyper-parameters and training recipe), its settings with their help text
   (the command line's flags: key lora_r is --lora-r), its adapter_config.json
   keys, how it attaches, what it trains, and what it adds to a linear site's
   output. The command line (flags, --help, peft info), the demo, the tests
   and the README's methods table iterate the registry. The built-in methods
   are entries 0 .. PEFT_N_METHODS-1; peft_method_register adds more (a test
   adds a toy method that way, with no edit here). */
typedef struct {
    const char *key;     /* peft_method_set key and adapter_config.json key; NULL ends a list */
    const char *arg;     /* the value's placeholder in --help ("R", "LIST") */
    const char *help;    /* one line, ≤ 70 columns */
    int         number;  /* 1: written as a JSON number in train_config.json */
} peft_method_key;

/* Defaults of one method. The first group is copied into peft_method by
   peft_method_defaults; the second is the source's training recipe, which
   the demo reads and `peft train --help` prints (peft_trainer_defaults()
   stays the trainer's one default: a recipe is applied only on request).
   A field the source does not state is 0. */
typedef struct {
    int      lora_r;
    float    lora_alpha, lora_dropout;
    unsigned lora_targets;                 /* bit (1 << peft_site) per target */
    int      adapter_len, adapter_layers;  /* layers 0: the top 30/32 of the model's */
    int      excitor_len, excitor_rank, excitor_layers;
    double   custom[PEFT_METHOD_CUSTOM];
    float    lr, weight_decay, beta2, max_grad_norm;
    int      warmup_steps;
    float    warmup_ratio;                 /* of the run's steps */
    int      schedule;                     /* peft_sched_kind */
    int      epochs, batch;                /* batch: examples per optimizer step */
} peft_method_recipe;

struct peft__sb;
struct peft_json;
typedef struct peft_method_def {
    const char *name;          /* --method NAME, logs, peft_method_name */
    const char *title;         /* "LoRA (Hu et al. 2021)": the paper or source */
    const char *section;       /* banner of its section in this header ("LoRA —") */
    const char *trains;        /* what trains, in a few words */
    const char *zero_init;     /* what starts at zero so that step 0 is the base model */
    const char *peft_type;     /* adapter_config.json peft_type; NULL: saves no adapter */
    peft_method_recipe defaults;
    const peft_method_key *keys[3];   /* its settings: up to 3 lists, each ended by key NULL */
    /* freezes nothing itself (the base is frozen before) and adds its tensors
       with peft_method_add_param; a failure is rolled back by peft_attach */
    peft_status (*attach)(peft_model *m, const peft_method *cfg);
    int64_t     (*param_count)(const peft_config *c, const peft_method *m);
    /* optional: the output y of linear site s (layer l, peft_site k) → y' */
    peft_tensor *(*site_out)(peft_model *m, peft_graph *g, peft_linear_site *s, int l, int k,
                             peft_tensor *y);
    /* optional: its own keys (peft_method_set calls it for a key in keys that
       the library does not know); get writes a key's value as JSON text */
    peft_status (*set)(peft_method *m, const char *key, const char *value);
    int         (*get)(const peft_method *m, const char *key, char *buf, size_t cap);
    /* built-in adapter_config.json layouts; NULL: every key of keys through get/set */
    void        (*config_write)(struct peft__sb *b, const peft_model *m);
    peft_status (*config_read)(const struct peft_json *j, const char *path, const peft_config *c,
                               peft_method *out);
} peft_method_def;

#ifndef PEFT_MAX_METHODS
#define PEFT_MAX_METHODS 32
#endif
/* Methods known: the built-in ones, then the registered ones. */
PEFTDEF int                    peft_method_count(void);
/* The entry of a method kind; NULL outside 0 .. peft_method_count()-1. */
PEFTDEF const peft_method_def *peft_method_get(peft_method_kind kind);
/* Adds a method (def must outlive its use; the table keeps the pointer) and
   returns its kind. PEFT_ERR_CONFIG for a name already taken, a missing
   name, attach or param_count, or a full table (PEFT_MAX_METHODS). Not
   thread-safe: register before other threads use the library. */
PEFTDEF peft_status            peft_method_register(const peft_method_def *def, peft_method_kind *kind);
/* A trainable method parameter of the given shape, named as it is saved,
   owned and freed by the model (for a method's attach). NULL: no memory. */
PEFTDEF peft_tensor           *peft_method_add_param(peft_model *m, int ndim, const int64_t *shape,
                                                     const char *name);
/* V2 early fusion: rows × dim condition vectors (e.g. projected image
   features) for the next forwards; batched = rows hold B groups of equal
   size, one per sequence. NULL clears. */
PEFTDEF peft_status peft_model_set_condition(peft_model *m, const float *vecs, int rows, int dim,
                                             int batched);
/* QLoRA's base: every block linear to 4-bit storage (fp32 copies freed);
   embeddings, norms and lm_head stay fp32, as bitsandbytes does. */
PEFTDEF peft_status peft_model_quantize(peft_model *m, peft_q4_type t, int double_quant);
/* Bits per frozen block-linear parameter, from what the storage allocates. */
PEFTDEF double      peft_model_linear_bits(const peft_model *m);
/* Bits per base parameter (block linears, embedding, an untied lm_head,
   norms), from what their storage allocates: 32 for floats, the block bytes
   of 4-bit or ggml storage. */
PEFTDEF double      peft_model_base_bits(const peft_model *m);
/* Every block linear held in ggml blocks (a GGUF base, peft_linear_site.qm)
   decoded into float32 w->data and its blocks freed: the float copy that
   merging an adapter needs (a GGUF base trains without one). */
PEFTDEF peft_status peft_model_dequantize(peft_model *m);
/* Mixed precision (--precision): PEFT_PRECISION_BF16 stores every frozen
   block linear in bf16 (rounded to nearest even from fp32; half the memory),
   and the products with them, x·Wᵀ and dy·W, run in bf16 with fp32
   accumulation (peft_bf16_dot_available); everything trainable, the
   gradients and the optimizer stay fp32. A GGUF base's BF16 linears are used
   as they are. Call it after peft_attach: a weight the method trains stays
   fp32. PEFT_PRECISION_FP32 turns the bf16 products off again (the weights
   are made fp32 from their bf16 values). Refused on a merged LoRA
   (PEFT_ERR_UNSUPPORTED); out of memory, nothing changes. Norms and the
   embedding stay fp32; a frozen lm_head gets a bf16 copy for its products
   (the logits, the fused loss) beside its fp32 values, which a tied head
   shares with the embedding's lookup. */
typedef enum { PEFT_PRECISION_FP32 = 0, PEFT_PRECISION_BF16 } peft_precision;
PEFTDEF peft_status peft_model_set_precision(peft_model *m, peft_precision p);
PEFTDEF const char *peft_precision_name(peft_precision p);             /* "fp32", "bf16" */
PEFTDEF peft_status peft_precision_parse(const char *name, peft_precision *p);
/* A 4-bit model folder in the layout transformers + bitsandbytes write. */
PEFTDEF peft_status peft_model_save_quantized(const peft_model *m, const char *dir);
/* LoRA merge: W += s·B·A in place (forward then skips the LoRA branch);
   unmerge subtracts it again. */
PEFTDEF peft_status peft_lora_merge(peft_model *m);
/* V2 merge: bias/scale folded into the weights and (new) biases of a plain
   LLaMA; the gated prompts remain attached as a LLaMA-Adapter V1. */
PEFTDEF peft_status peft_v2_merge(peft_model *m);
PEFTDEF peft_status peft_lora_unmerge(peft_model *m);
/* Adapter folders: adapter_config.json + adapter_model.safetensors. LoRA and
   adapter-v1 with PEFT's gate use PEFT's exact layout and keys. */
PEFTDEF peft_status peft_adapter_save(const peft_model *m, const char *dir);
/* A LoRA (or QLoRA) adapter as a llama.cpp GGUF adapter file (written
   atomically): general.type "adapter", adapter.type "lora",
   adapter.lora.alpha, tensors blk.N.attn_q.weight.lora_a / .lora_b in F32,
   with lora_b of q/k permuted to llama.cpp's RoPE layout as its converter does
   for the weights (not for llama2.c models, whose layout is already that). */
PEFTDEF peft_status peft_adapter_export_gguf(const peft_model *m, const char *path);
PEFTDEF peft_status peft_adapter_load(peft_model *m, const char *dir);
/* re.fullmatch(pattern, s) for the patterns adapter configs use (target_modules
   and exclude_modules strings, rank_pattern/alpha_pattern keys): 1 match, 0 no
   match, -1 a pattern the matcher does not support (peft_last_error() names it). */
PEFTDEF int         peft_regex_fullmatch(const char *pattern, const char *s);

/* Forward over B sequences of T tokens (row-major ids) → logits [B*T, vocab]. */
PEFTDEF peft_tensor *peft_model_forward(peft_model *m, peft_graph *g, const int *tokens, int B, int T);
/* ---- LLaMA-4: mixture of experts ----
   Layer kinds of a config (both 0/1; a LLaMA-1/2/3 config: dense, RoPE). */
PEFTDEF int         peft_layer_is_moe(const peft_config *c, int layer);
PEFTDEF int         peft_layer_has_rope(const peft_config *c, int layer);
/* Parameters one token uses, as Meta's model cards count them (17B for
   Scout and Maverick): every parameter except the routed experts a token is
   not sent to (top_k of E count); without MoE, all of them. Allocates nothing. */
PEFTDEF int64_t     peft_config_active_count(const peft_config *c);
/* y = x / sqrt(mean(x²) + eps) over each group of `group` columns (LLaMA-4's
   weightless QK L2 norm, per head); x [rows, k·group]. */
PEFTDEF peft_tensor *peft_l2norm(peft_graph *g, peft_tensor *x, int group, float eps);
/* y[r] = s[r % period]·x[r] (s copied; not differentiated): LLaMA-4's
   attention temperature on NoPE layers, one factor per position. */
PEFTDEF peft_tensor *peft_row_scale(peft_graph *g, peft_tensor *x, const float *s, int period);
/* Causal attention where query t sees keys j with t/chunk == j/chunk (and
   j <= t): LLaMA-4's chunked attention. Layouts as peft_attention. */
PEFTDEF peft_tensor *peft_attention_chunked(peft_graph *g, peft_tensor *q, peft_tensor *k, peft_tensor *v,
                                            int B, int T, int n_heads, int n_kv_heads, int head_dim,
                                            int chunk);
/* Router: logits [N, E] → scores [N, k] = sigmoid of the k largest logits of
   each row, their experts in *idx ([N, k], arena memory, largest first; the
   choice is not differentiated). */
PEFTDEF peft_tensor *peft_moe_route(peft_graph *g, peft_tensor *logits, int top_k, const int **idx);
/* Routed experts: y[n] = Σ_j E_{idx[n,j]}(s[n,j]·x[n]), E_e(u) =
   (silu(u·G_e) ⊙ (u·U_e))·D_e with gate_up [E, D, 2F] = [G_e | U_e] and down
   [E, F, D], as transformers' Llama4TextExperts; one GEMM pair per expert
   over only the rows routed to it. x [N, D], s [N, k] → y [N, D]. */
PEFTDEF peft_tensor *peft_moe_experts(peft_graph *g, peft_tensor *x, peft_tensor *s, const int *idx,
                                      peft_tensor *gate_up, peft_tensor *down);
/* The same with LoRA on the experts in PEFT's target_parameters layout:
   gu_A [r·E, 2F], gu_B [D, r·E], dn_A [r·E, D], dn_B [F, r·E] (either pair
   may be NULL); expert e uses W_e + scale·B_e·A_e (see "PEFT on MoE sites"). */
PEFTDEF peft_tensor *peft_moe_experts_lora(peft_graph *g, peft_tensor *x, peft_tensor *s, const int *idx,
                                           peft_tensor *gate_up, peft_tensor *down, peft_tensor *gu_A,
                                           peft_tensor *gu_B, peft_tensor *dn_A, peft_tensor *dn_B,
                                           float scale);
/* MoE sites of a LoRA method from a list: router, experts (both tensors),
   experts.gate_up_proj, experts.down_proj, router-full (a trainable copy of
   the router), none. Also peft_method_set(m, "moe_targets", list). */
PEFTDEF peft_status peft_method_set_moe(peft_method *m, const char *list);

/* ---- KV cache: generation without recomputing the past ----
   Holds each layer's keys and values (after RoPE) for B rows of up to
   max_len positions, each row with its own length, plus the adapter
   prompts' keys/values, computed once on the first call. A cached forward
   takes T new tokens per row, appended at that row's length; rows may be
   rewound (set_len) to drop right-padding after a batched prefill. Forward
   only: the graph must have gradients off. */
typedef struct peft_kv_cache peft_kv_cache;
PEFTDEF peft_status  peft_kv_cache_new(peft_kv_cache **out, const peft_model *m, int batch, int max_len);
PEFTDEF void         peft_kv_cache_free(peft_kv_cache *c);
PEFTDEF void         peft_kv_cache_reset(peft_kv_cache *c);   /* empty every row, recompute prompts */
PEFTDEF int          peft_kv_cache_len(const peft_kv_cache *c, int row);
PEFTDEF void         peft_kv_cache_set_len(peft_kv_cache *c, int row, int len);
/* logits [B*T, vocab] for the new tokens; B must be the cache's batch. */
PEFTDEF peft_tensor *peft_model_forward_cached(peft_model *m, peft_graph *g, peft_kv_cache *c,
                                               const int *tokens, int B, int T);
/* Mean cross-entropy against targets (-100 = ignored), through the fused
   classifier + loss (peft_linear_cross_entropy): the logits are not kept. */
PEFTDEF peft_tensor *peft_model_loss(peft_model *m, peft_graph *g, const int *tokens,
                                     const int *targets, int B, int T);

/* -------------------------------------------------------------- optimizer */
typedef struct {
    float   lr, beta1, beta2, eps, weight_decay;
    /* Paged optimizer (bitsandbytes' paged_adamw, emulated on the CPU): state
       lives in pages of a file-backed mapping; at most budget_bytes stay
       resident, older pages are evicted (unmapped: RSS drops) and brought
       back when their tensor is updated, the next tensor prefetched. */
    int     paged;
    size_t  budget_bytes;            /* resident budget (0 = 64 MiB)          */
    size_t  page_bytes;              /* page size (0 = 64 KiB)                */
    int64_t paged_min_elems;         /* smaller tensors stay in RAM (bnb: 1e5) */
    /* 8-bit blockwise states (bitsandbytes' scheme): m with the signed and v
       with the unsigned dynamic map, blocks of 256; tensors below
       state8_min_elems (bnb: 4096) keep fp32 states. */
    int     state_8bit;
    int64_t state8_min_elems;
} peft_adamw_opts;

typedef struct {
    long   pages_evicted, pages_loaded;
    size_t bytes_moved, peak_resident, resident, state_bytes;
} peft_pager_stats;

typedef struct peft__pager peft__pager;

typedef struct {
    peft_adamw_opts o;
    peft_tensor **params;
    int           n;
    float       **m, **v;            /* fp32 states (RAM or pages); NULL for 8-bit */
    uint8_t     **qm, **qv;          /* 8-bit states                               */
    float       **am, **av;          /* their per-256 absmax                       */
    int64_t       t;
    peft__pager  *pager;
    peft_pager_stats stats;
} peft_adamw;

/* torch.optim.AdamW's constructor defaults (lr 1e-3, betas 0.9/0.999, eps
   1e-8, weight_decay 0.01), for using the optimizer directly. The trainer
   does not read them: it takes every hyper-parameter from peft_trainer_opts. */
PEFTDEF peft_adamw_opts peft_adamw_defaults(void);
PEFTDEF peft_status peft_adamw_init(peft_adamw *opt, peft_tensor **params, int n,
                                    const peft_adamw_opts *o);
PEFTDEF void        peft_adamw_step(peft_adamw *opt, float lr);
PEFTDEF void        peft_adamw_free(peft_adamw *opt);
/* Bytes the optimizer state occupies (fp32, 8-bit or paged, whatever is used). */
PEFTDEF size_t      peft_adamw_state_bytes(const peft_adamw *opt);
PEFTDEF void        peft_zero_grad(peft_tensor **params, int n);
/* Scales gradients so their global L2 norm is at most max_norm; returns the
   norm before clipping (computed in double). NaN/Inf norms are returned as is. */
PEFTDEF double      peft_clip_grad_norm(peft_tensor **params, int n, double max_norm);

typedef enum { PEFT_SCHED_CONSTANT = 0, PEFT_SCHED_COSINE, PEFT_SCHED_LINEAR } peft_sched_kind;
typedef struct {
    peft_sched_kind kind;
    float base_lr, min_lr;
    int   warmup_steps, total_steps;
} peft_schedule;
PEFTDEF float peft_schedule_lr(const peft_schedule *s, int step);   /* step from 0 */

/* ---------------------------------------------------------------- trainer */
typedef struct {
    float lr, min_lr, beta1, beta2, eps, weight_decay, max_grad_norm;
    int   warmup_steps, total_steps, grad_accum;
    peft_sched_kind schedule;
    int   paged_optim, optim_8bit;     /* see peft_adamw_opts                 */
    size_t optim_budget_bytes;
    peft_precision precision;          /* PEFT_PRECISION_BF16: peft_model_set_precision on creation */
} peft_trainer_opts;

typedef struct peft_trainer {
    peft_model   *model;
    peft_graph   *graph;
    peft_adamw    opt;
    peft_schedule sched;
    peft_trainer_opts o;
    int           step;           /* optimizer steps taken                */
    int           micro;          /* micro-batches accumulated this step  */
    double        accum_loss;
    float         last_lr;
    double        last_grad_norm;
    struct peft__shards *shards;  /* data-parallel steps (private; NULL until used) */
} peft_trainer;

/* The one set of training defaults, for the C API and `peft train` alike
   (the CLI takes its defaults from here, prints them in --help and writes
   them to train_config.json): lr 1e-3, cosine schedule down to min_lr 0,
   no warm-up, AdamW betas 0.9/0.999, eps 1e-8, weight decay 0, gradients
   clipped to norm 1, no accumulation. total_steps 0 means "not known": the
   cosine then holds the peak rate (set it to the run's length, as the CLI
   does, to decay). */
PEFTDEF peft_trainer_opts peft_trainer_defaults(void);
/* Trains whatever is marked trainable in the model (full fine-tuning when
   nothing is attached: every parameter). */
PEFTDEF peft_trainer *peft_trainer_new(peft_model *m, const peft_trainer_opts *o);
/* One micro-batch: forward, loss, backward (gradients accumulate, scaled by
   1/grad_accum). After grad_accum micro-batches: clip, AdamW, zero grads.
   *loss gets this micro-batch's loss. Returns the failure's own status:
   PEFT_ERR_NUMERIC on NaN/Inf (nothing updated), PEFT_ERR_NOMEM when out of
   memory, PEFT_ERR_ARG for bad tokens or shapes. With n threads and B a
   multiple of n, a LoRA or adapter step runs as n data-parallel shards
   (peft_set_data_parallel); a failed step then adds nothing. */
PEFTDEF peft_status peft_trainer_step(peft_trainer *tr, const int *tokens, const int *targets,
                                      int B, int T, float *loss);
PEFTDEF void        peft_trainer_free(peft_trainer *tr);
/* The shards a step of B sequences runs as now: the thread count when the
   step is data-parallel, else 1 (one tape). */
PEFTDEF int         peft_trainer_shards(const peft_trainer *tr, int B);
/* Bytes the trainer's tapes have held at most (activations and what the
   backward keeps), its one tape's and the shards' together. */
PEFTDEF size_t      peft_trainer_arena_bytes(const peft_trainer *tr);

/* Checkpoints: everything a run needs to continue exactly — the trainable
   parameters, the AdamW moments (fp32 or 8-bit), the step counters, the
   dropout RNG and the caller's data position — in one safetensors file,
   written atomically. Loading checks every name and shape against the
   trainer's parameters. */
typedef struct { int64_t epoch, cursor, tokens; } peft_data_pos;
PEFTDEF peft_status peft_checkpoint_save(const peft_trainer *tr, const peft_data_pos *pos, const char *path);
PEFTDEF peft_status peft_checkpoint_load(peft_trainer *tr, peft_data_pos *pos, const char *path);

/* ------------------------------------------------------------------ files */
typedef enum { PEFT_DT_F32 = 0, PEFT_DT_F16, PEFT_DT_BF16, PEFT_DT_I32, PEFT_DT_I64,
               PEFT_DT_U8, PEFT_DT_I8, PEFT_DT_F64, PEFT_DT_COUNT } peft_dtype;
PEFTDEF size_t      peft_dtype_size(peft_dtype d);
PEFTDEF const char *peft_dtype_name(peft_dtype d);

typedef struct {
    char      *name;
    peft_dtype dtype;
    int        ndim;
    int64_t    shape[PEFT_MAX_DIMS];
    size_t     offset, nbytes;     /* within the data buffer               */
} peft_st_entry;

typedef struct {
    char          path[512];
    unsigned char *file;           /* whole file (mapped read-only where possible) */
    size_t         file_size;
    const unsigned char *data;     /* start of the data buffer             */
    peft_st_entry *entries;
    int            n;
    char         **meta_keys, **meta_vals;
    int            n_meta;
    int            mapped;         /* 1: file is an mmap, 0: read into memory */
} peft_safetensors;

PEFTDEF peft_status peft_st_open(peft_safetensors *st, const char *path);
/* Reads the header alone (a few KB of a file of GBs) and checks it against the
   file's size as peft_st_open does; data is NULL: the entries cannot be read. */
PEFTDEF peft_status peft_st_open_header(peft_safetensors *st, const char *path);
PEFTDEF void        peft_st_close(peft_safetensors *st);
PEFTDEF const peft_st_entry *peft_st_find(const peft_safetensors *st, const char *name);
/* Converts an F32/F16/BF16/F64/I32/I64 entry into floats (n = element count). */
PEFTDEF peft_status peft_st_read_f32(const peft_safetensors *st, const peft_st_entry *e,
                                     float *out, int64_t n);

typedef struct {
    const char *name;
    peft_dtype  dtype;
    int         ndim;
    int64_t     shape[PEFT_MAX_DIMS];
    const void *data;
} peft_st_write_item;
/* Writes path atomically (path.tmp, then rename); metadata pairs may be NULL. */
PEFTDEF peft_status peft_st_write(const char *path, const peft_st_write_item *items, int n,
                                  const char **meta_kv, int n_meta);

PEFTDEF float    peft_f16_to_f32(uint16_t h);
PEFTDEF uint16_t peft_f32_to_f16(float f);
PEFTDEF float    peft_bf16_to_f32(uint16_t h);
PEFTDEF uint16_t peft_f32_to_bf16(float f);     /* round to nearest even */

/* Writes a whole file atomically: path.tmp, fsync'd, renamed over path. */
PEFTDEF peft_status peft_write_file_atomic(const char *path, const void *data, size_t n);
PEFTDEF peft_status peft_read_file(const char *path, unsigned char **data, size_t *n);

/* A small JSON DOM (used for config.json and adapter configs). */
typedef enum { PEFT_JSON_NULL, PEFT_JSON_BOOL, PEFT_JSON_NUMBER, PEFT_JSON_STRING,
               PEFT_JSON_ARRAY, PEFT_JSON_OBJECT } peft_json_type;
typedef struct peft_json {
    peft_json_type type;
    double         number;
    char          *string;         /* decoded UTF-8, NUL-terminated        */
    char          *key;            /* member name when inside an object    */
    struct peft_json *child, *next;
    int            n_children;
} peft_json;
/* Parses text (len bytes); what names the source in error messages. */
PEFTDEF peft_status peft_json_parse(peft_json **out, const char *text, size_t len, const char *what);
PEFTDEF peft_status peft_json_load(peft_json **out, const char *path);
PEFTDEF const peft_json *peft_json_get(const peft_json *obj, const char *key);
PEFTDEF void        peft_json_free(peft_json *j);

/* GGUF (llama.cpp's model files), v2 and v3, little-endian. peft_gguf_open
   maps the file (POSIX mmap; one read elsewhere) and checks all of it before
   allocating: magic, version, every count and string length against the bytes
   left, value types, general.alignment, each tensor's ggml type, shape,
   alignment and extent against the file. Values and tensor data point into the
   mapping, valid until peft_gguf_close. */
typedef enum { PEFT_GGUF_U8 = 0, PEFT_GGUF_I8, PEFT_GGUF_U16, PEFT_GGUF_I16, PEFT_GGUF_U32, PEFT_GGUF_I32,
               PEFT_GGUF_F32, PEFT_GGUF_BOOL, PEFT_GGUF_STRING, PEFT_GGUF_ARRAY, PEFT_GGUF_U64, PEFT_GGUF_I64,
               PEFT_GGUF_F64, PEFT_GGUF_N_TYPES } peft_gguf_value_type;
typedef struct {
    char          *key;                /* NUL-terminated copy                         */
    int            type;               /* peft_gguf_value_type                        */
    int            elem_type;          /* arrays: the elements' type                  */
    uint64_t       n;                  /* strings: bytes; arrays: elements; else 1    */
    const uint8_t *data;               /* the value (a string's bytes, an array's first element) */
} peft_gguf_kv;
typedef struct {
    char          *name;
    int            type;               /* ggml type (peft_ggml_type, or one peft.h does not decode) */
    int            ndim;
    int64_t        ne[4];              /* ne[0] is the row length (fastest), as ggml   */
    uint64_t       offset;             /* from the start of the data section          */
    size_t         nbytes;
    const uint8_t *data;
} peft_gguf_tensor;
typedef struct peft_gguf {
    char              path[512];
    const uint8_t    *file;
    size_t            file_size;
    int               mapped;          /* 1: mmap'd, 0: read into memory              */
    uint32_t          version;
    size_t            alignment;       /* general.alignment (32 by default)           */
    peft_gguf_kv     *kv;
    int64_t           n_kv;
    peft_gguf_tensor *tensors;
    int64_t           n_tensors;
    const uint8_t    *data;            /* the data section                            */
} peft_gguf;
PEFTDEF peft_status peft_gguf_open(peft_gguf *g, const char *path);
PEFTDEF void        peft_gguf_close(peft_gguf *g);
PEFTDEF const peft_gguf_kv     *peft_gguf_find(const peft_gguf *g, const char *key);
PEFTDEF const peft_gguf_tensor *peft_gguf_find_tensor(const peft_gguf *g, const char *name);
/* Scalars: 1 when kv holds a value of that kind (any integer type / any
   number), else 0. A string as a NUL-terminated copy in buf (cut to n-1). */
PEFTDEF int         peft_gguf_int(const peft_gguf_kv *kv, int64_t *out);
PEFTDEF int         peft_gguf_number(const peft_gguf_kv *kv, double *out);
PEFTDEF int         peft_gguf_string(const peft_gguf_kv *kv, char *buf, size_t n);
/* The name of any ggml type ("Q4_K", "IQ2_XXS"), "?" when unknown. */
PEFTDEF const char *peft_gguf_type_name(int ggml_type);
/* A LLaMA configuration from the llama.* keys (general.architecture must be
   "llama"); an unknown llama.* key, or one peft.h does not implement, is an
   error naming it. Tied when output.weight is absent. */
PEFTDEF peft_status peft_gguf_config(const peft_gguf *g, peft_config *c);
/* DIR/tokenizer.json and DIR/tokenizer_config.json for a GGUF's byte-level
   BPE tokenizer (tokenizer.ggml.model "gpt2"), as the `tokenizers` library
   reads them: vocabulary, merges, the split tokenizer.ggml.pre names, the
   control and user-defined tokens as added tokens; the special tokens,
   add_bos/add_eos and the chat template. A SentencePiece ("llama") one is
   refused: its tokenizer.json would need merges derived from the scores. */
PEFTDEF peft_status peft_gguf_write_tokenizer(const char *gguf_path, const char *dir);

/* ------------------------------------------------------------------- data */
/* Reads a training file as token ids: a file of integers (separated by
   spaces, commas or newlines) is taken as ids; anything else as UTF-8 text,
   one token per byte (ids 0–255; needs vocab ≥ 256). */
PEFTDEF peft_status peft_tokens_load(const char *path, int vocab_size, int **ids, int64_t *n);
/* Fills B windows of T tokens drawn at random positions, with next-token
   targets. Needs n ≥ T + 1. */
PEFTDEF void peft_batch_sample(peft_rng *r, const int *ids, int64_t n, int B, int T, int *tokens,
                               int *targets);

/* ------------------------------------------------------------- tokenizers */
/* SentencePiece-style BPE (LLaMA-1/2, llama2.c's tokenizer.bin): a dummy
   space prefix, pieces looked up per UTF-8 code point with byte fallback
   (<0xXX> = byte + 3), then the highest-scoring adjacent merge, repeatedly. */
typedef struct {
    char   **pieces;                 /* "▁" stored as " ", as llama2.c does */
    float   *scores;
    int      n, max_len;
    int     *sorted;                 /* piece ids sorted by bytes, for lookup */
    int      bos_id, eos_id;         /* 1 and 2 for LLaMA-1/2; -1 = none       */
    /* tokenizer.json (Hugging Face BPE): see peft__tokenizer_load_hf */
    int      kind;                   /* PEFT_TOK_SCORES, PEFT_TOK_HF_SP, PEFT_TOK_HF_BYTES */
    int      unk_id, byte_fallback, ignore_merges, split_digits;
    int      prefix_space;           /* "▁" before the text: 1 unless it starts with one,
                                        2 before every segment between added tokens */
    int      norm_space;             /* tokenizer.json normalizer Replace(" " → "▁") */
    int      pretok;                 /* byte-level split regex: 1 GPT-2, 2 LLaMA-3 */
    int      merge_cap;              /* merges: (left, right) → rank, result  */
    uint64_t *merge_key;
    int     *merge_rank, *merge_out;
    int     *special, n_special;     /* added tokens, matched in raw text      */
    unsigned char *special_flags;    /* each one's lstrip/rstrip/single_word/normalized (PEFT__ADDED_*) */
    int      n_normalized;           /* added tokens with normalized true      */
    char   **decoded;                /* byte-level: each piece as bytes        */
    /* tokenizer_config.json beside tokenizer.json (all absent without one) */
    int      eos_from;               /* PEFT_EOS_*: where eos_id came from     */
    int      bos_token;              /* its bos_token's id (the text chat templates write), -1 none */
    char    *chat_template;          /* its chat_template string, NULL if none */
    int      chat;                   /* PEFT_CHAT_*: the template's family, recognised from it */
    char    *chat_default_system;    /* the system message a ChatML template writes when the
                                        conversation has none (SmolLM2's, Qwen's), NULL if none */
    char     unused[512];            /* its keys not applied, "key (why), key" ("" if none), for the
                                        caller to warn (see peft__tok_config_keys) */
    char     config_path[512];       /* the tokenizer_config.json read, "" if none */
    /* set by the GGUF loader from tokenizer.ggml.* (-1 = none); bos_id is -1
       there unless add_bos_token, as encoding adds BOS only then          */
    int      eot_id, pad_id;
    int      add_bos, add_eos;       /* tokenizer.ggml.add_bos_token / add_eos_token */
} peft_tokenizer;
enum { PEFT_TOK_SCORES = 0, PEFT_TOK_HF_SP, PEFT_TOK_HF_BYTES };
enum {
    PEFT__ADDED_LSTRIP = 1,
    PEFT__ADDED_RSTRIP = 2,
    PEFT__ADDED_SINGLE_WORD = 4,
    PEFT__ADDED_NORMALIZED = 8
};
/* eos_id, from the model's files as transformers takes it: tokenizer_config.json's eos_token
   (a string or an AddedToken object, looked up among the added tokens and the vocabulary);
   without one, the caller's config.json eos_token_id (peft_tokenizer_use_config_eos); the
   token's text ("</s>", "<|endoftext|>"...) only when neither file says. */
enum { PEFT_EOS_GUESSED = 0, PEFT_EOS_TOKENIZER_CONFIG, PEFT_EOS_CONFIG };
/* Chat template families, recognised from the template string by distinctive substrings
   (as llama.cpp's llm_chat_detect_template does; no Jinja engine), each turn rendered as:
     CHATML  "<|im_start|>"          <|im_start|>{role}\n{content}<|im_end|>\n
     LLAMA2  "[INST]" and "<<SYS>>"  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
     LLAMA3  "<|start_header_id|>"   <|begin_of_text|> (once), then
                                     <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
     ALPACA  "### Instruction:"      <s>{system}\n\n (once), then
                                     ### Instruction:\n{user}\n\n### Response:\n{answer}</s>\n\n */
enum { PEFT_CHAT_NONE = 0, PEFT_CHAT_CHATML, PEFT_CHAT_LLAMA2, PEFT_CHAT_LLAMA3, PEFT_CHAT_ALPACA };
PEFTDEF peft_status peft_tokenizer_load_llama2c(peft_tokenizer *t, const char *path, int vocab_size);
/* From a file or a model folder: tokenizer.json (Hugging Face), a GGUF
   model's tokenizer.ggml.* metadata, else llama2.c's tokenizer.bin
   (vocab_size is needed for that one only). */
PEFTDEF peft_status peft_tokenizer_load(peft_tokenizer *t, const char *path, int vocab_size);
/* Encodes text (with BOS 1 / EOS 2 when asked) into ids; returns the count
   (at most max; -1 when max is too small). */
PEFTDEF int peft_tokenizer_encode(const peft_tokenizer *t, const char *text, int bos, int eos, int *ids,
                                  int max);
/* The text of one id, as it follows prev (a leading space is dropped after
   BOS; byte pieces <0xXX> decode to the byte). */
PEFTDEF const char *peft_tokenizer_decode(const peft_tokenizer *t, int prev, int id, char buf[8]);
PEFTDEF void        peft_tokenizer_free(peft_tokenizer *t);
/* When no tokenizer_config.json named the EOS (eos_from is PEFT_EOS_GUESSED), takes
   config.json's eos_token_id (the first of a list) instead of the guess by text. */
PEFTDEF void        peft_tokenizer_use_config_eos(peft_tokenizer *t, const peft_config *c);
/* One message of a conversation: role "system", "user" or "assistant". */
typedef struct { const char *role, *content; } peft_chat_message;
/* A conversation rendered as chat family `chat` renders it (PEFT_CHAT_*; 0 = the tokenizer's
   own, from tokenizer_config.json) and tokenized: returns the number of ids (at most max),
   or -1 with the error set (unknown or missing template, roles out of order, too long).
   mask (may be NULL) gets 1 for the ids that carry loss: the assistant turns' content and
   end-of-turn token (TRL's assistant-only loss), 0 for the rest. add_generation_prompt
   appends the assistant's header, as apply_chat_template(add_generation_prompt=True). */
PEFTDEF int peft_chat_encode(const peft_tokenizer *t, int chat, const peft_chat_message *msg, int n_msg,
                             int add_generation_prompt, int *ids, unsigned char *mask, int max);
/* The PEFT_CHAT_* family of a chat template string: 0 for NULL, -1 when not recognised. */
PEFTDEF int         peft_chat_detect(const char *tmpl);
/* The family of a --chat-template name: chatml, llama2, llama3, alpaca; -1 otherwise. */
PEFTDEF int         peft_chat_family(const char *name);

/* ------------------------------------------------------ supervised datasets */
/* Examples as token ids with the number of leading tokens that carry no
   loss. Loaded from
     .json   an array of Alpaca records {instruction, input, output}
     .jsonl  one record per line: Alpaca keys, {prompt, completion}, {text}, or a chat
             {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}
             (as mlx-lm, TRL and OpenAI keep it; .json arrays may hold them too),
             rendered by the tokenizer's chat template (t->chat, from
             tokenizer_config.json or set by the caller) with loss on the assistant
             turns only (peft_chat_encode)
     .txt    plain text, tokenized whole and cut into max_len-token pieces
     other   (or .txt without a tokenizer) what peft_tokens_load reads, cut likewise
   Alpaca records use the Stanford template and recipe: ids = tokenize(prompt
   + output) with BOS and EOS, and the first len(tokenize(prompt)) ids are
   masked. The EOS is the tokenizer's eos_token (t->eos_id; see PEFT_EOS_*), as
   stanford_alpaca's train.py appends tokenizer.eos_token to every output and
   TRL's SFTTrainer to every completion/text that does not already end with it
   (an answer ending with the EOS text gets no second one here either); chat
   records get no extra EOS, their template ends each turn. Examples longer
   than max_len are truncated; those left with no target are dropped
   (counted). t may be NULL for id files. */
typedef struct {
    int     *ids;          /* every example's ids, back to back           */
    int64_t *start;        /* [n + 1] offsets into ids                    */
    int     *n_masked;     /* leading ids of each example without loss    */
    unsigned char *loss;   /* per id: 1 = a target with loss (chat data masks every non-assistant
                              turn); NULL: every id after the n_masked leading ones */
    int      n, n_dropped;   /* kept; dropped: no target within max_len           */
    int      n_truncated;    /* kept but cut to max_len tokens                    */
    int64_t  n_tokens;
    char     path[512];
} peft_dataset;
PEFTDEF peft_status peft_dataset_load(peft_dataset *d, const char *path, const peft_tokenizer *t,
                                      int max_len);
/* Takes the last n examples of d (after a seeded shuffle of which ones) into
   held; d keeps the rest. */
PEFTDEF peft_status peft_dataset_split(peft_dataset *d, peft_dataset *held, int n, uint64_t seed);
PEFTDEF void        peft_dataset_free(peft_dataset *d);
/* A batch of the examples idx[0..B): inputs ids[0..L-1), targets ids[1..L)
   with masked and padding positions at -100, padded to the longest example
   (at most T). Returns the padded length. */
PEFTDEF int         peft_dataset_batch(const peft_dataset *d, const int *idx, int B, int T, int pad_id,
                                       int *tokens, int *targets);
/* The example order of an epoch: a seeded permutation, the same for the
   same (seed, epoch), so a resumed run sees the same batches. */
PEFTDEF void        peft_dataset_order(int n, uint64_t seed, int epoch, int *order);

/* --------------------------------------------------------------- generation */
/* Greedy decoding (with a KV cache): appends up to max_new tokens after the
   prompt, stopping after eos or at max_seq_len; returns how many were produced,
   or -1 when a forward failed or memory ran out (peft_last_error says why;
   the ids produced before it are in out). */
PEFTDEF int peft_generate_greedy(peft_model *m, peft_graph *g, const int *prompt, int n_prompt,
                                 int max_new, int eos, int *out);
/* Sampling: temperature 0 is greedy; otherwise softmax(logits/T), keep the
   top_k (0 = all) and the smallest set with probability ≥ top_p (1 = all). */
typedef struct {
    float temperature, top_p;
    int   top_k;
    uint64_t seed;
    float repetition_penalty;   /* CTRL's, as transformers applies it to every id of prompt and
                                   output: logit/p when positive, logit*p when not; 0 or 1 = off */
    const int *stop;            /* more ids that end generation (every EOS of the model), n_stop */
    int   n_stop;
} peft_sampler;
PEFTDEF int peft_sample(const float *logits, int n, const peft_sampler *s, peft_rng *rng, float *scratch,
                        int *iscratch);
/* Generation with a sampler; on_token (may be NULL) sees each new id as it
   comes (streaming) and can stop by returning non-zero. Stops after eos or any
   of s->stop. Returns the count, or -1 with peft_last_error() set (a prompt id
   outside the vocabulary, a prompt longer than max_position_embeddings, no memory). */
PEFTDEF int peft_generate(peft_model *m, peft_graph *g, const int *prompt, int n_prompt, int max_new, int eos,
                          const peft_sampler *s, int *out, int (*on_token)(void *ctx, int id), void *ctx);

/* generation_config.json as transformers reads it for generate(). Fields not
   given are -1 (n_eos 0). do_sample true without top_k means top_k 50 (the
   GenerationConfig default). Keys that have no effect here (num_beams > 1,
   min_new_tokens, ...) are listed in `unused`, for the caller to warn. */
typedef struct {
    int   eos_ids[PEFT_MAX_EOS], n_eos;  /* eos_token_id: an int or a list; generation stops at any */
    int   bos_id, pad_id;                /* bos_token_id, pad_token_id (padding only)            */
    int   do_sample, top_k, max_new_tokens, max_length;
    float temperature, top_p, repetition_penalty;
    char  unused[512];                   /* "key, key" of the keys without effect, "" if none     */
} peft_generation_config;
PEFTDEF peft_status peft_generation_config_load(peft_generation_config *g, const char *path);

/* The Stanford Alpaca prompt (with or without input), ending "### Response:". */
PEFTDEF void peft_alpaca_prompt(const char *instruction, const char *input, char *out, size_t n);

/* ------------------------------------------------------------------- CUDA */
/* The optional CUDA layer (issue 20): plain-C entry points declared in
   peft_cuda.h and compiled from peft_cuda.cu by nvcc (`make cuda`); only
   with PEFT_CUDA defined. Without it nothing changes: libc and libm alone. */
#ifdef PEFT_CUDA
#include "peft_cuda.h"
#endif

#ifdef __cplusplus
}
#endif
#endif /* PEFT_H */

/* ############################################################################
   #                              IMPLEMENTATION                              #
   ############################################################################ */
#ifdef PEFT_IMPLEMENTATION
#ifndef PEFT__IMPLEMENTED
#define PEFT__IMPLEMENTED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <ctype.h>
#include <math.h>
#include <errno.h>
#include <assert.h>
#include <float.h>
#include <time.h>
#include <sys/stat.h>
#if defined(_WIN32)
#include <direct.h>
#else
#include <unistd.h>
/* POSIX, but hidden by strict -std=c99/c11 feature macros */
extern int fileno(FILE *stream);
extern int fsync(int fd);
#endif
#ifndef PEFT_NO_THREADS
#include <pthread.h>
#include <stdatomic.h>
#endif
#if defined(__linux__)
#include <sched.h>                     /* sched_getaffinity, where the feature macros show it */
#endif
#if !defined(PEFT_KEEP_DENORMALS) && (defined(__SSE2__) || defined(_M_X64))
#include <xmmintrin.h>                 /* the MXCSR, for flush-to-zero (a compiler header) */
#define PEFT__FTZ 1
#endif

#ifndef PEFT_MALLOC
#define PEFT_MALLOC(n) malloc(n)
#define PEFT__STD_MALLOC 1
#endif
#ifndef PEFT_REALLOC
#define PEFT_REALLOC(p, n) realloc(p, n)
#endif
#ifndef PEFT_FREE
#define PEFT_FREE(p) free(p)
#endif
#ifndef PEFT_ASSERT
#define PEFT_ASSERT(x) assert(x)
#endif
#ifndef PEFT_MAX_THREADS
#define PEFT_MAX_THREADS 64
#endif
#ifndef PEFT_LCE_CHUNK_MB
#define PEFT_LCE_CHUNK_MB 128
#endif

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define PEFT__TLS _Thread_local
#elif defined(__GNUC__)
#define PEFT__TLS __thread
#else
#define PEFT__TLS
#endif

#if defined(__GNUC__)
#define PEFT__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PEFT__PRINTF(a, b)
#endif

/* ============================================================================
   PLATFORM: errors, allocation, RNG, threads
   ============================================================================ */

static PEFT__TLS char peft__errbuf[1024];
static PEFT__TLS peft_status peft__errstatus;   /* the status that came with errbuf's message */

/* Records a message for peft_last_error() and returns the status, so that a
   failure path reads `return peft__fail(PEFT_ERR_IO, "%s: ...", path);`. */
static peft_status peft__fail(peft_status s, const char *fmt, ...) PEFT__PRINTF(2, 3);
static peft_status peft__fail(peft_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(peft__errbuf, sizeof peft__errbuf, fmt, ap);
    va_end(ap);
    peft__errstatus = s;
    return s;
}

PEFTDEF const char *peft_last_error(void) { return peft__errbuf[0] ? peft__errbuf : "no error"; }

PEFTDEF const char *peft_status_name(peft_status s) {
    switch (s) {
    case PEFT_OK: return "ok";
    case PEFT_ERR_ARG: return "invalid argument";
    case PEFT_ERR_IO: return "I/O error";
    case PEFT_ERR_FORMAT: return "malformed file";
    case PEFT_ERR_SHAPE: return "shape mismatch";
    case PEFT_ERR_CONFIG: return "bad configuration";
    case PEFT_ERR_NOMEM: return "out of memory";
    case PEFT_ERR_NUMERIC: return "non-finite number";
    case PEFT_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown status";
}

static void *peft__calloc(size_t n) {
#ifdef PEFT__STD_MALLOC
    /* libc's calloc hands large blocks over as fresh zero pages, untouched:
       they join the resident set only when written (a weight a loader
       replaces by a mapped or quantized one never does) */
    return calloc(1, n ? n : 1);
#else
    void *p = PEFT_MALLOC(n ? n : 1);
    if (p) memset(p, 0, n);
    return p;
#endif
}

static char *peft__strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)PEFT_MALLOC(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* xoroshiro128+ seeded through splitmix64: fast, and the same stream on
   every platform for a given seed. */
static uint64_t peft__splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
PEFTDEF void peft_rng_seed(peft_rng *r, uint64_t seed) {
    r->s[0] = peft__splitmix(&seed);
    r->s[1] = peft__splitmix(&seed);
    r->has_spare = 0;
    r->spare = 0;
}
PEFTDEF uint64_t peft_rng_u64(peft_rng *r) {
    uint64_t s0 = r->s[0], s1 = r->s[1], out = s0 + s1;
    s1 ^= s0;
    r->s[0] = ((s0 << 24) | (s0 >> 40)) ^ s1 ^ (s1 << 16);
    r->s[1] = (s1 << 37) | (s1 >> 27);
    return out;
}
PEFTDEF float peft_rng_uniform(peft_rng *r) {
    return (float)(peft_rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}
PEFTDEF float peft_rng_normal(peft_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = ((double)(peft_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(peft_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    r->spare = (float)(rad * sin(th));
    r->has_spare = 1;
    return (float)(rad * cos(th));
}

/* ---- thread pool ----------------------------------------------------------
   A fixed set of workers; peft__parallel_for(n, fn, ctx) cuts [0, n) into
   chunks whose bounds depend only on n, min_chunk and the thread count, and
   every chunk is computed by exactly one thread, so results do not depend on
   which thread ran which chunk, nor on timing. Each thread takes the chunks
   of its own share first (the same rows as the last loop: warm caches), then
   takes what is left of the others' shares: a thread the OS has put aside
   (another program wants the core) delays the loop by at most the one chunk
   it is running, not by its whole share. */
typedef void (*peft__range_fn)(void *ctx, int64_t begin, int64_t end);

static int peft__nthreads = 1;

/* set while a thread runs its part: a parallel_for inside one (a GEMM in
   the attention kernel) then runs inline in that thread instead of waiting
   on the pool it is part of */
static PEFT__TLS int peft__in_part;

/* Denormals (|x| < 1.2e-38) cost ~100 cycles per operation on x86, and
   training makes them: a sharpening softmax normalises e^-87 into that
   range, and its products carry them into the GEMMs (the demo's Excitor
   slowed from 23,000 to 13,000 tokens/s over 80 steps). All parallel work
   (kernels, attention, element-wise loops) therefore runs with
   flush-to-zero and denormals-are-zero — whatever the thread count, so
   results do not depend on it — and the caller's MXCSR is restored after
   each loop. A denormal differs from 0 by less than 1.2e-38: no result
   that matters moves. PEFT_KEEP_DENORMALS turns this off. */
#ifdef PEFT__FTZ
#define PEFT__FTZ_BITS 0x8040u                   /* FTZ (bit 15) | DAZ (bit 6) */
static unsigned peft__ftz_enter(void) {
    unsigned c = _mm_getcsr();
    _mm_setcsr(c | PEFT__FTZ_BITS);
    return c;
}
static void peft__ftz_leave(unsigned c) { _mm_setcsr(c); }
#else
static unsigned peft__ftz_enter(void) { return 0; }
static void peft__ftz_leave(unsigned c) { (void)c; }
#endif

/* chunks per thread: with 4, a thread that is late or put aside leaves the
   others 3/4 of its share to take over, at ~0.1 µs of bookkeeping a chunk */
#define PEFT__GRAIN 4
#if PEFT_MAX_THREADS * PEFT__GRAIN > 0xFFFF
#error "PEFT_MAX_THREADS: a loop's chunks are counted in 16 bits (at most 16383 threads)"
#endif

#ifndef PEFT_NO_THREADS
/* Waking a sleeping thread costs ~35 µs on this kind of VM, and a training
   step runs hundreds of parallel loops. So an idle worker spins for a short
   while (PEFT_SPIN_US) watching the generation counter before it sleeps on
   a condition variable, and the caller, its chunks done, spins about as
   long as a chunk takes before it sleeps until the last chunk ends. Short,
   bounded spins matter when the machine is busy: a spinning thread holds a
   core that a thread with work (ours or another program's) could use.
   Sleeping and waking use the Dekker pattern on seq_cst atomics (announce,
   then re-check under the mutex), so no wake-up is lost. */
#ifndef PEFT_SPIN_US
#define PEFT_SPIN_US 200
#endif
/* One share of chunks per thread: [next, end) and the generation of the
   loop, in one word, so that a claim is one compare-and-swap and a thread
   still looking at the last loop's words can never take a chunk twice.
   The owner takes from the front, the others from the back. */
typedef struct {
    _Alignas(64) _Atomic uint64_t w;    /* generation:32 | end:16 | next:16 */
} peft__share;
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t  go, done;
    pthread_t       tid[PEFT_MAX_THREADS];
    int             n_workers;          /* threads besides the caller      */
    _Atomic uint64_t generation;        /* bumped once per parallel loop   */
    _Atomic int     sleepers;           /* workers asleep (or about to be) */
    _Atomic int     caller_waits;       /* the caller sleeps on `done`     */
    _Atomic int     shares;             /* threads the current loop is cut for */
    _Atomic int64_t left;               /* chunks of the loop not finished */
    /* the loop: written before its shares are published, read only by a
       thread that holds one of its chunks (so never while being rewritten) */
    peft__range_fn  fn;
    void           *ctx;
    int64_t         n;
    int             chunks;
    peft__share     share[PEFT_MAX_THREADS];
} peft__pool_t;
static peft__pool_t peft__pool = { .mu = PTHREAD_MUTEX_INITIALIZER,
                                   .go = PTHREAD_COND_INITIALIZER,
                                   .done = PTHREAD_COND_INITIALIZER };

typedef struct { int index; } peft__worker_arg;
static peft__worker_arg peft__worker_args[PEFT_MAX_THREADS];

static void peft__cpu_relax(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static double peft__seconds(void);

/* spinning only pays when every thread has a core of its own: with more
   threads than cores a spinning worker takes the core a working one needs */
static _Atomic int peft__spin_ok = 1;

/* A spinning thread that sees the clock jump between two looks (64 pauses,
   a few µs) was put aside by the OS: the machine has more runnable threads
   than cores, and a spin only keeps a core from a thread with work. Then
   no thread spins for the next 50 ms. */
static _Atomic int64_t peft__contended_until;   /* µs of peft__seconds() */

/* 1 while spinning may go on at time t (the previous look at prev) */
static int peft__spin_on(double prev, double t) {
    int64_t now = (int64_t)(t * 1e6);
    if (prev > 0.0 && t - prev > 300e-6) {
        atomic_store_explicit(&peft__contended_until, now + 50000, memory_order_relaxed);
        return 0;
    }
    return now >= atomic_load_explicit(&peft__contended_until, memory_order_relaxed);
}

/* spins until *v != old (returns 1) or `us` microseconds pass (returns 0) */
static int peft__spin_while_eq64(_Atomic uint64_t *v, uint64_t old, double us) {
    double until = 0.0, prev = 0.0;
    for (int i = 1;; i++) {
        if (atomic_load_explicit(v, memory_order_acquire) != old) return 1;
        if (!atomic_load_explicit(&peft__spin_ok, memory_order_relaxed)) return 0;
        peft__cpu_relax();
        if ((i & 63) == 0) {
            double t = peft__seconds();
            if (!peft__spin_on(prev, t)) return 0;
            prev = t;
            if (until == 0.0) until = t + us * 1e-6;
            else if (t > until) return 0;
        }
    }
}

/* one chunk of the current loop: from the front of share `own`, else from
   the back of another share; -1 when none is left to take */
static int peft__claim(int own, int shares) {
    for (int k = 0; k < shares; k++) {
        _Atomic uint64_t *w = &peft__pool.share[(own + k) % shares].w;
        uint64_t v = atomic_load_explicit(w, memory_order_acquire);
        for (;;) {
            uint64_t next = v & 0xFFFFu, end = (v >> 16) & 0xFFFFu;
            if (next >= end) break;
            uint64_t nv = k == 0 ? v + 1 : v - ((uint64_t)1 << 16);
            if (atomic_compare_exchange_weak_explicit(w, &v, nv, memory_order_acq_rel, memory_order_acquire))
                return (int)(k == 0 ? next : end - 1);
        }
    }
    return -1;
}

/* runs chunk c of the loop whose chunk the caller holds */
static void peft__run_chunk(int c) {
    int64_t n = peft__pool.n, chunks = peft__pool.chunks;
    int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    peft__in_part = 1;
    if (e > b) peft__pool.fn(peft__pool.ctx, b, e);
    peft__in_part = 0;
    if (atomic_fetch_sub(&peft__pool.left, 1) == 1 && atomic_load(&peft__pool.caller_waits)) {
        pthread_mutex_lock(&peft__pool.mu);
        pthread_cond_signal(&peft__pool.done);
        pthread_mutex_unlock(&peft__pool.mu);
    }
}

static void *peft__worker(void *arg) {
    int index = ((peft__worker_arg *)arg)->index;
    uint64_t seen = 0;
    (void)peft__ftz_enter();                    /* the pool's threads flush denormals for good */
    for (;;) {
        if (!peft__spin_while_eq64(&peft__pool.generation, seen, PEFT_SPIN_US)) {
            atomic_fetch_add(&peft__pool.sleepers, 1);
            pthread_mutex_lock(&peft__pool.mu);
            while (atomic_load(&peft__pool.generation) == seen)
                pthread_cond_wait(&peft__pool.go, &peft__pool.mu);
            pthread_mutex_unlock(&peft__pool.mu);
            atomic_fetch_sub(&peft__pool.sleepers, 1);
        }
        seen = atomic_load(&peft__pool.generation);
        int shares = atomic_load(&peft__pool.shares);
        if (index >= shares) continue;          /* a pool grown for more threads than this loop uses */
        for (int c; (c = peft__claim(index, shares)) >= 0;) peft__run_chunk(c);
    }
    return NULL;
}

static void peft__pool_grow(int n_workers) {
    while (peft__pool.n_workers < n_workers) {
        int i = peft__pool.n_workers;
        peft__worker_args[i].index = i + 1;         /* the caller is share 0 */
        if (pthread_create(&peft__pool.tid[i], NULL, peft__worker, &peft__worker_args[i]) != 0)
            break;
        peft__pool.n_workers++;
    }
}
#endif

#if !defined(PEFT_NO_THREADS) && !defined(PEFT_NO_SOLO)
/* ---- solo loops on a busy machine -------------------------------------------
   With more runnable threads than cores, the OS puts a worker aside in the
   middle of its chunk and the loop waits until it runs again; with one other
   busy program on 2 cores, 2 threads made less progress than 1. So the pool
   measures what its parallel loops get: process CPU time over wall time
   during the loops (the cores they had, spins included). A window of loops
   that got less than PEFT__SOLO_GAIN times what loops on the caller alone
   got (or, before that is known, under 0.65 cores per thread) sends the next
   window's loops to the caller alone: the same chunks, in order, so results
   are those of every thread count. Solo windows double (0.2 s to 3.2 s of
   loops) while parallel keeps losing; a parallel window follows each, so a
   machine that frees up is seen within one solo window. On a free machine
   two threads get ~1.95 cores and no loop runs solo. Cost: two clock()
   calls per parallel loop (~1.6 µs). PEFT_NO_SOLO turns this off. */
#define PEFT__SOLO_GAIN 1.15                  /* parallel must get 15% more than solo */
#define PEFT__PAR_WINDOW 0.05                 /* s of loop time in a parallel window  */
#define PEFT__SOLO_MIN 0.2
#define PEFT__SOLO_MAX 3.2
typedef struct {
    peft_solo_mode mode;
    int     solo;            /* this window's loops run on the caller alone */
    double  cpu, wall;       /* this window's loops so far (s) */
    double  got[2];          /* cores per loop-second, last window of each mode (0: not measured) */
    double  window;          /* length of this window (s of loop wall time) */
    double  solo_window;     /* length of the next solo window */
    int64_t solo_loops, loops;   /* counters (tests, bench) */
    /* by whole training steps (peft__solo_step) */
    int     contended;       /* the last step's parallel loops got < PEFT__BUSY cores per thread */
    double  step_cpu, step_wall;   /* the current step's loops on every thread */
    int     phase;           /* PEFT__AB_* */
    int     run_left;        /* steps left before the next comparison */
    double  step_t0;         /* when the current step began (0: no step yet) */
    double  trial[2];        /* wall time of the trial steps: [0] every thread, [1] solo */
} peft__solo_t;
enum { PEFT__AB_NONE, PEFT__AB_TRIAL_POOL, PEFT__AB_TRIAL_SOLO, PEFT__AB_RUN };
#define PEFT__BUSY 0.8                         /* cores per thread below which the machine is busy */
#define PEFT__AB_RUN 6                         /* steps run in the faster mode between comparisons */
static peft__solo_t peft__solo = { .window = PEFT__PAR_WINDOW, .solo_window = PEFT__SOLO_MIN };
static void peft__solo_reset(void) {
    peft__solo_t *s = &peft__solo;
    s->solo = s->mode == PEFT_SOLO_ALWAYS;
    s->cpu = 0.0;
    s->wall = 0.0;
    s->got[0] = 0.0;
    s->got[1] = 0.0;
    s->window = PEFT__PAR_WINDOW;
    s->solo_window = PEFT__SOLO_MIN;
    s->contended = 0;
    s->step_cpu = 0.0;
    s->step_wall = 0.0;
    s->phase = PEFT__AB_NONE;
    s->step_t0 = 0.0;
}

#endif

PEFTDEF void peft_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > PEFT_MAX_THREADS) n = PEFT_MAX_THREADS;
#ifdef PEFT_NO_THREADS
    n = 1;
#else
    pthread_mutex_lock(&peft__pool.mu);
    peft__pool_grow(n - 1);
    if (peft__pool.n_workers < n - 1) n = peft__pool.n_workers + 1;
    pthread_mutex_unlock(&peft__pool.mu);
    atomic_store(&peft__spin_ok, n <= peft_available_cpus());
#ifndef PEFT_NO_SOLO
    peft__solo_reset();                   /* what n threads get is measured anew */
#endif
#endif
    peft__nthreads = n;
}
PEFTDEF int peft_get_threads(void) { return peft__nthreads; }

PEFTDEF peft_status peft_check_cpu(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
#if defined(__AVX512F__)
    if (!__builtin_cpu_supports("avx512f"))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "this build uses AVX-512 but the CPU lacks it: rebuild on this machine "
                          "(make clean && make) or with OPT=\"-O2 -mavx2 -mfma\"");
#endif
#if defined(__AVX2__)
    if (!__builtin_cpu_supports("avx2"))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "this build uses AVX2 but the CPU lacks it: rebuild on this machine");
#endif
#if defined(__FMA__)
    if (!__builtin_cpu_supports("fma"))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "this build uses FMA but the CPU lacks it: rebuild on this machine");
#endif
#endif
    return PEFT_OK;
}

/* Runs fn over [0, n) on the pool, in chunks of at least min_chunk items;
   less than min_chunk per thread runs on the caller alone (a wake-up costs
   ~10 µs). fn gets one chunk [begin, end) per call. */
static void peft__parallel_run(int64_t n, int64_t min_chunk, peft__range_fn fn, void *ctx);
static void peft__parallel_for(int64_t n, int64_t min_chunk, peft__range_fn fn, void *ctx) {
    unsigned csr = peft__ftz_enter();
    peft__parallel_run(n, min_chunk, fn, ctx);
    peft__ftz_leave(csr);
}

#if !defined(PEFT_NO_THREADS) && !defined(PEFT_NO_SOLO)
/* the end of a window: which mode the next one runs in */
static void peft__solo_next(void) {
    peft__solo_t *s = &peft__solo;
    if (s->mode != PEFT_SOLO_AUTO) {
        s->cpu = 0.0;
        s->wall = 0.0;
        return;
    }
    s->got[s->solo] = s->cpu / s->wall;
    if (s->step_t0 > 0.0 && peft__seconds() - s->step_t0 < 10.0) {   /* steps decide (below) */
        s->cpu = 0.0;
        s->wall = 0.0;
        return;
    }
    double par = s->got[0], solo = s->got[1];
    int lose = solo > 0.0 ? par < PEFT__SOLO_GAIN * solo : par < 0.65 * peft__nthreads;
    if (s->solo || !lose) {              /* after a solo window, always look at parallel again */
        if (!s->solo) s->solo_window = PEFT__SOLO_MIN;
        s->solo = 0;
        s->window = PEFT__PAR_WINDOW;
    } else {
        s->solo = 1;
        s->window = s->solo_window;
        if (s->solo_window < PEFT__SOLO_MAX) s->solo_window *= 2.0;
    }
    s->cpu = 0.0;
    s->wall = 0.0;
}

/* By whole steps. Windows of loops compare CPU shares measured at different
   moments of a step, on different loops; a training step repeats the same
   work, so under contention (the last step's parallel loops got under
   PEFT__BUSY cores per thread) the pool times one step on every thread and one solo,
   runs the faster for the next PEFT__AB_RUN steps, and compares again. Each
   trainer step calls this at its start; loops outside steps (or after 10 s
   without one) are left to the windows. */
static void peft__solo_step(int sharded) {
    peft__solo_t *s = &peft__solo;
    double t = peft__seconds(), took = s->step_t0 > 0.0 ? t - s->step_t0 : 0.0;
    s->step_t0 = t;
    if (s->step_wall > 0.02)     /* the whole last step's parallel loops: steadier than a window */
        s->contended = s->step_cpu < PEFT__BUSY * peft__nthreads * s->step_wall;
    s->step_cpu = 0.0;
    s->step_wall = 0.0;
    if (s->mode != PEFT_SOLO_AUTO || peft__nthreads < 2) return;
    if (sharded) {
        /* a data-parallel step (one loop whose chunks are whole forwards and backwards):
           n threads on a busy machine get more cores than one does and meet once, so the
           step stays on every thread and nothing is compared */
        s->solo = 0;
        s->phase = PEFT__AB_NONE;
        return;
    }
    switch (s->phase) {
    case PEFT__AB_TRIAL_POOL:
        s->trial[0] = took;
        s->phase = s->contended ? PEFT__AB_TRIAL_SOLO : PEFT__AB_NONE;
        s->solo = s->contended;
        break;
    case PEFT__AB_TRIAL_SOLO:
        s->trial[1] = took;
        s->solo = s->trial[1] < s->trial[0];
        s->phase = PEFT__AB_RUN;
        s->run_left = PEFT__AB_RUN;
        break;
    case PEFT__AB_RUN:
        if (--s->run_left > 0) break;
        s->phase = PEFT__AB_TRIAL_POOL;
        s->solo = 0;
        break;
    default:
        s->solo = 0;
        if (s->contended) s->phase = PEFT__AB_TRIAL_POOL;
        break;
    }
}

/* the loop's chunks on the caller, in order */
static void peft__run_solo(int64_t n, int64_t chunks, peft__range_fn fn, void *ctx) {
    peft__in_part = 1;
    for (int64_t c = 0; c < chunks; c++) {
        int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
        if (e > b) fn(ctx, b, e);
    }
    peft__in_part = 0;
}
#endif

#ifndef PEFT_NO_THREADS
/* the loop's chunks on the pool's threads, the caller's share first */
static void peft__run_pool(int64_t n, int64_t chunks, int shares, peft__range_fn fn, void *ctx) {
    /* the previous loop has ended (left reached 0), so the fields are free;
       each share's release store publishes them to the thread that claims
       from it */
    peft__pool.fn = fn;
    peft__pool.ctx = ctx;
    peft__pool.n = n;
    peft__pool.chunks = (int)chunks;
    atomic_store(&peft__pool.left, chunks);
    atomic_store(&peft__pool.shares, shares);
    uint64_t gen = atomic_load(&peft__pool.generation) + 1;
    for (int t = 0; t < shares; t++) {
        uint64_t b = (uint64_t)(chunks * t / shares), e = (uint64_t)(chunks * (t + 1) / shares);
        atomic_store_explicit(&peft__pool.share[t].w, (gen & 0xFFFFFFFFu) << 32 | e << 16 | b,
                              memory_order_release);
    }
    atomic_store(&peft__pool.generation, gen);
    if (atomic_load(&peft__pool.sleepers) > 0) {
        pthread_mutex_lock(&peft__pool.mu);
        pthread_cond_broadcast(&peft__pool.go);
        pthread_mutex_unlock(&peft__pool.mu);
    }
    double last = 0.0;                          /* how long this thread's last chunk took */
    for (int c; (c = peft__claim(0, shares)) >= 0;) {
        double t0 = peft__seconds();
        peft__run_chunk(c);
        last = peft__seconds() - t0;
    }
    /* the chunks still running started before this thread's last one ended:
       spin about as long as one chunk takes, then sleep (the thread running
       it may have been put aside, and needs a core) */
    double until = 0.0, prev = 0.0, spin = 1.5 * last + 20e-6;
    if (spin > PEFT_SPIN_US * 1e-6) spin = PEFT_SPIN_US * 1e-6;
    for (int i = 1; atomic_load_explicit(&peft__pool.left, memory_order_acquire) > 0; i++) {
        peft__cpu_relax();
        if ((i & 63) && atomic_load_explicit(&peft__spin_ok, memory_order_relaxed)) continue;
        double t = peft__seconds();
        int on = peft__spin_on(prev, t);
        prev = t;
        if (until == 0.0) until = t + spin;
        if (t > until || !on || !atomic_load_explicit(&peft__spin_ok, memory_order_relaxed)) {
            atomic_store(&peft__pool.caller_waits, 1);
            pthread_mutex_lock(&peft__pool.mu);
            while (atomic_load(&peft__pool.left) > 0)
                pthread_cond_wait(&peft__pool.done, &peft__pool.mu);
            pthread_mutex_unlock(&peft__pool.mu);
            atomic_store(&peft__pool.caller_waits, 0);
            break;
        }
    }
}
#endif

static void peft__parallel_run(int64_t n, int64_t min_chunk, peft__range_fn fn, void *ctx) {
    int shares = peft__nthreads;
    if (min_chunk < 1) min_chunk = 1;
    if (n / min_chunk < shares) shares = (int)(n / min_chunk);
    if (shares <= 1 || peft__in_part) {
        if (n > 0) fn(ctx, 0, n);
        return;
    }
#ifndef PEFT_NO_THREADS
    int64_t chunks = n / min_chunk < (int64_t)shares * PEFT__GRAIN ? n / min_chunk
                                                                   : (int64_t)shares * PEFT__GRAIN;
#ifdef PEFT_NO_SOLO
    peft__run_pool(n, chunks, shares, fn, ctx);
#else
    double  t0 = peft__seconds();
    clock_t c0 = clock();
    if (peft__solo.solo) peft__run_solo(n, chunks, fn, ctx);
    else peft__run_pool(n, chunks, shares, fn, ctx);
    double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC, wall = peft__seconds() - t0;
    peft__solo.cpu += cpu;
    peft__solo.wall += wall;
    if (!peft__solo.solo) {
        peft__solo.step_cpu += cpu;
        peft__solo.step_wall += wall;
    }
    peft__solo.loops++;
    peft__solo.solo_loops += peft__solo.solo;
    if (peft__solo.wall >= peft__solo.window) peft__solo_next();
#endif
#endif
}

PEFTDEF void peft_parallel_for(int64_t n, int64_t min_chunk,
                               void (*fn)(void *ctx, int64_t begin, int64_t end), void *ctx) {
    peft__parallel_for(n, min_chunk, fn, ctx);
}

PEFTDEF void peft_set_solo(peft_solo_mode mode) {
#if defined(PEFT_NO_THREADS) || defined(PEFT_NO_SOLO)
    (void)mode;
#else
    peft__solo.mode = mode;
    peft__solo_reset();
#endif
}

PEFTDEF void peft_parallel_stats(int64_t *loops, int64_t *solo_loops) {
#if defined(PEFT_NO_THREADS) || defined(PEFT_NO_SOLO)
    int64_t l = 0, s = 0;
#else
    int64_t l = peft__solo.loops, s = peft__solo.solo_loops;
#endif
    if (loops) *loops = l;
    if (solo_loops) *solo_loops = s;
}

/* ---- the cores available to the process -----------------------------------
   A container or `taskset` gives a process fewer cores than the machine has;
   one thread more than its cores makes every parallel loop wait for a thread
   the OS has put aside. */
#if defined(__linux__) && defined(CPU_COUNT)    /* <sched.h> with the GNU extensions */
static int peft__affinity_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    return CPU_COUNT(&set);
}
#elif defined(__linux__)
/* glibc and musl have it, hidden by strict feature macros */
extern int sched_getaffinity(int pid, size_t size, void *mask);
static int peft__affinity_cpus(void) {
    unsigned long mask[4096 / (8 * sizeof(unsigned long))];   /* 4096 CPUs */
    memset(mask, 0, sizeof mask);
    if (sched_getaffinity(0, sizeof mask, mask) != 0) return 0;
    int n = 0;
    for (size_t i = 0; i < sizeof mask / sizeof mask[0]; i++)
        for (unsigned long w = mask[i]; w; w &= w - 1) n++;
    return n;
}
#else
static int peft__affinity_cpus(void) { return 0; }
#endif

PEFTDEF int peft_parse_cpu_max(const char *text) {
    const char *p = text;
    while (*p == ' ' || *p == '\t') p++;
    long long quota = -1, period = 100000;
    char *end;
    if (!strncmp(p, "max", 3)) p += 3;
    else {
        errno = 0;
        quota = strtoll(p, &end, 10);
        if (end == p || errno || quota == 0) return -1;
        p = end;
    }
    if (*p == ' ' || *p == '\t') {
        while (*p == ' ' || *p == '\t') p++;
        if (*p && *p != '\n') {
            errno = 0;
            period = strtoll(p, &end, 10);
            if (end == p || errno || period <= 0) return -1;
            p = end;
        }
    }
    while (*p == ' ' || *p == '\t' || *p == '\n') p++;
    if (*p) return -1;
    if (quota < 0) return 0;                     /* "max", or v1's -1: no limit */
    long long cores = quota / period + (quota % period != 0);
    return cores > 65536 ? 65536 : (int)cores;
}

/* the first line of a small file, or "" */
static void peft__read_line(const char *path, char *buf, size_t cap) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(buf, (int)cap, f)) buf[0] = 0;
    fclose(f);
}

/* the smallest quota (in cores) on the cgroup path `rel` under `root` and
   its ancestors, from `file` (v2 cpu.max) or `file` + `file2` (v1 quota and
   period); 0 when none limits it */
static int peft__cgroup_quota(const char *root, const char *rel, const char *file, const char *file2) {
    char dir[512], path[600], a[128], b[64];
    int best = 0;
    if (snprintf(dir, sizeof dir, "%s%s", root, rel) >= (int)sizeof dir) return 0;
    size_t len = strlen(dir);
    while (len > 0 && dir[len - 1] == '/') dir[--len] = 0;
    for (;;) {
        snprintf(path, sizeof path, "%s/%s", dir, file);
        peft__read_line(path, a, sizeof a);
        if (a[0] && file2) {
            a[strcspn(a, "\n")] = 0;
            snprintf(path, sizeof path, "%s/%s", dir, file2);
            peft__read_line(path, b, sizeof b);
            size_t al = strlen(a);
            snprintf(a + al, sizeof a - al, " %s", b);
        }
        int q = a[0] ? peft_parse_cpu_max(a) : 0;
        if (q > 0 && (best == 0 || q < best)) best = q;
        if (strlen(dir) <= strlen(root)) break;
        char *slash = strrchr(dir, '/');
        if (!slash || slash < dir + strlen(root)) break;
        *slash = 0;
    }
    return best;
}

static int peft__cgroup_cpus(void) {
    char line[512];
    int best = 0;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        int q = 0;
        *c2 = 0;
        if (!strcmp(line, "0") && c1[1] == 0)       /* v2: "0::/path" */
            q = peft__cgroup_quota("/sys/fs/cgroup", c2 + 1, "cpu.max", NULL);
        else {                                      /* v1: "N:cpu,cpuacct:/path" */
            for (char *t = c1 + 1; t && *t; t = strchr(t, ',') ? strchr(t, ',') + 1 : NULL)
                if (!strncmp(t, "cpu", 3) && (t[3] == ',' || t[3] == 0)) {
                    q = peft__cgroup_quota("/sys/fs/cgroup/cpu", c2 + 1, "cpu.cfs_quota_us",
                                           "cpu.cfs_period_us");
                    break;
                }
        }
        if (q > 0 && (best == 0 || q < best)) best = q;
    }
    fclose(f);
    return best;
}

PEFTDEF int peft_available_cpus(void) {
    long online = 1;
#if defined(_SC_NPROCESSORS_ONLN)
    online = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    int aff = peft__affinity_cpus();
    long n = aff > 0 ? aff : online;
#if defined(__linux__)
    int q = peft__cgroup_cpus();
    if (q > 0 && q < n) n = q;
#endif
    return n < 1 ? 1 : n > 65536 ? 65536 : (int)n;
}

/* ============================================================================
   TENSORS
   ============================================================================ */

static void peft__set_shape(peft_tensor *t, int ndim, const int64_t *shape) {
    int64_t n = 1;
    t->ndim = ndim;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = n;
        n *= shape[i];
    }
    for (int i = ndim; i < PEFT_MAX_DIMS; i++) {
        t->shape[i] = 1;
        t->stride[i] = 1;
    }
    t->n = n;
}

static int64_t peft__cols(const peft_tensor *t) { return t->shape[t->ndim - 1]; }
static int64_t peft__rows(const peft_tensor *t) { return t->n / peft__cols(t); }

PEFTDEF peft_tensor *peft_param_new(const char *name, int ndim, const int64_t *shape) {
    peft_tensor *t = (peft_tensor *)peft__calloc(sizeof *t);
    if (!t || ndim < 1 || ndim > PEFT_MAX_DIMS) {
        PEFT_FREE(t);
        return NULL;
    }
    peft__set_shape(t, ndim, shape);
    t->data = (float *)peft__calloc((size_t)t->n * sizeof(float));
    t->name = name ? peft__strdup(name) : NULL;
    t->is_param = 1;
    if (!t->data || (name && !t->name)) {
        peft_param_free(t);
        return NULL;
    }
    return t;
}

/* Trainable parameters own a zeroed gradient buffer; frozen ones own none. */
PEFTDEF peft_status peft_param_set_trainable(peft_tensor *p, int trainable) {
    if (trainable && !p->data)                /* its values live in a frozen storage (4-bit, ggml blocks) */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s is stored frozen (4-bit or ggml blocks) and cannot be "
                          "trained", p->name ? p->name : "a parameter");
    if (trainable && !p->grad) {
        p->grad = (float *)peft__calloc((size_t)p->n * sizeof(float));
        if (!p->grad) return peft__fail(PEFT_ERR_NOMEM, "no memory for the gradient of %s",
                                        p->name ? p->name : "a parameter");
    }
    if (!trainable && p->grad) {
        PEFT_FREE(p->grad);
        p->grad = NULL;
    }
    p->requires_grad = trainable ? 1 : 0;
    return PEFT_OK;
}

PEFTDEF void peft_param_free(peft_tensor *p) {
    if (!p) return;
    PEFT_FREE(p->data);
    PEFT_FREE(p->grad);
    PEFT_FREE((void *)p->name);
    PEFT_FREE(p);
}

/* ============================================================================
   KERNELS: matrix multiply
   ============================================================================
   Training needs three shapes: y = x·Wᵀ (forward), dx = dy·W, dW = dyᵀ·x.
   All are C = beta*C + op(A)·op(B). The blocked kernel packs a KC×NC panel
   of op(B) into NR-wide column strips and an MC×KC block of op(A) into
   MR-high row strips (zero-padded at the edges, transposes resolved while
   packing), then a register-tiled micro-kernel accumulates MR×NR of C over
   KC in vector registers. Vectors are GCC/Clang vector extensions, so one
   source compiles to AVX-512 (MR 12 × NR 32), AVX2/NEON (6 × 16) or SSE;
   peft_gemm_ref is the portable scalar reference the tests compare with.
   Work is split over blocks of rows of C: each element is produced by one
   thread in a fixed order, so results do not depend on the thread count. */

PEFTDEF void peft_gemm_ref(int tA, int tB, int M, int N, int K,
                           const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                float a = tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (beta == 0.0f ? 0.0f : beta * *c) + acc;
        }
}

#if defined(__AVX512F__)
#define PEFT__VW 16
#define PEFT__MR 12
#elif defined(__AVX__) || defined(__ARM_NEON)
#define PEFT__VW 8
#define PEFT__MR 6
#else                                  /* baseline x86-64 (SSE2) and the rest */
#define PEFT__VW 4
#define PEFT__MR 6
#endif
#define PEFT__NR (2 * PEFT__VW)
#ifndef PEFT__KC
#define PEFT__KC 320                    /* at most: a 320×32 B strip fills 40 KB of L1 */
#endif
#ifndef PEFT__MC
#define PEFT__MC (PEFT__MR * 8)
#endif
#define PEFT__NC 1024

#if defined(__GNUC__)
typedef float peft__vf __attribute__((vector_size(4 * PEFT__VW)));
static peft__vf peft__vload(const float *p) {
    peft__vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static void peft__vstore(float *p, peft__vf v) { memcpy(p, &v, sizeof v); }
/* The product must compile to fused multiply-adds: ISO C modes (-std=c11)
   turn GCC's contraction off, which halves the throughput, so it is asked
   for here, for the micro-kernel only. Clang also needs telling that the
   function wants the full vector width: left to its default it splits each
   512-bit operation in two 256-bit ones (and the measured peak halves).
   GCC aligns the kernel's loop to a 64-byte line: where the loop falls
   across lines it ran 3% slower (84% against 86-87% of peak, one core). */
#if defined(__clang__)
#define PEFT__FMA_KERNEL __attribute__((min_vector_width(32 * PEFT__VW)))
#define PEFT__FMA_PRAGMA _Pragma("clang fp contract(fast)")
#else
#define PEFT__FMA_KERNEL __attribute__((optimize("fp-contract=fast", "align-loops=64")))
#define PEFT__FMA_PRAGMA
#endif

/* a broadcast as a full initializer, which compilers fold into the FMA's
   memory operand; "zero + x" would cost an extra add per element */
#if PEFT__VW == 16
#define PEFT__BCAST(x) ((peft__vf){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x })
#elif PEFT__VW == 8
#define PEFT__BCAST(x) ((peft__vf){ x, x, x, x, x, x, x, x })
#else
#define PEFT__BCAST(x) ((peft__vf){ x, x, x, x })
#endif

/* C[mr×nr] (+)= Ap (kc×MR strip) · Bp (kc×NR strip): added to C, or
   stored over it when `over` (the first K slice of a product with beta 0,
   which then needs no separate pass clearing C) */
PEFT__FMA_KERNEL static void peft__ukernel(int kc, const float *Ap, const float *Bp, float *C, int ldc,
                                           int mr, int nr, int over) {
    PEFT__FMA_PRAGMA
    peft__vf z = { 0 };
    /* the C tile's lines are fetched while the products run: on big outputs
       (the vocabulary's logits) they come from memory, ~100 ns each */
    for (int i = 0; i < mr; i++) {
        __builtin_prefetch(C + (size_t)i * ldc, 1);
        __builtin_prefetch(C + (size_t)i * ldc + nr - 1, 1);
    }
    /* each macro below is applied to the MR rows of the tile, unrolled */
#if PEFT__MR == 12
#define PEFT__ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
#else
#define PEFT__ROWS(M) M(0) M(1) M(2) M(3) M(4) M(5)
#endif
#define PEFT__ACC(i) peft__vf c##i##a = z, c##i##b = z;
#define PEFT__FMA(i) { float ai = Ap[i]; peft__vf a = PEFT__BCAST(ai); c##i##a += a * b0; c##i##b += a * b1; }
#define PEFT__ADDC(i) \
    { \
        float *c = C + (size_t)(i)*ldc; \
        peft__vstore(c, peft__vload(c) + c##i##a); \
        peft__vstore(c + PEFT__VW, peft__vload(c + PEFT__VW) + c##i##b); \
    }
#define PEFT__SETC(i) \
    { \
        float *c = C + (size_t)(i)*ldc; \
        peft__vstore(c, c##i##a); \
        peft__vstore(c + PEFT__VW, c##i##b); \
    }
#define PEFT__PUT(i) \
    peft__vstore(tile + (i)*PEFT__NR, c##i##a); \
    peft__vstore(tile + (i)*PEFT__NR + PEFT__VW, c##i##b);
    PEFT__ROWS(PEFT__ACC)
    for (int k = 0; k < kc; k++, Ap += PEFT__MR, Bp += PEFT__NR) {
        peft__vf b0 = peft__vload(Bp), b1 = peft__vload(Bp + PEFT__VW);
        PEFT__ROWS(PEFT__FMA)
    }
    if (mr == PEFT__MR && nr == PEFT__NR) {          /* a full tile: straight into C */
        if (over) { PEFT__ROWS(PEFT__SETC) }
        else { PEFT__ROWS(PEFT__ADDC) }
        return;
    }
    float tile[PEFT__MR * PEFT__NR];
    PEFT__ROWS(PEFT__PUT)
#undef PEFT__ROWS
#undef PEFT__ACC
#undef PEFT__FMA
#undef PEFT__ADDC
#undef PEFT__SETC
#undef PEFT__PUT
    for (int i = 0; i < mr; i++) {
        float *c = C + (size_t)i * ldc;
        const float *t = tile + i * PEFT__NR;
        if (over) memcpy(c, t, sizeof(float) * (size_t)nr);
        else if (nr == PEFT__NR) {
            peft__vstore(c, peft__vload(c) + peft__vload(t));
            peft__vstore(c + PEFT__VW, peft__vload(c + PEFT__VW) + peft__vload(t + PEFT__VW));
        } else for (int j = 0; j < nr; j++) c[j] += t[j];
    }
}
#else
static void peft__ukernel(int kc, const float *Ap, const float *Bp, float *C, int ldc, int mr, int nr,
                          int over) {
    float tile[PEFT__MR * PEFT__NR] = { 0 };
    for (int k = 0; k < kc; k++, Ap += PEFT__MR, Bp += PEFT__NR)
        for (int i = 0; i < PEFT__MR; i++)
            for (int j = 0; j < PEFT__NR; j++) tile[i * PEFT__NR + j] += Ap[i] * Bp[j];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            C[(size_t)i * ldc + j] = (over ? 0.0f : C[(size_t)i * ldc + j]) + tile[i * PEFT__NR + j];
}
#endif

#ifndef PEFT_NO_THREADS                 /* the pool's spin timer */
static double peft__seconds(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#endif

/* Per-thread packing buffers, grown once and then reused (no allocation
   per call after the first of a given size). */
static PEFT__TLS float *peft__pack_a, *peft__pack_b;
static PEFT__TLS size_t peft__pack_a_cap, peft__pack_b_cap;

static float *peft__pack_buf(float **buf, size_t *cap, size_t n) {
    if (n > *cap) {
        PEFT_FREE(*buf);
        *buf = (float *)PEFT_MALLOC(n * sizeof(float) + 64);
        *cap = *buf ? n : 0;
    }
    return *buf;
}

/* B kept in a frozen storage (4-bit, ggml blocks) and decoded as it is
   packed: `decode` writes n values of B's stored row `row` from column
   `col` (ldb values per stored row) */
typedef struct {
    const void *w;
    void (*decode)(const void *w, int ldb, int64_t row, int64_t col, int n, float *out);
} peft__bstore;

typedef struct {
    int tA, tB, M, N, K, lda, ldb, ldc, pc, kc, jc, nc;
    int nsplit;                      /* column parts per block of rows */
    int over;                        /* this K slice stores over C (beta 0, first slice) */
    int keep_a;                      /* A packed once per K slice for all column slices */
    float *Aall;                     /* keep_a: where (the whole A of a K slice, strip by strip) */
    const float *A, *B;
    const peft__bstore *Bq;          /* or B in a frozen storage, decoded as it is packed */
    float *C;
    const float *Bp;
} peft__gemm_args;

/* dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols. Packing a
   row-major operand is this transpose; done a float at a time it costs ~7
   cycles per float (a gather from `rows` lines), so whole 8×8 tiles go
   through vector shuffles: 8 row loads, 24 shuffles, 8 column stores. */
#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 12)
typedef float peft__v8 __attribute__((vector_size(32)));
static void peft__transpose8(float *dst, int ldd, const float *src, size_t lds) {
    peft__v8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) memcpy(&r[i], src + (size_t)i * lds, sizeof r[i]);
    for (int i = 0; i < 8; i += 2) {        /* pairs of rows interleaved */
        t[i]     = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)          /* then pairs of pairs */
        for (int h = 0; h < 2; h++) {
            u[i + 2 * h]     = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            u[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int c = 0; c < 4; c++) {           /* u[c] holds columns c and c+4 of rows 0-3, u[c+4] of rows 4-7 */
        peft__v8 lo = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        peft__v8 hi = __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        memcpy(dst + (size_t)c * ldd, &lo, sizeof lo);
        memcpy(dst + (size_t)(c + 4) * ldd, &hi, sizeof hi);
    }
}
#define PEFT__HAVE_TRANSPOSE8 1
#endif

static void peft__transpose_into(float *dst, int ldd, const float *src, size_t lds, int rows, int cols) {
#ifdef PEFT__HAVE_TRANSPOSE8
    if (rows >= 8 && cols >= 8) {           /* ragged edges: the last tile overlaps the one before */
        for (int r = 0;; r += 8) {
            if (r + 8 > rows) r = rows - 8;
            for (int c = 0;; c += 8) {
                if (c + 8 > cols) c = cols - 8;
                peft__transpose8(dst + (size_t)c * ldd + r, ldd, src + (size_t)r * lds + c, lds);
                if (c + 8 == cols) break;
            }
            if (r + 8 == rows) break;
        }
        return;
    }
#endif
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
}

/* Aᵀ stored: row k of the block is mc consecutive floats of A's row pc+k,
   cut into the MR-wide strips. Row by row, and the rows a few ahead
   prefetched: on the big weight gradients (the vocabulary's dyᵀ·x) each row
   is a page or more from the next, out of the hardware prefetchers' reach,
   and the packing waited on memory for a quarter of the product's time. */
static void peft__pack_At(const peft__gemm_args *g, int ic, int mc, float *Ap) {
    int full = mc / PEFT__MR * PEFT__MR, mr = mc - full;
    size_t strip = (size_t)PEFT__MR * g->kc;
    for (int k = 0; k < g->kc; k++) {
        const float *src = g->A + (size_t)(g->pc + k) * g->lda + ic;
        if (k + 8 < g->kc)
            for (int c = 0; c < mc; c += 16) __builtin_prefetch(src + 8 * (size_t)g->lda + c);
        float *dst = Ap + (size_t)k * PEFT__MR;
        /* a constant size: inlined as vector moves */
        for (int i0 = 0; i0 < full; i0 += PEFT__MR, dst += strip)
            memcpy(dst, src + i0, sizeof(float) * PEFT__MR);
        if (mr) {
            memcpy(dst, src + full, sizeof(float) * (size_t)mr);
            for (int i = mr; i < PEFT__MR; i++) dst[i] = 0.0f;
        }
    }
}

static void peft__pack_A(const peft__gemm_args *g, int ic, int mc, float *Ap) {
    if (g->tA) {
        peft__pack_At(g, ic, mc, Ap);
        return;
    }
    for (int i0 = 0; i0 < mc; i0 += PEFT__MR, Ap += (size_t)PEFT__MR * g->kc) {
        int mr = mc - i0 < PEFT__MR ? mc - i0 : PEFT__MR;
        peft__transpose_into(Ap, PEFT__MR, g->A + (size_t)(ic + i0) * g->lda + g->pc, (size_t)g->lda, mr,
                             g->kc);
        if (mr < PEFT__MR)
            for (int k = 0; k < g->kc; k++)
                for (int i = mr; i < PEFT__MR; i++) Ap[(size_t)k * PEFT__MR + i] = 0.0f;
    }
}

/* a strip of stored B decoded straight into its packed panel: no fp32 copy
   of the weight is ever made. B(k, j) = W[j][k] (tB) or W[k][j]. Each call
   decodes a run of one row, so a block's scales are read once per run. */
static void peft__pack_B_stored(const peft__gemm_args *g, int j0, int nr, float *Bp) {
    const peft__bstore *W = g->Bq;
    if (g->tB) {                 /* nr rows of W, kc values each, decoded then transposed */
        float rows[PEFT__NR * PEFT__KC];                            /* 40 KB */
        for (int j = 0; j < nr; j++)
            W->decode(W->w, g->ldb, g->jc + j0 + j, g->pc, g->kc, rows + (size_t)j * g->kc);
        peft__transpose_into(Bp, PEFT__NR, rows, (size_t)g->kc, nr, g->kc);
    } else                       /* row k of the panel is nr consecutive values of W's row */
        for (int k = 0; k < g->kc; k++)
            W->decode(W->w, g->ldb, g->pc + k, g->jc + j0, nr, Bp + (size_t)k * PEFT__NR);
    if (nr < PEFT__NR)
        for (int k = 0; k < g->kc; k++)
            for (int j = nr; j < PEFT__NR; j++) Bp[(size_t)k * PEFT__NR + j] = 0.0f;
}

/* packs the NR-wide strips [s0, s1) of the panel; strips are independent,
   so the threads share the packing (it is most of the work when M is small) */
static void peft__pack_B_range(void *vctx, int64_t s0, int64_t s1) {
    const peft__gemm_args *g = (const peft__gemm_args *)vctx;
    float *Bp = (float *)g->Bp + (size_t)s0 * PEFT__NR * g->kc;
    for (int j0 = (int)s0 * PEFT__NR; j0 < g->nc && j0 < (int)s1 * PEFT__NR;
         j0 += PEFT__NR, Bp += (size_t)PEFT__NR * g->kc) {
        int nr = g->nc - j0 < PEFT__NR ? g->nc - j0 : PEFT__NR;
        if (g->Bq) {
            peft__pack_B_stored(g, j0, nr, Bp);
            continue;
        }
        if (g->tB)
            peft__transpose_into(Bp, PEFT__NR, g->B + (size_t)(g->jc + j0) * g->ldb + g->pc, (size_t)g->ldb,
                                 nr, g->kc);
        if (!g->tB && nr == PEFT__NR)
            for (int k = 0; k < g->kc; k++)
                memcpy(Bp + (size_t)k * PEFT__NR, g->B + (size_t)(g->pc + k) * g->ldb + g->jc + j0,
                       sizeof(float) * PEFT__NR);
        else if (nr < PEFT__NR)
            for (int k = 0; k < g->kc; k++) {
                float *dst = Bp + (size_t)k * PEFT__NR;
                if (!g->tB)
                    memcpy(dst, g->B + (size_t)(g->pc + k) * g->ldb + g->jc + j0, sizeof(float) * (size_t)nr);
                for (int j = nr; j < PEFT__NR; j++) dst[j] = 0.0f;
            }
    }
}

/* the micro-kernels of one packed block of A (rows ic.., mc of them)
   against the packed column strips [j_begin, j_end) of B */
static void peft__run_block(const peft__gemm_args *g, const float *Ap, int ic, int mc, int j_begin,
                            int j_end) {
    for (int j0 = j_begin; j0 < g->nc && j0 < j_end; j0 += PEFT__NR) {
        int nr = g->nc - j0 < PEFT__NR ? g->nc - j0 : PEFT__NR;
        const float *Bs = g->Bp + (size_t)j0 * g->kc;
        for (int i0 = 0; i0 < mc; i0 += PEFT__MR) {
            int mr = mc - i0 < PEFT__MR ? mc - i0 : PEFT__MR;
            peft__ukernel(g->kc, Ap + (size_t)i0 * g->kc, Bs, g->C + (size_t)(ic + i0) * g->ldc + g->jc + j0,
                          g->ldc, mr, nr, g->over);
        }
    }
}

/* No memory for a packing buffer: A packed one MR-row strip at a time on
   the stack. The micro-kernel sees the same strips and adds the same K
   slices in the same order: the same result, bit for bit, only slower. */
static void peft__run_block_stack(const peft__gemm_args *g, int ic, int mc, int j_begin, int j_end) {
    _Alignas(64) float Ap[PEFT__MR * PEFT__KC];
    for (int i0 = 0; i0 < mc; i0 += PEFT__MR) {
        int mr = mc - i0 < PEFT__MR ? mc - i0 : PEFT__MR;
        peft__pack_A(g, ic + i0, mr, Ap);
        peft__run_block(g, Ap, ic + i0, mr, j_begin, j_end);
    }
}

/* one thread: work units [u0, u1), each a block of MC rows times a range of
   NR-wide column strips (rows alone when there are enough row blocks) */
static void peft__gemm_mblocks(void *vctx, int64_t u0, int64_t u1) {
    const peft__gemm_args *g = (const peft__gemm_args *)vctx;
    float *Ap = peft__pack_buf(&peft__pack_a, &peft__pack_a_cap, (size_t)PEFT__MC * PEFT__KC);
    int panels = (g->nc + PEFT__NR - 1) / PEFT__NR;
    for (int64_t u = u0; u < u1; u++) {
        int64_t blk = u / g->nsplit, part = u % g->nsplit;
        int ic = (int)blk * PEFT__MC, mc = g->M - ic < PEFT__MC ? g->M - ic : PEFT__MC;
        int p0 = (int)(panels * part / g->nsplit), p1 = (int)(panels * (part + 1) / g->nsplit);
        if (p1 <= p0) continue;
        if (!Ap) {
            peft__run_block_stack(g, ic, mc, p0 * PEFT__NR, p1 * PEFT__NR);
            continue;
        }
        peft__pack_A(g, ic, mc, Ap);
        peft__run_block(g, Ap, ic, mc, p0 * PEFT__NR, p1 * PEFT__NR);
    }
}

/* the caller's buffer of packed A kept across column slices (keep_a) */
static PEFT__TLS float *peft__pack_a_all;
static PEFT__TLS size_t peft__pack_a_all_cap;

/* one chunk: MR-row strips [s0, s1), in blocks of at most MC rows, each
   block's A packed once and run against every column strip. Splitting by
   strips balances the threads to within one strip without cutting rows
   into column parts that would pack the same A block twice. */
static void peft__gemm_strips(void *vctx, int64_t s0, int64_t s1) {
    const peft__gemm_args *g = (const peft__gemm_args *)vctx;
    /* Aall: the whole A of the K slice, packed strip by strip at the first
       column slice and kept for the others (any thread may run any strips:
       every strip has its own place) */
    float *Ap = g->Aall ? g->Aall
                        : peft__pack_buf(&peft__pack_a, &peft__pack_a_cap, (size_t)PEFT__MC * PEFT__KC);
    for (int64_t b0 = s0; b0 < s1; b0 += PEFT__MC / PEFT__MR) {
        int64_t b1 = b0 + PEFT__MC / PEFT__MR < s1 ? b0 + PEFT__MC / PEFT__MR : s1;
        int ic = (int)b0 * PEFT__MR,
            mc = g->M - ic < (int)(b1 - b0) * PEFT__MR ? g->M - ic : (int)(b1 - b0) * PEFT__MR;
        if (!Ap) {
            peft__run_block_stack(g, ic, mc, 0, g->nc);
            continue;
        }
        if (g->Aall) {
            Ap = g->Aall + (size_t)b0 * PEFT__MR * g->kc;
            if (g->jc == 0) peft__pack_A(g, ic, mc, Ap);
        } else peft__pack_A(g, ic, mc, Ap);
        peft__run_block(g, Ap, ic, mc, 0, g->nc);
    }
}

static void peft__scale_rows(void *vctx, int64_t r0, int64_t r1) {
    const peft__gemm_args *g = (const peft__gemm_args *)vctx;
    float beta = *(const float *)g->Bp;
    for (int64_t i = r0; i < r1; i++) {
        float *c = g->C + (size_t)i * g->ldc;
        if (beta == 0.0f) memset(c, 0, sizeof(float) * (size_t)g->N);
        else for (int j = 0; j < g->N; j++) c[j] *= beta;
    }
}

/* The slices a product cuts B into: N in equal slices of at most NC, whole
   NR strips each (1536 columns are two slices of 768, not 1024 + 512); K in
   equal slices of at most KC: no short last slice, whose C tile traffic
   would cost more than its few multiply-adds. They depend on N and K only,
   so a B used by many products can be packed once for all of them. */
typedef struct { int nslices, nc_even, kslices, kc_even; size_t slice_floats; } peft__gemm_slicing;

static peft__gemm_slicing peft__slicing(int N, int K) {
    peft__gemm_slicing s;
    s.nslices = (N + PEFT__NC - 1) / PEFT__NC;
    s.nc_even = ((N + s.nslices - 1) / s.nslices + PEFT__NR - 1) / PEFT__NR * PEFT__NR;
    s.kslices = (K + PEFT__KC - 1) / PEFT__KC;
    s.kc_even = (K + s.kslices - 1) / s.kslices;
    s.slice_floats = (size_t)s.nc_even * (size_t)s.kc_even;     /* nc_even is whole strips */
    return s;
}

/* floats that B [K×N] takes packed whole: every slice at its own place */
static size_t peft__gemm_packed_floats(int N, int K) {
    if (N <= 0 || K <= 0) return 0;
    peft__gemm_slicing s = peft__slicing(N, K);
    return (size_t)s.nslices * (size_t)s.kslices * s.slice_floats;
}

static void peft__slice(const peft__gemm_slicing *s, peft__gemm_args *g, int js, int ks) {
    g->jc = js * s->nc_even;
    g->nc = g->N - g->jc < s->nc_even ? g->N - g->jc : s->nc_even;
    g->pc = ks * s->kc_even;
    g->kc = g->K - g->pc < s->kc_even ? g->K - g->pc : s->kc_even;
}

/* B packed whole into dst (peft__gemm_packed_floats of room), for products
   that pass it as Bpre: the same panels their own packing would make */
static void peft__gemm_pack_B(int tB, int N, int K, const float *B, int ldb, float *dst) {
    if (N <= 0 || K <= 0) return;
    peft__gemm_slicing s = peft__slicing(N, K);
    peft__gemm_args g;
    memset(&g, 0, sizeof g);
    g.tB = tB;
    g.N = N;
    g.K = K;
    g.ldb = ldb;
    g.B = B;
    for (int js = 0; js < s.nslices; js++)
        for (int ks = 0; ks < s.kslices; ks++) {
            peft__slice(&s, &g, js, ks);
            g.Bp = dst + ((size_t)js * s.kslices + ks) * s.slice_floats;
            peft__parallel_for((int64_t)(g.nc + PEFT__NR - 1) / PEFT__NR, 4, peft__pack_B_range, &g);
        }
}

/* peft_gemm, with B either floats, or a frozen storage (Bq: 4-bit, ggml
   blocks; B unused), or packed already (Bpre, from peft__gemm_pack_B of this
   B); without memory for its buffers it packs on the stack (same result):
   it does not fail */
static peft_status peft__gemm(int tA, int tB, int M, int N, int K,
                              const float *A, int lda, const float *B, const peft__bstore *Bq,
                              const float *Bpre, int ldb,
                              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return PEFT_OK;
    peft__gemm_args g;
    memset(&g, 0, sizeof g);
    g.tA = tA;
    g.tB = tB;
    g.M = M;
    g.N = N;
    g.K = K;
    g.lda = lda;
    g.ldb = ldb;
    g.ldc = ldc;
    g.A = A;
    g.B = B;
    g.Bq = Bq;
    g.C = C;
    if (beta != 1.0f && (beta != 0.0f || K <= 0)) {   /* beta 0 is the first K slice storing over C */
        g.Bp = &beta;
        peft__parallel_for(M, 64, peft__scale_rows, &g);
    }
    if (K <= 0) return PEFT_OK;
    int64_t mblocks = (M + PEFT__MC - 1) / PEFT__MC, strips = (M + PEFT__MR - 1) / PEFT__MR;
    peft__gemm_slicing s = peft__slicing(N, K);
    int nslices = s.nslices, kslices = s.kslices, kc_even = s.kc_even;
    /* Many column slices over few enough rows (the logits: a few hundred
       rows × the vocabulary): K slices outside, each thread's A packed
       once per K slice instead of once per column slice. Either loop order
       adds the K slices into C in the same order: identical results. */
    g.keep_a = nslices > 1 && strips >= 4 * peft__nthreads &&
               (size_t)strips * PEFT__MR * (size_t)kc_even * sizeof(float) <= (size_t)peft__nthreads << 22;
    if (g.keep_a) {                             /* 4 MB of packed A per thread at most */
        g.Aall = peft__pack_buf(&peft__pack_a_all, &peft__pack_a_all_cap,
                                (size_t)strips * PEFT__MR * (size_t)kc_even);
        g.keep_a = g.Aall != NULL;
    }
    float *Bp = Bpre ? NULL : peft__pack_buf(&peft__pack_b, &peft__pack_b_cap, s.slice_floats);
    if (!Bp && !Bpre) {
        /* no memory to pack B: one NR-wide panel at a time on the stack, on
           this thread, A a strip at a time; the same kernels over the same
           panels in the same K order, so the same result as the fast path */
        _Alignas(64) float panel[PEFT__NR * PEFT__KC];
        for (int js = 0; js < nslices; js++)
            for (int ks = 0; ks < kslices; ks++) {
                peft__slice(&s, &g, js, ks);
                g.over = beta == 0.0f && g.pc == 0;
                peft__gemm_args one = g;
                one.Bp = panel;
                for (int j0 = 0; j0 < g.nc; j0 += PEFT__NR) {
                    one.jc = g.jc + j0;
                    one.nc = g.nc - j0 < PEFT__NR ? g.nc - j0 : PEFT__NR;
                    peft__pack_B_range(&one, 0, 1);
                    peft__run_block_stack(&one, 0, M, 0, one.nc);
                }
            }
        return PEFT_OK;
    }
    g.Bp = Bp;
    for (int o = 0; o < nslices * kslices; o++) {          /* keep_a: K slices outer; else column slices */
        int js = g.keep_a ? o % nslices : o / kslices, ks = g.keep_a ? o / nslices : o % kslices;
        peft__slice(&s, &g, js, ks);
        g.over = beta == 0.0f && g.pc == 0;
        size_t panels = (size_t)(g.nc + PEFT__NR - 1) / PEFT__NR;
        if (Bpre) g.Bp = Bpre + ((size_t)js * kslices + ks) * s.slice_floats;
        else peft__parallel_for((int64_t)panels, 4, peft__pack_B_range, &g);
        if (strips >= 4 * peft__nthreads) {
            peft__parallel_for(strips, 1, peft__gemm_strips, &g);
            continue;
        }
        /* few rows: split columns too until the units divide evenly
           among the threads */
        g.nsplit = 1;
        while (g.nsplit < (int)panels &&
               (mblocks * g.nsplit < 2 * peft__nthreads || (mblocks * g.nsplit) % peft__nthreads))
            g.nsplit++;
        peft__parallel_for(mblocks * g.nsplit, 1, peft__gemm_mblocks, &g);
    }
    return PEFT_OK;
}

PEFTDEF void peft_gemm(int tA, int tB, int M, int N, int K,
                       const float *A, int lda, const float *B, int ldb,
                       float beta, float *C, int ldc) {
    (void)peft__gemm(tA, tB, M, N, K, A, lda, B, NULL, NULL, ldb, beta, C, ldc);
}

/* ============================================================================
   KERNELS: 4-bit and 8-bit blockwise quantization (bitsandbytes' layout)
   ============================================================================
   4-bit: per block of 64, absmax = max|x|; x·(1/absmax) clamped to [−1, 1]
   goes to the code whose interval (between midpoints of the sorted code)
   holds it, ties to the lower one; a partial last block divides by its
   absmax instead. Double quantization: absmax − mean(absmax) in 8 bits with
   the signed dynamic map, blocks of 256. These follow bitsandbytes' CPU path
   exactly (tests compare bytes with bnb's output). */

static const float peft__nf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f };
/* bnb's FP4 (1 sign, 2 exponent, 1 mantissa bits), scaled so the largest is 1 */
static const float peft__fp4[16] = {
    0.0f, 0x1.555556p-8f, 0x1.555556p-1f, 1.0f, 0x1.555556p-2f, 0.5f, 0x1.555556p-3f, 0.25f,
    0.0f, -0x1.555556p-8f, -0x1.555556p-1f, -1.0f, -0x1.555556p-2f, -0.5f, -0x1.555556p-3f, -0.25f };
/* FP4 codes in ascending order, as bnb sorts them (argsort of the table) */
static const uint8_t peft__fp4_order[16] = { 11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3 };
/* symmetric Int4: q ∈ [1, 15] means (q − 8)/7 of the block's absmax */
static const float peft__int4[16] = {
    -8.0f / 7, -1.0f, -6.0f / 7, -5.0f / 7, -4.0f / 7, -3.0f / 7, -2.0f / 7, -1.0f / 7,
    0.0f, 1.0f / 7, 2.0f / 7, 3.0f / 7, 4.0f / 7, 5.0f / 7, 6.0f / 7, 1.0f };
/* bitsandbytes.functional.create_dynamic_map() (signed, 7 exponent bits),
   dumped from bitsandbytes 0.50.2 */
static const float peft__dynamic_map[256] = {
    -0x1.fc66660000000p-1f, -0x1.f533340000000p-1f, -0x1.ee00000000000p-1f, -0x1.e6cccc0000000p-1f,
    -0x1.df999a0000000p-1f, -0x1.d866660000000p-1f, -0x1.d133340000000p-1f, -0x1.ca00000000000p-1f,
    -0x1.c2cccc0000000p-1f, -0x1.bb999a0000000p-1f, -0x1.b466660000000p-1f, -0x1.ad33340000000p-1f,
    -0x1.a600000000000p-1f, -0x1.9ecccc0000000p-1f, -0x1.97999a0000000p-1f, -0x1.9066660000000p-1f,
    -0x1.8933340000000p-1f, -0x1.8200000000000p-1f, -0x1.7acccc0000000p-1f, -0x1.73999a0000000p-1f,
    -0x1.6c66680000000p-1f, -0x1.6533340000000p-1f, -0x1.5e00000000000p-1f, -0x1.56cccc0000000p-1f,
    -0x1.4f999a0000000p-1f, -0x1.4866680000000p-1f, -0x1.4133340000000p-1f, -0x1.3a00000000000p-1f,
    -0x1.32cccc0000000p-1f, -0x1.2b999a0000000p-1f, -0x1.2466680000000p-1f, -0x1.1d33340000000p-1f,
    -0x1.1600000000000p-1f, -0x1.0ecccc0000000p-1f, -0x1.0799980000000p-1f, -0x1.0066660000000p-1f,
    -0x1.f266640000000p-2f, -0x1.e400000000000p-2f, -0x1.d599980000000p-2f, -0x1.c733340000000p-2f,
    -0x1.b8cccc0000000p-2f, -0x1.aa66660000000p-2f, -0x1.9c00000000000p-2f, -0x1.8d99980000000p-2f,
    -0x1.7f33340000000p-2f, -0x1.70cccc0000000p-2f, -0x1.6266660000000p-2f, -0x1.5400000000000p-2f,
    -0x1.4599980000000p-2f, -0x1.3733340000000p-2f, -0x1.28cccc0000000p-2f, -0x1.1a66680000000p-2f,
    -0x1.0c00000000000p-2f, -0x1.fb33320000000p-3f, -0x1.de66660000000p-3f, -0x1.c1999a0000000p-3f,
    -0x1.a4cccc0000000p-3f, -0x1.8800000000000p-3f, -0x1.6b33340000000p-3f, -0x1.4e66660000000p-3f,
    -0x1.31999a0000000p-3f, -0x1.14cccc0000000p-3f, -0x1.f000000000000p-4f, -0x1.b666680000000p-4f,
    -0x1.93d70a0000000p-4f, -0x1.8851ee0000000p-4f, -0x1.7cccce0000000p-4f, -0x1.7147ae0000000p-4f,
    -0x1.65c2900000000p-4f, -0x1.5a3d700000000p-4f, -0x1.4eb8540000000p-4f, -0x1.4333340000000p-4f,
    -0x1.37ae140000000p-4f, -0x1.2c28f60000000p-4f, -0x1.20a3d60000000p-4f, -0x1.151eba0000000p-4f,
    -0x1.09999a0000000p-4f, -0x1.fc28f60000000p-5f, -0x1.e51eba0000000p-5f, -0x1.ce147a0000000p-5f,
    -0x1.b70a3e0000000p-5f, -0x1.a000000000000p-5f, -0x1.88f5c20000000p-5f, -0x1.71eb860000000p-5f,
    -0x1.5ae1460000000p-5f, -0x1.43d70a0000000p-5f, -0x1.2cccce0000000p-5f, -0x1.15c2900000000p-5f,
    -0x1.fd70a40000000p-6f, -0x1.cf5c2a0000000p-6f, -0x1.a147ae0000000p-6f, -0x1.7333340000000p-6f,
    -0x1.451eba0000000p-6f, -0x1.170a3e0000000p-6f, -0x1.d1eb860000000p-7f, -0x1.75c2900000000p-7f,
    -0x1.3e76c80000000p-7f, -0x1.2c08300000000p-7f, -0x1.19999a0000000p-7f, -0x1.072b020000000p-7f,
    -0x1.e978d40000000p-8f, -0x1.c49ba60000000p-8f, -0x1.9fbe760000000p-8f, -0x1.7ae1480000000p-8f,
    -0x1.56041a0000000p-8f, -0x1.3126e80000000p-8f, -0x1.0c49ba0000000p-8f, -0x1.ced9140000000p-9f,
    -0x1.851eb80000000p-9f, -0x1.3b645a0000000p-9f, -0x1.e353f80000000p-10f, -0x1.4fdf3a0000000p-10f,
    -0x1.eecbfe0000000p-11f, -0x1.b3d07c0000000p-11f, -0x1.78d5000000000p-11f, -0x1.3dd9820000000p-11f,
    -0x1.02de020000000p-11f, -0x1.8fc5060000000p-12f, -0x1.19ce0a0000000p-12f, -0x1.47ae160000000p-13f,
    -0x1.743e960000000p-14f, -0x1.15df660000000p-14f, -0x1.6f00680000000p-15f, -0x1.64840c0000000p-16f,
    -0x1.040bfe0000000p-17f, -0x1.b435280000000p-19f, -0x1.27476e0000000p-21f, 0x0.0p+0f,
    0x1.27476e0000000p-21f, 0x1.b435280000000p-19f, 0x1.040bfe0000000p-17f, 0x1.64840c0000000p-16f,
    0x1.6f00680000000p-15f, 0x1.15df660000000p-14f, 0x1.743e960000000p-14f, 0x1.47ae160000000p-13f,
    0x1.19ce0a0000000p-12f, 0x1.8fc5060000000p-12f, 0x1.02de020000000p-11f, 0x1.3dd9820000000p-11f,
    0x1.78d5000000000p-11f, 0x1.b3d07c0000000p-11f, 0x1.eecbfe0000000p-11f, 0x1.4fdf3a0000000p-10f,
    0x1.e353f80000000p-10f, 0x1.3b645a0000000p-9f, 0x1.851eb80000000p-9f, 0x1.ced9140000000p-9f,
    0x1.0c49ba0000000p-8f, 0x1.3126e80000000p-8f, 0x1.56041a0000000p-8f, 0x1.7ae1480000000p-8f,
    0x1.9fbe760000000p-8f, 0x1.c49ba60000000p-8f, 0x1.e978d40000000p-8f, 0x1.072b020000000p-7f,
    0x1.19999a0000000p-7f, 0x1.2c08300000000p-7f, 0x1.3e76c80000000p-7f, 0x1.75c2900000000p-7f,
    0x1.d1eb860000000p-7f, 0x1.170a3e0000000p-6f, 0x1.451eba0000000p-6f, 0x1.7333340000000p-6f,
    0x1.a147ae0000000p-6f, 0x1.cf5c2a0000000p-6f, 0x1.fd70a40000000p-6f, 0x1.15c2900000000p-5f,
    0x1.2cccce0000000p-5f, 0x1.43d70a0000000p-5f, 0x1.5ae1460000000p-5f, 0x1.71eb860000000p-5f,
    0x1.88f5c20000000p-5f, 0x1.a000000000000p-5f, 0x1.b70a3e0000000p-5f, 0x1.ce147a0000000p-5f,
    0x1.e51eba0000000p-5f, 0x1.fc28f60000000p-5f, 0x1.09999a0000000p-4f, 0x1.151eba0000000p-4f,
    0x1.20a3d60000000p-4f, 0x1.2c28f60000000p-4f, 0x1.37ae140000000p-4f, 0x1.4333340000000p-4f,
    0x1.4eb8540000000p-4f, 0x1.5a3d700000000p-4f, 0x1.65c2900000000p-4f, 0x1.7147ae0000000p-4f,
    0x1.7cccce0000000p-4f, 0x1.8851ee0000000p-4f, 0x1.93d70a0000000p-4f, 0x1.b666680000000p-4f,
    0x1.f000000000000p-4f, 0x1.14cccc0000000p-3f, 0x1.31999a0000000p-3f, 0x1.4e66660000000p-3f,
    0x1.6b33340000000p-3f, 0x1.8800000000000p-3f, 0x1.a4cccc0000000p-3f, 0x1.c1999a0000000p-3f,
    0x1.de66660000000p-3f, 0x1.fb33320000000p-3f, 0x1.0c00000000000p-2f, 0x1.1a66680000000p-2f,
    0x1.28cccc0000000p-2f, 0x1.3733340000000p-2f, 0x1.4599980000000p-2f, 0x1.5400000000000p-2f,
    0x1.6266660000000p-2f, 0x1.70cccc0000000p-2f, 0x1.7f33340000000p-2f, 0x1.8d99980000000p-2f,
    0x1.9c00000000000p-2f, 0x1.aa66660000000p-2f, 0x1.b8cccc0000000p-2f, 0x1.c733340000000p-2f,
    0x1.d599980000000p-2f, 0x1.e400000000000p-2f, 0x1.f266640000000p-2f, 0x1.0066660000000p-1f,
    0x1.0799980000000p-1f, 0x1.0ecccc0000000p-1f, 0x1.1600000000000p-1f, 0x1.1d33340000000p-1f,
    0x1.2466680000000p-1f, 0x1.2b999a0000000p-1f, 0x1.32cccc0000000p-1f, 0x1.3a00000000000p-1f,
    0x1.4133340000000p-1f, 0x1.4866680000000p-1f, 0x1.4f999a0000000p-1f, 0x1.56cccc0000000p-1f,
    0x1.5e00000000000p-1f, 0x1.6533340000000p-1f, 0x1.6c66680000000p-1f, 0x1.73999a0000000p-1f,
    0x1.7acccc0000000p-1f, 0x1.8200000000000p-1f, 0x1.8933340000000p-1f, 0x1.9066660000000p-1f,
    0x1.97999a0000000p-1f, 0x1.9ecccc0000000p-1f, 0x1.a600000000000p-1f, 0x1.ad33340000000p-1f,
    0x1.b466660000000p-1f, 0x1.bb999a0000000p-1f, 0x1.c2cccc0000000p-1f, 0x1.ca00000000000p-1f,
    0x1.d133340000000p-1f, 0x1.d866660000000p-1f, 0x1.df999a0000000p-1f, 0x1.e6cccc0000000p-1f,
    0x1.ee00000000000p-1f, 0x1.f533340000000p-1f, 0x1.fc66660000000p-1f, 0x1.0000000000000p+0f,
};

PEFTDEF const float *peft_q4_code(peft_q4_type t) {
    return t == PEFT_FP4 ? peft__fp4 : t == PEFT_INT4 ? peft__int4 : peft__nf4;
}
PEFTDEF const float *peft_dynamic_map(void) { return peft__dynamic_map; }

/* code index for a value in [−1, 1] */
static uint8_t peft__q4_index(peft_q4_type t, float x, const float *bounds) {
    if (t == PEFT_INT4) {
        float r = x * 7.0f;
        int q = (int)(r < 0 ? -floorf(-r + 0.5f) : floorf(r + 0.5f));
        return (uint8_t)(q + 8);
    }
    int i = 0;                                   /* bucketize: #bounds < x */
    while (i < 15 && bounds[i] < x) i++;
    return t == PEFT_FP4 ? peft__fp4_order[i] : (uint8_t)i;
}

static void peft__q4_bounds(peft_q4_type t, float *bounds) {
    for (int i = 0; i < 15; i++) {
        float a = t == PEFT_FP4 ? peft__fp4[peft__fp4_order[i]] : peft__nf4[i];
        float b = t == PEFT_FP4 ? peft__fp4[peft__fp4_order[i + 1]] : peft__nf4[i + 1];
        bounds[i] = (a + b) / 2.0f;
    }
}

/* bitsandbytes' CPU kernel does not search the code with the value itself:
   it snaps the normalised value to a grid of 65,536 points on [−1, 1]
   (k = rint((v + 1)·32767.5)) and takes the code nearest to that grid point
   (ties to the lower code). Found by probing bnb 0.50.2 with 20,001 values;
   reproduced here exactly, so 8-bit codes (double quantization, 8-bit
   optimizer states) equal bnb's byte for byte. */
static uint8_t peft__nearest_code(const float *code, double g) {
    int lo = 0, hi = 255;                       /* largest lo with code[lo] <= g */
    if (g <= code[0]) return 0;
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

PEFTDEF void peft_quantize_blockwise8(const float *x, int64_t n, int blocksize, const float *code,
                                      uint8_t *q, float *absmax) {
    for (int64_t b0 = 0; b0 < n; b0 += blocksize) {
        int64_t b1 = b0 + blocksize < n ? b0 + blocksize : n;
        float am = -FLT_MAX;
        for (int64_t i = b0; i < b1; i++) am = fmaxf(am, fabsf(x[i]));
        absmax[b0 / blocksize] = am;
        for (int64_t i = b0; i < b1; i++) {
            float v = x[i] / am;
            float t = (v + 1.0f) * 32767.5f;
            long k = lrintf(t);
            k = k < 0 ? 0 : k > 65535 ? 65535 : k;
            q[i] = peft__nearest_code(code, (double)k / 32767.5 - 1.0);
        }
    }
}

PEFTDEF void peft_dequantize_blockwise8(const uint8_t *q, int64_t n, int blocksize, const float *code,
                                        const float *absmax, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = code[q[i]] * absmax[i / blocksize];
}

PEFTDEF peft_status peft_q4_quantize(peft_q4 *q, const float *w, int64_t n, peft_q4_type t,
                                     int double_quant, const float *offset) {
    memset(q, 0, sizeof *q);
    q->type = t;
    q->n = n;
    q->blocksize = 64;
    q->nested_blocksize = 256;
    q->double_quant = double_quant;
    q->n_blocks = (n + 63) / 64;
    q->n_nested = (q->n_blocks + 255) / 256;
    q->packed = (uint8_t *)PEFT_MALLOC((size_t)(n + 1) / 2);
    float *am = (float *)PEFT_MALLOC(sizeof(float) * (size_t)q->n_blocks);
    if (!q->packed || !am) {
        PEFT_FREE(am);
        peft_q4_free(q);
        return peft__fail(PEFT_ERR_NOMEM, "no memory for 4-bit storage");
    }
    float bounds[15];
    peft__q4_bounds(t, bounds);
    uint8_t pad = peft__q4_index(t, 0.0f, bounds);   /* an odd count pads with a quantized 0 */
    for (int64_t b = 0; b < q->n_blocks; b++) {
        int64_t i0 = b * 64, i1 = i0 + 64 < n ? i0 + 64 : n;
        float mx = 0.0f;
        for (int64_t i = i0; i < i1; i++) mx = fmaxf(mx, fabsf(w[i]));
        int full = i1 - i0 == 64;
        float safe = mx > 1e-38f ? mx : 1e-38f, inv = 1.0f / safe;
        am[b] = full ? mx : safe;                    /* bnb clamps only the partial block's absmax */
        for (int64_t i = i0; i < i1; i++) {
            float s = full ? w[i] * inv : w[i] / safe;
            s = s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
            uint8_t c = peft__q4_index(t, s, bounds);
            if (i % 2 == 0) q->packed[i / 2] = (uint8_t)(c << 4 | pad);
            else q->packed[i / 2] = (uint8_t)((q->packed[i / 2] & 0xF0) | c);
        }
    }
    if (!double_quant) {
        q->absmax = am;
        return PEFT_OK;
    }
    double mean = 0.0;
    for (int64_t b = 0; b < q->n_blocks; b++) mean += am[b];
    q->offset = offset ? *offset : (float)(mean / (double)q->n_blocks);
    q->qabsmax = (uint8_t *)PEFT_MALLOC((size_t)q->n_blocks);
    q->nested_absmax = (float *)PEFT_MALLOC(sizeof(float) * (size_t)q->n_nested);
    if (!q->qabsmax || !q->nested_absmax) {
        PEFT_FREE(am);
        peft_q4_free(q);
        return peft__fail(PEFT_ERR_NOMEM, "no memory");
    }
    for (int64_t b = 0; b < q->n_blocks; b++) am[b] -= q->offset;
    peft_quantize_blockwise8(am, q->n_blocks, 256, peft__dynamic_map, q->qabsmax, q->nested_absmax);
    PEFT_FREE(am);
    return PEFT_OK;
}

PEFTDEF float peft_q4_block_scale(const peft_q4 *q, int64_t b) {
    if (!q->double_quant) return q->absmax[b];
    /* two roundings, as bnb (torch) does: a separate statement keeps compilers
       that contract within expressions (clang's default) from fusing an FMA */
    float scaled = peft__dynamic_map[q->qabsmax[b]] * q->nested_absmax[b / 256];
    return scaled + q->offset;
}

PEFTDEF void peft_q4_dequantize(const peft_q4 *q, int64_t start, int64_t count, float *out) {
    const float *code = peft_q4_code(q->type);
    int64_t i = start, end = start + count;
    while (i < end) {
        int64_t b = i / 64, bend = (b + 1) * 64 < end ? (b + 1) * 64 : end;
        float s = peft_q4_block_scale(q, b);
        for (; i < bend; i++) {
            uint8_t byte = q->packed[i / 2];
            *out++ = code[(i & 1) ? (byte & 0x0F) : (byte >> 4)] * s;
        }
    }
}

PEFTDEF size_t peft_q4_bytes(const peft_q4 *q) {
    size_t b = (size_t)(q->n + 1) / 2;
    if (q->double_quant) b += (size_t)q->n_blocks + sizeof(float) * (size_t)q->n_nested + sizeof(float);
    else b += sizeof(float) * (size_t)q->n_blocks;
    return b;
}

PEFTDEF void peft_q4_free(peft_q4 *q) {
    if (!q) return;
    PEFT_FREE(q->packed);
    PEFT_FREE(q->absmax);
    PEFT_FREE(q->qabsmax);
    PEFT_FREE(q->nested_absmax);
    memset(q, 0, sizeof *q);
}

/* ============================================================================
   KERNELS: ggml block types
   ============================================================================
   A quantized row is a run of blocks; each block holds fp16 scale(s) and
   packed codes (ggml-common.h's block_* structs, little-endian):
     Q4_0  [d][16 B: 32 4-bit q]            x = d·(q − 8)
     Q4_1  [d][m][16 B]                     x = d·q + m
     Q5_0  [d][4 B high bits][16 B]         x = d·(q − 16)
     Q5_1  [d][m][4 B high bits][16 B]      x = d·q + m
     Q8_0  [d][32 int8]                     x = d·q
   Element e of a 32-block: low nibble of byte e for e < 16, high nibble of
   byte e − 16 above; the fifth bit is bit e of the 32-bit word.
   K-quants, super-blocks of 256 in sub-blocks of 16 or 32:
     Q2_K  [16 B scales: 4-bit scale | 4-bit min][64 B 2-bit q][d][dmin]
           x = (d·sc)·q − dmin·m per 16; q from byte 32·(e/128) + e%32,
           bits 2·((e%128)/32)
     Q3_K  [32 B high-bit mask][64 B 2-bit q][12 B 6-bit scales][d]
           x = (d·(sc − 32))·(q − 4·!hbit) per 16; hbit = bit e/32 of mask[e%32]
     Q4_K  [d][dmin][12 B 6-bit scales and mins][128 B 4-bit q]
           x = (d·sc)·q − dmin·m per 32; q from byte 32·(j/2) + e%32, nibble j%2
     Q5_K  as Q4_K with [32 B fifth bits] before q: bit j of byte e%32
     Q6_K  [128 B low 4 bits][64 B high 2 bits][16 int8 scales][d]
           x = (d·sc)·(q − 32) per 16
   The arithmetic is float32 in gguf.quants.dequantize's order (d·sc, then
   ·q, then ± the min), and every product is exact: an fp16 scale has 11
   significant bits, a sub-scale at most 7 (Q6_K's int8) and a code at most
   6, 24 in all, so only the final ± rounds, and a fused multiply-add (which
   compilers may form) gives the same float. The values equal the package's
   bit for bit (tests/test_gguf_quant.c). The GEMM calls peft_qmatrix_decode
   for a run of one row at a time as it packs a panel (KERNELS: matrix
   multiply, peft__pack_B_stored): a K slice of row j for the forward, the
   panel's columns of row k for the input gradient. */

/* elements [e0, e1) of one block into out. A whole block takes fixed runs
   that the compiler vectorizes (a row's K slice is mostly whole blocks); a
   part of one goes a sub-block at a time with its scale in hand. */
typedef void (*peft__ggml_decoder)(const uint8_t *b, int e0, int e1, float *out);

static float peft__ggml_h(const uint8_t *p) { return peft_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* F16 → F32 without branches: normal numbers, infinities and NaNs move
   their fields (NaN payloads kept), subnormals go through an exact integer
   conversion (m·2⁻²⁴ is a normal float, so flush-to-zero modes cannot touch
   it) */
static uint32_t peft__f16_bits(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, em = h & 0x7FFFu, sub;
    float f = (float)em * 0x1p-24f;
    memcpy(&sub, &f, 4);
    /* the selections as masks, so that a loop over a row vectorizes */
    uint32_t norm = (em << 13) + 0x38000000u + (uint32_t)(em >= 0x7C00u) * 0x38000000u;
    uint32_t is_norm = 0u - (uint32_t)(em >= 0x400u);
    return s | (norm & is_norm) | (sub & ~is_norm);
}
/* (whole 16-bit loads: a little-endian host, as the files are) */
static void peft__f16_row(const uint8_t *p, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t b = peft__f16_bits(h);
        memcpy(out + i, &b, 4);
    }
}
static void peft__bf16_row(const uint8_t *p, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t b = (uint32_t)h << 16;
        memcpy(out + i, &b, 4);
    }
}
static void peft__dq_f32(const uint8_t *b, int e0, int e1, float *out) {
    memcpy(out, b + 4 * (size_t)e0, sizeof(float) * (size_t)(e1 - e0));
}
static void peft__dq_f16(const uint8_t *b, int e0, int e1, float *out) {
    peft__f16_row(b + 2 * (size_t)e0, e1 - e0, out);
}
static void peft__dq_bf16(const uint8_t *b, int e0, int e1, float *out) {
    peft__bf16_row(b + 2 * (size_t)e0, e1 - e0, out);
}

/* 32-blocks: codes q of elements [e0, e1) (low nibbles are elements 0-15,
   high nibbles 16-31, the fifth bit of element e is bit e of qh), then
   x = d·(q − off) or x = d·q + m (two roundings) */
static void peft__q32_codes(const uint8_t *qs, uint32_t qh, int e0, int e1, int *q) {
    if (e0 == 0 && e1 == 32) {               /* a whole block: fixed counts, which vectorize */
        for (int e = 0; e < 16; e++) {
            q[e] = (qs[e] & 15) | (int)((qh >> e) & 1) << 4;
            q[e + 16] = (qs[e] >> 4) | (int)((qh >> (e + 16)) & 1) << 4;
        }
        return;
    }
    int e = e0;
    for (; e < e1 && e < 16; e++) *q++ = (qs[e] & 15) | (int)((qh >> e) & 1) << 4;
    for (; e < e1; e++) *q++ = (qs[e - 16] >> 4) | (int)((qh >> e) & 1) << 4;
}
static uint32_t peft__le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void peft__q32_scale(const int *q, int n, float d, int off, float *out) {
    for (int i = 0; i < n; i++) out[i] = d * (float)(q[i] - off);
}
static void peft__q32_affine(const int *q, int n, float d, float m, float *out) {
    for (int i = 0; i < n; i++) {
        float t = d * (float)q[i];
        out[i] = t + m;
    }
}
static void peft__dq_q4_0(const uint8_t *b, int e0, int e1, float *out) {
    int q[32];
    peft__q32_codes(b + 2, 0, e0, e1, q);
    peft__q32_scale(q, e1 - e0, peft__ggml_h(b), 8, out);
}
static void peft__dq_q4_1(const uint8_t *b, int e0, int e1, float *out) {
    int q[32];
    peft__q32_codes(b + 4, 0, e0, e1, q);
    peft__q32_affine(q, e1 - e0, peft__ggml_h(b), peft__ggml_h(b + 2), out);
}
static void peft__dq_q5_0(const uint8_t *b, int e0, int e1, float *out) {
    int q[32];
    peft__q32_codes(b + 6, peft__le32(b + 2), e0, e1, q);
    peft__q32_scale(q, e1 - e0, peft__ggml_h(b), 16, out);
}
static void peft__dq_q5_1(const uint8_t *b, int e0, int e1, float *out) {
    int q[32];
    peft__q32_codes(b + 8, peft__le32(b + 4), e0, e1, q);
    peft__q32_affine(q, e1 - e0, peft__ggml_h(b), peft__ggml_h(b + 2), out);
}
static void peft__dq_q8_0(const uint8_t *b, int e0, int e1, float *out) {
    float d = peft__ggml_h(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int e = e0; e < e1; e++) *out++ = d * (float)qs[e];
}

/* K-quants: [e0, e1) is cut along the sub-blocks j (of 16 or 32 elements),
   l0 ≤ l < l1 the elements of j that it covers */
/* whole Q2_K and Q3_K blocks, as Q6_K's below: the codes in runs of 32
   (byte l of a 128-half holds elements l + 32·k at bits 2·k), then the
   scaling in sixteen fixed runs of 16 */
static void peft__q2_codes(const uint8_t *qs, int8_t *q) {
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) q[128 * h + 32 * k + l] = (int8_t)((qs[32 * h + l] >> (2 * k)) & 3);
}
static void peft__dq_q2_k(const uint8_t *b, int e0, int e1, float *out) {
    if (e0 == 0 && e1 == 256) {
        int8_t q[256];
        peft__q2_codes(b + 16, q);
        float d = peft__ggml_h(b + 80), dmin = peft__ggml_h(b + 82);
        for (int j = 0; j < 16; j++) {
            float dl = d * (float)(b[j] & 15), ml = dmin * (float)(b[j] >> 4);
            for (int l = 0; l < 16; l++) {
                float t = dl * (float)q[16 * j + l];
                out[16 * j + l] = t - ml;
            }
        }
        return;
    }
    float d = peft__ggml_h(b + 80), dmin = peft__ggml_h(b + 82);
    for (int j = e0 / 16; j * 16 < e1; j++) {
        int l0 = e0 > j * 16 ? e0 - j * 16 : 0, l1 = e1 < (j + 1) * 16 ? e1 - j * 16 : 16;
        float dl = d * (float)(b[j] & 15), ml = dmin * (float)(b[j] >> 4);
        /* element e: byte 32·(e/128) + e%32 of the codes, bits 2·((e%128)/32) */
        const uint8_t *q = b + 16 + 32 * (j / 8) + 16 * (j % 2);
        int sh = 2 * ((j % 8) / 2);
        for (int l = l0; l < l1; l++) {
            float t = dl * (float)((q[l] >> sh) & 3);
            *out++ = t - ml;
        }
    }
}
static void peft__dq_q3_k(const uint8_t *b, int e0, int e1, float *out) {
    const uint8_t *sc = b + 96;
    float d = peft__ggml_h(b + 108);
    if (e0 == 0 && e1 == 256) {
        int8_t q[256];
        peft__q2_codes(b + 32, q);
        for (int k = 0; k < 8; k++)                /* 4 off where bit k of mask byte l is clear */
            for (int l = 0; l < 32; l++) q[32 * k + l] = (int8_t)(q[32 * k + l] - 4 + 4 * ((b[l] >> k) & 1));
        for (int j = 0; j < 16; j++) {
            int lo = j < 8 ? sc[j] & 15 : sc[j - 8] >> 4, hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
            float dl = d * (float)((lo | hi << 4) - 32);
            for (int l = 0; l < 16; l++) out[16 * j + l] = dl * (float)q[16 * j + l];
        }
        return;
    }
    for (int j = e0 / 16; j * 16 < e1; j++) {
        int l0 = e0 > j * 16 ? e0 - j * 16 : 0, l1 = e1 < (j + 1) * 16 ? e1 - j * 16 : 16;
        int lo = j < 8 ? sc[j] & 15 : sc[j - 8] >> 4, hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        float dl = d * (float)((lo | hi << 4) - 32);
        const uint8_t *q = b + 32 + 32 * (j / 8) + 16 * (j % 2), *hm = b + 16 * (j % 2);
        int sh = 2 * ((j % 8) / 2), hb = j / 2;
        for (int l = l0; l < l1; l++) {
            int v = ((q[l] >> sh) & 3) - (((hm[l] >> hb) & 1) ? 0 : 4);
            *out++ = dl * (float)v;
        }
    }
}
/* the 6-bit scale and min of sub-block j (of 8) of a Q4_K/Q5_K block */
static void peft__k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 2) & 0x30);
        *m = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
    }
}
/* Q4_K (qh NULL) and Q5_K */
static void peft__dq_k45(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, int e0, int e1,
                                         float *out) {
    float d = peft__ggml_h(b), dmin = peft__ggml_h(b + 2);
    for (int j = e0 / 32; j * 32 < e1; j++) {
        int l0 = e0 > j * 32 ? e0 - j * 32 : 0, l1 = e1 < (j + 1) * 32 ? e1 - j * 32 : 32;
        int sc, m;
        peft__k4_scale_min(b + 4, j, &sc, &m);
        float dj = d * (float)sc, mj = dmin * (float)m;
        const uint8_t *q = qs + 32 * (j / 2);
        int sh = 4 * (j % 2);
        if (qh)
            for (int l = l0; l < l1; l++) {
                float t = dj * (float)(((q[l] >> sh) & 15) | ((qh[l] >> j) & 1) << 4);
                *out++ = t - mj;
            }
        else
            for (int l = l0; l < l1; l++) {
                float t = dj * (float)((q[l] >> sh) & 15);
                *out++ = t - mj;
            }
    }
}
static void peft__dq_q4_k(const uint8_t *b, int e0, int e1, float *out) {
    peft__dq_k45(b, NULL, b + 16, e0, e1, out);
}
static void peft__dq_q5_k(const uint8_t *b, int e0, int e1, float *out) {
    peft__dq_k45(b, b + 16, b + 48, e0, e1, out);
}
/* A whole Q6_K block: the 256 codes first, in runs of 32 that vectorize
   (bytes l of each half serve elements l, l + 32, l + 64 and l + 96), then
   the scaling, sixteen fixed runs of 16. Q6_K holds the output and half the
   down projections of the common Q4_K_M files. */
static void peft__q6_k_block(const uint8_t *b, float *out) {
    int8_t q[256];
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        int8_t *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 15) | (qh[l] & 3) << 4) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
        }
    }
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = peft__ggml_h(b + 208);
    for (int j = 0; j < 16; j++) {
        float dl = d * (float)sc[j];
        for (int l = 0; l < 16; l++) out[16 * j + l] = dl * (float)q[16 * j + l];
    }
}
static void peft__dq_q6_k(const uint8_t *b, int e0, int e1, float *out) {
    if (e0 == 0 && e1 == 256) {
        peft__q6_k_block(b, out);
        return;
    }
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = peft__ggml_h(b + 208);
    for (int j = e0 / 16; j * 16 < e1; j++) {
        int l0 = e0 > j * 16 ? e0 - j * 16 : 0, l1 = e1 < (j + 1) * 16 ? e1 - j * 16 : 16;
        float dl = d * (float)sc[j];
        /* element e = 128·h + r: low 4 bits in byte 64·h + r%64 (nibble
           r/64), high 2 bits in byte 32·h + r%32 (bits 2·(r/32)) */
        int h = j / 8, r0 = 16 * (j % 8);
        const uint8_t *ql = b + 64 * h + r0 % 64, *qh = b + 128 + 32 * h + r0 % 32;
        int lsh = 4 * (r0 / 64), hsh = 2 * (r0 / 32);
        for (int l = l0; l < l1; l++) {
            int v = ((ql[l] >> lsh) & 15) | ((qh[l] >> hsh) & 3) << 4;
            *out++ = dl * (float)(v - 32);
        }
    }
}

/* by ggml type number; block 0 marks the types not supported */
#define PEFT__GGML_NTYPES 31
static const struct {
    const char *name;
    int block;
    size_t size;
    peft__ggml_decoder decode;
} peft__ggml_types[PEFT__GGML_NTYPES] = {
    [PEFT_GGML_F32] = { "F32", 1, 4, peft__dq_f32 },
    [PEFT_GGML_F16] = { "F16", 1, 2, peft__dq_f16 },
    [PEFT_GGML_Q4_0] = { "Q4_0", 32, 18, peft__dq_q4_0 },
    [PEFT_GGML_Q4_1] = { "Q4_1", 32, 20, peft__dq_q4_1 },
    [PEFT_GGML_Q5_0] = { "Q5_0", 32, 22, peft__dq_q5_0 },
    [PEFT_GGML_Q5_1] = { "Q5_1", 32, 24, peft__dq_q5_1 },
    [PEFT_GGML_Q8_0] = { "Q8_0", 32, 34, peft__dq_q8_0 },
    [PEFT_GGML_Q2_K] = { "Q2_K", 256, 84, peft__dq_q2_k },
    [PEFT_GGML_Q3_K] = { "Q3_K", 256, 110, peft__dq_q3_k },
    [PEFT_GGML_Q4_K] = { "Q4_K", 256, 144, peft__dq_q4_k },
    [PEFT_GGML_Q5_K] = { "Q5_K", 256, 176, peft__dq_q5_k },
    [PEFT_GGML_Q6_K] = { "Q6_K", 256, 210, peft__dq_q6_k },
    [PEFT_GGML_BF16] = { "BF16", 1, 2, peft__dq_bf16 },
};

static int peft__ggml_index(int type) {
    return type >= 0 && type < PEFT__GGML_NTYPES && peft__ggml_types[type].block ? type : -1;
}

PEFTDEF const char *peft_ggml_type_name(int type) {
    int i = peft__ggml_index(type);
    return i < 0 ? NULL : peft__ggml_types[i].name;
}
PEFTDEF int peft_ggml_block_size(int type) {
    int i = peft__ggml_index(type);
    return i < 0 ? 0 : peft__ggml_types[i].block;
}
PEFTDEF size_t peft_ggml_type_size(int type) {
    int i = peft__ggml_index(type);
    return i < 0 ? 0 : peft__ggml_types[i].size;
}

PEFTDEF peft_status peft_ggml_row_bytes(int type, int64_t n, size_t *bytes) {
    int i = peft__ggml_index(type);
    if (i < 0)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "ggml type %d is not supported (F32, F16, BF16, Q4_0, Q4_1, "
                          "Q5_0, Q5_1, Q8_0, Q2_K … Q6_K are)", type);
    int64_t bs = peft__ggml_types[i].block;
    if (n < 0 || n % bs)
        return peft__fail(PEFT_ERR_FORMAT, "a row of %lld elements is not a whole number of %s blocks of "
                          "%lld", (long long)n, peft__ggml_types[i].name, (long long)bs);
    if ((uint64_t)(n / bs) > SIZE_MAX / peft__ggml_types[i].size)
        return peft__fail(PEFT_ERR_FORMAT, "a row of %lld %s elements is too large", (long long)n,
                          peft__ggml_types[i].name);
    *bytes = (size_t)(n / bs) * peft__ggml_types[i].size;
    return PEFT_OK;
}

PEFTDEF void peft_ggml_dequantize(int type, const void *src, int64_t n, float *dst) {
    int i = peft__ggml_index(type);
    if (i < 0) return;
    const uint8_t *p = (const uint8_t *)src;
    int bs = peft__ggml_types[i].block;
    size_t ts = peft__ggml_types[i].size;
    if (bs == 1) {                   /* F32, F16, BF16: a run of numbers, in pieces that fit an int */
        for (int64_t k = 0; k < n; k += 1 << 20) {
            int len = (int)(n - k < (1 << 20) ? n - k : 1 << 20);
            peft__ggml_types[i].decode(p + (size_t)k * ts, 0, len, dst + k);
        }
        return;
    }
    for (int64_t k = 0; k + bs <= n; k += bs, p += ts) peft__ggml_types[i].decode(p, 0, bs, dst + k);
}

PEFTDEF void peft_qmatrix_decode(const peft_qmatrix *q, int64_t row, int64_t col, int64_t n, float *out) {
    int i = peft__ggml_index(q->type);
    if (i < 0 || n <= 0) return;
    const uint8_t *p = q->data + (size_t)row * q->row_bytes;
    int bs = peft__ggml_types[i].block;
    size_t ts = peft__ggml_types[i].size;
    if (bs == 1) {
        peft_ggml_dequantize(q->type, p + (size_t)col * ts, n, out);
        return;
    }
    int64_t b = col / bs;
    int e0 = (int)(col % bs);
    while (n > 0) {
        int e1 = (int64_t)(bs - e0) < n ? bs : e0 + (int)n;
        peft__ggml_types[i].decode(p + (size_t)b * ts, e0, e1, out);
        out += e1 - e0;
        n -= e1 - e0;
        b++;
        e0 = 0;
    }
}

PEFTDEF size_t peft_qmatrix_bytes(const peft_qmatrix *q) { return (size_t)q->rows * q->row_bytes; }

PEFTDEF void peft_qmatrix_free(peft_qmatrix *q) {
    if (!q) return;
    PEFT_FREE(q->owned);
    q->owned = NULL;
    q->data = NULL;
}

/* gguf.quants' quantizers for the 32-blocks that tests build weights with:
   float32 arithmetic in numpy's order, fp16 scales rounded to nearest even.
   Q8_0 rounds half away from zero; Q4_0 and Q4_1 truncate x/d + 8.5 and
   (x − min)/d + 0.5, two roundings each: x/d is not exact, so these must
   not become fused multiply-adds (GCC forms them across statements in its
   GNU modes, clang within one expression). */
#if defined(__clang__)
#define PEFT__NO_FMA_FN
#define PEFT__NO_FMA_BODY _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define PEFT__NO_FMA_FN __attribute__((optimize("fp-contract=off")))
#define PEFT__NO_FMA_BODY
#else
#define PEFT__NO_FMA_FN
#define PEFT__NO_FMA_BODY
#endif
static void peft__put_f16(uint8_t *p, float v) {
    uint16_t h = peft_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}
PEFT__NO_FMA_FN static void peft__quantize_block(int type, const float *x, uint8_t *b) {
    PEFT__NO_FMA_BODY
    if (type == PEFT_GGML_Q8_0) {
        float amax = 0.0f;
        for (int e = 0; e < 32; e++) amax = fmaxf(amax, fabsf(x[e]));
        float d = amax / 127.0f, id = d == 0.0f ? 0.0f : 1.0f / d;
        peft__put_f16(b, d);
        for (int e = 0; e < 32; e++) {
            float v = x[e] * id, a = fabsf(v), fl = floorf(a), r = fl + floorf(2.0f * (a - fl));
            b[2 + e] = (uint8_t)(int8_t)(v < 0.0f ? -r : r);
        }
        return;
    }
    float lo = x[0], hi = x[0], amax = x[0];
    for (int e = 1; e < 32; e++) {
        lo = fminf(lo, x[e]);
        hi = fmaxf(hi, x[e]);
        if (fabsf(x[e]) > fabsf(amax)) amax = x[e];        /* the first of the largest magnitude */
    }
    float d = type == PEFT_GGML_Q4_0 ? amax / -8.0f : (hi - lo) / 15.0f, id = d == 0.0f ? 0.0f : 1.0f / d;
    peft__put_f16(b, d);
    uint8_t *qs = b + 2;
    if (type == PEFT_GGML_Q4_1) {
        peft__put_f16(b + 2, lo);
        qs = b + 4;
    }
    for (int e = 0; e < 32; e++) {
        float t = type == PEFT_GGML_Q4_0 ? x[e] * id : (x[e] - lo) * id;
        float v = truncf(t + (type == PEFT_GGML_Q4_0 ? 8.5f : 0.5f));
        int q = v < 0.0f ? 0 : v > 15.0f ? 15 : (int)v;
        if (e < 16) qs[e] = (uint8_t)q;
        else qs[e - 16] |= (uint8_t)(q << 4);
    }
}

PEFTDEF peft_status peft_ggml_quantize(int type, const float *src, int64_t n, void *dst) {
    if (type != PEFT_GGML_Q8_0 && type != PEFT_GGML_Q4_0 && type != PEFT_GGML_Q4_1)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "ggml_quantize: only Q8_0, Q4_0 and Q4_1 (got %s)",
                          peft_ggml_type_name(type) ? peft_ggml_type_name(type) : "an unknown type");
    if (n % 32) return peft__fail(PEFT_ERR_ARG, "ggml_quantize: %lld is not a multiple of 32", (long long)n);
    size_t ts = peft_ggml_type_size(type);
    for (int64_t k = 0; k < n; k += 32)
        peft__quantize_block(type, src + k, (uint8_t *)dst + (size_t)(k / 32) * ts);
    return PEFT_OK;
}

/* ============================================================================
   TAPE: the step arena and the op record
   ============================================================================
   Activations, their gradients and the tape's saved values all come from one
   arena that is reset at each step (an op output's gradient buffer is handed
   on once backward has passed its producer: see peft_backward): a chain of
   blocks, each at least as big as all before it together (so a few dozen at
   most), filled in order. A reset keeps every block, so the next step of
   the same shape takes the
   same places in the same blocks: it allocates nothing and touches no fresh
   page. (Folding the blocks into one new block would hand the kernel back
   gigabytes and fault them in again on the next step.) */

/* a tape node is the op record of the backend table (peft_op): ids are
   copied into the arena when recorded */
typedef peft_op peft__node;

typedef struct { unsigned char *mem, *base; size_t cap; } peft__arena_block;

#define PEFT__SPARE_GRADS 64
struct peft_graph {
    const peft_backend *be; /* computes every op of this graph             */
    peft__arena_block *blocks;
    int            n_blocks, cap_blocks;
    int            cur;     /* the block being filled                      */
    size_t         used;    /* bytes taken from blocks[cur]                */
    size_t         before;  /* bytes taken from the blocks before cur      */
    size_t         total;   /* capacity of all blocks                      */
    size_t         high;    /* most bytes one step has taken               */
    long           system_allocs;
    peft__node    *nodes;
    int            n_nodes, cap_nodes;
    int            grad_enabled;
    int            failed;  /* an op failed this step; later ops no-op     */
    struct { float *p; int64_t n; } spare[PEFT__SPARE_GRADS];   /* dead gradient buffers */
    int            n_spare;
    /* a data-parallel shard of a training step (peft__shard_step); zero otherwise */
    peft_rng      *rng;     /* dropout keys are drawn here instead of the model's rng */
    int64_t        row_base;   /* this shard's first row in the whole batch */
    peft_tensor  **shadow_of, **shadow;   /* trainable tensors, and the stand-ins the tape records */
    int            n_shadow;
};

PEFTDEF peft_graph *peft_graph_new(void) {
    peft_graph *g = (peft_graph *)peft__calloc(sizeof *g);
    if (!g) {
        peft__fail(PEFT_ERR_NOMEM, "no memory for a graph");
        return NULL;
    }
    g->grad_enabled = 1;
    g->be = peft_backend_current();
    return g;
}

PEFTDEF void peft_graph_reset(peft_graph *g) {
    g->cur = 0;
    g->used = 0;
    g->before = 0;
    g->n_nodes = 0;
    g->failed = 0;
    g->n_spare = 0;
}

PEFTDEF void peft_graph_free(peft_graph *g) {
    if (!g) return;
    for (int i = 0; i < g->n_blocks; i++) g->be->free(g->blocks[i].mem);
    PEFT_FREE(g->blocks);
    PEFT_FREE(g->nodes);
    PEFT_FREE(g);
}

PEFTDEF void   peft_graph_set_grad(peft_graph *g, int enabled) { g->grad_enabled = enabled; }
/* the most bytes of activations one step has held (not the blocks' slack) */
PEFTDEF size_t peft_graph_arena_bytes(const peft_graph *g) {
    size_t now = g->before + g->used;
    return now > g->high ? now : g->high;
}
PEFTDEF long   peft_graph_system_allocs(const peft_graph *g) { return g->system_allocs; }

static void *peft__arena_alloc(peft_graph *g, size_t n) {
    n = (n + 63) & ~(size_t)63;
    /* the next block with room (a block too small for this request is left
       with its tail unused; the same request skips it again next step) */
    while (g->cur < g->n_blocks && g->used + n > g->blocks[g->cur].cap) {
        g->before += g->used;
        g->cur++;
        g->used = 0;
    }
    if (g->cur == g->n_blocks) {
        if (g->n_blocks == g->cap_blocks) {
            int nc = g->cap_blocks ? 2 * g->cap_blocks : 16;
            peft__arena_block *nb = (peft__arena_block *)PEFT_REALLOC(g->blocks, (size_t)nc * sizeof *nb);
            if (!nb) return NULL;
            g->blocks = nb;
            g->cap_blocks = nc;
            g->system_allocs++;
        }
        size_t cap = n > g->total ? n : g->total;        /* at least double the chain */
        if (cap < ((size_t)1 << 20)) cap = (size_t)1 << 20;
        unsigned char *mem = (unsigned char *)g->be->alloc(cap + 64);
        if (!mem) return NULL;
        g->system_allocs++;
        peft__arena_block *b = &g->blocks[g->n_blocks++];
        b->mem = mem;
        b->base = (unsigned char *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);   /* 64-byte aligned for SIMD */
        b->cap = cap;
        g->total += cap;
    }
    void *p = g->blocks[g->cur].base + g->used;
    g->used += n;
    if (g->before + g->used > g->high) g->high = g->before + g->used;
    return p;
}

static void peft__zero_range(void *vctx, int64_t b0, int64_t b1) {
    memset((float *)vctx + b0 * 4096, 0, (size_t)(b1 - b0) * 4096 * sizeof(float));
}

/* gradient buffers of activations run to megabytes: both cores clear
   (the pages are warm from the last step; this is store bandwidth) */
static void peft__zero_floats(float *p, int64_t n) {
    int64_t blocks = n / 4096;
    peft__parallel_for(blocks, 16, peft__zero_range, p);
    memset(p + blocks * 4096, 0, (size_t)(n - blocks * 4096) * sizeof(float));
}

static float *peft__arena_floats(peft_graph *g, int64_t n, int zero) {
    float *p = (float *)peft__arena_alloc(g, (size_t)n * sizeof(float));
    if (p && zero) g->be->zero(p, n);
    return p;
}

/* an arena tensor over `data`, or over fresh floats when data is NULL */
static peft_tensor *peft__tensor_on(peft_graph *g, int ndim, const int64_t *shape, float *data) {
    if (g->failed) return NULL;
    peft_tensor *t = (peft_tensor *)peft__arena_alloc(g, sizeof(peft_tensor));
    if (!t) goto oom;
    memset(t, 0, sizeof *t);
    peft__set_shape(t, ndim, shape);
    t->place = g->be->place;
    t->data = data ? data : peft__arena_floats(g, t->n, 0);
    if (!t->data) goto oom;
    return t;
oom:
    g->failed = 1;
    peft__fail(PEFT_ERR_NOMEM, "out of memory in the activation arena");
    return NULL;
}

PEFTDEF peft_tensor *peft_tensor_new(peft_graph *g, int ndim, const int64_t *shape) {
    return peft__tensor_on(g, ndim, shape, NULL);
}

PEFTDEF peft_tensor *peft_tensor_2d(peft_graph *g, int64_t rows, int64_t cols) {
    int64_t s[2] = { rows, cols };
    return peft_tensor_new(g, 2, s);
}

static peft_tensor *peft__like(peft_graph *g, const peft_tensor *x) {
    return peft_tensor_new(g, x->ndim, x->shape);
}

/* A new tensor over x's data (its own gradient): the output of an op that
   overwrites an input no backward reads again. Only the model's forward
   uses it (peft__block: RoPE over the q/k projections, the residual adds
   over the o/down projections), where it keeps four activations per layer
   out of the arena. */
static peft_tensor *peft__alias(peft_graph *g, const peft_tensor *x) {
    return peft__tensor_on(g, x->ndim, x->shape, x->data);
}

static const int *peft__save_ids(peft_graph *g, const int *ids, int64_t n);

/* A shard's tape records the stand-in of each trainable tensor it reads (the
   same data, a gradient of the shard's own), so that shards on different
   threads never add into one gradient; the step sums them afterwards. */
static peft_status peft__shadow_inputs(peft_graph *g, peft__node *n) {
    for (int k = 0; k < 8; k++) {
        peft_tensor *t = n->in[k];
        if (!t || !t->is_param || !t->requires_grad) continue;
        int i = 0;
        while (i < g->n_shadow && g->shadow_of[i] != t) i++;
        if (i == g->n_shadow) {
            g->failed = 1;
            return peft__fail(PEFT_ERR_ARG, "a shard of the step reads a trainable tensor (%s) that the "
                              "trainer does not update", t->name ? t->name : "unnamed");
        }
        n->in[k] = g->shadow[i];
    }
    return PEFT_OK;
}

/* Records a copy of op when gradients are on and some input needs one (its
   n_ids ids copied into the arena). The output then needs a gradient too.
   Returns NULL when nothing is recorded. */
static peft__node *peft__push(peft_graph *g, const peft_op *op, int64_t n_ids) {
    if (!g->grad_enabled || !op->out) return NULL;
    int need = 0;
    for (int k = 0; k < 8; k++)
        need |= op->in[k] && op->in[k]->requires_grad;
    if (!need) return NULL;
    if (g->n_nodes == g->cap_nodes) {
        int nc = g->cap_nodes ? 2 * g->cap_nodes : 256;
        peft__node *nn = (peft__node *)PEFT_REALLOC(g->nodes, (size_t)nc * sizeof(peft__node));
        if (!nn) {
            g->failed = 1;
            peft__fail(PEFT_ERR_NOMEM, "out of memory for the tape");
            return NULL;
        }
        g->nodes = nn;
        g->cap_nodes = nc;
        g->system_allocs++;
    }
    peft__node *n = &g->nodes[g->n_nodes++];
    *n = *op;
    if (g->n_shadow && peft__shadow_inputs(g, n) != PEFT_OK) return NULL;
    op->out->requires_grad = 1;
    if (n_ids > 0) n->ids = peft__save_ids(g, op->ids, n_ids);
    return n;
}

/* An op's forward on the graph's backend, then recorded as peft__push does.
   Returns op->out, or NULL when the forward failed (the graph is marked). */
static peft_tensor *peft__run(peft_graph *g, peft_op *op, int64_t n_ids) {
    if (g->failed) return NULL;
    if (g->be->op[op->kind].forward(g, op) != PEFT_OK) {
        g->failed = 1;
        return NULL;
    }
    peft__push(g, op, n_ids);
    return op->out;
}

static const int *peft__save_ids(peft_graph *g, const int *ids, int64_t n) {
    int *p = (int *)peft__arena_alloc(g, (size_t)n * sizeof(int));
    if (p) memcpy(p, ids, (size_t)n * sizeof(int));
    return p;
}

/* A gradient buffer for an activation of n floats: a dead one of the same
   size when there is one (the blocks of a model repeat the same shapes, so
   a step keeps a few gradients alive instead of one per activation), else
   fresh from the arena; cleared when asked. */
static float *peft__grad_buffer(peft_graph *g, int64_t n, int zero) {
    for (int i = g->n_spare - 1; i >= 0; i--)
        if (g->spare[i].n == n) {
            float *p = g->spare[i].p;
            g->spare[i] = g->spare[--g->n_spare];
            if (zero) g->be->zero(p, n);
            return p;
        }
    return peft__arena_floats(g, n, zero);
}

PEFTDEF peft_status peft_backward_seed(peft_graph *g, peft_tensor *out, const float *seed) {
    if (g->failed) return peft__fail(PEFT_ERR_ARG, "backward on a graph whose forward failed");
    if (!out) return peft__fail(PEFT_ERR_ARG, "backward needs an output tensor");
    if (!out->requires_grad) return PEFT_OK;          /* nothing trainable upstream */
    if (!out->grad) out->grad = peft__arena_floats(g, out->n, 1);
    if (!out->grad) return peft__fail(PEFT_ERR_NOMEM, "out of memory in backward");
    for (int64_t j = 0; j < out->n; j++) out->grad[j] = seed ? seed[j] : 1.0f;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        peft__node *n = &g->nodes[i];
        if (!n->out->grad) continue;                  /* output unused by the loss */
        for (int k = 0; k < 8; k++) {
            peft_tensor *t = n->in[k];
            if (t && t->requires_grad && !t->grad) {
                /* a linear's input gradient is stored by its first product
                   (beta 0), not cleared and then added to */
                int stores = k == 0 && !n->custom_backward &&
                             (n->kind == PEFT_OP_LINEAR || n->kind == PEFT_OP_LORA_LINEAR ||
                              n->kind == PEFT_OP_Q4_LINEAR || n->kind == PEFT_OP_QMATRIX_LINEAR);
                t->grad = peft__grad_buffer(g, t->n, !stores);
                if (!t->grad) return peft__fail(PEFT_ERR_NOMEM, "out of memory in backward");
                t->grad_fresh = stores;
            }
        }
        if (n->custom_backward) n->custom_backward(g, n);
        else g->be->op[n->kind].backward(g, n);
        if (g->failed) return peft__fail(PEFT_ERR_NOMEM, "out of memory in backward");
        /* every consumer of n's output came later on the tape and has run:
           its gradient is dead, and its buffer serves a gradient to come */
        if (!n->out->is_param && g->n_spare < PEFT__SPARE_GRADS) {
            g->spare[g->n_spare].p = n->out->grad;
            g->spare[g->n_spare++].n = n->out->n;
            n->out->grad = NULL;
        }
    }
    return PEFT_OK;
}

PEFTDEF peft_status peft_backward(peft_graph *g, peft_tensor *out) {
    if (out && out->n != 1)
        return peft__fail(PEFT_ERR_ARG, "backward needs a scalar output (use peft_backward_seed)");
    return peft_backward_seed(g, out, NULL);
}

/* ============================================================================
   OPS: each forward with its backward beside it
   ============================================================================ */

static int peft__ok(peft_graph *g, const void *a, const void *b) {
    return !g->failed && a && b;
}

static peft_tensor *peft__op_fail(peft_graph *g, peft_status s, const char *msg) {
    g->failed = 1;
    peft__fail(s, "%s", msg);
    return NULL;
}

/* ---- embedding -------------------------------------------------------------
   y[r] = E[ids[r]]
   dE[ids[r]] += dy[r]                                                      */
static void peft__cpu_embedding_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *E = n->in[0];
    int64_t D = peft__cols(E);
    for (int r = 0; r < n->i[0]; r++) {
        float *dst = E->grad + (size_t)n->ids[r] * D;
        const float *src = n->out->grad + (size_t)r * D;
        for (int64_t j = 0; j < D; j++) dst[j] += src[j];
    }
}
PEFTDEF peft_tensor *peft_embedding(peft_graph *g, peft_tensor *E, const int *ids, int n) {
    if (!peft__ok(g, E, ids)) return NULL;
    int64_t V = E->shape[0], D = peft__cols(E);
    for (int r = 0; r < n; r++)
        if (ids[r] < 0 || ids[r] >= V)
            return peft__op_fail(g, PEFT_ERR_ARG, "token id out of range of the embedding table");
    peft_tensor *y = peft_tensor_2d(g, n, D);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_EMBEDDING, .out = y, .in = { E }, .ids = ids, .i = { n } };
    return peft__run(g, &op, n);
}
/* y = out, E = in[0], ids (i[0] of them) */
static peft_status peft__cpu_embedding(peft_graph *g, peft__node *nd) {
    (void)g;
    const float *E = nd->in[0]->data;
    const int *ids = nd->ids;
    int n = nd->i[0];
    int64_t D = peft__cols(nd->in[0]);
    float *y = nd->out->data;
    for (int r = 0; r < n; r++)
        memcpy(y + (size_t)r * D, E + (size_t)ids[r] * D, (size_t)D * sizeof(float));
    return PEFT_OK;
}

/* ---- replaced rows -------------------------------------------------------------
   T = E;  T[idx[i]] = R[i]
   dE[r] += dT[r] for the rows r not replaced;  dR[i] += dT[idx[i]]          */
static void peft__cpu_replace_rows_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *E = n->in[0], *R = n->in[1];
    int64_t V = E->shape[0], D = peft__cols(E);
    const float *dT = n->out->grad;
    if (E->requires_grad)
        for (int64_t r = 0; r < V; r++) {
            int replaced = 0;
            for (int i = 0; i < n->i[0] && !replaced; i++) replaced = n->ids[i] == r;
            if (replaced) continue;
            for (int64_t j = 0; j < D; j++) E->grad[r * D + j] += dT[r * D + j];
        }
    if (R->requires_grad)
        for (int i = 0; i < n->i[0]; i++)
            for (int64_t j = 0; j < D; j++) R->grad[(int64_t)i * D + j] += dT[(int64_t)n->ids[i] * D + j];
}
PEFTDEF peft_tensor *peft_replace_rows(peft_graph *g, peft_tensor *E, peft_tensor *R, const int *idx, int n) {
    if (!peft__ok(g, E, R) || !idx) return NULL;
    int64_t V = E->shape[0], D = peft__cols(E);
    if (E->ndim != 2 || R->ndim != 2 || R->shape[0] != n || peft__cols(R) != D)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "replace_rows: R must be [n, D] for E [V, D]");
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= V)
            return peft__op_fail(g, PEFT_ERR_ARG, "replace_rows: row index out of range");
        for (int k = 0; k < i; k++)
            if (idx[k] == idx[i])
                return peft__op_fail(g, PEFT_ERR_ARG, "replace_rows: a row index is repeated");
    }
    peft_tensor *T = peft__like(g, E);
    if (!T) return NULL;
    peft_op op = { .kind = PEFT_OP_REPLACE_ROWS, .out = T, .in = { E, R }, .ids = idx, .i = { n } };
    return peft__run(g, &op, n);
}
/* T = out, E = in[0], R = in[1], row indices ids (i[0] of them) */
static peft_status peft__cpu_replace_rows(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *E = nd->in[0], *R = nd->in[1], *T = nd->out;
    const int *idx = nd->ids;
    int n = nd->i[0];
    int64_t D = peft__cols(E);
    memcpy(T->data, E->data, sizeof(float) * (size_t)E->n);
    for (int i = 0; i < n; i++)
        memcpy(T->data + (size_t)idx[i] * D, R->data + (size_t)i * D, sizeof(float) * (size_t)D);
    return PEFT_OK;
}

/* ---- linear ----------------------------------------------------------------
   y = x · Wᵀ                      x [N, in], W [out, in], y [N, out]
   dx += dy · W ;  dW += dyᵀ · x   (dW only for a trainable W)              */
static void peft__cpu_linear_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0], *W = n->in[1];
    int N = (int)peft__rows(x), in = (int)peft__cols(x), out = (int)W->shape[0];
    const float *dy = n->out->grad;
    if (x->requires_grad)
        peft_gemm(0, 0, N, in, out, dy, out, W->data, in, x->grad_fresh ? 0.0f : 1.0f, x->grad, in);
    x->grad_fresh = 0;
    if (W->requires_grad) peft_gemm(1, 0, out, in, N, dy, out, x->data, in, 1.0f, W->grad, in);
}
PEFTDEF peft_tensor *peft_linear(peft_graph *g, peft_tensor *x, peft_tensor *W) {
    if (!peft__ok(g, x, W)) return NULL;
    if (W->ndim != 2 || peft__cols(x) != W->shape[1])
        return peft__op_fail(g, PEFT_ERR_SHAPE, "linear: input width differs from the weight's in_features");
    int out = (int)W->shape[0];
    int64_t shape[PEFT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    peft_tensor *y = peft_tensor_new(g, x->ndim, shape);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_LINEAR, .out = y, .in = { x, W } };
    return peft__run(g, &op, 0);
}
/* y = out [N, out], x = in[0] [N, in], W = in[1] [out, in] */
static peft_status peft__cpu_linear(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *x = nd->in[0], *W = nd->in[1];
    int N = (int)peft__rows(x), in = (int)W->shape[1], out = (int)W->shape[0];
    peft_gemm(0, 1, N, out, in, x->data, in, W->data, in, 0.0f, nd->out->data, out);
    return PEFT_OK;
}

/* ---- RMSNorm ---------------------------------------------------------------
   y = w ⊙ x·r,   r = 1/sqrt(mean(x²) + eps)         (per row, in fp32)
   dx = r·(w⊙dy) − x·r³/D · Σ(w⊙dy⊙x);   dw += Σ_rows dy⊙x·r                */
typedef struct { const float *x, *w, *dy, *rs; float *y, *dx, *rs_out; int64_t D; float eps; } peft__rms_args;

static void peft__rms_fwd_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__rms_args *a = (const peft__rms_args *)vctx;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = a->x + r * a->D;
        float ss = 0.0f;
        for (int64_t j = 0; j < a->D; j++) ss += xr[j] * xr[j];
        float inv = 1.0f / sqrtf(ss / (float)a->D + a->eps);
        a->rs_out[r] = inv;
        float *yr = a->y + r * a->D;
        for (int64_t j = 0; j < a->D; j++) yr[j] = a->w[j] * (xr[j] * inv);
    }
}
static void peft__rms_dx_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__rms_args *a = (const peft__rms_args *)vctx;
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = a->x + r * a->D, *dr = a->dy + r * a->D;
        float inv = a->rs[r];
        double dot = 0.0;
        for (int64_t j = 0; j < a->D; j++) dot += (double)a->w[j] * dr[j] * xr[j];
        float c = (float)(dot * inv * inv * inv / (double)a->D);
        float *dx = a->dx + r * a->D;
        for (int64_t j = 0; j < a->D; j++) dx[j] += inv * a->w[j] * dr[j] - xr[j] * c;
    }
}
static void peft__cpu_rmsnorm_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0], *w = n->in[1];
    int64_t R = peft__rows(x), D = peft__cols(x);
    const float *dy = n->out->grad, *rs = n->saved;
    peft__rms_args a = { x->data, w->data, dy, rs, NULL, x->grad, NULL, D, 0.0f };
    if (x->requires_grad) peft__parallel_for(R, 16, peft__rms_dx_range, &a);
    if (w->requires_grad)                       /* a reduction over rows: serial, fixed order */
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x->data + r * D, *dr = dy + r * D;
            float inv = rs[r];
            for (int64_t j = 0; j < D; j++) w->grad[j] += dr[j] * xr[j] * inv;
        }
}
PEFTDEF peft_tensor *peft_rmsnorm(peft_graph *g, peft_tensor *x, peft_tensor *w, float eps) {
    if (!peft__ok(g, x, w)) return NULL;
    int64_t R = peft__rows(x), D = peft__cols(x);
    if (w->n != D)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "rmsnorm: weight length differs from the row width");
    peft_tensor *y = peft__like(g, x);
    float *rs = y ? peft__arena_floats(g, R, 0) : NULL;
    if (!rs) return NULL;
    peft_op op = { .kind = PEFT_OP_RMSNORM, .out = y, .in = { x, w }, .f = { eps }, .saved = rs };
    return peft__run(g, &op, 0);
}
/* y = out, x = in[0] [R, D], w = in[1] [D], eps = f[0]; saved: 1/rms per row [R] */
static peft_status peft__cpu_rmsnorm(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *x = nd->in[0], *w = nd->in[1];
    int64_t R = peft__rows(x), D = peft__cols(x);
    peft__rms_args a = { x->data, w->data, NULL, NULL, nd->out->data, NULL, nd->saved, D, nd->f[0] };
    peft__parallel_for(R, 16, peft__rms_fwd_range, &a);
    return PEFT_OK;
}

/* ---- RoPE ------------------------------------------------------------------
   Each head's pairs (a, b) rotate by θ = pos·inv_freq[i]:
     a' = a·cosθ − b·sinθ,  b' = b·cosθ + a·sinθ
   rotate_half layout (HF): a = x[i], b = x[i + d/2]; interleaved (Meta,
   llama2.c): a = x[2i], b = x[2i+1]. The backward rotates by −θ.           */
/* Row r is position start[r / T] + r % T (start NULL: 0), so a KV-cache
   step can continue each sequence where it stopped. */
typedef struct {
    const peft_rope_table *rt;
    float *dst;
    const float *src;
    int n_heads, T, accumulate;
    float sign;
    const int *start;
} peft__rope_args;

/* rows [r0, r1): dst = rotate(src), or dst += rotate(src) (backward);
   dst may be src (each pair is read before it is written) */
static void peft__rope_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__rope_args *a = (const peft__rope_args *)vctx;
    const peft_rope_table *rt = a->rt;
    int hd = rt->head_dim, half = rt->rot_dim / 2, n_heads = a->n_heads, T = a->T;
    int64_t width = (int64_t)n_heads * hd;
    const float *src = a->src;
    float *dst = a->dst, sign = a->sign;
    const int *start = a->start;
    for (int64_t r = r0; r < r1; r++) {
        int pos = (int)(r % T) + (start ? start[r / T] : 0);
        const float *c = rt->cos + (size_t)pos * half, *s = rt->sin + (size_t)pos * half;
        for (int h = 0; h < n_heads; h++) {
            const float *x = src + r * width + (int64_t)h * hd;
            float *y = dst + r * width + (int64_t)h * hd;
            for (int i = 0; i < half; i++) {
                int ia = rt->interleaved ? 2 * i : i, ib = rt->interleaved ? 2 * i + 1 : i + half;
                float xa = x[ia], xb = x[ib], sn = sign * s[i];
                float ya = xa * c[i] - xb * sn, yb = xb * c[i] + xa * sn;
                if (a->accumulate) {
                    y[ia] += ya;
                    y[ib] += yb;
                } else {
                    y[ia] = ya;
                    y[ib] = yb;
                }
            }
            for (int i = rt->rot_dim; i < hd; i++) y[i] = a->accumulate ? y[i] + x[i] : x[i];
        }
    }
}
static void peft__rope_apply(const peft_rope_table *rt, float *dst, const float *src, int64_t rows,
                             int n_heads, int T, float sign, const int *start, int accumulate) {
    peft__rope_args a = { rt, dst, src, n_heads, T, accumulate, sign, start };
    peft__parallel_for(rows, 64, peft__rope_range, &a);
}
static void peft__cpu_rope_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0];
    peft__rope_apply((const peft_rope_table *)n->aux, x->grad, n->out->grad, peft__rows(x), n->i[0], n->i[1],
                     -1.0f, NULL, 1);
}
/* in_place: the output overwrites x (see peft__alias) */
static peft_tensor *peft__rope_op(peft_graph *g, peft_tensor *x, int n_heads, const peft_rope_table *rt,
                                  int B, int T, int in_place) {
    if (!peft__ok(g, x, rt)) return NULL;
    if (peft__cols(x) != (int64_t)n_heads * rt->head_dim || peft__rows(x) != (int64_t)B * T)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "rope: input is not [B*T, heads*head_dim]");
    if (T > rt->n_pos) return peft__op_fail(g, PEFT_ERR_ARG, "rope: sequence longer than the table");
    peft_tensor *y = in_place ? peft__alias(g, x) : peft__like(g, x);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_ROPE, .out = y, .in = { x }, .i = { n_heads, T }, .aux = rt };
    return peft__run(g, &op, 0);
}
/* y = out (may share x's data), x = in[0] [rows, heads·head_dim], heads
   i[0], T i[1], table aux; ids: each sequence's first position (NULL: 0,
   the KV cache passes its lengths) */
static peft_status peft__cpu_rope(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *x = nd->in[0];
    peft__rope_apply((const peft_rope_table *)nd->aux, nd->out->data, x->data, peft__rows(x), nd->i[0],
                     nd->i[1], 1.0f, nd->ids, 0);
    return PEFT_OK;
}
PEFTDEF peft_tensor *peft_rope(peft_graph *g, peft_tensor *x, int n_heads,
                               const peft_rope_table *rt, int B, int T) {
    return peft__rope_op(g, x, n_heads, rt, B, T, 0);
}

/* ---- causal attention with grouped-query heads, prompts and logit terms ----
   Query head h reads kv head h / (H/KV); s = 1/√d.
   Tokens:   S_tj = s·q_t·(k_j + γ_h·x_j)  (j ≤ t),  P = softmax(S),  o_t = Σ_j P_tj v_j
             (x = Excitor's extra keys, γ its zero-initialised gate; without
             Excitor γ·x is absent and S is the plain causal score.)
   Prompts:  Sp_ti = s·q_t·pk_i (all K, unmasked), Pp = softmax(Sp),
             o_t += G_h · Σ_i Pp_ti pv_i,  G_h = tanh(g_h) (paper) or g (PEFT).
   Backward: dP = do·vᵀ, dS = P⊙(dP − rowsum(P⊙dP))·s; dq = dS·k', dk += dSᵀq,
             dx += γ·dSᵀq, dγ += Σ dS⊙(q·x); the prompt branch likewise with
             dop = G·do and dG = Σ do·op. kv and prompt gradients sum over the
             heads of a group. P [B,H,T,T] and Pp [B,H,T,K] are kept for
             backward. Zero gates leave the output bit-identical to plain
             attention: o + 0·op = o and k + 0·x = k.                       */
typedef struct {
    const float *q, *k, *v, *pk, *pv, *x;
    float *o, *P, *Pp, *scratch;
    float *dq, *dk, *dv, *dpk, *dpv, *dx, *dG, *dGx;
    const float *dout;
    float G[PEFT_MAX_HEADS], Gx[PEFT_MAX_HEADS];
    int B, T, H, KV, hd, K, prompt_batched;
    int by_batch;                    /* backward units are (batch, kv head), not kv heads */
    int oom;                         /* a thread found no memory for its scratch */
} peft__attn_args;

/* e^x in float without libm, so that loops over it vectorise (glibc's expf
   is a call per element): e^x = 2^n · e^r with n = round(x·log2 e) (by the
   1.5·2^23 trick), r = x − n·ln2 in two parts, e^r by its degree-6 Taylor
   polynomial on |r| ≤ ln2/2. Within 4.3 ulp of exp over [−87.3, 88]
   (probed at 16M points); clamped outside (e^−∞ = 1.2e−38, not 0), and a
   NaN argument is taken as the low end, so no float→int conversion is ever
   out of range. */
#if defined(__GNUC__)
__attribute__((always_inline)) inline
#endif
static float peft__exp(float x) {
    x = x > -87.3f ? x : -87.3f;               /* NaN → −87.3 */
    x = x < 88.0f ? x : 88.0f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t i; float f; } u;
    u.i = (uint32_t)((int32_t)n + 127) << 23;  /* n + 127 in [1, 254] */
    return p * u.f;
}

/* dot product with 8 independent lanes (a float reduction does not
   vectorise on its own without -ffast-math); fixed order, so deterministic */
static float peft__dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#if defined(__GNUC__)
    typedef float v4 __attribute__((vector_size(16)));   /* SSE/NEON width: no ABI caveats */
    if (n >= 8) {
        v4 acc0 = { 0 }, acc1 = { 0 }, x0, y0, x1, y1;
        for (; i + 8 <= n; i += 8) {
            memcpy(&x0, a + i, sizeof x0);
            memcpy(&y0, b + i, sizeof y0);
            memcpy(&x1, a + i + 4, sizeof x1);
            memcpy(&y1, b + i + 4, sizeof y1);
            acc0 += x0 * y0;
            acc1 += x1 * y1;
        }
        s = ((acc0[0] + acc1[0]) + (acc0[1] + acc1[1])) + ((acc0[2] + acc1[2]) + (acc0[3] + acc1[3]));
    }
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static float peft__row_max(const float *z, int64_t V);
static void peft__softmax_row(float *p, int n) {
    /* the max vectorised (peft__row_max: exact, NaNs passed over as here; a
       zero's sign may differ, which exp(p − mx) does not see) */
    float mx = peft__row_max(p, n), sum = 0.0f;
    for (int j = 0; j < n; j++) p[j] = peft__exp(p[j] - mx);
    for (int j = 0; j < n; j++) sum += p[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) p[j] *= inv;
}

/* One query row against n keys (row stride kw): scores with the Excitor
   term, softmax into pr, o = Σ_j p_j v_j. Shared by the training kernel and
   the KV-cache kernel, so both give the same numbers. */
static void peft__attend_row(const float *qt, const float *kb, const float *vb, const float *xb, float gx,
                             int64_t kw, int n, int hd, float scale, float *pr, float *ot) {
    for (int j = 0; j < n; j++) {
        float s = peft__dot(qt, kb + (int64_t)j * kw, hd);
        if (xb) s += gx * peft__dot(qt, xb + (int64_t)j * kw, hd);
        pr[j] = s * scale;
    }
    peft__softmax_row(pr, n);
    for (int d = 0; d < hd; d++) ot[d] = 0.0f;
    for (int j = 0; j < n; j++) {
        const float *vj = vb + (int64_t)j * kw;
        float p = pr[j];
        for (int d = 0; d < hd; d++) ot[d] += p * vj[d];
    }
}
/* The prompt branch for one query row: o += G · softmax(q·pkᵀ·s) · pv. */
static void peft__attend_prompts(const float *qt, const float *pk, const float *pv, int64_t kw, int K, int hd,
                                 float scale, float G, float *pp, float *ot) {
    for (int i = 0; i < K; i++) pp[i] = peft__dot(qt, pk + (int64_t)i * kw, hd) * scale;
    peft__softmax_row(pp, K);
    for (int d = 0; d < hd; d++) {
        float s = 0.0f;
        for (int i = 0; i < K; i++) s += pp[i] * pv[(int64_t)i * kw + d];
        ot[d] += G * s;
    }
}

/* The keys one query head sees: k, or k + γ_h·x with Excitor (into buf). */
static const float *peft__keys_for_head(const peft__attn_args *a, const float *kb, const float *xb, int h,
                                        int64_t kw, float *buf, int64_t *ld) {
    if (!xb) {
        *ld = kw;
        return kb;
    }
    for (int t = 0; t < a->T; t++)
        for (int d = 0; d < a->hd; d++)
            buf[(size_t)t * a->hd + d] = kb[(int64_t)t * kw + d] + a->Gx[h] * xb[(int64_t)t * kw + d];
    *ld = a->hd;
    return buf;
}

/* The causal products skip what the mask removes: query rows go in blocks
   of PEFT__ATTN_BLOCK, and block r0 needs only keys [0, r0 + block) — with
   T = 256 in blocks of 64 that is 5/8 of the full T×T products. */
#define PEFT__ATTN_BLOCK 64

/* Per (row, kv head): for each query head of the group, S = Q·K'ᵀ as
   GEMMs, the causal softmax row by row (j ≤ t; the rest zeroed), then O =
   P·V as GEMMs, then the prompts row by row. P is kept for backward. */
static void peft__attn_fwd_range(void *vctx, int64_t b0, int64_t b1) {
    peft__attn_args *a = (peft__attn_args *)vctx;
    int T = a->T, H = a->H, KV = a->KV, hd = a->hd, K = a->K, grp = H / KV;
    int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t bk = b0; bk < b1; bk++) {
        int b = (int)(bk / KV), kvh = (int)(bk % KV);
        const float *kb = a->k + (int64_t)b * T * kw + (int64_t)kvh * hd;
        const float *vb = a->v + (int64_t)b * T * kw + (int64_t)kvh * hd;
        const float *xb = a->x ? a->x + (int64_t)b * T * kw + (int64_t)kvh * hd : NULL;
        float *kbuf = a->scratch ? a->scratch + (size_t)bk * T * hd : NULL;
        int64_t pb = a->prompt_batched ? (int64_t)b * K : 0;
        for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
            float *P = a->P + ((size_t)b * H + h) * (size_t)T * T;
            const float *qh = a->q + (int64_t)b * T * qw + (int64_t)h * hd;
            float *oh = a->o + (int64_t)b * T * qw + (int64_t)h * hd;
            int64_t ldk;
            const float *keys = peft__keys_for_head(a, kb, xb, h, kw, kbuf, &ldk);
            for (int r0 = 0; r0 < T; r0 += PEFT__ATTN_BLOCK) {
                int rn = T - r0 < PEFT__ATTN_BLOCK ? T - r0 : PEFT__ATTN_BLOCK;
                peft_gemm(0, 1, rn, r0 + rn, hd, qh + (int64_t)r0 * qw, (int)qw, keys, (int)ldk, 0.0f,
                          P + (size_t)r0 * T, T);
            }
            for (int t = 0; t < T; t++) {
                float *pr = P + (size_t)t * T;
                for (int j = 0; j <= t; j++) pr[j] *= scale;
                peft__softmax_row(pr, t + 1);
                for (int j = t + 1; j < T; j++) pr[j] = 0.0f;
            }
            for (int r0 = 0; r0 < T; r0 += PEFT__ATTN_BLOCK) {
                int rn = T - r0 < PEFT__ATTN_BLOCK ? T - r0 : PEFT__ATTN_BLOCK;
                peft_gemm(0, 0, rn, hd, r0 + rn, P + (size_t)r0 * T, T, vb, (int)kw, 0.0f,
                          oh + (int64_t)r0 * qw, (int)qw);
            }
            if (K)
                for (int t = 0; t < T; t++)
                    peft__attend_prompts(qh + (int64_t)t * qw, a->pk + pb * kw + (int64_t)kvh * hd,
                                         a->pv + pb * kw + (int64_t)kvh * hd, kw, K, hd, scale, a->G[h],
                                         a->Pp + (((size_t)b * H + h) * T + t) * K, oh + (int64_t)t * qw);
        }
    }
}

/* Backward: the token branch is GEMMs over the causal blocks: dP = dO·Vᵀ,
   dS = P⊙(dP − rowsum)·s, dQ += dS·K', dK += dSᵀ·Q, dV += Pᵀ·dO; the prompts
   go row by row. kv gradients are shared by a group's query heads, so a
   unit of work holds a whole group. */
/* per-thread scratch of the attention backward (dS, dSᵀ·Q, keys, prompt rows) */
static PEFT__TLS float *peft__attn_scratch;
static PEFT__TLS size_t peft__attn_scratch_cap;

/* Units: (batch, kv head) pairs when every gradient they write is their own
   (no prompts, or one set of prompts per batch row), else kv heads with all
   batch rows — prompts shared by the batch get gradients from every row.
   Gate gradients go to per-unit partial sums (a->dG + unit·H), added up in
   unit order afterwards: the same bits for any thread count. */
static void peft__attn_bw_range(void *vctx, int64_t u0, int64_t u1) {
    peft__attn_args *a = (peft__attn_args *)vctx;
    int T = a->T, H = a->H, KV = a->KV, hd = a->hd, K = a->K, grp = H / KV;
    int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *dS = peft__pack_buf(&peft__attn_scratch, &peft__attn_scratch_cap,
                               (size_t)T * T + 2 * (size_t)T * hd + K + hd);
    if (!dS) {
        a->oom = 1;
        return;
    }
    float *tmp = dS + (size_t)T * T, *kbuf = tmp + (size_t)T * hd, *dPp = kbuf + (size_t)T * hd,
          *dop = dPp + K;
    for (int64_t u = u0; u < u1; u++) {
        int kvh = a->by_batch ? (int)(u % KV) : (int)u;
        int b_first = a->by_batch ? (int)(u / KV) : 0, b_end = a->by_batch ? b_first + 1 : a->B;
        float *dG = a->dG ? a->dG + u * H : NULL, *dGx = a->dGx ? a->dGx + u * H : NULL;
        for (int b = b_first; b < b_end; b++) {
            int64_t col = (int64_t)kvh * hd, pb = a->prompt_batched ? (int64_t)b * K : 0;
            const float *kb = a->k + (int64_t)b * T * kw + col, *vb = a->v + (int64_t)b * T * kw + col;
            const float *xb = a->x ? a->x + (int64_t)b * T * kw + col : NULL;
            for (int h = kvh * grp; h < (kvh + 1) * grp; h++) {
                const float *P = a->P + ((size_t)b * H + h) * (size_t)T * T;
                const float *doh = a->dout + (int64_t)b * T * qw + (int64_t)h * hd;
                const float *qh = a->q + (int64_t)b * T * qw + (int64_t)h * hd;
                float *dqh = a->dq ? a->dq + (int64_t)b * T * qw + (int64_t)h * hd : NULL;
                /* prompt branch, row by row */
                for (int t = 0; K && t < T; t++) {
                    const float *dot = doh + (int64_t)t * qw, *qt = qh + (int64_t)t * qw;
                    float *dqt = dqh ? dqh + (int64_t)t * qw : NULL;
                    const float *pp = a->Pp + (((size_t)b * H + h) * T + t) * K;
                    float G = a->G[h], rs = 0.0f;
                    for (int d = 0; d < hd; d++) dop[d] = G * dot[d];
                    if (dG) {
                        float g = 0.0f;
                        for (int d = 0; d < hd; d++) {
                            float sv = 0.0f;
                            for (int i = 0; i < K; i++) sv += pp[i] * a->pv[(pb + i) * kw + col + d];
                            g += dot[d] * sv;
                        }
                        dG[h] += g;
                    }
                    for (int i = 0; i < K; i++) {
                        dPp[i] = peft__dot(dop, a->pv + (pb + i) * kw + col, hd);
                        rs += pp[i] * dPp[i];
                        if (a->dpv) {
                            float *dpvi = a->dpv + (pb + i) * kw + col;
                            for (int d = 0; d < hd; d++) dpvi[d] += pp[i] * dop[d];
                        }
                    }
                    for (int i = 0; i < K; i++) {
                        float ds = pp[i] * (dPp[i] - rs) * scale;
                        const float *pki = a->pk + (pb + i) * kw + col;
                        if (dqt) for (int d = 0; d < hd; d++) dqt[d] += ds * pki[d];
                        if (a->dpk) {
                            float *dpki = a->dpk + (pb + i) * kw + col;
                            for (int d = 0; d < hd; d++) dpki[d] += ds * qt[d];
                        }
                    }
                }
                /* token branch */
                for (int r0 = 0; r0 < T; r0 += PEFT__ATTN_BLOCK) {                         /* dP, t ≥ j */
                    int rn = T - r0 < PEFT__ATTN_BLOCK ? T - r0 : PEFT__ATTN_BLOCK;
                    peft_gemm(0, 1, rn, r0 + rn, hd, doh + (int64_t)r0 * qw, (int)qw, vb, (int)kw, 0.0f,
                              dS + (size_t)r0 * T, T);
                }
                for (int t = 0; t < T; t++) {
                    const float *pr = P + (size_t)t * T;
                    float *dr = dS + (size_t)t * T, rowsum = 0.0f;
                    for (int j = 0; j <= t; j++) rowsum += pr[j] * dr[j];
                    for (int j = 0; j <= t; j++) dr[j] = pr[j] * (dr[j] - rowsum) * scale;
                    for (int j = t + 1; j < T; j++) dr[j] = 0.0f;
                }
                if (dqh) {
                    int64_t ldk;
                    const float *keys = peft__keys_for_head(a, kb, xb, h, kw, kbuf, &ldk);
                    /* dQ: keys j ≤ t */
                    for (int r0 = 0; r0 < T; r0 += PEFT__ATTN_BLOCK) {
                        int rn = T - r0 < PEFT__ATTN_BLOCK ? T - r0 : PEFT__ATTN_BLOCK;
                        peft_gemm(0, 0, rn, hd, r0 + rn, dS + (size_t)r0 * T, T, keys, (int)ldk, 1.0f,
                                  dqh + (int64_t)r0 * qw, (int)qw);
                    }
                }
                if (a->dk || (xb && (a->dx || dGx))) {
                    /* dSᵀ·Q: queries t ≥ j */
                    for (int c0 = 0; c0 < T; c0 += PEFT__ATTN_BLOCK) {
                        int cn = T - c0 < PEFT__ATTN_BLOCK ? T - c0 : PEFT__ATTN_BLOCK;
                        peft_gemm(1, 0, cn, hd, T - c0, dS + (size_t)c0 * T + c0, T, qh + (int64_t)c0 * qw,
                                  (int)qw, 0.0f, tmp + (size_t)c0 * hd, hd);
                    }
                    float gx = xb ? a->Gx[h] : 0.0f, dgx = 0.0f;
                    for (int j = 0; j < T; j++) {
                        const float *tj = tmp + (size_t)j * hd;
                        if (a->dk) {
                            float *dkj = a->dk + ((int64_t)b * T + j) * kw + col;
                            for (int d = 0; d < hd; d++) dkj[d] += tj[d];
                        }
                        if (xb && a->dx) {
                            float *dxj = a->dx + ((int64_t)b * T + j) * kw + col;
                            for (int d = 0; d < hd; d++) dxj[d] += gx * tj[d];
                        }
                        if (xb && dGx) dgx += peft__dot(tj, xb + (int64_t)j * kw, hd);
                    }
                    if (xb && dGx) dGx[h] += dgx;
                }
                /* dV += Pᵀ·dO, t ≥ j */
                for (int c0 = 0; a->dv && c0 < T; c0 += PEFT__ATTN_BLOCK) {
                    int cn = T - c0 < PEFT__ATTN_BLOCK ? T - c0 : PEFT__ATTN_BLOCK;
                    peft_gemm(1, 0, cn, hd, T - c0, P + (size_t)c0 * T + c0, T, doh + (int64_t)c0 * qw,
                              (int)qw, 1.0f, a->dv + ((int64_t)b * T + c0) * kw + col, (int)kw);
                }
            }
        }
    }
}

static float *peft__grad_if(peft_tensor *t) { return t && t->requires_grad ? t->grad : NULL; }

/* Gate values as the kernel uses them: tanh(g) per head, or one raw g. */
static void peft__gate_values(const peft_tensor *g, int use_tanh, int H, float *out) {
    for (int h = 0; h < H; h++) {
        float v = g ? g->data[g->n == 1 ? 0 : h] : 0.0f;
        out[h] = use_tanh ? tanhf(v) : v;
    }
}
static void peft__gate_backward(peft_tensor *g, int use_tanh, int H, const float *G, const float *dG) {
    if (!g || !g->requires_grad) return;
    for (int h = 0; h < H; h++) g->grad[g->n == 1 ? 0 : h] += use_tanh ? dG[h] * (1.0f - G[h] * G[h]) : dG[h];
}

static void peft__cpu_attention_bw(peft_graph *g, peft__node *n) {
    peft__attn_args a;
    memset(&a, 0, sizeof a);
    a.B = n->i[0];
    a.T = n->i[1];
    a.H = n->i[2];
    a.KV = n->i[3];
    a.hd = n->i[4];
    a.K = n->i[5];
    a.prompt_batched = n->i[6];
    int gate_tanh = n->i[7];
    a.q = n->in[0]->data;
    a.k = n->in[1]->data;
    a.v = n->in[2]->data;
    a.pk = n->in[3] ? n->in[3]->data : NULL;
    a.pv = n->in[4] ? n->in[4]->data : NULL;
    a.x = n->in[6] ? n->in[6]->data : NULL;
    a.dq = peft__grad_if(n->in[0]);
    a.dk = peft__grad_if(n->in[1]);
    a.dv = peft__grad_if(n->in[2]);
    a.dpk = peft__grad_if(n->in[3]);
    a.dpv = peft__grad_if(n->in[4]);
    a.dx = peft__grad_if(n->in[6]);
    a.dout = n->out->grad;
    a.P = n->saved;
    a.Pp = a.P + (size_t)a.B * a.H * a.T * a.T;
    peft__gate_values(n->in[5], gate_tanh, a.H, a.G);
    peft__gate_values(n->in[7], 0, a.H, a.Gx);
    a.by_batch = a.K == 0 || a.prompt_batched;
    int64_t units = a.by_batch ? (int64_t)a.B * a.KV : a.KV;
    float *partial = peft__arena_floats(g, 2 * units * a.H, 1), dG[PEFT_MAX_HEADS] = { 0 },
          dGx[PEFT_MAX_HEADS] = { 0 };
    if (!partial) {
        g->failed = 1;
        return;
    }
    a.dG = peft__grad_if(n->in[5]) ? partial : NULL;
    a.dGx = peft__grad_if(n->in[7]) ? partial + units * a.H : NULL;
    peft__parallel_for(units, 1, peft__attn_bw_range, &a);
    if (a.oom) {
        g->failed = 1;
        peft__fail(PEFT_ERR_NOMEM, "attention backward: no memory for scratch");
        return;
    }
    for (int64_t u = 0; u < units; u++)
        for (int h = 0; h < a.H; h++) {
            dG[h] += partial[u * a.H + h];
            dGx[h] += partial[(units + u) * a.H + h];
        }
    peft__gate_backward(n->in[5], gate_tanh, a.H, a.G, dG);
    peft__gate_backward(n->in[7], 0, a.H, a.Gx, dGx);
}

PEFTDEF peft_tensor *peft_attention_ex(peft_graph *g, peft_tensor *q, peft_tensor *k, peft_tensor *v,
                                       int B, int T, int H, int KV, int hd, const peft_attn_extras *ex) {
    if (!peft__ok(g, q, k) || !v) return NULL;
    if (KV < 1 || H % KV != 0 || H > PEFT_MAX_HEADS)
        return peft__op_fail(g, PEFT_ERR_SHAPE,
                             "attention: heads must be a multiple of kv heads (and at most PEFT_MAX_HEADS)");
    if (q->n != (int64_t)B * T * H * hd || k->n != (int64_t)B * T * KV * hd || v->n != k->n)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "attention: q/k/v sizes disagree with B, T, heads, head_dim");
    peft_attn_extras none;
    memset(&none, 0, sizeof none);
    if (!ex) ex = &none;
    int K = ex->pk ? ex->n_prompts : 0, batched = 0;
    if (K) {
        int64_t rows = peft__rows(ex->pk);
        batched = rows == (int64_t)B * K;
        if ((rows != K && !batched) || peft__cols(ex->pk) != (int64_t)KV * hd || !ex->pv ||
            ex->pv->n != ex->pk->n)
            return peft__op_fail(g, PEFT_ERR_SHAPE,
                                 "attention: prompt keys/values must be [K or B*K, kv_heads*head_dim]");
        if (ex->gate && ex->gate->n != 1 && ex->gate->n != H)
            return peft__op_fail(g, PEFT_ERR_SHAPE, "attention: prompt gate must have 1 or n_heads values");
    }
    if (ex->x && (ex->x->n != k->n || !ex->x_gate || (ex->x_gate->n != 1 && ex->x_gate->n != H)))
        return peft__op_fail(g, PEFT_ERR_SHAPE,
                             "attention: extra keys must match k, with a gate of 1 or n_heads values");
    peft_tensor *o = peft__like(g, q);
    if (!o) return NULL;
    peft_op op = { .kind = PEFT_OP_ATTENTION, .out = o,
                   .in = { q, k, v, K ? ex->pk : NULL, K ? ex->pv : NULL, K ? ex->gate : NULL, ex->x,
                           ex->x ? ex->x_gate : NULL },
                   .i = { B, T, H, KV, hd, K, batched, ex->gate_tanh } };
    return peft__run(g, &op, 0);
}
/* o = out; in: q, k, v, prompt keys, prompt values, prompt gate, Excitor's
   extra keys x, their gate (the last five may be NULL); i: B, T, H, KV,
   head_dim, K prompts, prompts batched [B·K rows], tanh gate. saved: P and
   Pp for backward (the forward allocates them from the arena). */
static peft_status peft__cpu_attention(peft_graph *g, peft__node *nd) {
    int B = nd->i[0], T = nd->i[1], H = nd->i[2], KV = nd->i[3], hd = nd->i[4], K = nd->i[5];
    float *P = peft__arena_floats(g, (int64_t)B * H * T * T + (int64_t)B * H * T * K, 0);
    if (!P) return peft__fail(PEFT_ERR_NOMEM, "out of memory in the activation arena");
    nd->saved = P;
    peft__attn_args a;
    memset(&a, 0, sizeof a);
    a.q = nd->in[0]->data;
    a.k = nd->in[1]->data;
    a.v = nd->in[2]->data;
    a.o = nd->out->data;
    a.P = P;
    a.Pp = P + (size_t)B * H * T * T;
    a.pk = K ? nd->in[3]->data : NULL;
    a.pv = K ? nd->in[4]->data : NULL;
    a.x = nd->in[6] ? nd->in[6]->data : NULL;
    a.B = B;
    a.T = T;
    a.H = H;
    a.KV = KV;
    a.hd = hd;
    a.K = K;
    a.prompt_batched = nd->i[6];
    peft__gate_values(nd->in[5], nd->i[7], H, a.G);
    peft__gate_values(nd->in[7], 0, H, a.Gx);
    if (a.x) {                                  /* room for k + γ·x per (row, kv head) */
        a.scratch = peft__arena_floats(g, (int64_t)B * KV * T * hd, 0);
        if (!a.scratch) return peft__fail(PEFT_ERR_NOMEM, "out of memory in the activation arena");
    }
    peft__parallel_for((int64_t)B * KV, 1, peft__attn_fwd_range, &a);
    return PEFT_OK;
}

PEFTDEF peft_tensor *peft_attention(peft_graph *g, peft_tensor *q, peft_tensor *k,
                                    peft_tensor *v, int B, int T, int H, int KV, int hd) {
    return peft_attention_ex(g, q, k, v, B, T, H, KV, hd, NULL);
}

/* ---- reference attention: the definition, plainly ------------------------------
   For each sequence b, query head h (reading kv head h / (H/KV)) and row t:
       s_j = q_t·(k_j + γ_h·x_j)/√d  (j ≤ t),   o_t = Σ_j softmax(s)_j v_j
       o_t += G_h · Σ_i softmax(q_t·pk_i/√d)_i pv_i        (all K prompts)
   Each softmax takes three passes over its keys (maximum, sum, output) and
   recomputes the scores rather than keep a row: the reading stays one loop. */
static double peft__ref_score(const double *q, const double *k, const double *x, double gx, int hd) {
    double s = 0.0;
    for (int d = 0; d < hd; d++) {
        double key = x ? k[d] + gx * x[d] : k[d];
        s += q[d] * key;
    }
    return s / sqrt((double)hd);
}

/* o += w · Σ_j softmax_j(score(q, key j)) · v_j over n keys `stride` apart */
static void peft__ref_softmax_sum(const double *q, const double *k, const double *x, double gx,
                                  const double *v, int n, size_t stride, int hd, double w, double *o) {
    double mx = -INFINITY;
    double sum = 0.0;
    for (int j = 0; j < n; j++)
        mx = fmax(mx, peft__ref_score(q, k + j * stride, x ? x + j * stride : NULL, gx, hd));
    for (int j = 0; j < n; j++)
        sum += exp(peft__ref_score(q, k + j * stride, x ? x + j * stride : NULL, gx, hd) - mx);
    for (int j = 0; j < n; j++) {
        double p = exp(peft__ref_score(q, k + j * stride, x ? x + j * stride : NULL, gx, hd) - mx) / sum;
        for (int d = 0; d < hd; d++)
            o[d] += w * p * v[j * stride + d];
    }
}

PEFTDEF void peft_attention_ref(const double *q, const double *k, const double *v, int B, int T,
                                int H, int KV, int hd, const peft_attn_ref_extras *ex, double *o) {
    peft_attn_ref_extras none;
    memset(&none, 0, sizeof none);
    if (!ex) ex = &none;
    size_t qw = (size_t)H * hd;
    size_t kw = (size_t)KV * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / KV);
            double gx = ex->x ? ex->x_gate[ex->n_x_gate == 1 ? 0 : h] : 0.0;
            double g = ex->gate ? ex->gate[ex->n_gate == 1 ? 0 : h] : 0.0;
            double G = ex->gate_tanh ? tanh(g) : g;
            size_t seq = (size_t)b * T * kw + (size_t)kvh * hd;
            size_t prompts = (ex->prompt_batched ? (size_t)b * ex->n_prompts : 0) * kw + (size_t)kvh * hd;
            const double *xs = ex->x ? ex->x + seq : NULL;
            int K = ex->pk ? ex->n_prompts : 0;
            for (int t = 0; t < T; t++) {
                const double *qt = q + ((size_t)b * T + t) * qw + (size_t)h * hd;
                double *ot = o + ((size_t)b * T + t) * qw + (size_t)h * hd;
                for (int d = 0; d < hd; d++)
                    ot[d] = 0.0;
                peft__ref_softmax_sum(qt, k + seq, xs, gx, v + seq, t + 1, kw, hd, 1.0, ot);
                if (K > 0)
                    peft__ref_softmax_sum(qt, ex->pk + prompts, NULL, 0, ex->pv + prompts, K, kw, hd, G, ot);
            }
        }
}

/* ---- bf16 products (--precision bf16) --------------------------------------------
   y = x·Wᵀ and dx (+)= dy·W with W frozen in bf16 (a BF16 peft_qmatrix whose
   bf16_compute is set) and x, dy rounded to bf16 (nearest even) as they are
   packed: each product of two bf16 is exact in fp32, and AVX512-BF16's
   vdpbf16ps adds the pair (k, k+1) of them into fp32 accumulators at twice
   the fp32 FMA's rate. Panels: B strips of NR = 32 columns × kc/2 pairs,
   32 bits a (column, pair); A strips of 12 rows × kc/2 pairs, one 32-bit
   broadcast each. Rounding error against the exact sum of the rounded
   inputs: |c − Σ ãₖ·w̃ₖ| ≤ K·2⁻²⁴·Σ|ãₖ·w̃ₖ| (fp32 accumulation in any order,
   to first order). Without the instruction (or with PEFT_NO_BF16=1 in the
   environment) the products take the decode path of the ggml-typed linear:
   bf16 storage, fp32 activations and fp32 compute. Each element of C is
   summed by one thread in a fixed order: results do not depend on the
   thread count. */
#if defined(__GNUC__) && defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10) && \
        !defined(PEFT_NO_BF16_KERNEL)
#define PEFT__BF16_DOT 1
#include <immintrin.h>
#include <cpuid.h>
static int peft__bf16_cpu = -1;          /* cpuid's answer, asked once: -1 not yet */
#endif

PEFTDEF int peft_bf16_dot_available(void) {
    const char *off = getenv("PEFT_NO_BF16");
    if (off && *off && strcmp(off, "0")) return 0;
#ifdef PEFT__BF16_DOT
    if (peft__bf16_cpu < 0) {
        unsigned a, b, c, d, ok = 0;
        /* AVX-512 F and BW (leaf 7 EBX bits 16, 30), BF16 (leaf 7.1 EAX bit 5),
           and the OS saving the zmm state (XCR0 bits 1, 2, 5, 6, 7) */
        if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1) && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
            (b >> 16 & 1) && (b >> 30 & 1) && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1)) {
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            (void)hi;
            ok = (lo & 0xE6) == 0xE6;
        }
        peft__bf16_cpu = (int)ok;
    }
    return peft__bf16_cpu;
#else
    return 0;
#endif
}

#ifdef PEFT__BF16_DOT
#define PEFT__BMR 12
#define PEFT__BNR 32
#define PEFT__BKC 768                    /* k per slice: the A strip (18 KB) stays in L1 */
#define PEFT__BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

typedef struct {
    const peft_qmatrix *W;
    int backward;                        /* B(k, j) = W[k][j] (dy·W), else W[j][k] (x·Wᵀ) */
    int M, N, K, lda, ldc;
    const float *A;
    float *C;
    int jc, nc, pc, kc, over, nsplit;
    uint16_t *Bp;                        /* the slice's packed strips */
} peft__bf16_args;

static const uint16_t *peft__bf16_wrow(const peft_qmatrix *W, int64_t r) {
    return (const uint16_t *)(const void *)(W->data + (size_t)r * W->row_bytes);
}

/* strips [s0, s1) of the slice: (pair p, column j) at Bp[p·64 + 2j], k even low */
static void peft__bf16_pack_B(void *vctx, int64_t s0, int64_t s1) {
    const peft__bf16_args *g = (const peft__bf16_args *)vctx;
    int kp = (g->kc + 1) / 2;
    for (int64_t s = s0; s < s1; s++) {
        int j0 = (int)s * PEFT__BNR, nr = g->nc - j0 < PEFT__BNR ? g->nc - j0 : PEFT__BNR;
        uint16_t *Bp = g->Bp + (size_t)s * PEFT__BNR * 2 * (size_t)kp;
        if (!g->backward)
            for (int j = 0; j < nr; j++) {
                const uint16_t *w = peft__bf16_wrow(g->W, g->jc + j0 + j) + g->pc;
                for (int p = 0; p < kp; p++) {
                    Bp[(size_t)p * 64 + 2 * j] = w[2 * p];
                    Bp[(size_t)p * 64 + 2 * j + 1] = 2 * p + 1 < g->kc ? w[2 * p + 1] : 0;
                }
            }
        else
            for (int p = 0; p < kp; p++) {
                const uint16_t *r0 = peft__bf16_wrow(g->W, g->pc + 2 * p) + g->jc + j0;
                const uint16_t *r1 = 2 * p + 1 < g->kc ? peft__bf16_wrow(g->W, g->pc + 2 * p + 1) + g->jc + j0
                                                       : NULL;
                uint16_t *d = Bp + (size_t)p * 64;
                for (int j = 0; j < nr; j++) {
                    d[2 * j] = r0[j];
                    d[2 * j + 1] = r1 ? r1[j] : 0;
                }
            }
        for (int p = 0; nr < PEFT__BNR && p < kp; p++)
            memset(Bp + (size_t)p * 64 + 2 * nr, 0, sizeof(uint16_t) * 2 * (size_t)(PEFT__BNR - nr));
    }
}

/* rows [i0, i0 + mr) of A, k in the slice, rounded to bf16 in pairs: Ap[p·12 + i].
   Each row's pairs are made 16 at a time (32 floats to 32 bf16, nearest even)
   into a row-major strip, which the float transpose then turns into the
   12-wide panel (it moves the 32-bit pairs bit for bit). */
PEFT__BF16_TARGET static void peft__bf16_pack_A(const peft__bf16_args *g, int i0, int mr, uint32_t *Ap) {
    int kp = (g->kc + 1) / 2, full = g->kc / 32 * 32;
    _Alignas(64) uint32_t rows[PEFT__BMR * (PEFT__BKC / 2)];
    for (int i = 0; i < PEFT__BMR; i++) {
        uint32_t *d = rows + (size_t)i * kp;
        if (i >= mr) {
            memset(d, 0, sizeof(uint32_t) * (size_t)kp);
            continue;
        }
        const float *a = g->A + (size_t)(i0 + i) * g->lda + g->pc;
        for (int k = 0; k < full; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(a + k));
            _mm512_storeu_si512((void *)(d + k / 2), (__m512i)v);
        }
        for (int k = full; k < g->kc; k += 2) {
            uint32_t lo = peft_f32_to_bf16(a[k]), hi = k + 1 < g->kc ? peft_f32_to_bf16(a[k + 1]) : 0;
            d[k / 2] = lo | hi << 16;
        }
    }
    peft__transpose_into((float *)(void *)Ap, PEFT__BMR, (const float *)(const void *)rows, (size_t)kp,
                         PEFT__BMR, kp);
}

/* C[mr×nr] (+)= Ap · Bp over kp pairs: 12 × 2 accumulators of 16 floats */
PEFT__BF16_TARGET static void peft__bf16_ukernel(int kp, const uint32_t *Ap, const uint16_t *Bp, float *C,
                                                 int ldc, int mr, int nr, int over) {
#define PEFT__BROWS(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
#define PEFT__BACC(i) __m512 c##i##a = _mm512_setzero_ps(), c##i##b = _mm512_setzero_ps();
#define PEFT__BDOT(i) \
    { \
        __m512bh a = (__m512bh)_mm512_set1_epi32((int)Ap[i]); \
        c##i##a = _mm512_dpbf16_ps(c##i##a, a, b0); \
        c##i##b = _mm512_dpbf16_ps(c##i##b, a, b1); \
    }
#define PEFT__BPUT(i) \
    _mm512_storeu_ps(tile + (i)*PEFT__BNR, c##i##a); \
    _mm512_storeu_ps(tile + (i)*PEFT__BNR + 16, c##i##b);
    PEFT__BROWS(PEFT__BACC)
    for (int p = 0; p < kp; p++, Ap += PEFT__BMR, Bp += 64) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)Bp);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(Bp + 32));
        PEFT__BROWS(PEFT__BDOT)
    }
    float tile[PEFT__BMR * PEFT__BNR];
    PEFT__BROWS(PEFT__BPUT)
#undef PEFT__BROWS
#undef PEFT__BACC
#undef PEFT__BDOT
#undef PEFT__BPUT
    for (int i = 0; i < mr; i++) {
        float *c = C + (size_t)i * ldc;
        const float *t = tile + i * PEFT__BNR;
        if (nr == PEFT__BNR) {
            __m512 lo = _mm512_loadu_ps(t), hi = _mm512_loadu_ps(t + 16);
            if (!over) {
                lo = _mm512_add_ps(lo, _mm512_loadu_ps(c));
                hi = _mm512_add_ps(hi, _mm512_loadu_ps(c + 16));
            }
            _mm512_storeu_ps(c, lo);
            _mm512_storeu_ps(c + 16, hi);
        } else if (over) memcpy(c, t, sizeof(float) * (size_t)nr);
        else for (int j = 0; j < nr; j++) c[j] += t[j];
    }
}

/* units [u0, u1): a strip of 12 rows times a part of the slice's column strips */
static void peft__bf16_units(void *vctx, int64_t u0, int64_t u1) {
    const peft__bf16_args *g = (const peft__bf16_args *)vctx;
    _Alignas(64) uint32_t Ap[PEFT__BMR * (PEFT__BKC / 2)];             /* 15 KB */
    int kp = (g->kc + 1) / 2, strips = (g->nc + PEFT__BNR - 1) / PEFT__BNR;
    for (int64_t u = u0; u < u1; u++) {
        int i0 = (int)(u / g->nsplit) * PEFT__BMR, part = (int)(u % g->nsplit);
        int mr = g->M - i0 < PEFT__BMR ? g->M - i0 : PEFT__BMR;
        int s0 = strips * part / g->nsplit, s1 = strips * (part + 1) / g->nsplit;
        if (s1 <= s0) continue;
        peft__bf16_pack_A(g, i0, mr, Ap);
        for (int s = s0; s < s1; s++) {
            int j0 = s * PEFT__BNR, nr = g->nc - j0 < PEFT__BNR ? g->nc - j0 : PEFT__BNR;
            peft__bf16_ukernel(kp, Ap, g->Bp + (size_t)s * PEFT__BNR * 2 * (size_t)kp,
                               g->C + (size_t)i0 * g->ldc + g->jc + j0, g->ldc, mr, nr, g->over);
        }
    }
}

static PEFT__TLS float *peft__bf16_pack_b;
static PEFT__TLS size_t peft__bf16_pack_b_cap;
#endif

/* C = op(A)·op(W) in bf16 (see above): forward c [M, out] = a·Wᵀ (stored),
   backward c [M, in] (+)= a·W. 0 when it did not run (no instruction, no
   memory for the panel): the caller takes the decode path. */
static int peft__bf16_product(const peft_qmatrix *W, int backward, const float *a, int M, int out, int in,
                              float *c, int store) {
#ifdef PEFT__BF16_DOT
    if (W->type != PEFT_GGML_BF16 || !W->bf16_compute || !peft_bf16_dot_available()) return 0;
    peft__bf16_args g;
    memset(&g, 0, sizeof g);
    g.W = W;
    g.backward = backward;
    g.M = M;
    g.A = a;
    g.C = c;
    g.N = backward ? in : out;
    g.K = backward ? out : in;
    g.lda = g.K;
    g.ldc = g.N;
    if (M <= 0 || g.N <= 0) return 1;
    if (g.K <= 0) {
        for (int i = 0; store && i < M; i++) memset(c + (size_t)i * g.ldc, 0, sizeof(float) * (size_t)g.N);
        return 1;
    }
    int nslices = (g.N + PEFT__NC - 1) / PEFT__NC;
    int nc_even = ((g.N + nslices - 1) / nslices + PEFT__BNR - 1) / PEFT__BNR * PEFT__BNR;
    int kslices = (g.K + PEFT__BKC - 1) / PEFT__BKC;
    int kc_even = ((g.K + kslices - 1) / kslices + 1) / 2 * 2;
    size_t panel = (size_t)nc_even * (size_t)kc_even;           /* bf16 values */
    g.Bp = (uint16_t *)(void *)peft__pack_buf(&peft__bf16_pack_b, &peft__bf16_pack_b_cap, (panel + 1) / 2);
    if (!g.Bp) return 0;
    int64_t mstrips = (M + PEFT__BMR - 1) / PEFT__BMR;
    for (int js = 0; js < nslices; js++)
        for (int pc = 0; pc < g.K; pc += kc_even) {
            g.jc = js * nc_even;
            g.nc = g.N - g.jc < nc_even ? g.N - g.jc : nc_even;
            g.pc = pc;
            g.kc = g.K - pc < kc_even ? g.K - pc : kc_even;
            g.over = store && pc == 0;
            int strips = (g.nc + PEFT__BNR - 1) / PEFT__BNR;
            peft__parallel_for(strips, 4, peft__bf16_pack_B, &g);
            /* few rows (generation): the column strips split too, until every thread has work */
            g.nsplit = 1;
            while (g.nsplit < strips && mstrips * g.nsplit < 2 * peft__nthreads) g.nsplit++;
            peft__parallel_for(mstrips * g.nsplit, 1, peft__bf16_units, &g);
        }
    return 1;
#else
    (void)W;
    (void)backward;
    (void)a;
    (void)M;
    (void)out;
    (void)in;
    (void)c;
    (void)store;
    return 0;
#endif
}

/* ---- 4-bit linear ----------------------------------------------------------------
   y = x·Wᵀ,  dx += dy·W     with W [out, in] in 4-bit storage (frozen).
   The matrix product decodes W as it packs its panels (a strip of at most
   32 × 320 values at a time, on all threads), so no pass ever holds an
   fp32 copy of W, nor even of a tile of it.                                */
/* The frozen storages the products decode: kind 0 is peft_q4, kind 1 a
   ggml-typed peft_qmatrix (KERNELS: ggml block types). */
static void peft__q4_rows(const void *w, int ldb, int64_t row, int64_t col, int n, float *out) {
    peft_q4_dequantize((const peft_q4 *)w, row * ldb + col, n, out);
}
static void peft__qm_rows(const void *w, int ldb, int64_t row, int64_t col, int n, float *out) {
    (void)ldb;
    peft_qmatrix_decode((const peft_qmatrix *)w, row, col, n, out);
}
/* forward: y [N, out] = x·Wᵀ;  backward: dx [N, in] (+)= dy·W, stored
   over dx when `store` (a fresh gradient). a is x or dy, c is y or dx. */
static peft_status peft__frozen_product(int kind, const void *W, int backward, const float *a, int N, int out,
                                        int in, float *c, int store) {
    if (kind && peft__bf16_product((const peft_qmatrix *)W, backward, a, N, out, in, c, store))
        return PEFT_OK;
    peft__bstore src = { W, kind ? peft__qm_rows : peft__q4_rows };
    if (backward)
        return peft__gemm(0, 0, N, in, out, a, out, NULL, &src, NULL, in, store ? 0.0f : 1.0f, c, in);
    return peft__gemm(0, 1, N, out, in, a, in, NULL, &src, NULL, in, 0.0f, c, out);
}
/* the backward of both frozen linears (4-bit and ggml blocks: i[2] says which) */
static void peft__cpu_q4_linear_bw(peft_graph *g, peft__node *n) {
    peft_tensor *x = n->in[0];
    if (peft__frozen_product(n->i[2], n->aux, 1, n->out->grad, (int)peft__rows(x), n->i[0], n->i[1], x->grad,
                             x->grad_fresh) != PEFT_OK)
        g->failed = 1;
    x->grad_fresh = 0;
}
PEFTDEF peft_tensor *peft_q4_linear(peft_graph *g, peft_tensor *x, const peft_q4 *W, int out, int in) {
    if (!peft__ok(g, x, W)) return NULL;
    if (peft__cols(x) != in || W->n != (int64_t)out * in)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "q4_linear: input width or 4-bit weight size disagree");
    int64_t shape[PEFT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    peft_tensor *y = peft_tensor_new(g, x->ndim, shape);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_Q4_LINEAR, .out = y, .in = { x }, .aux = W, .i = { out, in, 0 } };
    return peft__run(g, &op, 0);
}
/* y = out [N, out], x = in[0] [N, in]; aux: the frozen W (i[2] 0: a
   peft_q4, 1: a peft_qmatrix), i: out, in. Both frozen linears. */
static peft_status peft__cpu_q4_linear(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *x = nd->in[0];
    return peft__frozen_product(nd->i[2], nd->aux, 0, x->data, (int)peft__rows(x), nd->i[0], nd->i[1],
                                nd->out->data, 1);
}

/* ---- ggml-typed linear ---------------------------------------------------------
   y = x·Wᵀ,  dx += dy·W     with W [out, in] in ggml blocks (frozen), decoded
   into the packed panels as the 4-bit linear above does (never a weight
   gradient: the blocks are not trainable).                                 */
static int peft__qmatrix_ok(const peft_qmatrix *W) {
    size_t rb;
    return W->data && W->rows > 0 && W->cols > 0 && W->rows <= INT32_MAX && W->cols <= INT32_MAX &&
           peft_ggml_row_bytes(W->type, W->cols, &rb) == PEFT_OK && rb == W->row_bytes;
}
PEFTDEF peft_tensor *peft_qmatrix_linear(peft_graph *g, peft_tensor *x, const peft_qmatrix *W) {
    if (!peft__ok(g, x, W)) return NULL;
    if (!peft__qmatrix_ok(W))
        return peft__op_fail(g, PEFT_ERR_ARG, "qmatrix_linear: the ggml weight has no data, a bad size or an "
                             "unsupported type");
    if (peft__cols(x) != W->cols)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "qmatrix_linear: input width and weight columns disagree");
    int out = (int)W->rows, in = (int)W->cols;
    int64_t shape[PEFT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    peft_tensor *y = peft_tensor_new(g, x->ndim, shape);
    if (!y) return NULL;
    /* i[2] = 1: the ggml kind for the shared forward and backward */
    peft_op op = { .kind = PEFT_OP_QMATRIX_LINEAR, .out = y, .in = { x }, .aux = W, .i = { out, in, 1 } };
    return peft__run(g, &op, 0);
}

/* ---- ggml-typed embedding -------------------------------------------------------
   x[r] = E[ids[r]]: only the rows looked up are decoded (a step of B·T
   tokens decodes B·T rows, not the table). E is frozen: no backward. */
typedef struct { const peft_qmatrix *E; const int *ids; float *y; } peft__qembed_args;
static void peft__qembed_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__qembed_args *a = (const peft__qembed_args *)vctx;
    int64_t D = a->E->cols;
    for (int64_t r = r0; r < r1; r++) peft_qmatrix_decode(a->E, a->ids[r], 0, D, a->y + r * D);
}
/* out [n, cols]; aux: E; ids [n]. No backward: the table is frozen. */
static peft_status peft__cpu_qmatrix_embedding(peft_graph *g, peft__node *nd) {
    (void)g;
    peft__qembed_args a = { (const peft_qmatrix *)nd->aux, nd->ids, nd->out->data };
    peft__parallel_for(nd->out->shape[0], 64, peft__qembed_range, &a);
    return PEFT_OK;
}
PEFTDEF peft_tensor *peft_qmatrix_embedding(peft_graph *g, const peft_qmatrix *E, const int *ids, int n) {
    if (!peft__ok(g, E, ids)) return NULL;
    if (!peft__qmatrix_ok(E))
        return peft__op_fail(g, PEFT_ERR_ARG, "qmatrix_embedding: the ggml table has no data, a bad size or "
                             "an unsupported type");
    for (int r = 0; r < n; r++)
        if (ids[r] < 0 || ids[r] >= E->rows)
            return peft__op_fail(g, PEFT_ERR_ARG, "token id out of range of the embedding table");
    peft_tensor *y = peft_tensor_2d(g, n, E->cols);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_QMATRIX_EMBEDDING, .out = y, .ids = ids, .aux = E, .i = { n } };
    return peft__run(g, &op, 0);
}

/* ---- LoRA linear ---------------------------------------------------------------
   y = x·Wᵀ + s·(x̃·Aᵀ)·Bᵀ,   x̃ = x ⊙ mask/(1−p) (dropout on the LoRA branch)
   u = x̃·Aᵀ [N,r] is kept;  du = s·dy·B,  dB += s·dyᵀ·u,  dA += duᵀ·x̃,
   dx += dy·W + (du·A) ⊙ mask/(1−p).  W + B·A is never formed: the extra
   memory is O(N·r), which is the whole point of LoRA.                      */
/* scratch of the LoRA op (x̃, s·u, du), reused from call to call */
static PEFT__TLS float *peft__lora_tmp;
static PEFT__TLS size_t peft__lora_tmp_cap;
static float *peft__lora_scratch(size_t n) { return peft__pack_buf(&peft__lora_tmp, &peft__lora_tmp_cap, n); }

/* dst = src ⊙ mask/(1−p), or dst += that: the dropout mask applied on all threads */
typedef struct { float *dst; const float *src; const uint8_t *mask; float keep; int add; } peft__mask_args;
static void peft__mask_range(void *vctx, int64_t j0, int64_t j1) {
    const peft__mask_args *a = (const peft__mask_args *)vctx;
    for (int64_t j = j0; j < j1; j++) {
        float v = a->mask[j] ? a->src[j] * a->keep : 0.0f;
        a->dst[j] = a->add ? a->dst[j] + v : v;
    }
}
static void peft__apply_mask(float *dst, const float *src, const uint8_t *mask, float keep, int add,
                             int64_t n) {
    peft__mask_args a = { dst, src, mask, keep, add };
    peft__parallel_for(n, 1 << 14, peft__mask_range, &a);
}

static void peft__cpu_lora_bw(peft_graph *g, peft__node *n) {
    peft_tensor *x = n->in[0], *W = n->in[1], *A = n->in[2], *Bm = n->in[3];
    const void *Wq = n->aux2;                   /* QLoRA's 4-bit or a ggml base (i[4] = 1), or NULL */
    int N = n->i[0], in = n->i[1], out = n->i[2], r = n->i[3];   /* W may be NULL: LoRA term only */
    float s = n->f[0], keep = n->f[1];
    const float *dy = n->out->grad, *u = n->saved;
    const uint8_t *mask = (const uint8_t *)n->aux;
    float *du = peft__lora_scratch((size_t)N * r + (mask ? (size_t)N * in : 0));
    float *xt = mask ? du + (size_t)N * r : NULL;
    if (!du) {
        g->failed = 1;
        peft__fail(PEFT_ERR_NOMEM, "lora_linear backward: out of memory");
        return;
    }
    peft_gemm(0, 0, N, r, out, dy, out, Bm->data, r, 0.0f, du, r);         /* du = s·dy·B     */
    for (int64_t j = 0; j < (int64_t)N * r; j++) du[j] *= s;
    if (Bm->requires_grad) {                                             /* dB += s·dyᵀ·u   */
        float *tmp = peft__arena_floats(g, (int64_t)out * r, 0);
        if (!tmp) {
            g->failed = 1;
            return;
        }
        peft_gemm(1, 0, out, r, N, dy, out, u, r, 0.0f, tmp, r);
        for (int64_t j = 0; j < (int64_t)out * r; j++) Bm->grad[j] += s * tmp[j];
    }
    const float *xd = x->data;
    if (mask) {                                                          /* x̃ = x ⊙ mask/(1−p) */
        peft__apply_mask(xt, x->data, mask, keep, 0, (int64_t)N * in);
        xd = xt;
    }
    if (A->requires_grad) peft_gemm(1, 0, r, in, N, du, r, xd, in, 1.0f, A->grad, in);
    if (W && W->requires_grad) peft_gemm(1, 0, out, in, N, dy, out, x->data, in, 1.0f, W->grad, in);
    if (x->requires_grad) {
        if (W) peft_gemm(0, 0, N, in, out, dy, out, W->data, in, x->grad_fresh ? 0.0f : 1.0f, x->grad, in);
        else if (Wq) {
            if (peft__frozen_product(n->i[4], Wq, 1, dy, N, out, in, x->grad, x->grad_fresh) != PEFT_OK) {
                g->failed = 1;
                return;
            }
        }
        else if (x->grad_fresh) memset(x->grad, 0, sizeof(float) * (size_t)x->n);
        x->grad_fresh = 0;
        if (mask) {                                                      /* through dropout */
            peft_gemm(0, 0, N, in, r, du, r, A->data, in, 0.0f, xt, in);
            peft__apply_mask(x->grad, xt, mask, keep, 1, (int64_t)N * in);
        } else peft_gemm(0, 0, N, in, r, du, r, A->data, in, 1.0f, x->grad, in);
    }
}
/* The dropout mask of row n is drawn from its own generator, seeded with
   key + n (key: one draw from the caller's rng), so rows are drawn on all
   threads and the mask depends on the seed alone, not on the thread count.
   (One generator for all rows made this the serial part of every adapted
   linear: 155M draws per QLoRA step of smollm-135m.) Each 64-bit draw gives
   two 24-bit uniforms u (its bits 40-63, then 16-39), and an element is kept
   when u ≥ p, compared as integers: u·2^24 ≥ ⌈p·2^24⌉. */
typedef struct {
    const float *x;
    float *xt;
    uint8_t *mask;
    uint64_t key;
    int in;
    float p, keep;
} peft__dropout_args;
static void peft__dropout_rows(void *vctx, int64_t r0, int64_t r1) {
    const peft__dropout_args *a = (const peft__dropout_args *)vctx;
    uint32_t cut = (uint32_t)ceil((double)a->p * 16777216.0);
    for (int64_t n = r0; n < r1; n++) {
        peft_rng rr;
        peft_rng_seed(&rr, a->key + (uint64_t)n);
        size_t o = (size_t)n * (size_t)a->in;
        uint64_t bits = 0;
        for (int j = 0; j < a->in; j++) {
            if (!(j & 1)) bits = peft_rng_u64(&rr);
            uint32_t u = (uint32_t)(j & 1 ? bits >> 16 : bits >> 40) & 0xFFFFFFu;
            uint8_t m = u >= cut;
            a->mask[o + j] = m;
            a->xt[o + j] = m ? a->x[o + j] * a->keep : 0.0f;
        }
    }
}

static peft_tensor *peft__lora_op(peft_graph *g, peft_tensor *x, peft_tensor *W, const peft_q4 *Wq,
                                  const peft_qmatrix *Wm, peft_tensor *A, peft_tensor *Bm, float s,
                                  float dropout, peft_rng *rng) {
    if (!peft__ok(g, x, A) || !Bm) return NULL;
    int N = (int)peft__rows(x), in = (int)A->shape[1], out = (int)Bm->shape[0], r = (int)A->shape[0];
    if (Wm && !peft__qmatrix_ok(Wm))
        return peft__op_fail(g, PEFT_ERR_ARG, "lora_linear: the ggml weight has no data, a bad size or an "
                             "unsupported type");
    if (peft__cols(x) != in || A->n != (int64_t)r * in || Bm->n != (int64_t)out * r ||
        (W && (W->shape[0] != out || W->shape[1] != in)) || (Wq && Wq->n != (int64_t)out * in) ||
        (Wm && (Wm->rows != out || Wm->cols != in)))
        return peft__op_fail(g, PEFT_ERR_SHAPE,
                             "lora_linear: shapes of x, W [out,in], A [r,in], B [out,r] disagree");
    int64_t shape[PEFT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    peft_tensor *y = peft_tensor_new(g, x->ndim, shape);
    if (!y) return NULL;
    int drop = dropout > 0.0f && rng != NULL;
    peft_op op = { .kind = PEFT_OP_LORA_LINEAR, .out = y, .in = { x, W, A, Bm },
                   .aux2 = Wq ? (const void *)Wq : Wm, .i = { N, in, out, r, Wm != NULL },
                   .f = { s, 1.0f, drop ? dropout : 0.0f },
                   /* + row_base: a shard's rows are numbered across the whole batch */
                   .seed = drop ? peft_rng_u64(rng) + (uint64_t)g->row_base : 0 };
    return peft__run(g, &op, 0);
}
/* y = out [N, out]; in: x [N, in], W [out, in] or NULL, A [r, in], B [out, r];
   aux2: a frozen base instead of W (i[4] 0: peft_q4, 1: peft_qmatrix) or
   NULL; i: N, in, out, r; f: s, (out) 1/(1−p), dropout p; seed: the mask's
   key. The forward keeps u [N, r] in saved and the mask (one byte per
   input, NULL without dropout) in aux, and sets f[1]. */
static peft_status peft__cpu_lora_linear(peft_graph *g, peft__node *nd) {
    peft_tensor *x = nd->in[0], *W = nd->in[1], *A = nd->in[2], *Bm = nd->in[3], *y = nd->out;
    int N = nd->i[0], in = nd->i[1], out = nd->i[2], r = nd->i[3];
    const void *Wf = nd->aux2;
    float s = nd->f[0], dropout = nd->f[2];
    int drop = dropout > 0.0f;
    /* kept for backward: u [N, r] and, with dropout, the mask as one byte
       per input (x̃ is rebuilt from it); x̃ and s·u are scratch */
    float *u = peft__arena_floats(g, (int64_t)N * r, 0);
    uint8_t *mask = u && drop ? (uint8_t *)peft__arena_alloc(g, (size_t)N * in) : NULL;
    float *su = u ? peft__lora_scratch((size_t)N * r + (drop ? (size_t)N * in : 0)) : NULL;
    if (!su || (drop && !mask))
        return peft__fail(PEFT_ERR_NOMEM, "lora_linear: out of memory");
    const float *xd = x->data;
    float keep = drop ? 1.0f / (1.0f - dropout) : 1.0f;
    if (drop) {
        float *xt = su + (size_t)N * r;
        peft__dropout_args da = { x->data, xt, mask, nd->seed, in, dropout, keep };
        peft__parallel_for(N, 8, peft__dropout_rows, &da);
        xd = xt;
    }
    peft_gemm(0, 1, N, r, in, xd, in, A->data, in, 0.0f, u, r);                    /* u = x̃·Aᵀ  */
    if (W) peft_gemm(0, 1, N, out, in, x->data, in, W->data, in, 0.0f, y->data, out);   /* x·Wᵀ  */
    else if (Wf) { /* x·Wᵀ from the frozen storage */
        peft_status st = peft__frozen_product(nd->i[4], Wf, 0, x->data, N, out, in, y->data, 1);
        if (st != PEFT_OK) return st;
    }
    for (int64_t j = 0; j < (int64_t)N * r; j++) su[j] = s * u[j];
    float beta = W || Wf ? 1.0f : 0.0f;
    peft_gemm(0, 1, N, out, r, su, r, Bm->data, r, beta, y->data, out);                  /* + s·u·Bᵀ */
    nd->saved = u;
    nd->aux = mask;
    nd->f[1] = keep;
    return PEFT_OK;
}

PEFTDEF peft_tensor *peft_lora_linear(peft_graph *g, peft_tensor *x, peft_tensor *W, peft_tensor *A,
                                      peft_tensor *Bm, float s, float dropout, peft_rng *rng) {
    return peft__lora_op(g, x, W, NULL, NULL, A, Bm, s, dropout, rng);
}
PEFTDEF peft_tensor *peft_qlora_linear(peft_graph *g, peft_tensor *x, const peft_q4 *W, peft_tensor *A,
                                       peft_tensor *Bm, float s, float dropout, peft_rng *rng) {
    if (!W) return peft__op_fail(g, PEFT_ERR_ARG, "qlora_linear: no 4-bit base");
    return peft__lora_op(g, x, NULL, W, NULL, A, Bm, s, dropout, rng);
}
PEFTDEF peft_tensor *peft_qmatrix_lora_linear(peft_graph *g, peft_tensor *x, const peft_qmatrix *W,
                                              peft_tensor *A, peft_tensor *Bm, float s, float dropout,
                                              peft_rng *rng) {
    if (!W) return peft__op_fail(g, PEFT_ERR_ARG, "qmatrix_lora_linear: no ggml base");
    return peft__lora_op(g, x, NULL, NULL, W, A, Bm, s, dropout, rng);
}

/* ---- bias -----------------------------------------------------------------------------
   y' = y + b per output column;  dy = dy',  db += Σ_rows dy'                */
static void peft__cpu_add_bias_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *y = n->in[0], *b = n->in[1];
    int64_t R = peft__rows(y), C = peft__cols(y);
    const float *dy = n->out->grad;
    if (y->requires_grad) for (int64_t j = 0; j < y->n; j++) y->grad[j] += dy[j];
    if (b->requires_grad)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) b->grad[c] += dy[r * C + c];
}
PEFTDEF peft_tensor *peft_add_bias(peft_graph *g, peft_tensor *y, peft_tensor *b) {
    if (!peft__ok(g, y, b)) return NULL;
    if (b->n != peft__cols(y))
        return peft__op_fail(g, PEFT_ERR_SHAPE, "add_bias: bias length differs from the row width");
    peft_tensor *o = peft__like(g, y);
    if (!o) return NULL;
    peft_op op = { .kind = PEFT_OP_ADD_BIAS, .out = o, .in = { y, b } };
    return peft__run(g, &op, 0);
}
/* o = out, y = in[0] [R, C], b = in[1] [C] */
static peft_status peft__cpu_add_bias(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *y = nd->in[0], *b = nd->in[1], *o = nd->out;
    int64_t R = peft__rows(y), C = peft__cols(y);
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) o->data[r * C + c] = y->data[r * C + c] + b->data[c];
    return PEFT_OK;
}

/* ---- bias and scale (LLaMA-Adapter V2) -------------------------------------------
   y' = s ⊙ (y + b)   per output column;  b = 0, s = 1 at init → y' = y exactly
   dy = s ⊙ dy',  db += Σ_rows s ⊙ dy',  ds += Σ_rows dy' ⊙ (y + b)          */
/* each thread a range of columns over every row: the bias and scale
   gradients are sums down the columns, added in row order whatever the
   thread count (bit-identical to one thread) */
typedef struct { peft_tensor *y, *b, *s; const float *dy; int64_t R, C; } peft__bs_args;
static void peft__bias_scale_bw_cols(void *vctx, int64_t c0, int64_t c1) {
    const peft__bs_args *a = (const peft__bs_args *)vctx;
    const float *sd = a->s->data, *bd = a->b->data;
    float *bg = a->b->requires_grad ? a->b->grad : NULL, *sg = a->s->requires_grad ? a->s->grad : NULL;
    for (int64_t r = 0; r < a->R; r++) {       /* one loop per gradient: each vectorises */
        const float *dy = a->dy + r * a->C, *y = a->y->data + r * a->C;
        float *yg = a->y->requires_grad ? a->y->grad + r * a->C : NULL;
        if (yg) for (int64_t c = c0; c < c1; c++) yg[c] += sd[c] * dy[c];
        if (bg) for (int64_t c = c0; c < c1; c++) bg[c] += sd[c] * dy[c];
        if (sg) for (int64_t c = c0; c < c1; c++) sg[c] += dy[c] * (y[c] + bd[c]);
    }
}
static void peft__cpu_bias_scale_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft__bs_args a = {
        n->in[0], n->in[1], n->in[2], n->out->grad, peft__rows(n->in[0]), peft__cols(n->in[0])
    };
    peft__parallel_for(a.C, 32, peft__bias_scale_bw_cols, &a);
}
typedef struct { const float *y, *b, *s; float *o; int64_t C; } peft__bs_fwd_args;
static void peft__bias_scale_rows(void *vctx, int64_t r0, int64_t r1) {
    const peft__bs_fwd_args *a = (const peft__bs_fwd_args *)vctx;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < a->C; c++) a->o[r * a->C + c] = a->s[c] * (a->y[r * a->C + c] + a->b[c]);
}
PEFTDEF peft_tensor *peft_bias_scale(peft_graph *g, peft_tensor *y, peft_tensor *b, peft_tensor *s) {
    if (!peft__ok(g, y, b) || !s) return NULL;
    int64_t C = peft__cols(y);
    if (b->n != C || s->n != C)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "bias_scale: bias and scale must match the row width");
    peft_tensor *o = peft__like(g, y);
    if (!o) return NULL;
    peft_op op = { .kind = PEFT_OP_BIAS_SCALE, .out = o, .in = { y, b, s } };
    return peft__run(g, &op, 0);
}
/* o = out, y = in[0] [R, C], b = in[1] [C], s = in[2] [C] */
static peft_status peft__cpu_bias_scale(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *y = nd->in[0];
    int64_t R = peft__rows(y), C = peft__cols(y);
    peft__bs_fwd_args a = { y->data, nd->in[1]->data, nd->in[2]->data, nd->out->data, C };
    peft__parallel_for(R, 16, peft__bias_scale_rows, &a);
    return PEFT_OK;
}

/* ---- attention over a few prompts (Excitor's key reconstruction) ---------------
   o = softmax(q·pkᵀ/√d)·pv     q [N,d], pk [K,d], pv [K,e]; unmasked.
   dPv += Pᵀ·do, dP = do·pvᵀ, dS = P⊙(dP − rowsum(P⊙dP))/√d, dq = dS·pk, dpk += dSᵀ·q */
static void peft__cpu_prompt_attend_bw(peft_graph *g, peft__node *n) {
    peft_tensor *q = n->in[0], *pk = n->in[1], *pv = n->in[2];
    int N = n->i[0], d = n->i[1], K = n->i[2], e = n->i[3];
    const float *P = n->saved, *dout = n->out->grad;
    float *dS = peft__arena_floats(g, (int64_t)N * K, 0);
    if (!dS) {
        g->failed = 1;
        return;
    }
    peft_gemm(0, 1, N, K, e, dout, e, pv->data, e, 0.0f, dS, K);                  /* dP       */
    float sc = 1.0f / sqrtf((float)d);
    for (int r = 0; r < N; r++) {
        float rs = 0.0f;
        for (int i = 0; i < K; i++) rs += P[r * K + i] * dS[r * K + i];
        for (int i = 0; i < K; i++) dS[r * K + i] = P[r * K + i] * (dS[r * K + i] - rs) * sc;
    }
    if (pv->requires_grad) peft_gemm(1, 0, K, e, N, P, K, dout, e, 1.0f, pv->grad, e);
    if (q->requires_grad) peft_gemm(0, 0, N, d, K, dS, K, pk->data, d, 1.0f, q->grad, d);
    if (pk->requires_grad) peft_gemm(1, 0, K, d, N, dS, K, q->data, d, 1.0f, pk->grad, d);
}
PEFTDEF peft_tensor *peft_prompt_attend(peft_graph *g, peft_tensor *q, peft_tensor *pk, peft_tensor *pv) {
    if (!peft__ok(g, q, pk) || !pv) return NULL;
    int N = (int)peft__rows(q), d = (int)peft__cols(q), K = (int)peft__rows(pk), e = (int)peft__cols(pv);
    if (peft__cols(pk) != d || peft__rows(pv) != K)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "prompt_attend: q [N,d], keys [K,d], values [K,e] disagree");
    peft_tensor *o = peft_tensor_2d(g, N, e);
    float *P = o ? peft__arena_floats(g, (int64_t)N * K, 0) : NULL;
    if (!P) return NULL;
    peft_op op = { .kind = PEFT_OP_PROMPT_ATTEND, .out = o, .in = { q, pk, pv }, .saved = P,
                   .i = { N, d, K, e } };
    return peft__run(g, &op, 0);
}
/* o = out [N, e]; in: q [N, d], pk [K, d], pv [K, e]; i: N, d, K, e;
   saved: the probabilities P [N, K] */
static peft_status peft__cpu_prompt_attend(peft_graph *g, peft__node *nd) {
    (void)g;
    const float *q = nd->in[0]->data, *pk = nd->in[1]->data, *pv = nd->in[2]->data;
    int N = nd->i[0], d = nd->i[1], K = nd->i[2], e = nd->i[3];
    float *P = nd->saved;
    peft_gemm(0, 1, N, K, d, q, d, pk, d, 0.0f, P, K);
    float sc = 1.0f / sqrtf((float)d);
    for (int r = 0; r < N; r++) {
        for (int i = 0; i < K; i++) P[r * K + i] *= sc;
        peft__softmax_row(P + (size_t)r * K, K);
    }
    peft_gemm(0, 0, N, e, K, P, K, pv, e, 0.0f, nd->out->data, e);
    return PEFT_OK;
}

/* ---- SwiGLU ----------------------------------------------------------------
   y = silu(g) ⊙ u,  silu(g) = g·σ(g)
   du = dy ⊙ silu(g);  dg = dy ⊙ u ⊙ σ(g)(1 + g(1 − σ(g)))                 */
typedef struct { const float *g, *u, *dy; float *y, *dg, *du; } peft__swiglu_args;

/* in blocks of 64: the sigmoids first (a loop the compiler vectorises),
   then each gradient in its own branch-free loop */
static void peft__swiglu_fwd_range(void *vctx, int64_t j0, int64_t j1) {
    const peft__swiglu_args *a = (const peft__swiglu_args *)vctx;
    float e[64];
    for (int64_t b = j0; b < j1; b += 64) {
        int m = j1 - b < 64 ? (int)(j1 - b) : 64;
        const float *x = a->g + b, *u = a->u + b;
        float *y = a->y + b;
        for (int j = 0; j < m; j++) e[j] = peft__exp(-x[j]);
        for (int j = 0; j < m; j++) y[j] = x[j] / (1.0f + e[j]) * u[j];
    }
}
static void peft__swiglu_bw_range(void *vctx, int64_t j0, int64_t j1) {
    const peft__swiglu_args *a = (const peft__swiglu_args *)vctx;
    float s[64];
    for (int64_t b = j0; b < j1; b += 64) {
        int m = j1 - b < 64 ? (int)(j1 - b) : 64;
        const float *x = a->g + b, *u = a->u + b, *dy = a->dy + b;
        for (int j = 0; j < m; j++) s[j] = 1.0f / (1.0f + peft__exp(-x[j]));
        if (a->du) {
            float *du = a->du + b;
            for (int j = 0; j < m; j++) du[j] += dy[j] * x[j] * s[j];
        }
        if (a->dg) {
            float *dg = a->dg + b;
            for (int j = 0; j < m; j++) dg[j] += dy[j] * u[j] * s[j] * (1.0f + x[j] * (1.0f - s[j]));
        }
    }
}
static void peft__cpu_swiglu_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *ga = n->in[0], *up = n->in[1];
    peft__swiglu_args a = { ga->data, up->data, n->out->grad, NULL, peft__grad_if(ga), peft__grad_if(up) };
    peft__parallel_for(ga->n, 16384, peft__swiglu_bw_range, &a);
}
PEFTDEF peft_tensor *peft_swiglu(peft_graph *g, peft_tensor *ga, peft_tensor *up) {
    if (!peft__ok(g, ga, up)) return NULL;
    if (ga->n != up->n) return peft__op_fail(g, PEFT_ERR_SHAPE, "swiglu: gate and up differ in size");
    peft_tensor *y = peft__like(g, ga);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_SWIGLU, .out = y, .in = { ga, up } };
    return peft__run(g, &op, 0);
}
/* y = out, gate = in[0], up = in[1] (any shape, one size) */
static peft_status peft__cpu_swiglu(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *ga = nd->in[0];
    peft__swiglu_args a = { ga->data, nd->in[1]->data, NULL, nd->out->data, NULL, NULL };
    peft__parallel_for(ga->n, 16384, peft__swiglu_fwd_range, &a);
    return PEFT_OK;
}

/* ---- residual add ------------------------------------------------------------
   y = a + b;  da += dy, db += dy                                           */
typedef struct { float *y; const float *a, *b; } peft__add_args;   /* y = a + b (a or b may be y) */
static void peft__add_range(void *vctx, int64_t j0, int64_t j1) {
    const peft__add_args *p = (const peft__add_args *)vctx;
    for (int64_t j = j0; j < j1; j++) p->y[j] = p->a[j] + p->b[j];
}
static void peft__cpu_add_bw(peft_graph *g, peft__node *n) {
    (void)g;
    for (int k = 0; k < 2; k++) {
        peft_tensor *t = n->in[k];
        peft__add_args p = { t->grad, t->grad, n->out->grad };
        if (t->requires_grad) peft__parallel_for(t->n, 16384, peft__add_range, &p);
    }
}
/* into_b: the sum overwrites b (see peft__alias) */
static peft_tensor *peft__add_op(peft_graph *g, peft_tensor *a, peft_tensor *b, int into_b) {
    if (!peft__ok(g, a, b)) return NULL;
    if (a->n != b->n) return peft__op_fail(g, PEFT_ERR_SHAPE, "add: operands differ in size");
    peft_tensor *y = into_b ? peft__alias(g, b) : peft__like(g, a);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_ADD, .out = y, .in = { a, b } };
    return peft__run(g, &op, 0);
}
/* y = out (may share b's data), a = in[0], b = in[1] (one size) */
static peft_status peft__cpu_add(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *a = nd->in[0];
    peft__add_args p = { nd->out->data, a->data, nd->in[1]->data };
    peft__parallel_for(a->n, 16384, peft__add_range, &p);
    return PEFT_OK;
}
PEFTDEF peft_tensor *peft_add(peft_graph *g, peft_tensor *a, peft_tensor *b) {
    return peft__add_op(g, a, b, 0);
}

/* ---- scale -------------------------------------------------------------------
   y = s·x;  dx += s·dy                                                     */
static void peft__cpu_scale_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0];
    for (int64_t j = 0; j < x->n; j++) x->grad[j] += n->f[0] * n->out->grad[j];
}
PEFTDEF peft_tensor *peft_scale(peft_graph *g, peft_tensor *x, float s) {
    if (!peft__ok(g, x, x)) return NULL;
    peft_tensor *y = peft__like(g, x);
    if (!y) return NULL;
    peft_op op = { .kind = PEFT_OP_SCALE, .out = y, .in = { x }, .f = { s } };
    return peft__run(g, &op, 0);
}
/* y = out, x = in[0], s = f[0] */
static peft_status peft__cpu_scale(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *x = nd->in[0], *y = nd->out;
    float s = nd->f[0];
    for (int64_t j = 0; j < x->n; j++) y->data[j] = s * x->data[j];
    return PEFT_OK;
}

/* ---- cross-entropy -------------------------------------------------------------
   L = (1/N') Σ_r [logsumexp(z_r) − z_r[t_r]] over rows with t_r ≠ −100
   dz_r = (softmax(z_r) − onehot(t_r)) · dL / N'                            */
/* log Σ_j e^{z_j}: e^{z − max} in chunks of 64 (vectorised), summed in double */
/* the largest element, a vector of running maxima at a time (compilers
   leave the scalar loop scalar; max is exact, so any grouping gives the
   same answer). NaNs are passed over, as `z > m ? z : m` does. */
static float peft__row_max(const float *z, int64_t V) {
    float mx = -INFINITY;
    int64_t j = 0;
#if defined(__GNUC__)
    typedef int32_t peft__vi __attribute__((vector_size(4 * PEFT__VW)));
    peft__vf m = PEFT__BCAST(-INFINITY);
    for (; j + PEFT__VW <= V; j += PEFT__VW) {
        peft__vf x = peft__vload(z + j);
        peft__vi gt = x > m;
        m = (peft__vf)((gt & (peft__vi)x) | (~gt & (peft__vi)m));
    }
    for (int l = 0; l < PEFT__VW; l++) mx = m[l] > mx ? m[l] : mx;
#endif
    for (; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    return mx;
}

/* Σ exp(z[j] − mx) in double. One running sum would make every add wait
   for the previous one (4 cycles each, the whole cost over a 32k-word
   vocabulary), so 32 interleaved partial sums are kept and added in a fixed
   order at the end: deterministic, and vectorised. With `e`, the
   exponentials are stored there too (e may be z itself). */
static double peft__sum_exp(const float *z, int64_t V, float mx, float *e_out) {
    double acc[32] = { 0 };
    float e[64];
    for (int64_t j0 = 0; j0 < V; j0 += 64) {
        int m = V - j0 < 64 ? (int)(V - j0) : 64;
        const float *zc = z + j0;
        for (int j = 0; j < m; j++) e[j] = peft__exp(zc[j] - mx);
        if (m == 64)
            for (int h = 0; h < 64; h += 32)
                for (int l = 0; l < 32; l++) acc[l] += e[h + l];
        else for (int j = 0; j < m; j++) acc[j & 31] += e[j];
        if (e_out) memcpy(e_out + j0, e, sizeof(float) * (size_t)m);
    }
    double s = 0.0;
    for (int l = 0; l < 32; l++) s += acc[l];
    return s;
}

static float peft__row_lse(const float *z, int64_t V) {
    float mx = peft__row_max(z, V);
    return mx + (float)log(peft__sum_exp(z, V, mx, NULL));
}

typedef struct { const float *z; float *dz, *lse; const int *t; int64_t V; float scale; } peft__xent_args;

static void peft__xent_lse_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__xent_args *a = (const peft__xent_args *)vctx;
    for (int64_t r = r0; r < r1; r++) {
        const float *zr = a->z + r * a->V;
        if (a->t[r] == -100) {     /* no loss on this row */
            a->lse[r] = 0.0f;
            continue;
        }
        a->lse[r] = peft__row_lse(zr, a->V);
    }
}
static void peft__xent_bw_range(void *vctx, int64_t r0, int64_t r1) {
    const peft__xent_args *a = (const peft__xent_args *)vctx;
    for (int64_t r = r0; r < r1; r++) {
        int t = a->t[r];
        if (t == -100) continue;
        int64_t V = a->V;
        const float *zr = a->z + r * V;
        float *dz = a->dz + r * V, lse = a->lse[r], scale = a->scale;
        for (int64_t j = 0; j < V; j++) dz[j] += peft__exp(zr[j] - lse) * scale;
        dz[t] -= scale;
    }
}
static void peft__cpu_xent_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *z = n->in[0];
    if (n->i[0] == 0) return;
    peft__xent_args a = {
        z->data, z->grad, n->saved, n->ids, peft__cols(z), n->out->grad[0] / (float)n->i[0]
    };
    peft__parallel_for(peft__rows(z), 8, peft__xent_bw_range, &a);
}
PEFTDEF peft_tensor *peft_cross_entropy(peft_graph *g, peft_tensor *z, const int *targets) {
    if (!peft__ok(g, z, targets)) return NULL;
    int64_t R = peft__rows(z), V = peft__cols(z);
    int64_t one = 1;
    for (int64_t r = 0; r < R; r++)
        if (targets[r] != -100 && (targets[r] < 0 || targets[r] >= V))
            return peft__op_fail(g, PEFT_ERR_ARG, "cross_entropy: target id out of range of the vocabulary");
    peft_tensor *L = peft_tensor_new(g, 1, &one);
    float *lse = L ? peft__arena_floats(g, R, 0) : NULL;
    if (!lse) return NULL;
    peft_op op = { .kind = PEFT_OP_CROSS_ENTROPY, .out = L, .in = { z }, .ids = targets, .saved = lse };
    return peft__run(g, &op, R);
}
/* L = out [1], z = in[0] [R, V], targets ids [R] (−100: no loss); saved:
   logsumexp per row [R]; the forward sets i[0] to the rows with a target */
static peft_status peft__cpu_cross_entropy(peft_graph *g, peft__node *nd) {
    (void)g;
    peft_tensor *z = nd->in[0], *L = nd->out;
    int64_t R = peft__rows(z), V = peft__cols(z);
    const int *targets = nd->ids;
    float *lse = nd->saved;
    peft__xent_args a = { z->data, NULL, lse, targets, V, 0.0f };
    peft__parallel_for(R, 8, peft__xent_lse_range, &a);
    double total = 0.0;                                   /* summed in row order: deterministic */
    int valid = 0;
    for (int64_t r = 0; r < R; r++) {
        if (targets[r] == -100) continue;
        total += (double)lse[r] - z->data[r * V + targets[r]];
        valid++;
    }
    L->data[0] = valid ? (float)(total / valid) : 0.0f;
    nd->i[0] = valid;
    return PEFT_OK;
}

/* ---- fused classifier + cross-entropy ---------------------------------------------
   L = (1/N') Σ_r [lse(z_r) − z_r[t_r]],  z_r = x_r·Wᵀ, rows with t_r ≠ −100 only.
   dz = (softmax(z) − onehot(t))/N' does not depend on anything after L, so the
   forward forms dx = dz·W and dW = dzᵀ·x chunk by chunk (a [chunk, vocab]
   buffer, never the whole logits) and backward scales them by dL. Rows
   without a target (an Alpaca prompt) cost nothing. */
typedef struct { float *dx, *dw; } peft__lce_saved;

static void peft__cpu_lce_bw(peft_graph *g, peft__node *n) {
    (void)g;
    const peft__lce_saved *sv = (const peft__lce_saved *)n->aux;
    float s = n->out->grad[0];
    peft_tensor *x = n->in[0], *w = n->in[1];
    if (sv->dx && x->requires_grad) for (int64_t j = 0; j < x->n; j++) x->grad[j] += s * sv->dx[j];
    if (sv->dw && w->requires_grad) for (int64_t j = 0; j < w->n; j++) w->grad[j] += s * sv->dw[j];
}

typedef struct { float *z; const int *t; float *loss; int64_t V; float inv_n; int grad; } peft__lce_args;

static void peft__lce_rows(void *vctx, int64_t r0, int64_t r1) {
    const peft__lce_args *a = (const peft__lce_args *)vctx;
    int64_t V = a->V;
    for (int64_t r = r0; r < r1; r++) {
        float *z = a->z + r * V;
        if (!a->grad) {
            a->loss[r] = peft__row_lse(z, V) - z[a->t[r]];
            continue;
        }
        /* dz = softmax(z)/n − onehot/n in place, with one pass of exp:
           the exponentials are kept from the sum and scaled by 1/(n·Σ) */
        float zt = z[a->t[r]], mx = peft__row_max(z, V);
        double s = peft__sum_exp(z, V, mx, z);
        a->loss[r] = mx + (float)log(s) - zt;
        float inv = a->inv_n, scale = (float)(1.0 / s) * inv;
        for (int64_t j = 0; j < V; j++) z[j] *= scale;
        z[a->t[r]] -= inv;
    }
}

/* wq, for z = x·Wᵀ and dx = dz·W: w's bf16 copy (peft_model_set_precision),
   or (w NULL) a frozen ggml-typed W decoded as the GEMM packs it; else NULL */
static peft_tensor *peft__linear_cross_entropy(peft_graph *g, peft_tensor *x, peft_tensor *w,
                                               const peft_qmatrix *wq, const int *targets) {
    if (!peft__ok(g, x, w ? (const void *)w : (const void *)wq) || !targets)
        return targets ? NULL : peft__op_fail(g, PEFT_ERR_ARG, "linear_cross_entropy: no targets");
    int64_t R = peft__rows(x), D = peft__cols(x), V = w ? peft__rows(w) : wq->rows;
    if ((w ? peft__cols(w) : wq->cols) != D)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "linear_cross_entropy: x and w disagree on the width");
    for (int64_t r = 0; r < R; r++) {
        if (targets[r] == -100) continue;
        if (targets[r] < 0 || targets[r] >= V)
            return peft__op_fail(g, PEFT_ERR_ARG,
                                 "linear_cross_entropy: target id out of range of the vocabulary");
    }
    int64_t one = 1;
    peft_tensor *L = peft_tensor_new(g, 1, &one);
    if (!L) return NULL;
    peft_op op = { .kind = PEFT_OP_LINEAR_CROSS_ENTROPY, .out = L, .in = { x, w }, .ids = targets,
                   .i = { g->grad_enabled && x->requires_grad, g->grad_enabled && w && w->requires_grad },
                   .aux2 = wq };
    return peft__run(g, &op, 0);
}
/* L = out [1]; in: x [R, D], w [V, D] (NULL: aux2 only); targets ids [R]
   (−100: no loss); i: the gradients to form (dx, dW); aux2: the blocks the
   products use (w's bf16 copy, or a frozen ggml-typed W), or NULL. The
   forward keeps dL/dx and dL/dW (a peft__lce_saved) in aux for the backward. */
static peft_status peft__cpu_linear_cross_entropy(peft_graph *g, peft__node *nd) {
    peft_tensor *x = nd->in[0], *w = nd->in[1], *L = nd->out;
    const peft_qmatrix *wq = (const peft_qmatrix *)nd->aux2;
    const int *targets = nd->ids;
    int64_t R = peft__rows(x), D = peft__cols(x), V = w ? peft__rows(w) : wq->rows;
    int64_t nv = 0;
    for (int64_t r = 0; r < R; r++) nv += targets[r] != -100;
    int gx = nd->i[0], gw = nd->i[1];
    /* chunks of ≤ PEFT_LCE_CHUNK_MB of logits, in whole row blocks of the GEMM per
       thread so that every chunk's products split evenly over the threads */
    int64_t chunk = nv < 1 ? 1 : nv, unit = (int64_t)PEFT__MC * peft__nthreads;
    int64_t cap = ((int64_t)PEFT_LCE_CHUNK_MB << 20) / 4 / (V > 0 ? V : 1);
    cap = cap >= unit ? cap / unit * unit : (cap < 1 ? 1 : cap);
    if (chunk > cap) {                          /* equal chunks: no short last one */
        int64_t n_chunks = (nv + cap - 1) / cap;
        chunk = (nv + n_chunks - 1) / n_chunks;
        if (chunk >= unit) chunk = (chunk + unit - 1) / unit * unit;
        if (chunk > cap) chunk = cap;
    }
    peft__lce_saved *sv = (peft__lce_saved *)peft__arena_alloc(g, sizeof *sv);
    float *z = peft__arena_floats(g, chunk * V, 0), *xs = peft__arena_floats(g, chunk * D, 0);
    float *loss = peft__arena_floats(g, chunk, 0), *dxs = gx ? peft__arena_floats(g, chunk * D, 0) : NULL;
    int *rows = (int *)peft__arena_alloc(g, sizeof(int) * (size_t)(nv + 1)),
        *tg = (int *)peft__arena_alloc(g, sizeof(int) * (size_t)chunk);
    if (!sv || !z || !xs || !loss || !rows || !tg || (gx && !dxs))
        return peft__fail(PEFT_ERR_NOMEM, "out of memory in the activation arena");
    sv->dx = gx ? peft__arena_floats(g, x->n, 1) : NULL;
    sv->dw = gw ? peft__arena_floats(g, w->n, 1) : NULL;
    if ((gx && !sv->dx) || (gw && !sv->dw)) return PEFT_ERR_NOMEM;
    /* Several chunks: W packed once for all of them (for z = x·Wᵀ and for
       dx = dz·W) instead of once per chunk and product, where the packed
       copies take no more than one more chunk of logits would. Never for a
       ggml-typed W: that would be the fp32 copy its blocks exist to avoid. */
    const float *wf = NULL, *wb = NULL;
    size_t pf = peft__gemm_packed_floats((int)V, (int)D),
           pb = gx ? peft__gemm_packed_floats((int)D, (int)V) : 0;
    if (nv > chunk && pf + pb <= (size_t)(chunk * V) && !wq) {
        float *f = peft__arena_floats(g, (int64_t)pf, 0),
              *b = pb ? peft__arena_floats(g, (int64_t)pb, 0) : NULL;
        if (!f || (pb && !b)) return PEFT_ERR_NOMEM;
        peft__gemm_pack_B(1, (int)V, (int)D, w->data, (int)D, f);
        if (b) peft__gemm_pack_B(0, (int)D, (int)V, w->data, (int)D, b);
        wf = f;
        wb = b;
    }
    int64_t k = 0;
    for (int64_t r = 0; r < R; r++) if (targets[r] != -100) rows[k++] = (int)r;
    double total = 0.0;
    for (int64_t c0 = 0; c0 < nv; c0 += chunk) {
        int64_t c = nv - c0 < chunk ? nv - c0 : chunk;
        for (int64_t i = 0; i < c; i++) {                      /* gather the rows with a target */
            memcpy(xs + i * D, x->data + (int64_t)rows[c0 + i] * D, sizeof(float) * (size_t)D);
            tg[i] = targets[rows[c0 + i]];
        }
        if (wq)
            (void)peft__frozen_product(1, wq, 0, xs, (int)c, (int)V, (int)D, z, 1);
        else
            peft__gemm(0, 1, (int)c, (int)V, (int)D, xs, (int)D, w->data, NULL, wf, (int)D, 0.0f, z, (int)V);
        peft__lce_args a = { z, tg, loss, V, 1.0f / (float)nv, gx || gw };
        peft__parallel_for(c, 4, peft__lce_rows, &a);
        for (int64_t i = 0; i < c; i++) total += loss[i];     /* row order: deterministic */
        if (gx) {
            if (wq)
                (void)peft__frozen_product(1, wq, 1, z, (int)c, (int)V, (int)D, dxs, 1);
            else
                peft__gemm(0, 0, (int)c, (int)D, (int)V, z, (int)V, w->data, NULL, wb, (int)D, 0.0f, dxs,
                           (int)D);
            for (int64_t i = 0; i < c; i++)
                memcpy(sv->dx + (int64_t)rows[c0 + i] * D, dxs + i * D, sizeof(float) * (size_t)D);
        }
        if (gw) peft_gemm(1, 0, (int)V, (int)D, (int)c, z, (int)V, xs, (int)D, 1.0f, sv->dw, (int)D);
    }
    L->data[0] = nv ? (float)(total / (double)nv) : 0.0f;
    nd->aux = sv;
    return PEFT_OK;
}
PEFTDEF peft_tensor *peft_linear_cross_entropy(peft_graph *g, peft_tensor *x, peft_tensor *w,
                                               const int *targets) {
    return peft__linear_cross_entropy(g, x, w, NULL, targets);
}
PEFTDEF peft_tensor *peft_qmatrix_linear_cross_entropy(peft_graph *g, peft_tensor *x, const peft_qmatrix *W,
                                                       const int *targets) {
    if (!peft__ok(g, x, W)) return NULL;
    if (!peft__qmatrix_ok(W))
        return peft__op_fail(g, PEFT_ERR_ARG, "qmatrix_linear_cross_entropy: the ggml weight has no data, a "
                             "bad size or an unsupported type");
    return peft__linear_cross_entropy(g, x, NULL, W, targets);
}

/* ============================================================================
   LLaMA: configuration, presets, parameters, forward
   ============================================================================
   Block (HF LlamaForCausalLM, fp32):
     x = embed[tokens]
     per layer:  h = rmsnorm(x)·w1;  x += o_proj(attn(rope(q(h)), rope(k(h)), v(h)))
                 h = rmsnorm(x)·w2;  x += down(silu(gate(h)) ⊙ up(h))
     logits = lm_head(rmsnorm(x))                                           */

/* LLaMA-4 (defined in "LLaMA-4: mixture of experts") */
static int64_t     peft__llama4_count(const peft_config *c, int active);
static void        peft__llama4_defaults(peft_config *c);
static int         peft__llama4_key(const peft_config *c, const char *key);
static peft_status peft__llama4_config(peft_config *c, const peft_json *j, const char *path);
static peft_status peft__llama4_params(peft_model *m);
static int         peft__llama4_preset(peft_config *c, const char *name);
static int64_t     peft__llama4_lora_count(const peft_config *c, const peft_method *m);
static const char *peft__llama4_preset_name(int i);
static const char *peft__llama4_ffn_module(const peft_config *c, int l);
static int         peft__llama4_ffn_width(const peft_config *c, int l);
static peft_tensor *peft__llama4_block(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x, int B,
                                       int T);

typedef struct {
    const char *name;
    int dim, hidden, layers, heads, kv, head_dim, vocab, max_pos;
    float eps, theta;
    int tie;
    peft_rope_type rope;
    float factor, low, high;
    int orig;
} peft__preset;

/* the RoPE kinds, short, so that the table below keeps one row per model */
#define PEFT__RD PEFT_ROPE_DEFAULT
#define PEFT__R3 PEFT_ROPE_LLAMA3
static const peft__preset peft__presets[] = {
    /* name, hidden, ffn, layers, heads, kv heads, head_dim (0: hidden/heads), vocab, context,
       rms eps, rope theta, tied, rope kind, llama3 factor, low, high, original context */
    {"llama-7b",       4096, 11008, 32, 32, 32,   0,  32000,   2048, 1e-6, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama-13b",      5120, 13824, 40, 40, 40,   0,  32000,   2048, 1e-6, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama-65b",      8192, 22016, 80, 64, 64,   0,  32000,   2048, 1e-5, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama2-7b",      4096, 11008, 32, 32, 32,   0,  32000,   4096, 1e-5, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama2-13b",     5120, 13824, 40, 40, 40,   0,  32000,   4096, 1e-5, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama2-70b",     8192, 28672, 80, 64,  8,   0,  32000,   4096, 1e-5, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama3-8b",      4096, 14336, 32, 32,  8,   0, 128256,   8192, 1e-5, 5e5, 0, PEFT__RD,  0, 0, 0,    0},
    {"llama3.1-8b",    4096, 14336, 32, 32,  8,   0, 128256, 131072, 1e-5, 5e5, 0,  PEFT__R3,  8, 1, 4, 8192},
    {"llama3.2-1b",    2048,  8192, 16, 32,  8,  64, 128256, 131072, 1e-5, 5e5, 1,  PEFT__R3, 32, 1, 4, 8192},
    {"llama3.2-3b",    3072,  8192, 28, 24,  8, 128, 128256, 131072, 1e-5, 5e5, 1,  PEFT__R3, 32, 1, 4, 8192},
    {"tinyllama-1.1b", 2048,  5632, 22, 32,  4,   0,  32000,   2048, 1e-5, 1e4, 0, PEFT__RD,  0, 0, 0,    0},
    {"smollm-135m",     576,  1536, 30,  9,  3,   0,  49152,   2048, 1e-5, 1e4, 1, PEFT__RD,  0, 0, 0,    0},
    {"smollm-360m",     960,  2560, 32, 15,  5,   0,  49152,   2048, 1e-5, 1e4, 1, PEFT__RD,  0, 0, 0,    0},
    {"stories15m",      288,   768,  6,  6,  6,   0,  32000,    256, 1e-5, 1e4, 1, PEFT__RD,  0, 0, 0,    0},
    {"stories42m",      512,  1376,  8,  8,  8,   0,  32000,   1024, 1e-5, 1e4, 1, PEFT__RD,  0, 0, 0,    0},
    {"stories110m",     768,  2048, 12, 12, 12,   0,  32000,   1024, 1e-5, 1e4, 1, PEFT__RD,  0, 0, 0,    0},
    /* a few-million-parameter LLaMA-3-style model for demos and tests */
    {"tiny",            256,   768,  4,  8,  2,   0,   4096,    512, 1e-5, 5e5, 1, PEFT__RD,  0, 0, 0,    0},
};
#undef PEFT__RD
#undef PEFT__R3
#define PEFT__N_PRESETS ((int)(sizeof peft__presets / sizeof peft__presets[0]))

PEFTDEF const char *peft_preset_name(int i) {
    if (i >= PEFT__N_PRESETS) return peft__llama4_preset_name(i - PEFT__N_PRESETS);
    return (i >= 0 && i < PEFT__N_PRESETS) ? peft__presets[i].name : NULL;
}

PEFTDEF int peft_llama_ffn_dim(int dim, int multiple_of, float ffn_mult) {
    int h = (int)(2 * (4 * dim) / 3);
    if (ffn_mult > 0) h = (int)(ffn_mult * h);
    return multiple_of * ((h + multiple_of - 1) / multiple_of);
}

static void peft__config_defaults(peft_config *c) {
    memset(c, 0, sizeof *c);
    c->norm_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->rope_type = PEFT_ROPE_DEFAULT;
    c->max_seq_len = 2048;
    c->bos_id = 1;
    c->eos_id = 2;
}

PEFTDEF peft_status peft_config_preset(peft_config *c, const char *name) {
    for (int i = 0; i < PEFT__N_PRESETS; i++) {
        const peft__preset *p = &peft__presets[i];
        if (strcmp(p->name, name) != 0) continue;
        peft__config_defaults(c);
        c->dim = p->dim;
        c->hidden_dim = p->hidden;
        c->n_layers = p->layers;
        c->n_heads = p->heads;
        c->n_kv_heads = p->kv;
        c->head_dim = p->head_dim ? p->head_dim : p->dim / p->heads;
        c->vocab_size = p->vocab;
        c->max_seq_len = p->max_pos;
        c->norm_eps = p->eps;
        c->rope_theta = p->theta;
        c->tie_embeddings = p->tie;
        c->rope_type = p->rope;
        c->rope_factor = p->factor;
        c->rope_low_freq = p->low;
        c->rope_high_freq = p->high;
        c->rope_orig_max_pos = p->orig;
        if (p->vocab == 128256) {
            c->bos_id = 128000;
            c->eos_id = 128001;
        }
        if (p->vocab == 49152) {
            c->bos_id = 0;
            c->eos_id = 0;
        }
        return PEFT_OK;
    }
    if (peft__llama4_preset(c, name)) return PEFT_OK;
    char list[1024] = "";
    for (int i = 0; peft_preset_name(i); i++) {
        strncat(list, peft_preset_name(i), sizeof list - strlen(list) - 3);
        if (peft_preset_name(i + 1)) strncat(list, ", ", sizeof list - strlen(list) - 1);
    }
    return peft__fail(PEFT_ERR_CONFIG, "unknown preset '%s' (known: %s)", name, list);
}

PEFTDEF int64_t peft_config_param_count(const peft_config *c) {
    if (c->llama4) return peft__llama4_count(c, 0);
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t layer = d * q + 2 * d * kv + q * d + 3 * d * (int64_t)c->hidden_dim + 2 * d;
    if (c->attn_bias) layer += q + 2 * kv + d;
    if (c->mlp_bias) layer += 2 * (int64_t)c->hidden_dim + d;
    int64_t emb = (int64_t)c->vocab_size * d;
    return emb + c->n_layers * layer + d + (c->tie_embeddings ? 0 : emb);
}

PEFTDEF peft_status peft_config_validate(const peft_config *c, const char *where) {
    const char *w = where ? where : "config";
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->vocab_size <= 0)
        return peft__fail(PEFT_ERR_CONFIG, "%s: hidden_size, intermediate_size, num_hidden_layers, "
                          "num_attention_heads and vocab_size must all be positive", w);
    /* bounds far above any LLaMA (405B: 16384 wide, 126 layers, 128k vocab), so that no product of
       them overflows and a hostile config.json cannot claim exabytes */
    if (c->dim > 1 << 20 || c->hidden_dim > 1 << 22 || c->n_layers > 4096 || c->n_heads > 1 << 16 ||
        c->n_kv_heads > 1 << 16 || c->head_dim > 1 << 16 || c->vocab_size > 1 << 24 ||
        (int64_t)c->n_heads * c->head_dim > 1 << 22)
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: implausible dimensions (hidden_size %d, intermediate_size %d, "
                          "num_hidden_layers %d, num_attention_heads %d, head_dim %d, vocab_size %d)",
                          w, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->head_dim, c->vocab_size);
    if (c->max_seq_len <= 0 || c->max_seq_len > 1 << 24)
        return peft__fail(PEFT_ERR_CONFIG, "%s: max_position_embeddings must be in 1 .. 2^24 (got %d)", w,
                          c->max_seq_len);
    if (c->bos_id >= c->vocab_size || c->eos_id >= c->vocab_size)
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: bos_token_id (%d) and eos_token_id (%d) must be below vocab_size (%d)", w,
                          c->bos_id, c->eos_id, c->vocab_size);
    if (peft_config_param_count(c) > (int64_t)1e12)
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: %lld parameters: more than 10^12 is not a model this library can hold", w,
                          (long long)peft_config_param_count(c));
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        return peft__fail(PEFT_ERR_CONFIG, "%s: num_attention_heads (%d) must be a multiple of "
                          "num_key_value_heads (%d)", w, c->n_heads, c->n_kv_heads);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0)
        return peft__fail(PEFT_ERR_CONFIG, "%s: head_dim must be positive and even (got %d)", w, c->head_dim);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        return peft__fail(PEFT_ERR_CONFIG, "%s: rms_norm_eps and rope_theta must be positive", w);
    if (c->rope_type == PEFT_ROPE_LLAMA3 && (!(c->rope_factor > 0) || c->rope_orig_max_pos <= 0 ||
                                             !(c->rope_low_freq > 0) || !(c->rope_high_freq > 0)))
        return peft__fail(PEFT_ERR_CONFIG, "%s: llama3 rope_scaling needs positive factor, low_freq_factor, "
                          "high_freq_factor and original_max_position_embeddings", w);
    if (c->rope_type == PEFT_ROPE_LINEAR && !(c->rope_factor > 0))
        return peft__fail(PEFT_ERR_CONFIG, "%s: linear rope_scaling needs a positive factor", w);
    return PEFT_OK;
}

/* ---- config.json ---------------------------------------------------------- */
static int peft__json_int(const peft_json *o, const char *key, int *out) {
    const peft_json *v = peft_json_get(o, key);
    if (!v || v->type == PEFT_JSON_NULL) return 0;
    if (v->type != PEFT_JSON_NUMBER || v->number != floor(v->number) || fabs(v->number) > 2147483647.0)
        return -1;
    *out = (int)v->number;
    return 1;
}
static int peft__json_float(const peft_json *o, const char *key, float *out) {
    const peft_json *v = peft_json_get(o, key);
    if (!v || v->type == PEFT_JSON_NULL) return 0;
    if (v->type != PEFT_JSON_NUMBER) return -1;
    *out = (float)v->number;
    return 1;
}
/* eos_token_id as config.json / generation_config.json give it: an int, a
   list of ints (at most PEFT_MAX_EOS) or null; 0 when it is anything else */
static int peft__eos_list(const peft_json *e, int *ids, int *n) {
    *n = 0;
    if (!e || e->type == PEFT_JSON_NULL) return 1;
    if (e->type == PEFT_JSON_NUMBER && e->number >= 0 && e->number < 1 << 30 && e->number == (int)e->number) {
        ids[(*n)++] = (int)e->number;
        return 1;
    }
    if (e->type != PEFT_JSON_ARRAY || e->n_children > PEFT_MAX_EOS) return 0;
    for (const peft_json *x = e->child; x; x = x->next) {
        if (x->type != PEFT_JSON_NUMBER || x->number < 0 || x->number >= 1 << 30 ||
            x->number != (int)x->number)
            return 0;
        ids[(*n)++] = (int)x->number;
    }
    return 1;
}

static const char *peft__json_str(const peft_json *o, const char *key) {
    const peft_json *v = peft_json_get(o, key);
    return (v && v->type == PEFT_JSON_STRING) ? v->string : NULL;
}

/* rope_scaling (transformers ≤ 4) or rope_parameters (transformers ≥ 5). */
static peft_status peft__parse_rope(peft_config *c, const peft_json *rs, const char *path) {
    if (!rs || rs->type == PEFT_JSON_NULL) return PEFT_OK;
    if (rs->type != PEFT_JSON_OBJECT)
        return peft__fail(PEFT_ERR_CONFIG, "%s: rope_scaling must be null or an object", path);
    float theta;
    if (peft__json_float(rs, "rope_theta", &theta) == 1) c->rope_theta = theta;
    const char *type = peft__json_str(rs, "rope_type");
    if (!type) type = peft__json_str(rs, "type");
    if (!type || strcmp(type, "default") == 0) {
        c->rope_type = PEFT_ROPE_DEFAULT;
        return PEFT_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope_type = PEFT_ROPE_LLAMA3;
        if (peft__json_float(rs, "factor", &c->rope_factor) != 1 ||
            peft__json_float(rs, "low_freq_factor", &c->rope_low_freq) != 1 ||
            peft__json_float(rs, "high_freq_factor", &c->rope_high_freq) != 1 ||
            peft__json_int(rs, "original_max_position_embeddings", &c->rope_orig_max_pos) != 1)
            return peft__fail(PEFT_ERR_CONFIG,
                              "%s: llama3 rope scaling needs numeric factor, low_freq_factor, "
                              "high_freq_factor and original_max_position_embeddings",
                              path);
        return PEFT_OK;
    }
    if (strcmp(type, "linear") == 0) {
        c->rope_type = PEFT_ROPE_LINEAR;
        if (peft__json_float(rs, "factor", &c->rope_factor) != 1)
            return peft__fail(PEFT_ERR_CONFIG, "%s: linear rope scaling needs a numeric factor", path);
        return PEFT_OK;
    }
    return peft__fail(PEFT_ERR_CONFIG, "%s: unsupported rope type '%s' (supported: default, llama3, linear)",
                      path, type);
}

/* Every other config.json key: those read above, those that change nothing here (with why),
   those refused by name, and the rest collected in c->unused for a warning. */
static peft_status peft__config_keys(peft_config *c, const peft_json *j, const char *path) {
    static const char *const read[] = { "model_type", "hidden_act", "attention_bias", "mlp_bias",
                                        "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads",
                                        "vocab_size", "num_key_value_heads", "head_dim",
                                        "max_position_embeddings", "bos_token_id", "eos_token_id",
                                        "rms_norm_eps", "rope_theta", "tie_word_embeddings",
                                        "quantization_config", "rope_scaling", "rope_parameters", NULL };
    /* no effect on the math of a LlamaForCausalLM forward/backward: bookkeeping (names, versions,
       the dtype weights were saved in, read from each tensor's own header instead), outputs
       transformers can return besides logits, the cache switch, the init of new weights,
       pretraining_tp (transformers 5's LlamaMLP/attention no longer read it), padding id
       (padding carries no loss and is never attended to), heads for other tasks */
    static const char *const inert[] = { "_name_or_path", "architectures", "transformers_version", "dtype",
                                         "torch_dtype", "use_cache", "initializer_range", "pretraining_tp",
                                         "pad_token_id", "output_attentions", "output_hidden_states",
                                         "return_dict", "chunk_size_feed_forward", "is_encoder_decoder",
                                         "id2label", "label2id", "problem_type", "torchscript",
                                         "use_return_dict", NULL };
    for (const peft_json *v = j->child; v; v = v->next) {
        int known = 0;
        for (int i = 0; read[i] && !known; i++) known = !strcmp(v->key, read[i]);
        for (int i = 0; inert[i] && !known; i++) known = !strcmp(v->key, inert[i]);
        if (known || peft__llama4_key(c, v->key)) continue;
        if (!strcmp(v->key, "attention_dropout")) {
            /* dropout on the attention probabilities while training: not implemented */
            if (v->type != PEFT_JSON_NULL && (v->type != PEFT_JSON_NUMBER || v->number != 0))
                return peft__fail(PEFT_ERR_UNSUPPORTED,
                                  "%s: attention_dropout %g is not supported (only 0: peft.h applies no "
                                  "dropout to attention probabilities)", path,
                                  v->type == PEFT_JSON_NUMBER ? v->number : -1.0);
            continue;
        }
        size_t used = strlen(c->unused);
        snprintf(c->unused + used, sizeof c->unused - used, "%s%s", used ? ", " : "", v->key);
    }
    return PEFT_OK;
}

PEFTDEF peft_status peft_config_load(peft_config *c, const char *path) {
    peft_json *j;
    peft_status s = peft_json_load(&j, path);
    if (s != PEFT_OK) return s;
    peft__config_defaults(c);
    if (j->type != PEFT_JSON_OBJECT) {
        peft_json_free(j);
        return peft__fail(PEFT_ERR_CONFIG, "%s: expected a JSON object", path);
    }
    const char *mt = peft__json_str(j, "model_type");
    if (mt && !strcmp(mt, "llama4")) {
        s = peft__fail(PEFT_ERR_UNSUPPORTED,
                       "%s: model_type 'llama4' (Llama4ForConditionalGeneration, text and "
                       "vision) is not supported: load a text decoder folder (Llama4ForCausalLM, model_type "
                       "'llama4_text')",
                       path);
        goto done;
    }
    if (mt && !strcmp(mt, "llama4_text")) peft__llama4_defaults(c);
    else if (mt && strcmp(mt, "llama") != 0) {
        s = peft__fail(PEFT_ERR_CONFIG, "%s: model_type '%s' is not supported (only 'llama')", path, mt);
        goto done;
    }
    const char *act = peft__json_str(j, "hidden_act");
    if (act && strcmp(act, "silu") != 0) {
        s = peft__fail(PEFT_ERR_CONFIG, "%s: hidden_act '%s' is not supported (LLaMA uses 'silu')", path,
                       act);
        goto done;
    }
    static const char *const bias_keys[] = { "attention_bias", "mlp_bias" };
    for (int i = 0; i < 2; i++) {
        const peft_json *b = peft_json_get(j, bias_keys[i]);
        if (b && b->type != PEFT_JSON_BOOL && b->type != PEFT_JSON_NULL) {
            s = peft__fail(PEFT_ERR_CONFIG, "%s: %s must be true or false", path, bias_keys[i]);
            goto done;
        }
        *(i ? &c->mlp_bias : &c->attn_bias) = b && b->type == PEFT_JSON_BOOL && b->number != 0;
    }
    struct { const char *key; int *dst; int required; } ints[] = {
        { "hidden_size", &c->dim, 1 }, { "intermediate_size", &c->hidden_dim, 1 },
        { "num_hidden_layers", &c->n_layers, 1 }, { "num_attention_heads", &c->n_heads, 1 },
        { "vocab_size", &c->vocab_size, 1 }, { "num_key_value_heads", &c->n_kv_heads, 0 },
        { "head_dim", &c->head_dim, 0 }, { "max_position_embeddings", &c->max_seq_len, 0 },
        { "bos_token_id", &c->bos_id, 0 }, { "eos_token_id", &c->eos_id, 0 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int r = peft__json_int(j, ints[i].key, ints[i].dst);
        if (r < 0 && strcmp(ints[i].key, "eos_token_id") == 0) {
            /* LLaMA-3 instruct lists several EOS ids: every one stops generation, the first is eos_id */
            const peft_json *e = peft_json_get(j, "eos_token_id");
            if (peft__eos_list(e, c->eos_ids, &c->n_eos)) {
                c->eos_id = c->n_eos > 0 ? c->eos_ids[0] : -1;     /* null: no EOS */
                r = 1;
            }
        } else if (r > 0 && strcmp(ints[i].key, "eos_token_id") == 0) {
            c->eos_ids[0] = c->eos_id;
            c->n_eos = 1;
        }
        if (r < 0 || (r == 0 && ints[i].required)) {
            s = peft__fail(PEFT_ERR_CONFIG, "%s: '%s' is %s", path, ints[i].key,
                           r < 0 ? "not an integer" : "missing");
            goto done;
        }
    }
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    if (c->head_dim == 0 && c->n_heads > 0) c->head_dim = c->dim / c->n_heads;
    if (c->llama4 && (s = peft__llama4_config(c, j, path)) != PEFT_OK) goto done;
    if (peft__json_float(j, "rms_norm_eps", &c->norm_eps) < 0 ||
        peft__json_float(j, "rope_theta", &c->rope_theta) < 0) {
        s = peft__fail(PEFT_ERR_CONFIG, "%s: rms_norm_eps and rope_theta must be numbers", path);
        goto done;
    }
    const peft_json *tie = peft_json_get(j, "tie_word_embeddings");
    if (tie && tie->type == PEFT_JSON_BOOL) c->tie_embeddings = tie->number != 0;
    else if (tie && tie->type != PEFT_JSON_NULL) {
        s = peft__fail(PEFT_ERR_CONFIG, "%s: tie_word_embeddings must be true or false", path);
        goto done;
    }
    const peft_json *qc = peft_json_get(j, "quantization_config");
    if (qc && qc->type == PEFT_JSON_OBJECT) {
        const char *qm = peft__json_str(qc, "quant_method"), *qt = peft__json_str(qc, "bnb_4bit_quant_type");
        const peft_json *l4 = peft_json_get(qc, "load_in_4bit"),
                        *dq = peft_json_get(qc, "bnb_4bit_use_double_quant");
        if (!qm || strcmp(qm, "bitsandbytes") != 0 || !l4 || l4->number == 0 || !qt ||
            (strcmp(qt, "nf4") && strcmp(qt, "fp4"))) {
            s = peft__fail(PEFT_ERR_UNSUPPORTED,
                           "%s: quantization_config is supported only for bitsandbytes 4-bit nf4/fp4", path);
            goto done;
        }
        /* FSDP-QLoRA stores the packed bytes as another dtype (bnb_4bit_quant_storage): the same bytes */
        const char *qs = peft__json_str(qc, "bnb_4bit_quant_storage");
        if (qs && strcmp(qs, "uint8") && strcmp(qs, "int8") && strcmp(qs, "bfloat16") &&
            strcmp(qs, "float16") && strcmp(qs, "float32")) {
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: bnb_4bit_quant_storage '%s' is not supported "
                           "(uint8, int8, bfloat16, float16, float32)", path, qs);
            goto done;
        }
        c->q4 = 1;
        c->q4_type = strcmp(qt, "fp4") == 0 ? PEFT_FP4 : PEFT_NF4;
        c->q4_double = dq && dq->number != 0;
    }
    s = peft__parse_rope(c, peft_json_get(j, "rope_scaling"), path);
    if (s == PEFT_OK) s = peft__parse_rope(c, peft_json_get(j, "rope_parameters"), path);
    if (s == PEFT_OK) s = peft__config_keys(c, j, path);
    if (s == PEFT_OK) s = peft_config_validate(c, path);
done:
    peft_json_free(j);
    return s;
}

/* ---- RoPE tables -------------------------------------------------------------
   inv_freq[i] = θ^(−2i/d); llama3 scaling divides long wavelengths by factor
   and blends the band between; linear scaling divides positions.           */
static void peft__inv_freq(const peft_config *c, double *inv) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (2.0 * i) / (double)c->head_dim);
        if (c->rope_type == PEFT_ROPE_LLAMA3) {
            double orig = c->rope_orig_max_pos, low = c->rope_low_freq, high = c->rope_high_freq;
            double wl = 2.0 * 3.14159265358979323846 / f, lo_wl = orig / low, hi_wl = orig / high;
            if (wl > lo_wl) f = f / c->rope_factor;
            else if (wl >= hi_wl && high != low) {
                double s = (orig / wl - low) / (high - low);
                f = (1.0 - s) * f / c->rope_factor + s * f;
            }
        }
        inv[i] = f;
    }
}

/* Grows the model's cos/sin table to at least n positions (allocates only
   when a longer sequence than ever before arrives). */
static peft_status peft__rope_ensure(peft_model *m, int n) {
    if (n <= m->rope.n_pos) return PEFT_OK;
    int half = m->cfg.head_dim / 2;
    /* a fresh block, the old one freed only once the new table is in place:
       on failure the model's cos/sin still point into a live table */
    double *inv = (double *)PEFT_MALLOC((size_t)half * sizeof(double));
    float *buf = inv ? (float *)PEFT_MALLOC((size_t)2 * n * half * sizeof(float)) : NULL;
    if (!buf) {
        PEFT_FREE(inv);
        return peft__fail(PEFT_ERR_NOMEM, "no memory for a RoPE table of %d positions", n);
    }
    PEFT_FREE(m->rope_buf);
    m->rope_buf = buf;
    peft__inv_freq(&m->cfg, inv);
    double pos_scale = m->cfg.rope_type == PEFT_ROPE_LINEAR ? 1.0 / m->cfg.rope_factor : 1.0;
    for (int p = 0; p < n; p++)
        for (int i = 0; i < half; i++) {
            /* HF computes the angle in fp32: (inv_freq_f32 * pos_f32) */
            float ang = (float)inv[i] * (float)(p * pos_scale);
            buf[(size_t)p * half + i] = cosf(ang);
            buf[(size_t)n * half + (size_t)p * half + i] = sinf(ang);
        }
    PEFT_FREE(inv);
    m->rope.head_dim = m->cfg.head_dim;
    m->rope.rot_dim = m->cfg.head_dim;
    m->rope.interleaved = m->cfg.rope_interleaved;
    m->rope.n_pos = n;
    m->rope.cos = buf;
    m->rope.sin = buf + (size_t)n * half;
    return PEFT_OK;
}

/* ---- parameters ---------------------------------------------------------------- */
static peft_tensor *peft__add_param(peft_model *m, const char *name, int64_t rows, int64_t cols) {
    int64_t shape[2] = { rows, cols };
    peft_tensor *t = peft_param_new(name, cols ? 2 : 1, shape);
    if (t) m->params[m->n_params++] = t;
    return t;
}

PEFTDEF peft_status peft_model_new(peft_model **out, const peft_config *c, int init, uint64_t seed) {
    *out = NULL;
    peft_status s = peft_check_cpu();
    if (s == PEFT_OK) s = peft_config_validate(c, "config");
    if (s != PEFT_OK) return s;
    peft_model *m = (peft_model *)peft__calloc(sizeof *m);
    if (!m) return peft__fail(PEFT_ERR_NOMEM, "no memory for the model");
    m->cfg = *c;
    int max_params = 3 + 19 * c->n_layers;      /* room for biases (configured or merged in), MoE */
    m->params = (peft_tensor **)peft__calloc((size_t)max_params * sizeof(peft_tensor *));
    m->layers = (peft_layer *)peft__calloc((size_t)c->n_layers * sizeof(peft_layer));
    if (!m->params || !m->layers) goto oom;
    int64_t D = c->dim, Q = (int64_t)c->n_heads * c->head_dim, KVD = (int64_t)c->n_kv_heads * c->head_dim;
    char name[128];
    if (!(m->embed = peft__add_param(m, "model.embed_tokens.weight", c->vocab_size, D))) goto oom;
    for (int l = 0; l < c->n_layers; l++) {
        peft_layer *L = &m->layers[l];
        char ffn[3][64];
        int64_t FF = peft__llama4_ffn_width(c, l);
        for (int k = 0; k < 3; k++)
            snprintf(ffn[k], sizeof ffn[k], "%s.%s_proj.weight", peft__llama4_ffn_module(c, l),
                     k == 0 ? "gate" : k == 1 ? "up" : "down");
        struct { peft_tensor **dst; const char *suffix; int64_t r, cols; } spec[9] = {
            { &L->attn_norm, "input_layernorm.weight", D, 0 },
            { &L->lin[PEFT_Q].w, "self_attn.q_proj.weight", Q, D },
            { &L->lin[PEFT_K].w, "self_attn.k_proj.weight", KVD, D },
            { &L->lin[PEFT_V].w, "self_attn.v_proj.weight", KVD, D },
            { &L->lin[PEFT_O].w, "self_attn.o_proj.weight", D, Q },
            { &L->ffn_norm, "post_attention_layernorm.weight", D, 0 },
            { &L->lin[PEFT_GATE].w, ffn[0], FF, D },
            { &L->lin[PEFT_UP].w, ffn[1], FF, D },
            { &L->lin[PEFT_DOWN].w, ffn[2], D, FF },
        };
        for (int k = 0; k < 9; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, spec[k].suffix);
            if (!(*spec[k].dst = peft__add_param(m, name, spec[k].r, spec[k].cols))) goto oom;
        }
        for (int k = 0; k < PEFT_N_SITES; k++) {
            if (!(k <= PEFT_O ? c->attn_bias : c->mlp_bias)) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, k <= PEFT_O ? "self_attn" : "mlp",
                     k == PEFT_Q      ? "q_proj"
                     : k == PEFT_K    ? "k_proj"
                     : k == PEFT_V    ? "v_proj"
                     : k == PEFT_O    ? "o_proj"
                     : k == PEFT_GATE ? "gate_proj"
                     : k == PEFT_UP   ? "up_proj"
                                      : "down_proj");
            if (!(L->lin[k].b = peft__add_param(m, name, L->lin[k].w->shape[0], 0))) goto oom;
        }
    }
    if (c->llama4 && peft__llama4_params(m) != PEFT_OK) goto oom;
    if (!(m->norm = peft__add_param(m, "model.norm.weight", D, 0))) goto oom;
    if (c->tie_embeddings) m->lm_head = m->embed;
    else if (!(m->lm_head = peft__add_param(m, "lm_head.weight", c->vocab_size, D))) goto oom;
    if (init) {
        peft_rng rng;
        peft_rng_seed(&rng, seed);
        for (int i = 0; i < m->n_params; i++) {
            peft_tensor *t = m->params[i];
            int is_bias = strstr(t->name, ".bias") != NULL;
            if (t->ndim == 1) for (int64_t j = 0; j < t->n; j++) t->data[j] = is_bias ? 0.0f : 1.0f;
            else for (int64_t j = 0; j < t->n; j++) t->data[j] = 0.02f * peft_rng_normal(&rng);
        }
    }
    if (peft__rope_ensure(m, c->max_seq_len < 256 ? c->max_seq_len : 256) != PEFT_OK) goto oom;
    *out = m;
    return PEFT_OK;
oom:
    peft_model_free(m);
    return peft__fail(PEFT_ERR_NOMEM, "no memory for a model of %lld parameters",
                      (long long)peft_config_param_count(c));
}

PEFTDEF peft_status peft_model_from_preset(peft_model **out, const char *preset, int init, uint64_t seed) {
    peft_config c;
    peft_status s = peft_config_preset(&c, preset);
    return s != PEFT_OK ? s : peft_model_new(out, &c, init, seed);
}

PEFTDEF void peft_model_free(peft_model *m) {
    if (!m) return;
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            peft_q4_free(m->layers[l].lin[s].q4);
            PEFT_FREE(m->layers[l].lin[s].q4);
            peft_qmatrix_free(m->layers[l].lin[s].qm);
            PEFT_FREE(m->layers[l].lin[s].qm);
        }
    if (m->head_qm != m->embed_qm) {
        peft_qmatrix_free(m->head_qm);
        PEFT_FREE(m->head_qm);
    }
    peft_qmatrix_free(m->embed_qm);
    PEFT_FREE(m->embed_qm);
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) PEFT_FREE(m->layers[l].moe.counts);
    for (int i = 0; i < m->n_params; i++) peft_param_free(m->params[i]);
    for (int i = 0; i < m->n_extra; i++) peft_param_free(m->extra[i]);
    peft_param_free(m->tokens_table);
    PEFT_FREE(m->params);
    PEFT_FREE(m->extra);
    PEFT_FREE(m->cond);
    PEFT_FREE(m->layers);
    PEFT_FREE(m->rope_buf);
    if (m->recompute) peft_graph_free(m->recompute);
    if (m->gguf) peft_gguf_close(m->gguf);
    PEFT_FREE(m->gguf);
    peft_qmatrix_free(m->head_bf16);
    PEFT_FREE(m->head_bf16);
    PEFT_FREE(m);
}

PEFTDEF void peft_model_set_checkpointing(peft_model *m, int on) { m->checkpointing = on != 0; }

PEFTDEF peft_tensor *peft_model_param(const peft_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i]->name, name) == 0) return m->params[i];
    return NULL;
}

PEFTDEF void peft_model_set_trainable_all(peft_model *m, int trainable) {
    for (int i = 0; i < m->n_params; i++) peft_param_set_trainable(m->params[i], trainable);
}

PEFTDEF int64_t peft_model_base_count(const peft_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++) n += m->params[i]->n;
    return n;
}

PEFTDEF int peft_model_trainable(const peft_model *m, peft_tensor ***list) {
    peft_tensor **l =
            (peft_tensor **)peft__calloc((size_t)(m->n_params + m->n_extra + 1) * sizeof(peft_tensor *));
    int n = 0;
    if (!l) {
        *list = NULL;
        return -1;
    }
    for (int i = 0; i < m->n_params; i++) if (m->params[i]->requires_grad) l[n++] = m->params[i];
    for (int i = 0; i < m->n_extra; i++) if (m->extra[i]->requires_grad) l[n++] = m->extra[i];
    *list = l;
    return n;
}

PEFTDEF int64_t peft_model_trainable_count(const peft_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_params; i++) if (m->params[i]->requires_grad) n += m->params[i]->n;
    for (int i = 0; i < m->n_extra; i++) if (m->extra[i]->requires_grad) n += m->extra[i]->n;
    return n;
}

/* ---- forward -------------------------------------------------------------------- */
static peft_tensor *peft__site_forward(peft_model *m, peft_graph *g, peft_linear_site *s, peft_tensor *x);
static void peft__attn_extras(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *h, int B,
                              peft_attn_extras *ex, int prompts, int excitor);

/* ============================================================================
   LLaMA-4: mixture of experts
   ============================================================================
   transformers' Llama4ForCausalLM (models/llama4/modeling_llama4.py, 5.24),
   float32. A block is the LLaMA block with four changes:
     attention  RoPE layers (layer l with (l+1) % no_rope_layer_interval != 0):
                RoPE on interleaved pairs (x[2i], x[2i+1]: the complex
                product of the Meta layout), then, with use_qk_norm, the
                weightless L2 norm of each head of q and k,
                q/√(mean(q²) + eps); with attention_chunk_size c, query t
                sees only keys j ≤ t with t/c == j/c.
                NoPE layers: no RoPE, plain causal attention, and with
                attn_temperature_tuning q·(1 + attn_scale·log(1 +
                floor((t + 1)/floor_scale))) at position t.
     MoE layer  ((l+1) % interleave_moe_layer_step == 0), h = rmsnorm(x):
                z = h·Wrᵀ (router [E, D]), the k largest z of each row,
                s = σ(z) for them (0 for the others);
                y = shared(h) + Σ_j E_{e_j}(s_j·h), every expert a SwiGLU
                E(u) = (silu(u·G) ⊙ (u·U))·Dn with gate_up [E, D, 2F] = [G|U]
                and down [E, F, D] (stored x·W, not x·Wᵀ), the shared
                expert a LLaMA MLP of width intermediate_size.
     dense      a LLaMA MLP of width intermediate_size_mlp.
   Weight names: model.layers.N.feed_forward.{router.weight,
   experts.gate_up_proj, experts.down_proj, shared_expert.{gate,up,down}_proj
   .weight} in MoE layers, feed_forward.{gate,up,down}_proj.weight in dense
   ones. The router's choice is not differentiated (as torch.topk): the
   gradient reaches the router through the chosen scores only.            */

PEFTDEF int peft_layer_is_moe(const peft_config *c, int layer) {
    return c->llama4 && c->n_experts > 0 && c->moe_step > 0 && (layer + 1) % c->moe_step == 0;
}
PEFTDEF int peft_layer_has_rope(const peft_config *c, int layer) {
    return !c->llama4 || c->nope_interval <= 0 || (layer + 1) % c->nope_interval != 0;
}

/* parameters of layer l: all of them, or those one token uses (active) */
static int64_t peft__llama4_layer_count(const peft_config *c, int l, int active) {
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t n = d * q + 2 * d * kv + q * d + 2 * d;
    if (c->attn_bias) n += q + 2 * kv + d;
    if (!peft_layer_is_moe(c, l)) return n + 3 * d * (int64_t)c->hidden_dim_mlp;
    int64_t expert = 3 * d * (int64_t)c->hidden_dim;
    return n + expert + (int64_t)c->n_experts * d + (active ? c->top_k : c->n_experts) * expert;
}
static int64_t peft__llama4_count(const peft_config *c, int active) {
    /* first in double: a hostile config.json must not overflow the sum (validate refuses > 1e12) */
    double est = ((double)c->n_experts + 2) * 3 * c->dim * ((double)c->hidden_dim + c->hidden_dim_mlp) +
                 4.0 * c->dim * ((double)c->n_heads + c->n_kv_heads) * c->head_dim +
                 (double)c->n_experts * c->dim;
    if (c->n_layers * est + 2.0 * c->vocab_size * c->dim > 1e15) return (int64_t)1e15;
    int64_t emb = (int64_t)c->vocab_size * c->dim, n = c->dim;
    for (int l = 0; l < c->n_layers; l++) n += peft__llama4_layer_count(c, l, active);
    return n + emb + (c->tie_embeddings ? 0 : emb);
}
PEFTDEF int64_t peft_config_active_count(const peft_config *c) {
    return c->llama4 ? peft__llama4_count(c, 1) : peft_config_param_count(c);
}

/* Presets: Scout and Maverick as their text_config gives them (Meta's model
   cards: 17B active of 109B / 400B with the vision encoder, which is not part
   of the text decoder), and a tiny one for tests, demos and the bench. */
typedef struct {
    const char *name;
    int dim, hidden, hidden_mlp, layers, heads, kv, head_dim, vocab, max_pos, experts, top_k, step, nope,
        qk_norm, chunk, tie, llama3;
} peft__llama4_preset_row;
static const peft__llama4_preset_row peft__llama4_presets[] = {
    /* name, hidden, expert ffn, dense ffn, layers, heads, kv, head_dim, vocab, context, experts, top-k,
       MoE every k-th layer, NoPE every k-th layer, QK-norm, chunk, tied, llama3 RoPE scaling (factor 16) */
    {"llama4-scout",    5120, 8192, 16384, 48, 40, 8, 128, 202048, 10485760,  16, 1, 1, 4, 1, 8192, 0, 1},
    {"llama4-maverick", 5120, 8192, 16384, 48, 40, 8, 128, 202048,  1048576, 128, 1, 2, 4, 0, 8192, 0, 0},
    {"llama4-tiny",      256,  256,   768,  4,  8, 2,  32,   4096,      512,   4, 1, 1, 4, 1,  128, 1, 0},
    /* llama4-tiny's active parameters (less the routers') in a dense model: the bench's yardstick */
    {"llama4-tiny-dense", 256, 256,   512,  4,  8, 2,  32,   4096,      512,   4, 1, 5, 4, 1,  128, 1, 0},
};
static const char *peft__llama4_preset_name(int i) {
    int n = (int)(sizeof peft__llama4_presets / sizeof peft__llama4_presets[0]);
    return i >= 0 && i < n ? peft__llama4_presets[i].name : NULL;
}
static int peft__llama4_preset(peft_config *c, const char *name) {
    for (int i = 0; peft__llama4_preset_name(i); i++) {
        const peft__llama4_preset_row *p = &peft__llama4_presets[i];
        if (strcmp(p->name, name)) continue;
        peft__config_defaults(c);
        peft__llama4_defaults(c);
        c->dim = p->dim;
        c->hidden_dim = p->hidden;
        c->hidden_dim_mlp = p->hidden_mlp;
        c->n_layers = p->layers;
        c->n_heads = p->heads;
        c->n_kv_heads = p->kv;
        c->head_dim = p->head_dim;
        c->vocab_size = p->vocab;
        c->max_seq_len = p->max_pos;
        c->n_experts = p->experts;
        c->top_k = p->top_k;
        c->moe_step = p->step;
        c->nope_interval = p->nope;
        c->qk_norm = p->qk_norm;
        c->attn_chunk = p->chunk;
        c->tie_embeddings = p->tie;
        if (p->llama3) {
            c->rope_type = PEFT_ROPE_LLAMA3;
            c->rope_factor = 16;
            c->rope_low_freq = 1;
            c->rope_high_freq = 1;
            c->rope_orig_max_pos = 8192;
        }
        if (p->vocab == 202048) {
            c->bos_id = 200000;
            c->eos_id = 200001;
        }
        return 1;
    }
    return 0;
}

/* PEFT__CPU_KERNEL_BEGIN: LLaMA-4's ops (front ends and the CPU backend's entries), kept
   beside the block that uses them */
/* ---- L2 norm of each group (QK-norm) ----------------------------------------
   y = x·r,  r = 1/sqrt(mean(x²) + eps) over each group of G columns
   dx = r·dy − x·r³/G · Σ(dy⊙x)                                            */
static void peft__cpu_l2norm_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0];
    int G = n->i[0];
    const float *dy = n->out->grad, *rs = n->saved;
    for (int64_t r = 0; r < x->n / G; r++) {
        const float *xr = x->data + r * G, *dr = dy + r * G;
        float inv = rs[r];
        double dot = 0.0;
        for (int j = 0; j < G; j++) dot += (double)dr[j] * xr[j];
        float c = (float)(dot * inv * inv * inv / G);
        float *dx = x->grad + r * G;
        for (int j = 0; j < G; j++) dx[j] += inv * dr[j] - xr[j] * c;
    }
}
PEFTDEF peft_tensor *peft_l2norm(peft_graph *g, peft_tensor *x, int group, float eps) {
    if (!peft__ok(g, x, x)) return NULL;
    if (group <= 0 || peft__cols(x) % group != 0)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "l2norm: the row width is not a multiple of the group");
    peft_tensor *y = peft__like(g, x);
    float *rs = y ? peft__arena_floats(g, x->n / group, 0) : NULL;
    if (!rs) return NULL;
    peft_op op = { .kind = PEFT_OP_L2NORM, .out = y, .in = { x }, .i = { group }, .f = { eps }, .saved = rs };
    return peft__run(g, &op, 0);
}
/* out = y; in: x; i: the group G; f: eps; saved: r per group (for backward) */
static peft_status peft__cpu_l2norm(peft_graph *g, peft__node *nd) {
    (void)g;
    const peft_tensor *x = nd->in[0];
    int group = nd->i[0];
    float eps = nd->f[0], *rs = nd->saved, *y = nd->out->data;
    for (int64_t r = 0; r < x->n / group; r++) {
        const float *xr = x->data + r * group;
        float ss = 0.0f;
        for (int j = 0; j < group; j++) ss += xr[j] * xr[j];
        float inv = 1.0f / sqrtf(ss / (float)group + eps);
        rs[r] = inv;
        for (int j = 0; j < group; j++) y[r * group + j] = xr[j] * inv;
    }
    return PEFT_OK;
}

/* ---- per-row scale (attention temperature) -------------------------------------
   y_r = s_{r mod P}·x_r;  dx_r += s_{r mod P}·dy_r                         */
static void peft__cpu_row_scale_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *x = n->in[0];
    int64_t R = peft__rows(x), C = peft__cols(x);
    for (int64_t r = 0; r < R; r++) {
        float s = n->saved[r % n->i[0]];
        for (int64_t j = 0; j < C; j++) x->grad[r * C + j] += s * n->out->grad[r * C + j];
    }
}
PEFTDEF peft_tensor *peft_row_scale(peft_graph *g, peft_tensor *x, const float *s, int period) {
    if (!peft__ok(g, x, s)) return NULL;
    if (period <= 0) return peft__op_fail(g, PEFT_ERR_ARG, "row_scale: period must be positive");
    peft_tensor *y = peft__like(g, x);
    float *sv = y ? peft__arena_floats(g, period, 0) : NULL;
    if (!sv) return NULL;
    memcpy(sv, s, sizeof(float) * (size_t)period);
    peft_op op = { .kind = PEFT_OP_ROW_SCALE, .out = y, .in = { x }, .i = { period }, .saved = sv };
    return peft__run(g, &op, 0);
}
/* out = y; in: x; i: the period P; saved: the P scales */
static peft_status peft__cpu_row_scale(peft_graph *g, peft__node *nd) {
    (void)g;
    const peft_tensor *x = nd->in[0];
    const float *sv = nd->saved;
    int period = nd->i[0];
    int64_t R = peft__rows(x), C = peft__cols(x);
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < C; j++) nd->out->data[r * C + j] = sv[r % period] * x->data[r * C + j];
    return PEFT_OK;
}

/* ---- chunked causal attention ------------------------------------------------------
   S_tj = q_t·k_j/√d for j in [c·⌊t/c⌋, t], P = softmax(S), o_t = Σ_j P_tj v_j
   dP = do·vᵀ, dS = P⊙(dP − rowsum(P⊙dP)); dq = dS·k/√d, dk += dSᵀq/√d,
   dv += Pᵀdo; kv gradients sum over a group's heads. P [B,H,T,T] is kept. */
static void peft__cpu_chunk_attn_bw(peft_graph *g, peft__node *n) {
    peft_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
    int B = n->i[0], T = n->i[1], H = n->i[2], KV = n->i[3], hd = n->i[4], C = n->i[5];
    float scale = 1.0f / sqrtf((float)hd);
    int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd;
    const float *P = n->saved, *dO = n->out->grad;
    float *dS = peft__arena_floats(g, C, 0);
    if (!dS) {
        g->failed = 1;
        return;
    }
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / (H / KV);
            for (int t = 0; t < T; t++) {
                int lo = t / C * C;
                const float *pr = P + (((int64_t)b * H + h) * T + t) * T;
                const float *dot = dO + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
                const float *qt = q->data + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
                float rowsum = 0.0f;
                for (int j = lo; j <= t; j++) {
                    const float *vj = v->data + ((int64_t)b * T + j) * kw + (int64_t)kh * hd;
                    dS[j - lo] = peft__dot(dot, vj, hd);
                    rowsum += pr[j] * dS[j - lo];
                }
                for (int j = lo; j <= t; j++) {
                    float ds = pr[j] * (dS[j - lo] - rowsum) * scale;
                    int64_t ko = ((int64_t)b * T + j) * kw + (int64_t)kh * hd;
                    if (q->requires_grad) {
                        float *dq = q->grad + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
                        for (int d = 0; d < hd; d++) dq[d] += ds * k->data[ko + d];
                    }
                    if (k->requires_grad)
                        for (int d = 0; d < hd; d++) k->grad[ko + d] += ds * qt[d];
                    if (v->requires_grad)
                        for (int d = 0; d < hd; d++) v->grad[ko + d] += pr[j] * dot[d];
                }
            }
        }
}
PEFTDEF peft_tensor *peft_attention_chunked(peft_graph *g, peft_tensor *q, peft_tensor *k, peft_tensor *v,
                                            int B, int T, int n_heads, int n_kv_heads, int head_dim,
                                            int chunk) {
    if (!peft__ok(g, q, k) || !peft__ok(g, v, v)) return NULL;
    int H = n_heads, KV = n_kv_heads, hd = head_dim;
    if (B < 1 || T < 1 || H < 1 || KV < 1 || H % KV || hd < 1 || chunk < 1)
        return peft__op_fail(g, PEFT_ERR_ARG, "attention_chunked: sizes and chunk must be positive");
    int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd;
    if (q->n != (int64_t)B * T * qw || k->n != (int64_t)B * T * kw || v->n != k->n)
        return peft__op_fail(g, PEFT_ERR_SHAPE, "attention_chunked: q, k, v are not [B*T, heads*head_dim]");
    peft_tensor *o = peft__like(g, q);
    float *P = o ? peft__arena_floats(g, (int64_t)B * H * T * T, 1) : NULL;
    if (!P) return NULL;
    peft_op op = { .kind = PEFT_OP_ATTENTION_CHUNKED, .out = o, .in = { q, k, v },
                   .i = { B, T, H, KV, hd, chunk }, .saved = P };
    return peft__run(g, &op, 0);
}
/* out = o; in: q, k, v; i: B, T, heads, kv heads, head_dim, chunk; saved: P [B,H,T,T] */
static peft_status peft__cpu_chunk_attn(peft_graph *g, peft__node *nd) {
    (void)g;
    const peft_tensor *q = nd->in[0], *k = nd->in[1], *v = nd->in[2];
    peft_tensor *o = nd->out;
    int B = nd->i[0], T = nd->i[1], H = nd->i[2], KV = nd->i[3], hd = nd->i[4], chunk = nd->i[5];
    int64_t qw = (int64_t)H * hd, kw = (int64_t)KV * hd;
    float *P = nd->saved;
    float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / (H / KV);
            for (int t = 0; t < T; t++) {
                int lo = t / chunk * chunk;
                float *pr = P + (((int64_t)b * H + h) * T + t) * T;
                const float *qt = q->data + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
                for (int j = lo; j <= t; j++)
                    pr[j] = peft__dot(qt, k->data + ((int64_t)b * T + j) * kw + (int64_t)kh * hd, hd) * scale;
                float mx = -INFINITY, sum = 0.0f;
                for (int j = lo; j <= t; j++) mx = pr[j] > mx ? pr[j] : mx;
                for (int j = lo; j <= t; j++) {
                    pr[j] = expf(pr[j] - mx);
                    sum += pr[j];
                }
                for (int j = lo; j <= t; j++) pr[j] /= sum;
                float *ot = o->data + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
                for (int d = 0; d < hd; d++) ot[d] = 0.0f;
                for (int j = lo; j <= t; j++) {
                    const float *vj = v->data + ((int64_t)b * T + j) * kw + (int64_t)kh * hd;
                    for (int d = 0; d < hd; d++) ot[d] += pr[j] * vj[d];
                }
            }
        }
    return PEFT_OK;
}

/* ---- router: top-k, sigmoid of the chosen logits --------------------------------
   s_nj = σ(z_n,e_j) for the k largest z_n (ties: the lower expert first);
   dz_n,e_j += ds_nj·s_nj·(1 − s_nj); the choice itself has no gradient.    */
static void peft__cpu_moe_route_bw(peft_graph *g, peft__node *n) {
    (void)g;
    peft_tensor *z = n->in[0];
    int64_t N = peft__rows(z), E = peft__cols(z);
    int K = n->i[0];
    for (int64_t r = 0; r < N; r++)
        for (int j = 0; j < K; j++) {
            float s = n->out->data[r * K + j];
            z->grad[r * E + n->ids[r * K + j]] += n->out->grad[r * K + j] * s * (1.0f - s);
        }
}
PEFTDEF peft_tensor *peft_moe_route(peft_graph *g, peft_tensor *logits, int top_k, const int **idx) {
    *idx = NULL;
    if (!peft__ok(g, logits, logits)) return NULL;
    int64_t N = peft__rows(logits), E = peft__cols(logits);
    if (top_k < 1 || top_k > E)
        return peft__op_fail(g, PEFT_ERR_ARG, "moe_route: top_k must be in 1 .. number of experts");
    peft_tensor *s = peft_tensor_2d(g, N, top_k);
    int *ix = s ? (int *)peft__arena_alloc(g, (size_t)(N * top_k) * sizeof(int)) : NULL;
    if (!ix) return s ? peft__op_fail(g, PEFT_ERR_NOMEM, "out of memory in the activation arena") : NULL;
    peft_op op = { .kind = PEFT_OP_MOE_ROUTE, .out = s, .in = { logits }, .ids = ix, .i = { top_k } };
    if (!peft__run(g, &op, 0)) return NULL;
    *idx = ix;
    return s;
}
/* out = s [N, k]; in: logits [N, E]; ids: the chosen experts [N, k], written here; i: k */
static peft_status peft__cpu_moe_route(peft_graph *g, peft__node *nd) {
    (void)g;
    const peft_tensor *logits = nd->in[0];
    peft_tensor *s = nd->out;
    int *ix = (int *)nd->ids;
    int top_k = nd->i[0];
    int64_t N = peft__rows(logits), E = peft__cols(logits);
    for (int64_t r = 0; r < N; r++) {
        const float *z = logits->data + r * E;
        for (int j = 0; j < top_k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= ix[r * top_k + i] == e;
                if (!taken && (best < 0 || z[e] > z[best])) best = e;
            }
            ix[r * top_k + j] = best;
            s->data[r * top_k + j] = 1.0f / (1.0f + expf(-z[best]));
        }
    }
    return PEFT_OK;
}

/* ---- routed experts: one GEMM pair per expert over its rows ----------------------
   Rows are sorted by expert (slot i = token n, choice j); per expert e with
   X_e = s·x of its rows: H = X_e·GU_e [n_e, 2F], A = silu(H_g) ⊙ H_u,
   Y = A·Dn_e, added into y[n].
   Backward: dA = dY·Dn_eᵀ, dDn_e += Aᵀ·dY, dH_g = dA⊙H_u⊙σ'(·), dH_u = dA⊙silu(H_g),
   dGU_e += X_eᵀ·dH, dX = dH·GU_eᵀ; dx_n += s·dX_i, ds_nj += x_n·dX_i.
   With LoRA on the experts (see "PEFT on MoE sites") GU_e and Dn_e are the
   weights plus their deltas, formed one expert at a time.                 */
typedef struct {
    int64_t N, D, F;
    int     E, K;
    int    *slot;     /* [N·K] slot (n·K + j) of each sorted row          */
    int    *start;    /* [E + 1] first sorted row of each expert          */
    float  *X, *H, *A;/* [N·K, D], [N·K, 2F], [N·K, F]                    */
    float   scale;    /* LoRA's s                                          */
    int    *fill;     /* [E] the forward's sort: next free row per expert */
    float  *Y;        /* [N·K, D] each sorted row's expert output          */
    float  *wbuf, *Bbuf;  /* an expert's weights with LoRA; its B_e       */
} peft__moe_ctx;

/* expert e's weight W_e [in, out] of a stacked [E, in, out] tensor, or with
   LoRA W_e + s·B_e·A_e in buf (Bbuf [in, r] receives B_e, unscaled) */
static const float *peft__expert_w(const peft_tensor *W, const peft_tensor *A, const peft_tensor *B, int e,
                                   float s, float *buf, float *Bbuf) {
    int64_t in = W->shape[1], out = W->shape[2], E = W->shape[0];
    const float *We = W->data + (int64_t)e * in * out;
    if (!A) return We;
    int64_t r = A->shape[0] / E;
    for (int64_t i = 0; i < in; i++)
        for (int64_t j = 0; j < r; j++) Bbuf[i * r + j] = B->data[i * r * E + j * E + e];
    memcpy(buf, We, sizeof(float) * (size_t)(in * out));
    peft_gemm(0, 0, (int)in, (int)out, (int)r, Bbuf, (int)r, A->data + (int64_t)e * r * out, (int)out, 0.0f,
              buf + in * out, (int)out);
    for (int64_t i = 0; i < in * out; i++) buf[i] += s * buf[in * out + i];
    return buf;
}
/* dW_e [in, out] into the stacked tensor's gradient and/or LoRA's: dA_e += s·B_eᵀ·dW_e,
   dB_e += s·dW_e·A_eᵀ (Bbuf holds B_e; tmp has room for in·r floats) */
static void peft__expert_dw(peft_tensor *W, peft_tensor *A, peft_tensor *B, int e, float s, const float *dW,
                            const float *Bbuf, float *tmp) {
    int64_t in = W->shape[1], out = W->shape[2], E = W->shape[0];
    if (W->requires_grad) {
        float *g = W->grad + (int64_t)e * in * out;
        for (int64_t i = 0; i < in * out; i++) g[i] += dW[i];
    }
    if (!A) return;
    int64_t r = A->shape[0] / E;
    const float *Ae = A->data + (int64_t)e * r * out;
    if (A->requires_grad)
        peft_gemm(1, 0, (int)r, (int)out, (int)in, Bbuf, (int)r, dW, (int)out, 0.0f, tmp, (int)out);
    if (A->requires_grad)
        for (int64_t i = 0; i < r * out; i++) A->grad[(int64_t)e * r * out + i] += s * tmp[i];
    if (!B->requires_grad) return;
    peft_gemm(0, 1, (int)in, (int)r, (int)out, dW, (int)out, Ae, (int)out, 0.0f, tmp, (int)r);
    for (int64_t i = 0; i < in; i++)
        for (int64_t j = 0; j < r; j++) B->grad[i * r * E + j * E + e] += s * tmp[i * r + j];
}

static void peft__cpu_moe_experts_bw(peft_graph *g, peft__node *n) {
    const peft__moe_ctx *c = (const peft__moe_ctx *)n->aux;
    peft_tensor *x = n->in[0], *s = n->in[1], *gu = n->in[2], *dn = n->in[3];
    peft_tensor *guA = n->in[4], *guB = n->in[5], *dnA = n->in[6], *dnB = n->in[7];
    int64_t D = c->D, F = c->F, R = c->N * c->K;
    int64_t rmax = (guA ? guA->shape[0] : 0) + (dnA ? dnA->shape[0] : 0) + 1;
    int need_gu = gu->requires_grad || (guA && (guA->requires_grad || guB->requires_grad));
    int need_dn = dn->requires_grad || (dnA && (dnA->requires_grad || dnB->requires_grad));
    float *dY = peft__arena_floats(g, R * D, 0), *dA = peft__arena_floats(g, R * F, 0);
    float *dH = peft__arena_floats(g, R * 2 * F, 0), *dX = peft__arena_floats(g, R * D, 0);
    float *wbuf = peft__arena_floats(g, 4 * D * F, 0), *dW = peft__arena_floats(g, 2 * D * F, 0);
    float *Bbuf = peft__arena_floats(g, (D + F) * rmax, 0),
          *tmp = peft__arena_floats(g, (D + 3 * F) * rmax, 0);
    if (!dY || !dA || !dH || !dX || !wbuf || !dW || !Bbuf || !tmp) {
        g->failed = 1;
        return;
    }
    for (int64_t i = 0; i < R; i++)
        memcpy(dY + i * D, n->out->grad + (int64_t)(c->slot[i] / c->K) * D, sizeof(float) * (size_t)D);
    for (int e = 0; e < c->E; e++) {
        int64_t r0 = c->start[e], ne = c->start[e + 1] - r0;
        if (ne == 0) continue;
        const float *A = c->A + r0 * F, *H = c->H + r0 * 2 * F, *X = c->X + r0 * D;
        float *dy = dY + r0 * D, *da = dA + r0 * F, *dh = dH + r0 * 2 * F, *dx = dX + r0 * D;
        const float *DN = peft__expert_w(dn, dnA, dnB, e, c->scale, wbuf, Bbuf);
        if (need_dn) {
            peft_gemm(1, 0, (int)F, (int)D, (int)ne, A, (int)F, dy, (int)D, 0.0f, dW, (int)D);
            peft__expert_dw(dn, dnA, dnB, e, c->scale, dW, Bbuf, tmp);
        }
        peft_gemm(0, 1, (int)ne, (int)F, (int)D, dy, (int)D, DN, (int)D, 0.0f, da, (int)F);
        for (int64_t i = 0; i < ne; i++)
            for (int64_t f = 0; f < F; f++) {
                float hg = H[i * 2 * F + f], hu = H[i * 2 * F + F + f], sg = 1.0f / (1.0f + expf(-hg));
                dh[i * 2 * F + f] = da[i * F + f] * hu * sg * (1.0f + hg * (1.0f - sg));
                dh[i * 2 * F + F + f] = da[i * F + f] * hg * sg;
            }
        const float *GU = peft__expert_w(gu, guA, guB, e, c->scale, wbuf, Bbuf);
        if (x->requires_grad || s->requires_grad)
            peft_gemm(0, 1, (int)ne, (int)D, (int)(2 * F), dh, (int)(2 * F), GU, (int)(2 * F), 0.0f, dx,
                      (int)D);
        if (need_gu) {
            peft_gemm(1, 0, (int)D, (int)(2 * F), (int)ne, X, (int)D, dh, (int)(2 * F), 0.0f, dW,
                      (int)(2 * F));
            peft__expert_dw(gu, guA, guB, e, c->scale, dW, Bbuf, tmp);
        }
    }
    if (!x->requires_grad && !s->requires_grad) return;
    for (int64_t i = 0; i < R; i++) {
        int sl = c->slot[i];
        int64_t row = sl / c->K;
        const float *dxi = dX + i * D, *xr = x->data + row * D;
        if (x->requires_grad)
            for (int64_t d = 0; d < D; d++) x->grad[row * D + d] += s->data[sl] * dxi[d];
        if (s->requires_grad) {
            double acc = 0.0;
            for (int64_t d = 0; d < D; d++) acc += (double)xr[d] * dxi[d];
            s->grad[sl] += (float)acc;
        }
    }
}

PEFTDEF peft_tensor *peft_moe_experts_lora(peft_graph *g, peft_tensor *x, peft_tensor *s, const int *idx,
                                           peft_tensor *gate_up, peft_tensor *down, peft_tensor *gu_A,
                                           peft_tensor *gu_B, peft_tensor *dn_A, peft_tensor *dn_B,
                                           float scale) {
    if (!peft__ok(g, x, s) || !peft__ok(g, gate_up, down) || !idx)
        return g->failed ? NULL : peft__op_fail(g, PEFT_ERR_ARG, "moe_experts: missing input");
    int64_t N = peft__rows(x), D = peft__cols(x), K = peft__cols(s);
    if (gate_up->ndim != 3 || down->ndim != 3 || gate_up->shape[1] != D || gate_up->shape[2] % 2 ||
        down->shape[0] != gate_up->shape[0] || down->shape[1] != gate_up->shape[2] / 2 ||
        down->shape[2] != D || peft__rows(s) != N)
        return peft__op_fail(g, PEFT_ERR_SHAPE,
                             "moe_experts: expected x [N, D], s [N, k], gate_up [E, D, 2F], down [E, F, D]");
    int E = (int)gate_up->shape[0];
    int64_t F = gate_up->shape[2] / 2, R = N * K;
    for (int k = 0; k < 2; k++) {
        peft_tensor *A = k ? dn_A : gu_A, *B = k ? dn_B : gu_B, *W = k ? down : gate_up;
        if (!A && !B) continue;
        if (!A || !B || A->ndim != 2 || B->ndim != 2 || A->shape[0] % E || A->shape[0] == 0 ||
            A->shape[1] != W->shape[2] || B->shape[0] != W->shape[1] || B->shape[1] != A->shape[0])
            return peft__op_fail(g, PEFT_ERR_SHAPE,
                                 "moe_experts: LoRA of the experts is not lora_A [r·E, out], "
                                 "lora_B [in, r·E] of [E, in, out]");
    }
    peft__moe_ctx *c = (peft__moe_ctx *)peft__arena_alloc(g, sizeof *c);
    int *slot = (int *)peft__arena_alloc(g, (size_t)R * sizeof(int));
    int *start = (int *)peft__arena_alloc(g, (size_t)(E + 1) * sizeof(int));
    int *fill = (int *)peft__arena_alloc(g, (size_t)E * sizeof(int));
    int64_t rmax = (gu_A ? gu_A->shape[0] : 0) + (dn_A ? dn_A->shape[0] : 0) + 1;
    float *X = peft__arena_floats(g, R * D, 0), *H = peft__arena_floats(g, R * 2 * F, 0);
    float *A = peft__arena_floats(g, R * F, 0), *Y = peft__arena_floats(g, R * D, 0);
    float *wbuf = peft__arena_floats(g, 4 * D * F, 0), *Bbuf = peft__arena_floats(g, (D + F) * rmax, 0);
    peft_tensor *y = peft__like(g, x);
    if (!c || !slot || !start || !fill || !X || !H || !A || !Y || !wbuf || !Bbuf || !y)
        return g->failed ? NULL : peft__op_fail(g, PEFT_ERR_NOMEM, "out of memory in the activation arena");
    for (int64_t i = 0; i < R; i++)
        if (idx[i] < 0 || idx[i] >= E)
            return peft__op_fail(g, PEFT_ERR_ARG, "moe_experts: expert index out of range");
    c->N = N;
    c->D = D;
    c->F = F;
    c->E = E;
    c->K = (int)K;
    c->slot = slot;
    c->start = start;
    c->X = X;
    c->H = H;
    c->A = A;
    c->scale = scale;
    c->fill = fill;
    c->Y = Y;
    c->wbuf = wbuf;
    c->Bbuf = Bbuf;
    /* recorded when any of the eight inputs needs a gradient */
    peft_op op = { .kind = PEFT_OP_MOE_EXPERTS, .out = y,
                   .in = { x, s, gate_up, down, gu_A, gu_B, dn_A, dn_B }, .ids = idx, .aux = c };
    return peft__run(g, &op, 0);
}
/* out = y [N, D]; in: x [N, D], s [N, k], gate_up [E, D, 2F], down [E, F, D] and
   LoRA's gu_A, gu_B, dn_A, dn_B (or NULL); ids: the experts [N, k]; aux: a
   peft__moe_ctx with the buffers, filled here for the backward */
static peft_status peft__cpu_moe_experts(peft_graph *g, peft__node *nd) {
    (void)g;
    peft__moe_ctx *c = (peft__moe_ctx *)nd->aux;
    const peft_tensor *x = nd->in[0], *s = nd->in[1], *gate_up = nd->in[2], *down = nd->in[3];
    const peft_tensor *gu_A = nd->in[4], *gu_B = nd->in[5], *dn_A = nd->in[6], *dn_B = nd->in[7];
    peft_tensor *y = nd->out;
    const int *idx = nd->ids;
    int E = c->E;
    int64_t D = c->D, F = c->F, K = c->K, R = c->N * c->K;
    int *slot = c->slot, *start = c->start, *fill = c->fill;
    float *X = c->X, *H = c->H, *A = c->A, *Y = c->Y, *wbuf = c->wbuf, *Bbuf = c->Bbuf;
    float scale = c->scale;
    /* counting sort of the slots by expert: each expert's rows are contiguous */
    for (int e = 0; e <= E; e++) start[e] = 0;
    for (int64_t i = 0; i < R; i++) start[idx[i] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    for (int e = 0; e < E; e++) fill[e] = start[e];
    for (int64_t i = 0; i < R; i++) slot[fill[idx[i]]++] = (int)i;
    for (int64_t i = 0; i < R; i++) {
        const float *xr = x->data + (int64_t)(slot[i] / K) * D;
        float sc = s->data[slot[i]];
        for (int64_t d = 0; d < D; d++) X[i * D + d] = sc * xr[d];
    }
    for (int e = 0; e < E; e++) {
        int64_t r0 = start[e], ne = start[e + 1] - r0;
        if (ne == 0) continue;
        const float *GU = peft__expert_w(gate_up, gu_A, gu_B, e, scale, wbuf, Bbuf);
        peft_gemm(0, 0, (int)ne, (int)(2 * F), (int)D, X + r0 * D, (int)D, GU, (int)(2 * F), 0.0f,
                  H + r0 * 2 * F, (int)(2 * F));
        for (int64_t i = r0; i < r0 + ne; i++)
            for (int64_t f = 0; f < F; f++) {
                float hg = H[i * 2 * F + f];
                A[i * F + f] = hg / (1.0f + expf(-hg)) * H[i * 2 * F + F + f];
            }
        const float *DN = peft__expert_w(down, dn_A, dn_B, e, scale, wbuf, Bbuf);
        peft_gemm(0, 0, (int)ne, (int)D, (int)F, A + r0 * F, (int)F, DN, (int)D, 0.0f, Y + r0 * D, (int)D);
    }
    peft__zero_floats(y->data, y->n);
    for (int64_t i = 0; i < R; i++) {
        float *yr = y->data + (int64_t)(slot[i] / K) * D;
        for (int64_t d = 0; d < D; d++) yr[d] += Y[i * D + d];
    }
    return PEFT_OK;
}
PEFTDEF peft_tensor *peft_moe_experts(peft_graph *g, peft_tensor *x, peft_tensor *s, const int *idx,
                                      peft_tensor *gate_up, peft_tensor *down) {
    return peft_moe_experts_lora(g, x, s, idx, gate_up, down, NULL, NULL, NULL, NULL, 0.0f);
}

/* PEFT__CPU_KERNEL_END */

/* ---- the LLaMA-4 block -------------------------------------------------------------- */
static peft_tensor *peft__llama4_block(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x, int B,
                                       int T) {
    const peft_config *c = &m->cfg;
    int l = (int)(L - m->layers), rope = peft_layer_has_rope(c, l);
    peft_linear_site *S = L->lin;
    peft_tensor *h = peft_rmsnorm(g, x, L->attn_norm, c->norm_eps);
    peft_tensor *q = peft__site_forward(m, g, &S[PEFT_Q], h), *k = peft__site_forward(m, g, &S[PEFT_K], h);
    peft_tensor *v = peft__site_forward(m, g, &S[PEFT_V], h);
    if (rope) {
        /* over the projections' outputs, which no backward reads */
        q = peft__rope_op(g, q, c->n_heads, &m->rope, B, T, 1);
        k = peft__rope_op(g, k, c->n_kv_heads, &m->rope, B, T, 1);
        if (c->qk_norm) {
            q = peft_l2norm(g, q, c->head_dim, c->norm_eps);
            k = peft_l2norm(g, k, c->head_dim, c->norm_eps);
        }
    } else if (c->temp_tuning) {
        float *ts = peft__arena_floats(g, T, 0);
        if (!ts) return NULL;
        for (int t = 0; t < T; t++)
            ts[t] = log1pf(floorf(((float)t + 1.0f) / c->floor_scale)) * c->attn_scale + 1.0f;
        q = peft_row_scale(g, q, ts, T);
    }
    peft_tensor *a = rope && c->attn_chunk > 0 && c->attn_chunk < T
                             ? peft_attention_chunked(g, q, k, v, B, T, c->n_heads, c->n_kv_heads,
                                                      c->head_dim, c->attn_chunk)
                             : peft_attention(g, q, k, v, B, T, c->n_heads, c->n_kv_heads, c->head_dim);
    x = peft__add_op(g, x, peft__site_forward(m, g, &S[PEFT_O], a), 1);
    h = peft_rmsnorm(g, x, L->ffn_norm, c->norm_eps);
    /* the dense MLP, or the shared expert of a MoE layer */
    peft_tensor *ff = peft_swiglu(g, peft__site_forward(m, g, &S[PEFT_GATE], h),
                                  peft__site_forward(m, g, &S[PEFT_UP], h));
    ff = peft__site_forward(m, g, &S[PEFT_DOWN], ff);
    if (L->moe.router) {
        const int *idx;
        peft_moe_site *M = &L->moe;
        peft_tensor *Wr = M->router_copy ? M->router_copy : M->router;
        peft_tensor *z = M->router_A ? peft_lora_linear(g, h, Wr, M->router_A, M->router_B, M->router_scale,
                                                        0.0f, NULL)
                                     : peft_linear(g, h, Wr);
        peft_tensor *sc = peft_moe_route(g, z, c->top_k, &idx);
        if (!sc) return NULL;
        /* a checkpointed block's recompute in backward routes the same tokens again: not counted */
        if (g != m->recompute || !g->grad_enabled)
            for (int64_t i = 0; i < sc->n; i++) L->moe.counts[idx[i]]++;
        for (int64_t i = 0; L->moe.trace && i < sc->n && i < L->moe.trace_cap; i++) L->moe.trace[i] = idx[i];
        ff = peft__add_op(g, ff,
                          peft_moe_experts_lora(g, h, sc, idx, M->gate_up, M->down, M->gate_up_A,
                                                M->gate_up_B, M->down_A, M->down_B, M->experts_scale),
                          1);
    }
    return peft__add_op(g, x, ff, 1);
}

/* ---- LLaMA-4 parameters: router and experts of the MoE layers ------------------------- */
static peft_status peft__llama4_params(peft_model *m) {
    const peft_config *c = &m->cfg;
    int64_t D = c->dim, F = c->hidden_dim, E = c->n_experts;
    char name[128];
    for (int l = 0; l < c->n_layers; l++) {
        if (!peft_layer_is_moe(c, l)) continue;
        peft_moe_site *M = &m->layers[l].moe;
        int64_t sr[2] = { E, D }, sg[3] = { E, D, 2 * F }, sd[3] = { E, F, D };
        snprintf(name, sizeof name, "model.layers.%d.feed_forward.router.weight", l);
        if (!(M->router = m->params[m->n_params++] = peft_param_new(name, 2, sr))) return PEFT_ERR_NOMEM;
        snprintf(name, sizeof name, "model.layers.%d.feed_forward.experts.gate_up_proj", l);
        if (!(M->gate_up = m->params[m->n_params++] = peft_param_new(name, 3, sg))) return PEFT_ERR_NOMEM;
        snprintf(name, sizeof name, "model.layers.%d.feed_forward.experts.down_proj", l);
        if (!(M->down = m->params[m->n_params++] = peft_param_new(name, 3, sd))) return PEFT_ERR_NOMEM;
        if (!(M->counts = (int64_t *)peft__calloc((size_t)E * sizeof(int64_t)))) return PEFT_ERR_NOMEM;
    }
    return PEFT_OK;
}

/* the feed-forward of layer l: its module name and width */
static const char *peft__llama4_ffn_module(const peft_config *c, int l) {
    if (!c->llama4) return "mlp";
    return peft_layer_is_moe(c, l) ? "feed_forward.shared_expert" : "feed_forward";
}
static int peft__llama4_ffn_width(const peft_config *c, int l) {
    return c->llama4 && !peft_layer_is_moe(c, l) ? c->hidden_dim_mlp : c->hidden_dim;
}


/* ---- LLaMA-4 config.json (Llama4TextConfig) -------------------------------------------
   transformers' defaults for what a file leaves out; the layer lists
   (moe_layers, no_rope_layers, layer_types) are honoured when they are the
   pattern of interleave_moe_layer_step / no_rope_layer_interval /
   attention_chunk_size (as transformers writes them) and refused by name
   otherwise. */
static void peft__llama4_defaults(peft_config *c) {
    c->llama4 = 1;
    c->rope_interleaved = 1;       /* the complex product on (x[2i], x[2i+1]) */
    c->norm_eps = 1e-5f;
    c->rope_theta = 500000.0f;
    c->head_dim = 128;
    c->max_seq_len = 131072;
    c->hidden_dim_mlp = 16384;
    c->n_experts = 16;
    c->top_k = 1;
    c->moe_step = 1;
    c->nope_interval = 4;
    c->qk_norm = 1;
    c->attn_chunk = 8192;
    c->temp_tuning = 1;
    c->floor_scale = 8192.0f;
    c->attn_scale = 0.1f;
}

static const char *const peft__llama4_keys[] = {
    "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok", "interleave_moe_layer_step",
    "moe_layers", "no_rope_layer_interval", "no_rope_layers", "use_qk_norm", "attention_chunk_size",
    "layer_types", "attn_temperature_tuning", "floor_scale", "attn_scale",
    /* no effect on the forward/backward: transformers' Llama4 modules never read them (the
       router's auxiliary loss and jitter are not implemented there; router logits are an
       optional output) */
    "output_router_logits", "router_aux_loss_coef", "router_jitter_noise", NULL };
static int peft__llama4_key(const peft_config *c, const char *key) {
    for (int i = 0; c->llama4 && peft__llama4_keys[i]; i++)
        if (!strcmp(key, peft__llama4_keys[i])) return 1;
    return 0;
}

/* an int list equal to want(l) for every layer, or an empty list / null */
static int peft__llama4_list_ok(const peft_json *v, const peft_config *c, int kind) {
    if (!v || v->type == PEFT_JSON_NULL) return 1;
    if (v->type != PEFT_JSON_ARRAY) return 0;
    if (kind == 1 && v->n_children == 0) return 1;       /* no_rope_layers [] means the default */
    int n = 0, want_n = 0;
    for (int l = 0; l < c->n_layers; l++) want_n += kind == 0 ? peft_layer_is_moe(c, l) : 1;
    if (v->n_children != want_n) return 0;
    int l = 0;
    for (const peft_json *e = v->child; e; e = e->next, n++) {
        if (kind == 0) {                                  /* moe_layers: the indices */
            while (l < c->n_layers && !peft_layer_is_moe(c, l)) l++;
            if (e->type != PEFT_JSON_NUMBER || e->number != l) return 0;
            l++;
        } else if (kind == 1) {                           /* no_rope_layers: 1 = RoPE */
            if (e->type != PEFT_JSON_NUMBER || e->number != peft_layer_has_rope(c, n)) return 0;
        } else {                                          /* layer_types */
            int chunked = peft_layer_has_rope(c, n) && c->attn_chunk > 0;
            if (e->type != PEFT_JSON_STRING ||
                strcmp(e->string, chunked ? "chunked_attention" : "full_attention"))
                return 0;
        }
    }
    return 1;
}

static peft_status peft__llama4_config(peft_config *c, const peft_json *j, const char *path) {
    struct { const char *key; int *dst; } ints[] = {
        { "intermediate_size_mlp", &c->hidden_dim_mlp }, { "num_local_experts", &c->n_experts },
        { "num_experts_per_tok", &c->top_k }, { "interleave_moe_layer_step", &c->moe_step },
        { "no_rope_layer_interval", &c->nope_interval },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (peft__json_int(j, ints[i].key, ints[i].dst) < 0)
            return peft__fail(PEFT_ERR_CONFIG, "%s: '%s' is not an integer", path, ints[i].key);
    const peft_json *ch = peft_json_get(j, "attention_chunk_size");
    if (ch && ch->type == PEFT_JSON_NULL) c->attn_chunk = 0;
    else if (peft__json_int(j, "attention_chunk_size", &c->attn_chunk) < 0 || c->attn_chunk < 0 ||
             (ch && c->attn_chunk == 0))
        return peft__fail(PEFT_ERR_CONFIG, "%s: 'attention_chunk_size' must be a positive integer or null",
                          path);
    static const char *const bools[] = { "use_qk_norm", "attn_temperature_tuning" };
    for (int i = 0; i < 2; i++) {
        const peft_json *b = peft_json_get(j, bools[i]);
        if (b && b->type != PEFT_JSON_BOOL)
            return peft__fail(PEFT_ERR_CONFIG, "%s: '%s' must be true or false", path, bools[i]);
        if (b) *(i ? &c->temp_tuning : &c->qk_norm) = b->number != 0;
    }
    if (peft__json_float(j, "floor_scale", &c->floor_scale) < 0 ||
        peft__json_float(j, "attn_scale", &c->attn_scale) < 0 || !(c->floor_scale > 0) ||
        !isfinite(c->attn_scale))
        return peft__fail(PEFT_ERR_CONFIG, "%s: 'floor_scale' must be a positive number and 'attn_scale' a "
                          "number", path);
    if (c->n_experts < 1 || c->n_experts > 4096 || c->top_k < 1 || c->moe_step < 1 || c->nope_interval < 1 ||
        c->hidden_dim_mlp < 1 || c->hidden_dim_mlp > 1 << 22)
        return peft__fail(
                PEFT_ERR_CONFIG,
                "%s: num_local_experts (%d) must be in 1 .. 4096, "
                "num_experts_per_tok (%d), interleave_moe_layer_step (%d) and intermediate_size_mlp "
                "(%d) and no_rope_layer_interval (%d) positive",
                path, c->n_experts, c->top_k, c->moe_step, c->hidden_dim_mlp, c->nope_interval);
    if (c->top_k > c->n_experts)
        return peft__fail(PEFT_ERR_CONFIG, "%s: num_experts_per_tok (%d) exceeds num_local_experts (%d)",
                          path, c->top_k, c->n_experts);
    static const char *const lists[] = { "moe_layers", "no_rope_layers", "layer_types" };
    if (c->n_layers < 1 || c->n_layers > 4096) return PEFT_OK;   /* peft_config_validate refuses it */
    for (int i = 0; i < 3; i++)
        if (!peft__llama4_list_ok(peft_json_get(j, lists[i]), c, i))
            return peft__fail(
                    PEFT_ERR_UNSUPPORTED,
                    "%s: '%s' is not the pattern of interleave_moe_layer_step (%d), "
                    "no_rope_layer_interval (%d) and attention_chunk_size (%d): only that pattern is "
                    "supported",
                    path, lists[i], c->moe_step, c->nope_interval, c->attn_chunk);
    if (c->mlp_bias)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: mlp_bias is not a LLaMA-4 setting (its MLPs have no bias)", path);
    return PEFT_OK;
}


/* After attention, shared by the plain and the KV-cache forward:
   x += o_proj(a);  x += down(silu(gate(h)) ⊙ up(h)), h = rmsnorm(x).
   The sums go over the projections' outputs, which no backward reads (the
   linear, LoRA, 4-bit and bias ops keep their inputs, not their outputs). */
static peft_tensor *peft__block_rest(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x,
                                     peft_tensor *a) {
    peft_linear_site *S = L->lin;
    x = peft__add_op(g, x, peft__site_forward(m, g, &S[PEFT_O], a), 1);
    peft_tensor *h = peft_rmsnorm(g, x, L->ffn_norm, m->cfg.norm_eps);
    peft_tensor *ff = peft_swiglu(g, peft__site_forward(m, g, &S[PEFT_GATE], h),
                                  peft__site_forward(m, g, &S[PEFT_UP], h));
    return peft__add_op(g, x, peft__site_forward(m, g, &S[PEFT_DOWN], ff), 1);
}

static peft_tensor *peft__block(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x, int B, int T) {
    if (m->cfg.llama4) return peft__llama4_block(m, g, L, x, B, T);
    const peft_config *c = &m->cfg;
    peft_linear_site *S = L->lin;
    peft_attn_extras ex;
    peft_tensor *h = peft_rmsnorm(g, x, L->attn_norm, c->norm_eps);
    /* RoPE over the projections' outputs, which no backward reads */
    peft_tensor *q = peft__rope_op(g, peft__site_forward(m, g, &S[PEFT_Q], h), c->n_heads, &m->rope, B, T, 1);
    peft_tensor *k =
            peft__rope_op(g, peft__site_forward(m, g, &S[PEFT_K], h), c->n_kv_heads, &m->rope, B, T, 1);
    peft_tensor *v = peft__site_forward(m, g, &S[PEFT_V], h);
    peft__attn_extras(m, g, L, h, B, &ex, 1, 1);
    peft_tensor *a = peft_attention_ex(g, q, k, v, B, T, c->n_heads, c->n_kv_heads, c->head_dim, &ex);
    return peft__block_rest(m, g, L, x, a);
}

/* ---- gradient checkpointing ----------------------------------------------------------
   Forward: the block runs on the model's scratch tape with gradients off; its
   output is copied out and one node is recorded, holding the block input and
   the dropout RNG state. Backward: the scratch tape is reset, the block runs
   again from a copy of its input with the same RNG (same dropout masks, same
   numbers), and is backpropagated with the node's output gradient as the
   seed: parameter gradients land in the parameters as usual, the input's is
   added to the outer tape's input tensor. */
typedef struct { peft_model *m; peft_layer *L; peft_rng rng; int B, T, training; } peft__ckpt_ctx;

static peft_tensor *peft__block(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x, int B, int T);

/* Every tensor a block reads: its norms, each linear site's weight, bias and
   attached tensors (LoRA, V2 bias/scale), the attention site's prompts,
   gates and Excitor tensors, and the model's fusion projection where the
   block takes fusion prompts. Whatever a method adds to a site is listed
   here, once: the checkpointing rule below asks this list, so a trainable
   tensor a block reads cannot be missed. Returns the count (NULLs skipped). */
#define PEFT__LAYER_MAX_TENSORS (2 + 9 * PEFT_N_SITES + 8 + 10)
static int peft__layer_tensors(const peft_model *m, const peft_layer *L, peft_tensor **out) {
    const peft_attn_site *A = &L->attn;
    peft_tensor *all[PEFT__LAYER_MAX_TENSORS];
    int n = 0;
    all[n++] = L->attn_norm;
    all[n++] = L->ffn_norm;
    for (int s = 0; s < PEFT_N_SITES; s++) {
        const peft_linear_site *S = &L->lin[s];
        all[n++] = S->w;
        all[n++] = S->b;
        all[n++] = S->lora_A;
        all[n++] = S->lora_B;
        all[n++] = S->lora_bias;
        all[n++] = S->bias;
        all[n++] = S->scale;
        all[n++] = S->custom[0];
        all[n++] = S->custom[1];
    }
    all[n++] = A->prompt;
    all[n++] = A->gate;
    all[n++] = A->fusion_gate;
    all[n++] = A->fusion_gate ? m->fusion_proj : NULL;
    all[n++] = A->ex_prompt;
    all[n++] = A->ex_down;
    all[n++] = A->ex_up;
    all[n++] = A->ex_gate;
    all[n++] = L->moe.router;
    all[n++] = L->moe.gate_up;
    all[n++] = L->moe.down;
    all[n++] = L->moe.router_A;
    all[n++] = L->moe.router_B;
    all[n++] = L->moe.router_copy;
    all[n++] = L->moe.gate_up_A;
    all[n++] = L->moe.gate_up_B;
    all[n++] = L->moe.down_A;
    all[n++] = L->moe.down_B;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (all[i]) out[k++] = all[i];
    return k;
}

/* A block is recomputed and differentiated when it reads any trainable
   tensor (or its input needs a gradient): the node records that tensor. */
static peft_tensor *peft__first_trainable(const peft_model *m, const peft_layer *L) {
    peft_tensor *t[PEFT__LAYER_MAX_TENSORS];
    int n = peft__layer_tensors(m, L, t);
    for (int i = 0; i < n; i++)
        if (t[i]->requires_grad) return t[i];
    return NULL;
}

static void peft__ckpt_bw(peft_graph *g, peft__node *n) {
    const peft__ckpt_ctx *c = (const peft__ckpt_ctx *)n->aux;
    peft_model *m = c->m;
    peft_graph *sg = m->recompute;
    peft_tensor *x = n->in[0];
    peft_graph_reset(sg);
    peft_graph_set_grad(sg, 1);
    peft_tensor *xin = peft_tensor_2d(sg, peft__rows(x), peft__cols(x));
    if (!xin) {
        g->failed = 1;
        return;
    }
    sg->be->copy(xin->data, x->data, x->n);
    xin->requires_grad = x->requires_grad;
    peft_rng keep = m->rng;
    int training = m->training;
    m->rng = c->rng;
    m->training = c->training;
    peft_tensor *y = peft__block(m, sg, c->L, xin, c->B, c->T);
    m->rng = keep;
    m->training = training;
    if (!y || peft_backward_seed(sg, y, n->out->grad) != PEFT_OK) {
        g->failed = 1;
        return;
    }
    if (x->requires_grad && x->grad && xin->grad)
        for (int64_t j = 0; j < x->n; j++) x->grad[j] += xin->grad[j];
}

static peft_tensor *peft__block_checkpointed(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *x,
                                             int B, int T) {
    if (!x) return NULL;
    if (!m->recompute && !(m->recompute = peft_graph_new())) {
        g->failed = 1;
        return NULL;
    }
    peft__ckpt_ctx *c = (peft__ckpt_ctx *)peft__arena_alloc(g, sizeof *c);
    if (!c) {
        g->failed = 1;
        return NULL;
    }
    c->m = m;
    c->L = L;
    c->rng = m->rng;
    c->B = B;
    c->T = T;
    c->training = m->training;
    peft_graph *sg = m->recompute;
    peft_graph_reset(sg);
    peft_graph_set_grad(sg, 0);
    peft_tensor *yt = peft__block(m, sg, L, x, B, T);
    if (!yt) {
        g->failed = 1;
        return NULL;
    }
    peft_tensor *y = peft__like(g, yt);
    if (!y) return NULL;
    g->be->copy(y->data, yt->data, y->n);
    peft_op op = { .out = y, .in = { x, peft__first_trainable(m, L) }, .aux = c,
                   .custom_backward = peft__ckpt_bw };
    peft__push(g, &op, 0);
    return y;
}

/* embeddings, the blocks and the final norm: the input of the classifier */
/* The input and output embeddings the forward uses: a modules_to_save copy, the
   table with trainable tokens' rows, or the base (also once merged: merging
   moves the copies into the base tensors). */
/* Trainable tokens: with gradients on and the delta trainable, a
   peft_replace_rows output, through which the delta's gradient flows back
   (from the embedding and from a tied lm_head); otherwise tokens_table with
   the delta's current rows copied in (a few rows, not the whole table). */
static peft_tensor *peft__tokens_table(peft_model *m, peft_graph *g) {
    const peft_method *x = &m->method;
    int64_t D = m->cfg.dim;
    if (g->grad_enabled && m->tokens_delta->requires_grad)
        m->tokens_step = peft_replace_rows(g, m->embed->data ? m->embed : m->tokens_table, m->tokens_delta,
                                           x->trainable_tokens, x->n_trainable_tokens);
    else {
        for (int i = 0; i < x->n_trainable_tokens; i++)
            memcpy(m->tokens_table->data + (size_t)x->trainable_tokens[i] * D,
                   m->tokens_delta->data + (size_t)i * D, sizeof(float) * (size_t)D);
        m->tokens_step = m->tokens_table;
    }
    return m->tokens_step;
}
static peft_tensor *peft__embed_table(peft_model *m, peft_graph *g) {
    if (m->tokens_step) m->tokens_step = NULL;  /* never written without trainable tokens: shards read m */
    if (m->lora_merged) return m->embed;
    if (m->save_embed) return m->save_embed;
    return m->tokens_delta ? peft__tokens_table(m, g) : m->embed;
}
static peft_tensor *peft__head_table(const peft_model *m) {
    if (m->lora_merged) return m->lm_head;
    if (m->save_head) return m->save_head;
    return m->tokens_step && m->cfg.tie_embeddings ? m->tokens_step : m->lm_head;
}
/* A GGUF base keeps embed / lm_head in ggml blocks: the lookup decodes the
   rows it takes, the classifier decodes W's panels in the GEMM's packing. */
static peft_tensor *peft__embed_lookup(peft_model *m, peft_graph *g, const int *tokens, int n) {
    peft_tensor *E = peft__embed_table(m, g);
    if (E == m->embed && !E->data && m->embed_qm) return peft_qmatrix_embedding(g, m->embed_qm, tokens, n);
    return peft_embedding(g, E, tokens, n);
}
/* The head's weights held in blocks, when the head used is the frozen
   lm_head: a GGUF base's ggml blocks (lm_head has no floats), or the bf16
   copy of --precision bf16 (as it was copied); NULL: the floats are used. */
static const peft_qmatrix *peft__head_frozen(const peft_model *m) {
    peft_tensor *W = peft__head_table(m);
    if (W != m->lm_head) return NULL;
    if (!W->data) return m->head_qm;
    if (!m->head_bf16 || m->lora_merged || m->save_head || W->requires_grad) return NULL;
    return m->head_bf16;
}
static peft_tensor *peft__head_logits(const peft_model *m, peft_graph *g, peft_tensor *h) {
    const peft_qmatrix *q = peft__head_frozen(m);
    if (q) return peft_qmatrix_linear(g, h, q);
    return peft_linear(g, h, peft__head_table(m));
}

static peft_tensor *peft__model_hidden(peft_model *m, peft_graph *g, const int *tokens, int B, int T) {
    if (B < 1 || T < 1) {
        g->failed = 1;
        peft__fail(PEFT_ERR_ARG, "forward needs B >= 1 and T >= 1");
        return NULL;
    }
    if (peft__rope_ensure(m, T) != PEFT_OK) {
        g->failed = 1;
        return NULL;
    }
    for (int i = 0; i < B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            g->failed = 1;
            peft__fail(PEFT_ERR_ARG, "token id %d at position %d is outside the vocabulary (size %d)",
                       tokens[i], i, m->cfg.vocab_size);
            return NULL;
        }
    peft_tensor *x = peft__embed_lookup(m, g, tokens, B * T);
    for (int l = 0; l < m->cfg.n_layers; l++)
        x = m->checkpointing && g->grad_enabled ? peft__block_checkpointed(m, g, &m->layers[l], x, B, T)
                                                : peft__block(m, g, &m->layers[l], x, B, T);
    return peft_rmsnorm(g, x, m->norm, m->cfg.norm_eps);
}

PEFTDEF peft_tensor *peft_model_forward(peft_model *m, peft_graph *g, const int *tokens, int B, int T) {
    peft_tensor *h = peft__model_hidden(m, g, tokens, B, T); /* first: it picks the head's table */
    return h ? peft__head_logits(m, g, h) : NULL;
}

/* ---- forward with a KV cache ------------------------------------------------------
   The same block as above for T new tokens per row, except attention: the
   new keys/values are appended to the cache and each new query attends to
   every cached position up to its own (causal), then to the prompts. */
struct peft_kv_cache {
    const peft_backend *be;      /* holds k, v, x and the prompts              */
    int    B, max_len, n_layers, H, kvw, prompts_ready;
    int   *len;                  /* [B] positions held per row                 */
    float *k, *v, *x;            /* [layers][B][max_len][kvw]; x: Excitor keys */
    float **pk, **pv;            /* per layer prompt keys/values [rows, kvw]   */
    int   *n_prompts, *p_batched;
    float *G;                    /* [layers][H] prompt gates as applied        */
};

PEFTDEF peft_status peft_kv_cache_new(peft_kv_cache **out, const peft_model *m, int batch, int max_len) {
    *out = NULL;
    if (m->cfg.llama4)   /* chunked attention, NoPE temperature and experts are not in the cached block */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "the KV cache does not support LLaMA-4 models yet: run "
                          "peft_model_forward over the whole sequence");
    const peft_config *cf = &m->cfg;
    if (batch < 1 || max_len < 1) return peft__fail(PEFT_ERR_ARG, "kv cache: batch and max_len must be >= 1");
    peft_kv_cache *c = (peft_kv_cache *)peft__calloc(sizeof *c);
    if (!c) return peft__fail(PEFT_ERR_NOMEM, "no memory for the kv cache");
    c->B = batch;
    c->max_len = max_len;
    c->n_layers = cf->n_layers;
    c->H = cf->n_heads;
    c->kvw = cf->n_kv_heads * cf->head_dim;
    size_t n = (size_t)cf->n_layers * batch * max_len * c->kvw;
    int excitor = m->method.kind == PEFT_EXCITOR;
    c->be = peft_backend_current();
    c->len = (int *)peft__calloc((size_t)batch * sizeof(int));
    c->k = (float *)c->be->alloc(n * sizeof(float));
    c->v = (float *)c->be->alloc(n * sizeof(float));
    c->x = excitor ? (float *)c->be->alloc(n * sizeof(float)) : NULL;
    c->pk = (float **)peft__calloc((size_t)cf->n_layers * sizeof(float *));
    c->pv = (float **)peft__calloc((size_t)cf->n_layers * sizeof(float *));
    c->n_prompts = (int *)peft__calloc((size_t)cf->n_layers * sizeof(int));
    c->p_batched = (int *)peft__calloc((size_t)cf->n_layers * sizeof(int));
    c->G = (float *)peft__calloc((size_t)cf->n_layers * cf->n_heads * sizeof(float));
    if (!c->len || !c->k || !c->v || (excitor && !c->x) || !c->pk || !c->pv || !c->n_prompts ||
        !c->p_batched || !c->G) {
        peft_kv_cache_free(c);
        return peft__fail(PEFT_ERR_NOMEM, "no memory for a kv cache of %d x %d positions", batch, max_len);
    }
    *out = c;
    return PEFT_OK;
}

PEFTDEF void peft_kv_cache_reset(peft_kv_cache *c) {
    for (int b = 0; b < c->B; b++) c->len[b] = 0;
    for (int l = 0; l < c->n_layers; l++) {
        c->be->free(c->pk[l]);
        c->be->free(c->pv[l]);
        c->pk[l] = c->pv[l] = NULL;
        c->n_prompts[l] = 0;
    }
    c->prompts_ready = 0;
}

PEFTDEF void peft_kv_cache_free(peft_kv_cache *c) {
    if (!c) return;
    for (int l = 0; c->pk && c->pv && l < c->n_layers; l++) {   /* any array may be missing: half made */
        c->be->free(c->pk[l]);
        c->be->free(c->pv[l]);
    }
    PEFT_FREE(c->len);
    c->be->free(c->k);
    c->be->free(c->v);
    c->be->free(c->x);
    PEFT_FREE(c->pk);
    PEFT_FREE(c->pv);
    PEFT_FREE(c->n_prompts);
    PEFT_FREE(c->p_batched);
    PEFT_FREE(c->G);
    PEFT_FREE(c);
}

PEFTDEF int peft_kv_cache_len(const peft_kv_cache *c, int row) {
    return row >= 0 && row < c->B ? c->len[row] : 0;
}
PEFTDEF void peft_kv_cache_set_len(peft_kv_cache *c, int row, int len) {
    if (row >= 0 && row < c->B && len >= 0 && len <= c->len[row]) c->len[row] = len;
}

typedef struct {
    const float *q, *k, *v, *x, *pk, *pv;
    float *o, *scratch;
    const int *len;
    const float *G;
    float Gx[PEFT_MAX_HEADS];
    int T, H, KV, hd, K, batched, max_len;
} peft__cached_args;

/* PEFT__CPU_KERNEL_BEGIN: the CPU backend's cached attention (not model code) */
/* one work item per (row, query head): heads do not share anything forward */
static void peft__attn_cached_range(void *vctx, int64_t i0, int64_t i1) {
    peft__cached_args *a = (peft__cached_args *)vctx;
    int H = a->H, hd = a->hd, T = a->T, K = a->K;
    int64_t qw = (int64_t)H * hd, kw = (int64_t)a->KV * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t it = i0; it < i1; it++) {
        int b = (int)(it / H), h = (int)(it % H), kvh = h / (H / a->KV);
        int64_t col = (int64_t)kvh * hd, row0 = (int64_t)b * a->max_len * kw;
        float *pr = a->scratch + (size_t)it * (a->max_len + K);
        for (int t = 0; t < T; t++) {
            const float *qt = a->q + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
            float *ot = a->o + ((int64_t)b * T + t) * qw + (int64_t)h * hd;
            peft__attend_row(qt, a->k + row0 + col, a->v + row0 + col, a->x ? a->x + row0 + col : NULL,
                             a->Gx[h], kw, a->len[b] + t + 1, hd, scale, pr, ot);
            if (K) {
                int64_t pb = a->batched ? (int64_t)b * K : 0;
                peft__attend_prompts(qt, a->pk + pb * kw + col, a->pv + pb * kw + col, kw, K, hd, scale,
                                     a->G[h], pr + a->max_len, ot);
            }
        }
    }
}
/* o = out [B·T, H·hd]; aux: the cache's view of this layer (a
   peft__cached_args, its o already set); i[0]: B·H work items */
static peft_status peft__cpu_attention_cached(peft_graph *g, peft__node *nd) {
    (void)g;
    peft__parallel_for(nd->i[0], 1, peft__attn_cached_range, (void *)nd->aux);
    return PEFT_OK;
}
/* PEFT__CPU_KERNEL_END */

/* keeps the first call's prompt keys/values (and gates) for every later one */
static int peft__cache_prompts(peft_kv_cache *c, int l, const peft_attn_extras *ex, int B) {
    if (!ex->pk) return 1;
    size_t n = (size_t)ex->pk->n;
    c->be->free(c->pk[l]);               /* left by a call that failed at a later layer */
    c->be->free(c->pv[l]);
    c->pk[l] = (float *)c->be->alloc(n * sizeof(float));
    c->pv[l] = (float *)c->be->alloc(n * sizeof(float));
    if (!c->pk[l] || !c->pv[l]) return 0;
    c->be->copy(c->pk[l], ex->pk->data, (int64_t)n);
    c->be->copy(c->pv[l], ex->pv->data, (int64_t)n);
    c->n_prompts[l] = ex->n_prompts;
    c->p_batched[l] = peft__rows(ex->pk) == (int64_t)B * ex->n_prompts && B > 1;
    peft__gate_values(ex->gate, ex->gate_tanh, c->H, c->G + (size_t)l * c->H);
    return 1;
}

static peft_tensor *peft__block_cached(peft_model *m, peft_graph *g, peft_kv_cache *c, int l, peft_tensor *x,
                                       int B, int T) {
    const peft_config *cf = &m->cfg;
    peft_layer *L = &m->layers[l];
    peft_linear_site *S = L->lin;
    int H = cf->n_heads, hd = cf->head_dim, kvw = c->kvw;
    peft_tensor *h = peft_rmsnorm(g, x, L->attn_norm, cf->norm_eps);
    peft_tensor *q = peft__site_forward(m, g, &S[PEFT_Q], h);
    peft_tensor *k = peft__site_forward(m, g, &S[PEFT_K], h);
    peft_tensor *v = peft__site_forward(m, g, &S[PEFT_V], h);
    peft_attn_extras ex;
    peft__attn_extras(m, g, L, h, B, &ex, !c->prompts_ready, 1);
    if (!q || !k || !v || g->failed || (L->attn.ex_prompt && !ex.x)) return NULL;
    if (!c->prompts_ready && !peft__cache_prompts(c, l, &ex, B)) {
        g->failed = 1;
        peft__fail(PEFT_ERR_NOMEM, "no memory for the cached prompts");
        return NULL;
    }
    /* RoPE in place, each row continuing at its cached length */
    peft_op rq = { .kind = PEFT_OP_ROPE, .out = q, .in = { q }, .ids = c->len, .i = { H, T },
                   .aux = &m->rope };
    peft_op rk = { .kind = PEFT_OP_ROPE, .out = k, .in = { k }, .ids = c->len, .i = { cf->n_kv_heads, T },
                   .aux = &m->rope };
    if (!peft__run(g, &rq, 0) || !peft__run(g, &rk, 0)) return NULL;
    size_t layer = (size_t)l * c->B * c->max_len * kvw;
    for (int b = 0; b < B; b++) {
        size_t at = layer + ((size_t)b * c->max_len + c->len[b]) * kvw, from = (size_t)b * T * kvw,
               n = (size_t)T * kvw;
        c->be->copy(c->k + at, k->data + from, (int64_t)n);
        c->be->copy(c->v + at, v->data + from, (int64_t)n);
        if (c->x && ex.x) c->be->copy(c->x + at, ex.x->data + from, (int64_t)n);
    }
    peft_tensor *o = peft_tensor_2d(g, (int64_t)B * T, (int64_t)H * hd);
    int K = c->n_prompts[l];
    float *scratch = o ? peft__arena_floats(g, (int64_t)B * H * (c->max_len + K), 0) : NULL;
    if (!scratch) return NULL;
    peft__cached_args a;
    memset(&a, 0, sizeof a);
    a.q = q->data;
    a.k = c->k + layer;
    a.v = c->v + layer;
    a.x = c->x && ex.x ? c->x + layer : NULL;
    a.pk = c->pk[l];
    a.pv = c->pv[l];
    a.K = K;
    a.batched = c->p_batched[l];
    a.G = c->G + (size_t)l * H;
    a.o = o->data;
    a.scratch = scratch;
    a.len = c->len;
    a.T = T;
    a.H = H;
    a.KV = cf->n_kv_heads;
    a.hd = hd;
    a.max_len = c->max_len;
    peft__gate_values(ex.x ? ex.x_gate : NULL, 0, H, a.Gx);
    peft_op op = { .kind = PEFT_OP_ATTENTION_CACHED, .out = o, .in = { q }, .aux = &a, .i = { B * H } };
    if (!peft__run(g, &op, 0)) return NULL;
    return peft__block_rest(m, g, L, x, o);
}

PEFTDEF peft_tensor *peft_model_forward_cached(peft_model *m, peft_graph *g, peft_kv_cache *c,
                                               const int *tokens, int B, int T) {
    const char *err = NULL;
    if (g->grad_enabled) err = "cached forward runs with gradients off (peft_graph_set_grad(g, 0))";
    else if (B != c->B || T < 1) err = "cached forward: B must equal the cache's batch and T >= 1";
    else if (c->n_layers != m->cfg.n_layers || c->kvw != m->cfg.n_kv_heads * m->cfg.head_dim)
        err = "cached forward: the cache was made for another model";
    for (int b = 0; !err && b < B; b++)
        if (c->len[b] + T > c->max_len) err = "cached forward: a row would pass the cache's max_len";
    if (err) {
        g->failed = 1;
        peft__fail(PEFT_ERR_ARG, "%s", err);
        return NULL;
    }
    if (peft__rope_ensure(m, c->max_len) != PEFT_OK) {
        g->failed = 1;
        return NULL;
    }
    for (int i = 0; i < B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size) {
            g->failed = 1;
            peft__fail(PEFT_ERR_ARG, "token id %d at position %d is outside the vocabulary (size %d)",
                       tokens[i], i, m->cfg.vocab_size);
            return NULL;
        }
    peft_tensor *x = peft__embed_lookup(m, g, tokens, B * T);
    for (int l = 0; l < m->cfg.n_layers && x; l++) x = peft__block_cached(m, g, c, l, x, B, T);
    if (!x) return NULL;
    for (int b = 0; b < B; b++) c->len[b] += T;
    c->prompts_ready = 1;
    x = peft_rmsnorm(g, x, m->norm, m->cfg.norm_eps);
    return x ? peft__head_logits(m, g, x) : NULL;
}

PEFTDEF peft_tensor *peft_model_loss(peft_model *m, peft_graph *g, const int *tokens,
                                     const int *targets, int B, int T) {
    /* the fused classifier + loss: the [B·T, vocab] logits are never stored */
    peft_tensor *h = peft__model_hidden(m, g, tokens, B, T); /* first: it picks the head's table */
    peft_tensor *W = peft__head_table(m);
    return peft__linear_cross_entropy(g, h, W->data ? W : NULL, peft__head_frozen(m), targets);
}

/* ============================================================================
   METHODS: what attaches where
   ============================================================================
   A method is a set of parameters plus the sites they attach to. Full
   fine-tuning attaches nothing and trains every base parameter. Methods add
   their tensors to m->extra under the names they are saved with, so saving
   an adapter is a dump of m->extra (plus any base tensor made trainable). */

static const char *const peft__site_names[PEFT_N_SITES] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" };

PEFTDEF const char *peft_site_name(peft_site s) { return s < PEFT_N_SITES ? peft__site_names[s] : "?"; }
PEFTDEF const char *peft_method_name(peft_method_kind k) {
    const peft_method_def *d = peft_method_get(k);
    return d ? d->name : "?";
}

PEFTDEF peft_status peft_method_parse(const char *name, peft_method_kind *kind) {
    char known[512] = "";
    for (int i = 0; i < peft_method_count(); i++) {
        const char *n = peft_method_get((peft_method_kind)i)->name;
        if (strcmp(name, n) == 0) {
            *kind = (peft_method_kind)i;
            return PEFT_OK;
        }
        size_t L = strlen(known);
        snprintf(known + L, sizeof known - L, "%s%s", i ? ", " : "", n);
    }
    return peft__fail(PEFT_ERR_CONFIG, "unknown method '%s' (known: %s)", name, known);
}

#define PEFT__ALL_LINEAR ((1u << PEFT_N_SITES) - 1)

/* The entry's defaults (its paper's hyper-parameters) as a method config. */
PEFTDEF peft_method peft_method_defaults(peft_method_kind kind) {
    peft_method m;
    memset(&m, 0, sizeof m);
    m.kind = kind;
    const peft_method_def *d = peft_method_get(kind);
    if (!d) return m;
    const peft_method_recipe *r = &d->defaults;
    m.lora_r = r->lora_r;
    m.lora_alpha = r->lora_alpha;
    m.lora_dropout = r->lora_dropout;
    m.lora_targets = r->lora_targets;
    m.adapter_len = r->adapter_len;
    m.adapter_layers = r->adapter_layers;
    m.excitor_len = r->excitor_len;
    m.excitor_rank = r->excitor_rank;
    m.excitor_layers = r->excitor_layers;
    memcpy(m.custom, r->custom, sizeof m.custom);
    return m;
}

static peft_status peft__parse_int_list(const char *v, uint8_t *mask, const char *key) {
    memset(mask, 0, PEFT_MAX_LAYERS);
    if (strcmp(v, "all") == 0 || !*v) return PEFT_OK;
    for (const char *p = v; *p;) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || a < 0 || a >= PEFT_MAX_LAYERS)
            return peft__fail(PEFT_ERR_CONFIG, "%s: bad layer list '%s'", key, v);
        if (*end == '-') {
            p = end + 1;
            b = strtol(p, &end, 10);
            if (end == p || b < a || b >= PEFT_MAX_LAYERS)
                return peft__fail(PEFT_ERR_CONFIG, "%s: bad layer range in '%s'", key, v);
        }
        for (long i = a; i <= b; i++) mask[i] = 1;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return peft__fail(PEFT_ERR_CONFIG, "%s: bad layer list '%s'", key, v);
    }
    return PEFT_OK;
}

/* ---- module-name patterns --------------------------------------------------------
   PEFT matches module names with Python's re (target_modules and exclude_modules
   given as one string: re.fullmatch; rank_pattern/alpha_pattern keys and
   layers_pattern: re.match of a pattern built around them). This is a regex
   matcher for what such configs use: literals, '.', classes [a-z0-9_] and [^...],
   \d \w \s \D \W \S and escaped punctuation, groups (...), (?:...) and (?P<name>...),
   alternation, quantifiers * + ? {m} {m,} {m,n} {,n} (lazy forms too: whether a
   full match exists does not depend on greed), ^ and $. Anything else
   (backreferences, lookaround, inline flags) is refused by name, never
   guessed. The pattern is parsed to a tree, compiled to a Thompson NFA and run
   as a set of states: linear in the name's length, no backtracking. */
enum { PEFT__RX_SET, PEFT__RX_CAT, PEFT__RX_ALT, PEFT__RX_REP, PEFT__RX_BOL, PEFT__RX_EOL, PEFT__RX_EMPTY };
typedef struct {
    int type, a, b, min, max;
    uint32_t set[8];
} peft__rx_node;
enum { PEFT__RI_SET, PEFT__RI_SPLIT, PEFT__RI_JMP, PEFT__RI_BOL, PEFT__RI_EOL, PEFT__RI_MATCH };
typedef struct {
    int op, x, y, node;
} peft__rx_ins;
#define PEFT__RX_MAX 2048
typedef struct {
    const char *p, *pat;
    const char *err;
    peft__rx_node node[PEFT__RX_MAX];
    int n_node;
    peft__rx_ins ins[PEFT__RX_MAX];
    int n_ins;
} peft__rx;

static int peft__rx_new(peft__rx *r, int type) {
    if (r->n_node == PEFT__RX_MAX) {
        r->err = "too long";
        return -1;
    }
    peft__rx_node *n = &r->node[r->n_node];
    memset(n, 0, sizeof *n);
    n->type = type;
    return r->n_node++;
}
static void peft__rx_bit(peft__rx_node *n, int c) { n->set[(unsigned char)c >> 5] |= 1u << (c & 31); }
static void peft__rx_range(peft__rx_node *n, int lo, int hi) {
    for (int c = lo; c <= hi; c++) peft__rx_bit(n, c);
}
/* \d \w \s and their complements into node n; 0 when e is not a class letter */
static int peft__rx_class_escape(peft__rx_node *n, int e) {
    peft__rx_node t;
    memset(&t, 0, sizeof t);
    int lower = e | 32;
    if (lower == 'd')
        peft__rx_range(&t, '0', '9');
    else if (lower == 'w') {
        peft__rx_range(&t, 'a', 'z');
        peft__rx_range(&t, 'A', 'Z');
        peft__rx_range(&t, '0', '9');
        peft__rx_bit(&t, '_');
    } else if (lower == 's') {
        peft__rx_range(&t, '\t', '\r');
        peft__rx_bit(&t, ' ');
    } else
        return 0;
    for (int i = 0; i < 8; i++) n->set[i] |= e == lower ? t.set[i] : ~t.set[i];
    return 1;
}
/* a literal escape: punctuation and \t \n; letters and digits (backreferences,
   \b, \A, ...) are refused */
static int peft__rx_literal_escape(int e) {
    if (e == 't') return '\t';
    if (e == 'n') return '\n';
    if (isalnum(e) || e == 0) return -1;
    return e;
}

static int peft__rx_alt(peft__rx *r);
static int peft__rx_atom(peft__rx *r) {
    char c = *r->p;
    int n;
    if (c == '(') {
        r->p++;
        if (*r->p == '?' && r->p[1] == 'P' && r->p[2] == '<') { /* a named group: the name is skipped */
            const char *q = r->p + 3;
            while (isalnum((unsigned char)*q) || *q == '_') q++;
            if (*q != '>' || q == r->p + 3) {
                r->err = "bad group name";
                return -1;
            }
            r->p = q + 1;
        } else if (*r->p == '?') {
            if (r->p[1] != ':') {
                r->err = "(? group other than (?:...) and (?P<name>...)";
                return -1;
            }
            r->p += 2;
        }
        n = peft__rx_alt(r);
        if (n < 0) return -1;
        if (*r->p != ')') {
            r->err = "unbalanced parenthesis";
            return -1;
        }
        r->p++;
        return n;
    }
    if (c == '^' || c == '$') {
        r->p++;
        return peft__rx_new(r, c == '^' ? PEFT__RX_BOL : PEFT__RX_EOL);
    }
    if (c == '*' || c == '+' || c == '?') {
        r->err = "nothing to repeat";
        return -1;
    }
    if ((n = peft__rx_new(r, PEFT__RX_SET)) < 0) return -1;
    peft__rx_node *N = &r->node[n];
    if (c == '.') {
        peft__rx_range(N, 0, 255);
        N->set[0] &= ~(1u << '\n');
        r->p++;
        return n;
    }
    if (c == '\\') {
        int e = (unsigned char)r->p[1];
        if (!peft__rx_class_escape(N, e)) {
            int l = peft__rx_literal_escape(e);
            if (l < 0) {
                r->err = "unsupported escape";
                return -1;
            }
            peft__rx_bit(N, l);
        }
        r->p += 2;
        return n;
    }
    if (c != '[') {
        peft__rx_bit(N, c);
        r->p++;
        return n;
    }
    r->p++;
    int neg = *r->p == '^';
    if (neg) r->p++;
    for (int first = 1; first || *r->p != ']'; first = 0) {
        int lo = (unsigned char)*r->p;
        if (!lo) {
            r->err = "unterminated character class";
            return -1;
        }
        if (lo == '\\') {
            int e = (unsigned char)r->p[1];
            r->p += 2;
            if (peft__rx_class_escape(N, e)) continue;
            if ((lo = peft__rx_literal_escape(e)) < 0) {
                r->err = "unsupported escape in a class";
                return -1;
            }
        } else
            r->p++;
        int hi = lo;
        if (*r->p == '-' && r->p[1] && r->p[1] != ']') {
            hi = (unsigned char)r->p[1];
            r->p += 2;
            if (hi == '\\') {
                if ((hi = peft__rx_literal_escape((unsigned char)*r->p)) < 0) {
                    r->err = "bad range";
                    return -1;
                }
                r->p++;
            }
            if (hi < lo) {
                r->err = "bad character range";
                return -1;
            }
        }
        peft__rx_range(N, lo, hi);
    }
    r->p++;
    if (neg)
        for (int i = 0; i < 8; i++) N->set[i] = ~N->set[i];
    return n;
}
/* {m}, {m,}, {m,n}, {,n} at r->p; 0 when the brace is a literal (as in Python) */
static int peft__rx_braces(peft__rx *r, int *mn, int *mx) {
    const char *q = r->p + 1;
    char *end = (char *)q;
    long a = 0;
    if (isdigit((unsigned char)*q))
        a = strtol(q, &end, 10);
    else if (*q != ',')
        return 0; /* {,n} and {,} are {0,n} and {0,} (Python 3.11) */
    long b = a;
    if (*end == ',') {
        q = end + 1;
        b = isdigit((unsigned char)*q) ? strtol(q, &end, 10) : -1;
        if (b < 0) end = (char *)q;
    }
    if (*end != '}') return 0;
    if (a > 100 || b > 100 || (b >= 0 && b < a)) {
        r->err = "repeat count out of range (0..100)";
        return -1;
    }
    *mn = (int)a;
    *mx = (int)b;
    r->p = end + 1;
    return 1;
}
static int peft__rx_repeat(peft__rx *r) {
    int n = peft__rx_atom(r);
    while (n >= 0) {
        int mn, mx, k;
        char c = *r->p;
        if (c == '*') {
            mn = 0;
            mx = -1;
            r->p++;
        } else if (c == '+') {
            mn = 1;
            mx = -1;
            r->p++;
        } else if (c == '?') {
            mn = 0;
            mx = 1;
            r->p++;
        } else if (c == '{' && (k = peft__rx_braces(r, &mn, &mx)) != 0) {
            if (k < 0) return -1;
        } else
            break;
        if (*r->p == '?') r->p++; /* lazy: the same set of full matches */
        if (*r->p == '*' || *r->p == '+' ||
            (*r->p == '{' && (isdigit((unsigned char)r->p[1]) || r->p[1] == ','))) {
            r->err = "multiple repeat";
            return -1;
        }
        int q = peft__rx_new(r, PEFT__RX_REP);
        if (q < 0) return -1;
        r->node[q].a = n;
        r->node[q].min = mn;
        r->node[q].max = mx;
        n = q;
    }
    return n;
}
static int peft__rx_cat(peft__rx *r) {
    int n = peft__rx_new(r, PEFT__RX_EMPTY);
    while (n >= 0 && *r->p && *r->p != '|' && *r->p != ')') {
        int a = peft__rx_repeat(r);
        if (a < 0) return -1;
        int c = peft__rx_new(r, PEFT__RX_CAT);
        if (c < 0) return -1;
        r->node[c].a = n;
        r->node[c].b = a;
        n = c;
    }
    return n;
}
static int peft__rx_alt(peft__rx *r) {
    int n = peft__rx_cat(r);
    while (n >= 0 && *r->p == '|') {
        r->p++;
        int b = peft__rx_cat(r);
        if (b < 0) return -1;
        int c = peft__rx_new(r, PEFT__RX_ALT);
        if (c < 0) return -1;
        r->node[c].a = n;
        r->node[c].b = b;
        n = c;
    }
    return n;
}
static int peft__rx_emit(peft__rx *r, int op, int x, int y, int node) {
    if (r->n_ins == PEFT__RX_MAX) {
        r->err = "too complex (more than 2048 states)";
        return -1;
    }
    peft__rx_ins *i = &r->ins[r->n_ins];
    i->op = op;
    i->x = x;
    i->y = y;
    i->node = node;
    return r->n_ins++;
}
/* Code for node n, falling through to the next instruction when it matches. */
static int peft__rx_compile(peft__rx *r, int n) {
    const peft__rx_node *N = &r->node[n];
    int at, j;
    switch (N->type) {
    case PEFT__RX_EMPTY: return 0;
    case PEFT__RX_SET: return peft__rx_emit(r, PEFT__RI_SET, 0, 0, n) < 0 ? -1 : 0;
    case PEFT__RX_BOL: return peft__rx_emit(r, PEFT__RI_BOL, 0, 0, n) < 0 ? -1 : 0;
    case PEFT__RX_EOL: return peft__rx_emit(r, PEFT__RI_EOL, 0, 0, n) < 0 ? -1 : 0;
    case PEFT__RX_CAT: return peft__rx_compile(r, N->a) < 0 ? -1 : peft__rx_compile(r, N->b);
    case PEFT__RX_ALT: /* split L1 L2; L1: a; jmp L3; L2: b; L3: */
        if ((at = peft__rx_emit(r, PEFT__RI_SPLIT, 0, 0, n)) < 0 || peft__rx_compile(r, N->a) < 0) return -1;
        if ((j = peft__rx_emit(r, PEFT__RI_JMP, 0, 0, n)) < 0) return -1;
        r->ins[at].x = at + 1;
        r->ins[at].y = r->n_ins;
        if (peft__rx_compile(r, N->b) < 0) return -1;
        r->ins[j].x = r->n_ins;
        return 0;
    default: break;
    }
    for (int k = 0; k < N->min; k++) /* the required copies */
        if (peft__rx_compile(r, N->a) < 0) return -1;
    if (N->max < 0) { /* L: split L+1 L3; a; jmp L; L3: */
        if ((at = peft__rx_emit(r, PEFT__RI_SPLIT, 0, 0, n)) < 0 || peft__rx_compile(r, N->a) < 0) return -1;
        if (peft__rx_emit(r, PEFT__RI_JMP, at, 0, n) < 0) return -1;
        r->ins[at].x = at + 1;
        r->ins[at].y = r->n_ins;
        return 0;
    }
    int first = r->n_ins, splits = 0;
    for (int k = N->min; k < N->max; k++) { /* optional copies: split into a, or to the end */
        if (peft__rx_emit(r, PEFT__RI_SPLIT, 0, 0, n) < 0) return -1;
        splits++;
        if (peft__rx_compile(r, N->a) < 0) return -1;
    }
    for (int i = first; splits && i < r->n_ins; i++)
        if (r->ins[i].op == PEFT__RI_SPLIT && r->ins[i].node == n && r->ins[i].y == 0) {
            r->ins[i].x = i + 1;
            r->ins[i].y = r->n_ins;
        }
    return 0;
}
/* Compiles pat; on failure r->err says why. */
static int peft__rx_build(peft__rx *r, const char *pat) {
    r->p = r->pat = pat;
    r->err = NULL;
    r->n_node = r->n_ins = 0;
    int root = peft__rx_alt(r);
    if (root >= 0 && *r->p) {
        r->err = "unbalanced parenthesis";
        root = -1;
    }
    if (root < 0 || peft__rx_compile(r, root) < 0 || peft__rx_emit(r, PEFT__RI_MATCH, 0, 0, 0) < 0) {
        if (!r->err) r->err = "bad pattern";
        return 0;
    }
    return 1;
}
static void peft__rx_add(const peft__rx *r, int pc, size_t pos, size_t len, int *list, int *n, int *mark,
                         int gen) {
    if (mark[pc] == gen) return;
    mark[pc] = gen;
    const peft__rx_ins *I = &r->ins[pc];
    switch (I->op) {
    case PEFT__RI_JMP:
        peft__rx_add(r, I->x, pos, len, list, n, mark, gen);
        return;
    case PEFT__RI_SPLIT:
        peft__rx_add(r, I->x, pos, len, list, n, mark, gen);
        peft__rx_add(r, I->y, pos, len, list, n, mark, gen);
        return;
    case PEFT__RI_BOL:
        if (pos == 0) peft__rx_add(r, pc + 1, pos, len, list, n, mark, gen);
        return;
    case PEFT__RI_EOL:
        if (pos == len) peft__rx_add(r, pc + 1, pos, len, list, n, mark, gen);
        return;
    default: list[(*n)++] = pc;
    }
}
/* re.fullmatch(pattern, s) is not None, for a compiled pattern. */
static int peft__rx_fullmatch(const peft__rx *r, const char *s) {
    static PEFT__TLS int lists[2][PEFT__RX_MAX], mark[PEFT__RX_MAX];
    size_t len = strlen(s);
    int nc = 0, nn, gen = 1, *cl = lists[0], *nl = lists[1];
    memset(mark, 0, sizeof(int) * (size_t)r->n_ins);
    peft__rx_add(r, 0, 0, len, cl, &nc, mark, gen);
    for (size_t pos = 0; pos < len && nc; pos++) {
        unsigned char c = (unsigned char)s[pos];
        nn = 0;
        gen++;
        for (int i = 0; i < nc; i++) {
            const peft__rx_ins *I = &r->ins[cl[i]];
            if (I->op == PEFT__RI_SET && (r->node[I->node].set[c >> 5] >> (c & 31) & 1))
                peft__rx_add(r, cl[i] + 1, pos + 1, len, nl, &nn, mark, gen);
        }
        int *t = cl;
        cl = nl;
        nl = t;
        nc = nn;
    }
    for (int i = 0; i < nc; i++)
        if (r->ins[cl[i]].op == PEFT__RI_MATCH) return 1;
    return 0;
}

/* Targets are site names ("q_proj", or "q"), "all-linear", or module paths as
   PEFT writes them after expanding all-linear ("model.layers.3.mlp.up_proj").
   Paths name (layer, site) pairs, any subset: when they form a full grid of
   layers x sites they are stored as targets plus a layer mask, otherwise as
   the per-layer site mask lora_site_on. */
static peft_status peft__parse_targets(const char *v, peft_method *m) {
    unsigned targets = 0;
    if (!strcmp(v, "none")) {            /* LLaMA-4: LoRA on MoE sites only (moe_targets) */
        m->lora_targets = 0;
        return PEFT_OK;
    }
    memset(m->lora_site_on, 0, sizeof m->lora_site_on);
    memset(m->lora_site_r, 0, sizeof m->lora_site_r);
    if (strcmp(v, "all-linear") == 0 || strcmp(v, "all") == 0) {
        m->lora_targets = PEFT__ALL_LINEAR;
        return PEFT_OK;
    }
    char buf[8192];
    if (strlen(v) >= sizeof buf) return peft__fail(PEFT_ERR_CONFIG, "lora targets: list too long");
    snprintf(buf, sizeof buf, "%s", v);
    uint8_t on[PEFT_MAX_LAYERS] = { 0 };
    int pairs = 0, with_layer = 0;
    for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", ")) {
        const char *dot = strrchr(tok, '.'), *site = dot ? dot + 1 : tok, *lay = strstr(tok, "layers.");
        int found = -1;
        for (int s = 0; s < PEFT_N_SITES; s++) {
            size_t n = strlen(site);
            if (strcmp(site, peft__site_names[s]) == 0 ||
                (n < 5 && strncmp(site, peft__site_names[s], n) == 0 && peft__site_names[s][n] == '_'))
                found = s;
        }
        if (found < 0)
            return peft__fail(PEFT_ERR_CONFIG,
                              "lora target '%s' is not a LLaMA block linear (q_proj k_proj v_proj o_proj "
                              "gate_proj up_proj down_proj, or all-linear)",
                              tok);
        targets |= 1u << found;
        if (lay) {
            char *end;
            long l = strtol(lay + 7, &end, 10);
            if (end == lay + 7 || l < 0 || l >= PEFT_MAX_LAYERS)
                return peft__fail(PEFT_ERR_CONFIG, "lora target '%s': bad layer index", tok);
            on[l] |= (uint8_t)(1u << found);
            with_layer++;
        }
        pairs++;
    }
    if (!targets) return peft__fail(PEFT_ERR_CONFIG, "lora targets are empty");
    if (with_layer && with_layer != pairs)
        return peft__fail(PEFT_ERR_CONFIG, "lora targets mix site names and module paths; give one kind");
    m->lora_targets = targets;
    if (!with_layer) return PEFT_OK;
    int grid = 1;
    for (int l = 0; l < PEFT_MAX_LAYERS; l++) grid &= !on[l] || on[l] == targets;
    if (grid)
        for (int l = 0; l < PEFT_MAX_LAYERS; l++) m->lora_layers[l] = on[l] != 0;
    else
        memcpy(m->lora_site_on, on, sizeof on);
    return PEFT_OK;
}

PEFTDEF peft_status peft_method_set(peft_method *m, const char *key, const char *v) {
    char *end;
    double d = strtod(v, &end);
    int is_num = *v && *end == 0 && isfinite(d);
    struct { const char *key; int *dst; int min;
    } ints[] = {
        { "lora_r", &m->lora_r, 1 },
        { "adapter_len", &m->adapter_len, 1 },
        { "adapter_layers", &m->adapter_layers, 0 },
        { "fusion_layers", &m->fusion_layers, 0 },
        { "fusion_dim", &m->fusion_dim, 0 },
        { "excitor_len", &m->excitor_len, 1 },
        { "excitor_rank", &m->excitor_rank, 1 },
        { "excitor_layers", &m->excitor_layers, 0 },
        { "lora_rslora", &m->lora_rslora, 0 },
        { "lora_bias", &m->lora_bias, 0 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (strcmp(key, ints[i].key) != 0) continue;
        if (strcmp(v, "true") == 0) d = 1, is_num = 1;
        if (strcmp(v, "false") == 0) d = 0, is_num = 1;
        if (!is_num || d != floor(d) || d < ints[i].min || d > 1e6)
            return peft__fail(PEFT_ERR_CONFIG, "%s must be an integer >= %d (got '%s')", key, ints[i].min, v);
        *ints[i].dst = (int)d;
        return PEFT_OK;
    }
    if (strcmp(key, "lora_alpha") == 0 || strcmp(key, "lora_dropout") == 0) {
        if (!is_num || d < 0 || (key[5] == 'd' && d >= 1))
            return peft__fail(PEFT_ERR_CONFIG, "%s must be a number%s (got '%s')", key,
                              key[5] == 'd' ? " in [0, 1)" : " >= 0", v);
        *(key[5] == 'a' ? &m->lora_alpha : &m->lora_dropout) = (float)d;
        return PEFT_OK;
    }
    if (strcmp(key, "seed") == 0) {
        if (!is_num || d < 0) return peft__fail(PEFT_ERR_CONFIG, "seed must be a non-negative integer");
        m->seed = (uint64_t)d;
        return PEFT_OK;
    }
    if (strcmp(key, "lora_targets") == 0) return peft__parse_targets(v, m);
    if (strcmp(key, "moe_targets") == 0) return peft_method_set_moe(m, v);
    if (strcmp(key, "trainable_tokens") == 0) {
        int n = 0;
        char buf[4096];
        if (strlen(v) >= sizeof buf) return peft__fail(PEFT_ERR_CONFIG, "trainable_tokens: list too long");
        snprintf(buf, sizeof buf, "%s", v);
        for (char *tok = strtok(buf, ", "); tok && strcmp(tok, "none") != 0; tok = strtok(NULL, ", ")) {
            char *e;
            long id = strtol(tok, &e, 10);
            if (e == tok || *e || id < 0 || id > INT32_MAX || n == PEFT_MAX_TRAINABLE_TOKENS)
                return peft__fail(PEFT_ERR_CONFIG,
                                  "trainable_tokens: '%s' is not a token id (at most %d of them)", tok,
                                  PEFT_MAX_TRAINABLE_TOKENS);
            for (int i = 0; i < n; i++)
                if (m->trainable_tokens[i] == id)
                    return peft__fail(PEFT_ERR_CONFIG, "trainable_tokens: token %ld is listed twice", id);
            m->trainable_tokens[n++] = (int)id;
        }
        m->n_trainable_tokens = n;
        return PEFT_OK;
    }
    if (strcmp(key, "modules_to_save") == 0) {
        unsigned mts = 0;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", v);
        for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", ")) {
            if (!strcmp(tok, "lm_head"))
                mts |= PEFT_SAVE_LM_HEAD;
            else if (!strcmp(tok, "embed_tokens"))
                mts |= PEFT_SAVE_EMBED;
            else if (strcmp(tok, "none") != 0)
                return peft__fail(PEFT_ERR_CONFIG, "modules_to_save: '%s' is not lm_head or embed_tokens",
                                  tok);
        }
        m->modules_to_save = mts;
        return PEFT_OK;
    }
    if (strcmp(key, "lora_layers") == 0) return peft__parse_int_list(v, m->lora_layers, key);
    if (strcmp(key, "lora_init") == 0) {
        if (strcmp(v, "gaussian") == 0) m->lora_init_gaussian = 1;
        else if (strcmp(v, "kaiming") == 0 || strcmp(v, "true") == 0) m->lora_init_gaussian = 0;
        else return peft__fail(PEFT_ERR_CONFIG, "lora_init must be kaiming or gaussian (got '%s')", v);
        return PEFT_OK;
    }
    if (strcmp(key, "adapter_gate") == 0) {
        if (strcmp(v, "peft") == 0) m->adapter_peft_gate = 1;
        else if (strcmp(v, "head") == 0) m->adapter_peft_gate = 0;
        else
            return peft__fail(PEFT_ERR_CONFIG, "adapter_gate must be head (tanh gate per head, the paper) or "
                                               "peft (one raw gate per layer)");
        return PEFT_OK;
    }
    /* a registered method's own setting */
    const peft_method_def *def = peft_method_get(m->kind);
    for (int g = 0; def && def->set && g < 3; g++)
        for (const peft_method_key *k = def->keys[g]; k && k->key; k++)
            if (!strcmp(k->key, key)) return def->set(m, key, v);
    return peft__fail(PEFT_ERR_CONFIG, "unknown method setting '%s'", key);
}

/* in/out features of a site for this config */
static void peft__site_dims(const peft_config *c, int s, int64_t *in, int64_t *out) {
    int64_t D = c->dim, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim,
            F = c->hidden_dim;
    static const int is_in_q[PEFT_N_SITES] = { 0, 0, 0, 1, 0, 0, 0 };
    *in = s == PEFT_DOWN ? F : is_in_q[s] ? Q : D;
    *out = s == PEFT_Q ? Q : (s == PEFT_K || s == PEFT_V) ? KV : (s == PEFT_GATE || s == PEFT_UP) ? F : D;
}

/* "the top L layers": L given, or the papers' 30 of 32 scaled to this depth */
static int peft__top_layers(const peft_config *c, int L) {
    if (L <= 0) L = (c->n_layers * 30 + 16) / 32;
    if (L < 1) L = 1;
    return L > c->n_layers ? c->n_layers : L;
}

static int peft__lora_on_layer(const peft_method *m, int l) {
    for (int i = 0; i < PEFT_MAX_LAYERS; i++)
        if (m->lora_layers[i]) return l < PEFT_MAX_LAYERS && m->lora_layers[l];
    return 1;
}

static int peft__lora_custom(const peft_method *m) {
    for (int l = 0; l < PEFT_MAX_LAYERS; l++)
        if (m->lora_site_on[l]) return 1;
    return 0;
}

/* Whether LoRA adapts site s of layer l, and with which rank and alpha. */
static int peft__lora_site(const peft_method *m, int l, int s, int *r, float *alpha) {
    if (l < 0 || l >= PEFT_MAX_LAYERS) return 0;
    if (peft__lora_custom(m) ? !(m->lora_site_on[l] >> s & 1)
                             : !(m->lora_targets >> s & 1) || !peft__lora_on_layer(m, l))
        return 0;
    int own = m->lora_site_r[l][s] != 0;
    *r = own ? m->lora_site_r[l][s] : m->lora_r;
    *alpha = own ? m->lora_site_alpha[l][s] : m->lora_alpha;
    return 1;
}

static int64_t peft__count_full(const peft_config *c, const peft_method *m) {
    (void)m;
    return peft_config_param_count(c);
}
static int64_t peft__llama4_lora_count(const peft_config *c, const peft_method *m);
static int64_t peft__count_lora(const peft_config *c, const peft_method *m) {
    int64_t n = 0, D = c->dim, in, out;
    if (c->llama4) return peft__llama4_lora_count(c, m);
    for (int l = 0; l < c->n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            int r;
            float alpha;
            if (!peft__lora_site(m, l, s, &r, &alpha)) continue;
            peft__site_dims(c, s, &in, &out);
            n += (int64_t)r * (in + out) + (m->lora_bias ? out : 0);
        }
    /* modules_to_save: a full copy each; trainable tokens: their rows */
    n += (int64_t)m->n_trainable_tokens * D;
    if (m->modules_to_save & PEFT_SAVE_EMBED) n += (int64_t)c->vocab_size * D;
    if (m->modules_to_save & PEFT_SAVE_LM_HEAD) n += (int64_t)c->vocab_size * D;
    return n;
}
static int64_t peft__count_v1(const peft_config *c, const peft_method *m) {
    return peft__top_layers(c, m->adapter_layers) *
           ((int64_t)m->adapter_len * c->dim + (m->adapter_peft_gate ? 1 : c->n_heads));
}
static int64_t peft__count_v2(const peft_config *c, const peft_method *m) {
    int64_t n = peft__count_v1(c, m), D = c->dim, in, out;
    for (int s = 0; s < PEFT_N_SITES; s++) {
        peft__site_dims(c, s, &in, &out);
        n += (int64_t)c->n_layers * 2 * out;
    }
    n += (int64_t)c->n_layers * 2 * D + D;                       /* RMSNorm weights */
    if (m->fusion_layers > 0 && m->fusion_dim > 0)
        n += D * m->fusion_dim + (int64_t)m->fusion_layers * c->n_heads;
    return n;
}
static int64_t peft__count_excitor(const peft_config *c, const peft_method *m) {
    int64_t D = c->dim, KVD = (int64_t)c->n_kv_heads * c->head_dim;
    return peft__top_layers(c, m->excitor_layers) *
           ((int64_t)m->excitor_len * D + (int64_t)m->excitor_rank * D + KVD * m->excitor_rank + c->n_heads);
}
PEFTDEF int64_t peft_method_param_count(const peft_config *c, const peft_method *m) {
    const peft_method_def *d = peft_method_get(m->kind);
    return d ? d->param_count(c, m) : 0;
}

/* A new trainable method parameter, appended to m->extra. */
static peft_tensor *peft__extra(peft_model *m, int ndim, const int64_t *shape, const char *fmt, ...)
        PEFT__PRINTF(4, 5);
static peft_tensor *peft__extra(peft_model *m, int ndim, const int64_t *shape, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (m->n_extra == m->cap_extra) {
        int nc = m->cap_extra ? 2 * m->cap_extra : 64;
        peft_tensor **ne = (peft_tensor **)PEFT_REALLOC(m->extra, (size_t)nc * sizeof(peft_tensor *));
        if (!ne) return NULL;
        m->extra = ne;
        m->cap_extra = nc;
    }
    peft_tensor *t = peft_param_new(name, ndim, shape);
    if (!t || peft_param_set_trainable(t, 1) != PEFT_OK) {
        peft_param_free(t);
        return NULL;
    }
    m->extra[m->n_extra++] = t;
    return t;
}
PEFTDEF peft_tensor *peft_method_add_param(peft_model *m, int ndim, const int64_t *shape, const char *name) {
    return peft__extra(m, ndim, shape, "%s", name);
}

static void peft__fill_uniform(peft_tensor *t, peft_rng *r, float bound) {
    for (int64_t j = 0; j < t->n; j++) t->data[j] = (2.0f * peft_rng_uniform(r) - 1.0f) * bound;
}
static void peft__fill_normal(peft_tensor *t, peft_rng *r, float std) {
    for (int64_t j = 0; j < t->n; j++) t->data[j] = std * peft_rng_normal(r);
}
static void peft__fill(peft_tensor *t, float v) {
    for (int64_t j = 0; j < t->n; j++) t->data[j] = v;
}

static const char *peft__site_module(int s) { return s <= PEFT_O ? "self_attn" : "mlp"; }

/* ---- PEFT on MoE sites: LoRA on the router and the routed experts, the router tuned ----
   router   a linear: y = h·Wrᵀ + s·(h·Aᵀ)·Bᵀ, keys ...feed_forward.router.
            lora_A/lora_B.weight [r, D], [E, r], saved as PEFT's target_parameters
            "feed_forward.router.weight" (as a target_module, PEFT 0.21.2 adds its
            delta to the router's output, a tuple in transformers 5.24, and fails)
   experts  PEFT ≥ 0.17's target_parameters (ParamWrapper) on the [E, in, out]
            tensors: lora_A [r·E, out], lora_B [in, r·E] (PEFT swaps in and out
            for tensors stored x·W); expert e's delta is
            ΔW_e = s·B_e·A_e [in, out], B_e[i, j] = lora_B[i, j·E + e],
            A_e = rows e·r .. e·r + r − 1 of lora_A. Keys: the first of
            target_parameters (gate_up_proj, as saved here) under
            ...feed_forward.experts.base_layer.lora_A/B.weight when both are
            targeted, the other under ...feed_forward.experts.lora_A/B.weight.
            The op forms W_e + ΔW_e one expert at a time, as PEFT's
            parametrization does, and takes dA_e = s·B_eᵀ·dW_e,
            dB_e = s·dW_e·A_eᵀ from the expert's weight gradient dW_e.
   router tuned  a trainable copy of the router (PEFT modules_to_save "router":
            key ...feed_forward.router.weight), the base left as it is.      */
PEFTDEF peft_status peft_method_set_moe(peft_method *m, const char *v) {
    unsigned bits = 0;
    char buf[256];
    if (strlen(v) >= sizeof buf) return peft__fail(PEFT_ERR_CONFIG, "moe_targets: list too long");
    snprintf(buf, sizeof buf, "%s", v);
    int full = 0;
    for (char *tok = strtok(buf, ", "); tok; tok = strtok(NULL, ", ")) {
        if (!strcmp(tok, "router")) bits |= PEFT_MOE_ROUTER;
        else if (!strcmp(tok, "experts")) bits |= PEFT_MOE_GATE_UP | PEFT_MOE_DOWN;
        else if (!strcmp(tok, "gate_up_proj") || !strcmp(tok, "experts.gate_up_proj"))
            bits |= PEFT_MOE_GATE_UP;
        else if (!strcmp(tok, "down_proj") || !strcmp(tok, "experts.down_proj")) bits |= PEFT_MOE_DOWN;
        else if (!strcmp(tok, "router-full")) full = 1;
        else if (strcmp(tok, "none"))
            return peft__fail(PEFT_ERR_CONFIG, "moe_targets: '%s' is not router, experts, "
                              "experts.gate_up_proj, experts.down_proj, router-full or none", tok);
    }
    m->moe_lora = bits;
    m->moe_router_full = full;
    return PEFT_OK;
}

/* trainable parameters of a LoRA on a LLaMA-4 model: per-layer widths of the
   feed-forward sites, and the MoE sites */
static int64_t peft__llama4_lora_count(const peft_config *c, const peft_method *m) {
    int64_t n = 0, D = c->dim, E = c->n_experts, F = c->hidden_dim;
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        int64_t W = peft__llama4_ffn_width(c, l);
        int64_t in[PEFT_N_SITES] = { D, D, D, q, D, D, W }, out[PEFT_N_SITES] = { q, kv, kv, D, W, W, D };
        for (int s = 0; s < PEFT_N_SITES; s++) {
            int r;
            float alpha;
            if (peft__lora_site(m, l, s, &r, &alpha))
                n += (int64_t)r * (in[s] + out[s]) + (m->lora_bias ? out[s] : 0);
        }
        if (!peft_layer_is_moe(c, l)) continue;
        int64_t r = m->lora_r;
        if (m->moe_lora & PEFT_MOE_ROUTER) n += r * (D + E);
        if (m->moe_lora & PEFT_MOE_GATE_UP) n += r * E * (2 * F + D);
        if (m->moe_lora & PEFT_MOE_DOWN) n += r * E * (D + F);
        if (m->moe_router_full) n += E * D;
    }
    n += (int64_t)m->n_trainable_tokens * D;
    if (m->modules_to_save & PEFT_SAVE_EMBED) n += (int64_t)c->vocab_size * D;
    if (m->modules_to_save & PEFT_SAVE_LM_HEAD) n += (int64_t)c->vocab_size * D;
    return n;
}

static peft_status peft__llama4_attach(peft_model *m, const peft_method *cfg) {
    const peft_config *c = &m->cfg;
    if (!c->llama4 || !(cfg->moe_lora || cfg->moe_router_full)) return PEFT_OK;
    int r = cfg->lora_r;
    float scale = cfg->lora_rslora ? cfg->lora_alpha / sqrtf((float)r) : cfg->lora_alpha / (float)r;
    int64_t D = c->dim, F = c->hidden_dim, E = c->n_experts;
    const char *pre = "base_model.model.model.layers";
    for (int l = 0; l < c->n_layers; l++) {
        peft_moe_site *M = &m->layers[l].moe;
        if (!M->router) continue;
        if (cfg->moe_lora & PEFT_MOE_ROUTER) {
            int64_t sa[2] = { r, D }, sb[2] = { E, r };
            M->router_A = peft__extra(m, 2, sa, "%s.%d.feed_forward.router.lora_A.weight", pre, l);
            M->router_B = peft__extra(m, 2, sb, "%s.%d.feed_forward.router.lora_B.weight", pre, l);
            if (!M->router_A || !M->router_B)
                return peft__fail(PEFT_ERR_NOMEM, "no memory for LoRA parameters");
            peft__fill_uniform(M->router_A, &m->rng, 1.0f / sqrtf((float)D));
            M->router_scale = scale;
        }
        for (int k = 0; k < 2; k++) {
            if (!(cfg->moe_lora & (k ? PEFT_MOE_DOWN : PEFT_MOE_GATE_UP))) continue;
            /* gate_up [E, D, 2F]: A [r·E, 2F], B [D, r·E]; down [E, F, D]: A [r·E, D], B [F, r·E] */
            int64_t in = k ? F : D, out = k ? D : 2 * F, sa[2] = { r * E, out }, sb[2] = { in, r * E };
            const char *at = !k && (cfg->moe_lora & PEFT_MOE_DOWN) ? "base_layer." : "";
            peft_tensor **A = k ? &M->down_A : &M->gate_up_A, **B = k ? &M->down_B : &M->gate_up_B;
            *A = peft__extra(m, 2, sa, "%s.%d.feed_forward.experts.%slora_A.weight", pre, l, at);
            *B = peft__extra(m, 2, sb, "%s.%d.feed_forward.experts.%slora_B.weight", pre, l, at);
            if (!*A || !*B) return peft__fail(PEFT_ERR_NOMEM, "no memory for LoRA parameters");
            peft__fill_uniform(*A, &m->rng, 1.0f / sqrtf((float)out));
            M->experts_scale = scale;
        }
        if (cfg->moe_router_full) {
            int64_t sr[2] = { E, D };
            M->router_copy = peft__extra(m, 2, sr, "%s.%d.feed_forward.router.weight", pre, l);
            if (!M->router_copy) return peft__fail(PEFT_ERR_NOMEM, "no memory for the router copy");
            memcpy(M->router_copy->data, M->router->data, sizeof(float) * (size_t)M->router->n);
        }
    }
    return PEFT_OK;
}

/* ---- the forward at a linear site: base, then what is attached ---------------- */
static peft_tensor *peft__site_forward(peft_model *m, peft_graph *g, peft_linear_site *s, peft_tensor *x) {
    peft_tensor *y;
    peft_rng *drop = m->training ? (g->rng ? g->rng : &m->rng) : NULL;
    if (s->q4) {                               /* QLoRA: 4-bit base + LoRA term */
        int out = (int)s->w->shape[0], in = (int)s->w->shape[1];
        y = s->lora_A ? peft_qlora_linear(g, x, s->q4, s->lora_A, s->lora_B, s->lora_scale,
                                          m->method.lora_dropout, drop)
                      : peft_q4_linear(g, x, s->q4, out, in);
    } else if (s->qm && s->lora_A)             /* a GGUF base in its ggml blocks + LoRA term */
        y = peft_qmatrix_lora_linear(g, x, s->qm, s->lora_A, s->lora_B, s->lora_scale, m->method.lora_dropout,
                                     drop);
    else if (s->qm)
        y = peft_qmatrix_linear(g, x, s->qm);
    else if (s->lora_A && !m->lora_merged)
        y = peft_lora_linear(g, x, s->w, s->lora_A, s->lora_B, s->lora_scale, m->method.lora_dropout, drop);
    else y = peft_linear(g, x, s->w);
    if (s->b) y = peft_add_bias(g, y, s->b);
    if (s->lora_bias && !m->lora_merged) y = peft_add_bias(g, y, peft_scale(g, s->lora_bias, s->lora_scale));
    if (s->bias) y = peft_bias_scale(g, y, s->bias, s->scale);
    const peft_method_def *def = peft_method_get(m->method.kind);
    if (def && def->site_out && y) {
        /* a registered method's term: which layer and site this is, from the site's address */
        int l;
        for (l = 0; l < m->cfg.n_layers; l++)
            if (s >= m->layers[l].lin && s < m->layers[l].lin + PEFT_N_SITES) break;
        if (l < m->cfg.n_layers) y = def->site_out(m, g, s, l, (int)(s - m->layers[l].lin), y);
    }
    return y;
}

/* ---- GGUF bases: linears kept in their ggml blocks (peft_linear_site.qm) -----
   The frozen weights stay in their blocks and are decoded inside the matrix
   products (KERNELS: ggml block types); every method that leaves W frozen
   trains over them. Full fine-tuning needs float weights and is refused;
   merging refuses too, until peft_model_dequantize has made the base float. */
static const peft_qmatrix *peft__model_qm(const peft_model *m) {
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].qm) return m->layers[l].lin[s].qm;
    return m->embed_qm ? m->embed_qm : m->head_qm;
}
static const char *peft__model_qm_name(const peft_model *m) {
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].qm && m->layers[l].lin[s].w->name) return m->layers[l].lin[s].w->name;
    if (m->embed_qm) return m->embed->name;
    if (m->head_qm) return m->lm_head->name;
    return "the model";
}

/* ---- the attention sites: prompts (V1/V2/fusion) and the logit term (Excitor) -- */
static void peft__attn_extras(peft_model *m, peft_graph *g, peft_layer *L, peft_tensor *h, int B,
                              peft_attn_extras *ex, int prompts, int excitor) {
    peft_attn_site *A = &L->attn;
    memset(ex, 0, sizeof *ex);
    peft_tensor *prompt = NULL;
    if (!prompts) {
    } else if (A->prompt) {
        prompt = A->prompt;
        ex->n_prompts = (int)peft__rows(A->prompt);
        ex->gate = A->gate;
        ex->gate_tanh = !m->method.adapter_peft_gate;
    } else if (A->fusion_gate && m->cond) {
        peft_tensor *c = peft_tensor_2d(g, m->cond_rows, m->fusion_proj->shape[1]);
        if (!c) return;
        memcpy(c->data, m->cond, sizeof(float) * (size_t)c->n);
        prompt = peft_linear(g, c, m->fusion_proj);
        ex->n_prompts = m->cond_batched ? m->cond_rows / B : m->cond_rows;
        ex->gate = A->fusion_gate;
        ex->gate_tanh = 1;
    }
    if (prompt) {
        ex->pk = peft__site_forward(m, g, &L->lin[PEFT_K], prompt);
        ex->pv = peft__site_forward(m, g, &L->lin[PEFT_V], prompt);
    }
    if (A->ex_prompt && excitor) {
        peft_tensor *z = peft_linear(g, h, A->ex_down);               /* Z  = T·W_down  */
        peft_tensor *p = peft_linear(g, A->ex_prompt, A->ex_down);    /* P' = P·W_down  */
        peft_tensor *r = peft_prompt_attend(g, z, p, p);              /* softmax(Z P'ᵀ/√r) P' */
        ex->x = peft_linear(g, r, A->ex_up);                          /* K_extra = … W_up */
        ex->x_gate = A->ex_gate;
    }
}

/* ============================================================================
   LoRA — Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"
       h = W₀x + ΔWx = W₀x + (α/r)·B·A·x,     A ∈ ℝ^{r×in}, B ∈ ℝ^{out×r}
   W₀ stays frozen; A starts kaiming-uniform (bound 1/√in, as PEFT) or
   N(0, 1/r²) ("gaussian"), B starts at zero, so ΔW = 0 at step 0. rsLoRA
   scales by α/√r. Dropout applies to x on the LoRA branch only. The op
   (peft_lora_linear) never forms W₀ + BA; merging does, once, in place.
   ============================================================================ */
/* rows [r0, r0 + n) of embed or lm_head (p) into dst: its floats, or decoded
   from its ggml blocks q (a GGUF base) */
static void peft__table_rows(const peft_tensor *p, const peft_qmatrix *q, int64_t r0, int64_t n, float *dst) {
    int64_t D = p->shape[1];
    if (p->data) {
        memcpy(dst, p->data + r0 * D, sizeof(float) * (size_t)(n * D));
        return;
    }
    for (int64_t r = 0; r < n; r++) peft_backend_current()->qmatrix_decode(q, r0 + r, 0, D, dst + r * D);
}

/* tokens_table = embed with the trainable tokens' rows replaced by the delta's
   (over a GGUF base, the one place the table is decoded whole: the rows
   trained are replaced in a float table, as for a float base) */
static void peft__tokens_refresh(peft_model *m, const peft_method *cfg) {
    int D = m->cfg.dim;
    peft__table_rows(m->embed, m->embed_qm, 0, m->embed->shape[0], m->tokens_table->data);
    for (int i = 0; i < cfg->n_trainable_tokens; i++)
        memcpy(m->tokens_table->data + (size_t)cfg->trainable_tokens[i] * D,
               m->tokens_delta->data + (size_t)i * D, sizeof(float) * (size_t)D);
}

static peft_status peft__attach_lora(peft_model *m, const peft_method *cfg) {
    const peft_config *c = &m->cfg;
    if (cfg->lora_r < 1 || !(cfg->lora_targets || cfg->moe_lora || cfg->moe_router_full))
        return peft__fail(PEFT_ERR_CONFIG, "LoRA needs r >= 1 and at least one target");
    for (int l = m->cfg.n_layers; l < PEFT_MAX_LAYERS; l++)
        /* it would adapt nothing there: never train 0 parameters silently */
        if (cfg->lora_layers[l])
            return peft__fail(PEFT_ERR_CONFIG,
                              "lora_layers names layer %d but the model has %d layers (0 .. %d)", l,
                              m->cfg.n_layers, m->cfg.n_layers - 1);
    for (int l = 0; l < c->n_layers; l++) {
        for (int s = 0; s < PEFT_N_SITES; s++) {
            int r;
            float alpha;
            if (!peft__lora_site(cfg, l, s, &r, &alpha)) continue;
            int64_t in, out;
            peft__site_dims(c, s, &in, &out);
            peft_linear_site *S = &m->layers[l].lin[s];
            const char *mod = peft__site_module(s), *site = peft__site_names[s];
            if (c->llama4) {      /* per-layer widths and names: feed_forward(.shared_expert) */
                in = S->w->shape[1];
                out = S->w->shape[0];
                if (s > PEFT_O) mod = peft__llama4_ffn_module(c, l);
            }
            int64_t sa[2] = { r, in }, sb[2] = { out, r };
            S->lora_A = peft__extra(m, 2, sa, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l, mod,
                                    site);
            S->lora_B = peft__extra(m, 2, sb, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l, mod,
                                    site);
            if (!S->lora_A || !S->lora_B) return peft__fail(PEFT_ERR_NOMEM, "no memory for LoRA parameters");
            if (cfg->lora_bias) { /* PEFT: zero-init, so ΔW x + s·b is 0 at step 0 */
                S->lora_bias = peft__extra(m, 1, &out, "base_model.model.model.layers.%d.%s.%s.lora_B.bias",
                                           l, mod, site);
                if (!S->lora_bias) return peft__fail(PEFT_ERR_NOMEM, "no memory for LoRA parameters");
            }
            if (cfg->lora_init_gaussian)
                peft__fill_normal(S->lora_A, &m->rng, 1.0f / (float)r);
            else peft__fill_uniform(S->lora_A, &m->rng, 1.0f / sqrtf((float)in));
            S->lora_scale = cfg->lora_rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
        }
    }
    /* modules_to_save: trainable copies of the base tensors (PEFT's ModulesToSaveWrapper) */
    int64_t se[2] = { c->vocab_size, c->dim };
    if ((cfg->modules_to_save & PEFT_SAVE_EMBED) && cfg->n_trainable_tokens)
        return peft__fail(PEFT_ERR_CONFIG, "embed_tokens is both in modules_to_save and trainable tokens");
    if (cfg->modules_to_save && c->tie_embeddings)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "modules_to_save: the model ties lm_head to embed_tokens; a trained "
                          "copy of one of them is not supported");
    if (cfg->modules_to_save & PEFT_SAVE_EMBED) {
        if (!(m->save_embed = peft__extra(m, 2, se, "base_model.model.model.embed_tokens.weight")))
            return peft__fail(PEFT_ERR_NOMEM, "no memory for modules_to_save");
        peft__table_rows(m->embed, m->embed_qm, 0, m->embed->shape[0], m->save_embed->data);
    }
    if (cfg->modules_to_save & PEFT_SAVE_LM_HEAD) {
        if (!(m->save_head = peft__extra(m, 2, se, "base_model.model.lm_head.weight")))
            return peft__fail(PEFT_ERR_NOMEM, "no memory for modules_to_save");
        peft__table_rows(m->lm_head, m->head_qm, 0, m->lm_head->shape[0], m->save_head->data);
    }
    /* trainable_token_indices: rows of embed_tokens (and of a tied lm_head) replaced by
       the delta's rows, which start as copies of them (PEFT's TrainableTokensLayer) */
    if (cfg->n_trainable_tokens) {
        int64_t sd[2] = { cfg->n_trainable_tokens, c->dim };
        for (int i = 0; i < cfg->n_trainable_tokens; i++)
            if (cfg->trainable_tokens[i] < 0 || cfg->trainable_tokens[i] >= c->vocab_size)
                return peft__fail(PEFT_ERR_CONFIG,
                                  "trainable_token_indices: token %d is outside the vocabulary (%d)",
                                  cfg->trainable_tokens[i], c->vocab_size);
        m->tokens_delta =
            peft__extra(m, 2, sd, "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta");
        m->tokens_table = peft_param_new("trainable_tokens_table", 2, se);
        if (!m->tokens_delta || !m->tokens_table)
            return peft__fail(PEFT_ERR_NOMEM, "no memory for trainable tokens");
        for (int i = 0; i < cfg->n_trainable_tokens; i++)
            peft__table_rows(m->embed, m->embed_qm, cfg->trainable_tokens[i], 1,
                             m->tokens_delta->data + (size_t)i * c->dim);
        peft__tokens_refresh(m, cfg);
    }
    return peft__llama4_attach(m, cfg);   /* the MoE sites, when asked (moe_targets) */
}

/* W += sign·s·B·A at every LoRA site. */
static peft_status peft__lora_fold(peft_model *m, float sign) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->lora_A) continue;
            int r = (int)S->lora_A->shape[0], in = (int)S->w->shape[1], out = (int)S->w->shape[0];
            float *sb = (float *)PEFT_MALLOC(sizeof(float) * (size_t)out * r);
            if (!sb) return peft__fail(PEFT_ERR_NOMEM, "no memory to merge LoRA");
            for (int64_t j = 0; j < (int64_t)out * r; j++) sb[j] = sign * S->lora_scale * S->lora_B->data[j];
            peft_backend_current()->gemm(0, 0, out, in, r, sb, r, S->lora_A->data, in, 1.0f, S->w->data, in);
            PEFT_FREE(sb);
            if (S->lora_bias) /* PEFT: base bias += s·lora_B.bias */
                for (int j = 0; j < out; j++) S->b->data[j] += sign * S->lora_scale * S->lora_bias->data[j];
        }
    return PEFT_OK;
}

static void peft__swap_floats(float *a, float *b, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        float t = a[j];
        a[j] = b[j];
        b[j] = t;
    }
}
/* Merging modules_to_save and trainable tokens: the saved copy (the delta's
   rows) goes into the base tensor and the base's values into the copy, which
   unmerging swaps back (PEFT: the copy replaces the module; index_copy of the
   rows). */
static void peft__swap_saved(peft_model *m) {
    int D = m->cfg.dim;
    if (m->save_embed) peft__swap_floats(m->embed->data, m->save_embed->data, m->embed->n);
    if (m->save_head) peft__swap_floats(m->lm_head->data, m->save_head->data, m->lm_head->n);
    for (int i = 0; m->tokens_delta && i < m->method.n_trainable_tokens; i++)
        peft__swap_floats(m->embed->data + (size_t)m->method.trainable_tokens[i] * D,
                          m->tokens_delta->data + (size_t)i * D, D);
}
PEFTDEF peft_status peft_lora_merge(peft_model *m) {
    if (peft__model_qm(m))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "merge: the base is stored in ggml %s blocks (GGUF); W + BA "
                          "is not representable in them (peft_model_dequantize first: the merge is then a "
                          "float model)", peft_ggml_type_name(peft__model_qm(m)->type));
    if (m->cfg.q4)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "merge: the base is 4-bit; W + BA is not representable exactly in NF4 "
                          "(merge into the full-precision base instead)");
    if (m->method.kind != PEFT_LORA) return peft__fail(PEFT_ERR_ARG, "merge: no LoRA adapter is attached");
    if (m->method.moe_lora || m->method.moe_router_full)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "merge: LoRA on the router or the experts (moe_targets) is not "
                          "merged by peft.h yet");
    if (m->lora_merged) return PEFT_OK;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].lora_bias && !m->layers[l].lin[s].b)
                return peft__fail(PEFT_ERR_UNSUPPORTED,
                                  "merge: lora_bias=true but layer %d's %s has no bias to merge "
                                  "it into (as PEFT refuses)",
                                  l, peft__site_names[s]);
    peft_status s = peft__lora_fold(m, 1.0f);
    if (s == PEFT_OK) {
        peft__swap_saved(m);
        m->lora_merged = 1;
    }
    return s;
}
PEFTDEF peft_status peft_lora_unmerge(peft_model *m) {
    if (m->method.kind != PEFT_LORA || !m->lora_merged)
        return peft__fail(PEFT_ERR_ARG, "unmerge: no merged LoRA adapter");
    peft_status s = peft__lora_fold(m, -1.0f);
    if (s == PEFT_OK) {
        peft__swap_saved(m);
        m->lora_merged = 0;
    }
    return s;
}

/* ============================================================================
   LLaMA-Adapter V1 — Zhang et al. 2023 (arXiv 2303.16199)
       S_p = softmax(q·K_pᵀ/√d),  S_t = softmax(q·K_tᵀ/√d + mask)
       o   = tanh(g) ⊙ S_p·V_p + S_t·V_t                      (per head)
   K learnable prompts P ∈ ℝ^{K×dim} in each of the top L layers pass through
   the layer's own frozen wk/wv (no norm, no RoPE); g is a zero-initialised
   gate per head, so at step 0 the model is the base model bit for bit and
   the prompts' gradient is exactly zero until g moves. PEFT's
   AdaptionPrompt uses one raw gate per layer instead of tanh per head
   (adapter_gate = "peft"), which this library reproduces for interchange.
   The kernel is peft_attention_ex's prompt branch.
   ============================================================================ */
static peft_status peft__attach_prompts(peft_model *m, const peft_method *cfg) {
    const peft_config *c = &m->cfg;
    if (cfg->adapter_len < 1) return peft__fail(PEFT_ERR_CONFIG, "adapter_len must be >= 1");
    int L = peft__top_layers(c, cfg->adapter_layers);
    if (cfg->adapter_layers > c->n_layers)
        return peft__fail(PEFT_ERR_CONFIG, "adapter_layers %d exceeds the model's %d layers",
                          cfg->adapter_layers, c->n_layers);
    for (int l = c->n_layers - L; l < c->n_layers; l++) {
        int64_t sp[3] = { 1, cfg->adapter_len, c->dim }, sg[1] = { cfg->adapter_peft_gate ? 1 : c->n_heads };
        peft_attn_site *A = &m->layers[l].attn;
        A->prompt = peft__extra(m, 3, sp, "base_model.model.model.layers.%d.self_attn.adaption_prompt", l);
        A->gate = peft__extra(m, 1, sg, "base_model.model.model.layers.%d.self_attn.adaption_gate", l);
        if (!A->prompt || !A->gate) return peft__fail(PEFT_ERR_NOMEM, "no memory for adapter prompts");
        peft__fill_normal(A->prompt, &m->rng, 1.0f);       /* nn.Embedding's N(0, 1), as the official code */
    }
    return PEFT_OK;
}

/* ============================================================================
   LLaMA-Adapter V2 — Gao et al. 2023 (arXiv 2304.15010)
       y = s ⊙ (W x + b)      on every block linear, b = 0, s = 1 at init
   plus V1's gated prompts in the top layers, every RMSNorm weight unfrozen,
   and early fusion: condition vectors c (e.g. image features) pass a
   trainable projection and become the gated prompts of the first F layers
   only — disjoint from the text prompts above them, so the two parameter
   groups do not interfere (the paper's point). Zero gates and b = 0, s = 1
   keep the base model exact at step 0.
   ============================================================================ */
static peft_status peft__attach_v2(peft_model *m, const peft_method *cfg) {
    const peft_config *c = &m->cfg;
    peft_status st = peft__attach_prompts(m, cfg);
    if (st != PEFT_OK) return st;
    int L = peft__top_layers(c, cfg->adapter_layers);
    for (int l = 0; l < c->n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            int64_t in, out;
            peft__site_dims(c, s, &in, &out);
            peft_linear_site *S = &m->layers[l].lin[s];
            const char *mod = peft__site_module(s), *site = peft__site_names[s];
            S->bias = peft__extra(m, 1, &out, "base_model.model.model.layers.%d.%s.%s.adapter_bias", l, mod,
                                  site);
            S->scale = peft__extra(m, 1, &out, "base_model.model.model.layers.%d.%s.%s.adapter_scale", l, mod,
                                   site);
            if (!S->bias || !S->scale) return peft__fail(PEFT_ERR_NOMEM, "no memory for V2 bias/scale");
            peft__fill(S->scale, 1.0f);
        }
    for (int l = 0; l < c->n_layers; l++)
        if (peft_param_set_trainable(m->layers[l].attn_norm, 1) != PEFT_OK ||
            peft_param_set_trainable(m->layers[l].ffn_norm, 1) != PEFT_OK)
            return PEFT_ERR_NOMEM;
    if (peft_param_set_trainable(m->norm, 1) != PEFT_OK) return PEFT_ERR_NOMEM;
    if (cfg->fusion_layers > 0 && cfg->fusion_dim > 0) {
        if (cfg->fusion_layers > c->n_layers - L)
            return peft__fail(PEFT_ERR_CONFIG,
                              "fusion_layers %d overlap the top %d adapter layers of %d: the early-fusion "
                              "and text-prompt layers must be disjoint",
                              cfg->fusion_layers, L, c->n_layers);
        int64_t sp[2] = { c->dim, cfg->fusion_dim }, sg[1] = { c->n_heads };
        m->fusion_proj = peft__extra(m, 2, sp, "base_model.model.fusion_proj.weight");
        if (!m->fusion_proj) return peft__fail(PEFT_ERR_NOMEM, "no memory");
        peft__fill_uniform(m->fusion_proj, &m->rng, 1.0f / sqrtf((float)cfg->fusion_dim));
        for (int l = 0; l < cfg->fusion_layers; l++)
            if (!(m->layers[l].attn.fusion_gate =
                          peft__extra(m, 1, sg, "base_model.model.model.layers.%d.self_attn.fusion_gate", l)))
                return peft__fail(PEFT_ERR_NOMEM, "no memory");
    }
    return PEFT_OK;
}

/* Folds V2's bias and scale into a plain LLaMA with biases:
       s ⊙ (W x + b₀ + b) = (diag(s)·W) x + s ⊙ (b₀ + b)
   (the trained RMSNorm weights already live in the base). Gated prompts are
   extra attention context and cannot be folded: they remain attached, as
   the LLaMA-Adapter V1 adapter they now are. */
PEFTDEF peft_status peft_v2_merge(peft_model *m) {
    if (m->method.kind != PEFT_ADAPTER_V2)
        return peft__fail(PEFT_ERR_ARG, "merge: no LLaMA-Adapter V2 is attached");
    if (m->fusion_proj)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "merge: early-fusion prompts depend on the condition and cannot be merged");
    if (m->cfg.q4)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "merge: the base is 4-bit; merge into the full-precision base");
    if (peft__model_qm(m))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "merge: the base is stored in ggml blocks (GGUF); "
                          "peft_model_dequantize first");
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < PEFT_N_SITES; k++) {
            peft_linear_site *S = &m->layers[l].lin[k];
            if (!S->bias) continue;
            if (!S->b) {
                char name[300];
                /* …proj.weight → …proj.bias */
                snprintf(name, sizeof name, "%.*s.bias", (int)(strlen(S->w->name) - 7), S->w->name);
                if (!(S->b = peft__add_param(m, name, S->w->shape[0], 0)))
                    return peft__fail(PEFT_ERR_NOMEM, "no memory");
            }
            int64_t out = S->w->shape[0], in = S->w->shape[1];
            for (int64_t o = 0; o < out; o++) {
                float sc = S->scale->data[o];
                for (int64_t i = 0; i < in; i++) S->w->data[o * in + i] *= sc;
                S->b->data[o] = sc * (S->b->data[o] + S->bias->data[o]);
            }
            S->bias = S->scale = NULL;
        }
    m->cfg.attn_bias = m->cfg.mlp_bias = 1;
    /* drop the folded tensors from the method's list; freeze the base */
    int n = 0, prompts = 0;
    for (int i = 0; i < m->n_extra; i++) {
        if (strstr(m->extra[i]->name, ".adapter_bias") || strstr(m->extra[i]->name, ".adapter_scale"))
            peft_param_free(m->extra[i]);
        else {
            prompts++;
            m->extra[n++] = m->extra[i];
        }
    }
    m->n_extra = n;
    for (int i = 0; i < m->n_params; i++) peft_param_set_trainable(m->params[i], 0);
    m->method.kind = prompts ? PEFT_ADAPTER_V1 : PEFT_FULL;
    return PEFT_OK;
}

PEFTDEF peft_status peft_model_set_condition(peft_model *m, const float *vecs, int rows, int dim,
                                             int batched) {
    PEFT_FREE(m->cond);
    m->cond = NULL;
    m->cond_rows = 0;
    if (!vecs) return PEFT_OK;
    if (!m->fusion_proj)
        return peft__fail(PEFT_ERR_ARG,
                          "set_condition: attach adapter-v2 with fusion_layers and fusion_dim first");
    if (dim != m->fusion_proj->shape[1] || rows < 1)
        return peft__fail(PEFT_ERR_SHAPE,
                          "set_condition: vectors have width %d, the fusion projection expects %lld", dim,
                          (long long)m->fusion_proj->shape[1]);
    m->cond = (float *)PEFT_MALLOC(sizeof(float) * (size_t)rows * dim);
    if (!m->cond) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    memcpy(m->cond, vecs, sizeof(float) * (size_t)rows * dim);
    m->cond_rows = rows;
    m->cond_batched = batched;
    return PEFT_OK;
}

/* ============================================================================
   LLaMA-Excitor — Zou et al., CVPR 2024 (arXiv 2404.00913)
       S_g = softmax(S + γ ⊙ S_extra),   S_extra = Q·K_extraᵀ/√d,   o = W_o(S_g·V)
   The paper's facts: a bypass on the attention scores only (hidden states
   are never modified directly), an extra key reconstructed from the layer
   input and K learnable prompts through a low-rank (r = 16) bottleneck, a
   zero-initialised ("cold-start") gate, the top 30 of 32 layers, ~7.6M
   trainable parameters for 7B. Its exact K_extra formula is not public in
   code; THIS LIBRARY'S READING, consistent with every fact above and with
   the count 30 × (30·4096 + 2·4096·16) = 7,618,560:
       Z = h·W_downᵀ (T×r),  P' = P·W_downᵀ (K×r),
       K_extra = softmax(Z·P'ᵀ/√r)·P'·W_upᵀ   (T × kv_heads·head_dim),
   h being the normed input of the attention, split per head like the keys,
   causally masked like S, one raw gate γ per head (plus those 30·32 gates,
   7,619,520 for LLaMA-7B). Since S + γ·q·K_extraᵀ = q·(K + γ·K_extra)ᵀ, the
   kernel adds γ·K_extra to the keys inside peft_attention_ex.
   ============================================================================ */
static peft_status peft__attach_excitor(peft_model *m, const peft_method *cfg) {
    const peft_config *c = &m->cfg;
    if (cfg->excitor_len < 1 || cfg->excitor_rank < 1)
        return peft__fail(PEFT_ERR_CONFIG, "excitor_len and excitor_rank must be >= 1");
    int L = peft__top_layers(c, cfg->excitor_layers), r = cfg->excitor_rank;
    if (cfg->excitor_layers > c->n_layers)
        return peft__fail(PEFT_ERR_CONFIG, "excitor_layers %d exceeds the model's %d layers",
                          cfg->excitor_layers, c->n_layers);
    int64_t KVD = (int64_t)c->n_kv_heads * c->head_dim;
    for (int l = c->n_layers - L; l < c->n_layers; l++) {
        int64_t sp[2] = { cfg->excitor_len, c->dim }, sd[2] = { r, c->dim }, su[2] = { KVD, r },
                sg[1] = { c->n_heads };
        peft_attn_site *A = &m->layers[l].attn;
        A->ex_prompt = peft__extra(m, 2, sp, "base_model.model.model.layers.%d.self_attn.excitor_prompt", l);
        A->ex_down =
                peft__extra(m, 2, sd, "base_model.model.model.layers.%d.self_attn.excitor_down.weight", l);
        A->ex_up = peft__extra(m, 2, su, "base_model.model.model.layers.%d.self_attn.excitor_up.weight", l);
        A->ex_gate = peft__extra(m, 1, sg, "base_model.model.model.layers.%d.self_attn.excitor_gate", l);
        if (!A->ex_prompt || !A->ex_down || !A->ex_up || !A->ex_gate)
            return peft__fail(PEFT_ERR_NOMEM, "no memory for Excitor");
        peft__fill_normal(A->ex_prompt, &m->rng, 1.0f);
        peft__fill_uniform(A->ex_down, &m->rng, 1.0f / sqrtf((float)c->dim));
        peft__fill_uniform(A->ex_up, &m->rng, 1.0f / sqrtf((float)r));  /* non-zero: γ alone starts at 0 */
    }
    return PEFT_OK;
}

/* ============================================================================
   QLoRA — Dettmers et al. 2023 (arXiv 2305.14314)
       Y = X·dequant(c₁, c₂, W_NF4)ᵀ + s·X·Aᵀ·Bᵀ
       dequant(c₁, c₂, W) = c(W) · (c₂[c₁] + offset)     (double quantization)
   The frozen base lives in NF4 (4 bits + one 8-bit absmax per 64 + one fp32
   per 64·256 = 4.127 bits per parameter); LoRA trains in fp32 on every
   linear (r 64, alpha 16 by default). The 4-bit product decodes W into the
   GEMM's packed panels, a strip at a time (peft_q4_linear), and the gradient
   flows to X through the same decoding, never to W. Storage and codes: see
   KERNELS above.
   ============================================================================ */
PEFTDEF peft_status peft_model_quantize(peft_model *m, peft_q4_type t, int double_quant) {
    if (m->cfg.llama4)   /* the experts' [E, in, out] tensors have no 4-bit path yet */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "4-bit quantization of LLaMA-4 models is not supported yet");
    if (peft__model_qm(m))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "quantize: the base is already stored in ggml %s blocks (GGUF); "
                          "LoRA trains over them as they are (method lora, not qlora)",
                          peft_ggml_type_name(peft__model_qm(m)->type));
    /* every site quantized first, the fp32 weights still in place; only when
       all have succeeded are they swapped in: a failure changes nothing */
    int n = m->cfg.n_layers * PEFT_N_SITES;
    peft_q4 **q = (peft_q4 **)peft__calloc((size_t)n * sizeof *q);
    if (!q) return peft__fail(PEFT_ERR_NOMEM, "no memory to quantize the model");
    peft_status st = PEFT_OK;
    for (int k = 0; k < n && st == PEFT_OK; k++) {
        peft_linear_site *S = &m->layers[k / PEFT_N_SITES].lin[k % PEFT_N_SITES];
        if (S->q4) continue;
        q[k] = (peft_q4 *)peft__calloc(sizeof(peft_q4));
        st = q[k] ? peft_q4_quantize(q[k], S->w->data, S->w->n, t, double_quant, NULL)
                  : peft__fail(PEFT_ERR_NOMEM, "no memory to quantize the model");
    }
    for (int k = 0; k < n; k++) {
        peft_linear_site *S = &m->layers[k / PEFT_N_SITES].lin[k % PEFT_N_SITES];
        if (!q[k]) continue;
        if (st != PEFT_OK) {
            peft_q4_free(q[k]);
            PEFT_FREE(q[k]);
            continue;
        }
        S->q4 = q[k];
        peft_param_set_trainable(S->w, 0);
        PEFT_FREE(S->w->data);                      /* the fp32 copy is gone for good */
        S->w->data = NULL;
    }
    PEFT_FREE(q);
    if (st != PEFT_OK) return st;
    m->cfg.q4 = 1;
    m->cfg.q4_type = t;
    m->cfg.q4_double = double_quant;
    return PEFT_OK;
}

PEFTDEF double peft_model_linear_bits(const peft_model *m) {
    double bytes = 0, n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            const peft_linear_site *S = &m->layers[l].lin[s];
            if (S->q4) bytes += (double)peft_q4_bytes(S->q4);
            else if (S->qm) bytes += (double)peft_qmatrix_bytes(S->qm);
            else bytes += 4.0 * (double)S->w->n;
            n += (double)S->w->n;
        }
    return n > 0 ? 8.0 * bytes / n : 0.0;
}

PEFTDEF double peft_model_base_bits(const peft_model *m) {
    double bytes = 0, n = 0;
    for (int i = 0; i < m->n_params; i++) {
        const peft_tensor *p = m->params[i];
        const peft_qmatrix *q = p == m->embed ? m->embed_qm : p == m->lm_head ? m->head_qm : NULL;
        const peft_q4 *q4 = NULL;
        for (int l = 0; l < m->cfg.n_layers && !q && !q4; l++)
            for (int s = 0; s < PEFT_N_SITES; s++)
                if (m->layers[l].lin[s].w == p) {
                    q = m->layers[l].lin[s].qm;
                    q4 = m->layers[l].lin[s].q4;
                }
        bytes += q4 ? (double)peft_q4_bytes(q4) : q && !p->data ? (double)peft_qmatrix_bytes(q)
                                                               : 4.0 * (double)p->n;
        n += (double)p->n;
    }
    return n > 0 ? 8.0 * bytes / n : 0.0;
}

/* a table held in ggml blocks into floats: p->data decoded, the blocks freed */
static peft_status peft__dequantize_table(peft_tensor *p, peft_qmatrix **q) {
    if (!*q || p->data) return PEFT_OK;
    float *w = (float *)PEFT_MALLOC(sizeof(float) * (size_t)p->n);
    if (!w) return peft__fail(PEFT_ERR_NOMEM, "no memory to dequantize %s", p->name);
    peft__table_rows(p, *q, 0, p->shape[0], w);
    p->data = w;
    peft_qmatrix_free(*q);
    PEFT_FREE(*q);
    *q = NULL;
    return PEFT_OK;
}

PEFTDEF peft_status peft_model_dequantize(peft_model *m) {
    peft_status st = peft__dequantize_table(m->embed, &m->embed_qm);
    if (m->cfg.tie_embeddings) m->head_qm = m->embed_qm;   /* one table: decoded once, freed once */
    if (st == PEFT_OK) st = peft__dequantize_table(m->lm_head, &m->head_qm);
    if (st != PEFT_OK) return st;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->qm) continue;
            float *w = (float *)PEFT_MALLOC(sizeof(float) * (size_t)S->qm->rows * (size_t)S->qm->cols);
            if (!w) return peft__fail(PEFT_ERR_NOMEM, "no memory to dequantize %s", peft__model_qm_name(m));
            for (int64_t r = 0; r < S->qm->rows; r++)
                peft_backend_current()->qmatrix_decode(S->qm, r, 0, S->qm->cols,
                                                       w + (size_t)r * (size_t)S->qm->cols);
            PEFT_FREE(S->w->data);
            S->w->data = w;
            peft_qmatrix_free(S->qm);
            PEFT_FREE(S->qm);
            S->qm = NULL;
        }
    return PEFT_OK;
}

/* ---- mixed precision: frozen block linears in bf16 (peft_model_set_precision) ---- */
PEFTDEF const char *peft_precision_name(peft_precision p) {
    return p == PEFT_PRECISION_BF16 ? "bf16" : "fp32";
}

PEFTDEF peft_status peft_precision_parse(const char *name, peft_precision *p) {
    if (name && !strcmp(name, "fp32")) {
        *p = PEFT_PRECISION_FP32;
        return PEFT_OK;
    }
    if (name && !strcmp(name, "bf16")) {
        *p = PEFT_PRECISION_BF16;
        return PEFT_OK;
    }
    return peft__fail(PEFT_ERR_ARG, "precision '%s': expected fp32 or bf16", name ? name : "(null)");
}

/* the sites bf16 changes: frozen, float, not 4-bit; or a GGUF base's BF16 blocks */
static int peft__bf16_site(const peft_linear_site *S) {
    if (S->qm) return S->qm->type == PEFT_GGML_BF16;
    return S->w && S->w->data && !S->q4 && !S->w->requires_grad;
}

PEFTDEF peft_status peft_model_set_precision(peft_model *m, peft_precision p) {
    if (p != PEFT_PRECISION_FP32 && p != PEFT_PRECISION_BF16)
        return peft__fail(PEFT_ERR_ARG, "precision %d: expected PEFT_PRECISION_FP32 or _BF16", (int)p);
    int n = m->cfg.n_layers * PEFT_N_SITES;
    if (p == PEFT_PRECISION_FP32) {
        /* decoded copies made first: out of memory, nothing has changed */
        float **w = (float **)peft__calloc((size_t)n * sizeof *w);
        if (!w) return peft__fail(PEFT_ERR_NOMEM, "no memory to make the model fp32");
        for (int i = 0; i < n; i++) {
            peft_linear_site *S = &m->layers[i / PEFT_N_SITES].lin[i % PEFT_N_SITES];
            if (!S->qm || !S->qm->bf16_compute || m->gguf) continue;
            w[i] = (float *)PEFT_MALLOC(sizeof(float) * (size_t)S->qm->rows * (size_t)S->qm->cols);
            if (!w[i]) {
                for (int j = 0; j < i; j++) PEFT_FREE(w[j]);
                PEFT_FREE(w);
                return peft__fail(PEFT_ERR_NOMEM, "no memory to make the model fp32");
            }
            for (int64_t r = 0; r < S->qm->rows; r++) {
                float *row = w[i] + (size_t)r * (size_t)S->qm->cols;
                peft_backend_current()->qmatrix_decode(S->qm, r, 0, S->qm->cols, row);
            }
        }
        peft_qmatrix_free(m->head_bf16);
        PEFT_FREE(m->head_bf16);
        m->head_bf16 = NULL;
        for (int i = 0; i < n; i++) {
            peft_linear_site *S = &m->layers[i / PEFT_N_SITES].lin[i % PEFT_N_SITES];
            if (S->qm) S->qm->bf16_compute = 0;
            if (!w[i]) continue;
            S->w->data = w[i];
            peft_qmatrix_free(S->qm);
            PEFT_FREE(S->qm);
            S->qm = NULL;
        }
        PEFT_FREE(w);
        return PEFT_OK;
    }
    if (m->lora_merged)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "precision bf16: the LoRA is merged into the weights; "
                          "unmerge it first (W + BA would be rounded to bf16)");
    /* q[n]: a bf16 copy of the frozen lm_head (the float one stays: a tied
       head is the embedding, whose rows the lookup reads) */
    peft_qmatrix **q = (peft_qmatrix **)peft__calloc((size_t)(n + 1) * sizeof *q);
    if (!q) return peft__fail(PEFT_ERR_NOMEM, "no memory to store the model in bf16");
    for (int i = 0; i <= n; i++) {
        peft_linear_site *S = i < n ? &m->layers[i / PEFT_N_SITES].lin[i % PEFT_N_SITES] : NULL;
        peft_tensor *W = S ? S->w : m->lm_head;
        if (S && (S->qm || !peft__bf16_site(S))) continue;
        if (!S && (m->head_bf16 || !W->data || W->requires_grad)) continue;
        int64_t rows = W->shape[0], cols = W->shape[1];
        q[i] = (peft_qmatrix *)peft__calloc(sizeof *q[i]);
        uint16_t *d = (uint16_t *)PEFT_MALLOC(sizeof(uint16_t) * (size_t)rows * (size_t)cols);
        if (!q[i] || !d) {
            PEFT_FREE(d);
            for (int j = 0; j <= i; j++) {
                if (q[j]) peft_qmatrix_free(q[j]);
                PEFT_FREE(q[j]);
            }
            PEFT_FREE(q);
            return peft__fail(PEFT_ERR_NOMEM, "no memory to store %s in bf16",
                              W->name ? W->name : "a weight");
        }
        for (int64_t e = 0; e < rows * cols; e++) d[e] = peft_f32_to_bf16(W->data[e]);
        q[i]->type = PEFT_GGML_BF16;
        q[i]->rows = rows;
        q[i]->cols = cols;
        q[i]->row_bytes = 2 * (size_t)cols;
        q[i]->data = (const uint8_t *)d;
        q[i]->owned = d;
        q[i]->bf16_compute = 1;
    }
    if (q[n]) m->head_bf16 = q[n];
    for (int i = 0; i < n; i++) {              /* all made: swapped in */
        peft_linear_site *S = &m->layers[i / PEFT_N_SITES].lin[i % PEFT_N_SITES];
        if (q[i]) {
            PEFT_FREE(S->w->data);
            S->w->data = NULL;
            S->qm = q[i];
        }
        if (S->qm && S->qm->type == PEFT_GGML_BF16) S->qm->bf16_compute = 1;
    }
    PEFT_FREE(q);
    return PEFT_OK;
}

static peft_status peft__attach_qlora(peft_model *m, const peft_method *cfg) {
    /* LoRA first: if quantizing then fails, the rollback of peft_attach
       drops LoRA, while the fp32 weights freed by a quantize could not come back */
    peft_status s = peft__attach_lora(m, cfg);
    if (s == PEFT_OK && !m->cfg.q4) s = peft_model_quantize(m, PEFT_NF4, 1);
    return s;
}

/* Full fine-tuning: every base parameter trains; nothing attaches. */
static peft_status peft__attach_full(peft_model *m, const peft_method *cfg) {
    (void)cfg;
    if (peft__model_qm(m))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "full fine-tuning needs float weights, and %s is stored in "
                          "ggml %s blocks (GGUF): choose lora, adapter-v1, adapter-v2 or excitor",
                          peft__model_qm_name(m), peft_ggml_type_name(peft__model_qm(m)->type));
    peft_model_set_trainable_all(m, 1);
    return PEFT_OK;
}

/* ---- atomic attach -----------------------------------------------------------
   What attaching a method (or loading an adapter) changes in a model: the
   model struct's fields (method, extra count, fusion projection, RNG, config),
   the site pointers of every layer, the trainable flags and gradients of the
   base parameters, new method parameters, new base parameters. Taken before,
   put back on failure, so a failed call leaves the model as it was; generic,
   so the methods' attach functions need no failure paths of their own. */
typedef struct {
    peft_model   head;
    peft_layer  *layers;
    float      **grads;          /* the base parameters' gradients, held aside */
    int         *trainable;
} peft__snapshot;

static peft_status peft__snapshot_take(peft_model *m, peft__snapshot *sn) {
    int L = m->cfg.n_layers, n = m->n_params;
    sn->head = *m;
    sn->layers = (peft_layer *)PEFT_MALLOC((size_t)(L > 0 ? L : 1) * sizeof(peft_layer));
    sn->grads = (float **)PEFT_MALLOC((size_t)(n > 0 ? n : 1) * sizeof(float *));
    sn->trainable = (int *)PEFT_MALLOC((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!sn->layers || !sn->grads || !sn->trainable) {
        PEFT_FREE(sn->layers);
        PEFT_FREE(sn->grads);
        PEFT_FREE(sn->trainable);
        return peft__fail(PEFT_ERR_NOMEM, "no memory to attach a method");
    }
    if (L > 0) memcpy(sn->layers, m->layers, (size_t)L * sizeof(peft_layer));
    for (int i = 0; i < n; i++) {            /* held aside, so that freezing frees nothing */
        sn->grads[i] = m->params[i]->grad;
        sn->trainable[i] = m->params[i]->requires_grad;
        m->params[i]->grad = NULL;
    }
    return PEFT_OK;
}

/* ok: keep the new state (a base parameter trainable before and after keeps
   its gradient as it was); else restore the one taken */
static void peft__snapshot_end(peft_model *m, peft__snapshot *sn, int ok) {
    int n = sn->head.n_params;
    for (int i = 0; i < n; i++) {
        peft_tensor *p = m->params[i];
        if (ok && !(p->requires_grad && sn->grads[i])) {
            PEFT_FREE(sn->grads[i]);
            continue;
        }
        PEFT_FREE(p->grad);
        p->grad = sn->grads[i];
        if (!ok) p->requires_grad = sn->trainable[i];
    }
    if (!ok) {
        for (int i = sn->head.n_extra; i < m->n_extra; i++) peft_param_free(m->extra[i]);
        for (int i = n; i < m->n_params; i++) peft_param_free(m->params[i]);
        if (m->tokens_table != sn->head.tokens_table)
            peft_param_free(m->tokens_table);    /* not a method parameter: freed here */
        peft_tensor **extra = m->extra;          /* may have grown: the new array stays */
        int cap = m->cap_extra;
        *m = sn->head;
        m->extra = extra;
        m->cap_extra = cap;
        if (m->cfg.n_layers > 0) memcpy(m->layers, sn->layers, (size_t)m->cfg.n_layers * sizeof(peft_layer));
    }
    PEFT_FREE(sn->layers);
    PEFT_FREE(sn->grads);
    PEFT_FREE(sn->trainable);
}

static peft_status peft__attach(peft_model *m, const peft_method *cfg);
PEFTDEF peft_status peft_attach(peft_model *m, const peft_method *cfg) {
    peft__snapshot sn;
    if (peft__snapshot_take(m, &sn) != PEFT_OK) return PEFT_ERR_NOMEM;
    peft_status s = peft__attach(m, cfg);
    peft__snapshot_end(m, &sn, s == PEFT_OK);
    return s;
}

static peft_status peft__attach(peft_model *m, const peft_method *cfg) {
    if (m->method.kind != PEFT_FULL || m->n_extra)
        return peft__fail(PEFT_ERR_ARG, "a %s adapter is already attached; load a fresh model for another",
                          peft_method_name(m->method.kind));
    const peft_method_def *def = peft_method_get(cfg->kind);
    if (!def) return peft__fail(PEFT_ERR_ARG, "method kind %d is not registered", (int)cfg->kind);
    if (m->cfg.llama4 && cfg->kind != PEFT_FULL && cfg->kind != PEFT_LORA)
        /* the LLaMA-4 block has no prompt or logit-term attention sites, and no 4-bit experts */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s on a LLaMA-4 model is not supported yet (full or lora)",
                          peft_method_name(cfg->kind));
    if ((cfg->moe_lora || cfg->moe_router_full) && (cfg->kind != PEFT_LORA || !m->cfg.n_experts))
        return peft__fail(PEFT_ERR_CONFIG, "moe_targets need a LoRA method on a LLaMA-4 model with experts");
    peft_rng_seed(&m->rng, cfg->seed);
    peft_model_set_trainable_all(m, 0);
    peft_status s = def->attach(m, cfg);
    m->method = *cfg;                  /* on failure peft_attach restores the model */
    return s;
}

/* ============================================================================
   METHOD REGISTRY: one entry per method
   ============================================================================
   Everything the library, the command line, the demo, the tests and the
   README know about a method, in one place (see peft_method_def). The
   defaults hold the sources' values; where a source states no value the
   field is 0 and the comment says so. */
static void peft__lora_config_json(struct peft__sb *b, const peft_model *m);
static void peft__prompts_config_json(struct peft__sb *b, const peft_model *m);
static peft_status peft__lora_from_json(const peft_json *j, const char *path, const peft_config *c,
                                        peft_method *out);
static peft_status peft__prompts_from_json(const peft_json *j, const char *path, const peft_config *c,
                                           peft_method *out);

static const peft_method_key peft__lora_settings[] = {
    { "lora_r", "R", "LoRA rank (default 8; QLoRA 64)", 1 },
    { "lora_alpha", "A", "LoRA alpha (default 8; QLoRA 16); scale = alpha/r", 1 },
    { "lora_dropout", "P", "dropout on the LoRA branch (default 0; QLoRA 0.1)", 1 },
    { "lora_targets", "LIST", "q_proj,v_proj (default) | any of q k v o gate up down | all-linear", 0 },
    { "lora_init", "I", "kaiming (PEFT's default) | gaussian", 0 },
    { "lora_layers", "LIST", "layers to adapt, e.g. 0-3,7 (default all)", 0 },
    { "lora_rslora", "1", "rank-stabilised scale alpha/sqrt(r)", 1 },
    { "modules_to_save", "M",
      "lm_head,embed_tokens: train full copies, saved with the adapter (PEFT's\n"
      "modules_to_save; merge puts them in the model; GGUF export refuses them)", 0 },
    { "lora_bias", "1", "a trained bias on lora_B (PEFT's lora_bias)", 0 },
    { "trainable_tokens", "L",
      "token ids, e.g. 3,7: their embed_tokens rows trained (PEFT's\n"
      "trainable_token_indices; also lm_head's when tied)", 0 },
    { "moe_targets", "LIST",
      "LLaMA-4: router, experts (gate_up_proj and down_proj), router-full\n"
      "(a trained copy of the router), none (default); with --lora-targets none:\n"
      "the MoE sites alone", 0 },
    { NULL, NULL, NULL, 0 } };
static const peft_method_key peft__adapter_settings[] = {
    { "adapter_len", "K", "LLaMA-Adapter prompts per layer (default 10)", 1 },
    { "adapter_layers", "L", "adapted top layers (default: 30/32 of the model's)", 1 },
    { "adapter_gate", "G", "head (tanh gate per head, the paper) | peft (one raw gate, PEFT's)", 0 },
    { NULL, NULL, NULL, 0 } };
static const peft_method_key peft__fusion_settings[] = {
    { "fusion_layers", "F", "adapter-v2 early-fusion layers (default 0)", 1 },
    { "fusion_dim", "D", "width of the condition vectors for early fusion", 1 },
    { NULL, NULL, NULL, 0 } };
static const peft_method_key peft__excitor_settings[] = {
    { "excitor_len", "K", "Excitor prompts (default 30)", 1 },
    { "excitor_rank", "R", "Excitor bottleneck rank (default 16)", 1 },
    { "excitor_layers", "L", "adapted top layers (default: 30/32 of the model's)", 1 },
    { NULL, NULL, NULL, 0 } };

/* LLaMA-Adapter's training (Zhang et al. 2023, §4.1, and its finetuning
   code's AdamW betas): 5 epochs, 2 of them warm-up, batch 64, lr 9e-3,
   weight decay 0.02, β2 0.95, cosine; 10 prompts in the top 30 of 32 layers. */
#define PEFT__ADAPTER_RECIPE                                                              \
    .adapter_len = 10, .lr = 9e-3f, .weight_decay = 0.02f, .beta2 = 0.95f, .warmup_ratio = 0.4f, \
    .schedule = PEFT_SCHED_COSINE, .epochs = 5, .batch = 64

static const peft_method_def peft__methods[] = {
    [PEFT_FULL] = {
        .name = "full", .title = "full fine-tuning", .section = "TRAINER", .trains = "every parameter",
        .zero_init = "—",
        /* Stanford Alpaca's recipe for LLaMA-7B: 3 epochs, batch 128, lr 2e-5,
           no weight decay, 3% warm-up, cosine */
        .defaults = { .lr = 2e-5f, .warmup_ratio = 0.03f,
                      .schedule = PEFT_SCHED_COSINE, .epochs = 3, .batch = 128 },
        .attach = peft__attach_full, .param_count = peft__count_full },
    [PEFT_LORA] = {
        .name = "lora", .title = "LoRA (Hu et al. 2021)", .section = "LoRA —", .peft_type = "LORA",
        .trains = "A, B at chosen linears", .zero_init = "B = 0",
        /* r 8, alpha 8, q_proj + v_proj: PEFT's LoraConfig defaults. Training:
           the paper's GPT-2 M on E2E (its Table 11): lr 2e-4, weight decay
           0.01, 500 warm-up steps, linear decay, batch 8, 5 epochs */
        .defaults = { .lora_r = 8, .lora_alpha = 8.0f, .lora_targets = 1u << PEFT_Q | 1u << PEFT_V,
                      .lr = 2e-4f, .weight_decay = 0.01f, .warmup_steps = 500,
                      .schedule = PEFT_SCHED_LINEAR, .epochs = 5, .batch = 8 },
        .keys = { peft__lora_settings },
        .attach = peft__attach_lora, .param_count = peft__count_lora,
        .config_write = peft__lora_config_json, .config_read = peft__lora_from_json },
    [PEFT_ADAPTER_V1] = {
        .name = "adapter-v1", .title = "LLaMA-Adapter V1 (2303.16199)", .section = "LLaMA-Adapter V1 —",
        .peft_type = "LLAMA_ADAPTER_V1",
        .trains = "K prompts in the top L layers, tanh gate per head", .zero_init = "gate = 0",
        .defaults = { PEFT__ADAPTER_RECIPE },
        .keys = { peft__adapter_settings },
        .attach = peft__attach_prompts, .param_count = peft__count_v1,
        .config_write = peft__prompts_config_json, .config_read = peft__prompts_from_json },
    [PEFT_ADAPTER_V2] = {
        .name = "adapter-v2", .title = "LLaMA-Adapter V2 (2304.15010)", .section = "LLaMA-Adapter V2 —",
        .peft_type = "LLAMA_ADAPTER_V2",
        .trains = "V1 + bias/scale on every linear, RMSNorms, early-fusion projection",
        .zero_init = "gate = 0, b = 0, s = 1",
        /* the V2 paper restates no language-only recipe: V1's */
        .defaults = { PEFT__ADAPTER_RECIPE },
        .keys = { peft__adapter_settings, peft__fusion_settings },
        .attach = peft__attach_v2, .param_count = peft__count_v2,
        .config_write = peft__prompts_config_json, .config_read = peft__prompts_from_json },
    [PEFT_EXCITOR] = {
        .name = "excitor", .title = "LLaMA-Excitor (2404.00913)", .section = "LLaMA-Excitor —",
        .peft_type = "LLAMA_EXCITOR",
        .trains = "prompts + rank-16 bottleneck feeding a gated logit term", .zero_init = "gate = 0",
        /* 30 prompts, rank 16, top 30 of 32 layers; training: LLaMA-Adapter's
           setting, which the paper compares under (not restated there) */
        .defaults = { .excitor_len = 30, .excitor_rank = 16,
                      .lr = 9e-3f, .weight_decay = 0.02f, .beta2 = 0.95f, .warmup_ratio = 0.4f,
                      .schedule = PEFT_SCHED_COSINE, .epochs = 5, .batch = 64 },
        .keys = { peft__excitor_settings },
        .attach = peft__attach_excitor, .param_count = peft__count_excitor,
        .config_write = peft__prompts_config_json, .config_read = peft__prompts_from_json },
    [PEFT_QLORA] = {
        .name = "qlora", .title = "QLoRA (2305.14314)", .section = "QLoRA —", .peft_type = "LORA",
        .trains = "LoRA (r 64, alpha 16, all linears) over an NF4 + double-quantized base",
        .zero_init = "B = 0",
        /* the paper's 7B/13B recipe (its Appendix B): r 64, alpha 16, dropout
           0.1 on every linear; lr 2e-4 constant, 3% warm-up, no weight decay,
           β2 0.999, max grad norm 0.3, batch 16 */
        .defaults = { .lora_r = 64, .lora_alpha = 16.0f, .lora_dropout = 0.1f,
                      .lora_targets = PEFT__ALL_LINEAR, .lr = 2e-4f, .beta2 = 0.999f,
                      .max_grad_norm = 0.3f, .warmup_ratio = 0.03f, .schedule = PEFT_SCHED_CONSTANT,
                      .batch = 16 },
        .keys = { peft__lora_settings },
        .attach = peft__attach_qlora, .param_count = peft__count_lora,
        .config_write = peft__lora_config_json, .config_read = peft__lora_from_json },
};
/* one entry per built-in kind (as ggml asserts its op count) */
typedef char peft__methods_complete[sizeof peft__methods / sizeof *peft__methods == PEFT_N_METHODS ? 1 : -1];

static const peft_method_def *peft__registered[PEFT_MAX_METHODS];
static int peft__n_registered;

PEFTDEF int peft_method_count(void) { return PEFT_N_METHODS + peft__n_registered; }

PEFTDEF const peft_method_def *peft_method_get(peft_method_kind kind) {
    int k = (int)kind;
    if (k < 0 || k >= peft_method_count()) return NULL;
    return k < PEFT_N_METHODS ? &peft__methods[k] : peft__registered[k - PEFT_N_METHODS];
}

PEFTDEF peft_status peft_method_register(const peft_method_def *def, peft_method_kind *kind) {
    if (!def || !def->name || !def->name[0] || !def->attach || !def->param_count)
        return peft__fail(PEFT_ERR_CONFIG, "peft_method_register: a method needs a name, attach and "
                          "param_count");
    for (int k = 0; k < peft_method_count(); k++)
        if (!strcmp(peft_method_get((peft_method_kind)k)->name, def->name))
            return peft__fail(PEFT_ERR_CONFIG, "peft_method_register: method '%s' exists already", def->name);
    if (peft_method_count() >= PEFT_MAX_METHODS)
        return peft__fail(PEFT_ERR_CONFIG, "peft_method_register: %s: the table holds %d methods "
                          "(PEFT_MAX_METHODS)", def->name, PEFT_MAX_METHODS);
    peft__registered[peft__n_registered] = def;
    *kind = (peft_method_kind)(PEFT_N_METHODS + peft__n_registered);
    peft__n_registered++;
    return PEFT_OK;
}

/* ============================================================================
   OPTIMIZERS: AdamW, clipping, schedules
   ============================================================================
   AdamW in torch's order (torch.optim.adamw._single_tensor_adamw):
     t += 1;  p *= 1 − lr·wd;  m = lerp(m, g, 1 − β1);  v = β2·v + (1 − β2)·g²
     p −= (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)
   Scalars are formed in double as Python does, then applied in fp32.      */

PEFTDEF peft_adamw_opts peft_adamw_defaults(void) {
    peft_adamw_opts o;
    memset(&o, 0, sizeof o);
    o.lr = 1e-3f;
    o.beta1 = 0.9f;
    o.beta2 = 0.999f;
    o.eps = 1e-8f;
    o.weight_decay = 0.01f;
    o.paged_min_elems = 100000;
    o.state8_min_elems = 4096;
    return o;
}

/* ---- the pager: optimizer state in a file-backed mapping --------------------------
   The CPU picture of bnb's unified-memory paging: a "device" budget of
   resident pages, a "host" store (the file) that evicted pages go back to.
   Eviction unmaps a page (madvise DONTNEED on a shared file mapping: the data
   stays in the file, the process's RSS drops); touching it again faults it
   in. Pages are evicted oldest first. */
#if (defined(__unix__) || defined(__APPLE__)) && !defined(PEFT_NO_MMAP)
#include <sys/mman.h>
#include <fcntl.h>
#define PEFT__HAVE_MMAP 1
#if defined(__linux__)
/* madvise proper (posix_madvise's DONTNEED is a no-op in glibc), hidden by
   strict feature macros; the values are Linux's */
extern int madvise(void *addr, size_t len, int advice);
#ifndef MADV_WILLNEED
#define MADV_WILLNEED 3
#endif
#ifndef MADV_DONTNEED
#define MADV_DONTNEED 4
#endif
#define peft__madvise madvise
#else
#define peft__madvise posix_madvise
#define MADV_WILLNEED POSIX_MADV_WILLNEED
#define MADV_DONTNEED POSIX_MADV_DONTNEED
#endif
#endif

struct peft__pager {
    unsigned char *base;
    size_t   bytes, page, budget, n_pages;
    uint8_t *resident;
    size_t  *fifo;                      /* ring of resident page indices   */
    size_t   head, count;
};

static void peft__pager_free(peft__pager *p) {
    if (!p) return;
#ifdef PEFT__HAVE_MMAP
    if (p->base) munmap(p->base, p->bytes);
#endif
    PEFT_FREE(p->resident);
    PEFT_FREE(p->fifo);
    PEFT_FREE(p);
}

static peft__pager *peft__pager_new(size_t bytes, size_t page, size_t budget) {
#ifdef PEFT__HAVE_MMAP
    peft__pager *p = (peft__pager *)peft__calloc(sizeof *p);
    if (!p) return NULL;
    p->page = page;
    p->bytes = (bytes + page - 1) / page * page;
    p->n_pages = p->bytes / page;
    p->budget = budget < page ? page : budget;
    const char *dir = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/peft-optim-XXXXXX", dir && *dir ? dir : "/tmp");
    extern int mkstemp(char *);
    int fd = mkstemp(path);
    if (fd < 0) {
        peft__fail(PEFT_ERR_IO, "%s: cannot create the paged optimizer store: %s", path, strerror(errno));
        PEFT_FREE(p);
        return NULL;
    }
    unlink(path);                                   /* gone when the process ends */
    extern int ftruncate(int, off_t);
    if (ftruncate(fd, (off_t)p->bytes) != 0) {
        peft__fail(PEFT_ERR_IO, "paged optimizer store: cannot size %zu bytes: %s", p->bytes,
                   strerror(errno));
        close(fd);
        PEFT_FREE(p);
        return NULL;
    }
    p->base = (unsigned char *)mmap(NULL, p->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    p->resident = (uint8_t *)peft__calloc(p->n_pages);
    p->fifo = (size_t *)PEFT_MALLOC(sizeof(size_t) * p->n_pages);
    if (p->base == MAP_FAILED || !p->resident || !p->fifo) {
        if (p->base == MAP_FAILED) p->base = NULL;
        peft__pager_free(p);
        peft__fail(PEFT_ERR_NOMEM, "paged optimizer store: mapping %zu bytes failed", bytes);
        return NULL;
    }
    return p;
#else
    (void)bytes;
    (void)page;
    (void)budget;
    peft__fail(PEFT_ERR_UNSUPPORTED, "paged optimizer needs mmap (POSIX)");
    return NULL;
#endif
}

/* Makes [ptr, ptr+len) resident within the budget; evicts oldest pages. */
static void peft__pager_touch(peft__pager *p, const void *ptr, size_t len, peft_pager_stats *st) {
    size_t first = (size_t)((const unsigned char *)ptr - p->base) / p->page;
    size_t last = (size_t)((const unsigned char *)ptr + len - 1 - p->base) / p->page;
    for (size_t pg = first; pg <= last; pg++) {
        if (p->resident[pg]) continue;
        while ((p->count + 1) * p->page > p->budget && p->count > 0) {
            size_t victim = p->fifo[p->head];
            p->head = (p->head + 1) % p->n_pages;
            p->count--;
            p->resident[victim] = 0;
#ifdef PEFT__HAVE_MMAP
            peft__madvise(p->base + victim * p->page, p->page, MADV_DONTNEED);
#endif
            st->pages_evicted++;
            st->bytes_moved += p->page;
        }
        p->fifo[(p->head + p->count) % p->n_pages] = pg;
        p->count++;
        p->resident[pg] = 1;
        st->pages_loaded++;
        st->bytes_moved += p->page;
    }
    st->resident = p->count * p->page;
    if (st->resident > st->peak_resident) st->peak_resident = st->resident;
}

static void peft__pager_prefetch(peft__pager *p, const void *ptr, size_t len) {
#ifdef PEFT__HAVE_MMAP
    uintptr_t a = (uintptr_t)ptr & ~(uintptr_t)(p->page - 1);
    peft__madvise((void *)a, len + ((uintptr_t)ptr - a), MADV_WILLNEED);
#else
    (void)p;
    (void)ptr;
    (void)len;
#endif
}

static int peft__is_paged(const peft_adamw *opt, int i) {
    return opt->pager && opt->m[i] && (unsigned char *)opt->m[i] >= opt->pager->base &&
           (unsigned char *)opt->m[i] < opt->pager->base + opt->pager->bytes;
}

static const float peft__udynamic_map[256] = {
    0x0.0p+0f, 0x1.5cf7540000000p-22f, 0x1.a013300000000p-21f, 0x1.1d36700000000p-19f,
    0x1.2599ec0000000p-18f, 0x1.bc98a20000000p-18f, 0x1.29cbaa0000000p-17f, 0x1.0624dc0000000p-16f,
    0x1.c2e3400000000p-16f, 0x1.3fd0d00000000p-15f, 0x1.9e30000000000p-15f, 0x1.fc8f340000000p-15f,
    0x1.2d77320000000p-14f, 0x1.5ca6c80000000p-14f, 0x1.8bd6620000000p-14f, 0x1.0cb2960000000p-13f,
    0x1.82a9940000000p-13f, 0x1.f8a0920000000p-13f, 0x1.374bc80000000p-12f, 0x1.7247440000000p-12f,
    0x1.ad42c60000000p-12f, 0x1.e83e440000000p-12f, 0x1.119ce20000000p-11f, 0x1.2f1aa00000000p-11f,
    0x1.4c98600000000p-11f, 0x1.6a16200000000p-11f, 0x1.8793de0000000p-11f, 0x1.a511a00000000p-11f,
    0x1.c28f5e0000000p-11f, 0x1.e00d1c0000000p-11f, 0x1.fd8adc0000000p-11f, 0x1.2b020c0000000p-10f,
    0x1.74bc6a0000000p-10f, 0x1.be76c80000000p-10f, 0x1.0418940000000p-9f, 0x1.28f5c20000000p-9f,
    0x1.4dd2f00000000p-9f, 0x1.72b0200000000p-9f, 0x1.978d4e0000000p-9f, 0x1.bc6a800000000p-9f,
    0x1.e147ae0000000p-9f, 0x1.03126e0000000p-8f, 0x1.1581040000000p-8f, 0x1.27ef9e0000000p-8f,
    0x1.3a5e340000000p-8f, 0x1.4ccccc0000000p-8f, 0x1.5f3b640000000p-8f, 0x1.71a9fa0000000p-8f,
    0x1.8418940000000p-8f, 0x1.96872a0000000p-8f, 0x1.a8f5c20000000p-8f, 0x1.bb645c0000000p-8f,
    0x1.cdd2f00000000p-8f, 0x1.e0418a0000000p-8f, 0x1.f2b01e0000000p-8f, 0x1.028f5c0000000p-7f,
    0x1.0bc6a80000000p-7f, 0x1.14fdf20000000p-7f, 0x1.1e35400000000p-7f, 0x1.276c8a0000000p-7f,
    0x1.30a3d60000000p-7f, 0x1.39db240000000p-7f, 0x1.43126e0000000p-7f, 0x1.5eb8540000000p-7f,
    0x1.8cccce0000000p-7f, 0x1.bae1460000000p-7f, 0x1.e8f5c40000000p-7f, 0x1.0b851e0000000p-6f,
    0x1.228f5e0000000p-6f, 0x1.39999a0000000p-6f, 0x1.50a3d60000000p-6f, 0x1.67ae160000000p-6f,
    0x1.7eb8520000000p-6f, 0x1.95c28e0000000p-6f, 0x1.acccce0000000p-6f, 0x1.c3d70e0000000p-6f,
    0x1.dae1460000000p-6f, 0x1.f1eb860000000p-6f, 0x1.047ae00000000p-5f, 0x1.1000000000000p-5f,
    0x1.1b851e0000000p-5f, 0x1.270a3e0000000p-5f, 0x1.328f5e0000000p-5f, 0x1.3e147a0000000p-5f,
    0x1.49999a0000000p-5f, 0x1.551eb80000000p-5f, 0x1.60a3d60000000p-5f, 0x1.6c28f60000000p-5f,
    0x1.77ae140000000p-5f, 0x1.8333340000000p-5f, 0x1.8eb8500000000p-5f, 0x1.9a3d700000000p-5f,
    0x1.a5c28e0000000p-5f, 0x1.b147ae0000000p-5f, 0x1.bcccce0000000p-5f, 0x1.c851ee0000000p-5f,
    0x1.d3d70e0000000p-5f, 0x1.df5c2a0000000p-5f, 0x1.eae1460000000p-5f, 0x1.f666660000000p-5f,
    0x1.00f5c40000000p-4f, 0x1.06b8540000000p-4f, 0x1.0c7ae20000000p-4f, 0x1.123d700000000p-4f,
    0x1.1800000000000p-4f, 0x1.1dc2900000000p-4f, 0x1.2385200000000p-4f, 0x1.2947ae0000000p-4f,
    0x1.2f0a3e0000000p-4f, 0x1.34ccce0000000p-4f, 0x1.3a8f5e0000000p-4f, 0x1.4051ec0000000p-4f,
    0x1.46147c0000000p-4f, 0x1.4bd70a0000000p-4f, 0x1.51999a0000000p-4f, 0x1.575c2a0000000p-4f,
    0x1.5d1eb80000000p-4f, 0x1.62e1480000000p-4f, 0x1.68a3d60000000p-4f, 0x1.6e66660000000p-4f,
    0x1.7428f60000000p-4f, 0x1.79eb860000000p-4f, 0x1.7fae160000000p-4f, 0x1.8570a40000000p-4f,
    0x1.8b33340000000p-4f, 0x1.90f5c40000000p-4f, 0x1.96b8520000000p-4f, 0x1.a800000000000p-4f,
    0x1.c4cccc0000000p-4f, 0x1.e1999a0000000p-4f, 0x1.fe66660000000p-4f, 0x1.0d99980000000p-3f,
    0x1.1c00000000000p-3f, 0x1.2a66680000000p-3f, 0x1.38cccc0000000p-3f, 0x1.4733340000000p-3f,
    0x1.5599980000000p-3f, 0x1.6400000000000p-3f, 0x1.7266680000000p-3f, 0x1.80cccc0000000p-3f,
    0x1.8f33340000000p-3f, 0x1.9d99980000000p-3f, 0x1.ac00000000000p-3f, 0x1.ba66680000000p-3f,
    0x1.c8cccc0000000p-3f, 0x1.d733340000000p-3f, 0x1.e599980000000p-3f, 0x1.f400000000000p-3f,
    0x1.0133320000000p-2f, 0x1.0866660000000p-2f, 0x1.0f999a0000000p-2f, 0x1.16cccc0000000p-2f,
    0x1.1e00000000000p-2f, 0x1.2533340000000p-2f, 0x1.2c66660000000p-2f, 0x1.3399980000000p-2f,
    0x1.3acccc0000000p-2f, 0x1.4200000000000p-2f, 0x1.4933340000000p-2f, 0x1.5066660000000p-2f,
    0x1.5799980000000p-2f, 0x1.5ecccc0000000p-2f, 0x1.6600000000000p-2f, 0x1.6d33340000000p-2f,
    0x1.7466660000000p-2f, 0x1.7b99980000000p-2f, 0x1.82cccc0000000p-2f, 0x1.8a00000000000p-2f,
    0x1.9133340000000p-2f, 0x1.9866660000000p-2f, 0x1.9f99980000000p-2f, 0x1.a6cccc0000000p-2f,
    0x1.ae00000000000p-2f, 0x1.b533340000000p-2f, 0x1.bc66660000000p-2f, 0x1.c399980000000p-2f,
    0x1.cacccc0000000p-2f, 0x1.d200000000000p-2f, 0x1.d933340000000p-2f, 0x1.e066660000000p-2f,
    0x1.e799980000000p-2f, 0x1.eecccc0000000p-2f, 0x1.f600000000000p-2f, 0x1.fd33320000000p-2f,
    0x1.0233340000000p-1f, 0x1.05cccc0000000p-1f, 0x1.0966660000000p-1f, 0x1.0d00000000000p-1f,
    0x1.1099980000000p-1f, 0x1.1433340000000p-1f, 0x1.17cccc0000000p-1f, 0x1.1b66680000000p-1f,
    0x1.1f00000000000p-1f, 0x1.22999a0000000p-1f, 0x1.2633340000000p-1f, 0x1.29cccc0000000p-1f,
    0x1.2d66680000000p-1f, 0x1.3100000000000p-1f, 0x1.34999a0000000p-1f, 0x1.3833340000000p-1f,
    0x1.3bcccc0000000p-1f, 0x1.3f66680000000p-1f, 0x1.4300000000000p-1f, 0x1.46999a0000000p-1f,
    0x1.4a33340000000p-1f, 0x1.4dcccc0000000p-1f, 0x1.5166680000000p-1f, 0x1.5500000000000p-1f,
    0x1.58999a0000000p-1f, 0x1.5c33340000000p-1f, 0x1.5fcccc0000000p-1f, 0x1.6366680000000p-1f,
    0x1.6700000000000p-1f, 0x1.6a999a0000000p-1f, 0x1.6e33340000000p-1f, 0x1.71cccc0000000p-1f,
    0x1.7566680000000p-1f, 0x1.7900000000000p-1f, 0x1.7c999a0000000p-1f, 0x1.8033340000000p-1f,
    0x1.83cccc0000000p-1f, 0x1.8766680000000p-1f, 0x1.8b00000000000p-1f, 0x1.8e99980000000p-1f,
    0x1.9233340000000p-1f, 0x1.95cccc0000000p-1f, 0x1.9966680000000p-1f, 0x1.9d00000000000p-1f,
    0x1.a099980000000p-1f, 0x1.a433340000000p-1f, 0x1.a7cccc0000000p-1f, 0x1.ab66680000000p-1f,
    0x1.af00000000000p-1f, 0x1.b299980000000p-1f, 0x1.b633340000000p-1f, 0x1.b9cccc0000000p-1f,
    0x1.bd66680000000p-1f, 0x1.c100000000000p-1f, 0x1.c499980000000p-1f, 0x1.c833340000000p-1f,
    0x1.cbcccc0000000p-1f, 0x1.cf66680000000p-1f, 0x1.d300000000000p-1f, 0x1.d699980000000p-1f,
    0x1.da33340000000p-1f, 0x1.ddcccc0000000p-1f, 0x1.e166680000000p-1f, 0x1.e500000000000p-1f,
    0x1.e899980000000p-1f, 0x1.ec33340000000p-1f, 0x1.efcccc0000000p-1f, 0x1.f366680000000p-1f,
    0x1.f700000000000p-1f, 0x1.fa99980000000p-1f, 0x1.fe33340000000p-1f, 0x1.0000000000000p+0f,
};

PEFTDEF peft_status peft_adamw_init(peft_adamw *opt, peft_tensor **params, int n, const peft_adamw_opts *o) {
    memset(opt, 0, sizeof *opt);
    opt->o = o ? *o : peft_adamw_defaults();
    if (!opt->o.page_bytes) opt->o.page_bytes = 64 * 1024;
    if (!opt->o.budget_bytes) opt->o.budget_bytes = 64u << 20;
    opt->n = n;
    size_t k = (size_t)(n ? n : 1);
    opt->params = (peft_tensor **)peft__calloc(k * sizeof(peft_tensor *));
    opt->m = (float **)peft__calloc(k * sizeof(float *));
    opt->v = (float **)peft__calloc(k * sizeof(float *));
    opt->qm = (uint8_t **)peft__calloc(k * sizeof(uint8_t *));
    opt->qv = (uint8_t **)peft__calloc(k * sizeof(uint8_t *));
    opt->am = (float **)peft__calloc(k * sizeof(float *));
    opt->av = (float **)peft__calloc(k * sizeof(float *));
    if (!opt->params || !opt->m || !opt->v || !opt->qm || !opt->qv || !opt->am || !opt->av) goto oom;
    size_t page = opt->o.page_bytes, paged_bytes = 0;
    for (int i = 0; i < n; i++) {
        opt->params[i] = params[i];
        if (opt->o.paged && params[i]->n >= opt->o.paged_min_elems)
            paged_bytes += 2 * ((sizeof(float) * (size_t)params[i]->n + page - 1) / page * page);
    }
    if (paged_bytes) {
        opt->pager = peft__pager_new(paged_bytes, page, opt->o.budget_bytes);
        if (!opt->pager) {
            peft_status s = PEFT_ERR_IO;
            peft_adamw_free(opt);
            return s;
        }
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t ne = params[i]->n;
        size_t sz = sizeof(float) * (size_t)ne, span = (sz + page - 1) / page * page;
        if (opt->pager && ne >= opt->o.paged_min_elems) {
            opt->m[i] = (float *)(opt->pager->base + off);
            opt->v[i] = (float *)(opt->pager->base + off + span);
            off += 2 * span;
        } else if (opt->o.state_8bit && ne >= opt->o.state8_min_elems) {
            int64_t nb = (ne + 255) / 256;
            opt->qm[i] = (uint8_t *)PEFT_MALLOC((size_t)ne);
            opt->qv[i] = (uint8_t *)PEFT_MALLOC((size_t)ne);
            opt->am[i] = (float *)peft__calloc(sizeof(float) * (size_t)nb);
            opt->av[i] = (float *)peft__calloc(sizeof(float) * (size_t)nb);
            if (!opt->qm[i] || !opt->qv[i] || !opt->am[i] || !opt->av[i]) goto oom;
            /* zero states: the code nearest 0 in each map, absmax 0 */
            memset(opt->qm[i], 127, (size_t)ne);
            memset(opt->qv[i], 0, (size_t)ne);
        } else {
            opt->m[i] = (float *)peft__calloc(sz);
            opt->v[i] = (float *)peft__calloc(sz);
            if (!opt->m[i] || !opt->v[i]) goto oom;
        }
    }
    opt->stats.state_bytes = peft_adamw_state_bytes(opt);
    return PEFT_OK;
oom:
    peft_adamw_free(opt);
    return peft__fail(PEFT_ERR_NOMEM, "no memory for AdamW state");
}

/* PEFT__CPU_KERNEL_BEGIN: the CPU backend's optimizer and clipping entries */
/* One AdamW update of n elements (torch's order; scalars precomputed). */
typedef peft_adamw_scalars peft__adam_k;

static void peft__adam_update(const peft__adam_k *k, float *w, const float *g, float *m, float *v,
                              int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        w[j] *= k->decay;
        m[j] += k->w1 * (g[j] - m[j]);
        v[j] = k->b2 * v[j] + k->w2 * g[j] * g[j];
        float denom = sqrtf(v[j]) / k->bc2_sqrt + k->eps;
        w[j] += -k->step_size * (m[j] / denom);
    }
}

typedef struct { const peft__adam_k *k; float *w; const float *g; float *m, *v; } peft__adam_args;
static void peft__adam_range(void *vctx, int64_t j0, int64_t j1) {
    const peft__adam_args *a = (const peft__adam_args *)vctx;
    peft__adam_update(a->k, a->w + j0, a->g + j0, a->m + j0, a->v + j0, j1 - j0);
}
static void peft__cpu_adamw(const peft_adamw_scalars *k, float *w, const float *g, float *m, float *v,
                            int64_t n) {
    peft__adam_args aa = { k, w, g, m, v };
    peft__parallel_for(n, 32768, peft__adam_range, &aa);
}
/* 8-bit states: dequantize a block of 256, update, requantize */
static void peft__cpu_adamw_8bit(const peft_adamw_scalars *k, float *w, const float *g, uint8_t *qm,
                                 uint8_t *qv, float *am, float *av, int64_t n) {
    float mb[256], vb[256];
    for (int64_t b0 = 0; b0 < n; b0 += 256) {
        int64_t len = n - b0 < 256 ? n - b0 : 256, blk = b0 / 256;
        peft_dequantize_blockwise8(qm + b0, len, 256, peft__dynamic_map, am + blk, mb);
        peft_dequantize_blockwise8(qv + b0, len, 256, peft__udynamic_map, av + blk, vb);
        peft__adam_update(k, w + b0, g + b0, mb, vb, len);
        peft_quantize_blockwise8(mb, len, 256, peft__dynamic_map, qm + b0, am + blk);
        peft_quantize_blockwise8(vb, len, 256, peft__udynamic_map, qv + b0, av + blk);
    }
}
/* Σ x² in double, continuing acc in element order (the result does not
   depend on how the parameters are split into tensors) */
static double peft__cpu_sum_squares(const float *x, int64_t n, double acc) {
    for (int64_t j = 0; j < n; j++) acc += (double)x[j] * x[j];
    return acc;
}
static void peft__cpu_scale_by(float *x, int64_t n, double coef) {
    for (int64_t j = 0; j < n; j++) x[j] = (float)(x[j] * coef);
}
/* PEFT__CPU_KERNEL_END */

PEFTDEF void peft_adamw_step(peft_adamw *opt, float lr) {
    const peft_backend *be = peft_backend_current();
    opt->t++;
    double b1 = opt->o.beta1, b2 = opt->o.beta2;
    peft__adam_k k;
    k.decay = (float)(1.0 - (double)lr * opt->o.weight_decay);
    k.w1 = (float)(1.0 - b1);
    k.b2 = opt->o.beta2;
    k.w2 = (float)(1.0 - b2);
    k.step_size = (float)((double)lr / (1.0 - pow(b1, (double)opt->t)));
    k.bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)opt->t));
    k.eps = opt->o.eps;
    for (int i = 0; i < opt->n; i++) {
        peft_tensor *p = opt->params[i];
        if (!p->grad) continue;
        if (opt->qm[i]) {                       /* 8-bit: dequantize a block, update, requantize */
            be->adamw_8bit(&k, p->data, p->grad, opt->qm[i], opt->qv[i], opt->am[i], opt->av[i], p->n);
            continue;
        }
        if (!peft__is_paged(opt, i)) {
            be->adamw(&k, p->data, p->grad, opt->m[i], opt->v[i], p->n);
            continue;
        }
        /* paged: prefetch the next paged tensor, then walk this one a page at a time */
        for (int j = i + 1; j < opt->n; j++)
            if (peft__is_paged(opt, j)) {
                peft__pager_prefetch(opt->pager, opt->m[j], 2 * sizeof(float) * (size_t)opt->params[j]->n);
                break;
            }
        int64_t chunk = (int64_t)(opt->pager->page / sizeof(float));
        for (int64_t j0 = 0; j0 < p->n; j0 += chunk) {
            int64_t len = p->n - j0 < chunk ? p->n - j0 : chunk;
            peft__pager_touch(opt->pager, opt->m[i] + j0, sizeof(float) * (size_t)len, &opt->stats);
            peft__pager_touch(opt->pager, opt->v[i] + j0, sizeof(float) * (size_t)len, &opt->stats);
            be->adamw(&k, p->data + j0, p->grad + j0, opt->m[i] + j0, opt->v[i] + j0, len);
        }
    }
}

PEFTDEF const float *peft_dynamic_map_unsigned(void) { return peft__udynamic_map; }

PEFTDEF size_t peft_adamw_state_bytes(const peft_adamw *opt) {
    size_t b = 0;
    for (int i = 0; i < opt->n; i++) {
        size_t ne = (size_t)opt->params[i]->n;
        if (opt->qm && opt->qm[i]) b += 2 * ne + 2 * sizeof(float) * ((ne + 255) / 256);
        else b += 2 * sizeof(float) * ne;
    }
    return b;
}

PEFTDEF void peft_adamw_free(peft_adamw *opt) {
    for (int i = 0; i < opt->n; i++) {
        int paged = opt->m && peft__is_paged(opt, i);
        if (opt->m && !paged) PEFT_FREE(opt->m[i]);
        if (opt->v && !paged) PEFT_FREE(opt->v[i]);
        if (opt->qm) PEFT_FREE(opt->qm[i]);
        if (opt->qv) PEFT_FREE(opt->qv[i]);
        if (opt->am) PEFT_FREE(opt->am[i]);
        if (opt->av) PEFT_FREE(opt->av[i]);
    }
    peft__pager_free(opt->pager);
    PEFT_FREE(opt->m);
    PEFT_FREE(opt->v);
    PEFT_FREE(opt->qm);
    PEFT_FREE(opt->qv);
    PEFT_FREE(opt->am);
    PEFT_FREE(opt->av);
    PEFT_FREE(opt->params);
    memset(opt, 0, sizeof *opt);
}

PEFTDEF void peft_zero_grad(peft_tensor **params, int n) {
    const peft_backend *be = peft_backend_current();
    for (int i = 0; i < n; i++)
        if (params[i]->grad) be->zero(params[i]->grad, params[i]->n);
}

/* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied
   only when below 1. */
PEFTDEF double peft_clip_grad_norm(peft_tensor **params, int n, double max_norm) {
    const peft_backend *be = peft_backend_current();
    double ss = 0.0;
    for (int i = 0; i < n; i++) {
        const float *g = params[i]->grad;
        if (g) ss = be->sum_squares(g, params[i]->n, ss);
    }
    double norm = sqrt(ss);
    if (max_norm > 0 && isfinite(norm)) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0)
            for (int i = 0; i < n; i++) {
                float *g = params[i]->grad;
                if (g) be->scale(g, params[i]->n, coef);
            }
    }
    return norm;
}

/* Warm-up is linear from 0 (as transformers' schedulers); then constant,
   half-cosine or linear decay down to min_lr at total_steps. */
PEFTDEF float peft_schedule_lr(const peft_schedule *s, int step) {
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->base_lr * (float)step / (float)s->warmup_steps;
    if (s->kind == PEFT_SCHED_CONSTANT || s->total_steps <= s->warmup_steps) return s->base_lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    if (progress > 1.0) progress = 1.0;
    double f = s->kind == PEFT_SCHED_COSINE ? 0.5 * (1.0 + cos(3.14159265358979323846 * progress))
                                            : 1.0 - progress;
    return (float)(s->min_lr + (s->base_lr - s->min_lr) * f);
}

/* ============================================================================
   TRAINER: one loop for every method
   ============================================================================ */

PEFTDEF peft_trainer_opts peft_trainer_defaults(void) {
    peft_trainer_opts o;
    memset(&o, 0, sizeof o);
    o.lr = 1e-3f;
    o.min_lr = 0.0f;
    o.beta1 = 0.9f;
    o.beta2 = 0.999f;
    o.eps = 1e-8f;
    o.weight_decay = 0.0f;
    o.max_grad_norm = 1.0f;
    o.grad_accum = 1;
    o.warmup_steps = 0;
    o.total_steps = 0;                 /* unknown: the cosine holds the peak until it is set */
    o.schedule = PEFT_SCHED_COSINE;
    return o;
}

PEFTDEF peft_trainer *peft_trainer_new(peft_model *m, const peft_trainer_opts *o) {
    peft_trainer *tr = (peft_trainer *)peft__calloc(sizeof *tr);
    if (!tr) {
        peft__fail(PEFT_ERR_NOMEM, "no memory for the trainer");
        return NULL;
    }
    tr->model = m;
    tr->o = o ? *o : peft_trainer_defaults();
    if (tr->o.grad_accum < 1) tr->o.grad_accum = 1;
    tr->graph = peft_graph_new();
    peft_tensor **tp;
    int n = peft_model_trainable(m, &tp);
    peft_adamw_opts ao = peft_adamw_defaults();
    ao.lr = tr->o.lr;
    ao.beta1 = tr->o.beta1;
    ao.beta2 = tr->o.beta2;
    ao.eps = tr->o.eps;
    ao.weight_decay = tr->o.weight_decay;
    ao.paged = tr->o.paged_optim;
    ao.budget_bytes = tr->o.optim_budget_bytes;
    ao.state_8bit = tr->o.optim_8bit;
    if (!tr->graph || !tp || peft_adamw_init(&tr->opt, tp, n, &ao) != PEFT_OK) {
        PEFT_FREE(tp);
        peft_trainer_free(tr);
        peft__fail(PEFT_ERR_NOMEM, "no memory for the trainer");
        return NULL;
    }
    PEFT_FREE(tp);
    tr->sched.kind = tr->o.schedule;
    tr->sched.base_lr = tr->o.lr;
    tr->sched.min_lr = tr->o.min_lr;
    tr->sched.warmup_steps = tr->o.warmup_steps;
    tr->sched.total_steps = tr->o.total_steps;
    if (tr->o.precision != PEFT_PRECISION_FP32 && peft_model_set_precision(m, tr->o.precision) != PEFT_OK) {
        peft_trainer_free(tr);
        return NULL;
    }
    return tr;
}

/* ---- data-parallel steps ------------------------------------------------------------
   With n threads and a batch of B sequences (B a multiple of n), a step that
   trains a small set of tensors (LoRA, the adapters: n copies of their
   gradients take at most 1/16 of the model, or 16 MB) runs as n shards of
   B/n sequences: each shard's forward and backward whole on one thread, on
   a tape of its own, into stand-ins of the trainable tensors (their data, a
   gradient of their own), and the shards'
   gradients are then added in shard order. The threads meet once per step
   instead of at each of the step's ~1,400 parallel loops: on a busy machine
   a thread the OS puts aside delays only its own shard (and the others'
   threads give it their cores when they finish), and on a free one a step
   has no barrier to wait at. The mean loss is the shards' losses weighted
   by their share of the target tokens, dropout draws the same masks as one
   tape would (the keys from one copy of the model's rng, rows numbered
   across the batch), so a step computes what the one-tape step computes, up
   to the order of float additions. Results depend on the thread count only
   (as the pool's chunks do), not on timing. Steps outside these conditions
   (full fine-tuning, checkpointing, LLaMA-4, trainable token rows,
   modules_to_save, another backend) run on one tape; peft_set_data_parallel(0)
   turns it off. */
#define PEFT__SHARD_SHARE 16            /* the shards' gradients: at most 1/16 of the model's elements, */
#define PEFT__SHARD_SMALL (4 << 20)     /* or at most 16 MB                                             */
typedef struct {
    peft_trainer *tr;
    const int    *tokens, *targets;
    int           B, T, n;
    peft_rng      rng[PEFT_MAX_THREADS];       /* each shard's copy of the dropout stream */
    double        weight[PEFT_MAX_THREADS];    /* its share of the target tokens          */
    float         loss[PEFT_MAX_THREADS];
    peft_status   st[PEFT_MAX_THREADS];
    char          why[PEFT_MAX_THREADS][256];
} peft__shard_job;
typedef struct peft__shards {
    int           n;                    /* shards made (threads when made)    */
    peft_graph   *g[PEFT_MAX_THREADS];
    peft_tensor  *shadow[PEFT_MAX_THREADS];      /* [n trainable] stand-ins per shard */
    peft_tensor **shadow_ptr[PEFT_MAX_THREADS];  /* pointers to them, for the tape    */
    float        *grad[PEFT_MAX_THREADS];        /* their gradients, one block        */
    peft__shard_job job;                         /* the step's work: no allocation per step */
} peft__shards;
static int peft__data_parallel = 1;
PEFTDEF void peft_set_data_parallel(int on) { peft__data_parallel = on != 0; }

static void peft__shards_free(peft__shards *sh) {
    if (!sh) return;
    for (int s = 0; s < sh->n; s++) {
        peft_graph_free(sh->g[s]);
        PEFT_FREE(sh->shadow[s]);
        PEFT_FREE(sh->shadow_ptr[s]);
        PEFT_FREE(sh->grad[s]);
    }
    PEFT_FREE(sh);
}

/* shards for this step: 1 (one tape) unless every condition above holds */
static int peft__shard_count(const peft_trainer *tr, int B) {
    const peft_model *m = tr->model;
    int n = peft__nthreads;
    if (!peft__data_parallel || n < 2 || B < n || B % n || tr->graph->be != peft_backend_cpu()) return 1;
    if (m->checkpointing || m->cfg.llama4 || m->cfg.n_experts || m->tokens_delta || m->save_embed ||
        m->save_head || m->lora_merged || (m->cond && m->cond_batched))   /* rows of one batch */
        return 1;
    int64_t train = 0, all = 0;
    for (int i = 0; i < tr->opt.n; i++) train += tr->opt.params[i]->n;
    if (m->method.kind == PEFT_FULL) return 1;      /* nothing attached: every base weight trains */
    for (int i = 0; i < m->n_params; i++) all += m->params[i]->n;
    /* the stand-ins' gradients: n copies of the trainable tensors' */
    if (train == 0 || (train * n > all / PEFT__SHARD_SHARE && train * n > PEFT__SHARD_SMALL)) return 1;
    return n;
}

/* makes (once per thread count) the shards' tapes and stand-ins */
static peft_status peft__shards_make(peft_trainer *tr, int n) {
    if (tr->shards && tr->shards->n == n) return PEFT_OK;
    peft__shards *sh = (peft__shards *)peft__calloc(sizeof *sh);
    if (!sh) return peft__fail(PEFT_ERR_NOMEM, "no memory for the step's shards");
    int64_t total = 0;
    for (int i = 0; i < tr->opt.n; i++) total += tr->opt.params[i]->n;
    for (sh->n = 0; sh->n < n; sh->n++) {
        int s = sh->n;
        sh->g[s] = peft_graph_new();
        sh->shadow[s] = (peft_tensor *)peft__calloc((size_t)tr->opt.n * sizeof(peft_tensor));
        sh->shadow_ptr[s] = (peft_tensor **)peft__calloc((size_t)tr->opt.n * sizeof(peft_tensor *));
        sh->grad[s] = (float *)peft__calloc((size_t)total * sizeof(float));
        if (!sh->g[s] || !sh->shadow[s] || !sh->shadow_ptr[s] || !sh->grad[s]) {
            sh->n++;
            peft__shards_free(sh);
            return peft__fail(PEFT_ERR_NOMEM, "no memory for the step's %d shards", n);
        }
        for (int i = 0; i < tr->opt.n; i++) sh->shadow_ptr[s][i] = &sh->shadow[s][i];
        peft_graph *g = sh->g[s];
        g->be = tr->graph->be;             /* the backend the trainer was made with (the CPU's) */
        g->shadow_of = tr->opt.params;
        g->shadow = sh->shadow_ptr[s];
        g->n_shadow = tr->opt.n;
    }
    peft__shards_free(tr->shards);
    tr->shards = sh;
    return PEFT_OK;
}


/* PEFT__CPU_KERNEL_BEGIN: the CPU backend's shards on the thread pool (steps on another
   backend run on one tape: peft__shard_count) */
/* the forward and backward of shard s, on the thread that took it */
static void peft__shard_run(void *ctx, int64_t s0, int64_t s1) {
    peft__shard_job *j = (peft__shard_job *)ctx;
    for (int64_t s = s0; s < s1; s++) {
        peft__shards *sh = j->tr->shards;
        peft_graph *g = sh->g[s];
        int per = j->B / j->n;
        size_t first = (size_t)s * (size_t)per * (size_t)j->T;
        float *gp = sh->grad[s];
        for (int i = 0; i < j->tr->opt.n; i++) {      /* the tensor as it is now, a zeroed gradient */
            const peft_tensor *p = j->tr->opt.params[i];
            peft_tensor *t = &sh->shadow[s][i];
            *t = *p;
            t->grad = gp;
            t->grad_fresh = 0;
            memset(gp, 0, (size_t)p->n * sizeof(float));
            gp += p->n;
        }
        peft_graph_reset(g);
        g->rng = &j->rng[s];
        g->row_base = (int64_t)first;
        peft__errstatus = PEFT_OK;
        peft_tensor *L = peft_model_loss(j->tr->model, g, j->tokens + first, j->targets + first, per, j->T);
        peft_status st = L ? PEFT_OK : peft__errstatus;
        if (!L && st == PEFT_OK) st = peft__fail(PEFT_ERR_ARG, "training step: the forward failed");
        if (L) {
            j->loss[s] = L->data[0];
            float seed = (float)(j->weight[s] / (double)j->tr->o.grad_accum);
            if (isfinite(j->loss[s]) && j->weight[s] > 0.0) st = peft_backward_seed(g, L, &seed);
        }
        j->st[s] = st;
        if (st != PEFT_OK) {                          /* the message of this thread's failure */
            const char *e = peft_last_error();
            size_t k = strlen(e) < sizeof j->why[s] - 1 ? strlen(e) : sizeof j->why[s] - 1;
            memcpy(j->why[s], e, k);
            j->why[s][k] = 0;
        }
    }
}

/* A step's forward and backward as n shards (see above): the mean loss in
   *lv; the trainable tensors' gradients get the sum of the shards'. On
   failure nothing is added (the status and the shard's message are set). */
static peft_status peft__shard_step(peft_trainer *tr, const int *tokens, const int *targets, int B, int T,
                                    int n, float *lv) {
    peft_model *m = tr->model;
    peft_status st = peft__shards_make(tr, n);
    if (st == PEFT_OK) st = peft__rope_ensure(m, T);    /* the shards only read the table */
    if (st != PEFT_OK) return st;
    peft__shard_job *j = &tr->shards->job;
    memset(j, 0, sizeof *j);
    j->tr = tr;
    j->tokens = tokens;
    j->targets = targets;
    j->B = B;
    j->T = T;
    j->n = n;
    int64_t counted = 0, per = (int64_t)(B / n) * T, nv[PEFT_MAX_THREADS];
    for (int s = 0; s < n; s++) {
        nv[s] = 0;
        for (int64_t r = 0; r < per; r++) nv[s] += targets[s * per + r] != -100;
        counted += nv[s];
        j->rng[s] = m->rng;
    }
    for (int s = 0; s < n; s++) j->weight[s] = counted ? (double)nv[s] / (double)counted : 0.0;
    peft__parallel_for(n, 1, peft__shard_run, j);
    double sum = 0.0;
    for (int s = 0; s < n && st == PEFT_OK; s++) {
        if (j->st[s] != PEFT_OK) st = peft__fail(j->st[s], "%s", j->why[s]);
        else if (j->weight[s] > 0.0) sum += j->weight[s] * (double)j->loss[s];
    }
    *lv = (float)sum;
    if (st == PEFT_OK) m->rng = j->rng[0];          /* every shard drew the same keys */
    if (st == PEFT_OK && isfinite(*lv)) {
        peft__shards *sh = tr->shards;
        for (int s = 0; s < n; s++) {
            const float *gs = sh->grad[s];
            for (int i = 0; i < tr->opt.n; i++) {
                peft_tensor *p = tr->opt.params[i];
                for (int64_t e = 0; e < p->n; e++) p->grad[e] += gs[e];
                gs += p->n;
            }
        }
    }
    return st;
}
/* PEFT__CPU_KERNEL_END */

PEFTDEF peft_status peft_trainer_step(peft_trainer *tr, const int *tokens, const int *targets,
                                      int B, int T, float *loss) {
    int shards = B >= 1 && T >= 1 ? peft__shard_count(tr, B) : 1;
#if !defined(PEFT_NO_THREADS) && !defined(PEFT_NO_SOLO)
    peft__solo_step(shards > 1);      /* a busy machine: steps on every thread or on one, timed */
#endif
    peft_graph *g = tr->graph;
    peft_graph_reset(g);
    peft_rng rng0 = tr->model->rng;   /* a failed step leaves the dropout stream where it was */
    float lv = 0.0f;
    peft_status s = PEFT_OK;
    tr->model->training = 1;
    peft__errstatus = PEFT_OK;
    peft_tensor *L = NULL;
    if (shards > 1) s = peft__shard_step(tr, tokens, targets, B, T, shards, &lv);
    else L = peft_model_loss(tr->model, g, tokens, targets, B, T);
    tr->model->training = 0;
    if (shards > 1 && s != PEFT_OK) {
        tr->model->rng = rng0;
        return s;                     /* nothing was added to the gradients */
    }
    if (shards == 1 && !L) {
        tr->model->rng = rng0;        /* the dropout stream as it was */
        if (peft__errstatus != PEFT_OK)
            return peft__errstatus;   /* the failing op's own status and message (out of memory: NOMEM) */
        return peft__fail(PEFT_ERR_ARG, "training step: the forward failed");
    }
    if (L) lv = L->data[0];
    if (loss) *loss = lv;
    if (!isfinite(lv)) {
        peft_zero_grad(tr->opt.params, tr->opt.n);
        tr->micro = 0;
        return peft__fail(PEFT_ERR_NUMERIC,
                          "loss is %s at step %d; the parameters were not updated "
                          "(lower the learning rate or check the data)",
                          isnan(lv) ? "NaN" : "infinite", tr->step);
    }
    if (L) {
        peft_tensor *Ls = tr->o.grad_accum > 1 ? peft_scale(g, L, 1.0f / (float)tr->o.grad_accum) : L;
        s = peft_backward(g, Ls);
    }
    if (s != PEFT_OK) {
        /* part of this micro-batch's gradient may be in: with none before
           it (micro 0) clearing restores them exactly; after earlier
           micro-batches of the step they cannot be told apart, so the step
           starts over (said in the message) */
        tr->model->rng = rng0;
        peft_zero_grad(tr->opt.params, tr->opt.n);
        if (tr->micro > 0) {
            char why[sizeof peft__errbuf];
            memcpy(why, peft__errbuf, sizeof why);
            peft__fail(s, "%s (the %d micro-batches accumulated for step %d were dropped: "
                       "the step starts over)", why, tr->micro, tr->step);
        }
        tr->micro = 0;
        tr->accum_loss = 0;
        return s;
    }
    tr->accum_loss += lv;
    if (++tr->micro < tr->o.grad_accum) return PEFT_OK;
    tr->micro = 0;
    tr->accum_loss = 0;
    tr->last_grad_norm = peft_clip_grad_norm(tr->opt.params, tr->opt.n, tr->o.max_grad_norm);
    if (!isfinite(tr->last_grad_norm)) {
        peft_zero_grad(tr->opt.params, tr->opt.n);
        return peft__fail(PEFT_ERR_NUMERIC, "gradient norm is not finite at step %d; update skipped",
                          tr->step);
    }
    tr->last_lr = peft_schedule_lr(&tr->sched, tr->step);
    peft_adamw_step(&tr->opt, tr->last_lr);
    peft_zero_grad(tr->opt.params, tr->opt.n);
    tr->step++;
    return PEFT_OK;
}

PEFTDEF int peft_trainer_shards(const peft_trainer *tr, int B) {
    return B >= 1 ? peft__shard_count(tr, B) : 1;
}

PEFTDEF size_t peft_trainer_arena_bytes(const peft_trainer *tr) {
    size_t n = peft_graph_arena_bytes(tr->graph);
    for (int s = 0; tr->shards && s < tr->shards->n; s++) n += peft_graph_arena_bytes(tr->shards->g[s]);
    return n;
}

PEFTDEF void peft_trainer_free(peft_trainer *tr) {
    if (!tr) return;
    peft_adamw_free(&tr->opt);
    peft_graph_free(tr->graph);
    peft__shards_free(tr->shards);
    PEFT_FREE(tr);
}

/* ---- checkpoints ------------------------------------------------------------------- */
static char *peft__ckpt_name(const char *kind, const char *param) {
    size_t n = strlen(kind) + strlen(param) + 2;
    char *s = (char *)PEFT_MALLOC(n);
    if (s) snprintf(s, n, "%s/%s", kind, param);
    return s;
}

PEFTDEF peft_status peft_checkpoint_save(const peft_trainer *tr, const peft_data_pos *pos, const char *path) {
    const peft_adamw *o = &tr->opt;
    int per = 7, n_items = 0;
    peft_st_write_item *it =
            (peft_st_write_item *)peft__calloc(sizeof(peft_st_write_item) * (size_t)(o->n * per + 1));
    char **names = (char **)peft__calloc(sizeof(char *) * (size_t)(o->n * per + 1));
    peft_status s =
            it && names ? PEFT_OK : peft__fail(PEFT_ERR_NOMEM, "no memory for the checkpoint %s", path);
    for (int i = 0; i < o->n && s == PEFT_OK; i++) {
        const peft_tensor *t = o->params[i];
        int64_t nb = (t->n + 255) / 256;
        struct { const char *kind; peft_dtype dt; const void *data; int64_t n; } parts[7] = {
            { "param", PEFT_DT_F32, t->data, t->n },
            { "exp_avg", PEFT_DT_F32, o->m ? o->m[i] : NULL, t->n },
            { "exp_avg_sq", PEFT_DT_F32, o->v ? o->v[i] : NULL, t->n },
            { "exp_avg_q8", PEFT_DT_U8, o->qm ? o->qm[i] : NULL, t->n },
            { "exp_avg_sq_q8", PEFT_DT_U8, o->qv ? o->qv[i] : NULL, t->n },
            { "exp_avg_absmax", PEFT_DT_F32, o->am ? o->am[i] : NULL, nb },
            { "exp_avg_sq_absmax", PEFT_DT_F32, o->av ? o->av[i] : NULL, nb } };
        for (int k = 0; k < 7; k++) {
            if (!parts[k].data) continue;
            if (!(names[n_items] = peft__ckpt_name(parts[k].kind, t->name))) {
                s = peft__fail(PEFT_ERR_NOMEM, "no memory");
                break;
            }
            it[n_items].name = names[n_items];
            it[n_items].dtype = parts[k].dt;
            it[n_items].ndim = 1;
            it[n_items].shape[0] = parts[k].n;
            it[n_items].data = parts[k].data;
            n_items++;
        }
    }
    char vals[8][64];
    const peft_rng *r = &tr->model->rng;
    uint32_t spare;
    memcpy(&spare, &r->spare, 4);
    snprintf(vals[0], 64, "%d", tr->step);
    snprintf(vals[1], 64, "%lld", (long long)o->t);
    snprintf(vals[2], 64, "%016llx%016llx", (unsigned long long)r->s[0], (unsigned long long)r->s[1]);
    snprintf(vals[3], 64, "%d:%08x", r->has_spare, (unsigned)spare);
    snprintf(vals[4], 64, "%lld", (long long)(pos ? pos->epoch : 0));
    snprintf(vals[5], 64, "%lld", (long long)(pos ? pos->cursor : 0));
    snprintf(vals[6], 64, "%lld", (long long)(pos ? pos->tokens : 0));
    snprintf(vals[7], 64, "%d", tr->opt.n);
    const char *meta[] = { "format",    "peft.h checkpoint 1",
                           "step",      vals[0],
                           "adam_t",    vals[1],
                           "rng",       vals[2],
                           "rng_spare", vals[3],
                           "epoch",     vals[4],
                           "cursor",    vals[5],
                           "tokens",    vals[6],
                           "n_params",  vals[7] };
    if (s == PEFT_OK && tr->micro != 0)
        s = peft__fail(PEFT_ERR_ARG, "%s: checkpoint in the middle of gradient accumulation", path);
    if (s == PEFT_OK) s = peft_st_write(path, it, n_items, meta, 9);
    if (names) for (int i = 0; i < n_items; i++) PEFT_FREE(names[i]);
    PEFT_FREE(names);
    PEFT_FREE(it);
    return s;
}

static const char *peft__st_meta(const peft_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++) if (!strcmp(st->meta_keys[i], key)) return st->meta_vals[i];
    return NULL;
}

/* copies one named part into dst (n elements of dtype dt), checking it */
static peft_status peft__ckpt_part(const peft_safetensors *st, const char *kind, const char *param,
                                   peft_dtype dt, void *dst, int64_t n) {
    char *name = peft__ckpt_name(kind, param);
    if (!name) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    const peft_st_entry *e = peft_st_find(st, name);
    peft_status s = PEFT_OK;
    if (!e)
        s = peft__fail(PEFT_ERR_FORMAT, "%s: no tensor %s (checkpoint of another method or model?)", st->path,
                       name);
    else if (e->dtype != dt || e->nbytes != (size_t)n * peft_dtype_size(dt))
        s = peft__fail(PEFT_ERR_SHAPE, "%s: %s has %lld bytes of %s, expected %lld values of %s", st->path,
                       name, (long long)e->nbytes, peft_dtype_name(e->dtype), (long long)n,
                       peft_dtype_name(dt));
    else memcpy(dst, st->data + e->offset, (size_t)n * peft_dtype_size(dt));
    PEFT_FREE(name);
    return s;
}

/* a metadata integer, whole and within [lo, hi]; absent counts as 0 when optional */
static int peft__meta_int(const char *v, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    if (!v || !*v) return 0;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (*end || errno || x < lo || x > hi) return 0;
    *out = (int64_t)x;
    return 1;
}

PEFTDEF peft_status peft_checkpoint_load(peft_trainer *tr, peft_data_pos *pos, const char *path) {
    peft_safetensors st;
    peft_status s = peft_st_open(&st, path);
    if (s != PEFT_OK) return s;
    peft_adamw *o = &tr->opt;
    const char *fmt = peft__st_meta(&st, "format"), *step = peft__st_meta(&st, "step"),
               *at = peft__st_meta(&st, "adam_t");
    const char *rng = peft__st_meta(&st, "rng"), *spare = peft__st_meta(&st, "rng_spare"),
               *np = peft__st_meta(&st, "n_params");
    if (!fmt || strcmp(fmt, "peft.h checkpoint 1") || !step || !at || !rng || !spare || !np ||
        strlen(rng) != 32)
        s = peft__fail(PEFT_ERR_FORMAT, "%s: not a peft.h checkpoint (metadata missing)", path);
    int64_t v_np = -1;
    if (s == PEFT_OK && (!peft__meta_int(np, 0, INT32_MAX, &v_np) || v_np != o->n))
        s = peft__fail(PEFT_ERR_SHAPE, "%s: holds %s trainable tensors, this run has %d", path, np, o->n);
    /* every counter range-checked before use: a hostile checkpoint must not index outside the run */
    int64_t v_step = 0, v_t = 0, v_epoch = 0, v_cursor = 0, v_tokens = 0;
    const char *m_e = peft__st_meta(&st, "epoch"), *m_c = peft__st_meta(&st, "cursor"),
               *m_k = peft__st_meta(&st, "tokens");
    if (s == PEFT_OK &&
        (!peft__meta_int(step, 0, INT32_MAX - 1, &v_step) || !peft__meta_int(at, 0, INT64_MAX / 2, &v_t) ||
         (m_e && !peft__meta_int(m_e, 0, INT32_MAX, &v_epoch)) ||
         (m_c && !peft__meta_int(m_c, 0, INT32_MAX, &v_cursor)) ||
         (m_k && !peft__meta_int(m_k, 0, INT64_MAX / 2, &v_tokens))))
        s = peft__fail(PEFT_ERR_FORMAT,
                       "%s: a counter is out of range (step '%s', adam_t '%s', epoch '%s', cursor '%s', "
                       "tokens '%s'): not a checkpoint this library wrote",
                       path, step, at, m_e ? m_e : "-", m_c ? m_c : "-", m_k ? m_k : "-");
    for (int i = 0; i < o->n && s == PEFT_OK; i++) {
        peft_tensor *t = o->params[i];
        int64_t nb = (t->n + 255) / 256;
        s = peft__ckpt_part(&st, "param", t->name, PEFT_DT_F32, t->data, t->n);
        if (s == PEFT_OK && o->m && o->m[i])
            s = peft__ckpt_part(&st, "exp_avg", t->name, PEFT_DT_F32, o->m[i], t->n);
        if (s == PEFT_OK && o->v && o->v[i])
            s = peft__ckpt_part(&st, "exp_avg_sq", t->name, PEFT_DT_F32, o->v[i], t->n);
        if (s == PEFT_OK && o->qm && o->qm[i])
            s = peft__ckpt_part(&st, "exp_avg_q8", t->name, PEFT_DT_U8, o->qm[i], t->n);
        if (s == PEFT_OK && o->qv && o->qv[i])
            s = peft__ckpt_part(&st, "exp_avg_sq_q8", t->name, PEFT_DT_U8, o->qv[i], t->n);
        if (s == PEFT_OK && o->am && o->am[i])
            s = peft__ckpt_part(&st, "exp_avg_absmax", t->name, PEFT_DT_F32, o->am[i], nb);
        if (s == PEFT_OK && o->av && o->av[i])
            s = peft__ckpt_part(&st, "exp_avg_sq_absmax", t->name, PEFT_DT_F32, o->av[i], nb);
    }
    if (s == PEFT_OK) {
        peft_rng *r = &tr->model->rng;
        unsigned long long a = 0, b = 0;
        unsigned has = 0, bits = 0;
        char hi[17], lo[17];
        memcpy(hi, rng, 16);
        hi[16] = 0;
        memcpy(lo, rng + 16, 16);
        lo[16] = 0;
        a = strtoull(hi, NULL, 16);
        b = strtoull(lo, NULL, 16);
        if (sscanf(spare, "%u:%x", &has, &bits) != 2)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: bad rng_spare", path);
        r->s[0] = a;
        r->s[1] = b;
        r->has_spare = (int)has;
        memcpy(&r->spare, &bits, 4);
        tr->step = (int)v_step;
        o->t = v_t;
        tr->micro = 0;
        tr->accum_loss = 0;
        if (pos) {
            pos->epoch = v_epoch;
            pos->cursor = v_cursor;
            pos->tokens = v_tokens;
        }
    }
    peft_st_close(&st);
    return s;
}

/* ============================================================================
   BACKENDS: the table every op goes through, the CPU one, the registry
   ============================================================================
   The CPU backend is the kernels above, unchanged: each entry points at the
   forward or backward beside its op in OPS (peft__cpu_*), the GEMM, the
   decoders and the optimizer's update. Model and method code reach them
   only through a table (tools/check_backend.sh checks it). */

static void *peft__cpu_alloc(size_t bytes) { return PEFT_MALLOC(bytes); }
static void  peft__cpu_free(void *p) { PEFT_FREE(p); }
static void  peft__cpu_copy(float *dst, const float *src, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static const peft_backend peft__cpu_backend = {
    .name = "cpu",
    .place = PEFT_PLACE_HOST,
    .op = {
        [PEFT_OP_EMBEDDING]            = { peft__cpu_embedding, peft__cpu_embedding_bw },
        [PEFT_OP_REPLACE_ROWS]         = { peft__cpu_replace_rows, peft__cpu_replace_rows_bw },
        [PEFT_OP_LINEAR]               = { peft__cpu_linear, peft__cpu_linear_bw },
        [PEFT_OP_RMSNORM]              = { peft__cpu_rmsnorm, peft__cpu_rmsnorm_bw },
        [PEFT_OP_ROPE]                 = { peft__cpu_rope, peft__cpu_rope_bw },
        [PEFT_OP_ATTENTION]            = { peft__cpu_attention, peft__cpu_attention_bw },
        [PEFT_OP_ATTENTION_CACHED]     = { peft__cpu_attention_cached, NULL },
        [PEFT_OP_Q4_LINEAR]            = { peft__cpu_q4_linear, peft__cpu_q4_linear_bw },
        [PEFT_OP_QMATRIX_LINEAR]       = { peft__cpu_q4_linear, peft__cpu_q4_linear_bw },
        [PEFT_OP_LORA_LINEAR]          = { peft__cpu_lora_linear, peft__cpu_lora_bw },
        [PEFT_OP_ADD_BIAS]             = { peft__cpu_add_bias, peft__cpu_add_bias_bw },
        [PEFT_OP_BIAS_SCALE]           = { peft__cpu_bias_scale, peft__cpu_bias_scale_bw },
        [PEFT_OP_PROMPT_ATTEND]        = { peft__cpu_prompt_attend, peft__cpu_prompt_attend_bw },
        [PEFT_OP_SWIGLU]               = { peft__cpu_swiglu, peft__cpu_swiglu_bw },
        [PEFT_OP_ADD]                  = { peft__cpu_add, peft__cpu_add_bw },
        [PEFT_OP_SCALE]                = { peft__cpu_scale, peft__cpu_scale_bw },
        [PEFT_OP_CROSS_ENTROPY]        = { peft__cpu_cross_entropy, peft__cpu_xent_bw },
        [PEFT_OP_LINEAR_CROSS_ENTROPY] = { peft__cpu_linear_cross_entropy, peft__cpu_lce_bw },
        [PEFT_OP_QMATRIX_EMBEDDING]    = { peft__cpu_qmatrix_embedding, NULL },
        [PEFT_OP_L2NORM]               = { peft__cpu_l2norm, peft__cpu_l2norm_bw },
        [PEFT_OP_ROW_SCALE]            = { peft__cpu_row_scale, peft__cpu_row_scale_bw },
        [PEFT_OP_ATTENTION_CHUNKED]    = { peft__cpu_chunk_attn, peft__cpu_chunk_attn_bw },
        [PEFT_OP_MOE_ROUTE]            = { peft__cpu_moe_route, peft__cpu_moe_route_bw },
        [PEFT_OP_MOE_EXPERTS]          = { peft__cpu_moe_experts, peft__cpu_moe_experts_bw },
    },
    .alloc = peft__cpu_alloc,
    .free = peft__cpu_free,
    .zero = peft__zero_floats,
    .copy = peft__cpu_copy,
    .gemm = peft_gemm,
    .q4_decode = peft_q4_dequantize,
    .qmatrix_decode = peft_qmatrix_decode,
    .adamw = peft__cpu_adamw,
    .adamw_8bit = peft__cpu_adamw_8bit,
    .sum_squares = peft__cpu_sum_squares,
    .scale = peft__cpu_scale_by,
};

static const char *const peft__op_names[PEFT_OP_COUNT] = {
    "embedding", "replace_rows", "linear", "rmsnorm", "rope", "attention", "attention_cached", "q4_linear",
    "qmatrix_linear", "lora_linear", "add_bias", "bias_scale", "prompt_attend", "swiglu", "add", "scale",
    "cross_entropy", "linear_cross_entropy", "qmatrix_embedding", "l2norm", "row_scale", "attention_chunked",
    "moe_route", "moe_experts"
};
PEFTDEF const char *peft_op_name(int kind) {
    return kind >= 0 && kind < PEFT_OP_COUNT ? peft__op_names[kind] : "?";
}

/* the registry: written by register and use, which the caller serialises
   as peft_set_threads (see THREADS) */
static const peft_backend *peft__backends[PEFT_MAX_BACKENDS] = { &peft__cpu_backend };
static int peft__n_backends = 1;
static const peft_backend *peft__backend_in_use = &peft__cpu_backend;

PEFTDEF const peft_backend *peft_backend_cpu(void) { return &peft__cpu_backend; }
PEFTDEF int peft_backend_count(void) { return peft__n_backends; }
PEFTDEF const peft_backend *peft_backend_get(int i) {
    return i >= 0 && i < peft__n_backends ? peft__backends[i] : NULL;
}
PEFTDEF const peft_backend *peft_backend_current(void) { return peft__backend_in_use; }
PEFTDEF const peft_backend *peft_graph_backend(const peft_graph *g) { return g->be; }

PEFTDEF const peft_backend *peft_backend_use(const peft_backend *b) {
    const peft_backend *old = peft__backend_in_use;
    peft__backend_in_use = b ? b : &peft__cpu_backend;
    return old;
}

PEFTDEF peft_status peft_backend_register(const peft_backend *b) {
    if (!b || !b->name) return peft__fail(PEFT_ERR_ARG, "backend: no table or no name");
    for (int k = 0; k < PEFT_OP_COUNT; k++)
        if (!b->op[k].forward ||
            (!b->op[k].backward && k != PEFT_OP_ATTENTION_CACHED && k != PEFT_OP_QMATRIX_EMBEDDING))
            return peft__fail(PEFT_ERR_ARG, "backend %s: no %s for op %s", b->name,
                              b->op[k].forward ? "backward" : "forward", peft__op_names[k]);
    const char *missing = !b->alloc ? "alloc" : !b->free ? "free" : !b->zero ? "zero"
                        : !b->copy ? "copy" : !b->gemm ? "gemm"
                        : !b->q4_decode ? "q4_decode" : !b->qmatrix_decode ? "qmatrix_decode"
                        : !b->adamw ? "adamw" : !b->adamw_8bit ? "adamw_8bit"
                        : !b->sum_squares ? "sum_squares" : !b->scale ? "scale" : NULL;
    if (missing) return peft__fail(PEFT_ERR_ARG, "backend %s: no %s entry", b->name, missing);
    for (int i = 0; i < peft__n_backends; i++)
        if (peft__backends[i] == b || strcmp(peft__backends[i]->name, b->name) == 0)
            return peft__fail(PEFT_ERR_ARG, "backend %s: already registered", b->name);
    if (peft__n_backends == PEFT_MAX_BACKENDS)
        return peft__fail(PEFT_ERR_ARG, "backend %s: %d backends registered already (PEFT_MAX_BACKENDS)",
                          b->name, PEFT_MAX_BACKENDS);
    peft__backends[peft__n_backends++] = b;
    return PEFT_OK;
}

PEFTDEF void *peft_graph_scratch(peft_graph *g, size_t bytes) {
    void *p = peft__arena_alloc(g, bytes);
    if (!p) {
        g->failed = 1;
        peft__fail(PEFT_ERR_NOMEM, "out of memory in the activation arena");
    }
    return p;
}

PEFTDEF peft_status peft_graph_fail(peft_graph *g, peft_status s, const char *msg) {
    if (g) g->failed = 1;
    return peft__fail(s, "%s", msg ? msg : "backend failure");
}

/* ============================================================================
   FILES: numbers, whole-file I/O, JSON, safetensors, model folders
   ============================================================================ */

PEFTDEF float peft_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {                                   /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

PEFTDEF uint16_t peft_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, e = (x >> 23) & 0xFF, man = x & 0x7FFFFF;
    if (e == 0xFF) return (uint16_t)(sign | 0x7C00 | (man ? 0x200 : 0));
    int exp = (int)e - 127 + 15;
    if (exp >= 31) return (uint16_t)(sign | 0x7C00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;   /* may carry into exp: correct */
    return (uint16_t)h;
}

PEFTDEF float peft_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

PEFTDEF uint16_t peft_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((x >> 16) | 0x40);  /* quiet NaN */
    x += 0x7FFF + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static const struct { const char *name; size_t size;
} peft__dtypes[PEFT_DT_COUNT] = {
    { "F32", 4 }, { "F16", 2 }, { "BF16", 2 }, { "I32", 4 },
    { "I64", 8 }, { "U8", 1 },  { "I8", 1 },   { "F64", 8 },
};
PEFTDEF size_t peft_dtype_size(peft_dtype d) { return d < PEFT_DT_COUNT ? peft__dtypes[d].size : 0; }
PEFTDEF const char *peft_dtype_name(peft_dtype d) { return d < PEFT_DT_COUNT ? peft__dtypes[d].name : "?"; }

PEFTDEF peft_status peft_read_file(const char *path, unsigned char **data, size_t *n) {
    *data = NULL;
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return peft__fail(PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
#if !defined(_WIN32)
    struct stat sb;               /* a folder opens on Linux and "holds" 2^63-1 bytes */
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return peft__fail(PEFT_ERR_IO, "%s: is a directory, not a file", path);
    }
#endif
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return peft__fail(PEFT_ERR_IO, "%s: cannot seek", path);
    }
    long sz = ftell(f);
    if (sz < 0) {
        fclose(f);
        return peft__fail(PEFT_ERR_IO, "%s: cannot tell size (is it a folder?)", path);
    }
    rewind(f);
    unsigned char *buf = (unsigned char *)PEFT_MALLOC((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return peft__fail(PEFT_ERR_NOMEM, "%s: no memory for %ld bytes", path, sz);
    }
    size_t got = fread(buf, 1, (size_t)sz, f);
    int err = ferror(f);
    fclose(f);
    if (got != (size_t)sz || err) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_IO, "%s: read failed", path);
    }
    buf[sz] = 0;
    *data = buf;
    *n = (size_t)sz;
    return PEFT_OK;
}

/* Writes to "path.tmp", flushes it to disk, then renames over path, so a
   crash or a full disk never leaves a half-written file in place. */
PEFTDEF peft_status peft_write_file_atomic(const char *path, const void *data, size_t n) {
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return peft__fail(PEFT_ERR_ARG, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return peft__fail(PEFT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t put = n ? fwrite(data, 1, n, f) : 0;
    int ok = put == n && fflush(f) == 0;
#if !defined(_WIN32)
    if (ok) ok = fsync(fileno(f)) == 0;
#endif
    int err = errno;
    if (fclose(f) != 0) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(tmp);
        return peft__fail(PEFT_ERR_IO, "%s: write failed (%s); the previous file is untouched", path,
                          strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        remove(tmp);
        return peft__fail(PEFT_ERR_IO, "%s: rename from %s failed: %s", path, tmp, strerror(err));
    }
    return PEFT_OK;
}

/* A whole file for reading: mapped read-only where the platform can (its
   pages join the resident set only as they are read, and leave it again
   with peft__map_release), else read into memory (*mapped = 0). */
static peft_status peft__map_file(const char *path, unsigned char **data, size_t *size, int *mapped) {
    *data = NULL;
    *size = 0;
    *mapped = 0;
#ifdef PEFT__HAVE_MMAP
    FILE *f = fopen(path, "rb");
    if (!f) return peft__fail(PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || S_ISDIR(sb.st_mode)) {
        fclose(f);
        return peft__fail(PEFT_ERR_IO, "%s: not a readable file", path);
    }
    if (sb.st_size > 0) {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fileno(f), 0);
        if (p != MAP_FAILED) {
            *data = (unsigned char *)p;
            *size = (size_t)sb.st_size;
            *mapped = 1;
        }
    }
    fclose(f);
    if (*mapped) return PEFT_OK;
#endif
    return peft_read_file(path, data, size);          /* no mmap here, or it failed: one read */
}
static void peft__unmap_file(unsigned char *data, size_t size, int mapped) {
#ifdef PEFT__HAVE_MMAP
    if (mapped && data) munmap(data, size);
#else
    (void)size;
#endif
    if (!mapped) PEFT_FREE(data);
}
/* [p, p + n) of a mapped file out of the resident set (the whole pages inside) */
static void peft__map_release(const void *p, size_t n, int mapped) {
#ifdef PEFT__HAVE_MMAP
    size_t page = 4096, lo = ((size_t)p + page - 1) / page * page, hi = ((size_t)p + n) / page * page;
    if (mapped && hi > lo) peft__madvise((void *)lo, hi - lo, MADV_DONTNEED);
#else
    (void)p;
    (void)n;
    (void)mapped;
#endif
}

static peft_status peft__mkdir(const char *dir) {
#if defined(_WIN32)
    int r = _mkdir(dir);
#else
    int r = mkdir(dir, 0755);
#endif
    if (r != 0 && errno != EEXIST)
        return peft__fail(PEFT_ERR_IO, "%s: cannot create folder: %s", dir, strerror(errno));
    return PEFT_OK;
}

static int peft__file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && !S_ISDIR(st.st_mode);
}

/* ---- JSON ------------------------------------------------------------------------
   A strict recursive-descent parser (RFC 8259) into a small DOM; errors give
   the source, line and column. Depth is limited so hostile input cannot
   exhaust the stack. */
typedef struct {
    const char *s, *end, *what;
    int depth;
    peft_status err;
} peft__jp;

static peft_status peft__jfail(peft__jp *p, const char *msg) {
    if (p->err != PEFT_OK) return p->err;   /* keep the first error */
    return p->err = peft__fail(PEFT_ERR_FORMAT, "%s: malformed JSON: %s", p->what, msg);
}

static void peft__jws(peft__jp *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static void peft__utf8(char **o, uint32_t cp) {
    unsigned char *u = (unsigned char *)*o;
    if (cp < 0x80) *u++ = (unsigned char)cp;
    else if (cp < 0x800) {
        *u++ = (unsigned char)(0xC0 | (cp >> 6));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *u++ = (unsigned char)(0xE0 | (cp >> 12)); *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *u++ = (unsigned char)(0xF0 | (cp >> 18)); *u++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *u++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); *u++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    *o = (char *)u;
}

static int peft__hex4(const char *s, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return 0;
        *v = *v * 16 + (uint32_t)d;
    }
    return 1;
}

static char *peft__jstring(peft__jp *p) {
    if (p->s >= p->end || *p->s != '"') {
        peft__jfail(p, "expected a string");
        return NULL;
    }
    const char *q = ++p->s;
    while (q < p->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= p->end) {
        peft__jfail(p, "unterminated string");
        return NULL;
    }
    char *out = (char *)PEFT_MALLOC((size_t)(q - p->s) + 1), *o = out;
    if (!out) {
        p->err = peft__fail(PEFT_ERR_NOMEM, "%s: no memory", p->what);
        return NULL;
    }
    while (p->s < q) {
        unsigned char c = (unsigned char)*p->s++;
        if (c < 0x20) {
            PEFT_FREE(out);
            peft__jfail(p, "control character inside a string");
            return NULL;
        }
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        char e = *p->s++;
        switch (e) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '/':
            *o++ = '/';
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            uint32_t cp, lo;
            if (q - p->s < 4 || !peft__hex4(p->s, &cp)) {
                PEFT_FREE(out);
                peft__jfail(p, "bad \\u escape");
                return NULL;
            }
            p->s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && q - p->s >= 6 && p->s[0] == '\\' && p->s[1] == 'u' &&
                peft__hex4(p->s + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p->s += 6;
            }
            peft__utf8(&o, cp);
            break;
        }
        default:
            PEFT_FREE(out);
            peft__jfail(p, "bad escape in a string");
            return NULL;
        }
    }
    *o = 0;
    p->s = q + 1;
    return out;
}

static peft_json *peft__jvalue(peft__jp *p);

static peft_json *peft__jnew(peft__jp *p, peft_json_type t) {
    peft_json *j = (peft_json *)peft__calloc(sizeof *j);
    if (!j) p->err = peft__fail(PEFT_ERR_NOMEM, "%s: no memory", p->what);
    else j->type = t;
    return j;
}

static peft_json *peft__jcontainer(peft__jp *p, int is_obj) {
    peft_json *j = peft__jnew(p, is_obj ? PEFT_JSON_OBJECT : PEFT_JSON_ARRAY), **tail;
    if (!j) return NULL;
    if (++p->depth > 128) {
        peft__jfail(p, "nesting deeper than 128");
        return j;
    }
    tail = &j->child;
    p->s++;
    peft__jws(p);
    if (p->s < p->end && *p->s == (is_obj ? '}' : ']')) {
        p->s++;
        p->depth--;
        return j;
    }
    for (;;) {
        char *key = NULL;
        peft__jws(p);
        if (is_obj) {
            if (!(key = peft__jstring(p))) return j;
            peft__jws(p);
            if (p->s >= p->end || *p->s != ':') {
                PEFT_FREE(key);
                peft__jfail(p, "expected ':' after a key");
                return j;
            }
            p->s++;
        }
        peft_json *v = peft__jvalue(p);
        if (!v) {
            PEFT_FREE(key);
            return j;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        j->n_children++;
        if (p->err != PEFT_OK) return j;
        peft__jws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
            continue;
        }
        if (p->s < p->end && *p->s == (is_obj ? '}' : ']')) {
            p->s++;
            break;
        }
        peft__jfail(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
        return j;
    }
    p->depth--;
    return j;
}

static peft_json *peft__jvalue(peft__jp *p) {
    peft__jws(p);
    if (p->s >= p->end) {
        peft__jfail(p, "unexpected end of input");
        return NULL;
    }
    char c = *p->s;
    if (c == '{' || c == '[') return peft__jcontainer(p, c == '{');
    if (c == '"') {
        char *s = peft__jstring(p);
        if (!s) return NULL;
        peft_json *j = peft__jnew(p, PEFT_JSON_STRING);
        if (!j) {
            PEFT_FREE(s);
            return NULL;
        }
        j->string = s;
        return j;
    }
    static const struct { const char *lit; peft_json_type t; double v; } lits[] = {
        { "true", PEFT_JSON_BOOL, 1 }, { "false", PEFT_JSON_BOOL, 0 }, { "null", PEFT_JSON_NULL, 0 } };
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i].lit);
        if ((size_t)(p->end - p->s) >= n && memcmp(p->s, lits[i].lit, n) == 0) {
            p->s += n;
            peft_json *j = peft__jnew(p, lits[i].t);
            if (j) j->number = lits[i].v;
            return j;
        }
    }
    /* number: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? ; also NaN/Infinity as Python writes them */
    const char *q = p->s;
    char buf[64];
    if ((size_t)(p->end - q) >= 3 && memcmp(q, "NaN", 3) == 0) {
        p->s += 3;
        peft_json *j = peft__jnew(p, PEFT_JSON_NUMBER);
        if (j) j->number = NAN;
        return j;
    }
    if (q < p->end && *q == '-') q++;
    if ((size_t)(p->end - q) >= 8 && memcmp(q, "Infinity", 8) == 0) {
        peft_json *j = peft__jnew(p, PEFT_JSON_NUMBER);
        if (j) j->number = *p->s == '-' ? -INFINITY : INFINITY;
        p->s = q + 8;
        return j;
    }
    if (q >= p->end || !(*q >= '0' && *q <= '9')) {
        peft__jfail(p, "unexpected character");
        return NULL;
    }
    if (*q == '0')
        q++;
    else
        while (q < p->end && *q >= '0' && *q <= '9') q++;
    if (q < p->end && *q == '.') {
        q++;
        if (q >= p->end || !(*q >= '0' && *q <= '9')) {
            peft__jfail(p, "digit expected after '.'");
            return NULL;
        }
        while (q < p->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < p->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < p->end && (*q == '+' || *q == '-')) q++;
        if (q >= p->end || !(*q >= '0' && *q <= '9')) {
            peft__jfail(p, "digit expected in exponent");
            return NULL;
        }
        while (q < p->end && *q >= '0' && *q <= '9') q++;
    }
    if (q - p->s >= (ptrdiff_t)sizeof buf) {
        peft__jfail(p, "number too long");
        return NULL;
    }
    memcpy(buf, p->s, (size_t)(q - p->s));
    buf[q - p->s] = 0;
    p->s = q;
    peft_json *j = peft__jnew(p, PEFT_JSON_NUMBER);
    if (j) j->number = strtod(buf, NULL);
    return j;
}

PEFTDEF peft_status peft_json_parse(peft_json **out, const char *text, size_t len, const char *what) {
    /* a UTF-8 byte order mark (Windows editors write one) is skipped, as Python's datasets does */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    peft__jp p = { text, text + len, what ? what : "JSON", 0, PEFT_OK };
    peft_json *j = peft__jvalue(&p);
    if (p.err == PEFT_OK) {
        peft__jws(&p);
        if (p.s != p.end) peft__jfail(&p, "trailing characters after the value");
    }
    if (p.err != PEFT_OK) {
        /* report where: line and column of the failure point */
        int line = 1, col = 1;
        for (const char *c = text; c < p.s && c < p.end; c++) {
            if (*c == '\n') {
                line++;
                col = 1;
            } else
                col++;
        }
        char msg[1200];
        snprintf(msg, sizeof msg, "%s (line %d, column %d)", peft_last_error(), line, col);
        peft__fail(p.err, "%s", msg);
        peft_json_free(j);
        *out = NULL;
        return p.err;
    }
    *out = j;
    return PEFT_OK;
}

PEFTDEF peft_status peft_json_load(peft_json **out, const char *path) {
    unsigned char *buf;
    size_t n;
    *out = NULL;
    peft_status s = peft_read_file(path, &buf, &n);
    if (s != PEFT_OK) return s;
    s = peft_json_parse(out, (const char *)buf, n, path);
    PEFT_FREE(buf);
    return s;
}

PEFTDEF const peft_json *peft_json_get(const peft_json *o, const char *key) {
    if (!o || o->type != PEFT_JSON_OBJECT) return NULL;
    for (const peft_json *c = o->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0) return c;
    return NULL;
}

PEFTDEF void peft_json_free(peft_json *j) {
    while (j) {
        peft_json *next = j->next;
        peft_json_free(j->child);
        PEFT_FREE(j->string);
        PEFT_FREE(j->key);
        PEFT_FREE(j);
        j = next;
    }
}

/* ---- safetensors -------------------------------------------------------------------
   u64 LE header length N, N bytes of JSON, then the data buffer. The reader
   trusts nothing: N must fit the file (and 100 MB), every tensor's bytes must
   equal shape × dtype size, and the tensors must tile the buffer exactly. */
static int peft__dtype_parse(const char *s) {
    for (int i = 0; i < PEFT_DT_COUNT; i++) if (strcmp(s, peft__dtypes[i].name) == 0) return i;
    return -1;
}

static int peft__cmp_entry(const void *a, const void *b) {
    const peft_st_entry *x = (const peft_st_entry *)a, *y = (const peft_st_entry *)b;
    return x->offset < y->offset   ? -1
           : x->offset > y->offset ? 1
                                   : (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static peft_status peft__st_parse(peft_safetensors *st) {
    const char *path = st->path;
    if (st->file_size < 8)
        return peft__fail(PEFT_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", path,
                          st->file_size);
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = (hn << 8) | st->file[i];
    if (hn > st->file_size - 8)
        return peft__fail(
                PEFT_ERR_FORMAT,
                "%s: header length %llu is larger than the file (%zu bytes): truncated or not safetensors",
                path, (unsigned long long)hn, st->file_size);
    if (hn > 100u * 1024 * 1024)
        return peft__fail(PEFT_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", path,
                          (unsigned long long)hn);
    char what[600];
    snprintf(what, sizeof what, "%s (safetensors header)", path);
    peft_json *h;
    peft_status s = peft_json_parse(&h, (const char *)st->file + 8, (size_t)hn, what);
    if (s != PEFT_OK) return s;
    st->data = st->file + 8 + hn;
    size_t buf_len = st->file_size - 8 - (size_t)hn;
    if (h->type != PEFT_JSON_OBJECT) {
        peft_json_free(h);
        return peft__fail(PEFT_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    st->entries = (peft_st_entry *)peft__calloc((size_t)(h->n_children + 1) * sizeof(peft_st_entry));
    int n_meta = 0;                       /* a hostile header may repeat __metadata__ */
    for (const peft_json *t = h->child; t; t = t->next)
        if (strcmp(t->key, "__metadata__") == 0) n_meta += t->n_children;
    st->meta_keys = (char **)peft__calloc((size_t)(n_meta + 1) * sizeof(char *));
    st->meta_vals = (char **)peft__calloc((size_t)(n_meta + 1) * sizeof(char *));
    if (!st->entries || !st->meta_keys || !st->meta_vals) {
        peft_json_free(h);
        return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
    }
    s = PEFT_OK;
    for (const peft_json *t = h->child; t && s == PEFT_OK; t = t->next) {
        if (strcmp(t->key, "__metadata__") == 0) {
            if (t->type != PEFT_JSON_OBJECT) {
                s = peft__fail(PEFT_ERR_FORMAT, "%s: __metadata__ is not an object", path);
                break;
            }
            for (const peft_json *kv = t->child; kv; kv = kv->next) {
                if (kv->type != PEFT_JSON_STRING) {
                    s = peft__fail(PEFT_ERR_FORMAT, "%s: metadata value '%s' is not a string", path, kv->key);
                    break;
                }
                st->meta_keys[st->n_meta] = peft__strdup(kv->key);
                st->meta_vals[st->n_meta++] = peft__strdup(kv->string);
                if (!st->meta_keys[st->n_meta - 1] || !st->meta_vals[st->n_meta - 1]) {
                    s = peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
                    break;
                }
            }
            continue;
        }
        peft_st_entry *e = &st->entries[st->n];
        const peft_json *dt = peft_json_get(t, "dtype"), *sh = peft_json_get(t, "shape"),
                        *of = peft_json_get(t, "data_offsets");
        if (t->type != PEFT_JSON_OBJECT || !dt || dt->type != PEFT_JSON_STRING || !sh ||
            sh->type != PEFT_JSON_ARRAY || !of || of->type != PEFT_JSON_ARRAY || of->n_children != 2) {
            s = peft__fail(PEFT_ERR_FORMAT,
                           "%s: tensor '%s' needs dtype, shape and data_offsets [begin, end]", path, t->key);
            break;
        }
        e->name = peft__strdup(t->key);
        st->n++;                     /* counted now so close() frees it on any error */
        if (!e->name) {
            s = peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
            break;
        }
        int d = peft__dtype_parse(dt->string);
        e->dtype = d < 0 ? PEFT_DT_COUNT : (peft_dtype)d;
        if (sh->n_children > PEFT_MAX_DIMS) {
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions (at most %d supported)",
                           path, t->key, sh->n_children, PEFT_MAX_DIMS);
            break;
        }
        e->ndim = sh->n_children;
        double elems = 1;
        int k = 0;
        for (const peft_json *x = sh->child; x; x = x->next, k++) {
            if (x->type != PEFT_JSON_NUMBER || x->number < 0 || x->number != floor(x->number) ||
                x->number > 9e15) {
                s = peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' has an invalid shape entry", path, t->key);
                break;
            }
            e->shape[k] = (int64_t)x->number;
            elems *= x->number;
        }
        if (s != PEFT_OK) break;
        if (elems > 9e15) { /* even of an unknown dtype: products of the shape stay in int64 */
            s = peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' has %.3g elements", path, t->key, elems);
            break;
        }
        double b = of->child->number, en = of->child->next->number;
        if (of->child->type != PEFT_JSON_NUMBER || of->child->next->type != PEFT_JSON_NUMBER || b < 0 ||
            en < b || b != floor(b) || en != floor(en) || en > (double)buf_len) {
            s = peft__fail(PEFT_ERR_FORMAT,
                           "%s: tensor '%s' data_offsets [%.0f, %.0f] fall outside the %zu-byte data buffer "
                           "(truncated file?)",
                           path, t->key, b, en, buf_len);
            break;
        }
        e->offset = (size_t)b;
        e->nbytes = (size_t)(en - b);
        if (e->dtype != PEFT_DT_COUNT && elems * (double)peft_dtype_size(e->dtype) != (double)e->nbytes) {
            s = peft__fail(
                    PEFT_ERR_FORMAT,
                    "%s: tensor '%s' is %s with %.0f elements (%.0f bytes) but its offsets span %zu bytes",
                    path, t->key, dt->string, elems, elems * (double)peft_dtype_size(e->dtype), e->nbytes);
            break;
        }
    }
    peft_json_free(h);
    if (s != PEFT_OK) return s;
    /* the tensors must tile [0, buf_len) with neither holes nor overlaps */
    peft_st_entry *sorted = (peft_st_entry *)PEFT_MALLOC((size_t)(st->n + 1) * sizeof(peft_st_entry));
    if (!sorted) return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
    memcpy(sorted, st->entries, (size_t)st->n * sizeof(peft_st_entry));
    qsort(sorted, (size_t)st->n, sizeof(peft_st_entry), peft__cmp_entry);
    size_t pos = 0;
    for (int i = 0; i < st->n && s == PEFT_OK; i++) {
        if (sorted[i].offset != pos)
            s = peft__fail(PEFT_ERR_FORMAT,
                           "%s: tensor '%s' starts at byte %zu but the previous one ends at %zu (%s)", path,
                           sorted[i].name, sorted[i].offset, pos,
                           sorted[i].offset < pos ? "overlap" : "hole");
        pos = sorted[i].offset + sorted[i].nbytes;
    }
    if (s == PEFT_OK && pos != buf_len)
        s = peft__fail(PEFT_ERR_FORMAT, "%s: tensors cover %zu bytes but the data buffer holds %zu", path,
                       pos, buf_len);
    PEFT_FREE(sorted);
    return s;
}

PEFTDEF peft_status peft_st_open(peft_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    snprintf(st->path, sizeof st->path, "%.500s", path);
    peft_status s = peft__map_file(path, &st->file, &st->file_size, &st->mapped);
    if (s == PEFT_OK) s = peft__st_parse(st);
    if (s != PEFT_OK) peft_st_close(st);
    return s;
}

PEFTDEF peft_status peft_st_open_header(peft_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    snprintf(st->path, sizeof st->path, "%.500s", path);
    FILE *f = fopen(path, "rb");
    if (!f) return peft__fail(PEFT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    unsigned char len8[8];
    uint64_t hn = 0;
    peft_status s = PEFT_OK;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        s = peft__fail(PEFT_ERR_IO, "%s: not a regular file", path);
    else if (sb.st_size < 8 || fread(len8, 1, 8, f) != 8)
        s = peft__fail(PEFT_ERR_FORMAT, "%s: file is %lld bytes, too short for a safetensors header", path,
                       (long long)sb.st_size);
    if (s == PEFT_OK) {
        for (int i = 7; i >= 0; i--) hn = (hn << 8) | len8[i];
        st->file_size = (size_t)sb.st_size;
        /* only the header is read; the parser's own checks bound hn by the file size and 100 MB */
        size_t want = hn <= (uint64_t)st->file_size - 8 && hn <= 100u * 1024 * 1024 ? (size_t)hn : 0;
        st->file = (unsigned char *)PEFT_MALLOC(8 + want + 1);
        if (!st->file) s = peft__fail(PEFT_ERR_NOMEM, "%s: no memory for the header", path);
        else if (fread(st->file + 8, 1, want, f) != want)
            s = peft__fail(PEFT_ERR_IO, "%s: read failed", path);
        else memcpy(st->file, len8, 8);
    }
    fclose(f);
    if (s == PEFT_OK) s = peft__st_parse(st);
    st->data = NULL;
    if (s != PEFT_OK) peft_st_close(st);
    return s;
}

PEFTDEF void peft_st_close(peft_safetensors *st) {
    for (int i = 0; i < st->n; i++) PEFT_FREE(st->entries[i].name);
    for (int i = 0; i < st->n_meta; i++) {
        PEFT_FREE(st->meta_keys[i]);
        PEFT_FREE(st->meta_vals[i]);
    }
    PEFT_FREE(st->entries);
    PEFT_FREE(st->meta_keys);
    PEFT_FREE(st->meta_vals);
    peft__unmap_file(st->file, st->file_size, st->mapped);
    memset(st, 0, sizeof *st);
}

PEFTDEF const peft_st_entry *peft_st_find(const peft_safetensors *st, const char *name) {
    for (int i = 0; i < st->n; i++) if (strcmp(st->entries[i].name, name) == 0) return &st->entries[i];
    return NULL;
}

PEFTDEF peft_status peft_st_read_f32(const peft_safetensors *st, const peft_st_entry *e, float *out,
                                     int64_t n) {
    size_t es = peft_dtype_size(e->dtype);
    if (e->dtype == PEFT_DT_COUNT || e->dtype == PEFT_DT_U8 || e->dtype == PEFT_DT_I8)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' has a dtype that cannot be read as floats",
                          st->path, e->name);
    if ((size_t)n * es != e->nbytes)
        return peft__fail(PEFT_ERR_SHAPE, "%s: tensor '%s' holds %zu elements, expected %lld", st->path,
                          e->name, e->nbytes / es, (long long)n);
    const unsigned char *p = st->data + e->offset;
    for (int64_t i = 0; i < n; i++, p += es) {
        switch (e->dtype) {
        case PEFT_DT_F32: {
            uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            memcpy(&out[i], &u, 4);
            break;
        }
        case PEFT_DT_F16:
            out[i] = peft_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
            break;
        case PEFT_DT_BF16:
            out[i] = peft_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
            break;
        case PEFT_DT_I32: {
            uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            out[i] = (float)(int32_t)u;
            break;
        }
        case PEFT_DT_I64: {
            uint64_t u = 0;
            for (int k = 7; k >= 0; k--) u = u << 8 | p[k];
            out[i] = (float)(int64_t)u;
            break;
        }
        case PEFT_DT_F64: {
            uint64_t u = 0;
            double d;
            for (int k = 7; k >= 0; k--) u = u << 8 | p[k];
            memcpy(&d, &u, 8);
            out[i] = (float)d;
            break;
        }
        default: break;
        }
    }
    return PEFT_OK;
}

/* Streamed atomic write: open path.tmp, the caller writes, commit renames. */
static FILE *peft__atomic_open(const char *path, char *tmp, size_t tmpn) {
    if (snprintf(tmp, tmpn, "%s.tmp", path) >= (int)tmpn) {
        peft__fail(PEFT_ERR_ARG, "%s: path too long", path);
        return NULL;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) peft__fail(PEFT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    errno = 0;                                         /* so that commit reports the write's own error */
    return f;
}
static peft_status peft__atomic_commit(FILE *f, const char *tmp, const char *path, int ok) {
    int err = ok ? 0 : errno ? errno : EIO;           /* ENOSPC: "No space left on device" */
    if (ok && fflush(f) != 0) {
        ok = 0;
        err = errno;
    }
#if !defined(_WIN32)
    if (ok && fsync(fileno(f)) != 0) {
        ok = 0;
        err = errno;
    }
#endif
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(tmp);
        return peft__fail(PEFT_ERR_IO, "%s: write failed (%s); the previous file is untouched", path,
                          strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        remove(tmp);
        return peft__fail(PEFT_ERR_IO, "%s: rename failed: %s", path, strerror(err));
    }
    return PEFT_OK;
}

/* Appends printf output to a growing buffer (for JSON headers and configs). */
typedef struct peft__sb { char *s; size_t n, cap; int oom; } peft__sb;
static void peft__sbf(peft__sb *b, const char *fmt, ...) PEFT__PRINTF(2, 3);
static void peft__sbf(peft__sb *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        if (b->oom) return;
        size_t room = b->cap - b->n;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        size_t nc = (b->cap + (size_t)k + 64) * 2;
        char *ns = (char *)PEFT_REALLOC(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
}
static void peft__sb_jstr(peft__sb *b, const char *s) {
    peft__sbf(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') peft__sbf(b, "\\%c", c);
        else if (c < 0x20) peft__sbf(b, "\\u%04x", c);
        else peft__sbf(b, "%c", c);
    }
    peft__sbf(b, "\"");
}

PEFTDEF peft_status peft_st_write(const char *path, const peft_st_write_item *items, int n,
                                  const char **meta_kv, int n_meta) {
    peft__sb h = { 0, 0, 0, 0 };
    size_t off = 0;
    peft__sbf(&h, "{");
    if (n_meta > 0) {
        peft__sbf(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            peft__sb_jstr(&h, meta_kv[2 * i]);
            peft__sbf(&h, ":");
            peft__sb_jstr(&h, meta_kv[2 * i + 1]);
            if (i + 1 < n_meta) peft__sbf(&h, ",");
        }
        peft__sbf(&h, "}%s", n ? "," : "");
    }
    for (int i = 0; i < n; i++) {
        size_t bytes = peft_dtype_size(items[i].dtype);
        peft__sb_jstr(&h, items[i].name);
        peft__sbf(&h, ":{\"dtype\":\"%s\",\"shape\":[", peft_dtype_name(items[i].dtype));
        for (int d = 0; d < items[i].ndim; d++) {
            peft__sbf(&h, "%s%lld", d ? "," : "", (long long)items[i].shape[d]);
            bytes *= (size_t)items[i].shape[d];
        }
        peft__sbf(&h, "],\"data_offsets\":[%zu,%zu]}%s", off, off + bytes, i + 1 < n ? "," : "");
        off += bytes;
    }
    peft__sbf(&h, "}");
    while (!h.oom && h.n % 8 != 0) peft__sbf(&h, " ");
    if (h.oom) {
        PEFT_FREE(h.s);
        return peft__fail(PEFT_ERR_NOMEM, "%s: no memory for the header", path);
    }
    char tmp[1024];
    FILE *f = peft__atomic_open(path, tmp, sizeof tmp);
    if (!f) {
        PEFT_FREE(h.s);
        return PEFT_ERR_IO;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.s, 1, h.n, f) == h.n;
    PEFT_FREE(h.s);
    for (int i = 0; i < n && ok; i++) {
        size_t bytes = peft_dtype_size(items[i].dtype);
        for (int d = 0; d < items[i].ndim; d++) bytes *= (size_t)items[i].shape[d];
        ok = bytes == 0 || fwrite(items[i].data, 1, bytes, f) == bytes;  /* little-endian hosts */
    }
    return peft__atomic_commit(f, tmp, path, ok);
}

/* ---- model folders -------------------------------------------------------------------- */
static peft_status peft__load_param(const peft_safetensors *st, const peft_st_entry *e, peft_tensor *p) {
    int same = e->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++) same = e->shape[d] == p->shape[d];
    if (!same) {
        char got[96] = "", want[96] = "";
        for (int d = 0; d < e->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)e->shape[d]);
        for (int d = 0; d < p->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)p->shape[d]);
        return peft__fail(PEFT_ERR_SHAPE, "%s: tensor '%s' has shape [%s] but config.json implies [%s]",
                          st->path, e->name, got, want);
    }
    if (e->dtype != PEFT_DT_F32 && e->dtype != PEFT_DT_F16 && e->dtype != PEFT_DT_BF16)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' is %s; weights must be F32, F16 or BF16",
                          st->path, e->name,
                          e->dtype == PEFT_DT_COUNT ? "an unknown dtype" : peft_dtype_name(e->dtype));
    return peft_st_read_f32(st, e, p->data, p->n);
}

static peft_status peft__load_q4(const peft_safetensors *st, peft_linear_site *S, const peft_config *c);

static peft_linear_site *peft__site_of(peft_model *m, const peft_tensor *p) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < PEFT_N_SITES; k++) if (m->layers[l].lin[k].w == p) return &m->layers[l].lin[k];
    return NULL;
}

/* Which file holds each parameter: one model.safetensors, or the shards named
   by model.safetensors.index.json's weight_map. */
static peft_status peft__load_weights(peft_model *m, const char *dir) {
    char path[1024], idx[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    int n = m->n_params;
    const char **file_of = (const char **)peft__calloc((size_t)n * sizeof(char *));
    peft_json *index = NULL;
    peft_status s = PEFT_OK;
    if (!file_of) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    if (peft__file_exists(path)) {
        for (int i = 0; i < n; i++) file_of[i] = "model.safetensors";
    } else if (peft__file_exists(idx)) {
        s = peft_json_load(&index, idx);
        const peft_json *wm = s == PEFT_OK ? peft_json_get(index, "weight_map") : NULL;
        if (s == PEFT_OK && (!wm || wm->type != PEFT_JSON_OBJECT))
            s = peft__fail(PEFT_ERR_FORMAT, "%s: no 'weight_map' object", idx);
        for (int i = 0; i < n && s == PEFT_OK; i++) {
            const peft_json *f = peft_json_get(wm, m->params[i]->name);
            if (!f && m->params[i] == m->lm_head && m->cfg.tie_embeddings) continue;
            if (!f || f->type != PEFT_JSON_STRING || strchr(f->string, '/'))
                s = peft__fail(PEFT_ERR_FORMAT, "%s: weight_map has no valid file for '%s'", idx,
                               m->params[i]->name);
            else file_of[i] = f->string;
        }
    } else {
        s = peft__fail(PEFT_ERR_IO, "%s: neither model.safetensors nor model.safetensors.index.json is there",
                       dir);
    }
    /* open each distinct file once, in order of first use */
    for (int i = 0; i < n && s == PEFT_OK; i++) {
        if (!file_of[i]) continue;
        int seen = 0;
        for (int k = 0; k < i; k++) if (file_of[k] && strcmp(file_of[k], file_of[i]) == 0) seen = 1;
        if (seen) continue;
        peft_safetensors st;
        snprintf(path, sizeof path, "%s/%s", dir, file_of[i]);
        s = peft_st_open(&st, path);
        for (int k = i; k < n && s == PEFT_OK; k++) {
            if (!file_of[k] || strcmp(file_of[k], file_of[i]) != 0) continue;
            peft_linear_site *site = m->cfg.q4 ? peft__site_of(m, m->params[k]) : NULL;
            const peft_st_entry *e = peft_st_find(&st, m->params[k]->name);
            if (site) s = peft__load_q4(&st, site, &m->cfg);
            else if (!e)
                s = peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' is missing", path, m->params[k]->name);
            else s = peft__load_param(&st, e, m->params[k]);
            /* the file's copy leaves memory once converted: a load peaks at the fp32 weights + one tensor */
            if (e) peft__map_release(st.data + e->offset, e->nbytes, st.mapped);
        }
        if (st.file) peft_st_close(&st);
    }
    peft_json_free(index);
    PEFT_FREE(file_of);
    return s;
}

/* ---- llama2.c checkpoints (run.c's layout; RoPE on interleaved pairs) ------------
     legacy (v0)  7 int32 (dim, hidden, layers, heads, kv heads, vocab, seq;
                  negative vocab = a separate classifier), then fp32: embedding,
                  attention norms, wq, wk, wv, wo (all layers each), ffn norms,
                  w1 (gate), w2 (down), w3 (up), final norm, the cos/sin tables
                  (skipped: recomputed), the classifier.
     ak42 v1      magic "ak42", version, the same 7 ints, a shared-classifier
                  byte, padding to 256; fp32: the norms first, then embedding,
                  wq, wk, wv, wo, w1, w2, w3 (each for all layers), classifier.
     ak42 v2      as v1 plus an int32 group size after the flag; the norms in
                  fp32, every matrix in int8 (Q8_0: q·scale per group), then
                  all the groups' fp32 scales in the same order.          */
typedef struct { const unsigned char *f32, *q8, *sc; int version, group; } peft__l2c_reader;

static void peft__l2c_take(peft__l2c_reader *r, float *dst, int64_t n) {
    if (r->version < 2) {
        memcpy(dst, r->f32, 4 * (size_t)n);
        r->f32 += 4 * (size_t)n;
        return;
    }
    for (int64_t g = 0; g < n / r->group; g++) {
        float scale;
        memcpy(&scale, r->sc + 4 * (size_t)g, 4);
        for (int k = 0; k < r->group; k++)
            dst[g * r->group + k] = (float)(int8_t)r->q8[g * r->group + k] * scale;
    }
    r->q8 += (size_t)n;
    r->sc += 4 * (size_t)(n / r->group);
}
static void peft__l2c_norm(peft__l2c_reader *r, float *dst, int64_t n) {   /* fp32 in every version */
    memcpy(dst, r->f32, 4 * (size_t)n);
    r->f32 += 4 * (size_t)n;
}

static int32_t peft__rd_i32(const unsigned char *b) {
    return (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
}

static peft_status peft__load_llama2c(peft_model **out, const char *path) {
    unsigned char *buf;
    size_t size;
    peft_status s = peft_read_file(path, &buf, &size);
    if (s != PEFT_OK) return s;
    int32_t h[7];
    int version = 0, group = 0, shared, hdr = 28;
    if (size < 28) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_FORMAT, "%s: %zu bytes, too short for a llama2.c header", path, size);
    }
    if (peft__rd_i32(buf) == 0x616b3432) {
        if (size < 256) {
            PEFT_FREE(buf);
            return peft__fail(PEFT_ERR_FORMAT, "%s: ak42 header truncated", path);
        }
        version = peft__rd_i32(buf + 4);
        if (version != 1 && version != 2) {
            PEFT_FREE(buf);
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: llama2.c ak42 version %d (1 and 2 are known)", path,
                              version);
        }
        for (int i = 0; i < 7; i++) h[i] = peft__rd_i32(buf + 8 + 4 * i);
        shared = buf[36] != 0;
        group = version == 2 ? peft__rd_i32(buf + 37) : 0;
        hdr = 256;
        if (version == 2 && (group < 1 || group > 1 << 20)) {
            PEFT_FREE(buf);
            return peft__fail(PEFT_ERR_FORMAT, "%s: bad group size %d", path, group);
        }
    } else {
        for (int i = 0; i < 7; i++) h[i] = peft__rd_i32(buf + 4 * i);
        shared = h[5] > 0;
        if (h[5] < 0) h[5] = -h[5];
    }
    peft_config c;
    peft__config_defaults(&c);
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.vocab_size = h[5];
    c.max_seq_len = h[6];
    c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_interleaved = 1;
    c.tie_embeddings = shared;
    c.bos_id = 1;
    c.eos_id = 2;
    if (c.dim <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
        c.vocab_size <= 0 || c.max_seq_len <= 0 || c.dim % c.n_heads || c.dim > 65536 ||
        c.hidden_dim > 1 << 20 || c.n_layers > 4096 || c.max_seq_len > 1 << 24) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_FORMAT, "%s: not a llama2.c checkpoint (header %d %d %d %d %d %d %d)",
                          path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
    }
    int64_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size,
            KV = (int64_t)c.n_kv_heads * c.head_dim;
    int64_t norms = 2 * L * D + D,
            mats = V * D + 2 * L * D * D + 2 * L * D * KV + 3 * L * D * F + (shared ? 0 : V * D);
    int64_t need = version == 0 ? 4 * (norms + mats + (int64_t)c.max_seq_len * c.head_dim)
                 : version == 1 ? 4 * (norms + mats) : 4 * norms + mats + 4 * (mats / (group ? group : 1));
    if (version == 2 && (D * D % group || D * KV % group || D * F % group || V * D % group)) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_FORMAT, "%s: group size %d does not divide the matrices", path, group);
    }
    if ((int64_t)size != hdr + need) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_FORMAT,
                          "%s: %zu bytes, but the header implies %lld (truncated, or another format)", path,
                          size, (long long)(hdr + need));
    }
    s = peft_config_validate(&c, path);
    peft_model *m = NULL;
    if (s == PEFT_OK) s = peft_model_new(&m, &c, 0, 0);
    if (s != PEFT_OK) {
        PEFT_FREE(buf);
        return s;
    }
    peft__l2c_reader r = { buf + hdr, NULL, NULL, version, group };
    /* w1, w2, w3 */
    int qkvo[4] = { PEFT_Q, PEFT_K, PEFT_V, PEFT_O }, ffn[3] = { PEFT_GATE, PEFT_DOWN, PEFT_UP };
    if (version == 0) {
        peft__l2c_take(&r, m->embed->data, V * D);
        for (int l = 0; l < L; l++) peft__l2c_norm(&r, m->layers[l].attn_norm->data, D);
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < L; l++)
                peft__l2c_take(&r, m->layers[l].lin[qkvo[k]].w->data, m->layers[l].lin[qkvo[k]].w->n);
        for (int l = 0; l < L; l++) peft__l2c_norm(&r, m->layers[l].ffn_norm->data, D);
        for (int k = 0; k < 3; k++)
            for (int l = 0; l < L; l++) peft__l2c_take(&r, m->layers[l].lin[ffn[k]].w->data, D * F);
        peft__l2c_norm(&r, m->norm->data, D);
        r.f32 += 4 * (size_t)c.max_seq_len * c.head_dim;      /* cos/sin tables: recomputed */
    } else {
        for (int l = 0; l < L; l++) peft__l2c_norm(&r, m->layers[l].attn_norm->data, D);
        for (int l = 0; l < L; l++) peft__l2c_norm(&r, m->layers[l].ffn_norm->data, D);
        peft__l2c_norm(&r, m->norm->data, D);
        r.q8 = r.f32;
        r.sc = r.q8 + mats;
        peft__l2c_take(&r, m->embed->data, V * D);
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < L; l++)
                peft__l2c_take(&r, m->layers[l].lin[qkvo[k]].w->data, m->layers[l].lin[qkvo[k]].w->n);
        for (int k = 0; k < 3; k++)
            for (int l = 0; l < L; l++) peft__l2c_take(&r, m->layers[l].lin[ffn[k]].w->data, D * F);
    }
    if (!shared) peft__l2c_take(&r, m->lm_head->data, V * D);
    PEFT_FREE(buf);
    snprintf(m->path, sizeof m->path, "%s", path);
    *out = m;
    return PEFT_OK;
}

/* The weight files must be large enough for what config.json claims before any
   of it is allocated: at least 2 bytes a parameter (F16/BF16), half a byte when
   4-bit. A missing file is left to the loader, which names it. */
static peft_status peft__weights_fit(const peft_config *c, const char *dir) {
    char path[1100], what[1100];
    struct stat sb;
    double have = 0;
    snprintf(what, sizeof what, "%s/model.safetensors", dir);
    if (stat(what, &sb) == 0) have = (double)sb.st_size;
    else {
        peft_json *index;
        snprintf(what, sizeof what, "%s/model.safetensors.index.json", dir);
        snprintf(path, sizeof path, "%s", what);
        if (!peft__file_exists(path) || peft_json_load(&index, path) != PEFT_OK) return PEFT_OK;
        const peft_json *wm = peft_json_get(index, "weight_map");
        int missing = 0;
        for (const peft_json *f = wm ? wm->child : NULL; f; f = f->next) {
            int seen = f->type != PEFT_JSON_STRING || strchr(f->string, '/');
            for (const peft_json *g = wm->child; g != f && !seen; g = g->next)
                seen = g->type == PEFT_JSON_STRING && !strcmp(g->string, f->string);
            if (seen) continue;
            snprintf(path, sizeof path, "%s/%s", dir, f->string);
            if (stat(path, &sb) == 0) have += (double)sb.st_size;
            else missing = 1;
        }
        peft_json_free(index);
        if (missing || !wm) return PEFT_OK;
    }
    double need = (double)peft_config_param_count(c) * (c->q4 ? 0.5 : 2.0);
    if (have < need)
        return peft__fail(PEFT_ERR_SHAPE,
                          "%s: %.0f bytes of weights, but config.json describes %lld parameters (at least "
                          "%.0f bytes): wrong config.json or truncated weights",
                          what, have, (long long)peft_config_param_count(c), need);
    return PEFT_OK;
}

static peft_status peft__load_gguf(peft_model **out, const char *path);
/* a .gguf name, or a file that starts with GGUF's magic */
static int peft__is_gguf(const char *path) {
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".gguf")) return 1;
    char magic[4] = { 0 };
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    return got == 4 && !memcmp(magic, "GGUF", 4);
}

PEFTDEF peft_status peft_model_load(peft_model **out, const char *dir) {
    char path[1024];
    peft_config c;
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) return peft__fail(PEFT_ERR_IO, "%s: no such file or folder", dir);
    if (!S_ISDIR(sb.st_mode) && peft__is_gguf(dir)) return peft__load_gguf(out, dir);
    if (!S_ISDIR(sb.st_mode)) return peft__load_llama2c(out, dir);     /* a file: llama2.c .bin */
    snprintf(path, sizeof path, "%s/config.json", dir);
    peft_status s = peft_config_load(&c, path);
    if (s == PEFT_OK) s = peft__weights_fit(&c, dir);
    if (s != PEFT_OK) return s;
    peft_model *m;
    s = peft_model_new(&m, &c, 0, 0);
    if (s != PEFT_OK) return s;
    snprintf(m->path, sizeof m->path, "%s", dir);
    s = peft__load_weights(m, dir);
    if (s != PEFT_OK) {
        peft_model_free(m);
        return s;
    }
    *out = m;
    return PEFT_OK;
}

/* config.json as transformers writes a Llama4TextConfig */
static void peft__llama4_config_json(peft__sb *b, const peft_config *c) {
    peft__sbf(b, "{\n  \"architectures\": [\"Llama4ForCausalLM\"],\n  \"model_type\": \"llama4_text\",\n");
    peft__sbf(b, "  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n"
              "  \"intermediate_size_mlp\": %d,\n", c->dim, c->hidden_dim, c->hidden_dim_mlp);
    peft__sbf(
            b,
            "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->n_layers, c->n_heads, c->n_kv_heads);
    peft__sbf(b, "  \"head_dim\": %d,\n  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n",
              c->head_dim, c->vocab_size, c->max_seq_len);
    peft__sbf(b, "  \"rms_norm_eps\": %.9g,\n", c->norm_eps);
    if (c->rope_type == PEFT_ROPE_LLAMA3)
        peft__sbf(
                b,
                "  \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": %.9g, \"factor\": %.9g, "
                "\"low_freq_factor\": %.9g, \"high_freq_factor\": %.9g, "
                "\"original_max_position_embeddings\": "
                "%d},\n",
                c->rope_theta, c->rope_factor, c->rope_low_freq, c->rope_high_freq, c->rope_orig_max_pos);
    else if (c->rope_type == PEFT_ROPE_LINEAR)
        peft__sbf(b,
                  "  \"rope_parameters\": {\"rope_type\": \"linear\", \"rope_theta\": %.9g, \"factor\": "
                  "%.9g},\n",
                  c->rope_theta, c->rope_factor);
    else
        peft__sbf(b, "  \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": %.9g},\n",
                  c->rope_theta);
    peft__sbf(
            b,
            "  \"num_local_experts\": %d,\n  \"num_experts_per_tok\": %d,\n  \"interleave_moe_layer_step\": "
            "%d,\n  \"no_rope_layer_interval\": %d,\n  \"use_qk_norm\": %s,\n",
            c->n_experts, c->top_k, c->moe_step, c->nope_interval, c->qk_norm ? "true" : "false");
    if (c->attn_chunk > 0) peft__sbf(b, "  \"attention_chunk_size\": %d,\n", c->attn_chunk);
    else peft__sbf(b, "  \"attention_chunk_size\": null,\n");
    peft__sbf(b, "  \"attn_temperature_tuning\": %s,\n  \"floor_scale\": %.9g,\n  \"attn_scale\": %.9g,\n",
              c->temp_tuning ? "true" : "false", c->floor_scale, c->attn_scale);
    peft__sbf(b, "  \"tie_word_embeddings\": %s,\n  \"attention_bias\": %s,\n",
              c->tie_embeddings ? "true" : "false", c->attn_bias ? "true" : "false");
    peft__sbf(b, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"torch_dtype\": \"float32\"\n}\n",
              c->bos_id, c->eos_id);
}

static void peft__config_json(peft__sb *b, const peft_config *c) {
    if (c->llama4) {
        peft__llama4_config_json(b, c);
        return;
    }
    peft__sbf(b, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
    peft__sbf(b, "  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n",
              c->dim, c->hidden_dim);
    peft__sbf(
            b,
            "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->n_layers, c->n_heads, c->n_kv_heads);
    peft__sbf(b, "  \"head_dim\": %d,\n  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n",
              c->head_dim, c->vocab_size, c->max_seq_len);
    peft__sbf(b, "  \"rms_norm_eps\": %.9g,\n  \"rope_theta\": %.9g,\n", c->norm_eps, c->rope_theta);
    if (c->rope_type == PEFT_ROPE_LLAMA3)
        peft__sbf(b,
                  "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %.9g, \"low_freq_factor\": "
                  "%.9g, "
                  "\"high_freq_factor\": %.9g, \"original_max_position_embeddings\": %d},\n",
                  c->rope_factor, c->rope_low_freq, c->rope_high_freq, c->rope_orig_max_pos);
    else if (c->rope_type == PEFT_ROPE_LINEAR)
        peft__sbf(b, "  \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": %.9g},\n", c->rope_factor);
    else peft__sbf(b, "  \"rope_scaling\": null,\n");
    peft__sbf(b, "  \"tie_word_embeddings\": %s,\n  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n",
              c->tie_embeddings ? "true" : "false", c->attn_bias ? "true" : "false",
              c->mlp_bias ? "true" : "false");
    peft__sbf(b, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"torch_dtype\": \"float32\"\n}\n",
              c->bos_id, c->eos_id);
}

/* ---- 4-bit model folders (transformers + bitsandbytes layout) ---------------------
   Each block linear W becomes: W (U8 packed [n/2, 1]), W.absmax (U8 with double
   quantization, else F32), W.quant_map (F32 [16]), W.nested_absmax,
   W.nested_quant_map (F32 [256]) and W.quant_state.bitsandbytes__nf4 (the
   quant state as JSON bytes); config.json gains quantization_config. */
static const char *peft__q4_name(peft_q4_type t) {
    return t == PEFT_FP4 ? "fp4" : t == PEFT_INT4 ? "int4" : "nf4";
}

PEFTDEF peft_status peft_model_save_quantized(const peft_model *m, const char *dir) {
    if (!m->cfg.q4) return peft__fail(PEFT_ERR_ARG, "%s: the model is not quantized", dir);
    if (m->cfg.q4_type == PEFT_INT4)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: int4 has no bitsandbytes layout (nf4 and fp4 do)", dir);
    peft_status s = peft__mkdir(dir);
    if (s != PEFT_OK) return s;
    char path[1024];
    peft__sb b = { 0, 0, 0, 0 };
    peft__config_json(&b, &m->cfg);
    if (b.n >= 3) b.n -= 3;                           /* reopen the object: drop "\n}\n" */
    peft__sbf(&b,
              ",\n  \"quantization_config\": {\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, "
              "\"load_in_8bit\": false, \"bnb_4bit_quant_type\": \"%s\", \"bnb_4bit_use_double_quant\": %s, "
              "\"bnb_4bit_compute_dtype\": \"float32\", \"bnb_4bit_quant_storage\": \"uint8\", "
              "\"llm_int8_skip_modules\": null, \"llm_int8_threshold\": 6.0, \"llm_int8_has_fp16_weight\": "
              "false, "
              "\"llm_int8_enable_fp32_cpu_offload\": false}\n}\n",
              peft__q4_name(m->cfg.q4_type), m->cfg.q4_double ? "true" : "false");
    snprintf(path, sizeof path, "%s/config.json", dir);
    s = b.oom ? peft__fail(PEFT_ERR_NOMEM, "no memory") : peft_write_file_atomic(path, b.s, b.n);
    PEFT_FREE(b.s);
    if (s != PEFT_OK) return s;
    int cap = m->n_params * 6;
    peft_st_write_item *items = (peft_st_write_item *)peft__calloc((size_t)cap * sizeof *items);
    char **names = (char **)peft__calloc((size_t)cap * sizeof *names);
    char **states = (char **)peft__calloc((size_t)m->n_params * sizeof *states);
    int n = 0, ns = 0;
    if (!items || !names || !states) {
        s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        goto done;
    }
    for (int i = 0; i < m->n_params; i++) {
        const peft_tensor *p = m->params[i];
        const peft_q4 *q = NULL;
        for (int l = 0; l < m->cfg.n_layers && !q; l++)
            for (int k = 0; k < PEFT_N_SITES; k++) if (m->layers[l].lin[k].w == p) q = m->layers[l].lin[k].q4;
        if (!q) {
            items[n].name = p->name;
            items[n].dtype = PEFT_DT_F32;
            items[n].ndim = p->ndim;
            memcpy(items[n].shape, p->shape, sizeof p->shape);
            items[n].data = p->data;
            n++;
            continue;
        }
        const char *suffix[5] = { "", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map" };
        for (int k = 0; k < (q->double_quant ? 5 : 3); k++) {
            size_t len = strlen(p->name) + 64;
            names[n] = (char *)PEFT_MALLOC(len);
            if (!names[n]) {
                s = peft__fail(PEFT_ERR_NOMEM, "no memory");
                goto done;
            }
            snprintf(names[n], len, "%s%s", p->name, suffix[k]);
            items[n].name = names[n];
            items[n].ndim = 1;
            switch (k) {
            case 0:
                items[n].dtype = PEFT_DT_U8;
                items[n].ndim = 2;
                items[n].shape[0] = (q->n + 1) / 2;
                items[n].shape[1] = 1;
                items[n].data = q->packed;
                break;
            case 1:
                items[n].dtype = q->double_quant ? PEFT_DT_U8 : PEFT_DT_F32;
                items[n].shape[0] = q->n_blocks;
                items[n].data = q->double_quant ? (const void *)q->qabsmax : (const void *)q->absmax;
                break;
            case 2:
                items[n].dtype = PEFT_DT_F32;
                items[n].shape[0] = 16;
                items[n].data = peft_q4_code(q->type);
                break;
            case 3:
                items[n].dtype = PEFT_DT_F32;
                items[n].shape[0] = q->n_nested;
                items[n].data = q->nested_absmax;
                break;
            case 4:
                items[n].dtype = PEFT_DT_F32;
                items[n].shape[0] = 256;
                items[n].data = peft_dynamic_map();
                break;
            }
            n++;
        }
        peft__sb js = { 0, 0, 0, 0 };
        peft__sbf(
                &js,
                "{\"quant_type\": \"%s\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [%lld, %lld]",
                peft__q4_name(q->type), (long long)p->shape[0], (long long)p->shape[1]);
        if (q->double_quant)
            peft__sbf(&js,
                      ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": %.17g",
                      (double)q->offset);
        peft__sbf(&js, "}");
        if (js.oom) {
            PEFT_FREE(js.s);
            s = peft__fail(PEFT_ERR_NOMEM, "no memory");
            goto done;
        }
        states[ns] = js.s;
        size_t len = strlen(p->name) + 64;
        names[n] = (char *)PEFT_MALLOC(len);
        if (!names[n]) {
            s = peft__fail(PEFT_ERR_NOMEM, "no memory");
            goto done;
        }
        snprintf(names[n], len, "%s.quant_state.bitsandbytes__%s", p->name, peft__q4_name(q->type));
        items[n].name = names[n];
        items[n].dtype = PEFT_DT_U8;
        items[n].ndim = 1;
        items[n].shape[0] = (int64_t)js.n;
        items[n].data = states[ns++];
        n++;
    }
    {
        const char *meta[2] = { "format", "pt" };
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        s = peft_st_write(path, items, n, meta, 1);
    }
done:
    if (names) for (int i = 0; i < cap; i++) PEFT_FREE(names[i]);
    if (states) for (int i = 0; i < m->n_params; i++) PEFT_FREE(states[i]);
    PEFT_FREE(names);
    PEFT_FREE(states);
    PEFT_FREE(items);
    return s;
}

/* Reads one 4-bit linear from a bnb folder into a site, checking every piece. */
static peft_status peft__load_q4(const peft_safetensors *st, peft_linear_site *S, const peft_config *c) {
    const char *name = S->w->name, *path = st->path;
    char key[400];
    const peft_st_entry *e;
    peft_q4 *q = (peft_q4 *)peft__calloc(sizeof *q);
    if (!q) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    S->q4 = q;                                         /* freed with the model on any error */
    q->type = c->q4_type;
    q->double_quant = c->q4_double;
    q->n = S->w->n;
    q->blocksize = 64;
    q->nested_blocksize = 256;
    q->n_blocks = (q->n + 63) / 64;
    q->n_nested = (q->n_blocks + 255) / 256;
#define PEFT__Q4_PIECE(suffix, dt, bytes) \
    (snprintf(key, sizeof key, "%s%s", name, suffix), \
     (e = peft_st_find(st, key)) != NULL && e->dtype == (dt) && e->nbytes == (size_t)(bytes))
    /* the packed bytes: U8 [n/2, 1], or with bnb_4bit_quant_storage the same bytes as BF16 [n/4, 1] ... */
    if (!PEFT__Q4_PIECE("", PEFT_DT_U8, (q->n + 1) / 2) &&
        !PEFT__Q4_PIECE("", PEFT_DT_BF16, (q->n + 1) / 2) &&
        !PEFT__Q4_PIECE("", PEFT_DT_F16, (q->n + 1) / 2) &&
        !PEFT__Q4_PIECE("", PEFT_DT_F32, (q->n + 1) / 2) && !PEFT__Q4_PIECE("", PEFT_DT_I8, (q->n + 1) / 2))
        return peft__fail(PEFT_ERR_FORMAT, "%s: '%s' is missing or not %lld packed bytes", path, key,
                          (long long)((q->n + 1) / 2));
    q->packed = (uint8_t *)PEFT_MALLOC(e->nbytes);
    if (!q->packed) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    memcpy(q->packed, st->data + e->offset, e->nbytes);
    if (!PEFT__Q4_PIECE(".quant_map", PEFT_DT_F32, 64) ||
        memcmp(st->data + e->offset, peft_q4_code(q->type), 64) != 0)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: '%s' is missing or is not the %s code", path, key,
                          peft__q4_name(q->type));
    if (q->double_quant) {
        if (!PEFT__Q4_PIECE(".absmax", PEFT_DT_U8, q->n_blocks))
            return peft__fail(PEFT_ERR_FORMAT, "%s: '%s' is missing or not %lld bytes", path, key,
                              (long long)q->n_blocks);
        q->qabsmax = (uint8_t *)PEFT_MALLOC((size_t)q->n_blocks);
        q->nested_absmax = (float *)PEFT_MALLOC(sizeof(float) * (size_t)q->n_nested);
        if (!q->qabsmax || !q->nested_absmax) return peft__fail(PEFT_ERR_NOMEM, "no memory");
        memcpy(q->qabsmax, st->data + e->offset, (size_t)q->n_blocks);
        if (!PEFT__Q4_PIECE(".nested_absmax", PEFT_DT_F32, 4 * q->n_nested))
            return peft__fail(PEFT_ERR_FORMAT, "%s: '%s' is missing or has the wrong size", path, key);
        peft_st_read_f32(st, e, q->nested_absmax, q->n_nested);
        if (!PEFT__Q4_PIECE(".nested_quant_map", PEFT_DT_F32, 1024) ||
            memcmp(st->data + e->offset, peft_dynamic_map(), 1024) != 0)
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: '%s' is missing or is not bitsandbytes' dynamic map",
                              path, key);
    } else {
        if (!PEFT__Q4_PIECE(".absmax", PEFT_DT_F32, 4 * q->n_blocks))
            return peft__fail(PEFT_ERR_FORMAT, "%s: '%s' is missing or has the wrong size", path, key);
        q->absmax = (float *)PEFT_MALLOC(sizeof(float) * (size_t)q->n_blocks);
        if (!q->absmax) return peft__fail(PEFT_ERR_NOMEM, "no memory");
        peft_st_read_f32(st, e, q->absmax, q->n_blocks);
    }
    snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__%s", name, peft__q4_name(q->type));
    e = peft_st_find(st, key);
    if (!e || e->dtype != PEFT_DT_U8) return peft__fail(PEFT_ERR_FORMAT, "%s: '%s' is missing", path, key);
    peft_json *js;
    peft_status s = peft_json_parse(&js, (const char *)st->data + e->offset, e->nbytes, key);
    if (s != PEFT_OK) return s;
    const peft_json *shape = peft_json_get(js, "shape"), *bs = peft_json_get(js, "blocksize"),
                    *off = peft_json_get(js, "nested_offset");
    if (!shape || shape->n_children != 2 || shape->child->number != (double)S->w->shape[0] ||
        shape->child->next->number != (double)S->w->shape[1] || !bs || bs->number != 64)
        s = peft__fail(PEFT_ERR_SHAPE,
                       "%s: quant state of '%s' disagrees with config.json (shape or blocksize 64)", path,
                       name);
    else if (q->double_quant && (!off || off->type != PEFT_JSON_NUMBER))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: quant state of '%s' has no nested_offset", path, name);
    else if (q->double_quant) q->offset = (float)off->number;
    peft_json_free(js);
    if (s != PEFT_OK) return s;
    PEFT_FREE(S->w->data);
    S->w->data = NULL;
#undef PEFT__Q4_PIECE
    return PEFT_OK;
}

PEFTDEF peft_status peft_model_save(const peft_model *m, const char *dir) {
    char path[1024];
    if (m->cfg.q4) return peft_model_save_quantized(m, dir);
    if (peft__model_qm(m))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: %s is stored in ggml %s blocks (GGUF); "
                          "peft_model_dequantize first to save a float model", dir, peft__model_qm_name(m),
                          peft_ggml_type_name(peft__model_qm(m)->type));
    peft_status s = peft__mkdir(dir);
    if (s != PEFT_OK) return s;
    peft__sb b = { 0, 0, 0, 0 };
    peft__config_json(&b, &m->cfg);
    if (b.oom) {
        PEFT_FREE(b.s);
        return peft__fail(PEFT_ERR_NOMEM, "no memory");
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    s = peft_write_file_atomic(path, b.s, b.n);
    PEFT_FREE(b.s);
    if (s != PEFT_OK) return s;
    peft_st_write_item *items = (peft_st_write_item *)peft__calloc((size_t)m->n_params * sizeof *items);
    if (!items) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    for (int i = 0; i < m->n_params; i++) {
        const peft_tensor *p = m->params[i];
        items[i].name = p->name;
        items[i].dtype = PEFT_DT_F32;
        items[i].ndim = p->ndim;
        memcpy(items[i].shape, p->shape, sizeof p->shape);
        items[i].data = p->data;
    }
    const char *meta[2] = { "format", "pt" };
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    s = peft_st_write(path, items, m->n_params, meta, 1);
    PEFT_FREE(items);
    return s;
}

/* ---- adapter folders ---------------------------------------------------------------
   adapter_config.json + adapter_model.safetensors (F32, {"format": "pt"}).
   LoRA, and LLaMA-Adapter V1 with PEFT's gate, are written exactly as PEFT
   writes them (peft_type LORA / ADAPTION_PROMPT) so that PEFT, and through
   it llama.cpp's converter, load them. The methods PEFT does not have are
   written in the same layout with their own peft_type and keys. */
static const char *peft__adapter_type(const peft_method *m) {
    const peft_method_def *d = peft_method_get(m->kind);
    if (m->kind == PEFT_ADAPTER_V1 && m->adapter_peft_gate) return "ADAPTION_PROMPT";
    return d ? d->peft_type : NULL;
}

/* The keys of a method without a layout of its own: each of its settings, as its get hook writes it. */
static void peft__generic_config_json(peft__sb *b, const peft_model *m) {
    const peft_method_def *d = peft_method_get(m->method.kind);
    char val[1024];
    for (int g = 0; d->get && g < 3; g++)
        for (const peft_method_key *k = d->keys[g]; k && k->key; k++) {
            if (!d->get(&m->method, k->key, val, sizeof val)) continue;
            peft__sbf(b, ",\n  ");
            peft__sb_jstr(b, k->key);
            peft__sbf(b, ": %s", val);
        }
    peft__sbf(b, ",\n  \"library\": \"peft.h\"");
}

static void peft__adapter_config_json(peft__sb *b, const peft_model *m) {
    const peft_method *x = &m->method;
    const char *base = m->path[0] ? m->path : "";
    const peft_method_def *d = peft_method_get(x->kind);
    const char *type = peft__adapter_type(x);           /* peft_adapter_save checked it is set */
    peft__sbf(b,
              "{\n  \"peft_type\": \"%s\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": ",
              type ? type : "");
    peft__sb_jstr(b, base);
    peft__sbf(b, ",\n  \"inference_mode\": true,\n  \"revision\": null");
    if (d->config_write)
        d->config_write(b, m);
    else
        peft__generic_config_json(b, m);
    peft__sbf(b, "\n}\n");
}

/* LoRA's keys as PEFT's LoraConfig writes them. */
static void peft__lora_config_json(peft__sb *b, const peft_model *m) {
    const peft_method *x = &m->method;
    {
        peft__sbf(b,
                  ",\n  \"r\": %d,\n  \"lora_alpha\": %.9g,\n  \"lora_dropout\": %.9g,\n  "
                  "\"target_modules\": [",
                  x->lora_r, x->lora_alpha, x->lora_dropout);
        int first = 1, custom = peft__lora_custom(x);
        for (int s = 0; s < PEFT_N_SITES && !custom; s++)
            if (x->lora_targets & (1u << s)) {
                peft__sbf(b, "%s\"%s\"", first ? "" : ", ", peft__site_names[s]);
                first = 0;
            }
        /* any subset of sites: full module names, which PEFT matches by equality */
        for (int pass = 0; pass < 3 && custom; pass++) {
            if (pass == 1) peft__sbf(b, "],\n  \"rank_pattern\": {");
            if (pass == 2) peft__sbf(b, "},\n  \"alpha_pattern\": {");
            first = 1;
            for (int l = 0; l < m->cfg.n_layers; l++)
                for (int s = 0; s < PEFT_N_SITES; s++) {
                    int r;
                    float alpha;
                    if (!peft__lora_site(x, l, s, &r, &alpha) || (pass == 1 && r == x->lora_r) ||
                        (pass == 2 && alpha == x->lora_alpha))
                        continue;
                    peft__sbf(b, "%s\"model.layers.%d.%s.%s\"", first ? "" : ", ", l, peft__site_module(s),
                              peft__site_names[s]);
                    if (pass == 1) peft__sbf(b, ": %d", r);
                    if (pass == 2) peft__sbf(b, ": %.9g", alpha);
                    first = 0;
                }
        }
        peft__sbf(b,
                  "%s,\n  \"bias\": \"none\",\n  \"use_rslora\": %s,\n  \"fan_in_fan_out\": false,\n  "
                  "\"use_dora\": false,\n"
                  "  \"init_lora_weights\": %s,\n  \"lora_bias\": %s,\n  \"modules_to_save\": ",
                  custom ? "}" : "]", x->lora_rslora ? "true" : "false",
                  x->lora_init_gaussian ? "\"gaussian\"" : "true", x->lora_bias ? "true" : "false");
        if (x->moe_router_full)         /* LLaMA-4: the router tuned (see "PEFT on MoE sites") */
            peft__sbf(b, "[\"router\"%s%s]", x->modules_to_save & PEFT_SAVE_EMBED ? ", \"embed_tokens\"" : "",
                      x->modules_to_save & PEFT_SAVE_LM_HEAD ? ", \"lm_head\"" : "");
        else if (!x->modules_to_save)
            peft__sbf(b, "null");
        else
            peft__sbf(b, "[%s%s%s]", x->modules_to_save & PEFT_SAVE_EMBED ? "\"embed_tokens\"" : "",
                      x->modules_to_save == (PEFT_SAVE_EMBED | PEFT_SAVE_LM_HEAD) ? ", " : "",
                      x->modules_to_save & PEFT_SAVE_LM_HEAD ? "\"lm_head\"" : "");
        if (x->moe_lora) {     /* LLaMA-4: gate_up first, so that its keys are the ones under base_layer */
            static const char *const tp[3] = {"feed_forward.experts.gate_up_proj",
                                              "feed_forward.experts.down_proj", "feed_forward.router.weight"};
            static const unsigned bit[3] = { PEFT_MOE_GATE_UP, PEFT_MOE_DOWN, PEFT_MOE_ROUTER };
            peft__sbf(b, ",\n  \"target_parameters\": [");
            for (int i = 0, n = 0; i < 3; i++)
                if (x->moe_lora & bit[i]) peft__sbf(b, "%s\"%s\"", n++ ? ", " : "", tp[i]);
            peft__sbf(b, "]");
        }
        peft__sbf(b, ",\n  \"trainable_token_indices\": ");
        if (!x->n_trainable_tokens) peft__sbf(b, "null");
        for (int i = 0; i < x->n_trainable_tokens; i++)
            peft__sbf(b, "%s%d%s", i ? ", " : "[", x->trainable_tokens[i],
                      i + 1 == x->n_trainable_tokens ? "]" : "");
        if (!custom) peft__sbf(b, ",\n  \"rank_pattern\": {},\n  \"alpha_pattern\": {}");
        peft__sbf(b, ",\n  \"layers_to_transform\": ");
        int any = 0;
        for (int l = 0; l < PEFT_MAX_LAYERS; l++) any |= x->lora_layers[l];
        if (!any || custom)
            peft__sbf(b, "null");
        else {
            peft__sbf(b, "[");
            first = 1;
            for (int l = 0; l < m->cfg.n_layers; l++)
                if (x->lora_layers[l]) {
                    peft__sbf(b, "%s%d", first ? "" : ", ", l);
                    first = 0;
                }
            peft__sbf(b, "]");
        }
    }
}

/* LLaMA-Adapter V1/V2 and Excitor: PEFT's AdaptionPrompt keys (V1 with PEFT's gate), or their own. */
static void peft__prompts_config_json(peft__sb *b, const peft_model *m) {
    const peft_method *x = &m->method;
    {
        int L = peft__top_layers(&m->cfg, x->kind == PEFT_EXCITOR ? x->excitor_layers : x->adapter_layers);
        if (x->kind == PEFT_EXCITOR)
            peft__sbf(b, ",\n  \"excitor_len\": %d,\n  \"excitor_rank\": %d,\n  \"excitor_layers\": %d",
                      x->excitor_len, x->excitor_rank, L);
        else {
            peft__sbf(b,
                      ",\n  \"adapter_len\": %d,\n  \"adapter_layers\": %d,\n  \"target_modules\": "
                      "\"self_attn\"",
                      x->adapter_len, L);
            if (x->kind == PEFT_ADAPTER_V2)
                peft__sbf(b, ",\n  \"adapter_gate\": \"%s\",\n  \"fusion_layers\": %d,\n  \"fusion_dim\": %d",
                          x->adapter_peft_gate ? "peft" : "head", x->fusion_layers, x->fusion_dim);
        }
        if (x->kind != PEFT_ADAPTER_V1 || !x->adapter_peft_gate) peft__sbf(b, ",\n  \"library\": \"peft.h\"");
    }
}

/* What an adapter file holds: the method's tensors, then base tensors the
   method made trainable (V2's norms), prefixed as PEFT prefixes them. */
static int peft__adapter_tensors(const peft_model *m, peft_tensor **list, char **names) {
    int n = 0;
    for (int i = 0; i < m->n_extra; i++) {
        list[n] = m->extra[i];
        names[n++] = NULL;
    }
    for (int i = 0; i < m->n_params; i++) {
        if (!m->params[i]->requires_grad) continue;
        size_t len = strlen(m->params[i]->name) + 20;
        names[n] = (char *)PEFT_MALLOC(len);
        if (names[n]) snprintf(names[n], len, "base_model.model.%s", m->params[i]->name);
        list[n++] = m->params[i];
    }
    return n;
}

PEFTDEF peft_status peft_adapter_save(const peft_model *m, const char *dir) {
    if (!peft__adapter_type(&m->method))
        return peft__fail(PEFT_ERR_ARG,
                          "%s: nothing to save as an adapter for method %s (save the model instead)", dir,
                          peft_method_name(m->method.kind));
    if (m->lora_merged)
        return peft__fail(PEFT_ERR_ARG, "%s: the LoRA adapter is merged; unmerge before saving it", dir);
    peft_status s = peft__mkdir(dir);
    if (s != PEFT_OK) return s;
    int cap = m->n_extra + m->n_params;
    peft_tensor **list = (peft_tensor **)peft__calloc((size_t)cap * sizeof *list);
    char **names = (char **)peft__calloc((size_t)cap * sizeof *names);
    peft_st_write_item *items = (peft_st_write_item *)peft__calloc((size_t)cap * sizeof *items);
    peft__sb b = { 0, 0, 0, 0 };
    char path[1024];
    if (!list || !names || !items) {
        s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        goto done;
    }
    int n = peft__adapter_tensors(m, list, names);
    for (int i = 0; i < n; i++) {
        items[i].name = names[i] ? names[i] : list[i]->name;
        items[i].dtype = PEFT_DT_F32;
        items[i].ndim = list[i]->ndim;
        memcpy(items[i].shape, list[i]->shape, sizeof list[i]->shape);
        items[i].data = list[i]->data;
    }
    const char *meta[2] = { "format", "pt" };
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    s = peft_st_write(path, items, n, meta, 1);
    if (s != PEFT_OK) goto done;
    peft__adapter_config_json(&b, m);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    s = b.oom ? peft__fail(PEFT_ERR_NOMEM, "no memory") : peft_write_file_atomic(path, b.s, b.n);
done:
    if (names) for (int i = 0; i < cap; i++) PEFT_FREE(names[i]);
    PEFT_FREE(names);
    PEFT_FREE(list);
    PEFT_FREE(items);
    PEFT_FREE(b.s);
    return s;
}

/* ---- adapter_config.json of a LoRA: PEFT 0.21's keys -------------------------------
   Every key is either applied or refused naming it; a key PEFT 0.21 does not
   write is refused too. Modules are selected as PEFT's
   check_target_module_exists selects them, over the module names of
   transformers' LlamaForCausalLM; any selected module that is not a block
   linear is refused (PEFT would adapt it, peft.h cannot). */

/* The k-th name of LlamaForCausalLM.named_modules() (the root left out); *layer
   and *site name the block linear, or are -1. 0 past the end. */
static int peft__llama_module(const peft_config *c, int k, char *buf, size_t n, int *layer, int *site) {
    static const char *const head[3] = { "model", "model.embed_tokens", "model.layers" };
    static const char *const tail[3] = { "model.norm", "model.rotary_emb", "lm_head" };
    static const char *const in_layer[13] = { "",
                                              ".self_attn",
                                              ".self_attn.q_proj",
                                              ".self_attn.k_proj",
                                              ".self_attn.v_proj",
                                              ".self_attn.o_proj",
                                              ".mlp",
                                              ".mlp.gate_proj",
                                              ".mlp.up_proj",
                                              ".mlp.down_proj",
                                              ".mlp.act_fn",
                                              ".input_layernorm",
                                              ".post_attention_layernorm" };
    static const int site_of[13] = { -1,        -1,      PEFT_Q,    PEFT_K, PEFT_V, PEFT_O, -1,
                                     PEFT_GATE, PEFT_UP, PEFT_DOWN, -1,     -1,     -1 };
    *layer = *site = -1;
    if (k < 3) {
        snprintf(buf, n, "%s", head[k]);
        return 1;
    }
    k -= 3;
    if (k < c->n_layers * 13) {
        snprintf(buf, n, "model.layers.%d%s", k / 13, in_layer[k % 13]);
        *layer = k / 13;
        *site = site_of[k % 13];
        return 1;
    }
    k -= c->n_layers * 13;
    if (k < 3) {
        snprintf(buf, n, "%s", tail[k]);
        return 1;
    }
    return 0;
}

/* Whether name matches pre + pat + post: re.fullmatch, or re.match (a prefix
   match) when prefix is set. A pattern the matcher cannot run fails, naming the
   file, the key and the pattern. */
static peft_status peft__rx_test(peft__rx *rx, const char *path, const char *key, const char *pre,
                                 const char *pat, const char *post, int prefix, const char *name, int *hit) {
    char full[2200];
    if (strlen(pat) > 2000) return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: %s: pattern too long", path, key);
    snprintf(full, sizeof full, "%s%s%s%s%s", prefix ? "(?:" : "", pre, pat, post, prefix ? ").*" : "");
    if (!peft__rx_build(rx, full))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: %s: pattern '%s' is not supported by peft.h's matcher (%s)", path, key, pat,
                          rx->err);
    *hit = peft__rx_fullmatch(rx, name);
    return PEFT_OK;
}

PEFTDEF int peft_regex_fullmatch(const char *pattern, const char *s) {
    peft__rx *rx = (peft__rx *)PEFT_MALLOC(sizeof *rx);
    if (!rx) return peft__fail(PEFT_ERR_NOMEM, "no memory"), -1;
    int r = peft__rx_build(rx, pattern)
                ? peft__rx_fullmatch(rx, s)
                : (peft__fail(PEFT_ERR_UNSUPPORTED, "pattern '%s': %s", pattern, rx->err), -1);
    PEFT_FREE(rx);
    return r;
}

/* A list of names matches as PEFT's lists do: name == entry or name ends in "." + entry. */
static int peft__name_in_list(const peft_json *list, const char *name) {
    size_t n = strlen(name);
    for (const peft_json *x = list->child; x; x = x->next) {
        size_t k = strlen(x->string);
        if (!strcmp(name, x->string) || (n > k && name[n - k - 1] == '.' && !strcmp(name + n - k, x->string)))
            return 1;
    }
    return 0;
}

static int peft__json_is_strings(const peft_json *e) {
    if (e->type != PEFT_JSON_ARRAY) return 0;
    for (const peft_json *x = e->child; x; x = x->next)
        if (x->type != PEFT_JSON_STRING) return 0;
    return 1;
}

typedef struct {
    const peft_json *targets, *exclude, *layers, *layers_pattern, *rank_pattern, *alpha_pattern, *save;
} peft__lora_keys;

/* PEFT's module selection, rank_pattern and alpha_pattern → out's per-site table. */
static peft_status peft__lora_select(const peft__lora_keys *k, const char *path, const peft_config *c,
                                     peft_method *out, peft__rx *rx) {
    char name[160];
    int layer, site, hit, any = 0;
    peft_status s = PEFT_OK;
    memset(out->lora_site_on, 0, sizeof out->lora_site_on);
    memset(out->lora_site_r, 0, sizeof out->lora_site_r);
    if (c->n_layers > PEFT_MAX_LAYERS)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: more than %d layers", path, PEFT_MAX_LAYERS);
    int all_linear = k->targets->type == PEFT_JSON_STRING && !strcmp(k->targets->string, "all-linear");
    if (k->targets->type == PEFT_JSON_STRING && strlen(k->targets->string) == 10) {
        char low[11];
        for (int i = 0; i < 10; i++) low[i] = (char)tolower((unsigned char)k->targets->string[i]);
        low[10] = 0;
        all_linear = !strcmp(low, "all-linear"); /* PEFT compares it lower-cased */
    }
    for (int idx = 0; s == PEFT_OK && peft__llama_module(c, idx, name, sizeof name, &layer, &site); idx++) {
        /* exclude_modules: a regex (fullmatch) or a list */
        if (k->exclude) {
            if (k->exclude->type == PEFT_JSON_STRING) {
                if ((s = peft__rx_test(rx, path, "exclude_modules", "", k->exclude->string, "", 0, name,
                                       &hit)) != PEFT_OK)
                    break;
                if (hit) continue;
            } else if (peft__name_in_list(k->exclude, name))
                continue;
        }
        /* modules_to_save are never adapted: re.match(rf"(^|.*\.){m}($|\..*)", name) */
        hit = 0;
        for (const peft_json *x = k->save ? k->save->child : NULL; x && !hit && s == PEFT_OK; x = x->next)
            s = peft__rx_test(rx, path, "modules_to_save", "(^|.*\\.)", x->string, "($|\\..*)", 1, name,
                              &hit);
        if (s != PEFT_OK) break;
        if (hit) continue;
        if (all_linear)
            hit = site >= 0; /* every nn.Linear but the output layer */
        else if (k->targets->type == PEFT_JSON_STRING) {
            if ((s = peft__rx_test(rx, path, "target_modules", "", k->targets->string, "", 0, name, &hit)) !=
                PEFT_OK)
                break;
        } else {
            hit = peft__name_in_list(k->targets, name);
            if (hit && k->layers) { /* layers_to_transform: the index after layers_pattern */
                char num[16];
                int in = 0;
                snprintf(num, sizeof num, "\\.%d\\.", layer);
                hit = 0;
                if (layer < 0) {
                } else if (!k->layers_pattern) {
                    s = peft__rx_test(rx, path, "layers_pattern", ".*?\\.[^.]*", num, "", 1, name, &hit);
                } else if (k->layers_pattern->type == PEFT_JSON_STRING) {
                    s = peft__rx_test(rx, path, "layers_pattern", "(?:^|.*?\\.)", k->layers_pattern->string,
                                      num, 1, name, &hit);
                } else {
                    for (const peft_json *x = k->layers_pattern->child; x && !hit && s == PEFT_OK;
                         x = x->next)
                        s = peft__rx_test(rx, path, "layers_pattern", "(?:^|.*?\\.)", x->string, num, 1, name,
                                          &hit);
                }
                if (s != PEFT_OK) break;
                if (k->layers->type == PEFT_JSON_NUMBER) in = (double)layer == k->layers->number;
                for (const peft_json *x = k->layers->child; x && !in; x = x->next)
                    in = (double)layer == x->number;
                hit = hit && in;
            }
        }
        if (!hit) continue;
        if (site < 0)
            return peft__fail(
                PEFT_ERR_CONFIG,
                "%s: target_modules selects module '%s', which is not a LLaMA block linear "
                "(q_proj k_proj v_proj o_proj gate_proj up_proj down_proj); peft.h adapts only those",
                path, name);
        /* rank_pattern / alpha_pattern: the first key with re.match(rf"(.*\.)?({key})$", name) */
        int r = out->lora_r;
        float alpha = out->lora_alpha;
        for (int pass = 0; pass < 2 && s == PEFT_OK; pass++) {
            const peft_json *pat = pass ? k->alpha_pattern : k->rank_pattern;
            hit = 0;
            for (const peft_json *x = pat ? pat->child : NULL; x && !hit; x = x->next) {
                if ((s = peft__rx_test(rx, path, pass ? "alpha_pattern" : "rank_pattern", "(.*\\.)?(", x->key,
                                       ")$", 1, name, &hit)) != PEFT_OK)
                    break;
                if (!hit) continue;
                if (pass)
                    alpha = (float)x->number;
                else
                    r = (int)x->number;
            }
        }
        if (s != PEFT_OK) break;
        out->lora_site_on[layer] |= (uint8_t)(1u << site);
        out->lora_site_r[layer][site] = (uint16_t)r;
        out->lora_site_alpha[layer][site] = alpha;
        any = 1;
    }
    if (s != PEFT_OK) return s;
    if (!any)
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: target_modules (with exclude_modules, layers_to_transform) selects no "
                          "module of this model",
                          path);
    /* a full layers x sites grid of one rank and alpha is kept as targets + layers */
    unsigned targets = 0;
    int grid = 1, all_layers = 1;
    for (int l = 0; l < c->n_layers; l++) targets |= out->lora_site_on[l];
    for (int l = 0; l < c->n_layers; l++) {
        grid &= !out->lora_site_on[l] || out->lora_site_on[l] == targets;
        all_layers &= out->lora_site_on[l] != 0;
        for (int st = 0; st < PEFT_N_SITES; st++)
            if (out->lora_site_on[l] >> st & 1)
                grid &=
                    out->lora_site_r[l][st] == out->lora_r && out->lora_site_alpha[l][st] == out->lora_alpha;
    }
    out->lora_targets = targets;
    memset(out->lora_layers, 0, sizeof out->lora_layers);
    if (grid) {
        for (int l = 0; l < c->n_layers && !all_layers; l++) out->lora_layers[l] = out->lora_site_on[l] != 0;
        memset(out->lora_site_on, 0, sizeof out->lora_site_on);
        memset(out->lora_site_r, 0, sizeof out->lora_site_r);
    }
    return PEFT_OK;
}

static peft_status peft__lora_from_json(const peft_json *j, const char *path, const peft_config *c,
                                        peft_method *out) {
    static const char *const null_only[] = {
        "alora_invocation_tokens", "arrow_config",   "corda_config",    "kasa_config",
        "layer_replication",       "lora_ga_config", "megatron_config", "monteclora_config",
        "velora_config",           "use_bdlora"
    };
    static const char *const false_only[] = { "fan_in_fan_out", "use_dora", "use_qalora",
                                              "ensure_weight_tying" };
    peft__lora_keys k;
    memset(&k, 0, sizeof k);
    const peft_json *init = NULL, *eva = NULL, *tokens = NULL;
    peft_status s = PEFT_OK;
    for (const peft_json *e = j->child; e && s == PEFT_OK; e = e->next) {
        const char *key = e->key;
        int t = e->type, known = 0, bad = 0;
        int is_null = t == PEFT_JSON_NULL, is_bool = t == PEFT_JSON_BOOL, on = is_bool && e->number != 0;
        char num[64];
        snprintf(num, sizeof num, "%.17g", e->number);
        for (size_t i = 0; i < sizeof null_only / sizeof *null_only; i++)
            if (!strcmp(key, null_only[i])) {
                known = 1;
                if (!is_null)
                    s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: %s is set; peft.h supports only null", path,
                                   key);
            }
        for (size_t i = 0; i < sizeof false_only / sizeof *false_only; i++)
            if (!strcmp(key, false_only[i])) {
                known = 1;
                if (on)
                    s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: %s=true is not supported", path, key);
                else if (!is_bool && !is_null)
                    bad = 1;
            }
        if (known) {
        } else if (!strcmp(key, "peft_type")) {
        } else if (!strcmp(key, "r")) {
            if (t != PEFT_JSON_NUMBER || e->number > 65535)
                bad = 1;
            else
                s = peft_method_set(out, "lora_r", num);
        } else if (!strcmp(key, "lora_alpha") || !strcmp(key, "lora_dropout")) {
            if (t != PEFT_JSON_NUMBER)
                bad = 1;
            else
                s = peft_method_set(out, key, num);
        } else if (!strcmp(key, "use_rslora") || !strcmp(key, "lora_bias") ||
                   !strcmp(key, "inference_mode")) {
            if (!is_bool)
                bad = 1; /* inference_mode: whether PEFT trains it; peft.h trains on request */
            else if (key[0] == 'u')
                out->lora_rslora = on;
            else if (key[0] == 'l')
                out->lora_bias = on;
        } else if (!strcmp(key, "target_modules")) {
            if (t != PEFT_JSON_STRING && !peft__json_is_strings(e)) bad = 1;
            k.targets = e;
        } else if (!strcmp(key, "exclude_modules")) {
            if (!is_null && t != PEFT_JSON_STRING && !peft__json_is_strings(e)) bad = 1;
            k.exclude =
                is_null || (t == PEFT_JSON_ARRAY && !e->n_children) || (t == PEFT_JSON_STRING && !*e->string)
                    ? NULL
                    : e;
        } else if (!strcmp(key, "layers_to_transform")) {
            if (t == PEFT_JSON_ARRAY)
                for (const peft_json *x = e->child; x; x = x->next) bad |= x->type != PEFT_JSON_NUMBER;
            else if (!is_null && t != PEFT_JSON_NUMBER)
                bad = 1;
            k.layers = is_null || (t == PEFT_JSON_ARRAY && !e->n_children) ? NULL : e;
        } else if (!strcmp(key, "layers_pattern")) {
            if (!is_null && t != PEFT_JSON_STRING && !peft__json_is_strings(e)) bad = 1;
            k.layers_pattern =
                is_null || (t == PEFT_JSON_ARRAY && !e->n_children) || (t == PEFT_JSON_STRING && !*e->string)
                    ? NULL
                    : e;
        } else if (!strcmp(key, "rank_pattern") || !strcmp(key, "alpha_pattern")) {
            if (!is_null && t != PEFT_JSON_OBJECT) bad = 1;
            for (const peft_json *x = is_null ? NULL : e->child; x && !bad; x = x->next)
                if (x->type != PEFT_JSON_NUMBER || x->number < 0 ||
                    (key[0] == 'r' &&
                     (x->number < 1 || x->number > 65535 || x->number != floor(x->number))) ||
                    (key[0] == 'a' && x->number == 0))
                    s = peft__fail(PEFT_ERR_CONFIG, "%s: %s: '%s' must map to a %s (got %g)", path, key,
                                   x->key, key[0] == 'r' ? "rank from 1 to 65535" : "non-zero alpha",
                                   x->number);
            if (key[0] == 'r')
                k.rank_pattern = is_null ? NULL : e;
            else
                k.alpha_pattern = is_null ? NULL : e;
        } else if (!strcmp(key, "modules_to_save")) {
            if (!is_null && !peft__json_is_strings(e)) bad = 1;
            k.save = is_null || !e->n_children ? NULL : e;
        } else if (!strcmp(key, "trainable_token_indices")) {
            tokens = is_null ? NULL : e;
        } else if (!strcmp(key, "init_lora_weights")) {
            init = e;
        } else if (!strcmp(key, "eva_config")) {
            eva = is_null ? NULL : e;
        } else if (!strcmp(key, "bias")) {
            if (t != PEFT_JSON_STRING)
                bad = 1;
            else if (strcmp(e->string, "none") != 0)
                s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: bias='%s' is not supported (only 'none')", path,
                               e->string);
        } else if (!strcmp(key, "loftq_config")) {
            if (!is_null && (t != PEFT_JSON_OBJECT || e->n_children))
                s = peft__fail(PEFT_ERR_UNSUPPORTED,
                               "%s: loftq_config is set (LoftQ init); peft.h supports only {}", path);
        } else if (!strcmp(key, "target_parameters")) {
            if (!is_null && (t != PEFT_JSON_ARRAY || e->n_children))
                s = peft__fail(PEFT_ERR_UNSUPPORTED,
                               "%s: target_parameters is set; peft.h supports only null", path);
        } else if (!strcmp(key, "task_type")) {
            if (!is_null && (t != PEFT_JSON_STRING || strcmp(e->string, "CAUSAL_LM") != 0))
                s = peft__fail(PEFT_ERR_UNSUPPORTED,
                               "%s: task_type must be CAUSAL_LM (or null) for a LLaMA causal LM", path);
        } else if (!strcmp(key, "base_model_name_or_path") || !strcmp(key, "revision") ||
                   !strcmp(key, "peft_version") || !strcmp(key, "megatron_core")) {
            if (!is_null && t != PEFT_JSON_STRING)
                bad = 1; /* metadata: the base is the model it is loaded into */
        } else if (!strcmp(key, "auto_mapping")) {
            const char *cls = t == PEFT_JSON_OBJECT ? peft__json_str(e, "base_model_class") : NULL;
            if (!is_null && t != PEFT_JSON_OBJECT)
                bad = 1;
            else if (cls && strncmp(cls, "Llama", 5) != 0)
                s = peft__fail(PEFT_ERR_UNSUPPORTED,
                               "%s: auto_mapping names base_model_class '%s'; peft.h loads LLaMA only", path,
                               cls);
        } else if (!strcmp(key, "qalora_group_size")) {
            if (t != PEFT_JSON_NUMBER || e->number < 1)
                bad = 1; /* used only with use_qalora, which is refused */
        } else {
            s = peft__fail(PEFT_ERR_UNSUPPORTED,
                           "%s: key '%s' is not a LoRA setting of PEFT 0.21 that peft.h knows; "
                           "refusing it rather than ignoring it",
                           path, key);
        }
        if (bad && s == PEFT_OK)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: %s has a value of the wrong type", path, key);
        if (s != PEFT_OK && !strstr(peft_last_error(), path)) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", peft_last_error());
            s = peft__fail(s, "%s: %s", path, msg);
        }
    }
    if (s != PEFT_OK) return s;
    if (!k.targets || k.targets->type == PEFT_JSON_NULL)
        return peft__fail(PEFT_ERR_FORMAT, "%s: target_modules is missing", path);
    /* init_lora_weights: how new weights start; loading replaces them, except for
       the inits that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, ...) */
    if (init && !(init->type == PEFT_JSON_BOOL ||
                  (init->type == PEFT_JSON_STRING &&
                   (!strcmp(init->string, "gaussian") || !strcmp(init->string, "eva")))))
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: init_lora_weights=%s is not supported (true, false, \"gaussian\" or "
                          "\"eva\")",
                          path, init->type == PEFT_JSON_STRING ? init->string : "(not a string)");
    out->lora_init_gaussian = init && init->type == PEFT_JSON_STRING && !strcmp(init->string, "gaussian");
    if (eva && !(init && init->type == PEFT_JSON_STRING && !strcmp(init->string, "eva")))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: eva_config is set but init_lora_weights is not \"eva\"",
                          path);
    if (k.targets->type == PEFT_JSON_STRING && (k.layers || k.layers_pattern))
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: layers_to_transform/layers_pattern cannot be used when target_modules is a "
                          "string (PEFT refuses it too)",
                          path);
    if (k.layers_pattern && !k.layers)
        return peft__fail(PEFT_ERR_CONFIG,
                          "%s: layers_pattern needs layers_to_transform (PEFT refuses it too)", path);
    /* modules_to_save: PEFT wraps every module whose name ends with an entry */
    out->modules_to_save = 0;
    for (const peft_json *x = k.save ? k.save->child : NULL; x; x = x->next) {
        char name[160];
        int layer, site, found = 0;
        for (int idx = 0; peft__llama_module(c, idx, name, sizeof name, &layer, &site); idx++) {
            size_t n = strlen(name), l = strlen(x->string);
            if (n < l || strcmp(name + n - l, x->string) != 0) continue;
            found = 1;
            if (!strcmp(name, "lm_head"))
                out->modules_to_save |= PEFT_SAVE_LM_HEAD;
            else if (!strcmp(name, "model.embed_tokens"))
                out->modules_to_save |= PEFT_SAVE_EMBED;
            else
                return peft__fail(PEFT_ERR_UNSUPPORTED,
                                  "%s: modules_to_save: '%s' selects module '%s'; peft.h saves only "
                                  "lm_head and embed_tokens",
                                  path, x->string, name);
        }
        if (!found)
            return peft__fail(PEFT_ERR_CONFIG, "%s: modules_to_save: '%s' names no module of this model",
                              path, x->string);
    }
    /* trainable_token_indices: a list (the input embedding) or {"embed_tokens": list} */
    out->n_trainable_tokens = 0;
    if (tokens) {
        const peft_json *list = tokens;
        if (tokens->type == PEFT_JSON_OBJECT) {
            if (tokens->n_children != 1 || !tokens->child->key ||
                (strcmp(tokens->child->key, "embed_tokens") &&
                 strcmp(tokens->child->key, "model.embed_tokens")))
                return peft__fail(PEFT_ERR_UNSUPPORTED,
                                  "%s: trainable_token_indices: only embed_tokens is supported", path);
            list = tokens->child;
        }
        if (list->type != PEFT_JSON_ARRAY)
            return peft__fail(PEFT_ERR_FORMAT, "%s: trainable_token_indices is not a list", path);
        if (list->n_children > PEFT_MAX_TRAINABLE_TOKENS)
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: trainable_token_indices: more than %d tokens", path,
                              PEFT_MAX_TRAINABLE_TOKENS);
        if (out->modules_to_save & PEFT_SAVE_EMBED)
            return peft__fail(PEFT_ERR_CONFIG,
                              "%s: embed_tokens is both in modules_to_save and trainable_token_indices "
                              "(PEFT refuses it too)",
                              path);
        for (const peft_json *x = list->child; x; x = x->next) {
            if (x->type != PEFT_JSON_NUMBER || x->number != floor(x->number) || x->number < 0 ||
                x->number >= c->vocab_size)
                return peft__fail(PEFT_ERR_CONFIG,
                                  "%s: trainable_token_indices: %g is not a token id below %d", path,
                                  x->number, c->vocab_size);
            for (int i = 0; i < out->n_trainable_tokens; i++)
                if (out->trainable_tokens[i] == (int)x->number)
                    return peft__fail(PEFT_ERR_CONFIG,
                                      "%s: trainable_token_indices: token %d is listed twice", path,
                                      (int)x->number);
            out->trainable_tokens[out->n_trainable_tokens++] = (int)x->number;
        }
    }
    peft__rx *rx = (peft__rx *)PEFT_MALLOC(sizeof *rx);
    if (!rx) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    s = peft__lora_select(&k, path, c, out, rx);
    PEFT_FREE(rx);
    return s;
}

/* adapter_config.json → method settings. PEFT's LoRA and AdaptionPrompt keys
   map onto this library's; settings PEFT has and this library lacks are
   refused by name rather than silently ignored. */
static peft_status peft__generic_from_json(const peft_json *j, const char *path, peft_method *out);
static peft_status peft__adapter_method(const peft_json *j, const char *path, const peft_config *c,
                                        peft_method *out) {
    const char *type = peft__json_str(j, "peft_type");
    if (!type) return peft__fail(PEFT_ERR_FORMAT, "%s: no peft_type", path);
    /* the first method that writes this peft_type (lora before qlora); PEFT's ADAPTION_PROMPT is V1 */
    int kind = !strcmp(type, "ADAPTION_PROMPT") ? PEFT_ADAPTER_V1 : -1;
    for (int k = 0; k < peft_method_count() && kind < 0; k++) {
        const char *t = peft_method_get((peft_method_kind)k)->peft_type;
        if (t && !strcmp(t, type)) kind = k;
    }
    if (kind < 0) return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: peft_type '%s' is not supported", path, type);
    const peft_method_def *d = peft_method_get((peft_method_kind)kind);
    *out = peft_method_defaults((peft_method_kind)kind);
    if (kind < PEFT_N_METHODS) out->lora_targets = 0;
    return d->config_read ? d->config_read(j, path, c, out) : peft__generic_from_json(j, path, out);
}

/* JSON scalar → the text peft_method_set takes; 0 for another type. */
static int peft__json_setting(const peft_json *e, char *val, size_t cap) {
    if (e->type == PEFT_JSON_NUMBER) snprintf(val, cap, "%.17g", e->number);
    else if (e->type == PEFT_JSON_BOOL) snprintf(val, cap, "%s", e->number != 0 ? "true" : "false");
    else if (e->type == PEFT_JSON_STRING) snprintf(val, cap, "%s", e->string);
    else return 0;
    return 1;
}

/* A registered method's keys: each one through peft_method_set, an unknown one refused by name. */
static peft_status peft__generic_from_json(const peft_json *j, const char *path, peft_method *out) {
    static const char *const common[] = { "peft_type", "task_type", "base_model_name_or_path",
                                          "inference_mode", "revision", "library" };
    for (const peft_json *e = j->child; e; e = e->next) {
        int skip = 0;
        for (size_t i = 0; i < sizeof common / sizeof *common; i++) skip |= !strcmp(e->key, common[i]);
        if (skip) continue;
        char val[1024];
        if (!peft__json_setting(e, val, sizeof val))
            return peft__fail(PEFT_ERR_FORMAT, "%s: %s must be a number, a boolean or a string", path,
                              e->key);
        if (peft_method_set(out, e->key, val) != PEFT_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", peft_last_error());
            return peft__fail(PEFT_ERR_CONFIG, "%s: %s", path, msg);
        }
    }
    return PEFT_OK;
}

/* LLaMA-Adapter V1/V2 and Excitor keys (PEFT's AdaptionPrompt ones included). */
static peft_status peft__prompts_from_json(const peft_json *j, const char *path, const peft_config *c,
                                           peft_method *out) {
    const char *type = peft__json_str(j, "peft_type");
    peft_method_kind kind = out->kind;
    if (type && !strcmp(type, "ADAPTION_PROMPT")) out->adapter_peft_gate = 1;
    peft_status s = PEFT_OK;
    for (const peft_json *e = j->child; e && s == PEFT_OK; e = e->next) {
        char val[16384];
        const char *key = e->key;
        if (e->type == PEFT_JSON_NUMBER) snprintf(val, sizeof val, "%.17g", e->number);
        else if (e->type == PEFT_JSON_BOOL)
            snprintf(val, sizeof val, "%s", e->number != 0 ? "true" : "false");
        else if (e->type == PEFT_JSON_STRING) snprintf(val, sizeof val, "%s", e->string);
        else if (e->type == PEFT_JSON_ARRAY) {          /* target_modules, layers_to_transform */
            val[0] = 0;
            for (const peft_json *x = e->child; x; x = x->next) {
                size_t L = strlen(val);
                if (x->type == PEFT_JSON_STRING)
                    snprintf(val + L, sizeof val - L, "%s%s", L ? "," : "", x->string);
                else if (x->type == PEFT_JSON_NUMBER && x->number == floor(x->number) &&
                         fabs(x->number) <= 1e6)
                    snprintf(val + L, sizeof val - L, "%s%d", L ? "," : "", (int)x->number);
                else if (x->type == PEFT_JSON_NUMBER)       /* range-checked before the cast */
                    s = peft__fail(PEFT_ERR_FORMAT, "%s: %s holds %.17g, not a layer number", path, key,
                                   x->number);
            }
        } else val[0] = 0;
        if (s != PEFT_OK) break;
        if (!strcmp(key, "adapter_len") || !strcmp(key, "adapter_layers") || !strcmp(key, "adapter_gate") ||
            !strcmp(key, "fusion_layers") || !strcmp(key, "fusion_dim") || !strcmp(key, "excitor_len") ||
            !strcmp(key, "excitor_rank") || !strcmp(key, "excitor_layers")) {
            s = peft_method_set(out, key, val);
        }
        if (s != PEFT_OK && !strstr(peft_last_error(), path)) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", peft_last_error());
            s = peft__fail(s, "%s: %s", path, msg);
        }
    }
    if (s == PEFT_OK) {
        int L = kind == PEFT_EXCITOR ? out->excitor_layers : out->adapter_layers;
        if (L > c->n_layers)
            s = peft__fail(PEFT_ERR_SHAPE, "%s: %d adapter layers but the model has %d", path, L,
                           c->n_layers);
    }
    return s;
}

/* PEFT's checkpoints leave the adapter name out of tensor keys, but a key that
   keeps it ("…lora_A.default.weight") is the model's own key, which PEFT 0.21
   loads as it is: accept the "default" adapter's keys the same way. */
static const peft_st_entry *peft__find_with_adapter_name(const peft_safetensors *st, const char *name) {
    char alt[600];
    const char *dot = strrchr(name, '.');
    if (!dot || strlen(name) + 10 > sizeof alt || !strstr(name, ".lora_")) return NULL;
    snprintf(alt, sizeof alt, "%.*s.default%s", (int)(dot - name), name, dot);
    return peft_st_find(st, alt);
}
static const char *peft__unused_tensor_hint(const char *name) {
    if (strstr(name, ".default.") || strstr(name, ".default"))
        return "an adapter name other than the one PEFT loads";
    if (strstr(name, "modules_to_save"))
        return "PEFT 0.21 stores modules_to_save copies as base_model.model.<module>.weight";
    return "a setting of adapter_config.json it belongs to is missing";
}

static peft_status peft__adapter_load(peft_model *m, const char *dir);
/* atomic as peft_attach: on any failure the model is as it was */
PEFTDEF peft_status peft_adapter_load(peft_model *m, const char *dir) {
    if (m->cfg.llama4)   /* the module names and target_parameters of LLaMA-4 adapters are not read yet */
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: loading adapters into a LLaMA-4 model is not supported yet "
                          "(peft_adapter_save writes them in PEFT's layout; PEFT loads them)",
                          dir);
    peft__snapshot sn;
    if (peft__snapshot_take(m, &sn) != PEFT_OK) return PEFT_ERR_NOMEM;
    peft_status s = peft__adapter_load(m, dir);
    peft__snapshot_end(m, &sn, s == PEFT_OK);
    return s;
}

static peft_status peft__adapter_load(peft_model *m, const char *dir) {
    char path[1024];
    peft_json *j;
    peft_method meth;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    peft_status s = peft_json_load(&j, path);
    if (s != PEFT_OK) return s;
    s = j->type == PEFT_JSON_OBJECT ? peft__adapter_method(j, path, &m->cfg, &meth)
                                    : peft__fail(PEFT_ERR_FORMAT, "%s: expected a JSON object", path);
    peft_json_free(j);
    if (s == PEFT_OK) s = peft_attach(m, &meth);
    if (s != PEFT_OK) return s;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    peft_safetensors st;
    s = peft_st_open(&st, path);
    if (s != PEFT_OK) return s;
    int cap = m->n_extra + m->n_params;
    peft_tensor **list = (peft_tensor **)peft__calloc((size_t)cap * sizeof *list);
    char **names = (char **)peft__calloc((size_t)cap * sizeof *names);
    int n = list && names ? peft__adapter_tensors(m, list, names) : 0;
    if (!list || !names) s = peft__fail(PEFT_ERR_NOMEM, "no memory");
    /* pass 0 checks every tensor, and that the file holds none that nothing
       reads; pass 1 reads them (and cannot fail): a bad file writes into no
       parameter, base ones (V2's norms) included */
    int used = 0;
    for (int pass = 0; pass < 2 && s == PEFT_OK; pass++) {
        for (int i = 0; i < n && s == PEFT_OK; i++) {
            const char *name = names[i] ? names[i] : list[i]->name;
            const peft_st_entry *e = peft_st_find(&st, name);
            if (!e) e = peft__find_with_adapter_name(&st, name);
            if (!e) {
                s = peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' is missing", path, name);
                break;
            }
            used += pass == 0;
            int64_t cnt = 1;
            for (int d = 0; d < e->ndim; d++) cnt *= e->shape[d];
            if (cnt != list[i]->n)
                s = peft__fail(PEFT_ERR_SHAPE, "%s: tensor '%s' has %lld elements, the model expects %lld "
                               "(wrong base model?)", path, name, (long long)cnt, (long long)list[i]->n);
            else if (pass == 1)
                s = peft_st_read_f32(&st, e, list[i]->data, list[i]->n);
            else if (e->dtype == PEFT_DT_COUNT || e->dtype == PEFT_DT_U8 || e->dtype == PEFT_DT_I8)
                s = peft__fail(PEFT_ERR_UNSUPPORTED,
                               "%s: tensor '%s' has a dtype that cannot be read as floats", path, name);
        }
        /* a tensor nothing reads would be silently dropped: refuse it by name */
        if (pass == 0 && s == PEFT_OK && used < st.n)
            for (int k = 0; k < st.n && s == PEFT_OK; k++) {
                int found = 0;
                for (int i = 0; i < n && !found; i++) {
                    const char *name = names[i] ? names[i] : list[i]->name;
                    const peft_st_entry *e = peft_st_find(&st, name);
                    found = (e ? e : peft__find_with_adapter_name(&st, name)) == &st.entries[k];
                }
                if (!found)
                    s = peft__fail(PEFT_ERR_UNSUPPORTED,
                                   "%s: tensor '%s' belongs to no part of the %s adapter peft.h loads (%s)",
                                   path, st.entries[k].name, peft_method_name(m->method.kind),
                                   peft__unused_tensor_hint(st.entries[k].name));
            }
    }
    if (s == PEFT_OK && m->tokens_table) peft__tokens_refresh(m, &m->method);
    if (names) for (int i = 0; i < cap; i++) PEFT_FREE(names[i]);
    PEFT_FREE(names);
    PEFT_FREE(list);
    peft_st_close(&st);
    return s;
}

/* ---- GGUF adapters for llama.cpp ----------------------------------------------------
   GGUF v3: magic, version, tensor count, key/value count; the key/values;
   tensor infos (name, dims fastest first, type, offset); then the data,
   each tensor aligned to 32 bytes. */
typedef struct { unsigned char *p; size_t n, cap; int failed; } peft__buf;

static void peft__bput(peft__buf *b, const void *d, size_t n) {
    if (b->failed) return;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 65536;
        while (nc < b->n + n) nc *= 2;
        unsigned char *np = (unsigned char *)PEFT_REALLOC(b->p, nc);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void peft__bu32(peft__buf *b, uint32_t v) { peft__bput(b, &v, 4); }
static void peft__bu64(peft__buf *b, uint64_t v) { peft__bput(b, &v, 8); }
static void peft__bstr(peft__buf *b, const char *s) {
    peft__bu64(b, strlen(s));
    peft__bput(b, s, strlen(s));
}
static void peft__kv_str(peft__buf *b, const char *k, const char *v) {
    peft__bstr(b, k);
    peft__bu32(b, 8);
    peft__bstr(b, v);
}
static void peft__kv_f32(peft__buf *b, const char *k, float v) {
    peft__bstr(b, k);
    peft__bu32(b, 6);
    peft__bput(b, &v, 4);
}
static void peft__kv_u32(peft__buf *b, const char *k, uint32_t v) {
    peft__bstr(b, k);
    peft__bu32(b, 4);
    peft__bu32(b, v);
}
static void peft__balign(peft__buf *b, size_t a) {
    static const unsigned char z[64];
    while (b->n % a) peft__bput(b, z, 1);
}

PEFTDEF peft_status peft_adapter_export_gguf(const peft_model *m, const char *path) {
    if (m->cfg.llama4)   /* llama.cpp's names for LLaMA-4's sites are not mapped here */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: GGUF export of LLaMA-4 adapters is not supported yet",
                          path);
    static const char *const gg[PEFT_N_SITES] = { "attn_q",   "attn_k", "attn_v",  "attn_output",
                                                  "ffn_gate", "ffn_up", "ffn_down" };
    const peft_config *c = &m->cfg;
    if (m->method.kind != PEFT_LORA && m->method.kind != PEFT_QLORA)
        return peft__fail(PEFT_ERR_ARG, "%s: llama.cpp adapters hold LoRA only, this model has %s", path,
                          peft_method_name(m->method.kind));
    if (m->lora_merged)
        return peft__fail(PEFT_ERR_ARG, "%s: the LoRA is merged into the weights; unmerge it first", path);
    /* llama.cpp's converter refuses these too: its adapters hold lora_a/lora_b pairs only */
    if (m->save_embed || m->save_head)
        return peft__fail(
            PEFT_ERR_UNSUPPORTED,
            "%s: the adapter has modules_to_save (full embed_tokens/lm_head copies); "
            "llama.cpp LoRA adapters cannot hold them: merge the adapter into the model instead",
            path);
    if (m->method.lora_bias)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: the adapter has lora_bias; llama.cpp LoRA adapters cannot hold "
                          "lora_B biases: merge the adapter into the model instead",
                          path);
    if (m->tokens_delta)
        return peft__fail(PEFT_ERR_UNSUPPORTED,
                          "%s: the adapter has trainable_token_indices; llama.cpp LoRA adapters "
                          "cannot hold token rows: merge the adapter into the model instead",
                          path);
    /* One adapter.lora.alpha for the file; llama.cpp scales each pair by
       alpha / (its rank, from lora_a's shape). A site whose own scale differs
       (rank_pattern, alpha_pattern, rsLoRA) gets lora_b multiplied by
       scale·r/alpha, which gives the same product. */
    int n_t = 0, r = -1;
    float scale = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            const peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->lora_A) continue;
            if (r < 0 || (scale == 0 && S->lora_scale != 0)) {
                r = (int)S->lora_A->shape[0];
                scale = S->lora_scale;
            }
            n_t += 2;
        }
    if (!n_t) return peft__fail(PEFT_ERR_ARG, "%s: no LoRA tensors to export", path);
    if (scale == 0)                            /* llama.cpp reads adapter.lora.alpha 0 as "scale 1" */
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: every LoRA scale is 0 (lora_alpha 0), which a GGUF "
                          "adapter cannot express", path);
    peft__buf b = { 0 };
    peft__bput(&b, "GGUF", 4);
    peft__bu32(&b, 3);
    peft__bu64(&b, (uint64_t)n_t);
    peft__bu64(&b, 6);
    peft__kv_str(&b, "general.architecture", "llama");
    peft__kv_str(&b, "general.type", "adapter");
    peft__kv_str(&b, "general.name", "peft.h LoRA adapter");
    peft__kv_u32(&b, "general.alignment", 32);
    peft__kv_str(&b, "adapter.type", "lora");
    peft__kv_f32(&b, "adapter.lora.alpha", scale * (float)r);   /* llama.cpp scales by alpha / r */
    uint64_t off = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            const peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->lora_A) continue;
            for (int ab = 0; ab < 2; ab++) {
                const peft_tensor *t = ab ? S->lora_B : S->lora_A;
                char name[96];
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", l, gg[s], ab ? 'b' : 'a');
                peft__bstr(&b, name);
                peft__bu32(&b, 2);
                peft__bu64(&b, (uint64_t)t->shape[1]);      /* ne0: the row length */
                peft__bu64(&b, (uint64_t)t->shape[0]);
                peft__bu32(&b, 0);                          /* GGML_TYPE_F32 */
                peft__bu64(&b, off);
                off += ((uint64_t)t->n * 4 + 31) / 32 * 32;
            }
        }
    peft__balign(&b, 32);
    for (int l = 0; l < c->n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            const peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->lora_A) continue;
            peft__bput(&b, S->lora_A->data, (size_t)S->lora_A->n * 4);
            peft__balign(&b, 32);
            const peft_tensor *B = S->lora_B;
            int heads = s == PEFT_Q ? c->n_heads : s == PEFT_K ? c->n_kv_heads : 0, rk = (int)B->shape[1];
            float f = scale != 0 && S->lora_scale * (float)rk != scale * (float)r
                          ? S->lora_scale * (float)rk / (scale * (float)r)
                          : 1;
            float *row = (float *)PEFT_MALLOC(sizeof(float) * (size_t)rk);
            if (!row) {
                b.failed = 1;
                break;
            }
            /* q/k rows h·hd + half·hd/2 + i  →  h·hd + 2i + half (rotate_half → pairs) */
            int hd = c->head_dim, permute = heads && !c->rope_interleaved;
            for (int64_t o = 0; o < B->shape[0]; o++) {
                int64_t src = o;
                if (permute) {
                    int64_t h = o / hd, i = (o % hd) / 2, half = o % 2;
                    src = h * hd + half * (hd / 2) + i;
                }
                for (int q = 0; q < rk; q++)
                    row[q] = f == 1 ? B->data[src * rk + q] : f * B->data[src * rk + q];
                peft__bput(&b, row, (size_t)rk * 4);
            }
            PEFT_FREE(row);
            peft__balign(&b, 32);
        }
    peft_status st = b.failed ? peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path)
                              : peft_write_file_atomic(path, b.p, b.n);
    PEFT_FREE(b.p);
    return st;
}

/* ============================================================================
   TOKENIZERS
   ============================================================================ */

static PEFT__TLS const peft_tokenizer *peft__sort_tok;   /* per thread: see THREADS in the manual */
static int peft__cmp_piece(const void *a, const void *b) {
    return strcmp(peft__sort_tok->pieces[*(const int *)a], peft__sort_tok->pieces[*(const int *)b]);
}

PEFTDEF peft_status peft_tokenizer_load_llama2c(peft_tokenizer *t, const char *path, int vocab_size) {
    memset(t, 0, sizeof *t);
    unsigned char *buf;
    size_t size;
    peft_status s = peft_read_file(path, &buf, &size);
    if (s != PEFT_OK) return s;
    if (vocab_size < 1 || vocab_size > 1 << 22) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_ARG, "%s: bad vocabulary size %d", path, vocab_size);
    }
    t->pieces = (char **)peft__calloc(sizeof(char *) * (size_t)vocab_size);
    t->scores = (float *)PEFT_MALLOC(sizeof(float) * (size_t)vocab_size);
    t->sorted = (int *)PEFT_MALLOC(sizeof(int) * (size_t)vocab_size);
    if (!t->pieces || !t->scores || !t->sorted) {
        PEFT_FREE(buf);
        peft_tokenizer_free(t);
        return peft__fail(PEFT_ERR_NOMEM, "no memory");
    }
    size_t off = 4;
    int32_t v;
    if (size < 4) {
        s = peft__fail(PEFT_ERR_FORMAT, "%s: too short for a tokenizer.bin", path);
        goto done;
    }
    memcpy(&v, buf, 4);
    t->max_len = v;
    t->bos_id = 1;
    t->eos_id = 2;
    for (int i = 0; i < vocab_size; i++) {
        int32_t len;
        if (off + 8 > size) {
            s = peft__fail(PEFT_ERR_FORMAT, "%s: ends at piece %d of %d", path, i, vocab_size);
            goto done;
        }
        memcpy(&t->scores[i], buf + off, 4);
        memcpy(&len, buf + off + 4, 4);
        off += 8;
        if (len < 0 || len > 1 << 16 || off + (size_t)len > size) {
            s = peft__fail(PEFT_ERR_FORMAT, "%s: piece %d has a bad length %d", path, i, len);
            goto done;
        }
        t->pieces[i] = (char *)PEFT_MALLOC((size_t)len + 1);
        if (!t->pieces[i]) {
            s = peft__fail(PEFT_ERR_NOMEM, "no memory");
            goto done;
        }
        memcpy(t->pieces[i], buf + off, (size_t)len);
        t->pieces[i][len] = 0;
        off += (size_t)len;
        t->n = i + 1;
    }
    for (int i = 0; i < t->n; i++) t->sorted[i] = i;
    peft__sort_tok = t;                       /* qsort has no context argument in C */
    qsort(t->sorted, (size_t)t->n, sizeof(int), peft__cmp_piece);
done:
    PEFT_FREE(buf);
    if (s != PEFT_OK) peft_tokenizer_free(t);
    return s;
}

static peft_status peft__tokenizer_load_hf(peft_tokenizer *t, const char *path);
static peft_status peft__tokenizer_load_gguf(peft_tokenizer *t, const char *path);
static int peft__piece_id(const peft_tokenizer *t, const char *s);

/* the piece that joins a and b, or -1 */
static int peft__pair_id(const peft_tokenizer *t, int a, int b, char *buf) {
    size_t la = strlen(t->pieces[a]), lb = strlen(t->pieces[b]);
    if (la + lb > (size_t)t->max_len * 2) return -1;
    memcpy(buf, t->pieces[a], la);
    memcpy(buf + la, t->pieces[b], lb + 1);
    return peft__piece_id(t, buf);
}

PEFTDEF peft_status peft_tokenizer_load(peft_tokenizer *t, const char *path, int vocab_size) {
    memset(t, 0, sizeof *t);
    char p[1100];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(p, sizeof p, "%s/tokenizer.json", path);
        if (peft__file_exists(p)) return peft__tokenizer_load_hf(t, p);
        snprintf(p, sizeof p, "%s/tokenizer.bin", path);
        if (peft__file_exists(p)) return peft_tokenizer_load_llama2c(t, p, vocab_size);
        return peft__fail(PEFT_ERR_IO, "%s: no tokenizer.json or tokenizer.bin in the folder", path);
    }
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".json")) return peft__tokenizer_load_hf(t, path);
    if (peft__is_gguf(path)) return peft__tokenizer_load_gguf(t, path);
    return peft_tokenizer_load_llama2c(t, path, vocab_size);
}


static int peft__piece_id(const peft_tokenizer *t, const char *s) {
    int lo = 0, hi = t->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(t->pieces[t->sorted[mid]], s);
        if (c == 0) return t->sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static int peft__encode_hf(const peft_tokenizer *t, const char *text, int bos, int eos, int *ids, int max,
                           int *starts);

PEFTDEF int peft_tokenizer_encode(const peft_tokenizer *t, const char *text, int bos, int eos, int *ids,
                                  int max) {
    if (t->kind != PEFT_TOK_SCORES) return peft__encode_hf(t, text, bos, eos, ids, max, NULL);
    int n = 0;
    size_t tl = strlen(text);
    if ((size_t)max < tl + 4) return -1;            /* at most one token per byte, + prefix, BOS, EOS */
    if (bos) ids[n++] = t->bos_id;
    if (*text) {
        int sp = peft__piece_id(t, " ");             /* SentencePiece's dummy prefix */
        if (sp >= 0) ids[n++] = sp;
    }
    char cp[8];
    for (const unsigned char *c = (const unsigned char *)text; *c;) {
        int len = 1;                                 /* one UTF-8 code point (at most 4 bytes) */
        while (len < 4 && (c[len] & 0xC0) == 0x80) len++;
        memcpy(cp, c, (size_t)len);
        cp[len] = 0;
        int id = peft__piece_id(t, cp);
        if (id >= 0) ids[n++] = id;
        else for (int i = 0; i < len; i++) ids[n++] = c[i] + 3;   /* byte fallback */
        c += len;
    }
    /* best-scoring merge first, leftmost on ties; each adjacent pair's merge
       is looked up once and again only when a neighbour changes */
    char *merged = (char *)PEFT_MALLOC((size_t)t->max_len * 2 + 8);
    int *pid = (int *)PEFT_MALLOC(sizeof(int) * (size_t)(n + 1));
    if (!merged || !pid) {
        PEFT_FREE(merged);
        PEFT_FREE(pid);
        return -1;
    }
    int first = bos ? 1 : 0;   /* BOS never merges */
    for (int i = first; i + 1 < n; i++) pid[i] = peft__pair_id(t, ids[i], ids[i + 1], merged);
    for (;;) {
        int at = -1;
        for (int i = first; i + 1 < n; i++)
            if (pid[i] >= 0 && (at < 0 || t->scores[pid[i]] > t->scores[pid[at]])) at = i;
        if (at < 0) break;
        ids[at] = pid[at];
        memmove(ids + at + 1, ids + at + 2, sizeof(int) * (size_t)(n - at - 2));
        memmove(pid + at + 1, pid + at + 2, sizeof(int) * (size_t)(n - at - 2));
        n--;
        if (at > first) pid[at - 1] = peft__pair_id(t, ids[at - 1], ids[at], merged);
        if (at + 1 < n) pid[at] = peft__pair_id(t, ids[at], ids[at + 1], merged);
    }
    PEFT_FREE(pid);
    PEFT_FREE(merged);
    if (eos) ids[n++] = t->eos_id;
    return n;
}

PEFTDEF const char *peft_tokenizer_decode(const peft_tokenizer *t, int prev, int id, char buf[8]) {
    if (id < 0 || id >= t->n) return "";
    if (t->decoded) return t->decoded[id];
    const char *p = t->pieces[id];
    if (prev == t->bos_id && p[0] == ' ') p++;     /* the dummy prefix after BOS */
    unsigned int byte;
    if (strlen(p) == 6 && sscanf(p, "<0x%02X>", &byte) == 1) {
        buf[0] = (char)byte;
        buf[1] = 0;
        return buf;
    }
    return p;
}

PEFTDEF void peft_tokenizer_free(peft_tokenizer *t) {
    if (t->pieces) for (int i = 0; i < t->n; i++) PEFT_FREE(t->pieces[i]);
    if (t->decoded) for (int i = 0; i < t->n; i++) PEFT_FREE(t->decoded[i]);
    PEFT_FREE(t->pieces);
    PEFT_FREE(t->scores);
    PEFT_FREE(t->sorted);
    PEFT_FREE(t->decoded);
    PEFT_FREE(t->merge_key);
    PEFT_FREE(t->merge_rank);
    PEFT_FREE(t->merge_out);
    PEFT_FREE(t->special);
    PEFT_FREE(t->chat_template);
    PEFT_FREE(t->chat_default_system);
    PEFT_FREE(t->special_flags);
    memset(t, 0, sizeof *t);
}

PEFTDEF void peft_tokenizer_use_config_eos(peft_tokenizer *t, const peft_config *c) {
    if (t->eos_from != PEFT_EOS_GUESSED || c->eos_id < 0 || c->eos_id >= t->n) return;
    t->eos_id = c->eos_id;
    t->eos_from = PEFT_EOS_CONFIG;
}

/* ---- Hugging Face tokenizer.json ---------------------------------------------------
   The BPE model of the `tokenizers` library in the two flavours LLaMA-family
   checkpoints ship:
     SentencePiece style (LLaMA-1/2, TinyLlama): Metaspace (spaces become ▁,
       one ▁ prepended to the first piece unless it starts with one), the
       text kept whole, characters looked up with byte fallback <0xXX>.
       The hub's own LLaMA-2 / TinyLlama files (transformers 4.x, "legacy")
       say the same with a normalizer instead: Prepend("▁") + Replace(" ",
       "▁") and no pre-tokenizer — the ▁ then goes before every stretch of
       text between added tokens, always, as sentencepiece's dummy prefix
       does; their merges follow sentencepiece's scores, so such a file
       encodes exactly as sentencepiece.
     byte-level (LLaMA-3, SmolLM): the text split by a regex (GPT-2's, or
       LLaMA-3's with digits in runs of at most three), optionally digits one
       by one, each byte written as a printable character (GPT-2's table),
       then BPE inside each piece; with ignore_merges a piece that is a
       whole vocabulary entry is taken as is.
   Either way BPE repeatedly merges the adjacent pair with the lowest rank in
   the merges list (leftmost on ties) — not sentencepiece's best piece score;
   the two agree when the merges are listed in score order (transformers 4.x
   files) and disagree on runs of spaces when they are not (transformers 5). Added tokens ("<s>",
   "<|eot_id|>") are matched in the raw text first and never split. */
/* General_Category L* and N* of Unicode 14.0 as code point ranges (generated
   with Python's unicodedata; what \p{L} and \p{N} mean in the regexes). */
static const uint32_t peft__uni_letter[][2] = {
    {0x41,0x5A}, {0x61,0x7A}, {0xAA,0xAA}, {0xB5,0xB5}, {0xBA,0xBA}, {0xC0,0xD6}, {0xD8,0xF6}, {0xF8,0x2C1},
    {0x2C6,0x2D1}, {0x2E0,0x2E4}, {0x2EC,0x2EC}, {0x2EE,0x2EE}, {0x370,0x374}, {0x376,0x377}, {0x37A,0x37D},
    {0x37F,0x37F}, {0x386,0x386}, {0x388,0x38A}, {0x38C,0x38C}, {0x38E,0x3A1}, {0x3A3,0x3F5}, {0x3F7,0x481},
    {0x48A,0x52F}, {0x531,0x556}, {0x559,0x559}, {0x560,0x588}, {0x5D0,0x5EA}, {0x5EF,0x5F2}, {0x620,0x64A},
    {0x66E,0x66F}, {0x671,0x6D3}, {0x6D5,0x6D5}, {0x6E5,0x6E6}, {0x6EE,0x6EF}, {0x6FA,0x6FC}, {0x6FF,0x6FF},
    {0x710,0x710}, {0x712,0x72F}, {0x74D,0x7A5}, {0x7B1,0x7B1}, {0x7CA,0x7EA}, {0x7F4,0x7F5}, {0x7FA,0x7FA},
    {0x800,0x815}, {0x81A,0x81A}, {0x824,0x824}, {0x828,0x828}, {0x840,0x858}, {0x860,0x86A}, {0x870,0x887},
    {0x889,0x88E}, {0x8A0,0x8C9}, {0x904,0x939}, {0x93D,0x93D}, {0x950,0x950}, {0x958,0x961}, {0x971,0x980},
    {0x985,0x98C}, {0x98F,0x990}, {0x993,0x9A8}, {0x9AA,0x9B0}, {0x9B2,0x9B2}, {0x9B6,0x9B9}, {0x9BD,0x9BD},
    {0x9CE,0x9CE}, {0x9DC,0x9DD}, {0x9DF,0x9E1}, {0x9F0,0x9F1}, {0x9FC,0x9FC}, {0xA05,0xA0A}, {0xA0F,0xA10},
    {0xA13,0xA28}, {0xA2A,0xA30}, {0xA32,0xA33}, {0xA35,0xA36}, {0xA38,0xA39}, {0xA59,0xA5C}, {0xA5E,0xA5E},
    {0xA72,0xA74}, {0xA85,0xA8D}, {0xA8F,0xA91}, {0xA93,0xAA8}, {0xAAA,0xAB0}, {0xAB2,0xAB3}, {0xAB5,0xAB9},
    {0xABD,0xABD}, {0xAD0,0xAD0}, {0xAE0,0xAE1}, {0xAF9,0xAF9}, {0xB05,0xB0C}, {0xB0F,0xB10}, {0xB13,0xB28},
    {0xB2A,0xB30}, {0xB32,0xB33}, {0xB35,0xB39}, {0xB3D,0xB3D}, {0xB5C,0xB5D}, {0xB5F,0xB61}, {0xB71,0xB71},
    {0xB83,0xB83}, {0xB85,0xB8A}, {0xB8E,0xB90}, {0xB92,0xB95}, {0xB99,0xB9A}, {0xB9C,0xB9C}, {0xB9E,0xB9F},
    {0xBA3,0xBA4}, {0xBA8,0xBAA}, {0xBAE,0xBB9}, {0xBD0,0xBD0}, {0xC05,0xC0C}, {0xC0E,0xC10}, {0xC12,0xC28},
    {0xC2A,0xC39}, {0xC3D,0xC3D}, {0xC58,0xC5A}, {0xC5D,0xC5D}, {0xC60,0xC61}, {0xC80,0xC80}, {0xC85,0xC8C},
    {0xC8E,0xC90}, {0xC92,0xCA8}, {0xCAA,0xCB3}, {0xCB5,0xCB9}, {0xCBD,0xCBD}, {0xCDD,0xCDE}, {0xCE0,0xCE1},
    {0xCF1,0xCF2}, {0xD04,0xD0C}, {0xD0E,0xD10}, {0xD12,0xD3A}, {0xD3D,0xD3D}, {0xD4E,0xD4E}, {0xD54,0xD56},
    {0xD5F,0xD61}, {0xD7A,0xD7F}, {0xD85,0xD96}, {0xD9A,0xDB1}, {0xDB3,0xDBB}, {0xDBD,0xDBD}, {0xDC0,0xDC6},
    {0xE01,0xE30}, {0xE32,0xE33}, {0xE40,0xE46}, {0xE81,0xE82}, {0xE84,0xE84}, {0xE86,0xE8A}, {0xE8C,0xEA3},
    {0xEA5,0xEA5}, {0xEA7,0xEB0}, {0xEB2,0xEB3}, {0xEBD,0xEBD}, {0xEC0,0xEC4}, {0xEC6,0xEC6}, {0xEDC,0xEDF},
    {0xF00,0xF00}, {0xF40,0xF47}, {0xF49,0xF6C}, {0xF88,0xF8C}, {0x1000,0x102A}, {0x103F,0x103F},
    {0x1050,0x1055}, {0x105A,0x105D}, {0x1061,0x1061}, {0x1065,0x1066}, {0x106E,0x1070}, {0x1075,0x1081},
    {0x108E,0x108E}, {0x10A0,0x10C5}, {0x10C7,0x10C7}, {0x10CD,0x10CD}, {0x10D0,0x10FA}, {0x10FC,0x1248},
    {0x124A,0x124D}, {0x1250,0x1256}, {0x1258,0x1258}, {0x125A,0x125D}, {0x1260,0x1288}, {0x128A,0x128D},
    {0x1290,0x12B0}, {0x12B2,0x12B5}, {0x12B8,0x12BE}, {0x12C0,0x12C0}, {0x12C2,0x12C5}, {0x12C8,0x12D6},
    {0x12D8,0x1310}, {0x1312,0x1315}, {0x1318,0x135A}, {0x1380,0x138F}, {0x13A0,0x13F5}, {0x13F8,0x13FD},
    {0x1401,0x166C}, {0x166F,0x167F}, {0x1681,0x169A}, {0x16A0,0x16EA}, {0x16F1,0x16F8}, {0x1700,0x1711},
    {0x171F,0x1731}, {0x1740,0x1751}, {0x1760,0x176C}, {0x176E,0x1770}, {0x1780,0x17B3}, {0x17D7,0x17D7},
    {0x17DC,0x17DC}, {0x1820,0x1878}, {0x1880,0x1884}, {0x1887,0x18A8}, {0x18AA,0x18AA}, {0x18B0,0x18F5},
    {0x1900,0x191E}, {0x1950,0x196D}, {0x1970,0x1974}, {0x1980,0x19AB}, {0x19B0,0x19C9}, {0x1A00,0x1A16},
    {0x1A20,0x1A54}, {0x1AA7,0x1AA7}, {0x1B05,0x1B33}, {0x1B45,0x1B4C}, {0x1B83,0x1BA0}, {0x1BAE,0x1BAF},
    {0x1BBA,0x1BE5}, {0x1C00,0x1C23}, {0x1C4D,0x1C4F}, {0x1C5A,0x1C7D}, {0x1C80,0x1C88}, {0x1C90,0x1CBA},
    {0x1CBD,0x1CBF}, {0x1CE9,0x1CEC}, {0x1CEE,0x1CF3}, {0x1CF5,0x1CF6}, {0x1CFA,0x1CFA}, {0x1D00,0x1DBF},
    {0x1E00,0x1F15}, {0x1F18,0x1F1D}, {0x1F20,0x1F45}, {0x1F48,0x1F4D}, {0x1F50,0x1F57}, {0x1F59,0x1F59},
    {0x1F5B,0x1F5B}, {0x1F5D,0x1F5D}, {0x1F5F,0x1F7D}, {0x1F80,0x1FB4}, {0x1FB6,0x1FBC}, {0x1FBE,0x1FBE},
    {0x1FC2,0x1FC4}, {0x1FC6,0x1FCC}, {0x1FD0,0x1FD3}, {0x1FD6,0x1FDB}, {0x1FE0,0x1FEC}, {0x1FF2,0x1FF4},
    {0x1FF6,0x1FFC}, {0x2071,0x2071}, {0x207F,0x207F}, {0x2090,0x209C}, {0x2102,0x2102}, {0x2107,0x2107},
    {0x210A,0x2113}, {0x2115,0x2115}, {0x2119,0x211D}, {0x2124,0x2124}, {0x2126,0x2126}, {0x2128,0x2128},
    {0x212A,0x212D}, {0x212F,0x2139}, {0x213C,0x213F}, {0x2145,0x2149}, {0x214E,0x214E}, {0x2183,0x2184},
    {0x2C00,0x2CE4}, {0x2CEB,0x2CEE}, {0x2CF2,0x2CF3}, {0x2D00,0x2D25}, {0x2D27,0x2D27}, {0x2D2D,0x2D2D},
    {0x2D30,0x2D67}, {0x2D6F,0x2D6F}, {0x2D80,0x2D96}, {0x2DA0,0x2DA6}, {0x2DA8,0x2DAE}, {0x2DB0,0x2DB6},
    {0x2DB8,0x2DBE}, {0x2DC0,0x2DC6}, {0x2DC8,0x2DCE}, {0x2DD0,0x2DD6}, {0x2DD8,0x2DDE}, {0x2E2F,0x2E2F},
    {0x3005,0x3006}, {0x3031,0x3035}, {0x303B,0x303C}, {0x3041,0x3096}, {0x309D,0x309F}, {0x30A1,0x30FA},
    {0x30FC,0x30FF}, {0x3105,0x312F}, {0x3131,0x318E}, {0x31A0,0x31BF}, {0x31F0,0x31FF}, {0x3400,0x4DBF},
    {0x4E00,0xA48C}, {0xA4D0,0xA4FD}, {0xA500,0xA60C}, {0xA610,0xA61F}, {0xA62A,0xA62B}, {0xA640,0xA66E},
    {0xA67F,0xA69D}, {0xA6A0,0xA6E5}, {0xA717,0xA71F}, {0xA722,0xA788}, {0xA78B,0xA7CA}, {0xA7D0,0xA7D1},
    {0xA7D3,0xA7D3}, {0xA7D5,0xA7D9}, {0xA7F2,0xA801}, {0xA803,0xA805}, {0xA807,0xA80A}, {0xA80C,0xA822},
    {0xA840,0xA873}, {0xA882,0xA8B3}, {0xA8F2,0xA8F7}, {0xA8FB,0xA8FB}, {0xA8FD,0xA8FE}, {0xA90A,0xA925},
    {0xA930,0xA946}, {0xA960,0xA97C}, {0xA984,0xA9B2}, {0xA9CF,0xA9CF}, {0xA9E0,0xA9E4}, {0xA9E6,0xA9EF},
    {0xA9FA,0xA9FE}, {0xAA00,0xAA28}, {0xAA40,0xAA42}, {0xAA44,0xAA4B}, {0xAA60,0xAA76}, {0xAA7A,0xAA7A},
    {0xAA7E,0xAAAF}, {0xAAB1,0xAAB1}, {0xAAB5,0xAAB6}, {0xAAB9,0xAABD}, {0xAAC0,0xAAC0}, {0xAAC2,0xAAC2},
    {0xAADB,0xAADD}, {0xAAE0,0xAAEA}, {0xAAF2,0xAAF4}, {0xAB01,0xAB06}, {0xAB09,0xAB0E}, {0xAB11,0xAB16},
    {0xAB20,0xAB26}, {0xAB28,0xAB2E}, {0xAB30,0xAB5A}, {0xAB5C,0xAB69}, {0xAB70,0xABE2}, {0xAC00,0xD7A3},
    {0xD7B0,0xD7C6}, {0xD7CB,0xD7FB}, {0xF900,0xFA6D}, {0xFA70,0xFAD9}, {0xFB00,0xFB06}, {0xFB13,0xFB17},
    {0xFB1D,0xFB1D}, {0xFB1F,0xFB28}, {0xFB2A,0xFB36}, {0xFB38,0xFB3C}, {0xFB3E,0xFB3E}, {0xFB40,0xFB41},
    {0xFB43,0xFB44}, {0xFB46,0xFBB1}, {0xFBD3,0xFD3D}, {0xFD50,0xFD8F}, {0xFD92,0xFDC7}, {0xFDF0,0xFDFB},
    {0xFE70,0xFE74}, {0xFE76,0xFEFC}, {0xFF21,0xFF3A}, {0xFF41,0xFF5A}, {0xFF66,0xFFBE}, {0xFFC2,0xFFC7},
    {0xFFCA,0xFFCF}, {0xFFD2,0xFFD7}, {0xFFDA,0xFFDC}, {0x10000,0x1000B}, {0x1000D,0x10026},
    {0x10028,0x1003A}, {0x1003C,0x1003D}, {0x1003F,0x1004D}, {0x10050,0x1005D}, {0x10080,0x100FA},
    {0x10280,0x1029C}, {0x102A0,0x102D0}, {0x10300,0x1031F}, {0x1032D,0x10340}, {0x10342,0x10349},
    {0x10350,0x10375}, {0x10380,0x1039D}, {0x103A0,0x103C3}, {0x103C8,0x103CF}, {0x10400,0x1049D},
    {0x104B0,0x104D3}, {0x104D8,0x104FB}, {0x10500,0x10527}, {0x10530,0x10563}, {0x10570,0x1057A},
    {0x1057C,0x1058A}, {0x1058C,0x10592}, {0x10594,0x10595}, {0x10597,0x105A1}, {0x105A3,0x105B1},
    {0x105B3,0x105B9}, {0x105BB,0x105BC}, {0x10600,0x10736}, {0x10740,0x10755}, {0x10760,0x10767},
    {0x10780,0x10785}, {0x10787,0x107B0}, {0x107B2,0x107BA}, {0x10800,0x10805}, {0x10808,0x10808},
    {0x1080A,0x10835}, {0x10837,0x10838}, {0x1083C,0x1083C}, {0x1083F,0x10855}, {0x10860,0x10876},
    {0x10880,0x1089E}, {0x108E0,0x108F2}, {0x108F4,0x108F5}, {0x10900,0x10915}, {0x10920,0x10939},
    {0x10980,0x109B7}, {0x109BE,0x109BF}, {0x10A00,0x10A00}, {0x10A10,0x10A13}, {0x10A15,0x10A17},
    {0x10A19,0x10A35}, {0x10A60,0x10A7C}, {0x10A80,0x10A9C}, {0x10AC0,0x10AC7}, {0x10AC9,0x10AE4},
    {0x10B00,0x10B35}, {0x10B40,0x10B55}, {0x10B60,0x10B72}, {0x10B80,0x10B91}, {0x10C00,0x10C48},
    {0x10C80,0x10CB2}, {0x10CC0,0x10CF2}, {0x10D00,0x10D23}, {0x10E80,0x10EA9}, {0x10EB0,0x10EB1},
    {0x10F00,0x10F1C}, {0x10F27,0x10F27}, {0x10F30,0x10F45}, {0x10F70,0x10F81}, {0x10FB0,0x10FC4},
    {0x10FE0,0x10FF6}, {0x11003,0x11037}, {0x11071,0x11072}, {0x11075,0x11075}, {0x11083,0x110AF},
    {0x110D0,0x110E8}, {0x11103,0x11126}, {0x11144,0x11144}, {0x11147,0x11147}, {0x11150,0x11172},
    {0x11176,0x11176}, {0x11183,0x111B2}, {0x111C1,0x111C4}, {0x111DA,0x111DA}, {0x111DC,0x111DC},
    {0x11200,0x11211}, {0x11213,0x1122B}, {0x11280,0x11286}, {0x11288,0x11288}, {0x1128A,0x1128D},
    {0x1128F,0x1129D}, {0x1129F,0x112A8}, {0x112B0,0x112DE}, {0x11305,0x1130C}, {0x1130F,0x11310},
    {0x11313,0x11328}, {0x1132A,0x11330}, {0x11332,0x11333}, {0x11335,0x11339}, {0x1133D,0x1133D},
    {0x11350,0x11350}, {0x1135D,0x11361}, {0x11400,0x11434}, {0x11447,0x1144A}, {0x1145F,0x11461},
    {0x11480,0x114AF}, {0x114C4,0x114C5}, {0x114C7,0x114C7}, {0x11580,0x115AE}, {0x115D8,0x115DB},
    {0x11600,0x1162F}, {0x11644,0x11644}, {0x11680,0x116AA}, {0x116B8,0x116B8}, {0x11700,0x1171A},
    {0x11740,0x11746}, {0x11800,0x1182B}, {0x118A0,0x118DF}, {0x118FF,0x11906}, {0x11909,0x11909},
    {0x1190C,0x11913}, {0x11915,0x11916}, {0x11918,0x1192F}, {0x1193F,0x1193F}, {0x11941,0x11941},
    {0x119A0,0x119A7}, {0x119AA,0x119D0}, {0x119E1,0x119E1}, {0x119E3,0x119E3}, {0x11A00,0x11A00},
    {0x11A0B,0x11A32}, {0x11A3A,0x11A3A}, {0x11A50,0x11A50}, {0x11A5C,0x11A89}, {0x11A9D,0x11A9D},
    {0x11AB0,0x11AF8}, {0x11C00,0x11C08}, {0x11C0A,0x11C2E}, {0x11C40,0x11C40}, {0x11C72,0x11C8F},
    {0x11D00,0x11D06}, {0x11D08,0x11D09}, {0x11D0B,0x11D30}, {0x11D46,0x11D46}, {0x11D60,0x11D65},
    {0x11D67,0x11D68}, {0x11D6A,0x11D89}, {0x11D98,0x11D98}, {0x11EE0,0x11EF2}, {0x11FB0,0x11FB0},
    {0x12000,0x12399}, {0x12480,0x12543}, {0x12F90,0x12FF0}, {0x13000,0x1342E}, {0x14400,0x14646},
    {0x16800,0x16A38}, {0x16A40,0x16A5E}, {0x16A70,0x16ABE}, {0x16AD0,0x16AED}, {0x16B00,0x16B2F},
    {0x16B40,0x16B43}, {0x16B63,0x16B77}, {0x16B7D,0x16B8F}, {0x16E40,0x16E7F}, {0x16F00,0x16F4A},
    {0x16F50,0x16F50}, {0x16F93,0x16F9F}, {0x16FE0,0x16FE1}, {0x16FE3,0x16FE3}, {0x17000,0x187F7},
    {0x18800,0x18CD5}, {0x18D00,0x18D08}, {0x1AFF0,0x1AFF3}, {0x1AFF5,0x1AFFB}, {0x1AFFD,0x1AFFE},
    {0x1B000,0x1B122}, {0x1B150,0x1B152}, {0x1B164,0x1B167}, {0x1B170,0x1B2FB}, {0x1BC00,0x1BC6A},
    {0x1BC70,0x1BC7C}, {0x1BC80,0x1BC88}, {0x1BC90,0x1BC99}, {0x1D400,0x1D454}, {0x1D456,0x1D49C},
    {0x1D49E,0x1D49F}, {0x1D4A2,0x1D4A2}, {0x1D4A5,0x1D4A6}, {0x1D4A9,0x1D4AC}, {0x1D4AE,0x1D4B9},
    {0x1D4BB,0x1D4BB}, {0x1D4BD,0x1D4C3}, {0x1D4C5,0x1D505}, {0x1D507,0x1D50A}, {0x1D50D,0x1D514},
    {0x1D516,0x1D51C}, {0x1D51E,0x1D539}, {0x1D53B,0x1D53E}, {0x1D540,0x1D544}, {0x1D546,0x1D546},
    {0x1D54A,0x1D550}, {0x1D552,0x1D6A5}, {0x1D6A8,0x1D6C0}, {0x1D6C2,0x1D6DA}, {0x1D6DC,0x1D6FA},
    {0x1D6FC,0x1D714}, {0x1D716,0x1D734}, {0x1D736,0x1D74E}, {0x1D750,0x1D76E}, {0x1D770,0x1D788},
    {0x1D78A,0x1D7A8}, {0x1D7AA,0x1D7C2}, {0x1D7C4,0x1D7CB}, {0x1DF00,0x1DF1E}, {0x1E100,0x1E12C},
    {0x1E137,0x1E13D}, {0x1E14E,0x1E14E}, {0x1E290,0x1E2AD}, {0x1E2C0,0x1E2EB}, {0x1E7E0,0x1E7E6},
    {0x1E7E8,0x1E7EB}, {0x1E7ED,0x1E7EE}, {0x1E7F0,0x1E7FE}, {0x1E800,0x1E8C4}, {0x1E900,0x1E943},
    {0x1E94B,0x1E94B}, {0x1EE00,0x1EE03}, {0x1EE05,0x1EE1F}, {0x1EE21,0x1EE22}, {0x1EE24,0x1EE24},
    {0x1EE27,0x1EE27}, {0x1EE29,0x1EE32}, {0x1EE34,0x1EE37}, {0x1EE39,0x1EE39}, {0x1EE3B,0x1EE3B},
    {0x1EE42,0x1EE42}, {0x1EE47,0x1EE47}, {0x1EE49,0x1EE49}, {0x1EE4B,0x1EE4B}, {0x1EE4D,0x1EE4F},
    {0x1EE51,0x1EE52}, {0x1EE54,0x1EE54}, {0x1EE57,0x1EE57}, {0x1EE59,0x1EE59}, {0x1EE5B,0x1EE5B},
    {0x1EE5D,0x1EE5D}, {0x1EE5F,0x1EE5F}, {0x1EE61,0x1EE62}, {0x1EE64,0x1EE64}, {0x1EE67,0x1EE6A},
    {0x1EE6C,0x1EE72}, {0x1EE74,0x1EE77}, {0x1EE79,0x1EE7C}, {0x1EE7E,0x1EE7E}, {0x1EE80,0x1EE89},
    {0x1EE8B,0x1EE9B}, {0x1EEA1,0x1EEA3}, {0x1EEA5,0x1EEA9}, {0x1EEAB,0x1EEBB}, {0x20000,0x2A6DF},
    {0x2A700,0x2B738}, {0x2B740,0x2B81D}, {0x2B820,0x2CEA1}, {0x2CEB0,0x2EBE0}, {0x2F800,0x2FA1D},
    {0x30000,0x3134A},
};
static const uint32_t peft__uni_number[][2] = {
    {0x30,0x39}, {0xB2,0xB3}, {0xB9,0xB9}, {0xBC,0xBE}, {0x660,0x669}, {0x6F0,0x6F9}, {0x7C0,0x7C9},
    {0x966,0x96F}, {0x9E6,0x9EF}, {0x9F4,0x9F9}, {0xA66,0xA6F}, {0xAE6,0xAEF}, {0xB66,0xB6F}, {0xB72,0xB77},
    {0xBE6,0xBF2}, {0xC66,0xC6F}, {0xC78,0xC7E}, {0xCE6,0xCEF}, {0xD58,0xD5E}, {0xD66,0xD78}, {0xDE6,0xDEF},
    {0xE50,0xE59}, {0xED0,0xED9}, {0xF20,0xF33}, {0x1040,0x1049}, {0x1090,0x1099}, {0x1369,0x137C},
    {0x16EE,0x16F0}, {0x17E0,0x17E9}, {0x17F0,0x17F9}, {0x1810,0x1819}, {0x1946,0x194F}, {0x19D0,0x19DA},
    {0x1A80,0x1A89}, {0x1A90,0x1A99}, {0x1B50,0x1B59}, {0x1BB0,0x1BB9}, {0x1C40,0x1C49}, {0x1C50,0x1C59},
    {0x2070,0x2070}, {0x2074,0x2079}, {0x2080,0x2089}, {0x2150,0x2182}, {0x2185,0x2189}, {0x2460,0x249B},
    {0x24EA,0x24FF}, {0x2776,0x2793}, {0x2CFD,0x2CFD}, {0x3007,0x3007}, {0x3021,0x3029}, {0x3038,0x303A},
    {0x3192,0x3195}, {0x3220,0x3229}, {0x3248,0x324F}, {0x3251,0x325F}, {0x3280,0x3289}, {0x32B1,0x32BF},
    {0xA620,0xA629}, {0xA6E6,0xA6EF}, {0xA830,0xA835}, {0xA8D0,0xA8D9}, {0xA900,0xA909}, {0xA9D0,0xA9D9},
    {0xA9F0,0xA9F9}, {0xAA50,0xAA59}, {0xABF0,0xABF9}, {0xFF10,0xFF19}, {0x10107,0x10133}, {0x10140,0x10178},
    {0x1018A,0x1018B}, {0x102E1,0x102FB}, {0x10320,0x10323}, {0x10341,0x10341}, {0x1034A,0x1034A},
    {0x103D1,0x103D5}, {0x104A0,0x104A9}, {0x10858,0x1085F}, {0x10879,0x1087F}, {0x108A7,0x108AF},
    {0x108FB,0x108FF}, {0x10916,0x1091B}, {0x109BC,0x109BD}, {0x109C0,0x109CF}, {0x109D2,0x109FF},
    {0x10A40,0x10A48}, {0x10A7D,0x10A7E}, {0x10A9D,0x10A9F}, {0x10AEB,0x10AEF}, {0x10B58,0x10B5F},
    {0x10B78,0x10B7F}, {0x10BA9,0x10BAF}, {0x10CFA,0x10CFF}, {0x10D30,0x10D39}, {0x10E60,0x10E7E},
    {0x10F1D,0x10F26}, {0x10F51,0x10F54}, {0x10FC5,0x10FCB}, {0x11052,0x1106F}, {0x110F0,0x110F9},
    {0x11136,0x1113F}, {0x111D0,0x111D9}, {0x111E1,0x111F4}, {0x112F0,0x112F9}, {0x11450,0x11459},
    {0x114D0,0x114D9}, {0x11650,0x11659}, {0x116C0,0x116C9}, {0x11730,0x1173B}, {0x118E0,0x118F2},
    {0x11950,0x11959}, {0x11C50,0x11C6C}, {0x11D50,0x11D59}, {0x11DA0,0x11DA9}, {0x11FC0,0x11FD4},
    {0x12400,0x1246E}, {0x16A60,0x16A69}, {0x16AC0,0x16AC9}, {0x16B50,0x16B59}, {0x16B5B,0x16B61},
    {0x16E80,0x16E96}, {0x1D2E0,0x1D2F3}, {0x1D360,0x1D378}, {0x1D7CE,0x1D7FF}, {0x1E140,0x1E149},
    {0x1E2F0,0x1E2F9}, {0x1E8C7,0x1E8CF}, {0x1E950,0x1E959}, {0x1EC71,0x1ECAB}, {0x1ECAD,0x1ECAF},
    {0x1ECB1,0x1ECB4}, {0x1ED01,0x1ED2D}, {0x1ED2F,0x1ED3D}, {0x1F100,0x1F10C}, {0x1FBF0,0x1FBF9},
};

static int peft__in_ranges(uint32_t c, const uint32_t (*r)[2], int n) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < r[mid][0]) hi = mid - 1;
        else if (c > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}
static int peft__is_letter(uint32_t c) {
    if (c < 128) return (c | 32) >= 'a' && (c | 32) <= 'z';
    return peft__in_ranges(c, peft__uni_letter, (int)(sizeof peft__uni_letter / sizeof peft__uni_letter[0]));
}
static int peft__is_number(uint32_t c) {
    if (c < 128) return c >= '0' && c <= '9';
    return peft__in_ranges(c, peft__uni_number, (int)(sizeof peft__uni_number / sizeof peft__uni_number[0]));
}
static int peft__is_space(uint32_t c) {             /* Unicode White_Space */
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}
static int peft__is_other(uint32_t c) {
    return !peft__is_space(c) && !peft__is_letter(c) && !peft__is_number(c);
}
static int peft__is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

/* one UTF-8 code point at s (invalid bytes count as themselves) */
static int peft__utf8_next(const unsigned char *s, int n, uint32_t *cp) {
    int len = s[0] < 0x80 ? 1 : s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 1;
    if (len > n) len = 1;
    for (int i = 1; i < len; i++) if ((s[i] & 0xC0) != 0x80) len = 1;
    uint32_t c = len == 1 ? s[0] : (uint32_t)(s[0] & (0x7F >> len));
    for (int i = 1; i < len; i++) c = (c << 6) | (s[i] & 0x3F);
    *cp = c;
    return len;
}

/* The end of the regex match starting at code point i (alternatives in the
   patterns' order; the first that matches wins, as in a backtracking engine).
   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
   LLaMA-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
            | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+                */
static int peft__pretok_end(const uint32_t *c, int n, int i, int llama3) {
    if (c[i] == '\'' && i + 1 < n) {
        uint32_t a = c[i + 1], b = i + 2 < n ? c[i + 2] : 0;
        if (llama3 && a < 128) a |= 32;
        if (llama3 && b < 128 && b >= 'A') b |= 32;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    int j;
    if (llama3) {
        j = i;
        if (!peft__is_letter(c[i]) && !peft__is_nl(c[i]) && !peft__is_number(c[i]) && i + 1 < n &&
            peft__is_letter(c[i + 1]))
            j = i + 1;
        if (peft__is_letter(c[j])) {
            while (j < n && peft__is_letter(c[j])) j++;
            return j;
        }
        if (peft__is_number(c[i])) {
            j = i;
            while (j < n && j - i < 3 && peft__is_number(c[j])) j++;
            return j;
        }
        j = i + (c[i] == ' ');
        if (j < n && peft__is_other(c[j])) {
            while (j < n && peft__is_other(c[j])) j++;
            while (j < n && peft__is_nl(c[j])) j++;
            return j;
        }
    } else {
        j = i + (c[i] == ' ');
        if (j < n && peft__is_letter(c[j])) {
            while (j < n && peft__is_letter(c[j])) j++;
            return j;
        }
        if (j < n && peft__is_number(c[j])) {
            while (j < n && peft__is_number(c[j])) j++;
            return j;
        }
        if (j < n && peft__is_other(c[j])) {
            while (j < n && peft__is_other(c[j])) j++;
            return j;
        }
    }
    int k = i;                                         /* a whitespace run */
    while (k < n && peft__is_space(c[k])) k++;
    if (llama3) {
        int last_nl = -1;
        for (int m = i; m < k; m++) if (peft__is_nl(c[m])) last_nl = m;
        if (last_nl >= 0) return last_nl + 1;
    }
    if (k == n || k - i == 1) return k;
    return k - 1;                                      /* the last space goes with what follows */
}

/* GPT-2's printable stand-ins for bytes: 33–126, 161–172, 174–255 are
   themselves, the other 68 bytes become U+0100 onwards, in order. */
static uint32_t peft__byte_char(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return (uint32_t)b;
    int k = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
    return 256u + (uint32_t)k;
}
static int peft__put_utf8(char *o, uint32_t c) {
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 63));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 63));
        o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63));
    o[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* merges: open addressing on (left id, right id) */
static uint64_t peft__mkey(int a, int b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static int peft__merge_find(const peft_tokenizer *t, int a, int b, int *out) {
    if (!t->merge_cap) return -1;
    uint64_t k = peft__mkey(a, b), h = (k * 0x9E3779B97F4A7C15ull) >> 20;
    for (int i = (int)(h & (uint64_t)(t->merge_cap - 1));; i = (i + 1) & (t->merge_cap - 1)) {
        if (t->merge_rank[i] < 0) return -1;
        if (t->merge_key[i] == k) {
            *out = t->merge_out[i];
            return t->merge_rank[i];
        }
    }
}
static void peft__merge_put(peft_tokenizer *t, int a, int b, int rank, int out) {
    uint64_t k = peft__mkey(a, b), h = (k * 0x9E3779B97F4A7C15ull) >> 20;
    int i = (int)(h & (uint64_t)(t->merge_cap - 1));
    while (t->merge_rank[i] >= 0) {
        if (t->merge_key[i] == k) return;              /* first (lowest) rank wins */
        i = (i + 1) & (t->merge_cap - 1);
    }
    t->merge_key[i] = k;
    t->merge_rank[i] = rank;
    t->merge_out[i] = out;
}

/* BPE over symbols ids[0..n): lowest-rank adjacent pair first, leftmost on
   ties. The rank of every adjacent pair is kept and only the two pairs next
   to a merge are looked up again, so a long word costs O(n²) comparisons
   but only O(n) table lookups. */
static int peft__bpe(const peft_tokenizer *t, int *ids, int n) {
    if (n < 2) return n;
    int *rank = (int *)PEFT_MALLOC(sizeof(int) * (size_t)n * 2), *res = rank ? rank + n : NULL;
    if (!rank) return n;
    for (int i = 0; i + 1 < n; i++) rank[i] = peft__merge_find(t, ids[i], ids[i + 1], &res[i]);
    for (;;) {
        int at = -1;
        for (int i = 0; i + 1 < n; i++)
            if (rank[i] >= 0 && (at < 0 || rank[i] < rank[at])) at = i;
        if (at < 0) break;
        ids[at] = res[at];
        memmove(ids + at + 1, ids + at + 2, sizeof(int) * (size_t)(n - at - 2));
        memmove(rank + at + 1, rank + at + 2, sizeof(int) * (size_t)(n - at - 2));
        memmove(res + at + 1, res + at + 2, sizeof(int) * (size_t)(n - at - 2));
        n--;
        if (at > 0) rank[at - 1] = peft__merge_find(t, ids[at - 1], ids[at], &res[at - 1]);
        if (at + 1 < n) rank[at] = peft__merge_find(t, ids[at], ids[at + 1], &res[at]);
    }
    PEFT_FREE(rank);
    return n;
}

static int peft__piece_id(const peft_tokenizer *t, const char *s);

/* SentencePiece flavour: the segment as one word */
static int peft__encode_sp_word(const peft_tokenizer *t, const char *s, size_t len, int first, int *ids) {
    int n = 0;
    char cp[8];
    if ((first && t->prefix_space == 1 && !(len && s[0] == ' ')) || (t->prefix_space == 2 && len)) {
        int sp = peft__piece_id(t, " ");
        if (sp >= 0) ids[n++] = sp;
    }
    for (size_t i = 0; i < len;) {
        uint32_t c;
        int l = peft__utf8_next((const unsigned char *)s + i, (int)(len - i), &c);
        memcpy(cp, s + i, (size_t)l);
        cp[l] = 0;
        int id = peft__piece_id(t, cp);
        if (id >= 0) ids[n++] = id;
        else if (t->byte_fallback)
            for (int b = 0; b < l; b++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", (unsigned char)s[i + b]);
                ids[n++] = peft__piece_id(t, name);
            }
        else ids[n++] = t->unk_id;
        i += (size_t)l;
    }
    return peft__bpe(t, ids, n);
}

/* byte-level: one pre-token → its ids */
static int peft__encode_bytes_word(const peft_tokenizer *t, const char *s, size_t len, int *ids,
                                   char *scratch) {
    int m = 0, n = 0;
    for (size_t i = 0; i < len; i++) m += peft__put_utf8(scratch + m, peft__byte_char((unsigned char)s[i]));
    scratch[m] = 0;
    int whole = t->ignore_merges ? peft__piece_id(t, scratch) : -1;
    if (whole >= 0) {
        ids[0] = whole;
        return 1;
    }
    for (int i = 0; i < m;) {
        uint32_t c;
        int l = peft__utf8_next((const unsigned char *)scratch + i, m - i, &c);
        char one[8];
        memcpy(one, scratch + i, (size_t)l);
        one[l] = 0;
        int id = peft__piece_id(t, one);
        ids[n++] = id >= 0 ? id : t->unk_id;
        i += l;
    }
    return peft__bpe(t, ids, n);
}

/* starts (may be NULL): each id's first byte in s; within a pre-token, the running length of the
   ids' bytes (byte-level pieces decode to exactly the text's bytes) */
static int peft__encode_bytes(const peft_tokenizer *t, const char *s, size_t len, int first, int *ids,
                              char *scratch, uint32_t *cps, int *offs, int *starts) {
    int n = 0, nc = 0;
    if (first && t->prefix_space && !(len && s[0] == ' '))
        n += peft__encode_bytes_word(t, " ", 1, ids, scratch);
    for (int k = 0; starts && k < n; k++) starts[k] = 0;
    for (size_t i = 0; i < len;) {
        offs[nc] = (int)i;
        i += (size_t)peft__utf8_next((const unsigned char *)s + i, (int)(len - i), &cps[nc++]);
    }
    offs[nc] = (int)len;
    for (int i = 0; i < nc;) {
        /* Digits(individual_digits): each digit alone, the rest split by the regex piecewise */
        int end = nc;
        if (t->split_digits) {
            if (peft__is_number(cps[i])) end = i + 1;
            else {
                end = i;
                while (end < nc && !peft__is_number(cps[end])) end++;
            }
        }
        for (int j = i; j < end;) {
            int e = t->pretok ? peft__pretok_end(cps + i, end - i, j - i, t->pretok == 2) + i : end;
            if (e <= j) e = j + 1;                     /* always progress */
            int k0 = n, at = offs[j];
            n += peft__encode_bytes_word(t, s + offs[j], (size_t)(offs[e] - offs[j]), ids + n, scratch);
            for (int k = k0; starts && k < n; k++) {
                starts[k] = at < offs[e] ? at : offs[e] - 1;
                at += ids[k] >= 0 && t->decoded && t->decoded[ids[k]] ? (int)strlen(t->decoded[ids[k]]) : 1;
            }
            j = e;
        }
        i = end;
    }
    return n;
}

/* starts (may be NULL): each id's first byte in text (BOS/EOS at 0 / len; a
   SentencePiece segment's running piece lengths, the dummy ▁ counted at the start) */
/* Added tokens in text[a, b) as tokenizers' AddedVocabulary finds them: the
   leftmost match, longest there, among the tokens of one kind (normalized or
   not); a single_word token only between non-word characters (\w: letters,
   digits, _), else skipped over; lstrip / rstrip take the whitespace before /
   after it into the token. Appends (start, end, id) pieces covering [a, b), id
   -1 for text between tokens; returns the new count. */
static int peft__added_split(const peft_tokenizer *t, const char *text, size_t a, size_t b, int normalized,
                             size_t *st, size_t *en, int *id, int n) {
    size_t last = a;
    for (size_t i = a; i < b;) {
        int k_best = -1;
        size_t slen = 0;
        for (int k = 0; k < t->n_special; k++) {
            if (((t->special_flags ? t->special_flags[k] : 0) & PEFT__ADDED_NORMALIZED ? 1 : 0) != normalized)
                continue;
            const char *p = t->pieces[t->special[k]];
            size_t pl = strlen(p);
            if (pl > slen && pl <= b - i && !memcmp(text + i, p, pl)) {
                k_best = k;
                slen = pl;
            }
        }
        if (k_best < 0) {
            i++;
            continue;
        }
        int fl = t->special_flags ? t->special_flags[k_best] : 0;
        size_t start = i, stop = i + slen;
        uint32_t c;
        i = stop;
        if (fl & PEFT__ADDED_SINGLE_WORD) {
            int word_before = 0, word_after = 0;
            if (start > a) {
                size_t q = start - 1;
                while (q > a && ((unsigned char)text[q] & 0xC0) == 0x80) q--;
                peft__utf8_next((const unsigned char *)text + q, (int)(start - q), &c);
                word_before = peft__is_letter(c) || peft__is_number(c) || c == '_';
            }
            if (stop < b) {
                peft__utf8_next((const unsigned char *)text + stop, (int)(b - stop), &c);
                word_after = peft__is_letter(c) || peft__is_number(c) || c == '_';
            }
            if (word_before || word_after) continue;
        }
        if (fl & PEFT__ADDED_LSTRIP) {
            while (start > last) {
                size_t q = start - 1;
                while (q > last && ((unsigned char)text[q] & 0xC0) == 0x80) q--;
                peft__utf8_next((const unsigned char *)text + q, (int)(start - q), &c);
                if (!peft__is_space(c)) break;
                start = q;
            }
        }
        if (fl & PEFT__ADDED_RSTRIP)
            while (stop < b) {
                int l = peft__utf8_next((const unsigned char *)text + stop, (int)(b - stop), &c);
                if (!peft__is_space(c)) break;
                stop += (size_t)l;
            }
        if (start > last) {
            st[n] = last;
            en[n] = start;
            id[n++] = -1;
        }
        st[n] = start;
        en[n] = stop;
        id[n++] = t->special[k_best];
        last = i = stop;
    }
    if (b > last) {
        st[n] = last;
        en[n] = b;
        id[n++] = -1;
    }
    return n;
}

static int peft__encode_hf(const peft_tokenizer *t, const char *text, int bos, int eos, int *ids, int max,
                           int *starts) {
    size_t len = strlen(text);
    if ((size_t)max < len + 4) return -1;
    char *scratch = (char *)PEFT_MALLOC(len * 2 + 16);
    uint32_t *cps = (uint32_t *)PEFT_MALLOC(sizeof(uint32_t) * (len + 1));
    int *offs = (int *)PEFT_MALLOC(sizeof(int) * (len + 2));
    /* pieces: the non-normalized added tokens matched in the raw text, then the normalized ones
       in what lies between (the normalizer is the identity wherever normalized tokens are allowed) */
    size_t cap = 2 * len + 4, *pst = (size_t *)PEFT_MALLOC(sizeof(size_t) * cap * 4),
           *pen = pst ? pst + cap : NULL;
    size_t *qst = pst ? pst + 2 * cap : NULL, *qen = pst ? pst + 3 * cap : NULL;
    int *pid = (int *)PEFT_MALLOC(sizeof(int) * cap * 2), *qid = pid ? pid + cap : NULL;
    if (!scratch || !cps || !offs || !pst || !pid) {
        PEFT_FREE(scratch);
        PEFT_FREE(cps);
        PEFT_FREE(offs);
        PEFT_FREE(pst);
        PEFT_FREE(pid);
        return -1;
    }
    int np = peft__added_split(t, text, 0, len, 0, pst, pen, pid, 0), nq = 0;
    for (int k = 0; k < np; k++) {
        if (pid[k] >= 0 || !t->n_normalized) {
            qst[nq] = pst[k];
            qen[nq] = pen[k];
            qid[nq++] = pid[k];
        } else
            nq = peft__added_split(t, text, pst[k], pen[k], 1, qst, qen, qid, nq);
    }
    int n = 0;
    if (bos && t->bos_id >= 0) {
        if (starts) starts[n] = 0;
        ids[n++] = t->bos_id;
    }
    for (int q = 0; q < nq; q++) {
        size_t seg = qst[q], i = qen[q];
        if (qid[q] >= 0) {
            if (starts) starts[n] = (int)seg;
            ids[n++] = qid[q];
            continue;
        }
        int n0 = n;
        n += t->kind == PEFT_TOK_HF_BYTES ? peft__encode_bytes(t, text + seg, i - seg, seg == 0, ids + n,
                                                               scratch, cps, offs, starts ? starts + n : NULL)
                                          : peft__encode_sp_word(t, text + seg, i - seg, seg == 0, ids + n);
        if (starts && t->kind == PEFT_TOK_HF_BYTES)
            for (int k = n0; k < n; k++) starts[k] += (int)seg;
        else if (starts) {
            int at = (int)seg - (n > n0 && t->pieces[ids[n0]][0] == ' ' && text[seg] != ' ');
            for (int k = n0; k < n; k++) {
                const char *pc = ids[k] >= 0 ? t->pieces[ids[k]] : "?";
                starts[k] = at < (int)seg ? (int)seg : at < (int)i ? at : (int)i - 1;
                at += !strncmp(pc, "<0x", 3) && strlen(pc) == 6 ? 1 : (int)strlen(pc);
            }
        }
    }
    if (eos && t->eos_id >= 0) {
        if (starts) starts[n] = (int)len;
        ids[n++] = t->eos_id;
    }
    PEFT_FREE(scratch);
    PEFT_FREE(cps);
    PEFT_FREE(offs);
    PEFT_FREE(pst);
    PEFT_FREE(pid);
    return n;
}

static peft_status peft__tokfail(peft_tokenizer *t, peft_json *j, peft_status s) {
    peft_json_free(j);
    peft_tokenizer_free(t);
    return s;
}

/* the one normalizer LLaMA files carry: Prepend("▁") + Replace(" " → "▁")
   (the legacy SentencePiece form), alone or as a Sequence */
static peft_status peft__tok_normalizer(peft_tokenizer *t, const peft_json *p, const char *path, int depth) {
    if (!p || p->type == PEFT_JSON_NULL) return PEFT_OK;
    const char *type = peft__json_str(p, "type");
    if (type && !strcmp(type, "Sequence") && depth == 0) {
        const peft_json *list = peft_json_get(p, "normalizers");
        for (const peft_json *c = list ? list->child : NULL; c; c = c->next) {
            peft_status s = peft__tok_normalizer(t, c, path, 1);
            if (s != PEFT_OK) return s;
        }
        return PEFT_OK;
    }
    static const char meta[] = "\xE2\x96\x81";
    if (type && !strcmp(type, "Prepend")) {
        const char *what = peft__json_str(p, "prepend");
        if (what && !strcmp(what, meta)) {
            t->prefix_space = 2;
            return PEFT_OK;
        }
    }
    if (type && !strcmp(type, "Replace")) {
        const peft_json *pat = peft_json_get(p, "pattern");
        const char *from = pat ? peft__json_str(pat, "String") : NULL, *to = peft__json_str(p, "content");
        if (from && to && !strcmp(from, " ") && !strcmp(to, meta)) {
            t->norm_space = 1;
            return PEFT_OK;
        }
    }
    return peft__fail(PEFT_ERR_FORMAT,
                      "%s: normalizer \"%s\" is not supported (only LLaMA's Prepend(\"\xE2\x96\x81\") and "
                      "Replace(\" \" -> \"\xE2\x96\x81\"))",
                      path, type ? type : "?");
}

/* which pre-tokenizers: Metaspace, ByteLevel, Split (the two known regexes), Digits, Sequence */
static peft_status peft__tok_pretokenizer(peft_tokenizer *t, const peft_json *p, const char *path) {
    if (!p || p->type == PEFT_JSON_NULL) return PEFT_OK;
    const char *type = peft__json_str(p, "type");
    if (!type) return peft__fail(PEFT_ERR_FORMAT, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type, "Sequence")) {
        const peft_json *list = peft_json_get(p, "pretokenizers");
        for (const peft_json *c = list ? list->child : NULL; c; c = c->next) {
            peft_status s = peft__tok_pretokenizer(t, c, path);
            if (s != PEFT_OK) return s;
        }
        return PEFT_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *scheme = peft__json_str(p, "prepend_scheme");
        const peft_json *split = peft_json_get(p, "split");
        if (split && split->type == PEFT_JSON_BOOL && split->number != 0)
            return peft__fail(PEFT_ERR_FORMAT, "%s: Metaspace with split=true is not supported", path);
        t->kind = PEFT_TOK_HF_SP;
        t->prefix_space = !scheme || strcmp(scheme, "never") != 0;
        if (scheme && !strcmp(scheme, "always"))
            return peft__fail(PEFT_ERR_FORMAT, "%s: Metaspace prepend_scheme \"always\" is not supported",
                              path);
        return PEFT_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        const peft_json *re = peft_json_get(p, "use_regex"), *ap = peft_json_get(p, "add_prefix_space");
        t->kind = PEFT_TOK_HF_BYTES;
        if (!re || re->number != 0) {
            if (t->pretok) return peft__fail(PEFT_ERR_FORMAT, "%s: two regex splits", path);
            t->pretok = 1;
        }
        t->prefix_space = ap && ap->type == PEFT_JSON_BOOL && ap->number != 0;
        return PEFT_OK;
    }
    if (!strcmp(type, "Digits")) {
        const peft_json *ind = peft_json_get(p, "individual_digits");
        if (!ind || ind->number == 0)
            return peft__fail(PEFT_ERR_FORMAT, "%s: Digits without individual_digits is not supported", path);
        t->split_digits = 1;
        return PEFT_OK;
    }
    if (!strcmp(type, "Split")) {
        const peft_json *pat = peft_json_get(p, "pattern");
        const char *re = pat ? peft__json_str(pat, "Regex") : NULL, *beh = peft__json_str(p, "behavior");
        static const char llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                                     " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
        static const char gpt2[] =
                "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
        if (!re || !beh || strcmp(beh, "Isolated") || (strcmp(re, llama3) && strcmp(re, gpt2)))
            return peft__fail(
                    PEFT_ERR_FORMAT,
                    "%s: only the GPT-2 and LLaMA-3 split regexes (behavior Isolated) are supported, not %s",
                    path, re ? re : "this pattern");
        t->pretok = strcmp(re, llama3) ? 1 : 2;
        return PEFT_OK;
    }
    return peft__fail(PEFT_ERR_FORMAT, "%s: pre_tokenizer \"%s\" is not supported", path, type);
}

/* a token named by its text ("<|im_end|>"): an added token, else a vocabulary piece; -1 if none */
static int peft__token_by_text(const peft_tokenizer *t, const char *text) {
    for (int k = 0; k < t->n_special; k++) if (!strcmp(t->pieces[t->special[k]], text)) return t->special[k];
    if (t->kind == PEFT_TOK_HF_BYTES) {
        for (int i = 0; i < t->n; i++)
            if (t->decoded && t->decoded[i] && !strcmp(t->decoded[i], text)) return i;
        return -1;
    }
    return peft__piece_id(t, text);
}

PEFTDEF int peft_chat_detect(const char *tmpl) {
    if (!tmpl) return PEFT_CHAT_NONE;
    if (strstr(tmpl, "<|im_start|>")) return PEFT_CHAT_CHATML;
    /* LLaMA-3.1 onwards write a date header and tool calls into the system turn: not LLaMA-3's format */
    if (strstr(tmpl, "<|start_header_id|>") && strstr(tmpl, "<|end_header_id|>"))
        return strstr(tmpl, "Knowledge Date") ? -1 : PEFT_CHAT_LLAMA3;
    /* Mistral's [INST] templates (no <<SYS>>) space the turns differently */
    if (strstr(tmpl, "[INST]")) return strstr(tmpl, "<<SYS>>") ? PEFT_CHAT_LLAMA2 : -1;
    if (strstr(tmpl, "### Instruction:")) return PEFT_CHAT_ALPACA;
    return -1;
}

PEFTDEF int peft_chat_family(const char *name) {
    static const char *const names[] = { "none", "chatml", "llama2", "llama3", "alpaca" };
    for (int i = 1; i < 5; i++) if (name && !strcmp(name, names[i])) return i;
    return -1;
}

/* The system message a ChatML template writes when the conversation has none: the literal
   after '<|im_start|>system\n' (newline written or escaped) up to <|im_end|>, when it is
   plain text (no quote, so not an expression such as messages[0]['content']). */
static char *peft__chatml_default_system(const char *tmpl) {
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(tmpl, head); p; p = strstr(p + 1, head)) {
        const char *q = p + sizeof head - 1;
        if (*q == '\n') q++;
        else if (q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        size_t n = (size_t)(end - q);
        if (memchr(q, '\'', n) || memchr(q, '"', n) || memchr(q, '{', n)) continue;
        char *out = (char *)PEFT_MALLOC(n + 1), *w = out;
        if (!out) return NULL;
        for (const char *r = q; r < end; r++) {          /* Jinja string escapes */
            if (r[0] == '\\' && r + 1 < end) {
                r++;
                *w++ = *r == 'n' ? '\n' : *r == 't' ? '\t' : *r;
            } else
                *w++ = *r;
        }
        *w = 0;
        return out;
    }
    return NULL;
}

static void peft__tok_unused(peft_tokenizer *t, const char *key, const char *why) {
    size_t used = strlen(t->unused);
    snprintf(t->unused + used, sizeof t->unused - used, "%s%s%s%s%s", used ? ", " : "", key, why ? " (" : "",
             why ? why : "", why ? ")" : "");
}

/* A vocabulary entry as stored (SentencePiece kind: "▁" kept as a space) against its text in a
   file; added tokens are stored as written, so either form matches. */
static int peft__same_piece(const peft_tokenizer *t, const char *piece, const char *text) {
    if (!strcmp(piece, text)) return 1;
    if (t->kind != PEFT_TOK_HF_SP) return 0;
    for (;;) {
        const unsigned char *u = (const unsigned char *)text;
        if (u[0] == 0xE2 && u[1] == 0x96 && u[2] == 0x81) {
            if (*piece != ' ') return 0;
            text += 3;
        } else if (*piece != *text) return 0;
        else if (!*text) return 1;
        else text++;
        piece++;
    }
}

/* The tokenizer_config.json keys other than eos_token, bos_token and chat_template, as
   transformers 5 (AutoTokenizer over tokenizer.json) uses them: each one checked, taken as
   changing nothing that peft.h does, or named in t->unused. */
static peft_status peft__tok_config_keys(peft_tokenizer *t, const peft_json *j, const char *path) {
    /* no effect here: legacy and sp_model_kwargs configure the slow SentencePiece tokenizer and
       spaces_between_special_tokens its decode, none used when tokenizer.json is there;
       tokenizer_class names the Python class; padding_side and truncation_side: padded positions
       carry no loss and are not attended to, and examples are truncated at their end as
       transformers' default; model_input_names, the names of the model's inputs; additional/extra
       special tokens are tokenizer.json's added tokens, matched already; model_max_length only
       makes transformers warn about longer texts (max_position_embeddings bounds the length
       here); mask/sep/cls tokens serve other heads; errors is the UTF-8 decode policy, and
       decode here keeps each token's bytes. The list's other keys are read above or below. */
    static const char *const inert[] = { "eos_token", "bos_token", "chat_template", "legacy",
                                         "sp_model_kwargs", "spaces_between_special_tokens",
                                         "tokenizer_class",
                                         "padding_side", "truncation_side", "model_input_names",
                                         "additional_special_tokens", "extra_special_tokens",
                                         "model_max_length", "mask_token", "sep_token", "cls_token",
                                         "name_or_path", "auto_map", "processor_class",
                                         "errors", "backend", "is_local", "clean_up_tokenization_spaces",
                                         "use_default_system_prompt", "add_bos_token", "add_eos_token",
                                         "added_tokens_decoder", "unk_token", "pad_token", NULL };
    for (const peft_json *v = j->child; v; v = v->next) {
        int known = 0;
        for (int i = 0; inert[i] && !known; i++) known = !strcmp(v->key, inert[i]);
        if (!known) peft__tok_unused(t, v->key, NULL);
    }
    /* unk_token / pad_token: must name a token (pad only pads, unk is tokenizer.json's model.unk_token) */
    static const char *const toks[] = { "unk_token", "pad_token" };
    for (int k = 0; k < 2; k++) {
        const peft_json *v = peft_json_get(j, toks[k]);
        if (!v || v->type == PEFT_JSON_NULL) continue;
        const char *text = v->type == PEFT_JSON_STRING   ? v->string
                           : v->type == PEFT_JSON_OBJECT ? peft__json_str(v, "content")
                                                         : NULL;
        if (!text)
            return peft__fail(PEFT_ERR_FORMAT, "%s: %s is neither a string nor a token object", path,
                              toks[k]);
        if (peft__token_by_text(t, text) < 0)
            peft__tok_unused(t, toks[k], "not a token of tokenizer.json");
    }
    /* additional/extra special tokens: each one must be an added token of tokenizer.json, which
       transformers would otherwise add to the vocabulary */
    static const char *const lists[] = { "additional_special_tokens", "extra_special_tokens" };
    for (int k = 0; k < 2; k++) {
        const peft_json *v = peft_json_get(j, lists[k]);
        int missing = 0;
        for (const peft_json *e = v && (v->type == PEFT_JSON_ARRAY || v->type == PEFT_JSON_OBJECT) ? v->child
                                                                                                     : NULL;
             e; e = e->next) {
            const char *text = e->type == PEFT_JSON_STRING   ? e->string
                               : e->type == PEFT_JSON_OBJECT ? peft__json_str(e, "content")
                                                             : NULL;
            missing |= !text || peft__token_by_text(t, text) < 0;
        }
        if (missing) peft__tok_unused(t, lists[k], "a token that tokenizer.json does not have");
    }
    /* add_bos_token / add_eos_token: transformers 5 drops both when tokenizer.json is there
       (PreTrainedTokenizerBase.from_pretrained) and its post_processor alone decides; named
       when they disagree with it, since transformers 4 applied them */
    const peft_json *ab = peft_json_get(j, "add_bos_token"), *ae = peft_json_get(j, "add_eos_token");
    if ((ab && ab->type != PEFT_JSON_BOOL && ab->type != PEFT_JSON_NULL) ||
        (ae && ae->type != PEFT_JSON_BOOL && ae->type != PEFT_JSON_NULL))
        return peft__fail(PEFT_ERR_FORMAT, "%s: add_bos_token and add_eos_token must be true or false", path);
    if (ab && ab->type == PEFT_JSON_BOOL && (ab->number != 0) != (t->bos_id >= 0))
        peft__tok_unused(t, "add_bos_token", "tokenizer.json's post_processor decides as in transformers 5");
    if (ae && ae->type == PEFT_JSON_BOOL && ae->number != 0)
        peft__tok_unused(t, "add_eos_token", "tokenizer.json's post_processor decides as in transformers 5");
    /* decode keeps " ." and " n't" as the tokens spell them */
    const peft_json *cu = peft_json_get(j, "clean_up_tokenization_spaces");
    if (cu && cu->type == PEFT_JSON_BOOL && cu->number != 0)
        peft__tok_unused(t, "clean_up_tokenization_spaces", "decoded text is not cleaned up");
    /* the LLaMA-2 default system prompt: chat templates are recognised by family, without it */
    const peft_json *ud = peft_json_get(j, "use_default_system_prompt");
    if (ud && ud->type == PEFT_JSON_BOOL && ud->number != 0)
        peft__tok_unused(t, "use_default_system_prompt", "no default system prompt is written");
    /* added_tokens_decoder: {"id": {"content": ...}} must agree with tokenizer.json */
    const peft_json *ad = peft_json_get(j, "added_tokens_decoder");
    if (ad && ad->type != PEFT_JSON_NULL && ad->type != PEFT_JSON_OBJECT)
        return peft__fail(PEFT_ERR_FORMAT, "%s: added_tokens_decoder is not an object", path);
    for (const peft_json *e = ad && ad->type == PEFT_JSON_OBJECT ? ad->child : NULL; e; e = e->next) {
        char *end = NULL;
        long id = strtol(e->key, &end, 10);
        const char *content = peft__json_str(e, "content");
        if (!content || !end || *end || end == e->key || id < 0)
            return peft__fail(PEFT_ERR_FORMAT,
                              "%s: added_tokens_decoder entry \"%s\" is not an id with a content", path,
                              e->key);
        if (t->kind != PEFT_TOK_SCORES && (id >= t->n || !peft__same_piece(t, t->pieces[id], content)))
            return peft__fail(PEFT_ERR_FORMAT,
                              "%s: added_tokens_decoder gives id %ld as \"%s\", tokenizer.json as \"%s\"",
                              path, id, content, id < t->n ? t->pieces[id] : "(no such id)");
    }
    return PEFT_OK;
}

/* tokenizer_config.json beside tokenizer.json: eos_token, bos_token and chat_template
   (a string, or a list of {name, template} of which "default" is taken; chat_template.jinja
   beside it wins, as in transformers); every other key through peft__tok_config_keys. */
static peft_status peft__tok_config(peft_tokenizer *t, const char *tok_path) {
    char path[1024];
    snprintf(path, sizeof path, "%s", tok_path);
    char *slash = strrchr(path, '/');
    if (slash) snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "tokenizer_config.json");
    else snprintf(path, sizeof path, "tokenizer_config.json");
    peft_json *j = NULL;
    peft_status s = peft__file_exists(path) ? peft_json_load(&j, path) : PEFT_OK;
    if (s != PEFT_OK) {
        peft_tokenizer_free(t);
        return s;
    }
    static const char *const keys[] = { "eos_token", "bos_token" };
    for (int k = 0; k < 2 && j && s == PEFT_OK; k++) {
        const peft_json *v = peft_json_get(j, keys[k]);
        if (!v) continue;
        const char *text = v->type == PEFT_JSON_STRING   ? v->string
                           : v->type == PEFT_JSON_OBJECT ? peft__json_str(v, "content")
                                                         : NULL;
        if (v->type == PEFT_JSON_NULL) {
            if (k == 1) t->bos_token = -1;
            continue;
        }
        int id = text ? peft__token_by_text(t, text) : -1;
        if (!text)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: %s is neither a string nor a token object", path, keys[k]);
        else if (id < 0)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: %s \"%s\" is not a token of the tokenizer", path, keys[k],
                           text);
        else if (k == 0) {
            t->eos_id = id;
            t->eos_from = PEFT_EOS_TOKENIZER_CONFIG;
        } else
            t->bos_token = id;
    }
    if (s == PEFT_OK && j) s = peft__tok_config_keys(t, j, path);
    const peft_json *ct = j ? peft_json_get(j, "chat_template") : NULL;
    if (s == PEFT_OK && ct && ct->type == PEFT_JSON_ARRAY) {
        const peft_json *pick = NULL;
        for (const peft_json *c = ct->child; c; c = c->next) {
            const char *name = peft__json_str(c, "name");
            if (name && !strcmp(name, "default")) pick = peft_json_get(c, "template");
        }
        if (!pick)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: chat_template is a list without a \"default\" entry", path);
        ct = pick;
    }
    if (s == PEFT_OK && ct && ct->type != PEFT_JSON_NULL) {
        if (ct->type != PEFT_JSON_STRING)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: chat_template is not a string", path);
        else if (!(t->chat_template = peft__strdup(ct->string))) s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        else {
            t->chat = peft_chat_detect(ct->string);
            if (t->chat == PEFT_CHAT_CHATML) t->chat_default_system = peft__chatml_default_system(ct->string);
        }
    }
    if (j) snprintf(t->config_path, sizeof t->config_path, "%.500s", path);
    peft_json_free(j);
    /* transformers 5 (and 4.x from 4.47 on) save the template beside it as chat_template.jinja,
       which then takes precedence over the tokenizer_config.json key */
    char jpath[1024];
    snprintf(jpath, sizeof jpath, "%.*schat_template.jinja", slash ? (int)(slash + 1 - path) : 0, path);
    unsigned char *jt = NULL;
    size_t jn = 0;
    if (s == PEFT_OK && peft__file_exists(jpath) && (s = peft_read_file(jpath, &jt, &jn)) == PEFT_OK) {
        char *tmpl = (char *)PEFT_MALLOC(jn + 1);
        if (!tmpl) s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        else {
            memcpy(tmpl, jt, jn);
            tmpl[jn] = 0;
            PEFT_FREE(t->chat_template);
            PEFT_FREE(t->chat_default_system);
            t->chat_template = tmpl;
            t->chat_default_system = NULL;
            t->chat = peft_chat_detect(tmpl);
            if (t->chat == PEFT_CHAT_CHATML) t->chat_default_system = peft__chatml_default_system(tmpl);
            snprintf(t->config_path, sizeof t->config_path, "%.500s", jpath);
        }
        PEFT_FREE(jt);
    }
    if (s != PEFT_OK) peft_tokenizer_free(t);
    return s;
}

/* A SentencePiece-kind piece as stored: each ▁ (E2 96 81) becomes a space, in place, as
   tokenizer.bin has it. */
static void peft__metaspace_to_space(char *p) {
    char *w = p;
    for (char *r = p; *r;) {
        if ((unsigned char)r[0] == 0xE2 && (unsigned char)r[1] == 0x96 && (unsigned char)r[2] == 0x81) {
            *w++ = ' ';
            r += 3;
        } else
            *w++ = *r++;
    }
    *w = 0;
}

static peft_status peft__tokenizer_load_hf(peft_tokenizer *t, const char *path) {
    memset(t, 0, sizeof *t);
    peft_json *j;
    peft_status s = peft_json_load(&j, path);
    if (s != PEFT_OK) return s;
    const peft_json *model = peft_json_get(j, "model");
    const char *mtype = model ? peft__json_str(model, "type") : NULL;
    if (!mtype || strcmp(mtype, "BPE"))
        return peft__tokfail(t, j,
                             peft__fail(PEFT_ERR_FORMAT, "%s: model type %s is not supported (BPE only)",
                                        path, mtype ? mtype : "(none)"));
    const peft_json *vocab = peft_json_get(model, "vocab"), *merges = peft_json_get(model, "merges");
    const peft_json *added = peft_json_get(j, "added_tokens"), *norm = peft_json_get(j, "normalizer");
    if (!vocab || vocab->type != PEFT_JSON_OBJECT || !merges || merges->type != PEFT_JSON_ARRAY)
        return peft__tokfail(t, j,
                             peft__fail(PEFT_ERR_FORMAT, "%s: model.vocab or model.merges missing", path));
    t->kind = PEFT_TOK_HF_SP;
    t->bos_id = t->eos_id = t->unk_id = -1;
    s = peft__tok_normalizer(t, norm, path, 0);
    if (s == PEFT_OK && norm && norm->type != PEFT_JSON_NULL && !t->norm_space)
        s = peft__fail(PEFT_ERR_FORMAT,
                       "%s: a normalizer without Replace(\" \" -> \"\xE2\x96\x81\") is not supported", path);
    if (s == PEFT_OK) s = peft__tok_pretokenizer(t, peft_json_get(j, "pre_tokenizer"), path);
    if (s == PEFT_OK && t->norm_space && t->kind != PEFT_TOK_HF_SP)
        s = peft__fail(PEFT_ERR_FORMAT,
                       "%s: the SentencePiece normalizer with a byte-level pre-tokenizer is not supported",
                       path);
    if (s != PEFT_OK) return peft__tokfail(t, j, s);
    const peft_json *bf = peft_json_get(model, "byte_fallback"), *im = peft_json_get(model, "ignore_merges");
    t->byte_fallback = bf && bf->type == PEFT_JSON_BOOL && bf->number != 0;
    t->ignore_merges = im && im->type == PEFT_JSON_BOOL && im->number != 0;
    int n = 0;
    for (const peft_json *v = vocab->child; v; v = v->next) {
        /* range-checked before the cast: 6666666666 would wrap to a negative index */
        if (v->type == PEFT_JSON_NUMBER &&
            !(v->number >= 0 && v->number < (double)(1 << 22) && v->number == floor(v->number)))
            return peft__tokfail(t, j,
                                 peft__fail(PEFT_ERR_FORMAT,
                                            "%s: vocab entry \"%s\" has id %.17g (ids are 0 .. 2^22-1)", path,
                                            v->key, v->number));
        if (v->type == PEFT_JSON_NUMBER && v->number >= n) n = (int)v->number + 1;
    }
    for (const peft_json *a = added ? added->child : NULL; a; a = a->next) {
        int id = -1;
        peft__json_int(a, "id", &id);
        if (id >= n && id < 1 << 22) n = id + 1;
    }
    if (n < 1 || n > 1 << 22)
        return peft__tokfail(t, j, peft__fail(PEFT_ERR_FORMAT, "%s: bad vocabulary size %d", path, n));
    t->n = n;
    t->pieces = (char **)peft__calloc(sizeof(char *) * (size_t)n);
    t->scores = (float *)peft__calloc(sizeof(float) * (size_t)n);
    t->sorted = (int *)PEFT_MALLOC(sizeof(int) * (size_t)n);
    t->special = (int *)PEFT_MALLOC(sizeof(int) * (size_t)(added ? added->n_children + 1 : 1));
    t->special_flags = (unsigned char *)peft__calloc((size_t)(added ? added->n_children + 1 : 1));
    if (!t->pieces || !t->scores || !t->sorted || !t->special || !t->special_flags)
        return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
    for (const peft_json *v = vocab->child; v; v = v->next) {
        if (v->type != PEFT_JSON_NUMBER || v->number < 0)
            return peft__tokfail(
                    t, j, peft__fail(PEFT_ERR_FORMAT, "%s: vocab entry \"%s\" has no id", path, v->key));
        int id = (int)v->number;
        char *p = peft__strdup(v->key);
        if (!p) return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
        if (t->kind == PEFT_TOK_HF_SP) peft__metaspace_to_space(p);
        PEFT_FREE(t->pieces[id]);
        t->pieces[id] = p;
        t->scores[id] = -(float)id;
    }
    for (const peft_json *a = added ? added->child : NULL; a; a = a->next) {
        int id = -1;
        peft__json_int(a, "id", &id);
        const char *content = peft__json_str(a, "content");
        if (id < 0 || id >= n || !content)
            return peft__tokfail(
                    t, j, peft__fail(PEFT_ERR_FORMAT, "%s: an added token without id or content", path));
        if (!t->pieces[id] || strcmp(t->pieces[id], content)) {
            PEFT_FREE(t->pieces[id]);
            if (!(t->pieces[id] = peft__strdup(content)))
                return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
        }
        /* the flags of tokenizers' AddedToken; special only decides skip_special_tokens when decoding */
        static const char *const flag_keys[] = { "lstrip", "rstrip", "single_word", "normalized" };
        unsigned char fl = 0;
        for (const peft_json *f = a->child; f; f = f->next) {
            int known = !strcmp(f->key, "id") || !strcmp(f->key, "content") || !strcmp(f->key, "special");
            for (int k = 0; k < 4; k++)
                if (!strcmp(f->key, flag_keys[k])) {
                    known = 1;
                    if (f->type != PEFT_JSON_BOOL)
                        return peft__tokfail(t, j,
                                             peft__fail(PEFT_ERR_FORMAT,
                                                        "%s: added token %s: %s is not true or false", path,
                                                        content, f->key));
                    if (f->number != 0) fl |= (unsigned char)(1 << k);
                }
            if (!known)
                return peft__tokfail(t, j,
                                     peft__fail(PEFT_ERR_UNSUPPORTED,
                                                "%s: added token %s: key \"%s\" is not supported", path,
                                                content, f->key));
        }
        if ((fl & PEFT__ADDED_NORMALIZED) && (t->norm_space || t->prefix_space == 2))
            return peft__tokfail(t, j,
                                 peft__fail(PEFT_ERR_UNSUPPORTED,
                                            "%s: added token %s: normalized true with the "
                                            "Prepend/Replace normalizer is not supported",
                                            path, content));
        t->n_normalized += (fl & PEFT__ADDED_NORMALIZED) != 0;
        t->special_flags[t->n_special] = fl;
        t->special[t->n_special++] = id;
        if (!strcmp(content, "<s>") || !strcmp(content, "<|begin_of_text|>")) t->bos_id = id;
        if (!strcmp(content, "</s>") || !strcmp(content, "<|end_of_text|>") ||
            !strcmp(content, "<|endoftext|>"))
            t->eos_id = id;
        if (!strcmp(content, "<unk>")) t->unk_id = id;
    }
    for (int i = 0; i < n; i++)
        if (!t->pieces[i] && !(t->pieces[i] = peft__strdup("")))
            return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
    /* BOS as the post-processor adds it: TemplateProcessing starting with a special token */
    const peft_json *post = peft_json_get(j, "post_processor"),
                    *single = post ? peft_json_get(post, "single") : NULL;
    const peft_json *first = single && single->child ? peft_json_get(single->child, "SpecialToken") : NULL;
    if (post && post->type == PEFT_JSON_OBJECT) t->bos_id = -1;
    if (first) {
        const char *name = peft__json_str(first, "id");
        for (int k = 0; name && k < t->n_special; k++)
            if (!strcmp(t->pieces[t->special[k]], name)) t->bos_id = t->special[k];
    }
    for (int i = 0; i < n; i++) t->sorted[i] = i;
    peft__sort_tok = t;
    qsort(t->sorted, (size_t)n, sizeof(int), peft__cmp_piece);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(t->pieces[i]);
        if ((int)l > t->max_len) t->max_len = (int)l;
    }
    /* merges: "a b" strings or [a, b] pairs, rank = position */
    int cap = 16;
    while (cap < 2 * merges->n_children + 16) cap *= 2;
    t->merge_cap = cap;
    t->merge_key = (uint64_t *)PEFT_MALLOC(sizeof(uint64_t) * (size_t)cap);
    t->merge_rank = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap);
    t->merge_out = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap);
    if (!t->merge_key || !t->merge_rank || !t->merge_out)
        return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
    for (int i = 0; i < cap; i++) t->merge_rank[i] = -1;
    int rank = 0;
    char *buf = (char *)PEFT_MALLOC((size_t)t->max_len * 3 + 16);
    if (!buf) return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
    for (const peft_json *mg = merges->child; mg; mg = mg->next, rank++) {
        char left[1024], right[1024];
        if (mg->type == PEFT_JSON_STRING) {
            const char *sp = strchr(mg->string, ' ');
            if (!sp || (size_t)(sp - mg->string) >= sizeof left || strlen(sp + 1) >= sizeof right) {
                PEFT_FREE(buf);
                return peft__tokfail(t, j,
                                     peft__fail(PEFT_ERR_FORMAT, "%s: merge %d is not \"a b\"", path, rank));
            }
            memcpy(left, mg->string, (size_t)(sp - mg->string));
            left[sp - mg->string] = 0;
            snprintf(right, sizeof right, "%s", sp + 1);
        } else if (mg->type == PEFT_JSON_ARRAY && mg->n_children == 2 &&
                   mg->child->type == PEFT_JSON_STRING && mg->child->next->type == PEFT_JSON_STRING &&
                   strlen(mg->child->string) < sizeof left &&
                   strlen(mg->child->next->string) < sizeof right) {
            snprintf(left, sizeof left, "%s", mg->child->string);
            snprintf(right, sizeof right, "%s", mg->child->next->string);
        } else {
            PEFT_FREE(buf);
            return peft__tokfail(t, j, peft__fail(PEFT_ERR_FORMAT, "%s: merge %d is malformed", path, rank));
        }
        char *sides[2] = { left, right };
        for (int k = 0; k < 2 && t->kind == PEFT_TOK_HF_SP; k++) peft__metaspace_to_space(sides[k]);
        int a = peft__piece_id(t, left), b = peft__piece_id(t, right);
        snprintf(buf, (size_t)t->max_len * 3 + 16, "%s%s", left, right);
        int o = peft__piece_id(t, buf);
        if (a < 0 || b < 0 || o < 0) {
            PEFT_FREE(buf);
            return peft__tokfail(t, j,
                                 peft__fail(PEFT_ERR_FORMAT,
                                            "%s: merge %d (%s + %s) uses pieces not in the vocabulary", path,
                                            rank, left, right));
        }
        peft__merge_put(t, a, b, rank, o);
    }
    PEFT_FREE(buf);
    /* byte-level: what each piece is as bytes, for decoding */
    if (t->kind == PEFT_TOK_HF_BYTES) {
        t->decoded = (char **)peft__calloc(sizeof(char *) * (size_t)n);
        if (!t->decoded) return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
        uint32_t inv[512];
        for (int i = 0; i < 512; i++) inv[i] = 0xFFFFFFFFu;
        for (int b = 0; b < 256; b++) inv[peft__byte_char(b)] = (uint32_t)b;
        for (int i = 0; i < n; i++) {
            size_t l = strlen(t->pieces[i]);
            char *d = (char *)PEFT_MALLOC(l + 1);
            if (!d) return peft__tokfail(t, j, peft__fail(PEFT_ERR_NOMEM, "no memory"));
            int special = 0;
            for (int k = 0; k < t->n_special; k++) special |= t->special[k] == i;
            size_t o = 0;
            for (size_t r = 0; r < l;) {
                uint32_t c;
                int cl = peft__utf8_next((const unsigned char *)t->pieces[i] + r, (int)(l - r), &c);
                if (!special && c < 512 && inv[c] != 0xFFFFFFFFu) d[o++] = (char)inv[c];
                else {
                    memcpy(d + o, t->pieces[i] + r, (size_t)cl);
                    o += (size_t)cl;
                }
                r += (size_t)cl;
            }
            d[o] = 0;
            t->decoded[i] = d;
        }
    }
    peft_json_free(j);
    t->bos_token = t->bos_id;
    return peft__tok_config(t, path);
}

/* ---- chat templates ---------------------------------------------------------------
   Each family rendered as its real template renders a conversation (transformers'
   apply_chat_template), then tokenized whole with the added tokens parsed (and no
   post-processor BOS: the template writes its own). The loss mask follows TRL's
   assistant-only loss: the tokens that overlap an assistant turn's content or its
   end-of-turn token (<|im_end|>, </s>, <|eot_id|>) carry loss, nothing else. */
static const char *peft__chat_role(const char *r) {
    static const char *const roles[] = { "system", "user", "assistant" };
    for (int i = 0; i < 3; i++) if (r && !strcmp(r, roles[i])) return roles[i];
    return NULL;
}

/* Python's str.strip() (Jinja's trim) on ASCII and the Unicode spaces */
static void peft__strip(const char *s, const char **a, size_t *n) {
    const char *e = s + strlen(s);
    for (;;) {
        uint32_t c;
        int l = *s ? peft__utf8_next((const unsigned char *)s, (int)(e - s), &c) : 0;
        if (!l || !(peft__is_space(c) || (c >= 0x1C && c <= 0x1F))) break;
        s += l;
    }
    while (e > s) {
        const char *q = e - 1;
        while (q > s && ((unsigned char)*q & 0xC0) == 0x80) q--;
        uint32_t c;
        peft__utf8_next((const unsigned char *)q, (int)(e - q), &c);
        if (!(peft__is_space(c) || (c >= 0x1C && c <= 0x1F))) break;
        e = q;
    }
    *a = s;
    *n = (size_t)(e - s);
}

/* the reason a conversation cannot be rendered in family chat, or NULL; names the file */
static const char *peft__chat_check(const peft_tokenizer *t, int chat, const peft_chat_message *msg,
                                    int n_msg, const char *bos, const char *eot, char *why, size_t cap) {
    const char *src = t->config_path[0] ? t->config_path : "the tokenizer";
    static const char *const names[] = { "", "ChatML", "LLaMA-2", "LLaMA-3", "Alpaca" };
    if (chat < 0)
        snprintf(why, cap,
                 "%s: chat_template is not one of the known families (ChatML, LLaMA-2 [INST] <<SYS>>, "
                 "LLaMA-3 header ids, Alpaca); give --chat-template chatml|llama2|llama3|alpaca",
                 src);
    else if (chat == PEFT_CHAT_NONE)
        snprintf(why, cap, "%s: no chat_template; give --chat-template chatml|llama2|llama3|alpaca", src);
    else if (chat > PEFT_CHAT_ALPACA)
        snprintf(why, cap, "chat template family %d is unknown", chat);
    else if (t->kind == PEFT_TOK_SCORES)
        snprintf(why, cap, "chat templates need a tokenizer.json (added tokens), not tokenizer.bin");
    else if (!eot || peft__token_by_text(t, eot) < 0)
        snprintf(why, cap, "%s: the %s chat template needs the token %s, which the tokenizer lacks", src,
                 names[chat], eot ? eot : "eos_token");
    else if (chat != PEFT_CHAT_CHATML && !bos)
        snprintf(why, cap, "%s: the %s chat template writes bos_token, which the tokenizer lacks", src,
                 names[chat]);
    else {
        int first = n_msg && msg[0].role && !strcmp(msg[0].role, "system");
        for (int i = 0; i < n_msg; i++) {
            int want_user = (i - first) % 2 == 0,
                by_turns = chat == PEFT_CHAT_LLAMA2 || chat == PEFT_CHAT_ALPACA;
            if (!peft__chat_role(msg[i].role) || !msg[i].content) {
                snprintf(why, cap,
                         "message %d: role \"%s\" is not system, user or assistant (or content missing)", i,
                         msg[i].role ? msg[i].role : "(none)");
                return why;
            }
            if (i >= first &&
                (!strcmp(msg[i].role, "system") || (by_turns && want_user != !strcmp(msg[i].role, "user")))) {
                snprintf(why, cap, "message %d: the roles must be an optional system message, then user and "
                         "assistant by turns", i);
                return why;
            }
        }
        return NULL;
    }
    return why;
}

PEFTDEF int peft_chat_encode(const peft_tokenizer *t, int chat, const peft_chat_message *msg, int n_msg,
                             int add_generation_prompt, int *ids, unsigned char *mask, int max) {
    if (!chat) chat = t->chat;
    const char *eot = NULL, *bos = t->bos_token >= 0 && t->bos_token < t->n ? t->pieces[t->bos_token] : NULL;
    const char *eos = t->eos_id >= 0 && t->eos_id < t->n ? t->pieces[t->eos_id] : NULL;
    if (chat == PEFT_CHAT_CHATML) eot = "<|im_end|>";
    if (chat == PEFT_CHAT_LLAMA3) eot = "<|eot_id|>";
    if (chat == PEFT_CHAT_LLAMA2 || chat == PEFT_CHAT_ALPACA) eot = eos;
    char why[700];
    if (peft__chat_check(t, chat, msg, n_msg, bos, eot, why, sizeof why)) {
        peft__fail(PEFT_ERR_FORMAT, "%s", why);
        return -1;
    }
    peft__sb b = { NULL, 0, 0, 0 };
    size_t *span = (size_t *)PEFT_MALLOC(sizeof(size_t) * 2 * (size_t)(n_msg + 1));
    int n_span = 0, first = n_msg && !strcmp(msg[0].role, "system");
    if (!span) {
        peft__fail(PEFT_ERR_NOMEM, "no memory");
        return -1;
    }
    const char *system = first ? msg[0].content : NULL;
    const char *a;
    size_t n;
    if (chat == PEFT_CHAT_ALPACA) {
        peft__sbf(&b, "%s", bos);
        if (system) {
            peft__strip(system, &a, &n);
            peft__sbf(&b, "%.*s\n\n", (int)n, a);
        }
    }
    if (chat == PEFT_CHAT_CHATML && !system && t->chat_default_system && n_msg)
        peft__sbf(&b, "<|im_start|>system\n%s<|im_end|>\n", t->chat_default_system);
    for (int i = chat == PEFT_CHAT_CHATML || chat == PEFT_CHAT_LLAMA3 ? 0 : first; i < n_msg; i++) {
        int is_asst = !strcmp(msg[i].role, "assistant");
        if (chat == PEFT_CHAT_CHATML) {
            peft__sbf(&b, "<|im_start|>%s\n", msg[i].role);
            if (is_asst) span[2 * n_span] = b.n;
            peft__sbf(&b, "%s<|im_end|>", msg[i].content);
            if (is_asst) span[2 * n_span++ + 1] = b.n;
            peft__sbf(&b, "\n");
        } else if (chat == PEFT_CHAT_LLAMA3) {
            peft__strip(msg[i].content, &a, &n);
            peft__sbf(&b, "%s<|start_header_id|>%s<|end_header_id|>\n\n", i == 0 ? bos : "", msg[i].role);
            if (is_asst) span[2 * n_span] = b.n;
            peft__sbf(&b, "%.*s<|eot_id|>", (int)n, a);
            if (is_asst) span[2 * n_span++ + 1] = b.n;
        } else if (chat == PEFT_CHAT_LLAMA2) {
            if (!is_asst) {
                /* the system message goes into the first user turn; strip() then takes the whole */
                char *joined = NULL;
                const char *c = msg[i].content;
                if (i == first && system) {
                    size_t jn = strlen(system) + strlen(c) + 32;
                    if (!(joined = (char *)PEFT_MALLOC(jn))) {
                        b.oom = 1;
                        break;
                    }
                    snprintf(joined, jn, "<<SYS>>\n%s\n<</SYS>>\n\n%s", system, c);
                    c = joined;
                }
                peft__strip(c, &a, &n);
                peft__sbf(&b, "%s[INST] %.*s [/INST]", bos, (int)n, a);
                PEFT_FREE(joined);
            } else {
                peft__strip(msg[i].content, &a, &n);
                peft__sbf(&b, " ");
                span[2 * n_span] = b.n;
                peft__sbf(&b, "%.*s %s", (int)n, a, eos);
                span[2 * n_span++ + 1] = b.n;
            }
        } else {
            peft__strip(msg[i].content, &a, &n);
            if (!is_asst) peft__sbf(&b, "### Instruction:\n%.*s\n\n", (int)n, a);
            else {
                peft__sbf(&b, "### Response:\n");
                span[2 * n_span] = b.n;
                peft__sbf(&b, "%.*s%s", (int)n, a, eos);
                span[2 * n_span++ + 1] = b.n;
                peft__sbf(&b, "\n\n");
            }
        }
    }
    if (add_generation_prompt) {
        if (chat == PEFT_CHAT_CHATML) peft__sbf(&b, "<|im_start|>assistant\n");
        if (chat == PEFT_CHAT_LLAMA3) peft__sbf(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        if (chat == PEFT_CHAT_ALPACA) peft__sbf(&b, "### Response:\n");
        /* LLaMA-2's template has no generation prompt: the answer follows " [/INST]" */
    }
    peft__sbf(&b, "%s", "");
    int count = -1;
    int *starts = b.oom ? NULL : (int *)PEFT_MALLOC(sizeof(int) * (b.n + 8));
    if (!starts) peft__fail(PEFT_ERR_NOMEM, "no memory");
    else if ((count = peft__encode_hf(t, b.s, 0, 0, ids, max, starts)) < 0)
        peft__fail(PEFT_ERR_ARG, "a conversation of %zu bytes does not fit in %d ids", b.n, max);
    for (int k = 0; mask && k < count; k++) {
        size_t lo = (size_t)starts[k], hi = k + 1 < count ? (size_t)starts[k + 1] : b.n;
        if (hi <= lo) hi = lo + 1;
        mask[k] = 0;
        for (int q = 0; q < n_span; q++) mask[k] |= lo < span[2 * q + 1] && hi > span[2 * q];
    }
    PEFT_FREE(starts);
    PEFT_FREE(span);
    PEFT_FREE(b.s);
    return count;
}

/* ============================================================================
   FILES: GGUF — llama.cpp's model files, read in place
   ============================================================================
   Layout (v2 and v3, little-endian): "GGUF", u32 version, u64 tensor count,
   u64 key/value count; the key/values (string key, u32 value type, value);
   the tensor infos (string name, u32 n_dims, u64 ne[n_dims] fastest first,
   u32 ggml type, u64 offset); padding to general.alignment (32 by default);
   the data section, each tensor at its offset, the offsets running in order
   with each tensor padded to the alignment (what ggml itself requires).
   Strings are a u64 length and the bytes. The reader walks the header once
   allocating nothing, checking every length and count against the bytes
   left and every tensor against the file, then allocates its tables and
   walks it again to fill them. The file is mapped, so quantized weights are
   used where they lie. */

/* every ggml type's block (elements, bytes), decoded by peft.h or not, so
   that any file can be checked and described; NULL = a retired id */
#define PEFT__GGML_ANY 42
static const struct { const char *name; int block, bytes; } peft__ggml_any[PEFT__GGML_ANY] = {
    { "F32", 1, 4 }, { "F16", 1, 2 }, { "Q4_0", 32, 18 }, { "Q4_1", 32, 20 }, { NULL, 0, 0 }, { NULL, 0, 0 },
    { "Q5_0", 32, 22 }, { "Q5_1", 32, 24 }, { "Q8_0", 32, 34 }, { "Q8_1", 32, 40 }, { "Q2_K", 256, 84 },
    { "Q3_K", 256, 110 }, { "Q4_K", 256, 144 }, { "Q5_K", 256, 176 }, { "Q6_K", 256, 210 },
    { "Q8_K", 256, 292 }, { "IQ2_XXS", 256, 66 }, { "IQ2_XS", 256, 74 }, { "IQ3_XXS", 256, 98 },
    { "IQ1_S", 256, 50 }, { "IQ4_NL", 32, 18 }, { "IQ3_S", 256, 110 }, { "IQ2_S", 256, 82 },
    { "IQ4_XS", 256, 136 }, { "I8", 1, 1 }, { "I16", 1, 2 }, { "I32", 1, 4 }, { "I64", 1, 8 },
    { "F64", 1, 8 }, { "IQ1_M", 256, 56 }, { "BF16", 1, 2 }, { NULL, 0, 0 }, { NULL, 0, 0 }, { NULL, 0, 0 },
    { "TQ1_0", 256, 54 },
    { "TQ2_0", 256, 66 }, { NULL, 0, 0 }, { NULL, 0, 0 }, { NULL, 0, 0 }, { "MXFP4", 32, 17 },
    { "NVFP4", 64, 36 }, { "Q1_0", 128, 18 },
};
static const int peft__gguf_vsize[PEFT_GGUF_N_TYPES] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
static const char *const peft__gguf_vname[PEFT_GGUF_N_TYPES] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64",
    "int64", "float64",
};

PEFTDEF const char *peft_gguf_type_name(int t) {
    return t >= 0 && t < PEFT__GGML_ANY && peft__ggml_any[t].name ? peft__ggml_any[t].name : "?";
}

static uint64_t peft__le(const uint8_t *b, int k) {
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

typedef struct { const uint8_t *p; size_t n, pos; const char *path; } peft__gr;

/* the next k bytes, or NULL when the file ends first */
static const uint8_t *peft__gr_take(peft__gr *r, uint64_t k) {
    if (k > r->n - r->pos) return NULL;
    const uint8_t *b = r->p + r->pos;
    r->pos += (size_t)k;
    return b;
}
static peft_status peft__gr_short(const peft__gr *r, const char *what, const char *name) {
    return peft__fail(PEFT_ERR_FORMAT, "%s: truncated GGUF: %s%s%s%s runs past the end of the file (%zu "
                      "bytes, at %zu)", r->path, what, name ? " of '" : "", name ? name : "", name ? "'" : "",
                      r->n, r->pos);
}

/* a printable, bounded copy of a key or name for messages */
static void peft__gguf_label(char *dst, size_t n, const uint8_t *s, uint64_t len) {
    size_t k = 0;
    for (uint64_t i = 0; i < len && k + 1 < n; i++) dst[k++] = s[i] >= 32 && s[i] < 127 ? (char)s[i] : '?';
    dst[k] = 0;
}

/* One value of type t: checked, and described in kv (no allocation). */
static peft_status peft__gguf_value(peft__gr *r, uint32_t t, const char *key, peft_gguf_kv *kv) {
    const uint8_t *b;
    if (t >= PEFT_GGUF_N_TYPES)
        return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' has value type %u, which GGUF does not define "
                          "(0-12)", r->path, key, t);
    kv->type = (int)t;
    kv->elem_type = -1;
    kv->n = 1;
    if (t == PEFT_GGUF_STRING) {
        if (!(b = peft__gr_take(r, 8))) return peft__gr_short(r, "the string length", key);
        uint64_t len = peft__le(b, 8);
        if (len > r->n - r->pos)
            return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' claims a string of %llu bytes; %zu are left in "
                              "the file", r->path, key, (unsigned long long)len, r->n - r->pos);
        kv->n = len;
        kv->data = peft__gr_take(r, len);
        return PEFT_OK;
    }
    if (t == PEFT_GGUF_ARRAY) {
        if (!(b = peft__gr_take(r, 12))) return peft__gr_short(r, "the array header", key);
        uint32_t et = (uint32_t)peft__le(b, 4);
        uint64_t cnt = peft__le(b + 4, 8);
        if (et >= PEFT_GGUF_N_TYPES)
            return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' is an array of value type %u, which GGUF does "
                              "not define", r->path, key, et);
        if (et == PEFT_GGUF_ARRAY)
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: key '%s' is an array of arrays (LLaMA models have "
                              "none; not supported)", r->path, key);
        uint64_t least = et == PEFT_GGUF_STRING ? 8 : (uint64_t)peft__gguf_vsize[et];
        if (cnt > (r->n - r->pos) / least)
            return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' claims %llu %s elements; the %zu bytes left "
                              "hold at most %llu", r->path, key, (unsigned long long)cnt,
                              peft__gguf_vname[et], r->n - r->pos,
                              (unsigned long long)((r->n - r->pos) / least));
        kv->elem_type = (int)et;
        kv->n = cnt;
        kv->data = r->p + r->pos;
        if (et == PEFT_GGUF_STRING) {
            for (uint64_t i = 0; i < cnt; i++) {
                if (!(b = peft__gr_take(r, 8))) return peft__gr_short(r, "a string length in the array", key);
                uint64_t len = peft__le(b, 8);
                if (!peft__gr_take(r, len))
                    return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s': element %llu claims a string of %llu "
                                      "bytes; %zu are left", r->path, key, (unsigned long long)i,
                                      (unsigned long long)len, r->n - r->pos);
            }
            return PEFT_OK;
        }
        b = peft__gr_take(r, cnt * least);
        for (uint64_t i = 0; et == PEFT_GGUF_BOOL && i < cnt; i++)
            if (b[i] > 1)
                return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s': element %llu is bool %u, neither 0 nor 1",
                                  r->path, key, (unsigned long long)i, b[i]);
        return PEFT_OK;
    }
    if (!(b = peft__gr_take(r, (uint64_t)peft__gguf_vsize[t]))) return peft__gr_short(r, "the value", key);
    if (t == PEFT_GGUF_BOOL && b[0] > 1)
        return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' is bool %u, neither 0 nor 1", r->path, key, b[0]);
    kv->data = b;
    return PEFT_OK;
}

static int peft__cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a,
                                                                        *(const char *const *)b); }

/* fill = 0: check everything, allocate nothing; fill = 1: fill the tables */
static peft_status peft__gguf_parse(peft_gguf *g, int fill) {
    peft__gr r = { g->file, g->file_size, 0, g->path };
    const char *path = g->path;
    const uint8_t *b;
    char label[96];
    if (g->file_size < 4 || memcmp(g->file, "GGUF", 4) != 0)
        return peft__fail(PEFT_ERR_FORMAT, "%s: not a GGUF file (it does not start with \"GGUF\")", path);
    if (!(b = peft__gr_take(&r, 24)))
        return peft__fail(PEFT_ERR_FORMAT, "%s: %zu bytes, too short for a GGUF header (24)", path,
                          g->file_size);
    uint32_t version = (uint32_t)peft__le(b + 4, 4);
    if (version == 1)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: GGUF version 1 (32-bit counts, 2023) is not supported; "
                          "convert it again with a current llama.cpp", path);
    if (version != 2 && version != 3)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are%s)", path,
                          version, (version & 0xFFFFu) == 0 ? "; this looks like a big-endian file" : "");
    uint64_t n_tensors = peft__le(b + 8, 8), n_kv = peft__le(b + 16, 8);
    /* counts that lie: a key/value takes at least 13 bytes, a tensor info 32 */
    if (n_kv > (r.n - r.pos) / 13 || n_tensors > (r.n - r.pos) / 32)
        return peft__fail(PEFT_ERR_FORMAT, "%s: the header claims %llu key/values and %llu tensors; the "
                          "file's %zu bytes cannot hold them", path, (unsigned long long)n_kv,
                          (unsigned long long)n_tensors, g->file_size);
    g->version = version;
    g->alignment = 32;
    if (fill) {
        g->kv = (peft_gguf_kv *)peft__calloc((size_t)(n_kv + 1) * sizeof *g->kv);
        g->tensors = (peft_gguf_tensor *)peft__calloc((size_t)(n_tensors + 1) * sizeof *g->tensors);
        if (!g->kv || !g->tensors)
            return peft__fail(PEFT_ERR_NOMEM, "%s: no memory for the GGUF tables", path);
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        if (!(b = peft__gr_take(&r, 8))) return peft__gr_short(&r, "a key length", NULL);
        uint64_t klen = peft__le(b, 8);
        if (klen == 0 || klen > 65535 || klen > r.n - r.pos)
            return peft__fail(PEFT_ERR_FORMAT, "%s: key/value %llu has a key of %llu bytes (1 to 65535, "
                              "within the file)", path, (unsigned long long)i, (unsigned long long)klen);
        const uint8_t *kb = peft__gr_take(&r, klen);
        peft__gguf_label(label, sizeof label, kb, klen);
        if (memchr(kb, 0, (size_t)klen))
            return peft__fail(PEFT_ERR_FORMAT, "%s: key '%s' contains a NUL byte", path, label);
        if (!(b = peft__gr_take(&r, 4))) return peft__gr_short(&r, "the value type", label);
        peft_gguf_kv kv;
        memset(&kv, 0, sizeof kv);
        peft_status s = peft__gguf_value(&r, (uint32_t)peft__le(b, 4), label, &kv);
        if (s != PEFT_OK) return s;
        if (klen == 17 && !memcmp(kb, "general.alignment", 17)) {
            uint64_t a = kv.type == PEFT_GGUF_U32 ? peft__le(kv.data, 4) : 0;
            if (a == 0 || (a & (a - 1)) || a > (1u << 20))
                return peft__fail(PEFT_ERR_FORMAT, "%s: general.alignment must be a uint32 power of two (up "
                                  "to 2^20)", path);
            g->alignment = (size_t)a;
        }
        if (fill) {
            if (!(kv.key = (char *)PEFT_MALLOC((size_t)klen + 1)))
                return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
            memcpy(kv.key, kb, (size_t)klen);
            kv.key[klen] = 0;
            g->kv[g->n_kv++] = kv;
        }
    }
    uint64_t expect = 0, end = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (!(b = peft__gr_take(&r, 8))) return peft__gr_short(&r, "a tensor name length", NULL);
        uint64_t nlen = peft__le(b, 8);
        if (nlen == 0 || nlen > 255 || nlen > r.n - r.pos)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor %llu has a name of %llu bytes (1 to 255, within "
                              "the file)", path, (unsigned long long)i, (unsigned long long)nlen);
        const uint8_t *nb = peft__gr_take(&r, nlen);
        peft__gguf_label(label, sizeof label, nb, nlen);
        if (memchr(nb, 0, (size_t)nlen))
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor name '%s' contains a NUL byte", path, label);
        if (!(b = peft__gr_take(&r, 4))) return peft__gr_short(&r, "the dimension count", label);
        uint32_t nd = (uint32_t)peft__le(b, 4);
        if (nd < 1 || nd > 4)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1 to 4)", path, label, nd);
        if (!(b = peft__gr_take(&r, 8 * (uint64_t)nd + 12)))
            return peft__gr_short(&r, "the shape, type and offset", label);
        int64_t ne[4] = { 1, 1, 1, 1 };
        uint64_t elems = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t v = peft__le(b + 8 * d, 8);
            if (v == 0 || v > ((uint64_t)1 << 62) / elems)
                return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' has dimension %u of %llu (empty or too "
                                  "large)", path, label, d, (unsigned long long)v);
            ne[d] = (int64_t)v;
            elems *= v;
        }
        uint32_t type = (uint32_t)peft__le(b + 8 * nd, 4);
        uint64_t off = peft__le(b + 8 * nd + 4, 8);
        if (type >= PEFT__GGML_ANY || !peft__ggml_any[type].name)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' has ggml type %u, which is no ggml type",
                              path, label, type);
        int blk = peft__ggml_any[type].block;
        if (ne[0] % blk)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' is %s with rows of %lld, not a multiple of "
                              "its block of %d", path, label, peft__ggml_any[type].name, (long long)ne[0],
                              blk);
        uint64_t blocks = elems / (uint64_t)blk;
        if (blocks > (uint64_t)g->file_size / (uint64_t)peft__ggml_any[type].bytes)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' (%s, %llu elements) is larger than the whole "
                              "file (%zu bytes)", path, label, peft__ggml_any[type].name,
                              (unsigned long long)elems, g->file_size);
        uint64_t nbytes = blocks * (uint64_t)peft__ggml_any[type].bytes;
        if (off % g->alignment)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' is at data offset %llu, not a multiple of "
                              "the alignment %zu", path, label, (unsigned long long)off, g->alignment);
        if (off != expect)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' is at data offset %llu but the tensors "
                              "before it end at %llu (%s)", path, label, (unsigned long long)off,
                              (unsigned long long)expect, off < expect ? "overlap" : "a hole");
        end = off + nbytes;
        expect = (end + g->alignment - 1) / g->alignment * g->alignment;
        if (end > g->file_size)
            return peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' ends at data offset %llu, past the end of "
                              "the file (%zu bytes)", path, label, (unsigned long long)end, g->file_size);
        if (fill) {
            peft_gguf_tensor *t = &g->tensors[g->n_tensors];
            if (!(t->name = (char *)PEFT_MALLOC((size_t)nlen + 1)))
                return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
            memcpy(t->name, nb, (size_t)nlen);
            t->name[nlen] = 0;
            g->n_tensors++;
            t->type = (int)type;
            t->ndim = (int)nd;
            memcpy(t->ne, ne, sizeof ne);
            t->offset = off;
            t->nbytes = (size_t)nbytes;
        }
    }
    size_t data = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors && (data > g->file_size || end > g->file_size - data))
        return peft__fail(PEFT_ERR_FORMAT, "%s: the tensor data (%llu bytes from byte %zu) runs past the end "
                          "of the file (%zu bytes): truncated", path, (unsigned long long)end, data,
                          g->file_size);
    if (!fill) return PEFT_OK;
    g->data = g->file + (data < g->file_size ? data : g->file_size);
    for (int64_t i = 0; i < g->n_tensors; i++) g->tensors[i].data = g->data + g->tensors[i].offset;
    /* names and keys are unique (sorted copies of the pointers, O(n log n)) */
    int64_t most = g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors;
    const char **names = (const char **)PEFT_MALLOC((size_t)(most + 1) * sizeof(char *));
    if (!names) return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
    for (int pass = 0; pass < 2; pass++) {
        int64_t n = pass ? g->n_tensors : g->n_kv;
        for (int64_t i = 0; i < n; i++) names[i] = pass ? g->tensors[i].name : g->kv[i].key;
        qsort(names, (size_t)n, sizeof(char *), peft__cmp_cstr);
        for (int64_t i = 1; i < n; i++)
            if (!strcmp(names[i], names[i - 1])) {
                peft_status s = peft__fail(PEFT_ERR_FORMAT, "%s: %s '%s' appears twice", path,
                                           pass ? "tensor" : "key", names[i]);
                PEFT_FREE(names);
                return s;
            }
    }
    PEFT_FREE(names);
    return PEFT_OK;
}

PEFTDEF void peft_gguf_close(peft_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++) PEFT_FREE(g->kv[i].key);
    for (int64_t i = 0; i < g->n_tensors; i++) PEFT_FREE(g->tensors[i].name);
    PEFT_FREE(g->kv);
    PEFT_FREE(g->tensors);
    peft__unmap_file((unsigned char *)g->file, g->file_size, g->mapped);
    memset(g, 0, sizeof *g);
}

PEFTDEF peft_status peft_gguf_open(peft_gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    snprintf(g->path, sizeof g->path, "%.500s", path);
    peft_status s = PEFT_OK;
    unsigned char *buf;
    s = peft__map_file(path, &buf, &g->file_size, &g->mapped);
    if (s != PEFT_OK) return s;
    g->file = buf;
    s = peft__gguf_parse(g, 0);
    if (s == PEFT_OK) s = peft__gguf_parse(g, 1);
    if (s != PEFT_OK) peft_gguf_close(g);
    return s;
}

PEFTDEF const peft_gguf_kv *peft_gguf_find(const peft_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++) if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

PEFTDEF const peft_gguf_tensor *peft_gguf_find_tensor(const peft_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_tensors; i++) if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

PEFTDEF int peft_gguf_int(const peft_gguf_kv *kv, int64_t *out) {
    if (!kv || kv->type == PEFT_GGUF_STRING || kv->type == PEFT_GGUF_ARRAY || kv->type == PEFT_GGUF_F32 ||
        kv->type == PEFT_GGUF_F64)
        return 0;
    int size = peft__gguf_vsize[kv->type];
    uint64_t v = peft__le(kv->data, size);
    int is_signed = kv->type == PEFT_GGUF_I8 || kv->type == PEFT_GGUF_I16 || kv->type == PEFT_GGUF_I32 ||
                    kv->type == PEFT_GGUF_I64;
    if (is_signed && size < 8 && (v >> (8 * size - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * size);   /* sign-extend */
    if (!is_signed && v > (uint64_t)INT64_MAX) return 0;
    *out = (int64_t)v;
    return 1;
}

PEFTDEF int peft_gguf_number(const peft_gguf_kv *kv, double *out) {
    int64_t i;
    if (kv && kv->type == PEFT_GGUF_F32) {
        uint32_t u = (uint32_t)peft__le(kv->data, 4);
        float f;
        memcpy(&f, &u, 4);
        *out = f;
        return 1;
    }
    if (kv && kv->type == PEFT_GGUF_F64) {
        uint64_t u = peft__le(kv->data, 8);
        memcpy(out, &u, 8);
        return 1;
    }
    if (!kv || kv->type == PEFT_GGUF_BOOL || !peft_gguf_int(kv, &i)) return 0;
    *out = (double)i;
    return 1;
}

PEFTDEF int peft_gguf_string(const peft_gguf_kv *kv, char *buf, size_t n) {
    if (!kv || kv->type != PEFT_GGUF_STRING || n == 0) return 0;
    size_t k = kv->n < n - 1 ? (size_t)kv->n : n - 1;
    memcpy(buf, kv->data, k);
    buf[k] = 0;
    return 1;
}

/* a string array's elements in order: call with *p = kv->data */
static const uint8_t *peft__gguf_next_str(const uint8_t **p, uint64_t *len) {
    *len = peft__le(*p, 8);
    const uint8_t *s = *p + 8;
    *p = s + *len;
    return s;
}
/* element i of a numeric array as a double */
static double peft__gguf_elem(const peft_gguf_kv *kv, uint64_t i) {
    peft_gguf_kv one = *kv;
    one.type = kv->elem_type;
    one.data = kv->data + i * (uint64_t)peft__gguf_vsize[kv->elem_type];
    double v = 0;
    if (one.type == PEFT_GGUF_BOOL) v = one.data[0];
    else peft_gguf_number(&one, &v);
    return v;
}

static int peft__starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* LLaMA-3.1's RoPE scaling is stored as rope_freqs.weight, one divisor per
   frequency (llama.cpp divides θ^(−2i/d) by it). The converter computes them
   from factor, low/high_freq_factor and original_max_position_embeddings;
   those are recovered here: factor is the largest divisor, the others are
   Meta's (1, 4, 8192), and the divisors they give must equal the file's. */
static peft_status peft__gguf_rope_freqs(const peft_gguf *g, const peft_gguf_tensor *t, peft_config *c) {
    int half = c->head_dim / 2;
    if (t->type != PEFT_GGML_F32 || t->ndim != 1 || t->ne[0] != half || half < 1 || half > 4096)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor 'rope_freqs.weight' must be F32 [%d] (head size "
                          "/ 2)", g->path, half);
    float rf[4096];
    double plain[4096], scaled[4096];
    memcpy(rf, t->data, sizeof(float) * (size_t)half);
    peft_config k = *c;
    k.rope_type = PEFT_ROPE_DEFAULT;
    peft__inv_freq(&k, plain);
    k.rope_type = PEFT_ROPE_LLAMA3;
    k.rope_factor = 0;
    for (int i = 0; i < half; i++) if (rf[i] > k.rope_factor) k.rope_factor = rf[i];
    k.rope_low_freq = 1.0f;
    k.rope_high_freq = 4.0f;
    k.rope_orig_max_pos = 8192;
    peft__inv_freq(&k, scaled);
    for (int i = 0; i < half; i++)
        if (!(fabs(plain[i] / scaled[i] - (double)rf[i]) <= 1e-4 * (double)rf[i]))
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor 'rope_freqs.weight' is not LLaMA-3.1's RoPE "
                              "scaling (factor %g, low 1, high 4, original 8192): divisor %d is %g, not %g",
                              g->path, (double)k.rope_factor, i, (double)rf[i], plain[i] / scaled[i]);
    *c = k;
    return PEFT_OK;
}

PEFTDEF peft_status peft_gguf_config(const peft_gguf *g, peft_config *c) {
    const char *path = g->path;
    char arch[64] = "", str[64];
    peft__config_defaults(c);
    if (!peft_gguf_string(peft_gguf_find(g, "general.architecture"), arch, sizeof arch))
        return peft__fail(PEFT_ERR_FORMAT, "%s: no general.architecture string: not a GGUF model", path);
    if (strcmp(arch, "llama"))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: general.architecture is '%s'; peft.h reads LLaMA models "
                          "('llama') only", path, arch);
    if (peft_gguf_string(peft_gguf_find(g, "general.type"), str, sizeof str) && strcmp(str, "model"))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: general.type is '%s', not a model%s", path, str,
                          strcmp(str, "adapter") ? "" : " (give it as the adapter, with the model it was "
                          "made for)");
    int64_t v;
    const peft_gguf_kv *qv = peft_gguf_find(g, "general.quantization_version");
    if (qv && (!peft_gguf_int(qv, &v) || v != 2))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: general.quantization_version is not 2 (the block layout "
                          "peft.h decodes)", path);
    int rope_dim = 0, key_len = 0, value_len = 0;
    char scaling[32] = "none";
    struct { const char *key; int *dst; } ints[] = {
        { "llama.context_length", &c->max_seq_len }, { "llama.embedding_length", &c->dim },
        { "llama.block_count", &c->n_layers }, { "llama.feed_forward_length", &c->hidden_dim },
        { "llama.attention.head_count", &c->n_heads }, { "llama.attention.head_count_kv", &c->n_kv_heads },
        { "llama.vocab_size", &c->vocab_size }, { "llama.rope.dimension_count", &rope_dim },
        { "llama.attention.key_length", &key_len }, { "llama.attention.value_length", &value_len },
        { "llama.rope.scaling.original_context_length", &c->rope_orig_max_pos },
    };
    struct { const char *key; float *dst; } floats[] = {
        { "llama.rope.freq_base", &c->rope_theta }, { "llama.attention.layer_norm_rms_epsilon",
                                                     &c->norm_eps },
        { "llama.rope.scaling.factor", &c->rope_factor },
    };
    for (int64_t i = 0; i < g->n_kv; i++) {
        const peft_gguf_kv *kv = &g->kv[i];
        const char *k = kv->key;
        if (peft__starts(k, "split.")) {
            if (!strcmp(k, "split.count") && peft_gguf_int(kv, &v) && v > 1)
                return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: one part of a split GGUF (split.count %lld): "
                                  "merge the parts with llama-gguf-split --merge first", path, (long long)v);
            continue;
        }
        if (!peft__starts(k, "llama."))
            continue;        /* general.*, tokenizer.*, quantize.*: not the model's math */
        int known = 0;
        for (size_t j = 0; j < sizeof ints / sizeof ints[0] && !known; j++) {
            if (strcmp(k, ints[j].key)) continue;
            known = 1;
            if (!peft_gguf_int(kv, &v) || v < 0 || v > INT32_MAX)
                return peft__fail(PEFT_ERR_CONFIG, "%s: key '%s' must be a non-negative integer%s", path, k,
                                  kv->type == PEFT_GGUF_ARRAY ? " (per-layer values are not supported)" : "");
            *ints[j].dst = (int)v;
        }
        for (size_t j = 0; j < sizeof floats / sizeof floats[0] && !known; j++) {
            double d;
            if (strcmp(k, floats[j].key)) continue;
            known = 1;
            if (!peft_gguf_number(kv, &d))
                return peft__fail(PEFT_ERR_CONFIG, "%s: key '%s' must be a number", path, k);
            *floats[j].dst = (float)d;
        }
        if (known) continue;
        if (!strcmp(k, "llama.rope.scaling.type")) {
            if (!peft_gguf_string(kv, scaling, sizeof scaling))
                return peft__fail(PEFT_ERR_CONFIG, "%s: key '%s' must be a string", path, k);
        } else if (!strcmp(k, "llama.expert_count") || !strcmp(k, "llama.expert_used_count")) {
            if (!peft_gguf_int(kv, &v) || v != 0)
                return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: key '%s': mixture-of-experts LLaMA models are "
                                  "not supported", path, k);
        } else if (strcmp(k, "llama.rope.scaling.finetuned") && strcmp(k, "llama.tensor_data_layout")) {
            /* informational keys pass above; anything else may change the math */
            return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: GGUF key '%s' is not one peft.h implements (it may "
                              "change the model's computation)", path, k);
        }
    }
    static const char *const required[] = { "llama.embedding_length", "llama.block_count",
                                           "llama.feed_forward_length", "llama.attention.head_count" };
    for (int j = 0; j < 4; j++)
        if (!peft_gguf_find(g, required[j]))
            return peft__fail(PEFT_ERR_CONFIG, "%s: key '%s' is missing", path, required[j]);
    if (!peft_gguf_find(g, "llama.attention.head_count_kv")) c->n_kv_heads = c->n_heads;
    if (key_len != value_len)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: llama.attention.key_length %d differs from value_length "
                          "%d", path, key_len, value_len);
    c->head_dim = key_len ? key_len : c->n_heads > 0 ? c->dim / c->n_heads : 0;
    if (rope_dim && rope_dim != c->head_dim)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: llama.rope.dimension_count %d is not the head size %d "
                          "(partial rotary embeddings are not supported)", path, rope_dim, c->head_dim);
    if (!strcmp(scaling, "linear")) c->rope_type = PEFT_ROPE_LINEAR;
    else if (strcmp(scaling, "none"))
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: llama.rope.scaling.type '%s' is not supported (none, "
                          "linear)", path, scaling);
    const peft_gguf_tensor *rf = peft_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf) {
        peft_status s = peft__gguf_rope_freqs(g, rf, c);
        if (s != PEFT_OK) return s;
    }
    if (!c->vocab_size) {
        const peft_gguf_kv *tok = peft_gguf_find(g, "tokenizer.ggml.tokens");
        const peft_gguf_tensor *emb = peft_gguf_find_tensor(g, "token_embd.weight");
        if (tok && tok->type == PEFT_GGUF_ARRAY && tok->n <= INT32_MAX) c->vocab_size = (int)tok->n;
        else if (emb && emb->ndim == 2) c->vocab_size = (int)emb->ne[1];
    }
    c->tie_embeddings = peft_gguf_find_tensor(g, "output.weight") == NULL;
    c->attn_bias = peft_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    c->mlp_bias = peft_gguf_find_tensor(g, "blk.0.ffn_gate.bias") != NULL;
    if (peft_gguf_int(peft_gguf_find(g, "tokenizer.ggml.bos_token_id"), &v)) c->bos_id = (int)v;
    if (peft_gguf_int(peft_gguf_find(g, "tokenizer.ggml.eos_token_id"), &v)) c->eos_id = (int)v;
    return peft_config_validate(c, path);
}

/* ---- a LLaMA from a GGUF ----------------------------------------------------------
   token_embd, output_norm, output (absent: tied) and blk.N.{attn_norm,
   ffn_norm, attn_q/k/v/output, ffn_gate/up/down}. Block linears, token_embd
   and output other than F32 stay in their ggml type as a peft_qmatrix over
   the mapping (w->data is freed); the norms are decoded to fp32. llama.cpp's
   converter stores Q and K with each head's rows reordered for its RoPE on
   adjacent pairs: GGUF row
   h·d + 2i + j holds HF row h·d + j·d/2 + i (i < d/2, j ∈ {0, 1}); loading
   puts them back (moving whole rows, so quantized rows keep their bytes). */
static int64_t peft__gguf_src_row(int64_t r, int hd, int heads) {
    if (!heads) return r;
    int64_t h = r / hd, j = r % hd, half = j / (hd / 2), i = j % (hd / 2);
    return h * hd + 2 * i + half;
}

static peft_status peft__gguf_floats(const peft_gguf *g, const peft_gguf_tensor *t, float *dst, int hd,
                                     int heads) {
    int64_t rows = 1, cols = t->ne[0];
    for (int d = 1; d < t->ndim; d++) rows *= t->ne[d];
    if (peft_ggml_block_size(t->type) <= 0)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' is %s, a ggml type peft.h does not decode",
                          g->path, t->name, peft_gguf_type_name(t->type));
    size_t rb = t->nbytes / (size_t)rows;
    for (int64_t r = 0; r < rows; r++)
        peft_ggml_dequantize(t->type, t->data + (size_t)peft__gguf_src_row(r, hd, heads) * rb, cols,
                             dst + r * cols);
    return PEFT_OK;
}

static const char *const peft__gguf_sites[PEFT_N_SITES] = { "attn_q", "attn_k", "attn_v", "attn_output",
                                                           "ffn_gate", "ffn_up", "ffn_down" };

/* the GGUF name of a model parameter */
static void peft__gguf_name(const peft_model *m, const peft_tensor *p, char *buf, size_t n) {
    snprintf(buf, n, "%s",
             p == m->embed ? "token_embd.weight" : p == m->norm ? "output_norm.weight" : "output.weight");
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const peft_layer *L = &m->layers[l];
        if (p == L->attn_norm) snprintf(buf, n, "blk.%d.attn_norm.weight", l);
        if (p == L->ffn_norm) snprintf(buf, n, "blk.%d.ffn_norm.weight", l);
        for (int k = 0; k < PEFT_N_SITES; k++) {
            if (p == L->lin[k].w) snprintf(buf, n, "blk.%d.%s.weight", l, peft__gguf_sites[k]);
            if (p == L->lin[k].b) snprintf(buf, n, "blk.%d.%s.bias", l, peft__gguf_sites[k]);
        }
    }
}

static peft_status peft__gguf_place(peft_model *m, const peft_gguf_tensor *t, uint8_t *done) {
    const peft_gguf *g = m->gguf;
    const char *const *site_names = peft__gguf_sites;
    peft_tensor *p = NULL;
    peft_linear_site *S = NULL;
    int heads = 0;
    if (!strcmp(t->name, "rope_freqs.weight")) return PEFT_OK;   /* taken into the config */
    if (!strcmp(t->name, "token_embd.weight")) p = m->embed;
    else if (!strcmp(t->name, "output_norm.weight")) p = m->norm;
    else if (!strcmp(t->name, "output.weight")) p = m->lm_head;
    else if (peft__starts(t->name, "blk.")) {
        char *end;
        long l = strtol(t->name + 4, &end, 10);
        if (end != t->name + 4 && *end == '.' && l >= 0 && l < m->cfg.n_layers) {
            peft_layer *L = &m->layers[l];
            const char *what = end + 1;
            if (!strcmp(what, "attn_norm.weight")) p = L->attn_norm;
            else if (!strcmp(what, "ffn_norm.weight")) p = L->ffn_norm;
            for (int k = 0; k < PEFT_N_SITES && !p; k++) {
                size_t len = strlen(site_names[k]);
                if (strncmp(what, site_names[k], len)) continue;
                if (!strcmp(what + len, ".weight")) S = &L->lin[k];
                if (S) p = S->w;
                else if (!strcmp(what + len, ".bias")) p = L->lin[k].b;
                if (p) heads = k == PEFT_Q ? m->cfg.n_heads : k == PEFT_K ? m->cfg.n_kv_heads : 0;
            }
        }
    }
    if (!p)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' is not part of a LLaMA model as peft.h "
                          "knows it", g->path, t->name);
    int idx = 0;
    while (m->params[idx] != p) idx++;
    int same = t->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++) same = t->ne[d] == p->shape[p->ndim - 1 - d];
    if (!same)
        return peft__fail(PEFT_ERR_SHAPE, "%s: tensor '%s' has %d dimensions [%lld, %lld] (ne, fastest "
                          "first) but the config implies [%lld, %lld]", g->path, t->name, t->ndim,
                          (long long)t->ne[0], (long long)t->ne[1], (long long)p->shape[p->ndim - 1],
                          (long long)(p->ndim > 1 ? p->shape[0] : 1));
    if (peft_ggml_block_size(t->type) <= 0)
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tensor '%s' is %s, a ggml type peft.h does not decode "
                          "(it decodes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K "
                          "and Q6_K)", g->path, t->name, peft_gguf_type_name(t->type));
    done[idx] = 1;
    int hd = m->cfg.head_dim;
    /* block linears, the embedding and an untied output stay in their blocks */
    peft_qmatrix **slot = S ? &S->qm : p == m->embed ? &m->embed_qm : p == m->lm_head ? &m->head_qm : NULL;
    if (!slot || t->type == PEFT_GGML_F32) {
        peft_status s = peft__gguf_floats(g, t, p->data, hd, heads);
        peft__map_release(t->data, t->nbytes, g->mapped);   /* decoded: the file's copy can leave memory */
        return s;
    }
    /* a matrix kept in its ggml type: rows [out or vocab], each of in (dim) elements */
    peft_qmatrix *q = (peft_qmatrix *)peft__calloc(sizeof *q);
    if (!q) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    *slot = q;                                        /* freed with the model on any error */
    q->type = t->type;
    q->rows = p->shape[0];
    q->cols = p->shape[1];
    q->row_bytes = t->nbytes / (size_t)q->rows;
    q->data = t->data;
    if (heads) {
        uint8_t *own = (uint8_t *)PEFT_MALLOC(t->nbytes);
        if (!own) return peft__fail(PEFT_ERR_NOMEM, "no memory");
        for (int64_t r = 0; r < q->rows; r++) {
            size_t src = (size_t)peft__gguf_src_row(r, hd, heads);
            memcpy(own + (size_t)r * q->row_bytes, t->data + src * q->row_bytes, q->row_bytes);
        }
        q->owned = own;
        q->data = own;
        peft__map_release(t->data, t->nbytes, g->mapped);
    }
    PEFT_FREE(p->data);
    p->data = NULL;
    return PEFT_OK;
}

static peft_status peft__load_gguf(peft_model **out, const char *path) {
    peft_gguf *g = (peft_gguf *)peft__calloc(sizeof *g);
    if (!g) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    peft_status s = peft_gguf_open(g, path);
    peft_config c;
    peft_model *m = NULL;
    if (s == PEFT_OK) s = peft_gguf_config(g, &c);
    if (s == PEFT_OK) s = peft_model_new(&m, &c, 0, 0);
    if (s != PEFT_OK) {
        if (g->file) peft_gguf_close(g);
        PEFT_FREE(g);
        return s;
    }
    m->gguf = g;                                      /* closed with the model */
    snprintf(m->path, sizeof m->path, "%s", path);
    uint8_t *done = (uint8_t *)peft__calloc((size_t)m->n_params + 1);
    if (!done) s = peft__fail(PEFT_ERR_NOMEM, "no memory");
    for (int64_t i = 0; i < g->n_tensors && s == PEFT_OK; i++) s = peft__gguf_place(m, &g->tensors[i], done);
    for (int i = 0; i < m->n_params && s == PEFT_OK; i++)
        if (!done[i]) {
            char name[96];
            peft__gguf_name(m, m->params[i], name, sizeof name);
            s = peft__fail(PEFT_ERR_FORMAT, "%s: tensor '%s' (%s) is missing", path, name,
                           m->params[i]->name);
        }
    PEFT_FREE(done);
    if (s == PEFT_OK && m->cfg.tie_embeddings) m->head_qm = m->embed_qm;   /* one table, both uses */
    if (s != PEFT_OK) {
        peft_model_free(m);
        return s;
    }
    *out = m;
    return PEFT_OK;
}


/* ---- the tokenizer in a GGUF (tokenizer.ggml.*) -------------------------------------
     llama   SentencePiece: tokens ("▁" kept as a space), scores, token types;
             the highest-scoring merge first, byte fallback <0xXX> (ids 3-258)
     gpt2    byte-level BPE: tokens in GPT-2's byte alphabet, merges "a b" in
             rank order; tokenizer.ggml.pre names the split: llama3 /
             llama-v3 / llama-bpe (LLaMA-3's regex, whole-word pieces taken
             as they are), smollm (digits one by one, then GPT-2's regex),
             gpt-2 (GPT-2's regex)
   Control (3) and user-defined (4) tokens are matched in the raw text first
   and never split. Every tokenizer.* key is used, checked or (informational
   ids and named templates) passed over; an unknown tokenizer.ggml key is an
   error naming it. */
static peft_status peft__tokenizer_load_gguf(peft_tokenizer *t, const char *path) {
    static const char *const info_keys[] = {
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.separator_token_id",
        "tokenizer.ggml.cls_token_id", "tokenizer.ggml.mask_token_id", "tokenizer.ggml.prefix_token_id",
        "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id", "tokenizer.ggml.fim_pre_token_id",
        "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id",
        "tokenizer.ggml.fim_pad_token_id",
        "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id", "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.remove_extra_whitespaces",
        "tokenizer.ggml.token_type_count", "tokenizer.ggml.add_sep_token",
    };
    memset(t, 0, sizeof *t);
    peft_gguf g;
    peft_status s = peft_gguf_open(&g, path);
    if (s != PEFT_OK) return s;
    char model[32] = "", pre[64] = "";
    int64_t v;
    const peft_gguf_kv *tokens = peft_gguf_find(&g, "tokenizer.ggml.tokens");
    const peft_gguf_kv *scores = peft_gguf_find(&g, "tokenizer.ggml.scores");
    const peft_gguf_kv *types = peft_gguf_find(&g, "tokenizer.ggml.token_type");
    const peft_gguf_kv *merges = peft_gguf_find(&g, "tokenizer.ggml.merges");
    const peft_gguf_kv *kv;
    for (int64_t i = 0; i < g.n_kv && s == PEFT_OK; i++) {
        const char *k = g.kv[i].key;
        int known = 0;
        for (size_t j = 0; j < sizeof info_keys / sizeof info_keys[0]; j++) known |= !strcmp(k, info_keys[j]);
        if (peft__starts(k, "tokenizer.ggml.") && !known)
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tokenizer key '%s' is not one peft.h implements", path,
                           k);
        else if (!strcmp(k, "tokenizer.ggml.remove_extra_whitespaces") && g.kv[i].type == PEFT_GGUF_BOOL &&
                 g.kv[i].data[0])
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tokenizer.ggml.remove_extra_whitespaces = true is not "
                           "supported", path);
        else if (peft__starts(k, "tokenizer.") && !peft__starts(k, "tokenizer.ggml.") &&
                 !peft__starts(k, "tokenizer.chat_template") && strcmp(k, "tokenizer.huggingface.json"))
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tokenizer key '%s' is not one peft.h implements", path,
                           k);
    }
    if (s == PEFT_OK && !peft_gguf_string(peft_gguf_find(&g, "tokenizer.ggml.model"), model, sizeof model))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: no tokenizer.ggml.model: the file holds no tokenizer", path);
    if (s == PEFT_OK && strcmp(model, "llama") && strcmp(model, "gpt2"))
        s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%s' is not supported ('llama' and "
                       "'gpt2' are)", path, model);
    if (s == PEFT_OK && (!tokens || tokens->type != PEFT_GGUF_ARRAY ||
                         tokens->elem_type != PEFT_GGUF_STRING || tokens->n < 1 || tokens->n > (1u << 22)))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: tokenizer.ggml.tokens must be an array of 1 to 2^22 strings",
                       path);
    int n = s == PEFT_OK ? (int)tokens->n : 0, spm = !strcmp(model, "llama");
    if (s == PEFT_OK && scores && (scores->type != PEFT_GGUF_ARRAY || scores->elem_type != PEFT_GGUF_F32 ||
                                   (int)scores->n != n))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: tokenizer.ggml.scores must be %d float32 values", path, n);
    if (s == PEFT_OK && types && (types->type != PEFT_GGUF_ARRAY || types->elem_type != PEFT_GGUF_I32 ||
                                  (int)types->n != n))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be %d int32 values", path, n);
    if (s == PEFT_OK && spm && !scores)
        s = peft__fail(PEFT_ERR_FORMAT, "%s: a 'llama' tokenizer needs tokenizer.ggml.scores", path);
    if (s == PEFT_OK && !spm && (!merges || merges->type != PEFT_GGUF_ARRAY ||
                                 merges->elem_type != PEFT_GGUF_STRING))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: a 'gpt2' tokenizer needs tokenizer.ggml.merges (an array of "
                       "strings)", path);
    if (s != PEFT_OK) {
        peft_gguf_close(&g);
        return s;
    }
    t->kind = spm ? PEFT_TOK_SCORES : PEFT_TOK_HF_BYTES;
    t->bos_id = t->eos_id = t->unk_id = t->eot_id = t->pad_id = -1;
    t->add_bos = spm;
    t->n = n;
    t->pieces = (char **)peft__calloc(sizeof(char *) * (size_t)n);
    t->scores = (float *)peft__calloc(sizeof(float) * (size_t)n);
    t->sorted = (int *)PEFT_MALLOC(sizeof(int) * (size_t)n);
    t->special = (int *)PEFT_MALLOC(sizeof(int) * (size_t)n);
    if (!t->pieces || !t->scores || !t->sorted || !t->special) {
        s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        goto done;
    }
    const uint8_t *p = tokens->data;
    for (int i = 0; i < n; i++) {
        uint64_t len;
        const uint8_t *str = peft__gguf_next_str(&p, &len);
        char *piece = (char *)PEFT_MALLOC((size_t)len + 1);
        if (!piece) {
            s = peft__fail(PEFT_ERR_NOMEM, "no memory");
            goto done;
        }
        size_t o = 0;
        for (uint64_t r = 0; r < len;) {                /* SentencePiece: "▁" (E2 96 81) kept as a space */
            int meta = spm && r + 2 < len && str[r] == 0xE2 && str[r + 1] == 0x96 && str[r + 2] == 0x81;
            piece[o++] = meta ? ' ' : (char)str[r];
            r += meta ? 3 : 1;
        }
        piece[o] = 0;
        t->pieces[i] = piece;
        if (strlen(piece) != o) {
            s = peft__fail(PEFT_ERR_FORMAT, "%s: token %d contains a NUL byte", path, i);
            goto done;
        }
        if ((int)o > t->max_len) t->max_len = (int)o;
        t->scores[i] = scores ? (float)peft__gguf_elem(scores, (uint64_t)i) : -(float)i;
        int type = types ? (int)peft__gguf_elem(types, (uint64_t)i) : 1;
        if (!spm && (type == 3 || type == 4)) t->special[t->n_special++] = i;
    }
    struct { const char *key; int *dst; } ids[] = {
        { "tokenizer.ggml.bos_token_id", &t->bos_id }, { "tokenizer.ggml.eos_token_id", &t->eos_id },
        { "tokenizer.ggml.unknown_token_id", &t->unk_id }, { "tokenizer.ggml.padding_token_id", &t->pad_id },
        { "tokenizer.ggml.eot_token_id", &t->eot_id },
    };
    for (size_t j = 0; j < sizeof ids / sizeof ids[0]; j++) {
        if (!(kv = peft_gguf_find(&g, ids[j].key))) continue;
        if (!peft_gguf_int(kv, &v) || v < 0 || v >= n) {
            s = peft__fail(PEFT_ERR_FORMAT, "%s: %s is not a token id (0 to %d)", path, ids[j].key, n - 1);
            goto done;
        }
        *ids[j].dst = (int)v;
    }
    struct { const char *key; int *dst; } flags[] = {
        { "tokenizer.ggml.add_bos_token", &t->add_bos }, { "tokenizer.ggml.add_eos_token", &t->add_eos },
        { "tokenizer.ggml.add_space_prefix", &t->prefix_space },
    };
    t->prefix_space = spm;
    for (size_t j = 0; j < sizeof flags / sizeof flags[0]; j++) {
        if (!(kv = peft_gguf_find(&g, flags[j].key))) continue;
        if (kv->type != PEFT_GGUF_BOOL) {
            s = peft__fail(PEFT_ERR_FORMAT, "%s: %s must be a bool", path, flags[j].key);
            goto done;
        }
        *flags[j].dst = kv->data[0];
    }
    /* the BOS a chat template writes (LLaMA-2/3's), whether or not encoding adds it */
    t->bos_token = t->bos_id;
    /* BOS as encoding adds it (as the tokenizer.json loader does): only when the file says so */
    if (!t->add_bos) t->bos_id = -1;
    if ((kv = peft_gguf_find(&g, "tokenizer.chat_template"))) {
        if (kv->type != PEFT_GGUF_STRING || !(t->chat_template = (char *)PEFT_MALLOC((size_t)kv->n + 1))) {
            s = peft__fail(kv->type != PEFT_GGUF_STRING ? PEFT_ERR_FORMAT : PEFT_ERR_NOMEM,
                           "%s: tokenizer.chat_template must be a string", path);
            goto done;
        }
        peft_gguf_string(kv, t->chat_template, (size_t)kv->n + 1);
        /* the family recognised from the template, as for tokenizer_config.json's */
        t->chat = peft_chat_detect(t->chat_template);
        if (t->chat == PEFT_CHAT_CHATML)
            t->chat_default_system = peft__chatml_default_system(t->chat_template);
        snprintf(t->config_path, sizeof t->config_path, "%.500s", path);
    }
    for (int i = 0; i < n; i++) t->sorted[i] = i;
    peft__sort_tok = t;
    qsort(t->sorted, (size_t)n, sizeof(int), peft__cmp_piece);
    if (spm) {
        /* the scores encoder's byte fallback is id = byte + 3 (LLaMA's vocabulary) */
        int b0 = peft__piece_id(t, "<0x00>");
        if (!t->prefix_space)
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: a 'llama' tokenizer without add_space_prefix is not "
                           "supported", path);
        else if (b0 >= 0 && b0 != 3)
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: byte token <0x00> is id %d, not 3 as in LLaMA's "
                           "vocabulary", path, b0);
        goto done;
    }
    for (int byte = 0; byte < 256 && t->unk_id < 0; byte++) {   /* a byte without a token becomes unk */
        char one[8];
        one[peft__put_utf8(one, peft__byte_char(byte))] = 0;
        if (peft__piece_id(t, one) < 0) {
            s = peft__fail(PEFT_ERR_FORMAT,
                           "%s: the byte-level vocabulary has no token for byte 0x%02X and no "
                           "tokenizer.ggml.unknown_token_id",
                           path, byte);
            goto done;
        }
    }
    if (!peft_gguf_string(peft_gguf_find(&g, "tokenizer.ggml.pre"), pre, sizeof pre)) {
        s = peft__fail(PEFT_ERR_FORMAT, "%s: a 'gpt2' tokenizer needs tokenizer.ggml.pre (which split it "
                       "uses)", path);
        goto done;
    }
    if (!strcmp(pre, "llama3") || !strcmp(pre, "llama-v3") || !strcmp(pre, "llama-bpe")) {
        t->pretok = 2;
        t->ignore_merges = 1;
    }
    else if (!strcmp(pre, "smollm")) {
        t->pretok = 1;
        t->split_digits = 1;
    }
    else if (!strcmp(pre, "gpt-2")) t->pretok = 1;
    else {
        s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre '%s' is not supported (llama3, "
                       "llama-v3, llama-bpe, smollm, gpt-2 are)", path, pre);
        goto done;
    }
    int cap = 16;
    while (cap < 2 * (int)merges->n + 16) cap *= 2;
    t->merge_cap = cap;
    t->merge_key = (uint64_t *)PEFT_MALLOC(sizeof(uint64_t) * (size_t)cap);
    t->merge_rank = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap);
    t->merge_out = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap);
    char *buf = (char *)PEFT_MALLOC((size_t)t->max_len * 2 + 16);
    if (!t->merge_key || !t->merge_rank || !t->merge_out || !buf) {
        PEFT_FREE(buf);
        s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        goto done;
    }
    for (int i = 0; i < cap; i++) t->merge_rank[i] = -1;
    p = merges->data;
    for (uint64_t i = 0; i < merges->n && s == PEFT_OK; i++) {
        uint64_t len;
        const uint8_t *str = peft__gguf_next_str(&p, &len);
        const uint8_t *sp = (const uint8_t *)memchr(str, ' ', (size_t)len);
        size_t la = sp ? (size_t)(sp - str) : 0, lb = sp ? (size_t)len - la - 1 : 0;
        int a = -1, b = -1, o = -1;
        if (sp && la + lb <= (size_t)t->max_len) {
            memcpy(buf, str, la);
            buf[la] = 0;
            a = peft__piece_id(t, buf);
            memcpy(buf, sp + 1, lb);
            buf[lb] = 0;
            b = peft__piece_id(t, buf);
            memcpy(buf, str, la);
            memcpy(buf + la, sp + 1, lb);
            buf[la + lb] = 0;
            o = peft__piece_id(t, buf);
        }
        if (a < 0 || b < 0 || o < 0)
            s = peft__fail(PEFT_ERR_FORMAT, "%s: merge %llu is not \"a b\" over tokens of the vocabulary",
                           path, (unsigned long long)i);
        else peft__merge_put(t, a, b, (int)i, o);
    }
    PEFT_FREE(buf);
    if (s != PEFT_OK) goto done;
    /* what each piece is as bytes, for decoding */
    t->decoded = (char **)peft__calloc(sizeof(char *) * (size_t)n);
    if (!t->decoded) {
        s = peft__fail(PEFT_ERR_NOMEM, "no memory");
        goto done;
    }
    uint32_t inv[512];
    for (int i = 0; i < 512; i++) inv[i] = 0xFFFFFFFFu;
    for (int b = 0; b < 256; b++) inv[peft__byte_char(b)] = (uint32_t)b;
    int k = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(t->pieces[i]), o = 0;
        char *d = (char *)PEFT_MALLOC(l + 1);
        if (!d) {
            s = peft__fail(PEFT_ERR_NOMEM, "no memory");
            goto done;
        }
        int special = k < t->n_special && t->special[k] == i;
        if (special) k++;
        for (size_t r = 0; r < l;) {
            uint32_t c;
            int cl = peft__utf8_next((const unsigned char *)t->pieces[i] + r, (int)(l - r), &c);
            if (!special && c < 512 && inv[c] != 0xFFFFFFFFu) d[o++] = (char)inv[c];
            else memcpy(d + o, t->pieces[i] + r, (size_t)cl);
            if (special || c >= 512 || inv[c] == 0xFFFFFFFFu) o += (size_t)cl;
            r += (size_t)cl;
        }
        d[o] = 0;
        t->decoded[i] = d;
    }
done:
    peft_gguf_close(&g);
    if (s != PEFT_OK) peft_tokenizer_free(t);
    return s;
}

/* tokenizer.json: the pre-tokenizer each tokenizer.ggml.pre names, as the
   model's own tokenizer.json spells it */
static void peft__gguf_pretok_json(peft__sb *b, const peft_tokenizer *t) {
    static const char llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    peft__sbf(b, "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [");
    if (t->split_digits) peft__sbf(b, "{\"type\": \"Digits\", \"individual_digits\": true}, ");
    if (t->pretok == 2) {
        peft__sbf(b, "{\"type\": \"Split\", \"pattern\": {\"Regex\": ");
        peft__sb_jstr(b, llama3);
        peft__sbf(b, "}, \"behavior\": \"Isolated\", \"invert\": false}, ");
    }
    peft__sbf(b, "{\"type\": \"ByteLevel\", \"add_prefix_space\": %s, \"trim_offsets\": true, \"use_regex\": "
              "%s}]},\n", t->prefix_space ? "true" : "false", t->pretok == 1 ? "true" : "false");
}

PEFTDEF peft_status peft_gguf_write_tokenizer(const char *gguf_path, const char *dir) {
    peft_tokenizer t;
    peft_status s = peft__tokenizer_load_gguf(&t, gguf_path);
    if (s != PEFT_OK) return s;
    if (t.kind != PEFT_TOK_HF_BYTES) {
        peft_tokenizer_free(&t);
        return peft__fail(PEFT_ERR_UNSUPPORTED, "%s: a SentencePiece ('llama') tokenizer has no merges to "
                          "write a tokenizer.json from; use the model's own tokenizer.model", gguf_path);
    }
    for (int i = 1; i < t.n && s == PEFT_OK; i++)        /* a JSON vocabulary cannot hold a piece twice */
        if (!strcmp(t.pieces[t.sorted[i]], t.pieces[t.sorted[i - 1]]))
            s = peft__fail(PEFT_ERR_UNSUPPORTED, "%s: token '%s' appears twice in the vocabulary (ids %d and "
                           "%d)", gguf_path, t.pieces[t.sorted[i]], t.sorted[i - 1], t.sorted[i]);
    peft_gguf g;
    memset(&g, 0, sizeof g);
    if (s == PEFT_OK) s = peft_gguf_open(&g, gguf_path);
    if (s == PEFT_OK) s = peft__mkdir(dir);
    if (s != PEFT_OK) {
        if (g.file) peft_gguf_close(&g);
        peft_tokenizer_free(&t);
        return s;
    }
    peft__sb b = { 0, 0, 0, 0 };
    peft__sbf(&b, "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,\n\"added_tokens\": [");
    for (int k = 0; k < t.n_special; k++) {
        peft__sbf(&b, "%s\n  {\"id\": %d, \"content\": ", k ? "," : "", t.special[k]);
        peft__sb_jstr(&b, t.pieces[t.special[k]]);
        peft__sbf(&b, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": "
                  "false, \"special\": true}");
    }
    peft__sbf(&b, "],\n\"normalizer\": null,\n");
    peft__gguf_pretok_json(&b, &t);
    if (t.add_bos && t.bos_id >= 0) {
        const char *bos = t.pieces[t.bos_id];
        peft__sbf(&b, "\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                  "[{\"SpecialToken\": {\"id\": ");
        peft__sb_jstr(&b, bos);
        peft__sbf(&b, ", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": "
                  "[{\"SpecialToken\": {\"id\": ");
        peft__sb_jstr(&b, bos);
        peft__sbf(&b, ", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"Sequence\": "
                  "{\"id\": \"B\", \"type_id\": 1}}], \"special_tokens\": {");
        peft__sb_jstr(&b, bos);
        peft__sbf(&b, ": {\"id\": ");
        peft__sb_jstr(&b, bos);
        peft__sbf(&b, ", \"ids\": [%d], \"tokens\": [", t.bos_id);
        peft__sb_jstr(&b, bos);
        peft__sbf(&b, "]}}},\n");
    } else peft__sbf(&b, "\"post_processor\": null,\n");
    peft__sbf(&b, "\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": "
              "true, \"use_regex\": true},\n");
    peft__sbf(&b, "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
              "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": false, "
              "\"byte_fallback\": false, \"ignore_merges\": %s,\n\"vocab\": {",
              t.ignore_merges ? "true" : "false");
    for (int i = 0; i < t.n; i++) {
        peft__sbf(&b, "%s", i ? ", " : "");
        peft__sb_jstr(&b, t.pieces[i]);
        peft__sbf(&b, ": %d", i);
    }
    peft__sbf(&b, "},\n\"merges\": [");
    const peft_gguf_kv *mg = peft_gguf_find(&g, "tokenizer.ggml.merges");
    const uint8_t *p = mg->data;
    char piece[1024];
    for (uint64_t i = 0; i < mg->n; i++) {
        uint64_t len;
        const uint8_t *str = peft__gguf_next_str(&p, &len);
        if (len >= sizeof piece) len = sizeof piece - 1;  /* merges join two tokens: far shorter */
        memcpy(piece, str, (size_t)len);
        piece[len] = 0;
        peft__sbf(&b, "%s", i ? ", " : "");
        peft__sb_jstr(&b, piece);
    }
    peft__sbf(&b, "]}}\n");
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    s = b.oom ? peft__fail(PEFT_ERR_NOMEM, "no memory") : peft_write_file_atomic(path, b.s, b.n);
    /* tokenizer_config.json: the special tokens, the flags and the chat template */
    b.n = 0;
    peft__sbf(&b, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"add_bos_token\": %s,\n  "
              "\"add_eos_token\": %s,\n  \"clean_up_tokenization_spaces\": false",
              t.add_bos ? "true" : "false", t.add_eos ? "true" : "false");
    int64_t bos = -1;                                 /* named even when encoding adds none */
    if (!peft_gguf_int(peft_gguf_find(&g, "tokenizer.ggml.bos_token_id"), &bos) || bos < 0 || bos >= t.n)
        bos = -1;
    struct { const char *name; int id; } sp[] = {
        { "bos_token", (int)bos }, { "eos_token", t.eos_id }, { "unk_token", t.unk_id },
        { "pad_token", t.pad_id },
    };
    for (int k = 0; k < 4; k++) {
        if (sp[k].id < 0) continue;
        peft__sbf(&b, ",\n  \"%s\": ", sp[k].name);
        peft__sb_jstr(&b, t.pieces[sp[k].id]);
    }
    if (t.chat_template) {
        peft__sbf(&b, ",\n  \"chat_template\": ");
        peft__sb_jstr(&b, t.chat_template);
    }
    peft__sbf(&b, "\n}\n");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (s == PEFT_OK)
        s = b.oom ? peft__fail(PEFT_ERR_NOMEM, "no memory") : peft_write_file_atomic(path, b.s, b.n);
    PEFT_FREE(b.s);
    peft_gguf_close(&g);
    peft_tokenizer_free(&t);
    return s;
}

/* ============================================================================
   DATA: token files and batches
   ============================================================================ */

PEFTDEF peft_status peft_tokens_load(const char *path, int vocab_size, int **ids, int64_t *n) {
    unsigned char *buf;
    size_t len;
    *ids = NULL;
    *n = 0;
    peft_status s = peft_read_file(path, &buf, &len);
    if (s != PEFT_OK) return s;
    int numeric = len > 0;
    for (size_t i = 0; i < len && numeric; i++)
        numeric = (buf[i] >= '0' && buf[i] <= '9') || buf[i] == ' ' || buf[i] == ',' || buf[i] == '\n' ||
                  buf[i] == '\r' || buf[i] == '\t';
    int *out = (int *)PEFT_MALLOC((len + 1) * sizeof(int));
    if (!out) {
        PEFT_FREE(buf);
        return peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
    }
    int64_t k = 0;
    if (numeric) {
        for (size_t i = 0; i < len;) {
            if (buf[i] < '0' || buf[i] > '9') {
                i++;
                continue;
            }
            long v = 0;
            while (i < len && buf[i] >= '0' && buf[i] <= '9') {
                if (v < 100000000) v = v * 10 + (buf[i] - '0');
                i++;
            }
            if (v >= vocab_size) {
                PEFT_FREE(out);
                PEFT_FREE(buf);
                return peft__fail(PEFT_ERR_ARG,
                                  "%s: token id %ld (entry %lld) is outside the vocabulary (size %d)", path,
                                  v, (long long)k, vocab_size);
            }
            out[k++] = (int)v;
        }
    } else {
        if (vocab_size < 256) {
            PEFT_FREE(out);
            PEFT_FREE(buf);
            return peft__fail(
                    PEFT_ERR_ARG,
                    "%s: text is read as bytes, which needs a vocabulary of at least 256 (model has %d)",
                    path, vocab_size);
        }
        for (size_t i = 0; i < len; i++) out[k++] = buf[i];
    }
    PEFT_FREE(buf);
    *ids = out;
    *n = k;
    return PEFT_OK;
}

PEFTDEF void peft_batch_sample(peft_rng *r, const int *ids, int64_t n, int B, int T, int *tokens,
                               int *targets) {
    for (int b = 0; b < B; b++) {
        int64_t start = (int64_t)(peft_rng_u64(r) % (uint64_t)(n - T));
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = ids[start + t];
            targets[b * T + t] = ids[start + t + 1];
        }
    }
}

/* ---- supervised datasets --------------------------------------------------- */
typedef struct {
    int *ids;
    int64_t n, cap;
    int64_t *start;
    int *masked;
    int count, cap_ex;
    unsigned char *loss;
} peft__dsb;

/* one example; loss (may be NULL) marks the ids with loss, else all after the first `masked` */
static int peft__dsb_add_mask(peft__dsb *b, const int *ids, int n, int masked, const unsigned char *loss) {
    if (b->n + n > b->cap) {
        int64_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->n + n) nc *= 2;
        int *ni = (int *)PEFT_REALLOC(b->ids, (size_t)nc * sizeof(int));
        if (!ni) return 0;
        b->ids = ni;
        unsigned char *nl = (unsigned char *)PEFT_REALLOC(b->loss, (size_t)nc);
        if (!nl) return 0;
        b->loss = nl;
        b->cap = nc;
    }
    for (int i = 0; i < n; i++) b->loss[b->n + i] = loss ? loss[i] : i >= masked;
    if (b->count + 2 > b->cap_ex) {
        int nc = b->cap_ex ? b->cap_ex * 2 : 256;
        int64_t *ns = (int64_t *)PEFT_REALLOC(b->start, (size_t)(nc + 1) * sizeof(int64_t));
        if (!ns) return 0;
        b->start = ns;
        int *nm = (int *)PEFT_REALLOC(b->masked, (size_t)nc * sizeof(int));
        if (!nm) return 0;
        b->masked = nm;
        b->cap_ex = nc;
    }
    if (b->count == 0) b->start[0] = 0;
    memcpy(b->ids + b->n, ids, (size_t)n * sizeof(int));
    b->n += n;
    b->masked[b->count] = masked;
    b->start[++b->count] = b->n;
    return 1;
}
static int peft__dsb_add(peft__dsb *b, const int *ids, int n, int masked) {
    return peft__dsb_add_mask(b, ids, n, masked, NULL);
}
static void peft__dsb_free(peft__dsb *b) {
    PEFT_FREE(b->ids);
    PEFT_FREE(b->start);
    PEFT_FREE(b->masked);
    PEFT_FREE(b->loss);
}

/* a chat record {"messages": [{"role", "content"}, ...]} → one example, loss on the assistant turns */
static peft_status peft__ds_chat(peft_dataset *d, peft__dsb *b, const peft_json *msgs,
                                 const peft_tokenizer *t, int max_len, const char *where) {
    if (msgs->type != PEFT_JSON_ARRAY || msgs->n_children < 1)
        return peft__fail(PEFT_ERR_FORMAT, "%s: \"messages\" is not a list of messages", where);
    peft_chat_message *m =
        (peft_chat_message *)PEFT_MALLOC(sizeof(peft_chat_message) * (size_t)msgs->n_children);
    if (!m) return peft__fail(PEFT_ERR_NOMEM, "no memory");
    int k = 0;
    size_t total = 64;
    for (const peft_json *x = msgs->child; x; x = x->next, k++) {
        const peft_json *role = x->type == PEFT_JSON_OBJECT ? peft_json_get(x, "role") : NULL;
        const peft_json *content = x->type == PEFT_JSON_OBJECT ? peft_json_get(x, "content") : NULL;
        for (const peft_json *f = x->type == PEFT_JSON_OBJECT ? x->child : NULL; f; f = f->next)
            if (strcmp(f->key, "role") && strcmp(f->key, "content")) {
                PEFT_FREE(m);
                return peft__fail(PEFT_ERR_UNSUPPORTED,
                                  "%s: message %d: key \"%s\" is not supported (only role and content)",
                                  where, k, f->key);
            }
        if (!role || !content || role->type != PEFT_JSON_STRING || content->type != PEFT_JSON_STRING) {
            PEFT_FREE(m);
            return peft__fail(PEFT_ERR_FORMAT, "%s: message %d needs string \"role\" and \"content\"", where,
                              k);
        }
        m[k].role = role->string;
        m[k].content = content->string;
        total += strlen(content->string) + 64;
    }
    int cap = (int)(total < (size_t)1 << 28 ? total : (size_t)1 << 28);
    int *ids = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap);
    unsigned char *loss = (unsigned char *)PEFT_MALLOC((size_t)cap);
    peft_status st = PEFT_OK;
    int n = ids && loss ? peft_chat_encode(t, 0, m, k, 0, ids, loss, cap) : -2;
    if (n == -2) st = peft__fail(PEFT_ERR_NOMEM, "no memory");
    else if (n < 0) {
        char why[1024];
        snprintf(why, sizeof why, "%s", peft_last_error());
        st = peft__fail(PEFT_ERR_FORMAT, "%s: %s", where, why);
    }
    else {
        int cut = n > max_len;
        if (cut) n = max_len;
        int masked = 0, any = 0;
        while (masked < n && !loss[masked]) masked++;
        for (int i = 1; i < n; i++) any |= loss[i];        /* the first id is never a target */
        if (!any) d->n_dropped++;
        else if (!peft__dsb_add_mask(b, ids, n, masked, loss))
            st = peft__fail(PEFT_ERR_NOMEM, "no memory for %s", where);
        else d->n_truncated += cut;
    }
    PEFT_FREE(m);
    PEFT_FREE(ids);
    PEFT_FREE(loss);
    return st;
}

/* one record → one example; returns PEFT_OK, or an error naming the record */
static peft_status peft__ds_record(peft_dataset *d, peft__dsb *b, const peft_json *r, const peft_tokenizer *t,
                                   int max_len, const char *where) {
    const peft_json *ins = peft_json_get(r, "instruction"), *inp = peft_json_get(r, "input"),
                    *out = peft_json_get(r, "output");
    const peft_json *pr = peft_json_get(r, "prompt"), *co = peft_json_get(r, "completion"),
                    *tx = peft_json_get(r, "text");
    const char *prompt = NULL, *answer = NULL;
    char *prompt_buf = NULL;
    if (r->type != PEFT_JSON_OBJECT)
        return peft__fail(PEFT_ERR_FORMAT, "%s: a record is not a JSON object", where);
    const peft_json *msgs = peft_json_get(r, "messages");
    if (msgs) return peft__ds_chat(d, b, msgs, t, max_len, where);
    if (ins || out) {
        if (!ins || !out || ins->type != PEFT_JSON_STRING || out->type != PEFT_JSON_STRING ||
            (inp && inp->type != PEFT_JSON_STRING))
            return peft__fail(PEFT_ERR_FORMAT,
                              "%s: an Alpaca record needs string \"instruction\" and \"output\"", where);
        size_t n = strlen(ins->string) + (inp ? strlen(inp->string) : 0) + 512;
        prompt_buf = (char *)PEFT_MALLOC(n);
        if (!prompt_buf) return peft__fail(PEFT_ERR_NOMEM, "no memory");
        peft_alpaca_prompt(ins->string, inp ? inp->string : "", prompt_buf, n);
        prompt = prompt_buf;
        answer = out->string;
    } else if (pr || co) {
        if (!pr || !co || pr->type != PEFT_JSON_STRING || co->type != PEFT_JSON_STRING)
            return peft__fail(PEFT_ERR_FORMAT, "%s: a prompt/completion record needs both as strings", where);
        prompt = pr->string;
        answer = co->string;
    } else if (tx && tx->type == PEFT_JSON_STRING) {
        prompt = "";
        answer = tx->string;
    } else
        return peft__fail(PEFT_ERR_FORMAT,
                          "%s: a record has none of instruction/output, prompt/completion, text", where);
    size_t lp = strlen(prompt), la = strlen(answer);
    char *full = (char *)PEFT_MALLOC(lp + la + 1);
    int cap = (int)(lp + la) + 8, *buf = (int *)PEFT_MALLOC(sizeof(int) * (size_t)cap * 2);
    if (!full || !buf) {
        PEFT_FREE(full);
        PEFT_FREE(buf);
        PEFT_FREE(prompt_buf);
        return peft__fail(PEFT_ERR_NOMEM, "no memory");
    }
    memcpy(full, prompt, lp);
    memcpy(full + lp, answer, la + 1);
    peft_status st = PEFT_OK;
    int n = peft_tokenizer_encode(t, full, 1, 1, buf, cap);
    int masked = lp ? peft_tokenizer_encode(t, prompt, 1, 0, buf + cap, cap) : 1;
    if (n < 0 || masked < 0) st = peft__fail(PEFT_ERR_ARG, "%s: a record is too long to tokenize", where);
    else {
        /* an answer that already ends with the EOS text gets no second one (TRL's add_eos) */
        if (t->eos_id >= 0 && n >= 2 && buf[n - 1] == t->eos_id && buf[n - 2] == t->eos_id && n - 1 > masked)
            n--;
        int cut = n > max_len;
        if (cut) n = max_len;
        if (masked >= n) d->n_dropped++;                  /* no target left */
        else if (!peft__dsb_add(b, buf, n, masked))
            st = peft__fail(PEFT_ERR_NOMEM, "no memory for %s", where);
        else d->n_truncated += cut;
    }
    PEFT_FREE(full);
    PEFT_FREE(buf);
    PEFT_FREE(prompt_buf);
    return st;
}

static peft_status peft__ds_stream(peft_dataset *d, peft__dsb *b, const int *ids, int64_t n, int max_len) {
    for (int64_t at = 0; at + 1 < n; at += max_len) {
        int len = n - at < max_len ? (int)(n - at) : max_len;
        if (len < 2) break;
        if (!peft__dsb_add(b, ids + at, len, 1))
            return peft__fail(PEFT_ERR_NOMEM, "no memory for %s", d->path);
    }
    return PEFT_OK;
}

static int peft__ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

PEFTDEF peft_status peft_dataset_load(peft_dataset *d, const char *path, const peft_tokenizer *t,
                                      int max_len) {
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", path);
    if (max_len < 2) return peft__fail(PEFT_ERR_ARG, "%s: max_len must be at least 2", path);
    int is_json = peft__ends_with(path, ".json"), is_jsonl = peft__ends_with(path, ".jsonl"),
        is_txt = peft__ends_with(path, ".txt");
    if ((is_json || is_jsonl) && !t)
        return peft__fail(PEFT_ERR_ARG, "%s: text records need a tokenizer", path);
    if (!t) is_txt = 0;                                   /* ids or bytes, as peft_tokens_load reads them */
    unsigned char *buf = NULL;
    size_t len = 0;
    peft__dsb b;
    memset(&b, 0, sizeof b);
    peft_status s = PEFT_OK;
    if (!is_json && !is_jsonl && !is_txt) {
        int *ids;
        int64_t n;
        s = peft_tokens_load(path, t ? t->n : 1 << 30, &ids, &n);
        if (s == PEFT_OK) {
            s = peft__ds_stream(d, &b, ids, n, max_len);
            PEFT_FREE(ids);
        }
        goto done;
    }
    s = peft_read_file(path, &buf, &len);
    if (s != PEFT_OK) return s;
    if (is_txt) {
        int cap = (int)(len < (size_t)1 << 28 ? len : (size_t)1 << 28) + 8;
        int *work = (int *)PEFT_MALLOC((size_t)cap * sizeof(int));
        char *text = (char *)PEFT_MALLOC(len + 1);
        if (!text || !work) s = peft__fail(PEFT_ERR_NOMEM, "%s: no memory", path);
        else {
            memcpy(text, buf, len);
            text[len] = 0;
            int n = peft_tokenizer_encode(t, text, 1, 1, work, cap);
            s = n < 0 ? peft__fail(PEFT_ERR_ARG, "%s: cannot tokenize", path)
                      : peft__ds_stream(d, &b, work, n, max_len);
        }
        PEFT_FREE(text);
        PEFT_FREE(work);
    } else if (is_json) {
        peft_json *root;
        s = peft_json_parse(&root, (const char *)buf, len, path);
        if (s == PEFT_OK) {
            if (root->type != PEFT_JSON_ARRAY)
                s = peft__fail(PEFT_ERR_FORMAT, "%s: expected a JSON array of records", path);
            int i = 0;
            for (const peft_json *r = root->child; r && s == PEFT_OK; r = r->next, i++) {
                char where[600];
                snprintf(where, sizeof where, "%s: record %d", path, i);
                s = peft__ds_record(d, &b, r, t, max_len, where);
            }
            peft_json_free(root);
        }
    } else {
        size_t at = 0;
        for (int line = 1; at < len && s == PEFT_OK; line++) {
            size_t end = at;
            while (end < len && buf[end] != '\n') end++;
            size_t a = at;
            while (a < end && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r')) a++;
            if (a < end) {
                char where[600];
                snprintf(where, sizeof where, "%s:%d", path, line);
                peft_json *r;
                s = peft_json_parse(&r, (const char *)buf + a, end - a, where);
                if (s == PEFT_OK) {
                    s = peft__ds_record(d, &b, r, t, max_len, where);
                    peft_json_free(r);
                }
            }
            at = end + 1;
        }
    }
    PEFT_FREE(buf);
done:
    if (s == PEFT_OK && b.count == 0)
        s = d->n_dropped
                    ? peft__fail(
                              PEFT_ERR_ARG,
                              "%s: all %d examples dropped: none has a target among its first %d "
                              "predicted tokens (a prompt that long needs a larger --seq; a chat needs an "
                              "assistant turn)",
                              path, d->n_dropped, max_len - 1)
                    : peft__fail(PEFT_ERR_FORMAT, "%s: no usable examples", path);
    if (s != PEFT_OK) {
        peft__dsb_free(&b);
        return s;
    }
    d->ids = b.ids;
    d->start = b.start;
    d->n_masked = b.masked;
    d->n = b.count;
    d->n_tokens = b.n;
    d->loss = b.loss;
    return PEFT_OK;
}

PEFTDEF void peft_dataset_free(peft_dataset *d) {
    PEFT_FREE(d->ids);
    PEFT_FREE(d->start);
    PEFT_FREE(d->n_masked);
    PEFT_FREE(d->loss);
    memset(d, 0, sizeof *d);
}

PEFTDEF void peft_dataset_order(int n, uint64_t seed, int epoch, int *order) {
    peft_rng r;
    peft_rng_seed(&r, seed * 1000003u + (uint64_t)epoch);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {                  /* Fisher–Yates */
        int j = (int)(peft_rng_u64(&r) % (uint64_t)(i + 1)), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
}

PEFTDEF peft_status peft_dataset_split(peft_dataset *d, peft_dataset *held, int n, uint64_t seed) {
    memset(held, 0, sizeof *held);
    snprintf(held->path, sizeof held->path, "%.480s (held out)", d->path);
    if (n < 1 || n >= d->n)
        return peft__fail(PEFT_ERR_ARG, "%s: cannot hold out %d of %d examples", d->path, n, d->n);
    int *order = (int *)PEFT_MALLOC(sizeof(int) * (size_t)d->n);
    peft__dsb keep, out;
    memset(&keep, 0, sizeof keep);
    memset(&out, 0, sizeof out);
    int ok = order != NULL;
    if (ok) peft_dataset_order(d->n, seed, -1, order);
    char *is_held = ok ? (char *)peft__calloc((size_t)d->n) : NULL;
    ok = ok && is_held;
    for (int i = 0; ok && i < n; i++) is_held[order[i]] = 1;
    for (int i = 0; ok && i < d->n; i++)                        /* file order kept on both sides */
        ok = peft__dsb_add_mask(is_held[i] ? &out : &keep, d->ids + d->start[i],
                                (int)(d->start[i + 1] - d->start[i]), d->n_masked[i],
                                d->loss ? d->loss + d->start[i] : NULL);
    PEFT_FREE(order);
    PEFT_FREE(is_held);
    if (!ok) {
        peft__dsb_free(&keep);
        peft__dsb_free(&out);
        return peft__fail(PEFT_ERR_NOMEM, "no memory to split %s", d->path);
    }
    char path[512];
    memcpy(path, d->path, sizeof path);
    peft_dataset_free(d);
    d->ids = keep.ids;
    d->start = keep.start;
    d->n_masked = keep.masked;
    d->n = keep.count;
    d->n_tokens = keep.n;
    held->ids = out.ids;
    held->start = out.start;
    held->n_masked = out.masked;
    held->n = out.count;
    held->n_tokens = out.n;
    d->loss = keep.loss;
    held->loss = out.loss;
    memcpy(d->path, path, sizeof path);
    return PEFT_OK;
}

PEFTDEF int peft_dataset_batch(const peft_dataset *d, const int *idx, int B, int T, int pad_id, int *tokens,
                               int *targets) {
    int L = 1;
    for (int b = 0; b < B; b++) {
        int len = (int)(d->start[idx[b] + 1] - d->start[idx[b]]) - 1;
        if (len > L) L = len;
    }
    if (L > T) L = T;
    for (int b = 0; b < B; b++) {
        const int *ex = d->ids + d->start[idx[b]];
        int len = (int)(d->start[idx[b] + 1] - d->start[idx[b]]) - 1, masked = d->n_masked[idx[b]];
        for (int t = 0; t < L; t++) {
            int in = t < len;
            tokens[b * L + t] = in ? ex[t] : pad_id;
            int has_loss = in && (d->loss ? d->loss[d->start[idx[b]] + t + 1] : t + 1 >= masked);
            targets[b * L + t] = has_loss ? ex[t + 1] : -100;
        }
    }
    return L;
}

/* ============================================================================
   GENERATION
   ============================================================================ */

PEFTDEF peft_status peft_generation_config_load(peft_generation_config *g, const char *path) {
    memset(g, 0, sizeof *g);
    g->bos_id = g->pad_id = g->do_sample = g->top_k = g->max_new_tokens = g->max_length = -1;
    g->temperature = g->top_p = g->repetition_penalty = -1.0f;
    peft_json *j;
    peft_status s = peft_json_load(&j, path);
    if (s != PEFT_OK) return s;
    if (j->type != PEFT_JSON_OBJECT) {
        peft_json_free(j);
        return peft__fail(PEFT_ERR_FORMAT, "%s: not a JSON object", path);
    }
    /* keys that change nothing in greedy or sampled decoding of one sequence with a KV cache */
    static const char *const inert[] = { "transformers_version",
                                         "_from_model_config",
                                         "use_cache",
                                         "output_attentions",
                                         "output_hidden_states",
                                         "output_scores",
                                         "return_dict_in_generate",
                                         NULL };
    for (const peft_json *v = j->child; v && s == PEFT_OK; v = v->next) {
        const char *k = v->key;
        int known = 0, bad = 0, r = 0;
        for (int i = 0; inert[i]; i++) known |= !strcmp(k, inert[i]);
        if (known) continue;
        known = 1;
        if (!strcmp(k, "eos_token_id")) bad = !peft__eos_list(v, g->eos_ids, &g->n_eos);
        else if (!strcmp(k, "bos_token_id")) r = peft__json_int(j, k, &g->bos_id);
        else if (!strcmp(k, "pad_token_id")) r = peft__json_int(j, k, &g->pad_id);
        else if (!strcmp(k, "top_k")) r = peft__json_int(j, k, &g->top_k);
        else if (!strcmp(k, "max_new_tokens")) r = peft__json_int(j, k, &g->max_new_tokens);
        else if (!strcmp(k, "max_length")) r = peft__json_int(j, k, &g->max_length);
        else if (!strcmp(k, "temperature")) r = peft__json_float(j, k, &g->temperature);
        else if (!strcmp(k, "top_p")) r = peft__json_float(j, k, &g->top_p);
        else if (!strcmp(k, "repetition_penalty")) r = peft__json_float(j, k, &g->repetition_penalty);
        else if (!strcmp(k, "do_sample")) {
            bad = v->type != PEFT_JSON_BOOL && v->type != PEFT_JSON_NULL;
            if (v->type == PEFT_JSON_BOOL) g->do_sample = v->number != 0;
        } else if (!strcmp(k, "num_beams") || !strcmp(k, "num_return_sequences")) {
            int x = 1;                                     /* 1 is what peft generate does */
            r = peft__json_int(j, k, &x);
            known = x == 1;
        } else known = 0;
        if (bad || r < 0) s = peft__fail(PEFT_ERR_FORMAT, "%s: %s has a value of the wrong type", path, k);
        else if (!known) {
            size_t used = strlen(g->unused);
            snprintf(g->unused + used, sizeof g->unused - used, "%s%s", used ? ", " : "", k);
        }
    }
    if (s == PEFT_OK && ((g->top_p >= 0 && (g->top_p <= 0 || g->top_p > 1)) ||
                         (g->temperature >= 0 && g->temperature == 0 && g->do_sample == 1) ||
                         (g->repetition_penalty >= 0 && g->repetition_penalty <= 0)))
        s = peft__fail(PEFT_ERR_FORMAT, "%s: temperature, top_p or repetition_penalty out of range", path);
    if (s == PEFT_OK && g->do_sample == 1 && g->top_k < 0) g->top_k = 50;
    peft_json_free(j);
    return s;
}

PEFTDEF int peft_generate_greedy(peft_model *m, peft_graph *g, const int *prompt, int n_prompt,
                                 int max_new, int eos, int *out) {
    /* no sampler: argmax */
    return peft_generate(m, g, prompt, n_prompt, max_new, eos, NULL, out, NULL, NULL);
}

static PEFT__TLS const float *peft__sort_probs;          /* per thread: see THREADS in the manual */
static int peft__cmp_prob(const void *a, const void *b) {
    float x = peft__sort_probs[*(const int *)a], y = peft__sort_probs[*(const int *)b];
    return x < y ? 1 : x > y ? -1 : (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

PEFTDEF int peft_sample(const float *logits, int n, const peft_sampler *s, peft_rng *rng, float *p,
                        int *idx) {
    int best = 0;
    for (int i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    if (!s || s->temperature <= 0.0f) return best;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        p[i] = expf((logits[i] - logits[best]) / s->temperature);
        sum += p[i];
        idx[i] = i;
    }
    for (int i = 0; i < n; i++) p[i] = (float)(p[i] / sum);
    peft__sort_probs = p;
    qsort(idx, (size_t)n, sizeof(int), peft__cmp_prob);      /* descending, ties by id */
    int keep = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    double cum = 0.0;
    for (int i = 0; i < keep; i++) {
        cum += p[idx[i]];
        if (s->top_p > 0.0f && s->top_p < 1.0f && cum >= s->top_p) {
            keep = i + 1;
            break;
        }
    }
    double mass = 0.0;
    for (int i = 0; i < keep; i++) mass += p[idx[i]];
    double r = (double)peft_rng_uniform(rng) * mass, c = 0.0;
    for (int i = 0; i < keep; i++) {
        c += p[idx[i]];
        if (r < c) return idx[i];
    }
    return idx[keep - 1];
}

/* The prompt runs once through the model to fill the cache; then one token
   per step. The adapter prompts' keys/values are computed on that first call. */
PEFTDEF int peft_generate(peft_model *m, peft_graph *g, const int *prompt, int n_prompt, int max_new, int eos,
                          const peft_sampler *s, int *out, int (*on_token)(void *ctx, int id), void *ctx) {
    int V = m->cfg.vocab_size, n = 0, limit = m->cfg.max_seq_len;
    if (max_new < 1) return 0;
    if (n_prompt < 1 || n_prompt >= limit) {
        peft__fail(PEFT_ERR_ARG, "generate: the prompt has %d tokens; the model takes 1 to %d", n_prompt,
                   limit - 1);
        return -1;
    }
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V) {
            peft__fail(PEFT_ERR_ARG, "generate: prompt token %d has id %d, outside the vocabulary (size %d)",
                       i, prompt[i], V);
            return -1;
        }
    if (n_prompt + max_new < limit) limit = n_prompt + max_new;
    int *idx = (int *)PEFT_MALLOC(sizeof(int) * (size_t)V);
    float *p = (float *)PEFT_MALLOC(sizeof(float) * (size_t)V);
    peft_kv_cache *cache = NULL;
    peft_rng rng;
    peft_rng_seed(&rng, s ? s->seed : 0);
    int failed = 1;                 /* until the loop has run to its end */
    if (!idx || !p) peft__fail(PEFT_ERR_NOMEM, "generate: no memory for a vocabulary of %d", V);
    else if (peft_kv_cache_new(&cache, m, 1, limit) == PEFT_OK) {
        int grad = g->grad_enabled, id = 0;
        peft_graph_set_grad(g, 0);
        const int *feed = prompt;
        int n_feed = n_prompt;
        failed = 0;
        while (n < max_new) {
            peft_graph_reset(g);
            peft_tensor *lg = peft_model_forward_cached(m, g, cache, feed, 1, n_feed);
            if (!lg) {
                failed = 1;
                break;
            }
            float *last = lg->data + (size_t)(n_feed - 1) * V;
            if (s && s->repetition_penalty > 0.0f && s->repetition_penalty != 1.0f) {
                memset(idx, 0, sizeof(int) * (size_t)V);      /* each id once, as torch's scatter */
                for (int k = 0; k < n_prompt + n; k++) {
                    int u = k < n_prompt ? prompt[k] : out[k - n_prompt];
                    if (u < 0 || u >= V || idx[u]) continue;
                    idx[u] = 1;
                    last[u] =
                        last[u] > 0.0f ? last[u] / s->repetition_penalty : last[u] * s->repetition_penalty;
                }
            }
            id = peft_sample(last, V, s, &rng, p, idx);
            out[n++] = id;
            int stop = id == eos;
            for (int k = 0; s && k < s->n_stop; k++) stop |= id == s->stop[k];
            if ((on_token && on_token(ctx, id)) || stop || n_prompt + n >= limit) break;
            feed = &out[n - 1];
            n_feed = 1;
        }
        peft_graph_set_grad(g, grad);
    }
    peft_kv_cache_free(cache);
    PEFT_FREE(idx);
    PEFT_FREE(p);
    return failed ? -1 : n;
}

PEFTDEF void peft_alpaca_prompt(const char *instruction, const char *input, char *out, size_t n) {
    if (input && *input)
        snprintf(out, n,
                 "Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n### "
                 "Instruction:\n%s\n\n"
                 "### Input:\n%s\n\n### Response:",
                 instruction, input);
    else
        snprintf(out, n, "Below is an instruction that describes a task. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n%s\n\n### Response:", instruction);
}

#endif /* PEFT__IMPLEMENTED */
#endif /* PEFT_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 the peft.h authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
In jurisdictions that recognize copyright laws, the author or authors of this
software dedicate any and all copyright interest in the software to the public
domain. We make this dedication in recognition of the generosity, and in
perpetuation of the public domain, with every copy of the software. THE
SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
------------------------------------------------------------------------------
*/
