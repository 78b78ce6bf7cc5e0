"""A scan worker process: ``python -m egress_gateway.detection.worker`` (started by ``workers.py``).

Reads framed messages on stdin and answers on stdout (the protocol's own descriptor; anything a
library prints goes to stderr, i.e. the gateway's log):

- ``("engine", id, settings JSON)`` -> ``("built", id, None | error)``: a `ChunkAnalyzer` for
  those detection settings (the spaCy model loads once per process, on the first engine);
- ``("analyze", call, engine, deadline, jobs, pem texts, part)`` -> ``("done", call, findings,
  pem findings)`` or ``("failed", call, "deadline" | "error", what)`` (`part`: ``all``, or
  ``names`` / ``patterns`` of chunks shared by two workers): run by one of `THREADS` threads,
  within the absolute ``time.monotonic()`` deadline (system-wide, so the gateway's).

At the end of its input (the gateway stopped, or died) the process exits. Errors are reported
by type only: texts and values never leave in a message or a log line.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
import time
from collections import OrderedDict

THREADS = 4  # concurrent calls: their NER texts share spaCy batches (nlp.py's group commit)
WARM_UP = "Warm-up: Jane Roe wrote to jane.roe@example.com today."


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    inp = sys.stdin.buffer

    from egress_gateway.detection.budget import DeadlineExceeded, deadline
    from egress_gateway.detection.chunkanalysis import ChunkAnalyzer
    from egress_gateway.detection.settings import DetectionSettings
    from egress_gateway.detection.workers import MAX_ENGINES, read_frame, write_frame

    write_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with write_lock:
            try:
                write_frame(out, msg)
            except OSError:  # the gateway is gone: nothing to tell it
                os._exit(0)

    engines: OrderedDict[int, ChunkAnalyzer] = OrderedDict()
    read_lock = threading.Lock()

    def analyze(cid, eid, at, jobs, pem_texts, part) -> None:
        try:
            if at is not None and time.monotonic() > at:
                raise DeadlineExceeded("not started: the time budget is spent")
            analyzer = engines.get(eid)
            if analyzer is None:
                raise LookupError(f"engine {eid} is not built here")
            with deadline(at=at) if at is not None else contextlib.nullcontext():
                found, pem = analyzer.run(jobs, pem_texts, part)
            send(("done", cid, found, pem))
        except DeadlineExceeded:
            send(("failed", cid, "deadline", ""))
        except Exception as e:  # noqa: BLE001 - reported by type, never with text
            send(("failed", cid, "error", type(e).__name__))

    def build(eid, settings_json) -> None:
        try:
            analyzer = ChunkAnalyzer(DetectionSettings.model_validate_json(settings_json))
            # spaCy's first call initialises lazily (~150 ms): not on a real request
            analyzer.run([(WARM_UP, WARM_UP, True, None)], [])
            engines[eid] = analyzer
            while len(engines) > MAX_ENGINES:
                engines.popitem(last=False)
            send(("built", eid, None))
        except Exception as e:  # noqa: BLE001 - e.g. a model that is not installed
            send(("built", eid, f"{type(e).__name__}: {e}"))

    def serve() -> None:
        """Leader/followers: the thread that reads a message handles it (no hand-over to
        another thread: ~0.1 ms less per call) while the next idle thread reads on. The
        gateway sends calls for an engine only after every worker said it is built."""
        while True:
            with read_lock:
                msg = read_frame(inp)
            if msg is None:  # the end of our input: the gateway stopped, or died
                os._exit(0)
            if msg[0] == "engine":
                build(*msg[1:])
            elif msg[0] == "analyze":
                analyze(*msg[1:])

    for i in range(1, THREADS):
        threading.Thread(target=serve, name=f"scan-{i}", daemon=True).start()
    send(("ready", os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    serve()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):  # the gateway is gone: nothing to tell it
        os._exit(0)
