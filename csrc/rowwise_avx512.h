// The AVX-512 versions of the row-wise kernels (rowwise_avx512.cpp): softmax and log-softmax
// (softmax.cpp), the fused cross-entropy (loss.cpp), RMSNorm and LayerNorm (norm.cpp), GELU and
// SiLU (activation.cpp). Each has the contract of the AVX2 version of the same name in its
// family's file (and of the scalar twin there), float32 only, tails through lane masks.
#pragma once

#include <cstdint>

#include "simd.h"

namespace minillm {

// GELU's constants (activation.cpp has the derivation): c = sqrt(2 / pi), a, and the clamp of x.
constexpr double kGeluC = 0.79788456080286535588;
constexpr double kGeluA = 0.044715;
constexpr double kGeluClamp = 30.0;

#if MINILLM_X86
namespace rows512 {

void softmax_row(const float* x, float* y, std::int64_t n);
void softmax_backward_row(const float* dy, const float* y, float* dx, std::int64_t n, bool stream);
void log_softmax_row(const float* x, float* y, std::int64_t n);
void log_softmax_backward_row(const float* dy, const float* y, float* dx, std::int64_t n, bool stream);

float cross_entropy_row(const float* x, std::int64_t t, float* g, std::int64_t V);
void scale_row(const float* g, float scale, float* out, std::int64_t V, bool stream);

float rms_forward_row(const float* x, const float* w, float* y, std::int64_t C, double eps);
void rms_backward_row(const float* dy, const float* x, const float* w, float inv, float* dx, float* dw, std::int64_t C);
float layer_forward_row(const float* x, const float* w, const float* b, float* y, float* x_hat, std::int64_t C,
                        double eps);
void layer_backward_row(const float* dy, const float* x_hat, const float* w, float inv, float* dx, float* dw,
                        float* db, std::int64_t C);

void gelu_forward(const float* x, float* y, std::int64_t n);
void gelu_backward(const float* dy, const float* x, float* dx, std::int64_t n);
void silu_forward(const float* x, float* y, std::int64_t n);
void silu_backward(const float* dy, const float* x, float* dx, std::int64_t n);

}  // namespace rows512
#endif

}  // namespace minillm
