// The one pybind11 bindings file. Every function here validates what it is given
// (dtype, contiguity, shapes) and raises ValueError before a kernel touches memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include <string>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace py = pybind11;
using namespace minillm;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks that `a` is a C-contiguous float32/float64 array with at least one dimension.
void check_float_array(const char* fn, const char* name, const py::array& a) {
    if (!(a.dtype().is(py::dtype::of<float>()) || a.dtype().is(py::dtype::of<double>())))
        throw py::value_error(std::string(fn) + ": " + name + " must be float32 or float64, got " +
                              std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) + ": " + name + " must be C-contiguous (use np.ascontiguousarray)");
    if (a.ndim() < 1) throw py::value_error(std::string(fn) + ": " + name + " must have at least one dimension");
}

void check_same(const char* fn, const char* name_a, const py::array& a, const char* name_b, const py::array& b) {
    if (!a.dtype().is(b.dtype()))
        throw py::value_error(std::string(fn) + ": " + name_a + " and " + name_b + " must have the same dtype, got " +
                              std::string(py::str(a.dtype())) + " and " + std::string(py::str(b.dtype())));
    bool same = a.ndim() == b.ndim();
    for (py::ssize_t i = 0; same && i < a.ndim(); ++i) same = a.shape(i) == b.shape(i);
    if (!same)
        throw py::value_error(std::string(fn) + ": " + name_a + " has shape " + shape_str(a) + " but " + name_b +
                              " has shape " + shape_str(b) + "; they must match");
}

py::array empty_like(const py::array& a) {
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    return py::array(a.dtype(), shape);
}

template <typename T>
void softmax_forward_t(const py::array& x, py::array& y) {
    const std::int64_t n = x.shape(x.ndim() - 1), rows = n ? x.size() / n : 0;
    const T* xp = static_cast<const T*>(x.data());
    T* yp = static_cast<T*>(y.mutable_data());
    py::gil_scoped_release release;
    if (rows) softmax_forward<T>(xp, yp, rows, n);
}

template <typename T>
void softmax_backward_t(const py::array& dy, const py::array& y, py::array& dx) {
    const std::int64_t n = y.shape(y.ndim() - 1), rows = n ? y.size() / n : 0;
    const T* dyp = static_cast<const T*>(dy.data());
    const T* yp = static_cast<const T*>(y.data());
    T* dxp = static_cast<T*>(dx.mutable_data());
    py::gil_scoped_release release;
    if (rows) softmax_backward<T>(dyp, yp, dxp, rows, n);
}

py::array py_softmax_forward(const py::array& x) {
    check_float_array("softmax_forward", "x", x);
    py::array y = empty_like(x);
    if (x.dtype().is(py::dtype::of<float>())) softmax_forward_t<float>(x, y);
    else softmax_forward_t<double>(x, y);
    return y;
}

py::array py_softmax_backward(const py::array& dy, const py::array& y) {
    check_float_array("softmax_backward", "dy", dy);
    check_float_array("softmax_backward", "y", y);
    check_same("softmax_backward", "dy", dy, "y", y);
    py::array dx = empty_like(y);
    if (y.dtype().is(py::dtype::of<float>())) softmax_backward_t<float>(dy, y, dx);
    else softmax_backward_t<double>(dy, y, dx);
    return dx;
}


// ---- bpe
// Byte-level BPE (csrc/bpe.cpp). Python str arrives as its UTF-8 buffer (which lives as long as
// the str); the GIL is released around the merge loops.

std::string_view utf8_view(const char* fn, PyObject* text) {
    if (!PyUnicode_Check(text)) throw py::type_error(std::string(fn) + ": expected str");
    Py_ssize_t n = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text, &n);
    if (!data) {
        PyErr_Clear();
        throw py::value_error(std::string(fn) + ": text is not valid Unicode (it holds a lone surrogate); "
                              "it cannot be encoded as UTF-8");
    }
    return std::string_view(data, static_cast<std::size_t>(n));
}

void py_bpe_set_char_classes(const py::array& table) {
    if (!table.dtype().is(py::dtype::of<std::uint8_t>()) || table.ndim() != 1 || table.shape(0) != 0x110000 ||
        !(table.flags() & py::array::c_style))
        throw py::value_error("bpe_set_char_classes: table must be a contiguous uint8 array of shape (1114112,)");
    bpe::set_char_classes(static_cast<const std::uint8_t*>(table.data()), 0x110000);
}

void check_classes(const char* fn) {
    if (!bpe::have_char_classes())
        throw py::value_error(std::string(fn) + ": call bpe_set_char_classes first (minillm.tokenizers does)");
}

py::list py_bpe_gpt2_split(const py::str& text) {
    check_classes("bpe_gpt2_split");
    const std::string_view s = utf8_view("bpe_gpt2_split", text.ptr());
    py::list out;
    for (auto [start, len] : bpe::gpt2_split(s)) out.append(py::str(s.data() + start, len));
    return out;
}

std::unique_ptr<bpe::Encoder> py_bpe_encoder_new(const py::dict& ranks) {
    std::vector<std::pair<std::string, std::int32_t>> tokens;
    tokens.reserve(ranks.size());
    for (auto item : ranks) {
        if (!py::isinstance<py::bytes>(item.first) || !py::isinstance<py::int_>(item.second))
            throw py::value_error("BPEEncoder: ranks must map bytes to int");
        const long long r = item.second.cast<long long>();
        if (r < 0 || r >= INT32_MAX) throw py::value_error("BPEEncoder: rank " + std::to_string(r) + " is out of range");
        tokens.emplace_back(item.first.cast<std::string>(), static_cast<std::int32_t>(r));
    }
    try {
        return std::make_unique<bpe::Encoder>(tokens);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(std::string("BPEEncoder: ") + e.what() + "; a byte-level vocabulary needs all 256 bytes");
    }
}

py::list py_bpe_encode_gpt2(const bpe::Encoder& enc, const py::str& text) {
    check_classes("BPEEncoder.encode_gpt2");
    const std::string_view s = utf8_view("BPEEncoder.encode_gpt2", text.ptr());
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2(s);
    }
    return py::cast(ids);
}

py::list py_bpe_encode_gpt2_batch(const bpe::Encoder& enc, const py::list& texts, int num_threads) {
    check_classes("BPEEncoder.encode_gpt2_batch");
    if (num_threads < 1)
        throw py::value_error("BPEEncoder.encode_gpt2_batch: num_threads must be >= 1, got " + std::to_string(num_threads));
    std::vector<std::string_view> views;
    views.reserve(texts.size());
    for (auto t : texts) views.push_back(utf8_view("BPEEncoder.encode_gpt2_batch", t.ptr()));
    std::vector<std::vector<std::int32_t>> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2_batch(views, num_threads);
    }
    return py::cast(ids);
}

py::list py_bpe_encode_pieces(const bpe::Encoder& enc, const py::list& pieces) {
    std::vector<std::string_view> views;
    views.reserve(pieces.size());
    for (auto p : pieces) views.push_back(utf8_view("BPEEncoder.encode_pieces", p.ptr()));
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_pieces(views);
    }
    return py::cast(ids);
}

py::list py_bpe_train(const py::list& words, const py::list& counts, std::int64_t n_merges, py::object progress) {
    if (words.size() != counts.size())
        throw py::value_error("bpe_train: words and counts must have the same length, got " +
                              std::to_string(words.size()) + " and " + std::to_string(counts.size()));
    if (n_merges < 0) throw py::value_error("bpe_train: n_merges must be >= 0, got " + std::to_string(n_merges));
    if (words.size() >= INT32_MAX) throw py::value_error("bpe_train: too many distinct words");
    std::vector<std::string> w;
    std::vector<std::int64_t> c;
    w.reserve(words.size());
    c.reserve(words.size());
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (!py::isinstance<py::bytes>(words[i])) throw py::value_error("bpe_train: words must be bytes");
        w.push_back(words[i].cast<std::string>());
        const long long n = counts[i].cast<long long>();
        if (n <= 0) throw py::value_error("bpe_train: counts must be positive, got " + std::to_string(n));
        c.push_back(n);
    }
    std::function<void(std::int64_t)> report;
    if (!progress.is_none())
        report = [&progress](std::int64_t done) { py::gil_scoped_acquire acquire; progress(done); };
    std::vector<std::pair<std::int32_t, std::int32_t>> merges;
    {
        py::gil_scoped_release release;
        merges = bpe::train(w, c, n_merges, report);
    }
    return py::cast(merges);
}

// ---- unigram
// The Unigram tokenizer's lattice loops (csrc/unigram.cpp); the GIL is released around them.

std::unique_ptr<unigram::Model> py_unigram_model_new(const py::list& pieces, const py::list& scores, double unk_score,
                                                      int max_len) {
    if (pieces.size() != scores.size())
        throw py::value_error("UnigramModel: pieces and scores must have the same length, got " +
                              std::to_string(pieces.size()) + " and " + std::to_string(scores.size()));
    if (max_len < 1) throw py::value_error("UnigramModel: max_len must be >= 1, got " + std::to_string(max_len));
    std::vector<std::string> p;
    std::vector<double> s;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        p.emplace_back(utf8_view("UnigramModel", pieces[i].ptr()));
        s.push_back(scores[i].cast<double>());
    }
    return std::make_unique<unigram::Model>(std::move(p), std::move(s), unk_score, max_len);
}

py::list py_unigram_viterbi(const unigram::Model& model, const py::list& words, int exclude) {
    std::vector<std::string_view> w;
    for (auto item : words) w.push_back(utf8_view("UnigramModel.viterbi", item.ptr()));
    if (exclude < -1 || exclude >= static_cast<int>(model.size()))
        throw py::value_error("UnigramModel.viterbi: exclude must be -1 or a piece index, got " + std::to_string(exclude));
    std::vector<std::vector<int>> paths(w.size());
    {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < w.size(); ++i) paths[i] = model.viterbi(w[i], exclude);
    }
    return py::cast(paths);
}

py::tuple py_unigram_expected_counts(const unigram::Model& model, const py::list& words, const py::list& freqs) {
    if (words.size() != freqs.size())
        throw py::value_error("UnigramModel.expected_counts: words and freqs must have the same length");
    std::vector<std::string> w;
    std::vector<double> f;
    for (std::size_t i = 0; i < words.size(); ++i) {
        w.emplace_back(utf8_view("UnigramModel.expected_counts", words[i].ptr()));
        f.push_back(freqs[i].cast<double>());
    }
    std::vector<double> expected;
    double loglik;
    {
        py::gil_scoped_release release;
        loglik = model.expected_counts(w, f, expected);
    }
    return py::make_tuple(py::cast(expected), loglik);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "minillm native kernels (C++, OpenMP, AVX2/FMA with a scalar fallback)";

    m.def("softmax_forward", &py_softmax_forward, py::arg("x"),
          "Softmax over the last axis of a C-contiguous float32/float64 array.");
    m.def("softmax_backward", &py_softmax_backward, py::arg("dy"), py::arg("y"),
          "dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x).");

    // ---- bpe
    m.def("bpe_set_char_classes", &py_bpe_set_char_classes, py::arg("table"),
          "Set the class (0 other, 1 \\p{L}, 2 \\p{N}, 3 \\s) of every code point for the GPT-2 pre-tokenizer.");
    m.def("bpe_gpt2_split", &py_bpe_gpt2_split, py::arg("text"), "GPT-2's pre-tokens of text (as regex.findall).");
    m.def("bpe_train", &py_bpe_train, py::arg("words"), py::arg("counts"), py::arg("n_merges"),
          py::arg("progress") = py::none(),
          "Byte-level BPE merges [(a, b), ...] creating ids 256, 257, ... from word bytes and counts.");
    py::class_<bpe::Encoder>(m, "BPEEncoder", "Byte-level BPE encoder over a {token bytes: rank} table.")
        .def(py::init(&py_bpe_encoder_new), py::arg("ranks"))
        .def("encode_gpt2", &py_bpe_encode_gpt2, py::arg("text"), "Ids of text, split by GPT-2's pre-tokenizer.")
        .def("encode_gpt2_batch", &py_bpe_encode_gpt2_batch, py::arg("texts"), py::arg("num_threads"),
             "encode_gpt2 of each text, on num_threads OpenMP threads (GIL released).")
        .def("encode_pieces", &py_bpe_encode_pieces, py::arg("pieces"), "Ids of already split pre-tokens.")
        .def("__len__", &bpe::Encoder::size);

    // ---- unigram
    py::class_<unigram::Model>(m, "UnigramModel", "A Unigram tokenizer's pieces and log-probabilities.")
        .def(py::init(&py_unigram_model_new), py::arg("pieces"), py::arg("scores"), py::arg("unk_score"),
             py::arg("max_len"))
        .def("viterbi", &py_unigram_viterbi, py::arg("words"), py::arg("exclude") = -1,
             "Best path of each word: piece indices, -1 for an unknown character.")
        .def("expected_counts", &py_unigram_expected_counts, py::arg("words"), py::arg("freqs"),
             "(expected uses of each piece weighted by freqs, sum of freq * log Z) by forward-backward.")
        .def("__len__", &unigram::Model::size);

    m.def("openmp", []() {
#if defined(MINILLM_OPENMP)
        return true;
#else
        return false;
#endif
    }, "True if the extension was built with OpenMP.");
    m.def("cpu_simd", []() { return std::string(cpu_simd()); },
          "The SIMD level this CPU supports: 'avx2+fma' or 'scalar'.");
    m.def("simd_in_use", []() { return std::string(use_avx2() ? "avx2+fma" : "scalar"); },
          "The SIMD level the kernels use now (scalar when forced).");
    m.def("force_scalar", &force_scalar, py::arg("on"),
          "Force the portable scalar path (for tests that hold both paths equal).");
    m.def("get_num_threads", []() {
#if defined(MINILLM_OPENMP)
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
#if defined(MINILLM_OPENMP)
        omp_set_num_threads(n);
#endif
    }, py::arg("n"));
    m.def("compiler", []() {
#if defined(__clang__)
        return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
        return std::string("msvc ") + std::to_string(_MSC_VER);
#else
        return std::string("unknown");
#endif
    });
}
