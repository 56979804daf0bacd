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

// attention.cpp: flash-style attention (contract: minillm/kernels/reference/attention.py).
// q (B, H, T, D); k, v (B, Hkv, S, D) with H % Hkv == 0; alibi_slopes (H,) or nullptr;
// key_padding_mask (B, S) (true = keep) or nullptr; window 0 = none. All C-contiguous.
template <typename F>
struct AttentionArgs {
    const F* q;
    const F* k;
    const F* v;
    std::int64_t B, H, Hkv, T, S, D;
    bool causal;
    std::int64_t window;
    const F* alibi_slopes;
    const bool* key_padding_mask;
};
// out (B, H, T, D), lse (B, H, T): lse = +inf and out = 0 for a query that sees no key.
template <typename F>
void attention_forward(const AttentionArgs<F>& args, F* out, F* lse);
// dq like q; dk, dv like k (summed over the query heads sharing a kv head). Overwrites them.
template <typename F>
void attention_backward(const AttentionArgs<F>& args, const F* dout, const F* out, const F* lse, F* dq, F* dk,
                        F* dv);

}  // namespace minillm
