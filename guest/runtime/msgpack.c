/* MessagePack reader/writer and the borda_invoke request/response helpers.
 * See include/msgpack.h for the wire schema and the error codes. */
#include "msgpack.h"

#include "borda.h"

extern unsigned char __heap_base;

/* ================================ reader ================================ */

/* One decoded header: for str/bin/ext, plen payload bytes follow the hlen header bytes. */
typedef struct {
    mp_type type;
    uint32_t hlen, plen;
    int neg;    /* MP_T_INT: the value is negative and u holds its int64 bits */
    uint64_t u; /* int value, bool, or array/map item count */
    double d;   /* MP_T_FLOAT */
} mp_hdr;

static uint64_t be(const uint8_t *p, uint32_t n) {
    uint64_t v = 0;
    for (uint32_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static int64_t sign_extend(uint64_t v, uint32_t nbytes) {
    uint32_t shift = 64 - 8 * nbytes;
    return (int64_t)(v << shift) >> shift;
}

/* Decodes the header at p; checks that header and payload fit before end. */
static int decode(const uint8_t *p, const uint8_t *end, mp_hdr *h) {
    size_t avail = (size_t)(end - p);
    if (avail == 0) return MP_E_TRUNCATED;
    uint8_t b = p[0];
    uint32_t field = 0; /* bytes of length / value following the tag */
    h->hlen = 1;
    h->plen = 0;
    h->neg = 0;
    h->u = 0;
    h->d = 0;
    if (b <= 0x7f) {
        h->type = MP_T_INT;
        h->u = b;
        return MP_OK;
    }
    if (b >= 0xe0) {
        h->type = MP_T_INT;
        h->neg = 1;
        h->u = (uint64_t)(int64_t)(int8_t)b;
        return MP_OK;
    }
    if (b <= 0x8f || (b >= 0x90 && b <= 0x9f)) {
        h->type = b <= 0x8f ? MP_T_MAP : MP_T_ARRAY;
        h->u = b & 0x0f;
        return MP_OK;
    }
    if (b <= 0xbf) {
        h->type = MP_T_STR;
        h->plen = b & 0x1f;
    } else if (b == 0xc0) {
        h->type = MP_T_NIL;
    } else if (b == 0xc1) {
        return MP_E_INVALID;
    } else if (b <= 0xc3) {
        h->type = MP_T_BOOL;
        h->u = b & 1;
    } else if (b <= 0xc6) { /* bin 8/16/32 */
        h->type = MP_T_BIN;
        field = 1u << (b - 0xc4);
    } else if (b <= 0xc9) { /* ext 8/16/32: length, then a type byte */
        h->type = MP_T_EXT;
        field = 1u << (b - 0xc7);
    } else if (b <= 0xcb) { /* float 32/64 */
        h->type = MP_T_FLOAT;
        field = b == 0xca ? 4 : 8;
    } else if (b <= 0xd3) { /* uint / int 8..64 */
        h->type = MP_T_INT;
        field = 1u << ((b - 0xcc) & 3);
    } else if (b <= 0xd8) { /* fixext 1..16: a type byte, then the data */
        h->type = MP_T_EXT;
        h->hlen = 2;
        h->plen = 1u << (b - 0xd4);
    } else if (b <= 0xdb) { /* str 8/16/32 */
        h->type = MP_T_STR;
        field = 1u << (b - 0xd9);
    } else { /* array 16/32, map 16/32 */
        h->type = b <= 0xdd ? MP_T_ARRAY : MP_T_MAP;
        field = b & 1 ? 4 : 2;
    }
    if (field) {
        if (avail < 1 + (size_t)field) return MP_E_TRUNCATED;
        uint64_t v = be(p + 1, field);
        h->hlen = 1 + field;
        switch (h->type) {
        case MP_T_BIN:
        case MP_T_STR: h->plen = (uint32_t)v; break;
        case MP_T_EXT:
            h->plen = (uint32_t)v;
            h->hlen++; /* the ext type byte */
            break;
        case MP_T_FLOAT:
            if (field == 4) {
                union { uint32_t u; float f; } c = {(uint32_t)v};
                h->d = c.f;
            } else {
                union { uint64_t u; double f; } c = {v};
                h->d = c.f;
            }
            break;
        case MP_T_INT:
            if (b >= 0xd0) {
                int64_t s = sign_extend(v, field);
                h->neg = s < 0;
                v = (uint64_t)s;
            }
            h->u = v;
            break;
        default: h->u = v; break; /* array / map count */
        }
    }
    if (avail < h->hlen || avail - h->hlen < h->plen) return MP_E_TRUNCATED;
    return MP_OK;
}

void mp_reader_init(mp_reader *r, const void *buf, uint32_t len) {
    r->start = r->p = (const uint8_t *)buf;
    r->end = r->p + len;
    r->err = MP_OK;
    r->err_at = 0;
}

uint32_t mp_offset(const mp_reader *r) { return (uint32_t)(r->p - r->start); }

static int fail(mp_reader *r, int err, const uint8_t *at) {
    r->err = err;
    r->err_at = (uint32_t)(at - r->start);
    return 0;
}

const char *mp_strerror(int err) {
    switch (err) {
    case MP_OK: return "ok";
    case MP_E_TRUNCATED: return "truncated";
    case MP_E_INVALID: return "invalid byte";
    case MP_E_DEPTH: return "nested too deeply";
    case MP_E_TYPE: return "unexpected type";
    case MP_E_RANGE: return "integer out of range";
    default: return "unknown error";
    }
}

mp_type mp_peek(const mp_reader *r) {
    mp_hdr h;
    if (r->err || decode(r->p, r->end, &h) != MP_OK) return MP_T_INVALID;
    return h.type;
}

/* Decodes the next header and checks its type; does not consume. */
static int expect(mp_reader *r, mp_type type, mp_hdr *h) {
    if (r->err) return 0;
    int e = decode(r->p, r->end, h);
    if (e != MP_OK) return fail(r, e, r->p);
    if (h->type != type) return fail(r, MP_E_TYPE, r->p);
    return 1;
}

static void consume(mp_reader *r, const mp_hdr *h) { r->p += h->hlen + h->plen; }

int mp_read_nil(mp_reader *r) {
    mp_hdr h;
    if (!expect(r, MP_T_NIL, &h)) return 0;
    consume(r, &h);
    return 1;
}

int mp_read_bool(mp_reader *r, int *v) {
    mp_hdr h;
    if (!expect(r, MP_T_BOOL, &h)) return 0;
    *v = (int)h.u;
    consume(r, &h);
    return 1;
}

int mp_read_int(mp_reader *r, int64_t *v) {
    mp_hdr h;
    if (!expect(r, MP_T_INT, &h)) return 0;
    if (!h.neg && h.u > (uint64_t)INT64_MAX) return fail(r, MP_E_RANGE, r->p);
    *v = (int64_t)h.u;
    consume(r, &h);
    return 1;
}

int mp_read_number(mp_reader *r, double *v) {
    mp_hdr h;
    if (r->err) return 0;
    int e = decode(r->p, r->end, &h);
    if (e != MP_OK) return fail(r, e, r->p);
    if (h.type == MP_T_FLOAT) *v = h.d;
    else if (h.type == MP_T_INT) *v = h.neg ? (double)(int64_t)h.u : (double)h.u;
    else return fail(r, MP_E_TYPE, r->p);
    consume(r, &h);
    return 1;
}

int mp_read_str(mp_reader *r, const char **s, uint32_t *len) {
    mp_hdr h;
    if (!expect(r, MP_T_STR, &h)) return 0;
    *s = (const char *)r->p + h.hlen;
    *len = h.plen;
    consume(r, &h);
    return 1;
}

int mp_read_bin(mp_reader *r, const uint8_t **p, uint32_t *len) {
    mp_hdr h;
    if (!expect(r, MP_T_BIN, &h)) return 0;
    *p = r->p + h.hlen;
    *len = h.plen;
    consume(r, &h);
    return 1;
}

static int read_container(mp_reader *r, mp_type type, uint32_t *n) {
    mp_hdr h;
    if (!expect(r, type, &h)) return 0;
    /* every item takes at least one byte: reject impossible counts early */
    uint64_t items = type == MP_T_MAP ? 2 * h.u : h.u;
    if (items > (uint64_t)(r->end - r->p - h.hlen)) return fail(r, MP_E_TRUNCATED, r->p);
    *n = (uint32_t)h.u;
    consume(r, &h);
    return 1;
}

int mp_read_array(mp_reader *r, uint32_t *n) { return read_container(r, MP_T_ARRAY, n); }
int mp_read_map(mp_reader *r, uint32_t *n) { return read_container(r, MP_T_MAP, n); }

/* Iterative, with an explicit stack of items left per open container. */
int mp_skip(mp_reader *r) {
    if (r->err) return 0;
    uint64_t stack[MP_MAX_DEPTH];
    int depth = 0;
    uint64_t left = 1;
    const uint8_t *p = r->p;
    for (;;) {
        while (left == 0) {
            if (depth == 0) {
                r->p = p;
                return 1;
            }
            left = stack[--depth];
        }
        mp_hdr h;
        int e = decode(p, r->end, &h);
        if (e != MP_OK) return fail(r, e, p);
        if (h.type == MP_T_ARRAY || h.type == MP_T_MAP) {
            uint64_t items = h.type == MP_T_MAP ? 2 * h.u : h.u;
            if (depth == MP_MAX_DEPTH) return fail(r, MP_E_DEPTH, p);
            if (items > (uint64_t)(r->end - p - h.hlen)) return fail(r, MP_E_TRUNCATED, p);
            p += h.hlen;
            stack[depth++] = left - 1;
            left = items;
        } else {
            p += h.hlen + h.plen;
            left--;
        }
    }
}

int mp_str_eq(const char *s, uint32_t len, const char *cstr) {
    uint32_t i = 0;
    for (; i < len; i++)
        if (cstr[i] == 0 || cstr[i] != s[i]) return 0;
    return cstr[i] == 0;
}

int mp_map_find(const mp_reader *r, const char *key, mp_reader *val) {
    mp_reader c = *r;
    uint32_t n;
    c.err = MP_OK;
    if (!mp_read_map(&c, &n)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t klen;
        if (mp_peek(&c) == MP_T_STR) {
            if (!mp_read_str(&c, &k, &klen)) return -1;
            if (mp_str_eq(k, klen, key)) {
                *val = c;
                return 1;
            }
        } else if (!mp_skip(&c)) {
            return -1;
        }
        if (!mp_skip(&c)) return -1;
    }
    return 0;
}

/* ================================ writer ================================ */

void mp_writer_init(mp_writer *w, void *buf, uint32_t cap) {
    w->buf = (uint8_t *)buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->overflow = 0;
}

void mp_write_raw(mp_writer *w, const void *p, uint32_t len) {
    if (w->buf && !w->overflow) {
        if (len > w->cap - w->len) {
            w->overflow = 1;
        } else if (len) {
            __builtin_memcpy(w->buf + w->len, p, len);
        }
    }
    w->len += len;
}

/* tag followed by the low n bytes of v, big-endian */
static void put(mp_writer *w, uint8_t tag, uint64_t v, uint32_t n) {
    uint8_t b[9];
    b[0] = tag;
    for (uint32_t i = 0; i < n; i++) b[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    mp_write_raw(w, b, 1 + n);
}

void mp_write_nil(mp_writer *w) { put(w, 0xc0, 0, 0); }
void mp_write_bool(mp_writer *w, int v) { put(w, v ? 0xc3 : 0xc2, 0, 0); }

void mp_write_uint(mp_writer *w, uint64_t v) {
    if (v <= 0x7f) put(w, (uint8_t)v, 0, 0);
    else if (v <= 0xff) put(w, 0xcc, v, 1);
    else if (v <= 0xffff) put(w, 0xcd, v, 2);
    else if (v <= 0xffffffffu) put(w, 0xce, v, 4);
    else put(w, 0xcf, v, 8);
}

void mp_write_int(mp_writer *w, int64_t v) {
    if (v >= 0) mp_write_uint(w, (uint64_t)v);
    else if (v >= -32) put(w, (uint8_t)v, 0, 0);
    else if (v >= -128) put(w, 0xd0, (uint64_t)v, 1);
    else if (v >= -32768) put(w, 0xd1, (uint64_t)v, 2);
    else if (v >= INT32_MIN) put(w, 0xd2, (uint64_t)v, 4);
    else put(w, 0xd3, (uint64_t)v, 8);
}

void mp_write_float(mp_writer *w, float v) {
    union { float f; uint32_t u; } c = {v};
    put(w, 0xca, c.u, 4);
}

void mp_write_double(mp_writer *w, double v) {
    union { double f; uint64_t u; } c = {v};
    put(w, 0xcb, c.u, 8);
}

static void write_len(mp_writer *w, uint8_t fix, uint32_t fixmax, uint8_t tag8, uint8_t tag16,
                      uint32_t n) {
    if (n <= fixmax && fix) put(w, (uint8_t)(fix | n), 0, 0);
    else if (n <= 0xff && tag8) put(w, tag8, n, 1);
    else if (n <= 0xffff) put(w, tag16, n, 2);
    else put(w, (uint8_t)(tag16 + 1), n, 4);
}

void mp_write_str(mp_writer *w, const char *s, uint32_t len) {
    write_len(w, 0xa0, 31, 0xd9, 0xda, len);
    mp_write_raw(w, s, len);
}

void mp_write_cstr(mp_writer *w, const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    mp_write_str(w, s, n);
}

void mp_write_bin_header(mp_writer *w, uint32_t len) {
    if (len <= 0xff) put(w, 0xc4, len, 1);
    else if (len <= 0xffff) put(w, 0xc5, len, 2);
    else put(w, 0xc6, len, 4);
}

void mp_write_bin(mp_writer *w, const void *p, uint32_t len) {
    mp_write_bin_header(w, len);
    mp_write_raw(w, p, len);
}

void mp_write_array(mp_writer *w, uint32_t n) { write_len(w, 0x90, 15, 0, 0xdc, n); }
void mp_write_map(mp_writer *w, uint32_t n) { write_len(w, 0x80, 15, 0, 0xde, n); }

/* ============================== formatting ============================== */

typedef struct {
    char *buf;
    uint32_t cap, len;
} fmt_out;

static void fmt_char(fmt_out *o, char c) {
    if (o->len + 1 < o->cap) o->buf[o->len++] = c;
}

static void fmt_text(fmt_out *o, const char *s, uint32_t len) {
    for (uint32_t i = 0; i < len; i++) {
        char c = s[i];
        fmt_char(o, c >= 0x20 && c <= 0x7e ? c : '?');
    }
}

static void fmt_uint(fmt_out *o, uint64_t v, int neg) {
    char d[21];
    int n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg) fmt_char(o, '-');
    while (n) fmt_char(o, d[--n]);
}

static void fmt_int(fmt_out *o, int64_t v) {
    fmt_uint(o, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

uint32_t borda_vfmt(char *buf, uint32_t cap, const char *fmt, va_list ap) {
    fmt_out o = {buf, cap, 0};
    if (cap == 0) return 0;
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            fmt_char(&o, *f);
            continue;
        }
        f++;
        if (f[0] == '.' && f[1] == '*' && f[2] == 's') {
            int len = va_arg(ap, int);
            const char *s = va_arg(ap, const char *);
            uint32_t n = len < 0 ? 0 : (uint32_t)len;
            fmt_text(&o, s, n > 64 ? 64 : n);
            if (n > 64) fmt_text(&o, "...", 3);
            f += 2;
        } else if (f[0] == 's') {
            const char *s = va_arg(ap, const char *);
            uint32_t n = 0;
            while (s[n]) n++;
            fmt_text(&o, s, n);
        } else if (f[0] == 'd') {
            fmt_int(&o, va_arg(ap, int));
        } else if (f[0] == 'u') {
            fmt_uint(&o, va_arg(ap, unsigned), 0);
        } else if (f[0] == 'l' && f[1] == 'l' && f[2] == 'd') {
            fmt_int(&o, va_arg(ap, long long));
            f += 2;
        } else if (f[0] == 'l' && f[1] == 'l' && f[2] == 'u') {
            fmt_uint(&o, va_arg(ap, unsigned long long), 0);
            f += 2;
        } else if (f[0] == '%') {
            fmt_char(&o, '%');
        } else { /* unsupported directive: emit it verbatim */
            fmt_char(&o, '%');
            if (!f[0]) break;
            fmt_char(&o, f[0]);
        }
    }
    buf[o.len] = 0;
    return o.len;
}

uint32_t borda_fmt(char *buf, uint32_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    uint32_t n = borda_vfmt(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

/* ================================ tensors =============================== */

static const struct {
    const char *name;
    uint32_t size;
} dtypes[BORDA_N_DTYPES] = {
    [BORDA_F32] = {"f32", 4}, [BORDA_F16] = {"f16", 2}, [BORDA_I32] = {"i32", 4},
    [BORDA_I16] = {"i16", 2}, [BORDA_I8] = {"i8", 1},   [BORDA_U8] = {"u8", 1},
};

const char *borda_dtype_name(int dtype) {
    return dtype >= 0 && dtype < BORDA_N_DTYPES ? dtypes[dtype].name : "?";
}

uint32_t borda_dtype_size(int dtype) {
    return dtype >= 0 && dtype < BORDA_N_DTYPES ? dtypes[dtype].size : 0;
}

/* ================================ requests ============================== */

static const uint8_t empty_map[1] = {0x80};

static uint64_t memory_bytes(void) { return (uint64_t)__builtin_wasm_memory_size(0) * 65536u; }

int borda_in_heap(uint32_t ptr, uint32_t len) {
    return ptr >= (uintptr_t)&__heap_base && (uint64_t)ptr + len <= memory_bytes();
}

static int errf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int errf(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    borda_vfmt(err, BORDA_ERR_MAX, fmt, ap);
    va_end(ap);
    return 0;
}

/* the type of the value at r, for messages (ignores an error a failed read left) */
static const char *type_name(const mp_reader *r) {
    static const char *const names[] = {"invalid", "nil", "bool", "int", "float",
                                        "str",     "bin", "array", "map", "ext"};
    mp_reader c = *r;
    c.err = MP_OK;
    mp_type t = mp_peek(&c);
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

int borda_check_keys(const mp_reader *map, const char *const *allowed, const char *what,
                     char *err) {
    mp_reader c = *map;
    uint32_t n, seen = 0;
    if (!mp_read_map(&c, &n)) return errf(err, "%s map is malformed", what);
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t klen;
        if (!mp_read_str(&c, &k, &klen))
            return errf(err, "%s names must be strings, got %s", what, type_name(&c));
        uint32_t j = 0;
        while (allowed[j] && !mp_str_eq(k, klen, allowed[j])) j++;
        if (!allowed[j] || j >= 32) return errf(err, "unknown %s '%.*s'", what, (int)klen, k);
        if (seen & (1u << j)) return errf(err, "duplicate %s '%.*s'", what, (int)klen, k);
        seen |= 1u << j;
        if (!mp_skip(&c)) return errf(err, "%s map is malformed", what);
    }
    return 1;
}

int borda_parse_request(const void *buf, uint32_t len, borda_request *rq, char *err) {
    static const char *const keys[] = {"fn", "args", "tensors", 0};
    mp_reader r, whole;
    mp_reader_init(&r, buf, len);
    whole = r;
    if (!mp_skip(&whole))
        return errf(err, "malformed request: %s at byte %u of %u", mp_strerror(whole.err),
                    whole.err_at, len);
    if (whole.p != whole.end)
        return errf(err, "malformed request: %u trailing bytes", (unsigned)(whole.end - whole.p));
    if (mp_peek(&r) != MP_T_MAP)
        return errf(err, "request must be a map, got %s", type_name(&r));
    if (!borda_check_keys(&r, keys, "request key", err)) return 0;

    mp_reader v;
    if (mp_map_find(&r, "fn", &v) != 1) return errf(err, "request has no 'fn'");
    if (!mp_read_str(&v, &rq->fn, &rq->fn_len))
        return errf(err, "request 'fn' must be a str, got %s", type_name(&v));
    static const char *const maps[2] = {"args", "tensors"};
    mp_reader *dst[2] = {&rq->args, &rq->tensors};
    for (int i = 0; i < 2; i++) {
        if (mp_map_find(&r, maps[i], dst[i]) != 1) {
            mp_reader_init(dst[i], empty_map, sizeof empty_map);
        } else if (mp_peek(dst[i]) != MP_T_MAP) {
            return errf(err, "request '%s' must be a map, got %s", maps[i],
                        type_name(dst[i]));
        }
    }
    return 1;
}

int borda_get_tensor(const borda_request *rq, const char *name, int dtype, uint32_t align,
                     borda_tensor *t, char *err) {
    static const char *const fields[] = {"dtype", "shape", "ptr", "data", 0};
    mp_reader v, f;
    char what[80];
    int found = mp_map_find(&rq->tensors, name, &v);
    if (found != 1) return errf(err, "missing tensor '%s'", name);
    if (mp_peek(&v) != MP_T_MAP)
        return errf(err, "tensor '%s' must be a map, got %s", name, type_name(&v));
    borda_fmt(what, sizeof what, "key in tensor '%s':", name);
    if (!borda_check_keys(&v, fields, what, err)) return 0;

    /* dtype */
    const char *s;
    uint32_t slen;
    if (mp_map_find(&v, "dtype", &f) != 1) return errf(err, "tensor '%s' has no 'dtype'", name);
    if (!mp_read_str(&f, &s, &slen)) return errf(err, "tensor '%s' dtype must be a str", name);
    t->dtype = 0;
    while (t->dtype < BORDA_N_DTYPES && !mp_str_eq(s, slen, dtypes[t->dtype].name)) t->dtype++;
    if (t->dtype == BORDA_N_DTYPES)
        return errf(err, "tensor '%s' has unknown dtype '%.*s'", name, (int)slen, s);
    if (dtype >= 0 && t->dtype != dtype)
        return errf(err, "tensor '%s' has dtype %s, expected %s", name, dtypes[t->dtype].name,
                    borda_dtype_name(dtype));
    uint32_t item = dtypes[t->dtype].size;

    /* shape */
    uint32_t n;
    if (mp_map_find(&v, "shape", &f) != 1) return errf(err, "tensor '%s' has no 'shape'", name);
    if (!mp_read_array(&f, &n)) return errf(err, "tensor '%s' shape must be an array", name);
    if (n > BORDA_MAX_DIMS)
        return errf(err, "tensor '%s' has %u dims, at most %d are supported", name, n,
                    BORDA_MAX_DIMS);
    uint64_t count = 1;
    t->ndim = (int)n;
    for (uint32_t i = 0; i < n; i++) {
        int64_t d;
        if (!mp_read_int(&f, &d)) return errf(err, "tensor '%s' dims must be integers", name);
        if (d < 0 || d > INT32_MAX)
            return errf(err, "tensor '%s' dim %u is %lld", name, i, (long long)d);
        t->shape[i] = (int32_t)d;
        count *= (uint64_t)d; /* both factors <= 2^31: no overflow */
        if (count > INT32_MAX) return errf(err, "tensor '%s' has too many elements", name);
    }
    for (uint32_t i = n; i < BORDA_MAX_DIMS; i++) t->shape[i] = 1;
    uint64_t nbytes = count * item;
    if (nbytes > UINT32_MAX) return errf(err, "tensor '%s' is larger than 4 GiB", name);
    t->count = (uint32_t)count;
    t->nbytes = (uint32_t)nbytes;

    /* ptr or data */
    mp_reader pf, df;
    int has_ptr = mp_map_find(&v, "ptr", &pf) == 1, has_data = mp_map_find(&v, "data", &df) == 1;
    if (has_ptr == has_data)
        return errf(err, "tensor '%s' needs exactly one of 'ptr' and 'data'", name);
    if (has_ptr) {
        int64_t p;
        if (!mp_read_int(&pf, &p)) return errf(err, "tensor '%s' ptr must be an integer", name);
        if (p < 0 || p > UINT32_MAX || !borda_in_heap((uint32_t)p, t->nbytes))
            return errf(err, "tensor '%s' (ptr %lld, %u bytes) is outside the heap [%u, %llu)",
                        name, (long long)p, t->nbytes, (unsigned)(uintptr_t)&__heap_base,
                        (unsigned long long)memory_bytes());
        t->data = (void *)(uintptr_t)p;
    } else {
        const uint8_t *d;
        uint32_t dlen;
        if (!mp_read_bin(&df, &d, &dlen)) return errf(err, "tensor '%s' data must be bin", name);
        if (dlen != t->nbytes)
            return errf(err, "tensor '%s' has %u data bytes, its shape and dtype need %u", name,
                        dlen, t->nbytes);
        t->data = (void *)(uintptr_t)d;
    }

    /* realign (arena blocks are 64-byte aligned) */
    if (align < item) align = item;
    if ((uintptr_t)t->data & (align - 1)) {
        void *copy = arena_alloc(t->nbytes);
        if (!copy) return errf(err, "out of memory realigning tensor '%s'", name);
        __builtin_memcpy(copy, t->data, t->nbytes);
        t->data = copy;
    }
    return 1;
}

int borda_arg_number(const borda_request *rq, const char *name, double *v, char *err) {
    mp_reader f;
    if (mp_map_find(&rq->args, name, &f) != 1) return 1;
    if (!mp_read_number(&f, v))
        return errf(err, "arg '%s' must be a number, got %s", name, type_name(&f));
    return 1;
}

int borda_arg_int(const borda_request *rq, const char *name, int64_t *v, char *err) {
    mp_reader f;
    if (mp_map_find(&rq->args, name, &f) != 1) return 1;
    if (!mp_read_int(&f, v))
        return errf(err, "arg '%s' must be an integer, got %s", name, type_name(&f));
    return 1;
}

/* =============================== responses ============================== */

int64_t borda_pack(const void *ptr, uint32_t len) {
    uintptr_t p = (uintptr_t)ptr;
    if (p > 0x7fffffffu) return BORDA_ERR_NO_MEMORY; /* would read as a negative code */
    return (int64_t)(((uint64_t)p << 32) | len);
}

int64_t borda_respond(borda_write_fn write, const void *ctx) {
    mp_writer w;
    mp_writer_init(&w, 0, 0);
    write(&w, ctx);
    uint32_t size = w.len;
    void *buf = arena_alloc(size);
    if (!buf) return BORDA_ERR_NO_MEMORY;
    mp_writer_init(&w, buf, size);
    write(&w, ctx);
    if (w.overflow || w.len != size) return BORDA_ERR_INTERNAL;
    return borda_pack(buf, size);
}

static void write_error(mp_writer *w, const void *msg) {
    mp_write_map(w, 2);
    mp_write_cstr(w, "ok");
    mp_write_bool(w, 0);
    mp_write_cstr(w, "error");
    mp_write_cstr(w, (const char *)msg);
}

int64_t borda_error_response(const char *msg) { return borda_respond(write_error, msg); }

void borda_write_tensor_header(mp_writer *w, const char *name, int dtype, int ndim,
                               const int32_t *shape) {
    uint64_t nbytes = borda_dtype_size(dtype);
    mp_write_cstr(w, name);
    mp_write_map(w, 3);
    mp_write_cstr(w, "dtype");
    mp_write_cstr(w, borda_dtype_name(dtype));
    mp_write_cstr(w, "shape");
    mp_write_array(w, (uint32_t)ndim);
    for (int i = 0; i < ndim; i++) {
        mp_write_int(w, shape[i]);
        nbytes *= (uint32_t)shape[i];
    }
    mp_write_cstr(w, "data");
    mp_write_bin_header(w, (uint32_t)nbytes);
}
