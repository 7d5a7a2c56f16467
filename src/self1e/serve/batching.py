"""Dynamic batching for the API: requests that arrive together share one forward pass.

One worker thread owns the model (PyTorch calls are never concurrent). Segmentation jobs wait in
a bounded queue; the worker takes the first, gathers more for at most ``wait_ms`` or until
``max_batch`` jobs, and runs them as one batch (each job's image encoded once). Other work (chat)
runs on the same thread, one call at a time. A full queue refuses new work at once
(:class:`QueueFull`, answered 503), so a burst cannot pile up unbounded memory.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any


class QueueFull(RuntimeError):
    """More than ``queue_size`` requests pending: answered 503 at once."""


class ModelUnavailable(RuntimeError):
    """The model side could not answer (a replica died and retries ran out): answered 503."""


class Admission:
    """Counts the requests accepted and not yet answered; refuses more than ``queue_size`` (QueueFull)."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"need queue_size >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.pending = 0

    def admit(self) -> None:
        if self.pending >= self.queue_size:
            raise QueueFull(f"the server is busy: {self.pending} requests are waiting (queue size "
                            f"{self.queue_size}); try again shortly")
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1


def run_isolated(run_batch: Callable[[Sequence[Any]], Sequence[Any]], jobs: Sequence[Any]) -> list[Any]:
    """``run_batch(jobs)``; when that raises, each job is run alone, so one bad job fails only
    itself: a failed job's entry is its exception (an instance of Exception), the others their results."""
    try:
        results = list(run_batch(list(jobs)))
        if len(results) != len(jobs):
            raise RuntimeError(f"the batch gave {len(results)} results for {len(jobs)} jobs")
        return results
    except Exception as e:  # noqa: BLE001 - handed to the request(s) that caused it
        if len(jobs) == 1:
            return [e]
        return [_alone(run_batch, job) for job in jobs]


def _alone(run_batch: Callable[[Sequence[Any]], Sequence[Any]], job: Any) -> Any:
    try:
        return run_batch([job])[0]
    except Exception as e:  # noqa: BLE001 - handed to the request that caused it
        return e


class Batcher(Admission):
    """``await submit(job)`` -> ``run_batch([job, ...])[k]`` for that job. ``run_batch`` gets 1 to
    ``max_batch`` jobs and returns one result per job; if it raises, each job of that batch is run
    alone, so one bad job fails only itself."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 wait_ms: float = 5.0, queue_size: int = 64) -> None:
        if max_batch < 1 or queue_size < 1 or wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, queue_size >= 1 and wait_ms >= 0, got {max_batch}, "
                             f"{queue_size}, {wait_ms}")
        super().__init__(queue_size)  # pending: jobs accepted and not yet answered (queued, batching, running)
        self.run_batch, self.max_batch, self.wait_s = run_batch, max_batch, wait_ms / 1000
        self.batches: list[int] = []  # sizes of the batches run (for tests and /healthz)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="self1e-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Answer what is queued, then stop the worker and its thread."""
        if self._worker is not None:
            while self._queue.qsize():
                await asyncio.sleep(0.01)
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True)

    async def submit(self, job: Any) -> Any:
        """The result of ``job`` from a batch; QueueFull when ``queue_size`` jobs are pending."""
        self.admit()
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((job, future))
            return await future
        finally:
            self.release()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the model's thread (not batched), counted against the queue size."""
        self.admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self.release()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    jobs.append(self._queue.get_nowait() if timeout <= 0 else
                                await asyncio.wait_for(self._queue.get(), timeout))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            live = [(job, fut) for job, fut in jobs if not fut.done()]  # a client that left is skipped
            if live:
                self.batches.append(len(live))
                await loop.run_in_executor(self._executor, self._run, live)

    def _run(self, jobs: list[tuple[Any, asyncio.Future]]) -> None:
        """On the model's thread: the batch, or each job alone when the batch fails."""
        results = run_isolated(self.run_batch, [job for job, _ in jobs])
        for (_, fut), result in zip(jobs, results):
            fut.get_loop().call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future, result: Any) -> None:
    if fut.done():
        return
    if isinstance(result, Exception):
        fut.set_exception(result)
    else:
        fut.set_result(result)
