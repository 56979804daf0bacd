"""Fused projections: several weight matrices that read the same input, stored as one.

Attention's q, k and v projections all read the normed x, as SwiGLU's gate and up projections
do; as one matrix [W_q; W_k; W_v] they are one matmul instead of three (one call, one pass over
x, a wider N for the GEMM, and at batch 1 a single GEMV that streams all the rows).

The parameters stay what they are (names, shapes, state_dict keys, checkpoints, optimizer state):
`FusedRows` stacks their arrays once into one C-contiguous array and makes each parameter's
`.data` a view of its rows, so an optimizer's in-place update, or any `p.data[...] = ...`, writes
the fused array too. Whoever *replaces* an array (load_state_dict, Module.to, quantize_model)
breaks the link, which `FusedRows` notices by identity (`p.data is view`) on the next use and
restacks: the fused array is never stale.

`FusedProjection()(x, weights, biases)` is the projection through such a stack, on arrays: the
weights are Parameters or QuantizedWeights (quantized twins stack their q, scale and min rows the
same way), passed at each call so that modules swapped by quantize_model are seen.
"""
import numpy as np

from .. import kernels
from ..kernels.reference.nf4 import GROUP2


class FusedRows:
    """The rows of several arrays stacked into one contiguous array, of which they become views.

    rows(holders, attr) returns np.concatenate([getattr(h, attr) for h in holders]) and sets each
    getattr(h, attr) to its slice of it; later calls return the same array without copying as long
    as every holder still has the view it was given.
    """

    def __init__(self):
        self.stacked = None
        self.views = ()

    def rows(self, holders, attr):
        current = [getattr(h, attr) for h in holders]
        if len(current) == len(self.views) and all(a is v for a, v in zip(current, self.views)):
            return self.stacked
        self.stacked = np.concatenate(current, axis=0)
        ends = np.cumsum([len(a) for a in current])
        self.views = tuple(self.stacked[end - len(a):end] for a, end in zip(current, ends))
        for holder, view in zip(holders, self.views):
            setattr(holder, attr, view)
        return self.stacked


class FusedProjection:
    """y = x [W_1; ...; W_n]^T + [b_1; ...; b_n] as one matmul on arrays, for weights that read the same x.

    Called with the current weights each time (so a module swapped by quantize_model is seen):
    Parameters (float), or QuantizedWeights of one scheme; biases: Parameters, or None for none.
    """

    def __init__(self):
        self.parts = {}          # array name -> FusedRows

    def _rows(self, name, holders, attr):
        part = self.parts.get(name)
        if part is None:
            part = self.parts[name] = FusedRows()
        return part.rows(holders, attr)

    def stacked(self, weights, biases=None):
        """(W, b): the stacked float weights and biases (or None), as F.fused_linear takes them."""
        return self._rows("weight", weights, "data"), None if biases is None else self._rows("bias", biases, "data")

    def __call__(self, x, weights, biases=None):
        """x: (..., in) array -> (..., sum of the weights' rows) array."""
        bias = None if biases is None else self._rows("bias", biases, "data")
        if hasattr(weights[0], "scheme") and not _stackable(weights):
            parts = [w.infer(x, None if biases is None else b) for w, b in zip(weights, biases or weights)]
            return np.concatenate(parts, axis=-1)
        if hasattr(weights[0], "scheme"):             # QuantizedWeights (nn/quantized.py)
            q, scale = self._rows("q", weights, "q"), self._rows("scale", weights, "scale")
            low = self._rows("min", weights, "min") if weights[0].min is not None else None
            y = kernels.quant_matmul(x.reshape(-1, x.shape[-1]), weights[0].scheme, q, scale, low, bias)
            return y.reshape(*x.shape[:-1], q.shape[0]).astype(x.dtype, copy=False)
        return kernels.linear_forward(x, self._rows("weight", weights, "data"), bias)


def _stackable(weights):
    """Whether quantized weights can be stacked by rows: NF4's second-level scales (in "min") run in
    groups of GROUP2 (256) blocks over each whole tensor, which line up only when every part but
    the last holds whole groups; otherwise each part is multiplied on its own."""
    if weights[0].scheme != "nf4":
        return True
    return all(w.scale.size % GROUP2 == 0 for w in weights[:-1])
