"""Every native kernel splits its work by the sizes alone, so its result is bitwise the same on 1, 2
or 3 threads; that is what lets the thread count follow the machine's load (csrc/load.cpp) without
changing a training run. The load sampler reports what it sees, and can be switched off."""
import numpy as np
import pytest

import minillm as mm
from minillm.kernels import native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the native extension is not built")

if native.AVAILABLE:
    from minillm.kernels.native import attention, linear, norm, quant, softmax
    from minillm.kernels import reference


@pytest.fixture
def fixed_threads():
    """set_num_threads(n) is honoured exactly: adapting to the load is off meanwhile."""
    before, adaptive = native._C.get_num_threads(), native._C.adaptive_threads()
    native._C.set_adaptive_threads(False)

    def use(n):
        native._C.set_num_threads(n)
        assert native._C.threads_in_use() == n
    yield use
    native._C.set_num_threads(before)
    native._C.set_adaptive_threads(adaptive)


def cases(rng):
    """(name, function of no arguments returning arrays): large enough that every kernel opens a
    parallel region, with the reductions whose split once followed the thread count."""
    x = rng.standard_normal((300, 200)).astype(np.float32)
    dy = rng.standard_normal((300, 200)).astype(np.float32)
    w, b = rng.standard_normal(200).astype(np.float32), rng.standard_normal(200).astype(np.float32)
    a, bm = rng.standard_normal((150, 170)).astype(np.float32), rng.standard_normal((170, 190)).astype(np.float32)
    q = rng.standard_normal((1, 4, 130, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 1, 130, 16)).astype(np.float32) for _ in range(2))
    qw = reference.quantize_weights(rng.standard_normal((96, 192)).astype(np.float32), "q4_0")
    _, inv_rms = norm.rms_norm_forward(x, w, 1e-5)
    _, x_hat, inv_std = norm.layer_norm_forward(x, w, b, 1e-5)

    def attention_step():
        out, lse = attention.attention_forward(q, k, v, causal=True)
        return (out, lse) + attention.attention_backward(q, q, k, v, out, lse, causal=True)
    return {
        "matmul NN/NT/TN": lambda: (linear.matmul(a, bm), linear.matmul(a, bm.T.copy(), trans_b=True),
                                    linear.matmul(a.T.copy(), bm, trans_a=True)),
        "gemv": lambda: (linear.matmul(a[:1], bm), linear.matmul(a[:1], bm.T.copy(), trans_b=True)),
        "rms_norm_backward": lambda: norm.rms_norm_backward(dy, x, w, inv_rms),
        "layer_norm_backward": lambda: norm.layer_norm_backward(dy, x_hat, w, inv_std),
        "softmax": lambda: (softmax.softmax_forward(x), softmax.log_softmax_backward(dy, x)),
        "attention (MQA, backward in stripes)": attention_step,
        "quant_matmul": lambda: (quant.quant_matmul(x[:1, :192], "q4_0", **qw), quant.quant_matmul(x[:64, :192], "q4_0", **qw)),
    }


@pytest.mark.parametrize("name", list(cases(np.random.default_rng(0))))
def test_results_do_not_depend_on_the_thread_count(fixed_threads, name):
    fn = cases(np.random.default_rng(0))[name]
    results = []
    for threads in (1, 2, 3):
        fixed_threads(threads)
        results.append([np.array(r) for r in fn()])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_the_load_sampler_sees_this_process_and_the_cpus():
    sample = native._C.load_sample()
    assert sample["cpus"] >= 1 and sample["others"] >= 0
    if sample["running"] >= 0:                    # Linux: /proc/loadavg and /proc/self/task
        assert sample["ours"] >= 1 and sample["running"] >= sample["ours"]
    assert 1 <= native._C.threads_in_use() <= native._C.get_num_threads()
    info = mm.build_info()
    assert info["threads_in_use"] <= info["threads"] and isinstance(info["adaptive_threads"], bool)


def test_the_wait_policy_is_not_left_in_the_environment():
    import os
    import subprocess
    import sys
    code = "import os, minillm; print('GOMP_SPINCOUNT' in os.environ)"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    assert result.stdout.strip() == "False"      # set while minillm._C loads, restored right after
