import json
import math
import os
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minillm.cli import main
from minillm.models import DecoderLM, ModelConfig, load_preset
from minillm.scaling import (ChinchillaLaw, KaplanLaw, count_parameters, fit_chinchilla, fit_kaplan, fit_power_law,
                             flops_per_token, kaplan_n, measure_matmul_peak, plan)
from minillm.scaling import fits as fits_module
from minillm.scaling import sweep as sweep_module

HAS_MOE = "n_experts" in {f.name for f in fields(ModelConfig)}


@st.composite
def model_configs(draw):
    n_head = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([2, 4]))
    config = dict(
        vocab_size=draw(st.integers(2, 20)), block_size=draw(st.integers(1, 8)), n_layer=draw(st.integers(1, 3)),
        n_head=n_head, n_kv_head=draw(st.sampled_from([None] + [k for k in range(1, n_head + 1) if n_head % k == 0])),
        n_embd=n_head * head_dim, d_ff=draw(st.one_of(st.none(), st.integers(1, 12))),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])), activation=draw(st.sampled_from(["gelu", "swiglu"])),
        positions=draw(st.sampled_from(["learned", "sinusoidal", "rope", "alibi"])), bias=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()))
    if HAS_MOE and draw(st.booleans()):
        n_experts = draw(st.integers(1, 3))
        config.update(n_experts=n_experts, top_k=draw(st.integers(1, n_experts)),
                      moe_every=draw(st.integers(1, config["n_layer"])))
    return ModelConfig(**config)


@given(config=model_configs())
def test_count_equals_num_parameters_for_every_flavour(config):
    model = DecoderLM(config)
    assert count_parameters(config) == model.num_parameters()
    assert count_parameters(config, exclude_embeddings=True) == model.num_parameters(exclude_embeddings=True)


def test_counts_equal_hand_computed_values():
    # GPT-2 flavour, C = 8, F = 16, V = 10, T = 8, 2 layers: per block 2 LayerNorms (2 * 16), attention
    # 4 * 8 * 8 + 4 * 8 biases, MLP 2 * 8 * 16 + 16 + 8; then the final LayerNorm, token and position tables.
    gpt = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=16)
    block = 32 + (256 + 32) + (256 + 24)
    assert block == 600
    assert count_parameters(gpt) == 2 * block + 16 + 80 + 64 == 1360
    assert count_parameters(gpt, exclude_embeddings=True) == kaplan_n(gpt) == 1216
    # Llama flavour, MQA (one kv head of 4), untied head: attention 8*8 + 2 * 8*4 + 8*8, RMSNorms 2 * 8,
    # SwiGLU 3 * 8 * 16; final RMSNorm 8, head 80, token table 80; no position table.
    llama = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_kv_head=1, n_embd=8, d_ff=16,
                        norm="rmsnorm", activation="swiglu", positions="rope", bias=False, tie_embeddings=False)
    assert count_parameters(llama) == 2 * (192 + 16 + 384) + 8 + 80 + 80 == 1352
    assert count_parameters(llama, exclude_embeddings=True) == 1272       # the untied head is not an embedding
    assert kaplan_n(llama) == 1192                                         # ... but not in Kaplan's N either


def test_moe_counts_total_and_active_experts():
    # An MoE stand-in (the config fields of nn.MoE): 4 experts of the GPT-2 MLP above, top 2, every 2nd block.
    dense = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=16)
    moe = SimpleNamespace(**{**dense.to_dict(), "hidden_size": 16, "n_experts": 4, "top_k": 2, "moe_every": 2})
    ffn, router = 2 * 8 * 16 + 16 + 8, 8 * 4
    assert count_parameters(moe) == count_parameters(dense) + 3 * ffn + router == 1360 + 872
    assert count_parameters(moe, active=True) == count_parameters(dense) + ffn + router
    assert kaplan_n(moe) == 1216 + ffn + router
    assert count_parameters(dense, active=True) == count_parameters(dense)


@pytest.mark.skipif(not HAS_MOE, reason="ModelConfig has no n_experts yet")
def test_moe_count_equals_num_parameters():
    config = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=16, n_experts=3, top_k=1)
    assert count_parameters(config) == DecoderLM(config).num_parameters()


def test_flops_per_token_hand_computed():
    gpt = ModelConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=16)
    assert flops_per_token(gpt, attention=False) == 6 * 1216
    assert flops_per_token(gpt) == 6 * 1216 + 6 * 2 * 8 * 8            # + 6 n_layer n_ctx d_attn
    assert flops_per_token(gpt, head=True) == 6 * 1216 + 768 + 6 * 8 * 10
    assert flops_per_token(gpt, training=False) == 2 * 1216 + 2 * 2 * 8 * 8
    # the shakespeare-char preset: N = 12 n_layer d^2 + 13 n_layer d + 2d with d = 128
    config = ModelConfig(**dict(load_preset("shakespeare-char")["model"], vocab_size=65))
    assert kaplan_n(config) == 12 * 4 * 128 ** 2 + 13 * 4 * 128 + 2 * 128
    assert flops_per_token(config) == 6 * kaplan_n(config) + 6 * 4 * 64 * 128


def test_matmul_peak_is_a_positive_rate():
    peak = measure_matmul_peak(n=64, seconds=0.01)
    assert math.isfinite(peak) and peak > 0


TRUE = ChinchillaLaw(E=1.2, A=300.0, B=500.0, alpha=0.35, beta=0.3)


def synthetic_runs(law, noise=0.005, seed=0):
    """An 8 x 8 grid of runs over 4 decades of N and D, log-normal noise of `noise` on the loss."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.logspace(5, 9, 8), 8)
    D = np.tile(np.logspace(6, 10, 8), 8)
    return N, D, law.loss(N, D) * np.exp(rng.normal(0, noise, N.size))


@pytest.mark.parametrize("use_scipy", [True, False], ids=["scipy", "numpy"])
def test_chinchilla_fit_recovers_known_coefficients(use_scipy):
    if use_scipy and not fits_module.scipy_available():
        pytest.skip("scipy is not installed")
    N, D, L = synthetic_runs(TRUE)
    result = fit_chinchilla(N, D, L, n_boot=10, use_scipy=use_scipy)
    law = result["law"]
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.02)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.02)
    assert law.E == pytest.approx(TRUE.E, rel=0.05)
    assert law.A == pytest.approx(TRUE.A, rel=0.3) and law.B == pytest.approx(TRUE.B, rel=0.3)
    for name in ("E", "A", "B", "alpha", "beta"):
        lo, hi = result["intervals"][name]
        assert lo <= hi


def test_both_optimisers_reach_the_same_minimum():
    if not fits_module.scipy_available():
        pytest.skip("scipy is not installed")
    N, D, L = synthetic_runs(TRUE, seed=1)
    a, b = fit_chinchilla(N, D, L, use_scipy=True), fit_chinchilla(N, D, L, use_scipy=False)
    assert a["objective"] == pytest.approx(b["objective"], rel=1e-4)
    assert a["law"].alpha == pytest.approx(b["law"].alpha, abs=1e-3)


def test_kaplan_fit_recovers_exponents():
    # Each run is limited by its size or by its data: L = max(L(N), L(D)). With the largest budget
    # chosen so that L(D_max) = L(N_max), the best run of each size lies on L(N) and the best run of
    # each budget on L(D), which is what fit_kaplan selects.
    aN, Nc, aD, Dc = 0.076, 8.8e13, 0.095, 5.4e13
    sizes = np.logspace(6, 9, 6)
    budgets = np.logspace(-3, 0, 6) * Dc / ((Nc / sizes[-1]) ** aN) ** (1 / aD)
    N, D = np.repeat(sizes, 6), np.tile(budgets, 6)
    L = np.maximum((Nc / N) ** aN, (Dc / D) ** aD) * np.exp(np.random.default_rng(0).normal(0, 0.001, N.size))
    result = fit_kaplan(N, D, L, n_boot=20)
    law = result["law"]
    assert law.alpha_N == pytest.approx(aN, abs=0.01) and law.alpha_D == pytest.approx(aD, abs=0.01)
    lo, hi = result["intervals"]["alpha_N"]
    assert lo <= hi
    alpha, c = fit_power_law([1e6, 1e7, 1e8], [(Nc / x) ** aN for x in (1e6, 1e7, 1e8)])
    assert alpha == pytest.approx(aN) and c == pytest.approx(Nc, rel=1e-6)


def test_plan_is_the_closed_form_and_a_minimum_on_the_isoflop_line():
    law = ChinchillaLaw(E=1.5, A=200.0, B=900.0, alpha=0.4, beta=0.25)
    C = 3e19
    a, b, A, B = law.alpha, law.beta, law.A, law.B
    G = (a * A / (b * B)) ** (1 / (a + b))
    result = plan(law, flops=C)
    assert result["params"] == pytest.approx(G * (C / 6) ** (b / (a + b)), rel=1e-12)
    assert result["tokens"] == pytest.approx((C / 6) ** (a / (a + b)) / G, rel=1e-12)
    assert 6 * result["params"] * result["tokens"] == pytest.approx(C, rel=1e-12)
    # along C = 6 N D, no other N does better, and a dense search lands on the same N
    n = np.logspace(np.log10(result["params"]) - 3, np.log10(result["params"]) + 3, 20001)
    losses = law.loss(n, C / (6 * n))
    assert losses.min() >= result["loss"] - 1e-12
    assert n[np.argmin(losses)] == pytest.approx(result["params"], rel=1e-3)
    # --params N (or --tokens D) alone gives the compute-optimal run for that N (D)
    assert plan(law, params=result["params"])["flops"] == pytest.approx(C, rel=1e-9)
    assert plan(law, tokens=result["tokens"])["params"] == pytest.approx(result["params"], rel=1e-9)
    # with --flops, the other follows from C = 6 N D
    fixed = plan(law, flops=C, params=1e8)
    assert fixed["tokens"] == pytest.approx(C / 6e8) and fixed["loss"] >= result["loss"]


def test_published_coefficients_are_the_papers(capsys):
    assert ChinchillaLaw().to_dict() == {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    assert KaplanLaw().to_dict() == {"alpha_N": 0.076, "N_c": 8.8e13, "alpha_D": 0.095, "D_c": 5.4e13}
    assert main(["scaling", "plan", "--flops", "5.76e23", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == pytest.approx(ChinchillaLaw().optimal(5.76e23)[0])


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="give --flops"):
        plan(ChinchillaLaw())
    with pytest.raises(ValueError, match="positive"):
        plan(ChinchillaLaw(), flops=-1.0)


TINY = ["--sizes", "1x8x1,1x16x2", "--tokens", "64,128", "--block-size", "16", "--batch-size", "2",
        "--eval-tokens", "256", "--no-peak", "--n-boot", "5", "--no-progress"]


def test_sweep_writes_results_resumes_fits_and_plots(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "sweep")
    trained = []
    real = sweep_module.train_one

    def counting(spec, *args, **kwargs):
        trained.append(spec["key"])
        return real(spec, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_one", counting)
    assert main(["scaling", "sweep", "--out", out, "--grid", "quick", *TINY, "--plot"]) == 0
    assert len(trained) == 4
    lines = [json.loads(line) for line in open(os.path.join(out, "results.jsonl"))]
    assert len(lines) == 4 and {r["tokens"] for r in lines} == {64, 128}
    for r in lines:
        assert r["params"] == count_parameters(ModelConfig(**r["config"]))
        assert r["flops_6nd"] == 6 * r["params"] * r["tokens"] and math.isfinite(r["val_loss"])
    for name in ("fit.json", "loss_vs_compute.png", "isoflop.png", "fit_vs_observed.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "alpha" in capsys.readouterr().out
    # a rerun trains nothing again
    assert main(["scaling", "sweep", "--out", out, "--grid", "quick", *TINY]) == 0
    assert len(trained) == 4
    assert "(0 trained now)" in capsys.readouterr().out
    # an interrupted run: its record never made it, and its write left half a line; the rerun trains
    # that run alone and its record lands on a line of its own
    path = os.path.join(out, "results.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.writelines(lines[:-1])
        f.write(lines[-1][:20])
    assert main(["scaling", "sweep", "--out", out, "--grid", "quick", *TINY]) == 0
    assert len(trained) == 5 and trained[-1] == json.loads(lines[-1])["key"]
    assert len(sweep_module.read_results(path)) == 4
    capsys.readouterr()
    # refit from the file, then plan with the fitted law: the plan is the fitted law's closed form
    assert main(["scaling", "fit", "--results", os.path.join(out, "results.jsonl"), "--n-boot", "3", "--no-scipy"]) == 0
    assert json.load(open(os.path.join(out, "fit.json")))["chinchilla"]["optimizer"] == "numpy BFGS"
    capsys.readouterr()
    fit_path = os.path.join(out, "fit.json")
    assert main(["scaling", "plan", "--flops", "1e12", "--law", fit_path, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    law = ChinchillaLaw(**json.load(open(fit_path))["chinchilla"]["law"])
    n_opt, d_opt = law.optimal(1e12)
    assert result["params"] == pytest.approx(n_opt) and result["tokens"] == pytest.approx(d_opt)


def test_count_command(capsys):
    assert main(["scaling", "count", "--preset", "llama-15m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 15_191_712 and out["non_embedding_params"] == 15_191_712 - 32000 * 288


def test_count_command_on_the_encoder_families(capsys):
    from minillm.models import build_model, load_preset, model_config_from_dict
    for preset in ("bert-shakespeare", "t5-sort"):
        assert main(["scaling", "count", "--preset", preset, "--vocab-size", "100", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        model = build_model(model_config_from_dict(dict(load_preset(preset)["model"], vocab_size=100)))
        assert out == {"params": model.num_parameters(), "non_embedding_params": model.num_parameters(True)}
    assert main(["scaling", "count", "--preset", "t5-sort"]) == 0
    assert "FLOPs per token: counted for decoder models only" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["scaling", "plan"],
    ["scaling", "plan", "--flops", "0"],
    ["scaling", "plan", "--flops", "1e20", "--law", "missing.json"],
    ["scaling", "count", "--preset", "gpt5"],
    ["scaling", "sweep", "--out", "unused", "--sizes", "3y64", "--dry-run"],
    ["scaling", "fit", "--results", "missing.jsonl"],
    ["scaling", "sweep", "--out", "unused", "--tokens", "1k,lots", "--dry-run"],
])
def test_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
