/* Minimal MessagePack reader/writer for the borda_invoke ABI, plus the request and
 * response helpers every module's borda_invoke shares (runtime/msgpack.c).
 *
 * Freestanding, allocation-free (except responses and realigned tensor copies,
 * which come from the arena), and bounds-checked: a reader never touches a byte
 * outside [start, end), and nesting deeper than MP_MAX_DEPTH is rejected.
 *
 * ---- borda_invoke(req_ptr, req_len) -> i64 ----
 * Request: a msgpack map
 *   {"fn": str,                       required
 *    "args": {name: value},           optional; numbers may be any int or float encoding
 *    "tensors": {name: {"dtype": "f32"|"f16"|"i32"|"i16"|"i8"|"u8",
 *                       "shape": [d0, ..] (0..4 dims, each >= 0),
 *                       "ptr": int | "data": bin}}}   exactly one of ptr / data
 *   Unknown keys (top level, args, tensors, tensor fields) are errors, so typos fail loudly.
 *   A "ptr" tensor must lie in [__heap_base, memory size); "data" must hold exactly
 *   prod(shape) * itemsize bytes. Misaligned tensors are copied into the arena.
 * Response: (ptr << 32) | len of a msgpack map in the arena (freed by borda_reset):
 *   {"ok": true, "result": {...}, "tensors": {name: {"dtype", "shape", "data": bin}}}
 *   {"ok": false, "error": "message"}
 * A negative return is one of the codes below: no response could be written. */
#ifndef BORDA_MSGPACK_H
#define BORDA_MSGPACK_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- borda_invoke error codes (every other failure is an {"ok": false} response) ---- */
#define BORDA_ERR_BAD_REQUEST (-1) /* [req_ptr, req_ptr + req_len) is not inside the heap */
#define BORDA_ERR_NO_MEMORY (-2)   /* the arena cannot hold even an error response */
#define BORDA_ERR_INTERNAL (-3)    /* a response outgrew its measured size (a guest bug) */

/* ---- reader ---- */
#define MP_MAX_DEPTH 16

enum { MP_OK = 0, MP_E_TRUNCATED, MP_E_INVALID, MP_E_DEPTH, MP_E_TYPE, MP_E_RANGE };

typedef enum {
    MP_T_INVALID = 0, /* byte 0xc1, or reading past the end */
    MP_T_NIL,
    MP_T_BOOL,
    MP_T_INT, /* every int encoding */
    MP_T_FLOAT, /* float32 and float64 */
    MP_T_STR,
    MP_T_BIN,
    MP_T_ARRAY,
    MP_T_MAP,
    MP_T_EXT, /* skipped by mp_skip, read by nothing */
} mp_type;

/* A cursor over [start, end). Every read either succeeds and advances, or fails,
 * stays put and records err (sticky: later reads fail until err is cleared). */
typedef struct {
    const uint8_t *start, *p, *end;
    int err;
    uint32_t err_at; /* offset of the byte where err was detected */
} mp_reader;

void mp_reader_init(mp_reader *r, const void *buf, uint32_t len);
mp_type mp_peek(const mp_reader *r);
uint32_t mp_offset(const mp_reader *r); /* bytes consumed so far */
const char *mp_strerror(int err);

/* Each returns 1 on success, 0 on failure (wrong type, truncated, out of range). */
int mp_read_nil(mp_reader *r);
int mp_read_bool(mp_reader *r, int *v);
int mp_read_int(mp_reader *r, int64_t *v);     /* uint64 above INT64_MAX: MP_E_RANGE */
int mp_read_number(mp_reader *r, double *v);   /* any int or float encoding */
int mp_read_str(mp_reader *r, const char **s, uint32_t *len);
int mp_read_bin(mp_reader *r, const uint8_t **p, uint32_t *len);
int mp_read_array(mp_reader *r, uint32_t *n);  /* header only; the n items follow */
int mp_read_map(mp_reader *r, uint32_t *n);    /* header only; n key/value pairs follow */
int mp_skip(mp_reader *r);                     /* one whole value, depth <= MP_MAX_DEPTH */

/* Non-consuming: positions *val at the value of the first str key equal to key in
 * the map at r. Returns 1 found, 0 absent, -1 malformed (r->err is left untouched). */
int mp_map_find(const mp_reader *r, const char *key, mp_reader *val);
int mp_str_eq(const char *s, uint32_t len, const char *cstr);

/* ---- writer ---- */
/* Writes into [buf, buf + cap). With buf == NULL it only measures (len counts the
 * bytes a real write would produce). Overflow is sticky and leaves len counting. */
typedef struct {
    uint8_t *buf;
    uint32_t cap, len;
    int overflow;
} mp_writer;

void mp_writer_init(mp_writer *w, void *buf, uint32_t cap);
void mp_write_nil(mp_writer *w);
void mp_write_bool(mp_writer *w, int v);
void mp_write_int(mp_writer *w, int64_t v); /* smallest encoding, like msgpack-python */
void mp_write_uint(mp_writer *w, uint64_t v);
void mp_write_float(mp_writer *w, float v);
void mp_write_double(mp_writer *w, double v);
void mp_write_str(mp_writer *w, const char *s, uint32_t len);
void mp_write_cstr(mp_writer *w, const char *s);
void mp_write_bin(mp_writer *w, const void *p, uint32_t len);
void mp_write_bin_header(mp_writer *w, uint32_t len); /* caller writes len bytes next */
void mp_write_array(mp_writer *w, uint32_t n);
void mp_write_map(mp_writer *w, uint32_t n);
void mp_write_raw(mp_writer *w, const void *p, uint32_t len);

/* ---- message formatting: %s %.*s %d %u %lld %llu %% ----
 * Strings are sanitized (bytes outside printable ASCII become '?', %.*s is cut at 64
 * chars) so echoing request text always yields valid UTF-8. Always NUL-terminates. */
#define BORDA_ERR_MAX 256
uint32_t borda_fmt(char *buf, uint32_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
uint32_t borda_vfmt(char *buf, uint32_t cap, const char *fmt, va_list ap);

/* ---- tensors ---- */
#define BORDA_MAX_DIMS 4
enum { BORDA_F32 = 0, BORDA_F16, BORDA_I32, BORDA_I16, BORDA_I8, BORDA_U8, BORDA_N_DTYPES };
const char *borda_dtype_name(int dtype);
uint32_t borda_dtype_size(int dtype);

typedef struct {
    int dtype, ndim;
    int32_t shape[BORDA_MAX_DIMS];
    uint32_t count, nbytes; /* count <= INT32_MAX */
    void *data;             /* aligned to its itemsize (or as borda_get_tensor was asked) */
} borda_tensor;

/* ---- requests ---- */
typedef struct {
    const char *fn;
    uint32_t fn_len;
    mp_reader args;    /* at the args map (an empty map when absent) */
    mp_reader tensors; /* at the tensors map (an empty map when absent) */
} borda_request;

/* 1 when [ptr, ptr + len) lies inside [__heap_base, memory size). */
int borda_in_heap(uint32_t ptr, uint32_t len);

/* Each returns 1 on success, 0 with a message in err[BORDA_ERR_MAX]. */
int borda_parse_request(const void *buf, uint32_t len, borda_request *rq, char *err);
/* Every key of map must be a str in allowed (NULL-terminated); what names the map. */
int borda_check_keys(const mp_reader *map, const char *const *allowed, const char *what,
                     char *err);
/* Tensor name must be present with the given dtype (or any if dtype < 0); data is
 * realigned (copied into the arena) unless aligned to max(align, itemsize). */
int borda_get_tensor(const borda_request *rq, const char *name, int dtype, uint32_t align,
                     borda_tensor *t, char *err);
/* Optional args: *v keeps its value (the default) when name is absent. */
int borda_arg_number(const borda_request *rq, const char *name, double *v, char *err);
int borda_arg_int(const borda_request *rq, const char *name, int64_t *v, char *err);

/* ---- responses (all in the arena) ---- */
/* (ptr << 32) | len; BORDA_ERR_NO_MEMORY when ptr is not below 2 GiB. */
int64_t borda_pack(const void *ptr, uint32_t len);
/* Measures, allocates, then writes: write(w, ctx) must emit the same bytes twice. */
typedef void (*borda_write_fn)(mp_writer *w, const void *ctx);
int64_t borda_respond(borda_write_fn write, const void *ctx);
int64_t borda_error_response(const char *msg); /* {"ok": false, "error": msg} */
void borda_write_tensor_header(mp_writer *w, const char *name, int dtype, int ndim,
                               const int32_t *shape); /* name: {dtype, shape, data: <bin hdr>} */

#endif
