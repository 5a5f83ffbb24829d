/* Plumbing shared by the model runtimes, models/llama.c and models/bert.c
 * (runtime/model_common.c): weight matrices and the linear layer, loading the
 * weights that init describes, arena buffer lists, pointer checks, and the error
 * helpers of borda_invoke (runtime/kernel_invoke.c uses those too).
 *
 * Nothing here keeps state: what a helper needs of a model (its scratch, the
 * weights' extent, its err buffer) is passed in. The functions that take err
 * return 1 on success, 0 with a message in err[BORDA_ERR_MAX]. */
#ifndef BORDA_MODEL_COMMON_H
#define BORDA_MODEL_COMMON_H

#include "borda.h"
#include "msgpack.h"

/* ---- errors ---- */

/* Formats a message into err[BORDA_ERR_MAX] (borda_fmt's directives); returns 0. */
int borda_failf(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* {"ok": false, "error": "<fn>: <err>"} */
int64_t borda_fn_error_response(const char *fn, const char *err);

/* ---- sizes and pointers ---- */

uint64_t model_align64(uint64_t n);
uint64_t model_memory_bytes(void); /* the current linear memory size */
/* The init request's arg 'weights_end' (where the data segment's weights end), checked to
 * lie inside linear memory; 0 with err set otherwise. */
int model_weights_end(const borda_request *rq, int64_t *end, char *err);
/* init's first allocation: the zeroed layer table of `bytes`, with the arena moved above
 * the weights (which end at `end`) for good; NULL when out of memory. */
void *model_alloc_layer_table(int64_t end, uint64_t bytes);
/* [p, p + n) lies in the heap (the range host buffers come from) */
int model_in_heap(uint32_t p, uint64_t n);
/* [p, p + n) and [lo, hi) intersect */
int model_overlaps(uint64_t p, uint64_t n, uint64_t lo, uint64_t hi);

/* ---- the linear layer ---- */

typedef struct { /* a weight matrix [rows][k]: f32 or q8_0 */
    int is_q8;
    int rows, k; /* 0 rows: not loaded */
    const float *f32;
    q8_matrix q8;
} model_matrix;

/* The input of one or more matmuls: n_tokens x k floats. For q8_0 matrices it
 * is quantized on first use, to act_digits digits (borda.h), into xq / xd (the
 * model's scratch: [n_tokens][act_digits * k] int8 and [n_tokens][k / 32] f32)
 * and then shared (q, k and v, or gate and up,
 * read the same input). The scratch holds one input at a time: be done with a
 * model_input before the next one is used. */
typedef struct {
    const float *x;
    int n_tokens, k;
    int8_t *xq;
    float *xd;
    int act_digits; /* 1 or 2 */
    int quantized;  /* 0 when built */
} model_input;

/* y[t][rows] = in[t] . W[rows] (+ bias, which may be NULL) */
void model_matmul(model_input *in, const model_matrix *m, const float *bias, float *y);
/* y[t][rows] += in[t] . W[rows] (+ bias): a residual connection, y not aliasing in */
void model_matmul_add(model_input *in, const model_matrix *m, const float *bias, float *y);
/* x[i] += y[i] */
void model_add(float *x, const float *y, int n);

/* ---- init: config and weights ---- */

/* config.key: an integer in [lo, hi] */
int model_config_int(const mp_reader *map, const char *key, int64_t lo, int64_t hi, int *out,
                     char *err);

/* Where a named tensor goes and the shape it must have. */
typedef struct {
    int rows, k;       /* rows -1: a vector of k */
    const float **vec; /* destination of a vector, or */
    model_matrix *mat; /* of a matrix */
} model_slot;

int model_slot_loaded(const model_slot *slot);

/* A per-layer weight "blk.{i}.<name>". rows and k are the model's dimension ids (see
 * model_layers.dim_of); rows -1 means a vector [k] (f32). */
typedef struct {
    const char *name;
    int rows, k, required;
    size_t field; /* offset in the model's layer struct of a const float * or a model_matrix */
} model_layer_tensor;

typedef struct { /* a model's per-layer weights: the table and where they bind */
    const model_layer_tensor *tensors;
    int n_tensors;
    void *layers; /* n_layers structs of layer_bytes */
    size_t layer_bytes;
    int n_layers;
    int (*dim_of)(int id);
} model_layers;

/* 1 and the slot when name is "blk.{layer}.{tensor}" (layer in canonical decimal,
 * below n_layers, tensor in the table); 0 otherwise. */
int model_find_layer_slot(const model_layers *m, const char *name, uint32_t len,
                          model_slot *slot);

/* 1 when every required per-layer weight is bound; else 0 with err naming the first missing. */
int model_check_layers(const model_layers *m, char *err);

/* The slot of weight name, 0 when the model has no such weight. */
typedef int (*model_find_slot)(const char *name, uint32_t len, model_slot *slot);

/* Binds every weight of the map at map ({name: {"dtype": "f32"|"q8_0", "shape": [..],
 * "offset": int}}): checks each against its slot (known name, not seen before,
 * dtype, shape, extent inside [__heap_base, weights_hi), alignment) and points the
 * slot at its data: f32 row-major, or q8_0's planar arrays (borda.h) at offset:
 * qs int8 [rows*k], d f32 at offset + align64(rows*k), s int16 at
 * d + align64(rows*k/32*4). Lowers *weights_lo to the lowest offset. Which weights
 * are required is the model's to check. */
int model_load_weights(const mp_reader *map, model_find_slot find, int n_layers,
                       uintptr_t *weights_lo, uintptr_t weights_hi, char *err);

/* ---- allocation ---- */

/* One arena block carved into the buffers of a list (sizes in bytes, each 64-aligned). */
typedef struct {
    void **ptr;
    uint64_t bytes;
} model_buffer;

uint64_t model_buffers_bytes(const model_buffer *b, int n); /* the block's size */
int model_alloc_buffers(const model_buffer *b, int n);      /* 0: out of memory */

/* ---- borda_invoke ---- */

typedef struct {
    const char *module;
    const char *const *functions; /* NULL-terminated */
} model_info;

/* A borda_write_fn for {"fn": "info"}; ctx is a model_info. */
void model_write_info(mp_writer *m, const void *ctx);

#endif
