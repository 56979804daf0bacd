"""Mixture-of-Experts feed-forward: a router picks k of E expert FFNs per token (Switch: k = 1,
Mixtral: k = 2), each expert runs once on the tokens sent to it, and the results come back
weighted by the gates.

    x: (..., C) -> rows (N, C)
    logits = x W_router^T                       (N, E)
    p      = softmax(logits)                    (N, E)
    idx    = top-k experts of each row of p     (N, k)   piecewise constant: no gradient
    g      = p[n, idx[n]]  (/ their sum)        (N, k)   the gates
    y[n]   = sum_j g[n, j] * expert_{idx[n, j]}(x[n])  over the choices the capacity kept

Capacity: while training, expert e takes at most  ceil(capacity_factor * k * N / E)  tokens.
Assignments are queued by choice rank, then by token order (every token's first choice before
any second choice, earlier tokens first), so a full expert drops the latest second choices first.
A dropped assignment contributes nothing (its gate is not renormalised away): a token every
chosen expert dropped leaves the layer as a zero row, and the block's residual x + ffn(norm(x))
carries it unchanged. In eval mode there is no capacity limit, so a token's output never depends
on the other tokens in its batch, and generation with the KV cache equals generation without it.

Auxiliary losses (computed each forward, kept on the layer for the model to add):
    balance = E * sum_i f_i * P_i   f_i: the fraction of the N*k top-k assignments that chose
                                    expert i (before capacity; for k = 1 exactly Switch's f_i),
                                    P_i = mean_n p[n, i]. 1 when balanced.
    z       = mean_n logsumexp(logits[n])^2   (ST-MoE's router z-loss)

Grouped dispatch: tokens are grouped per expert with one stable argsort of the flat assignments;
each expert then runs its ordinary forward (an nn.SwiGLU or nn.MLP) on its own (n_e, C) rows, so
the compute is k*N token-FFNs, never E*N, and quantization can swap the expert modules in place.
"""
import math

import numpy as np

from .. import functional as F
from .. import kernels
from ..functional.moe import combine, gather_rows, load_balancing_loss, router_z_loss, top_k_gates
from .layers import MLP, Linear, SwiGLU
from .module import Module, ModuleList


def top_k_experts(probs, k):
    """(N, k) indices of each row's k largest probabilities, largest first (ties: lower index)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def capacity_of(n_tokens, n_experts, top_k, capacity_factor):
    """Tokens one expert may take: ceil(capacity_factor * top_k * N / E); None means no limit."""
    if capacity_factor is None:
        return None
    return max(1, math.ceil(capacity_factor * top_k * n_tokens / n_experts))


def route(idx, n_experts, capacity=None):
    """Group the assignments idx (N, k) by expert and apply the capacity.

    Returns a dict:
      plan:    {expert: (tokens, ranks)} for the experts that kept at least one token, tokens in
               order (ranks[i] = which of the token's k choices this is)
      routed:  (E,) assignments each expert was chosen for (before capacity)
      kept:    (E,) assignments each expert kept;  dropped = routed.sum() - kept.sum()
    """
    N, k = idx.shape
    flat = idx.T.reshape(-1)                           # (k*N,) rank-major: all first choices, then seconds
    order = np.argsort(flat, kind="stable")            # grouped by expert, queue order kept inside a group
    routed = np.bincount(flat, minlength=n_experts)
    kept = routed if capacity is None else np.minimum(routed, capacity)
    starts = np.concatenate([[0], np.cumsum(routed)[:-1]])
    plan = {}
    for e in np.flatnonzero(kept):
        slots = order[starts[e]: starts[e] + kept[e]]  # positions in flat = rank * N + token
        tokens, ranks = slots % N, slots // N
        by_token = np.argsort(tokens, kind="stable")   # token order makes gathers cache-friendly
        plan[int(e)] = (tokens[by_token], ranks[by_token])
    return {"plan": plan, "routed": routed, "kept": kept}


class MoE(Module):
    """A router (nn.Linear(C, E, bias=False)) and E expert FFNs of the dense block's kind.

    activation "swiglu": nn.SwiGLU(C, hidden) experts; "gelu": nn.MLP(C, hidden, bias) experts.
    Parameters: E * (one dense FFN) + E * C for the router.
    renormalize_gates: divide the k gates by their sum (Mixtral). Applies for k > 1 only: a single
    renormalised gate would always be 1 and cut the router off from the task loss, so top-1 gates
    are the router probability itself, as in Switch.
    After each forward: aux_loss and z_loss (scalar Tensors), and stats (floats and per-expert
    load for logging; see forward).
    """

    def __init__(self, dim, hidden_dim, n_experts, top_k=2, capacity_factor=1.25, renormalize_gates=True,
                 activation="swiglu", bias=True, init_std=0.02, rng=None, dtype=np.float32):
        if not isinstance(n_experts, int) or n_experts < 1:
            raise ValueError(f"MoE: n_experts must be a positive int, got {n_experts!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
            raise ValueError(f"MoE: top_k must be an int in [1, n_experts={n_experts}], got {top_k!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"MoE: capacity_factor must be > 0 or None (no dropping), got {capacity_factor!r}")
        self.n_experts, self.top_k = n_experts, top_k
        self.capacity_factor, self.renormalize_gates = capacity_factor, renormalize_gates
        self.router = Linear(dim, n_experts, bias=False, init_std=init_std, rng=rng, dtype=dtype)
        if activation == "swiglu":
            experts = [SwiGLU(dim, hidden_dim, init_std=init_std, rng=rng, dtype=dtype) for _ in range(n_experts)]
        elif activation == "gelu":
            experts = [MLP(dim, hidden_dim, bias=bias, init_std=init_std, rng=rng, dtype=dtype)
                       for _ in range(n_experts)]
        else:
            raise ValueError(f"MoE: activation must be 'swiglu' or 'gelu', got {activation!r}")
        self.experts = ModuleList(experts)
        self.aux_loss = self.z_loss = None
        self.stats = None

    def forward(self, x, routing=None):
        """x: (..., C) -> (..., C).

        routing: optional (N, k) expert indices to use instead of the router's top-k (N = the
        number of tokens in x), to hold the routing fixed, e.g. for a gradient check. The gates are
        still the router's probabilities at those experts, so the router keeps its gradient.
        Sets self.stats = {"load": (E,) fraction of assignments per expert (before capacity),
        "dropped": the fraction of the N*k assignments dropped, "aux_loss", "z_loss": floats}.
        """
        shape = x.shape
        C = shape[-1]
        xs = x.reshape(-1, C)                                          # (N, C)
        N = xs.shape[0]
        logits = self.router(xs)                                       # (N, E)
        probs = F.softmax(logits, axis=-1)                             # (N, E)
        if routing is None:
            idx = top_k_experts(probs.data, self.top_k)                # (N, k)
        else:
            idx = np.asarray(routing)
            if idx.shape != (N, self.top_k) or idx.min(initial=0) < 0 or idx.max(initial=0) >= self.n_experts:
                raise ValueError(f"MoE: routing must be ({N}, {self.top_k}) ints in [0, {self.n_experts}), "
                                 f"got shape {idx.shape}")
        gates = top_k_gates(probs, idx, self.renormalize_gates and self.top_k > 1)   # (N, k)
        capacity = capacity_of(N, self.n_experts, self.top_k, self.capacity_factor) if self.training else None
        r = route(idx, self.n_experts, capacity)

        plan, ys = [], []
        for e, (tokens, ranks) in r["plan"].items():
            ys.append(self.experts[e](gather_rows(xs, tokens)))       # (n_e, C): one matmul chain per expert
            plan.append((tokens, ranks))
        out = combine(gates, plan, N, ys)                              # (N, C)

        fraction = r["routed"] / (N * self.top_k)                      # (E,) sums to 1
        self.aux_loss = load_balancing_loss(probs, fraction)
        self.z_loss = router_z_loss(logits)
        self.stats = {"load": fraction, "dropped": float(1.0 - r["kept"].sum() / (N * self.top_k)),
                      "aux_loss": float(self.aux_loss.data), "z_loss": float(self.z_loss.data)}
        return out.reshape(shape)

    def infer(self, x):
        """forward in eval mode on arrays, without the tape (no capacity limit; aux_loss, z_loss and
        stats are left as the last forward set them)."""
        xs = x.reshape(-1, x.shape[-1])                                # (N, C)
        probs = kernels.softmax_forward(self.router.infer(xs))         # (N, E)
        idx = top_k_experts(probs, self.top_k)                         # (N, k)
        gates = np.take_along_axis(probs, idx, axis=1)                 # (N, k)
        if self.renormalize_gates and self.top_k > 1:
            gates = gates / gates.sum(axis=1, keepdims=True)
        out = np.zeros_like(xs)
        for e, (tokens, ranks) in route(idx, self.n_experts)["plan"].items():
            out[tokens] += gates[tokens, ranks][:, None] * self.experts[e].infer(xs[tokens])
        return out.reshape(x.shape)

    def extra_repr(self):
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, capacity_factor={self.capacity_factor}, "
                f"renormalize_gates={self.renormalize_gates}")
