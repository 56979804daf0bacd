// Attention of a few new queries over a KV cache, read in place (generation's decode step).
//
// The contract is attention_forward's (attention.cpp, minillm/kernels/reference/attention.py) on
// k = k_cache[:, :, :S], v = v_cache[:, :, :S]: q (B, H, T, D); k_cache, v_cache (B, Hkv, L, D)
// with the first S <= L positions filled and T <= S; query i sits at position S - T + i. The
// cache is pre-allocated for L positions, so its first S are not one contiguous block per head:
// attention_forward would need them copied out at every step (O(S) bytes per layer per token);
// here each head's keys are read at stride L * D instead, and nothing is copied.
//
// Per (b, h) and query row, over the keys [lo, hi) it may see (causal, window):
//     s_j = q.k_j / sqrt(D) - slope_h * distance     (-inf where the padding mask hides key j)
//     out = sum_j softmax(s)_j v_j                    (zeros when no key is visible)
// one row of scores at a time (T is small in decode; generation's prefill goes to attention_forward).
// The dot products, exponentials and the P V product are attention's tile helpers
// (attention_tiles.h), which have their scalar twins and SIMD versions. Binding at the bottom:
// kv_attention_forward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attention_tiles.h"
#include "binding.h"
#include "simd.h"

namespace minillm {

using std::int64_t;

namespace {

template <typename F>
struct KvArgs {
    const F* q;            // (B, H, T, D)
    const F* k;            // (B, Hkv, L, D)
    const F* v;
    int64_t B, H, Hkv, T, S, L, D;
    bool causal;
    int64_t window;        // 0: none
    const F* alibi_slopes; // (H,) or nullptr
    const bool* keep;      // (B, S) or nullptr
};

// out rows of query head h in batch b; s: a buffer of S scores.
template <typename F>
void attend_head(const KvArgs<F>& a, Isa isa, int64_t b, int64_t h, F* s, F* out) {
    const int64_t kvh = h / (a.H / a.Hkv), D = a.D;
    const F* k = a.k + (b * a.Hkv + kvh) * a.L * D;                       // (S of L, D)
    const F* v = a.v + (b * a.Hkv + kvh) * a.L * D;
    const attn::Visibility vis{a.causal, a.window, a.keep ? a.keep + b * a.S : nullptr, a.S};
    const F* slope = a.alibi_slopes ? a.alibi_slopes + h : nullptr;
    for (int64_t i = 0; i < a.T; ++i) {
        const int64_t p = a.S - a.T + i;
        const F* q = a.q + ((b * a.H + h) * a.T + i) * D;
        F* o = out + ((b * a.H + h) * a.T + i) * D;
        int64_t lo, hi;
        vis.key_band(p, p, lo, hi);
        const int64_t n = hi - lo;
        attn::scores(isa, vis, slope, D, q, k + lo * D, static_cast<const F*>(nullptr), p, lo, 1, n, s);
        const F m = attn::row_max(isa, s, n);
        if (m == F(-INFINITY)) {                                          // no visible key
            std::fill(o, o + D, F(0));
            continue;
        }
        const F l = attn::exp_shifted(isa, s, s, n, m);
        attn::matmul_tile<F>(isa, 1, D, n, F(1) / l, s, n, false, v + lo * D, D, o, D, false);   // o = P V / l
    }
}

template <typename F>
void kv_attention_forward(KvArgs<F> a, F* out) {
    if (a.window > a.S + a.T) a.window = a.S + a.T + 1;                   // as wide as no window; p +- it stays small
    const Isa isa = simd_isa<F>();
    const int64_t tasks = a.B * a.H;
#if defined(MINILLM_OPENMP)
#pragma omp parallel if (tasks > 1 && tasks * a.T * a.S * a.D >= kParallelThreshold)
#endif
    {
        std::vector<F> s(static_cast<size_t>(std::max<int64_t>(a.S, 1)));
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < tasks; ++t) attend_head(a, isa, t / a.H, t % a.H, s.data(), out);
    }
}

}  // namespace

// ---- binding

static py::array py_kv_attention_forward(const py::array& q, const py::array& k_cache, const py::array& v_cache,
                                         std::int64_t length, bool causal, std::int64_t window,
                                         const py::object& alibi_slopes, const py::object& key_padding_mask) {
    const Check check("kv_attention_forward");
    check.floating("q", q);
    check.floating("k_cache", k_cache);
    check.floating("v_cache", v_cache);
    check.ndim("q", q, 4, "(B, H, T, D)");
    check.ndim("k_cache", k_cache, 4, "(B, Hkv, L, D)");
    check.same_as("k_cache", k_cache, "v_cache", v_cache);
    check.same_dtype("q", q, "k_cache", k_cache);
    const int64_t B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3);
    const int64_t Hkv = k_cache.shape(1), L = k_cache.shape(2);
    if (k_cache.shape(0) != B || k_cache.shape(3) != D)
        check.fail("q has shape " + shape_str(q) + " and k_cache " + shape_str(k_cache) +
                   "; batch (axis 0) and head dim (axis 3) must match");
    if (D < 1) check.fail("the head dim D must be >= 1, got 0");
    if (Hkv < 1 || H % Hkv != 0)
        check.fail("q has " + std::to_string(H) + " heads but k_cache has " + std::to_string(Hkv) +
                   "; n_heads must be a multiple of n_kv_heads >= 1");
    if (length < T || length > L)
        check.fail("length " + std::to_string(length) + " must cover the " + std::to_string(T) +
                   " new queries and fit the cache of " + std::to_string(L) + " positions");
    if (window < 0) check.fail("window must be >= 0 (0 = no window), got " + std::to_string(window));
    py::array alibi, mask;
    const bool has_alibi = check.optional("alibi_slopes", alibi_slopes, alibi);
    if (has_alibi) {
        check.floating("alibi_slopes", alibi);
        check.shape("alibi_slopes", alibi, {H}, "q", q, "one slope per head");
        check.dtype_of("alibi_slopes", alibi, "q", q);
    }
    const bool has_mask = check.optional("key_padding_mask", key_padding_mask, mask);
    if (has_mask) {
        check.typed<bool>("key_padding_mask", mask, 2, "bool");
        check.shape("key_padding_mask", mask, {B, length}, "one per cached key of each batch row, True = keep");
    }
    py::array out = empty_like(q);
    dispatch_float(q, [&](auto zero) {
        using F = decltype(zero);
        const KvArgs<F> a{data<F>(q), data<F>(k_cache), data<F>(v_cache), B, H, Hkv, T, length, L, D, causal, window,
                          has_alibi ? data<F>(alibi) : nullptr, has_mask ? data<bool>(mask) : nullptr};
        F* outp = mutable_data<F>(out);
        py::gil_scoped_release release;
        if (B > 0 && H > 0 && T > 0) kv_attention_forward(a, outp);
    });
    return out;
}

void bind_kv_attention(py::module_& m) {
    m.def("kv_attention_forward", &py_kv_attention_forward, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("length"), py::arg("causal"), py::arg("window"), py::arg("alibi_slopes"),
          py::arg("key_padding_mask"),
          "attention_forward's out for q (B, H, T, D) over the first `length` positions of k_cache, v_cache "
          "(B, Hkv, L, D), read in place. window 0 = none; alibi_slopes (H,) or None; key_padding_mask "
          "(B, length) bool or None.");
}

}  // namespace minillm
