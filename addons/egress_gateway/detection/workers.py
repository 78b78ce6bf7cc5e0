"""Scan worker processes: analysis (spaCy NER + Presidio) beside mitmproxy's event loop.

`WorkerPool` starts ``gateway_scan_workers`` processes with ``python -m
egress_gateway.detection.worker`` (a fresh interpreter: never a fork of mitmproxy, which would
copy client sockets and the CA key) and supervises them itself:

- each worker loads the spaCy model once and builds a `ChunkAnalyzer` per detection settings
  the gateway registers (`register`: on policy load and reload, waited for before the gateway
  says it is ready);
- the gateway process keeps the findings cache, planning and rewriting (``engine.py``); only
  planned chunks (plain strings) and findings (plain tuples) cross the pipes;
- a call goes to the least-loaded worker; a call of many chunks is split across workers, so
  one large body uses every core;
- a worker that exits fails its calls at once (`WorkerError`: the flows are refused) and is
  replaced; one that answers nothing past a call's deadline (plus `HANG_GRACE`) is killed and
  replaced. Replacements back off while workers keep dying.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from egress_gateway.detection.budget import DeadlineExceeded, current_deadline, current_patience

log = logging.getLogger(__name__)

HEADER = struct.Struct("<I")  # frame length; a frame is one pickled tuple of plain data
HANG_GRACE = 3.0  # seconds past a call's deadline before its worker counts as hung
START_TIMEOUT = 120.0  # seconds a worker may take to start and build its engines
NO_DEADLINE = 600.0  # a call without a deadline (tools, tests) waits at most this long
SPLIT_CHARS = 8_000  # a call is split across workers in slices of at least this many chars
SHARE_CHARS = 1_000  # a smaller call with NER shares its chunks with an idle second worker
MAX_ENGINES = 16  # detection settings kept (policy reloads: the newest few)
MAX_BACKOFF = 30.0


class WorkerError(RuntimeError):
    """A scan worker died, was killed as hung, or failed a call: the flow is refused."""


def _frame(msg: tuple) -> bytes:
    data = pickle.dumps(msg, protocol=5)
    return HEADER.pack(len(data)) + data


def read_frame(stream) -> tuple | None:
    """The next message on `stream`, or None at its end."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def write_frame(stream, msg: tuple) -> None:
    stream.write(_frame(msg))
    stream.flush()


def _package_root() -> str:
    import egress_gateway

    return str(Path(egress_gateway.__file__).resolve().parent.parent)


class _Worker:
    """One worker process, its pipes, and the calls it has not answered yet."""

    def __init__(self, index: int) -> None:
        self.index = index
        env = dict(os.environ)
        root = _package_root()  # the same package the gateway runs, wherever it is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "egress_gateway.detection.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env,
            start_new_session=True,  # a terminal's Ctrl-C stops the gateway, which stops us
        )
        self.pid = self.proc.pid
        self.lock = threading.Lock()
        self.calls: dict[int, tuple[Future, int]] = {}  # call id -> (future, characters)
        self.builds: dict[int, Future] = {}  # engine id -> built
        self.load = 0  # characters of the calls not answered yet
        self.ready: Future = Future()  # the worker has started (its imports are done)
        self.alive = False  # ready and every registered engine built: takes calls
        self.lost = False
        self.rss_kb = 0
        self._reader = threading.Thread(target=self._read, name=f"gateway-scan-worker-{index}",
                                        daemon=True)
        self._reader.start()

    def send(self, msg: tuple) -> None:
        data = _frame(msg)
        with self.lock:
            if self.lost:
                raise WorkerError(f"scan worker {self.index} is gone")
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (OSError, ValueError) as e:
                raise WorkerError(f"scan worker {self.index} is gone ({type(e).__name__})") from None

    def _read(self) -> None:
        try:
            while True:
                msg = read_frame(self.proc.stdout)
                if msg is None:
                    break
                self._handle(msg)
        except Exception as e:  # noqa: BLE001 - a broken pipe or frame: the worker is lost
            log.error(f"egress gateway: scan worker {self.index}: bad message "
                      f"({type(e).__name__}); replacing it")
            self.kill()
        self._lose()

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            self.rss_kb = msg[2]
            self.ready.set_result(msg[1])
        elif kind == "built":
            with self.lock:
                fut = self.builds.pop(msg[1], None)
            if fut is not None:
                if msg[2] is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(WorkerError(msg[2]))
        elif kind in ("done", "failed"):
            with self.lock:
                fut, size = self.calls.pop(msg[1], (None, 0))
                self.load -= size
            if fut is None:
                return
            if kind == "done":
                fut.set_result((msg[2], msg[3]))
            elif msg[2] == "deadline":
                fut.set_exception(DeadlineExceeded("analysis stopped: the time budget is spent"))
            else:
                fut.set_exception(WorkerError(f"scan worker {self.index} failed: {msg[3]}"))

    def _lose(self) -> None:
        with self.lock:
            self.lost = True
            self.alive = False
            calls, self.calls = self.calls, {}
            builds, self.builds = self.builds, {}
            self.load = 0
        code = self.proc.poll()
        err = WorkerError(f"scan worker {self.index} (pid {self.pid}) exited"
                          + (f" with {code}" if code is not None else ""))
        for fut, _ in calls.values():
            fut.set_exception(err)
        for fut in builds.values():
            fut.set_exception(err)
        if not self.ready.done():
            self.ready.set_exception(err)
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def call(self, cid: int, msg: tuple, size: int) -> Future:
        fut: Future = Future()
        with self.lock:
            self.calls[cid] = (fut, size)
            self.load += size
        try:
            self.send(msg)
        except WorkerError:
            with self.lock:
                if self.calls.pop(cid, None) is not None:
                    self.load -= size
            raise
        return fut

    def build(self, eid: int, settings_json: str) -> Future:
        fut: Future = Future()
        with self.lock:
            self.builds[eid] = fut
        self.send(("engine", eid, settings_json))
        return fut

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self, wait: float = 2.0) -> None:
        with self.lock:
            self.lost = True
            self.alive = False
        try:
            self.proc.stdin.close()  # the worker exits at the end of its input
        except OSError:
            pass
        if wait <= 0:
            return
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()


class WorkerPool:
    """``size`` supervised scan worker processes (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.generation = next(_generations)  # engines are cached per pool (never by id())
        self._lock = threading.Lock()
        self._engines: OrderedDict[str, int] = OrderedDict()  # settings JSON -> engine id
        self._ids = itertools.count(1)
        self._workers: list[_Worker] = []
        self._closed = False
        self._failures: list[float] = []  # when workers were lost (for the back-off)
        self.replaced = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every worker and wait until each has started (in parallel)."""
        workers = [_Worker(i) for i in range(self.size)]
        self._workers = workers
        try:
            for w in workers:
                w.ready.result(timeout)
                w.alive = True
        except Exception as e:
            self.close()
            raise WorkerError(f"the scan workers did not start: {e}") from None
        for w in workers:
            threading.Thread(target=self._watch, args=(w,), daemon=True).start()
        log.info(f"egress gateway: {self.size} scan worker process(es) started "
                 f"(pids {', '.join(str(w.pid) for w in workers)})")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, wait: float = 2.0) -> None:
        """Stop every worker: the end of its input, then (after `wait` s in all) a kill."""
        self._closed = True
        workers = list(self._workers)
        for w in workers:
            w.stop(0)
        end = time.monotonic() + wait
        for w in workers:
            try:
                w.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.proc.wait()

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if not w.lost]

    # -- engines ------------------------------------------------------------------------
    def register(self, settings_json: str, timeout: float = START_TIMEOUT) -> int:
        """The engine id of these detection settings; built on every worker (waited for)."""
        with self._lock:
            eid = self._engines.get(settings_json)
            if eid is not None:
                self._engines.move_to_end(settings_json)
                return eid
            eid = next(self._ids)
            self._engines[settings_json] = eid
            while len(self._engines) > MAX_ENGINES:
                self._engines.popitem(last=False)
            workers = [w for w in self._workers if w.alive]
        if not workers:
            raise WorkerError("no scan worker is running")
        futs = [w.build(eid, settings_json) for w in workers]
        try:
            for f in futs:
                f.result(timeout)
        except Exception as e:
            with self._lock:
                self._engines.pop(settings_json, None)
            raise WorkerError(f"{e}") from None
        return eid

    # -- calls --------------------------------------------------------------------------
    def run(self, eid: int, jobs: list, pem_texts: list[str]) -> tuple[list, list]:
        """Findings per job and per PEM text (see ``chunkanalysis.ChunkAnalyzer.run``), within
        this thread's deadline. Raises `DeadlineExceeded` or `WorkerError`."""
        at, patience = current_deadline(), current_patience()
        live = sorted((w for w in self._workers if w.alive), key=lambda w: w.load)
        if not live:
            raise WorkerError("no scan worker is running (being replaced)")
        sizes = [len(j[0]) for j in jobs]
        total = sum(sizes)
        parts = max(1, min(len(live), len(jobs), total // SPLIT_CHARS))
        slices = _split(sizes, parts)
        sent: list[tuple[_Worker, Future, int, int]] = []
        if (len(slices) == 1 and len(live) > 1 and live[1].load == 0 and total >= SHARE_CHARS
                and any(j[2] for j in jobs)):
            # One chunk or a few, NER among them, and a second worker idle: NER and the name
            # recognizers on one, every other recognizer on the other, at the same time.
            for k, part in enumerate(("names", "patterns")):
                w = live[k]
                cid = next(self._ids)
                msg = ("analyze", cid, eid, at, jobs, pem_texts if k else [], part)
                sent.append((w, w.call(cid, msg, total if k == 0 else total // 4), 0, len(jobs)))
            slices = []
        for k, (lo, hi) in enumerate(slices):
            w = live[k]
            cid = next(self._ids)
            msg = ("analyze", cid, eid, at, jobs[lo:hi], pem_texts if k == 0 else [], "all")
            sent.append((w, w.call(cid, msg, sum(sizes[lo:hi])), lo, hi))
        if not sent:  # PEM texts only
            cid = next(self._ids)
            w = live[0]
            sent.append((w, w.call(cid, ("analyze", cid, eid, at, [], pem_texts, "all"), 0), 0, 0))
        found: list = [[] for _ in jobs]
        pem: list = []
        for w, fut, lo, _ in sent:
            grace = HANG_GRACE if patience is None else patience
            wait = (at - time.monotonic() + grace) if at is not None else NO_DEADLINE
            try:
                got, got_pem = fut.result(max(0.0, wait))
            except FutureTimeout:
                if patience is not None:  # the caller gives up; the worker may just be busy
                    raise DeadlineExceeded("analysis stopped: the time budget is spent") from None
                log.error(f"egress gateway: scan worker {w.index} (pid {w.pid}) is past a "
                          f"call's deadline by {HANG_GRACE:g} s; killing and replacing it")
                w.kill()
                raise DeadlineExceeded("analysis stopped: the scan worker hung") from None
            for i, got_i in enumerate(got, lo):  # shared chunks: both parts' findings
                found[i] = found[i] + list(got_i)
            pem = pem or got_pem
        return found, pem

    # -- supervision --------------------------------------------------------------------
    def _watch(self, w: _Worker) -> None:
        w.proc.wait()
        w._reader.join()
        if self._closed:
            return
        log.error(f"egress gateway: scan worker {w.index} (pid {w.pid}) exited with "
                  f"{w.proc.returncode}; its scans were refused; starting a replacement")
        self._failures = [t for t in self._failures if time.monotonic() - t < 60] + [time.monotonic()]
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (len(self._failures) - 1)) if len(self._failures) > 1 else 0
        while not self._closed:
            time.sleep(delay)
            try:
                new = self._start_one(w.index)
            except Exception as e:  # noqa: BLE001
                log.error(f"egress gateway: scan worker {w.index} could not be replaced: {e}")
                delay = min(MAX_BACKOFF, max(1.0, delay * 2))
                continue
            if self._closed:
                new.stop()
                return
            self.replaced += 1
            log.info(f"egress gateway: scan worker {w.index} replaced (pid {new.pid})")
            threading.Thread(target=self._watch, args=(new,), daemon=True).start()
            return

    def _start_one(self, index: int) -> _Worker:
        """A new worker in slot `index`, taking calls once it has built every registered
        engine (one registered meanwhile is built too before it takes calls)."""
        w = _Worker(index)
        built: set[int] = set()
        try:
            w.ready.result(START_TIMEOUT)
            while True:
                with self._lock:
                    todo = [(js, eid) for js, eid in self._engines.items() if eid not in built]
                    if not todo:
                        w.alive = True
                        self._workers[index] = w
                        return w
                for fut in [w.build(eid, js) for js, eid in todo]:
                    fut.result(START_TIMEOUT)
                built.update(eid for _, eid in todo)
        except Exception:
            w.stop(0)
            w.kill()
            raise


def _split(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (lo, hi) slices of `sizes` with about equal sums (none empty)."""
    if not sizes:
        return []
    parts = max(1, min(parts, len(sizes)))
    total = sum(sizes)
    out, lo, acc = [], 0, 0
    for i, s in enumerate(sizes):
        acc += s
        left = parts - len(out) - 1  # slices still to make after this one
        if left > 0 and acc >= total * (len(out) + 1) / parts and len(sizes) - i - 1 >= left:
            out.append((lo, i + 1))
            lo = i + 1
    out.append((lo, len(sizes)))
    return out


# --- the process-wide pool (sized by the redact addon, started on first use) ----------------------
_generations = itertools.count(1)
_size = 0
_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def configure(size: int) -> None:
    """Run `size` scan workers (0: none, analysis in this process). They start when the first
    engine is built (a policy that scans nothing starts none); a changed size stops the pool."""
    global _size, _pool
    with _pool_lock:
        _size = size
        if _pool is not None and _pool.size != size:
            _pool.close()
            _pool = None


def current() -> WorkerPool | None:
    """The running pool (started now if it should run), or None: analysis runs in this
    process. Raises `WorkerError` if the workers cannot start."""
    global _pool
    with _pool_lock:
        if _size > 0 and (_pool is None or _pool.closed):
            pool = WorkerPool(_size)
            pool.start()
            _pool = pool
        return _pool if _size > 0 else None


def running() -> WorkerPool | None:
    """The pool if it runs now (never starts one)."""
    with _pool_lock:
        return _pool if _pool is not None and not _pool.closed else None


def size() -> int:
    """The configured number of scan workers (0: analysis in this process)."""
    return _size


def shutdown() -> None:
    """Stop the workers (the addon's done); a later engine starts them again if sized."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None
