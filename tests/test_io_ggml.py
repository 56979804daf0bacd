"""GGML blocks <-> minillm's quantized layouts: bit for bit against gguf's own dequantizer, the
inverse mapping, the integer kernels on GGML's ranges (q4_0's -8, negative scales) on both SIMD
paths; and the RoPE row permutation: interleaved RoPE on GGUF rows = rotate-half RoPE on HF rows."""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, quants  # noqa: E402

from minillm import functional as F  # noqa: E402
from minillm import kernels  # noqa: E402
from minillm.io.build import Quantized, build_decoder  # noqa: E402
from minillm.io.ggml_blocks import SCHEME_OF, arrays_to_blocks, blocks_to_arrays, has_int8_minimum  # noqa: E402
from minillm.io.layouts import permute_rope_rows, rope_interleaved, unpermute_rope_rows  # noqa: E402
from minillm.kernels import reference  # noqa: E402
from minillm.kernels.reference.quant import unpack_int4  # noqa: E402
from minillm.models import ModelConfig  # noqa: E402

from kernel_parity import simd_path  # noqa: E402,F401 (a fixture)


def ggml_tensor(kind, N, K, seed):
    w = np.random.default_rng(seed).standard_normal((N, K)).astype(np.float32) * 0.1
    w[0, :32] = np.linspace(-0.5, 1, 32)        # largest magnitude positive: Q4_0 has d = max / -8 < 0
    return w, quants.quantize(w, GGMLQuantizationType[kind])


@pytest.mark.parametrize("kind", sorted(SCHEME_OF))
@pytest.mark.parametrize("N,K,seed", [(1, 32, 0), (7, 96, 1), (64, 576, 2)])
def test_blocks_dequantize_bit_for_bit_like_gguf(kind, N, K, seed):
    _, raw = ggml_tensor(kind, N, K, seed)
    arrays = blocks_to_arrays(raw, kind, K)
    ours = reference.dequantize_weights(SCHEME_OF[kind], arrays["q"], arrays["scale"], arrays.get("min"))
    theirs = quants.dequantize(raw, GGMLQuantizationType[kind])
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    assert np.array_equal(arrays_to_blocks(SCHEME_OF[kind], arrays["q"], arrays["scale"], arrays.get("min")), raw)


def test_q4_0_keeps_ggml_range_and_negative_scales():
    _, raw = ggml_tensor("Q4_0", 4, 64, 3)
    arrays = blocks_to_arrays(raw, "Q4_0", 64)
    values = unpack_int4(arrays["q"]).astype(int) - 8
    assert values.min() == -8 and arrays["scale"][0, 0] < 0


@pytest.mark.parametrize("kind", sorted(SCHEME_OF))
def test_native_kernel_on_ggml_blocks_equals_reference(simd_path, kind):
    _, raw = ggml_tensor(kind, 37, 160, 4)
    a = blocks_to_arrays(raw, kind, 160)
    for M in (1, 5):
        x = np.random.default_rng(M).standard_normal((M, 160)).astype(np.float32)
        ref = reference.quant_matmul(x, SCHEME_OF[kind], a["q"], a["scale"], a.get("min"))
        got = kernels.quant_matmul(x, SCHEME_OF[kind], a["q"], a["scale"], a.get("min"))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_q8_0_holding_minus_128_is_dequantized_not_fed_to_the_kernels():
    w, raw = ggml_tensor("Q8_0", 32, 32, 5)
    raw = raw.copy()
    raw[0, 2] = np.uint8(0x80)                      # int8 -128 in the first value of row 0
    arrays = blocks_to_arrays(raw, "Q8_0", 32)
    assert has_int8_minimum(arrays)
    config = ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=32, norm="rmsnorm",
                         activation="swiglu", positions="rope", bias=False, d_ff=32)
    rng = np.random.default_rng(0)
    weights = {"wte.weight": Quantized("q8_0", arrays, (32, 32)), "norm_f.weight": np.ones(32, np.float32),
               "blocks.0.norm1.weight": np.ones(32, np.float32), "blocks.0.norm2.weight": np.ones(32, np.float32)}
    for name in ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "attn.wo.weight", "ffn.w_gate", "ffn.w_up",
                 "ffn.w_down"):
        weights[f"blocks.0.{name}"] = rng.standard_normal((32, 32)).astype(np.float32)
    model = build_decoder(config, weights, "test")
    table = model.wte.weight.data
    assert table[0, 0] == -128 * arrays["scale"][0, 0]
    assert np.array_equal(table, quants.dequantize(raw, GGMLQuantizationType.Q8_0))


@pytest.mark.parametrize("heads,D", [(1, 2), (3, 8), (4, 64)])
def test_interleaved_rope_on_permuted_rows_equals_rotate_half_on_hf_rows(heads, D):
    """What makes a GGUF Llama exact: q = x W^T per head, rotated; both conventions, same scores."""
    rng = np.random.default_rng(heads * D)
    C, T = 16, 5
    w = rng.standard_normal((heads * D, C))                           # HF / minillm row order
    x = rng.standard_normal((T, C))
    positions = np.arange(3, 3 + T)
    hf = (x @ w.T).reshape(T, heads, D).transpose(1, 0, 2)[None]       # (1, H, T, D)
    ours = F.rope(hf, positions, 500.0).data[0]                        # rotate-half
    g = (x @ permute_rope_rows(w, heads).T).reshape(T, heads, D).transpose(1, 0, 2)
    theirs = rope_interleaved(g, positions, 500.0)                     # GGML's interleaved pairs
    # the same vectors up to the order of their coordinates inside each head ...
    back = unpermute_rope_rows(theirs.reshape(-1, D).T, 1).T.reshape(theirs.shape)   # GGUF -> HF coordinates
    np.testing.assert_allclose(back, ours, atol=1e-10)
    # ... so every dot product q . k (what attention uses) is equal
    np.testing.assert_allclose(np.einsum("htd,hsd->hts", theirs, theirs), np.einsum("htd,hsd->hts", ours, ours),
                               atol=1e-9)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, heads), heads), w)
