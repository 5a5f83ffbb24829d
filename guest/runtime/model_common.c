/* Plumbing shared by the model runtimes (include/model_common.h). */
#include "model_common.h"

extern unsigned char __heap_base;

/* ================================ errors ================================= */

int borda_failf(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    borda_vfmt(err, BORDA_ERR_MAX, fmt, ap);
    va_end(ap);
    return 0;
}

int64_t borda_fn_error_response(const char *fn, const char *err) {
    char msg[BORDA_ERR_MAX];
    borda_fmt(msg, sizeof msg, "%s: %s", fn, err);
    return borda_error_response(msg);
}

/* ========================== sizes and pointers =========================== */

uint64_t model_align64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

uint64_t model_memory_bytes(void) { return (uint64_t)__builtin_wasm_memory_size(0) * 65536u; }

int model_weights_end(const borda_request *rq, int64_t *end, char *err) {
    *end = -1;
    if (!borda_arg_int(rq, "weights_end", end, err)) return 0;
    if (*end < 0) return borda_failf(err, "missing arg 'weights_end'");
    if ((uint64_t)*end > model_memory_bytes())
        return borda_failf(err, "arg 'weights_end' (%lld) is beyond the memory size (%llu)",
                           (long long)*end, (unsigned long long)model_memory_bytes());
    return 1;
}

void *model_alloc_layer_table(int64_t end, uint64_t bytes) {
    arena_start_above((uintptr_t)end);
    void *table = arena_alloc((size_t)bytes);
    if (table) __builtin_memset(table, 0, (size_t)bytes);
    return table;
}

int model_in_heap(uint32_t p, uint64_t n) {
    return n <= UINT32_MAX && borda_in_heap(p, (uint32_t)n);
}

int model_overlaps(uint64_t p, uint64_t n, uint64_t lo, uint64_t hi) {
    return p < hi && lo < p + n;
}

/* ============================ the linear layer =========================== */

static void matmul(model_input *in, const model_matrix *m, const float *bias, float *y,
                   int accumulate) {
    if (!m->is_q8) {
        gemm_f32(in->x, m->f32, bias, y, in->n_tokens, m->rows, m->k, accumulate);
        return;
    }
    if (!in->quantized) {
        quantize_act(in->x, in->xq, in->xd, in->n_tokens, in->k, in->act_digits);
        in->quantized = 1;
    }
    gemm_q8_0(&m->q8, in->xq, in->xd, bias, y, in->n_tokens, in->act_digits, accumulate);
}

void model_matmul(model_input *in, const model_matrix *m, const float *bias, float *y) {
    matmul(in, m, bias, y, 0);
}

void model_matmul_add(model_input *in, const model_matrix *m, const float *bias, float *y) {
    matmul(in, m, bias, y, 1);
}

void model_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* ========================= init: config and weights ====================== */

int model_config_int(const mp_reader *map, const char *key, int64_t lo, int64_t hi, int *out,
                     char *err) {
    mp_reader v;
    int64_t x;
    if (mp_map_find(map, key, &v) != 1) return borda_failf(err, "config has no '%s'", key);
    if (!mp_read_int(&v, &x)) return borda_failf(err, "config '%s' must be an integer", key);
    if (x < lo || x > hi)
        return borda_failf(err, "config '%s' is %lld, expected %lld..%lld", key, (long long)x,
                           (long long)lo, (long long)hi);
    *out = (int)x;
    return 1;
}

int model_slot_loaded(const model_slot *slot) {
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

static void layer_slot(const model_layers *m, int layer, int j, model_slot *slot) {
    const model_layer_tensor *t = &m->tensors[j];
    char *field = (char *)m->layers + (size_t)layer * m->layer_bytes + t->field;
    slot->rows = t->rows < 0 ? -1 : m->dim_of(t->rows);
    slot->k = m->dim_of(t->k);
    slot->vec = slot->rows < 0 ? (const float **)(void *)field : 0;
    slot->mat = slot->rows < 0 ? 0 : (model_matrix *)(void *)field;
}

int model_find_layer_slot(const model_layers *m, const char *name, uint32_t len,
                          model_slot *slot) {
    int layer;
    if (len < 6 || !mp_str_eq(name, 4, "blk.")) return 0;
    uint32_t dot = 4;
    while (dot < len && name[dot] != '.') dot++;
    if (dot == len || !parse_uint(name + 4, dot - 4, &layer) || layer >= m->n_layers) return 0;
    for (int j = 0; j < m->n_tensors; j++)
        if (mp_str_eq(name + dot + 1, len - dot - 1, m->tensors[j].name)) {
            layer_slot(m, layer, j, slot);
            return 1;
        }
    return 0;
}

int model_check_layers(const model_layers *m, char *err) {
    for (int l = 0; l < m->n_layers; l++)
        for (int j = 0; j < m->n_tensors; j++) {
            model_slot slot;
            layer_slot(m, l, j, &slot);
            if (m->tensors[j].required && !model_slot_loaded(&slot))
                return borda_failf(err, "missing weight 'blk.%d.%s'", l, m->tensors[j].name);
        }
    return 1;
}

/* A tensor as the request describes it. */
typedef struct {
    int is_q8, ndim;
    int64_t shape[2]; /* the first two dims */
    int64_t offset;
} tensor_desc;

/* {"dtype": "f32"|"q8_0", "shape": [..], "offset": int} */
static int read_desc(const char *name, uint32_t len, const mp_reader *v, tensor_desc *t,
                     char *err) {
    static const char *const keys[] = {"dtype", "shape", "offset", 0};
    mp_reader f;
    if (mp_peek(v) != MP_T_MAP)
        return borda_failf(err, "weight '%.*s' must be a map", (int)len, name);
    if (!borda_check_keys(v, keys, "key", err)) { /* name the weight: formatting it up front
                                                     costs more than parsing the entry */
        char why[BORDA_ERR_MAX];
        __builtin_memcpy(why, err, BORDA_ERR_MAX);
        return borda_failf(err, "weight '%.*s': %s", (int)len, name, why);
    }

    const char *dt;
    uint32_t dtlen;
    if (mp_map_find(v, "dtype", &f) != 1 || !mp_read_str(&f, &dt, &dtlen))
        return borda_failf(err, "weight '%.*s' needs a str 'dtype'", (int)len, name);
    t->is_q8 = mp_str_eq(dt, dtlen, "q8_0");
    if (!t->is_q8 && !mp_str_eq(dt, dtlen, "f32"))
        return borda_failf(err, "weight '%.*s' has dtype '%.*s', expected f32 or q8_0",
                           (int)len, name, (int)dtlen, dt);

    uint32_t ndim;
    if (mp_map_find(v, "shape", &f) != 1 || !mp_read_array(&f, &ndim))
        return borda_failf(err, "weight '%.*s' needs an array 'shape'", (int)len, name);
    t->ndim = (int)(ndim < 8 ? ndim : 8);
    t->shape[0] = t->shape[1] = 0;
    for (uint32_t i = 0; i < ndim; i++) {
        int64_t d;
        if (!mp_read_int(&f, &d))
            return borda_failf(err, "weight '%.*s' dims must be integers", (int)len, name);
        if (i < 2) t->shape[i] = d;
    }

    if (mp_map_find(v, "offset", &f) != 1 || !mp_read_int(&f, &t->offset))
        return borda_failf(err, "weight '%.*s' needs an integer 'offset'", (int)len, name);
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
static int bind(const char *name, uint32_t len, const model_slot *slot, const tensor_desc *t,
                uintptr_t *weights_lo, uintptr_t weights_hi, char *err) {
    if (t->is_q8 && slot->vec)
        return borda_failf(err, "weight '%.*s' has dtype q8_0, expected f32", (int)len, name);
    int64_t want[2] = {slot->vec ? slot->k : slot->rows, slot->k};
    int want_ndim = slot->vec ? 1 : 2;
    if (t->ndim != want_ndim || t->shape[0] != want[0] ||
        (want_ndim == 2 && t->shape[1] != want[1])) {
        char got[48], exp[48];
        format_shape(got, t->ndim, t->shape);
        format_shape(exp, want_ndim, want);
        return borda_failf(err, "%.*s has shape %s, expected %s", (int)len, name, got, exp);
    }
    int rows = slot->vec ? 1 : slot->rows, k = slot->k;
    if (t->is_q8 && k % QK8_0)
        return borda_failf(err, "%.*s is q8_0, but its rows (%d values) are not a multiple "
                           "of %d", (int)len, name, k, QK8_0);

    uint64_t n = (uint64_t)rows * (uint64_t)k, nb = n / QK8_0;
    uint64_t bytes = t->is_q8 ? model_align64(n) + model_align64(nb * 4) + nb * 2 : n * 4;
    if (t->offset < (int64_t)(uintptr_t)&__heap_base || (uint64_t)t->offset + bytes > weights_hi)
        return borda_failf(err, "%.*s (offset %lld, %llu bytes) is outside the weights [%u, "
                           "%llu)", (int)len, name, (long long)t->offset,
                           (unsigned long long)bytes, (unsigned)(uintptr_t)&__heap_base,
                           (unsigned long long)weights_hi);
    if (t->offset % 4)
        return borda_failf(err, "%.*s offset %lld is not 4-byte aligned", (int)len, name,
                           (long long)t->offset);
    if ((uint64_t)t->offset < *weights_lo) *weights_lo = (uintptr_t)t->offset;

    const char *p = (const char *)(uintptr_t)t->offset;
    if (slot->vec) {
        *slot->vec = (const float *)(const void *)p;
        return 1;
    }
    model_matrix *m = slot->mat;
    m->is_q8 = t->is_q8;
    m->rows = rows;
    m->k = k;
    if (t->is_q8) {
        m->q8.qs = (const int8_t *)p;
        m->q8.d = (const float *)(const void *)(p + model_align64(n));
        m->q8.s = (const int16_t *)(const void *)(p + model_align64(n) + model_align64(nb * 4));
        m->q8.rows = rows;
        m->q8.k = k;
    } else {
        m->f32 = (const float *)(const void *)p;
    }
    return 1;
}

int model_load_weights(const mp_reader *map, model_find_slot find, int n_layers,
                       uintptr_t *weights_lo, uintptr_t weights_hi, char *err) {
    mp_reader r = *map;
    uint32_t n;
    if (mp_peek(&r) != MP_T_MAP || !mp_read_map(&r, &n))
        return borda_failf(err, "arg 'weights' must be a map");
    for (uint32_t i = 0; i < n; i++) {
        const char *name;
        uint32_t len;
        model_slot slot;
        tensor_desc t;
        if (!mp_read_str(&r, &name, &len)) return borda_failf(err, "weight names must be strings");
        if (!find(name, len, &slot))
            return borda_failf(err, "unknown weight '%.*s' (n_layers is %d)", (int)len, name,
                               n_layers);
        if (model_slot_loaded(&slot))
            return borda_failf(err, "duplicate weight '%.*s'", (int)len, name);
        if (!read_desc(name, len, &r, &t, err) ||
            !bind(name, len, &slot, &t, weights_lo, weights_hi, err))
            return 0;
        if (!mp_skip(&r)) return borda_failf(err, "arg 'weights' is malformed");
    }
    return 1;
}

/* =============================== allocation ============================== */

uint64_t model_buffers_bytes(const model_buffer *b, int n) {
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) sum += model_align64(b[i].bytes);
    return sum;
}

int model_alloc_buffers(const model_buffer *b, int n) {
    uint64_t total = model_buffers_bytes(b, n);
    char *p = total <= UINT32_MAX ? arena_alloc((size_t)total) : 0;
    if (!p) return 0;
    for (int i = 0; i < n; i++) {
        *b[i].ptr = p;
        p += model_align64(b[i].bytes);
    }
    return 1;
}

/* ============================== borda_invoke ============================= */

void model_write_info(mp_writer *m, const void *ctx) {
    const model_info *info = ctx;
    uint32_t n = 0;
    while (info->functions[n]) n++;
    mp_write_map(m, 2);
    mp_write_cstr(m, "ok");
    mp_write_bool(m, 1);
    mp_write_cstr(m, "result");
    mp_write_map(m, 3);
    mp_write_cstr(m, "abi");
    mp_write_int(m, BORDA_ABI_VERSION);
    mp_write_cstr(m, "module");
    mp_write_cstr(m, info->module);
    mp_write_cstr(m, "functions");
    mp_write_array(m, n);
    for (uint32_t i = 0; i < n; i++) mp_write_cstr(m, info->functions[i]);
}
