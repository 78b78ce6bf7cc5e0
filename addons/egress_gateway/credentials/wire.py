"""Injection on the wire: the real value is set only on a copy of the request handed to the upstream.

The `request` hook only *marks* a request (`mark`: a weak map from the Request object to its
bindings, no value). `install_wire_injection` wraps mitmproxy's ``HttpLayer.event_to_child``
(pinned to mitmproxy 12.3.1: the one place where an HTTP stream's ``RequestHeaders`` event is
handed to an upstream connection layer, HTTP/1, HTTP/2 and HTTP/3 clients alike). For a marked
request the event is replaced by one carrying a *copy* with the real value set (`materialise`);
the flow keeps the placeholder, so mitmweb, recordings and audit never see the value.

Before substituting, the copy is checked again: the request must still match the binding (host,
method, path: a mitmweb user may have edited an intercepted flow), the server connection must be
to that host, over TLS unless the binding allows plain HTTP, and ``proxy_debug`` (which logs raw
bytes sent) must be off. Anything unexpected: the placeholder goes out unchanged (the upstream
answers 401; the secret stays home).
"""

from __future__ import annotations

import dataclasses
import logging
import weakref

from mitmproxy import ctx, http

from egress_gateway.credentials.settings import CredentialBinding
from egress_gateway.net import hosts

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Mark:
    bindings: tuple[CredentialBinding, ...]
    fingerprint: tuple
    meta: dict  # flow.metadata["gateway"]["credential"]: updated when injected


_MARKS: weakref.WeakKeyDictionary[http.Request, _Mark] = weakref.WeakKeyDictionary()
_INSTALLED = "_egress_gateway_credentials"


def _fingerprint(r: http.Request) -> tuple:
    return (r.scheme, hosts.normalize_host(r.host), r.port, r.method.upper(), r.path)


def proxy_debug() -> bool:
    """mitmproxy's proxy_debug: when on, the proxy logs every byte it sends (a real value too)."""
    try:
        return bool(ctx.options.proxy_debug)
    except (AttributeError, KeyError):
        return False


def mark(request: http.Request, bindings: list[CredentialBinding], meta: dict) -> None:
    """Have the `bindings`' values injected when `request` goes on the wire (and only then)."""
    _MARKS[request] = _Mark(tuple(bindings), _fingerprint(request), meta)


def unmark(request: http.Request) -> None:
    """Forget a mark (the request is done, failed, or is checked again)."""
    _MARKS.pop(request, None)


def materialise(request: http.Request, server) -> http.Request | None:
    """For a marked request: a copy with the real value (or None: send the request as is)."""
    m = _MARKS.pop(request, None)
    if m is None:
        return None
    name = ", ".join(b.name for b in m.bindings)
    try:
        if _fingerprint(request) != m.fingerprint or \
                not all(b.matches(request) and b.carried_by(request) for b in m.bindings):
            log.warning(f"credential {name!r}: the request changed after it was checked; "
                        "sent without the credential")
            return None
        address = getattr(server, "address", None)
        if not address or hosts.normalize_host(str(address[0])) != m.fingerprint[1]:
            log.warning(f"credential {name!r}: the upstream connection is not to the bound "
                        "host; sent without the credential")
            return None
        if not getattr(server, "tls", False) and not all(b.allow_plain_http for b in m.bindings):
            log.warning(f"credential {name!r}: the upstream connection is not TLS; "
                        "sent without the credential")
            return None
        if proxy_debug():
            log.error(f"credential {name!r}: proxy_debug logs raw traffic; sent without the "
                      "credential")
            return None
        copy = request.copy()
        for b in m.bindings:
            b.apply(copy)
        m.meta["injected"] = True
        return copy
    except Exception:
        log.exception(f"credential {name!r}: injection failed; sent without the credential")
        return None


def install_wire_injection() -> None:
    """Wrap ``HttpLayer.event_to_child`` once per process (idempotent; survives reloads)."""
    from mitmproxy.proxy.layers import http as layers_http

    layer_cls = layers_http.HttpLayer
    if getattr(layer_cls.event_to_child, _INSTALLED, False):
        return
    original = layer_cls.event_to_child
    stream_cls = layers_http.HttpStream
    request_headers = layers_http.RequestHeaders

    def event_to_child(self, child, event):
        if _MARKS and type(event) is request_headers and not isinstance(child, stream_cls):
            server = getattr(getattr(child, "context", None), "server", None)
            copy = materialise(event.request, server)
            if copy is not None:
                event = dataclasses.replace(event, request=copy)
        return original(self, child, event)

    setattr(event_to_child, _INSTALLED, True)
    event_to_child.__wrapped__ = original
    layer_cls.event_to_child = event_to_child
