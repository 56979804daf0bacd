import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm as mm
import minillm.functional as F
from minillm import nn
from minillm.testing import gradcheck_module

# The block flavours the models are built from (each also gradchecked as a whole below).
FLAVOURS = {
    "gpt2: layernorm + gelu + learned positions": dict(norm="layernorm", activation="gelu", positions=None,
                                                       bias=True),
    "llama: rmsnorm + swiglu + rope + gqa": dict(norm="rmsnorm", activation="swiglu", positions="rope",
                                                 n_kv_heads=2, bias=False),
    "alibi": dict(norm="layernorm", activation="gelu", positions="alibi"),
    "sliding window + mqa": dict(norm="rmsnorm", activation="swiglu", positions="rope", n_kv_heads=1, window=2),
    "bidirectional + padding": dict(norm="layernorm", activation="gelu", positions=None, causal=False),
}


def make_block(d_model, n_heads, rng=None, dtype=np.float32, **knobs):
    """nn.TransformerBlock(nn.BlockConfig(d_model, n_heads, **knobs)): the block the knobs describe."""
    return nn.TransformerBlock(nn.BlockConfig(d_model=d_model, n_heads=n_heads, **knobs), rng=rng, dtype=dtype)


class BlockWithLearnedPositions(nn.Module):
    """Token embedding + learned position embedding + one block: the GPT-2 flavour end to end."""

    def __init__(self, vocab, block_size, rng, **block_args):
        self.wte = nn.Embedding(vocab, 8, init_std=0.5, rng=rng)
        self.wpe = nn.Embedding(block_size, 8, init_std=0.5, rng=rng)
        self.block = make_block(8, 4, d_ff=12, init_std=0.4, rng=rng, **block_args)

    def forward(self, ids):
        return self.block(self.wte(ids) + self.wpe(np.arange(ids.shape[1])))


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_transformer_block_passes_gradcheck_as_a_whole(flavour):
    rng = np.random.default_rng(0)
    block = make_block(8, 4, d_ff=12, init_std=0.4, rng=rng, **FLAVOURS[flavour])
    x = rng.standard_normal((2, 5, 8))
    mask = np.array([[True] * 5, [True, True, False, True, False]])
    padding = mask if flavour.startswith("bidirectional") else None
    gradcheck_module(block, [x], forward=lambda m, x: m(x, key_padding_mask=padding))


def test_embeddings_plus_block_pass_gradcheck():
    rng = np.random.default_rng(1)
    model = BlockWithLearnedPositions(11, 6, rng, **FLAVOURS["gpt2: layernorm + gelu + learned positions"])
    ids = rng.integers(0, 11, size=(2, 6))
    gradcheck_module(model, [ids])


@given(st.integers(1, 3), st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3)]), st.integers(1, 4),
       st.sampled_from(list(FLAVOURS)))
def test_block_gradcheck_on_generated_shapes(B, heads, T, flavour):
    n_heads, n_kv_heads = heads
    args = dict(FLAVOURS[flavour], n_kv_heads=n_kv_heads)
    rng = np.random.default_rng(T)
    block = make_block(2 * n_heads, n_heads, d_ff=5, init_std=0.4, rng=rng, **args)
    gradcheck_module(block, [rng.standard_normal((B, T, 2 * n_heads))])


def test_attention_module_equals_functional_composition():
    rng = np.random.default_rng(2)
    attn = nn.Attention(nn.BlockConfig(d_model=8, n_heads=4, n_kv_heads=2, positions="rope", init_std=0.3), rng=rng,
                        dtype=np.float64)
    x = rng.standard_normal((2, 3, 8))
    q = (x @ attn.wq.weight.data.T).reshape(2, 3, 4, 2).transpose(0, 2, 1, 3)
    k = (x @ attn.wk.weight.data.T).reshape(2, 3, 2, 2).transpose(0, 2, 1, 3)
    v = (x @ attn.wv.weight.data.T).reshape(2, 3, 2, 2).transpose(0, 2, 1, 3)
    pos = np.arange(3)
    y = F.attention(F.rope(q, pos), F.rope(k, pos), v).data.transpose(0, 2, 1, 3).reshape(2, 3, 8)
    np.testing.assert_allclose(attn(x).data, y @ attn.wo.weight.data.T, rtol=1e-12)


def test_parameters_have_names_and_exact_counts():
    block = make_block(8, 4, n_kv_heads=2, d_ff=12, norm="rmsnorm", activation="swiglu",
                                positions="rope", bias=False)
    names = [n for n, _ in block.named_parameters()]
    assert names == ["norm1.weight", "attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "attn.wo.weight",
                     "norm2.weight", "ffn.w_gate", "ffn.w_up", "ffn.w_down"]
    # norms 2 * 8; wq, wo 8 * 8; wk, wv (2 heads * 2 dims) * 8; swiglu 3 * 8 * 12
    assert block.num_parameters() == 2 * 8 + 2 * 64 + 2 * 32 + 3 * 96
    gpt = make_block(8, 4, d_ff=12)
    # layernorms 2 * 16; four 8x8 linears with bias; mlp 8->12->8 with biases
    assert gpt.num_parameters() == 2 * 16 + 4 * (64 + 8) + (96 + 12) + (96 + 8)
    layers = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1, bias=False)])
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight"]
    assert len(layers) == 2 and layers[-1] is layers[1]


def test_state_dict_round_trip_and_clear_errors():
    a = make_block(8, 2, d_ff=8, rng=np.random.default_rng(0))
    b = make_block(8, 2, d_ff=8, rng=np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((1, 3, 8)).astype(np.float32)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x).data, b(x).data)
    state = a.state_dict()
    state["attn.wq.weight"][:] = 0      # a copy: the model is untouched
    assert a.attn.wq.weight.data.any()

    with pytest.raises(KeyError, match=r"missing keys \['norm1.weight'\]"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "norm1.weight"})
    with pytest.raises(KeyError, match=r"unexpected keys \['extra'\]"):
        b.load_state_dict({**a.state_dict(), "extra": np.zeros(1)})
    bad = {**a.state_dict(), "attn.wq.weight": np.zeros((8, 4))}
    before = b.attn.wk.weight.data.copy()
    with pytest.raises(ValueError, match=r"attn.wq.weight has shape \(8, 4\) in the state but \(8, 8\)"):
        b.load_state_dict(bad)
    np.testing.assert_array_equal(b.attn.wk.weight.data, before)   # nothing half-loaded


def test_train_eval_switches_dropout_everywhere():
    block = make_block(8, 2, d_ff=8, dropout=0.5, init_std=0.5, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 4, 8)).astype(np.float32)
    block.eval()
    assert not block.dropout.training and not block.attn.training
    np.testing.assert_array_equal(block(x).data, block(x).data)
    block.train()
    assert block.dropout.training
    assert not np.array_equal(block(x).data, block(x).data)


def test_zero_grad_and_float32_training_step():
    block = make_block(8, 2, d_ff=8)
    x = mm.tensor(np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32))
    block(x).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())


def test_bad_module_configs():
    with pytest.raises(ValueError, match="d_model 10 must be a multiple of n_heads 4"):
        nn.BlockConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="n_heads 4 must be a multiple of n_kv_heads 3"):
        nn.BlockConfig(d_model=8, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="RoPE needs an even head dim"):
        nn.BlockConfig(d_model=9, n_heads=3, positions="rope")
    with pytest.raises(ValueError, match="positions must be one of"):
        nn.BlockConfig(d_model=8, n_heads=4, positions="learned")
    with pytest.raises(ValueError, match="norm must be one of"):
        nn.BlockConfig(d_model=8, n_heads=2, norm="batchnorm")
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.BlockConfig(d_model=8, n_heads=2, activation="relu")
    with pytest.raises(ValueError, match="window must be a positive int"):
        nn.BlockConfig(d_model=8, n_heads=2, window=0)
    with pytest.raises(TypeError, match="config must be an nn.BlockConfig"):
        nn.Attention(8)
    with pytest.raises(TypeError, match="config must be an nn.BlockConfig"):
        nn.TransformerBlock({"d_model": 8, "n_heads": 2})
    with pytest.raises(ValueError, match=r"x must be \(B, T, 8\)"):
        nn.Attention(nn.BlockConfig(d_model=8, n_heads=2))(np.zeros((3, 8), np.float32))


def test_block_config_resolves_its_defaults():
    c = nn.BlockConfig(d_model=12, n_heads=4)
    assert (c.kv_heads, c.head_dim, c.hidden_dim) == (4, 3, 48)
    c = nn.BlockConfig(d_model=12, n_heads=4, n_kv_heads=1, d_ff=20)
    assert (c.kv_heads, c.head_dim, c.hidden_dim) == (1, 3, 20)
    attn = nn.Attention(c)
    assert attn.wk.weight.shape == (3, 12) and attn.wq.weight.shape == (12, 12)
