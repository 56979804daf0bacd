"""Rollouts: answers sampled from the policy (with the KV cache), laid out for the PPO / GRPO losses.

A batch of B (prompt, answer) pairs becomes right-padded arrays (B, T), T the longest prompt + answer:

    ids[b]       prompt tokens, answer tokens (ending with the stop token when one came), then 0s
    targets[b,t] ids[b, t + 1] where token t + 1 is an answer token, else -100
    mask[b,t]    targets[b, t] != -100: position t emits an answer token (an action)

Padding is after every real token, so causal attention never reads it. Under no tape, one pass of the
policy gives, at every action, the old log-probability log pi_old(a_t) and (PPO) the value V(s_t) from
the value head on the same hidden states; one pass of the reference gives log pi_ref(a_t). Log-probs
are of the sampling distribution, softmax(logits / temperature). The per-token reward (PPO):

    r_t = -beta * (log pi_old(a_t) - log pi_ref(a_t))   at every action
    r_T += score                                        at the last action (the reward of the answer)

and the KL logged is sum_t (log pi_old - log pi_ref) over the answer, averaged over the batch.
"""
from dataclasses import dataclass

import numpy as np

from ..autograd import no_grad
from ..generate import generate
from .logprobs import IGNORE, token_logprobs


@dataclass
class Rollout:
    ids: np.ndarray          # (B, T) int64
    targets: np.ndarray      # (B, T) int64, IGNORE off the answers
    mask: np.ndarray         # (B, T) bool, the actions
    logp: np.ndarray         # (B, T) log pi_old at the actions, 0 elsewhere
    ref_logp: np.ndarray     # (B, T) log pi_ref
    values: np.ndarray       # (B, T) V(s_t) (zeros without a value head)
    scores: np.ndarray       # (B,) the reward of each answer
    answers: list            # B lists of answer token ids

    def kl(self):
        """(B,) sum over each answer of log pi_old - log pi_ref."""
        return np.where(self.mask, self.logp - self.ref_logp, 0.0).sum(axis=1)

    def rewards(self, kl_coef):
        """(B, T) per-token rewards: the KL penalty at every action and the score at the last one."""
        rewards = np.where(self.mask, -kl_coef * (self.logp - self.ref_logp), 0.0)
        last = self.mask.shape[1] - 1 - np.argmax(self.mask[:, ::-1], axis=1)       # each row's last action
        rewards[np.arange(len(last)), last] += self.scores
        return rewards


def sample_answers(model, prompt_ids, max_new_tokens, temperature, top_k=None, top_p=None, seed=None, stop=()):
    """One answer (token ids) per prompt, sampled with the KV cache, cut after the first stop token
    (which it keeps, so the policy learns to stop); at most max_new_tokens tokens."""
    outputs = generate(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, use_cache=True)
    stop = set(stop)
    answers = []
    for out in outputs:
        cut = next((i for i, t in enumerate(out) if t in stop), None)
        answers.append(out if cut is None else out[:cut + 1])
    return answers


def layout(prompt_ids, answers, pad_id=0):
    """(ids, targets, mask) (B, T) of prompts followed by their answers (module docstring)."""
    T = max(len(p) + len(a) for p, a in zip(prompt_ids, answers))
    B = len(answers)
    ids = np.full((B, T), pad_id, np.int64)
    targets = np.full((B, T), IGNORE, np.int64)
    for b, (p, a) in enumerate(zip(prompt_ids, answers)):
        ids[b, :len(p) + len(a)] = list(p) + list(a)
        targets[b, len(p) - 1:len(p) + len(a) - 1] = a
    return ids, targets, targets != IGNORE


def policy_forward(model, value_head, ids, targets, temperature=1.0):
    """(log-probs (B, T) Tensor, values (B, T) Tensor or None, logits (B, T, V) Tensor): one pass of the
    decoder, the LM head and the value head on the same final hidden states."""
    hidden = model.hidden_states(ids)                             # (B, T, C)
    logits = model.head(hidden)                                   # (B, T, V)
    if temperature != 1.0:
        logits = logits * (1.0 / temperature)
    values = None if value_head is None else value_head(hidden).reshape(*ids.shape)
    return token_logprobs(logits, targets), values, logits


def make_rollout(policy, value_head, reference, prompts, reward_fn, max_new_tokens, temperature=1.0, top_k=None,
                 top_p=None, seed=None, stop=()):
    """Sample, score and evaluate a batch of prompts (minillm/alignment/prompts.py's Prompt) -> Rollout.

    reward_fn(prompts, answers) -> (B,) scores, answers as token-id lists; reference: a callable (ids,
    targets) -> (B, T) log-probs under the reference (see ppo.py: the base with adapters off, or a frozen
    copy)."""
    prompt_ids = [p.ids for p in prompts]
    was_training = policy.training
    policy.eval()                                                  # no dropout in the old policy's numbers
    try:
        answers = sample_answers(policy, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop)
        ids, targets, mask = layout(prompt_ids, answers)
        with no_grad():
            logp, values, _ = policy_forward(policy, value_head, ids, targets, temperature)
            ref_logp = reference(ids, targets)
    finally:
        policy.train(was_training)
    scores = np.asarray(reward_fn(prompts, answers), np.float64)
    if scores.shape != (len(prompts),) or not np.isfinite(scores).all():
        raise ValueError(f"rollout: the reward function returned {scores.shape} scores for {len(prompts)} answers "
                         "(it must give one finite number per answer)")
    values = np.zeros(ids.shape) if values is None else np.where(mask, values.data, 0.0)
    return Rollout(ids, targets, mask, np.asarray(logp.data, np.float64), np.asarray(ref_logp, np.float64), values,
                   scores, answers)
