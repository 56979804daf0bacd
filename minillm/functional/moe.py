"""The autograd nodes of a Mixture-of-Experts layer: top-k gates, dispatch, combine, and the two
router losses. Each is one node with a handwritten backward (see minillm/nn/moe.py for the layer).

Routing itself (which k experts a token goes to, which tokens an over-full expert drops) is a
piecewise-constant choice: it is made outside autograd on the router probabilities and handed to
these nodes as integer arrays, so the gradient flows through the gate *values* only.

The math here is indexing and a few row reductions, so it lives in this file as plain NumPy; the
heavy work of an MoE layer is the experts' own matmuls, which run through their usual kernels.
"""
import numpy as np

from ..autograd import Function
from ._checks import as_input, check_float, check_ndim


class TopKGatesFn(Function):
    """gates[n, j] = p[n, idx[n, j]]  (/ sum_l p[n, idx[n, l]] when renormalised).

    With s_n = sum_l p[n, idx[n, l]] and g = p_sel / s, the backward through the renormalisation is
        dp_sel[n, j] = (dg[n, j] - sum_l dg[n, l] g[n, l]) / s_n
    and dp is dp_sel scattered to the selected columns (zero elsewhere).
    """

    @staticmethod
    def forward(ctx, probs, idx, renormalize):
        selected = np.take_along_axis(probs, idx, axis=1)             # (N, k)
        if renormalize:
            total = selected.sum(axis=1, keepdims=True)                # (N, 1)
            gates = selected / total
        else:
            total, gates = None, selected
        ctx.save(probs.shape, idx, total, gates)
        return gates

    @staticmethod
    def backward(ctx, dgates):
        shape, idx, total, gates = ctx.saved
        if total is not None:
            dsel = (dgates - np.sum(dgates * gates, axis=1, keepdims=True)) / total
        else:
            dsel = dgates
        dprobs = np.zeros(shape, dtype=dgates.dtype)
        np.put_along_axis(dprobs, idx, dsel, axis=1)                  # the k experts of a row are distinct
        return dprobs


def top_k_gates(probs, idx, renormalize=True):
    """The gate values of the chosen experts.   probs: (N, E), idx: (N, k) distinct ints per row -> (N, k)."""
    probs = as_input(probs)
    check_float("top_k_gates", probs=probs)
    check_ndim("top_k_gates", "probs", probs, ndim=2)
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[0] != probs.shape[0]:
        raise ValueError(f"top_k_gates: idx must be (N, k) with N = {probs.shape[0]}, got shape {idx.shape}")
    return TopKGatesFn.apply(probs, idx, bool(renormalize))


class GatherRowsFn(Function):
    """y = x[rows];  dx = dy written back to those rows (zero elsewhere). rows must be distinct,
    as they are for one expert's tokens, so the backward is a plain assignment, not np.add.at."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save(x.shape, rows)
        return x[rows]

    @staticmethod
    def backward(ctx, dy):
        shape, rows = ctx.saved
        dx = np.zeros(shape, dtype=dy.dtype)
        dx[rows] = dy
        return dx, None


def gather_rows(x, rows):
    """x: (N, C), rows: (n,) distinct ints in [0, N) -> (n, C). The dispatch of tokens to one expert."""
    x = as_input(x)
    check_ndim("gather_rows", "x", x, ndim=2)
    return GatherRowsFn.apply(x, np.asarray(rows))


class CombineFn(Function):
    """out[n] = sum over the experts e that kept token n of gates[n, j_e] * y_e[row of n in e].

    ys are the experts' outputs on their gathered tokens; plan[e] = (tokens_e, ranks_e) says which
    token each row of y_e is and which of the token's k choices (j) sent it there. Backward:
        dy_e      = gates[tokens_e, ranks_e] * dout[tokens_e]
        dgates[tokens_e, ranks_e] = sum_c dout[tokens_e, c] * y_e[:, c]
    Tokens dropped by every expert get zero rows (the block's residual carries them).
    """

    @staticmethod
    def forward(ctx, gates, plan, n_tokens, *ys):
        C = ys[0].shape[1] if ys else 0
        out = np.zeros((n_tokens, C), dtype=gates.dtype)
        weights = []
        for (tokens, ranks), y in zip(plan, ys):
            w = gates[tokens, ranks][:, None]                          # (n_e, 1)
            out[tokens] += w * y                                       # tokens are distinct within an expert
            weights.append(w)
        ctx.save(gates.shape, plan, weights, ys)
        return out

    @staticmethod
    def backward(ctx, dout):
        gates_shape, plan, weights, ys = ctx.saved
        dgates = np.zeros(gates_shape, dtype=dout.dtype)
        dys = []
        for (tokens, ranks), w, y in zip(plan, weights, ys):
            d = dout[tokens]                                           # (n_e, C)
            dgates[tokens, ranks] = np.einsum("nc,nc->n", d, y)
            dys.append(d * w)
        return (dgates, None, None, *dys)


def combine(gates, plan, n_tokens, ys):
    """Scatter the experts' outputs back to their tokens, weighted by the gates.

    gates: (N, k); plan: one (tokens, ranks) pair of (n_e,) int arrays per expert output in ys,
    each y_e: (n_e, C). Returns (N, C). C is taken from the outputs (at least one is needed).
    """
    gates = as_input(gates)
    check_ndim("combine", "gates", gates, ndim=2)
    if not ys or len(plan) != len(ys):
        raise ValueError(f"combine: need one (tokens, ranks) pair per expert output, got {len(plan)} "
                         f"and {len(ys)} (at least one)")
    for (tokens, _), y in zip(plan, ys):
        if y.shape[0] != len(tokens):
            raise ValueError(f"combine: an expert output has {y.shape[0]} rows for {len(tokens)} tokens")
    return CombineFn.apply(gates, plan, int(n_tokens), *ys)


class LoadBalancingLossFn(Function):
    """The Switch Transformer balancing loss  L = E * sum_i f_i * P_i,  P_i = mean_n p[n, i].

    f (the fraction of tokens routed to each expert) is a count, so a constant: the gradient flows
    through the mean router probabilities only,  dL/dp[n, i] = E * f_i / N. L = 1 when routing is
    uniform and reaches E when every token and all the probability go to one expert.
    """

    @staticmethod
    def forward(ctx, probs, fraction):
        N, E = probs.shape
        ctx.save(N, E, fraction)
        return np.asarray(E * np.sum(fraction * probs.mean(axis=0)), dtype=probs.dtype)

    @staticmethod
    def backward(ctx, dloss):
        N, E, fraction = ctx.saved
        return np.broadcast_to(dloss * E * fraction / N, (N, E)).astype(dloss.dtype), None


def load_balancing_loss(probs, fraction):
    """probs: (N, E) router probabilities, fraction: (E,) constants summing to 1 -> a scalar."""
    probs = as_input(probs)
    check_float("load_balancing_loss", probs=probs)
    check_ndim("load_balancing_loss", "probs", probs, ndim=2)
    fraction = np.asarray(fraction, dtype=probs.dtype)
    if fraction.shape != probs.shape[1:]:
        raise ValueError(f"load_balancing_loss: fraction must be ({probs.shape[1]},), got {fraction.shape}")
    return LoadBalancingLossFn.apply(probs, fraction)


class RouterZLossFn(Function):
    """The ST-MoE router z-loss  L = mean_n logsumexp(z[n])^2, which keeps router logits small.

    dL/dz[n, i] = 2 * lse_n * softmax(z[n])_i / N.
    """

    @staticmethod
    def forward(ctx, logits):
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        lse = m + np.log(s)                                            # (N, 1)
        ctx.save(lse, e / s)
        return np.asarray(np.mean(lse * lse), dtype=logits.dtype)

    @staticmethod
    def backward(ctx, dloss):
        lse, probs = ctx.saved
        return dloss * 2.0 * lse * probs / probs.shape[0]


def router_z_loss(logits):
    """logits: (N, E) router logits -> a scalar."""
    logits = as_input(logits)
    check_float("router_z_loss", logits=logits)
    check_ndim("router_z_loss", "logits", logits, ndim=2)
    return RouterZLossFn.apply(logits)
