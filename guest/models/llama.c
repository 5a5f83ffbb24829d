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
#include "model_common.h"

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
/* Matmul inputs in two digits (about 14 bits, borda.h): a greedy choice
 * between near-equal logits must not flip on 7-bit activation rounding. */
#define ACT_DIGITS 2

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

typedef struct {
    const float *attn_norm, *ffn_norm; /* [dim] */
    const float *bq, *bk, *bv;         /* optional biases (Qwen2); NULL when absent */
    model_matrix wq, wk, wv, wo;       /* [q_dim, dim] [kv_dim, dim] x2 [dim, q_dim] */
    model_matrix w_gate, w_up, w_down; /* [hidden_dim, dim] x2 [dim, hidden_dim] */
} Layer;

typedef struct {
    model_matrix token_embd; /* [vocab, dim] */
    const float *output_norm;
    model_matrix output;     /* [vocab, dim]; token_embd when the embeddings are tied */
    Layer *layers;
} Weights;

typedef struct { /* everything below holds max_batch tokens */
    float *x;        /* residual stream [T][dim] */
    float *xb;       /* a block's normed input, then its output [T][dim] */
    float *q;        /* [T][q_dim] */
    float *k, *v;    /* [T][kv_dim] */
    float *att;      /* attention output [T][q_dim] */
    float *hb, *hb2; /* FFN gate and up [T][hidden_dim] */
    int8_t *xq;      /* quantized matmul input [T][ACT_DIGITS * max k] (quantize_act) */
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

static void embed(const int32_t *tokens, int n_tokens, float *x) {
    const model_matrix *e = &w.token_embd;
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
    model_input h = {s.xb, T, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul(&h, &L->wq, L->bq, s.q);
    model_matmul(&h, &L->wk, L->bk, s.k);
    model_matmul(&h, &L->wv, L->bv, s.v);
    rope(s.q, T, c.n_heads, c.head_dim, pos, s.rope_inv_freq, 0);
    rope(s.k, T, c.n_kv_heads, c.head_dim, pos, s.rope_inv_freq, 0);
    store_kv(l, T, pos);
    if (n_out == 0) return;

    /* causal attention of tokens t0.. over cache positions 0..pos+t, then x += att Wo */
    attention(s.q + (size_t)t0 * q_dim, cache_at(s.key_cache, l, 0, 0),
              cache_at(s.value_cache, l, 0, 0), s.att, n_out, c.n_heads, c.n_kv_heads,
              c.head_dim, c.max_context, pos + t0, pos + T, 1,
              1.0f / borda_sqrtf((float)c.head_dim));
    model_input a = {s.att, n_out, q_dim, s.xq, s.xd, ACT_DIGITS, 0};
    float *x = s.x + (size_t)t0 * c.dim;
    model_matmul_add(&a, &L->wo, NULL, x);

    /* FFN: x += (silu(h Wg) * (h Wu)) Wd with h = rmsnorm(x) */
    rmsnorm(x, L->ffn_norm, s.xb, n_out, c.dim, c.norm_eps);
    model_input f = {s.xb, n_out, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul(&f, &L->w_gate, NULL, s.hb);
    model_matmul(&f, &L->w_up, NULL, s.hb2);
    swiglu(s.hb, s.hb2, s.hb, n_out * c.hidden_dim);
    model_input g = {s.hb, n_out, c.hidden_dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul_add(&g, &L->w_down, NULL, x);
}

/* T <= max_batch tokens at positions pos..; logits of the last n_out of them. */
static void forward_chunk(const int32_t *tokens, int T, int pos, int n_out, float *logits) {
    embed(tokens, T, s.x);
    for (int l = 0; l < c.n_layers; l++)
        forward_layer(l, T, pos, l == c.n_layers - 1 ? n_out : T);
    if (n_out == 0) return;
    rmsnorm(s.x + (size_t)(T - n_out) * c.dim, w.output_norm, s.xb, n_out, c.dim, c.norm_eps);
    model_input h = {s.xb, n_out, c.dim, s.xq, s.xd, ACT_DIGITS, 0};
    model_matmul(&h, &w.output, NULL, logits);
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
    if (!model_in_heap(tokens_ptr, tokens_bytes) || !model_in_heap(logits_ptr, logits_bytes) ||
        model_overlaps(tokens_ptr, tokens_bytes, state_lo, state_hi) ||
        model_overlaps(logits_ptr, logits_bytes, state_lo, state_hi) ||
        model_overlaps(logits_ptr, logits_bytes, weights_lo, weights_hi) ||
        model_overlaps(logits_ptr, logits_bytes, tokens_ptr, tokens_ptr + tokens_bytes))
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

static char err[BORDA_ERR_MAX];
#define fail(...) borda_failf(err, __VA_ARGS__) /* formats into err, returns 0 */

/* ---- config ---- */

static int read_config(const mp_reader *map) {
    static const char *const keys[] = {"vocab_size", "hidden_size", "n_layers", "n_heads",
                                       "n_kv_heads", "head_dim", "intermediate_size",
                                       "rms_norm_eps", "max_context", "max_batch", 0};
    if (mp_peek(map) != MP_T_MAP) return fail("arg 'config' must be a map");
    if (!borda_check_keys(map, keys, "config key", err)) return 0;
    if (!model_config_int(map, "vocab_size", 1, 1 << 22, &c.vocab_size, err) ||
        !model_config_int(map, "hidden_size", 1, 1 << 20, &c.dim, err) ||
        !model_config_int(map, "n_layers", 1, 1024, &c.n_layers, err) ||
        !model_config_int(map, "n_heads", 1, 1024, &c.n_heads, err) ||
        !model_config_int(map, "n_kv_heads", 1, 1024, &c.n_kv_heads, err) ||
        !model_config_int(map, "head_dim", 1, 1024, &c.head_dim, err) ||
        !model_config_int(map, "intermediate_size", 1, 1 << 20, &c.hidden_dim, err) ||
        !model_config_int(map, "max_context", 1, 1 << 22, &c.max_context, err) ||
        !model_config_int(map, "max_batch", 1, 1 << 16, &c.max_batch, err))
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
static const model_layer_tensor layer_tensors[] = {
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

static model_layers layers(void) {
    return (model_layers){layer_tensors, N_LAYER_TENSORS, w.layers, sizeof(Layer), c.n_layers,
                          dim_of};
}

/* 1 and the slot of a known tensor name; 0 for an unknown one */
static int find_slot(const char *name, uint32_t len, model_slot *slot) {
    model_slot matrix = {c.vocab_size, c.dim, 0, 0}, norm = {-1, c.dim, &w.output_norm, 0};
    *slot = matrix;
    if (mp_str_eq(name, len, "token_embd.weight")) return slot->mat = &w.token_embd, 1;
    if (mp_str_eq(name, len, "output.weight")) return slot->mat = &w.output, 1;
    if (mp_str_eq(name, len, "output_norm.weight")) return *slot = norm, 1;
    model_layers m = layers();
    return model_find_layer_slot(&m, name, len, slot);
}

static int load_weights(const mp_reader *map) {
    if (!model_load_weights(map, find_slot, c.n_layers, &weights_lo, weights_hi, err)) return 0;
    /* everything required is there */
    if (!w.token_embd.rows) return fail("missing weight 'token_embd.weight'");
    if (!w.output_norm) return fail("missing weight 'output_norm.weight'");
    if (!w.output.rows) w.output = w.token_embd; /* tied embeddings */
    model_layers m = layers();
    return model_check_layers(&m, err);
}

/* ---- allocation ---- */

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

    model_buffer kv[] = {{(void **)&s.key_cache, cache}, {(void **)&s.value_cache, cache}};
    if (!model_alloc_buffers(kv, 2))
        return fail("out of memory: the KV cache for max_context=%d needs %llu bytes; lower "
                    "max_context or raise the memory limit", c.max_context,
                    (unsigned long long)model_buffers_bytes(kv, 2));
    model_buffer scratch[] = {
        {(void **)&s.x, B * c.dim * 4},         {(void **)&s.xb, B * c.dim * 4},
        {(void **)&s.q, B * q_dim * 4},         {(void **)&s.k, B * kv_dim * 4},
        {(void **)&s.v, B * kv_dim * 4},        {(void **)&s.att, B * q_dim * 4},
        {(void **)&s.hb, B * c.hidden_dim * 4}, {(void **)&s.hb2, B * c.hidden_dim * 4},
        {(void **)&s.xq, B * ACT_DIGITS * max_k}, {(void **)&s.xd, B * (max_k / QK8_0 + 1) * 4},
        {(void **)&s.rope_inv_freq, (uint64_t)c.head_dim / 2 * 4},
    };
    int n = (int)(sizeof scratch / sizeof scratch[0]);
    if (!model_alloc_buffers(scratch, n))
        return fail("out of memory: scratch for max_batch=%d needs %llu bytes; lower max_batch "
                    "or raise the memory limit", c.max_batch,
                    (unsigned long long)model_buffers_bytes(scratch, n));
    __builtin_memcpy(s.rope_inv_freq, inv_freq->data, inv_freq->nbytes);
    res->kv_bytes = model_buffers_bytes(kv, 2);
    res->scratch_bytes = model_buffers_bytes(scratch, n);
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

    int64_t end;
    if (!model_weights_end(rq, &end, err)) return 0;

    borda_tensor inv_freq;
    if (!borda_get_tensor(rq, "rope_inv_freq", BORDA_F32, 4, &inv_freq, err)) return 0;
    if (inv_freq.ndim != 1 || inv_freq.count != (uint32_t)c.head_dim / 2)
        return fail("tensor 'rope_inv_freq' must have shape [%d] (head_dim / 2)", c.head_dim / 2);

    /* From here on everything lives in the arena above the weights. */
    uint64_t layers_bytes = (uint64_t)c.n_layers * sizeof(Layer);
    w = (Weights){0};
    w.layers = model_alloc_layer_table(end, layers_bytes);
    if (!w.layers) return fail("out of memory for the layer table");
    state_lo = (uintptr_t)w.layers;
    weights_lo = weights_hi = (uintptr_t)end;

    if (mp_map_find(&rq->args, "weights", &v) != 1) return fail("missing arg 'weights'");
    if (!load_weights(&v)) return 0;
    if (!allocate_state(&inv_freq, res)) return 0;
    res->scratch_bytes += model_align64(layers_bytes);
    state_hi = arena_mark();
    arena_keep(); /* the host's arena resets never free the model's state */
    n_past = 0;
    initialised = 1;
    return 1;
}

/* ============================== borda_invoke ============================= */

static const char *const functions[] = {"info", "init", "reset", 0};
static const model_info module_info = {"borda_llama", functions};

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

BORDA_EXPORT("borda_invoke") int64_t borda_invoke(uint32_t req_ptr, uint32_t req_len) {
    static const char *const none[] = {0};
    borda_request rq;
    if (!borda_in_heap(req_ptr, req_len)) return BORDA_ERR_BAD_REQUEST;
    if (!borda_parse_request((const void *)(uintptr_t)req_ptr, req_len, &rq, err))
        return borda_error_response(err);
    if (mp_str_eq(rq.fn, rq.fn_len, "init")) {
        InitResult res;
        if (!init(&rq, &res)) return borda_fn_error_response("init", err);
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
        return borda_fn_error_response(fn, err);
    if (info) return borda_respond(model_write_info, &module_info);
    n_past = 0;
    return borda_respond(write_empty, 0);
}
