"""The credential addons: the agent holds a placeholder, the gateway presents the real secret.

Where the real value lives: only in the validated policy (a `Secret`), a throw-away copy of the
request built when its head is handed to the upstream connection layer (`wire`), and that
layer's own state. Never in ``flow.request``: mitmweb publishes the live flow objects, and
recording, audit and comments read them too.

Two addons: `CredentialGuard` early in the bundle (leak check before approvals hold a flow,
response scrubbing before anything reads the response) and `CredentialInjector` last before the
recorder (final leak check and marking, after approvals and redaction changed the request;
wrapping of response streams other addons set up). A request carrying a placeholder or value to
a destination it is not bound to is refused (``403 credential_leak``, plus an ``alert`` audit
line); a response echoing a real value gets the placeholder instead.
"""

from __future__ import annotations

import dataclasses
import logging

from mitmproxy import http

from egress_gateway.credentials import wire
from egress_gateway.credentials.leak import BODY_LIMIT, Leak, Scanner, find_leak
from egress_gateway.credentials.scrub import ScrubStream, replacements, scrub, scrub_headers
from egress_gateway.credentials.settings import CredentialBinding, bindings_of
from egress_gateway.flowstate import peek, refuse, settled, state
from egress_gateway.net import codecs, hosts
from egress_gateway.recording import audit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompiledCredentials:
    """A policy's bindings with their leak scanner and response scrub pairs (built at load)."""

    bindings: list[CredentialBinding]
    scanner: Scanner | None
    pairs: list[tuple[bytes, bytes]]


def compile_credentials(policy) -> CompiledCredentials:
    bindings = bindings_of(policy)
    if not bindings:
        return CompiledCredentials([], None, [])
    return CompiledCredentials(bindings, Scanner(bindings), replacements(bindings))


class _Base:
    def __init__(self, core) -> None:
        self.core = core
        core.add_compiler("credentials", compile_credentials)

    def _state(self) -> tuple[list[CredentialBinding], Scanner | None, list]:
        self.core.require_policy()
        c: CompiledCredentials = self.core.compiled["credentials"]
        return c.bindings, c.scanner, c.pairs

    def _fail(self, flow: http.HTTPFlow, where: str) -> None:
        log.exception(f"credentials: internal error in {where}; refusing the flow")
        refuse(flow, "internal_error", f"the gateway failed while checking credentials ({where})")

    def _leak_check(self, flow: http.HTTPFlow, *, body: bool) -> bool:
        """Refuse `flow` if it leaks a credential; True if it was refused."""
        bindings, scanner, _ = self._state()
        if scanner is None:
            return False
        try:
            leak = find_leak(flow.request, bindings, scanner, body=body)
        except codecs.TooLarge as e:
            refuse(flow, "too_large", f"the request body cannot be checked for credential leaks: {e}")
            return True
        except codecs.BadEncoding as e:
            refuse(flow, "unsupported_content",
                   f"the request body cannot be checked for credential leaks: {e}")
            return True
        if leak is None:
            return False
        refuse(flow, "credential_leak", leak.reason(), credential=leak.name, where=leak.where)
        state(flow).credential = {"name": leak.name, "alert": "credential_leak",
                                  "kind": leak.needle.kind, "where": leak.where}
        log.warning(f"credentials: ALERT credential_leak: {leak.needle.kind} of "
                    f"{leak.name!r} in {leak.where} of a request to "
                    f"{hosts.normalize_host(flow.request.host)}; refused")
        self._audit_alert(flow, leak)
        return True

    def _audit_alert(self, flow: http.HTTPFlow, leak: Leak) -> None:
        try:
            self.core.audit.write(audit.alert_record(
                flow, "credential_leak", show_path=leak.where != "the URL",
                credential=leak.name, value=leak.needle.kind, where=leak.where))
        except Exception:
            log.exception("credentials: could not audit a credential leak")

    def _note_scrub(self, flow: http.HTTPFlow, n: int, where: str) -> None:
        state(flow).count("credential_echo", where, n)
        log.warning(f"credentials: a response from {hosts.normalize_host(flow.request.host)} "
                    f"echoed a real credential value ({n}x in {where}); replaced by the placeholder")


class CredentialGuard(_Base):
    """Early: refuse leaks before approvals/redaction see the flow; scrub responses first."""

    name = "egress_gateway_credential_guard"

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        try:
            _, scanner, _ = self._state()
            if scanner is None:
                return
            self._leak_check(flow, body=False)
        except Exception:
            self._fail(flow, "http_connect")

    def _scrub_request(self, flow: http.HTTPFlow, body: bool) -> None:
        """Replace real values the agent itself sent by their placeholders, in the flow object
        (mitmweb and the recorder read it): the flow never holds a real value."""
        _, _, pairs = self._state()
        if not pairs:
            return
        req = flow.request
        n = scrub_headers(req.headers, pairs)
        path, k = scrub(req.path.encode("utf-8", "surrogateescape"), pairs)
        if k:
            req.path = path.decode("utf-8", "surrogateescape")
            n += k
        if body and req.raw_content:
            new, k = scrub(req.raw_content, pairs)
            if k:
                req.raw_content = new
                if "content-length" in req.headers and "transfer-encoding" not in req.headers:
                    req.headers["content-length"] = str(len(new))
                n += k
        if n:
            state(flow).credential_scrubbed = True
            log.warning("credentials: the agent sent a real credential value; replaced by the "
                        "placeholder in the flow")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            self._leak_check(flow, body=False)
            self._scrub_request(flow, body=False)
        except Exception:
            self._fail(flow, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        try:
            if settled(flow):
                if flow.response and flow.request.raw_content:
                    self._scrub_request(flow, body=True)  # refused earlier: still keep it clean
                return
            self._leak_check(flow, body=True)
            self._scrub_request(flow, body=True)
        except Exception:
            self._fail(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            return
        try:
            _, _, pairs = self._state()
            if pairs:
                n = scrub_headers(flow.response.headers, pairs)
                if n:
                    self._note_scrub(flow, n, "headers")
        except Exception:
            log.exception("credentials: internal error in responseheaders; dropping the response")
            flow.response = None
            refuse(flow, "internal_error", "the gateway failed while checking the response")

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flow.response.stream:
            return
        try:
            _, _, pairs = self._state()
            if not pairs:
                return
            n = scrub_headers(flow.response.headers, pairs)
            if n:
                self._note_scrub(flow, n, "headers")
            raw = flow.response.raw_content
            if not raw:
                return
            enc = flow.response.headers.get("content-encoding")
            encoded = bool(enc and enc.strip().lower() != "identity")
            try:
                body = codecs.decode(raw, codecs.parse_encodings(enc), BODY_LIMIT) if encoded else raw
            except (codecs.TooLarge, codecs.BadEncoding):
                if (peek(flow).credential or {}).get("injected"):
                    raise  # a response we cannot inspect, from where the secret went: refuse
                body, encoded = raw, False
            new, n = scrub(body, pairs)
            if n:
                if encoded:
                    del flow.response.headers["content-encoding"]
                flow.response.content = new
                self._note_scrub(flow, n, "body")
        except Exception:
            log.exception("credentials: internal error in response; refusing the response")
            refuse(flow, "internal_error", "the gateway failed while checking the response")


    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A credential value in a WebSocket message the agent sends to a destination it is not
        bound to: the message is dropped and audited as an alert (the agent never holds real
        values, but a placeholder names which credential it is trying to move)."""
        try:
            if flow.websocket is None or not flow.websocket.messages:
                return
            msg = flow.websocket.messages[-1]
            if not msg.from_client or msg.dropped:
                return
            bindings, scanner, _ = self._state()
            if scanner is None:
                return
            allowed: set[str] = set()
            for b in bindings:
                if b.matches(flow.request):
                    allowed |= {b.placeholder, b.secret.reveal()}
            needle = scanner.find(msg.content, allowed)
            if needle is None:
                return
            msg.drop()
            leak = Leak(needle, "a WebSocket message")
            state(flow).credential = {"name": leak.name, "alert": "credential_leak",
                                      "kind": needle.kind, "where": leak.where}
            log.warning(f"credentials: ALERT credential_leak: {needle.kind} of {leak.name!r} in a "
                        f"WebSocket message to {hosts.normalize_host(flow.request.host)}; dropped")
            self._audit_alert(flow, leak)
        except Exception:
            log.exception("credentials: internal error in websocket_message; dropping the message")
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()


class CredentialInjector(_Base):
    """Late (after approvals and redaction): final leak check, then mark for wire injection."""

    name = "egress_gateway_credentials"

    def load(self, loader) -> None:
        wire.install_wire_injection()

    def configure(self, updated: set[str]) -> None:
        if "proxy_debug" in updated and wire.proxy_debug():
            log.warning("credentials: proxy_debug logs raw traffic; credential injection is "
                        "disabled while it is on (bound requests are refused)")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            bindings, _, _ = self._state()
            if flow.request.stream and any(b.matches(flow.request) for b in bindings):
                refuse(flow, "too_large", "the request body is streamed (stream_large_bodies); "
                       "credentials are injected only into requests inspected in full")
        except Exception:
            self._fail(flow, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        wire.unmark(flow.request)
        if settled(flow):
            return
        try:
            bindings, _, _ = self._state()
            if not bindings or self._leak_check(flow, body=True):
                return
            matched = [b for b in bindings if b.matches(flow.request) and b.carried_by(flow.request)]
            if not matched:
                return
            name = ", ".join(b.name for b in matched)
            if flow.request.scheme != "https" and not all(b.allow_plain_http for b in matched):
                refuse(flow, "blocked", f"credential {name!r} is only sent over HTTPS",
                       credential=name)
                return
            if wire.proxy_debug():
                refuse(flow, "internal_error", f"credential {name!r} is not injected "
                       "while proxy_debug logs raw traffic", credential=name)
                return
            st = state(flow)
            st.credential = {"name": name, "injected": False}
            wire.mark(flow.request, matched, st.credential)
        except Exception:
            wire.unmark(flow.request)
            self._fail(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or not flow.response.stream:
            return
        try:
            cred = peek(flow).credential or {}
            if not cred.get("injected"):
                return
            _, _, pairs = self._state()
            if pairs:
                flow.response.stream = ScrubStream(
                    flow.response.stream, pairs,
                    on_hit=lambda n: self._note_scrub(flow, n, "stream"))
        except Exception:
            log.exception("credentials: internal error in responseheaders; killing the flow")
            flow.kill()

    def error(self, flow: http.HTTPFlow) -> None:
        wire.unmark(flow.request)
