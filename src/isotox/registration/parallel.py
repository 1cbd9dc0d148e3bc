"""Registration sessions (3 PET/CTs, the DCE-CT) run side by side in worker processes.

Why processes: each session's optimiser runs on one thread (a multi-threaded Mattes metric is not
reproducible run to run, issue 18), so the rule's second core would idle; the sessions are
independent (each reads its own scans and writes its own files), so ``threads`` workers register
them at once and every session's result is the same as in a serial run.

Why ``forkserver`` with this module preloaded: the workers start from a clean interpreter that has
imported isotox once (no fork of a process whose ITK thread pool is running; no re-run of a
Snakemake script's top level, which ``spawn`` would do), and each worker costs a fork, not an import.
Log records of a worker are collected and re-emitted by the parent, so they reach the rule log.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import forkserver
from typing import Any

import SimpleITK as sitk

SessionTask = tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]


class _Collect(logging.Handler):
    """Keeps a worker's log records (level, logger name, message) for the parent."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def _run_in_worker(func: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> tuple[dict[str, Any], float, list[tuple[int, str, str]]]:
    """One session in a worker: one ITK thread (the other workers use the other cores), its log kept."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # a fresh worker's root logger is at WARNING; the parent's handlers filter again
    start = time.perf_counter()
    try:
        record = func(*args)
    finally:
        root.removeHandler(handler)
    return record, time.perf_counter() - start, handler.records


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["isotox.registration.stage"])
    return context


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start workers without re-running the caller's main script in them.

    multiprocessing re-executes ``__main__`` from its file in every non-fork worker; a Snakemake
    ``script:`` (or any user script without a ``__main__`` guard) would then run the whole stage
    again inside each worker. The workers need nothing from the main script (the tasks are
    functions of isotox), so its ``__file__`` is hidden while the pool starts its processes."""
    main = sys.modules["__main__"]
    missing = object()
    saved = main.__dict__.pop("__file__", missing)
    try:
        yield
    finally:
        if saved is not missing:
            main.__file__ = saved  # type: ignore[attr-defined]


def _stop_forkserver() -> None:
    """End the fork server and wait for it: it has reaped its workers, so their CPU time and peak
    memory then count in this process's children (``getrusage``, ``wait4`` of a benchmark, the
    Snakemake benchmark file) instead of vanishing with an orphaned server."""
    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


def run_sessions(tasks: dict[str, SessionTask], threads: int) -> dict[str, tuple[dict[str, Any], float]]:
    """``{session: (record, seconds)}`` of ``func(*args)`` per session, in ``threads`` processes (in
    this process when ``threads`` is 1). Tasks are started in the order given (longest first packs
    best). A session's exception is raised here, after the other sessions have finished."""
    if threads <= 1 or len(tasks) <= 1:
        results = {}
        for name, (func, args) in tasks.items():
            start = time.perf_counter()
            results[name] = (func(*args), time.perf_counter() - start)
        return results
    try:
        with _main_script_hidden(), ProcessPoolExecutor(max_workers=min(threads, len(tasks)), mp_context=_context()) as pool:
            futures: dict[str, Future[Any]] = {name: pool.submit(_run_in_worker, func, args) for name, (func, args) in tasks.items()}
            outcomes = {name: (future.exception(), future) for name, future in futures.items()}
    finally:
        _stop_forkserver()
    results = {}
    for name, (error, future) in outcomes.items():
        if error is not None:
            raise error
        record, seconds, messages = future.result()
        for level, logger, message in messages:
            logging.getLogger(logger).log(level, message)
        results[name] = (record, seconds)
    return results
