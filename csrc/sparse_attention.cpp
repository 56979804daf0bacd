// Sparse attention: each query attends to a list of keys (dilated windows, strided patterns, block-
// sparse BigBird layouts: minillm/functional/attention_patterns.py makes the lists), so the work is
// proportional to the visible pairs, never T x S. The contract is minillm/kernels/reference/
// sparse_attention.py (the dense softmax with the same mask). The pattern is shared by the batch and
// the heads, in CSR form: query i sees keys indices[indptr[i] .. indptr[i+1]), sorted.
//
//     forward   s_ij = q_i . k_j / sqrt(D),  lse_i = log sum_j exp(s_ij),  out_i = sum_j exp(s_ij - lse_i) v_j
//     backward  p_ij = exp(s_ij - lse_i), dp_ij = dout_i . v_j, ds_ij = p_ij (dp_ij - dout_i . out_i)
//               dq_i = sum_j ds_ij k_j / sqrt(D)        (over query i's keys: the CSR rows)
//               dk_j = sum_i ds_ij q_i / sqrt(D), dv_j = sum_i p_ij dout_i   (over key j's queries: the
//               transposed lists, so every gradient row is summed by one thread in a fixed order)
// For GQA (H = group * Hkv) dk and dv of kv head g sum over its group's query heads.
// Non-finite rules as in attention.cpp: a NaN or +inf score among a query's keys makes its row and lse
// NaN; -inf scores are hidden; a query with no key gets zeros and lse = +inf.
// The loops are plain (the compiler vectorises the dot products); rows go over OpenMP threads.
// Bindings at the bottom: sparse_attention_forward, sparse_attention_backward.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "binding.h"
#include "parallel.h"

namespace minillm {

using std::int64_t;

namespace {

// q . k in a fixed order (the simd reduction's lanes, then their sum): the same on every thread count.
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
    T s = 0;
#if defined(MINILLM_OPENMP)
#pragma omp simd reduction(+ : s)
#endif
    for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
    return s;
}

struct Layout {
    int64_t B, H, Hkv, Tq, S, D;
    const int64_t *indptr, *indices;
};

// One query row: scores into `s` (its keys' count), then out and lse.
template <typename T>
void forward_row(const Layout& L, const T* q, const T* k, const T* v, T* out, T* lse, int64_t r, std::vector<T>& s) {
    const int64_t i = r % L.Tq, h = (r / L.Tq) % L.H, b = r / (L.Tq * L.H);
    const int64_t group = L.H / L.Hkv, kvh = h / group;
    const T* qi = q + r * L.D;
    const T* kb = k + (b * L.Hkv + kvh) * L.S * L.D;
    const T* vb = v + (b * L.Hkv + kvh) * L.S * L.D;
    T* o = out + r * L.D;
    const int64_t begin = L.indptr[i], n = L.indptr[i + 1] - begin;
    const T scale = T(1) / std::sqrt(T(L.D));
    s.resize(n);
    T m = -std::numeric_limits<T>::infinity();
    bool bad = false;                                 // a NaN or +inf score
    for (int64_t c = 0; c < n; ++c) {
        s[c] = dot(qi, kb + L.indices[begin + c] * L.D, L.D) * scale;
        if (std::isnan(s[c]) || s[c] == std::numeric_limits<T>::infinity()) bad = true;
        else if (s[c] > m) m = s[c];
    }
    for (int64_t d = 0; d < L.D; ++d) o[d] = 0;
    if (bad) {
        for (int64_t d = 0; d < L.D; ++d) o[d] = std::numeric_limits<T>::quiet_NaN();
        lse[r] = std::numeric_limits<T>::quiet_NaN();
        return;
    }
    if (m == -std::numeric_limits<T>::infinity()) {   // no key, or every score -inf
        lse[r] = std::numeric_limits<T>::infinity();
        return;
    }
    T total = 0;
    for (int64_t c = 0; c < n; ++c) {
        const T e = std::exp(s[c] - m);
        total += e;
        const T* vj = vb + L.indices[begin + c] * L.D;
        for (int64_t d = 0; d < L.D; ++d) o[d] += e * vj[d];
    }
    for (int64_t d = 0; d < L.D; ++d) o[d] /= total;
    lse[r] = m + std::log(total);
}

template <typename T>
void sparse_forward(const Layout& L, const T* q, const T* k, const T* v, T* out, T* lse) {
    const int64_t rows = L.B * L.H * L.Tq;
    const int64_t work = L.Tq ? L.indptr[L.Tq] / L.Tq * L.D + 1 : 1;
    const int threads = rows > 1 ? threads_for(rows * work) : 1;
    (void)threads;
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        std::vector<T> s;
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic, 16)
#endif
        for (int64_t r = 0; r < rows; ++r) forward_row(L, q, k, v, out, lse, r, s);
    }
}

// The keys' lists of queries (the transposed CSR): key j is seen by queries tindices[tindptr[j] ..).
void transpose_pattern(const Layout& L, std::vector<int64_t>& tindptr, std::vector<int64_t>& tindices) {
    tindptr.assign(L.S + 1, 0);
    const int64_t nnz = L.indptr[L.Tq];
    for (int64_t c = 0; c < nnz; ++c) ++tindptr[L.indices[c] + 1];
    for (int64_t j = 0; j < L.S; ++j) tindptr[j + 1] += tindptr[j];
    tindices.resize(nnz);
    std::vector<int64_t> fill(tindptr.begin(), tindptr.end() - 1);
    for (int64_t i = 0; i < L.Tq; ++i)                // queries in order: each key's list comes sorted
        for (int64_t c = L.indptr[i]; c < L.indptr[i + 1]; ++c) tindices[fill[L.indices[c]]++] = i;
}

template <typename T>
void sparse_backward(const Layout& L, const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse,
                     T* dq, T* dk, T* dv) {
    const int64_t D = L.D, group = L.H / L.Hkv;
    const T scale = T(1) / std::sqrt(T(D));
    const int64_t rows = L.B * L.H * L.Tq;
    std::vector<T> delta(rows);                       // rowsum(dout * out)
    for (int64_t r = 0; r < rows; ++r) delta[r] = dot(dout + r * D, out + r * D, D);
    const int64_t work = (L.Tq ? L.indptr[L.Tq] / L.Tq : 0) * D + 1;
    const int threads = rows > 1 ? threads_for(rows * work) : 1;
    (void)threads;
    // ds_ij for query row r (b, h, i) and key j
    auto ds_p = [&](int64_t r, int64_t j, T& p) {
        const int64_t h = (r / L.Tq) % L.H, b = r / (L.Tq * L.H);
        const int64_t kv = (b * L.Hkv + h / group) * L.S + j;
        p = std::exp(dot(q + r * D, k + kv * D, D) * scale - lse[r]);
        return p * (dot(dout + r * D, v + kv * D, D) - delta[r]);
    };
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads) if (threads > 1)
#endif
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r % L.Tq, h = (r / L.Tq) % L.H, b = r / (L.Tq * L.H);
        const T* kb = k + (b * L.Hkv + h / group) * L.S * D;
        T* g = dq + r * D;
        for (int64_t d = 0; d < D; ++d) g[d] = 0;
        for (int64_t c = L.indptr[i]; c < L.indptr[i + 1]; ++c) {
            T p;
            const T ds = ds_p(r, L.indices[c], p) * scale;
            const T* kj = kb + L.indices[c] * D;
            for (int64_t d = 0; d < D; ++d) g[d] += ds * kj[d];
        }
    }
    std::vector<int64_t> tindptr, tindices;
    transpose_pattern(L, tindptr, tindices);
    const int64_t key_rows = L.B * L.Hkv * L.S;
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads) if (threads > 1)
#endif
    for (int64_t kr = 0; kr < key_rows; ++kr) {
        const int64_t j = kr % L.S, kvh = (kr / L.S) % L.Hkv, b = kr / (L.S * L.Hkv);
        T *gk = dk + kr * D, *gv = dv + kr * D;
        for (int64_t d = 0; d < D; ++d) gk[d] = gv[d] = 0;
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
            for (int64_t c = tindptr[j]; c < tindptr[j + 1]; ++c) {
                const int64_t r = (b * L.H + h) * L.Tq + tindices[c];
                T p;
                const T ds = ds_p(r, j, p) * scale;
                const T *qi = q + r * D, *gi = dout + r * D;
                for (int64_t d = 0; d < D; ++d) {
                    gk[d] += ds * qi[d];
                    gv[d] += p * gi[d];
                }
            }
    }
}

Layout check_layout(const Check& check, const py::array& q, const py::array& k, const py::array& v,
                    const py::array& indptr, const py::array& indices) {
    check.floating("q", q);
    check.same_as("k", k, "v", v);
    check.dtype_of("k", k, "q", q);
    check.contiguous("k", k);
    check.contiguous("v", v);
    check.ndim("q", q, 4, "(B, H, T, D)");
    check.ndim("k", k, 4, "(B, Hkv, S, D)");
    Layout L{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), nullptr, nullptr};
    if (k.shape(0) != L.B || k.shape(3) != L.D || L.Hkv < 1 || L.H % L.Hkv)
        check.fail("q has shape " + shape_str(q) + " and k " + shape_str(k) +
                   "; batch and head dim must match and q's heads be a multiple of k's");
    check.typed<int64_t>("indptr", indptr, 1, "int64");
    check.typed<int64_t>("indices", indices, 1, "int64");
    check.shape("indptr", indptr, {L.Tq + 1}, "q", q, "T + 1 offsets, one list of keys per query");
    L.indptr = data<int64_t>(indptr);
    L.indices = data<int64_t>(indices);
    if (L.indptr[0] != 0 || L.indptr[L.Tq] != indices.shape(0))
        check.fail("indptr must start at 0 and end at len(indices) = " + std::to_string(indices.shape(0)));
    for (int64_t i = 0; i < L.Tq; ++i) {
        if (L.indptr[i + 1] < L.indptr[i]) check.fail("indptr must not decrease");
        for (int64_t c = L.indptr[i]; c < L.indptr[i + 1]; ++c)
            if (L.indices[c] < 0 || L.indices[c] >= L.S || (c > L.indptr[i] && L.indices[c] <= L.indices[c - 1]))
                check.fail("indices of each query must be increasing key positions in [0, S = " +
                           std::to_string(L.S) + ")");
    }
    return L;
}

py::tuple py_sparse_forward(const py::array& q, const py::array& k, const py::array& v, const py::array& indptr,
                            const py::array& indices) {
    const Check check("sparse_attention_forward");
    const Layout L = check_layout(check, q, k, v, indptr, indices);
    py::array out = empty_like(q), lse = empty_like(q, {L.B, L.H, L.Tq});
    dispatch_float(q, [&](auto zero) {
        using T = decltype(zero);
        const T *qp = data<T>(q), *kp = data<T>(k), *vp = data<T>(v);
        T *op = mutable_data<T>(out), *lp = mutable_data<T>(lse);
        py::gil_scoped_release release;
        sparse_forward(L, qp, kp, vp, op, lp);
    });
    return py::make_tuple(out, lse);
}

py::tuple py_sparse_backward(const py::array& dout, const py::array& q, const py::array& k, const py::array& v,
                             const py::array& out, const py::array& lse, const py::array& indptr,
                             const py::array& indices) {
    const Check check("sparse_attention_backward");
    const Layout L = check_layout(check, q, k, v, indptr, indices);
    check.same_as("dout", dout, "q", q);
    check.same_as("out", out, "q", q);
    check.contiguous("dout", dout);
    check.contiguous("out", out);
    check.dtype_of("lse", lse, "q", q);
    check.contiguous("lse", lse);
    check.shape("lse", lse, {L.B, L.H, L.Tq}, "q", q);
    py::array dq = empty_like(q), dk = empty_like(k), dv = empty_like(v);
    dispatch_float(q, [&](auto zero) {
        using T = decltype(zero);
        const T *gp = data<T>(dout), *qp = data<T>(q), *kp = data<T>(k), *vp = data<T>(v), *op = data<T>(out),
                *lp = data<T>(lse);
        T *dqp = mutable_data<T>(dq), *dkp = mutable_data<T>(dk), *dvp = mutable_data<T>(dv);
        py::gil_scoped_release release;
        sparse_backward(L, gp, qp, kp, vp, op, lp, dqp, dkp, dvp);
    });
    return py::make_tuple(dq, dk, dv);
}

}  // namespace

void bind_sparse_attention(py::module_& m) {
    m.def("sparse_attention_forward", &py_sparse_forward, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("indptr"), py::arg("indices"),
          "(out, lse) of softmax attention over each query's list of keys (CSR indptr (T + 1,), indices int64).");
    m.def("sparse_attention_backward", &py_sparse_backward, py::arg("dout"), py::arg("q"), py::arg("k"),
          py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("indptr"), py::arg("indices"),
          "(dq, dk, dv) of sparse_attention_forward, over the visible pairs only.");
}

}  // namespace minillm
