"""The command line and the file loaders against a few hundred generated bad inputs (bad flags,
damaged config files, checkpoints and tokenizers; minillm/testing/fuzz.py): no traceback, no
internal error, no exit code but 0, 2 (bad input) or 1 (a diverged run, with its message), one
error line, no hang and, in the cases also run in a subprocess, no crash.
benchmarks/fuzz_cli.py runs the same generator longer."""
import pytest

from minillm.testing import fuzz

CASES, SEED = 200, 0


@pytest.mark.skipif(not hasattr(fuzz.signal, "SIGALRM"), reason="the deadline needs SIGALRM")
def test_generated_bad_input_gets_an_answer_never_a_traceback_hang_or_crash(tmp_path):
    outcomes, seconds = fuzz.fuzz(CASES, SEED, str(tmp_path), subprocesses=1, deadline=30)
    print(fuzz.report(outcomes, seconds))
    kinds = {o.kind for o in outcomes}
    assert {"flag", "config", "checkpoint", "tokenizer"} <= kinds and any("subprocess" in k for k in kinds)
    assert sum(o.verdict == "refused" for o in outcomes) > CASES / 2       # the cases are mostly bad input
    failures = [o for o in outcomes if o.verdict not in fuzz.PASSING]
    assert not failures, fuzz.report(failures)


def test_the_judge_calls_out_each_failure():
    assert fuzz.judge(0, "") == "ok"
    assert fuzz.judge(2, "minillm: error: no\n") == "refused"
    assert fuzz.judge(1, "minillm: error: the loss became nan at step 3; stopped\n") == "diverged"
    assert fuzz.judge(2, "Traceback (most recent call last):\n  ...\nValueError: x\n") == "traceback"
    assert fuzz.judge(1, "minillm: internal error: TypeError: x\n") == "internal error"
    assert fuzz.judge(2, "minillm: error: a\nminillm: error: b\n") == "several error lines"
    assert fuzz.judge(1, "minillm: error: no\n") == "bad exit"
    assert fuzz.judge(-11, "") == "crash"
