// Byte-level BPE: the GPT-2 pre-tokenizer and the encode merge loop.
// Python twin: minillm/tokenizers/bpe.py (the readable reference the tests hold this equal to).
//
// Encode: split the text into pre-tokens, then inside each pre-token merge, again and again,
// the adjacent pair of parts whose concatenation has the lowest rank (leftmost on ties) until
// no concatenation is a token (tiktoken's rule, so GPT-2's ranks give GPT-2's ids). A pre-token
// that is itself a token is one lookup; repeated pre-tokens hit a per-call cache.
// The trainer is in bpe_train.cpp. Bindings at the bottom: bpe_set_char_classes, bpe_gpt2_split,
// bpe_train, BPEEncoder.
#include "bpe.h"

#include <algorithm>
#include <memory>
#include <queue>
#include <stdexcept>

#include <pybind11/stl.h>   // lists of ids and of merges back to Python

#include "../binding.h"

namespace minillm {
namespace bpe {

// ---- the GPT-2 pre-tokenizer ---------------------------------------------------------------
// '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Character classes come from Python's `regex` module (set_char_classes), so \p{L}, \p{N} and \s
// mean exactly what they mean to the regex the reference uses.

static std::vector<std::uint8_t> g_classes;  // one per code point, see CharClass

void set_char_classes(const std::uint8_t* table, std::size_t n) { g_classes.assign(table, table + n); }
bool have_char_classes() { return g_classes.size() == 0x110000; }

// Decodes the (valid) UTF-8 code point at s[i]; returns its class and sets len to its byte length.
static inline int class_at(std::string_view s, std::size_t i, std::size_t& len) {
    const unsigned char c = s[i];
    std::uint32_t cp;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c >> 5) == 0x6) { len = 2; cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F); }
    else if ((c >> 4) == 0xE) { len = 3; cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F); }
    else {
        len = 4;
        cp = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
    }
    if (i + len > s.size()) { len = s.size() - i; return OTHER; }  // truncated: cannot come from a str
    return cp < g_classes.size() ? static_cast<int>(g_classes[cp]) : static_cast<int>(OTHER);
}

// Length in bytes of the pre-token that starts at s[i].
static std::size_t gpt2_next(std::string_view s, std::size_t i) {
    const std::size_t n = s.size();
    if (s[i] == '\'' && i + 1 < n) {                       // '(?:[sdmt]|ll|ve|re)
        const char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 'd' || a == 'm' || a == 't') return 2;
        if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return 3;
    }
    std::size_t len, j = i;
    int cls = class_at(s, i, len);
    if (s[i] == ' ' && i + 1 < n) {                        // the optional leading space
        std::size_t len2;
        const int next = class_at(s, i + 1, len2);
        if (next != SPACE) { cls = next; j = i + 1; len = len2; }
    }
    if (cls != SPACE) {                                    //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
        j += len;
        while (j < n && class_at(s, j, len) == cls) j += len;
        return j - i;
    }
    std::size_t last = i;                                  // \s+(?!\S) | \s+
    j = i;
    while (j < n && class_at(s, j, len) == SPACE) { last = j; j += len; }
    if (j == n || last == i) return j - i;                 // at the end, or a single space before \S
    return last - i;                                       // leave the last space to the next token
}

std::vector<std::pair<std::size_t, std::size_t>> gpt2_split(std::string_view text) {
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t len = gpt2_next(text, i);
        spans.emplace_back(i, len);
        i += len;
    }
    return spans;
}

// ---- encode ---------------------------------------------------------------------------------

Encoder::Encoder(const std::vector<std::pair<std::string, std::int32_t>>& tokens) {
    storage_.reserve(tokens.size());
    for (const auto& t : tokens) storage_.push_back(t.first);
    ranks_.reserve(tokens.size() * 2);
    for (std::size_t i = 0; i < tokens.size(); ++i) ranks_.emplace(std::string_view(storage_[i]), tokens[i].second);
    for (int b = 0; b < 256; ++b) {
        const char c = static_cast<char>(b);
        auto it = ranks_.find(std::string_view(&c, 1));
        if (it == ranks_.end()) throw std::invalid_argument("byte " + std::to_string(b) + " has no token");
        byte_rank_[b] = it->second;
    }
}

static constexpr std::int32_t NONE = INT32_MAX;

std::int32_t Encoder::rank(std::string_view bytes) const {
    auto it = ranks_.find(bytes);
    return it == ranks_.end() ? NONE : it->second;
}

void Encoder::merge_piece(std::string_view piece, std::vector<std::int32_t>& out) const {
    const std::size_t n = piece.size();
    if (n == 1) { out.push_back(byte_rank_[static_cast<unsigned char>(piece[0])]); return; }
    if (n > 128) { merge_piece_long(piece, out); return; }   // the scan below is O(n^2)
    // parts[k] = (start of part k, rank of part k joined with part k+1); one sentinel at the end.
    std::vector<std::pair<std::size_t, std::int32_t>> parts(n + 1);
    for (std::size_t k = 0; k + 1 < n; ++k) parts[k] = {k, rank(piece.substr(k, 2))};
    parts[n - 1] = {n - 1, NONE};
    parts[n] = {n, NONE};
    // The rank of parts k and k+1 joined, once part k+1 has absorbed its right neighbour.
    auto joined = [&](std::size_t k) {
        return k + 3 < parts.size() ? rank(piece.substr(parts[k].first, parts[k + 3].first - parts[k].first)) : NONE;
    };
    for (;;) {
        std::size_t best = 0;
        std::int32_t best_rank = NONE;
        for (std::size_t k = 0; k + 1 < parts.size(); ++k)
            if (parts[k].second < best_rank) { best_rank = parts[k].second; best = k; }
        if (best_rank == NONE) break;
        if (best > 0) parts[best - 1].second = joined(best - 1);
        parts[best].second = joined(best);
        parts.erase(parts.begin() + best + 1);
    }
    for (std::size_t k = 0; k + 1 < parts.size(); ++k)
        out.push_back(ranks_.at(piece.substr(parts[k].first, parts[k + 1].first - parts[k].first)));
}

// The same merges for a long pre-token (a long run of spaces or letters) in O(n log n): parts are
// a linked list over byte offsets, and a min-heap holds (rank of part i joined with the next, i);
// an entry is stale once part i is gone or its joined rank changed. (rank, i) order = the lowest
// rank, leftmost first, as in the scan.
void Encoder::merge_piece_long(std::string_view piece, std::vector<std::int32_t>& out) const {
    const std::size_t n = piece.size();
    std::vector<std::size_t> next(n), prev(n);
    std::vector<std::int32_t> joined(n, NONE);
    std::vector<char> alive(n, 1);
    for (std::size_t i = 0; i < n; ++i) next[i] = i + 1, prev[i] = i - 1;   // prev[0] is never read
    auto rank_of = [&](std::size_t i) {
        const std::size_t j = next[i];
        return j < n ? rank(piece.substr(i, (j < n ? next[j] : n) - i)) : NONE;
    };
    using Entry = std::pair<std::int32_t, std::size_t>;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    for (std::size_t i = 0; i + 1 < n; ++i)
        if ((joined[i] = rank_of(i)) != NONE) heap.push({joined[i], i});
    while (!heap.empty()) {
        const auto [r, i] = heap.top();
        heap.pop();
        if (!alive[i] || joined[i] != r) continue;
        const std::size_t j = next[i];               // part j joins part i
        alive[j] = 0;
        next[i] = next[j];
        if (next[i] < n) prev[next[i]] = i;
        if ((joined[i] = rank_of(i)) != NONE) heap.push({joined[i], i});
        if (i > 0) {
            const std::size_t p = prev[i];
            if ((joined[p] = rank_of(p)) != NONE) heap.push({joined[p], p});
        }
    }
    for (std::size_t i = 0; i < n; i = next[i]) out.push_back(ranks_.at(piece.substr(i, next[i] - i)));
}

void Encoder::encode_piece(std::string_view piece, std::vector<std::int32_t>& out, Cache& cache) const {
    auto whole = ranks_.find(piece);
    if (whole != ranks_.end()) { out.push_back(whole->second); return; }
    auto hit = cache.find(piece);
    if (hit != cache.end()) { out.insert(out.end(), hit->second.begin(), hit->second.end()); return; }
    const std::size_t before = out.size();
    merge_piece(piece, out);
    if (cache.size() < 100000) cache.emplace(piece, std::vector<std::int32_t>(out.begin() + before, out.end()));
}

std::vector<std::int32_t> Encoder::encode_gpt2(std::string_view text, Cache& cache) const {
    std::vector<std::int32_t> out;
    out.reserve(text.size() / 3 + 1);
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t len = gpt2_next(text, i);
        encode_piece(text.substr(i, len), out, cache);
        i += len;
    }
    return out;
}

std::vector<std::int32_t> Encoder::encode_gpt2(std::string_view text) const {
    Cache cache;  // keys view into `text`, which outlives this call
    return encode_gpt2(text, cache);
}

std::vector<std::vector<std::int32_t>> Encoder::encode_gpt2_batch(const std::vector<std::string_view>& texts,
                                                                  int threads) const {
    std::vector<std::vector<std::int32_t>> out(texts.size());
    const std::int64_t n = static_cast<std::int64_t>(texts.size());
#if defined(MINILLM_OPENMP)
#pragma omp parallel num_threads(threads) if (n > 1 && threads > 1)
#else
    (void)threads;
#endif
    {
        Cache cache;  // one per thread, shared by the texts it encodes (keys view into them)
#if defined(MINILLM_OPENMP)
#pragma omp for schedule(dynamic, 8)
#endif
        for (std::int64_t i = 0; i < n; ++i) out[i] = encode_gpt2(texts[i], cache);
    }
    return out;
}

std::vector<std::int32_t> Encoder::encode_pieces(const std::vector<std::string_view>& pieces) const {
    std::vector<std::int32_t> out;
    Cache cache;
    for (auto p : pieces)
        if (!p.empty()) encode_piece(p, out, cache);
    return out;
}

}  // namespace bpe

// ---- bindings. Python str arrives as its UTF-8 bytes; the GIL is released around the merge loops,
// over copies of the strings of a list (another thread may change the list meanwhile).

static void py_bpe_set_char_classes(const py::array& table) {
    if (!has_dtype<std::uint8_t>(table) || table.ndim() != 1 || table.shape(0) != 0x110000 ||
        !(table.flags() & py::array::c_style))
        Check("bpe_set_char_classes").fail("table must be a contiguous uint8 array of shape (1114112,)");
    bpe::set_char_classes(data<std::uint8_t>(table), 0x110000);
}

static void check_classes(const Check& check) {
    if (!bpe::have_char_classes()) check.fail("call bpe_set_char_classes first (minillm.tokenizers does)");
}

static py::list py_bpe_gpt2_split(const py::str& text) {
    const Check check("bpe_gpt2_split");
    check_classes(check);
    const std::string_view s = check.utf8(text);
    py::list out;
    for (auto [start, len] : bpe::gpt2_split(s)) out.append(py::str(s.data() + start, len));
    return out;
}

static std::unique_ptr<bpe::Encoder> py_bpe_encoder_new(const py::dict& ranks) {
    const Check check("BPEEncoder");
    std::vector<std::pair<std::string, std::int32_t>> tokens;
    tokens.reserve(ranks.size());
    for (auto item : ranks) {
        if (!py::isinstance<py::bytes>(item.first) || !py::isinstance<py::int_>(item.second))
            check.fail("ranks must map bytes to int");
        const long long r = item.second.cast<long long>();
        if (r < 0 || r >= INT32_MAX) check.fail("rank " + std::to_string(r) + " is out of range");
        tokens.emplace_back(item.first.cast<std::string>(), static_cast<std::int32_t>(r));
    }
    try {
        return std::make_unique<bpe::Encoder>(tokens);
    } catch (const std::invalid_argument& e) {
        check.fail(std::string(e.what()) + "; a byte-level vocabulary needs all 256 bytes");
    }
}

// The text is the call's own argument, alive until it returns: a view is enough.
static py::list py_bpe_encode_gpt2(const bpe::Encoder& enc, const py::str& text) {
    const Check check("BPEEncoder.encode_gpt2");
    check_classes(check);
    const std::string_view s = check.utf8(text);
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2(s);
    }
    return py::cast(ids);
}

static py::list py_bpe_encode_gpt2_batch(const bpe::Encoder& enc, const py::list& texts, int num_threads) {
    const Check check("BPEEncoder.encode_gpt2_batch");
    check_classes(check);
    if (num_threads < 1) check.fail("num_threads must be >= 1, got " + std::to_string(num_threads));
    const std::vector<std::string> copies = check.utf8_strings(texts);
    const std::vector<std::string_view> views(copies.begin(), copies.end());
    std::vector<std::vector<std::int32_t>> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_gpt2_batch(views, num_threads);
    }
    return py::cast(ids);
}

static py::list py_bpe_encode_pieces(const bpe::Encoder& enc, const py::list& pieces) {
    const std::vector<std::string> copies = Check("BPEEncoder.encode_pieces").utf8_strings(pieces);
    const std::vector<std::string_view> views(copies.begin(), copies.end());
    std::vector<std::int32_t> ids;
    {
        py::gil_scoped_release release;
        ids = enc.encode_pieces(views);
    }
    return py::cast(ids);
}

static py::list py_bpe_train(const py::list& words, const py::list& counts, std::int64_t n_merges,
                             py::object progress) {
    const Check check("bpe_train");
    if (words.size() != counts.size())
        check.fail("words and counts must have the same length, got " + std::to_string(words.size()) + " and " +
                   std::to_string(counts.size()));
    if (n_merges < 0) check.fail("n_merges must be >= 0, got " + std::to_string(n_merges));
    if (words.size() >= INT32_MAX) check.fail("too many distinct words");
    std::vector<std::string> w;
    std::vector<std::int64_t> c;
    w.reserve(words.size());
    c.reserve(words.size());
    for (std::size_t i = 0; i < words.size(); ++i) {
        if (!py::isinstance<py::bytes>(words[i])) check.fail("words must be bytes");
        w.push_back(words[i].cast<std::string>());
        const long long n = counts[i].cast<long long>();
        if (n <= 0) check.fail("counts must be positive, got " + std::to_string(n));
        c.push_back(n);
    }
    std::function<void(std::int64_t)> report;
    if (!progress.is_none())
        report = [&progress](std::int64_t done) {
            py::gil_scoped_acquire acquire;
            progress(done);
        };
    std::vector<std::pair<std::int32_t, std::int32_t>> merges;
    {
        py::gil_scoped_release release;
        merges = bpe::train(w, c, n_merges, report);
    }
    return py::cast(merges);
}

void bind_bpe(py::module_& m) {
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
}

}  // namespace minillm
