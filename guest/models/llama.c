/* Llama-family decoder (Llama 2/3, Qwen2, SmolLM) on Borda's kernels.
 *
 * One instance serves one sequence. The host places the weights in linear memory,
 * describes them to "init" (borda_invoke), then calls borda_forward for each
 * chunk of tokens: the prompt at once (prefill), then one token per call (decode).
 *
 *   borda_invoke {"fn": "info"}  -> {"abi": 1, "module": "borda_llama", "functions": [..]}
 *   borda_invoke {"fn": "init", "args": {"config": {..}, "weights": {name: {"dtype",
 *                 "shape", "offset"}}, "weights_end": int},
 *                 "tensors": {"rope_inv_freq": f32 [head_dim/2]}}
 *                -> {"kv_cache_bytes": int, "scratch_bytes": int}
 *                   validates every tensor, then allocates the KV cache and all scratch
 *                   from the arena, above weights_end, once, and keeps them (arena_keep).
 *                   Only one successful init per instance.
 *   borda_invoke {"fn": "reset"} -> {} ; forgets the sequence (next pos must be 0)
 *   borda_forward(tokens, n_tokens, pos, logits, all_logits) -> 0 or a code below
 *
 * Weights (GGUF names) are "f32" (row-major) or "q8_0" (the planar arrays of
 * borda.h at offset: qs int8 [rows*k], then d f32 [rows*k/32] at
 * offset + align64(rows*k), then s int16 [rows*k/32] at d + align64(rows*k/32*4)).
 * Q and K rows are in Hugging Face order: RoPE rotates halves (not pairs). */
#include "borda.h"
#include "msgpack.h"

extern unsigned char __heap_base;

/* ---- borda_forward return codes ----
 *    0  ok: logits written
 *   -1  FWD_NOT_INITIALISED  init has not succeeded
 *   -3  FWD_BAD_ARGUMENT     n_tokens < 1, all_logits not 0/1, pos < 0, or pos beyond the
 *                            positions already in the KV cache (pos > n_past)
 *   -4  FWD_CONTEXT_FULL     pos + n_tokens > max_context
 *   -5  FWD_BAD_TOKEN        a token id outside [0, vocab_size)
 *   -6  FWD_BAD_POINTER      the tokens or logits range is outside [__heap_base, memory
 *                            size) or overlaps what init allocated (KV cache, scratch),
 *                            or logits overlap the weights or the tokens
 * (-2 is unused.) Arguments are all checked before any work: a failed call changes
 * nothing. */
#define FWD_OK 0
#define FWD_NOT_INITIALISED (-1)
#define FWD_BAD_ARGUMENT (-3)
#define FWD_CONTEXT_FULL (-4)
#define FWD_BAD_TOKEN (-5)
#define FWD_BAD_POINTER (-6)

/* ============================== model state ============================== */

typedef struct {
    int vocab_size;
    int dim;        /* hidden_size */
    int hidden_dim; /* intermediate_size (FFN) */
    int n_layers, n_heads, n_kv_heads, head_dim;
    int max_context, max_batch;
    float norm_eps;
} Config;

typedef struct { /* a weight matrix [rows][k]: f32 or q8_0 */
    int is_q8;
    int rows, k; /* 0 rows: not loaded */
    const float *f32;
    q8_matrix q8;
} Matrix;

typedef struct {
    const float *attn_norm, *ffn_norm; /* [dim] */
    const float *bq, *bk, *bv;         /* optional biases (Qwen2); NULL when absent */
    Matrix wq, wk, wv, wo;             /* [q_dim, dim] [kv_dim, dim] x2 [dim, q_dim] */
    Matrix w_gate, w_up, w_down;       /* [hidden_dim, dim] x2 [dim, hidden_dim] */
} Layer;

typedef struct {
    Matrix token_embd; /* [vocab, dim] */
    const float *output_norm;
    Matrix output;     /* [vocab, dim]; token_embd when the embeddings are tied */
    Layer *layers;
} Weights;

typedef struct { /* everything below holds max_batch tokens */
    float *x;        /* residual stream [T][dim] */
    float *xb;       /* a block's normed input, then its output [T][dim] */
    float *q;        /* [T][q_dim] */
    float *k, *v;    /* [T][kv_dim] */
    float *att;      /* attention output [T][q_dim] */
    float *hb, *hb2; /* FFN gate and up [T][hidden_dim] */
    int8_t *xq;      /* quantized matmul input [T][max k], offset by 64 (quantize_act) */
    float *xd;       /* its block scales [T][max k / 32] */
    float *key_cache, *value_cache; /* [n_layers][n_kv_heads][max_context][head_dim] */
    float *rope_inv_freq;           /* [head_dim / 2] */
} RunState;

static Config c;
static Weights w;
static RunState s;
static int initialised;
static int n_past;                          /* positions of the sequence in the KV cache */
static uintptr_t weights_lo, weights_hi;    /* the tensors' extent */
static uintptr_t state_lo, state_hi;        /* what init allocated: layers, KV, scratch */

/* ============================== forward pass ============================= */

/* The input of one or more matmuls: n_tokens x k floats. For q8_0 matrices it
 * is quantized on first use into s.xq / s.xd and then shared (q, k and v, or
 * gate and up, read the same input). s.xq holds one input at a time: be done
 * with an Input before the next one is used. */
typedef struct {
    const float *x;
    int n_tokens, k;
    int quantized;
} Input;

/* y[t][rows] = in[t] . W[rows] (+ bias) */
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
    if (bias)
        for (int t = 0; t < in->n_tokens; t++)
            for (int r = 0; r < m->rows; r++) y[(size_t)t * m->rows + r] += bias[r];
}

static void add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

static void embed(const int32_t *tokens, int n_tokens, float *x) {
    const Matrix *e = &w.token_embd;
    if (e->is_q8) {
        embed_q8_0(e->q8.qs, e->q8.d, tokens, x, n_tokens, c.dim);
        return;
    }
    for (int t = 0; t < n_tokens; t++)
        __builtin_memcpy(x + (size_t)t * c.dim, e->f32 + (size_t)tokens[t] * c.dim,
                         (size_t)c.dim * sizeof(float));
}

static float *cache_at(float *cache, int layer, int kv_head, int pos) {
    return cache + (((size_t)layer * c.n_kv_heads + kv_head) * c.max_context + pos) * c.head_dim;
}

/* k, v [T][kv_head][head_dim] -> the cache of layer l at positions pos.. */
static void store_kv(int l, int n_tokens, int pos) {
    size_t row = (size_t)c.head_dim * sizeof(float);
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < c.n_kv_heads; h++) {
            size_t o = ((size_t)t * c.n_kv_heads + h) * c.head_dim;
            __builtin_memcpy(cache_at(s.key_cache, l, h, pos + t), s.k + o, row);
            __builtin_memcpy(cache_at(s.value_cache, l, h, pos + t), s.v + o, row);
        }
}

/* One transformer block over the T tokens in s.x at positions pos..pos+T-1.
 * Every token's K and V go to the cache; only the last n_out tokens continue
 * past attention (the others' outputs are needed by nothing after the last
 * layer). */
static void forward_layer(int l, int T, int pos, int n_out) {
    const Layer *L = &w.layers[l];
    int q_dim = c.n_heads * c.head_dim, t0 = T - n_out;

    /* attention: q, k, v of the normed input; RoPE; append k, v to the cache */
    rmsnorm(s.x, L->attn_norm, s.xb, T, c.dim, c.norm_eps);
    Input h = {s.xb, T, c.dim, 0};
    matmul(&h, &L->wq, L->bq, s.q);
    matmul(&h, &L->wk, L->bk, s.k);
    matmul(&h, &L->wv, L->bv, s.v);
    rope(s.q, T, c.n_heads, c.head_dim, pos, s.rope_inv_freq, 0);
    rope(s.k, T, c.n_kv_heads, c.head_dim, pos, s.rope_inv_freq, 0);
    store_kv(l, T, pos);
    if (n_out == 0) return;

    /* causal attention of tokens t0.. over cache positions 0..pos+t, then x += att Wo */
    attention(s.q + (size_t)t0 * q_dim, cache_at(s.key_cache, l, 0, 0),
              cache_at(s.value_cache, l, 0, 0), s.att, n_out, c.n_heads, c.n_kv_heads,
              c.head_dim, c.max_context, pos + t0, pos + T, 1,
              1.0f / borda_sqrtf((float)c.head_dim));
    Input a = {s.att, n_out, q_dim, 0};
    matmul(&a, &L->wo, NULL, s.xb);
    float *x = s.x + (size_t)t0 * c.dim;
    add(x, s.xb, n_out * c.dim);

    /* FFN: x += (silu(h Wg) * (h Wu)) Wd with h = rmsnorm(x) */
    rmsnorm(x, L->ffn_norm, s.xb, n_out, c.dim, c.norm_eps);
    Input f = {s.xb, n_out, c.dim, 0};
    matmul(&f, &L->w_gate, NULL, s.hb);
    matmul(&f, &L->w_up, NULL, s.hb2);
    swiglu(s.hb, s.hb2, s.hb, n_out * c.hidden_dim);
    Input g = {s.hb, n_out, c.hidden_dim, 0};
    matmul(&g, &L->w_down, NULL, s.xb);
    add(x, s.xb, n_out * c.dim);
}

/* T <= max_batch tokens at positions pos..; logits of the last n_out of them. */
static void forward_chunk(const int32_t *tokens, int T, int pos, int n_out, float *logits) {
    embed(tokens, T, s.x);
    for (int l = 0; l < c.n_layers; l++)
        forward_layer(l, T, pos, l == c.n_layers - 1 ? n_out : T);
    if (n_out == 0) return;
    rmsnorm(s.x + (size_t)(T - n_out) * c.dim, w.output_norm, s.xb, n_out, c.dim, c.norm_eps);
    Input h = {s.xb, n_out, c.dim, 0};
    matmul(&h, &w.output, NULL, logits);
}

/* [p, p + n) lies in the heap (the range host buffers come from) */
static int in_heap(uint32_t p, uint64_t n) {
    return n <= UINT32_MAX && borda_in_heap(p, (uint32_t)n);
}

static int overlaps(uint64_t p, uint64_t n, uint64_t lo, uint64_t hi) {
    return p < hi && lo < p + n;
}

/* Runs tokens[0..n_tokens) at positions pos.. and writes float32 logits
 * [vocab] (last token) or [n_tokens][vocab] (all_logits) to logits_ptr. */
BORDA_EXPORT("borda_forward")
int32_t borda_forward(uint32_t tokens_ptr, int32_t n_tokens, int32_t pos, uint32_t logits_ptr,
                      int32_t all_logits) {
    if (!initialised) return FWD_NOT_INITIALISED;
    if (n_tokens < 1 || (all_logits != 0 && all_logits != 1) || pos < 0 || pos > n_past)
        return FWD_BAD_ARGUMENT;
    if ((int64_t)pos + n_tokens > c.max_context) return FWD_CONTEXT_FULL;

    uint64_t tokens_bytes = (uint64_t)n_tokens * sizeof(int32_t);
    uint64_t logits_bytes = (uint64_t)(all_logits ? n_tokens : 1) * c.vocab_size * sizeof(float);
    if (!in_heap(tokens_ptr, tokens_bytes) || !in_heap(logits_ptr, logits_bytes) ||
        overlaps(tokens_ptr, tokens_bytes, state_lo, state_hi) ||
        overlaps(logits_ptr, logits_bytes, state_lo, state_hi) ||
        overlaps(logits_ptr, logits_bytes, weights_lo, weights_hi) ||
        overlaps(logits_ptr, logits_bytes, tokens_ptr, tokens_ptr + tokens_bytes))
        return FWD_BAD_POINTER;
    const int32_t *tokens = (const int32_t *)(uintptr_t)tokens_ptr;
    float *logits = (float *)(uintptr_t)logits_ptr;
    for (int t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= c.vocab_size) return FWD_BAD_TOKEN;

    for (int t0 = 0; t0 < n_tokens; t0 += c.max_batch) {
        int T = n_tokens - t0 < c.max_batch ? n_tokens - t0 : c.max_batch;
        int last = t0 + T == n_tokens;
        int n_out = all_logits ? T : last ? 1 : 0;
        float *out = all_logits ? logits + (size_t)t0 * c.vocab_size : logits;
        forward_chunk(tokens + t0, T, pos + t0, n_out, out);
    }
    n_past = pos + n_tokens;
    return FWD_OK;
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
                                       "n_kv_heads", "head_dim", "intermediate_size",
                                       "rms_norm_eps", "max_context", "max_batch", 0};
    if (mp_peek(map) != MP_T_MAP) return fail("arg 'config' must be a map");
    if (!borda_check_keys(map, keys, "config key", err)) return 0;
    if (!read_int(map, "vocab_size", 1, 1 << 22, &c.vocab_size) ||
        !read_int(map, "hidden_size", 1, 1 << 20, &c.dim) ||
        !read_int(map, "n_layers", 1, 1024, &c.n_layers) ||
        !read_int(map, "n_heads", 1, 1024, &c.n_heads) ||
        !read_int(map, "n_kv_heads", 1, 1024, &c.n_kv_heads) ||
        !read_int(map, "head_dim", 1, 1024, &c.head_dim) ||
        !read_int(map, "intermediate_size", 1, 1 << 20, &c.hidden_dim) ||
        !read_int(map, "max_context", 1, 1 << 22, &c.max_context) ||
        !read_int(map, "max_batch", 1, 1 << 16, &c.max_batch))
        return 0;
    mp_reader v;
    double eps;
    if (mp_map_find(map, "rms_norm_eps", &v) != 1) return fail("config has no 'rms_norm_eps'");
    if (!mp_read_number(&v, &eps) || !(eps >= 0 && eps <= 1))
        return fail("config 'rms_norm_eps' must be a number in [0, 1]");
    c.norm_eps = (float)eps;
    if (c.head_dim % 4)
        return fail("config 'head_dim' is %d, expected a multiple of 4 (RoPE halves and the "
                    "attention kernel)", c.head_dim);
    if (c.n_heads % c.n_kv_heads)
        return fail("config 'n_heads' (%d) is not a multiple of 'n_kv_heads' (%d)", c.n_heads,
                    c.n_kv_heads);
    if (c.n_heads * c.head_dim > (1 << 20))
        return fail("config n_heads x head_dim = %d is too large", c.n_heads * c.head_dim);
    return 1;
}

/* ---- weights ---- */

enum { SHAPE_DIM, SHAPE_Q, SHAPE_KV, SHAPE_FF }; /* expected dims, from the config */

static int dim_of(int which) {
    switch (which) {
    case SHAPE_DIM: return c.dim;
    case SHAPE_Q: return c.n_heads * c.head_dim;
    case SHAPE_KV: return c.n_kv_heads * c.head_dim;
    default: return c.hidden_dim;
    }
}

/* Per-layer tensors "blk.{i}.<name>": rows -1 means a vector [k] (f32). */
static const struct {
    const char *name;
    int rows, k, required;
    size_t field; /* offset in Layer of a const float * (vector) or a Matrix */
} layer_tensors[] = {
    {"attn_norm.weight", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, attn_norm)},
    {"attn_q.weight", SHAPE_Q, SHAPE_DIM, 1, __builtin_offsetof(Layer, wq)},
    {"attn_k.weight", SHAPE_KV, SHAPE_DIM, 1, __builtin_offsetof(Layer, wk)},
    {"attn_v.weight", SHAPE_KV, SHAPE_DIM, 1, __builtin_offsetof(Layer, wv)},
    {"attn_output.weight", SHAPE_DIM, SHAPE_Q, 1, __builtin_offsetof(Layer, wo)},
    {"attn_q.bias", -1, SHAPE_Q, 0, __builtin_offsetof(Layer, bq)},
    {"attn_k.bias", -1, SHAPE_KV, 0, __builtin_offsetof(Layer, bk)},
    {"attn_v.bias", -1, SHAPE_KV, 0, __builtin_offsetof(Layer, bv)},
    {"ffn_norm.weight", -1, SHAPE_DIM, 1, __builtin_offsetof(Layer, ffn_norm)},
    {"ffn_gate.weight", SHAPE_FF, SHAPE_DIM, 1, __builtin_offsetof(Layer, w_gate)},
    {"ffn_up.weight", SHAPE_FF, SHAPE_DIM, 1, __builtin_offsetof(Layer, w_up)},
    {"ffn_down.weight", SHAPE_DIM, SHAPE_FF, 1, __builtin_offsetof(Layer, w_down)},
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
    Slot matrix = {c.vocab_size, c.dim, 0, 0}, norm = {-1, c.dim, &w.output_norm, 0};
    *slot = matrix;
    if (mp_str_eq(name, len, "token_embd.weight")) return slot->mat = &w.token_embd, 1;
    if (mp_str_eq(name, len, "output.weight")) return slot->mat = &w.output, 1;
    if (mp_str_eq(name, len, "output_norm.weight")) return *slot = norm, 1;
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
    /* everything required is there */
    if (!w.token_embd.rows) return fail("missing weight 'token_embd.weight'");
    if (!w.output_norm) return fail("missing weight 'output_norm.weight'");
    if (!w.output.rows) w.output = w.token_embd; /* tied embeddings */
    for (int l = 0; l < c.n_layers; l++)
        for (int j = 0; j < N_LAYER_TENSORS; j++) {
            Slot slot;
            layer_slot(l, j, &slot);
            if (layer_tensors[j].required && !slot_loaded(&slot))
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

typedef struct {
    uint64_t kv_bytes, scratch_bytes;
} InitResult;

static int allocate_state(const borda_tensor *inv_freq, InitResult *res) {
    uint64_t B = (uint64_t)c.max_batch, q_dim = (uint64_t)c.n_heads * c.head_dim;
    uint64_t kv_dim = (uint64_t)c.n_kv_heads * c.head_dim;
    uint64_t max_k = (uint64_t)c.dim;
    if (q_dim > max_k) max_k = q_dim;
    if ((uint64_t)c.hidden_dim > max_k) max_k = (uint64_t)c.hidden_dim;
    uint64_t cache = (uint64_t)c.n_layers * kv_dim * (uint64_t)c.max_context * sizeof(float);

    Buffer kv[] = {{(void **)&s.key_cache, cache}, {(void **)&s.value_cache, cache}};
    if (!alloc_buffers(kv, 2))
        return fail("out of memory: the KV cache for max_context=%d needs %llu bytes; lower "
                    "max_context or raise the memory limit", c.max_context,
                    (unsigned long long)total_bytes(kv, 2));
    Buffer scratch[] = {
        {(void **)&s.x, B * c.dim * 4},         {(void **)&s.xb, B * c.dim * 4},
        {(void **)&s.q, B * q_dim * 4},         {(void **)&s.k, B * kv_dim * 4},
        {(void **)&s.v, B * kv_dim * 4},        {(void **)&s.att, B * q_dim * 4},
        {(void **)&s.hb, B * c.hidden_dim * 4}, {(void **)&s.hb2, B * c.hidden_dim * 4},
        {(void **)&s.xq, B * max_k},            {(void **)&s.xd, B * (max_k / QK8_0 + 1) * 4},
        {(void **)&s.rope_inv_freq, (uint64_t)c.head_dim / 2 * 4},
    };
    int n = (int)(sizeof scratch / sizeof scratch[0]);
    if (!alloc_buffers(scratch, n))
        return fail("out of memory: scratch for max_batch=%d needs %llu bytes; lower max_batch "
                    "or raise the memory limit", c.max_batch,
                    (unsigned long long)total_bytes(scratch, n));
    __builtin_memcpy(s.rope_inv_freq, inv_freq->data, inv_freq->nbytes);
    res->kv_bytes = total_bytes(kv, 2);
    res->scratch_bytes = total_bytes(scratch, n);
    return 1;
}

/* ---- the init request ---- */

static int init(const borda_request *rq, InitResult *res) {
    static const char *const arg_keys[] = {"config", "weights", "weights_end", 0};
    static const char *const tensor_keys[] = {"rope_inv_freq", 0};
    if (initialised) return fail("already initialised (init may be called once per instance)");
    if (!borda_check_keys(&rq->args, arg_keys, "arg", err) ||
        !borda_check_keys(&rq->tensors, tensor_keys, "tensor", err))
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

    borda_tensor inv_freq;
    if (!borda_get_tensor(rq, "rope_inv_freq", BORDA_F32, 4, &inv_freq, err)) return 0;
    if (inv_freq.ndim != 1 || inv_freq.count != (uint32_t)c.head_dim / 2)
        return fail("tensor 'rope_inv_freq' must have shape [%d] (head_dim / 2)", c.head_dim / 2);

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
    if (!allocate_state(&inv_freq, res)) return 0;
    res->scratch_bytes += align64(layers_bytes);
    state_hi = arena_mark();
    arena_keep(); /* the host's arena resets never free the model's state */
    n_past = 0;
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
    mp_write_cstr(m, "borda_llama");
    mp_write_cstr(m, "functions");
    mp_write_array(m, 3);
    mp_write_cstr(m, "info");
    mp_write_cstr(m, "init");
    mp_write_cstr(m, "reset");
}

static void write_init(mp_writer *m, const void *ctx) {
    const InitResult *r = ctx;
    mp_write_map(m, 2);
    mp_write_cstr(m, "ok");
    mp_write_bool(m, 1);
    mp_write_cstr(m, "result");
    mp_write_map(m, 2);
    mp_write_cstr(m, "kv_cache_bytes");
    mp_write_uint(m, r->kv_bytes);
    mp_write_cstr(m, "scratch_bytes");
    mp_write_uint(m, r->scratch_bytes);
}

static void write_empty(mp_writer *m, const void *ctx) {
    (void)ctx;
    mp_write_map(m, 2);
    mp_write_cstr(m, "ok");
    mp_write_bool(m, 1);
    mp_write_cstr(m, "result");
    mp_write_map(m, 0);
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
        InitResult res;
        if (!init(&rq, &res)) return error_response("init");
        return borda_respond(write_init, &res);
    }
    int info = mp_str_eq(rq.fn, rq.fn_len, "info"), reset = mp_str_eq(rq.fn, rq.fn_len, "reset");
    if (!info && !reset) {
        borda_fmt(err, sizeof err, "unknown fn '%.*s' (fn 'info' lists them)", (int)rq.fn_len,
                  rq.fn);
        return borda_error_response(err);
    }
    const char *fn = info ? "info" : "reset";
    if (!borda_check_keys(&rq.args, none, "arg", err) ||
        !borda_check_keys(&rq.tensors, none, "tensor", err))
        return error_response(fn);
    if (info) return borda_respond(write_info, 0);
    n_past = 0;
    return borda_respond(write_empty, 0);
}
