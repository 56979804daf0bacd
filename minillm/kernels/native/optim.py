"""The fused AdamW update in C++ (csrc/optim.cpp)."""
import numpy as np

from . import _C


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """p, m, v updated in place in one pass (see reference.adamw_step). g is cast to p's dtype; a
    p, m or v that is not C-contiguous is updated through a contiguous copy written back."""
    arrays = (p, m, v)
    work = arrays if all(a.flags.c_contiguous for a in arrays) else [np.ascontiguousarray(a) for a in arrays]
    _C.adamw_step(p=work[0], g=np.ascontiguousarray(g, dtype=p.dtype), m=work[1], v=work[2], lr=float(lr),
                  beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay),
                  step=int(step))
    for a, w in zip(arrays, work):
        if w is not a:
            a[...] = w
