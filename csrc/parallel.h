// OpenMP helpers for the row-wise kernel families (softmax, loss, norm, activation): run a body
// over rows on OpenMP threads when the work pays for a parallel region, and reduce per-thread
// partial buffers (weight gradients) without atomics.
#pragma once

#include <vector>

#include "simd.h"

namespace minillm {

// Outputs of at least this many bytes (twice the 32 MiB L3) are written with non-temporal stores:
// they will not be read again before they leave the cache, and streaming skips reading each line
// before it is written.
constexpr std::int64_t kStreamBytes = std::int64_t(64) << 20;

// body(r) for every r in [0, rows); over OpenMP threads when rows * cols elements of work
// are enough to pay for a parallel region.
template <typename F>
inline void parallel_rows(std::int64_t rows, std::int64_t cols, F&& body) {
    (void)cols;   // only the OpenMP build uses it
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelThreshold && rows > 1)
#endif
    for (std::int64_t r = 0; r < rows; ++r) body(r);
}

// body(r, partial) for every r in [0, rows), where `partial` is this thread's zeroed buffer of
// `width` values; then out[c] = sum over threads of partial[c]. Each thread only writes its own
// buffer, so the reduction needs no atomics, and the sum order is fixed for a given thread count.
template <typename T, typename F>
inline void parallel_rows_reduce(std::int64_t rows, std::int64_t cols, std::int64_t width, T* out, F&& body) {
    (void)cols;
    int threads = 1;
#if defined(MINILLM_OPENMP)
    if (rows * cols >= kParallelThreshold && rows > 1) threads = omp_get_max_threads();
#endif
    std::vector<T> partial(static_cast<std::size_t>(threads) * width, T(0));
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        int t = 0;
#if defined(MINILLM_OPENMP)
        t = omp_get_thread_num();
#pragma omp for schedule(static)
#endif
        for (std::int64_t r = 0; r < rows; ++r) body(r, partial.data() + t * width);
    }
    for (std::int64_t c = 0; c < width; ++c) {
        T s = 0;
        for (int t = 0; t < threads; ++t) s += partial[t * width + c];
        out[c] = s;
    }
}

}  // namespace minillm
