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
    pass


class Batcher:
    """``await submit(job)`` -> ``run_batch([job, ...])[k]`` for that job. ``run_batch`` gets 1 to
    ``max_batch`` jobs and returns one result per job; if it raises, each job of that batch is run
    alone, so one bad job fails only itself."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 8,
                 wait_ms: float = 5.0, queue_size: int = 64) -> None:
        if max_batch < 1 or queue_size < 1 or wait_ms < 0:
            raise ValueError(f"need max_batch >= 1, queue_size >= 1 and wait_ms >= 0, got {max_batch}, "
                             f"{queue_size}, {wait_ms}")
        self.run_batch, self.max_batch, self.wait_s, self.queue_size = run_batch, max_batch, wait_ms / 1000, queue_size
        self.pending = 0  # jobs accepted and not yet answered (queued, batching, or running)
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

    def _admit(self) -> None:
        if self.pending >= self.queue_size:
            raise QueueFull(f"the server is busy: {self.pending} requests are waiting (queue size "
                            f"{self.queue_size}); try again shortly")
        self.pending += 1

    async def submit(self, job: Any) -> Any:
        """The result of ``job`` from a batch; QueueFull when ``queue_size`` jobs are pending."""
        self._admit()
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((job, future))
            return await future
        finally:
            self.pending -= 1

    async def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the model's thread (not batched), counted against the queue size."""
        self._admit()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self.pending -= 1

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
        try:
            results = list(self.run_batch([job for job, _ in jobs]))
            outcomes = [(fut, r, None) for (_, fut), r in zip(jobs, results)]
        except Exception:
            outcomes = []
            for job, fut in jobs:
                try:
                    outcomes.append((fut, self.run_batch([job])[0], None))
                except Exception as e:  # noqa: BLE001 - handed to the request that caused it
                    outcomes.append((fut, None, e))
        for fut, result, error in outcomes:
            fut.get_loop().call_soon_threadsafe(_settle, fut, result, error)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
