"""Keep raw traffic out of the gateway's log.

mitmproxy's protocol errors quote what they could not parse (``Bad HTTP request line:
b'GET /?token=...'``, ``unexpected server response: b'<html>...'``): bytes from the agent or
an upstream that no scanner has seen. The filter replaces every quoted bytes literal in a log
record with its length. It sits on the root logger's handlers, so it sees every record.
"""

from __future__ import annotations

import logging
import re

_BYTES_LITERAL = re.compile(r"""(?<![A-Za-z0-9_])(?:b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")""")


def scrub(message: str) -> str:
    """`message` with each ``b'...'`` literal replaced by ``<N characters withheld>``."""
    return _BYTES_LITERAL.sub(lambda m: f"<{len(m.group()) - 3} characters withheld>", message)


class RawBytesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own error handling
            return True
        if "b'" in message or 'b"' in message:
            record.msg, record.args = scrub(message), None
        return True


def install() -> None:
    """Add the filter to every handler of the root logger (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RawBytesFilter) for f in handler.filters):
            handler.addFilter(RawBytesFilter())
