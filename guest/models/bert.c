/* BERT-family encoder (BERT, MiniLM / sentence-transformers) on Borda's kernels.
 *
 * One instance serves any number of encode calls; nothing is remembered between
 * them. The host places the weights in linear memory, describes them to "init"
 * (borda_invoke), then calls borda_encode with a padded batch of sequences.
 *
 *   borda_invoke {"fn": "info"}  -> {"abi": 1, "module": "borda_bert", "functions": [..]}
 *   borda_invoke {"fn": "init", "args": {"config": {..}, "weights": {name: {"dtype",
 *                 "shape", "offset"}}, "weights_end": int}}
 *                -> {"scratch_bytes": int}
 *                   validates every tensor, then allocates all scratch for max_tokens
 *                   tokens from the arena, above weights_end, once, and keeps it
 *                   (arena_keep). Only one successful init per instance.
 *   borda_encode(tokens, types, lengths, n_seqs, stride, pooling, out) -> 0 or a code below
 *
 * Weights (llama.cpp's GGUF names for BERT) are "f32" (row-major) or "q8_0" (the
 * planar arrays of borda.h at offset: qs int8 [rows*k], then d f32 [rows*k/32] at
 * offset + align64(rows*k), then s int16 [rows*k/32] at d + align64(rows*k/32*4)).
 * Every 2-D weight, embedding tables included, may be either; vectors are f32.
 *
 * The forward pass is Hugging Face's BertModel (post-LayerNorm):
 *   x = LN(word[tok] + type[tt] + pos[p])
 *   per layer:  q, k, v = x W^T + b         (attention over the sequence's own tokens,
 *               x = LN(x + attn W_o^T + b_o)  bidirectional, scale 1/sqrt(head_dim))
 *               x = LN(x + gelu(x W_up^T + b_up) W_down^T + b_down)   (erf gelu)
 * The real tokens of several sequences are packed together for the matmuls (no
 * work on padding); only attention is per sequence. */
#include "model_common.h"

/* Matmul inputs in one digit (7 bits, borda.h): embeddings keep a cosine of
 * >= 0.998 to float32 with it, and the encoder is compute bound. */
#define ACT_DIGITS 1

/* ---- borda_encode return codes ----
 *    0  ok: out written
 *   -1  ENC_NOT_INITIALISED  init has not succeeded
 *   -3  ENC_BAD_ARGUMENT     n_seqs < 1, stride < 1, pooling not 0/1/2, or a length
 *                            outside [1, min(stride, max_position)] or above max_tokens
 *   -5  ENC_BAD_TOKEN        a token id outside [0, vocab_size) or a type id outside
 *                            [0, type_vocab_size), among a sequence's real tokens
 *   -6  ENC_BAD_POINTER      a tokens / types / lengths / out range is outside
 *                            [__heap_base, memory size) or overlaps what init allocated
 *                            (scratch), or out overlaps the weights or an input
 * (-2 and -4 are unused.) Arguments are all checked before any work: a failed call
 * writes nothing. */
#define ENC_OK 0
#define ENC_NOT_INITIALISED (-1)
#define ENC_BAD_ARGUMENT (-3)
#define ENC_BAD_TOKEN (-5)
#define ENC_BAD_POINTER (-6)

/* ---- borda_encode pooling ---- */
#define POOL_CLS 0  /* out [n_seqs][hidden]: the first token's final hidden state */
#define POOL_MEAN 1 /* out [n_seqs][hidden]: the mean over the sequence's real tokens */
#define POOL_NONE 2 /* out [n_seqs][stride][hidden]: every token, padding rows zero */

/* ============================== model state ============================== */

typedef struct {
    int vocab_size, type_vocab_size, max_position;
    int dim;        /* hidden_size */
    int hidden_dim; /* intermediate_size (FFN) */
    int n_layers, n_heads, head_dim;
    int max_tokens; /* scratch capacity: tokens per group of sequences */
    float norm_eps;
} Config;

typedef struct {
    model_matrix wq, wk, wv, wo;          /* [dim, dim] */
    const float *bq, *bk, *bv, *bo;       /* [dim] */
    const float *attn_norm, *attn_norm_b; /* [dim] */
    model_matrix w_up, w_down;            /* [hidden_dim, dim] [dim, hidden_dim] */
    const float *b_up, *b_down;           /* [hidden_dim] [dim] */
    const float *ffn_norm, *ffn_norm_b;   /* [dim] */
} Layer;

typedef struct {
    model_matrix token_embd;    /* [vocab, dim] */
    model_matrix position_embd; /* [max_position, dim] */
    model_matrix token_types;   /* [type_vocab, dim] */
    const float *embd_norm, *embd_norm_b;
    Layer *layers;
} Weights;

typedef struct { /* everything below holds max_tokens tokens */
    float *x;        /* residual stream [T][dim] */
    float *xb;       /* rows of the type and position embeddings [T][dim] */
    float *q, *k, *v;  /* [T][dim] = [T][n_heads][head_dim] */
    float *kt, *vt;    /* k, v of each sequence as [n_heads][len][head_dim] (its "KV cache") */
    float *att;        /* attention output [T][dim] */
    float *hb;         /* FFN hidden [T][hidden_dim] */
    int8_t *xq;        /* quantized matmul input [T][ACT_DIGITS * max k] (quantize_act) */
    float *xd;         /* its block scales [T][max k / 32] */
    int32_t *ids;      /* position or type ids of one sequence [T] */
} RunState;

/* The borda_encode call being served: sequence i is tokens[i*stride ..][0..lengths[i]). */
typedef struct {
    const int32_t *tokens, *types; /* types NULL: every token has type 0 */
    const int32_t *lengths;
    int stride;
} Batch;

static Config c;
static Weights w;
static RunState s;
static int initialised;
static uintptr_t weights_lo, weights_hi; /* the tensors' extent */
static uintptr_t state_lo, state_hi;     /* what init allocated: layers, scratch */

/* ============================== forward pass ============================= */

/* out[i] = row ids[i] of an embedding table */
static void embed(const model_matrix *e, const int32_t *ids, int n, float *out) {
    if (e->is_q8) {
        embed_q8_0(e->q8.qs, e->q8.d, ids, out, n, c.dim);
        return;
    }
    for (int i = 0; i < n; i++)
        __builtin_memcpy(out + (size_t)i * c.dim, e->f32 + (size_t)ids[i] * c.dim,
                         (size_t)c.dim * sizeof(float));
}

/* x = LN(word + type + pos) for the n tokens of sequence i, summed as HF does:
 * (word + type) + pos. */
static void embed_sequence(const Batch *b, int i, float *x) {
    int n = b->lengths[i];
    size_t nd = (size_t)n * c.dim;
    embed(&w.token_embd, b->tokens + (size_t)i * b->stride, n, x);
    if (b->types) {
        embed(&w.token_types, b->types + (size_t)i * b->stride, n, s.xb);
    } else {
        for (int p = 0; p < n; p++) s.ids[p] = 0;
        embed(&w.token_types, s.ids, n, s.xb);
    }
    model_add(x, s.xb, (int)nd);
    for (int p = 0; p < n; p++) s.ids[p] = p;
    embed(&w.position_embd, s.ids, n, s.xb);
    model_add(x, s.xb, (int)nd);
    layernorm(x, w.embd_norm, w.embd_norm_b, x, n, c.dim, c.norm_eps);
}

/* [n][n_heads][head_dim] -> [n_heads][n][head_dim] */
static void split_heads(const float *src, float *dst, int n) {
    size_t row = (size_t)c.head_dim * sizeof(float);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < c.n_heads; h++)
            __builtin_memcpy(dst + ((size_t)h * n + t) * c.head_dim,
                             src + ((size_t)t * c.n_heads + h) * c.head_dim, row);
}

/* One encoder layer over the T packed tokens in s.x of sequences s0..s1-1.
 * cls_only (the last layer under POOL_CLS): only each sequence's first token
 * continues past attention (nothing needs the others' outputs); those rows are
 * moved to the front of s.x, sequence s0 + i at row i. */
static void forward_layer(int l, const Batch *b, int s0, int s1, int T, int cls_only) {
    const Layer *L = &w.layers[l];
    size_t dim = (size_t)c.dim;

    /* q, k, v of every token at once */
    model_input h = {s.x, T, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul(&h, &L->wq, L->bq, s.q);
    model_matmul(&h, &L->wk, L->bk, s.k);
    model_matmul(&h, &L->wv, L->bv, s.v);

    /* attention of each sequence over its own tokens (no mask, no padding) */
    float scale = 1.0f / borda_sqrtf((float)c.head_dim);
    size_t off = 0;
    for (int i = s0; i < s1; i++) {
        int n = b->lengths[i];
        split_heads(s.k + off, s.kt + off, n);
        split_heads(s.v + off, s.vt + off, n);
        if (cls_only) {
            size_t row = (size_t)(i - s0) * dim; /* <= off, a whole row below it or equal */
            attention(s.q + off, s.kt + off, s.vt + off, s.att + row, 1, c.n_heads, c.n_heads,
                      c.head_dim, n, 0, n, 0, scale);
            if (row != off) __builtin_memcpy(s.x + row, s.x + off, dim * sizeof(float));
        } else {
            attention(s.q + off, s.kt + off, s.vt + off, s.att + off, n, c.n_heads, c.n_heads,
                      c.head_dim, n, 0, n, 0, scale);
        }
        off += (size_t)n * dim;
    }
    int n_out = cls_only ? s1 - s0 : T;

    /* x = LN(x + att Wo + bo) */
    model_input a = {s.att, n_out, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul_add(&a, &L->wo, L->bo, s.x);
    layernorm(s.x, L->attn_norm, L->attn_norm_b, s.x, n_out, c.dim, c.norm_eps);

    /* x = LN(x + gelu(x Wup + bup) Wdown + bdown) */
    model_input f = {s.x, n_out, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul(&f, &L->w_up, L->b_up, s.hb);
    gelu(s.hb, n_out * c.hidden_dim);
    model_input g = {s.hb, n_out, c.hidden_dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul_add(&g, &L->w_down, L->b_down, s.x);
    layernorm(s.x, L->ffn_norm, L->ffn_norm_b, s.x, n_out, c.dim, c.norm_eps);
}

/* The pooled (or all) final hidden states of sequences s0..s1-1 into out. Under
 * POOL_CLS s.x holds one row per sequence (see forward_layer), else every token. */
static void write_output(const Batch *b, int s0, int s1, int pooling, float *out) {
    size_t dim = (size_t)c.dim;
    const float *x = s.x;
    for (int i = s0; i < s1; i++) {
        int n = b->lengths[i];
        if (pooling == POOL_CLS) {
            __builtin_memcpy(out + i * dim, s.x + (size_t)(i - s0) * dim, dim * sizeof(float));
        } else if (pooling == POOL_MEAN) {
            float *o = out + i * dim;
            for (size_t j = 0; j < dim; j++) o[j] = 0.0f;
            for (int t = 0; t < n; t++) model_add(o, x + t * dim, c.dim);
            float inv = 1.0f / (float)n;
            for (size_t j = 0; j < dim; j++) o[j] *= inv;
        } else {
            float *o = out + (size_t)i * b->stride * dim;
            __builtin_memcpy(o, x, n * dim * sizeof(float));
            __builtin_memset(o + n * dim, 0, (size_t)(b->stride - n) * dim * sizeof(float));
        }
        x += n * dim;
    }
}

/* Sequences s0..s1-1, T tokens in all (T <= max_tokens). */
static void forward_group(const Batch *b, int s0, int s1, int T, int pooling, float *out) {
    float *x = s.x;
    for (int i = s0; i < s1; i++) {
        embed_sequence(b, i, x);
        x += (size_t)b->lengths[i] * c.dim;
    }
    for (int l = 0; l < c.n_layers; l++)
        forward_layer(l, b, s0, s1, T, pooling == POOL_CLS && l == c.n_layers - 1);
    write_output(b, s0, s1, pooling, out);
}

/* Encodes n_seqs sequences: tokens and types int32 [n_seqs][stride] (types_ptr 0:
 * all type 0), lengths int32 [n_seqs]; writes float32 out [n_seqs][hidden]
 * (POOL_CLS, POOL_MEAN) or [n_seqs][stride][hidden] (POOL_NONE). Sequences are
 * run in groups of at most max_tokens real tokens. */
BORDA_EXPORT("borda_encode")
int32_t borda_encode(uint32_t tokens_ptr, uint32_t types_ptr, uint32_t lengths_ptr,
                     int32_t n_seqs, int32_t stride, int32_t pooling, uint32_t out_ptr) {
    if (!initialised) return ENC_NOT_INITIALISED;
    if (n_seqs < 1 || stride < 1 || (pooling != POOL_CLS && pooling != POOL_MEAN &&
                                     pooling != POOL_NONE))
        return ENC_BAD_ARGUMENT;

    uint64_t ids_bytes = (uint64_t)n_seqs * (uint64_t)stride * sizeof(int32_t);
    uint64_t lengths_bytes = (uint64_t)n_seqs * sizeof(int32_t);
    uint64_t out_rows = (uint64_t)n_seqs * (pooling == POOL_NONE ? (uint64_t)stride : 1);
    uint64_t out_bytes = out_rows * (uint64_t)c.dim * sizeof(float);
    const uint64_t inputs[3][2] = {{tokens_ptr, ids_bytes},
                                   {types_ptr, types_ptr ? ids_bytes : 0},
                                   {lengths_ptr, lengths_bytes}};
    if (!model_in_heap(out_ptr, out_bytes) ||
        model_overlaps(out_ptr, out_bytes, state_lo, state_hi) ||
        model_overlaps(out_ptr, out_bytes, weights_lo, weights_hi))
        return ENC_BAD_POINTER;
    for (int j = 0; j < 3; j++) {
        uint64_t p = inputs[j][0], n = inputs[j][1];
        if (j == 1 && !types_ptr) continue;
        if (!model_in_heap((uint32_t)p, n) || model_overlaps(p, n, state_lo, state_hi) ||
            model_overlaps(out_ptr, out_bytes, p, p + n))
            return ENC_BAD_POINTER;
    }
    Batch b = {(const int32_t *)(uintptr_t)tokens_ptr, (const int32_t *)(uintptr_t)types_ptr,
               (const int32_t *)(uintptr_t)lengths_ptr, stride};

    int max_len = stride;
    if (c.max_position < max_len) max_len = c.max_position;
    if (c.max_tokens < max_len) max_len = c.max_tokens;
    for (int i = 0; i < n_seqs; i++)
        if (b.lengths[i] < 1 || b.lengths[i] > max_len) return ENC_BAD_ARGUMENT;
    for (int i = 0; i < n_seqs; i++) {
        const int32_t *tok = b.tokens + (size_t)i * stride;
        const int32_t *typ = b.types ? b.types + (size_t)i * stride : 0;
        for (int t = 0; t < b.lengths[i]; t++) {
            if (tok[t] < 0 || tok[t] >= c.vocab_size) return ENC_BAD_TOKEN;
            if (typ && (typ[t] < 0 || typ[t] >= c.type_vocab_size)) return ENC_BAD_TOKEN;
        }
    }

    float *out = (float *)(uintptr_t)out_ptr;
    for (int s0 = 0; s0 < n_seqs;) { /* greedy groups of <= max_tokens tokens */
        int s1 = s0, T = 0;
        while (s1 < n_seqs && T + b.lengths[s1] <= c.max_tokens) T += b.lengths[s1++];
        forward_group(&b, s0, s1, T, pooling, out);
        s0 = s1;
    }
    return ENC_OK;
}

/* ================================= init ================================== */

static char err[BORDA_ERR_MAX];
#define fail(...) borda_failf(err, __VA_ARGS__) /* formats into err, returns 0 */

/* ---- config ---- */

static int read_config(const mp_reader *map) {
    static const char *const keys[] = {"vocab_size", "hidden_size", "n_layers", "n_heads",
                                       "intermediate_size", "max_position", "type_vocab_size",
                                       "layer_norm_eps", "max_tokens", 0};
    if (mp_peek(map) != MP_T_MAP) return fail("arg 'config' must be a map");
    if (!borda_check_keys(map, keys, "config key", err)) return 0;
    if (!model_config_int(map, "vocab_size", 1, 1 << 22, &c.vocab_size, err) ||
        !model_config_int(map, "hidden_size", 1, 1 << 20, &c.dim, err) ||
        !model_config_int(map, "n_layers", 1, 1024, &c.n_layers, err) ||
        !model_config_int(map, "n_heads", 1, 1024, &c.n_heads, err) ||
        !model_config_int(map, "intermediate_size", 1, 1 << 20, &c.hidden_dim, err) ||
        !model_config_int(map, "max_position", 1, 1 << 20, &c.max_position, err) ||
        !model_config_int(map, "type_vocab_size", 1, 1 << 16, &c.type_vocab_size, err) ||
        !model_config_int(map, "max_tokens", 1, 1 << 20, &c.max_tokens, err))
        return 0;
    mp_reader v;
    double eps;
    if (mp_map_find(map, "layer_norm_eps", &v) != 1)
        return fail("config has no 'layer_norm_eps'");
    if (!mp_read_number(&v, &eps) || !(eps >= 0 && eps <= 1))
        return fail("config 'layer_norm_eps' must be a number in [0, 1]");
    c.norm_eps = (float)eps;
    if (c.dim % c.n_heads)
        return fail("config 'hidden_size' (%d) is not a multiple of 'n_heads' (%d)", c.dim,
                    c.n_heads);
    c.head_dim = c.dim / c.n_heads;
    if (c.head_dim % 4)
        return fail("head_dim = hidden_size / n_heads is %d, expected a multiple of 4 (the "
                    "attention kernel)", c.head_dim);
    if (c.head_dim > 8192)
        return fail("head_dim = hidden_size / n_heads is %d, expected at most 8192 (the "
                    "attention kernel)", c.head_dim);
    return 1;
}

/* ---- weights ---- */

enum { SHAPE_DIM, SHAPE_FF }; /* expected dims, from the config */

static int dim_of(int which) { return which == SHAPE_DIM ? c.dim : c.hidden_dim; }

/* Per-layer tensors "blk.{i}.<name>", all required: rows -1 means a vector [k] (f32). */
static const model_layer_tensor layer_tensors[] = {
    {"attn_q.weight", SHAPE_DIM, SHAPE_DIM, 1, __builtin_offsetof(Layer, wq)},
    {"attn_q.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, bq)},
    {"attn_k.weight", SHAPE_DIM, SHAPE_DIM, 1, __builtin_offsetof(Layer, wk)},
    {"attn_k.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, bk)},
    {"attn_v.weight", SHAPE_DIM, SHAPE_DIM, 1, __builtin_offsetof(Layer, wv)},
    {"attn_v.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, bv)},
    {"attn_output.weight", SHAPE_DIM, SHAPE_DIM, 1, __builtin_offsetof(Layer, wo)},
    {"attn_output.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, bo)},
    {"attn_output_norm.weight", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, attn_norm)},
    {"attn_output_norm.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, attn_norm_b)},
    {"ffn_up.weight", SHAPE_FF, SHAPE_DIM, 1, __builtin_offsetof(Layer, w_up)},
    {"ffn_up.bias", -1, SHAPE_FF, 1, __builtin_offsetof(Layer, b_up)},
    {"ffn_down.weight", SHAPE_DIM, SHAPE_FF, 1, __builtin_offsetof(Layer, w_down)},
    {"ffn_down.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, b_down)},
    {"layer_output_norm.weight", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, ffn_norm)},
    {"layer_output_norm.bias", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, ffn_norm_b)},
};
#define N_LAYER_TENSORS ((int)(sizeof layer_tensors / sizeof layer_tensors[0]))

static model_layers layers(void) {
    return (model_layers){layer_tensors, N_LAYER_TENSORS, w.layers, sizeof(Layer), c.n_layers,
                          dim_of};
}

/* 1 and the slot of a known tensor name; 0 for an unknown one */
static int find_slot(const char *name, uint32_t len, model_slot *slot) {
    model_slot table = {0, c.dim, 0, 0}, norm = {-1, c.dim, 0, 0};
    if (mp_str_eq(name, len, "token_embd.weight"))
        return *slot = table, slot->rows = c.vocab_size, slot->mat = &w.token_embd, 1;
    if (mp_str_eq(name, len, "position_embd.weight"))
        return *slot = table, slot->rows = c.max_position, slot->mat = &w.position_embd, 1;
    if (mp_str_eq(name, len, "token_types.weight"))
        return *slot = table, slot->rows = c.type_vocab_size, slot->mat = &w.token_types, 1;
    if (mp_str_eq(name, len, "token_embd_norm.weight"))
        return *slot = norm, slot->vec = &w.embd_norm, 1;
    if (mp_str_eq(name, len, "token_embd_norm.bias"))
        return *slot = norm, slot->vec = &w.embd_norm_b, 1;
    model_layers m = layers();
    return model_find_layer_slot(&m, name, len, slot);
}

static int load_weights(const mp_reader *map) {
    if (!model_load_weights(map, find_slot, c.n_layers, &weights_lo, weights_hi, err)) return 0;
    /* everything is required */
    if (!w.token_embd.rows) return fail("missing weight 'token_embd.weight'");
    if (!w.position_embd.rows) return fail("missing weight 'position_embd.weight'");
    if (!w.token_types.rows) return fail("missing weight 'token_types.weight'");
    if (!w.embd_norm) return fail("missing weight 'token_embd_norm.weight'");
    if (!w.embd_norm_b) return fail("missing weight 'token_embd_norm.bias'");
    model_layers m = layers();
    return model_check_layers(&m, err);
}

/* ---- allocation ---- */

static int allocate_state(uint64_t *scratch_bytes) {
    uint64_t T = (uint64_t)c.max_tokens, d = (uint64_t)c.dim * 4;
    uint64_t max_k = (uint64_t)(c.hidden_dim > c.dim ? c.hidden_dim : c.dim);
    model_buffer scratch[] = {
        {(void **)&s.x, T * d},   {(void **)&s.xb, T * d},  {(void **)&s.q, T * d},
        {(void **)&s.k, T * d},   {(void **)&s.v, T * d},   {(void **)&s.kt, T * d},
        {(void **)&s.vt, T * d},  {(void **)&s.att, T * d},
        {(void **)&s.hb, T * c.hidden_dim * 4},
        {(void **)&s.xq, T * ACT_DIGITS * max_k}, {(void **)&s.xd, T * (max_k / QK8_0 + 1) * 4},
        {(void **)&s.ids, T * 4},
    };
    int n = (int)(sizeof scratch / sizeof scratch[0]);
    if (!model_alloc_buffers(scratch, n))
        return fail("out of memory: scratch for max_tokens=%d needs %llu bytes; lower "
                    "max_tokens or raise the memory limit", c.max_tokens,
                    (unsigned long long)model_buffers_bytes(scratch, n));
    *scratch_bytes = model_buffers_bytes(scratch, n);
    return 1;
}

/* ---- the init request ---- */

static int init(const borda_request *rq, uint64_t *scratch_bytes) {
    static const char *const arg_keys[] = {"config", "weights", "weights_end", 0};
    static const char *const no_tensors[] = {0};
    if (initialised) return fail("already initialised (init may be called once per instance)");
    if (!borda_check_keys(&rq->args, arg_keys, "arg", err) ||
        !borda_check_keys(&rq->tensors, no_tensors, "tensor", err))
        return 0;
    mp_reader v;
    if (mp_map_find(&rq->args, "config", &v) != 1) return fail("missing arg 'config'");
    if (!read_config(&v)) return 0;

    int64_t end;
    if (!model_weights_end(rq, &end, err)) return 0;

    /* From here on everything lives in the arena above the weights. */
    uint64_t layers_bytes = (uint64_t)c.n_layers * sizeof(Layer);
    w = (Weights){0};
    w.layers = model_alloc_layer_table(end, layers_bytes);
    if (!w.layers) return fail("out of memory for the layer table");
    state_lo = (uintptr_t)w.layers;
    weights_lo = weights_hi = (uintptr_t)end;

    if (mp_map_find(&rq->args, "weights", &v) != 1) return fail("missing arg 'weights'");
    if (!load_weights(&v)) return 0;
    if (!allocate_state(scratch_bytes)) return 0;
    *scratch_bytes += model_align64(layers_bytes);
    state_hi = arena_mark();
    arena_keep(); /* the host's arena resets never free the model's state */
    initialised = 1;
    return 1;
}

/* ============================== borda_invoke ============================= */

static const char *const functions[] = {"info", "init", 0};
static const model_info module_info = {"borda_bert", functions};

static void write_init(mp_writer *m, const void *ctx) {
    const uint64_t *scratch_bytes = ctx;
    mp_write_map(m, 2);
    mp_write_cstr(m, "ok");
    mp_write_bool(m, 1);
    mp_write_cstr(m, "result");
    mp_write_map(m, 1);
    mp_write_cstr(m, "scratch_bytes");
    mp_write_uint(m, *scratch_bytes);
}

BORDA_EXPORT("borda_invoke") int64_t borda_invoke(uint32_t req_ptr, uint32_t req_len) {
    static const char *const none[] = {0};
    borda_request rq;
    if (!borda_in_heap(req_ptr, req_len)) return BORDA_ERR_BAD_REQUEST;
    if (!borda_parse_request((const void *)(uintptr_t)req_ptr, req_len, &rq, err))
        return borda_error_response(err);
    if (mp_str_eq(rq.fn, rq.fn_len, "init")) {
        uint64_t scratch_bytes = 0;
        if (!init(&rq, &scratch_bytes)) return borda_fn_error_response("init", err);
        return borda_respond(write_init, &scratch_bytes);
    }
    if (!mp_str_eq(rq.fn, rq.fn_len, "info")) {
        borda_fmt(err, sizeof err, "unknown fn '%.*s' (fn 'info' lists them)", (int)rq.fn_len,
                  rq.fn);
        return borda_error_response(err);
    }
    if (!borda_check_keys(&rq.args, none, "arg", err) ||
        !borda_check_keys(&rq.tensors, none, "tensor", err))
        return borda_fn_error_response("info", err);
    return borda_respond(model_write_info, &module_info);
}
