# ruff: noqa: E501 - fixture prose is kept on long lines, as the agent sends it
"""Generate tests/data/agent_sdk_request.json: a Claude-Agent-SDK-shaped Messages API request.

Built the way `make_claude_code_request.py` builds Claude Code's: the shape an application on the
Claude Agent SDK sends with every turn: the SDK's preset system prompt with the application's own
instructions appended, a subset of Claude Code's tools plus the application's in-process MCP
tools (``mcp__<server>__<tool>``, schemas with formats, enums and examples), extended thinking
(a signed ``thinking`` block and a ``redacted_thinking`` block in the assistant turn), a
screenshot (base64 PNG) inside a tool result, ``tool_choice``, ``stop_sequences`` and
``metadata.user_id``. The prose is written for this fixture; it carries what trips naive
detectors: product and person-like names, an example e-mail address and a support phone line in
the instructions, dated model ids, ticket ids, versions and dates.

Planted PII and secrets (what must be caught) are listed in PLANTED; they all sit in user text
and tool results. Run: .venv/bin/python tests/data/make_agent_sdk_request.py
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from make_claude_code_request import TOOLS as CLAUDE_CODE_TOOLS
from make_claude_code_request import s, schema

OUT = Path(__file__).with_name("agent_sdk_request.json")
MODEL = "claude-opus-4-1-20250805"

#: (entity, value) planted in the conversation; the redacted request must contain none of them.
PLANTED = [
    ("EMAIL_ADDRESS", "lena.okafor@northwind-mail.com"),
    ("PHONE_NUMBER", "+44 20 7946 0958"),
    ("US_SSN", "219-09-9999"),
    ("CREDIT_CARD", "4111 1111 1111 1111"),
    ("GITHUB_TOKEN", "ghp_R4nd0mCanaryT0kenValue1234567890abcd"),
    ("EMAIL_ADDRESS", "billing-disputes@fabrikam.com"),
]

PRESET = ("You are Claude Code, Anthropic's official CLI for Claude, running within the Claude "
          "Agent SDK.")
APP_PROMPT = """You are Triage, the support-operations agent of Northwind Cloud (product names: Northwind Relay, Northwind Vault 3.2, Harbor CLI).

## Your job
Read new support tickets, reproduce what you can with the tools, and either answer the customer or escalate. Tickets look like NW-48213; customers are identified by their account id (acct_7Q2kX9), never by name in internal notes.

## Rules
- Quote the customer's words only when needed. Never paste card numbers, passwords or API keys into a ticket; say "the card on file" instead.
- Escalations go to the on-call engineer through mcp__pager__page with severity sev1..sev4. Outside 08:00-18:00 UTC only sev1 pages.
- Refunds above 500 EUR need approval from finance; use mcp__crm__request_refund and wait for the approval id (apr_...).
- Example of a good internal note: "acct_7Q2kX9 reports 502s from Relay since 2025-11-30 14:05 UTC; reproduced with harbor relay ping --region eu-west-2; escalated NW-48213 as sev3."
- Our public status page is https://status.northwind.example and docs live at https://docs.northwind.example/relay/v3/.
- Write to customers in their language; sign as "Northwind Support". The support line for customers is listed on the status page; do not make one up.
- The model you run on is claude-opus-4-1-20250805; when asked, say you are an AI assistant.
"""

MCP_TOOLS = [
    ("mcp__crm__lookup_customer",
     "Look up a Northwind Cloud customer account by account id (acct_...) or by the e-mail address on the account, e.g. someone@example.com. Returns plan, region, open tickets and the last five invoices.",
     schema({"account_id": s("Account id such as acct_7Q2kX9", pattern="^acct_[A-Za-z0-9]{6}$"),
             "email": s("E-mail address on the account", format="email")}, [])),
    ("mcp__crm__request_refund",
     "Request a refund for an invoice. Amounts above 500 EUR need finance approval; the call then returns an approval id (apr_...) to poll with mcp__crm__approval_status.",
     schema({"invoice_id": s("Invoice id, e.g. inv_2025_11_004812"),
             "amount_eur": {"type": "number", "minimum": 0, "description": "Amount in EUR"},
             "reason": s("Why, in one sentence, without personal data")}, ["invoice_id", "amount_eur", "reason"])),
    ("mcp__crm__approval_status", "Status of a finance approval by id.",
     schema({"approval_id": s("apr_... id returned by request_refund")}, ["approval_id"])),
    ("mcp__pager__page",
     "Page the on-call engineer of a team. Use sparingly: sev1 wakes someone up.",
     schema({"team": {"type": "string", "enum": ["relay", "vault", "harbor", "billing"]},
             "severity": {"type": "string", "enum": ["sev1", "sev2", "sev3", "sev4"]},
             "summary": s("One line, no customer data, e.g. 'Relay eu-west-2 502s since 14:05 UTC'")},
            ["team", "severity", "summary"])),
    ("mcp__browser__screenshot",
     "Take a screenshot of a Northwind status or docs page (https://status.northwind.example/..., https://docs.northwind.example/...) and return it as an image.",
     schema({"url": s("Page URL", format="uri")}, ["url"])),
]

KEEP = {"Bash", "Read", "Grep", "WebFetch", "TodoWrite"}


def _png() -> str:
    """A small valid PNG (8x8 grey), base64, as a screenshot tool returns one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes([128] * 8) for _ in range(8))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def _signature(seed: str) -> str:
    return base64.b64encode(b"".join(hashlib.sha512(f"{seed}{i}".encode()).digest()
                                     for i in range(4))).decode()


MESSAGES = [
    {"role": "user", "content": [
        {"type": "text", "text": "New ticket NW-48213 from Lena Okafor (lena.okafor@northwind-mail.com, +44 20 7946 0958): "
         "\"Relay returns 502 since this afternoon and I was charged twice for November. My card is 4111 1111 1111 1111, "
         "please refund the duplicate.\" Account acct_7Q2kX9."},
    ]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "The customer reports two problems: Relay 502s and a duplicate charge. I should look up the account first, then check the status page, then handle the refund through the CRM tool, which needs the invoice id.",
         "signature": _signature("thinking-1")},
        {"type": "redacted_thinking", "data": _signature("redacted-1")},
        {"type": "text", "text": "Let me look up the account and take a screenshot of the status page."},
        {"type": "tool_use", "id": "toolu_01WqNx7Tz3LbK8vYpR2mJd5H", "name": "mcp__crm__lookup_customer",
         "input": {"account_id": "acct_7Q2kX9"}},
        {"type": "tool_use", "id": "toolu_01Pc4Vh9Ys6GfQ1nXa8Ke3Ru", "name": "mcp__browser__screenshot",
         "input": {"url": "https://status.northwind.example/relay"}},
    ]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01WqNx7Tz3LbK8vYpR2mJd5H",
         "content": [{"type": "text", "text": json.dumps({
             "account_id": "acct_7Q2kX9", "plan": "Team", "region": "eu-west-2",
             "contact": {"name": "Lena Okafor", "email": "lena.okafor@northwind-mail.com", "tax_id": "219-09-9999"},
             "invoices": [{"id": "inv_2025_11_004812", "amount_eur": 240.0, "status": "paid"},
                          {"id": "inv_2025_11_004813", "amount_eur": 240.0, "status": "paid"}],
             "notes": "deploy token for their relay: ghp_R4nd0mCanaryT0kenValue1234567890abcd; disputes go to billing-disputes@fabrikam.com"})}]},
        {"type": "tool_result", "tool_use_id": "toolu_01Pc4Vh9Ys6GfQ1nXa8Ke3Ru",
         "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _png()}},
                     {"type": "text", "text": "Screenshot of https://status.northwind.example/relay taken 2025-11-30T15:12:44Z"}]},
    ]},
]


def build() -> dict:
    system = [{"type": "text", "text": PRESET, "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": APP_PROMPT, "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": name, "description": desc, "input_schema": sch}
             for name, desc, sch in CLAUDE_CODE_TOOLS if name in KEEP]
    tools += [{"name": name, "description": desc, "input_schema": sch} for name, desc, sch in MCP_TOOLS]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": MODEL,
        "max_tokens": 16000,
        "thinking": {"type": "enabled", "budget_tokens": 8000},
        "system": system,
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["\n\nHuman:"],
        "messages": MESSAGES,
        "metadata": {"user_id": "user_9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
                                "_account_5d2e1f0a-3b4c-4d5e-8f90-a1b2c3d4e5f6_session_7c6b5a49-3827-4161-9e0d-fc1b2a3d4e5f"},
        "stream": True,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=None, ensure_ascii=False))
    print(f"{OUT}: {OUT.stat().st_size} bytes")
