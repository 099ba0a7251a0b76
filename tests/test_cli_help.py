"""Every option of every script is described, with its default shown in ``--help``."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "common")
BENCHMARKS = sorted(f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*.py")
                    if p.stem.startswith("bench_") or p.stem == "report")


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def script_parser(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's ``main`` builds, caught when it starts parsing."""
    module = importlib.import_module(module_name)

    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Parsed) as caught:
        module.main([])
    return caught.value.parser


@pytest.mark.parametrize("module_name", EXPERIMENTS + BENCHMARKS)
def test_every_option_has_a_description_and_shows_its_default(module_name, monkeypatch):
    parser = script_parser(module_name, monkeypatch)
    shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{module_name}: {name} has no help"
        if action.option_strings and not action.required and action.default is not None:
            assert shows_defaults or "%(default)" in action.help, (
                f"{module_name}: {name} does not show its default {action.default!r}")
    assert "default" in parser.format_help()


def test_gpu_suite_prints_its_own_usage():
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert run.stdout.startswith("usage: benchmarks/gpu_suite.sh OUT_DIR [--dry-run]")
    assert "--dry-run" in run.stdout and "mkdir" not in run.stdout + run.stderr
    bare = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")],
                          capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and bare.stderr.startswith("usage:")
