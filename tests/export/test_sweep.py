"""Sweeps on the real Ray: calibration split into tasks gives the same bytes as a local run, with a worker
killed mid-sweep too; an interrupted run resumes to the same set; without Ray, one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
import time

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from ldm_export.calibration import collect
from ldm_export.cli import main
from ldm_export.sweep import ExecutorConfig
from ldm_export.sweep.store import store_folder
from ldm_runtime.errors import UserError

ARGS = {"steps": 8, "samples": 16, "per_trajectory": 2}
CLI_ARGS = ["--steps", "8", "--samples", "16", "--per-trajectory", "2"]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def local_set(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    collect(tiny_sd, out, **ARGS)
    return out


def test_ray_calibration_is_byte_identical_to_local(tiny_sd, local_set, ray_cluster, tmp_path):
    out = tmp_path / "ray"
    r = CliRunner().invoke(main, ["calibrate", str(tiny_sd), "--out", str(out), *CLI_ARGS, "--executor", "ray",
                                  "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "on 2 Ray workers" in r.stderr
    assert _files(out) == _files(local_set)
    assert not store_folder(out).exists()   # the finished tasks are dropped once the set is written


def _sweep_workers() -> list[psutil.Process]:
    """The Ray actor processes of a sweep (Ray titles an actor's process ``ray::_Worker…``)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::_Worker"):
            found.append(p)
    return found


def test_a_worker_killed_mid_sweep_changes_nothing(tiny_sd, local_set, ray_cluster, tmp_path):
    out = tmp_path / "killed"
    folder = store_folder(out)
    killed: list[int] = []
    at_kill: list[int] = []
    seen: set[int] = set()
    finished = threading.Event()

    def kill_one_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not finished.is_set():
            done = len(list(folder.glob("*.npz"))) if folder.is_dir() else 0
            workers = _sweep_workers()
            seen.update(w.pid for w in workers)
            if not killed and done >= 2 and workers:
                at_kill.append(done)
                workers[0].send_signal(signal.SIGKILL)
                killed.append(workers[0].pid)
                before = set(seen)
            time.sleep(0.005)
        if killed:
            seen.difference_update(before)

    killer = threading.Thread(target=kill_one_when_started)
    killer.start()
    try:
        collect(tiny_sd, out, executor=ExecutorConfig(kind="ray", workers=2), **ARGS)
    finally:
        finished.set()
        killer.join()
    assert killed, "no worker was killed: the sweep ended before the test could"
    assert at_kill[0] < ARGS["samples"]
    assert seen, "Ray did not restart the killed worker"   # a worker process that was not there at the kill
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert _files(out) == _files(local_set)


def test_resume_after_sigint_gives_the_uninterrupted_set(tiny_sd, local_set, tmp_path):
    out = tmp_path / "resumed"
    folder = store_folder(out)
    cmd = [sys.executable, "-m", "ldm_export.cli", "calibrate", str(tiny_sd), "--out", str(out), *CLI_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finished() -> int:   # a task being written is a hidden .KEY.partial-PID.npz until it is renamed
        return len([p for p in folder.glob("*.npz") if not p.name.startswith(".")]) if folder.is_dir() else 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and finished() < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = finished()
    assert 3 <= kept < ARGS["samples"] and not out.exists()
    assert "--resume continues" in err
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} of {ARGS['samples']} tasks already done" in resumed.stderr
    assert _files(out) == _files(local_set)


def test_resume_with_other_arguments_is_refused(tiny_sd, tmp_path):
    out = tmp_path / "set"
    from ldm_export.sweep import TaskStore

    TaskStore(store_folder(out), {"kind": "calibration", "seed": 99}, resume=False)
    r = CliRunner().invoke(main, ["calibrate", str(tiny_sd), "--out", str(out), *CLI_ARGS, "--resume"])
    assert r.exit_code == 2 and "had other arguments" in r.stderr
    assert store_folder(out).is_dir()   # the user's finished tasks are never dropped


def test_without_ray_the_ray_executor_is_one_line(tiny_sd, tmp_path):
    code = ("import sys\nsys.modules['ray'] = None\nfrom ldm_export.cli import main\n"
            f"main(['calibrate', {str(tiny_sd)!r}, '--out', {str(tmp_path / 'x')!r}, '--executor', 'ray'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ['error: --executor ray needs Ray, which is not installed; install it '
                                             'with: pip install "ldm-export[ray]"']


def test_workers_without_ray_executor_is_refused(tiny_sd, tmp_path):
    r = CliRunner().invoke(main, ["calibrate", str(tiny_sd), "--out", str(tmp_path / "x"), "--workers", "2"])
    assert r.exit_code == 2 and "--workers and --ray-address are for --executor ray" in r.stderr
    assert not (tmp_path / "x").exists()


@dataclass(frozen=True)
class _FailsOn:
    """A job whose task ``bad`` raises ``error`` (a user error one input causes, or a bug it triggers); the
    others return their payload."""

    bad: int
    error: type = UserError

    def setup(self):
        return None

    def run(self, state, payload):
        if payload == self.bad:
            raise self.error(f"payload {payload} is bad")
        return {"payload": payload}, {"x": np.full(3, payload)}


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_failing_task_fails_the_sweep_after_the_others_then_resumes(kind, tmp_path, request):
    from ldm_export.sweep import SweepFailed, Task, TaskStore, run_tasks

    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    cfg = ExecutorConfig(kind=kind, workers=2 if kind == "ray" else None)
    tasks = [Task(f"{i:06d}", i, f"'prompt {i}' seed {i}") for i in range(8)]
    store = TaskStore(tmp_path / "tasks", {"kind": "test"}, resume=False)
    with pytest.raises(SweepFailed) as e:
        run_tasks(cfg, _FailsOn(3), tasks, store)
    assert str(e.value).startswith("task 'prompt 3' seed 3 failed: payload 3 is bad; the other 7 tasks")
    assert store.done() == {t.key for t in tasks} - {"000003"}
    again = TaskStore(tmp_path / "tasks", {"kind": "test"}, resume=True)
    run_tasks(cfg, _FailsOn(-1), tasks, again)
    assert [again.get(t.key)[0]["payload"] for t in tasks] == list(range(8))
    assert [int(again.get(t.key)[1]["x"][0]) for t in tasks] == list(range(8))


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_a_bug_in_a_task_ends_the_sweep_as_itself(kind, tmp_path, request):
    """Not a user error: the exception itself comes out (the CLI's exit 3 with its traceback), not a
    one-line "task failed" (exit 2) that would read as the user's fault; the finished tasks are kept."""
    from ldm_export.sweep import Task, TaskStore, run_tasks

    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    cfg = ExecutorConfig(kind=kind, workers=2 if kind == "ray" else None)
    tasks = [Task(f"{i:06d}", i, f"'prompt {i}' seed {i}") for i in range(8)]
    store = TaskStore(tmp_path / "tasks", {"kind": "test"}, resume=False)
    with pytest.raises(ValueError, match="payload 3 is bad"):
        run_tasks(cfg, _FailsOn(3, ValueError), tasks, store)
    assert "000003" not in store.done()
    if kind == "local":
        assert store.done() == {"000000", "000001", "000002"}


@pytest.mark.slow
def test_demo_calibration_on_two_ray_workers_is_byte_identical(ray_cluster, tmp_path):
    """The issue's scale: the embedded demo model, 32 prompts × 10 steps (≈ 1 min here; benchmarks/
    bench_executors.py times it)."""
    from ldm_export.demo import MODEL_DIR

    kw = {"steps": 10, "samples": 32, "per_trajectory": 4}
    collect(MODEL_DIR, tmp_path / "local", **kw)
    collect(MODEL_DIR, tmp_path / "ray", executor=ExecutorConfig(kind="ray", workers=2), **kw)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_a_worker_refuses_a_model_other_than_the_drivers(tiny_sd):
    """What a worker loads is checked against the driver's hash (here: a hash no file has)."""
    from ldm_export.calibration.tasks import CalibrationJob
    from ldm_runtime.errors import UserError

    with pytest.raises(UserError, match="the worker's copy of .* is another model"):
        CalibrationJob(tiny_sd, None, None, (), "0" * 64).setup()
