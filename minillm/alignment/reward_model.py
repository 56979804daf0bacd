"""A reward model: a decoder with a scalar head on its last real token, trained on preference pairs with
the Bradley-Terry loss (Ouyang et al. 2022; trl's RewardTrainer).

    r(x) = w . h_last(x) + b                        h_last: the final hidden state of the row's last real token
    loss = mean over pairs of -log sigmoid(r_chosen - r_rejected - margin)        (margin 0 by default)

The base is any DecoderLM, full (every weight trained) or with LoRA adapters (minillm/lora.py: the base
frozen apart from them); the head `reward_head` (Linear C -> 1) is always trained. Rows are right-padded with
a key padding mask (minillm/alignment/preference_data.py), so the last real token of a row is its end
marker (EOS, or the chat template's end of turn).

    rm = RewardModel(base)
    r = rm(ids, key_padding_mask)                   # (B,) Tensor, on the tape
    rm.score(ids, key_padding_mask)                 # (B,) float64 array, no tape, eval mode (rollouts)
    save_reward_model(rm, tokenizer, "out/rm");  rm, tokenizer = load_reward_model("out/rm")

The saved directory is a minillm checkpoint (atomic: minillm/checkpoint.py) of the base with any LoRA
adapters merged in, plus reward_head.weight and reward_head.bias in model.safetensors, and
state.json's "reward_model" naming the format. load_reward_model also takes a `minillm finetune
--method reward` run directory (its reward_model.json names the saved model inside it).
"""
import copy
import json
import math
import os

import numpy as np

from .. import checkpoint as ckpt
from ..autograd import Function, no_grad
from ..io.errors import FormatError
from ..lora import merge_lora
from ..nn import Linear, Module
from .preference_data import last_token_index

FORMAT = "minillm-reward-model-1"
RUN_MANIFEST = "reward_model.json"


def log_sigmoid(z):
    """log sigmoid(z) = -log(1 + exp(-z)), without overflow."""
    return -np.logaddexp(0.0, -z)


def sigmoid(z):
    return np.exp(log_sigmoid(z))


class BradleyTerryLoss(Function):
    """loss = mean_i softplus(-(z_i)),  z = r_chosen - r_rejected - margin   (= -mean log sigmoid z)
       dloss/dr_chosen_i = -sigmoid(-z_i) / B = -dloss/dr_rejected_i   (the margin is a constant)."""

    @staticmethod
    def forward(ctx, r_chosen, r_rejected, margin):
        z = r_chosen - r_rejected - margin                        # (B,)
        ctx.save(z)
        return np.array(-np.mean(log_sigmoid(z)), dtype=r_chosen.dtype)

    @staticmethod
    def backward(ctx, dy):
        (z,) = ctx.saved
        g = (-dy * sigmoid(-z) / z.size).astype(z.dtype)
        return g, -g


def bradley_terry_loss(r_chosen, r_rejected, margin=0.0):
    """-mean log sigmoid(r_chosen - r_rejected - margin); r_*: (B,) Tensors, margin a float or (B,) array."""
    B = r_chosen.shape
    if len(B) != 1 or r_rejected.shape != B:
        raise ValueError(f"bradley_terry_loss: r_chosen and r_rejected must be (B,) of one shape, got {r_chosen.shape} "
                         f"and {r_rejected.shape}")
    margin = np.broadcast_to(np.asarray(margin, dtype=np.float64), B)
    return BradleyTerryLoss.apply(r_chosen, r_rejected, margin.astype(r_chosen.dtype))


class RewardModel(Module):
    """base: a DecoderLM (LoRA-adapted or not); reward_head: Linear(n_embd, 1) on the last real token's
    final hidden state."""

    def __init__(self, base, rng=None):
        self.base = base
        self.config = base.config
        C = base.config.n_embd
        self.reward_head = Linear(C, 1, bias=True, init_std=1 / math.sqrt(C),
                                  rng=rng if rng is not None else np.random.default_rng(0),
                                  dtype=base.norm_f.weight.dtype)

    @property
    def quantization(self):
        return getattr(self.base, "quantization", None)

    def forward(self, ids, key_padding_mask):
        """ids (B, T), key_padding_mask (B, T) bool (True = real token) -> rewards (B,) Tensor."""
        ids, mask = np.asarray(ids), np.asarray(key_padding_mask, bool)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"RewardModel: ids must be (B, T) and key_padding_mask of the same shape, got {ids.shape} "
                             f"and {mask.shape}")
        hidden = self.base.hidden_states(ids, key_padding_mask=None if mask.all() else mask)   # (B, T, C)
        last = hidden[np.arange(ids.shape[0]), last_token_index(mask)]                       # (B, C)
        return self.reward_head(last).reshape(ids.shape[0])

    def score(self, ids, key_padding_mask):
        """(B,) float64 array of rewards: no tape, in eval mode (the model's mode is restored). For rollouts
        and best-of-n; rows may be left- or right-padded (the last True of each mask row is scored)."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                return np.asarray(self.forward(ids, key_padding_mask).data, dtype=np.float64)
        finally:
            self.train(was_training)


def pair_rewards(model, batch):
    """(r_chosen, r_rejected) (B,) Tensors of a pair_batch: its first half of rows, then its second."""
    r = model(batch["ids"], batch["mask"])
    B = batch["ids"].shape[0] // 2
    return r[:B], r[B:]


def reward_accuracy(r_chosen, r_rejected):
    """The fraction of pairs with r_chosen > r_rejected."""
    return float(np.mean(np.asarray(getattr(r_chosen, "data", r_chosen)) > np.asarray(getattr(r_rejected, "data", r_rejected))))


# ---- saving and loading

class _MergedView:
    """What save_checkpoint needs of a model: the base's weights with any LoRA adapters merged in, and the head."""

    def __init__(self, model):
        base = model.base
        if getattr(base, "lora_config", None) is not None:
            base = merge_lora(copy.deepcopy(base))            # a merged copy: the model being trained is unchanged
        self.config, self.quantization = base.config, getattr(base, "quantization", None)
        self._state = {**base.state_dict(), **{f"reward_head.{k}": v for k, v in model.reward_head.state_dict().items()}}

    def state_dict(self):
        return self._state


def save_reward_model(model, tokenizer, directory, state=None):
    """Write model (a RewardModel) and its tokenizer to directory as a minillm checkpoint (atomically)."""
    if not isinstance(model, RewardModel):
        raise TypeError(f"save_reward_model: model must be a RewardModel, got {type(model).__name__}")
    os.makedirs(directory, exist_ok=True)
    return ckpt.save_checkpoint(directory, _MergedView(model), tokenizer,
                                state={**(state or {}), "reward_model": {"format": FORMAT}})


def load_reward_model(directory):
    """(RewardModel in eval mode, tokenizer) from a directory save_reward_model wrote, or from a
    `minillm finetune --method reward` run directory."""
    directory = os.fspath(directory)
    manifest = os.path.join(directory, RUN_MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as f:
                directory = os.path.join(directory, json.load(f)["reward_model"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise FormatError(f"{manifest}: not a reward model manifest ({error})") from None
    if not ckpt.has_checkpoint(directory):
        raise FormatError(f"load_reward_model: {directory!r} holds no reward model (save_reward_model writes one; "
                          "so does minillm finetune --method reward)")
    saved = ckpt.load_checkpoint(directory)
    if (saved["state"].get("reward_model") or {}).get("format") != FORMAT:
        raise FormatError(f"load_reward_model: {directory!r} is a minillm checkpoint but not a reward model "
                          f"(its state.json has no reward_model format {FORMAT!r})")
    head = {k: saved["model"].pop(f"reward_head.{k}", None) for k in ("weight", "bias")}
    if any(v is None for v in head.values()):
        raise FormatError(f"load_reward_model: {directory!r} has no reward_head.weight / reward_head.bias")
    base, tokenizer = ckpt.build_model(saved)
    model = RewardModel(base)
    try:
        model.reward_head.load_state_dict(head)
    except (KeyError, ValueError) as error:
        raise FormatError(f"load_reward_model: {directory!r}: the reward head does not fit the base ({error})") from None
    return model.eval(), tokenizer
