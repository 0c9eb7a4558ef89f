"""Run a sweep's tasks here (``local``) or on a Ray cluster (``ray``); the result never depends on which.

A sweep is a :class:`Job` (what every worker loads once: the model, the bundles, each checked by hash
there) and a list of :class:`Task` (one prompt × seed, say), each deterministic on its own: it carries its
seeds, and torch runs it on one thread in both executors (torch's thread count changes results bit for
bit). Each finished task goes straight into the :class:`~ldm_export.sweep.store.TaskStore`, which the caller
reads back in task order, so neither the number of workers nor the order they finish in shows in the
result.

On Ray, every worker is an actor that loads the job once (loading a model costs far more than one task);
an actor whose process dies is restarted by Ray and its task retried (Ray's own ``max_task_retries``), so a
sample is neither lost nor duplicated (a task's result is keyed by the task, written once). A task that
raises a user error is not retried (it would raise again): the sweep goes on with the others and then fails
in one line naming the task. Any other exception is a bug: it ends the sweep at once, with its traceback
(exit 3); the finished tasks are kept for ``--resume``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ldm_runtime.errors import BackendUnavailable, UserError, one_line

from .store import Result, TaskStore

EXECUTORS = ("local", "ray")
RAY_INSTALL = 'pip install "ldm-export[ray]"'


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"          # "local": this process, one task at a time; "ray": Ray actors
    address: str | None = None   # ray: the cluster to join (ray.init's address); None: start a local one
    workers: int | None = None   # ray: worker actors (None: one per CPU of the cluster)
    retries: int = 3             # ray: tries of a task whose worker process died, after the first

    def check(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"--executor {self.kind}: unknown; use one of {', '.join(EXECUTORS)}")
        if self.kind == "local" and (self.workers is not None or self.address is not None):
            raise UserError("--workers and --ray-address are for --executor ray; the local executor runs the "
                            "tasks in this process, one at a time")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers {self.workers}: must be ≥ 1")
        if self.kind == "ray":
            import_ray()


@dataclass(frozen=True)
class Task:
    key: str         # unique in the sweep, and the order the results are read back in
    payload: Any     # what the job's run() gets (picklable: it travels to Ray workers)
    label: str       # for messages: "prompt 'a red circle' seed 3"


class Job(Protocol):
    """What a worker runs: ``setup()`` once (load and hash-check what the tasks need), then ``run`` per task."""

    def setup(self) -> Any: ...

    def run(self, state: Any, payload: Any) -> Result: ...


class SweepFailed(UserError):
    """Some tasks kept failing; the others finished and are kept for ``--resume``."""


def run_tasks(cfg: ExecutorConfig, job: Job, tasks: Sequence[Task], store: TaskStore,
              say: Callable[[str], None] = lambda msg: None, what: str = "tasks") -> None:
    """Run every task of ``tasks`` that ``store`` does not hold yet, putting each result in ``store``. Stopped
    (Ctrl-C, SIGTERM), it says how many ``what`` finished and where they are kept for ``--resume``."""
    try:
        _run_tasks(cfg, job, tasks, store, say)
    except (KeyboardInterrupt, SystemExit):
        say(f"stopped with {len(store.done())} of {len(tasks)} {what} finished, kept in {store.folder}: the same "
            "command with --resume continues from them")
        raise


def _run_tasks(cfg: ExecutorConfig, job: Job, tasks: Sequence[Task], store: TaskStore, say) -> None:
    cfg.check()
    done = store.done()
    todo = [t for t in tasks if t.key not in done]
    if len(todo) < len(tasks):
        say(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} tasks already done")
    if not todo:
        return
    failures = (_run_ray if cfg.kind == "ray" else _run_local)(cfg, job, todo, store, say)
    if failures:
        task, err = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise SweepFailed(f"task {task.label} failed{more}: {err}; the other {len(tasks) - len(failures)} tasks "
                          "finished and are kept: fix the cause and rerun with --resume")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread inside (how every task runs: the thread count changes float sums)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_local(cfg: ExecutorConfig, job: Job, todo: Sequence[Task], store: TaskStore, say) -> list:
    failures = []
    with one_torch_thread():
        state = job.setup()
        for t in todo:
            try:
                store.put(t.key, job.run(state, t.payload))
            except BackendUnavailable:  # this machine lacks the backend: every task would fail the same way
                raise
            except UserError as e:  # the task's input: the sweep goes on, and fails at the end naming the task
                failures.append((t, one_line(e, with_type=False)))
    return failures


class _Worker:
    """A Ray actor: the job set up once, then its tasks. A setup error is raised by every task it gets, so
    the sweep's message carries it (an actor whose constructor raised would only say that it died)."""

    def __init__(self, job: Job):
        import torch

        torch.set_num_threads(1)
        self.job, self.error, self.state = job, None, None
        try:
            self.state = job.setup()
        except Exception as e:  # noqa: BLE001 - re-raised by run()
            self.error = e

    def run(self, payload: Any) -> Result:
        if self.error is not None:
            raise self.error
        return self.job.run(self.state, payload)

    def pid(self) -> int:
        return os.getpid()


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed; install it with: {RAY_INSTALL}") \
            from None
    return ray


def connect(ray, cfg: ExecutorConfig) -> bool:
    """Join ``cfg.address``, or the cluster this process already joined, or start a local one; returns
    whether this call started it (then the caller shuts it down)."""
    if ray.is_initialized():
        return False
    try:
        if cfg.address is not None:
            ray.init(address=cfg.address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.workers or os.cpu_count() or 1, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {cfg.address}" if cfg.address else "a local Ray cluster"
        raise UserError(f"cannot connect to {where}: {one_line(e, with_type=False)}") from e
    return True


def _run_ray(cfg: ExecutorConfig, job: Job, todo: Sequence[Task], store: TaskStore, say) -> list:
    ray = import_ray()
    started = connect(ray, cfg)
    try:
        n = min(cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(todo))
        actor = ray.remote(num_cpus=1, max_restarts=cfg.retries * n, max_task_retries=cfg.retries)(_Worker)
        workers = [actor.remote(job) for _ in range(n)]
        say(f"running {len(todo)} tasks on {n} Ray workers")
        return _drain(ray, workers, list(todo), store)
    finally:
        if started:
            ray.shutdown()


def _drain(ray, workers: list, queue: list[Task], store: TaskStore) -> list:
    """Keep every worker busy with one task until the queue is empty; results go to ``store`` as they come."""
    pending: dict = {}
    failures = []

    def submit(worker) -> None:
        if queue:
            t = queue.pop(0)
            pending[worker.run.remote(t.payload)] = (worker, t)

    for w in workers:
        submit(w)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        worker, t = pending.pop(ref)
        try:
            store.put(t.key, ray.get(ref))
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BackendUnavailable):   # the workers lack the backend: so would every task
                raise cause from None
            if cause is not None and not isinstance(cause, UserError):   # our bug: exit 3 with its traceback
                raise cause
            failures.append((t, one_line(cause, with_type=False) if cause is not None else one_line(e)))
        submit(worker)
    return failures
