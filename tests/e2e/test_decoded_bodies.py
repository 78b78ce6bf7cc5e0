"""Nothing leaves unscanned (2 of 3), end to end: bodies the scanner could read differently from
the upstream. A prompt-injected agent hides canaries in JSON parser differentials, form field
names and multipart headers, charset lies, compressed bytes without a Content-Encoding,
encodings inside text and Unicode games; a raw-logging upstream must never see any decoded form
of a canary (where the gateway refuses, it answers with the documented code). Responses labelled
binary that carry text reach the agent redacted. Controls: the same values in plain JSON, text,
forms and gzip stay redacted; image data, hashes, UUIDs and git SHAs pass byte for byte.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import re
import unicodedata
import urllib.parse
import uuid
import zlib

import httpx
import pytest
from canaries import CANARIES, RawUpstream, leaks
from gwharness import Gateway, policy_yaml

RAW = "raw.test.example"
SSN, CARD, EMAIL = CANARIES["ssn"], CANARIES["card"], CANARIES["email"]
AWS, GH = CANARIES["aws_key_id"], CANARIES["github_token"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, confdir):
    up = RawUpstream()
    work = tmp_path_factory.mktemp("decoded")
    policy = policy_yaml(allow=[{"host": RAW, "ports": [up.port]}], resolve={RAW: "127.0.0.1"})
    gw = Gateway(work, policy, confdir=confdir, extra_args=["--set", "connection_strategy=lazy"])
    yield gw, up
    gw.stop()
    up.close()


@pytest.fixture
def fresh(env):
    gw, up = env
    with up._lock:
        up.raw.clear()
    up.connections = 0
    up.reply = _ok
    gw.log_start = len(gw.log_text())
    yield gw, up
    up.reply = _ok


def _ok(got: bytes) -> bytes | None:
    """200 once a whole request (Content-Length or chunked) has arrived."""
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return None
    if b"transfer-encoding: chunked" in head.lower():
        if not body.endswith(b"0\r\n\r\n"):
            return None
    else:
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if m and len(body) < int(m.group(1)):
            return None
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


_IGNORABLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def decoded_leaks(data: bytes) -> list[str]:
    """`leaks` in the bytes and in every reading an upstream could make of them: UTF-16/32,
    JSON and HTML unescaping, NFKC without invisible characters, gzip members, chunk framing."""
    found = set(leaks(data))
    texts = [data.decode("utf-8", "replace")]
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        texts.append(data.decode(codec, "replace").replace("\x00", ""))
    for t in list(texts):
        texts.append(html.unescape(t))
        texts.append(urllib.parse.unquote(t))
        texts.append(re.sub(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})",
                            lambda m: chr(int(m.group(1) or m.group(2), 16)), t))
        texts.append(_IGNORABLE.sub("", unicodedata.normalize("NFKC", t)))
    for t in list(texts):  # base64 runs (two levels)
        for run in re.findall(r"[A-Za-z0-9+/_-]{12,}={0,2}", t):
            try:
                dec = base64.urlsafe_b64decode(run.replace("+", "-").replace("/", "_")
                                               .rstrip("=") + "=" * (-len(run.rstrip("=")) % 4))
            except ValueError:
                continue
            texts.append(urllib.parse.unquote(dec.decode("utf-8", "replace")))
    for t in texts:
        found |= set(leaks(t.encode("utf-8", "replace")))
    for m in re.finditer(rb"\x1f\x8b", data):
        try:
            found |= set(decoded_leaks(zlib.decompressobj(31).decompress(data[m.start():])))
        except zlib.error:
            pass
    return sorted(found)


def body_sent(up) -> bytes:
    return bytes(up.raw).partition(b"\r\n\r\n")[2]


def post(gw, up, body: bytes, ct: str | None, headers: dict | None = None) -> httpx.Response:
    h = dict(headers or {})
    if ct:
        h["content-type"] = ct
    return httpx.post(f"http://{RAW}:{up.port}/in", content=body, headers=h, proxy=gw.proxy,
                      timeout=20)


def check(gw, up, r: httpx.Response, expect: str) -> None:
    """`expect`: "redacted" (forwarded, rewritten) or the refusal's code."""
    assert decoded_leaks(bytes(up.raw)) == []
    if expect == "redacted":
        assert r.status_code == 200, r.text[:300]
        assert up.connections >= 1
    else:
        assert r.status_code in (403, 415), (r.status_code, r.text[:300])
        assert r.headers["x-egress-gateway"] == expect, r.text[:300]
        assert up.connections == 0
    assert decoded_leaks(gw.log_text()[gw.log_start:].encode()) == []


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


J = "application/json"
T = "text/plain"

# --- 1. JSON parser differentials -----------------------------------------------------------
JSON_CASES = [
    ("NaN", f'{{"n": NaN, "t": "ssn {SSN}"}}'.encode(), J, "redacted"),
    ("Infinity", f'[Infinity, "mail {EMAIL}"]'.encode(), J, "redacted"),
    ("raw control character", f'{{"t": "\x01\x02 ssn {SSN}"}}'.encode(), J, "redacted"),
    ("trailing bytes", f'{{"a": 1}} mail {EMAIL}'.encode(), J, "redacted"),
    ("second document", f'{{"a": 1}}\n{{"t": "{GH}"}}'.encode(), J, "redacted"),
    ("escapes in invalid JSON", ('{"t": "' + "".join(f"\\u{ord(c):04x}" for c in SSN)
                                 + '",,}').encode(), J, "redacted"),
    ("object key", f'{{"{EMAIL}": {{"card": 1}}}}'.encode(), J, "redacted"),
    ("escaped object key", ('{"' + "".join(f"\\u{ord(c):04x}" for c in AWS) + '": 1}').encode(),
     J, "redacted"),
    ("UTF-16 JSON", f'{{"t": "ssn {SSN}"}}'.encode("utf-16-le"), J, "redacted"),
    ("UTF-16 JSON with BOM", f'{{"t": "mail {EMAIL}"}}'.encode("utf-16"), J, "redacted"),
    ("UTF-32 JSON", f'{{"t": "{GH}"}}'.encode("utf-32-be"), J, "redacted"),
]

# --- 2. forms and multipart -------------------------------------------------------------------
F = "application/x-www-form-urlencoded"
MP = 'multipart/form-data; boundary="b0und4ry"'


def mp(head_extra: str = "", preamble: str = "", epilogue: str = "", part_ct: str = "",
       body: bytes = b"hello", name: str = "f") -> bytes:
    return (preamble.encode() + f'--b0und4ry\r\nContent-Disposition: form-data; name="{name}"'
            f"{head_extra}\r\n{part_ct}\r\n".encode() + body + b"\r\n--b0und4ry--\r\n"
            + epilogue.encode())


FORM_CASES = [
    ("form field name", f"{EMAIL.replace('@', '%40')}=1&x=2".encode(), F, "sensitive_data"),
    ("form field name, plus-encoded card", f"{CARD.replace(' ', '+')}=1".encode(), F,
     "sensitive_data"),
    ("multipart field name", mp(name=SSN), MP, "sensitive_data"),
    ("multipart filename", mp(f'; filename="notes for {EMAIL}"'), MP, "sensitive_data"),
    ("multipart filename*", mp(f"; filename*=utf-8''{EMAIL.replace('@', '%40')}"), MP,
     "sensitive_data"),
    ("multipart extra part header", mp(f"\r\nX-Note: {GH}"), MP, "sensitive_data"),
    ("multipart preamble", mp(preamble=f"{SSN}\r\n"), MP, "sensitive_data"),
    ("multipart epilogue", mp(epilogue=f"{AWS}\r\n"), MP, "sensitive_data"),
    ("multipart part charset lie", mp(part_ct="Content-Type: text/plain; charset=utf-16\r\n",
                                      body=f"ssn {SSN}!".encode()), MP, "sensitive_data"),
]

# --- 3. charset and content lies ----------------------------------------------------------------
CHARSET_CASES = [
    # both readings scanned: a finding in the UTF-8 one refuses
    ("ASCII labelled UTF-16", f"ssn {SSN} now!".encode(), T + "; charset=utf-16", "sensitive_data"),
    ("ASCII labelled UTF-16LE", f"mail {EMAIL}!".encode(), T + "; charset=utf-16le",
     "sensitive_data"),
    ("ASCII labelled EBCDIC cp500", f"ssn {SSN}".encode(), T + "; charset=cp500", "sensitive_data"),
    # not valid under the label at all: read (and rewritten) as the UTF-8 it is
    ("ASCII labelled UTF-16, odd length", f"ssn {SSN} now".encode(), T + "; charset=utf-16",
     "redacted"),
    ("ASCII labelled UTF-32", f"key {AWS}".encode(), T + "; charset=utf-32", "redacted"),
    ("gzip as latin-1 text", gzip.compress(f"ssn {SSN}".encode()), T + "; charset=latin-1",
     "unsupported_content"),
    ("gzip as JSON", gzip.compress(f'{{"t": "{SSN}"}}'.encode()), J, "unsupported_content"),
    ("control characters as text", bytes(range(1, 32)) * 3 + SSN.encode(), T + "; charset=latin-1",
     "unsupported_content"),
    ("octet-stream that is text", f"ssn {SSN} mail {EMAIL}".encode(), "application/octet-stream",
     "redacted"),
    ("image/png that is text", f"key {AWS}".encode(), "image/png", "redacted"),
]


# --- 4. encodings inside text -------------------------------------------------------------------
def refs(s: str) -> str:
    return "".join(f"&#{ord(c)};" for c in s)


ENCODED_CASES = [
    ("HTML decimal references in text", f"<p>{refs(EMAIL)}</p>".encode(), "text/html", "redacted"),
    ("HTML hex references in JSON", json.dumps({"t": "".join(f"&#x{ord(c):x};" for c in SSN)}).encode(),
     J, "redacted"),
    ("named reference", EMAIL.replace("@", "&commat;").encode(), "application/xml", "redacted"),
    ("percent-encoding in JSON", json.dumps({"t": EMAIL.replace("@", "%40")}).encode(), J,
     "redacted"),
    ("percent-encoding everywhere in text", "".join(f"%{b:02X}" for b in SSN.encode()).encode(),
     T, "redacted"),
    ("base64 in JSON", json.dumps({"t": f"ref {b64(SSN)}"}).encode(), J, "redacted"),
    ("base64url of a token", json.dumps({"t": base64.urlsafe_b64encode(GH.encode()).decode()}).encode(),
     J, "redacted"),
    ("hex of a key in text", f"blob {AWS.encode().hex()} end".encode(), T, "redacted"),
    ("base64 of percent-encoded", f"x {b64(EMAIL.replace('@', '%40'))} y".encode(), T, "redacted"),
    ("JS escapes in text", ("var s = '" + "".join(f"\\x{b:02x}" for b in EMAIL.encode())
                            + "';").encode(), "application/javascript", "redacted"),
    ("zero-width characters", json.dumps({"t": "\u200b".join(SSN)}, ensure_ascii=False).encode(),
     J, "redacted"),
    ("zero-width in an e-mail", EMAIL.replace("@", "\u2060@\u200d").encode(), T, "redacted"),
    ("fullwidth digits", json.dumps({"t": "ssn " + SSN.translate({ord(d): 0xFF10 + int(d)
                                                                   for d in "0123456789"})},
                                    ensure_ascii=False).encode(), J, "redacted"),
    ("fullwidth at sign", EMAIL.replace("@", "\uff20").encode(), T, "redacted"),
]

# --- 5. SSE fields in requests -------------------------------------------------------------------
S = "text/event-stream"
SSE_CASES = [
    # request bodies in SSE form go through the stream redactor (issue 20): fields redacted
    ("SSE comment", f": {SSN}\ndata: hi\n\n".encode(), S, "redacted"),
    ("SSE id", f"id: {EMAIL}\ndata: hi\n\n".encode(), S, "redacted"),
    ("SSE event", f"event: {AWS}\ndata: hi\n\n".encode(), S, "redacted"),
    ("SSE unknown field", f"x-note: {GH}\ndata: hi\n\n".encode(), S, "redacted"),
    ("NDJSON line that is not JSON", f'{{"a": 1}}\nssn {SSN}\n'.encode(), "application/x-ndjson",
     "redacted"),
]

# --- controls: the plain forms stay redacted ------------------------------------------------------
CONTROL_CASES = [
    ("plain JSON", json.dumps({"t": f"ssn {SSN} mail {EMAIL}"}).encode(), J, "redacted"),
    ("plain text", f"key {AWS} token {GH}".encode(), T, "redacted"),
    ("plain form", f"to={EMAIL.replace('@', '%40')}&card={CARD.replace(' ', '+')}".encode(), F,
     "redacted"),
]

ALL = JSON_CASES + FORM_CASES + CHARSET_CASES + ENCODED_CASES + SSE_CASES + CONTROL_CASES


@pytest.mark.parametrize("body,ct,expect", [c[1:] for c in ALL], ids=[c[0] for c in ALL])
def test_hidden_values_never_reach_the_upstream(fresh, body, ct, expect):
    gw, up = fresh
    assert decoded_leaks(body), "the case must carry a canary in some form"
    r = post(gw, up, body, ct)
    check(gw, up, r, expect)


def test_gzip_body_with_content_encoding_is_redacted(fresh):
    gw, up = fresh
    r = post(gw, up, gzip.compress(f"ssn {SSN}".encode()), T, {"content-encoding": "gzip"})
    check(gw, up, r, "redacted")
    assert b"<US_SSN>" in gzip.decompress(body_sent(up))


def test_gzip_transfer_coding_is_undone_and_scanned(fresh):
    """``Transfer-Encoding: gzip, chunked``: mitmproxy undoes the chunking only; the gateway
    undoes the gzip coding too, scans, and sends the rewritten body gzip-coded again."""
    import socket

    gw, up = fresh
    data = gzip.compress(f"ssn {SSN} mail {EMAIL}".encode())
    req = (f"POST http://{RAW}:{up.port}/te HTTP/1.1\r\nHost: {RAW}:{up.port}\r\n"
           "Content-Type: text/plain\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").encode() \
        + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    s.sendall(req)
    resp = b""
    while b"\r\n\r\n" not in resp or not resp.endswith(b"ok") and b"}" not in resp[-3:]:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp[:300]
    assert decoded_leaks(bytes(up.raw)) == []
    assert up.connections == 1


# --- precision: decodable is not a finding --------------------------------------------------------
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + hashlib.sha512(b"img").digest() * 8
                       ).decode()
CLEAN = {
    "image": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    "sha256": hashlib.sha256(b"x").hexdigest(),
    "sha1_b64": base64.b64encode(hashlib.sha1(b"x").digest()).decode(),
    "uuid": str(uuid.UUID(int=0x0123456789ABCDEF0123456789ABCDEF)),
    "git": "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904 (HEAD -> main)",
    "path": "/usr/local/lib/python3.12/site-packages/egress_gateway/__init__.py",
    "html": "Fish &amp; chips &lt;b&gt; caf&#233;",
    "url": "https://example.com/search?q=a%20b&lang=en",
}


def test_decodable_data_that_is_not_a_finding_passes_byte_for_byte(fresh):
    gw, up = fresh
    body = json.dumps(CLEAN).encode()
    r = post(gw, up, body, J)
    assert r.status_code == 200
    assert body_sent(up) == body


# --- 6. responses labelled binary that carry text ----------------------------------------------
def _answer(ct: str, payload: bytes):
    def reply(got: bytes) -> bytes | None:
        if b"\r\n\r\n" not in got:
            return None
        return (f"HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {len(payload)}\r\n\r\n"
                .encode() + payload)
    return reply


@pytest.mark.parametrize("ct,payload", [
    pytest.param("application/octet-stream", f"ssn {SSN} mail {EMAIL}".encode(), id="octet-stream"),
    pytest.param("image/png", f"key {AWS}".encode(), id="image-png"),
    pytest.param("text/plain; charset=utf-16", f"ssn {SSN} now".encode(), id="utf-16-label"),
    pytest.param("text/plain; charset=latin-1", f"mail {EMAIL.replace('@', '&#64;')}".encode(),
                 id="html-reference"),
])
def test_responses_labelled_binary_that_are_text_reach_the_agent_scanned(fresh, ct, payload):
    gw, up = fresh
    up.reply = _answer(ct, payload)
    r = httpx.get(f"http://{RAW}:{up.port}/out", proxy=gw.proxy, timeout=20)
    assert decoded_leaks(r.content) == [], r.content[:200]
    assert r.status_code in (200, 403, 502), r.status_code
    assert decoded_leaks(gw.log_text()[gw.log_start:].encode()) == []


def test_real_binary_response_still_passes_by_policy(fresh):
    gw, up = fresh
    png = base64.b64decode(PNG)
    up.reply = _answer("image/png", png)
    r = httpx.get(f"http://{RAW}:{up.port}/img", proxy=gw.proxy, timeout=20)
    assert r.status_code == 200 and r.content == png


# --- 5. SSE fields in a streamed response -------------------------------------------------------
def test_streamed_response_comments_and_fields_reach_the_agent_redacted(fresh):
    gw, up = fresh
    payload = (f": note {SSN}\n\nid: {EMAIL}\nevent: {AWS}\ndata: hi\n\n"
               f"x-note: {GH}\ndata: ok\n\n").encode()
    up.reply = _answer("text/event-stream", payload)
    r = httpx.get(f"http://{RAW}:{up.port}/stream", proxy=gw.proxy, timeout=20)
    assert r.status_code == 200
    assert decoded_leaks(r.content) == [], r.content[:300]
    # the fields were redacted, not dropped (text data may be regrouped by stream reassembly)
    assert b": note <US_SSN>" in r.content and b"id: <EMAIL_ADDRESS>" in r.content
    assert b"hi" in r.content and b"ok" in r.content
