"""`run_gateway.sh approvals list|approve ID|deny ID [--always]`: drive a running mitmweb headless.

Talks to mitmweb's REST API on loopback: ``Authorization: Bearer <password>``; POSTs also carry
the ``_mitmproxy_xsrf`` cookie and a matching ``X-XSRFToken`` header. The password comes from
``--password``, ``$GATEWAY_WEB_PASSWORD`` or the password file ``run_gateway.sh web`` wrote
(``$GATEWAY_WEB_PASSWORD_FILE``, default ``recordings/web-password``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

from egress_gateway.locations import RECORDINGS

PASSWORD_FILE = RECORDINGS / "web-password"


class ApiError(RuntimeError):
    pass


class WebClient:
    """A tiny client for mitmweb's REST API (loopback only)."""

    def __init__(self, url: str, password: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.password = password
        self.timeout = timeout
        self.xsrf = secrets.token_hex(16)

    def _call(self, method: str, path: str, body: dict | None = None):
        headers = {"Authorization": f"Bearer {self.password}"}
        data = None
        if method != "GET":
            headers.update({"Cookie": f"_mitmproxy_xsrf={self.xsrf}", "X-XSRFToken": self.xsrf})
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        # Never through a proxy: the review channel is loopback and must not cross the gateway.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                text = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            if e.code == 403 and "password" not in detail.lower():
                detail = detail or "wrong password?"
            raise ApiError(f"{method} {path}: HTTP {e.code} {detail}") from None
        except OSError as e:
            raise ApiError(f"cannot reach mitmweb at {self.url}: {e}") from None
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def command(self, name: str, *args: str):
        out = self._call("POST", f"/commands/{name}", {"arguments": list(args)})
        if isinstance(out, dict) and "error" in out:
            raise ApiError(out["error"])
        return out.get("value") if isinstance(out, dict) else out

    def held(self) -> list[dict]:
        return json.loads(self.command("gateway.held") or "[]")

    def approve(self, flow_id: str, always: bool = False) -> str:
        return self.command("gateway.approve.always" if always else "gateway.approve", flow_id)

    def deny(self, flow_id: str) -> str:
        return self.command("gateway.deny", flow_id)

    def resume(self, flow_id: str) -> None:
        self._call("POST", f"/flows/{flow_id}/resume")

    def kill(self, flow_id: str) -> None:
        self._call("POST", f"/flows/{flow_id}/kill")

    def put_options(self, **options):
        return self._call("PUT", "/options", options)


def read_password(explicit: str | None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("GATEWAY_WEB_PASSWORD")
    if env:
        return env
    path = Path(os.environ.get("GATEWAY_WEB_PASSWORD_FILE") or PASSWORD_FILE)
    try:
        return path.read_text().strip()
    except OSError:
        raise ApiError(f"no mitmweb password: give --password, set GATEWAY_WEB_PASSWORD, or start "
                       f"the gateway with './run_gateway.sh web' (it writes {path})") from None


def _table(rows: list[dict]) -> str:
    if not rows:
        return "no requests are held"
    lines = []
    for r in rows:
        detected = ", ".join(f"{k} x{v}" for k, v in sorted(r["detected"].items())) or "-"
        lines.append(f"{r['id']}  {r['method']} {r['host']}:{r['port']}{r['path']}\n"
                     f"    rule {r['rule']}: {r['reason']}\n"
                     f"    detected: {detected}; session {r['session']}; waiting "
                     f"{r['waiting_seconds']:g}s of {r['timeout']:g}s (then {r['on_timeout']})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="run_gateway.sh approvals",
                                 description="Review held requests of a running './run_gateway.sh web'.")
    ap.add_argument("--url", default=None, help="mitmweb URL (default http://127.0.0.1:8081)")
    ap.add_argument("--port", type=int, default=None, help="mitmweb port on 127.0.0.1 (web_port)")
    ap.add_argument("--password", default=None, help="mitmweb password (prefer GATEWAY_WEB_PASSWORD)")
    ap.add_argument("--json", action="store_true", help="list: print JSON")
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list held requests")
    for name in ("approve", "deny"):
        p = sub.add_parser(name, help=f"{name} a held request (a unique id prefix is enough)")
        p.add_argument("id")
        if name == "approve":
            p.add_argument("--always", action="store_true",
                           help="also approve later requests of the same session and rule")
    args = ap.parse_args(argv)
    url = args.url or f"http://127.0.0.1:{args.port or 8081}"
    try:
        client = WebClient(url, read_password(args.password))
        if args.action == "list":
            rows = client.held()
            print(json.dumps(rows, indent=2) if args.json else _table(rows))
        elif args.action == "approve":
            fid = client.approve(args.id, args.always)
            print(f"approved {fid}" + (" (always, for this session and rule)" if args.always else ""))
        else:
            print(f"denied {client.deny(args.id)}")
    except ApiError as e:
        print(f"run_gateway.sh approvals: {e}", file=sys.stderr)
        return 1
    return 0
