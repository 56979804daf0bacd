"""The reward model: the Bradley-Terry node's gradient and value, the reward read at the last real token,
the head trained (and with LoRA nothing of the base but the adapters), save/load giving the same scores."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.alignment import tasks
from minillm.alignment.preference_data import encode_pair, pair_batch
from minillm.alignment.reward_model import (RewardModel, bradley_terry_loss, load_reward_model, pair_rewards,
                                            reward_accuracy, save_reward_model)
from minillm.checkpoint import save_checkpoint
from minillm.io.errors import FormatError
from minillm.lora import LoraConfig, apply_lora
from minillm.models import DecoderLM, ModelConfig
from minillm.optim import AdamW, param_groups
from minillm.testing import gradcheck, gradcheck_module
from minillm.testing.strategies import arrays_f64


def tiny_base(tok, seed=0, dtype=np.float32, **overrides):
    config = ModelConfig(vocab_size=tok.vocab_size, **{**tasks.MODEL, "n_embd": 16, "d_ff": 32, **overrides})
    return DecoderLM(config, rng=np.random.default_rng(seed), dtype=dtype)


def task_batch(tok, n=6, seed=0):
    return pair_batch([encode_pair(r, tok, "x") for r in tasks.preference_records(n, seed)])


@given(B=st.integers(1, 8), seed=st.integers(0, 10 ** 6), per_pair=st.booleans())
def test_bradley_terry_gradient(B, seed, per_pair):
    rng = np.random.default_rng(seed)
    margin = rng.uniform(0, 2, B) if per_pair else float(rng.uniform(0, 2))
    gradcheck(lambda c, r: bradley_terry_loss(c, r, margin), [rng.standard_normal(B) * 3, rng.standard_normal(B) * 3])


@given(r=arrays_f64((2, 5), low=-30, high=30), margin=st.floats(0, 3))
def test_bradley_terry_value_is_minus_log_sigmoid_of_the_difference(r, margin):
    direct = np.mean(np.log1p(np.exp(-(r[0] - r[1] - margin))))
    np.testing.assert_allclose(float(bradley_terry_loss(r[0], r[1], margin).data), direct, rtol=1e-12)


def test_the_reward_is_read_at_the_last_real_token():
    tok = tasks.task_tokenizer()
    rm = RewardModel(tiny_base(tok))
    batch = task_batch(tok)
    r = rm.score(batch["ids"], batch["mask"])
    alone = [rm.score(row[m][None], m[m][None])[0] for row, m in zip(batch["ids"], batch["mask"])]
    np.testing.assert_allclose(r, alone, rtol=1e-5, atol=1e-6)          # padding changes nothing
    ids = batch["ids"].copy()
    ids[~batch["mask"]] = 3                                            # other pad tokens: the same rewards
    np.testing.assert_allclose(rm.score(ids, batch["mask"]), r, rtol=1e-5, atol=1e-6)
    last = batch["mask"].sum(1) - 1
    ids[np.arange(len(ids)), last] = (ids[np.arange(len(ids)), last] + 1) % tok.vocab_size
    assert np.all(rm.score(ids, batch["mask"]) != r)                   # the last real token is read


def test_reward_model_gradient():
    tok = tasks.task_tokenizer()
    rm = RewardModel(tiny_base(tok, n_layer=1, n_embd=8, d_ff=8, dtype=np.float64))
    batch = task_batch(tok, n=2)
    gradcheck_module(rm, [], forward=lambda m: bradley_terry_loss(*pair_rewards(m, batch), 0.5))


@pytest.mark.parametrize("lora", [False, True])
def test_the_head_is_trained_and_with_lora_only_the_adapters_of_the_base(lora):
    tok = tasks.task_tokenizer()
    base = tiny_base(tok)
    if lora:
        apply_lora(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"), rng=np.random.default_rng(0))
    rm = RewardModel(base)
    bradley_terry_loss(*pair_rewards(rm, task_batch(tok))).backward()
    with_grad = {n for n, p in rm.named_parameters() if p.grad is not None and np.abs(p.grad).sum() > 0}
    assert {"reward_head.weight", "reward_head.bias"} <= with_grad
    base_weights = {n for n, _ in rm.named_parameters() if n.startswith("base.") and ".lora_" not in n}
    if lora:
        assert with_grad - {"reward_head.weight", "reward_head.bias"} == {n for n, _ in rm.named_parameters()
                                                                          if ".lora_B" in n}  # B = 0: A's gradient is 0
        assert not any(p.requires_grad for n, p in rm.named_parameters() if n in base_weights)
    else:
        assert "base.blocks.0.attn.wq.weight" in with_grad


def test_training_separates_chosen_from_rejected():
    tok = tasks.task_tokenizer()
    rm = RewardModel(tiny_base(tok))
    batch = task_batch(tok, n=8)
    optimizer = AdamW(param_groups(rm, 0.0), 3e-3)
    losses = []
    for _ in range(60):
        loss = bradley_terry_loss(*pair_rewards(rm, batch))
        losses.append(float(loss.data))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0]
    assert reward_accuracy(*pair_rewards(rm, batch)) == 1.0


@pytest.mark.parametrize("lora", [False, True])
def test_a_saved_reward_model_loads_with_the_same_scores(tmp_path, lora):
    tok = tasks.task_tokenizer()
    base = tiny_base(tok)
    if lora:
        apply_lora(base, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", init_lora_weights=False),
                   rng=np.random.default_rng(1))                       # B != 0: the adapters change the scores
    rm = RewardModel(base, rng=np.random.default_rng(2))
    batch = task_batch(tok)
    save_reward_model(rm, tok, tmp_path / "rm")
    loaded, loaded_tok = load_reward_model(tmp_path / "rm")
    assert loaded_tok.chars == tok.chars and getattr(loaded.base, "lora_config", None) is None
    np.testing.assert_allclose(loaded.score(batch["ids"], batch["mask"]), rm.score(batch["ids"], batch["mask"]),
                               rtol=1e-5, atol=1e-5)
    assert rm.base.lora_config is not None if lora else True            # the trained model is left as it was


def test_a_plain_checkpoint_is_not_a_reward_model(tmp_path):
    tok = tasks.task_tokenizer()
    save_checkpoint(tmp_path / "lm", tiny_base(tok), tok, state={"step": 0})
    with pytest.raises(FormatError, match="not a reward model"):
        load_reward_model(tmp_path / "lm")
    with pytest.raises(FormatError, match="holds no reward model"):
        load_reward_model(tmp_path / "nothing")
