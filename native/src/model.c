/* The transformer forward pass (llama and qwen2 families).
 *
 * Weights are used in place from caller memory (a memory-mapped GGUF file),
 * except the matrices that the active path reads faster in 8 interleaved
 * rows: those are copied into that layout as they are attached.
 * lb_model_ready() allocates the KV cache and every scratch buffer, so
 * lb_forward() allocates nothing. Work inside a step is spread over the
 * thread pool as independent tasks: row chunks of a matrix multiply, token
 * rows of an activation encoding, (token, head) pairs of attention. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "../kernels/kernels.h"
#include "lb_internal.h"
#include "threadpool.h"

#define LB_ROWS_PER_TASK 16 /* a multiple of LB_PACK_ROWS */

typedef struct lb_tensor {
    int32_t type;
    int64_t ne0, ne1;   /* row length, rows */
    const void *data;   /* NULL: not attached */
    size_t row_bytes;
    void *packed;       /* the rows repacked in groups of 8 (lb_pack_x8), owned; NULL: not packed */
} lb_tensor;

/* Queries per attention task: query heads that share a KV head, times
 * consecutive tokens, so that a path converts each cached key and value once
 * for all of them. m->att holds this many score rows per thread. */
#define LB_ATT_TILE 16

/* Keys per attention chunk. A query attends to the cache chunk by chunk,
 * over the fixed runs of positions [c * LB_ATT_CHUNK, (c + 1) * LB_ATT_CHUNK),
 * and the chunks' results are joined in order (lb_attn_join). A prompt's task
 * takes every chunk of its queries; a decoding step, whose few tiles would
 * leave threads idle, spreads one token's chunks over the threads. The two
 * give the same floats, on any number of threads. */
#define LB_ATT_CHUNK 128
/* A chunk's result for one query: the weighted sum of values, then the
 * softmax's max and sum. */
#define LB_ATT_PART(hd) ((size_t)(hd) + 2)

typedef struct lb_layer {
    lb_tensor attn_norm;        /* [n_embd] F32 */
    lb_tensor wq;               /* [n_embd, n_head*head_dim] */
    lb_tensor wk, wv;           /* [n_embd, n_head_kv*head_dim] */
    lb_tensor wo;               /* [n_head*head_dim, n_embd] */
    lb_tensor bq;               /* [n_head*head_dim] F32, optional */
    lb_tensor bk, bv;           /* [n_head_kv*head_dim] F32, optional */
    lb_tensor ffn_norm;         /* [n_embd] F32 */
    lb_tensor w_gate, w_up;     /* [n_embd, n_ff] */
    lb_tensor w_down;           /* [n_ff, n_embd] */
} lb_layer;

/* Encoded-activation buffers (lb_model.act). */
#define LB_ACT_SLOTS 2

struct lb_model {
    lb_model_config cfg;
    int64_t q_dim;              /* n_head * head_dim */
    int64_t kv_dim;             /* n_head_kv * head_dim */

    lb_tensor tok_embd;         /* [n_embd, n_vocab] */
    lb_tensor out_norm;         /* [n_embd] F32 */
    lb_tensor output;           /* [n_embd, n_vocab]; tok_embd when tied */
    lb_tensor rope_freqs;       /* [rope_dim/2] F32, optional */
    lb_layer *layers;           /* [n_layer] */

    int ready;
    int32_t n_past;
    atomic_int cancel;

    /* KV cache: [n_layer][n_head_kv][n_ctx] rows of head_row bytes, a row
     * holding head_dim values of cfg.kv_type (fp16 values or Q8_0 blocks).
     * One head's keys lie together, so that an attention task reads one
     * stream instead of a slice of every row. */
    uint8_t *k_cache;
    uint8_t *v_cache;
    size_t head_row;

    /* scratch, [n_batch][...] row-major */
    float *x;                   /* [n_batch][n_embd] residual stream */
    float *xn;                  /* [n_batch][max(n_embd, q_dim)] normed input / attention output */
    float *q;                   /* [n_batch][q_dim] */
    float *k;                   /* [n_batch][kv_dim] */
    float *v;                   /* [n_batch][kv_dim] */
    float *tmp;                 /* [n_batch][n_embd] projection output */
    float *gate;                /* [n_batch][n_ff] */
    float *up;                  /* [n_batch][n_ff] */
    float *rope_cs;             /* [n_batch][rope_dim]: cos, sin interleaved */
    double *inv_freq;           /* [rope_dim/2] */
    float *att;                 /* [n_threads][LB_ATT_TILE][LB_ATT_CHUNK] attention scores */
    float *att_out;             /* [n_threads][LB_ATT_TILE][LB_ATT_PART] a chunk's results, to join */
    float *att_part;            /* [n_head][att_chunks][LB_ATT_PART] a decoding step's chunk results */
    int64_t att_chunks;         /* chunks in the context */
    uint8_t *q8;                /* Q8_0 cache: [n_threads][head_row] one query head, encoded */
    /* encoded activations, two slots: matrices that read the same input in
     * two formats (Q8_0 weights, which take Q16, beside others) share a job */
    uint8_t *act[LB_ACT_SLOTS];         /* [n_batch][act_row_max] */
    size_t act_row_max;
    lb_q8_info *act_info[LB_ACT_SLOTS]; /* [n_batch][act_blocks]: of Q8_0/Q8_1-encoded blocks */
    int64_t act_blocks;
    size_t state_bytes;
    size_t packed_bytes;        /* weights repacked at load (owned copies) */

    lb_pool *pool;
};

/* ---- creation and tensors ------------------------------------------------ */

static lb_status lb_check_config(const lb_model_config *c) {
    if (c->arch != LB_ARCH_LLAMA && c->arch != LB_ARCH_QWEN2) {
        return lb_fail(LB_ERR_UNSUPPORTED, "unknown architecture id %d", c->arch);
    }
    if (c->n_vocab < 1 || c->n_embd < 1 || c->n_layer < 1 || c->n_head < 1 || c->n_head_kv < 1 ||
        c->head_dim < 2 || c->n_ff < 1) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT,
                       "model dimensions must be positive (vocab %d, embd %d, layers %d, heads %d/%d, "
                       "head_dim %d, ff %d)",
                       c->n_vocab, c->n_embd, c->n_layer, c->n_head, c->n_head_kv, c->head_dim, c->n_ff);
    }
    if (c->n_head % c->n_head_kv != 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%d query heads are not a multiple of %d KV heads",
                       c->n_head, c->n_head_kv);
    }
    if (c->head_dim % 2 != 0 || c->rope_dim < 2 || c->rope_dim % 2 != 0 || c->rope_dim > c->head_dim) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "rope dimension %d does not fit head dimension %d",
                       c->rope_dim, c->head_dim);
    }
    if (c->rope_kind != LB_ROPE_NORM && c->rope_kind != LB_ROPE_NEOX) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "unknown rope kind %d", c->rope_kind);
    }
    if (!(c->rope_theta > 0.0f) || !(c->rope_pos_scale > 0.0f) || !(c->rms_eps > 0.0f)) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "rope base, position scale and norm epsilon must be > 0");
    }
    if (c->n_ctx < 1 || c->n_batch < 1 || c->n_threads < 1) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "context %d, batch %d and threads %d must be >= 1",
                       c->n_ctx, c->n_batch, c->n_threads);
    }
    if (c->kv_type != LB_TYPE_F16 && c->kv_type != LB_TYPE_Q8_0) {
        return lb_fail(LB_ERR_UNSUPPORTED, "KV cache type %d is not supported (F16 or Q8_0)", c->kv_type);
    }
    /* Q8_0 rows are encoded and read a head at a time, so a head must be whole blocks. */
    if (c->kv_type == LB_TYPE_Q8_0 && c->head_dim % LB_QK8_0 != 0) {
        return lb_fail(LB_ERR_UNSUPPORTED, "a Q8_0 KV cache needs a head dimension that is a multiple of %d, not %d",
                       LB_QK8_0, c->head_dim);
    }
    /* Keep every buffer size well inside size_t and int64 arithmetic. */
    const double kv = 2.0 * c->n_layer * (double)c->n_ctx * c->n_head_kv * c->head_dim * 2.0;
    if ((double)c->n_head * c->head_dim > 1e7 || (double)c->n_ff > 1e7 || (double)c->n_embd > 1e7 ||
        kv > 1e12) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "model dimensions are implausibly large");
    }
    return LB_OK;
}

lb_status lb_model_create(const lb_model_config *cfg, lb_model **out) {
    lb_clear_error();
    if (!cfg || !out) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_model_create: NULL argument");
    }
    *out = NULL;
    lb_status st = lb_check_config(cfg);
    if (st != LB_OK) {
        return st;
    }
    lb_model *m = (lb_model *)calloc(1, sizeof *m);
    if (!m) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the model");
    }
    m->cfg = *cfg;
    m->q_dim = (int64_t)cfg->n_head * cfg->head_dim;
    m->kv_dim = (int64_t)cfg->n_head_kv * cfg->head_dim;
    m->layers = (lb_layer *)calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the model");
    }
    atomic_init(&m->cancel, 0);
    *out = m;
    return LB_OK;
}

static const char *lb_role_name(int32_t role) {
    static const char *names[] = {
        "token_embd", "output_norm", "output", "rope_freqs", "attn_norm", "attn_q", "attn_k", "attn_v",
        "attn_output", "attn_q.bias", "attn_k.bias", "attn_v.bias", "ffn_norm", "ffn_gate", "ffn_up",
        "ffn_down",
    };
    if (role < 0 || role >= (int32_t)(sizeof names / sizeof names[0])) {
        return "?";
    }
    return names[role];
}

/* Whether t is repacked at load: a packable type, whole groups of rows, a
 * path at load time that has a kernel for the layout (the scalar and NEON
 * paths read the source layout faster than the reference reads the packed
 * one), and LOWBIT_REPACK not set to 0. */
static int lb_should_pack(const lb_tensor *t, const lb_kernels *k) {
    const char *env = getenv("LOWBIT_REPACK");
    return t->data && lb_pack_x8_type(t->type) && t->ne1 % LB_PACK_ROWS == 0 && k->gemm_x8[t->type] != NULL &&
           !(env && strcmp(env, "0") == 0);
}

static lb_status lb_pack_tensor(lb_model *m, lb_tensor *t, const lb_kernels *k) {
    if (t->packed || !lb_should_pack(t, k)) {
        return LB_OK;
    }
    const size_t bytes = t->row_bytes * (size_t)t->ne1; /* checked in lb_model_set_tensor */
    t->packed = malloc(bytes);
    if (!t->packed) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for repacked weights (%.1f MiB)",
                       (double)bytes / (1024.0 * 1024.0));
    }
    lb_pack_x8(t->type, t->data, t->ne1, t->ne0, t->packed);
    m->packed_bytes += bytes;
    return LB_OK;
}

lb_status lb_model_set_tensor(lb_model *m, int32_t role, int32_t layer, int32_t type, int64_t ne0,
                              int64_t ne1, const void *data, size_t nbytes) {
    lb_clear_error();
    if (!m || !data) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_model_set_tensor: NULL argument");
    }
    if (m->ready) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "tensors cannot change after lb_model_ready");
    }
    const lb_model_config *c = &m->cfg;
    const int per_layer = role >= LB_T_ATTN_NORM && role <= LB_T_FFN_DOWN;
    if (role < LB_T_TOKEN_EMBD || role > LB_T_FFN_DOWN) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "unknown tensor role %d", role);
    }
    if (per_layer ? (layer < 0 || layer >= c->n_layer) : layer != -1) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: layer index %d is out of range", lb_role_name(role), layer);
    }

    int64_t want0 = 0, want1 = 1;
    int must_be_f32 = 0;
    lb_tensor *t = NULL;
    lb_layer *L = per_layer ? &m->layers[layer] : NULL;
    switch (role) {
    case LB_T_TOKEN_EMBD: want0 = c->n_embd; want1 = c->n_vocab; t = &m->tok_embd; break;
    case LB_T_OUTPUT: want0 = c->n_embd; want1 = c->n_vocab; t = &m->output; break;
    case LB_T_OUTPUT_NORM: want0 = c->n_embd; must_be_f32 = 1; t = &m->out_norm; break;
    case LB_T_ROPE_FREQS: want0 = c->rope_dim / 2; must_be_f32 = 1; t = &m->rope_freqs; break;
    case LB_T_ATTN_NORM: want0 = c->n_embd; must_be_f32 = 1; t = &L->attn_norm; break;
    case LB_T_ATTN_Q: want0 = c->n_embd; want1 = m->q_dim; t = &L->wq; break;
    case LB_T_ATTN_K: want0 = c->n_embd; want1 = m->kv_dim; t = &L->wk; break;
    case LB_T_ATTN_V: want0 = c->n_embd; want1 = m->kv_dim; t = &L->wv; break;
    case LB_T_ATTN_OUT: want0 = m->q_dim; want1 = c->n_embd; t = &L->wo; break;
    case LB_T_ATTN_Q_BIAS: want0 = m->q_dim; must_be_f32 = 1; t = &L->bq; break;
    case LB_T_ATTN_K_BIAS: want0 = m->kv_dim; must_be_f32 = 1; t = &L->bk; break;
    case LB_T_ATTN_V_BIAS: want0 = m->kv_dim; must_be_f32 = 1; t = &L->bv; break;
    case LB_T_FFN_NORM: want0 = c->n_embd; must_be_f32 = 1; t = &L->ffn_norm; break;
    case LB_T_FFN_GATE: want0 = c->n_embd; want1 = c->n_ff; t = &L->w_gate; break;
    case LB_T_FFN_UP: want0 = c->n_embd; want1 = c->n_ff; t = &L->w_up; break;
    case LB_T_FFN_DOWN: want0 = c->n_ff; want1 = c->n_embd; t = &L->w_down; break;
    default: return lb_fail(LB_ERR_INVALID_ARGUMENT, "unknown tensor role %d", role);
    }
    if (ne0 != want0 || ne1 != want1) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: shape [%lld, %lld] does not match the model's [%lld, %lld]",
                       lb_role_name(role), (long long)ne0, (long long)ne1, (long long)want0, (long long)want1);
    }
    const lb_type_traits *tr = lb_get_type_traits(type);
    if (!tr || !tr->is_weight || !tr->vec_dot || !tr->to_float) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: tensor type %d is not supported", lb_role_name(role), type);
    }
    if (must_be_f32 && type != LB_TYPE_F32) {
        return lb_fail(LB_ERR_UNSUPPORTED, "%s: must be F32, not %s", lb_role_name(role), tr->name);
    }
    const size_t row = lb_row_bytes(type, ne0);
    if (row == 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: row length %lld is not a whole number of %s blocks of %lld",
                       lb_role_name(role), (long long)ne0, tr->name, (long long)tr->blck_size);
    }
    if ((uint64_t)ne1 > SIZE_MAX / row || row * (size_t)ne1 != nbytes) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: %zu bytes given, %s [%lld, %lld] needs %zu",
                       lb_role_name(role), nbytes, tr->name, (long long)ne0, (long long)ne1, row * (size_t)ne1);
    }
    /* Blocks are read through typed pointers (fp16 and float fields). GGUF
     * aligns tensor data to 32 bytes unless a file asks for less. */
    if ((uintptr_t)data % 4 != 0) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "%s: tensor data is not 4-byte aligned", lb_role_name(role));
    }
    if (t->packed) { /* a tensor attached again */
        m->packed_bytes -= t->row_bytes * (size_t)t->ne1;
        free(t->packed);
        t->packed = NULL;
    }
    t->type = type;
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->data = data;
    t->row_bytes = row;
    /* Repack now rather than in lb_model_ready, so that a caller can release
     * each tensor's source as it goes and the two copies never coexist in
     * full. The token embedding is looked up row by row, in the source or
     * in a tied output's copy (lb_embd_from_output). */
    return role == LB_T_TOKEN_EMBD ? LB_OK : lb_pack_tensor(m, t, lb_kernels_active());
}

static void *lb_alloc(size_t n, size_t size, size_t *total) {
    if (n == 0) {
        n = 1;
    }
    if (size != 0 && n > SIZE_MAX / size) {
        return NULL;
    }
    *total += n * size;
    return calloc(n, size);
}

/* Largest encoded activation row over the weights' vec_dot types. */
static size_t lb_act_bytes(const lb_tensor *t, size_t cur) {
    if (!t->data) {
        return cur;
    }
    const lb_type_traits *tr = lb_get_type_traits(t->type);
    const size_t b = lb_row_bytes(tr->vec_dot_type, t->ne0);
    return b > cur ? b : cur;
}

/* With the output matrix tied to the token embedding (the same memory) and
 * repacked, embedding rows are read from the packed copy too, so that the
 * caller's memory is not read again: a lookup there would also fault in the
 * pages around each row (fault-around), over a long prompt as much as the
 * whole matrix. */
static int lb_embd_from_output(const lb_model *m) {
    return m->output.packed != NULL && m->output.data == m->tok_embd.data;
}

lb_status lb_model_ready(lb_model *m) {
    lb_clear_error();
    if (!m) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_model_ready: NULL model");
    }
    if (m->ready) {
        return LB_OK;
    }
    const lb_model_config *c = &m->cfg;
    if (!m->tok_embd.data) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "missing tensor token_embd");
    }
    if (!m->out_norm.data) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "missing tensor output_norm");
    }
    if (!m->output.data) {
        m->output = m->tok_embd; /* tied embeddings; a packed copy of its own */
        lb_status st = lb_pack_tensor(m, &m->output, lb_kernels_active());
        if (st != LB_OK) {
            m->output.data = NULL;
            return st;
        }
    }
    for (int l = 0; l < c->n_layer; l++) {
        const lb_layer *L = &m->layers[l];
        const lb_tensor *req[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo,
                                  &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
        const int32_t roles[] = {LB_T_ATTN_NORM, LB_T_ATTN_Q, LB_T_ATTN_K, LB_T_ATTN_V, LB_T_ATTN_OUT,
                                 LB_T_FFN_NORM, LB_T_FFN_GATE, LB_T_FFN_UP, LB_T_FFN_DOWN};
        for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
            if (!req[i]->data) {
                return lb_fail(LB_ERR_INVALID_ARGUMENT, "missing tensor blk.%d.%s", l, lb_role_name(roles[i]));
            }
        }
        if (c->arch == LB_ARCH_QWEN2 && (!L->bq.data || !L->bk.data || !L->bv.data)) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT, "missing Q/K/V bias tensors in layer %d (qwen2)", l);
        }
    }

    size_t act = 0;
    act = lb_act_bytes(&m->output, act);
    for (int l = 0; l < c->n_layer; l++) {
        const lb_layer *L = &m->layers[l];
        act = lb_act_bytes(&L->wq, act);
        act = lb_act_bytes(&L->wk, act);
        act = lb_act_bytes(&L->wv, act);
        act = lb_act_bytes(&L->wo, act);
        act = lb_act_bytes(&L->w_gate, act);
        act = lb_act_bytes(&L->w_up, act);
        act = lb_act_bytes(&L->w_down, act);
    }
    m->act_row_max = act;
    m->act_blocks = c->n_ff > c->n_embd ? c->n_ff : c->n_embd;
    m->act_blocks = (m->act_blocks > m->q_dim ? m->act_blocks : m->q_dim) / 32 + 1;

    const size_t nb = (size_t)c->n_batch;
    const int q8_kv = c->kv_type == LB_TYPE_Q8_0;
    m->head_row = lb_row_bytes(c->kv_type, c->head_dim);
    const size_t kv_rows = (size_t)c->n_layer * (size_t)c->n_head_kv * (size_t)c->n_ctx;
    const size_t xn_w = (size_t)(c->n_embd > m->q_dim ? c->n_embd : m->q_dim);
    size_t total = 0;
    m->k_cache = (uint8_t *)lb_alloc(kv_rows, m->head_row, &total);
    m->v_cache = (uint8_t *)lb_alloc(kv_rows, m->head_row, &total);
    m->x = (float *)lb_alloc(nb * (size_t)c->n_embd, sizeof(float), &total);
    m->xn = (float *)lb_alloc(nb * xn_w, sizeof(float), &total);
    m->q = (float *)lb_alloc(nb * (size_t)m->q_dim, sizeof(float), &total);
    m->k = (float *)lb_alloc(nb * (size_t)m->kv_dim, sizeof(float), &total);
    m->v = (float *)lb_alloc(nb * (size_t)m->kv_dim, sizeof(float), &total);
    m->tmp = (float *)lb_alloc(nb * (size_t)c->n_embd, sizeof(float), &total);
    m->gate = (float *)lb_alloc(nb * (size_t)c->n_ff, sizeof(float), &total);
    m->up = (float *)lb_alloc(nb * (size_t)c->n_ff, sizeof(float), &total);
    m->rope_cs = (float *)lb_alloc(nb * (size_t)c->rope_dim, sizeof(float), &total);
    m->inv_freq = (double *)lb_alloc((size_t)c->rope_dim / 2, sizeof(double), &total);
    const size_t part = LB_ATT_PART(c->head_dim);
    m->att_chunks = ((int64_t)c->n_ctx + LB_ATT_CHUNK - 1) / LB_ATT_CHUNK;
    m->att = (float *)lb_alloc((size_t)c->n_threads * LB_ATT_TILE * LB_ATT_CHUNK, sizeof(float), &total);
    m->att_out = (float *)lb_alloc((size_t)c->n_threads * LB_ATT_TILE * part, sizeof(float), &total);
    m->att_part = (float *)lb_alloc((size_t)c->n_head * (size_t)m->att_chunks * part, sizeof(float), &total);
    int act_ok = 1;
    for (int i = 0; i < LB_ACT_SLOTS; i++) {
        m->act[i] = (uint8_t *)lb_alloc(nb, act, &total);
        m->act_info[i] = (lb_q8_info *)lb_alloc(nb * (size_t)m->act_blocks, sizeof(lb_q8_info), &total);
        act_ok &= m->act[i] != NULL && m->act_info[i] != NULL;
    }
    if (q8_kv) {
        m->q8 = (uint8_t *)lb_alloc((size_t)c->n_threads, m->head_row, &total);
    }
    if (!m->k_cache || !m->v_cache || !m->x || !m->xn || !m->q || !m->k || !m->v || !m->tmp || !m->gate ||
        !m->up || !m->rope_cs || !m->inv_freq || !m->att || !m->att_out || !m->att_part || !act_ok ||
        (q8_kv && !m->q8)) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the KV cache and buffers (%.1f MiB)",
                       (double)total / (1024.0 * 1024.0));
    }
    m->state_bytes = total;

    const float *ff = (const float *)m->rope_freqs.data;
    for (int i = 0; i < c->rope_dim / 2; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / (double)c->rope_dim);
        if (ff) {
            if (!(ff[i] > 0.0f) || !isfinite(ff[i])) {
                return lb_fail(LB_ERR_INVALID_ARGUMENT, "rope_freqs[%d] = %g is not a positive number", i,
                               (double)ff[i]);
            }
            f /= (double)ff[i];
        }
        m->inv_freq[i] = f;
    }

    lb_status st = lb_pool_create(c->n_threads, &m->pool);
    if (st != LB_OK) {
        return st;
    }
    m->ready = 1;
    return LB_OK;
}

/* The matrices of a layer, the tensors that may be repacked. */
static const int32_t lb_matrix_roles[] = {LB_T_ATTN_Q,   LB_T_ATTN_K, LB_T_ATTN_V,  LB_T_ATTN_OUT,
                                          LB_T_FFN_GATE, LB_T_FFN_UP, LB_T_FFN_DOWN};

/* Layer L's matrix of a role in lb_matrix_roles; NULL for any other role. */
static lb_tensor *lb_layer_matrix(lb_layer *L, int32_t role) {
    switch (role) {
    case LB_T_ATTN_Q: return &L->wq;
    case LB_T_ATTN_K: return &L->wk;
    case LB_T_ATTN_V: return &L->wv;
    case LB_T_ATTN_OUT: return &L->wo;
    case LB_T_FFN_GATE: return &L->w_gate;
    case LB_T_FFN_UP: return &L->w_up;
    case LB_T_FFN_DOWN: return &L->w_down;
    default: return NULL;
    }
}

void lb_model_free(lb_model *m) {
    if (!m) {
        return;
    }
    lb_pool_free(m->pool);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layer; l++) {
            for (size_t i = 0; i < sizeof lb_matrix_roles / sizeof lb_matrix_roles[0]; i++) {
                free(lb_layer_matrix(&m->layers[l], lb_matrix_roles[i])->packed);
            }
        }
    }
    free(m->output.packed);
    free(m->layers);
    free(m->k_cache);
    free(m->v_cache);
    free(m->x);
    free(m->xn);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->tmp);
    free(m->gate);
    free(m->up);
    free(m->rope_cs);
    free(m->inv_freq);
    free(m->att);
    free(m->att_out);
    free(m->att_part);
    for (int i = 0; i < LB_ACT_SLOTS; i++) {
        free(m->act[i]);
        free(m->act_info[i]);
    }
    free(m->q8);
    free(m);
}

int32_t lb_model_n_past(const lb_model *m) { return m ? m->n_past : 0; }

void lb_model_cancel(lb_model *m) {
    if (m) {
        atomic_store(&m->cancel, 1);
    }
}

size_t lb_model_state_bytes(const lb_model *m) { return m ? m->state_bytes : 0; }

size_t lb_model_repacked_bytes(const lb_model *m) { return m ? m->packed_bytes : 0; }

int32_t lb_model_tensor_repacked(const lb_model *m, int32_t role, int32_t layer) {
    if (!m) {
        return 0;
    }
    if (layer == -1) {
        return (role == LB_T_OUTPUT && m->output.packed != NULL) || (role == LB_T_TOKEN_EMBD && lb_embd_from_output(m));
    }
    if (layer < 0 || layer >= m->cfg.n_layer) {
        return 0;
    }
    const lb_tensor *t = lb_layer_matrix(&m->layers[layer], role);
    return t != NULL && t->packed != NULL;
}

/* ---- parallel building blocks ------------------------------------------- */

/* n_tok rows of src, encoded in one or two formats (a task per row and format). */
typedef struct lb_encode_job {
    const float *src;           /* [n_tok][ld_src] */
    int64_t ld_src, n_elems, n_tok;
    int n_fmt;
    struct {
        lb_from_float_fn encode;
        uint8_t *dst;           /* [n_tok][row_bytes] */
        size_t row_bytes;
        lb_q8_info *info;       /* Q8_0 and Q8_1 only: [n_tok][info_stride] */
        int32_t type;           /* the encoding */
    } fmt[LB_ACT_SLOTS];
    int64_t info_stride;
} lb_encode_job;

static void lb_encode_task(void *ctx, int64_t task, int tid) {
    (void)tid;
    const lb_encode_job *j = (const lb_encode_job *)ctx;
    const int f = (int)(task / j->n_tok);
    const int64_t t = task % j->n_tok;
    uint8_t *row = j->fmt[f].dst + (size_t)t * j->fmt[f].row_bytes;
    j->fmt[f].encode(j->src + t * j->ld_src, row, j->n_elems);
    if (j->fmt[f].info) {
        lb_q8_block_info(j->fmt[f].type, row, j->n_elems / LB_QK8_0, j->fmt[f].info + t * j->info_stride);
    }
}

/* One weight matrix of a matmul job and where its results go. */
typedef struct lb_mm_part {
    const lb_tensor *w;
    const uint8_t *act;         /* [n_tok][act_row] its encoded inputs */
    size_t act_row;
    const lb_q8_info *act_info; /* [n_tok][act_blocks] (Q8_0 and Q8_1 inputs) */
    float *out;                 /* [n_tok][ld_out] */
    int64_t ld_out;
    int64_t task_end;           /* one past this part's last task in the job */
    int64_t task_rows;          /* rows per task (lb_task_rows) */
    lb_vec_dot_fn dot;
    lb_vec_dot_multi_fn multi;  /* NULL: one vec_dot per (row, token) */
    lb_gemm_x8_fn gemm_x8;      /* w->packed: the kernel for it */
} lb_mm_part;

/* Up to three matrices that read the same input (in at most two encodings),
 * run as one pool job so a decoding step waits for the threads once instead
 * of once per matrix (Q, K and V; gate and up). With swiglu, parts 0 and 1
 * are gate and up of the same shape; each task does the same rows of both
 * and leaves silu(gate) * up in part 0's output. */
typedef struct lb_matmul_job {
    int64_t act_blocks;
    int64_t n_tok;
    int n_parts;
    lb_swiglu_fn swiglu; /* NULL: no SwiGLU */
    lb_mm_part part[3];
} lb_matmul_job;

/* Rows r0..r1 of one matrix against every token. Tokens go LB_MULTI_MAX at
 * a time through the multi-row kernel, so each weight row is unpacked once
 * per group; the chunk of rows stays in cache while the groups pass over it. */
static void lb_matmul_rows(const lb_matmul_job *j, const lb_mm_part *p, int64_t r0, int64_t r1) {
    const uint8_t *w = (const uint8_t *)p->w->data;
    const int64_t n = p->w->ne0;
    if (p->w->packed) { /* r0 and r1 are multiples of 8: task bounds or the row count */
        const uint8_t *wp = (const uint8_t *)p->w->packed;
        for (int64_t t = 0; t < j->n_tok; t += LB_MULTI_MAX) {
            const int nc = (int)(j->n_tok - t < LB_MULTI_MAX ? j->n_tok - t : LB_MULTI_MAX);
            const uint8_t *a = p->act + (size_t)t * p->act_row;
            const lb_q8_info *yi = p->act_info + t * j->act_blocks;
            p->gemm_x8(n, (r1 - r0) / LB_PACK_ROWS, p->out + t * p->ld_out + r0, p->ld_out,
                       wp + (size_t)r0 * p->w->row_bytes, a, p->act_row, yi, j->act_blocks, nc);
        }
        return;
    }
    if (p->multi != NULL && j->n_tok > 1) {
        for (int64_t t = 0; t < j->n_tok; t += LB_MULTI_MAX) {
            const int nc = (int)(j->n_tok - t < LB_MULTI_MAX ? j->n_tok - t : LB_MULTI_MAX);
            const uint8_t *a = p->act + (size_t)t * p->act_row;
            float *o = p->out + t * p->ld_out;
            for (int64_t r = r0; r < r1; r++) {
                p->multi(n, &o[r], p->ld_out, w + (size_t)r * p->w->row_bytes, a, p->act_row, nc);
            }
        }
        return;
    }
    for (int64_t t = 0; t < j->n_tok; t++) {
        const uint8_t *a = p->act + (size_t)t * p->act_row;
        float *o = p->out + t * p->ld_out;
        for (int64_t r = r0; r < r1; r++) {
            p->dot(n, &o[r], w + (size_t)r * p->w->row_bytes, a);
        }
    }
}

static void lb_matmul_task(void *ctx, int64_t task, int tid) {
    (void)tid;
    const lb_matmul_job *j = (const lb_matmul_job *)ctx;
    int i = 0;
    while (task >= j->part[i].task_end) {
        i++;
    }
    const lb_mm_part *p = &j->part[i];
    const int64_t first = i > 0 ? j->part[i - 1].task_end : 0;
    const int64_t r0 = (task - first) * p->task_rows;
    const int64_t r1 = r0 + p->task_rows < p->w->ne1 ? r0 + p->task_rows : p->w->ne1;
    lb_matmul_rows(j, p, r0, r1);
    if (j->swiglu) {
        const lb_mm_part *u = &j->part[1];
        lb_matmul_rows(j, u, r0, r1);
        for (int64_t t = 0; t < j->n_tok; t++) {
            float *g = p->out + t * p->ld_out;
            const float *up = u->out + t * u->ld_out;
            j->swiglu(r1 - r0, g + r0, up + r0);
        }
    }
}

/* Which input each activation slot holds: slot i of m->act has src's n_tok
 * rows encoded as type. Matrices that read the same x in the same format
 * (Q, K and V; gate and up) reuse it; the caller resets the record
 * (lb_encoded_reset) whenever it rewrites x. */
typedef struct lb_encoded {
    const float *src[LB_ACT_SLOTS];
    int32_t type[LB_ACT_SLOTS];
    int64_t n_tok[LB_ACT_SLOTS];
} lb_encoded;

static void lb_encoded_reset(lb_encoded *enc) {
    for (int i = 0; i < LB_ACT_SLOTS; i++) {
        enc->src[i] = NULL;
        enc->type[i] = -1;
        enc->n_tok[i] = 0;
    }
}

/* Encode x (n_tok rows of n_elems) in each of the n_fmt (1..LB_ACT_SLOTS)
 * formats vt[f] that no slot holds yet, in one pool job, and give each
 * format's slot. */
static void lb_encode_inputs(lb_model *m, lb_encoded *enc, const lb_kernels *k, int n_fmt, const int32_t *vt,
                             int64_t n_elems, const float *x, int64_t ld_x, int64_t n_tok, int *slot) {
    int used[LB_ACT_SLOTS] = {0};
    for (int f = 0; f < n_fmt; f++) {
        slot[f] = -1;
        for (int i = 0; i < LB_ACT_SLOTS && slot[f] < 0; i++) {
            if (!used[i] && enc->src[i] == x && enc->type[i] == vt[f] && enc->n_tok[i] == n_tok) {
                slot[f] = i;
                used[i] = 1;
            }
        }
    }
    lb_encode_job ej;
    memset(&ej, 0, sizeof ej);
    ej.src = x;
    ej.ld_src = ld_x;
    ej.n_elems = n_elems;
    ej.n_tok = n_tok;
    ej.info_stride = m->act_blocks;
    for (int f = 0; f < n_fmt; f++) {
        if (slot[f] >= 0) {
            continue;
        }
        int i = 0;
        while (used[i]) {
            i++;
        }
        used[i] = 1;
        slot[f] = i;
        /* the per-block info serves only the repacked kernels: none on a
         * model loaded without repacking (scalar, NEON, LOWBIT_REPACK=0) */
        const int info = lb_q8_has_info(vt[f]) && m->packed_bytes > 0;
        ej.fmt[ej.n_fmt].encode = lb_kernel_from_float(k, vt[f]);
        ej.fmt[ej.n_fmt].dst = m->act[i];
        ej.fmt[ej.n_fmt].row_bytes = lb_row_bytes(vt[f], n_elems);
        ej.fmt[ej.n_fmt].info = info ? m->act_info[i] : NULL;
        ej.fmt[ej.n_fmt].type = vt[f];
        ej.n_fmt++;
        enc->src[i] = x;
        enc->type[i] = vt[f];
        enc->n_tok[i] = n_tok;
    }
    if (n_tok == 1) { /* a decoding step's one row per format: cheaper than waking the workers */
        for (int f = 0; f < ej.n_fmt; f++) {
            lb_encode_task(&ej, f, 0);
        }
    } else if (ej.n_fmt > 0) {
        lb_pool_run(m->pool, lb_encode_task, &ej, ej.n_fmt * n_tok);
    }
}

/* Rows per matmul task. A prompt keeps LB_ROWS_PER_TASK, whose weights stay
 * in L1 while every token passes over them. A few tokens (decoding) give a
 * large matrix longer tasks, about LB_TASKS_PER_THREAD a thread: each task
 * costs an atomic on the pool's shared line and restarts the prefetch, and
 * the output matrix alone would otherwise make thousands of them a token. */
#define LB_TASKS_PER_THREAD 16
static int64_t lb_task_rows(const lb_model *m, const lb_tensor *w, int64_t n_tok) {
    if (n_tok > LB_MULTI_MAX) {
        return LB_ROWS_PER_TASK;
    }
    const int64_t per = w->ne1 / ((int64_t)LB_ROWS_PER_TASK * LB_TASKS_PER_THREAD * m->cfg.n_threads);
    return LB_ROWS_PER_TASK * (per > 1 ? per : 1);
}

/* outs[i][t][0..ws[i].ne1) = W_i x[t] for nw matrices of the same input
 * width, as one job where they need at most two activation formats (else
 * one by one). */
static void lb_matmul_n(lb_model *m, lb_encoded *enc, int nw, const lb_tensor *const *ws, float *const *outs,
                        const int64_t *lds, const float *x, int64_t ld_x, int64_t n_tok, int swiglu) {
    const lb_kernels *k = lb_kernels_active();
    int32_t fmts[LB_ACT_SLOTS];
    int n_fmt = 0, of[3];
    for (int i = 0; i < nw; i++) {
        const int32_t vt = lb_get_type_traits(ws[i]->type)->vec_dot_type;
        of[i] = 0;
        while (of[i] < n_fmt && fmts[of[i]] != vt) {
            of[i]++;
        }
        if (of[i] == n_fmt && n_fmt == LB_ACT_SLOTS) {
            n_fmt = LB_ACT_SLOTS + 1;
            break;
        }
        if (of[i] == n_fmt) {
            fmts[n_fmt++] = vt;
        }
    }
    if (n_fmt > LB_ACT_SLOTS) {
        for (int i = 0; i < nw; i++) {
            lb_matmul_n(m, enc, 1, &ws[i], &outs[i], &lds[i], x, ld_x, n_tok, 0);
        }
        if (swiglu) {
            for (int64_t t = 0; t < n_tok; t++) {
                float *g = outs[0] + t * lds[0];
                const float *u = outs[1] + t * lds[1];
                lb_kernel_swiglu(k)(ws[0]->ne1, g, u);
            }
        }
        return;
    }
    int slot[LB_ACT_SLOTS];
    lb_encode_inputs(m, enc, k, n_fmt, fmts, ws[0]->ne0, x, ld_x, n_tok, slot);
    lb_matmul_job mj;
    memset(&mj, 0, sizeof mj);
    mj.act_blocks = m->act_blocks;
    mj.n_tok = n_tok;
    mj.swiglu = swiglu ? lb_kernel_swiglu(k) : NULL;
    mj.n_parts = swiglu ? 1 : nw; /* with swiglu, part 1 rides along with part 0's tasks */
    int64_t tasks = 0;
    for (int i = 0; i < nw; i++) {
        lb_mm_part *p = &mj.part[i];
        p->w = ws[i];
        p->act = m->act[slot[of[i]]];
        p->act_row = lb_row_bytes(fmts[of[i]], ws[i]->ne0);
        p->act_info = m->act_info[slot[of[i]]];
        p->out = outs[i];
        p->ld_out = lds[i];
        p->dot = lb_kernel_vec_dot(k, ws[i]->type);
        p->multi = lb_kernel_vec_dot_multi(k, ws[i]->type);
        p->gemm_x8 = lb_kernel_gemm_x8(k, ws[i]->type);
        p->task_rows = lb_task_rows(m, ws[i], n_tok); /* gate and up (swiglu): the same shape */
        if (i < mj.n_parts) {
            tasks += (ws[i]->ne1 + p->task_rows - 1) / p->task_rows;
        }
        p->task_end = tasks;
    }
    lb_pool_run(m->pool, lb_matmul_task, &mj, tasks);
}

static void lb_matmul(lb_model *m, lb_encoded *enc, const lb_tensor *w, const float *x, int64_t ld_x,
                      int64_t n_tok, float *out, int64_t ld_out) {
    lb_matmul_n(m, enc, 1, &w, &out, &ld_out, x, ld_x, n_tok, 0);
}

static void lb_rmsnorm(float *dst, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ss += (double)x[i] * x[i];
    }
    const float s = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++) {
        dst[i] = x[i] * s * w[i];
    }
}

/* Rotate one head in place. cs holds cos/sin pairs per frequency. */
static void lb_rope_head(float *h, const float *cs, int rope_dim, int kind) {
    const int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        const float c = cs[2 * i], s = cs[2 * i + 1];
        float *a, *b;
        if (kind == LB_ROPE_NORM) {
            a = &h[2 * i];
            b = &h[2 * i + 1];
        } else {
            a = &h[i];
            b = &h[i + half];
        }
        const float x0 = *a, x1 = *b;
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

typedef struct lb_attn_job {
    lb_model *m;
    int layer;
    int32_t pos0;
    int64_t n_tok;
    int gh;                     /* query heads per task, from one KV group */
    int n_slices;               /* tasks per KV group and token block: group / gh */
    int64_t tt;                 /* tokens per task */
    int64_t n_tblk;             /* token blocks */
    int64_t n_chunks;           /* chunks up to the last token's position */
    int split;                  /* a task per tile and chunk, results to m->att_part (one token) */
    lb_attn_dot_fn dot;         /* F16 cache */
    lb_attn_axpy_fn axpy;
    lb_attn_scores_f16_fn f16_scores; /* NULL: dot key by key */
    lb_attn_wsum_f16_fn f16_wsum;     /* NULL: axpy key by key */
    lb_from_float_fn q8_encode; /* Q8_0 cache */
    lb_attn_scores_q8_0_fn q8_scores; /* NULL: lb_vec_dot_q8_0_q8_0 key by key */
    lb_attn_wsum_q8_0_fn q8_wsum;
    lb_softmax_fn softmax;
} lb_attn_job;

/* Scores of one query head against n_keys keys of a Q8_0 cache. */
static void lb_attn_scores_q8(const lb_attn_job *j, const float *q, const uint8_t *kc, int64_t n_keys, float *sc,
                              int tid) {
    const lb_model *m = j->m;
    /* encode the query once, as the matrix kernels encode their inputs, and
     * take integer dot products with the keys' blocks */
    uint8_t *qq = m->q8 + (size_t)tid * m->head_row;
    j->q8_encode(q, qq, m->cfg.head_dim);
    if (j->q8_scores) {
        j->q8_scores(m->cfg.head_dim, n_keys, qq, kc, m->head_row, sc);
        return;
    }
    for (int64_t p = 0; p < n_keys; p++) {
        lb_vec_dot_q8_0_q8_0(m->cfg.head_dim, &sc[p], qq, kc + (size_t)p * m->head_row);
    }
}

/* One chunk for nq queries of one KV head: query q attends to the nkc[q] keys
 * from position k0 (at least one; nkc does not decrease with q). Its softmax
 * weighted sum of values goes to os[q], the softmax's max and sum to st[q]. */
static void lb_attn_chunk(const lb_attn_job *j, int nq, const float *const *qs, const int64_t *nkc,
                          const uint8_t *kc, const uint8_t *vc, float *const *os, float *const *st, int tid) {
    lb_model *m = j->m;
    const int hd = m->cfg.head_dim;
    const size_t stride = m->head_row;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = m->att + (size_t)tid * LB_ATT_TILE * LB_ATT_CHUNK;

    if (m->cfg.kv_type == LB_TYPE_Q8_0) {
        for (int q = 0; q < nq; q++) {
            lb_attn_scores_q8(j, qs[q], kc, nkc[q], sc, tid);
            j->softmax(nkc[q], sc, scale, st[q]);
            j->q8_wsum(hd, nkc[q], sc, vc, stride, os[q]);
        }
        return;
    }
    /* scores up to the last query's keys; each query then uses its own */
    const size_t ld = LB_ATT_CHUNK;
    if (j->f16_scores) {
        j->f16_scores(hd, nq, qs, nkc[nq - 1], kc, stride, sc, ld);
    } else {
        for (int q = 0; q < nq; q++) {
            for (int64_t p = 0; p < nkc[q]; p++) {
                sc[q * ld + p] = j->dot(hd, qs[q], (const uint16_t *)(kc + (size_t)p * stride));
            }
        }
    }
    for (int q = 0; q < nq; q++) {
        j->softmax(nkc[q], sc + q * ld, scale, st[q]);
    }
    if (j->f16_wsum) {
        j->f16_wsum(hd, nq, sc, ld, nkc, vc, stride, os);
        return;
    }
    for (int q = 0; q < nq; q++) {
        memset(os[q], 0, (size_t)hd * sizeof(float));
        for (int64_t p = 0; p < nkc[q]; p++) {
            j->axpy(hd, sc[q * ld + p], (const uint16_t *)(vc + (size_t)p * stride), os[q]);
        }
    }
}

/* Fold a later chunk's result (o, with its softmax's max and sum in st) into
 * acc, the result over the earlier chunks (max and sum in acc_st). Both are
 * weighted means of values; the joint one mixes them by each side's share of
 * the joint sum of exponentials. Kept out of line so that every caller
 * computes the same floats. */
#if defined(_MSC_VER)
__declspec(noinline)
#else
__attribute__((noinline))
#endif
static void lb_attn_join(int64_t n, float *acc, float *acc_st, const float *o, const float *st) {
    const float mx = st[0] > acc_st[0] ? st[0] : acc_st[0];
    const float a = acc_st[1] * lb_exp_ref(acc_st[0] - mx);
    const float b = st[1] * lb_exp_ref(st[0] - mx);
    const float sum = a + b;
    const float wa = a / sum, wb = b / sum;
    for (int64_t i = 0; i < n; i++) {
        acc[i] = acc[i] * wa + o[i] * wb;
    }
    acc_st[0] = mx;
    acc_st[1] = sum;
}

/* Causal attention for the query heads of one task (heads [h0, h0 + gh) of
 * one KV group, tokens [t0, t1)): query (t, h) reads the cache up to its own
 * position. Token blocks go last to first, so the longest tasks start first.
 * A split job's task takes one chunk of one token's tile and leaves its
 * results in m->att_part for lb_attn_join_parts. */
static void lb_attn_task(void *ctx, int64_t task, int tid) {
    const lb_attn_job *j = (const lb_attn_job *)ctx;
    lb_model *m = j->m;
    const lb_model_config *c = &m->cfg;
    const int group = c->n_head / c->n_head_kv;
    const int64_t chunk = j->split ? task % j->n_chunks : -1;
    const int64_t tile = j->split ? task / j->n_chunks : task;
    const int slice = (int)(tile % j->n_slices);
    const int kvh = (int)(tile / j->n_slices % c->n_head_kv);
    const int64_t t0 = (j->n_tblk - 1 - tile / j->n_slices / c->n_head_kv) * j->tt;
    const int64_t t1 = t0 + j->tt < j->n_tok ? t0 + j->tt : j->n_tok;
    const int h0 = kvh * group + slice * j->gh;
    const int hd = c->head_dim;
    const size_t part = LB_ATT_PART(hd);
    const size_t head_off = ((size_t)j->layer * (size_t)c->n_head_kv + (size_t)kvh) * (size_t)c->n_ctx * m->head_row;
    const uint8_t *kc = m->k_cache + head_off;
    const uint8_t *vc = m->v_cache + head_off;

    const float *qs[LB_ATT_TILE];
    float *os[LB_ATT_TILE], *st[LB_ATT_TILE];
    int64_t nk[LB_ATT_TILE], nkc[LB_ATT_TILE];
    float acc_st[LB_ATT_TILE][2];
    int nq = 0;
    for (int64_t t = t0; t < t1; t++) {
        for (int h = h0; h < h0 + j->gh; h++) {
            qs[nq] = m->q + t * m->q_dim + (int64_t)h * hd;
            os[nq] = m->xn + t * m->q_dim + (int64_t)h * hd;
            nk[nq] = (int64_t)j->pos0 + t + 1;
            nq++;
        }
    }
    if (j->split) { /* one token: every query has the chunk's keys */
        const int64_t k0 = chunk * LB_ATT_CHUNK;
        for (int q = 0; q < nq; q++) {
            float *dst = m->att_part + ((size_t)(h0 + q) * (size_t)m->att_chunks + (size_t)chunk) * part;
            os[q] = dst;
            st[q] = dst + hd;
            nkc[q] = nk[q] - k0 < LB_ATT_CHUNK ? nk[q] - k0 : LB_ATT_CHUNK;
        }
        lb_attn_chunk(j, nq, qs, nkc, kc + (size_t)k0 * m->head_row, vc + (size_t)k0 * m->head_row, os, st, tid);
        return;
    }
    /* chunk 0 straight into the outputs, each later one through att_out;
     * queries are in token order, so those with keys in a chunk end the list */
    float *const tmp = m->att_out + (size_t)tid * LB_ATT_TILE * part;
    for (int64_t k0 = 0; k0 < nk[nq - 1]; k0 += LB_ATT_CHUNK) {
        int first = 0;
        while (nk[first] <= k0) {
            first++;
        }
        float *o[LB_ATT_TILE], *s[LB_ATT_TILE];
        for (int q = first; q < nq; q++) {
            nkc[q] = nk[q] - k0 < LB_ATT_CHUNK ? nk[q] - k0 : LB_ATT_CHUNK;
            o[q] = k0 == 0 ? os[q] : tmp + (size_t)q * part;
            s[q] = k0 == 0 ? acc_st[q] : tmp + (size_t)q * part + hd;
        }
        lb_attn_chunk(j, nq - first, qs + first, nkc + first, kc + (size_t)k0 * m->head_row,
                      vc + (size_t)k0 * m->head_row, o + first, s + first, tid);
        if (k0 > 0) {
            for (int q = first; q < nq; q++) {
                lb_attn_join(hd, os[q], acc_st[q], o[q], s[q]);
            }
        }
    }
}

/* A split job's outputs: each head's chunk results joined in order. */
static void lb_attn_join_parts(lb_model *m, const lb_attn_job *j) {
    const int hd = m->cfg.head_dim;
    const size_t part = LB_ATT_PART(hd);
    for (int h = 0; h < m->cfg.n_head; h++) {
        const float *p = m->att_part + (size_t)h * (size_t)m->att_chunks * part;
        float *out = m->xn + (int64_t)h * hd;
        float acc_st[2] = {p[hd], p[hd + 1]};
        memcpy(out, p, (size_t)hd * sizeof(float));
        for (int64_t ch = 1; ch < j->n_chunks; ch++) {
            lb_attn_join(hd, out, acc_st, p + (size_t)ch * part, p + (size_t)ch * part + hd);
        }
    }
}

/* How lb_attn_task splits n_tok tokens: a task takes gh heads of one KV
 * group (a divisor of the group, at most LB_ATT_TILE) over tt tokens. One
 * token past the first chunk gets a task per tile and chunk. Otherwise tasks
 * of one head and one token serve when tiles would be too few to share out:
 * fewer than the threads with an F16 cache, where a tile converts each key
 * and value once for all its heads (so one token's 3 tiles on 2 threads
 * still beat its 9 heads), fewer than 4 a thread with a Q8_0 cache, where
 * the heads of a tile go one after the other. */
static void lb_attn_tiles(const lb_model *m, lb_attn_job *j) {
    const lb_model_config *c = &m->cfg;
    const int group = c->n_head / c->n_head_kv;
    int gh = group;
    while (gh > LB_ATT_TILE || group % gh != 0) {
        gh--;
    }
    int64_t tt = LB_ATT_TILE / gh < j->n_tok ? LB_ATT_TILE / gh : j->n_tok;
    int64_t n_tblk = (j->n_tok + tt - 1) / tt;
    j->n_chunks = ((int64_t)j->pos0 + j->n_tok + LB_ATT_CHUNK - 1) / LB_ATT_CHUNK;
    j->split = j->n_tok == 1 && j->n_chunks > 1;
    const int64_t min_tasks = (c->kv_type == LB_TYPE_F16 ? 1 : 4) * (int64_t)c->n_threads;
    if (!j->split && n_tblk * c->n_head_kv * (group / gh) < min_tasks) {
        gh = 1;
        tt = 1;
        n_tblk = j->n_tok;
    }
    j->gh = gh;
    j->n_slices = group / gh;
    j->tt = tt;
    j->n_tblk = n_tblk;
}

static void lb_add_bias(float *x, const lb_tensor *b, int64_t n_tok, int64_t ld) {
    if (!b->data) {
        return;
    }
    const float *bv = (const float *)b->data;
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t i = 0; i < b->ne0; i++) {
            x[t * ld + i] += bv[i];
        }
    }
}

enum { LB_LOGITS_NONE = 0, LB_LOGITS_LAST = 1, LB_LOGITS_ALL = 2 };

/* One chunk of at most n_batch tokens. */
static lb_status lb_forward_chunk(lb_model *m, const int32_t *tokens, int64_t n_tok, int32_t pos0,
                                  float *logits, int logits_mode) {
    const lb_model_config *c = &m->cfg;
    const int64_t d = c->n_embd;
    const float eps = c->rms_eps;
    lb_encoded enc;
    lb_encoded_reset(&enc);

    const lb_type_traits *et = lb_get_type_traits(m->tok_embd.type);
    for (int64_t t = 0; t < n_tok; t++) {
        const uint8_t *row = (const uint8_t *)m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes;
        if (lb_embd_from_output(m)) {
            /* m->act[0] is free until the first matrix, and holds a row: it
             * fits the output's encoded input, which is no smaller */
            lb_unpack_x8_row(m->tok_embd.type, m->output.packed, d, tokens[t], m->act[0]);
            row = m->act[0];
        }
        et->to_float(row, m->x + t * d, d);
    }

    const int half = c->rope_dim / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        const double p = (double)(pos0 + t) * (double)c->rope_pos_scale;
        float *cs = m->rope_cs + t * c->rope_dim;
        for (int i = 0; i < half; i++) {
            const double a = p * m->inv_freq[i];
            cs[2 * i] = (float)cos(a);
            cs[2 * i + 1] = (float)sin(a);
        }
    }

    /* the attention job of every layer but for the layer index: its kernels
     * and its split into tasks depend on the chunk only */
    const lb_kernels *kern = lb_kernels_active();
    lb_attn_job aj = {.m = m, .pos0 = pos0, .n_tok = n_tok};
    lb_attn_tiles(m, &aj);
    aj.dot = kern->attn_dot ? kern->attn_dot : lb_attn_dot_ref;
    aj.axpy = kern->attn_axpy ? kern->attn_axpy : lb_attn_axpy_ref;
    aj.f16_scores = kern->attn_scores_f16;
    aj.f16_wsum = kern->attn_wsum_f16;
    aj.q8_encode = lb_kernel_from_float(kern, LB_TYPE_Q8_0);
    aj.q8_scores = kern->attn_scores_q8_0;
    aj.q8_wsum = kern->attn_wsum_q8_0 ? kern->attn_wsum_q8_0 : lb_attn_wsum_q8_0_ref;
    aj.softmax = lb_kernel_softmax(kern);

    for (int l = 0; l < c->n_layer; l++) {
        if (atomic_load_explicit(&m->cancel, memory_order_relaxed)) {
            return lb_fail(LB_ERR_CANCELLED, "cancelled");
        }
        const lb_layer *L = &m->layers[l];

        /* attention */
        for (int64_t t = 0; t < n_tok; t++) {
            lb_rmsnorm(m->xn + t * d, m->x + t * d, (const float *)L->attn_norm.data, d, eps);
        }
        lb_encoded_reset(&enc); /* xn was rewritten */
        {
            const lb_tensor *ws[3] = {&L->wq, &L->wk, &L->wv};
            float *outs[3] = {m->q, m->k, m->v};
            const int64_t lds[3] = {m->q_dim, m->kv_dim, m->kv_dim};
            lb_matmul_n(m, &enc, 3, ws, outs, lds, m->xn, d, n_tok, 0);
        }
        lb_add_bias(m->q, &L->bq, n_tok, m->q_dim);
        lb_add_bias(m->k, &L->bk, n_tok, m->kv_dim);
        lb_add_bias(m->v, &L->bv, n_tok, m->kv_dim);

        const size_t layer_rows = (size_t)l * (size_t)c->n_head_kv * (size_t)c->n_ctx;
        for (int64_t t = 0; t < n_tok; t++) {
            const float *cs = m->rope_cs + t * c->rope_dim;
            for (int h = 0; h < c->n_head; h++) {
                lb_rope_head(m->q + t * m->q_dim + (int64_t)h * c->head_dim, cs, c->rope_dim, c->rope_kind);
            }
            for (int h = 0; h < c->n_head_kv; h++) {
                lb_rope_head(m->k + t * m->kv_dim + (int64_t)h * c->head_dim, cs, c->rope_dim, c->rope_kind);
            }
            for (int h = 0; h < c->n_head_kv; h++) {
                const size_t row = layer_rows + (size_t)h * (size_t)c->n_ctx + (size_t)(pos0 + t);
                uint8_t *kd = m->k_cache + row * m->head_row;
                uint8_t *vd = m->v_cache + row * m->head_row;
                const float *ks = m->k + t * m->kv_dim + (int64_t)h * c->head_dim;
                const float *vs = m->v + t * m->kv_dim + (int64_t)h * c->head_dim;
                if (c->kv_type == LB_TYPE_Q8_0) {
                    aj.q8_encode(ks, kd, c->head_dim);
                    aj.q8_encode(vs, vd, c->head_dim);
                    continue;
                }
                for (int i = 0; i < c->head_dim; i++) {
                    ((uint16_t *)kd)[i] = lb_fp32_to_fp16(ks[i]);
                    ((uint16_t *)vd)[i] = lb_fp32_to_fp16(vs[i]);
                }
            }
        }
        aj.layer = l;
        const int64_t tiles = aj.n_tblk * c->n_head_kv * aj.n_slices;
        lb_pool_run(m->pool, lb_attn_task, &aj, aj.split ? tiles * aj.n_chunks : tiles);
        if (aj.split) {
            lb_attn_join_parts(m, &aj);
        }
        /* xn now holds the attention output [n_tok][q_dim] */
        lb_encoded_reset(&enc);
        lb_matmul(m, &enc, &L->wo, m->xn, m->q_dim, n_tok, m->tmp, d);
        for (int64_t i = 0; i < n_tok * d; i++) {
            m->x[i] += m->tmp[i];
        }

        /* feed-forward (SwiGLU) */
        for (int64_t t = 0; t < n_tok; t++) {
            lb_rmsnorm(m->xn + t * d, m->x + t * d, (const float *)L->ffn_norm.data, d, eps);
        }
        lb_encoded_reset(&enc);
        {
            /* gate becomes silu(gate) * up inside the job */
            const lb_tensor *ws[2] = {&L->w_gate, &L->w_up};
            float *outs[2] = {m->gate, m->up};
            const int64_t lds[2] = {c->n_ff, c->n_ff};
            lb_matmul_n(m, &enc, 2, ws, outs, lds, m->xn, d, n_tok, 1);
        }
        lb_encoded_reset(&enc);
        lb_matmul(m, &enc, &L->w_down, m->gate, c->n_ff, n_tok, m->tmp, d);
        for (int64_t i = 0; i < n_tok * d; i++) {
            m->x[i] += m->tmp[i];
        }
    }

    /* output head: every token's logits, or only the last one's */
    if (logits_mode == LB_LOGITS_NONE) {
        return LB_OK;
    }
    const int64_t first = logits_mode == LB_LOGITS_ALL ? 0 : n_tok - 1;
    const int64_t n_out = n_tok - first;
    for (int64_t t = 0; t < n_out; t++) {
        lb_rmsnorm(m->xn + t * d, m->x + (first + t) * d, (const float *)m->out_norm.data, d, eps);
    }
    lb_encoded_reset(&enc);
    lb_matmul(m, &enc, &m->output, m->xn, d, n_out, logits, c->n_vocab);
    return LB_OK;
}

lb_status lb_forward(lb_model *m, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits,
                     size_t logits_len, int32_t logits_all) {
    lb_clear_error();
    if (!m || !tokens || !logits) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_forward: NULL argument");
    }
    if (!m->ready) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_forward: call lb_model_ready first");
    }
    const lb_model_config *c = &m->cfg;
    if (n_tokens < 1) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "no tokens to process");
    }
    if (pos < 0 || pos > m->n_past) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "position %d is past the %d cached positions", pos, m->n_past);
    }
    if ((int64_t)pos + n_tokens > c->n_ctx) {
        return lb_fail(LB_ERR_CONTEXT_FULL, "%lld tokens do not fit in the context of %d",
                       (long long)pos + n_tokens, c->n_ctx);
    }
    const size_t need = (size_t)(logits_all ? n_tokens : 1) * (size_t)c->n_vocab;
    if (logits_len < need) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "logits buffer holds %zu floats, %zu needed", logits_len, need);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->n_vocab) {
            return lb_fail(LB_ERR_INVALID_ARGUMENT, "token id %d at index %d is outside the vocabulary of %d",
                           tokens[i], i, c->n_vocab);
        }
    }
    atomic_store(&m->cancel, 0);
    m->n_past = pos;

    for (int32_t done = 0; done < n_tokens;) {
        const int32_t n = n_tokens - done < c->n_batch ? n_tokens - done : c->n_batch;
        const int last_chunk = done + n == n_tokens;
        float *out = logits_all ? logits + (size_t)done * (size_t)c->n_vocab : logits;
        const int mode = logits_all ? LB_LOGITS_ALL : last_chunk ? LB_LOGITS_LAST : LB_LOGITS_NONE;
        const lb_status st = lb_forward_chunk(m, tokens + done, n, pos + done, out, mode);
        if (st != LB_OK) {
            return st;
        }
        done += n;
        m->n_past = pos + done;
    }
    return LB_OK;
}
