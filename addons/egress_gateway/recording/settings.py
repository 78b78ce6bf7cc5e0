"""The recorder's options (recordings directory, rotation, fsync, the audit chain's key) and their parsers."""

from __future__ import annotations

import os
import re
from pathlib import Path

from egress_gateway.locations import RECORDINGS

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_HMAC_ENV = "GATEWAY_AUDIT_HMAC_KEY"
SYNC_SECONDS = 1.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The options that change where and how flows are recorded.
FILE_OPTIONS = frozenset({"gateway_recordings", "gateway_recording_max_bytes",
                          "gateway_recording_fsync", "gateway_audit_log"})


def add_options(loader) -> None:
    """The recording options (the audit log's own options are Core's)."""
    loader.add_option(
        "gateway_recordings", str, "",
        "Directory of the flow recordings: YYYY-MM-DD/<session>.mitm (mitmproxy format). "
        f"Default: the audit log's directory ({RECORDINGS}).",
    )
    loader.add_option(
        "gateway_recording_max_bytes", int, DEFAULT_MAX_BYTES,
        "Start a new recording file for a session when the current one would exceed this "
        "size (bytes; 0: never).",
    )
    loader.add_option(
        "gateway_recording_fsync", bool, False,
        "fsync each recorded flow and audit line before the flow's answer goes on (survives "
        "power loss with no window, at ~7 ms per flow). Off: each flow is written with one "
        "write() when it completes (nothing lost to kill -9) and synced to disk in the "
        f"background every {SYNC_SECONDS:g} s (power loss loses at most that window).",
    )


def add_hmac_option(loader) -> None:
    """``gateway_audit_hmac_env`` (loaded by Core, which keys the audit log)."""
    loader.add_option(
        "gateway_audit_hmac_env", str, DEFAULT_HMAC_ENV,
        "Environment variable holding the key of the audit log's HMAC chain; unset or empty: "
        "plain SHA-256 chain.",
    )


def parse_max_bytes(value: int) -> int:
    """The rotation size in bytes; 0 disables rotation by size."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"gateway_recording_max_bytes must be a size in bytes >= 0, not {value!r}")
    return value


def parse_hmac_env(name: str, environ=os.environ) -> bytes | None:
    """The HMAC key from the environment variable `name`; None if unset/empty (unkeyed chain)."""
    if not name:
        return None
    if not _ENV_NAME.match(name):
        raise ValueError(f"gateway_audit_hmac_env must name an environment variable, not {name!r}")
    value = environ.get(name)
    return value.encode() if value else None


def recordings_dir(option: str, audit_log: str) -> Path:
    """The recordings directory: the option, else the audit log's directory."""
    if option:
        return Path(option).expanduser()
    return Path(audit_log).expanduser().parent if audit_log else RECORDINGS
