import json

from minillm.cli import main


def test_demo_runs_every_flavour_and_its_gradients_check(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok (") == 4
    assert "all gradients match finite differences" in out


def test_info_prints_the_build_as_json(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"openmp", "simd", "threads", "backend"} <= set(info)


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
