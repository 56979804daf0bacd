"""Cross-attention and T5's relative position bias, gradchecked in float64 on shapes Hypothesis
draws: source and target lengths that differ, sources padded on the left or the right (each row its
own way), targets padded with -100, a query row that sees no key at all. On both backends."""
import numpy as np
from hypothesis import given, settings, strategies as st

from minillm import kernels, nn
from minillm.autograd import no_grad
from minillm.models import EncoderDecoderModel, Seq2SeqConfig
from minillm.testing import check_gradients, gradcheck_module


def padded_mask(draw, B, S, allow_empty=False):
    """(B, S) bool: each row keeps a run of n real tokens on the left (right padding) or the right."""
    rows = []
    for _ in range(B):
        n = draw(st.integers(0 if allow_empty else 1, S))
        row = np.zeros(S, bool)
        if draw(st.booleans()):
            row[:n] = True
        else:
            row[S - n:] = True
        rows.append(row)
    return np.array(rows)


@st.composite
def cross_attention_cases(draw):
    B, T, S = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    H, head_dim = draw(st.integers(1, 2)), draw(st.sampled_from([None, 2, 3]))
    return dict(B=B, T=T, S=S, H=H, head_dim=head_dim, scaled=draw(st.booleans()), with_bias=draw(st.booleans()),
                mask=padded_mask(draw, B, S, allow_empty=True), seed=draw(st.integers(0, 2 ** 16)),
                backend=draw(st.sampled_from(["numpy", "native"])))


@settings(max_examples=10)
@given(cross_attention_cases())
def test_cross_attention_gradcheck_on_generated_shapes(case):
    rng = np.random.default_rng(case["seed"])
    H, C = case["H"], 2 * case["H"]
    previous = kernels.get_backend()
    kernels.set_backend(case["backend"] if kernels.native.AVAILABLE else "numpy")
    try:
        attn = nn.MultiHeadAttention(C, H, head_dim=case["head_dim"], bias=case["scaled"], scaled=case["scaled"],
                                     init_std=0.5, rng=rng)
        x, memory = rng.standard_normal((case["B"], case["T"], C)), rng.standard_normal((case["B"], case["S"], C))
        inputs = [x, memory] + ([rng.standard_normal((H, case["T"], case["S"]))] if case["with_bias"] else [])
        gradcheck_module(attn, inputs, forward=lambda m, x, mem, *b: m(x, source=mem, bias=b[0] if b else None,
                                                                         key_padding_mask=case["mask"]))
        with no_grad():                                                    # a row with no key gives zeros
            out = attn(x, source=memory, key_padding_mask=case["mask"]).data
        empty = ~case["mask"].any(axis=1)
        np.testing.assert_allclose(out[empty], np.broadcast_to(attn.wo.bias.data if attn.wo.bias is not None else 0,
                                                               out[empty].shape), atol=1e-12)
    finally:
        kernels.set_backend(previous)


TINY_T5 = dict(vocab_size=7, block_size=8, n_layer=1, n_decoder_layer=1, n_head=2, n_embd=4, d_ff=4, init_std=0.4,
               num_buckets=4, max_distance=6)


@st.composite
def seq2seq_cases(draw):
    B, S, T = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    src_mask = padded_mask(draw, B, S)
    src = np.where(src_mask, np.array(draw(st.lists(st.integers(2, 6), min_size=B * S, max_size=B * S))).reshape(B, S),
                   0)
    lengths = [draw(st.integers(1, T)) for _ in range(B)]
    labels = np.array([[draw(st.integers(1, 6)) if t < n else -100 for t in range(T)] for n in lengths])
    return dict(src=src, src_mask=src_mask, labels=labels, gated=draw(st.booleans()), seed=draw(st.integers(0, 99)))


CHECKED = ("enc_pos.table", "dec_pos.table", "decoder.0.cross.wq.weight", "decoder.0.cross.wk.weight")


@settings(max_examples=6)
@given(seq2seq_cases())
def test_seq2seq_loss_gradcheck_on_generated_lengths_and_padding(case):
    """The whole model's loss, through the encoder's bidirectional bias, the decoder's causal one and
    cross-attention; the parameters those feed are checked (every parameter: test_models_encoder.py)."""
    model = EncoderDecoderModel(Seq2SeqConfig(**TINY_T5, gated=case["gated"],
                                              activation="gelu_tanh" if case["gated"] else "relu"),
                                rng=np.random.default_rng(case["seed"])).to(np.float64)
    params = dict(model.named_parameters())
    check_gradients(lambda: model(case["src"], case["labels"], src_mask=case["src_mask"])[1],
                    [(name, params[name]) for name in CHECKED])
