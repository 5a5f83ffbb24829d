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
#include "borda.h"
#include "msgpack.h"

extern unsigned char __heap_base;

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

typedef struct { /* a weight matrix [rows][k]: f32 or q8_0 */
    int is_q8;
    int rows, k; /* 0 rows: not loaded */
    const float *f32;
    q8_matrix q8;
} Matrix;

typedef struct {
    Matrix wq, wk, wv, wo;                    /* [dim, dim] */
    const float *bq, *bk, *bv, *bo;           /* [dim] */
    const float *attn_norm, *attn_norm_b;     /* [dim] */
    Matrix w_up, w_down;                      /* [hidden_dim, dim] [dim, hidden_dim] */
    const float *b_up, *b_down;               /* [hidden_dim] [dim] */
    const float *ffn_norm, *ffn_norm_b;       /* [dim] */
} Layer;

typedef struct {
    Matrix token_embd;    /* [vocab, dim] */
    Matrix position_embd; /* [max_position, dim] */
    Matrix token_types;   /* [type_vocab, dim] */
    const float *embd_norm, *embd_norm_b;
    Layer *layers;
} Weights;

typedef struct { /* everything below holds max_tokens tokens */
    float *x;        /* residual stream [T][dim] */
    float *xb;       /* an embedding row or a block's output [T][dim] */
    float *q, *k, *v;  /* [T][dim] = [T][n_heads][head_dim] */
    float *kt, *vt;    /* k, v of each sequence as [n_heads][len][head_dim] (its "KV cache") */
    float *att;        /* attention output [T][dim] */
    float *hb;         /* FFN hidden [T][hidden_dim] */
    int8_t *xq;        /* quantized matmul input [T][max k], offset by 64 (quantize_act) */
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

/* The input of one or more matmuls: n_tokens x k floats. For q8_0 matrices it
 * is quantized on first use into s.xq / s.xd and then shared (q, k and v read
 * the same input). s.xq holds one input at a time: be done with an Input before
 * the next one is used. */
typedef struct {
    const float *x;
    int n_tokens, k;
    int quantized;
} Input;

/* y[t][rows] = in[t] . W[rows] + bias */
static void matmul(Input *in, const Matrix *m, const float *bias, float *y) {
    if (!m->is_q8) {
        gemm_f32(in->x, m->f32, bias, y, in->n_tokens, m->rows, m->k);
        return;
    }
    if (!in->quantized) {
        quantize_act(in->x, s.xq, s.xd, in->n_tokens, in->k);
        in->quantized = 1;
    }
    gemm_q8_0(&m->q8, s.xq, s.xd, y, in->n_tokens);
    for (int t = 0; t < in->n_tokens; t++)
        for (int r = 0; r < m->rows; r++) y[(size_t)t * m->rows + r] += bias[r];
}

static void add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* out[i] = row ids[i] of an embedding table */
static void embed(const Matrix *e, const int32_t *ids, int n, float *out) {
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
    add(x, s.xb, (int)nd);
    for (int p = 0; p < n; p++) s.ids[p] = p;
    embed(&w.position_embd, s.ids, n, s.xb);
    add(x, s.xb, (int)nd);
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
    Input h = {s.x, T, c.dim, 0};
    matmul(&h, &L->wq, L->bq, s.q);
    matmul(&h, &L->wk, L->bk, s.k);
    matmul(&h, &L->wv, L->bv, s.v);

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
    Input a = {s.att, n_out, c.dim, 0};
    matmul(&a, &L->wo, L->bo, s.xb);
    add(s.x, s.xb, n_out * c.dim);
    layernorm(s.x, L->attn_norm, L->attn_norm_b, s.x, n_out, c.dim, c.norm_eps);

    /* x = LN(x + gelu(x Wup + bup) Wdown + bdown) */
    Input f = {s.x, n_out, c.dim, 0};
    matmul(&f, &L->w_up, L->b_up, s.hb);
    gelu(s.hb, n_out * c.hidden_dim);
    Input g = {s.hb, n_out, c.hidden_dim, 0};
    matmul(&g, &L->w_down, L->b_down, s.xb);
    add(s.x, s.xb, n_out * c.dim);
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
            for (int t = 0; t < n; t++) add(o, x + t * dim, c.dim);
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

/* [p, p + n) lies in the heap (the range host buffers come from) */
static int in_heap(uint32_t p, uint64_t n) {
    return n <= UINT32_MAX && borda_in_heap(p, (uint32_t)n);
}

static int overlaps(uint64_t p, uint64_t n, uint64_t lo, uint64_t hi) {
    return p < hi && lo < p + n;
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
    if (!in_heap(out_ptr, out_bytes) || overlaps(out_ptr, out_bytes, state_lo, state_hi) ||
        overlaps(out_ptr, out_bytes, weights_lo, weights_hi))
        return ENC_BAD_POINTER;
    for (int j = 0; j < 3; j++) {
        uint64_t p = inputs[j][0], n = inputs[j][1];
        if (j == 1 && !types_ptr) continue;
        if (!in_heap((uint32_t)p, n) || overlaps(p, n, state_lo, state_hi) ||
            overlaps(out_ptr, out_bytes, p, p + n))
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

static char err[BORDA_ERR_MAX], msg[BORDA_ERR_MAX];

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    borda_vfmt(err, sizeof err, fmt, ap);
    va_end(ap);
    return 0;
}

static uint64_t align64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }
static uint64_t memory_bytes(void) { return (uint64_t)__builtin_wasm_memory_size(0) * 65536u; }

/* ---- config ---- */

/* config.key: an integer in [lo, hi] */
static int read_int(const mp_reader *map, const char *key, int64_t lo, int64_t hi, int *out) {
    mp_reader v;
    int64_t x;
    if (mp_map_find(map, key, &v) != 1) return fail("config has no '%s'", key);
    if (!mp_read_int(&v, &x)) return fail("config '%s' must be an integer", key);
    if (x < lo || x > hi)
        return fail("config '%s' is %lld, expected %lld..%lld", key, (long long)x, (long long)lo,
                    (long long)hi);
    *out = (int)x;
    return 1;
}

static int read_config(const mp_reader *map) {
    static const char *const keys[] = {"vocab_size", "hidden_size", "n_layers", "n_heads",
                                       "intermediate_size", "max_position", "type_vocab_size",
                                       "layer_norm_eps", "max_tokens", 0};
    if (mp_peek(map) != MP_T_MAP) return fail("arg 'config' must be a map");
    if (!borda_check_keys(map, keys, "config key", err)) return 0;
    if (!read_int(map, "vocab_size", 1, 1 << 22, &c.vocab_size) ||
        !read_int(map, "hidden_size", 1, 1 << 20, &c.dim) ||
        !read_int(map, "n_layers", 1, 1024, &c.n_layers) ||
        !read_int(map, "n_heads", 1, 1024, &c.n_heads) ||
        !read_int(map, "intermediate_size", 1, 1 << 20, &c.hidden_dim) ||
        !read_int(map, "max_position", 1, 1 << 20, &c.max_position) ||
        !read_int(map, "type_vocab_size", 1, 1 << 16, &c.type_vocab_size) ||
        !read_int(map, "max_tokens", 1, 1 << 20, &c.max_tokens))
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
static const struct {
    const char *name;
    int rows, k;
    size_t field; /* offset in Layer of a const float * (vector) or a Matrix */
} layer_tensors[] = {
    {"attn_q.weight", SHAPE_DIM, SHAPE_DIM, __builtin_offsetof(Layer, wq)},
    {"attn_q.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, bq)},
    {"attn_k.weight", SHAPE_DIM, SHAPE_DIM, __builtin_offsetof(Layer, wk)},
    {"attn_k.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, bk)},
    {"attn_v.weight", SHAPE_DIM, SHAPE_DIM, __builtin_offsetof(Layer, wv)},
    {"attn_v.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, bv)},
    {"attn_output.weight", SHAPE_DIM, SHAPE_DIM, __builtin_offsetof(Layer, wo)},
    {"attn_output.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, bo)},
    {"attn_output_norm.weight", -1, SHAPE_DIM, __builtin_offsetof(Layer, attn_norm)},
    {"attn_output_norm.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, attn_norm_b)},
    {"ffn_up.weight", SHAPE_FF, SHAPE_DIM, __builtin_offsetof(Layer, w_up)},
    {"ffn_up.bias", -1, SHAPE_FF, __builtin_offsetof(Layer, b_up)},
    {"ffn_down.weight", SHAPE_DIM, SHAPE_FF, __builtin_offsetof(Layer, w_down)},
    {"ffn_down.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, b_down)},
    {"layer_output_norm.weight", -1, SHAPE_DIM, __builtin_offsetof(Layer, ffn_norm)},
    {"layer_output_norm.bias", -1, SHAPE_DIM, __builtin_offsetof(Layer, ffn_norm_b)},
};
#define N_LAYER_TENSORS ((int)(sizeof layer_tensors / sizeof layer_tensors[0]))

/* Where a named tensor goes and the shape it must have. */
typedef struct {
    int rows, k;       /* rows -1: a vector of k */
    const float **vec; /* destination of a vector, or */
    Matrix *mat;       /* of a matrix */
} Slot;

static void layer_slot(int layer, int j, Slot *slot) {
    char *field = (char *)&w.layers[layer] + layer_tensors[j].field;
    slot->rows = layer_tensors[j].rows < 0 ? -1 : dim_of(layer_tensors[j].rows);
    slot->k = dim_of(layer_tensors[j].k);
    slot->vec = slot->rows < 0 ? (const float **)(void *)field : 0;
    slot->mat = slot->rows < 0 ? 0 : (Matrix *)(void *)field;
}

static int slot_loaded(const Slot *slot) {
    return slot->vec ? *slot->vec != 0 : slot->mat->rows != 0;
}

static int parse_uint(const char *p, uint32_t n, int *out) { /* canonical decimal only */
    if (n == 0 || n > 7 || (p[0] == '0' && n > 1)) return 0;
    int v = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* 1 and the slot of a known tensor name; 0 for an unknown one */
static int find_slot(const char *name, uint32_t len, Slot *slot) {
    Slot table = {0, c.dim, 0, 0}, norm = {-1, c.dim, 0, 0};
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
    /* blk.{i}.{suffix} */
    if (len < 6 || !mp_str_eq(name, 4, "blk.")) return 0;
    uint32_t dot = 4;
    while (dot < len && name[dot] != '.') dot++;
    int layer;
    if (dot == len || !parse_uint(name + 4, dot - 4, &layer) || layer >= c.n_layers) return 0;
    for (int j = 0; j < N_LAYER_TENSORS; j++)
        if (mp_str_eq(name + dot + 1, len - dot - 1, layer_tensors[j].name)) {
            layer_slot(layer, j, slot);
            return 1;
        }
    return 0;
}

/* A tensor as the request describes it. */
typedef struct {
    int is_q8, ndim;
    int64_t shape[2]; /* the first two dims */
    int64_t offset;
} TensorDesc;

/* {"dtype": "f32"|"q8_0", "shape": [..], "offset": int} */
static int read_desc(const char *name, uint32_t len, const mp_reader *v, TensorDesc *t) {
    static const char *const keys[] = {"dtype", "shape", "offset", 0};
    char what[96];
    mp_reader f;
    if (mp_peek(v) != MP_T_MAP) return fail("weight '%.*s' must be a map", (int)len, name);
    borda_fmt(what, sizeof what, "key in weight '%.*s':", (int)len, name);
    if (!borda_check_keys(v, keys, what, err)) return 0;

    const char *dt;
    uint32_t dtlen;
    if (mp_map_find(v, "dtype", &f) != 1 || !mp_read_str(&f, &dt, &dtlen))
        return fail("weight '%.*s' needs a str 'dtype'", (int)len, name);
    t->is_q8 = mp_str_eq(dt, dtlen, "q8_0");
    if (!t->is_q8 && !mp_str_eq(dt, dtlen, "f32"))
        return fail("weight '%.*s' has dtype '%.*s', expected f32 or q8_0", (int)len, name,
                    (int)dtlen, dt);

    uint32_t ndim;
    if (mp_map_find(v, "shape", &f) != 1 || !mp_read_array(&f, &ndim))
        return fail("weight '%.*s' needs an array 'shape'", (int)len, name);
    t->ndim = (int)(ndim < 8 ? ndim : 8);
    t->shape[0] = t->shape[1] = 0;
    for (uint32_t i = 0; i < ndim; i++) {
        int64_t d;
        if (!mp_read_int(&f, &d))
            return fail("weight '%.*s' dims must be integers", (int)len, name);
        if (i < 2) t->shape[i] = d;
    }

    if (mp_map_find(v, "offset", &f) != 1 || !mp_read_int(&f, &t->offset))
        return fail("weight '%.*s' needs an integer 'offset'", (int)len, name);
    return 1;
}

static void format_shape(char *buf, int ndim, const int64_t *shape) {
    if (ndim == 1)
        borda_fmt(buf, 48, "[%lld]", (long long)shape[0]);
    else if (ndim == 2)
        borda_fmt(buf, 48, "[%lld, %lld]", (long long)shape[0], (long long)shape[1]);
    else
        borda_fmt(buf, 48, "a %d-dim shape", ndim);
}

/* Checks t against the slot (dtype, shape, extent inside the weights) and
 * points the slot at the data. */
static int bind(const char *name, uint32_t len, const Slot *slot, const TensorDesc *t) {
    if (t->is_q8 && slot->vec)
        return fail("weight '%.*s' has dtype q8_0, expected f32", (int)len, name);
    int64_t want[2] = {slot->vec ? slot->k : slot->rows, slot->k};
    int want_ndim = slot->vec ? 1 : 2;
    if (t->ndim != want_ndim || t->shape[0] != want[0] ||
        (want_ndim == 2 && t->shape[1] != want[1])) {
        char got[48], exp[48];
        format_shape(got, t->ndim, t->shape);
        format_shape(exp, want_ndim, want);
        return fail("%.*s has shape %s, expected %s", (int)len, name, got, exp);
    }
    int rows = slot->vec ? 1 : slot->rows, k = slot->k;
    if (t->is_q8 && k % QK8_0)
        return fail("%.*s is q8_0, but its rows (%d values) are not a multiple of %d", (int)len,
                    name, k, QK8_0);

    uint64_t n = (uint64_t)rows * (uint64_t)k, nb = n / QK8_0;
    uint64_t bytes = t->is_q8 ? align64(n) + align64(nb * 4) + nb * 2 : n * 4;
    if (t->offset < (int64_t)(uintptr_t)&__heap_base || (uint64_t)t->offset + bytes > weights_hi)
        return fail("%.*s (offset %lld, %llu bytes) is outside the weights [%u, %llu)",
                    (int)len, name, (long long)t->offset, (unsigned long long)bytes,
                    (unsigned)(uintptr_t)&__heap_base, (unsigned long long)weights_hi);
    if (t->offset % 4)
        return fail("%.*s offset %lld is not 4-byte aligned", (int)len, name,
                    (long long)t->offset);
    if ((uint64_t)t->offset < weights_lo) weights_lo = (uintptr_t)t->offset;

    const char *p = (const char *)(uintptr_t)t->offset;
    if (slot->vec) {
        *slot->vec = (const float *)(const void *)p;
        return 1;
    }
    Matrix *m = slot->mat;
    m->is_q8 = t->is_q8;
    m->rows = rows;
    m->k = k;
    if (t->is_q8) {
        m->q8.qs = (const int8_t *)p;
        m->q8.d = (const float *)(const void *)(p + align64(n));
        m->q8.s = (const int16_t *)(const void *)(p + align64(n) + align64(nb * 4));
        m->q8.rows = rows;
        m->q8.k = k;
    } else {
        m->f32 = (const float *)(const void *)p;
    }
    return 1;
}

static int load_weights(const mp_reader *map) {
    mp_reader r = *map;
    uint32_t n;
    if (mp_peek(&r) != MP_T_MAP || !mp_read_map(&r, &n))
        return fail("arg 'weights' must be a map");
    for (uint32_t i = 0; i < n; i++) {
        const char *name;
        uint32_t len;
        Slot slot;
        TensorDesc t;
        if (!mp_read_str(&r, &name, &len)) return fail("weight names must be strings");
        if (!find_slot(name, len, &slot))
            return fail("unknown weight '%.*s' (n_layers is %d)", (int)len, name, c.n_layers);
        if (slot_loaded(&slot)) return fail("duplicate weight '%.*s'", (int)len, name);
        if (!read_desc(name, len, &r, &t) || !bind(name, len, &slot, &t)) return 0;
        if (!mp_skip(&r)) return fail("arg 'weights' is malformed");
    }
    /* everything is required */
    if (!w.token_embd.rows) return fail("missing weight 'token_embd.weight'");
    if (!w.position_embd.rows) return fail("missing weight 'position_embd.weight'");
    if (!w.token_types.rows) return fail("missing weight 'token_types.weight'");
    if (!w.embd_norm) return fail("missing weight 'token_embd_norm.weight'");
    if (!w.embd_norm_b) return fail("missing weight 'token_embd_norm.bias'");
    for (int l = 0; l < c.n_layers; l++)
        for (int j = 0; j < N_LAYER_TENSORS; j++) {
            Slot slot;
            layer_slot(l, j, &slot);
            if (!slot_loaded(&slot))
                return fail("missing weight 'blk.%d.%s'", l, layer_tensors[j].name);
        }
    return 1;
}

/* ---- allocation ---- */

/* One arena block carved into the buffers of list (sizes in bytes, each 64-aligned). */
typedef struct {
    void **ptr;
    uint64_t bytes;
} Buffer;

static uint64_t total_bytes(const Buffer *b, int n) {
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) sum += align64(b[i].bytes);
    return sum;
}

static int alloc_buffers(const Buffer *b, int n) {
    uint64_t total = total_bytes(b, n);
    char *p = total <= UINT32_MAX ? arena_alloc((size_t)total) : 0;
    if (!p) return 0;
    for (int i = 0; i < n; i++) {
        *b[i].ptr = p;
        p += align64(b[i].bytes);
    }
    return 1;
}

static int allocate_state(uint64_t *scratch_bytes) {
    uint64_t T = (uint64_t)c.max_tokens, d = (uint64_t)c.dim * 4;
    uint64_t max_k = (uint64_t)(c.hidden_dim > c.dim ? c.hidden_dim : c.dim);
    Buffer scratch[] = {
        {(void **)&s.x, T * d},   {(void **)&s.xb, T * d},  {(void **)&s.q, T * d},
        {(void **)&s.k, T * d},   {(void **)&s.v, T * d},   {(void **)&s.kt, T * d},
        {(void **)&s.vt, T * d},  {(void **)&s.att, T * d},
        {(void **)&s.hb, T * c.hidden_dim * 4},
        {(void **)&s.xq, T * max_k}, {(void **)&s.xd, T * (max_k / QK8_0 + 1) * 4},
        {(void **)&s.ids, T * 4},
    };
    int n = (int)(sizeof scratch / sizeof scratch[0]);
    if (!alloc_buffers(scratch, n))
        return fail("out of memory: scratch for max_tokens=%d needs %llu bytes; lower "
                    "max_tokens or raise the memory limit", c.max_tokens,
                    (unsigned long long)total_bytes(scratch, n));
    *scratch_bytes = total_bytes(scratch, n);
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

    int64_t end = -1;
    if (!borda_arg_int(rq, "weights_end", &end, err)) return 0;
    if (end < 0) return fail("missing arg 'weights_end'");
    if ((uint64_t)end > memory_bytes())
        return fail("arg 'weights_end' (%lld) is beyond the memory size (%llu)", (long long)end,
                    (unsigned long long)memory_bytes());

    /* From here on everything lives in the arena above the weights. */
    arena_start_above((uintptr_t)end);
    uint64_t layers_bytes = (uint64_t)c.n_layers * sizeof(Layer);
    w = (Weights){0};
    w.layers = arena_alloc((size_t)layers_bytes);
    if (!w.layers) return fail("out of memory for the layer table");
    __builtin_memset(w.layers, 0, (size_t)layers_bytes);
    state_lo = (uintptr_t)w.layers;
    weights_lo = (uintptr_t)end;
    weights_hi = (uintptr_t)end;

    if (mp_map_find(&rq->args, "weights", &v) != 1) return fail("missing arg 'weights'");
    if (!load_weights(&v)) return 0;
    if (!allocate_state(scratch_bytes)) return 0;
    *scratch_bytes += align64(layers_bytes);
    state_hi = arena_mark();
    arena_keep(); /* the host's arena resets never free the model's state */
    initialised = 1;
    return 1;
}

/* ============================== borda_invoke ============================= */

static void write_info(mp_writer *m, const void *ctx) {
    (void)ctx;
    mp_write_map(m, 2);
    mp_write_cstr(m, "ok");
    mp_write_bool(m, 1);
    mp_write_cstr(m, "result");
    mp_write_map(m, 3);
    mp_write_cstr(m, "abi");
    mp_write_int(m, BORDA_ABI_VERSION);
    mp_write_cstr(m, "module");
    mp_write_cstr(m, "borda_bert");
    mp_write_cstr(m, "functions");
    mp_write_array(m, 2);
    mp_write_cstr(m, "info");
    mp_write_cstr(m, "init");
}

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

static int64_t error_response(const char *fn) {
    borda_fmt(msg, sizeof msg, "%s: %s", fn, err);
    return borda_error_response(msg);
}

BORDA_EXPORT("borda_invoke") int64_t borda_invoke(uint32_t req_ptr, uint32_t req_len) {
    static const char *const none[] = {0};
    borda_request rq;
    if (!borda_in_heap(req_ptr, req_len)) return BORDA_ERR_BAD_REQUEST;
    if (!borda_parse_request((const void *)(uintptr_t)req_ptr, req_len, &rq, err))
        return borda_error_response(err);
    if (mp_str_eq(rq.fn, rq.fn_len, "init")) {
        uint64_t scratch_bytes = 0;
        if (!init(&rq, &scratch_bytes)) return error_response("init");
        return borda_respond(write_init, &scratch_bytes);
    }
    if (!mp_str_eq(rq.fn, rq.fn_len, "info")) {
        borda_fmt(err, sizeof err, "unknown fn '%.*s' (fn 'info' lists them)", (int)rq.fn_len,
                  rq.fn);
        return borda_error_response(err);
    }
    if (!borda_check_keys(&rq.args, none, "arg", err) ||
        !borda_check_keys(&rq.tensors, none, "tensor", err))
        return error_response("info");
    return borda_respond(write_info, 0);
}
