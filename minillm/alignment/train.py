"""Training on preference pairs: the loop of `minillm finetune --method reward | dpo`.

Both are minillm/finetune.py's Finetuner (LoRA or full; checkpoints, --resume bit-exact, the JSONL log,
the held-out split, the NaN stop) with preference pairs for data (minillm/alignment/preference_data.py):
each step draws batch_size pairs, one model call scores the 2 * batch_size rows, and the objective turns
the chosen and rejected scores into a loss and the figures logged with it:

    reward  RewardTrainer (reward_model.py)  loss = -log sigmoid(r_c - r_r - margin)
            logged: loss, accuracy (r_c > r_r), rewards/chosen, rewards/rejected, rewards/margins
    dpo     DPOTrainer (dpo.py)              loss = dpo_loss(policy and reference log-probabilities)
            logged as trl names them: rewards/chosen, rewards/rejected, rewards/margins,
            rewards/accuracies, logps/chosen, logps/rejected

Every train record has them for its batch; every eval record has them over the held-out pairs, as
"val" (the loss) and the rest prefixed "eval_" (trl's eval names).
"""
import math
from dataclasses import dataclass

import numpy as np

from ..autograd import no_grad
from ..finetune import FinetuneConfig, Finetuner
from .preference_data import load_pairs, pair_batch

OBJECTIVES = ("reward", "dpo")
DPO_LOSSES = ("sigmoid", "ipo", "hinge")


@dataclass
class PreferenceConfig(FinetuneConfig):
    objective: str = "dpo"            # reward | dpo
    beta: float = 0.1                 # dpo: the strength of the pull towards the reference
    loss_type: str = "sigmoid"        # dpo: sigmoid | ipo | hinge
    label_smoothing: float = 0.0      # dpo sigmoid: the assumed share of flipped preference labels
    margin: float = 0.0               # reward: r_chosen must beat r_rejected by this much

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"finetune: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.method not in ("full", "lora"):
            raise ValueError(f"finetune: {self.objective} trains full or lora, got method {self.method!r}")
        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"finetune: loss_type must be one of {DPO_LOSSES}, got {self.loss_type!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"finetune: beta must be a positive number, got {self.beta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"finetune: label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"finetune: margin must be a number >= 0, got {self.margin}")


class PreferenceTrainer(Finetuner):
    """A Finetuner on preference pairs; a subclass gives objective(batch) -> (loss Tensor, {figure: value})
    with the pair accuracy under ACCURACY."""
    ACCURACY = "accuracy"

    def load_data(self, path):
        return load_pairs(path, self.tokenizer, self.model.config.block_size)

    def next_batch(self):
        picked = self.data_rng.choice(len(self.train_examples), size=min(self.config.batch_size, len(self.train_examples)),
                                      replace=False)
        batch = pair_batch([self.train_examples[i] for i in picked])
        batch["global_trained"] = int((batch["targets"] != -100).sum())     # one process: the loss weighs 1
        return batch

    def objective(self, batch):
        raise NotImplementedError

    def loss(self, batch):
        loss, self._figures = self.objective(batch)
        return loss, self._figures[self.ACCURACY], int((batch["targets"] != -100).sum())

    def train_step(self):
        record = super().train_step()
        del record["token_accuracy"]
        return {**record, **self._figures}

    def evaluate(self):
        """{"val": mean loss, "eval_<figure>": mean figure} over the held-out pairs (weighted by pairs)."""
        if not self.eval_examples:
            return {}
        self.model.eval()
        sums, count = {}, 0
        with no_grad():
            for i in range(0, len(self.eval_examples), self.config.batch_size):
                chunk = self.eval_examples[i:i + self.config.batch_size]
                loss, figures = self.objective(pair_batch(chunk))
                for name, value in {"loss": float(loss.data), **figures}.items():
                    sums[name] = sums.get(name, 0.0) + value * len(chunk)
                count += len(chunk)
        self.model.train()
        return {"val": sums.pop("loss") / count, **{f"eval_{k}": v / count for k, v in sums.items()}}

    def summary(self, losses):
        key = f"eval_{self.ACCURACY}"
        return f", val loss {losses['val']:.4f}, held-out pair accuracy {losses[key]:.3f}" if "val" in losses else ""


def mean(values):
    return float(np.mean(np.asarray(getattr(values, "data", values), dtype=np.float64)))

