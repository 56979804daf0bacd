// Flash-style scaled dot-product attention, forward and backward (Dao et al. 2022, 2023).
// The contract is minillm/kernels/reference/attention.py; shapes: q (B, H, T, D), k, v (B, Hkv, S, D),
// query head h reads kv head h / (H / Hkv) in place (GQA/MQA: nothing is copied per query head).
// Query i sits at position p = S - T + i. Key j is visible to it when
//     (!causal || j <= p) && (!window || |p - j| < window) && key_padding_mask[b, j]
// and its score is s = q.k / sqrt(D) - slope_h * (causal ? p - j : |p - j|)  (ALiBi, optional).
//
// Tiles are kBr = 64 query rows by kBc = 32 keys (measured at D = 64; they sit in L1/L2). All their
// products go through one register-blocked matmul_tile (attention_tiles.cpp); a K or V tile is
// transposed once into a buffer where a product needs it, and a tile of fewer than 4 query rows
// (a decode step) gets its scores from dot products instead.
//
// Forward, one (b, h, query tile) per task; the (T, S) score matrix never exists:
//     m = -inf, l = 0, O = 0                                   m, l (br), O (br, D)
//     for each key tile [j0, j0 + bc) inside the rows' band:   (tiles outside causal/window are skipped)
//         S  = scale Q K^T  (+ ALiBi, -inf where hidden)      (br, bc); masks only on boundary tiles
//         m' = max(m, rowmax S);  P = exp(S - m')             (br, bc)
//         l  = l exp(m - m') + rowsum P;  O = O exp(m - m') + P V
//     out = O / l,  lse = m + log l                            (a row that saw nothing: 0 and +inf)
//
// Backward, one (b, kv head) per task, looping over the query heads that share it, so dK and dV
// (and dQ of those heads) have a single writer and need no locks or partial buffers (with fewer
// kv heads than threads, the key tiles are also split in stripes; see attention_backward):
//     Dlt = rowsum(dO * O)                                     (T)
//     for each key tile:  for each query tile inside its band:
//         P  = exp(S - lse)      (S recomputed as above)       (br, bc)
//         dV += P^T dO;   dP = dO V^T;   dS = P (dP - Dlt)
//         dQ += scale dS K;   dK += scale dS^T Q
// Extra memory is a few tiles per thread plus a T-vector: it grows linearly in T, never as T x S.
// Bindings at the bottom: attention_forward, attention_backward.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_tiles.h"
#include "binding.h"
#include "parallel.h"
#include "simd.h"

namespace minillm {

using std::int64_t;
using namespace attn;   // Visibility, scores and the tile products (attention_tiles.h)

// The arguments: q (B, H, T, D); k, v (B, Hkv, S, D) with H % Hkv == 0; alibi_slopes (H,) or nullptr;
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

// The path attention's tiles take now (minillm.build_info()["kernel_paths"]).
Isa attention_isa() { return float_family_isa(); }

namespace {

constexpr int64_t kBr = 64;   // query rows per tile
constexpr int64_t kBc = 32;   // keys per tile
constexpr int64_t kMinRowsToTranspose = 4;   // fewer query rows: scores by dot products (decode)

// Enough work for a parallel region.
template <typename F>
bool big_enough(const AttentionArgs<F>& a) {
    return a.B * a.H * a.T * std::max<int64_t>(a.S, 1) * a.D >= kParallelThreshold;
}

// A window wider than any distance |p - j| < S + T changes nothing; clamping it keeps p +- window in range.
template <typename F>
AttentionArgs<F> clamp_window(AttentionArgs<F> a) {
    if (a.window > a.S + a.T) a.window = a.S + a.T + 1;
    return a;
}

// ---- forward

// One query tile [i0, i0 + br) of head h in batch b: out and lse rows.
template <typename F>
void forward_tile(const AttentionArgs<F>& a, Isa isa, int64_t b, int64_t h, int64_t i0, int64_t br, F* kt, F* s,
                  F* o, F* m, F* l, F* out, F* lse) {
    const int64_t T = a.T, S = a.S, D = a.D, kvh = h / (a.H / a.Hkv);
    const F* q = a.q + ((b * a.H + h) * T + i0) * D;                 // (br, D)
    const F* k = a.k + (b * a.Hkv + kvh) * S * D;                    // (S, D)
    const F* v = a.v + (b * a.Hkv + kvh) * S * D;                    // (S, D)
    const Visibility vis{a.causal, a.window, a.key_padding_mask ? a.key_padding_mask + b * S : nullptr, S};
    const F* slope = a.alibi_slopes ? a.alibi_slopes + h : nullptr;
    const int64_t p0 = S - T + i0;
    int64_t lo, hi;
    vis.key_band(p0, p0 + br - 1, lo, hi);

    std::fill(m, m + br, F(-INFINITY));
    std::fill(l, l + br, F(0));
    std::fill(o, o + br * D, F(0));
    for (int64_t j0 = lo; j0 < hi; j0 += kBc) {
        const int64_t bc = std::min(kBc, hi - j0);
        const bool transpose = br >= kMinRowsToTranspose;
        if (transpose) attn::transpose_tile(isa, bc, D, k + j0 * D, D, kt);   // (D, bc)
        scores(isa, vis, slope, D, q, k + j0 * D, transpose ? kt : nullptr, p0, j0, br, bc, s);   // (br, bc)
        for (int64_t r = 0; r < br; ++r) {                           // online softmax, S becomes P
            F* sr = s + r * bc;
            const F tile_max = attn::row_max(isa, sr, bc);            // NaN if a score is NaN
            const F m_new = tile_max != tile_max ? tile_max : std::max(m[r], tile_max);
            if (m_new == F(-INFINITY)) {                             // nothing visible yet
                std::fill(sr, sr + bc, F(0));
                continue;
            }
            const F correction = std::exp(m[r] - m_new);             // 0 on the first visible tile
            l[r] = l[r] * correction + attn::exp_shifted(isa, sr, sr, bc, m_new);
            if (correction != F(1)) attn::scale_row(isa, o + r * D, D, correction);
            m[r] = m_new;
        }
        matmul_tile<F>(isa, br, D, bc, F(1), s, bc, false, v + j0 * D, D, o, D, true);   // O += P V
    }
    F* out_rows = out + ((b * a.H + h) * T + i0) * D;
    F* lse_rows = lse + (b * a.H + h) * T + i0;
    for (int64_t r = 0; r < br; ++r) {
        if (l[r] == F(0)) {                                          // saw no key
            std::fill(out_rows + r * D, out_rows + (r + 1) * D, F(0));
            lse_rows[r] = F(INFINITY);
        } else {                                                     // l NaN (a NaN or +inf score): NaN row and lse
            attn::scale_row(isa, o + r * D, D, F(1) / l[r]);
            std::memcpy(out_rows + r * D, o + r * D, sizeof(F) * size_t(D));
            lse_rows[r] = m[r] + std::log(l[r]);
        }
    }
}

// ---- backward

// Key tile [j0, j0 + bc) of kv head kvh against query head h: accumulates dq, dk, dv.
template <typename F>
void backward_key_tile(const AttentionArgs<F>& a, Isa isa, const Visibility& vis, int64_t b, int64_t h,
                       int64_t j0, int64_t bc, const F* dout, const F* lse, const F* delta, F* kt, F* vt, F* p,
                       F* dp, F* dq, F* dk, F* dv) {
    const int64_t T = a.T, S = a.S, D = a.D, kvh = h / (a.H / a.Hkv), off = S - T;
    int64_t lo, hi;
    vis.position_band(j0, j0 + bc, lo, hi);
    lo = std::max<int64_t>(0, lo - off);                             // positions -> query rows
    hi = std::min<int64_t>(T, hi - off);
    if (lo >= hi) return;
    const F scale = F(1) / std::sqrt(F(D));
    const F* slope = a.alibi_slopes ? a.alibi_slopes + h : nullptr;
    const int64_t head = (b * a.H + h) * T;                          // first row of head h
    const F* k = a.k + ((b * a.Hkv + kvh) * S + j0) * D;             // (bc, D)
    const F* v = a.v + ((b * a.Hkv + kvh) * S + j0) * D;
    attn::transpose_tile(isa, bc, D, k, D, kt);                           // (D, bc)
    attn::transpose_tile(isa, bc, D, v, D, vt);
    for (int64_t i0 = lo; i0 < hi; i0 += kBr) {
        const int64_t br = std::min(kBr, hi - i0);
        const F* q = a.q + (head + i0) * D;                          // (br, D)
        const F* dor = dout + (head + i0) * D;
        scores(isa, vis, slope, D, q, k, kt, off + i0, j0, br, bc, p);   // S (br, bc)
        for (int64_t r = 0; r < br; ++r) attn::exp_shifted(isa, p + r * bc, p + r * bc, bc, lse[head + i0 + r]);
        const bool boundary = !vis.all_visible(off + i0, off + i0 + br - 1, j0, j0 + bc);
        if (boundary) zero_hidden(vis, off + i0, j0, br, bc, p);    // P = 0 where hidden, even if lse is NaN
        matmul_tile<F>(isa, br, bc, D, F(1), dor, D, false, vt, bc, dp, bc, false);          // dP = dO V^T
        for (int64_t r = 0; r < br; ++r) attn::softmax_grad_row(isa, p + r * bc, dp + r * bc, bc, delta[i0 + r]);
        if (boundary) zero_hidden(vis, off + i0, j0, br, bc, dp);   // dS = 0 there too
        matmul_tile<F>(isa, br, D, bc, scale, dp, bc, false, k, D, dq + (head + i0) * D, D, true);   // dQ += s dS K
        matmul_tile<F>(isa, bc, D, br, F(1), p, bc, true, dor, D, dv, D, true);                  // dV += P^T dO
        matmul_tile<F>(isa, bc, D, br, scale, dp, bc, true, q, D, dk, D, true);                  // dK += s dS^T Q
    }
}

}  // namespace

// out (B, H, T, D), lse (B, H, T): lse = +inf and out = 0 for a query that sees no key.
template <typename F>
void attention_forward(const AttentionArgs<F>& args, F* out, F* lse) {
    const AttentionArgs<F> a = clamp_window(args);
    const Isa isa = simd_isa<F>();
    const int64_t tiles = (a.T + kBr - 1) / kBr, tasks = a.B * a.H * tiles;
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(kernel_threads()) if (tasks > 1 && big_enough(a))
#endif
    {
        std::vector<F> kt(a.D * kBc), s(kBr * kBc), o(kBr * a.D), m(kBr), l(kBr);
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic)
#endif
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t bh = t / tiles, i0 = (t % tiles) * kBr;
            forward_tile(a, isa, bh / a.H, bh % a.H, i0, std::min(kBr, a.T - i0), kt.data(), s.data(), o.data(),
                         m.data(), l.data(), out, lse);
        }
    }
}

// dq like q; dk, dv like k (summed over the query heads sharing a kv head). Overwrites them.
template <typename F>
void attention_backward(const AttentionArgs<F>& args, const F* dout, const F* out, const F* lse, F* dq, F* dk,
                        F* dv) {
    const AttentionArgs<F> a = clamp_window(args);
    const Isa isa = simd_isa<F>();
    const int64_t T = a.T, S = a.S, D = a.D, group = a.H / a.Hkv, kv_heads = a.B * a.Hkv;
    const int64_t key_tiles = (S + kBc - 1) / kBc;
    // A task is (b, kv head, stripe): stripe s of `stripes` owns key tiles s, s + stripes, ..., so its
    // rows of dK and dV have one writer, and interleaving keeps causal stripes equally busy. One stripe
    // unless there are fewer kv heads than CPUs (e.g. MQA at batch 1); then stripe s > 0 adds its dQ
    // into its own dq-sized buffer (linear in T), summed into dq at the end. The stripes follow the
    // CPUs this process may use, not the threads running now, so the sums do not change with the load.
    int64_t stripes = 1;
#if defined(MINILLM_OPENMP)
    if (big_enough(a)) stripes = std::max<int64_t>(1, std::min<int64_t>(key_tiles, cpus_available() / kv_heads));
#endif
    const int64_t dq_size = a.B * a.H * T * D, tasks = kv_heads * stripes;
    std::vector<F> dq_more(size_t((stripes - 1) * dq_size));
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(kernel_threads()) if (tasks > 1 && big_enough(a))
#endif
    {
        std::vector<F> kt(D * kBc), vt(D * kBc), p(kBr * kBc), dp(kBr * kBc), delta(T);
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic)
#endif
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t kvh = t / stripes, stripe = t % stripes, b = kvh / a.Hkv;   // kvh = b * Hkv + kv head
            const Visibility vis{a.causal, a.window, a.key_padding_mask ? a.key_padding_mask + b * S : nullptr, S};
            F* dq_stripe = stripe == 0 ? dq : dq_more.data() + (stripe - 1) * dq_size;
            F* dk_head = dk + kvh * S * D;
            F* dv_head = dv + kvh * S * D;
            for (int64_t tile = stripe; tile < key_tiles; tile += stripes) {
                const int64_t j0 = tile * kBc, j1 = std::min(S, j0 + kBc);
                std::fill(dk_head + j0 * D, dk_head + j1 * D, F(0));
                std::fill(dv_head + j0 * D, dv_head + j1 * D, F(0));
            }
            for (int64_t h = (kvh % a.Hkv) * group; h < (kvh % a.Hkv + 1) * group; ++h) {
                const int64_t head = (b * a.H + h) * T;
                std::fill(dq_stripe + head * D, dq_stripe + (head + T) * D, F(0));
                for (int64_t i = 0; i < T; ++i)                      // Dlt_i = rowsum(dO * O)
                    delta[i] = attn::dot_row(isa, dout + (head + i) * D, out + (head + i) * D, D);
                for (int64_t tile = stripe; tile < key_tiles; tile += stripes) {
                    const int64_t j0 = tile * kBc;
                    backward_key_tile(a, isa, vis, b, h, j0, std::min(kBc, S - j0), dout, lse, delta.data(),
                                      kt.data(), vt.data(), p.data(), dp.data(), dq_stripe, dk_head + j0 * D,
                                      dv_head + j0 * D);
                }
            }
        }
        if (stripes > 1) {                                           // dq += the other stripes' dQ
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
            for (int64_t i = 0; i < dq_size; ++i)
                for (int64_t s = 1; s < stripes; ++s) dq[i] += dq_more[(s - 1) * dq_size + i];
        }
    }
}

// ---- bindings

// q (B, H, T, D); k, v (B, Hkv, S, D); window >= 0; alibi_slopes None or (H,) of q's dtype;
// key_padding_mask None or (B, S) bool. Fills `alibi` and `mask` with the optional arrays.
static void check_attention_inputs(const Check& check, const py::array& q, const py::array& k, const py::array& v,
                                   std::int64_t window, const py::object& alibi_slopes,
                                   const py::object& key_padding_mask, py::array& alibi, py::array& mask) {
    check.floating("q", q);
    check.floating("k", k);
    check.floating("v", v);
    check.ndim("q", q, 4, "(B, H, T, D)");
    check.ndim("k", k, 4, "(B, Hkv, S, D)");
    check.same_as("k", k, "v", v);
    check.same_dtype("q", q, "k", k);
    if (q.shape(0) != k.shape(0) || q.shape(3) != k.shape(3))
        check.fail("q has shape " + shape_str(q) + " and k " + shape_str(k) +
                   "; batch (axis 0) and head dim (axis 3) must match");
    if (q.shape(3) < 1) check.fail("the head dim D must be >= 1, got 0");
    if (k.shape(1) < 1 || q.shape(1) % k.shape(1) != 0)
        check.fail("q has " + std::to_string(q.shape(1)) + " heads but k has " + std::to_string(k.shape(1)) +
                   "; n_heads must be a multiple of n_kv_heads >= 1");
    if (window < 0) check.fail("window must be >= 0 (0 = no window), got " + std::to_string(window));
    if (check.optional("alibi_slopes", alibi_slopes, alibi)) {
        check.floating("alibi_slopes", alibi);
        check.shape("alibi_slopes", alibi, {q.shape(1)}, "q", q, "one slope per head");
        check.dtype_of("alibi_slopes", alibi, "q", q);
    }
    if (check.optional("key_padding_mask", key_padding_mask, mask)) {
        check.typed<bool>("key_padding_mask", mask, 2, "bool");
        check.shape("key_padding_mask", mask, {q.shape(0), k.shape(2)}, "one per key of each batch row, True = keep");
    }
}

// The kernel's view of checked arguments (the arrays stay alive in the caller).
template <typename F>
static AttentionArgs<F> attention_args(const py::array& q, const py::array& k, const py::array& v, bool causal,
                                       std::int64_t window, bool has_alibi, const py::array& alibi, bool has_mask,
                                       const py::array& mask) {
    AttentionArgs<F> a{};
    a.q = data<F>(q), a.k = data<F>(k), a.v = data<F>(v);
    a.B = q.shape(0), a.H = q.shape(1), a.T = q.shape(2), a.D = q.shape(3);
    a.Hkv = k.shape(1), a.S = k.shape(2);
    a.causal = causal;
    a.window = window;
    a.alibi_slopes = has_alibi ? data<F>(alibi) : nullptr;
    a.key_padding_mask = has_mask ? data<bool>(mask) : nullptr;
    return a;
}

static py::tuple py_attention_forward(const py::array& q, const py::array& k, const py::array& v, bool causal,
                                      std::int64_t window, const py::object& alibi_slopes,
                                      const py::object& key_padding_mask) {
    const Check check("attention_forward");
    py::array alibi, mask;
    check_attention_inputs(check, q, k, v, window, alibi_slopes, key_padding_mask, alibi, mask);
    py::array out = empty_like(q), lse = empty_like(q, {q.shape(0), q.shape(1), q.shape(2)});
    dispatch_float(q, [&](auto zero) {
        using F = decltype(zero);
        const AttentionArgs<F> a = attention_args<F>(q, k, v, causal, window, !alibi_slopes.is_none(), alibi,
                                                     !key_padding_mask.is_none(), mask);
        F *outp = mutable_data<F>(out), *lsep = mutable_data<F>(lse);
        py::gil_scoped_release release;
        if (a.B > 0 && a.H > 0 && a.T > 0) attention_forward(a, outp, lsep);
    });
    return py::make_tuple(out, lse);
}

static py::tuple py_attention_backward(const py::array& dout, const py::array& q, const py::array& k,
                                       const py::array& v, const py::array& out, const py::array& lse, bool causal,
                                       std::int64_t window, const py::object& alibi_slopes,
                                       const py::object& key_padding_mask) {
    const Check check("attention_backward");
    py::array alibi, mask;
    check_attention_inputs(check, q, k, v, window, alibi_slopes, key_padding_mask, alibi, mask);
    check.floating("dout", dout);
    check.floating("out", out);
    check.floating("lse", lse);
    check.same_as("dout", dout, "q", q);
    check.same_as("out", out, "q", q);
    check.shape("lse", lse, {q.shape(0), q.shape(1), q.shape(2)}, "q", q, "one per query row");
    check.dtype_of("lse", lse, "q", q);
    py::array dq = empty_like(q), dk = empty_like(k), dv = empty_like(v);
    dispatch_float(q, [&](auto zero) {
        using F = decltype(zero);
        const AttentionArgs<F> a = attention_args<F>(q, k, v, causal, window, !alibi_slopes.is_none(), alibi,
                                                     !key_padding_mask.is_none(), mask);
        const F *doutp = data<F>(dout), *outp = data<F>(out), *lsep = data<F>(lse);
        F *dqp = mutable_data<F>(dq), *dkp = mutable_data<F>(dk), *dvp = mutable_data<F>(dv);
        py::gil_scoped_release release;
        if (a.B > 0 && a.H > 0 && a.T > 0) {
            attention_backward(a, doutp, outp, lsep, dqp, dkp, dvp);
        } else {   // no query at all: nothing flows into k and v
            std::fill(dkp, dkp + a.B * a.Hkv * a.S * a.D, F(0));
            std::fill(dvp, dvp + a.B * a.Hkv * a.S * a.D, F(0));
        }
    });
    return py::make_tuple(dq, dk, dv);
}

void bind_attention(py::module_& m) {
    m.def("attention_forward", &py_attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"),
          py::arg("window"), py::arg("alibi_slopes"), py::arg("key_padding_mask"),
          "Flash-style attention: returns (out (B, H, T, D), lse (B, H, T)). window 0 = none; alibi_slopes (H,) "
          "of q's dtype or None; key_padding_mask (B, S) bool (True = keep) or None.");
    m.def("attention_backward", &py_attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("window"), py::arg("alibi_slopes"),
          py::arg("key_padding_mask"), "Gradients (dq, dk, dv) of attention_forward, recomputing scores tile by tile.");
}

}  // namespace minillm
