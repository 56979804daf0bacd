// Attention of a batch's new tokens over a paged KV cache, read through each sequence's block table
// (the serving engine's step: minillm/serve/).
//
// The cache is a pool of fixed-size blocks, k_pages, v_pages (P, Hkv, bs, D): block b holds bs
// consecutive positions of one sequence. A sequence's block table lists its blocks in order, so its
// key j lives at block_tables[s, j / bs], slot j % bs. The N new tokens of a step are packed in one
// row (prefill chunks and decode tokens of several sequences side by side): token i belongs to
// sequence seq_of[i] and sits at position positions[i]; its own key was written before the call.
// Per token i and query head h, over the keys j of its sequence it may see (causal, window):
//     s_j = q_i.k_j / sqrt(D) - slope_h * (p_i - j)
//     out_i = sum_j softmax(s)_j v_j
// the contract of kv_attention_forward (kv_attention.cpp) for one sequence whose cache is contiguous.
// The scores of a block's keys are one call of attention's tile helpers (keys are contiguous inside
// a block), the P V product one accumulating matmul_tile per block. Reference:
// minillm/kernels/reference/paged_attention.py. Binding at the bottom: paged_attention_forward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attention_tiles.h"
#include "binding.h"
#include "parallel.h"
#include "simd.h"

namespace minillm {

using std::int64_t;

namespace {

template <typename F>
struct PagedArgs {
    const F* q;                  // (N, H, D)
    const F* k;                  // (P, Hkv, bs, D)
    const F* v;
    const int64_t* tables;       // (S, M)
    const int64_t* seq_of;       // (N,)
    const int64_t* positions;    // (N,)
    int64_t N, H, Hkv, bs, D, M;
    int64_t window;              // 0: none
    const F* alibi_slopes;       // (H,) or nullptr
};

// out row of token i, query head h; s: a buffer of (position + 1) scores.
template <typename F>
void attend_token_head(const PagedArgs<F>& a, Isa isa, int64_t i, int64_t h, F* s, F* out) {
    const int64_t kvh = h / (a.H / a.Hkv), D = a.D, bs = a.bs, p = a.positions[i];
    const int64_t* table = a.tables + a.seq_of[i] * a.M;
    const attn::Visibility vis{true, a.window, nullptr, p + 1};
    const F* slope = a.alibi_slopes ? a.alibi_slopes + h : nullptr;
    const F* q = a.q + (i * a.H + h) * D;
    F* o = out + (i * a.H + h) * D;
    int64_t lo, hi;
    vis.key_band(p, p, lo, hi);                                       // keys [lo, hi), hi = p + 1
    const int64_t n = hi - lo;
    const int64_t page_stride = a.Hkv * bs * D, head_offset = kvh * bs * D;
    for (int64_t j = lo; j < hi;) {                                   // scores, one block at a time
        const int64_t slot = j % bs, count = std::min(bs - slot, hi - j);
        const F* k = a.k + table[j / bs] * page_stride + head_offset + slot * D;
        attn::scores(isa, vis, slope, D, q, k, static_cast<const F*>(nullptr), p, j, 1, count, s + (j - lo));
        j += count;
    }
    const F m = attn::row_max(isa, s, n);
    if (n == 0 || m == F(-INFINITY)) {
        std::fill(o, o + D, F(0));
        return;
    }
    const F l = attn::exp_shifted(isa, s, s, n, m);
    for (int64_t j = lo; j < hi;) {                                   // o = P V / l, block by block
        const int64_t slot = j % bs, count = std::min(bs - slot, hi - j);
        const F* v = a.v + table[j / bs] * page_stride + head_offset + slot * D;
        attn::matmul_tile<F>(isa, 1, D, count, F(1) / l, s + (j - lo), count, false, v, D, o, D, j != lo);
        j += count;
    }
}

template <typename F>
void paged_attention_forward(PagedArgs<F> a, int64_t max_position, F* out) {
    if (a.window > max_position + 1) a.window = 0;                    // as wide as no window
    const Isa isa = simd_isa<F>();
    const int64_t tasks = a.N * a.H;
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads_for(tasks * (max_position + 1) * a.D)) if (tasks > 1)
#endif
    {
        std::vector<F> s(static_cast<size_t>(max_position + 1));
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(static)
#endif
        for (int64_t t = 0; t < tasks; ++t) attend_token_head(a, isa, t / a.H, t % a.H, s.data(), out);
    }
}

}  // namespace

// ---- binding

static py::array py_paged_attention_forward(const py::array& q, const py::array& k_pages, const py::array& v_pages,
                                            const py::array& block_tables, const py::array& seq_of,
                                            const py::array& positions, std::int64_t window,
                                            const py::object& alibi_slopes) {
    const Check check("paged_attention_forward");
    check.floating("q", q);
    check.floating("k_pages", k_pages);
    check.ndim("q", q, 3, "(N, H, D)");
    check.ndim("k_pages", k_pages, 4, "(P, Hkv, bs, D)");
    check.same_as("k_pages", k_pages, "v_pages", v_pages);
    check.same_dtype("q", q, "k_pages", k_pages);
    check.typed<std::int64_t>("block_tables", block_tables, 2, "int64");
    check.typed<std::int64_t>("seq_of", seq_of, 1, "int64");
    check.typed<std::int64_t>("positions", positions, 1, "int64");
    const int64_t N = q.shape(0), H = q.shape(1), D = q.shape(2);
    const int64_t P = k_pages.shape(0), Hkv = k_pages.shape(1), bs = k_pages.shape(2);
    const int64_t S = block_tables.shape(0), M = block_tables.shape(1);
    if (k_pages.shape(3) != D)
        check.fail("q has shape " + shape_str(q) + " and k_pages " + shape_str(k_pages) + "; the head dim must match");
    if (D < 1 || bs < 1) check.fail("the head dim and the block size must be >= 1, got " + shape_str(k_pages));
    if (Hkv < 1 || H % Hkv != 0)
        check.fail("q has " + std::to_string(H) + " heads but k_pages has " + std::to_string(Hkv) +
                   "; n_heads must be a multiple of n_kv_heads >= 1");
    check.shape("seq_of", seq_of, {N}, "q", q, "one sequence per new token");
    check.shape("positions", positions, {N}, "q", q, "one position per new token");
    if (window < 0) check.fail("window must be >= 0 (0 = no window), got " + std::to_string(window));
    const int64_t* seqs = data<std::int64_t>(seq_of);
    const int64_t* pos = data<std::int64_t>(positions);
    const int64_t* tables = data<std::int64_t>(block_tables);
    int64_t max_position = 0;
    for (int64_t i = 0; i < N; ++i) {                                  // every block a token reads exists
        if (seqs[i] < 0 || seqs[i] >= S)
            check.fail("seq_of[" + std::to_string(i) + "] = " + std::to_string(seqs[i]) + " is not a row of the " +
                       std::to_string(S) + " block tables");
        if (pos[i] < 0 || pos[i] / bs >= M)
            check.fail("positions[" + std::to_string(i) + "] = " + std::to_string(pos[i]) + " is outside the " +
                       std::to_string(M) + " blocks of " + std::to_string(bs) + " positions of a block table");
        for (int64_t b = 0; b <= pos[i] / bs; ++b) {
            const int64_t page = tables[seqs[i] * M + b];
            if (page < 0 || page >= P)
                check.fail("block_tables[" + std::to_string(seqs[i]) + ", " + std::to_string(b) + "] = " +
                           std::to_string(page) + " is not one of the " + std::to_string(P) + " blocks");
        }
        max_position = std::max(max_position, pos[i]);
    }
    py::array alibi;
    const bool has_alibi = check.optional("alibi_slopes", alibi_slopes, alibi);
    if (has_alibi) {
        check.floating("alibi_slopes", alibi);
        check.shape("alibi_slopes", alibi, {H}, "q", q, "one slope per head");
        check.dtype_of("alibi_slopes", alibi, "q", q);
    }
    py::array out = empty_like(q);
    dispatch_float(q, [&](auto zero) {
        using F = decltype(zero);
        const PagedArgs<F> a{data<F>(q), data<F>(k_pages), data<F>(v_pages), tables, seqs, pos,
                             N, H, Hkv, bs, D, M, window, has_alibi ? data<F>(alibi) : nullptr};
        F* outp = mutable_data<F>(out);
        py::gil_scoped_release release;
        if (N > 0 && H > 0) paged_attention_forward(a, max_position, outp);
    });
    return out;
}

void bind_paged_attention(py::module_& m) {
    m.def("paged_attention_forward", &py_paged_attention_forward, py::arg("q"), py::arg("k_pages"),
          py::arg("v_pages"), py::arg("block_tables"), py::arg("seq_of"), py::arg("positions"), py::arg("window"),
          py::arg("alibi_slopes"),
          "Causal attention of N packed new tokens q (N, H, D) over a paged KV cache k_pages, v_pages "
          "(P, Hkv, bs, D): token i of sequence seq_of[i] at positions[i] sees that sequence's keys 0..positions[i], "
          "found through block_tables (S, M) int64. window 0 = none; alibi_slopes (H,) or None.");
}

}  // namespace minillm
