// Building blocks of the tiled attention kernels (attention.cpp), on small row-major tiles that
// live in L1/L2: which keys a query sees (Visibility), one tile of masked scores, and the dense
// products. Every product the forward and backward need is one call of matmul_tile:
//   S  = scale Q K^T   -> Q (br, D) times Kt (D, bc), K's tile transposed once into a buffer
//   O += P V           -> P (br, bc) times V (bc, D) read in place
//   dV += P^T dO       -> trans_a: P stored (br, bc) is read as P^T (bc, br)
// Each function has a scalar twin (the float64 path, and float32 when forced) and AVX2/FMA and
// AVX-512 versions for float32; `isa` (simd_isa<F>() of the caller) picks between them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace minillm {
namespace attn {

// Which (query position, key) pairs are visible, for one batch row.
struct Visibility {
    bool causal;
    std::int64_t window;   // 0: no window
    const bool* keep;      // (S,) key padding of this batch row, or nullptr
    std::int64_t S;

    // Keys [lo, hi) that position p may see, padding aside (may be empty or reach outside [0, S)).
    void keys_of(std::int64_t p, std::int64_t& lo, std::int64_t& hi) const {
        lo = window ? p - window + 1 : INT64_MIN / 2;
        hi = causal ? p + 1 : (window ? p + window : INT64_MAX / 2);
    }
    // Keys [lo, hi) within [0, S) that some position in [p0, p1] may see.
    void key_band(std::int64_t p0, std::int64_t p1, std::int64_t& lo, std::int64_t& hi) const {
        std::int64_t unused;
        keys_of(p0, lo, unused);
        keys_of(p1, unused, hi);
        lo = std::max<std::int64_t>(lo, 0);
        hi = std::max(std::min(hi, S), lo);
    }
    // Positions [lo, hi) that may see some key in [j0, j1): the inverse of key_band.
    void position_band(std::int64_t j0, std::int64_t j1, std::int64_t& lo, std::int64_t& hi) const {
        lo = causal ? j0 : (window ? j0 - window + 1 : INT64_MIN / 2);
        hi = window ? j1 - 1 + window : INT64_MAX / 2;
    }
    // True when every pair in [p0, p1] x [j0, j1) is visible, so the tile needs no element mask.
    bool all_visible(std::int64_t p0, std::int64_t p1, std::int64_t j0, std::int64_t j1) const {
        if (causal && j1 - 1 > p0) return false;
        if (window && std::max(p1 - j0, j1 - 1 - p0) >= window) return false;
        if (keep)
            for (std::int64_t j = j0; j < j1; ++j)
                if (!keep[j]) return false;
        return true;
    }
};

// S (br, bc) = scale Q K^T for a tile of query positions p0.. and keys j0.., with ALiBi
// (- slope * distance, when slope is not null) and -inf where vis hides a key. q (br, D); k, the key
// tile (bc, D); kt, if given, the same tile transposed (D, bc) for the matmul. Without it (a few
// query rows, as in a decode step) each score is one dot product, which saves transposing K.
template <typename F>
void scores(Isa isa, const Visibility& vis, const F* slope, std::int64_t D, const F* q, const F* k, const F* kt,
            std::int64_t p0, std::int64_t j0, std::int64_t br, std::int64_t bc, F* s);

// C (m, n) = alpha * op(A) B + (accumulate ? C : 0), op(A) (m, k) is A, or A^T when trans_a
// (then A is stored (k, m)). B is (k, n). lda, ldb, ldc: row strides in elements.
template <typename F>
void matmul_tile(Isa isa, std::int64_t m, std::int64_t n, std::int64_t k, F alpha, const F* A,
                 std::int64_t lda, bool trans_a, const F* B, std::int64_t ldb, F* C, std::int64_t ldc,
                 bool accumulate);

// At (n, m) with row stride m = A^T for A (m, n) with row stride lda.
template <typename F>
void transpose_tile(Isa isa, std::int64_t m, std::int64_t n, const F* A, std::int64_t lda, F* At);

// max of x[0..n); -inf for n = 0; NaN when any x is NaN.
template <typename F>
F row_max(Isa isa, const F* x, std::int64_t n);

// y = exp(x - shift) (x and y may alias); returns sum(y).
template <typename F>
F exp_shifted(Isa isa, const F* x, F* y, std::int64_t n, F shift);

// x *= c
template <typename F>
void scale_row(Isa isa, F* x, std::int64_t n, F c);

// sum(a * b)
template <typename F>
F dot_row(Isa isa, const F* a, const F* b, std::int64_t n);

// dp = p * (dp - d): the softmax backward of one row, written over dP.
template <typename F>
void softmax_grad_row(Isa isa, const F* p, F* dp, std::int64_t n, F d);

// t (br, bc), a tile of positions p0.. and keys j0..: 0 where vis hides the key. The backward's P and
// dS are 0 there exactly, even in a row whose lse is NaN (exp(-inf - NaN) would be NaN).
template <typename F>
void zero_hidden(const Visibility& vis, std::int64_t p0, std::int64_t j0, std::int64_t br, std::int64_t bc, F* t);

#if MINILLM_X86
// The AVX-512 versions (attention_tiles_avx512.cpp), float32; same contracts as above.
void matmul_tile_avx512(std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* A,
                        std::int64_t lda, bool trans_a, const float* B, std::int64_t ldb, float* C, std::int64_t ldc,
                        bool accumulate);
void transpose_tile_avx512(std::int64_t m, std::int64_t n, const float* A, std::int64_t lda, float* At);
float row_max_avx512(const float* x, std::int64_t n);
float exp_shifted_avx512(const float* x, float* y, std::int64_t n, float shift);
void scale_row_avx512(float* x, std::int64_t n, float c);
float dot_row_avx512(const float* a, const float* b, std::int64_t n);
void softmax_grad_row_avx512(const float* p, float* dp, std::int64_t n, float d);
#endif

}  // namespace attn
}  // namespace minillm
