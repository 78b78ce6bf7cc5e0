"""Keep raw traffic out of the gateway's log.

mitmproxy's protocol errors quote what they could not parse (``Bad HTTP request line:
b'GET /?token=...'``, ``unexpected server response: b'<html>...'``): bytes from the agent or
an upstream that no scanner has seen. The filter replaces every quoted bytes literal in a log
record with its length, and cuts the exception lines of tracebacks to their type. It sits on
the root logger's handlers, so it sees every record.
"""

from __future__ import annotations

import logging
import re

_BYTES_LITERAL = re.compile(r"""(?<![A-Za-z0-9_])(?:b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")""")


def scrub(message: str) -> str:
    """`message` with each ``b'...'`` literal replaced by ``<N characters withheld>``."""
    return _BYTES_LITERAL.sub(lambda m: f"<{len(m.group()) - 3} characters withheld>", message)


# Exceptions whose text the gateway or mitmproxy wrote about configuration, never traffic.
OWN_MESSAGES = frozenset({"OptionsError", "PolicyError", "AddonManagerError", "ScriptError",
                          "ModuleNotFoundError", "ImportError", "SyntaxError"})


def scrub_traceback(text: str) -> str:
    """A formatted traceback with bytes literals withheld and each exception line (``Name:
    message``) cut to its type: the frames stay, the quoted data does not."""
    out = []
    for line in scrub(text).splitlines():
        if line and not line.startswith((" ", "Traceback", "During handling", "The above")):
            name, sep, _ = line.partition(":")
            if sep and name.replace(".", "").replace("_", "").isalnum() \
                    and name.rsplit(".", 1)[-1] not in OWN_MESSAGES:
                line = f"{name}: <message withheld>"
        out.append(line)
    return "\n".join(out)


class RawBytesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own error handling
            return True
        if "b'" in message or 'b"' in message:
            record.msg, record.args = scrub(message), None
        if record.exc_info or record.exc_text:
            # A traceback quotes the exception's text (a parser's error quotes the bytes), and
            # mitmproxy's formatter formats exc_info itself: the scrubbed traceback joins the
            # message and the exception leaves the record.
            tb = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.msg = f"{record.getMessage()}\n{scrub_traceback(tb)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def install() -> None:
    """Add the filter to every handler of the root logger (once per handler)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RawBytesFilter) for f in handler.filters):
            handler.addFilter(RawBytesFilter())
