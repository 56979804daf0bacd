// Unigram language-model tokenizer: the lattice loops (Viterbi and forward-backward).
// Python twin: minillm/tokenizers/unigram.py (UnigramTokenizer._viterbi / _em_step).
//
// A word's lattice has an edge for every piece that occurs in it at character positions
// [s, e) (at most max_len characters), plus, for a character that is no piece, a one-character
// "unknown" edge scored unk_score (the byte fallback). Edges ending at e are visited with s
// ascending and the unknown edge last, as in the reference, so Viterbi picks the same path.
// Bindings at the bottom: UnigramModel.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <pybind11/stl.h>   // lists of ids and of merges back to Python

#include "../binding.h"

namespace minillm {
namespace unigram {

// Pieces (UTF-8) with their log-probabilities; words are valid UTF-8. Read-only once built.
class Model {
public:
    Model(std::vector<std::string> pieces, std::vector<double> scores, double unk_score, int max_len);
    // The best path's pieces, -1 for a one-character unknown edge; `exclude` is a piece to leave out (or -1).
    std::vector<int> viterbi(std::string_view word, int exclude) const;
    // expected[k] = sum over words of freq * E[uses of piece k]; returns sum of freq * log Z(word).
    double expected_counts(const std::vector<std::string>& words, const std::vector<double>& freqs,
                           std::vector<double>& expected) const;
    std::size_t size() const { return pieces_.size(); }

private:
    template <typename F>
    void edges(std::string_view w, const std::vector<std::size_t>& off, std::size_t e, int exclude, F&& f) const;
    double accumulate(std::string_view w, double freq, std::vector<double>& expected) const;
    std::vector<std::string> pieces_;
    std::vector<double> scores_;
    double unk_score_;
    int max_len_;
    std::unordered_map<std::string_view, int> index_;
};

static constexpr double NEG = -1e30;

Model::Model(std::vector<std::string> pieces, std::vector<double> scores, double unk_score, int max_len)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), unk_score_(unk_score), max_len_(max_len) {
    index_.reserve(pieces_.size() * 2);
    for (std::size_t i = 0; i < pieces_.size(); ++i) index_.emplace(std::string_view(pieces_[i]), static_cast<int>(i));
}

// Byte offset of each character of valid UTF-8 `w`, and w.size() at the end.
static void char_offsets(std::string_view w, std::vector<std::size_t>& off) {
    off.clear();
    for (std::size_t i = 0; i < w.size(); ++i)
        if ((static_cast<unsigned char>(w[i]) & 0xC0) != 0x80) off.push_back(i);
    off.push_back(w.size());
}

// Calls f(start_char, piece_or_minus_1, score) for every edge ending at character e.
template <typename F>
void Model::edges(std::string_view w, const std::vector<std::size_t>& off, std::size_t e, int exclude, F&& f) const {
    const std::size_t first = e > static_cast<std::size_t>(max_len_) ? e - max_len_ : 0;
    bool char_is_piece = false;
    for (std::size_t s = first; s < e; ++s) {
        auto it = index_.find(w.substr(off[s], off[e] - off[s]));
        if (it == index_.end() || it->second == exclude) continue;
        if (s + 1 == e) char_is_piece = true;
        f(s, it->second, scores_[it->second]);
    }
    if (!char_is_piece) f(e - 1, -1, unk_score_);
}

std::vector<int> Model::viterbi(std::string_view w, int exclude) const {
    std::vector<std::size_t> off;
    char_offsets(w, off);
    const std::size_t n = off.size() - 1;
    std::vector<double> best(n + 1, NEG);
    std::vector<std::pair<std::size_t, int>> back(n + 1);
    best[0] = 0.0;
    for (std::size_t e = 1; e <= n; ++e)
        edges(w, off, e, exclude, [&](std::size_t s, int id, double sc) {
            if (best[s] + sc > best[e]) { best[e] = best[s] + sc; back[e] = {s, id}; }
        });
    std::vector<int> path;
    for (std::size_t e = n; e > 0; e = back[e].first) path.push_back(back[e].second);
    return std::vector<int>(path.rbegin(), path.rend());
}

static inline double logaddexp(double a, double b) {
    const double m = a > b ? a : b;
    if (m <= NEG) return m;
    return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// Adds freq * P(edge) to expected[piece] for every edge of w's lattice; returns freq * log Z(w).
double Model::accumulate(std::string_view w, double freq, std::vector<double>& expected) const {
    std::vector<std::size_t> off;
    char_offsets(w, off);
    const std::size_t n = off.size() - 1;
    if (n == 0) return 0.0;
    std::vector<double> fwd(n + 1, NEG), bwd(n + 1, NEG);
    std::vector<double> vals;
    fwd[0] = 0.0;
    for (std::size_t e = 1; e <= n; ++e) {            // fwd[e] = logsumexp over edges (s, e) of fwd[s] + score
        vals.clear();
        edges(w, off, e, -2, [&](std::size_t s, int, double sc) { vals.push_back(fwd[s] + sc); });
        double m = NEG;
        for (double v : vals) m = v > m ? v : m;
        double sum = 0.0;
        for (double v : vals) sum += std::exp(v - m);
        fwd[e] = m <= NEG ? m : m + std::log(sum);
    }
    bwd[n] = 0.0;
    for (std::size_t e = n; e > 0; --e)                // bwd[s] = logsumexp over edges (s, e) of score + bwd[e]
        edges(w, off, e, -2, [&](std::size_t s, int id, double sc) {
            bwd[s] = logaddexp(bwd[s], sc + bwd[e]);
            if (id >= 0) expected[id] += freq * std::exp(fwd[s] + sc + bwd[e] - fwd[n]);
        });
    return freq * fwd[n];
}

// Words are cut into at most 64 fixed blocks whose partial sums are added in block order, so the
// result does not depend on the number of threads or on scheduling.
double Model::expected_counts(const std::vector<std::string>& words, const std::vector<double>& freqs,
                              std::vector<double>& expected) const {
    const std::int64_t n = static_cast<std::int64_t>(words.size());
    const std::int64_t blocks = std::max<std::int64_t>(1, std::min<std::int64_t>(64, (n + 255) / 256));
    std::vector<std::vector<double>> partial(blocks, std::vector<double>(pieces_.size(), 0.0));
    std::vector<double> loglik(blocks, 0.0);
#if defined(MINILLM_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (n > 2000)
#endif
    for (std::int64_t b = 0; b < blocks; ++b)
        for (std::int64_t i = n * b / blocks; i < n * (b + 1) / blocks; ++i)
            loglik[b] += accumulate(words[i], freqs[i], partial[b]);
    expected.assign(pieces_.size(), 0.0);
    double total = 0.0;
    for (std::int64_t b = 0; b < blocks; ++b) {
        total += loglik[b];
        for (std::size_t k = 0; k < expected.size(); ++k) expected[k] += partial[b][k];
    }
    return total;
}

}  // namespace unigram

// ---- bindings. The GIL is released around the lattice loops, over copies of the words.

static std::unique_ptr<unigram::Model> py_unigram_model_new(const py::list& pieces, const py::list& scores,
                                                             double unk_score, int max_len) {
    const Check check("UnigramModel");
    if (pieces.size() != scores.size())
        check.fail("pieces and scores must have the same length, got " + std::to_string(pieces.size()) + " and " +
                   std::to_string(scores.size()));
    if (max_len < 1) check.fail("max_len must be >= 1, got " + std::to_string(max_len));
    std::vector<double> s;
    for (auto score : scores) s.push_back(score.cast<double>());
    return std::make_unique<unigram::Model>(check.utf8_strings(pieces), std::move(s), unk_score, max_len);
}

static py::list py_unigram_viterbi(const unigram::Model& model, const py::list& words, int exclude) {
    const Check check("UnigramModel.viterbi");
    const std::vector<std::string> w = check.utf8_strings(words);
    if (exclude < -1 || exclude >= static_cast<int>(model.size()))
        check.fail("exclude must be -1 or a piece index, got " + std::to_string(exclude));
    std::vector<std::vector<int>> paths(w.size());
    {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < w.size(); ++i) paths[i] = model.viterbi(w[i], exclude);
    }
    return py::cast(paths);
}

static py::tuple py_unigram_expected_counts(const unigram::Model& model, const py::list& words,
                                            const py::list& freqs) {
    const Check check("UnigramModel.expected_counts");
    if (words.size() != freqs.size()) check.fail("words and freqs must have the same length");
    const std::vector<std::string> w = check.utf8_strings(words);
    std::vector<double> f;
    for (auto freq : freqs) f.push_back(freq.cast<double>());
    std::vector<double> expected;
    double loglik;
    {
        py::gil_scoped_release release;
        loglik = model.expected_counts(w, f, expected);
    }
    return py::make_tuple(py::cast(expected), loglik);
}

void bind_unigram(py::module_& m) {
    py::class_<unigram::Model>(m, "UnigramModel", "A Unigram tokenizer's pieces and log-probabilities.")
        .def(py::init(&py_unigram_model_new), py::arg("pieces"), py::arg("scores"), py::arg("unk_score"),
             py::arg("max_len"))
        .def("viterbi", &py_unigram_viterbi, py::arg("words"), py::arg("exclude") = -1,
             "Best path of each word: piece indices, -1 for an unknown character.")
        .def("expected_counts", &py_unigram_expected_counts, py::arg("words"), py::arg("freqs"),
             "(expected uses of each piece weighted by freqs, sum of freq * log Z) by forward-backward.")
        .def("__len__", &unigram::Model::size);
}

}  // namespace minillm
