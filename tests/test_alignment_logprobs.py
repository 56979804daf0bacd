import numpy as np
from hypothesis import given, strategies as st

from minillm.alignment.logprobs import sequence_logprobs, token_logprobs
from minillm.testing import gradcheck
from minillm.testing.strategies import arrays_f64


def _targets(rng, B, T, V):
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.3] = -100                     # unscored positions
    return targets


@given(B=st.integers(1, 3), T=st.integers(1, 5), V=st.integers(2, 7), seed=st.integers(0, 10 ** 6))
def test_token_logprobs_are_log_softmax_at_the_targets(B, T, V, seed):
    rng = np.random.default_rng(seed)
    logits, targets = rng.standard_normal((B, T, V)) * 3, _targets(rng, B, T, V)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.where(targets >= 0, np.take_along_axis(log_softmax, np.maximum(targets, 0)[..., None], -1)[..., 0], 0)
    np.testing.assert_allclose(token_logprobs(logits, targets).data, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sequence_logprobs(logits, targets).data, expected.sum(1), rtol=1e-10, atol=1e-12)


@given(logits=arrays_f64((2, 3, 4)), seed=st.integers(0, 10 ** 6))
def test_sequence_logprobs_gradient(logits, seed):
    targets = _targets(np.random.default_rng(seed), 2, 3, 4)
    gradcheck(lambda x: sequence_logprobs(x, targets), [logits])


def test_targets_of_the_wrong_shape_are_refused():
    import pytest
    with pytest.raises(ValueError, match="token_logprobs: targets must have shape"):
        token_logprobs(np.zeros((2, 3, 4)), np.zeros((2, 4), dtype=int))


def test_hidden_states_then_head_equal_forward():
    from minillm.models import DecoderLM, ModelConfig
    config = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = DecoderLM(config, rng=np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 11, size=(2, 6))
    mask = np.ones((2, 6), dtype=bool)
    mask[1, 4:] = False
    hidden = model.hidden_states(ids, key_padding_mask=mask)
    assert hidden.shape == (2, 6, 8)
    np.testing.assert_array_equal(model.head(hidden).data, model(ids, key_padding_mask=mask).data)
