"""The fused AdamW update in C++ (csrc/optim.cpp)."""
from . import _C


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """p, m, v updated in place in one pass (see reference.adamw_step); all C-contiguous, one dtype."""
    _C.adamw_step(p=p, g=g, m=m, v=v, lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                  weight_decay=float(weight_decay), step=int(step))
