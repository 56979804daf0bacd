"""Mixture-of-Experts: the gating/dispatch/combine nodes and the nn.MoE layer.

Routing is held fixed in the gradient checks by passing the router's own top-k choice as
`routing=` (the "frozen indices" flag of MoE.forward): the gates stay functions of the router
probabilities at those experts, so router, gates and experts are all checked, while the
finite-difference perturbations cannot flip a top-k choice or a capacity decision.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm.functional as F
from minillm import nn
from minillm.autograd import Tensor
from minillm.functional.moe import combine, gather_rows, load_balancing_loss, router_z_loss, top_k_gates
from minillm.nn.moe import capacity_of, route, top_k_experts
from minillm.testing import gradcheck, gradcheck_module


def make_moe(C, H, E, k, activation="swiglu", capacity_factor=1.25, seed=0, **kw):
    rng = np.random.default_rng(seed)
    moe = nn.MoE(C, H, E, top_k=k, capacity_factor=capacity_factor, activation=activation, init_std=0.5,
                 rng=rng, **kw)
    return moe.to(np.float64), rng


def router_choice(moe, x):
    probs = F.softmax(moe.router(x.reshape(-1, x.shape[-1]))).data
    return top_k_experts(probs, moe.top_k)


def dense_reference(moe, x, idx):
    """Every expert on every token (what MoE must never do), then the gated sum of the chosen ones."""
    xs = x.reshape(-1, x.shape[-1])
    probs = F.softmax(moe.router(xs)).data
    outs = np.stack([e(xs).data for e in moe.experts], axis=1)            # (N, E, C)
    g = np.take_along_axis(probs, idx, axis=1)
    if moe.renormalize_gates and moe.top_k > 1:
        g = g / g.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", g, np.take_along_axis(outs, idx[:, :, None], axis=1)).reshape(x.shape)


# ----- the nodes


@given(N=st.integers(1, 5), E=st.integers(2, 5), k=st.integers(1, 3), renormalize=st.booleans(),
       seed=st.integers(0, 2**16))
def test_top_k_gates_gradient_through_renormalisation(N, E, k, renormalize, seed):
    k = min(k, E)
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, E))
    idx = top_k_experts(logits, k)
    gradcheck(lambda z: top_k_gates(F.softmax(z), idx, renormalize), [logits])


@given(N=st.integers(1, 6), E=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_router_losses_gradients(N, E, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, E)) * 2
    fraction = rng.dirichlet(np.ones(E))
    gradcheck(lambda z: load_balancing_loss(F.softmax(z), fraction), [logits])
    gradcheck(router_z_loss, [logits])
    lse = np.log(np.exp(logits).sum(axis=1))
    assert float(router_z_loss(logits).data) == pytest.approx(np.mean(lse ** 2))


def test_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    E = 4
    assert float(load_balancing_loss(np.full((8, E), 1 / E), np.full(E, 1 / E)).data) == pytest.approx(1.0)
    collapsed = np.zeros((8, E))
    collapsed[:, 0] = 1.0
    assert float(load_balancing_loss(collapsed, np.eye(E)[0]).data) == pytest.approx(E)


def test_gather_and_combine_gradients():
    rng = np.random.default_rng(3)
    x, gates = rng.standard_normal((5, 3)), rng.random((5, 2))
    plan = [(np.array([0, 2, 4]), np.array([0, 1, 0])), (np.array([1, 2]), np.array([0, 0]))]
    gradcheck(lambda x: gather_rows(x, np.array([4, 0, 3])), [x])
    ys = [rng.standard_normal((3, 3)), rng.standard_normal((2, 3))]
    gradcheck(lambda g, a, b: combine(g, plan, 5, [a, b]), [gates, *ys])


# ----- routing and capacity


def test_capacity_drops_exactly_the_latest_assignments():
    # 6 tokens, 2 experts, top-1, capacity ceil(1.0 * 1 * 6 / 2) = 3; expert 0 is chosen 5 times
    idx = np.array([[0], [0], [1], [0], [0], [0]])
    assert capacity_of(6, 2, 1, 1.0) == 3
    r = route(idx, 2, capacity=3)
    np.testing.assert_array_equal(r["routed"], [5, 1])
    np.testing.assert_array_equal(r["kept"], [3, 1])
    np.testing.assert_array_equal(r["plan"][0][0], [0, 1, 3])            # the earliest three tokens
    # top-2: every first choice is queued before any second choice
    idx = np.array([[1, 0], [0, 1], [0, 1], [1, 0]])
    r = route(idx, 2, capacity=capacity_of(4, 2, 2, 0.5))               # ceil(0.5 * 2 * 4 / 2) = 2
    np.testing.assert_array_equal(r["plan"][0][0], [1, 2])              # tokens 1, 2 chose expert 0 first
    np.testing.assert_array_equal(r["plan"][0][1], [0, 0])
    np.testing.assert_array_equal(r["plan"][1][0], [0, 3])
    assert route(idx, 2, None)["kept"].sum() == 8


def route_by_definition(idx, n_experts, capacity):
    """{expert: sorted kept tokens}: every token's first choice queues before any second choice,
    earlier tokens first, and an expert keeps the first `capacity` assignments of its queue."""
    N, k = idx.shape
    queue = [(t, r) for r in range(k) for t in range(N)]
    kept = {}
    for e in range(n_experts):
        mine = [(t, r) for t, r in queue if idx[t, r] == e][:capacity]
        if mine:
            kept[e] = sorted(mine)
    return kept


@pytest.mark.parametrize("k, capacity", [(1, 9), (2, 13), (2, 40), (3, 5)])
def test_routing_keeps_the_assignments_its_queue_order_says(k, capacity):
    # many tokens and few experts: the grouping sort sees long runs of ties, where an unstable
    # sort would reorder the queue
    rng = np.random.default_rng(k)
    E, N = 4, 60
    idx = np.stack([rng.permutation(E)[:k] for _ in range(N)])            # (N, k) distinct per row
    r = route(idx, E, capacity)
    expected = route_by_definition(idx, E, capacity)
    assert {e: sorted(zip(t.tolist(), rk.tolist())) for e, (t, rk) in r["plan"].items()} == expected
    for tokens, _ in r["plan"].values():
        assert (np.diff(tokens) > 0).all()                                # in token order
    np.testing.assert_array_equal(r["routed"], np.bincount(idx.reshape(-1), minlength=E))
    np.testing.assert_array_equal(r["kept"], [len(expected.get(e, [])) for e in range(E)])


def test_top_k_ties_go_to_the_lower_expert_index():
    probs = np.full((3, 40), 0.02)
    probs[:, 7] = 0.1
    probs[1, 30] = 0.1
    np.testing.assert_array_equal(top_k_experts(probs, 3), [[7, 0, 1], [7, 30, 0], [7, 0, 1]])


@pytest.mark.parametrize("k", [1, 2])
def test_stats_and_losses_are_those_of_their_definitions(k):
    moe, rng = make_moe(4, 3, 5, k, capacity_factor=None)
    x = rng.standard_normal((2, 7, 4))
    moe(x)
    xs = x.reshape(-1, 4)
    logits = moe.router(xs).data
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    f = np.bincount(idx.reshape(-1), minlength=5) / (14 * k)
    np.testing.assert_allclose(moe.stats["load"], f, rtol=1e-12)
    assert moe.stats["aux_loss"] == pytest.approx(5 * np.sum(f * p.mean(0)), rel=1e-12)
    lse = np.log(np.exp(logits).sum(1))
    assert moe.stats["z_loss"] == pytest.approx(np.mean(lse ** 2), rel=1e-12) == float(moe.z_loss.data)
    assert moe.stats["aux_loss"] == float(moe.aux_loss.data) and moe.stats["dropped"] == 0.0


def test_construction_defaults_and_reproducibility():
    moe = nn.MoE(8, 12, 4)
    assert (moe.top_k, moe.capacity_factor, moe.renormalize_gates) == (2, 1.25, True)
    assert moe.stats is None and moe.aux_loss is None and moe.z_loss is None      # nothing before a forward
    assert nn.MoE(8, 12, 4, activation="gelu").num_parameters() == 4 * (2 * 8 * 12 + 12 + 8) + 4 * 8   # biases
    big = nn.MoE(64, 64, 4, rng=np.random.default_rng(0))
    assert np.std(np.concatenate([p.data.ravel() for p in big.parameters()])) == pytest.approx(0.02, rel=0.05)
    for activation in ("swiglu", "gelu"):
        a, b = (nn.MoE(8, 6, 3, activation=activation, init_std=0.5, rng=np.random.default_rng(1), dtype=np.float64)
                for _ in range(2))
        weights = [p.data for n, p in a.named_parameters() if not n.endswith("bias")]
        assert np.std(np.concatenate([w.ravel() for w in weights])) == pytest.approx(0.5, rel=0.1)
        assert all(p.dtype == np.float64 for p in a.parameters())
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            np.testing.assert_array_equal(p.data, q.data, err_msg=n)      # the same rng: the same layer


@pytest.mark.parametrize("N, E, k, cf", [(5, 4, 1, 1.0), (6, 4, 1, 1.25), (3, 4, 1, 1.0), (9, 4, 1, 0.5),
                                         (7, 3, 2, 1.0), (5, 4, 2, 0.75), (10, 4, 2, 0.25), (8, 4, 1, 1.0),
                                         (6, 4, 2, 1.0)])
def test_an_expert_takes_ceil_of_cf_k_n_over_e_tokens_when_that_is_fractional(N, E, k, cf):
    # every token chooses experts 0..k-1, so each of them is offered N assignments and keeps its
    # capacity, ceil(cf * k * N / E) (exact here: the factors are binary fractions), earliest first
    capacity = -(-int(cf * 4) * k * N // (4 * E))                # ceil of the exact rational
    assert capacity == math.ceil(cf * k * N / E)
    assert capacity_of(N, E, k, cf) == capacity
    moe, rng = make_moe(4, 3, E, k, capacity_factor=cf)
    x = rng.standard_normal((N, 4))
    routing = np.tile(np.arange(k), (N, 1))                      # (N, k)
    y = moe(x, routing=routing).data
    kept = min(N, capacity)
    assert moe.stats["dropped"] == pytest.approx(1 - kept / N)
    assert (np.abs(y[:kept]).max(axis=1) > 0).all() and not y[kept:].any()   # the latest tokens get zero
    moe.eval()                                                   # no capacity when not training
    assert not (moe(x, routing=routing).data == 0).all(axis=1).any() and moe.stats["dropped"] == 0


@pytest.mark.parametrize("k", [1, 2])
def test_dropped_tokens_get_zero_from_the_ffn(k):
    moe, rng = make_moe(4, 6, 4, k, capacity_factor=0.5)
    x = rng.standard_normal((12, 4))
    idx = router_choice(moe, x)
    capacity = capacity_of(12, 4, k, 0.5)
    r = route(idx, 4, capacity)
    kept = np.zeros((12, k), dtype=bool)
    for tokens, ranks in r["plan"].values():
        kept[tokens, ranks] = True
    y = moe(x, routing=idx).data
    assert r["kept"].max() <= capacity and kept.sum() == r["kept"].sum() < 12 * k
    assert moe.stats["dropped"] == pytest.approx(1 - kept.sum() / (12 * k))
    # a token gets the gated outputs of its kept choices only (gates are not renormalised after dropping)
    probs = F.softmax(moe.router(x)).data
    g = np.take_along_axis(probs, idx, axis=1)
    g = g / g.sum(axis=1, keepdims=True) if k > 1 else g
    for n in range(12):
        expected = sum(g[n, j] * moe.experts[idx[n, j]](x[n:n + 1]).data[0] for j in range(k) if kept[n, j])
        np.testing.assert_allclose(y[n], expected, rtol=1e-12, atol=0)    # exactly 0 when all were dropped
    assert (~kept.any(axis=1)).any() or k == 2


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("k", [1, 2])
def test_output_equals_the_dense_gated_sum_without_dropping(activation, k):
    moe, rng = make_moe(6, 5, 4, k, activation, capacity_factor=None)
    x = rng.standard_normal((2, 3, 6))
    np.testing.assert_allclose(moe(x).data, dense_reference(moe, x, router_choice(moe, x)), rtol=1e-10, atol=1e-14)


def test_eval_mode_never_drops():
    moe, rng = make_moe(4, 6, 4, 2, capacity_factor=0.25)
    x = rng.standard_normal((3, 4, 4))
    moe(x)
    assert moe.stats["dropped"] > 0
    moe.eval()
    np.testing.assert_allclose(moe(x).data, dense_reference(moe, x, router_choice(moe, x)), rtol=1e-10)
    assert moe.stats["dropped"] == 0


# ----- gradients of the layer


@given(B=st.integers(1, 2), T=st.integers(1, 4), E=st.integers(1, 4), k=st.integers(1, 2),
       activation=st.sampled_from(["swiglu", "gelu"]), cf=st.sampled_from([None, 0.5, 1.0, 1.25]),
       seed=st.integers(0, 2**16))
def test_moe_layer_passes_gradcheck_with_routing_held_fixed(B, T, E, k, activation, cf, seed):
    k = min(k, E)
    moe, rng = make_moe(4, 3, E, k, activation, cf, seed)
    x = rng.standard_normal((B, T, 4))
    idx = router_choice(moe, x)
    gradcheck_module(moe, [x], forward=lambda m, x: m(x, routing=idx))
    gradcheck_module(moe, [x], forward=lambda m, x: (m(x, routing=idx), m.aux_loss * 2 + m.z_loss)[1])


def test_router_gets_its_gradient_through_the_gates():
    moe, rng = make_moe(4, 3, 4, 2)
    x = rng.standard_normal((6, 4))
    moe(x).sum().backward()                       # the task loss only, no router losses
    assert np.abs(moe.router.weight.grad).max() > 1e-6
    # top-1 gates are the router probability (never renormalised to 1), so they carry a gradient too
    moe1, _ = make_moe(4, 3, 4, 1)
    moe1(x).sum().backward()
    assert np.abs(moe1.router.weight.grad).max() > 1e-6


def test_balancing_gradient_pushes_an_imbalanced_router_toward_balance():
    moe, rng = make_moe(8, 4, 4, 2, capacity_factor=None)
    x = rng.standard_normal((256, 8))
    x[:, 0] = 1.0                                  # a constant feature the router can lean on
    moe.router.weight.data[:] = 0.1 * rng.standard_normal((4, 8))
    moe.router.weight.data[0, 0] = moe.router.weight.data[1, 0] = 3.0   # experts 0 and 1 take nearly everything
    moe(x)
    before, loss_before = moe.stats["load"].copy(), moe.stats["aux_loss"]
    assert before[:2].sum() > 0.95
    moe.aux_loss.backward()                        # one SGD step on the balancing loss alone
    moe.router.weight.data -= 20.0 * moe.router.weight.grad
    moe(x)
    after = moe.stats["load"]
    assert after[:2].sum() < before[:2].sum() - 0.1
    assert np.abs(after - 0.25).max() < np.abs(before - 0.25).max()
    assert moe.stats["aux_loss"] < loss_before


def test_parameter_count_and_names():
    moe = nn.MoE(8, 12, 4, activation="swiglu")
    assert moe.num_parameters() == 4 * (3 * 8 * 12) + 4 * 8
    gelu = nn.MoE(8, 12, 4, activation="gelu", bias=True)
    assert gelu.num_parameters() == 4 * (2 * 8 * 12 + 12 + 8) + 4 * 8
    assert [n for n, _ in moe.named_parameters()][:4] == ["router.weight", "experts.0.w_gate", "experts.0.w_up",
                                                         "experts.0.w_down"]
    assert all(isinstance(e, nn.SwiGLU) for e in moe.experts) and isinstance(gelu.experts[0], nn.MLP)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"top_k must be an int in \[1, n_experts=2\]"):
        nn.MoE(4, 4, 2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        nn.MoE(4, 4, 2, capacity_factor=0)
    for n_experts in (0, 2.0):
        with pytest.raises(ValueError, match=f"n_experts must be a positive int, got {n_experts!r}"):
            nn.MoE(4, 4, n_experts)
    with pytest.raises(ValueError, match="activation must be 'swiglu' or 'gelu', got 'relu'"):
        nn.MoE(4, 4, 2, activation="relu")
    moe = nn.MoE(4, 4, 2)
    x3 = Tensor(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"routing must be \(3, 2\)"):
        moe(x3, routing=np.zeros((3, 1), dtype=int))
    for bad in (2, -1):                                            # expert ids are in [0, E)
        with pytest.raises(ValueError, match=r"routing must be \(3, 2\) ints in \[0, 2\)"):
            moe(x3, routing=np.array([[0, 1], [1, 0], [bad, 0]]))
    assert math.isfinite(float(moe(np.zeros((1, 4), dtype=np.float32)).data.sum()))
