// The extension module minillm._C. Each kernel family registers its own functions: its
// pybind11 wrappers sit at the bottom of its file, in bind_<family>().
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace minillm {
void bind_cpu(py::module_& m);          // cpu.cpp: build and CPU information, thread count
void bind_gemm(py::module_& m);         // gemm.cpp: matmul
void bind_softmax(py::module_& m);      // softmax.cpp: softmax, log-softmax
void bind_loss(py::module_& m);         // loss.cpp: fused cross-entropy
void bind_norm(py::module_& m);         // norm.cpp: RMSNorm, LayerNorm
void bind_activation(py::module_& m);   // activation.cpp: GELU, SiLU
void bind_gelu_erf(py::module_& m);     // gelu_erf.cpp: GELU, exact (erf) form
void bind_attention(py::module_& m);    // attention.cpp: flash-style attention
void bind_quant(py::module_& m);        // quant.cpp: matmul on quantized weights
void bind_rope(py::module_& m);         // rope.cpp: rotary position embedding
void bind_kv_attention(py::module_& m); // kv_attention.cpp: attention over a KV cache, in place
void bind_paged_attention(py::module_& m); // paged_attention.cpp: attention through block tables
void bind_optim(py::module_& m);        // optim.cpp: the fused AdamW update
void bind_nf4(py::module_& m);          // nf4.cpp: NF4 (QLoRA) weights: dequantize, matmul
void bind_sparse_attention(py::module_& m);   // sparse_attention.cpp: attention over lists of keys
void bind_linear_attention(py::module_& m);   // linear_attention.cpp: attention by running sums
void bind_bpe(py::module_& m);          // tokenizers/bpe.cpp: byte-level BPE
void bind_unigram(py::module_& m);      // tokenizers/unigram.cpp: the Unigram lattice
}  // namespace minillm

PYBIND11_MODULE(_C, m) {
    m.doc() = "minillm native kernels (C++, OpenMP, AVX2/FMA with a scalar fallback)";
    minillm::bind_cpu(m);
    minillm::bind_gemm(m);
    minillm::bind_softmax(m);
    minillm::bind_loss(m);
    minillm::bind_norm(m);
    minillm::bind_activation(m);
    minillm::bind_gelu_erf(m);
    minillm::bind_attention(m);
    minillm::bind_quant(m);
    minillm::bind_rope(m);
    minillm::bind_kv_attention(m);
    minillm::bind_paged_attention(m);
    minillm::bind_optim(m);
    minillm::bind_nf4(m);
    minillm::bind_sparse_attention(m);
    minillm::bind_linear_attention(m);
    minillm::bind_bpe(m);
    minillm::bind_unigram(m);
}
