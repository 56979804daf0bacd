// Declarations of the native kernels. Raw pointers and sizes only: the bindings
// (bindings.cpp) check shapes, dtypes and contiguity before anything here runs.
#pragma once

#include <cstdint>
#include <type_traits>

namespace minillm {

// gemm.cpp: C (M, N) = op(A) op(B) [+ C if accumulate] [+ bias (N,) on every row]. A is (M, K), or
// (K, M) if trans_a; B is (K, N), or (N, K) if trans_b; all C-contiguous, C distinct from A and B.
template <typename T>
void gemm(const T* A, const T* B, T* C, std::int64_t M, std::int64_t N, std::int64_t K, bool trans_a, bool trans_b,
          bool accumulate, const T* bias);

// softmax.cpp: x, y, dy, dx are (rows, n), C-contiguous.
template <typename T>
void softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n);
template <typename T>
void softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n);

// attention.cpp: flash-style attention (contract: minillm/kernels/reference/attention.py).
// q (B, H, T, D); k, v (B, Hkv, S, D) with H % Hkv == 0; alibi_slopes (H,) or nullptr;
// key_padding_mask (B, S) (true = keep) or nullptr; window 0 = none. All C-contiguous.
template <typename F>
struct AttentionArgs {
    const F* q;
    const F* k;
    const F* v;
    std::int64_t B, H, Hkv, T, S, D;
    bool causal;
    std::int64_t window;
    const F* alibi_slopes;
    const bool* key_padding_mask;
};
// out (B, H, T, D), lse (B, H, T): lse = +inf and out = 0 for a query that sees no key.
template <typename F>
void attention_forward(const AttentionArgs<F>& args, F* out, F* lse);
// dq like q; dk, dv like k (summed over the query heads sharing a kv head). Overwrites them.
template <typename F>
void attention_backward(const AttentionArgs<F>& args, const F* dout, const F* out, const F* lse, F* dq, F* dk,
                        F* dv);

template <typename T>
void log_softmax_forward(const T* x, T* y, std::int64_t rows, std::int64_t n);
template <typename T>
void log_softmax_backward(const T* dy, const T* y, T* dx, std::int64_t rows, std::int64_t n);

// loss.cpp: logits, g, dlogits (N, V); targets, nll, row_scale (N,). Targets are in [0, V) or
// ignore_index (checked by the binding). g = softmax(logits) - onehot(targets), 0 on ignored rows;
// dlogits = g * row_scale[:, None].
template <typename T>
void cross_entropy_forward(const T* logits, const std::int64_t* targets, std::int64_t ignore_index, T* nll, T* g,
                           std::int64_t N, std::int64_t V);
template <typename T>
void cross_entropy_backward(const T* g, const T* row_scale, T* dlogits, std::int64_t N, std::int64_t V);

// norm.cpp: x, y, x_hat, dy, dx (rows, C); weight, bias, dw, db (C,); inv_rms, inv_std (rows,).
template <typename T>
void rms_norm_forward(const T* x, const T* w, double eps, T* y, T* inv_rms, std::int64_t rows, std::int64_t C);
template <typename T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* inv_rms, T* dx, T* dw, std::int64_t rows,
                       std::int64_t C);
template <typename T>
void layer_norm_forward(const T* x, const T* w, const T* b, double eps, T* y, T* x_hat, T* inv_std,
                        std::int64_t rows, std::int64_t C);
template <typename T>
void layer_norm_backward(const T* dy, const T* x_hat, const T* w, const T* inv_std, T* dx, T* dw, T* db,
                         std::int64_t rows, std::int64_t C);

// activation.cpp: elementwise over n values; x, y, dy, dx (n,).
template <typename T>
void gelu_forward(const T* x, T* y, std::int64_t n);
template <typename T>
void gelu_backward(const T* dy, const T* x, T* dx, std::int64_t n);
template <typename T>
void silu_forward(const T* x, T* y, std::int64_t n);
template <typename T>
void silu_backward(const T* dy, const T* x, T* dx, std::int64_t n);

// quant.cpp: matmul on quantized weights (contract: minillm/kernels/reference/quant.py).
enum class QuantScheme : int { int8 = 0, q8_0 = 1, q4_0 = 2, q4_1 = 3 };
// x (M, K) -> xq (M, K) int8, xd and xs (M, G), G = ceil(K / 32): Q8_0 per row and group.
void quantize_activations(const float* x, std::int64_t M, std::int64_t K, std::int8_t* xq, float* xd, float* xs);
// y (M, N) = x W^T [+ bias]. wq: (N, K) int8, or (N, K/2) packed int4 for q4_*; wd: (N,) for int8,
// else (N, K/32); wm: (N, K/32) for q4_1, else unused. K % 32 == 0 except for int8.
void quant_matmul(QuantScheme scheme, const float* x, std::int64_t M, std::int64_t K, const std::uint8_t* wq,
                  const float* wd, const float* wm, const float* bias, std::int64_t N, float* y);

}  // namespace minillm

// ---- bpe.cpp: byte-level BPE (see minillm/tokenizers/bpe.py for the reference) ----
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

// ---- unigram.cpp: the Unigram tokenizer's lattice (see minillm/tokenizers/unigram.py) ----
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

}  // namespace unigram
}  // namespace minillm
