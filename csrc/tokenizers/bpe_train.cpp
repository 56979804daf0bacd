// Byte-level BPE training (Python twin: minillm/tokenizers/bpe.py).
//
// Words (pre-token bytes) with their counts; pair counts are kept and updated only for the words
// that contain the merged pair; the best pair comes from a max-heap with lazy deletion (an entry
// is stale if its count differs from the current one). Ties: lowest (a, b). The binding is in bpe.cpp.
#include <algorithm>
#include <queue>

#include "bpe.h"

namespace minillm {
namespace bpe {

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
