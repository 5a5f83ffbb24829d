/* Token embedding lookup from a planar Q8_0 table (dim multiple of 32). */
#include "borda.h"

#include "simd_math.h"

void embed_q8_0(const int8_t *qs, const float *d, const int32_t *ids, float *out, int n_ids,
                int dim) {
    int nb = dim / QK8_0;
    for (int i = 0; i < n_ids; i++) {
        const int8_t *row = qs + (size_t)ids[i] * dim;
        const float *drow = d + (size_t)ids[i] * nb;
        float *o = out + (size_t)i * dim;
        for (int b = 0; b < nb; b++) {
            dequant16_f32(row + b * QK8_0, drow[b], o + b * QK8_0);
            dequant16_f32(row + b * QK8_0 + 16, drow[b], o + b * QK8_0 + 16);
        }
    }
}
