"""Sweeps: work split into deterministic tasks (prompt × seed × bundle), run in this process or on a Ray
cluster, each finished task kept on disk so an interrupted sweep resumes. See docs/scale.md."""

from .executor import EXECUTORS, ExecutorConfig, SweepFailed, Task, run_tasks
from .store import TaskStore

__all__ = ["EXECUTORS", "ExecutorConfig", "SweepFailed", "Task", "TaskStore", "run_tasks"]
