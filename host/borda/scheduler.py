"""The worker pool: runs every tenant's requests, one step at a time, fairly.

A request is a generator: each next() is one step (a prefill chunk, a decode step, one
embedding batch, one invoke), each yielded value other than None is streamed to the
caller, and the generator's return value is the request's result. Workers take the next
step from the tenants in turn (round-robin over tenants, then over each tenant's
requests), so one long generation cannot starve short ones and a tenant with many
requests gets no more turns than a tenant with one. Each Store runs on one worker at a
time: a request is off the queue while its step runs.

A turn lasts up to `time_slice` seconds of steps, not one step: a step on another
instance than the worker's last one runs ~2x slower (its page tables are cold), so
switching every step cost 40 % of the aggregate throughput with 32 sessions (see
benchmarks/bench_tenants.py), while 0.2 s turns keep the wait of a short request
bounded by turns, never by a long request's length.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Any

from .checks import number, whole_number
from .errors import BordaError, QuotaExceeded, RequestCancelled

Steps = Generator[Any, None, Any]


class Request:
    """A submitted request: stream its output, wait for its result, or cancel it."""

    def __init__(
        self, tenant: str, steps: Steps, on_finish: Callable[[Request], None] | None = None
    ) -> None:
        self.tenant = tenant
        self._steps = steps
        self._on_finish = on_finish
        self._outputs: list[Any] = []
        self._result: Any = None
        self._error: BaseException | None = None
        self._finished = False
        self._cancelled = False
        self._cond = threading.Condition()

    def __iter__(self) -> Iterator[Any]:
        """The streamed outputs as they come; raises the request's error at the end."""
        seen = 0
        while True:
            with self._cond:
                while len(self._outputs) == seen and not self._finished:
                    self._cond.wait()
                fresh = self._outputs[seen:]
                finished = self._finished
            yield from fresh
            seen += len(fresh)
            if finished and seen == len(self._outputs):
                if self._error is not None:
                    raise self._error
                return

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the request to finish; its result, or its error raised here."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished, timeout):
                raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Stop the request before its next step; result() then raises RequestCancelled."""
        self._cancelled = True

    def done(self) -> bool:
        return self._finished

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def error(self) -> BaseException | None:
        """Why the request failed (once it has finished), else None."""
        return self._error

    def _step(self) -> bool:
        """Run one step; True while the request has more to do."""
        if self._cancelled:
            self._steps.close()  # runs the request's own clean-up
            self._finish(error=RequestCancelled(f"tenant {self.tenant!r}: request cancelled"))
            return False
        try:
            output = next(self._steps)
        except StopIteration as stop:
            self._finish(result=stop.value)
            return False
        except BaseException as exc:  # the request failed: hand its error to the caller
            self._finish(error=exc)
            return False
        if output is not None:
            with self._cond:
                self._outputs.append(output)
                self._cond.notify_all()
        return True

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self._error = error
        if self._on_finish is not None:
            try:
                self._on_finish(self)  # clean-up first: result() returns after it
            except Exception as exc:  # a failed clean-up must not take the worker down
                error = error or exc
        with self._cond:
            self._result, self._error, self._finished = result, error, True
            self._cond.notify_all()


def default_workers() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Scheduler:
    """A pool of worker threads taking steps from all tenants' requests in turn."""

    def __init__(
        self, workers: int | None = None, max_pending: int = 4096, time_slice: float = 0.2
    ) -> None:
        self.workers = default_workers() if workers is None else whole_number("workers", workers, 1)
        self.max_pending = whole_number("max_pending", max_pending, 1)
        self.time_slice = number("time_slice", time_slice, "seconds >= 0", lambda v: v >= 0)
        self._queues: dict[str, deque[Request]] = {}  # per tenant: requests ready to step
        self._turns: deque[str] = deque()  # tenants with a ready request, in turn order
        self._live: set[Request] = set()  # submitted and not finished
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"borda-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, tenant: str, steps: Steps, on_finish: Callable[[Request], None] | None = None
    ) -> Request:
        """Queue a request; on_finish(request) runs once it ends, however it ends."""
        request = Request(tenant, steps, on_finish)
        with self._cond:
            if self._closed:
                raise BordaError("the host is closed; create a new one")
            if len(self._live) >= self.max_pending:
                raise QuotaExceeded(
                    f"tenant {tenant!r}: the host's queue is full ({self.max_pending} requests "
                    "pending); try again later"
                )
            self._live.add(request)
            self._ready(request)
        return request

    def close(self) -> None:
        """Cancel what is pending and stop the workers once their current steps end."""
        with self._cond:
            self._closed = True
            for request in self._live:  # queued or running: each stops at its next step
                request.cancel()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    @property
    def pending(self) -> int:
        return len(self._live)

    def _ready(self, request: Request) -> None:
        queue = self._queues.setdefault(request.tenant, deque())
        if not queue:
            self._turns.append(request.tenant)
        queue.append(request)
        self._cond.notify()

    def _take(self) -> Request | None:
        with self._cond:
            self._cond.wait_for(lambda: self._turns or (self._closed and not self._live))
            if not self._turns:
                return None
            tenant = self._turns.popleft()
            queue = self._queues[tenant]
            request = queue.popleft()
            if queue:
                self._turns.append(tenant)
            return request

    def _work(self) -> None:
        while (request := self._take()) is not None:
            start = time.perf_counter()
            while (more := request._step()) and time.perf_counter() - start < self.time_slice:
                pass  # keep the worker on this session's Store for its time slice
            with self._cond:
                if more:
                    self._ready(request)
                else:
                    self._live.discard(request)
                    self._cond.notify_all()
