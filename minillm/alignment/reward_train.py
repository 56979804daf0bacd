"""`minillm finetune --method reward`: a reward model trained on preference pairs (minillm/alignment/train.py
for the loop, reward_model.py for the model and the Bradley-Terry loss).

The run directory holds the run's checkpoints (for --resume: the adapters and the head with LoRA, every
weight with --full), train_log.jsonl, reward_model/ (the trained reward model, LoRA merged in: what
load_reward_model reads) and reward_model.json naming it, so load_reward_model(run directory) works too.
"""
import os

import numpy as np

from ..files import write_json
from ..lora import adapter_state_dict
from .reward_model import RUN_MANIFEST, RewardModel, bradley_terry_loss, pair_rewards, reward_accuracy, save_reward_model
from .train import PreferenceTrainer, mean


class RewardTrainer(PreferenceTrainer):
    ACCURACY = "accuracy"

    def wrap_model(self, model):
        return RewardModel(model, rng=np.random.default_rng([self.config.seed, 5]))

    def trained_state(self):
        return {**adapter_state_dict(self.model),
                **{f"reward_head.{k}": v for k, v in self.model.reward_head.state_dict().items()}}

    def objective(self, batch):
        r_chosen, r_rejected = pair_rewards(self.model, batch)
        loss = bradley_terry_loss(r_chosen, r_rejected, self.config.margin)
        return loss, {"accuracy": reward_accuracy(r_chosen, r_rejected), "rewards/chosen": mean(r_chosen),
                      "rewards/rejected": mean(r_rejected), "rewards/margins": mean(r_chosen.data - r_rejected.data)}

    def write_outputs(self):
        save_reward_model(self.model, self.tokenizer, os.path.join(self.out_dir, "reward_model"),
                          state={"step": self.step, "base": self.source, "method": self.config.method})
        write_json(os.path.join(self.out_dir, RUN_MANIFEST),
                   {"format": "minillm-reward-run-1", "base": self.source, "method": self.config.method,
                    "reward_model": "reward_model", "step": self.step})
