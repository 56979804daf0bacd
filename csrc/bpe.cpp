// Byte-level BPE: the GPT-2 pre-tokenizer, the encode merge loop and the trainer.
// Python twin: minillm/tokenizers/bpe.py (the readable reference the tests hold this equal to).
//
// Encode: split the text into pre-tokens, then inside each pre-token merge, again and again,
// the adjacent pair of parts whose concatenation has the lowest rank (leftmost on ties) until
// no concatenation is a token (tiktoken's rule, so GPT-2's ranks give GPT-2's ids). A pre-token
// that is itself a token is one lookup; repeated pre-tokens hit a per-call cache.
//
// Train: words (pre-token bytes) with their counts; pair counts are kept and updated only for
// the words that contain the merged pair; the best pair comes from a max-heap with lazy deletion
// (an entry is stale if its count differs from the current one). Ties: lowest (a, b).
#include <algorithm>
#include <queue>
#include <stdexcept>

#include "kernels.h"
#include "simd.h"

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

// ---- train ----------------------------------------------------------------------------------

static inline std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

struct HeapEntry {
    std::int64_t count;
    std::int32_t a, b;
    bool operator<(const HeapEntry& o) const {   // "lower priority than": fewer, or a larger pair
        if (count != o.count) return count < o.count;
        if (a != o.a) return a > o.a;
        return b > o.b;
    }
};

std::vector<std::pair<std::int32_t, std::int32_t>> train(const std::vector<std::string>& words,
                                                         const std::vector<std::int64_t>& counts,
                                                         std::int64_t n_merges,
                                                         const std::function<void(std::int64_t)>& progress) {
    std::vector<std::vector<std::int32_t>> symbols(words.size());
    std::vector<std::string> token_bytes(256);
    std::unordered_map<std::string, std::int32_t> token_id;
    for (int b = 0; b < 256; ++b) token_bytes[b] = std::string(1, static_cast<char>(b)), token_id[token_bytes[b]] = b;

    std::unordered_map<std::uint64_t, std::int64_t> pair_count;
    std::unordered_map<std::uint64_t, std::vector<std::int32_t>> where;  // pair -> words (may be stale)
    for (std::size_t w = 0; w < words.size(); ++w) {
        for (unsigned char c : words[w]) symbols[w].push_back(c);
        const auto& s = symbols[w];
        for (std::size_t i = 0; i + 1 < s.size(); ++i) {
            const auto k = key(s[i], s[i + 1]);
            pair_count[k] += counts[w];
            auto& list = where[k];
            if (list.empty() || list.back() != static_cast<std::int32_t>(w)) list.push_back(static_cast<std::int32_t>(w));
        }
    }
    std::priority_queue<HeapEntry> heap;
    for (const auto& [k, c] : pair_count)
        heap.push({c, static_cast<std::int32_t>(k >> 32), static_cast<std::int32_t>(k & 0xFFFFFFFFu)});

    std::vector<std::pair<std::int32_t, std::int32_t>> merges;
    std::unordered_map<std::uint64_t, std::int64_t> delta;
    std::vector<std::int32_t> merged;
    std::size_t reported = 0;
    while (static_cast<std::int64_t>(merges.size()) < n_merges && !heap.empty()) {
        const HeapEntry top = heap.top();
        heap.pop();
        const auto k = key(top.a, top.b);
        auto pc = pair_count.find(k);
        if (pc == pair_count.end() || pc->second != top.count) continue;  // stale entry
        // The new token, or the existing one with the same bytes (a vocabulary never repeats bytes).
        const std::string joined = token_bytes[top.a] + token_bytes[top.b];
        std::int32_t c;
        auto existing = token_id.find(joined);
        if (existing != token_id.end()) c = existing->second;
        else {
            c = static_cast<std::int32_t>(token_bytes.size());
            token_bytes.push_back(joined);
            token_id.emplace(joined, c);
            merges.emplace_back(top.a, top.b);
        }
        std::vector<std::int32_t> list = std::move(where[k]);
        where.erase(k);
        std::sort(list.begin(), list.end());
        list.erase(std::unique(list.begin(), list.end()), list.end());
        delta.clear();
        for (std::int32_t w : list) {
            auto& s = symbols[w];
            const std::int64_t f = counts[w];
            merged.clear();
            for (std::size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == top.a && s[i + 1] == top.b) { merged.push_back(c); i += 2; }
                else merged.push_back(s[i++]);
            }
            if (merged.size() == s.size()) continue;  // a stale entry of `where`
            for (std::size_t i = 0; i + 1 < s.size(); ++i) delta[key(s[i], s[i + 1])] -= f;
            for (std::size_t i = 0; i + 1 < merged.size(); ++i) {
                const auto nk = key(merged[i], merged[i + 1]);
                delta[nk] += f;
                if (merged[i] == c || merged[i + 1] == c) where[nk].push_back(w);
            }
            s.swap(merged);
        }
        for (const auto& [dk, d] : delta) {
            if (d == 0) continue;
            auto& cnt = pair_count[dk];
            cnt += d;
            if (cnt <= 0) pair_count.erase(dk);
            else heap.push({cnt, static_cast<std::int32_t>(dk >> 32), static_cast<std::int32_t>(dk & 0xFFFFFFFFu)});
        }
        if (progress && merges.size() >= reported + 256) progress(static_cast<std::int64_t>(reported = merges.size()));
    }
    return merges;
}

}  // namespace bpe
}  // namespace minillm
