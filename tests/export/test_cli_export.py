"""ldm-export as a user runs it: every --help works, and the exit-code contract holds for our own bugs too."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from ldm_export.cli import main


def test_every_help():
    top = subprocess.run([sys.executable, "-m", "ldm_export.cli", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "Usage" in top.stdout
    for sub in main.commands:
        r = CliRunner().invoke(main, [sub, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, (sub, r.output)


def test_an_internal_error_exits_3_with_the_traceback_and_a_report_line(tiny_sd, tmp_path, monkeypatch):
    """A bug of ours (here: the exporter raises an AttributeError) is not dressed up as a user error."""
    from ldm_export import build as build_mod

    def broken(*_a, **_k):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(build_mod, "component_graphs", broken)
    r = CliRunner().invoke(main, ["build", str(tiny_sd), "--out", str(tmp_path / "b")])
    assert r.exit_code == 3
    assert "Traceback" in r.stderr and "AttributeError" in r.stderr
    assert "this is a bug in ldm-export" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))


@pytest.mark.parametrize("args", [["build", "--resolution", "33x32"], ["build", "--guidance", "nan"]])
def test_user_errors_are_one_line(tiny_sd, tmp_path, args):
    r = CliRunner().invoke(main, [args[0], str(tiny_sd), "--out", str(tmp_path / "b"), *args[1:]])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "b").exists()
