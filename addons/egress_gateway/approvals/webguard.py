"""Guards of the review channel: mitmweb on loopback, no dials to it, no run-time option changes.

Security-relevant options cannot be changed at run time (``PUT /options``, ``set``,
``options.load``, ``options.reset``), and mitmweb's REST route refuses commands that load code or
options.
"""

from __future__ import annotations

from mitmproxy import exceptions

from egress_gateway.net import hosts

PROTECTED_OPTIONS = frozenset({
    "scripts", "ignore_hosts", "allow_hosts", "connection_strategy", "listen_host", "listen_port",
    "mode", "proxyauth", "web_host", "web_port", "web_password", "ssl_insecure", "confdir", "certs",
    "stream_large_bodies", "tcp_hosts", "udp_hosts", "upstream_auth",
})
BLOCKED_WEB_COMMANDS = frozenset({"script.run", "options.reset", "options.load"})


def protected(name: str) -> bool:
    return name in PROTECTED_OPTIONS or name.startswith("gateway_")


def install_option_guard(opts) -> None:
    """Refuse run-time changes of protected options, whoever asks (REST, commands, files).

    Installed on the options object itself (it outlives a script reload) and before any addon
    sees the change: mitmproxy's own rollback would run ``configure`` of every addon first.
    """
    if opts.__dict__.get("_gateway_guarded"):
        return
    original_update_known = opts.update_known

    def update_known(**kwargs):
        for name, value in kwargs.items():
            if protected(name) and name in opts and _differs(opts, name, value):
                raise exceptions.OptionsError(
                    f"option {name!r} is protected by the egress gateway and cannot be changed "
                    "at run time; restart the gateway with the new value")
        return original_update_known(**kwargs)

    def reset():
        raise exceptions.OptionsError("resetting all options is refused by the egress gateway")

    opts.__dict__["update_known"] = update_known
    opts.__dict__["reset"] = reset
    opts.__dict__["_gateway_guarded"] = True


def _differs(opts, name: str, value) -> bool:
    current = getattr(opts, name)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(current) != list(value)
    return current != value


def guard_web_commands() -> None:
    """mitmweb's REST route for commands: refuse commands that load code or options."""
    from mitmproxy.tools.web import app

    handler = app.ExecuteCommand
    if getattr(handler, "_gateway_guarded", False):
        return
    inner = handler.post.__wrapped__  # the handler before mitmweb's auth wrapper

    def post(self, cmd: str):
        if cmd in BLOCKED_WEB_COMMANDS:
            self.set_status(403)
            self.write({"error": f"command {cmd!r} is refused by the egress gateway"})
            return None
        return inner(self, cmd)

    handler.post = app.AuthRequestHandler._require_auth(post)
    handler._gateway_guarded = True


def check_web_host(host: str) -> None:
    """mitmweb must listen on loopback: the review channel decides what leaves."""
    ip = hosts.parse_ip_literal(host) if host else None
    if host.lower() != "localhost" and (ip is None or not ip.is_loopback):
        raise exceptions.OptionsError(
            f"mitmweb must listen on loopback only (web_host={host!r}): the review channel "
            "decides what leaves; use 127.0.0.1")


def is_review_channel(host: str, port: int, web_host: str, web_port: int) -> bool:
    """Whether a dial to (`host`, `port`) would reach mitmweb's own port (on this machine)."""
    if port != web_port:
        return False
    ip = hosts.parse_ip_literal(str(host))
    web_ip = hosts.parse_ip_literal(web_host or "")
    return str(host).lower().rstrip(".") == "localhost" or (ip is not None and (
        ip.is_loopback or ip.is_unspecified or (web_ip is not None and ip == web_ip)))
