"""Data-parallel fine-tuning without MPI: two ranks' shards of a global batch, each back-propagated
with its share of the batch's trained tokens, add up to the single-process loss and gradient. The
2-rank runs under mpiexec are in test_finetune_mpi.py."""
import json

import numpy as np
import pytest

from minillm import distributed
from minillm.checkpoint import save_checkpoint
from minillm.finetune import FinetuneConfig, Finetuner
from minillm.models import DecoderLM, ModelConfig
from minillm.tokenizers import CharTokenizer

CHARS = "".join(sorted("abcdefghij="))
MODEL = dict(block_size=32, n_layer=2, n_head=2, n_embd=32, d_ff=64, norm="rmsnorm", activation="swiglu",
             positions="rope", bias=False)


class RankOf2(distributed.LocalCommunicator):
    """Rank `rank` of 2 with nobody on the other end: each all-reduce records what this rank puts
    in (its share of the sum) and leaves it as it is."""

    size = 2

    def __init__(self, rank):
        self.rank, self.sent = rank, []

    def allreduce(self, buf):
        self.sent.append(buf.copy())


def varied_records(n, seed):
    """Copy tasks of 1 to 9 letters: the examples' trained-token counts differ widely."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghij"), int(rng.integers(1, 10)))) for _ in range(n)]
    return [{"prompt": w + "=", "completion": w} for w in words]


@pytest.fixture
def run_files(tmp_path):
    tok = CharTokenizer(CHARS)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, **MODEL), rng=np.random.default_rng(0))
    save_checkpoint(tmp_path / "base", model, tok, state={"step": 0})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in varied_records(30, 0)))
    return str(tmp_path / "base"), str(data), str(tmp_path / "out")


def rank_shares(run_files, config):
    """Per rank of 2: (its share of the step's loss, its share of the gradient {name: array}) as
    train_step hands them to the all-reduce (one sum of the whole gradient: no overlap)."""
    shares = []
    for rank in (0, 1):
        run = Finetuner(*run_files, FinetuneConfig(**config), progress=False, comm=RankOf2(rank),
                        parallel=distributed.ParallelConfig(overlap=False))
        run.train_step()
        flat, _, totals = run.comm.sent                # the gradient, who had one, (loss, accuracy, tokens, seen)
        layout = run.dp.sync.layout
        shares.append((totals[0], {name: layout.view(flat, i) for i, name in enumerate(layout.names)}))
    return shares


@pytest.mark.parametrize("pack", [False, True])
def test_the_ranks_shares_of_loss_and_gradient_add_up_to_the_global_batch(run_files, pack):
    """Shards of uneven trained-token counts, each weighted by its share of the global batch's
    trained tokens: the sums are the single-process mean loss and gradient (to float32 rounding)."""
    config = dict(method="lora", lora_r=2, target_modules="all-linear", batch_size=3 if pack else 5, pack=pack)
    one = Finetuner(*run_files, FinetuneConfig(**config), progress=False)
    batch = one.next_batch()
    loss, _, _ = one.loss(batch)
    loss.backward()
    grads = {name: p.grad for name, p in one.optimizer.named_parameters()}
    shares = rank_shares(run_files, config)
    np.testing.assert_allclose(shares[0][0] + shares[1][0], float(loss.data), rtol=1e-6)
    for name, grad in grads.items():
        np.testing.assert_allclose(shares[0][1][name] + shares[1][1][name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
    # the shards are uneven: the mean of the two ranks' mean losses would be another number
    ranks = [Finetuner(*run_files, FinetuneConfig(**config), progress=False, comm=RankOf2(r)) for r in (0, 1)]
    means = [float(run.loss(run.next_batch())[0].data) for run in ranks]
    assert abs(np.mean(means) - float(loss.data)) > 1e-3


def test_a_batch_smaller_than_the_ranks_is_a_clear_error(run_files):
    with pytest.raises(ValueError, match="a batch of 1 examples cannot be shared by 2 ranks; raise --batch-size"):
        Finetuner(*run_files, FinetuneConfig(batch_size=1), progress=False, comm=RankOf2(0))
