"""Advantages for policy-gradient fine-tuning: GAE (PPO) and group-relative (GRPO). Pure NumPy.

Arrays are laid out like a rollout's (minillm/alignment/rollout.py): (B, T) over the sequence, with
mask[b, t] True where position t emits a response token (an action). Each row's actions are one
contiguous run; the episode ends after its last action (the value after it is 0).

GAE (Schulman et al. 2016), over the actions of a row in order, with V(after the last) = 0:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * A_{t+1}          (A after the last action = 0)
    R_t     = A_t + V_t                                 (the value target, "returns")

Group-relative (Shao et al. 2024, GRPO): the rollouts come in groups of G answers to one prompt
(rows g*G ... g*G + G - 1); each answer's advantage is its reward standardised within its group,

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

given to every token of the answer (no value function).
"""
import numpy as np


def gae(rewards, values, mask, gamma, lam):
    """(advantages, returns), both (B, T) and 0 off the mask. rewards, values: (B, T); mask: (B, T) bool."""
    rewards, values, mask = np.asarray(rewards, np.float64), np.asarray(values, np.float64), np.asarray(mask, bool)
    if not (rewards.shape == values.shape == mask.shape) or rewards.ndim != 2:
        raise ValueError(f"gae: rewards {rewards.shape}, values {values.shape} and mask {mask.shape} must be one "
                         "(B, T) shape")
    B, T = rewards.shape
    advantages = np.zeros((B, T))
    next_value, next_advantage = np.zeros(B), np.zeros(B)
    for t in reversed(range(T)):                 # off the mask (prompt, padding) the recursion restarts at 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = np.where(mask[:, t], advantage, 0.0)
        next_value = np.where(mask[:, t], values[:, t], 0.0)
        next_advantage = advantages[:, t]
    returns = np.where(mask, advantages + values, 0.0)
    return advantages, returns


def whiten(x, mask, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the masked entries (the mean kept when shift_mean is False); 0 off the mask."""
    x, mask = np.asarray(x, np.float64), np.asarray(mask, bool)
    values = x[mask]
    if values.size == 0:
        return np.zeros_like(x)
    mean, std = values.mean(), values.std()
    out = (x - mean) / (std + eps)
    if not shift_mean:
        out += mean
    return np.where(mask, out, 0.0)


def group_advantages(rewards, group_size, eps=1e-6):
    """(B,) rewards in consecutive groups of group_size -> (B,) standardised within each group."""
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1 or group_size < 1 or rewards.size % group_size:
        raise ValueError(f"group_advantages: {rewards.shape} rewards do not split into groups of {group_size}; "
                         "the batch must be a multiple of the group size")
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, keepdims=True) + eps)).reshape(-1)
