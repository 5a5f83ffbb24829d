/* Borda guest ABI v1 and the kernel library's declarations.
 *
 * Every pointer is an offset into this module's linear memory; the host writes
 * inputs into buffers it got from borda_alloc and reads outputs back. Nothing in
 * guest/ allocates except the arena (runtime/arena.c). */
#ifndef BORDA_H
#define BORDA_H

#include <stddef.h>
#include <stdint.h>

#define BORDA_EXPORT(name) __attribute__((export_name(name)))
#define BORDA_ABI_VERSION 1

/* ---- Q8_0: GGUF's block, 32 int8 values along K with one f16 scale. ---- */
#define QK8_0 32
typedef struct {
    uint16_t d;          /* f16 scale */
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match GGUF (34 bytes)");

/* Kernels do not read GGUF blocks directly: a Q8_0 matrix is repacked once into
 * planar arrays so that SIMD loads are aligned and scales are f32.
 *   qs[rows][k]        int8 weights, bit-identical to the GGUF block bytes
 *   d[rows][k/32]      f32 block scales (exact conversion of the f16 scale)
 *   s[rows][k/32]      int16 sum of the 32 int8 weights of each block
 * The block sums let the relaxed dot product run with activations offset into
 * [1,127] (see quantize_act): dot(w, q) = dot(w, q + 64) - 64 * sum(w). */
typedef struct {
    const int8_t *qs;
    const float *d;
    const int16_t *s;
    int rows, k;
} q8_matrix;

/* Activations quantized per token in blocks of 32: v = round(x / dx) with
 * |v| <= ACT_VMAX(digits), written as one or two digits q, each stored offset
 * as u = q + ACT_OFFSET(digits) >= 1 (u <= 127 is the range in which
 * i32x4.relaxed_dot_i8x16_i7x16_add is exact on every engine):
 *   one digit:  v = q in [-63,63], u in [1,127]                     (7 bits)
 *   two digits: v = 63 q0 + q1, q in [-31,31], u in [1,63]         (12 bits)
 * A token's digits are planes of k bytes, most significant first. Two digits
 * leave the weights' Q8_0 rounding as the only error worth naming; keeping
 * them to 6 bits lets the kernels add two int8 dot pair sums in i16. */
#define ACT_QMAX 63
#define ACT_RADIX 63
#define ACT_DIGIT_MAX(digits) ((digits) == 2 ? 31 : ACT_QMAX)
#define ACT_OFFSET(digits) (ACT_DIGIT_MAX(digits) + 1)
#define ACT_VMAX(digits) ((digits) == 2 ? (ACT_RADIX + 1) * ACT_DIGIT_MAX(2) : ACT_QMAX)

/* ---- arena (runtime/arena.c) ---- */
void *arena_alloc(size_t nbytes);      /* 64-byte aligned, NULL on failure */
void arena_reset(void);                /* free all scratch (down to the floor) */
uintptr_t arena_mark(void);            /* current top, for arena_release */
void arena_release(uintptr_t mark);    /* free scratch allocated after mark */
void arena_keep(void);                 /* make everything allocated so far permanent */
void arena_start_above(uintptr_t end); /* never hand out memory below end (weights) */

/* ---- math (kernels/math.c): freestanding replacements for libm ---- */
float borda_expf(float x);
float borda_erff(float x);
void borda_sincosf(float x, float *s, float *c);
float borda_sqrtf(float x);
float borda_roundf(float x); /* half away from zero, like C roundf */
uint16_t f32_to_f16(float x);  /* round to nearest even, like numpy */
float f16_to_f32(uint16_t h);

/* ---- kernels (kernels/), each with a numpy twin in the host ---- */
void quantize_q8_0(const float *x, block_q8_0 *out, int n);
void dequantize_q8_0(const block_q8_0 *blocks, float *y, int n);
void repack_q8_0(const block_q8_0 *blocks, int8_t *qs, float *d, int16_t *s, int nblocks);
void quantize_act(const float *x, int8_t *u, float *dx, int n_tokens, int k, int digits);

/* Both GEMMs: y[t][r] = x[t] . w[r] + bias[r] (bias may be NULL), added to y's
 * values when accumulate (a residual connection) instead of replacing them. */
void gemm_q8_0(const q8_matrix *w, const int8_t *xu, const float *xd, const float *bias, float *y,
               int n_tokens, int digits, int accumulate);
void gemv_q8_0_i16(const q8_matrix *w, const int8_t *xu, const float *xd, float *y); /* 1 digit */
void gemm_f32(const float *x, const float *w, const float *bias, float *y, int n_tokens, int rows,
              int k, int accumulate);
/* One row group's weight panels, packed by gemm_q8_0 or gemm_f32 (never both at once). */
#define GEMM_PANELS_BYTES (256 << 10)
extern uint8_t gemm_panels[GEMM_PANELS_BYTES];

void rmsnorm(const float *x, const float *w, float *y, int n_tokens, int dim, float eps);
void layernorm(const float *x, const float *w, const float *b, float *y, int n_tokens, int dim,
               float eps);
void rope(float *x, int n_tokens, int n_heads, int head_dim, int pos0, const float *inv_freq,
          int interleaved);
void softmax(float *x, int rows, int n);
void silu(float *x, int n);
void swiglu(const float *gate, const float *up, float *y, int n);
void gelu(float *x, int n);
void attention(const float *q, const float *k_cache, const float *v_cache, float *out,
               int n_tokens, int n_heads, int n_kv_heads, int head_dim, int kv_stride, int pos0,
               int n_kv, int causal, float scale);
void embed_q8_0(const int8_t *qs, const float *d, const int32_t *ids, float *out, int n_ids,
                int dim);

#endif
