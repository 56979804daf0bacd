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

}  // namespace minillm
