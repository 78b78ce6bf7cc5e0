"""Bounded decoders: round trips, bombs never inflate past the limit, corrupt data is refused."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
from egress_gateway.net import codecs

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

LIMIT = 10 * 1024 * 1024

COMPRESS = {
    "gzip": lambda d: gzip.compress(d, 9),
    "deflate": lambda d: zlib.compress(d, 9),
    "br": lambda d: brotli.compress(d, quality=5),
    "zstd": lambda d: zstd.compress(d, 19),
}


@pytest.mark.parametrize("enc", list(COMPRESS))
@pytest.mark.parametrize("data", [b"", b"hello a@b.co", bytes(range(256)) * 4000],
                         ids=["empty", "small", "1MB"])
def test_round_trip(enc, data):
    assert codecs.decode(COMPRESS[enc](data), [enc], LIMIT) == data
    assert codecs.decode(codecs.encode(data, [enc]), [enc], LIMIT) == data


def test_raw_deflate_and_stacked_encodings():
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = c.compress(b"raw deflate") + c.flush()
    assert codecs.decode(raw, ["deflate"], LIMIT) == b"raw deflate"
    stacked = brotli.compress(gzip.compress(b"two layers"))
    assert codecs.decode(stacked, codecs.parse_encodings("gzip, br"), LIMIT) == b"two layers"
    assert codecs.encode(b"x", ["gzip", "br"]) and codecs.parse_encodings("identity") == []


def test_multi_member_gzip():
    assert codecs.decode(gzip.compress(b"one ") + gzip.compress(b"two"), ["gzip"], LIMIT) == b"one two"


# Bombs: ~1 MB of gzip that inflates to 1 GiB (16 members of 64 MiB of zeros, built fast),
# 256 MiB for zlib-wrapped deflate, 1 GiB for br and zstd (both compress zeros far better).
@pytest.fixture(scope="module")
def bombs():
    member = gzip.compress(b"\0" * (64 << 20), 9)
    out = {"gzip": member * 16, "deflate": zlib.compress(b"\0" * (256 << 20), 9)}
    zeros = b"\0" * (1 << 30)
    out["br"] = brotli.compress(zeros, quality=1)
    out["zstd"] = zstd.compress(zeros, 1)
    del zeros
    return out


@pytest.mark.parametrize("enc", list(COMPRESS))
def test_bomb_stops_at_the_limit(bombs, enc):
    bomb = bombs[enc]
    assert len(bomb) < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(codecs.TooLarge):
            codecs.decode(bomb, [enc], LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * LIMIT, f"{enc}: peak {peak / 1e6:.0f} MB while decoding a bomb"


@pytest.mark.parametrize("enc,data", [
    ("gzip", b"\x1f\x8b\x08\x00garbage"),
    ("gzip", gzip.compress(b"x" * 1000)[:-12]),
    ("deflate", b"not deflate at all"),
    ("br", b"\xff\xff\xff\xff"),
    ("br", brotli.compress(b"y" * 100000)[:-5]),
    ("zstd", b"\x28\xb5\x2f\xfd garbage"),
    ("zstd", zstd.compress(b"z" * 100000)[:-4]),
    ("gzip", gzip.compress(b"ok") + b"trailing junk"),
], ids=["gzip-garbage", "gzip-truncated", "deflate-garbage", "br-garbage", "br-truncated",
        "zstd-garbage", "zstd-truncated", "gzip-trailing-junk"])
def test_corrupt_data(enc, data):
    with pytest.raises(codecs.BadEncoding):
        codecs.decode(data, [enc], LIMIT)


def test_unknown_encoding():
    with pytest.raises(codecs.BadEncoding):
        codecs.parse_encodings("gzip, compress")
