"""The PPO / GRPO losses as autograd nodes, each forward beside its backward. All are means over the
masked (B, T) entries, n = mask.sum(); old_logp, advantages, old_values, returns, ref_logp are constants.

Clipped policy objective (Schulman et al. 2017), with the ratio rho = exp(logp - old_logp):

    L_pi = (1/n) sum max(-rho A, -clip(rho, 1 - eps, 1 + eps) A)
    dL_pi/dlogp = -(1/n) rho A  where the unclipped term is the larger (the clipped one is flat), else 0

Clipped value loss (as in trl / OpenAI's baselines), v_clip = old_v + clip(v - old_v, -eps_v, eps_v):

    L_v = (1/n) sum 0.5 max((v - R)^2, (v_clip - R)^2)
    dL_v/dv = (1/n) (v - R) where the first term is the larger, (v_clip - R) * [|v - old_v| < eps_v] else

Entropy of the policy at the masked positions, p = softmax(z):

    H = (1/n) sum_t -sum_k p_k log p_k
    dH/dz_k = -(1/n) p_k (log p_k + H_t)          (H_t: the position's own entropy)

GRPO's KL to the reference, the unbiased non-negative estimator k3 (Schulman 2020), d = ref_logp - logp:

    KL = (1/n) sum exp(d) - d - 1,        dKL/dlogp = (1/n) (1 - exp(d))
"""
import numpy as np

from ..autograd import Function


def _count(mask):
    return max(int(np.asarray(mask, bool).sum()), 1)


class ClippedPolicyLoss(Function):
    @staticmethod
    def forward(ctx, logp, old_logp, advantages, mask, cliprange):
        mask = np.asarray(mask, bool)
        ratio = np.exp(logp - old_logp)
        unclipped = -ratio * advantages
        clipped = -np.clip(ratio, 1 - cliprange, 1 + cliprange) * advantages
        ctx.save(ratio, advantages, mask & (unclipped >= clipped), _count(mask))
        return np.asarray(np.sum(np.where(mask, np.maximum(unclipped, clipped), 0.0)) / _count(mask), logp.dtype)

    @staticmethod
    def backward(ctx, dy):
        ratio, advantages, through, n = ctx.saved
        return (dy * np.where(through, -ratio * advantages, 0.0) / n).astype(ratio.dtype), None, None, None, None


class ClippedValueLoss(Function):
    @staticmethod
    def forward(ctx, values, old_values, returns, mask, cliprange_value):
        mask = np.asarray(mask, bool)
        step = values - old_values
        clipped = old_values + np.clip(step, -cliprange_value, cliprange_value)
        plain_sq, clipped_sq = (values - returns) ** 2, (clipped - returns) ** 2
        use_plain = plain_sq >= clipped_sq
        grad = np.where(use_plain, values - returns, np.where(np.abs(step) < cliprange_value, clipped - returns, 0.0))
        ctx.save(np.where(mask, grad, 0.0) / _count(mask))
        return np.asarray(0.5 * np.sum(np.where(mask, np.maximum(plain_sq, clipped_sq), 0.0)) / _count(mask),
                          values.dtype)

    @staticmethod
    def backward(ctx, dy):
        (grad,) = ctx.saved
        return (dy * grad).astype(grad.dtype), None, None, None, None


class MaskedEntropy(Function):
    @staticmethod
    def forward(ctx, logits, mask):
        mask = np.asarray(mask, bool)
        z = logits - logits.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))        # (B, T, V)
        p = np.exp(logp)
        entropy = -(p * logp).sum(axis=-1)                             # (B, T)
        ctx.save(p, logp, entropy, mask, _count(mask))
        return np.asarray(np.sum(np.where(mask, entropy, 0.0)) / _count(mask), logits.dtype)

    @staticmethod
    def backward(ctx, dy):
        p, logp, entropy, mask, n = ctx.saved
        grad = -p * (logp + entropy[..., None]) * mask[..., None] / n
        return (dy * grad).astype(p.dtype), None


class KLPenalty(Function):
    @staticmethod
    def forward(ctx, logp, ref_logp, mask):
        mask = np.asarray(mask, bool)
        d = ref_logp - logp
        ctx.save(np.where(mask, 1.0 - np.exp(d), 0.0) / _count(mask))
        return np.asarray(np.sum(np.where(mask, np.exp(d) - d - 1.0, 0.0)) / _count(mask), logp.dtype)

    @staticmethod
    def backward(ctx, dy):
        (grad,) = ctx.saved
        return (dy * grad).astype(grad.dtype), None, None


def _check(name, reference, **arrays):
    for key, a in arrays.items():
        if np.shape(a) != tuple(reference):
            raise ValueError(f"{name}: {key} has shape {np.shape(a)}, expected {tuple(reference)} (one entry per "
                             "(row, position) of the rollout)")


def clipped_policy_loss(logp, old_logp, advantages, mask, cliprange=0.2):
    """Scalar Tensor L_pi of (B, T) log-probs (a Tensor) against the rollout's constants (module docstring)."""
    _check("clipped_policy_loss", logp.shape, old_logp=old_logp, advantages=advantages, mask=mask)
    return ClippedPolicyLoss.apply(logp, np.asarray(old_logp, logp.dtype), np.asarray(advantages, logp.dtype), mask,
                                   float(cliprange))


def clipped_value_loss(values, old_values, returns, mask, cliprange_value=0.2):
    """Scalar Tensor L_v of (B, T) values (a Tensor) against the rollout's values and returns."""
    _check("clipped_value_loss", values.shape, old_values=old_values, returns=returns, mask=mask)
    return ClippedValueLoss.apply(values, np.asarray(old_values, values.dtype), np.asarray(returns, values.dtype),
                                  mask, float(cliprange_value))


def masked_entropy(logits, mask):
    """Scalar Tensor: the mean entropy of softmax(logits) (B, T, V) over the masked (B, T) positions."""
    _check("masked_entropy", logits.shape[:2], mask=mask)
    return MaskedEntropy.apply(logits, mask)


def kl_penalty(logp, ref_logp, mask):
    """Scalar Tensor: the mean k3 estimate of KL(policy || reference) over the masked positions."""
    _check("kl_penalty", logp.shape, ref_logp=ref_logp, mask=mask)
    return KLPenalty.apply(logp, np.asarray(ref_logp, logp.dtype), mask)


def clip_fraction(logp, old_logp, mask, cliprange):
    """Share of the masked positions whose ratio left [1 - eps, 1 + eps] (logged)."""
    ratio = np.exp(np.asarray(logp, np.float64) - old_logp)
    return float(np.sum((np.abs(ratio - 1) > cliprange) & np.asarray(mask, bool)) / _count(mask))
