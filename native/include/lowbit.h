/*
 * lowbit.h - the public C API of Lowbit's kernel library.
 *
 * This is the only public header. Everything between LB_CDEF_BEGIN and
 * LB_CDEF_END is read verbatim by the cffi build (native/build_ffi.py), so that
 * part must stay plain C declarations: no macros, no #if.
 *
 * Conventions
 *   - Every function that can fail returns an lb_status. On failure it leaves a
 *     human-readable message in a thread-local buffer, read with lb_last_error().
 *     Nothing in the library calls exit() or abort().
 *   - Sizes are checked: every function that reads caller memory takes the size
 *     of that memory in bytes and refuses a size that does not match the shape.
 *   - Tensor type ids are GGML's own (the numbers stored in GGUF tensor infos),
 *     and the quantized blocks use GGML's byte layouts (see lb_blocks.h).
 *   - Tensor shapes follow GGUF/GGML order: ne0 is the length of a row (the
 *     fastest-varying dimension), ne1 the number of rows.
 */
#ifndef LOWBIT_H
#define LOWBIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* LB_CDEF_BEGIN */

typedef enum lb_status {
    LB_OK = 0,
    LB_ERR_INVALID_ARGUMENT = 1, /* a bad shape, size, type or value from the caller */
    LB_ERR_UNSUPPORTED = 2,      /* a valid request this build cannot serve */
    LB_ERR_OUT_OF_MEMORY = 3,
    LB_ERR_CONTEXT_FULL = 4,     /* the tokens do not fit in the KV cache */
    LB_ERR_CANCELLED = 5,        /* lb_model_cancel() was called during the work */
    LB_ERR_INTERNAL = 6
} lb_status;

/* Tensor types. Values are GGML's type ids, but for Q16: the 16-bit
 * activation format that Q8_0 weights are multiplied with, so that an 8-bit
 * weight does not meet an 8-bit rounding of its input as well (its blocks are
 * in lb_blocks.h; no file ever stores it). */
enum lb_type {
    LB_TYPE_F32 = 0,
    LB_TYPE_F16 = 1,
    LB_TYPE_Q4_0 = 2,
    LB_TYPE_Q4_1 = 3,
    LB_TYPE_Q5_0 = 6,
    LB_TYPE_Q5_1 = 7,
    LB_TYPE_Q8_0 = 8,
    LB_TYPE_Q8_1 = 9,   /* activations only */
    LB_TYPE_Q2_K = 10,
    LB_TYPE_Q3_K = 11,
    LB_TYPE_Q4_K = 12,
    LB_TYPE_Q5_K = 13,
    LB_TYPE_Q6_K = 14,
    LB_TYPE_Q8_K = 15,  /* activations only */
    LB_TYPE_IQ4_NL = 20,
    LB_TYPE_BF16 = 30,
    LB_TYPE_Q16 = 64    /* activations only; Lowbit's own, clear of GGML's ids */
};

/* Message of the last failed call made by this thread ("" if none). */
const char *lb_last_error(void);

/* Library version string, e.g. "0.1.0". */
const char *lb_version(void);

/* ---- tensor types ------------------------------------------------------ */

/* 1 if the type can be used as a weight in lb_model_set_tensor, else 0. */
int lb_type_is_supported(int32_t type);

/* Elements per block and bytes per block of a type (1 and 4 for F32). */
lb_status lb_type_info(int32_t type, int64_t *block_size, size_t *type_size);

/* Bytes of one row of n elements; n must be a multiple of the block size. */
lb_status lb_row_size(int32_t type, int64_t n, size_t *out_bytes);

/* Decode n elements of `type` from src (src_size bytes) to float32. */
lb_status lb_dequantize(int32_t type, const void *src, size_t src_size,
                        float *dst, int64_t n);

/* Encode n float32 values into blocks of `type` with the reference encoder,
 * i.e. without importance, on the calling thread. Every type has one: F32, F16
 * and BF16 round each value to nearest even (overflow gives inf, NaN stays
 * NaN); Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 write the same bytes as gguf-py's
 * quantize() (GGML's reference encoders); Q2_K..Q6_K and IQ4_NL search the
 * block scales for the least squared error; Q8_1 and Q8_K are the activation
 * formats of lb_vec_dot, and so is Q16 (roundf of x * 32767 / max|x| per
 * block of 32, with a float32 scale). The quantized types refuse non-finite
 * values and blocks whose fp16 scale would overflow. */
lb_status lb_quantize(int32_t type, const float *src, int64_t n,
                      void *dst, size_t dst_size);

/* Encode nrows rows of n_per_row float32 values (row-major, src) into blocks
 * of the weight type `type`, written row after row to dst (dst_size bytes,
 * nrows times the lb_row_size of a row). importance: NULL, or n_per_row
 * finite non-negative weights, one per column (e.g. the mean squared
 * activation that multiplies that column); with it each block of the
 * quantized types keeps, of the reference encoding and a search for the
 * scales (and mins) that minimise sum(importance * (x - decoded)^2), the one
 * with the smaller weighted error (a block whose weights are all 0 keeps the
 * reference encoding); F32, F16 and BF16 ignore it. Without importance the
 * bytes are those of lb_quantize. The rows are shared out over n_threads
 * threads (1..1024); the result does not depend on it. Refuses non-finite
 * values in src, and values whose encoding would be infinite (an fp16 scale,
 * or an F16/BF16 value, beyond its range); dst is then unspecified. */
lb_status lb_quantize_rows(int32_t type, const float *src, int64_t nrows, int64_t n_per_row,
                           const float *importance, void *dst, size_t dst_size,
                           int32_t n_threads);

/* Dot products of `rows` weight rows (w, w_size bytes, each n elements of
 * `type`) with the float32 vector x (n elements), the way the forward pass
 * does them: x is first encoded to the type's activation format (Q16 for
 * Q8_0; Q8_1 for Q4_1 and Q5_1; Q8_K for the K-quants; F32 for the float
 * types; Q8_0 for the others) and the dot products are then taken on the
 * encoded values.
 * Writes `rows` floats to out. */
lb_status lb_vec_dot(int32_t type, int64_t n, int64_t rows, const void *w,
                     size_t w_size, const float *x, float *out);

/* The attention softmax in place over n floats, as the forward pass takes
 * it: x = x * scale, then exp(x - max) / sum, with the library's own exp
 * (relative error within a few float ulps; below exp(-87) it gives 0) and the
 * sum in a fixed order, so every instruction-set path gives the same floats.
 * The max skips NaNs, but a NaN reaches the sum and so makes every output NaN. */
lb_status lb_softmax(int64_t n, float *x, float scale);

/* SwiGLU in place, as the feed-forward takes it: g[i] = g[i] / (1 +
 * exp(-g[i])) * u[i] for i < n, with lb_softmax's exp. */
lb_status lb_swiglu(int64_t n, float *g, const float *u);

/* ---- instruction-set paths --------------------------------------------- */

/* The kernel path in use: "scalar" (portable C, the reference), "avx2"
 * (AVX2, FMA, F16C), "avx512" (AVX-512 F/BW/VL with VNNI) or "neon" (arm64
 * with the dot-product extension). On first use the library picks the best
 * path the CPU and operating system support; the environment variable
 * LOWBIT_ISA (one of the names, or "auto") asks for another, and a path the
 * CPU lacks then falls back to the best one, with a warning on stderr. The
 * paths agree up to float rounding in the order of summation; the
 * activation encodings (Q8_0, Q8_1, Q8_K, Q16) are the same bytes on every
 * path. */
const char *lb_isa(void);

/* Switch to the named path ("auto" or NULL: the best available). An unknown
 * name is LB_ERR_INVALID_ARGUMENT; a path this CPU or build lacks is
 * LB_ERR_UNSUPPORTED, and the current path stays. Safe from any thread: calls
 * already running finish on the path they started with. */
lb_status lb_set_isa(const char *name);

/* ---- models ------------------------------------------------------------ */

enum lb_arch {
    LB_ARCH_LLAMA = 0,  /* Llama 2/3.x, Mistral, SmolLM, TinyLlama */
    LB_ARCH_QWEN2 = 1   /* as llama, plus biases on Q, K and V */
};

enum lb_rope_kind {
    LB_ROPE_NORM = 0,   /* rotate adjacent pairs (x[2i], x[2i+1]): GGUF llama */
    LB_ROPE_NEOX = 1    /* rotate halves (x[i], x[i + d/2]): qwen2 */
};

typedef struct lb_model_config {
    int32_t arch;          /* enum lb_arch */
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;     /* n_head must be a multiple of it */
    int32_t head_dim;      /* must be even */
    int32_t n_ff;
    float rms_eps;
    int32_t rope_kind;     /* enum lb_rope_kind */
    int32_t rope_dim;      /* rotated dimensions per head, even, <= head_dim */
    float rope_theta;      /* frequency base */
    float rope_pos_scale;  /* positions are multiplied by this (1 = none; linear scaling) */
    int32_t n_ctx;         /* KV cache length in tokens */
    int32_t n_batch;       /* tokens per internal step of a long prompt */
    int32_t n_threads;     /* worker threads, >= 1 */
    int32_t kv_type;       /* LB_TYPE_F16, or LB_TYPE_Q8_0 (head_dim a multiple of 32) */
} lb_model_config;

/* What a tensor is to the model. Per-layer roles take a layer index; the
 * others take layer -1. Shapes are [ne0, ne1]:
 *   TOKEN_EMBD [n_embd, n_vocab]   OUTPUT [n_embd, n_vocab] (optional: tied)
 *   OUTPUT_NORM, ATTN_NORM, FFN_NORM [n_embd] F32
 *   ATTN_Q [n_embd, n_head*head_dim]   ATTN_K, ATTN_V [n_embd, n_head_kv*head_dim]
 *   ATTN_OUT [n_head*head_dim, n_embd]
 *   ATTN_Q_BIAS [n_head*head_dim], ATTN_K_BIAS, ATTN_V_BIAS [n_head_kv*head_dim] F32
 *   FFN_GATE, FFN_UP [n_embd, n_ff]   FFN_DOWN [n_ff, n_embd]
 *   ROPE_FREQS [rope_dim/2] F32, optional: per-frequency divisors (llama3 scaling) */
enum lb_tensor_role {
    LB_T_TOKEN_EMBD = 0,
    LB_T_OUTPUT_NORM = 1,
    LB_T_OUTPUT = 2,
    LB_T_ROPE_FREQS = 3,
    LB_T_ATTN_NORM = 4,
    LB_T_ATTN_Q = 5,
    LB_T_ATTN_K = 6,
    LB_T_ATTN_V = 7,
    LB_T_ATTN_OUT = 8,
    LB_T_ATTN_Q_BIAS = 9,
    LB_T_ATTN_K_BIAS = 10,
    LB_T_ATTN_V_BIAS = 11,
    LB_T_FFN_NORM = 12,
    LB_T_FFN_GATE = 13,
    LB_T_FFN_UP = 14,
    LB_T_FFN_DOWN = 15
};

typedef struct lb_model lb_model;

/* Create a model from a validated config. No tensors yet. */
lb_status lb_model_create(const lb_model_config *cfg, lb_model **out);

/* Attach one weight tensor. The memory is used in place (typically a
 * memory-mapped file) and must outlive the model. The shape, type and byte
 * size are checked against the config and the role. */
lb_status lb_model_set_tensor(lb_model *m, int32_t role, int32_t layer,
                              int32_t type, int64_t ne0, int64_t ne1,
                              const void *data, size_t nbytes);

/* Check that every required tensor is attached and allocate the KV cache,
 * scratch buffers and thread pool. After this, lb_forward allocates nothing.
 * An F16 cache keeps each key and value rounded to fp16. A Q8_0 cache keeps
 * each head's slice of a key or value row as Q8_0 blocks (GGML's reference
 * encoding); attention then encodes each query head to Q8_0 too, takes
 * integer dot products with the keys' blocks, and sums the values' decoded
 * blocks weighted by the softmax.
 *
 * Q4_0, Q4_1, Q5_0, IQ4_NL and Q8_0 matrices with a row count divisible by 8 are also
 * copied here into a layout of 8 interleaved rows that the x86 kernels read
 * faster (same bytes in all, same results bit for bit), unless the kernel
 * path in use has no kernel for it (scalar, NEON) or the environment
 * variable LOWBIT_REPACK is "0". The caller's memory for such a tensor is
 * then not read again (lb_model_tensor_repacked), and may be released, for
 * example by dropping a file mapping's pages. That happens as each tensor
 * is attached (a tied output matrix: in lb_model_ready, unless attached
 * explicitly with the embedding's memory). */
lb_status lb_model_ready(lb_model *m);

/* 1 if the model reads the tensor of this role and layer (-1 for the
 * global ones) from its own repacked copy, else 0; known from
 * lb_model_set_tensor on, and for a tied output matrix from lb_model_ready.
 * The token embedding counts as repacked when the output matrix is attached
 * with the same memory (tied) and repacked: its rows are then read from the
 * output's copy. */
int32_t lb_model_tensor_repacked(const lb_model *m, int32_t role, int32_t layer);

/* Run tokens[0..n_tokens) at positions pos..pos+n_tokens-1. pos may be at most
 * the number of positions already in the cache (lb_model_n_past); a smaller
 * pos drops the cache from there (rewind). If logits_all is 0, writes the
 * n_vocab logits of the last token to logits (logits_len >= n_vocab floats);
 * otherwise n_tokens * n_vocab logits, row per token. Returns
 * LB_ERR_CONTEXT_FULL without computing if pos + n_tokens > n_ctx, and
 * LB_ERR_CANCELLED if lb_model_cancel was called meanwhile (the cache then
 * keeps the batches of n_batch tokens completed before the cancel; see
 * lb_model_n_past). */
lb_status lb_forward(lb_model *m, const int32_t *tokens, int32_t n_tokens,
                     int32_t pos, float *logits, size_t logits_len,
                     int32_t logits_all);

/* Positions held in the KV cache. */
int32_t lb_model_n_past(const lb_model *m);

/* Ask a running lb_forward to stop at the next layer boundary. Safe from any
 * thread; the request is cleared when the next lb_forward starts. */
void lb_model_cancel(lb_model *m);

/* Bytes the model allocated itself: KV cache plus scratch buffers. */
size_t lb_model_state_bytes(const lb_model *m);

/* Bytes of the repacked weight copies (lb_model_ready). */
size_t lb_model_repacked_bytes(const lb_model *m);

void lb_model_free(lb_model *m);

/* LB_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_H */
