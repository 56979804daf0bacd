"""DPO: the loss node's gradient (every variant) and its value against a direct computation from the
sequence log-probabilities of a tiny model; the reference is the base with the adapters disabled (or a
frozen copy with --full), computed without a tape; `minillm finetune --method dpo` logs trl's names,
its output loads in generate, and bad flags are one line with exit 2."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.alignment import tasks
from minillm.alignment.dpo import DPOTrainer, dpo_loss
from minillm.alignment.preference_data import encode_pair, pair_batch
from minillm.alignment.train import PreferenceConfig
from minillm.checkpoint import save_checkpoint
from minillm.cli import main
from minillm.lora import LoraConfig, adapters_disabled, apply_lora, merge_lora
from minillm.models import DecoderLM, ModelConfig
from minillm.pretrained import load_pretrained
from minillm.testing import gradcheck

TRL_NAMES = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
             "logps/rejected"]


def direct_loss(h, beta, loss_type, eps):
    """The formulas as written in trl's DPOTrainer, in plain NumPy."""
    logsig = lambda z: -np.log1p(np.exp(-z))
    if loss_type == "sigmoid":
        return np.mean(-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h))
    if loss_type == "ipo":
        return np.mean((h - 1 / (2 * beta)) ** 2)
    return np.mean(np.maximum(0, 1 - beta * h))


variants = st.sampled_from([("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])


@given(B=st.integers(1, 6), seed=st.integers(0, 10 ** 6), variant=variants, beta=st.sampled_from([0.1, 0.5, 2.0]))
def test_dpo_loss_gradient(B, seed, variant, beta):
    rng = np.random.default_rng(seed)
    loss_type, eps = variant
    ref_c, ref_r = rng.standard_normal(B) * 2, rng.standard_normal(B) * 2
    gradcheck(lambda pc, pr: dpo_loss(pc, pr, ref_c, ref_r, beta, loss_type, eps),
              [rng.standard_normal(B) * 2, rng.standard_normal(B) * 2])


@given(seed=st.integers(0, 10 ** 6), variant=variants, beta=st.sampled_from([0.1, 0.5, 2.0]))
def test_dpo_loss_value_is_trls_formula(seed, variant, beta):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = rng.standard_normal((4, 5)) * 3
    h = (pc - rc) - (pr - rr)
    np.testing.assert_allclose(float(dpo_loss(pc, pr, rc, rr, beta, *variant).data), direct_loss(h, beta, *variant),
                               rtol=1e-12, atol=1e-12)


def sequence_logps_by_hand(model, batch):
    """sum over reply positions of log softmax(logits)[next token], straight from the logits in NumPy."""
    logits = model(batch["ids"], key_padding_mask=batch["mask"]).data.astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    t = batch["targets"]
    picked = np.take_along_axis(logp, np.maximum(t, 0)[..., None], -1)[..., 0]
    return np.where(t >= 0, picked, 0).sum(1)


@pytest.fixture
def run_files(tmp_path):
    tok = tasks.task_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, **{**tasks.MODEL, "n_embd": 16, "d_ff": 32})
    save_checkpoint(tmp_path / "base", DecoderLM(config, rng=np.random.default_rng(0)), tok, state={"step": 0})
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tasks.preference_records(40, 0)))
    return tmp_path


def trainer(d, method="lora", **overrides):
    config = PreferenceConfig(objective="dpo", method=method, lora_r=2, target_modules="all-linear", lr=1e-2,
                              batch_size=4, max_iters=3, eval_interval=3, **overrides)
    return DPOTrainer(str(d / "base"), str(d / "prefs.jsonl"), str(d / "out"), config, progress=False)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0)])
def test_the_loss_of_a_tiny_model_equals_the_direct_computation(run_files, method, loss_type, eps):
    run = trainer(run_files, method, beta=0.5, loss_type=loss_type, label_smoothing=eps)
    run.run()                                                  # the policy moved away from the reference
    batch = pair_batch(run.train_examples[:4])
    base = load_pretrained(str(run_files / "base"))[0]
    policy, reference = sequence_logps_by_hand(run.model, batch), sequence_logps_by_hand(base, batch)
    np.testing.assert_allclose(run.reference_logprobs(batch), reference, rtol=1e-5, atol=1e-5)
    h = (policy[:4] - reference[:4]) - (policy[4:] - reference[4:])
    assert np.abs(h).max() > 1e-3
    loss, figures = run.objective(batch)
    np.testing.assert_allclose(float(loss.data), direct_loss(h, 0.5, loss_type, eps), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(figures["rewards/margins"], np.mean(0.5 * h), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(figures["logps/chosen"], np.mean(policy[:4]), rtol=1e-5)


def test_the_reference_has_no_tape_and_with_lora_only_the_adapters_get_gradient(run_files):
    run = trainer(run_files)
    batch = pair_batch(run.train_examples[:4])
    ref = run.reference_logprobs(batch)
    assert isinstance(ref, np.ndarray)
    loss, _ = run.objective(batch)
    loss.backward()
    graded = {n for n, p in run.model.named_parameters() if p.grad is not None}
    assert graded and all(".lora_" in n for n in graded)
    assert all(not p.requires_grad for n, p in run.model.named_parameters() if ".lora_" not in n)


def test_adapters_disabled_runs_the_base_and_restores_the_adapters():
    tok = tasks.task_tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, **tasks.MODEL)
    base = DecoderLM(config, rng=np.random.default_rng(0))
    ids = np.array([tok.encode("abc=cba\n")])
    plain = base(ids).data
    apply_lora(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False),
               rng=np.random.default_rng(1))
    adapted = base(ids).data
    assert np.abs(adapted - plain).max() > 1e-3
    with adapters_disabled(base):
        np.testing.assert_array_equal(base(ids).data, plain)
    np.testing.assert_array_equal(base(ids).data, adapted)
    with pytest.raises(RuntimeError):
        with adapters_disabled(base):
            raise RuntimeError("inside")
    np.testing.assert_array_equal(base(ids).data, adapted)       # restored after an error too
    merge_lora(base)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with adapters_disabled(base):
            pass


def dpo_args(d, *extra):
    return ["finetune", "--method", "dpo", "--model", str(d / "base"), "--data", str(d / "prefs.jsonl"), "--out",
            str(d / "dpo"), "--max-iters", "4", "--eval-interval", "2", "--batch-size", "4", "--lr", "0.01",
            "--eval-fraction", "0.25", "--no-progress", *extra]


@pytest.mark.parametrize("extra", [[], ["--full", "--loss", "hinge", "--beta", "0.5"], ["--label-smoothing", "0.1"]])
def test_a_dpo_run_logs_trls_names_and_loads_in_generate(run_files, capsys, extra):
    assert main(dpo_args(run_files, *extra)) == 0
    with open(run_files / "dpo" / "train_log.jsonl") as f:
        log = [json.loads(line) for line in f]
    steps, evals = [r for r in log if not r.get("eval")], [r for r in log if r.get("eval")]
    assert len(steps) == 4 and len(evals) == 2
    assert all(set(TRL_NAMES) <= set(r) for r in steps)
    assert all({"val", *(f"eval_{n}" for n in TRL_NAMES)} <= set(r) for r in evals)
    capsys.readouterr()
    assert main(["generate", "--model", str(run_files / "dpo"), "--prompt", "abc=", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--label-smoothing", "0.5"], "argument --label-smoothing: must be a finite number in [0, 0.5)"),
    (["--loss", "ipo", "--label-smoothing", "0.1"], "--label-smoothing goes with --loss sigmoid"),
    (["--beta", "0"], "argument --beta: must be a finite number > 0"),
    (["--loss", "kto"], "argument --loss: invalid choice"),
])
def test_bad_dpo_flags_are_one_line_and_nothing_is_written(run_files, capsys, extra, message):
    assert main(dpo_args(run_files, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(run_files / "dpo")


@pytest.mark.parametrize("layout", ["llama", "gpt2"])
def test_generation_of_a_lora_policy_sees_its_adapters(layout):
    """DecoderLM.infer (generate's path) equals forward on a LoRA model, on every targeted projection."""
    from minillm.generate import generate
    tok = tasks.task_tokenizer()
    gpt2 = dict(norm="layernorm", activation="gelu", positions="learned", bias=True)
    config = ModelConfig(vocab_size=tok.vocab_size, **{**tasks.MODEL, **(gpt2 if layout == "gpt2" else {})})
    model = DecoderLM(config, rng=np.random.default_rng(0))
    apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False),
               rng=np.random.default_rng(1))
    ids = np.array([tok.encode("abc=cba"), tok.encode("fed=def")])
    np.testing.assert_allclose(model.infer(ids), model.eval()(ids).data, rtol=1e-4, atol=1e-5)
    prompt = tok.encode("abc=")
    cached = generate(model, [prompt], 4, temperature=0.0)
    merged = generate(merge_lora(model), [prompt], 4, temperature=0.0)
    assert cached == merged


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_resumed_dpo_run_is_bit_exact(run_files, method):
    config = PreferenceConfig(objective="dpo", method=method, lora_r=2, target_modules="all-linear", lr=1e-2,
                              batch_size=4, max_iters=6, eval_interval=3, lora_dropout=0.1 if method == "lora" else 0.0)
    paths = str(run_files / "base"), str(run_files / "prefs.jsonl")
    DPOTrainer(*paths, str(run_files / "a"), config, progress=False).run()
    interrupted = DPOTrainer(*paths, str(run_files / "b"), config, progress=False)
    step = interrupted.train_step

    def killed_after_the_checkpoint_of_step_3():
        if interrupted.step == 4:
            raise KeyboardInterrupt
        return step()
    interrupted.train_step = killed_after_the_checkpoint_of_step_3
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed = DPOTrainer(*paths, str(run_files / "b"), config, resume=True, progress=False)
    assert resumed.step == 3
    resumed.run()
    a, b = (load_pretrained(str(run_files / d))[0].state_dict() for d in "ab")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    logs = [[json.loads(x) for x in (run_files / d / "train_log.jsonl").read_text().splitlines()] for d in "ab"]
    strip = lambda log: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in log]
    assert strip(logs[0]) == strip(logs[1])
