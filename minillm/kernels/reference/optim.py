"""The AdamW update of one parameter, in place (minillm/optim.py runs it on every parameter)."""
import math

import numpy as np


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW, at update `step` (from 1):
        p <- p (1 - lr wd)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    p, m, v are updated in place (arrays of g's shape and dtype). Returns None.
    """
    step_size = lr / (1 - beta1 ** step)
    bias2 = math.sqrt(1 - beta2 ** step)
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    if weight_decay:
        p *= 1 - lr * weight_decay
    p -= step_size * m / (np.sqrt(v) / bias2 + eps)
