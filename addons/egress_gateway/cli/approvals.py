"""`run_gateway.sh approvals list|approve ID [--always]|deny ID|watch [--state URL] [--json]`.

With ``--state`` (or ``$GATEWAY_STATE``): the fleet's review queue in PostgreSQL, every
instance at once (`fleet.queue`). Without: a running mitmweb, driven headless.

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
import signal
import sys
import threading
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


def _store_table(rows: list[dict]) -> str:
    if not rows:
        return "no requests are held in the review store"
    lines = []
    for r in rows:
        detected = ", ".join(f"{k} x{v}" for k, v in sorted((r["detected"] or {}).items())) or "-"
        lines.append(f"{r['id']}  [{r['instance']}]  {r['method']} {r['host']}:{r['port']}{r['path']}\n"
                     f"    rule {r['rule']}: {r['reason']}\n"
                     f"    detected: {detected}; session {r['session']}; waiting "
                     f"{r['waiting_seconds']:g}s, {max(r['remaining_seconds'], 0):g}s left "
                     f"(then {r['on_timeout']})")
    return "\n".join(lines)


def _options(p: argparse.ArgumentParser, sub: bool) -> None:
    """The options, accepted before or after the action (SUPPRESS: a sub-parser's default does
    not overwrite what was given before the action)."""
    d = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--state", help="the fleet's review store: postgresql://USER@HOST:PORT/DB "
                   "(password from PGPASSWORD or a passfile; default $GATEWAY_STATE)", **d)
    p.add_argument("--url", help="mitmweb URL (default http://127.0.0.1:8081)", **d)
    p.add_argument("--port", type=int, help="mitmweb port on 127.0.0.1 (web_port)", **d)
    p.add_argument("--password", help="mitmweb password (prefer GATEWAY_WEB_PASSWORD)", **d)
    p.add_argument("--json", action="store_true", help="list/watch: print JSON", **d)


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="run_gateway.sh approvals",
        description="Review held requests: of the fleet's store (--state), or of a running "
                    "'./run_gateway.sh web'.")
    _options(ap, sub=False)
    sub = ap.add_subparsers(dest="action", required=True)
    _options(sub.add_parser("list", help="list held requests"), sub=True)
    _options(sub.add_parser("watch", help="print holds as they come and end (--state only)"),
             sub=True)
    for name in ("approve", "deny"):
        p = sub.add_parser(name, help=f"{name} a held request (a unique id prefix is enough)")
        p.add_argument("id")
        if name == "approve":
            p.add_argument("--always", action="store_true",
                           help="also approve later requests of the same session and rule")
        _options(p, sub=True)
    return ap.parse_args(argv)


def _store_main(args: argparse.Namespace, state: str) -> int:
    from egress_gateway.fleet.queue import QueueError, ReviewQueue
    from egress_gateway.fleet.settings import parse_state_url

    try:
        queue = ReviewQueue(parse_state_url(state))
    except (ValueError, QueueError) as e:
        print(f"run_gateway.sh approvals: {e}", file=sys.stderr)
        return 1
    try:
        if args.action == "list":
            rows = queue.pending()
            print(json.dumps(rows, indent=2, default=str) if args.json else _store_table(rows))
        elif args.action == "watch":
            def emit(event: str, row: dict) -> None:
                if args.json:
                    print(json.dumps({"event": event, **row}, default=str), flush=True)
                elif event == "held":
                    print(_store_table([row]), flush=True)
                else:
                    print(f"{row['id']}  [{row['instance']}]  ended: {row['outcome']} "
                          f"({row['decided_by'] or '-'})", flush=True)
            stop = threading.Event()  # Ctrl-C / SIGTERM: stop between two polls
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            queue.watch(emit, stop=stop)
        else:
            verdict = "approve" if args.action == "approve" else "deny"
            always = bool(getattr(args, "always", False))
            row = queue.decide(args.id, verdict, always)
            word = "approved" if verdict == "approve" else "denied"
            print(f"{word} {row['id']} on instance {row['instance']}"
                  + (" (always, for this session and rule)" if always else ""))
    except QueueError as e:
        print(f"run_gateway.sh approvals: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # psycopg.Error: the store went away mid-command
        print(f"run_gateway.sh approvals: review store: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        queue.close()
    return 0


def main(argv: list[str]) -> int:
    args = _parse(argv)
    state = args.state or os.environ.get("GATEWAY_STATE", "")
    if state:
        return _store_main(args, state)
    if args.action == "watch":
        print("run_gateway.sh approvals: watch needs --state (the fleet's review store)",
              file=sys.stderr)
        return 2
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
