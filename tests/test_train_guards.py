"""A training run never writes a broken model over a good checkpoint: a NaN gradient with a finite
loss is not applied, a step that evaluates and saves checks the losses and the weights first, and
a finite blow-up of the loss stops the run with a message, the last checkpoint left as it was."""
import math

import numpy as np
import pytest

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.models import ModelConfig
from minillm.train import TrainConfig, Trainer, TrainingDiverged

from checkpoint_helpers import read

TEXT = "to be or not to be, that is the question. whether tis nobler in the mind to suffer " * 40
MODEL = dict(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def trainer(out, data, **train):
    config = dict(batch_size=2, max_iters=6, lr=3e-3, warmup_iters=1, lr_decay_iters=6, eval_interval=2,
                  eval_iters=1, sample_tokens=0) | train
    return Trainer(ModelConfig(**MODEL), TrainConfig(**config), str(out), data, progress=False, log=lambda msg: None)


def snapshot(out):
    return ckpt.read_checkpoint_meta(str(out))["directory"], read(out, "model.safetensors")


def test_a_nan_gradient_with_a_finite_loss_is_not_applied(tmp_path, data):
    t = trainer(tmp_path / "run", data)
    reduce = t.dp.reduce_gradients

    def reduce_then_poison(max_norm):              # as if backward had produced a NaN in one gradient
        norm = reduce(max_norm)
        if t.step == 3:
            t.model.wte.weight.grad[0, 0] = np.nan
            return math.nan
        return norm
    t.dp.reduce_gradients = reduce_then_poison
    with pytest.raises(TrainingDiverged, match=r"the gradient norm became nan at step 3 \(the loss was \d\.\d+\); "
                                               r"stopped before applying it"):
        t.run()
    assert all(np.isfinite(p.data).all() for p in t.model.parameters())
    assert ckpt.read_checkpoint_meta(str(tmp_path / "run"))["state"]["step"] == 2


def test_a_step_that_saves_checks_the_losses_and_the_weights_first(tmp_path, data):
    out = tmp_path / "run"
    t = trainer(out, data)
    step = t.train_step

    def step_then_break():                         # the weights go bad after step 3; step 4 evaluates and saves
        result = step()
        if t.step == 4:
            t.model.wte.weight.data[:] = np.nan
        return result
    t.train_step = step_then_break
    with pytest.raises(TrainingDiverged, match="the train loss is nan at step 4.*left as it was"):
        t.run()
    assert ckpt.read_checkpoint_meta(str(out))["state"]["step"] == 2

    out = tmp_path / "no-eval"                     # without evaluations: the weights themselves are checked
    t = trainer(out, data, eval_iters=0, max_iters=2)
    t.run()
    before = snapshot(out)
    t = trainer(out, data, eval_iters=0, max_iters=4)
    t.model.wte.weight.data[3, 3] = np.inf
    with pytest.raises(TrainingDiverged, match="the weights hold NaN or infinite values at step 0"):
        t.save()
    assert snapshot(out) == before


def test_a_finite_blow_up_stops_the_run_and_keeps_the_checkpoint(tmp_path, data, capsys):
    out = tmp_path / "run"
    t = trainer(out, data, lr=30.0, max_iters=40, lr_decay_iters=40, eval_interval=40)
    with pytest.raises(TrainingDiverged, match=r"the loss blew up to [\d.e+]+ at step \d+, above max_loss 8\.378"):
        t.run()
    assert ckpt.read_checkpoint_meta(str(out))["state"]["step"] == 0
    assert t.loss_limit == pytest.approx(2 * math.log(40) + 1)
    code = main(["train", "--out", str(out), "--resume", "--data", data, "--no-progress"])
    assert code == 1 and capsys.readouterr().err.count("minillm: error: the loss blew up to") == 1
    assert ckpt.read_checkpoint_meta(str(out))["state"]["step"] == 0
    raised = trainer(tmp_path / "loose", data, lr=30.0, max_iters=3, lr_decay_iters=3, max_loss=1e9)
    assert raised.run()["step"] == 3                 # max_loss moves the limit
