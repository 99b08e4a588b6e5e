"""The command line as a leaf: help and defaults, list options, --device, typed errors ->
exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from builder.cli import COMMANDS, main, make_parser
from synthesis.runtime.errors import FluoroBenchError, InputError, JobFailed, RefusedError


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_help_and_shows_its_default(command: str):
    sub = _subparsers(make_parser(command))[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help text"
    text = sub.format_help()
    for action in sub._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default}" in " ".join(text.split()), (
                f"{command} {action.option_strings[0]}: default {action.default!r} not shown"
            )


def test_nothing_in_the_library_imports_the_command_line():
    """Also at run time (lint-imports checks the import graph): a fresh interpreter that
    imports the library and runs a build's option check loads no ``builder.cli`` module."""
    import subprocess

    code = (
        "import sys, builder.assembly, builder.evaluation, builder.package.publish, "
        "builder.package.verify, fluorobench_c, builder.experiments.synthesizer; "
        "from pathlib import Path; "
        "builder.assembly.BuildOptions(out=Path('x'), configs=['mito']).validate(); "
        "print(sorted(m for m in sys.modules if m.startswith('builder.cli')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config", "mito", "nucleus"], ["mito", "nucleus"]),
        (["--config", "mito,nucleus"], ["mito", "nucleus"]),
        (["--config", "er,mito", "nucleus"], ["er", "mito", "nucleus"]),
        (["--splits", "snr,sib_3"], None),
    ],
)
def test_list_options_take_spaces_and_commas(argv: list[str], expected: list[str] | None):
    args = make_parser("build").parse_args(["build", "out", *argv])
    if expected is not None:
        assert args.config == expected
    else:
        assert args.splits == ["snr", "sib_3"] and args.config == ["er", "mito", "nucleus"]


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_accepted(device: str):
    args = make_parser("evaluate").parse_args(
        ["evaluate", "--data", "d", "--config", "mito", "--out", "o", "--device", device]
    )
    assert args.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps", "cuda:0,1"])
def test_bad_device_names_exit_2(device: str, tmp_path: Path, capsys):
    assert main(["build", str(tmp_path / "o"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "expected cpu, cuda or cuda:N" in err
    assert not (tmp_path / "o").exists()


def test_cuda_without_cuda_is_a_clear_exit_2(tmp_path: Path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["build", str(tmp_path / "o"), "--device", "cuda:0", "--test", "1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "error, code", [(InputError("x"), 2), (RefusedError("x"), 2), (JobFailed("x"), 1)]
)
def test_typed_errors_map_to_exit_codes(error: FluoroBenchError, code: int, monkeypatch, capsys):
    import builder.cli.verify as verify_cli

    def boom(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(verify_cli, "run", boom)
    assert main(["verify", "somewhere"]) == code
    assert capsys.readouterr().err.strip() == "fluorobench-c: error: x"


def test_input_errors_are_value_errors():
    """Callers that caught ValueError before the typed errors keep working."""
    assert issubclass(InputError, ValueError)
    from builder.evaluation.model_loading import ModelSpecError
    from builder.package.manifest import BuildError
    from builder.package.publish import PublishError, PublishRefused
    from synthesis.groundtruth.sources import SourceError

    assert issubclass(SourceError, InputError) and issubclass(ModelSpecError, InputError)
    assert BuildError("x").exit_code == 2 and PublishRefused("x").exit_code == 2
    assert PublishError("x").exit_code == 1


def test_help_and_version_return_0(capsys):
    assert main(["--version"]) == 0
    assert main(["build", "--help"]) == 0
    assert "reference U-Net epochs" in capsys.readouterr().out


def test_python_dash_m(tmp_path: Path):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "builder.cli", "verify", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no such folder" in done.stderr
