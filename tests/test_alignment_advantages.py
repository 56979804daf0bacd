"""GAE against the textbook loop over each row's actions and hand-worked numbers; group-relative
advantages standardised within each group; the PPO / GRPO loss nodes equal direct NumPy formulas and
pass float64 gradchecks on generated shapes; the adaptive KL controller follows Ziegler et al.'s rule."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from minillm.alignment.advantages import gae, group_advantages, whiten
from minillm.alignment.kl_control import AdaptiveKLController, FixedKLController
from minillm.alignment.ppo_loss import (clip_fraction, clipped_policy_loss, clipped_value_loss, kl_penalty,
                                        masked_entropy)
from minillm.autograd import Tensor
from minillm.testing import gradcheck


def _rollout_mask(rng, B, T):
    """Each row: a prompt, then a contiguous run of actions, then padding."""
    mask = np.zeros((B, T), bool)
    for b in range(B):
        start = rng.integers(0, T)
        mask[b, start:rng.integers(start + 1, T + 1)] = True
    return mask


def _gae_loop(rewards, values, gamma, lam):
    """Textbook GAE over one row's actions: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


@given(B=st.integers(1, 4), T=st.integers(1, 7), gamma=st.floats(0, 1), lam=st.floats(0, 1),
       seed=st.integers(0, 10 ** 6))
def test_gae_equals_the_direct_sum_over_each_rows_actions(B, T, gamma, lam, seed):
    rng = np.random.default_rng(seed)
    rewards, values, mask = rng.standard_normal((B, T)), rng.standard_normal((B, T)), _rollout_mask(rng, B, T)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b in range(B):
        expected = _gae_loop(rewards[b, mask[b]], values[b, mask[b]], gamma, lam)
        np.testing.assert_allclose(advantages[b, mask[b]], expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(returns[b, mask[b]], np.array(expected) + values[b, mask[b]], rtol=1e-10, atol=1e-12)
    assert np.all(advantages[~mask] == 0) and np.all(returns[~mask] == 0)


def test_gae_by_hand():
    # one prompt position, then actions with rewards (0, 0, 1) and values (0.5, 0.5, 0.5); gamma 1, lam 0.5
    rewards = np.array([[9.0, 0.0, 0.0, 1.0]])
    values = np.array([[9.0, 0.5, 0.5, 0.5]])
    mask = np.array([[False, True, True, True]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # deltas: 0 + 0.5 - 0.5 = 0, 0, 1 - 0.5 = 0.5; A_3 = 0.5, A_2 = 0 + 0.5 * 0.5 = 0.25, A_1 = 0.125
    np.testing.assert_allclose(advantages, [[0.0, 0.125, 0.25, 0.5]])
    np.testing.assert_allclose(returns, [[0.0, 0.625, 0.75, 1.0]])
    # lam = 1: Monte Carlo, A_t = sum of rewards after t - V_t
    advantages, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(advantages, [[0.0, 0.5, 0.5, 0.5]])


def test_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="gae: rewards"):
        gae(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 3), bool), 1.0, 0.95)


def test_group_advantages_by_hand_and_bad_groups():
    np.testing.assert_allclose(group_advantages([1.0, 0.0, 3.0, 3.0], 2, eps=0.0 + 1e-12), [1, -1, 0, 0], atol=1e-9)
    a = group_advantages([0.0, 1.0, 2.0], 3)
    np.testing.assert_allclose(a, np.array([-1, 0, 1]) / np.std([0, 1, 2.0]), rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages([1.0, 2.0, 3.0], 2)


def test_whiten_has_zero_mean_unit_std_on_the_mask():
    rng = np.random.default_rng(0)
    x, mask = rng.standard_normal((3, 5)) * 4 + 2, _rollout_mask(rng, 3, 5)
    w = whiten(x, mask)
    assert abs(w[mask].mean()) < 1e-9 and abs(w[mask].std() - 1) < 1e-6 and np.all(w[~mask] == 0)


# ---- the loss nodes

shapes_bt = st.tuples(st.integers(1, 3), st.integers(1, 5))


def _case(shape, seed):
    rng = np.random.default_rng(seed)
    B, T = shape
    logp = rng.uniform(-3, 0, (B, T))
    old = logp + rng.uniform(-0.5, 0.5, (B, T))
    return rng, logp, old, rng.standard_normal((B, T)), _rollout_mask(rng, B, T)


@given(shape=shapes_bt, seed=st.integers(0, 10 ** 6), cliprange=st.sampled_from([0.1, 0.2, 0.3]))
def test_clipped_policy_loss_equals_the_formula_and_its_gradient_checks(shape, seed, cliprange):
    _, logp, old, adv, mask = _case(shape, seed)
    ratio = np.exp(logp - old)
    assume(np.all(np.abs(np.abs(ratio - 1) - cliprange) > 1e-4))         # away from the kinks
    expected = np.maximum(-ratio * adv, -np.clip(ratio, 1 - cliprange, 1 + cliprange) * adv)[mask].mean()
    np.testing.assert_allclose(clipped_policy_loss(Tensor(logp), old, adv, mask, cliprange).data, expected, rtol=1e-12)
    gradcheck(lambda x: clipped_policy_loss(x, old, adv, mask, cliprange), [logp])
    assert clip_fraction(logp, old, mask, cliprange) == np.mean((np.abs(ratio - 1) > cliprange)[mask])


def test_clipped_policy_gradient_by_hand():
    # A > 0 and the ratio already above 1 + eps: no gradient; A > 0 below 1 - eps: the gradient -rho A / n
    old = np.zeros((1, 2))
    logp = Tensor(np.log([[1.5, 0.5]]), requires_grad=True)
    loss = clipped_policy_loss(logp, old, np.ones((1, 2)), np.ones((1, 2), bool), 0.2)
    loss.backward()
    np.testing.assert_allclose(loss.data, (-1.2 - 0.5) / 2)
    np.testing.assert_allclose(logp.grad, [[0.0, -0.25]])


@given(shape=shapes_bt, seed=st.integers(0, 10 ** 6), cliprange=st.sampled_from([0.1, 0.5]))
def test_clipped_value_loss_equals_the_formula_and_its_gradient_checks(shape, seed, cliprange):
    rng, values, old, returns, mask = _case(shape, seed)
    step = values - old
    assume(np.all(np.abs(np.abs(step) - cliprange) > 1e-4))
    clipped = old + np.clip(step, -cliprange, cliprange)
    plain_sq, clipped_sq = (values - returns) ** 2, (clipped - returns) ** 2
    assume(np.all(np.abs(plain_sq - clipped_sq) > 1e-4) or np.all(np.abs(step) < cliprange))
    expected = 0.5 * np.maximum(plain_sq, clipped_sq)[mask].mean()
    np.testing.assert_allclose(clipped_value_loss(Tensor(values), old, returns, mask, cliprange).data, expected,
                               rtol=1e-12)
    gradcheck(lambda x: clipped_value_loss(x, old, returns, mask, cliprange), [values])


@given(shape=shapes_bt, V=st.integers(2, 6), seed=st.integers(0, 10 ** 6))
def test_masked_entropy_equals_the_formula_and_its_gradient_checks(shape, V, seed):
    rng = np.random.default_rng(seed)
    logits, mask = rng.standard_normal((*shape, V)) * 2, _rollout_mask(rng, *shape)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(masked_entropy(Tensor(logits), mask).data, (-(p * np.log(p)).sum(-1))[mask].mean(),
                               rtol=1e-10)
    gradcheck(lambda x: masked_entropy(x, mask), [logits])


@given(shape=shapes_bt, seed=st.integers(0, 10 ** 6))
def test_kl_penalty_equals_k3_and_its_gradient_checks(shape, seed):
    _, logp, ref, _, mask = _case(shape, seed)
    d = ref - logp
    np.testing.assert_allclose(kl_penalty(Tensor(logp), ref, mask).data, (np.exp(d) - d - 1)[mask].mean(), rtol=1e-12)
    gradcheck(lambda x: kl_penalty(x, ref, mask), [logp])


def test_loss_shapes_are_checked():
    with pytest.raises(ValueError, match="clipped_policy_loss: advantages has shape"):
        clipped_policy_loss(Tensor(np.zeros((2, 3))), np.zeros((2, 3)), np.zeros((3, 2)), np.ones((2, 3), bool))


# ---- the KL controller

def test_adaptive_kl_controller_follows_the_proportional_rule():
    kl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    kl.update(current=9.0, n_steps=256)                          # error 0.5, clipped to 0.2
    np.testing.assert_allclose(kl.value, 0.2 * (1 + 0.2 * 256 / 10000))
    kl.update(current=5.4, n_steps=100)                          # error -0.1
    np.testing.assert_allclose(kl.value, 0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000))
    kl.update(current=0.0, n_steps=10000)                        # error -1, clipped to -0.2
    np.testing.assert_allclose(kl.value, 0.2 * (1 + 0.2 * 256 / 10000) * (1 - 0.1 * 100 / 10000) * 0.8)
    fixed = FixedKLController(0.1)
    fixed.update(current=100.0, n_steps=10)
    assert fixed.value == 0.1
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
