"""The kernel backend switch: one function per kernel, each running the backend in use.

Every function below calls the C++ kernel (`native/<family>.py`, a wrapper over `minillm._C`)
when the native backend is on and the kernel has a C++ version, else the NumPy reference
(`reference/<family>.py`, which reads like the math and carries the derivation). Both are named
in the body, so a reader, or an editor's "go to definition", can follow either one.

`MINILLM_BACKEND=numpy` (or `set_backend("numpy")`) runs everything on the references; the
default is "native" when the extension is built. Callers look the functions up at call time
(`kernels.softmax_forward(x)`), and each one reads the backend when it runs, so switching takes
effect at once; the switch costs one plain Python call per kernel.
"""
import os

from . import native, reference

BACKENDS = ("native", "numpy")
_backend = None
_native = False   # True while the native backend is in use


def set_backend(name):
    """Pick "native" (C++ where a kernel has it, the reference elsewhere) or "numpy" (references only)."""
    global _backend, _native
    if name not in BACKENDS:
        raise ValueError(f"set_backend: backend must be one of {BACKENDS}, got {name!r}")
    if name == "native" and not native.AVAILABLE:
        raise RuntimeError(f"set_backend: the native extension minillm._C is not built ({native.IMPORT_ERROR})")
    _backend, _native = name, name == "native"


def get_backend():
    return _backend


def native_kernels():
    """Names of the kernels the native backend runs in C++ (the rest use the reference)."""
    return sorted(native.KERNELS)


# ---- linear and embedding

def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """C = op(a) op(b), written into out or (accumulate) added to it. 2-D arrays."""
    if _native:
        return native.linear.matmul(a, b, trans_a, trans_b, out, accumulate)
    return reference.linear.matmul(a, b, trans_a, trans_b, out, accumulate)


def linear_forward(x, w, b=None):
    """y = x W^T + b.  x: (..., in), w: (out, in), b: (out,) or None."""
    if _native:
        return native.linear.linear_forward(x, w, b)
    return reference.linear.linear_forward(x, w, b)


def linear_backward(dy, x, w, has_bias=True):
    """(dx, dw, db) of linear_forward; db is None without a bias."""
    if _native:
        return native.linear.linear_backward(dy, x, w, has_bias)
    return reference.linear.linear_backward(dy, x, w, has_bias)


def embedding_forward(ids, weight):
    """y = weight[ids] (NumPy on both backends)."""
    return reference.linear.embedding_forward(ids, weight)


def embedding_backward(dy, ids, num_embeddings):
    """dweight (num_embeddings, C): dy summed into the rows ids name (NumPy on both backends)."""
    return reference.linear.embedding_backward(dy, ids, num_embeddings)


# ---- norms

def rms_norm_forward(x, weight, eps):
    """(y, inv_rms): y = x * inv_rms * weight, inv_rms = 1 / sqrt(mean(x^2, -1) + eps)."""
    if _native:
        return native.norm.rms_norm_forward(x, weight, eps)
    return reference.norm.rms_norm_forward(x, weight, eps)


def rms_norm_backward(dy, x, weight, inv_rms):
    """(dx, dweight) of rms_norm_forward."""
    if _native:
        return native.norm.rms_norm_backward(dy, x, weight, inv_rms)
    return reference.norm.rms_norm_backward(dy, x, weight, inv_rms)


def layer_norm_forward(x, weight, bias, eps):
    """(y, x_hat, inv_std): y = x_hat * weight + bias, x_hat = (x - mean) * inv_std over the last axis."""
    if _native:
        return native.norm.layer_norm_forward(x, weight, bias, eps)
    return reference.norm.layer_norm_forward(x, weight, bias, eps)


def layer_norm_backward(dy, x_hat, weight, inv_std):
    """(dx, dweight, dbias) of layer_norm_forward."""
    if _native:
        return native.norm.layer_norm_backward(dy, x_hat, weight, inv_std)
    return reference.norm.layer_norm_backward(dy, x_hat, weight, inv_std)


# ---- activations, the SwiGLU feed-forward, dropout

def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if _native:
        return native.activation.gelu_forward(x)
    return reference.activation.gelu_forward(x)


def gelu_backward(dy, x):
    """dx = dy * gelu'(x)."""
    if _native:
        return native.activation.gelu_backward(dy, x)
    return reference.activation.gelu_backward(dy, x)


def silu_forward(x):
    """SiLU: y = x * sigmoid(x)."""
    if _native:
        return native.activation.silu_forward(x)
    return reference.activation.silu_forward(x)


def silu_backward(dy, x):
    """dx = dy * sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    if _native:
        return native.activation.silu_backward(dy, x)
    return reference.activation.silu_backward(dy, x)


def swiglu_forward(x, w_gate, w_up, w_down):
    """(y, a, b, h): y = h W_down^T, h = silu(a) * b, a = x W_gate^T, b = x W_up^T."""
    if _native:
        return native.linear.swiglu_forward(x, w_gate, w_up, w_down)
    return reference.activation.swiglu_forward(x, w_gate, w_up, w_down)


def swiglu_backward(dy, x, w_gate, w_up, w_down, a, b, h):
    """(dx, dw_gate, dw_up, dw_down) of swiglu_forward, from its saved a, b, h."""
    if _native:
        return native.linear.swiglu_backward(dy, x, w_gate, w_up, w_down, a, b, h)
    return reference.activation.swiglu_backward(dy, x, w_gate, w_up, w_down, a, b, h)


def dropout_forward(x, p, rng):
    """Inverted dropout: (y, scale) with y = x * scale, scale = mask / (1 - p) (NumPy on both backends)."""
    return reference.activation.dropout_forward(x, p, rng)


def dropout_backward(dy, scale):
    """dx = dy * scale (NumPy on both backends)."""
    return reference.activation.dropout_backward(dy, scale)


def gelu_erf_forward(x):
    """GELU, exact form: y = x Phi(x) = 0.5 x erfc(-x / sqrt(2))."""
    if _native:
        return native.gelu_erf.gelu_erf_forward(x)
    return reference.gelu_erf.gelu_erf_forward(x)


def gelu_erf_backward(dy, x):
    """dx = dy * (Phi(x) + x phi(x))."""
    if _native:
        return native.gelu_erf.gelu_erf_backward(dy, x)
    return reference.gelu_erf.gelu_erf_backward(dy, x)


def relu_forward(x):
    """y = max(x, 0) (NumPy on both backends)."""
    return reference.gelu_erf.relu_forward(x)


def relu_backward(dy, x):
    """dx = dy * (x > 0) (NumPy on both backends)."""
    return reference.gelu_erf.relu_backward(dy, x)


# ---- softmax, log-softmax, cross-entropy

def softmax_forward(x):
    """Softmax over the last axis."""
    if _native:
        return native.softmax.softmax_forward(x)
    return reference.softmax.softmax_forward(x)


def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y, axis=-1)) for y = softmax(x)."""
    if _native:
        return native.softmax.softmax_backward(dy, y)
    return reference.softmax.softmax_backward(dy, y)


def log_softmax_forward(x):
    """y = x - logsumexp(x) over the last axis."""
    if _native:
        return native.softmax.log_softmax_forward(x)
    return reference.softmax.log_softmax_forward(x)


def log_softmax_backward(dy, y):
    """dx = dy - exp(y) * sum(dy, axis=-1) for y = log_softmax(x)."""
    if _native:
        return native.softmax.log_softmax_backward(dy, y)
    return reference.softmax.log_softmax_backward(dy, y)


def cross_entropy_forward(logits, targets, ignore_index=-100, reduction="mean"):
    """(loss, state): loss_n = logsumexp(logits_n) - logits_n[targets_n], reduced; state for the backward."""
    if _native:
        return native.softmax.cross_entropy_forward(logits, targets, ignore_index, reduction)
    return reference.softmax.cross_entropy_forward(logits, targets, ignore_index, reduction)


def cross_entropy_backward(dloss, state, targets, ignore_index=-100, reduction="mean"):
    """dlogits from the forward's state (the probabilities in NumPy; softmax - onehot in C++)."""
    if _native:
        return native.softmax.cross_entropy_backward(dloss, state, targets, ignore_index, reduction)
    return reference.softmax.cross_entropy_backward(dloss, state, targets, ignore_index, reduction)


# ---- rotary positions

def rope_angles(positions, head_dim, theta, dtype):
    """(cos, sin) of the rotation angles, each (..., T, head_dim) (NumPy on both backends: they are cached)."""
    return reference.rope.rope_angles(positions, head_dim, theta, dtype)


def rope_forward(x, cos, sin):
    """y = x * cos + rotate_half(x) * sin."""
    if _native:
        return native.rope.rope_forward(x, cos, sin)
    return reference.rope.rope_forward(x, cos, sin)


def rope_backward(dy, cos, sin):
    """dx: the rotation back, dy * cos + rotate_half^T(dy * sin)."""
    if _native:
        return native.rope.rope_backward(dy, cos, sin)
    return reference.rope.rope_backward(dy, cos, sin)


# ---- attention

def attention_forward(q, k, v, causal=True, window=None, alibi_slopes=None, key_padding_mask=None):
    """(out, lse): out = softmax(q k^T / sqrt(D) + bias + mask) v, lse its log-sum-exp per query row.
    A (B, T, S) mask (one row per query: packed examples) runs the reference on both backends."""
    if _native and getattr(key_padding_mask, "ndim", 2) != 3:
        return native.attention.attention_forward(q, k, v, causal, window, alibi_slopes, key_padding_mask)
    return reference.attention.attention_forward(q, k, v, causal, window, alibi_slopes, key_padding_mask)


def attention_backward(dout, q, k, v, out, lse, causal=True, window=None, alibi_slopes=None,
                       key_padding_mask=None):
    """(dq, dk, dv) of attention_forward, from its out and lse."""
    if _native and getattr(key_padding_mask, "ndim", 2) != 3:
        return native.attention.attention_backward(dout, q, k, v, out, lse, causal, window, alibi_slopes,
                                                   key_padding_mask)
    return reference.attention.attention_backward(dout, q, k, v, out, lse, causal, window, alibi_slopes,
                                                  key_padding_mask)


def kv_attention_forward(q, k_cache, v_cache, length, causal=True, window=None, alibi_slopes=None,
                         key_padding_mask=None):
    """out of attention_forward over the first `length` positions of a KV cache (B, Hkv, L, D), read in place."""
    if _native:
        return native.kv_attention.kv_attention_forward(q, k_cache, v_cache, length, causal, window, alibi_slopes,
                                                        key_padding_mask)
    return reference.kv_attention.kv_attention_forward(q, k_cache, v_cache, length, causal, window, alibi_slopes,
                                                       key_padding_mask)


def paged_attention_forward(q, k_pages, v_pages, block_tables, seq_of, positions, window=None, alibi_slopes=None):
    """Causal attention of packed new tokens (N, H, D) over a paged KV cache (P, Hkv, bs, D), through block tables."""
    if _native:
        return native.paged_attention.paged_attention_forward(q, k_pages, v_pages, block_tables, seq_of, positions,
                                                              window, alibi_slopes)
    return reference.paged_attention.paged_attention_forward(q, k_pages, v_pages, block_tables, seq_of, positions,
                                                             window, alibi_slopes)


def sparse_attention_forward(q, k, v, indptr, indices):
    """(out, lse) of softmax attention over each query's list of keys (CSR, shared by batch and heads)."""
    if _native:
        return native.sparse_attention.sparse_attention_forward(q, k, v, indptr, indices)
    return reference.sparse_attention.sparse_attention_forward(q, k, v, indptr, indices)


def sparse_attention_backward(dout, q, k, v, out, lse, indptr, indices):
    """(dq, dk, dv) of sparse_attention_forward."""
    if _native:
        return native.sparse_attention.sparse_attention_backward(dout, q, k, v, out, lse, indptr, indices)
    return reference.sparse_attention.sparse_attention_backward(dout, q, k, v, out, lse, indptr, indices)


def linear_attention_forward(phi_q, phi_k, v, causal=True, eps=1e-6):
    """(out, den): linear attention over feature-mapped queries and keys, by running sums."""
    if _native:
        return native.linear_attention.linear_attention_forward(phi_q, phi_k, v, causal, eps)
    return reference.linear_attention.linear_attention_forward(phi_q, phi_k, v, causal, eps)


def linear_attention_backward(dout, phi_q, phi_k, v, out, den, causal=True):
    """(dphi_q, dphi_k, dv) of linear_attention_forward."""
    if _native:
        return native.linear_attention.linear_attention_backward(dout, phi_q, phi_k, v, out, den, causal)
    return reference.linear_attention.linear_attention_backward(dout, phi_q, phi_k, v, out, den, causal)


# ---- optimizer

def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW update of p, m, v in place, from the gradient g, at update `step` (from 1)."""
    if _native:
        return native.optim.adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    return reference.optim.adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)


# ---- attention with an additive bias, T5's relative position bias (NumPy on both backends)

def attention_bias_forward(q, k, v, bias=None, scale=None, causal=False, key_padding_mask=None):
    """(out, lse): out = softmax(scale * q k^T + bias + mask) v (the reference: the C++ kernel has no bias)."""
    return reference.attention_bias.attention_bias_forward(q, k, v, bias, scale, causal, key_padding_mask)


def attention_bias_backward(dout, q, k, v, out, lse, bias=None, scale=None, causal=False, key_padding_mask=None,
                            bias_shape=None):
    """(dq, dk, dv, dbias) of attention_bias_forward."""
    return reference.attention_bias.attention_bias_backward(dout, q, k, v, out, lse, bias, scale, causal,
                                                            key_padding_mask, bias_shape)


def relative_position_buckets(query_positions, key_positions, bidirectional, num_buckets, max_distance):
    """T5's bucket (T, S) of every relative position key - query."""
    return reference.attention_bias.relative_position_buckets(query_positions, key_positions, bidirectional,
                                                              num_buckets, max_distance)


def relative_position_bias_forward(table, buckets):
    """bias (H, T, S) = table[buckets].moveaxis(-1, 0)."""
    return reference.attention_bias.relative_position_bias_forward(table, buckets)


def relative_position_bias_backward(dbias, buckets, num_buckets):
    """dtable (num_buckets, H): dbias scatter-added into the rows buckets name."""
    return reference.attention_bias.relative_position_bias_backward(dbias, buckets, num_buckets)


# ---- quantization

def quantize_weights(w, scheme):
    """w (N, K) -> {"q", "scale"[, "min"]} in the scheme's layout, or {"q", "scale", "scale2"} for
    "nf4" (NumPy on both backends: it runs once)."""
    if scheme == "nf4":
        return reference.nf4.quantize_nf4(w)
    return reference.quant.quantize_weights(w, scheme)


def dequantize_weights(scheme, q, scale, min=None):
    """The float32 (N, K) matrix that quantized weights stand for (for "nf4", min is scale2)."""
    if scheme == "nf4":
        return dequantize_nf4(q, scale, min)
    return reference.quant.dequantize_weights(scheme, q, scale, min)


def quantize_activations(x):
    """x (M, K) float32 -> (xq int8 (M, K), xd (M, G), xs (M, G)), per group of 32 (Q8_0)."""
    if _native:
        return native.quant.quantize_activations(x)
    return reference.quant.quantize_activations(x)


def quant_matmul(x, scheme, q, scale, min=None, bias=None):
    """y (M, N) = x W^T (+ bias) on quantized W (for "nf4", min is scale2 and x stays float32)."""
    if scheme == "nf4":
        return nf4_matmul(x, q, scale, min, bias)
    if _native:
        return native.quant.quant_matmul(x, scheme, q, scale, min, bias)
    return reference.quant.quant_matmul(x, scheme, q, scale, min, bias)


# ---- NF4, QLoRA's 4-bit NormalFloat with double-quantized scales

def quantize_nf4(w):
    """w (N, K) -> {"q" uint8 (N, K/2), "scale" uint8 (N, K/64), "scale2" float32} (NumPy on both backends)."""
    return reference.nf4.quantize_nf4(w)


def dequantize_nf4(q, scale, scale2):
    """The float32 (N, K) weight: LEVELS[nibble] * scale2[group] * 2^(-code/16)."""
    if _native:
        return native.nf4.dequantize_nf4(q, scale, scale2)
    return reference.nf4.dequantize_nf4(q, scale, scale2)


def nf4_matmul(x, q, scale, scale2, bias=None):
    """y (M, N) = x dequantize(W)^T (+ bias), x float32, dequantized a panel of rows at a time."""
    if _native:
        return native.nf4.nf4_matmul(x, q, scale, scale2, bias)
    return reference.nf4.nf4_matmul(x, q, scale, scale2, bias)


_requested = os.environ.get("MINILLM_BACKEND", "native" if native.AVAILABLE else "numpy").lower()
if _requested not in BACKENDS:
    raise ValueError(f"MINILLM_BACKEND must be one of {BACKENDS}, got {_requested!r}")
set_backend(_requested if native.AVAILABLE or _requested == "numpy" else "numpy")
