"""Default-deny egress: every identity of a connection must be allowed and agree.

Checked: the CONNECT target (``http_connect``), the request's destination (absolute-form URL or
Host), the Host header / HTTP/2 ``:authority`` of every request, the TLS SNI the client sent,
and, as the backstop for every protocol, each upstream dial (``server_connect``): the name, the
SNI, and the address it resolves to (private ranges need a ``cidr`` entry or a ``resolve`` pin).
The address that was checked is the address dialled (no second DNS lookup: rebinding-safe).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.layers import tls as tls_layer

from egress_gateway.egress import allowlist
from egress_gateway.egress.allowlist import Decision
from egress_gateway.flowstate import refuse, settled, state
from egress_gateway.net import hosts
from egress_gateway.recording import audit

log = logging.getLogger(__name__)

RESOLVE_TTL = 30.0
RESOLVE_CACHE_MAX = 1024


class Egress:
    def __init__(self, core) -> None:
        self.core = core
        # (name, port) -> (expiry, decision, address): per policy, swapped with it
        core.add_compiler("egress_resolved", lambda policy: {})
        self._restore: dict[str, tuple] = {}  # server connection id -> address as requested

    # --- decisions ----------------------------------------------------------------------
    def _refuse(self, flow: http.HTTPFlow, d: Decision, identity: str) -> bool:
        """Apply a refusal (or only report it in report mode). True if the flow was refused."""
        st = state(flow)
        if self.core.policy.egress.mode == "report":
            st.decision, st.reason, st.identity = "would_block", d.reason, identity
            log.warning(f"egress gateway (report mode) would block {identity}: {_shown(d.reason)}")
            return False
        st.identity = identity
        code = d.code or "blocked"
        refuse(flow, code, d.reason, identity=identity, **d.details)
        log.info(f"egress gateway blocked {identity}: {_shown(d.reason)}")
        return True

    def _internal_error(self, flow: http.HTTPFlow, where: str) -> None:
        log.exception(f"egress gateway: internal error in {where}; refusing the flow")
        refuse(flow, "internal_error", f"the gateway failed while checking the request ({where})")

    def _identities(self, flow: http.HTTPFlow) -> list[tuple[str, str, int | None]]:
        req = flow.request
        default_port = 443 if req.scheme == "https" else 80
        out: list[tuple[str, str, int | None]] = [("destination", req.host, req.port)]
        host_header = req.host_header
        if host_header:
            h, p = url.parse_authority(host_header, check=False)
            out.append(("authority" if req.is_http2 else "host_header", h, p or default_port))
        tunnel = self.core.connections.get(flow.client_conn.id)
        if tunnel and tunnel.target:
            out.append(("connect", *tunnel.target))
        if flow.client_conn.sni:
            out.append(("sni", flow.client_conn.sni, req.port))
        return out

    def check_request(self, flow: http.HTTPFlow) -> Decision | None:
        """Refuse the flow if any identity fails or they disagree; None if all is well."""
        egress = self.core.policy.egress
        first: tuple[str, int | None] | None = None
        for identity, host, port in self._identities(flow):
            d = allowlist.check_destination(egress, host, port)
            if not d.allowed:
                if self._refuse(flow, d, identity):
                    return d
                continue
            norm = hosts.normalize_host(host)
            if first is None:
                first = (norm, port)
            elif norm != first[0] or (identity != "sni" and port != first[1]):
                shown = f"{norm}:{port}" if identity != "sni" else norm
                d = Decision(
                    False,
                    f"{identity} {shown} does not match the destination {first[0]}:{first[1]}",
                    details={"host": norm, "port": port},
                )
                if self._refuse(flow, d, identity):
                    return d
        return None

    async def resolve_checked(self, host: str, port: int) -> tuple[Decision, str | None]:
        """Resolve an allowed destination and check the address; (decision, address to dial)."""
        egress = self.core.policy.egress
        norm = hosts.normalize_host(host)
        ip = hosts.parse_ip_literal(norm)
        if ip is not None:
            # An IPv4-mapped IPv6 literal is dialled as the IPv4 address it denotes.
            dial = getattr(ip, "ipv4_mapped", None) or ip
            return allowlist.check_resolved(egress, norm, ip, port, pinned=False), str(dial)
        cache = self.core.compiled["egress_resolved"]
        key = (norm, port)
        now = time.monotonic()
        hit = cache.get(key)
        if hit and hit[0] > now:
            return hit[1], hit[2]
        pin = allowlist.pinned_address(egress, norm)
        if pin is not None:
            addrs = [pin]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    norm, port, type=socket.SOCK_STREAM
                )
            except OSError as e:
                d = Decision(False, f"cannot resolve {norm}: {e}", code="dns_error",
                             details={"host": norm, "port": port})
                return d, None
            addrs = []
            for info in infos:
                a = hosts.parse_ip_literal(info[4][0])
                if a is not None and a not in addrs:
                    addrs.append(a)
        result: tuple[Decision, str | None] = (
            Decision(False, f"{norm} has no address", details={"host": norm, "port": port}), None
        )
        for a in addrs:
            d = allowlist.check_resolved(egress, norm, a, port, pinned=pin is not None)
            if not d.allowed:
                result = (d, None)  # any refused answer refuses the name (rebinding indicator)
                break
            if result[1] is None:
                result = (d, str(a))
        if len(cache) >= RESOLVE_CACHE_MAX:
            cache.clear()
        cache[key] = (now + RESOLVE_TTL, *result)
        return result

    # --- hooks --------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        try:
            d = allowlist.check_destination(self.core.require_policy().egress, flow.request.host,
                                            flow.request.port)
            if not d.allowed and self._refuse(flow, d, "connect"):
                return
            self.core.connections.tunnel(flow.client_conn.id).target = (
                hosts.normalize_host(flow.request.host), flow.request.port
            )
        except Exception:
            self._internal_error(flow, "http_connect")

    def client_connected(self, client) -> None:
        """Refuse clients outside the policy's clients.allow (when it is set)."""
        try:
            policy = self.core.policy
            peer = client.peername[0] if client.peername else ""
            if policy is None or not policy.clients.permits(peer):
                client.error = "client not allowed by the egress gateway policy"
                log.warning(f"egress gateway refused client {peer}: not in clients.allow")
        except Exception:
            log.exception("egress gateway: internal error in client_connected; refusing the client")
            client.error = "egress gateway internal error"

    def dns_request(self, flow) -> None:
        """DNS mode: names not on the allowlist get REFUSED (a lookup itself can carry data out)."""
        if flow.response or flow.error:
            return
        try:
            from mitmproxy import dns

            egress = self.core.require_policy().egress
            for q in flow.request.questions:
                name = q.name.rstrip(".")
                if not any(allowlist.check_destination(egress, name, p).allowed
                           for p in _ports_of(egress)):
                    flow.response = flow.request.fail(dns.response_codes.REFUSED)
                    st = state(flow)
                    st.decision, st.code, st.identity = "blocked", "blocked", "dns"
                    st.reason = f"DNS lookup of {name} refused: not on the egress allowlist"
                    log.info(f"egress gateway refused a DNS lookup of {name}")
                    self.core.audit.write(audit.dns_record(flow, name))
                    return
        except Exception:
            log.exception("egress gateway: internal error in dns_request; refusing the lookup")
            from mitmproxy import dns

            flow.response = flow.request.fail(dns.response_codes.SERVFAIL)

    def next_layer(self, nextlayer) -> None:
        """Read the SNI of TLS the gateway does not intercept (``ignore_hosts``, passthrough):
        mitmproxy forwards such a ClientHello without recording its SNI, so `server_connect`
        could not compare it with the CONNECT target. Recorded here, the dial is checked."""
        try:
            client = nextlayer.context.client
            if client.sni:
                return
            data = nextlayer.data_client()
            if not data or data[0] != 0x16:  # not a TLS handshake record
                return
            hello = tls_layer.parse_client_hello(data)
            if hello is not None and hello.sni:
                client.sni = hello.sni
        except ValueError:
            return  # not a parseable ClientHello: nothing to compare
        except Exception:
            log.exception("egress gateway: could not read the TLS SNI; refusing the connection")
            nextlayer.context.client.error = "egress gateway internal error"

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if settled(flow):
            return
        try:
            self.core.require_policy()
            self.check_request(flow)
        except Exception:
            self._internal_error(flow, "requestheaders")

    async def request(self, flow: http.HTTPFlow) -> None:
        # Checked again: an addon or a reviewer may have changed the request since its headers.
        if settled(flow):
            return
        try:
            self.core.require_policy()
            if self.check_request(flow):
                return
            d, _ = await self.resolve_checked(flow.request.host, flow.request.port)
            if not d.allowed:
                self._refuse(flow, d, "address")
        except Exception:
            self._internal_error(flow, "request")

    async def server_connect(self, data) -> None:
        """The backstop: every upstream dial of every protocol passes here."""
        server = data.server
        if server.error or not server.address:
            return
        try:
            policy = self.core.require_policy()
            strip_trailing_dot(server)
            host, port = server.address[0], server.address[1]
            d = allowlist.check_destination(policy.egress, host, port)
            identity = "dial"
            # The SNI the client sent (set before any dial) and the one we would send upstream.
            for sni in {server.sni, data.client.sni} - {None, ""}:
                if not d.allowed:
                    break
                identity = "sni"
                d = allowlist.check_destination(policy.egress, sni, port)
                norm = hosts.normalize_host(host)
                if d.allowed and hosts.parse_ip_literal(norm) is None \
                        and hosts.normalize_host(sni) != norm:
                    d = Decision(False, f"TLS SNI {sni} does not match the destination {norm}",
                                 details={"host": norm, "port": port})
            report = policy.egress.mode == "report"
            if not d.allowed and report:
                log.warning(f"egress gateway (report mode) would block {identity}: {_shown(d.reason)}")
            address = None
            if d.allowed or report:
                identity = "address"
                d, address = await self.resolve_checked(host, port)
                if not d.allowed and report:
                    log.warning(f"egress gateway (report mode) would block {identity}: {_shown(d.reason)}")
                    return
            if not d.allowed:
                server.error = f"blocked by the egress gateway: {d.reason}"
                log.info(f"egress gateway blocked a dial ({identity}): {_shown(d.reason)}")
                self._audit_dial(data, identity, d)
                return
            if address and address != host:
                self._restore[server.id] = server.address
                server.address = (address, port)
        except Exception as e:
            log.exception("egress gateway: internal error in server_connect; refusing the dial")
            server.error = f"egress gateway internal error: {e}"

    def server_connected(self, data) -> None:
        # Keep the requested name as the connection's address, so that HTTP keep-alive reuses it.
        original = self._restore.pop(data.server.id, None)
        if original is not None:
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data) -> None:
        self._restore.pop(data.server.id, None)

    def _audit_dial(self, data, identity: str, d: Decision) -> None:
        try:
            tunnel = self.core.connections.get(data.client.id)
            sid = tunnel.session if tunnel else None
            self.core.audit.write(audit.connection_record(
                data.client, data.server, session_id=sid, host=_shown(d.details.get("host")),
                port=d.details.get("port"), code=d.code, identity=identity,
                reason=_shown(d.reason)))
        except Exception:
            log.exception("egress gateway: could not audit a refused dial")


def _shown(text):
    """A refusal's reason (or host) as the log and a dial's audit line show it: written before
    any scan, so host names that could carry data by their shape are withheld."""
    from egress_gateway.detection.shapes import scrub_hosts

    return scrub_hosts(text) if isinstance(text, str) else text


def strip_trailing_dot(server) -> None:
    """``api.example.com.`` is the same name as ``api.example.com``, but a TLS SNI may not end
    with a dot (the upstream handshake fails and the agent gets no answer): dial and send the
    SNI without it."""
    if server.sni and server.sni.endswith(".") and server.sni.rstrip("."):
        server.sni = server.sni.rstrip(".")
    host = server.address[0]
    if isinstance(host, str) and host.endswith(".") and host.rstrip("."):
        server.address = (host.rstrip("."), server.address[1])


def _ports_of(egress) -> list[int]:
    return sorted({p for rule in egress.allow for p in rule.ports}) or [443]
