// Declarations of the native kernels. Raw pointers and sizes only: the bindings
// (bindings.cpp) check shapes, dtypes and contiguity before anything here runs.
#pragma once

#include <cstdint>
#include <type_traits>

namespace minillm {

// softmax.cpp: x, y, dy, dx are (rows, n), C-contiguous.
template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n);
template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n);

template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n);
template <typename T>
void log_softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n);

// loss.cpp: logits, g, dlogits (N, V); targets, nll, row_scale (N,). Targets are in [0, V) or
// ignore_index (checked by the binding). g = softmax(logits) - onehot(targets), 0 on ignored rows;
// dlogits = g * row_scale[:, None].
template <typename T>
void cross_entropy_forward(const T* logits, const std::int64_t* targets, std::int64_t ignore_index, T* nll, T* g,
                           std::int64_t N, std::int64_t V);
template <typename T>
void cross_entropy_backward(const T* g, const T* row_scale, T* dlogits, std::int64_t N, std::int64_t V);

// norm.cpp: x, y, x_hat, dy, dx (rows, C); weight, bias, dw, db (C,); inv_rms, inv_std (rows,).
template <typename T>
void rms_norm_forward(const T* x, const T* w, double eps, T* y, T* inv_rms, std::int64_t rows, std::int64_t C);
template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* inv_rms, T* dx, T* dw, std::int64_t rows,
                       std::int64_t C);
template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, double eps, T* y, T* x_hat, T* inv_std,
                        std::int64_t rows, std::int64_t C);
template <typename T>
void layer_norm_backward(const T* dy, const T* x_hat, const T* w, const T* inv_std, T* dx, T* dw, T* db,
                         std::int64_t rows, std::int64_t C);

// activation.cpp: elementwise over n values; x, y, dy, dx (n,).
template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n);
template <typename T>
void gelu_backward(const T* dy, const T* x, T* dx, std::int64_t n);
template <typename T>
void silu_forward(const T* x, T* y, std::int64_t n);
template <typename T>
void silu_backward(const T* dy, const T* x, T* dx, std::int64_t n);

}  // namespace minillm
