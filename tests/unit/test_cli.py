"""The CLI dispatcher: every command is registered; overrides may follow options."""

import pytest

from hpc_modatts.cli import build_parser, main


def test_all_commands_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for cmd in (
        "phantom",
        "convert",
        "verify",
        "split",
        "train",
        "synthesize",
        "predict",
        "evaluate",
        "pipeline",
        "status",
        "sweep",
        "report",
        "advise",
        "demo",
    ):
        assert cmd in sub.choices, cmd


def test_overrides_after_options_reach_the_command(monkeypatch):
    seen = {}

    def fake(args):  # records what the wrapper would pass to the API function
        seen["overrides"] = args.overrides
        seen["executor"] = args.executor
        return 0

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["pipeline"].set_defaults(func=fake)
    monkeypatch.setattr("hpc_modatts.cli.build_parser", lambda: parser)
    assert main(["pipeline", "demo_cpu", "train.max_steps=2", "--executor", "debug", "pipeline.folds=2"]) == 0
    assert seen == {"overrides": ["train.max_steps=2", "pipeline.folds=2"], "executor": "debug"}


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", "x.zarr", "--bogus"])
    assert e.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_config_error_is_one_line_exit_2(capsys, tmp_path):
    rc = main(["train", "segment", "demo_cpu", "train.epoks=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.epoks" in err[0]


def test_deepspeed_launcher_local_rank_anywhere(monkeypatch):
    """`deepspeed` appends --local_rank=N after the subcommand's own arguments."""
    seen = {}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["pipeline"].set_defaults(func=lambda args: seen.update(o=args.overrides) or 0)
    monkeypatch.setattr("hpc_modatts.cli.build_parser", lambda: parser)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert main(["pipeline", "demo_cpu", "train.max_steps=2", "--local_rank=1"]) == 0
    assert seen["o"] == ["train.max_steps=2"]
    import os

    assert os.environ.pop("LOCAL_RANK") == "1"
    assert main(["pipeline", "demo_cpu", "--local-rank", "0"]) == 0
    assert os.environ.pop("LOCAL_RANK") == "0"
