"""Linear attention in C++ (csrc/linear_attention.cpp): running sums, one D x E state per head."""
import numpy as np

from . import _C


def linear_attention_forward(phi_q, phi_k, v, causal=True, eps=1e-6):
    """(out, den) (see reference.linear_attention_forward)."""
    phi_q, phi_k, v = (np.ascontiguousarray(a) for a in (phi_q, phi_k, v))
    return _C.linear_attention_forward(phi_q=phi_q, phi_k=phi_k, v=v, causal=bool(causal), eps=float(eps))


def linear_attention_backward(dout, phi_q, phi_k, v, out, den, causal=True):
    """(dphi_q, dphi_k, dv) (see reference.linear_attention_backward)."""
    phi_q, phi_k, v, out, den = (np.ascontiguousarray(a) for a in (phi_q, phi_k, v, out, den))
    dout = np.ascontiguousarray(dout, dtype=v.dtype)
    return _C.linear_attention_backward(dout=dout, phi_q=phi_q, phi_k=phi_k, v=v, out=out, den=den,
                                        causal=bool(causal))
