"""The recording files: one per (date, session), opened new (never appended to), rotated by size."""

from __future__ import annotations

import io
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)

MAX_OPEN_FILES = 64


class RecordingError(OSError):
    """A flow could not be recorded (no directory, or recording has failed)."""


def probe(root: Path) -> None:
    """Raise OSError unless `root` can be created and written (and synced)."""
    root.mkdir(parents=True, exist_ok=True)
    p = root / f".probe-{os.getpid()}"
    with open(p, "wb", buffering=0) as fh:
        fh.write(b"probe")
        os.fsync(fh.fileno())
    p.unlink()


def file_name(session_id: str, part: int) -> str:
    """The name of part `part` of a session's recording (part 0: ``<session>.mitm``)."""
    return f"{session_id}.mitm" if part == 0 else f"{session_id}.{part}.mitm"


class RecordingFiles:
    """Open recording files, one per (date, session); rotation by size; new files only."""

    def __init__(self, root: Path, max_bytes: int, fsync: bool) -> None:
        self.root, self.max_bytes, self.fsync = root, max_bytes, fsync
        self._open: OrderedDict[tuple[str, str], tuple[io.FileIO, Path]] = OrderedDict()
        self._next_part: dict[tuple[str, str], int] = {}
        self._rel: dict[Path, str] = {}  # open file -> its path relative to root (audit lines)

    def _new_file(self, date: str, sid: str) -> tuple[io.FileIO, Path]:
        directory = self.root / date
        directory.mkdir(parents=True, exist_ok=True)
        part = self._next_part.get((date, sid), 0)
        while True:
            path = directory / file_name(sid, part)
            try:
                fh = open(path, "xb", buffering=0)  # noqa: SIM115 - kept open across flows
            except FileExistsError:
                part += 1
                continue
            self._next_part[(date, sid)] = part + 1
            return fh, path

    def append(self, sid: str, data: bytes, now: float) -> tuple[str, int, bool]:
        """Write `data` for session `sid`; (path relative to root, offset, whether rotated)."""
        date = time.strftime("%Y-%m-%d", time.gmtime(now))
        key = (date, sid)
        rotated = False
        entry = self._open.get(key)
        if entry is not None:
            st = os.fstat(entry[0].fileno())
            if st.st_nlink == 0:
                log.error(f"egress gateway: recording {entry[1]} was removed while open; "
                          "continuing in a new file")
                self._close(key)
                entry = None
            elif self.max_bytes and st.st_size and st.st_size + len(data) > self.max_bytes:
                self._close(key)
                entry, rotated = None, True
        if entry is None:
            entry = self._new_file(date, sid)
            self._open[key] = entry
            while len(self._open) > MAX_OPEN_FILES:
                self._close(next(iter(self._open)))
        self._open.move_to_end(key)
        fh, path = entry
        rel = self._rel.get(path)
        if rel is None:
            rel = self._rel[path] = str(path.relative_to(self.root))
        offset = os.fstat(fh.fileno()).st_size
        view = memoryview(data)
        try:
            written = fh.write(view)  # one write() of the whole serialised flow
            while written is not None and written < len(view):  # short write: keep going
                view = view[written:]
                written = fh.write(view)
            if self.fsync:
                os.fsync(fh.fileno())
        except OSError:
            self._close(key)  # never append after a partial flow: the next write opens a new file
            raise
        return rel, offset, rotated

    def sync_all(self) -> None:
        """fsync every open recording (the batched sync when per-flow fsync is off)."""
        for fh, path in list(self._open.values()):
            try:
                os.fsync(fh.fileno())
            except (OSError, ValueError):  # closed meanwhile: it was synced when it closed
                log.debug(f"egress gateway: could not sync {path}", exc_info=True)

    def _close(self, key) -> None:
        entry = self._open.pop(key, None)
        if entry is not None:
            self._rel.pop(entry[1], None)
            try:
                entry[0].close()
            except OSError:
                log.exception(f"egress gateway: closing recording {entry[1]} failed")

    def close(self) -> None:
        for key in list(self._open):
            self._close(key)
