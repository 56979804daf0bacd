// Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): with feature maps already
// applied (phi(q), phi(k) >= 0, e.g. elu + 1), attention is a running sum, O(T) time and O(D E) state:
//     S_t = sum_{j <= t} phi(k_j) v_j^T  (D x E),   z_t = sum_{j <= t} phi(k_j)  (D)
//     num_t = S_t^T phi(q_t),   den_t = phi(q_t) . z_t + eps,   out_t = num_t / den_t
// (non-causal: S and z sum over every j). The contract is minillm/kernels/reference/linear_attention.py.
// Backward, with dnum_t = dout_t / den_t and dden_t = -(dout_t . out_t) / den_t:
//     dphi(q_t) = S_t dnum_t + z_t dden_t                         (the forward's sums, run again)
//     G_j = sum_{t >= j} phi(q_t) dnum_t^T,  g_j = sum_{t >= j} phi(q_t) dden_t   (sums run backwards)
//     dphi(k_j) = G_j v_j + g_j,   dv_j = G_j^T phi(k_j)
// Nothing of size T x T, nor T x D x E: each (b, h) keeps one D x E state. Heads are one-to-one
// (the Python side repeats GQA's kv heads). Rows (b, h) go over OpenMP threads.
// Bindings at the bottom: linear_attention_forward, linear_attention_backward.
#include <cstdint>
#include <vector>

#include "binding.h"
#include "parallel.h"

namespace minillm {

using std::int64_t;

namespace {

struct Dims {
    int64_t BH, Tn, D, E;
    bool causal;
};

// One (b, h): fq, fk (T, D), v (T, E) -> out (T, E), den (T).
template <typename T>
void forward_head(const Dims& n, const T* fq, const T* fk, const T* v, T* out, T* den, T eps) {
    std::vector<T> S(n.D * n.E, T(0)), z(n.D, T(0));
    auto add = [&](int64_t j) {
        for (int64_t a = 0; a < n.D; ++a) {
            const T ka = fk[j * n.D + a];
            z[a] += ka;
            for (int64_t e = 0; e < n.E; ++e) S[a * n.E + e] += ka * v[j * n.E + e];
        }
    };
    if (!n.causal)
        for (int64_t j = 0; j < n.Tn; ++j) add(j);
    for (int64_t t = 0; t < n.Tn; ++t) {
        if (n.causal) add(t);
        T* o = out + t * n.E;
        for (int64_t e = 0; e < n.E; ++e) o[e] = 0;
        T d = eps;
        for (int64_t a = 0; a < n.D; ++a) {
            const T qa = fq[t * n.D + a];
            d += qa * z[a];
            for (int64_t e = 0; e < n.E; ++e) o[e] += qa * S[a * n.E + e];
        }
        for (int64_t e = 0; e < n.E; ++e) o[e] /= d;
        den[t] = d;
    }
}

template <typename T>
void backward_head(const Dims& n, const T* dout, const T* fq, const T* fk, const T* v, const T* out, const T* den,
                   T* dfq, T* dfk, T* dv) {
    std::vector<T> dnum(n.Tn * n.E), dden(n.Tn);
    for (int64_t t = 0; t < n.Tn; ++t) {
        T s = 0;
        for (int64_t e = 0; e < n.E; ++e) {
            dnum[t * n.E + e] = dout[t * n.E + e] / den[t];
            s += dout[t * n.E + e] * out[t * n.E + e];
        }
        dden[t] = -s / den[t];
    }
    // dphi(q_t) = S_t dnum_t + z_t dden_t
    std::vector<T> S(n.D * n.E, T(0)), z(n.D, T(0));
    auto add = [&](int64_t j) {
        for (int64_t a = 0; a < n.D; ++a) {
            const T ka = fk[j * n.D + a];
            z[a] += ka;
            for (int64_t e = 0; e < n.E; ++e) S[a * n.E + e] += ka * v[j * n.E + e];
        }
    };
    if (!n.causal)
        for (int64_t j = 0; j < n.Tn; ++j) add(j);
    for (int64_t t = 0; t < n.Tn; ++t) {
        if (n.causal) add(t);
        for (int64_t a = 0; a < n.D; ++a) {
            T s = z[a] * dden[t];
            for (int64_t e = 0; e < n.E; ++e) s += S[a * n.E + e] * dnum[t * n.E + e];
            dfq[t * n.D + a] = s;
        }
    }
    // G_j, g_j from the end: dphi(k_j) = G_j v_j + g_j, dv_j = G_j^T phi(k_j)
    std::vector<T> G(n.D * n.E, T(0)), g(n.D, T(0));
    auto take = [&](int64_t t) {
        for (int64_t a = 0; a < n.D; ++a) {
            const T qa = fq[t * n.D + a];
            g[a] += qa * dden[t];
            for (int64_t e = 0; e < n.E; ++e) G[a * n.E + e] += qa * dnum[t * n.E + e];
        }
    };
    if (!n.causal)
        for (int64_t t = 0; t < n.Tn; ++t) take(t);
    for (int64_t j = n.Tn - 1; j >= 0; --j) {
        if (n.causal) take(j);
        for (int64_t e = 0; e < n.E; ++e) dv[j * n.E + e] = 0;
        for (int64_t a = 0; a < n.D; ++a) {
            T s = g[a];
            const T ka = fk[j * n.D + a];
            for (int64_t e = 0; e < n.E; ++e) {
                s += G[a * n.E + e] * v[j * n.E + e];
                dv[j * n.E + e] += G[a * n.E + e] * ka;
            }
            dfk[j * n.D + a] = s;
        }
    }
}

Dims check_dims(const Check& check, const py::array& fq, const py::array& fk, const py::array& v, bool causal) {
    check.floating("phi_q", fq);
    check.same_as("phi_k", fk, "phi_q", fq);
    check.contiguous("phi_k", fk);
    check.floating("v", v);
    check.dtype_of("v", v, "phi_q", fq);
    check.ndim("phi_q", fq, 4, "(B, H, T, D)");
    check.ndim("v", v, 4, "(B, H, T, E)");
    if (v.shape(0) != fq.shape(0) || v.shape(1) != fq.shape(1) || v.shape(2) != fq.shape(2))
        check.fail("v has shape " + shape_str(v) + " but phi_q has shape " + shape_str(fq) +
                   "; B, H and T must match");
    return Dims{fq.shape(0) * fq.shape(1), fq.shape(2), fq.shape(3), v.shape(3), causal};
}

py::tuple py_forward(const py::array& fq, const py::array& fk, const py::array& v, bool causal, double eps) {
    const Check check("linear_attention_forward");
    const Dims n = check_dims(check, fq, fk, v, causal);
    py::array out = empty_like(v), den = empty_like(v, {fq.shape(0), fq.shape(1), n.Tn});
    dispatch_float(fq, [&](auto zero) {
        using T = decltype(zero);
        const T *qp = data<T>(fq), *kp = data<T>(fk), *vp = data<T>(v);
        T *op = mutable_data<T>(out), *dp = mutable_data<T>(den);
        py::gil_scoped_release release;
        parallel_rows(n.BH, n.Tn * n.D * n.E, [&](int64_t r) {
            forward_head(n, qp + r * n.Tn * n.D, kp + r * n.Tn * n.D, vp + r * n.Tn * n.E, op + r * n.Tn * n.E,
                         dp + r * n.Tn, T(eps));
        });
    });
    return py::make_tuple(out, den);
}

py::tuple py_backward(const py::array& dout, const py::array& fq, const py::array& fk, const py::array& v,
                      const py::array& out, const py::array& den, bool causal) {
    const Check check("linear_attention_backward");
    const Dims n = check_dims(check, fq, fk, v, causal);
    check.same_as("dout", dout, "v", v);
    check.same_as("out", out, "v", v);
    check.contiguous("dout", dout);
    check.contiguous("out", out);
    check.dtype_of("den", den, "phi_q", fq);
    check.contiguous("den", den);
    check.shape("den", den, {fq.shape(0), fq.shape(1), n.Tn}, "phi_q", fq);
    py::array dfq = empty_like(fq), dfk = empty_like(fk), dv = empty_like(v);
    dispatch_float(fq, [&](auto zero) {
        using T = decltype(zero);
        const T *gp = data<T>(dout), *qp = data<T>(fq), *kp = data<T>(fk), *vp = data<T>(v), *op = data<T>(out),
                *dp = data<T>(den);
        T *dqp = mutable_data<T>(dfq), *dkp = mutable_data<T>(dfk), *dvp = mutable_data<T>(dv);
        py::gil_scoped_release release;
        parallel_rows(n.BH, n.Tn * n.D * n.E, [&](int64_t r) {
            const int64_t qo = r * n.Tn * n.D, vo = r * n.Tn * n.E;
            backward_head(n, gp + vo, qp + qo, kp + qo, vp + vo, op + vo, dp + r * n.Tn, dqp + qo, dkp + qo, dvp + vo);
        });
    });
    return py::make_tuple(dfq, dfk, dv);
}

}  // namespace

void bind_linear_attention(py::module_& m) {
    m.def("linear_attention_forward", &py_forward, py::arg("phi_q"), py::arg("phi_k"), py::arg("v"),
          py::arg("causal"), py::arg("eps"),
          "(out, den) of linear attention over feature-mapped queries and keys, by running sums.");
    m.def("linear_attention_backward", &py_backward, py::arg("dout"), py::arg("phi_q"), py::arg("phi_k"),
          py::arg("v"), py::arg("out"), py::arg("den"), py::arg("causal"),
          "(dphi_q, dphi_k, dv) of linear_attention_forward, by running sums forwards and backwards.");
}

}  // namespace minillm
