"""Hypothesis strategies for transformer-shaped inputs.

    from minillm.testing.strategies import shapes, arrays_f64, attention_configs
    @given(x=arrays_f64(shapes(min_dims=2)))
    def test_something(x): ...

They reach the awkward cases on purpose: sides of 1, odd head dims, GQA group sizes, T = 1,
T != S, masks that leave a single visible key, and large logits.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=5):
    """Array shapes: min_dims..max_dims axes, each of min_side..max_side."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def arrays_f64(shape, low=-2.0, high=2.0, unique=False):
    """float64 arrays of `shape` (a tuple or a shapes() strategy) with finite values in [low, high]."""
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, width=64)
    return hnp.arrays(np.float64, shape, elements=elements, unique=unique)


def arrays_like(shape, dtype=np.float64, scale=1.0):
    """Normal(0, scale^2) arrays of a fixed shape, drawn from a Hypothesis-chosen seed (fast for big shapes)."""
    return st.integers(0, 2**32 - 1).map(
        lambda seed: (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype))


@st.composite
def attention_configs(draw, max_batch=2, max_heads=4, max_len=6, head_dims=(1, 2, 3, 4, 5, 8), even_head_dim=False):
    """A dict B, H, Hkv, T, S, D with H % Hkv == 0 (MHA, GQA or MQA), T <= S, odd D allowed."""
    B = draw(st.integers(1, max_batch))
    Hkv = draw(st.integers(1, max_heads))
    group = draw(st.integers(1, max(1, max_heads // Hkv)))
    S = draw(st.integers(1, max_len))
    T = draw(st.integers(1, S))
    dims = [d for d in head_dims if d % 2 == 0] if even_head_dim else list(head_dims)
    D = draw(st.sampled_from(dims))
    return dict(B=B, H=Hkv * group, Hkv=Hkv, T=T, S=S, D=D)


@st.composite
def key_padding_masks(draw, B, S):
    """(B, S) bool masks, True = keep, with at least one visible key per row, often just one."""
    rows = []
    for _ in range(B):
        if draw(st.booleans()):
            row = np.zeros(S, dtype=bool)
            row[draw(st.integers(0, S - 1))] = True          # a single visible key
        else:
            row = np.array(draw(st.lists(st.booleans(), min_size=S, max_size=S)), dtype=bool)
            row[-1] = True       # the last key is visible to every query, causal or not
        rows.append(row)
    return np.stack(rows)


def logits(N, V, max_scale=1e4, dtype=np.float64):
    """(N, V) logits at magnitudes from 1 up to max_scale, to test softmax/cross-entropy stability."""
    return st.tuples(st.integers(0, 2**32 - 1), st.floats(1.0, max_scale)).map(
        lambda a: (np.random.default_rng(a[0]).standard_normal((N, V)) * a[1]).astype(dtype))
