"""The demonstration the README's first command runs: a forward and backward pass of a tiny
transformer block in each flavour, and the proof that its gradients are right.

For each flavour it builds a block (d_model 16, 4 heads), runs a float32 forward and backward
on a (2, 8, 16) batch, then casts the block to float64 and checks every parameter's and the
input's gradient against central finite differences (minillm.testing.gradcheck_module).
"""
import time

import numpy as np

from . import nn
from .testing import GradcheckError, gradcheck_module

FLAVOURS = {
    "GPT-2: LayerNorm + GELU MLP + learned positions": dict(norm="layernorm", activation="gelu", positions=None),
    "Llama: RMSNorm + SwiGLU + RoPE + GQA (4 q / 2 kv heads)": dict(
        norm="rmsnorm", activation="swiglu", positions="rope", n_kv_heads=2, bias=False),
    "ALiBi positions, MQA (1 kv head)": dict(norm="layernorm", activation="gelu", positions="alibi", n_kv_heads=1),
    "Sliding-window attention (window 3) + RoPE": dict(norm="rmsnorm", activation="swiglu", positions="rope",
                                                        window=3, bias=False),
}


def run_flavour(name, args, seed=0, d_model=16, n_heads=4, batch=2, seq=8):
    rng = np.random.default_rng(seed)
    config = nn.BlockConfig(d_model=d_model, n_heads=n_heads, d_ff=2 * d_model, init_std=0.3, **args)
    block = nn.TransformerBlock(config, rng=rng)
    x = rng.standard_normal((batch, seq, d_model)).astype(np.float32)
    pos = nn.Embedding(seq, d_model, init_std=0.3, rng=rng) if args.get("positions") is None else None

    def forward(m, x):
        return m(x + pos(np.arange(seq))) if pos is not None else m(x)

    start = time.perf_counter()
    y = forward(block, x)
    loss = (y * y).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    grad_norm = float(np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in block.parameters())))

    start = time.perf_counter()
    try:
        gradcheck_module(block, [x[:1, :5]], forward=lambda m, x: m(x + pos(np.arange(5))) if pos else m(x))
        verdict = "ok"
    except GradcheckError as error:
        verdict = f"FAILED: {error}"
    check_time = time.perf_counter() - start
    return dict(name=name, params=block.num_parameters(), loss=float(loss.data), grad_norm=grad_norm,
                ms=elapsed * 1e3, gradcheck=verdict, gradcheck_s=check_time)


def main():
    from . import build_info
    info = build_info()
    print(f"minillm {info['version']}: backend {info['backend']}, native extension {info['native']}, "
          f"OpenMP {info['openmp']}, SIMD {info['simd']}, threads {info['threads']}")
    print("One transformer block per flavour: float32 forward + backward of a (2, 8, 16) batch, then")
    print("a float64 finite-difference check of every parameter's and the input's gradient.\n")
    print(f"{'flavour':58} {'params':>6} {'loss':>8} {'|grad|':>8} {'fwd+bwd':>9}  gradcheck")
    failures = 0
    for name, args in FLAVOURS.items():
        r = run_flavour(name, args)
        failures += r["gradcheck"] != "ok"
        print(f"{r['name']:58} {r['params']:>6} {r['loss']:>8.4f} {r['grad_norm']:>8.4f} {r['ms']:>7.2f}ms  "
              f"{r['gradcheck']} ({r['gradcheck_s']:.1f}s)")
    print("\nall gradients match finite differences" if not failures else f"\n{failures} flavour(s) FAILED")
    return 1 if failures else 0
