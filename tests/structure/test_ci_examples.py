"""examples/ci: the workflows validate against the published GitHub Actions and GitLab CI schemas (the copies
check-jsonschema vendors from SchemaStore), hold the keys a runner needs, and every ldm-export / ldm-run
command in them parses with today's command-line options."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .imports import REPO

CI = REPO / "examples" / "ci"
GITHUB = CI / "github-parity-gate.yml"
GITLAB = CI / "gitlab-parity-gate.yml"
SUBST = {"${MODEL:+-r $MODEL}": "", "$MODEL": "", "$PROMPTS": "examples/ci/prompts.txt", "$b": "fp32"}


def _check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (the dev extra has it)")
    exe = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(exe), "--builtin-schema", schema, str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("schema, path", [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)])
def test_workflows_validate_against_the_published_schemas(schema, path):
    r = _check_jsonschema(schema, path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_check_is_not_vacuous(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - uses: actions/checkout@v4\n"
                   "        runs: nothing\n")
    assert _check_jsonschema("vendor.github-workflows", bad).returncode != 0


def test_github_workflow_has_the_jobs_and_keys_a_runner_needs():
    wf = yaml.safe_load(GITHUB.read_text())
    assert True in wf or "on" in wf   # YAML 1.1 reads the key `on` as True
    jobs = wf["jobs"]
    assert set(jobs) == {"bundles", "jetson", "macos"}
    assert "self-hosted" in jobs["jetson"]["runs-on"] and jobs["macos"]["runs-on"].startswith("macos")
    for job in jobs.values():
        assert job["runs-on"] and job["steps"] and all(("run" in s) != ("uses" in s) for s in job["steps"])
    runs = " ".join(s.get("run", "") for s in jobs["jetson"]["steps"])
    assert "ldm-run prepare" in runs and "--backend tensorrt" in runs
    assert "--backend coreml" in " ".join(s.get("run", "") for s in jobs["macos"]["steps"])
    uploads = [s for s in jobs["bundles"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any(s["with"]["path"] == "reports/" and s.get("if") == "always()" for s in uploads)


def _commands(path: Path) -> list[list[str]]:
    doc = yaml.safe_load(path.read_text())
    scripts = []
    for job in doc.values():
        if isinstance(job, dict) and "jobs" not in doc:
            scripts += job.get("script", [])
    for job in doc.get("jobs", {}).values():
        scripts += [s["run"] for s in job["steps"] if "run" in s]
    found = []
    for text in scripts:
        for k, v in SUBST.items():
            text = text.replace(k, v)
        found += [shlex.split(m) for m in re.findall(r"\b(?:ldm-export|ldm-run) [^;\n]*", text)]
    return found


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=lambda p: p.name)
def test_every_command_in_the_workflows_parses(path):
    import click

    from ldm_export.cli import main as export_main
    from ldm_runtime.cli import main as run_main

    commands = _commands(path)
    assert len(commands) >= 5
    for argv in commands:
        group = export_main if argv[0] == "ldm-export" else run_main
        ctx = group.make_context(argv[0], argv[1:2])
        cmd = group.get_command(ctx, argv[1])
        assert cmd is not None, argv
        try:
            cmd.make_context(argv[1], argv[2:])
        except click.UsageError as e:
            pytest.fail(f"{shlex.join(argv)}: {e.format_message()}")
