"""The command line of `convirt_fast.train`: parse_args returns a Config or raises, --help prints
every option and exits 0, a bad option prints `error: ...` and exits 2."""

import dataclasses
import subprocess
import sys

import pytest

from convirt_fast.cli import parse_args
from convirt_fast.config import Config


def _options(cfg, prefix=""):
    """Every `--section.field` that a config takes on the command line."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _options(value, f"{prefix}{f.name}.")
        elif f.name != "preset":
            yield f"--{prefix}{f.name}="


def test_parse_args_returns_a_config():
    cfg = parse_args([])
    assert isinstance(cfg, Config) and cfg.preset == "cpu-default"
    cfg = parse_args(["--preset", "mimic-paper", "--train.max_steps=7", "--loss.tau", "0.2"])
    assert isinstance(cfg, Config) and cfg.preset == "mimic-paper"
    assert cfg.train.max_steps == 7 and cfg.loss.tau == 0.2


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_every_option_and_exits_0(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--train.max_steps=3", flag])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: ") and err == ""
    for option in _options(parse_args([])):
        assert option in out, option


def test_help_shows_the_chosen_presets_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--preset", "mimic-paper", "--help"])
    assert "--optim.lr=0.0001" in capsys.readouterr().out


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown option --train\.max_step\b.*did you mean 'max_steps'"):
        parse_args(["--train.max_step=3"])


def test_train_main_returns_2_on_a_bad_option(capsys):
    from convirt_fast.train import main

    assert main(["--data.nope=1"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: unknown option --data.nope") and out == ""
    assert main(["--data.batch_size=lots"]) == 2
    assert "error: --data.batch_size: expected int" in capsys.readouterr().err


def test_train_main_help_exits_0(capsys):
    from convirt_fast.train import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--train.max_steps=" in capsys.readouterr().out


def test_python_m_train_help_and_error_exit_codes():
    """As a user runs it: exit status 0 with the options on --help, 2 with `error:` otherwise."""
    ok = subprocess.run([sys.executable, "-m", "convirt_fast.train", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "--data.batch_size=" in ok.stdout and "--train.max_steps=" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "convirt_fast.train", "--data.nope=1"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "error: unknown option --data.nope" in bad.stderr
