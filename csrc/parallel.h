// OpenMP helpers: how many threads a parallel region uses now (kernel_threads(), load.cpp: the
// user's count, fewer while other programs keep the CPUs busy), and for the row-wise kernel
// families (softmax, loss, norm, activation) a body run over rows on those threads when the work
// pays for a parallel region, and per-part partial buffers (weight gradients) reduced without
// atomics. Every split here is fixed by the sizes alone, never by the thread count, so a kernel's
// result is the same on 1 thread or 8 (and when the count adapts to the load).
#pragma once

#include <algorithm>
#include <vector>

#include "simd.h"

namespace minillm {

// Threads for a parallel region now (load.cpp); 1 without OpenMP.
int kernel_threads();
// The CPUs this process may run on (its affinity mask), at least 1.
int cpus_available();
// Adapting to the load is on unless MINILLM_ADAPTIVE_THREADS=0; tests and benchmarks can switch it.
void set_adaptive_threads(bool on);
bool adaptive_threads();
// Take a sample now (also done every 50 ms by kernel_threads()); the last one, for build_info:
// runnable threads on the machine and in this process (-1 if unknown), the smoothed count of the
// others', and the CPUs available.
void sample_load();
struct LoadSample {
    int running, ours, others, cpus;
};
LoadSample last_load_sample();

// Outputs of at least this many bytes (twice the 32 MiB L3) are written with non-temporal stores:
// they will not be read again before they leave the cache, and streaming skips reading each line
// before it is written.
constexpr std::int64_t kStreamBytes = std::int64_t(64) << 20;

// Threads for `work` elements (or multiply-adds): 1 below `threshold`, else kernel_threads().
inline int threads_for(std::int64_t work, std::int64_t threshold = kParallelThreshold) {
    return work >= threshold ? kernel_threads() : 1;
}

// body(r) for every r in [0, rows); over OpenMP threads when rows * cols elements of work
// are enough to pay for a parallel region.
template <typename F>
inline void parallel_rows(std::int64_t rows, std::int64_t cols, F&& body) {
    const int threads = rows > 1 ? threads_for(rows * cols) : 1;
    (void)threads;   // only the OpenMP build uses it
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (std::int64_t r = 0; r < rows; ++r) body(r);
}

// Partial buffers of a reduction over rows: at most this many, each summing a contiguous range.
constexpr std::int64_t kReduceParts = 8;

// body(r, partial) for every r in [0, rows), where `partial` is the zeroed buffer of `width` values
// of the part holding row r; then out[c] = sum over parts, in part order, of partial[c]. The parts
// are fixed by rows and cols alone (one part below the parallel threshold, else up to kReduceParts
// contiguous ranges), so the sum is the same whichever threads ran them, and no atomics are needed.
template <typename T, typename F>
inline void parallel_rows_reduce(std::int64_t rows, std::int64_t cols, std::int64_t width, T* out, F&& body) {
    const std::int64_t parts = rows * cols >= kParallelThreshold ? std::clamp<std::int64_t>(rows, 1, kReduceParts) : 1;
    const int threads = parts > 1 ? kernel_threads() : 1;
    (void)threads;
    std::vector<T> partial(static_cast<std::size_t>(parts * width), T(0));
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
#endif
    for (std::int64_t p = 0; p < parts; ++p) {
        T* mine = partial.data() + p * width;
        for (std::int64_t r = p * rows / parts; r < (p + 1) * rows / parts; ++r) body(r, mine);
    }
    for (std::int64_t c = 0; c < width; ++c) {
        T s = 0;
        for (std::int64_t p = 0; p < parts; ++p) s += partial[p * width + c];
        out[c] = s;
    }
}

}  // namespace minillm
