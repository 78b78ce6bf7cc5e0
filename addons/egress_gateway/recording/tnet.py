"""A faster tnetstring encoder, byte-for-byte identical to `mitmproxy.io.tnetstring.dumps`.

mitmproxy's encoder builds the output last-chunk-first in a deque, a few hundred small Python
calls per flow; serialising every flow was a third of the recorder's CPU time. This one encodes
each value to bytes directly (leaves with one %-format) and joins containers once. A test
compares both on recorded flows of every kind.
"""

from __future__ import annotations


class Encoded:
    """A value `dumps` already encoded: spliced in as it is (a reused connection state)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def dumps(value) -> bytes:
    """`value` (None, bool, int, float, bytes, str, list, tuple, dict) as a tnetstring."""
    return _enc(value)


def _enc(v) -> bytes:
    t = type(v)
    if t is bytes:
        return b"%d:%s," % (len(v), v)
    if t is str:
        data = v.encode("utf8")
        return b"%d:%s;" % (len(data), data)
    if v is None:
        return b"0:~"
    if v is True:
        return b"4:true!"
    if v is False:
        return b"5:false!"
    if t is Encoded:
        return v.data
    if t is dict:  # mitmproxy's encoder emits the items last to first
        body = b"".join([_enc(k) + _enc(x) for k, x in reversed(v.items())])
        return b"%d:%s}" % (len(body), body)
    if t is list or t is tuple:
        body = b"".join([_enc(x) for x in v])
        return b"%d:%s]" % (len(body), body)
    if isinstance(v, bool):  # a bool subclass: same as the checks above by value
        return _enc(bool(v))
    if isinstance(v, int):
        data = str(int(v)).encode()
        return b"%d:%s#" % (len(data), data)
    if isinstance(v, float):
        data = repr(float(v)).encode()
        return b"%d:%s^" % (len(data), data)
    if isinstance(v, bytes):
        return _enc(bytes(v))
    if isinstance(v, str):
        return _enc(str(v))
    if isinstance(v, dict):
        return _enc(dict(v))
    if isinstance(v, list | tuple):
        return _enc(list(v))
    raise ValueError(f"unserializable object: {v} ({type(v)})")
