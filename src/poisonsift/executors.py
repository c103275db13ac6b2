"""Executors: run independent units (plain dicts in, plain results out) one after the other, in
local worker processes, or as Ray tasks on a local Ray or a cluster. Used by ``reproduce`` (its
trainings and detections) and ``scan`` (its classes)."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from poisonsift.errors import ConfigError
from poisonsift.utils import progress

__all__ = ["LocalExecutor", "RayExecutor", "make_executor", "unit"]


def unit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """Run a unit with ``task["threads"]`` torch threads and restore the caller's count after.

    Every unit runs with the same thread count wherever it runs, so the local and Ray
    executors give bit-identical numbers (reductions depend on the thread split); the
    restore keeps an in-process run from changing the caller's torch settings.
    """

    @functools.wraps(fn)
    def run(task: dict[str, Any]) -> Any:
        import torch

        before = torch.get_num_threads()
        if task.get("threads"):
            torch.set_num_threads(int(task["threads"]))
        try:
            return fn(task)
        finally:
            torch.set_num_threads(before)

    return run




class LocalExecutor:
    """Runs the units on this machine: one after the other in this process (``jobs=1``),
    or ``jobs`` at a time in worker processes.

    Two 1-thread trainings side by side do more work than one 2-thread training
    (measured on 2 CPU cores: 317 against 262 images/s), so ``jobs`` = the number
    of cores, with one torch thread per unit, finishes a stage of several units sooner.
    """

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.cpus_per_task = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def map(self, fn: Callable[[dict], Any], tasks: list[dict], gpu: list[bool] | None = None, desc: str = "") -> list:
        out: list[Any] = [None] * len(tasks)
        with progress(total=len(tasks), desc=desc or "units", unit="unit") as bar:
            if self.jobs == 1 or len(tasks) <= 1:
                for i, t in enumerate(tasks):
                    out[i] = fn(t)
                    bar.update(1)
                return out
            import concurrent.futures as cf
            import multiprocessing as mp

            # spawn: a fresh interpreter per worker (fork would copy torch's thread pools).
            with cf.ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
                for f in cf.as_completed(futures):
                    out[futures[f]] = f.result()
                    bar.update(1)
        return out


class RayExecutor:
    """Runs the units of a stage as Ray tasks (a local Ray by default, a cluster at ``address``).

    Every task reads the data and writes the cache by path, so on a cluster both
    must be on storage every node sees. A task asks for one GPU when its run's
    caller says it wants one (``gpu``), else ``cpus_per_task`` CPUs.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'poisonsift[ray]' (or pip install ray)") from None
        self.ray = ray
        self.cpus_per_task = cpus_per_task
        if not ray.is_initialized():
            kw: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
            if address:
                kw["address"] = address
            elif num_cpus:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)

    def map(self, fn: Callable[[dict], Any], tasks: list[dict], gpu: list[bool] | None = None, desc: str = "") -> list:
        gpu = gpu or [False] * len(tasks)
        remote = {g: self.ray.remote(num_cpus=self.cpus_per_task, num_gpus=1 if g else 0, max_retries=0)(fn)
                  for g in set(gpu)}  # fmt: skip
        refs = [remote[g].remote(t) for t, g in zip(tasks, gpu)]
        out: list[Any] = [None] * len(refs)
        pending = dict(zip(refs, range(len(refs))))
        with progress(total=len(refs), desc=desc or "ray tasks", unit="unit") as bar:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for r in done:
                    out[pending.pop(r)] = self.ray.get(r)
                    bar.update(1)
        return out

    def shutdown(self) -> None:
        self.ray.shutdown()


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None, jobs: int = 1):
    if name == "local":
        if address:
            raise ConfigError("--ray-address needs --executor ray")
        return LocalExecutor(jobs)
    if jobs != 1:
        raise ConfigError("--jobs is for --executor local; Ray runs as many tasks as its CPUs allow")
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise ConfigError(f"unknown executor {name!r}; use local or ray")
