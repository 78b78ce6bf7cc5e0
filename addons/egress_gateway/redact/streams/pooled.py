"""A response stream's analysis on the scan pool, off mitmproxy's event loop.

`PooledStream` is the ``flow.response.stream`` callable; it wraps a stream redactor
(`StreamRedactor`, `NdjsonRedactor`), which then only ever runs on a pool thread, one chunk at
a time and in order (one job per flow at a time). Each call hands the chunk over and returns
what the worker has released so far: a list (possibly empty), never ``b""`` before the end
(that would end a chunked answer). Until the stream's first output it waits up to
`first_wait` for the worker (the first event is not delayed by a chunk interval); later calls
wait at most `wait`. The end (``b""``) waits for the worker, at most `end_wait` seconds (the
event loop waits with it) and within the budget, and flushes; a worker still busy then ends the
stream with the error chunk.

Budget: every chunk is analysed within `timeout` seconds of being handed over (the engine's
`deadline` stops the analysis between batches; a worker stuck inside one is given up from the
loop's side). A chunk past its budget, a failing worker or a pool that refuses the job ends
the stream with the wrapped redactor's error chunk (`error_chunk`): what was released before
is sent, nothing unscanned ever is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from egress_gateway.detection.engine import deadline

Submit = Callable[[Callable[[], None]], Future]


class PooledStream:
    """Runs `inner` (a stream redactor callable) on the scan pool via `submit`."""

    first_wait = 0.05  # seconds the first output may be awaited on the loop
    wait = 0.002  # later calls: about a thread hand-off
    end_wait = 2.0  # the end: the loop (every flow) waits this long at most

    def __init__(self, inner, submit: Submit, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.submit = submit
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._todo: deque[tuple[bytes, float]] = deque()  # (chunk, handed over at)
        self._current: float | None = None  # the chunk being analysed: handed over at
        self._out: list[bytes] = []  # released by the worker, not yet returned
        self._idle = threading.Event()
        self._idle.set()
        self._running = False
        self._given_up = False  # the loop gave up on the worker: its output is dropped
        self._released = False
        self._failure: str | None = None
        self.ended = False

    # -- the worker (a pool thread) --------------------------------------------------------
    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._todo or self._given_up:
                    self._running = False
                    self._current = None
                    self._idle.set()
                    return
                chunk, self._current = self._todo.popleft()
            try:
                with deadline(at=self._current + self.timeout):
                    res = self.inner(chunk)  # the redactor fails closed on its own errors
                parts = [res] if isinstance(res, bytes) else list(res)
            except BaseException as e:  # noqa: BLE001 - never leave the stream hanging
                parts = []
                with self._lock:  # nothing after a failure is analysed or released
                    self._failure = self._failure or f"{type(e).__name__}: {e}"
                    self._given_up = True
            with self._lock:
                if not self._given_up:
                    self._out.extend(p for p in parts if p)

    # -- mitmproxy's stream interface (the event loop) -----------------------------------------
    def _fail(self, reason: str) -> list[bytes]:
        with self._lock:
            self._given_up = True
            self._failure = self._failure or reason
            out, self._out = self._out, []
        self.ended = True
        return out + [self.inner.error_chunk("the gateway stopped this stream: it could not "
                                             "be scanned in time")]

    def _overdue(self, now: float) -> bool:
        with self._lock:
            since = self._current if self._current is not None else (
                self._todo[0][1] if self._todo else None)
        return since is not None and now > since + self.timeout

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        if self.ended:
            return b"" if not chunk else []
        now = self.clock()
        with self._lock:
            self._todo.append((chunk, now))
            self._idle.clear()
            start = not self._running
            self._running = True
        if start:
            try:
                self.submit(self._drain)
            except Exception as e:  # the pool is shut down or broken
                with self._lock:
                    self._running = False
                out = self._fail(f"scan pool unavailable: {type(e).__name__}")
                return b"".join(out) if not chunk else out
        if not chunk:  # the end: everything handed over is analysed within its budget
            with self._lock:
                oldest = self._current if self._current is not None else now
            self._idle.wait(min(self.end_wait, max(0.0, oldest + self.timeout - self.clock())))
        else:
            self._idle.wait(self.wait if self._released else self.first_wait)
        if self._failure is not None or (not self._idle.is_set() and
                                         (not chunk or self._overdue(self.clock()))):
            late = (f"TimeoutError: the stream's scan exceeded {self.timeout:g} s"
                    if chunk or self._overdue(self.clock()) else
                    f"TimeoutError: the stream's end was not scanned within {self.end_wait:g} s")
            out = self._fail(self._failure or late)
            return b"".join(out) if not chunk else out
        with self._lock:
            out, self._out = self._out, []
        if self.inner.failed:  # the redactor ended the stream (its error chunk is in `out`)
            self.ended = True
        if not chunk:
            self.ended = True
            return b"".join(out)
        self._released = self._released or bool(out)
        return out

    # -- what the addon records -------------------------------------------------------------
    @property
    def failed(self) -> str | None:
        return self._failure or self.inner.failed

    def _stat(self, name: str):
        value = getattr(self.inner, name)
        if not isinstance(value, dict):
            return value
        for _ in range(5):  # a worker given up on may still be writing to it
            try:
                return dict(value)
            except RuntimeError:
                continue
        return {}

    @property
    def counts(self) -> dict:
        return self._stat("counts")

    @property
    def events(self) -> int:
        return self._stat("events")

    @property
    def restored(self) -> int:
        return self._stat("restored")

    @property
    def unknown_tokens(self) -> int:
        return self._stat("unknown_tokens")
