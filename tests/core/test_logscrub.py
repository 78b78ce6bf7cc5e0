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
