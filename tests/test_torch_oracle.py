"""PyTorch as an independent oracle for minillm.functional: forward values and every input
gradient, in float64, on both kernel backends.

Each test builds the same inputs twice, runs minillm and a torch version written from the
op's definition, pushes one random upstream gradient through both, and compares. Skipped
when torch is not installed.
"""
import contextlib
import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import minillm.functional as F  # noqa: E402
import minillm.kernels as kernels  # noqa: E402
from minillm import Tensor  # noqa: E402

BACKENDS = ["numpy"] + (["native"] if kernels.native.AVAILABLE else [])
RTOL, ATOL = 1e-10, 1e-10

pytestmark = pytest.mark.parametrize("backend_name", BACKENDS)


@contextlib.contextmanager
def backend(name):
    previous = kernels.get_backend()
    kernels.set_backend(name)
    try:
        yield
    finally:
        kernels.set_backend(previous)


def compare_with_torch(backend_name, mini_fn, torch_fn, inputs, seed, rtol=RTOL, atol=ATOL):
    """Run mini_fn on minillm Tensors and torch_fn on torch tensors made from the same float64
    `inputs`; check the outputs, then backpropagate one random upstream gradient through both
    and check the gradient of every input."""
    inputs = [np.asarray(a, dtype=np.float64) for a in inputs]
    with backend(backend_name):
        xs = [Tensor(a.copy(), requires_grad=True) for a in inputs]
        out = mini_fn(*xs)
        ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
        t_out = torch_fn(*ts)
        assert out.shape == tuple(t_out.shape), (out.shape, tuple(t_out.shape))
        assert out.dtype == np.float64
        np.testing.assert_allclose(out.data, t_out.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")

        dy = np.asarray(np.random.default_rng(seed + 1).standard_normal(out.shape))
        out.backward(dy)
        t_out.backward(torch.from_numpy(dy.copy()))
        for i, (x, t) in enumerate(zip(xs, ts)):
            expected = np.zeros(x.shape) if t.grad is None else t.grad.numpy()
            assert x.grad is not None, f"input {i} got no gradient"
            np.testing.assert_allclose(x.grad, expected, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")


seeds = st.integers(0, 2**31 - 1)
sides = st.integers(1, 6)
lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# --------------------------------------------------------------------------- linear, embedding

@given(seed=seeds, lead=lead_shapes, n_in=sides, n_out=sides, bias=st.booleans())
def test_linear(backend_name, seed, lead, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    inputs = [normal(rng, *lead, n_in), normal(rng, n_out, n_in)] + ([normal(rng, n_out)] if bias else [])
    compare_with_torch(backend_name, F.linear, TF.linear, inputs, seed)


@given(seed=seeds, ids_shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       V=sides, C=sides)
def test_embedding(backend_name, seed, ids_shape, V, C):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=ids_shape)          # repeats are likely: their gradients must add up
    compare_with_torch(backend_name, lambda w: F.embedding(ids, w),
                       lambda w: TF.embedding(torch.from_numpy(ids), w), [normal(rng, V, C)], seed)


# --------------------------------------------------------------------------- norms

eps_values = st.sampled_from([1e-5, 1e-6, 1e-2])


@given(seed=seeds, lead=lead_shapes, C=sides, eps=eps_values, scale=st.sampled_from([1.0, 1e-2, 30.0]))
def test_rms_norm(backend_name, seed, lead, C, eps, scale):
    rng = np.random.default_rng(seed)
    x, w = normal(rng, *lead, C, scale=scale), normal(rng, C)

    def by_hand(x, w):
        return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * w

    compare_with_torch(backend_name, lambda x, w: F.rms_norm(x, w, eps=eps), by_hand, [x, w], seed)
    compare_with_torch(backend_name, lambda x, w: F.rms_norm(x, w, eps=eps),
                       lambda x, w: TF.rms_norm(x, (C,), w, eps=eps), [x, w], seed)


@given(seed=seeds, lead=lead_shapes, C=sides, eps=eps_values, scale=st.sampled_from([1.0, 1e-2, 30.0]))
def test_layer_norm(backend_name, seed, lead, C, eps, scale):
    rng = np.random.default_rng(seed)
    x = normal(rng, *lead, C, scale=scale) + 3.0 * scale     # a non-zero mean to subtract
    compare_with_torch(backend_name, lambda x, w, b: F.layer_norm(x, w, b, eps=eps),
                       lambda x, w, b: TF.layer_norm(x, (C,), w, b, eps=eps),
                       [x, normal(rng, C), normal(rng, C)], seed)


# --------------------------------------------------------------------------- activations

@given(seed=seeds, shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
       scale=st.sampled_from([1.0, 5.0, 40.0]))
def test_gelu_tanh(backend_name, seed, shape, scale):
    x = normal(np.random.default_rng(seed), *shape, scale=scale)
    compare_with_torch(backend_name, F.gelu, lambda x: TF.gelu(x, approximate="tanh"), [x], seed)


@given(seed=seeds, shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
       scale=st.sampled_from([1.0, 5.0, 40.0]))
def test_silu(backend_name, seed, shape, scale):
    x = normal(np.random.default_rng(seed), *shape, scale=scale)
    compare_with_torch(backend_name, F.silu, TF.silu, [x], seed)


@given(seed=seeds, lead=lead_shapes, C=sides, Fdim=sides)
def test_swiglu(backend_name, seed, lead, C, Fdim):
    rng = np.random.default_rng(seed)
    inputs = [normal(rng, *lead, C), normal(rng, Fdim, C), normal(rng, Fdim, C), normal(rng, C, Fdim)]

    def by_hand(x, w_gate, w_up, w_down):
        return TF.linear(TF.silu(TF.linear(x, w_gate)) * TF.linear(x, w_up), w_down)

    compare_with_torch(backend_name, F.swiglu, by_hand, inputs, seed)


# --------------------------------------------------------------------------- softmax, cross-entropy

@st.composite
def shape_and_axis(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, axis


@given(seed=seeds, shape_axis=shape_and_axis(), scale=st.sampled_from([1.0, 10.0, 1e3]))
def test_softmax(backend_name, seed, shape_axis, scale):
    shape, axis = shape_axis
    x = normal(np.random.default_rng(seed), *shape, scale=scale)
    compare_with_torch(backend_name, lambda x: F.softmax(x, axis=axis), lambda x: torch.softmax(x, dim=axis), [x], seed)


@given(seed=seeds, shape_axis=shape_and_axis(), scale=st.sampled_from([1.0, 10.0, 1e3]))
def test_log_softmax(backend_name, seed, shape_axis, scale):
    shape, axis = shape_axis
    x = normal(np.random.default_rng(seed), *shape, scale=scale)
    compare_with_torch(backend_name, lambda x: F.log_softmax(x, axis=axis),
                       lambda x: torch.log_softmax(x, dim=axis), [x], seed)


@given(seed=seeds, N=st.integers(1, 8), V=sides, reduction=st.sampled_from(["mean", "sum", "none"]),
       ignore_index=st.sampled_from([-100, -1, 0]), p_ignore=st.sampled_from([0.0, 0.3, 0.7]),
       scale=st.sampled_from([1.0, 10.0, 1e4]))
def test_cross_entropy(backend_name, seed, N, V, reduction, ignore_index, p_ignore, scale):
    rng = np.random.default_rng(seed)
    logits = normal(rng, N, V, scale=scale)
    targets = rng.integers(0, V, size=N)
    targets[rng.random(N) < p_ignore] = ignore_index
    if reduction == "mean" and (targets == ignore_index).all():
        if ignore_index == 0 and V == 1:     # every row is necessarily ignored: torch gives NaN, minillm 0
            return
        targets[0] = V - 1                   # keep one row so the mean is over something
    compare_with_torch(backend_name,
                       lambda x: F.cross_entropy(x, targets, ignore_index=ignore_index, reduction=reduction),
                       lambda x: TF.cross_entropy(x, torch.from_numpy(targets), ignore_index=ignore_index,
                                                  reduction=reduction),
                       [logits], seed)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_ignored_rows_fixed_case(backend_name, reduction):
    rng = np.random.default_rng(7)
    logits = normal(rng, 6, 5)
    targets = np.array([3, -100, 0, 4, -100, 2])
    compare_with_torch(backend_name, lambda x: F.cross_entropy(x, targets, reduction=reduction),
                       lambda x: TF.cross_entropy(x, torch.from_numpy(targets), reduction=reduction),
                       [logits], 7)


# --------------------------------------------------------------------------- rope

def rope_by_hand(x, positions, theta):
    """Rotate-half RoPE: x * cos + rotate_half(x) * sin with angles p * theta^(-2i/D), duplicated."""
    D = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)          # (D/2,)
    angles = torch.from_numpy(np.asarray(positions)).to(torch.float64)[..., None] * inv_freq   # (T or B,T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                   # (..., T, D)
    if angles.ndim == 3:                                                           # (B, T, D) -> (B, 1, T, D)
        angles = angles[:, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * torch.cos(angles) + rotated * torch.sin(angles)


@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 4), T=st.integers(1, 8), D=st.sampled_from([2, 4, 6, 8]),
       per_batch=st.booleans(), offset=st.sampled_from([0, 5, 1000]), theta=st.sampled_from([10000.0, 500000.0, 10.0]))
def test_rope(backend_name, seed, B, H, T, D, per_batch, offset, theta):
    rng = np.random.default_rng(seed)
    x = normal(rng, B, H, T, D)
    if per_batch:
        positions = rng.integers(0, 64, size=(B, T)) + offset       # any positions, per sequence
    else:
        positions = np.arange(T) + offset
    compare_with_torch(backend_name, lambda x: F.rope(x, positions, theta=theta),
                       lambda x: rope_by_hand(x, positions, theta), [x], seed)


# --------------------------------------------------------------------------- attention

def attention_bias_and_visible(B, H, T, S, causal, window, alibi_slopes, key_padding_mask):
    """The additive score bias (B, H, T, S) (alibi, 0 elsewhere) and which keys each query sees."""
    pos = (S - T + np.arange(T))[:, None]                 # (T, 1) absolute query positions
    j = np.arange(S)[None, :]                             # (1, S)
    dist = pos - j if causal else np.abs(pos - j)
    visible = np.ones((B, H, T, S), dtype=bool)
    if causal:
        visible &= (j <= pos)
    if window is not None:
        visible &= (np.abs(pos - j) < window) if not causal else (pos - j < window)
    if key_padding_mask is not None:
        visible &= key_padding_mask[:, None, None, :]
    bias = np.zeros((B, H, T, S))
    if alibi_slopes is not None:
        bias = bias - alibi_slopes[None, :, None, None] * dist
    return bias, visible


def torch_attention(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """scaled_dot_product_attention with an explicit float mask and k, v repeated for GQA/MQA.

    A query that sees no key would be NaN in torch; such rows get a dummy all-visible mask and
    their output is multiplied by 0, which is exactly minillm's "zeros, zero gradients" contract."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    bias, visible = attention_bias_and_visible(B, H, T, S, causal, window, alibi_slopes, key_padding_mask)
    has_key = visible.any(axis=-1, keepdims=True)                      # (B, H, T, 1)
    visible = visible | ~has_key
    mask = torch.from_numpy(np.where(visible, bias, -np.inf))
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    out = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out * torch.from_numpy(has_key.astype(np.float64))


@st.composite
def attention_cases(draw):
    B = draw(st.integers(1, 2))
    Hkv = draw(st.sampled_from([1, 2, 4]))
    H = Hkv * draw(st.sampled_from([1, 2, 4] if Hkv == 1 else [1, 2]))
    S = draw(st.integers(1, 8))
    T = draw(st.integers(1, S))
    D = draw(st.sampled_from([2, 4, 6, 8]))
    options = dict(causal=draw(st.booleans()), window=draw(st.one_of(st.none(), st.integers(1, S + 1))))
    alibi = draw(st.sampled_from([None, "standard", "random"]))
    if alibi == "standard":
        options["alibi_slopes"] = np.asarray(F.alibi_slopes(H), dtype=np.float64)
    elif alibi == "random":
        options["alibi_slopes"] = np.random.default_rng(draw(seeds)).uniform(0.01, 2.0, size=H)
    if draw(st.booleans()):
        mask = np.random.default_rng(draw(seeds)).random((B, S)) < 0.7
        if draw(st.booleans()):
            mask[:, -1] = True           # every query (causal or not) then sees at least one key
        options["key_padding_mask"] = mask
    return (B, H, Hkv, T, S, D), options, draw(seeds)


@given(case=attention_cases())
def test_attention(backend_name, case):
    (B, H, Hkv, T, S, D), options, seed = case
    rng = np.random.default_rng(seed)
    inputs = [normal(rng, B, H, T, D), normal(rng, B, Hkv, S, D), normal(rng, B, Hkv, S, D)]
    compare_with_torch(backend_name, lambda q, k, v: F.attention(q, k, v, **options),
                       lambda q, k, v: torch_attention(q, k, v, **options), inputs, seed)


NAMED_ATTENTION_CASES = {
    # name: ((B, H, Hkv, T, S, D), options)
    "mha_causal": ((2, 2, 2, 5, 5, 4), dict(causal=True)),
    "mha_bidirectional": ((2, 2, 2, 5, 5, 4), dict(causal=False)),
    "gqa_causal": ((2, 4, 2, 6, 6, 8), dict(causal=True)),
    "gqa_bidirectional": ((1, 4, 2, 4, 7, 6), dict(causal=False)),
    "mqa_causal": ((2, 4, 1, 6, 6, 4), dict(causal=True)),
    "mqa_t_ne_s": ((2, 4, 1, 3, 8, 2), dict(causal=True)),
    "causal_t_ne_s": ((2, 2, 2, 3, 7, 4), dict(causal=True)),
    "causal_single_query_kv_cache": ((2, 4, 2, 1, 8, 8), dict(causal=True)),
    "sliding_window_causal": ((2, 4, 2, 8, 8, 4), dict(causal=True, window=3)),
    "sliding_window_causal_t_ne_s": ((1, 2, 1, 4, 8, 6), dict(causal=True, window=2)),
    "sliding_window_of_one": ((1, 2, 2, 5, 5, 4), dict(causal=True, window=1)),
    "sliding_window_bidirectional": ((2, 2, 2, 6, 6, 4), dict(causal=False, window=2)),
    "alibi_causal": ((2, 4, 4, 6, 6, 4), dict(causal=True, alibi_slopes="standard")),
    "alibi_bidirectional": ((2, 4, 2, 5, 5, 8), dict(causal=False, alibi_slopes="standard")),
    "alibi_causal_t_ne_s_window": ((1, 4, 1, 3, 7, 4), dict(causal=True, window=4, alibi_slopes="standard")),
    "padding_causal": ((2, 4, 2, 6, 6, 4), dict(causal=True, key_padding_mask="left_pad")),
    "padding_bidirectional": ((2, 2, 1, 5, 5, 6), dict(causal=False, key_padding_mask="right_pad")),
    "padding_everything": ((2, 4, 2, 4, 7, 8), dict(causal=True, window=5, alibi_slopes="standard",
                                                    key_padding_mask="right_pad")),
}


@pytest.mark.parametrize("name", sorted(NAMED_ATTENTION_CASES))
def test_attention_named_cases(backend_name, name):
    (B, H, Hkv, T, S, D), options = NAMED_ATTENTION_CASES[name]
    options = dict(options)
    if options.get("alibi_slopes") == "standard":
        options["alibi_slopes"] = np.asarray(F.alibi_slopes(H), dtype=np.float64)
    pad = options.get("key_padding_mask")
    if pad is not None:
        mask = np.ones((B, S), dtype=bool)
        if pad == "left_pad":        # batch row 1 has 2 leading pad tokens
            mask[-1, :2] = False
        else:                        # batch row 0 hides a middle key, row 1 has 2 trailing pad tokens (non-causal)
            mask[0, S // 2] = False
            if not options["causal"]:
                mask[-1, -2:] = False
        options["key_padding_mask"] = mask
    _, visible = attention_bias_and_visible(B, H, T, S, options.get("causal", True), options.get("window"),
                                               options.get("alibi_slopes"), options.get("key_padding_mask"))
    if pad != "left_pad":     # the other named cases keep at least one key visible per query
        assert visible.any(axis=-1).all()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    inputs = [normal(rng, B, H, T, D), normal(rng, B, Hkv, S, D), normal(rng, B, Hkv, S, D)]
    compare_with_torch(backend_name, lambda q, k, v: F.attention(q, k, v, **options),
                       lambda q, k, v: torch_attention(q, k, v, **options), inputs, 3)


def test_attention_enable_gqa_agrees(backend_name):
    """The same GQA case against torch's own enable_gqa path instead of repeat_interleave."""
    rng = np.random.default_rng(11)
    B, H, Hkv, T, S, D = 2, 4, 2, 3, 6, 4
    inputs = [normal(rng, B, H, T, D), normal(rng, B, Hkv, S, D), normal(rng, B, Hkv, S, D)]
    pos = (S - T + np.arange(T))[:, None]
    mask = torch.from_numpy(np.where(np.arange(S)[None, :] <= pos, 0.0, -np.inf))
    compare_with_torch(backend_name, lambda q, k, v: F.attention(q, k, v, causal=True),
                       lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
                       inputs, 11)
