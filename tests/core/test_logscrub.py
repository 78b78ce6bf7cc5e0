"""Raw bytes quoted by mitmproxy's protocol errors never reach the gateway's log."""

import logging

import pytest
from egress_gateway.logscrub import RawBytesFilter, scrub

CASES = [
    ("request line", "Bad HTTP request line: b'GET /?token=sk-live-1 HTTP/1.1'",
     "Bad HTTP request line: <30 characters withheld>"),
    ("double quotes and escapes", 'bad: b"x\\"y" end', "bad: <4 characters withheld> end"),
    ("two literals", "b'a' and b'bc'", "<1 characters withheld> and <2 characters withheld>"),
    ("no literal", "client connect", "client connect"),
    ("word ending in b", "the club'member' stays", "the club'member' stays"),
]


@pytest.mark.parametrize("message,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_scrub(message, expected):
    assert scrub(message) == expected


def test_filter_rewrites_formatted_records():
    rec = logging.LogRecord("mitmproxy", logging.INFO, __file__, 1,
                            "error: %s", (b"secret=hunter2",), None)
    assert RawBytesFilter().filter(rec) is True
    assert rec.getMessage() == "error: <14 characters withheld>"


TRACEBACKS = [
    ("exception text withheld",
     "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
     "AssertionError: got ResponseData(data=bytearray(b'RAW:219-09-9999'))",
     "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
     "AssertionError: <message withheld>"),
    ("dotted exception name",
     "mitmproxy.exceptions.TlsException: SNI 219-09-9999.example.com",
     "mitmproxy.exceptions.TlsException: <message withheld>"),
    ("the gateway's own configuration errors stay readable",
     "mitmproxy.exceptions.OptionsError: cannot write recordings to /x",
     "mitmproxy.exceptions.OptionsError: cannot write recordings to /x"),
    ("chained", "ValueError: a\n\nDuring handling of the above exception, another exception "
     "occurred:\n\nKeyError: 'k'",
     "ValueError: <message withheld>\n\nDuring handling of the above exception, another "
     "exception occurred:\n\nKeyError: <message withheld>"),
]


@pytest.mark.parametrize("tb,expected", [c[1:] for c in TRACEBACKS], ids=[c[0] for c in TRACEBACKS])
def test_scrub_traceback(tb, expected):
    from egress_gateway.logscrub import scrub_traceback

    assert scrub_traceback(tb) == expected


def test_filter_folds_a_scrubbed_traceback_into_the_message():
    try:
        raise ValueError("unserializable object: bytearray(b'219-09-9999')")
    except ValueError as e:
        info = (type(e), e, e.__traceback__)
    rec = logging.LogRecord("mitmproxy", logging.ERROR, __file__, 1, "crashed %s", ("!",), info)
    assert RawBytesFilter().filter(rec) is True
    assert rec.exc_info is None and rec.exc_text is None
    text = logging.Formatter().format(rec)
    assert text.startswith("crashed !\nTraceback") and "ValueError: <message withheld>" in text
    assert "219-09-9999" not in text
