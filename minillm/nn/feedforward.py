"""The position-wise feed-forward of encoder models, in the variants BERT and T5 use:

    plain:  y = act(x W_fc^T + b_fc) W_proj^T + b_proj                 (BERT: GELU, T5 v1.0: ReLU)
    gated:  y = (act(x W_gate^T) * (x W_fc^T)) W_proj^T                (T5 v1.1: gated-GELU)

act: "gelu" (the exact erf form, BERT's), "gelu_tanh" (GPT-2's and T5's gated-gelu), "relu", "silu".
"""
import numpy as np

from .. import functional as F
from .layers import Linear
from .module import Module

ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="none"), "gelu_tanh": F.gelu, "relu": F.relu,
               "silu": F.silu}


class FeedForward(Module):
    def __init__(self, dim, hidden_dim, activation="gelu", gated=False, bias=True, init_std=0.02, rng=None,
                 dtype=np.float32):
        if activation not in ACTIVATIONS:
            raise ValueError(f"FeedForward: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation, self.gated = activation, bool(gated)
        init = dict(bias=bias, init_std=init_std, rng=rng, dtype=dtype)
        self.gate = Linear(dim, hidden_dim, **init) if gated else None
        self.fc = Linear(dim, hidden_dim, **init)
        self.proj = Linear(hidden_dim, dim, **init)

    def forward(self, x):
        act = ACTIVATIONS[self.activation]
        h = act(self.gate(x)) * self.fc(x) if self.gated else act(self.fc(x))
        return self.proj(h)

    def extra_repr(self):
        return f"activation={self.activation}, gated={self.gated}"
