"""Optimizers (AdamW, SGD), global-norm gradient clipping and the cosine learning-rate schedule.

Optimizers update Parameters in place from their .grad. Their state (moments, step count)
is a dict of arrays keyed by parameter name, so checkpoints can store it and resume exactly.
"""
import math

import numpy as np

from . import kernels


def param_groups(model, weight_decay, decay_embeddings=False):
    """Two groups, as nanoGPT/Llama train: weight decay on the matrices of linear layers; none on
    norms and biases. Embedding tables (and so a tied output head) are decayed only with
    decay_embeddings=True, which is nanoGPT's rule: every parameter with two or more dimensions."""
    from .nn import Embedding
    embeddings = set() if decay_embeddings else {
        id(m.weight) for _, m in model.named_modules() if isinstance(m, Embedding)}
    decay, no_decay = {}, {}
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay)[name] = p
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Optimizer:
    def __init__(self, groups, lr):
        """groups: a model (all parameters, no decay), or a list of {"params": {name: Parameter}, ...}."""
        if hasattr(groups, "named_parameters"):
            groups = [{"params": dict(groups.named_parameters()), "weight_decay": 0.0}]
        self.groups = groups
        self.lr = lr
        self.step_count = 0
        self.state = {}   # "<name>.<slot>" -> array

    def named_parameters(self):
        for g in self.groups:
            yield from g["params"].items()

    def zero_grad(self):
        for _, p in self.named_parameters():
            p.grad = None

    def state_dict(self):
        return {"step": self.step_count, "state": {k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, state):
        names = {n for n, _ in self.named_parameters()}
        unknown = sorted({k.rsplit(".", 1)[0] for k in state["state"]} - names)
        if unknown:
            raise ValueError(f"optimizer state names parameters the model does not have: {unknown[:5]}")
        self.step_count = int(state["step"])
        self.state = {k: np.array(v) for k, v in state["state"].items()}


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:
        p <- p - lr * wd * p
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    t counts the steps this parameter had a gradient (kept per parameter, as torch does: an MoE
    expert no token was routed to sits a step out, moments and count untouched). Each parameter's
    update is one kernel call (kernels.adamw_step: one pass over p, g, m, v in C++, the same bits as
    the NumPy reference).
    """

    def __init__(self, groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(groups, lr)
        self.betas, self.eps = betas, eps

    def _count(self, name):
        """This parameter's t, after counting the current step. A state saved before t was kept per
        parameter has moments but no count: every earlier step counted then."""
        before = self.state.get(f"{name}.step")                 # (1,) int64, so checkpoints can hold it
        t = int(before[0]) + 1 if before is not None else (self.step_count if f"{name}.m" in self.state else 1)
        self.state[f"{name}.step"] = np.array([t], dtype=np.int64)
        return t

    def step(self):
        self.step_count += 1
        b1, b2 = self.betas
        for g in self.groups:
            for name, p in g["params"].items():
                if p.grad is None:
                    continue
                t = self._count(name)
                m, v = self._moments(name, p)
                kernels.adamw_step(p.data, p.grad, m, v, self.lr, b1, b2, self.eps, g["weight_decay"], t)

    def _moments(self, name, p):
        """The (m, v) arrays of a parameter, zeros at its first update."""
        m, v = self.state.get(f"{name}.m"), self.state.get(f"{name}.v")
        if m is None:
            m = self.state[f"{name}.m"] = np.zeros_like(p.data)
        if v is None:
            v = self.state[f"{name}.v"] = np.zeros_like(p.data)
        return m, v


class SGD(Optimizer):
    """p <- p - lr * (g + wd * p), with optional momentum: b <- mu b + g, step along b."""

    def __init__(self, groups, lr=1e-2, momentum=0.0):
        super().__init__(groups, lr)
        self.momentum = momentum

    def step(self):
        self.step_count += 1
        for g in self.groups:
            for name, p in g["params"].items():
                if p.grad is None:
                    continue
                grad = p.grad + g["weight_decay"] * p.data if g["weight_decay"] else p.grad
                if self.momentum:
                    buf = self.state.setdefault(f"{name}.momentum", np.zeros_like(p.data))
                    buf *= self.momentum
                    buf += grad
                    grad = buf
                p.data -= self.lr * grad


def clip_grad_norm(parameters, max_norm):
    """Scale all gradients by min(1, max_norm / ||g||) where ||g|| is the norm of all of them
    together. Returns ||g|| before clipping (inf or nan if any gradient is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if max_norm and total > max_norm and math.isfinite(total):
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total


def cosine_lr(step, lr, min_lr, warmup_iters, decay_iters):
    """Linear warmup to lr over warmup_iters, then a cosine from lr down to min_lr at decay_iters,
    then min_lr (nanoGPT's schedule)."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step > decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
