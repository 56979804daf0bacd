"""RLHF with PPO (Ouyang et al. 2022; Ziegler et al. 2019), and GRPO (Shao et al. 2024): the loop behind
`minillm finetune --method ppo` / `--method grpo`.

    run = PPOTrainer("sft-out/", "prompts.jsonl", "out/ppo", PPOConfig(algorithm="ppo"), reward_fn)
    run.run()        # out/ppo: checkpoints, train_log.jsonl, adapter/, finetune.json (loads in generate / chat)

reward_fn(prompts, answers) -> (B,) scores: prompts are alignment.prompts.Prompt (p.text the user's
words, p.rendered what the policy saw), answers the decoded replies (stop token dropped). It is a
plain callable (a program check, or a reward model: reward_model_reward in this file, which is given
the replies as sampled, stop token kept, since a reward model is trained on replies that end with one).

Each step (one batch of `rollouts` answers):
  1. sample answers with the KV cache (rollout.py); under no tape, the old policy's log-probs and values
     (one pass, the value head on the decoder's final hidden states) and the reference's log-probs. The
     reference is the base with the adapters disabled (LoRA / QLoRA) or a frozen copy (full).
  2. PPO: per-token rewards r_t = -beta (log pi_old - log pi_ref), plus the score at the last token;
     GAE(gamma, lambda) advantages (whitened over the batch) and returns (advantages.py).
     GRPO: `rollouts / group_size` prompts, group_size answers each; every token of an answer gets its
     score standardised within its group; no value head; the KL is a loss term beta * k3 instead.
  3. ppo_epochs passes over the batch (in `minibatches` shuffled parts), each part one AdamW step on
         PPO:  L = L_pi(clip eps) + vf_coef * L_v(clip eps_v) - ent_coef * H
         GRPO: L = L_pi(clip eps) + beta * KL_k3               - ent_coef * H        (ppo_loss.py)
     with the global gradient norm clipped; a NaN or infinite loss or gradient stops the run first.
  4. beta: fixed, or adapted toward target_kl (kl_control.py).
An answer that never stopped (max_new_tokens reached) has missing_stop_penalty taken off its score when
that is set (trl's missing_eos_penalty): a reward model, trained on replies that end with the stop token,
is otherwise read at a token it never saw last, which the policy learns to exploit.
Logged per step (train_log.jsonl): mean score, KL, beta, policy / value loss, clip fraction, entropy,
answer length, seconds. Checkpoints every eval_interval steps and at the end, as `minillm finetune`'s.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import checkpoint as ckpt
from ..autograd import no_grad
from ..distributed import DataParallel, LocalCommunicator
from ..finetune import FinetuneConfig, Finetuner, _AdapterView
from ..io.hf import family
from ..lora import apply_lora, adapters_disabled, set_adapter_rng
from ..nn import Linear
from ..optim import AdamW, clip_grad_norm, param_groups
from ..pretrained import load_base
from ..train import TrainingDiverged, _progress, peak_memory_mib
from .advantages import gae, group_advantages, whiten
from .kl_control import AdaptiveKLController, FixedKLController
from .ppo_loss import clip_fraction, clipped_policy_loss, clipped_value_loss, kl_penalty, masked_entropy
from .prompts import load_prompts, stop_ids
from .rollout import make_rollout, policy_forward

ALGORITHMS = ("ppo", "grpo")


@dataclass
class PPOConfig(FinetuneConfig):
    algorithm: str = "ppo"
    rollouts: int = 8                 # answers per step
    group_size: int = 4               # GRPO: answers per prompt
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    stop: str | None = None           # a text whose token also ends an answer (besides EOS / end of turn)
    kl_coef: float = 0.05
    target_kl: float | None = None    # adaptive beta when given
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    ppo_epochs: int = 4
    minibatches: int = 1
    whiten_advantages: bool = True
    missing_stop_penalty: float | None = None   # subtracted from the score of an answer that never stopped

    def __post_init__(self):
        super().__post_init__()
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"ppo: algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        for name in ("rollouts", "group_size", "max_new_tokens", "ppo_epochs", "minibatches", "kl_horizon"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ppo: {name} must be a positive int, got {getattr(self, name)!r}")
        if self.algorithm == "grpo" and (self.group_size < 2 or self.rollouts % self.group_size):
            raise ValueError(f"grpo: rollouts ({self.rollouts}) must be a multiple of group_size ({self.group_size}), "
                             "and group_size at least 2 (advantages are relative within a group)")
        if self.minibatches > self.rollouts:
            raise ValueError(f"ppo: minibatches ({self.minibatches}) cannot exceed rollouts ({self.rollouts})")
        if not self.temperature > 0:
            raise ValueError(f"ppo: temperature must be > 0 (the policy must explore), got {self.temperature}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"ppo: target_kl must be > 0, got {self.target_kl}")


def reward_model_reward(reward_model, tokenizer):
    """A reward_fn scoring rendered prompt + answer with a model that has score(ids, key_padding_mask) ->
    (B,) (alignment/reward_model.py's RewardModel); rows right-padded."""
    def reward(prompts, answers):
        rows = [list(tokenizer.encode(p.rendered + a, allowed_special="all")) for p, a in zip(prompts, answers)]
        bos = getattr(tokenizer, "bos_token_id", None)
        if getattr(tokenizer, "add_bos_token", False) and bos is not None:
            rows = [[bos] + r for r in rows]
        T = max(len(r) for r in rows)
        ids, mask = np.zeros((len(rows), T), np.int64), np.zeros((len(rows), T), bool)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = r, True
        with no_grad():
            return np.asarray(reward_model.score(ids, mask), np.float64)
    reward.scores_full_text = True            # answers as sampled, the stop token kept (its replies end with one)
    return reward


class PPOTrainer(Finetuner):
    """A PPO or GRPO run: the policy (adapted), its value head, the reference, the prompts, the reward."""

    def __init__(self, source, prompts_path, out_dir, config, reward_fn, progress=True, log=print, merge=False,
                 resume=False):
        self.out_dir, self.progress, self.log, self.merge, self.reward_fn = out_dir, progress, log, merge, reward_fn
        saved = ckpt.load_checkpoint(out_dir, optimizer_wanted=True) if resume else None
        if saved:
            run = saved["state"]["train_config"]
            source, config = run.get("source", source), PPOConfig.from_dict({**run, "max_iters": config.max_iters})
        if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
            source = os.path.abspath(source)
        self.source, self.data_path, self.config = source, prompts_path, config
        c = config
        self.model, self.tokenizer = load_base(source, c.method, c.scheme)
        self.prompts = load_prompts(prompts_path, self.tokenizer, self.model.config.block_size, c.max_new_tokens)
        self.stop = stop_ids(self.tokenizer)
        if c.stop:
            extra = list(self.tokenizer.encode(c.stop, allowed_special="all"))
            if len(extra) != 1:
                raise ValueError(f"ppo: stop {c.stop!r} is {len(extra)} tokens; it must be exactly one")
            self.stop = sorted(set(self.stop) | set(extra))
        if c.method == "full":
            self.reference_model, _ = load_base(source, "full", None)
            for p in self.reference_model.parameters():
                p.requires_grad = False
            self.reference_model.eval()
        else:
            self.reference_model = None
            family(self.model.config)             # adapter/ is written in peft's layout: refuse others up front
            apply_lora(self.model, c.lora(), rng=np.random.default_rng([c.seed, 3]))
        self.model.train()
        groups = param_groups(self.model, c.weight_decay)
        self.value_head = None
        if c.algorithm == "ppo":
            self.value_head = Linear(self.model.config.n_embd, 1, init_std=0.0)     # V(s) = h w + b, from 0
            groups[0]["params"]["value_head.weight"] = self.value_head.weight
            groups[1]["params"]["value_head.bias"] = self.value_head.bias
        self.optimizer = AdamW(groups, c.lr)
        self.comm = LocalCommunicator()                         # one process (Finetuner.run asks the replicas)
        self.dp = DataParallel(self.model, self.optimizer, self.comm)
        self.kl_control = (AdaptiveKLController(c.kl_coef, c.target_kl, c.kl_horizon) if c.target_kl
                           else FixedKLController(c.kl_coef))
        self.data_rng = np.random.default_rng([c.seed, 1])
        self.step, self.resumed_at, self.best_val = 0, None, math.inf
        if saved:
            self._restore(saved)                   # the trained weights, the optimizer, the step, the data RNG
            extra = saved["state"].get("ppo") or {}
            self.kl_control.value = float(extra.get("kl_coef", c.kl_coef))
            if self.value_head is not None:
                if "value_head" not in extra:
                    raise ckpt.CheckpointError(f"checkpoint {saved['directory']!r} has no value head to resume PPO")
                for name, values in extra["value_head"].items():
                    param = getattr(self.value_head, name)
                    param.data = np.array(values, dtype=param.dtype).reshape(param.shape)

    def save(self, losses=None):
        """Finetuner's checkpoint (the trained weights: the adapters for LoRA), with the value head and beta
        in its state (C + 2 floats; float32 -> JSON -> float32 is exact)."""
        if not all(np.isfinite(p.data).all() for _, p in self.optimizer.named_parameters()):
            raise TrainingDiverged(f"the weights hold NaN or infinite values at step {self.step}; stopped, and the "
                                   f"last checkpoint in {self.out_dir} was left as it was")
        head = None if self.value_head is None else {
            "weight": self.value_head.weight.data.reshape(-1).tolist(), "bias": self.value_head.bias.data.tolist()}
        state = {"step": self.step, "train_config": {**asdict(self.config), "source": self.source},
                 "best_val": None, "losses": losses, "rng": {"data": self.data_rng.bit_generator.state},
                 "ppo": {"kl_coef": self.kl_control.value, "value_head": head}}
        model = self.model if self.config.method == "full" else _AdapterView(self.model)
        ckpt.save_checkpoint(self.out_dir, model, self.tokenizer, self.optimizer, state)

    # ---- rollouts

    def reference_logprobs(self, ids, targets):
        """(B, T) log pi_ref, without a tape: the base (adapters off) or the frozen copy."""
        t = self.config.temperature
        with no_grad():
            if self.reference_model is not None:
                return policy_forward(self.reference_model, None, ids, targets, t)[0].data
            with adapters_disabled(self.model):
                return policy_forward(self.model, None, ids, targets, t)[0].data

    def _answer_text(self, ids):
        return self.tokenizer.decode([i for i in ids if i not in self.stop])

    def rollout(self):
        c = self.config
        n_prompts = c.rollouts // (c.group_size if c.algorithm == "grpo" else 1)
        picked = self.data_rng.choice(len(self.prompts), size=n_prompts, replace=n_prompts > len(self.prompts))
        repeat = c.group_size if c.algorithm == "grpo" else 1
        prompts = [self.prompts[i] for i in picked for _ in range(repeat)]     # a group's rows side by side
        full = getattr(self.reward_fn, "scores_full_text", False)

        def reward(ps, answers):
            scores = np.asarray(self.reward_fn(ps, [self.tokenizer.decode(a) if full else self._answer_text(a)
                                                    for a in answers]), np.float64)
            if c.missing_stop_penalty is not None and scores.shape == (len(answers),):
                scores = scores - c.missing_stop_penalty * np.array([not a or a[-1] not in self.stop for a in answers])
            return scores
        return make_rollout(self.model, self.value_head, self.reference_logprobs, prompts, reward, c.max_new_tokens,
                            c.temperature, c.top_k, None, seed=[c.seed, 5, self.step], stop=self.stop)

    def advantages(self, rollout):
        """(advantages, returns) (B, T) of a rollout (returns None for GRPO)."""
        c = self.config
        if c.algorithm == "grpo":
            per_answer = group_advantages(rollout.scores, c.group_size)
            return np.where(rollout.mask, per_answer[:, None], 0.0), None
        advantages, returns = gae(rollout.rewards(self.kl_control.value), rollout.values, rollout.mask, c.gamma, c.lam)
        return (whiten(advantages, rollout.mask) if c.whiten_advantages else advantages), returns

    # ---- one step

    def loss(self, rollout, rows, advantages, returns):
        """(loss Tensor, stats) of the rollout's rows under the current policy."""
        c = self.config
        ids, targets, mask = rollout.ids[rows], rollout.targets[rows], rollout.mask[rows]
        logp, values, logits = policy_forward(self.model, self.value_head, ids, targets, c.temperature)
        policy_loss = clipped_policy_loss(logp, rollout.logp[rows], advantages[rows], mask, c.cliprange)
        loss, stats = policy_loss, {"policy_loss": float(policy_loss.data)}
        if values is not None:
            value_loss = clipped_value_loss(values, rollout.values[rows], returns[rows], mask, c.cliprange_value)
            loss, stats["value_loss"] = loss + c.vf_coef * value_loss, float(value_loss.data)
        else:
            kl = kl_penalty(logp, rollout.ref_logp[rows], mask)
            loss, stats["kl_loss"] = loss + self.kl_control.value * kl, float(kl.data)
        entropy = masked_entropy(logits if c.ent_coef else logits.detach(), mask)
        if c.ent_coef:
            loss = loss - c.ent_coef * entropy
        stats.update(entropy=float(entropy.data), clip_fraction=clip_fraction(logp.data, rollout.logp[rows], mask,
                                                                                c.cliprange))
        return loss, stats

    def train_step(self):
        c = self.config
        set_adapter_rng(self.model, np.random.default_rng([c.seed, 4, self.step]))
        rollout = self.rollout()
        advantages, returns = self.advantages(rollout)
        kept = f"stopped before applying it; the last checkpoint in {self.out_dir} was left as it was (try a lower --lr)"
        params = [p for _, p in self.optimizer.named_parameters()]
        self.optimizer.lr = c.lr
        stats = []
        for _ in range(c.ppo_epochs):
            for rows in np.array_split(self.data_rng.permutation(c.rollouts), c.minibatches):
                loss, s = self.loss(rollout, rows, advantages, returns)
                if not math.isfinite(float(loss.data)):
                    raise TrainingDiverged(f"the loss became {float(loss.data)} at step {self.step}; {kept}")
                loss.backward()
                s["grad_norm"] = clip_grad_norm(params, c.grad_clip)
                if not math.isfinite(s["grad_norm"]):
                    raise TrainingDiverged(f"the gradient norm became {s['grad_norm']} at step {self.step}; {kept}")
                self.optimizer.step()
                self.optimizer.zero_grad()
                stats.append(s)
        kl = float(rollout.kl().mean())
        record = {"reward": float(rollout.scores.mean()), "kl": kl, "kl_coef": self.kl_control.value,
                  **{k: float(np.mean([s[k] for s in stats])) for k in stats[0]},
                  "answer_length": float(rollout.mask.sum(axis=1).mean())}
        self.kl_control.update(kl, c.rollouts)
        self.step += 1
        return record

    def evaluate(self):
        return {}

    # ---- the run (Finetuner.run: the lock and the log; save / write_outputs as SFT's)

    def _run(self, log_file):
        c = self.config
        start, recent = time.perf_counter(), []
        bar = _progress(self.step, c.max_iters, self.progress)
        while self.step < c.max_iters:
            t0 = time.perf_counter()
            record = self.train_step()
            record["seconds"] = time.perf_counter() - t0
            recent = (recent + [record["reward"]])[-c.eval_interval:]
            log_file.write(json.dumps({"step": self.step, **record}) + "\n")
            log_file.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.3f}")
            if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                self.save({"reward": float(np.mean(recent))})
                self.log(f"step {self.step}: mean reward {np.mean(recent):.4f} (last {len(recent)} steps), "
                         f"KL {record['kl']:.4f}, beta {record['kl_coef']:.4f}")
        if bar is not None:
            bar.close()
        self.write_outputs()
        return {"step": self.step, "reward": float(np.mean(recent)) if recent else None,
                "seconds": time.perf_counter() - start, "peak_memory_mib": peak_memory_mib()}
