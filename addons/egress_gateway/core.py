"""The core addon: options, the policy (loaded, validated, watched), the readiness gate, the audit log."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from egress_gateway import logscrub
from egress_gateway.connections import Connections
from egress_gateway.flowstate import refuse
from egress_gateway.locations import DEFAULT_POLICY, RECORDINGS
from egress_gateway.net import hosts
from egress_gateway.policy import Policy, PolicyError, load_policy
from egress_gateway.policy.compiled import Compiled, Compiler, compile_policy
from egress_gateway.recording import settings as recording_settings
from egress_gateway.recording.audit import CHECKPOINT_SECONDS, AuditLog

log = logging.getLogger(__name__)

POLICY_POLL_SECONDS = 1.0
READY_LINE = "gateway ready"


def _file_state(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Core:
    """Owns the options, the current policy and the audit log; opens the gate once ready."""

    name = "egress_gateway_core"

    def __init__(self) -> None:
        self.compilers: dict[str, Compiler] = {}
        self.warmers: list[Callable[[Compiled], None]] = []  # build engines before a swap
        self.compiled: Compiled | None = None
        self.connections = Connections()  # what each client connection's CONNECT established
        self.policy_path: Path | None = None
        self._policy_state: tuple | None = None
        self.audit: AuditLog | None = None
        self.gate: Gate | None = None
        self._tasks: list[asyncio.Task] = []
        self.closer = AuditCloser(self)  # the bundle's last addon: closes the audit log

    # --- the policy and its compiled state ------------------------------------------------
    def add_warmer(self, warm: Callable[[Compiled], None]) -> None:
        """Register what a reloaded policy must build before it replaces the current one (the
        detection engines, in the scan workers too); it runs off the event loop, and an error
        keeps the last good policy."""
        self.warmers.append(warm)

    def add_compiler(self, name: str, build: Compiler) -> None:
        """Register a feature's per-policy state builder (before the policy loads)."""
        self.compilers[name] = build
        if self.compiled is not None:
            self.compiled = compile_policy(self.compiled.policy, self.compilers)

    @property
    def policy(self) -> Policy | None:
        return self.compiled.policy if self.compiled is not None else None

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        """Swap the policy and its compiled state together (tests assign a policy directly)."""
        self.compiled = None if policy is None else compile_policy(policy, self.compilers)

    def require_policy(self) -> Policy:
        """The current policy; raises (an enforcing hook then refuses the flow) when none is loaded."""
        policy = self.policy
        if policy is None:
            raise RuntimeError("no policy loaded")
        return policy

    # --- lifecycle --------------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option(
            "gateway_policy", str, str(DEFAULT_POLICY),
            "Gateway policy file (YAML, version 1). Edits apply to new flows; a broken edit "
            "keeps the last good policy.",
        )
        loader.add_option(
            "gateway_audit_log", str, "",
            "Audit log: one JSON line per flow (default: <gateway_recordings>/audit.jsonl). "
            "One gateway at a time holds it (a lock file beside it).",
        )
        recording_settings.add_hmac_option(loader)
        self.gate = install_gate()
        logscrub.install()

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # eager dials upstream for a CONNECT before any hook can refuse it.
            log.warning("egress gateway: forcing connection_strategy=lazy (eager dials first)")
            ctx.options.update(connection_strategy="lazy")
        if "gateway_policy" in updated:
            path = Path(ctx.options.gateway_policy).expanduser()
            try:
                self.compiled = self._load_checked(path)
            except PolicyError as e:
                raise exceptions.OptionsError(f"invalid gateway policy:\n{e}") from None
            policy, self.policy_path = self.policy, path
            self._policy_state = _file_state(path)
            log.info(f"egress gateway: policy {path} loaded ({_summary(policy)})")
        if updated & {"gateway_policy", "listen_host", "mode", "proxyauth"} and self.policy:
            problem = exposure_problem(ctx.options.mode, ctx.options.listen_host,
                                       ctx.options.proxyauth, self.policy)
            if problem:
                raise exceptions.OptionsError(problem)
        if updated & AUDIT_OPTIONS:
            self._configure_audit(updated)

    def running(self) -> None:
        if self.policy is None or self.audit is None or self.gate is None:
            log.error("egress gateway: not configured; refusing all traffic")
            return
        self.gate.open(self)
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_policy()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._announce()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._checkpoints()))

    def done(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        if self.gate:
            self.gate.close(self)
        # The audit log stays open: the recorder still records the flows that complete during
        # shutdown (while the addons after this one finish); `closer`, the last addon, closes it.

    # --- the audit log: opened, keyed and closed here; written through core.audit.write() ------
    def _configure_audit(self, updated: set[str]) -> None:
        opts = ctx.options
        try:
            key = recording_settings.parse_hmac_env(opts.gateway_audit_hmac_env)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        # The recorder's option (when it is loaded): lines are synced like the recordings.
        fsync = bool(getattr(opts, "gateway_recording_fsync", False))
        if updated & {"gateway_audit_log", "gateway_recordings"} or self.audit is None:
            if self.audit:
                self.audit.close()
                self.audit = None
            try:
                self.audit = AuditLog(audit_log_path(opts), key, fsync)
            except OSError as e:
                raise exceptions.OptionsError(f"cannot open gateway_audit_log: {e}") from None
        else:
            self.audit.set_key(key)
            self.audit.fsync = fsync
        log.info(f"egress gateway: audit chain {self.audit.alg}"
                 + ("" if key else f" (set ${opts.gateway_audit_hmac_env} for an HMAC chain)"))

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            self.checkpoint_audit()

    def checkpoint_audit(self) -> None:
        """Record the audit chain's head beside the log (periodically, on rotation, at close)."""
        if self.audit is None:
            return
        try:
            self.audit.checkpoint()
        except (OSError, ValueError):
            log.exception("egress gateway: could not write the audit checkpoint")

    def close_audit(self) -> None:
        """Checkpoint and close the audit log (by `closer`, after every other addon's done)."""
        if self.audit is not None:
            self.checkpoint_audit()
            self.audit.close()

    def client_disconnected(self, client) -> None:
        self.connections.forget(client.id)

    async def _announce(self) -> None:
        """Turn the proxy server on (run_gateway.sh starts it off) and say when it listens."""
        if not ctx.options.server:
            ctx.options.update(server=True)
        ps = ctx.master.addons.get("proxyserver")
        ok = await ps.setup_servers()  # waits for the update started by server=True
        addrs = ", ".join(f"{h}:{p}" for h, p, *_ in ps.listen_addrs())
        if not ok or not addrs:
            log.error("egress gateway: the proxy server is not listening; gateway NOT ready")
            return
        log.info(f"{READY_LINE}: policy {self.policy_path} ({_summary(self.policy)}); "
                 f"listening on {addrs}; pid {os.getpid()}")

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(POLICY_POLL_SECONDS)
            path = self.policy_path
            if path is None:
                continue
            state = _file_state(path)
            if state == self._policy_state:
                continue
            self._policy_state = state
            try:
                compiled = self._load_checked(path)
            except PolicyError as e:
                log.error(f"egress gateway: policy reload FAILED, keeping the last good policy:\n{e}")
                continue
            try:
                for warm in self.warmers:
                    await asyncio.to_thread(warm, compiled)
            except Exception as e:  # noqa: BLE001 - e.g. a model the workers cannot load
                log.error(f"egress gateway: policy reload FAILED, keeping the last good policy:\n"
                          f"{path}: cannot build the detection engine: {e}")
                continue
            self.compiled = compiled  # one assignment: flows see the old or the new, never a mix
            policy = compiled.policy
            log.info(f"egress gateway: policy {path} reloaded ({_summary(policy)})")

    def _load_checked(self, path: Path) -> Compiled:
        """Load and compile a policy, checked against how the gateway listens; raise PolicyError."""
        policy = load_policy(path)
        problem = exposure_problem(ctx.options.mode, ctx.options.listen_host, ctx.options.proxyauth,
                                   policy)
        if problem:
            raise PolicyError([f"{path}: clients.allow: {problem}"])
        return compile_policy(policy, self.compilers, str(path))


AUDIT_OPTIONS = frozenset({"gateway_audit_log", "gateway_audit_hmac_env", "gateway_recording_fsync",
                           "gateway_recordings"})


def audit_log_path(opts) -> Path:
    """The audit log: the option, else ``<gateway_recordings>/audit.jsonl`` (so that `verify
    DIR` finds it and two gateways with their own folders never share one chain)."""
    if opts.gateway_audit_log:
        return Path(opts.gateway_audit_log).expanduser()
    folder = getattr(opts, "gateway_recordings", "") or ""
    return (Path(folder).expanduser() if folder else RECORDINGS) / "audit.jsonl"


class AuditCloser:
    """Closes Core's audit log in the last ``done`` of the bundle (after the recorder's)."""

    name = "egress_gateway_audit_closer"

    def __init__(self, core: Core) -> None:
        self.core = core

    def done(self) -> None:
        self.core.close_audit()


def _summary(policy: Policy | None) -> str:
    if policy is None:
        return "no policy"
    return f"{policy.egress.mode}, {len(policy.egress.allow)} allow rules"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    ip = hosts.parse_ip_literal(host) if host else None
    return ip is not None and ip.is_loopback


def exposure_problem(modes, listen_host: str, proxyauth: str | None, policy: Policy) -> str | None:
    """Why listening as configured would expose the gateway to anyone, or None if it is fine."""
    if proxyauth or policy.clients.allow:
        return None
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy reports invalid modes itself
        if mode.listen_port(None) is None and mode.type_name in ("local", "transparent"):
            continue  # no listening socket reachable from other hosts
        host = mode.listen_host(listen_host)
        if not _is_loopback(host):
            shown = host or "all interfaces"
            return (f"the gateway would listen on {shown} ({spec}) with no client restriction: "
                    "listen on 127.0.0.1, or set clients.allow in the policy, or proxyauth")
    return None


# --- the readiness gate ---------------------------------------------------------------
GATE_NAME = "egress_gateway_gate"
GATE_REASON = "the egress gateway is not loaded or not ready; nothing is forwarded"


class Gate:
    """The readiness gate.

    The readiness gate: no flow is forwarded unless a gateway is loaded, configured and ready.

    mitmproxy keeps a proxy running when a script fails to (re)load, forwarding everything. The
    gate is added to mitmproxy's addon chain directly, not through the script, so it outlives the
    script: when the gateway is unloaded (a reload after an edit, a failed load), the gate is closed
    and every request, tunnel and upstream dial is refused until a gateway opens it again.
    """

    name = GATE_NAME

    def __init__(self) -> None:
        self.owner: object | None = None

    @property
    def ready(self) -> bool:
        return self.owner is not None

    def open(self, owner: object) -> None:
        self.owner = owner

    def close(self, owner: object) -> None:
        if self.owner is owner:
            self.owner = None
            log.warning("egress gateway unloaded: refusing all traffic until it is ready again")

    def _refuse(self, flow: http.HTTPFlow) -> None:
        if not self.ready and not flow.response:
            refuse(flow, "gateway_unavailable", GATE_REASON)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._refuse(flow)

    def server_connect(self, data) -> None:
        if not self.ready and not data.server.error:
            data.server.error = GATE_REASON

    def tcp_start(self, flow) -> None:
        if not self.ready:
            flow.kill()

    def udp_start(self, flow) -> None:
        if not self.ready:
            flow.kill()

    def websocket_start(self, flow) -> None:
        if not self.ready:
            flow.kill()


def install_gate() -> Gate:
    """The gate of this mitmproxy instance, added to the addon chain once."""
    gate = ctx.master.addons.get(GATE_NAME)
    if gate is None:
        gate = Gate()
        ctx.master.addons.add(gate)
    return gate
