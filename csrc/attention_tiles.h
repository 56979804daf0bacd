// Dense building blocks of the tiled attention kernels (attention.cpp), on small row-major tiles
// that live in L1/L2. Every product the forward and backward need is one call of matmul_tile:
//   S  = scale Q K^T   -> Q (br, D) times Kt (D, bc), K's tile transposed once into a buffer
//   O += P V           -> P (br, bc) times V (bc, D) read in place
//   dV += P^T dO       -> trans_a: P stored (br, bc) is read as P^T (bc, br)
// Each function has a scalar twin (the float64 path, and float32 under force_scalar) and an
// AVX2/FMA version for float32; `simd` picks between them.
#pragma once

#include <cstdint>

namespace minillm {
namespace attn {

// C (m, n) = alpha * op(A) B + (accumulate ? C : 0), op(A) (m, k) is A, or A^T when trans_a
// (then A is stored (k, m)). B is (k, n). lda, ldb, ldc: row strides in elements.
template <typename F>
void matmul_tile(bool simd, std::int64_t m, std::int64_t n, std::int64_t k, F alpha, const F* A,
                 std::int64_t lda, bool trans_a, const F* B, std::int64_t ldb, F* C, std::int64_t ldc,
                 bool accumulate);

// At (n, m) with row stride m = A^T for A (m, n) with row stride lda.
template <typename F>
void transpose_tile(bool simd, std::int64_t m, std::int64_t n, const F* A, std::int64_t lda, F* At);

// max of x[0..n); -inf for n = 0.
template <typename F>
F row_max(bool simd, const F* x, std::int64_t n);

// y = exp(x - shift) (x and y may alias); returns sum(y).
template <typename F>
F exp_shifted(bool simd, const F* x, F* y, std::int64_t n, F shift);

// x *= c
template <typename F>
void scale_row(bool simd, F* x, std::int64_t n, F c);

// sum(a * b)
template <typename F>
F dot_row(bool simd, const F* a, const F* b, std::int64_t n);

// dp = p * (dp - d): the softmax backward of one row, written over dP.
template <typename F>
void softmax_grad_row(bool simd, const F* p, F* dp, std::int64_t n, F d);

}  // namespace attn
}  // namespace minillm
