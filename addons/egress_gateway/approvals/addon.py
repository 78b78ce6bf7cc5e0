"""Just-in-time approvals: hold risky requests until a human reviewer decides.

A request matching a rule of the policy's ``approve`` section is held (intercepted) in the
``request`` hook, after redaction (it matches on redaction's counts) and before credentials are
injected (the reviewer sees placeholders). Under mitmweb the reviewer resumes (approve) or kills
(deny) the flow with mitmweb's own controls, or with the commands ``gateway.approve``,
``gateway.approve.always`` and ``gateway.deny`` (what ``run_gateway.sh approvals`` calls through
mitmweb's REST API). Under mitmdump no reviewer can exist: the rule's ``unattended`` decides.

mitmproxy 12.3.1 facts this is built around: a kill does not wake ``flow.wait_for_resume()``
(the hold polls for it), and a killed HTTP/1 flow would close the connection without an answer
(the hold turns the kill into the gateway's ``403 denied``).

The review channel is guarded too: mitmweb must listen on loopback, the gateway refuses to dial
mitmweb's own port, and security-relevant options cannot be changed at run time (``PUT /options``,
``set``, ``options.load``, ``options.reset``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import urllib.parse
from collections import OrderedDict
from typing import Annotated, Literal

from mitmproxy import command, ctx, exceptions, hooks, http
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from egress_gateway import session
from egress_gateway.flowstate import refuse
from egress_gateway.net import hosts

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02
DEFAULT_TIMEOUT = 60.0
MAX_ALWAYS = 10_000  # remembered "approve always" decisions (oldest forgotten first)
MAX_TIMEOUT = 3600.0


# --- the policy section ------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,31}$")


def _known_entities() -> tuple[set[str], set[str]]:
    """(every entity name, the secret ones). Imported lazily: the detection package is heavy."""
    from egress_gateway.detection.entities import ALL_ENTITIES, SECRET_ENTITIES

    return set(ALL_ENTITIES), set(SECRET_ENTITIES)


def _globs(v: str | list[str] | None) -> list[str] | None:
    if v is None:
        return None
    items = [v] if isinstance(v, str) else list(v)
    if not items:
        raise ValueError("give at least one host glob")
    return [hosts.validate_host_glob(str(h)) for h in items]


def validate_path_glob(pattern: str) -> str:
    """A path glob: starts with '/', '*' matches any characters (also '/'), the rest is literal."""
    p = pattern.strip()
    if not p.startswith("/"):
        raise ValueError(f"{pattern!r}: a path glob starts with '/', as in '/admin/*'")
    for ch, why in (("?", "the query is not matched; glob the path only"),
                    ("#", "fragments are never sent"),
                    ("[", "character classes are not supported"),
                    ("]", "character classes are not supported")):
        if ch in p:
            raise ValueError(f"{pattern!r}: {ch!r} is not allowed ({why})")
    if "**" in p:
        raise ValueError(f"{pattern!r}: use '*' (it already matches across '/')")
    if len(p) > 1024:
        raise ValueError("path glob longer than 1024 characters")
    return p


def _path_regex(pattern: str) -> re.Pattern:
    body = ".*".join(re.escape(part) for part in pattern.lower().split("*"))
    if pattern.endswith("/*"):  # '/admin/*' also holds '/admin' itself
        body = body[: -len(re.escape("/") + ".*")] + "(?:/.*)?"
    return re.compile(body, re.DOTALL)


def normalize_path(path: str) -> str:
    """The path as a server would likely see it: no query, %XX decoded, no dot segments or '//'."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):  # double-encoding
        q = urllib.parse.unquote(p)
        if q == p:
            break
        p = q
    p = p.replace("\\", "/")
    segments: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    out = "/" + "/".join(segments)
    if p.endswith("/") and segments:
        out += "/"
    return out.lower()


class ApproveRule(_Model):
    """Hold matching requests for a human. Every matcher given must match; 'entities' and
    'any_secret' match when any of them was detected in the request."""

    name: str = Field(description="Rule name (letters, digits, '_', '.', '-'); unique.")
    reason: str = Field(min_length=1, description="Why a human must confirm; shown to the reviewer "
                        "and in refusals.")
    host: str | list[str] | None = Field(
        None, description="Destination host glob(s) (exact or '*.domain'): the rule applies only "
        "to these hosts.")
    host_not: str | list[str] | None = Field(
        None, description="Host glob(s) the rule does NOT apply to ('outside *.internal.example.com'). "
        "IP-literal destinations are always outside.")
    methods: list[str] | None = Field(
        None, min_length=1, description="HTTP methods, e.g. [POST, PUT, DELETE]; default any.")
    path: str | None = Field(
        None, description="Path glob, e.g. '/admin/*' ('*' matches anything, '/' included; "
        "'/x/*' also matches '/x'). Compared case-insensitively after %-decoding and removing "
        "dot segments; the query is not part of the path.")
    entities: list[str] | None = Field(
        None, min_length=1, description="Detected entity names (see detection), e.g. [CREDIT_CARD].")
    any_secret: bool = Field(False, description="Match when any secret entity was detected.")
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT)] = Field(
        DEFAULT_TIMEOUT, description="Seconds to wait for a reviewer (default 60).")
    on_timeout: Literal["deny", "allow"] = Field(
        "deny", description="What a timeout means (default deny).")
    unattended: Literal["deny", "allow"] = Field(
        "deny", description="The decision when no reviewer can exist (mitmdump); default deny.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: a rule name is 1-64 letters, digits, '_', '.' or '-'")
        return v

    @field_validator("host", "host_not")
    @classmethod
    def _check_hosts(cls, v):
        return _globs(v)

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = []
        for m in v:
            u = str(m).strip().upper()
            if not _METHOD.match(u):
                raise ValueError(f"{m!r} is not an HTTP method")
            out.append(u)
        return out

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str | None) -> str | None:
        return None if v is None else validate_path_glob(v)

    @field_validator("entities")
    @classmethod
    def _check_entities(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        known, _ = _known_entities()
        unknown = [e for e in v if e not in known]
        if unknown:
            raise ValueError(f"unknown entity names {unknown}; known: {', '.join(sorted(known))}")
        return list(v)

    @model_validator(mode="after")
    def _some_matcher(self) -> ApproveRule:
        if not (self.host or self.host_not or self.methods or self.path or self.entities
                or self.any_secret):
            raise ValueError(f"rule {self.name!r} matches every request; give at least one of "
                             "host, host_not, methods, path, entities, any_secret")
        return self

    # --- matching -----------------------------------------------------------------------------
    def matches_target(self, method: str, host: str | None, path: str) -> bool:
        """Method, host and path (what is known from the headers)."""
        if self.methods and method.upper() not in self.methods:
            return False
        if self.host and (host is None or not any(hosts.host_matches(g, host) for g in self.host)):
            return False
        if self.host_not and host is not None and any(hosts.host_matches(g, host) for g in self.host_not):
            return False
        if self.path:
            rx = _path_regex(self.path)
            raw = path.split("?", 1)[0].lower()
            if not (rx.fullmatch(raw) or rx.fullmatch(normalize_path(path))):
                return False
        return True

    def detected(self, counts: dict[str, int]) -> bool | None:
        """Whether the detection matchers fire (None: the rule has none)."""
        if not self.entities and not self.any_secret:
            return None
        if self.entities and any(counts.get(e, 0) > 0 for e in self.entities):
            return True
        if self.any_secret:
            _, secret = _known_entities()
            return any(n > 0 and e in secret for e, n in counts.items())
        return False

    def matches(self, method: str, host: str | None, path: str, counts: dict[str, int]) -> bool:
        return self.matches_target(method, host, path) and self.detected(counts) is not False

    @property
    def key(self) -> str:
        """Identifies this rule's content: a changed rule needs a new 'approve always'."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _unique_names(rules: list[ApproveRule]) -> list[ApproveRule]:
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise ValueError(f"duplicate rule name {r.name!r}")
        seen.add(r.name)
    return rules


ApproveRules = Annotated[list[ApproveRule], AfterValidator(_unique_names)]


# --- options that must not change at run time ----------------------------------------------
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


# --- the addon -------------------------------------------------------------------------------
class Hold:
    """A request waiting for a reviewer."""

    def __init__(self, flow: http.HTTPFlow, rule: ApproveRule, detected: dict[str, int]):
        self.flow = flow
        self.rule = rule
        self.detected = detected
        self.started = time.monotonic()
        self.decision: tuple[str, str, bool] | None = None  # (approve|deny, decided_by, always)

    def summary(self) -> dict:
        req = self.flow.request
        return {
            "id": self.flow.id, "rule": self.rule.name, "reason": self.rule.reason,
            "method": req.method, "host": req.pretty_host, "port": req.port,
            "path": req.path.split("?", 1)[0], "detected": self.detected,
            "session": session.session_of(self.flow),
            "waiting_seconds": round(time.monotonic() - self.started, 1),
            "timeout": self.rule.timeout, "on_timeout": self.rule.on_timeout,
        }


def _detected_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()) if v) or "nothing"


def _snapshot(req: http.Request) -> tuple:
    return (req.method, req.scheme, req.host, req.port, req.path, tuple(req.headers.fields),
            req.raw_content, tuple(req.trailers.fields) if req.trailers else None)


class Approvals:
    """Holds requests that match the policy's ``approve`` rules until a reviewer decides."""

    name = "egress_gateway_approvals"

    def __init__(self, core, egress, attended: bool | None = None) -> None:
        self.core = core
        self.egress = egress
        self.attended = attended  # None: a reviewer exists when running under mitmweb
        self.peers: list = []  # the bundle, to find the redaction addon (set by make_addons)
        self.held: dict[str, Hold] = {}
        # (session, rule name, rule key) -> None, oldest first: "approve always" decisions,
        # bounded so that a flood of sessions cannot grow it without limit
        self.always: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    # --- lifecycle ---------------------------------------------------------------------------
    def _web(self) -> bool:
        try:
            return ctx.master.addons.get("webaddon") is not None
        except Exception:
            return False

    def reviewer_possible(self) -> bool:
        return self._web() if self.attended is None else self.attended

    def configure(self, updated: set[str]) -> None:
        if self._web() and updated & {"web_host"}:
            host = ctx.options.web_host
            ip = hosts.parse_ip_literal(host) if host else None
            if host.lower() != "localhost" and (ip is None or not ip.is_loopback):
                raise exceptions.OptionsError(
                    f"mitmweb must listen on loopback only (web_host={host!r}): the review channel "
                    "decides what leaves; use 127.0.0.1")

    def running(self) -> None:
        if not self._web():
            return
        install_option_guard(ctx.options)
        guard_web_commands()
        cols = list(ctx.options.web_columns)
        if "comment" not in cols:
            ctx.options.update(web_columns=[*cols, "comment"])
        rules = self._rules()
        log.info(f"egress gateway: approvals by a reviewer in mitmweb ({len(rules)} rules)")

    def done(self) -> None:
        # An unloaded gateway must not leave flows hanging: deny what is still held.
        for hold in list(self.held.values()):
            hold.decision = ("deny", "shutdown", False)

    def _rules(self) -> list[ApproveRule]:
        policy = self.core.policy
        return list(getattr(policy, "approve", None) or []) if policy is not None else []

    def _redaction_peer(self):
        for a in self.peers:
            if type(a).__module__.startswith("egress_gateway.redact"):
                return a
        return None

    # --- hooks -------------------------------------------------------------------------------
    @staticmethod
    def _target(flow: http.HTTPFlow) -> tuple[str, str | None, str]:
        req = flow.request
        try:
            host = hosts.normalize_host(req.pretty_host)
            if hosts.parse_ip_literal(host) is not None:
                host = None  # IP literals never match host globs (and are outside every host_not)
        except ValueError:
            host = None
        return req.method, host, req.path

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request that may be held must not stream its body past the hold."""
        if flow.response or flow.error or not flow.live:
            return
        try:
            method, host, path = self._target(flow)
            if any(r.matches_target(method, host, path) for r in self._rules()):
                flow.request.stream = False
        except Exception:
            log.exception("egress gateway: internal error in approvals (requestheaders)")
            refuse(flow, "internal_error", "the gateway failed while checking approvals")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        try:
            await self._request(flow)
        except Exception:
            log.exception("egress gateway: internal error in approvals; refusing the flow")
            self._revive(flow)
            refuse(flow, "internal_error", "the gateway failed while holding the request for approval")

    async def _request(self, flow: http.HTTPFlow) -> None:
        rules = self._rules()
        if not rules:
            return
        method, host, path = self._target(flow)
        meta = flow.metadata.setdefault("gateway", {})
        counts = dict((meta.get("redactions") or {}).get("request") or {})
        rule = next((r for r in rules if r.matches(method, host, path, counts)), None)
        if rule is None:
            return
        sess = session.session_of(flow)
        if (sess, rule.name, rule.key) in self.always:
            self._record(flow, rule, "approved", "always", 0.0, held=False)
            return
        if not self.reviewer_possible():
            outcome = "approved" if rule.unattended == "allow" else "denied"
            self._record(flow, rule, outcome, "unattended", 0.0, held=False)
            if outcome == "denied":
                self._deny(flow, rule, "no reviewer can approve it (unattended)")
            return
        await self._hold(flow, rule, counts, sess)

    async def _hold(self, flow: http.HTTPFlow, rule: ApproveRule, counts: dict, sess: str) -> None:
        hold = Hold(flow, rule, {k: v for k, v in counts.items() if v})
        self.held[flow.id] = hold
        before = _snapshot(flow.request)
        prior = flow.comment  # e.g. redaction's counts: kept after our status
        flow.comment = (f"HELD for approval by rule {rule.name!r}: {rule.reason}. "
                        f"Detected: {_detected_text(hold.detected)}. Timeout {rule.timeout:g}s "
                        f"({rule.on_timeout}). Resume = approve, Abort = deny; Mark, then Resume = "
                        "approve always (this session and rule)." + (f"; {prior}" if prior else ""))
        flow.intercept()
        self._update(flow)
        log.warning(f"egress gateway: holding {flow.request.method} {flow.request.pretty_host}"
                    f"{flow.request.path.split('?', 1)[0]} for approval (rule {rule.name}, flow {flow.id})")
        try:
            verdict, by, always = await self._wait(flow, hold)
        finally:
            self.held.pop(flow.id, None)
        waited = round(time.monotonic() - hold.started, 3)
        killed = flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
        self._revive(flow)
        if verdict == "timeout":
            verdict = "approve" if rule.on_timeout == "allow" else "deny"
        if verdict == "deny" or killed:
            self._record(flow, rule, "denied", by, waited)
            why = {"timeout": f"no reviewer decided within {rule.timeout:g}s"}.get(
                by, "a reviewer denied it" if by.startswith("reviewer") else f"denied ({by})")
            self._deny(flow, rule, why)
            flow.comment = f"DENIED ({by}) after {waited:g}s: rule {rule.name!r}" + (
                f"; {prior}" if prior else "")
            return
        if always:
            self.always[(sess, rule.name, rule.key)] = None
            while len(self.always) > MAX_ALWAYS:
                self.always.popitem(last=False)
        self._record(flow, rule, "approved", by, waited, always=always or None)
        flow.comment = (f"APPROVED ({by}{', always' if always else ''}) after {waited:g}s: "
                        f"rule {rule.name!r}" + (f"; {prior}" if prior else ""))
        if _snapshot(flow.request) != before:
            await self._recheck_edited(flow, rule)

    def client_disconnected(self, client) -> None:
        """The agent went away while its request was held: stop waiting (denied, never sent)."""
        for hold in list(self.held.values()):
            if hold.decision is None and hold.flow.client_conn.id == client.id:
                hold.decision = ("deny", "client disconnected", False)

    async def _wait(self, flow: http.HTTPFlow, hold: Hold) -> tuple[str, str, bool]:
        deadline = hold.started + hold.rule.timeout
        while True:
            if hold.decision is not None:
                return hold.decision
            if flow.error is not None:  # killed in mitmweb (a kill does not wake wait_for_resume)
                return ("deny", "reviewer:mitmweb", False)
            if not flow.intercepted:  # resumed in mitmweb; a marked flow means 'approve always'
                return ("approve", "reviewer:mitmweb", bool(flow.marked))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ("timeout", "timeout", False)
            await asyncio.sleep(min(POLL_SECONDS, remaining))

    async def _recheck_edited(self, flow: http.HTTPFlow, rule: ApproveRule) -> None:
        """A reviewer edited the held request: egress and redaction check it again (fail closed)."""
        meta = flow.metadata.setdefault("gateway", {})
        meta["approval"]["edited"] = True
        await self.egress.request(flow)
        if flow.response:
            return
        red = self._redaction_peer()
        if red is None:
            return
        rescan = getattr(red, "rescan_request", None) or getattr(red, "request", None)
        if rescan is None:
            self._deny(flow, rule, "the request was edited during review and cannot be re-scanned "
                       "for sensitive data; send it again instead of editing it")
            return
        result = rescan(flow)
        if asyncio.iscoroutine(result):
            await result

    # --- decisions -----------------------------------------------------------------------------
    @staticmethod
    def _revive(flow: http.HTTPFlow) -> None:
        """Undo a kill (and an interception) so that the gateway's own answer reaches the client."""
        if flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
            flow.error = None
            flow.live = True
        if flow.intercepted:
            flow.resume()

    @staticmethod
    def _deny(flow: http.HTTPFlow, rule: ApproveRule, why: str) -> None:
        refuse(flow, "denied", f"approval rule {rule.name!r}: {rule.reason}; {why}",
               rule=rule.name)

    @staticmethod
    def _record(flow, rule, outcome, by, waited, held=True, always=None) -> None:
        approval = {"rule": rule.name, "outcome": outcome, "decided_by": by,
                    "wait_seconds": waited, "held": held}
        if always:
            approval["always"] = True
        flow.metadata.setdefault("gateway", {})["approval"] = approval
        log.info(f"egress gateway: approval {outcome} by {by} after {waited:g}s "
                 f"(rule {rule.name}, flow {flow.id})")

    @staticmethod
    def _update(flow) -> None:
        try:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        except Exception:
            log.debug("egress gateway: could not announce a flow update", exc_info=True)

    def _find(self, flow_id: str) -> Hold:
        fid = flow_id.strip()
        if fid in self.held:
            return self.held[fid]
        found = [h for k, h in self.held.items() if fid and k.startswith(fid)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise exceptions.CommandError(f"no request is held with id {flow_id!r}")
        raise exceptions.CommandError(f"{flow_id!r} is ambiguous: {len(found)} held requests")

    def _decide(self, flow_id: str, verdict: str, always: bool) -> str:
        hold = self._find(flow_id)
        if hold.decision is None:
            hold.decision = (verdict, "reviewer:command", always)
        return hold.flow.id

    # --- commands (REST: POST /commands/<name>, no underscores in names) -------------------------
    @command.command("gateway.approve")
    def approve(self, flow_id: str) -> str:
        """Approve a held request once (a unique id prefix is enough)."""
        return self._decide(flow_id, "approve", False)

    @command.command("gateway.approve.always")
    def approve_always(self, flow_id: str) -> str:
        """Approve a held request and every later one of the same session and rule."""
        return self._decide(flow_id, "approve", True)

    @command.command("gateway.deny")
    def deny(self, flow_id: str) -> str:
        """Deny a held request: the agent gets 403 denied."""
        return self._decide(flow_id, "deny", False)

    @command.command("gateway.held")
    def list_held(self) -> str:
        """The held requests as JSON (no bodies, no header values, no queries)."""
        return json.dumps([h.summary() for h in self.held.values()])

    # --- the review channel is not reachable through the gateway ---------------------------------
    def server_connect(self, data) -> None:
        server = data.server
        if server.error or not server.address or not self._web():
            return
        try:
            host, port = server.address[0], server.address[1]
            if port != ctx.options.web_port:
                return
            ip = hosts.parse_ip_literal(str(host))
            web_ip = hosts.parse_ip_literal(ctx.options.web_host or "")
            if str(host).lower().rstrip(".") == "localhost" or (ip is not None and (
                    ip.is_loopback or ip.is_unspecified or (web_ip is not None and ip == web_ip))):
                server.error = "blocked by the egress gateway: that is the gateway's review channel"
                log.warning(f"egress gateway refused a dial to the review channel {host}:{port}")
        except Exception as e:
            log.exception("egress gateway: internal error in approvals (server_connect)")
            server.error = f"egress gateway internal error: {e}"
