"""Direct Preference Optimization (Rafailov et al. 2023) and its IPO (Azar et al. 2023) and hinge (SLiC,
Zhao et al. 2023) variants: `minillm finetune --method dpo`.

With the log-probabilities of the replies (summed over their tokens, minillm/alignment/logprobs.py)
under the policy pi and a frozen reference pi_ref (the model the run starts from),

    h = (log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))          per pair, c chosen, r rejected

    sigmoid  L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)     (eps: label smoothing, cDPO)
    ipo      L = (h - 1 / (2 beta))^2
    hinge    L = max(0, 1 - beta h)

and the loss is the mean of L over the pairs, as trl's DPOTrainer computes it (trl's ipo averages the
log-probabilities over the reply's tokens; here every variant uses the sums, as the IPO paper does).
Logged as trl names them: rewards/chosen = beta (log pi(c) - log pi_ref(c)) (the implicit reward),
rewards/rejected likewise, rewards/margins their difference, rewards/accuracies the share of pairs
whose chosen reward is the higher, logps/chosen and logps/rejected the policy's mean log-probabilities.

The reference: with LoRA it is the policy with its adapters disabled (minillm/nn/lora.py's
adapters_disabled: no second copy in memory); with --full a frozen copy of the base loaded from its
source. Its log-probabilities are computed once per batch, under no_grad (no tape), in eval mode.
"""
import numpy as np

from ..autograd import Function, no_grad
from ..lora import adapters_disabled
from ..pretrained import load_base
from .logprobs import sequence_logprobs
from .reward_model import log_sigmoid, sigmoid
from .train import DPO_LOSSES, PreferenceTrainer, mean


def dpo_losses(h, beta, loss_type, label_smoothing=0.0):
    """(per-pair losses L, dL/dh) of the log-ratio differences h (B,) array (the module docstring's formulas)."""
    if loss_type == "sigmoid":
        eps = label_smoothing
        L = -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
        dL = -(1 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h)
    elif loss_type == "ipo":
        L = (h - 1 / (2 * beta)) ** 2
        dL = 2 * (h - 1 / (2 * beta))
    elif loss_type == "hinge":
        L = np.maximum(0.0, 1 - beta * h)
        dL = np.where(1 - beta * h > 0, -beta, 0.0)
    else:
        raise ValueError(f"dpo_loss: loss_type must be one of {DPO_LOSSES}, got {loss_type!r}")
    return L, dL


class DPOLoss(Function):
    """loss = mean_i L(h_i), h = (pc - rc) - (pr - rr); dloss/dpc = L'(h) / B = -dloss/dpr (the reference's
    log-probabilities rc, rr are constants)."""

    @staticmethod
    def forward(ctx, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing):
        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)     # (B,)
        L, dL = dpo_losses(h, beta, loss_type, label_smoothing)
        ctx.save(dL)
        return np.array(np.mean(L), dtype=policy_chosen.dtype)

    @staticmethod
    def backward(ctx, dy):
        (dL,) = ctx.saved
        g = (dy * dL / dL.size).astype(dL.dtype)
        return g, -g


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1, loss_type="sigmoid",
             label_smoothing=0.0):
    """The mean DPO loss of B pairs: policy_* (B,) Tensors of sequence log-probabilities, ref_* (B,) arrays."""
    B = policy_chosen.shape
    shapes = [B, policy_rejected.shape, np.shape(ref_chosen), np.shape(ref_rejected)]
    if len(B) != 1 or any(s != B for s in shapes):
        raise ValueError(f"dpo_loss: the four log-probabilities must be (B,) of one shape, got {shapes}")
    dtype = policy_chosen.dtype
    return DPOLoss.apply(policy_chosen, policy_rejected, np.asarray(ref_chosen, dtype), np.asarray(ref_rejected, dtype),
                         beta=float(beta), loss_type=loss_type, label_smoothing=float(label_smoothing))


def dpo_figures(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """trl's logged figures of a batch (see the module docstring)."""
    pc, pr = (np.asarray(getattr(x, "data", x)) for x in (policy_chosen, policy_rejected))
    chosen, rejected = beta * (pc - ref_chosen), beta * (pr - ref_rejected)
    return {"rewards/chosen": mean(chosen), "rewards/rejected": mean(rejected), "rewards/margins": mean(chosen - rejected),
            "rewards/accuracies": mean(chosen > rejected), "logps/chosen": mean(pc), "logps/rejected": mean(pr)}


def _logits(model, batch):
    mask = batch["mask"]
    return model(batch["ids"], key_padding_mask=None if mask.all() else mask)


class DPOTrainer(PreferenceTrainer):
    """The policy trained against its frozen reference (see the module docstring)."""
    ACCURACY = "rewards/accuracies"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference = None
        if self.config.method == "full":                   # the base as the run started: from its source
            self.reference = load_base(self.source, "full", None)[0].eval()

    def reference_logprobs(self, batch):
        """(2B,) array: the reference's sequence log-probabilities of the batch's rows, without a tape."""
        with no_grad():
            if self.reference is not None:
                return sequence_logprobs(_logits(self.reference, batch), batch["targets"]).data
            was_training = self.model.training
            self.model.eval()
            try:
                with adapters_disabled(self.model):
                    return sequence_logprobs(_logits(self.model, batch), batch["targets"]).data
            finally:
                self.model.train(was_training)

    def objective(self, batch):
        ref = self.reference_logprobs(batch)
        logps = sequence_logprobs(_logits(self.model, batch), batch["targets"])      # (2B,) on the tape
        B = len(ref) // 2
        pc, pr = logps[:B], logps[B:]
        c = self.config
        loss = dpo_loss(pc, pr, ref[:B], ref[B:], c.beta, c.loss_type, c.label_smoothing)
        return loss, dpo_figures(pc, pr, ref[:B], ref[B:], c.beta)
