"""The basic layers: Linear, Embedding, RMSNorm, LayerNorm, Dropout, and the two feed-forwards
(SwiGLU for Llama, a GELU MLP for GPT-2)."""
import numpy as np

from .. import functional as F
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

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class RMSNorm(Module):
    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = Parameter(np.ones(dim), dtype=dtype)

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = Parameter(np.ones(dim), dtype=dtype)
        self.bias = Parameter(np.zeros(dim), dtype=dtype)

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

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

    def forward(self, x):
        return F.swiglu(x, self.w_gate, self.w_up, self.w_down)

    def extra_repr(self):
        return f"{self.w_gate.shape[1]}, hidden={self.w_gate.shape[0]}"


class MLP(Module):
    """The GPT-2 feed-forward: gelu(x W_fc^T + b_fc) W_proj^T + b_proj."""

    def __init__(self, dim, hidden_dim, bias=True, init_std=0.02, rng=None, dtype=np.float32):
        self.fc = Linear(dim, hidden_dim, bias=bias, init_std=init_std, rng=rng, dtype=dtype)
        self.proj = Linear(hidden_dim, dim, bias=bias, init_std=init_std, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}   # a config's norm name -> its layer
