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
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attention_tiles.h"
#include "kernels.h"
#include "simd.h"

namespace minillm {

using std::int64_t;
using attn::matmul_tile;

namespace {

constexpr int64_t kBr = 64;   // query rows per tile
constexpr int64_t kBc = 32;   // keys per tile
constexpr int64_t kMinRowsToTranspose = 4;   // fewer query rows: scores by dot products (decode)

// Which (query position, key) pairs are visible, for one batch row.
struct Visibility {
    bool causal;
    int64_t window;      // 0: no window
    const bool* keep;    // (S,) key padding of this batch row, or nullptr
    int64_t S;

    // Keys [lo, hi) that position p may see, padding aside (may be empty or reach outside [0, S)).
    void keys_of(int64_t p, int64_t& lo, int64_t& hi) const {
        lo = window ? p - window + 1 : INT64_MIN / 2;
        hi = causal ? p + 1 : (window ? p + window : INT64_MAX / 2);
    }
    // Keys [lo, hi) within [0, S) that some position in [p0, p1] may see.
    void key_band(int64_t p0, int64_t p1, int64_t& lo, int64_t& hi) const {
        int64_t unused;
        keys_of(p0, lo, unused);
        keys_of(p1, unused, hi);
        lo = std::max<int64_t>(lo, 0);
        hi = std::max(std::min(hi, S), lo);
    }
    // Positions [lo, hi) that may see some key in [j0, j1): the inverse of key_band.
    void position_band(int64_t j0, int64_t j1, int64_t& lo, int64_t& hi) const {
        lo = causal ? j0 : (window ? j0 - window + 1 : INT64_MIN / 2);
        hi = window ? j1 - 1 + window : INT64_MAX / 2;
    }
    // True when every pair in [p0, p1] x [j0, j1) is visible, so the tile needs no element mask.
    bool all_visible(int64_t p0, int64_t p1, int64_t j0, int64_t j1) const {
        if (causal && j1 - 1 > p0) return false;
        if (window && std::max(p1 - j0, j1 - 1 - p0) >= window) return false;
        if (keep)
            for (int64_t j = j0; j < j1; ++j)
                if (!keep[j]) return false;
        return true;
    }
};

// S (br, bc) of positions p0.. and keys j0..: add ALiBi and set hidden entries to -inf.
template <typename F>
void bias_and_mask(const Visibility& vis, bool mask, const F* slope, int64_t p0, int64_t j0, int64_t br,
                   int64_t bc, F* s) {
    for (int64_t r = 0; r < br; ++r) {
        const int64_t p = p0 + r;
        F* row = s + r * bc;
        int64_t lo = 0, hi = bc;                     // the visible columns [lo, hi) of this row
        if (mask) {
            vis.keys_of(p, lo, hi);
            lo = std::min(std::max<int64_t>(lo - j0, 0), bc);
            hi = std::min(std::max<int64_t>(hi - j0, lo), bc);
            std::fill(row, row + lo, F(-INFINITY));
            std::fill(row + hi, row + bc, F(-INFINITY));
        }
        if (mask && vis.keep)
            for (int64_t c = lo; c < hi; ++c)
                if (!vis.keep[j0 + c]) row[c] = F(-INFINITY);
        if (slope)                                   // -inf stays -inf
            for (int64_t c = lo; c < hi; ++c) row[c] -= *slope * F(vis.causal ? p - (j0 + c) : std::abs(p - (j0 + c)));
    }
}

// S = scale Q K^T for one (query tile, key tile), with bias and mask. k is the key tile (bc, D);
// kt, if given, the same tile transposed (D, bc) for the matmul. Without it (a few query rows, as in
// a decode step) each score is one dot product, which saves transposing K for a single row.
template <typename F>
void scores(const AttentionArgs<F>& a, bool simd, const Visibility& vis, int64_t h, const F* q, const F* k,
            const F* kt, int64_t p0, int64_t j0, int64_t br, int64_t bc, F* s) {
    const int64_t D = a.D;
    const F scale = F(1) / std::sqrt(F(D));
    if (kt) {
        matmul_tile<F>(simd, br, bc, D, scale, q, D, false, kt, bc, s, bc, false);
    } else {
        for (int64_t r = 0; r < br; ++r)
            for (int64_t c = 0; c < bc; ++c) s[r * bc + c] = scale * attn::dot_row(simd, q + r * D, k + c * D, D);
    }
    const bool mask = !vis.all_visible(p0, p0 + br - 1, j0, j0 + bc);
    const F* slope = a.alibi_slopes ? a.alibi_slopes + h : nullptr;
    if (mask || slope) bias_and_mask(vis, mask, slope, p0, j0, br, bc, s);
}

// ---- forward

// One query tile [i0, i0 + br) of head h in batch b: out and lse rows.
template <typename F>
void forward_tile(const AttentionArgs<F>& a, bool simd, int64_t b, int64_t h, int64_t i0, int64_t br, F* kt, F* s,
                  F* o, F* m, F* l, F* out, F* lse) {
    const int64_t T = a.T, S = a.S, D = a.D, kvh = h / (a.H / a.Hkv);
    const F* q = a.q + ((b * a.H + h) * T + i0) * D;                 // (br, D)
    const F* k = a.k + (b * a.Hkv + kvh) * S * D;                    // (S, D)
    const F* v = a.v + (b * a.Hkv + kvh) * S * D;                    // (S, D)
    const Visibility vis{a.causal, a.window, a.key_padding_mask ? a.key_padding_mask + b * S : nullptr, S};
    const int64_t p0 = S - T + i0;
    int64_t lo, hi;
    vis.key_band(p0, p0 + br - 1, lo, hi);

    std::fill(m, m + br, F(-INFINITY));
    std::fill(l, l + br, F(0));
    std::fill(o, o + br * D, F(0));
    for (int64_t j0 = lo; j0 < hi; j0 += kBc) {
        const int64_t bc = std::min(kBc, hi - j0);
        const bool transpose = br >= kMinRowsToTranspose;
        if (transpose) attn::transpose_tile(simd, bc, D, k + j0 * D, D, kt);   // (D, bc)
        scores(a, simd, vis, h, q, k + j0 * D, transpose ? kt : nullptr, p0, j0, br, bc, s);   // (br, bc)
        for (int64_t r = 0; r < br; ++r) {                           // online softmax, S becomes P
            F* sr = s + r * bc;
            const F m_new = std::max(m[r], attn::row_max(simd, sr, bc));
            if (m_new == F(-INFINITY)) {                             // nothing visible yet
                std::fill(sr, sr + bc, F(0));
                continue;
            }
            const F correction = std::exp(m[r] - m_new);             // 0 on the first visible tile
            l[r] = l[r] * correction + attn::exp_shifted(simd, sr, sr, bc, m_new);
            if (correction != F(1)) attn::scale_row(simd, o + r * D, D, correction);
            m[r] = m_new;
        }
        matmul_tile<F>(simd, br, D, bc, F(1), s, bc, false, v + j0 * D, D, o, D, true);   // O += P V
    }
    F* out_rows = out + ((b * a.H + h) * T + i0) * D;
    F* lse_rows = lse + (b * a.H + h) * T + i0;
    for (int64_t r = 0; r < br; ++r) {
        if (l[r] > F(0)) {
            attn::scale_row(simd, o + r * D, D, F(1) / l[r]);
            std::memcpy(out_rows + r * D, o + r * D, sizeof(F) * size_t(D));
            lse_rows[r] = m[r] + std::log(l[r]);
        } else {
            std::fill(out_rows + r * D, out_rows + (r + 1) * D, F(0));
            lse_rows[r] = F(INFINITY);
        }
    }
}

// ---- backward

// Key tile [j0, j0 + bc) of kv head kvh against query head h: accumulates dq, dk, dv.
template <typename F>
void backward_key_tile(const AttentionArgs<F>& a, bool simd, const Visibility& vis, int64_t b, int64_t h,
                       int64_t j0, int64_t bc, const F* dout, const F* lse, const F* delta, F* kt, F* vt, F* p,
                       F* dp, F* dq, F* dk, F* dv) {
    const int64_t T = a.T, S = a.S, D = a.D, kvh = h / (a.H / a.Hkv), off = S - T;
    int64_t lo, hi;
    vis.position_band(j0, j0 + bc, lo, hi);
    lo = std::max<int64_t>(0, lo - off);                             // positions -> query rows
    hi = std::min<int64_t>(T, hi - off);
    if (lo >= hi) return;
    const F scale = F(1) / std::sqrt(F(D));
    const int64_t head = (b * a.H + h) * T;                          // first row of head h
    const F* k = a.k + ((b * a.Hkv + kvh) * S + j0) * D;             // (bc, D)
    const F* v = a.v + ((b * a.Hkv + kvh) * S + j0) * D;
    attn::transpose_tile(simd, bc, D, k, D, kt);                           // (D, bc)
    attn::transpose_tile(simd, bc, D, v, D, vt);
    for (int64_t i0 = lo; i0 < hi; i0 += kBr) {
        const int64_t br = std::min(kBr, hi - i0);
        const F* q = a.q + (head + i0) * D;                          // (br, D)
        const F* dor = dout + (head + i0) * D;
        scores(a, simd, vis, h, q, k, kt, off + i0, j0, br, bc, p);  // S (br, bc)
        for (int64_t r = 0; r < br; ++r) attn::exp_shifted(simd, p + r * bc, p + r * bc, bc, lse[head + i0 + r]);
        matmul_tile<F>(simd, br, bc, D, F(1), dor, D, false, vt, bc, dp, bc, false);          // dP = dO V^T
        for (int64_t r = 0; r < br; ++r) attn::softmax_grad_row(simd, p + r * bc, dp + r * bc, bc, delta[i0 + r]);
        matmul_tile<F>(simd, br, D, bc, scale, dp, bc, false, k, D, dq + (head + i0) * D, D, true);   // dQ += s dS K
        matmul_tile<F>(simd, bc, D, br, F(1), p, bc, true, dor, D, dv, D, true);                  // dV += P^T dO
        matmul_tile<F>(simd, bc, D, br, scale, dp, bc, true, q, D, dk, D, true);                  // dK += s dS^T Q
    }
}

template <typename F>
bool big_enough(const AttentionArgs<F>& a) {
    return a.B * a.H * a.T * std::max<int64_t>(a.S, 1) * a.D >= kParallelThreshold;
}

}  // namespace

// A window wider than any distance |p - j| < S + T changes nothing; clamping it keeps p +- window in range.
template <typename F>
AttentionArgs<F> clamp_window(AttentionArgs<F> a) {
    if (a.window > a.S + a.T) a.window = a.S + a.T + 1;
    return a;
}

template <typename F>
void attention_forward(const AttentionArgs<F>& args, F* out, F* lse) {
    const AttentionArgs<F> a = clamp_window(args);
    const bool simd = std::is_same<F, float>::value && use_avx2();
    const int64_t tiles = (a.T + kBr - 1) / kBr, tasks = a.B * a.H * tiles;
#if defined(MINILLM_OPENMP)
#pragma omp parallel if (tasks > 1 && big_enough(a))
#endif
    {
        std::vector<F> kt(a.D * kBc), s(kBr * kBc), o(kBr * a.D), m(kBr), l(kBr);
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic)
#endif
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t bh = t / tiles, i0 = (t % tiles) * kBr;
            forward_tile(a, simd, bh / a.H, bh % a.H, i0, std::min(kBr, a.T - i0), kt.data(), s.data(), o.data(),
                         m.data(), l.data(), out, lse);
        }
    }
}

template <typename F>
void attention_backward(const AttentionArgs<F>& args, const F* dout, const F* out, const F* lse, F* dq, F* dk,
                        F* dv) {
    const AttentionArgs<F> a = clamp_window(args);
    const bool simd = std::is_same<F, float>::value && use_avx2();
    const int64_t T = a.T, S = a.S, D = a.D, group = a.H / a.Hkv, kv_heads = a.B * a.Hkv;
    const int64_t key_tiles = (S + kBc - 1) / kBc;
    // A task is (b, kv head, stripe): stripe s of `stripes` owns key tiles s, s + stripes, ..., so its
    // rows of dK and dV have one writer, and interleaving keeps causal stripes equally busy. One stripe
    // unless there are fewer kv heads than threads (e.g. MQA at batch 1); then stripe s > 0 adds its dQ
    // into its own dq-sized buffer (linear in T), summed into dq at the end.
    int64_t stripes = 1;
#if defined(MINILLM_OPENMP)
    if (big_enough(a)) stripes = std::max<int64_t>(1, std::min(key_tiles, omp_get_max_threads() / kv_heads));
#endif
    const int64_t dq_size = a.B * a.H * T * D, tasks = kv_heads * stripes;
    std::vector<F> dq_more(size_t((stripes - 1) * dq_size));
#if defined(MINILLM_OPENMP)
#pragma omp parallel if (tasks > 1 && big_enough(a))
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
                    delta[i] = attn::dot_row(simd, dout + (head + i) * D, out + (head + i) * D, D);
                for (int64_t tile = stripe; tile < key_tiles; tile += stripes) {
                    const int64_t j0 = tile * kBc;
                    backward_key_tile(a, simd, vis, b, h, j0, std::min(kBc, S - j0), dout, lse, delta.data(),
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

template void attention_forward<float>(const AttentionArgs<float>&, float*, float*);
template void attention_forward<double>(const AttentionArgs<double>&, double*, double*);
template void attention_backward<float>(const AttentionArgs<float>&, const float*, const float*, const float*, float*,
                                        float*, float*);
template void attention_backward<double>(const AttentionArgs<double>&, const double*, const double*, const double*,
                                         double*, double*, double*);

}  // namespace minillm
