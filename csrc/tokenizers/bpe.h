// Byte-level BPE, shared by bpe.cpp (the GPT-2 pre-tokenizer, the encoder, the bindings) and
// bpe_train.cpp (the trainer). Python twin: minillm/tokenizers/bpe.py.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace minillm {
namespace bpe {

enum CharClass : std::uint8_t { OTHER = 0, LETTER = 1, NUMBER = 2, SPACE = 3 };
// The class of every code point 0..0x10FFFF (\p{L}, \p{N}, \s as Python's `regex` sees them).
void set_char_classes(const std::uint8_t* table, std::size_t n);
bool have_char_classes();
// (start, length) in bytes of each GPT-2 pre-token of valid UTF-8 `text`.
std::vector<std::pair<std::size_t, std::size_t>> gpt2_split(std::string_view text);

// Token bytes -> rank; encodes with tiktoken's rule. Read-only after construction, so one
// Encoder serves many threads at once (each call keeps its own cache).
class Encoder {
public:
    using Cache = std::unordered_map<std::string_view, std::vector<std::int32_t>>;
    explicit Encoder(const std::vector<std::pair<std::string, std::int32_t>>& tokens);
    std::vector<std::int32_t> encode_gpt2(std::string_view text) const;  // GPT-2 pre-tokenizer + merges
    std::vector<std::int32_t> encode_gpt2(std::string_view text, Cache& cache) const;
    // encode_gpt2 of each text, on `threads` OpenMP threads.
    std::vector<std::vector<std::int32_t>> encode_gpt2_batch(const std::vector<std::string_view>& texts,
                                                             int threads) const;
    std::vector<std::int32_t> encode_pieces(const std::vector<std::string_view>& pieces) const;
    void merge_piece(std::string_view piece, std::vector<std::int32_t>& out) const;
    void merge_piece_long(std::string_view piece, std::vector<std::int32_t>& out) const;  // O(n log n)
    std::size_t size() const { return storage_.size(); }

private:
    std::int32_t rank(std::string_view bytes) const;
    void encode_piece(std::string_view piece, std::vector<std::int32_t>& out, Cache& cache) const;
    std::vector<std::string> storage_;
    std::unordered_map<std::string_view, std::int32_t> ranks_;
    std::int32_t byte_rank_[256];
};

// Merges (a, b) in the order they create tokens 256, 257, ...; words[i] occurs counts[i] times.
std::vector<std::pair<std::int32_t, std::int32_t>> train(const std::vector<std::string>& words,
                                                         const std::vector<std::int64_t>& counts,
                                                         std::int64_t n_merges,
                                                         const std::function<void(std::int64_t)>& progress);

}  // namespace bpe
}  // namespace minillm

