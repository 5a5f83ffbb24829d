/* borda_invoke for the kernel module: runs one kernel on tensors from a msgpack
 * request and answers with its output inline (schema in include/msgpack.h).
 *
 *   {"fn": "info"} -> {"ok": true, "result": {"abi": 1, "module": "borda_kernels",
 *                                             "functions": [names]}, "tensors": {}}
 *   any other fn   -> {"ok": true, "result": {}, "tensors": {"y": {dtype, shape, data}}}
 *
 *   fn               tensors (all required)          args        y
 *   quantize_q8_0    x f32, n % 32 == 0 elements      -           u8 [n/32*34]
 *   dequantize_q8_0  x u8, nblocks*34 bytes           n (check)   f32 [nblocks*32]
 *   rmsnorm          x f32 [.., dim], w f32 [dim]     eps=1e-6    f32, shape of x
 *   layernorm        x f32 [.., dim], w, b f32 [dim]  eps=1e-12   f32, shape of x
 *   softmax          x f32 [.., n]  (rows of n)       -           f32, shape of x
 *   silu, gelu       x f32, any shape                 -           f32, shape of x
 * w and b are checked by element count (w may be [dim] or [1, dim]); eps defaults
 * match borda.kernels. Unknown tensor or arg names are errors. */
#include "model_common.h" /* borda_failf, borda_fn_error_response */

typedef struct {
    const void *x, *w, *b;
    void *y;
    int rows, dim, n; /* rows x dim for row kernels; n elements for the flat ones */
    float eps;
} call;

enum { OUT_SAME, OUT_Q8, OUT_DEQ }; /* how y's shape follows from x */

typedef struct {
    const char *name;
    const char *tensors[4]; /* x first; the others must hold dim (x's last dim) elements */
    const char *args[3];
    int x_dtype, x_align;   /* x_align: the kernel reads x as a struct (block_q8_0) */
    int out, rowwise, inplace;
    double eps;             /* default of arg eps */
    void (*run)(const call *c);
} fn_def;

static void run_quantize(const call *c) { quantize_q8_0(c->x, c->y, c->n); }
static void run_dequantize(const call *c) { dequantize_q8_0(c->x, c->y, c->n); }
static void run_rmsnorm(const call *c) { rmsnorm(c->x, c->w, c->y, c->rows, c->dim, c->eps); }
static void run_layernorm(const call *c) {
    layernorm(c->x, c->w, c->b, c->y, c->rows, c->dim, c->eps);
}
static void run_softmax(const call *c) { softmax(c->y, c->rows, c->dim); }
static void run_silu(const call *c) { silu(c->y, c->n); }
static void run_gelu(const call *c) { gelu(c->y, c->n); }

static const fn_def fns[] = {
    {"quantize_q8_0", {"x"}, {0}, BORDA_F32, 4, OUT_Q8, 0, 0, 0, run_quantize},
    {"dequantize_q8_0", {"x"}, {"n"}, BORDA_U8, 2, OUT_DEQ, 0, 0, 0, run_dequantize},
    {"rmsnorm", {"x", "w"}, {"eps"}, BORDA_F32, 4, OUT_SAME, 1, 0, 1e-6, run_rmsnorm},
    {"layernorm", {"x", "w", "b"}, {"eps"}, BORDA_F32, 4, OUT_SAME, 1, 0, 1e-12, run_layernorm},
    {"softmax", {"x"}, {0}, BORDA_F32, 4, OUT_SAME, 1, 1, 0, run_softmax},
    {"silu", {"x"}, {0}, BORDA_F32, 4, OUT_SAME, 0, 1, 0, run_silu},
    {"gelu", {"x"}, {0}, BORDA_F32, 4, OUT_SAME, 0, 1, 0, run_gelu},
};
#define N_FNS ((int)(sizeof fns / sizeof fns[0]))

static char err[BORDA_ERR_MAX];
#define fail(...) borda_failf(err, __VA_ARGS__) /* formats into err, returns 0 */

/* ---- info ---- */

static void write_info(mp_writer *w, const void *ctx) {
    (void)ctx;
    mp_write_map(w, 3);
    mp_write_cstr(w, "ok");
    mp_write_bool(w, 1);
    mp_write_cstr(w, "result");
    mp_write_map(w, 3);
    mp_write_cstr(w, "abi");
    mp_write_int(w, BORDA_ABI_VERSION);
    mp_write_cstr(w, "module");
    mp_write_cstr(w, "borda_kernels");
    mp_write_cstr(w, "functions");
    mp_write_array(w, N_FNS + 1);
    mp_write_cstr(w, "info");
    for (int i = 0; i < N_FNS; i++) mp_write_cstr(w, fns[i].name);
    mp_write_cstr(w, "tensors");
    mp_write_map(w, 0);
}

/* ---- kernels ---- */

typedef struct {
    int dtype, ndim;
    int32_t shape[BORDA_MAX_DIMS];
} out_desc;

/* everything up to and including y's bin header; the payload follows */
static void write_head(mp_writer *w, const void *ctx) {
    const out_desc *o = ctx;
    mp_write_map(w, 3);
    mp_write_cstr(w, "ok");
    mp_write_bool(w, 1);
    mp_write_cstr(w, "result");
    mp_write_map(w, 0);
    mp_write_cstr(w, "tensors");
    mp_write_map(w, 1);
    borda_write_tensor_header(w, "y", o->dtype, o->ndim, o->shape);
}

/* Validates the request against f; fills c (except y) and y's shape. */
static int plan(const fn_def *f, const borda_request *rq, call *c, out_desc *o) {
    borda_tensor t[3];
    if (!borda_check_keys(&rq->args, f->args, "arg", err)) return 0;
    if (!borda_check_keys(&rq->tensors, f->tensors, "tensor", err)) return 0;
    for (int i = 0; f->tensors[i]; i++)
        if (!borda_get_tensor(rq, f->tensors[i], i ? BORDA_F32 : f->x_dtype,
                              (uint32_t)f->x_align, &t[i], err))
            return 0;
    const borda_tensor *x = &t[0];

    double eps = f->eps;
    int64_t n = -1;
    if (!borda_arg_number(rq, "eps", &eps, err) || !borda_arg_int(rq, "n", &n, err)) return 0;
    if (!(eps >= 0 && eps <= 1e30)) return fail("arg 'eps' must be finite and >= 0");

    c->x = x->data;
    c->w = f->tensors[1] ? t[1].data : 0;
    c->b = f->tensors[1] && f->tensors[2] ? t[2].data : 0;
    c->eps = (float)eps;
    c->n = (int)x->count;
    c->dim = c->rows = 0;
    o->dtype = BORDA_F32;
    o->ndim = x->ndim;
    for (int i = 0; i < BORDA_MAX_DIMS; i++) o->shape[i] = x->shape[i];

    if (f->rowwise) {
        if (x->ndim == 0) return fail("tensor 'x' needs at least 1 dim, got a scalar");
        c->dim = x->shape[x->ndim - 1];
        c->rows = c->dim ? (int)(x->count / (uint32_t)c->dim) : 0;
        for (int i = 1; f->tensors[i]; i++)
            if (t[i].count != (uint32_t)c->dim)
                return fail("tensor '%s' has %u elements, expected %d (the last dim of 'x')",
                            f->tensors[i], t[i].count, c->dim);
    }
    if (f->out == OUT_Q8) {
        if (x->count % QK8_0)
            return fail("tensor 'x' has %u elements, not a multiple of %d", x->count, QK8_0);
        o->dtype = BORDA_U8;
        o->ndim = 1;
        o->shape[0] = (int32_t)(x->count / QK8_0 * sizeof(block_q8_0));
    } else if (f->out == OUT_DEQ) {
        uint32_t nb = x->count / sizeof(block_q8_0);
        if (x->count % sizeof(block_q8_0))
            return fail("tensor 'x' has %u bytes, not a multiple of %u (one Q8_0 block)",
                        x->count, (unsigned)sizeof(block_q8_0));
        if (n >= 0 && n != (int64_t)nb * QK8_0)
            return fail("arg 'n' is %lld, but 'x' holds %u blocks = %u values", (long long)n, nb,
                        nb * QK8_0);
        c->n = (int)(nb * QK8_0);
        o->ndim = 1;
        o->shape[0] = c->n;
    }
    return 1;
}

static int64_t run(const fn_def *f, const borda_request *rq) {
    call c;
    out_desc o;
    if (!plan(f, rq, &c, &o)) return borda_fn_error_response(f->name, err);
    uint64_t nbytes = borda_dtype_size(o.dtype);
    for (int i = 0; i < o.ndim; i++) nbytes *= (uint32_t)o.shape[i];

    /* Place the header so that y's payload starts 64-byte aligned: the kernel then
     * writes its output straight into the response. */
    mp_writer w;
    mp_writer_init(&w, 0, 0);
    write_head(&w, &o);
    uint32_t head = w.len;
    uint64_t total = (uint64_t)head + 63 + nbytes;
    uint8_t *buf = total <= UINT32_MAX ? arena_alloc((size_t)total) : 0;
    if (!buf) {
        fail("out of memory for a %llu-byte response", (unsigned long long)total);
        return borda_fn_error_response(f->name, err);
    }
    uint8_t *start = (uint8_t *)((((uintptr_t)buf + head + 63) & ~(uintptr_t)63) - head);
    mp_writer_init(&w, start, head);
    write_head(&w, &o);
    if (w.overflow || w.len != head) return BORDA_ERR_INTERNAL;
    c.y = start + head;
    if (nbytes) {
        if (f->inplace) __builtin_memmove(c.y, c.x, (size_t)nbytes);
        f->run(&c);
    }
    return borda_pack(start, (uint32_t)(head + nbytes));
}

BORDA_EXPORT("borda_invoke") int64_t borda_invoke(uint32_t req_ptr, uint32_t req_len) {
    borda_request rq;
    if (!borda_in_heap(req_ptr, req_len)) return BORDA_ERR_BAD_REQUEST;
    if (!borda_parse_request((const void *)(uintptr_t)req_ptr, req_len, &rq, err))
        return borda_error_response(err);
    if (mp_str_eq(rq.fn, rq.fn_len, "info")) {
        static const char *const none[] = {0};
        if (!borda_check_keys(&rq.args, none, "arg", err) ||
            !borda_check_keys(&rq.tensors, none, "tensor", err))
            return borda_fn_error_response("info", err);
        return borda_respond(write_info, 0);
    }
    for (int i = 0; i < N_FNS; i++)
        if (mp_str_eq(rq.fn, rq.fn_len, fns[i].name)) return run(&fns[i], &rq);
    borda_fmt(err, sizeof err, "unknown fn '%.*s' (fn 'info' lists them)", (int)rq.fn_len, rq.fn);
    return borda_error_response(err);
}
