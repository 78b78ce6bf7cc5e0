"""The review webhook: one Slack-compatible message per new hold (rule, reason, counts, the
command that decides it; never a value, a path or a query).

The gateway dials it itself, under the egress SSRF and resolve rules (`Egress.resolve_checked`:
a private or loopback address needs a cidr entry or a resolve pin) but without an
``egress.allow`` entry, which would let agents post to the same webhook service. The URL is a
secret: logs name its host only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl

from egress_gateway.approvals.holds import detected_text
from egress_gateway.approvals.settings import parse_webhook

log = logging.getLogger(__name__)

TIMEOUT = 5.0


def message(summary: dict, instance: str | None, command: str) -> dict:
    """The webhook's JSON document (Slack's incoming-webhook format: ``text``)."""
    where = f" on {instance}" if instance else ""
    return {"text": (f"Request held{where}: {summary['method']} to {summary['host']} "
                     f"(session {summary['session']}). Rule {summary['rule']}: "
                     f"{summary['reason']}. Detected: {detected_text(summary['detected'])}. "
                     f"Timeout {summary['timeout']:g}s, then {summary['on_timeout']}. "
                     f"Decide: {command}")}


class Notifier:
    def __init__(self, egress) -> None:
        self.egress = egress  # its resolver applies the SSRF and resolve rules
        self.tasks: set[asyncio.Task] = set()
        self._warned = False

    def url(self, review) -> str | None:
        if review is None:
            return None
        if review.webhook:
            return review.webhook
        if review.webhook_env:
            value = os.environ.get(review.webhook_env, "").strip()
            if not value and not self._warned:
                self._warned = True
                log.error(f"egress gateway: review.webhook_env names ${review.webhook_env}, which "
                          "is not set: no webhook notifications")
            return value or None
        return None

    def notify(self, review, doc: dict) -> None:
        """Post in the background: a slow or failing webhook never delays a hold."""
        url = self.url(review)
        if not url:
            return
        task = asyncio.get_running_loop().create_task(self._post(url, doc))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, url: str, doc: dict) -> None:
        host = "?"
        try:
            scheme, host, port, path = parse_webhook(url)
            decision, address = await self.egress.resolve_checked(host, port)
            if not decision.allowed or address is None:
                log.warning(f"egress gateway: review webhook to {host} refused: {decision.reason}")
                return
            body = json.dumps(doc).encode()
            tls = ssl.create_default_context() if scheme == "https" else None
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                address, port, ssl=tls, server_hostname=host if tls else None), TIMEOUT)
            try:
                default = 443 if scheme == "https" else 80
                authority = host if port == default else f"{host}:{port}"
                writer.write((f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
                              "Content-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                             + body)
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), TIMEOUT)
            finally:
                writer.close()
            code = status.split(b" ")[1:2]
            if not code or not code[0].startswith(b"2"):
                log.warning(f"egress gateway: review webhook at {host} answered "
                            f"{status[:40]!r}")
        except Exception as e:
            log.warning(f"egress gateway: review webhook to {host} failed ({type(e).__name__})")
