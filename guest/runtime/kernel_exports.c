/* Direct Wasm exports of the kernel library: thin wrappers, one per kernel.
 * Pointer arguments are i32 offsets into linear memory (wasm32), sizes are
 * i32, eps/scale are f32. Shapes and layouts are documented in borda.h and
 * next to each kernel. */
#include "borda.h"

#define PTR(T, p) ((T *)(uintptr_t)(p))

BORDA_EXPORT("borda_quantize_q8_0")
void borda_quantize_q8_0(uint32_t x, uint32_t out, int32_t n) {
    quantize_q8_0(PTR(const float, x), PTR(block_q8_0, out), n);
}

BORDA_EXPORT("borda_dequantize_q8_0")
void borda_dequantize_q8_0(uint32_t blocks, uint32_t y, int32_t n) {
    dequantize_q8_0(PTR(const block_q8_0, blocks), PTR(float, y), n);
}

BORDA_EXPORT("borda_repack_q8_0")
void borda_repack_q8_0(uint32_t blocks, uint32_t qs, uint32_t d, uint32_t s, int32_t nblocks) {
    repack_q8_0(PTR(const block_q8_0, blocks), PTR(int8_t, qs), PTR(float, d), PTR(int16_t, s),
                nblocks);
}

BORDA_EXPORT("borda_quantize_act")
void borda_quantize_act(uint32_t x, uint32_t u, uint32_t dx, int32_t n_tokens, int32_t k,
                        int32_t digits) {
    quantize_act(PTR(const float, x), PTR(int8_t, u), PTR(float, dx), n_tokens, k, digits);
}

static q8_matrix make_q8_matrix(uint32_t qs, uint32_t d, uint32_t s, int32_t rows, int32_t k) {
    q8_matrix w = {PTR(const int8_t, qs), PTR(const float, d), PTR(const int16_t, s), rows, k};
    return w;
}

BORDA_EXPORT("borda_gemm_q8_0")
void borda_gemm_q8_0(uint32_t qs, uint32_t d, uint32_t s, uint32_t xu, uint32_t xd, uint32_t y,
                     int32_t rows, int32_t k, int32_t n_tokens, int32_t digits) {
    q8_matrix w = make_q8_matrix(qs, d, s, rows, k);
    gemm_q8_0(&w, PTR(const int8_t, xu), PTR(const float, xd), NULL, PTR(float, y), n_tokens,
              digits, 0);
}

BORDA_EXPORT("borda_gemv_q8_0_i16")
void borda_gemv_q8_0_i16(uint32_t qs, uint32_t d, uint32_t s, uint32_t xu, uint32_t xd, uint32_t y,
                         int32_t rows, int32_t k) {
    q8_matrix w = make_q8_matrix(qs, d, s, rows, k);
    gemv_q8_0_i16(&w, PTR(const int8_t, xu), PTR(const float, xd), PTR(float, y));
}

BORDA_EXPORT("borda_gemm_f32")
void borda_gemm_f32(uint32_t x, uint32_t w, uint32_t bias, uint32_t y, int32_t n_tokens,
                    int32_t rows, int32_t k) {
    gemm_f32(PTR(const float, x), PTR(const float, w), bias ? PTR(const float, bias) : NULL,
             PTR(float, y), n_tokens, rows, k, 0);
}

BORDA_EXPORT("borda_rmsnorm")
void borda_rmsnorm(uint32_t x, uint32_t w, uint32_t y, int32_t n_tokens, int32_t dim, float eps) {
    rmsnorm(PTR(const float, x), PTR(const float, w), PTR(float, y), n_tokens, dim, eps);
}

BORDA_EXPORT("borda_layernorm")
void borda_layernorm(uint32_t x, uint32_t w, uint32_t b, uint32_t y, int32_t n_tokens, int32_t dim,
                     float eps) {
    layernorm(PTR(const float, x), PTR(const float, w), PTR(const float, b), PTR(float, y),
              n_tokens, dim, eps);
}

BORDA_EXPORT("borda_rope")
void borda_rope(uint32_t x, int32_t n_tokens, int32_t n_heads, int32_t head_dim, int32_t pos0,
                uint32_t inv_freq, int32_t interleaved) {
    rope(PTR(float, x), n_tokens, n_heads, head_dim, pos0, PTR(const float, inv_freq),
         interleaved);
}

BORDA_EXPORT("borda_softmax")
void borda_softmax(uint32_t x, int32_t rows, int32_t n) { softmax(PTR(float, x), rows, n); }

BORDA_EXPORT("borda_silu")
void borda_silu(uint32_t x, int32_t n) { silu(PTR(float, x), n); }

BORDA_EXPORT("borda_swiglu")
void borda_swiglu(uint32_t gate, uint32_t up, uint32_t y, int32_t n) {
    swiglu(PTR(const float, gate), PTR(const float, up), PTR(float, y), n);
}

BORDA_EXPORT("borda_gelu")
void borda_gelu(uint32_t x, int32_t n) { gelu(PTR(float, x), n); }

BORDA_EXPORT("borda_attention")
void borda_attention(uint32_t q, uint32_t k_cache, uint32_t v_cache, uint32_t out,
                     int32_t n_tokens, int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                     int32_t kv_stride, int32_t pos0, int32_t n_kv, int32_t causal, float scale) {
    attention(PTR(const float, q), PTR(const float, k_cache), PTR(const float, v_cache),
              PTR(float, out), n_tokens, n_heads, n_kv_heads, head_dim, kv_stride, pos0, n_kv,
              causal, scale);
}

BORDA_EXPORT("borda_embed_q8_0")
void borda_embed_q8_0(uint32_t qs, uint32_t d, uint32_t ids, uint32_t out, int32_t n_ids,
                      int32_t dim) {
    embed_q8_0(PTR(const int8_t, qs), PTR(const float, d), PTR(const int32_t, ids),
               PTR(float, out), n_ids, dim);
}
