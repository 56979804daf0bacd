"""minillm.distributed without MPI: the batch shards, the backward hook, the flat buckets and the
sharded optimizer on one rank, the watchdog. The 2-rank runs are in test_distributed_mpi.py."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minillm import distributed
from minillm.distributed.buckets import FlatLayout, GradientSync
from minillm.distributed.faults import parse_fault
from minillm.distributed.watchdog import Watchdog
from minillm.models import DecoderLM, ModelConfig
from minillm.optim import AdamW
from minillm.autograd import Tensor, grad_ready_hook
from minillm.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 8
MODEL = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("batch_size,grad_accum,size", [(12, 1, 2), (5, 3, 2), (4, 2, 3), (1, 7, 4), (3, 1, 3)])
def test_the_ranks_shards_cover_the_global_batch_once_in_order(batch_size, grad_accum, size):
    rows, weights = [], 0.0
    for rank in range(size):
        plan = distributed.micro_batch_rows(batch_size, grad_accum, rank, size)
        assert len(plan) == grad_accum and sum(final for _, _, final in plan) == 1
        for m, (piece, weight, _) in enumerate(plan):
            got = list(range(m * batch_size, (m + 1) * batch_size))[piece]
            assert weight == len(got) / (batch_size * grad_accum)
            rows += got
            weights += weight
    assert rows == list(range(batch_size * grad_accum))       # rank by rank: contiguous and in order
    assert weights == pytest.approx(1.0)


def test_one_rank_weights_are_exactly_one_over_grad_accum():
    for grad_accum in (1, 3, 7):
        plan = distributed.micro_batch_rows(12, grad_accum, 0, 1)
        assert [(p, w) for p, w, _ in plan] == [(slice(0, 12), 1.0 / grad_accum)] * grad_accum
        assert plan[-1][2]


def test_a_global_batch_smaller_than_the_ranks_is_an_error():
    with pytest.raises(ValueError, match="global batch of 3 rows .* cannot be shared by 4 ranks"):
        distributed.micro_batch_rows(3, 1, 0, 4)


def test_grad_ready_hook_fires_once_per_leaf_with_its_final_gradient():
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    seen = []
    with grad_ready_hook(lambda t: seen.append((id(t), t.grad.copy()))):
        y = (a @ b) * a.sum() + (a @ b).exp()          # a is used three times, b twice
        y.sum().backward()
    assert sorted(i for i, _ in seen) == sorted([id(a), id(b)])
    for i, grad in seen:
        np.testing.assert_array_equal(grad, (a if i == id(a) else b).grad)
    (a * 2).sum().backward()                           # outside the block: no calls
    assert len(seen) == 2


def tiny_model():
    return DecoderLM(ModelConfig(**MODEL), rng=np.random.default_rng(0))


def test_flat_layout_buckets_and_shards_partition_the_parameters():
    model = tiny_model()
    named = list(model.named_parameters())[::-1]
    layout = FlatLayout(named, bucket_bytes=4096)
    assert layout.total == model.num_parameters() and len(layout.buckets) > 2
    assert [m for _, _, members in layout.buckets for m in members] == list(range(len(named)))
    assert all(stop - start <= 1024 or len(members) == 1 for start, stop, members in layout.buckets)
    for size in (1, 2, 3):
        counts = layout.shard_counts(size)
        assert sum(counts) == layout.total and max(counts) - min(counts) <= 1
        for rank in range(size):
            start, stop = layout.shard(rank, size)
            assert stop - start == counts[rank]
            assert sum(hi - lo for _, lo, hi in layout.segments(start, stop)) == stop - start


class RecordingComm(distributed.LocalCommunicator):
    """One rank that notes when each bucket's sum starts (how many leaves were ready by then)."""

    def __init__(self):
        self.launched, self.ready = [], 0

    def iallreduce(self, buf):
        self.launched.append(self.ready)
        return super().iallreduce(buf)


def backward_once(model, seed=0):
    ids = np.random.default_rng(seed).integers(0, MODEL["vocab_size"], (2, MODEL["block_size"]))
    _, loss = model(ids, np.roll(ids, -1, axis=1))
    return loss


@pytest.mark.parametrize("overlap", [True, False])
def test_gradient_sync_starts_buckets_during_backward_and_keeps_the_gradients(overlap):
    model = tiny_model()
    backward_once(model).backward()
    expected = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    comm = RecordingComm()
    sync = GradientSync(FlatLayout(list(model.named_parameters())[::-1], 4096), comm, overlap=overlap)
    loss = backward_once(model)
    with grad_ready_hook(lambda t: setattr(comm, "ready", comm.ready + 1)), sync.backward(final=True):
        loss.backward()
    n_params = len(expected)
    if overlap:   # every bucket started inside backward, the first long before the last leaf
        assert len(comm.launched) == len(sync.layout.buckets) and comm.launched[0] < n_params // 2
    else:
        assert comm.launched == []
    sync.finish()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, expected[name])
        assert np.shares_memory(p.grad, sync.flat)


def make_trainer(out, data_file, parallel=None, model=None, **train):
    config = dict(batch_size=4, grad_accum=2, max_iters=6, lr=3e-3, warmup_iters=2, eval_interval=3, eval_iters=2,
                  sample_tokens=0) | train
    return Trainer(ModelConfig(**MODEL | {"dropout": 0.1} | (model or {})), TrainConfig(**config), str(out), data_file,
                   progress=False, log=lambda msg: None, parallel=parallel)


# 4 tokens a step for 16 experts, top-1: most experts get no gradient, and so no optimizer state
MOE = dict(block_size=4, n_experts=16, top_k=1, capacity_factor=None)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("model,batch", [({}, {}), (MOE, {"batch_size": 1, "grad_accum": 1})], ids=["dense", "moe"])
def test_zero_on_one_rank_is_adamw_bit_for_bit(tmp_path, data_file, model, batch):
    plain = make_trainer(tmp_path / "plain", data_file, model=model, grad_clip=0.0, **batch)
    zero = make_trainer(tmp_path / "zero", data_file, distributed.ParallelConfig(zero=True), model=model,
                        grad_clip=0.0, **batch)
    assert type(zero.optimizer).__name__ == "ZeroAdamW"
    assert zero.run()["step_losses"] == plain.run()["step_losses"]
    for (name, p), (_, q) in zip(plain.model.named_parameters(), zero.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    full = plain.optimizer.state_dict()
    gathered = zero.optimizer.state_dict()
    assert gathered["step"] == full["step"] and sorted(gathered["state"]) == sorted(full["state"])
    moments = [key for key in full["state"] if key.endswith(".m")]
    assert (len(moments) < len(plain.model.parameters())) == bool(model)   # MoE: unused experts
    for key, value in full["state"].items():
        np.testing.assert_array_equal(gathered["state"][key], value, err_msg=key)


def test_zero_clips_by_the_global_norm(tmp_path, data_file):
    plain = make_trainer(tmp_path / "plain", data_file, grad_clip=0.05).run()["step_losses"]
    zero = make_trainer(tmp_path / "zero", data_file, distributed.ParallelConfig(zero=True), grad_clip=0.05)
    np.testing.assert_allclose(zero.run()["step_losses"], plain, rtol=1e-6)   # the norm is summed in float64


def test_a_zero_checkpoint_resumes_in_plain_adamw_and_back(tmp_path, data_file):
    straight = make_trainer(tmp_path / "a", data_file, grad_clip=0.0).run()["step_losses"]
    make_trainer(tmp_path / "b", data_file, distributed.ParallelConfig(zero=True), grad_clip=0.0, max_iters=3).run()
    resumed = Trainer(ModelConfig(**MODEL), TrainConfig(max_iters=6), str(tmp_path / "b"), data_file, resume=True,
                      progress=False, log=lambda msg: None)
    assert resumed.run()["step_losses"] == straight[3:]


def test_fault_specs_are_checked():
    assert parse_fault("exit:1:6") == ("exit", 1, 6)
    for bad in ("exit:1", "crash:1:2", "hang:one:2"):
        with pytest.raises(ValueError, match="MINILLM_FAULT must be"):
            parse_fault(bad)


def test_watchdog_fires_only_after_the_deadline():
    fired = []
    done = threading.Event()
    dog = Watchdog(0.3, lambda what, waited: (fired.append((what, waited)), done.set()))
    with dog.guard("allreduce"):
        time.sleep(0.05)
    time.sleep(0.2)
    assert fired == []
    with dog.guard("allreduce"):
        assert done.wait(3)
    assert fired[0][0] == "allreduce" and fired[0][1] > 0.3


def test_without_a_launcher_training_never_imports_mpi4py(tmp_path, data_file):
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_SIZE_VARIABLES}
    code = ("import sys; from minillm.cli import main; "
            f"rc = main(['train', '--data', {data_file!r}, '--out', {str(tmp_path / 'run')!r}, '--max-iters', '1', "
            "'--batch-size', '2', '--eval-iters', '1', '--no-progress', '--sample-tokens', '0']); "
            "print(rc, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env | {"PYTHONPATH": ROOT},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr


class SplitBrainComm(distributed.LocalCommunicator):
    """Two 'ranks' whose weights hash differently."""

    size = 2

    def allgather_object(self, obj):
        return [obj, obj ^ 1]


def test_ranks_whose_weights_differ_are_stopped_at_the_checkpoint():
    model = tiny_model()
    dp = distributed.DataParallel(model, AdamW(model), SplitBrainComm())
    with pytest.raises(RuntimeError, match="the ranks' weights differ after step 5 .* must stay bit-identical"):
        dp.optimizer_to_save(5)
    assert distributed.DataParallel(model, AdamW(model), distributed.LocalCommunicator()).optimizer_to_save(5)


class RankOneComm(distributed.LocalCommunicator):
    """Rank 1 of 2, whose broadcasts deliver `root` (rank 0's flat buffer)."""

    rank, size = 1, 2

    def __init__(self, root):
        self.root = root

    def bcast(self, buf):
        buf[...] = self.root


def test_every_rank_starts_from_rank_0s_weights():
    root_model, model = tiny_model(), DecoderLM(ModelConfig(**MODEL), rng=np.random.default_rng(1))
    root = np.concatenate([p.data.ravel() for _, p in list(root_model.named_parameters())[::-1]])
    distributed.DataParallel(model, AdamW(model), RankOneComm(root)).take_root_weights()
    for (name, p), (_, q) in zip(root_model.named_parameters(), model.named_parameters()):
        np.testing.assert_array_equal(q.data, p.data, err_msg=name)
