"""The basic layers: Linear, Embedding, RMSNorm, LayerNorm, Dropout, and the two feed-forwards
(SwiGLU for Llama, a GELU MLP for GPT-2).

Each has forward (Tensors, one node per op on the tape: what training runs) and infer (the same
math on NumPy arrays, straight to the kernels, no tape: what generation runs).
"""
import numpy as np

from .. import functional as F
from .. import kernels
from .fused import FusedProjection
from .module import Module, Parameter, default_rng


def normal(shape, std, rng, dtype):
    return Parameter((rng or default_rng()).standard_normal(shape) * std, dtype=dtype)


class Linear(Module):
    """y = x W^T + b.   weight: (out_features, in_features), initialised N(0, init_std^2)."""

    def __init__(self, in_features, out_features, bias=True, init_std=0.02, rng=None, dtype=np.float32):
        self.in_features, self.out_features = in_features, out_features
        self.weight = normal((out_features, in_features), init_std, rng, dtype)
        self.bias = Parameter(np.zeros(out_features), dtype=dtype) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def infer(self, x):
        return kernels.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A (num_embeddings, dim) table; forward(ids) looks rows up."""

    def __init__(self, num_embeddings, dim, init_std=0.02, rng=None, dtype=np.float32):
        self.weight = normal((num_embeddings, dim), init_std, rng, dtype)

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def attend(self, x):
        """x (..., dim) -> (..., num_embeddings) = x weight^T: the table used as a tied output head."""
        return F.linear(x, self.weight)

    def infer(self, ids):
        V = self.weight.shape[0]
        if ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0 or ids.max() >= V)):
            raise ValueError(f"embedding: ids must be integers in [0, {V}), got {ids.dtype} ids"
                             + (f" in [{ids.min()}, {ids.max()}]" if ids.size and ids.dtype.kind in "iu" else ""))
        return kernels.embedding_forward(ids, self.weight.data)

    def infer_attend(self, x):
        return kernels.linear_forward(x, self.weight.data)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class RMSNorm(Module):
    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = Parameter(np.ones(dim), dtype=dtype)

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def infer(self, x):
        return kernels.rms_norm_forward(x, self.weight.data, self.eps)[0]

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = Parameter(np.ones(dim), dtype=dtype)
        self.bias = Parameter(np.zeros(dim), dtype=dtype)

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def infer(self, x):
        return kernels.layer_norm_forward(x, self.weight.data, self.bias.data, self.eps)[0]

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Dropout(Module):
    """Inverted dropout while training, identity in eval mode."""

    def __init__(self, p=0.0, rng=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training, rng=self.rng)

    def extra_repr(self):
        return f"p={self.p}"


class SwiGLU(Module):
    """The Llama feed-forward: (silu(x W_gate^T) * (x W_up^T)) W_down^T, one fused node."""

    def __init__(self, dim, hidden_dim, init_std=0.02, rng=None, dtype=np.float32):
        self.w_gate = normal((hidden_dim, dim), init_std, rng, dtype)
        self.w_up = normal((hidden_dim, dim), init_std, rng, dtype)
        self.w_down = normal((dim, hidden_dim), init_std, rng, dtype)
        self.gate_up = FusedProjection()               # [W_gate; W_up] as one matrix for infer

    def forward(self, x):
        return F.swiglu(x, self.w_gate, self.w_up, self.w_down)

    def infer(self, x):
        h = self.gate_up(x, [self.w_gate, self.w_up])                          # (..., 2F): gate | up
        F_ = h.shape[-1] // 2
        return kernels.linear_forward(kernels.silu_forward(h[..., :F_]) * h[..., F_:], self.w_down.data)

    def extra_repr(self):
        return f"{self.w_gate.shape[1]}, hidden={self.w_gate.shape[0]}"


class MLP(Module):
    """The GPT-2 feed-forward: gelu(x W_fc^T + b_fc) W_proj^T + b_proj."""

    def __init__(self, dim, hidden_dim, bias=True, init_std=0.02, rng=None, dtype=np.float32):
        self.fc = Linear(dim, hidden_dim, bias=bias, init_std=init_std, rng=rng, dtype=dtype)
        self.proj = Linear(hidden_dim, dim, bias=bias, init_std=init_std, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))

    def infer(self, x):
        return self.proj.infer(kernels.gelu_forward(self.fc.infer(x)))


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}   # a config's norm name -> its layer
