"""Optimizers, clipping and the learning-rate schedule pinned to their formulas (written out here
step by step), and to torch.optim / torch.nn.utils where torch is installed."""
import math

import numpy as np
import pytest

from minillm import nn
from minillm.optim import SGD, AdamW, clip_grad_norm, cosine_lr, param_groups
from minillm.tensor import Tensor

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

# gradients of two parameters for 6 steps; None: the parameter got no gradient that step
# (an MoE expert no token was routed to), so the optimizer leaves it and its moments alone
RNG = np.random.default_rng(0)
GRADS = {"a": [RNG.standard_normal((2, 3)) for _ in range(6)],
         "b": [RNG.standard_normal(3) * 1e-9 if s not in (1, 2) else None for s in range(6)]}   # tiny: eps matters
START = {"a": RNG.standard_normal((2, 3)), "b": RNG.standard_normal(3)}


def params():
    return {n: Tensor(v.copy(), requires_grad=True) for n, v in START.items()}


def run(opt, ps, steps=6):
    for s in range(steps):
        for n, p in ps.items():
            p.grad = None if GRADS[n][s] is None else GRADS[n][s].copy()
        opt.step()
    return {n: p.data for n, p in ps.items()}


def adamw_by_hand(lr, betas, eps, wd, steps=6):
    """torch.optim.AdamW's algorithm: per parameter, t counts the steps it had a gradient;
    p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    out = {}
    for n, p in START.items():
        p, m, v, t = p.copy(), 0.0, 0.0, 0
        for s in range(steps):
            g = GRADS[n][s]
            if g is None:
                continue
            t += 1
            p = p * (1 - lr * wd[n])
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            p = p - lr / (1 - betas[0] ** t) * m / (np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps)
        out[n] = p
    return out


def test_adamw_follows_its_formula_step_by_step_with_per_group_decay():
    ps = params()
    opt = AdamW([{"params": {"b": ps["b"]}, "weight_decay": 0.0}, {"params": {"a": ps["a"]}, "weight_decay": 0.3}],
                lr=0.05, betas=(0.8, 0.9), eps=1e-8)
    got = run(opt, ps)
    expected = adamw_by_hand(0.05, (0.8, 0.9), 1e-8, {"a": 0.3, "b": 0.0})
    for n in got:
        np.testing.assert_allclose(got[n], expected[n], rtol=1e-13, atol=1e-15, err_msg=n)
    assert opt.step_count == 6


@needs_torch
def test_adamw_equals_torch_including_steps_without_a_gradient():
    ps = params()
    ours = AdamW([{"params": ps, "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.99))
    ts = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in START.items()}
    theirs = torch.optim.AdamW(list(ts.values()), lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    for s in range(6):
        for n in ps:
            g = GRADS[n][s]
            ps[n].grad = None if g is None else g.copy()
            ts[n].grad = None if g is None else torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        for n in ps:
            np.testing.assert_allclose(ps[n].data, ts[n].detach().numpy(), rtol=1e-13, atol=1e-15)


def test_adamw_resumes_exactly_from_its_state_dict():
    ps = params()
    opt = AdamW([{"params": ps, "weight_decay": 0.1}], lr=0.02)
    run(opt, ps, steps=3)
    state = opt.state_dict()
    for v in state["state"].values():      # a copy: what is saved does not move with the optimizer
        v *= 0
    state = opt.state_dict()
    ps2 = {n: Tensor(p.data.copy(), requires_grad=True) for n, p in ps.items()}
    resumed = AdamW([{"params": ps2, "weight_decay": 0.1}], lr=0.02)
    resumed.load_state_dict(state)
    for s in range(3, 6):
        for n in ps:
            g = GRADS[n][s]
            ps[n].grad = ps2[n].grad = None if g is None else g.copy()
        opt.step()
        resumed.step()
    for n in ps:
        np.testing.assert_array_equal(ps[n].data, ps2[n].data)
    assert resumed.step_count == 6
    # a state saved before AdamW counted steps per parameter: every earlier step counted
    old = AdamW([{"params": {"a": Tensor(START["a"].copy(), requires_grad=True)}, "weight_decay": 0.1}], lr=0.02)
    run(old, old.groups[0]["params"] | {"b": Tensor(np.zeros(3))}, steps=3)
    saved = old.state_dict()
    assert saved["state"].pop("a.step").tolist() == [3]
    again = AdamW([{"params": {"a": Tensor(old.groups[0]["params"]["a"].data.copy(), requires_grad=True)},
                    "weight_decay": 0.1}], lr=0.02)
    again.load_state_dict(saved)
    for opt_, p_ in ((old, old.groups[0]["params"]["a"]), (again, again.groups[0]["params"]["a"])):
        p_.grad = GRADS["a"][3].copy()
        opt_.step()
    np.testing.assert_array_equal(old.groups[0]["params"]["a"].data, again.groups[0]["params"]["a"].data)
    with pytest.raises(ValueError, match=r"names parameters the model does not have: \['c', 'd'\]"):
        resumed.load_state_dict({"step": 1, "state": {"c.m": np.zeros(1), "d.v": np.zeros(1), "a.m": np.zeros(1)}})


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.0, 0.2), (0.9, 0.0), (0.7, 0.1)])
def test_sgd_follows_its_formula(momentum, wd):
    ps = params()
    opt = SGD([{"params": ps, "weight_decay": wd}], lr=0.1, momentum=momentum)
    got = run(opt, ps)
    for n, p in START.items():
        p, buf = p.copy(), 0.0
        for g in GRADS[n]:
            if g is None:
                continue
            g = g + wd * p
            buf = momentum * buf + g
            p = p - 0.1 * (buf if momentum else g)
        np.testing.assert_allclose(got[n], p, rtol=1e-14, atol=0, err_msg=n)


@needs_torch
def test_sgd_with_momentum_and_decay_equals_torch():
    ps = params()
    ours = SGD([{"params": ps, "weight_decay": 0.1}], lr=0.1, momentum=0.9)
    ts = {n: torch.tensor(v.copy(), requires_grad=True) for n, v in START.items()}
    theirs = torch.optim.SGD(list(ts.values()), lr=0.1, momentum=0.9, weight_decay=0.1)
    for s in range(6):
        for n in ps:
            g = GRADS[n][s]
            ps[n].grad = None if g is None else g.copy()
            ts[n].grad = None if g is None else torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    for n in ps:
        np.testing.assert_allclose(ps[n].data, ts[n].detach().numpy(), rtol=1e-14)


def test_an_optimizer_over_a_model_takes_all_its_parameters_without_decay():
    model = nn.Linear(3, 2, rng=np.random.default_rng(0), dtype=np.float64)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = SGD(model, lr=1.0)
    assert [n for n, _ in opt.named_parameters()] == ["weight", "bias"]
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n] - 1.0)    # no weight decay term
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_param_groups_decay_only_the_matrices_of_linear_layers():
    from minillm.models import DecoderLM, ModelConfig
    model = DecoderLM(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    decay, no_decay = param_groups(model, 0.25)
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    assert sorted(decay["params"]) == ["blocks.0.attn.wk.weight", "blocks.0.attn.wo.weight", "blocks.0.attn.wq.weight",
                                       "blocks.0.attn.wv.weight", "blocks.0.ffn.fc.weight", "blocks.0.ffn.proj.weight"]
    names = [n for n, _ in model.named_parameters()]          # the rest, the tied head (wte) included
    assert sorted(no_decay["params"]) == sorted(n for n in names if n not in decay["params"]) and "wte.weight" in names


def test_clip_scales_all_gradients_together_by_max_norm_over_the_norm():
    a, b, c = (Tensor(np.zeros(2), requires_grad=True) for _ in range(3))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([0.0, 4.0])        # ||g|| = 5; c has no gradient
    assert clip_grad_norm([a, b, c], 2.0) == 5.0
    scale = 2.0 / (5.0 + 1e-6)                                         # torch.nn.utils.clip_grad_norm_'s
    np.testing.assert_array_equal(a.grad, [3.0 * scale, 0.0])
    np.testing.assert_array_equal(b.grad, [0.0, 4.0 * scale])
    assert c.grad is None
    assert clip_grad_norm([a, b], 3.0) == pytest.approx(2.0, abs=1e-6)   # under the limit: untouched
    np.testing.assert_array_equal(a.grad, [3.0 * scale, 0.0])
    assert clip_grad_norm([a, b], 0) == pytest.approx(2.0, abs=1e-6)     # 0: no clipping
    np.testing.assert_array_equal(b.grad, [0.0, 4.0 * scale])


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_reports_a_non_finite_norm_and_leaves_the_gradients(bad):
    a = Tensor(np.zeros(2), requires_grad=True)
    a.grad = np.array([bad, 1.0])
    total = clip_grad_norm([a], 1.0)
    assert not math.isfinite(total) and a.grad[1] == 1.0


def test_cosine_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    lr, low, warm, decay = 1.0, 0.1, 4, 24
    assert [cosine_lr(s, lr, low, warm, decay) for s in range(warm)] == [lr * (s + 1) / (warm + 1) for s in range(warm)]
    for s in range(warm, decay + 1):
        ratio = (s - warm) / (decay - warm)
        assert cosine_lr(s, lr, low, warm, decay) == pytest.approx(low + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - low))
    assert cosine_lr(warm, lr, low, warm, decay) == lr and cosine_lr(decay, lr, low, warm, decay) == pytest.approx(low)
    assert cosine_lr(decay + 1, lr, low, warm, decay) == low == cosine_lr(10**6, lr, low, warm, decay)
    assert cosine_lr(5, lr, low, 4, 5) == pytest.approx(low)                   # one decay step: straight to min_lr
    assert cosine_lr(3, lr, low, 3, 3) == lr                                   # no decay phase: no division by 0


@pytest.mark.parametrize("make", [lambda ps: AdamW([{"params": ps, "weight_decay": 0.0}], lr=0.1),
                                  lambda ps: SGD([{"params": ps, "weight_decay": 0.0}], lr=0.1)])
def test_a_parameter_without_a_gradient_is_skipped_and_the_ones_after_it_still_step(make):
    ps = {n: Tensor(np.ones(2), requires_grad=True) for n in ("first", "idle", "last")}
    opt = make(ps)
    ps["first"].grad, ps["idle"].grad, ps["last"].grad = np.ones(2), None, np.ones(2)
    opt.step()
    assert np.all(ps["first"].data < 1) and np.all(ps["last"].data < 1)
    np.testing.assert_array_equal(ps["idle"].data, np.ones(2))
