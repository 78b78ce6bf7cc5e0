"""The gateway's addons in hook order, their explicit links, and which addon acts in which hook.

`addons/gateway.py` exposes `make_addons()` to mitmproxy. mitmproxy calls a hook on every addon
in list order, so the order is the design: who sees a flow first, who sees its final form.
Addons reach the peers they need through the references given here; nothing is looked up by
name. `HOOKS` below says what each addon does in each hook (tests check it against the code).
"""

from __future__ import annotations

from egress_gateway.approvals.addon import Approvals
from egress_gateway.core import Core
from egress_gateway.credentials.addon import CredentialGuard, CredentialInjector
from egress_gateway.egress.addon import Egress
from egress_gateway.egress.upgrade import UpgradeGuard
from egress_gateway.fleet.addon import Fleet
from egress_gateway.limits.addon import Limits
from egress_gateway.postgres.addon import Postgres
from egress_gateway.recording.addon import Recorder
from egress_gateway.redact.addon import Redactor
from egress_gateway.redact.headers import HeaderScanner, SessionIdCheck
from egress_gateway.session import Session
from egress_gateway.shutdown import Shutdown

# addon class -> {hook: what it does there}, in the order of the bundle. (The readiness gate,
# added by the core to mitmproxy's own chain so that it outlives the script, refuses every
# request, CONNECT, dial and stream while the gateway is not ready.)
HOOKS: dict[str, dict[str, str]] = {
    "Shutdown": {
        "load": "declares gateway_shutdown_grace",
        "configure": "parses the grace",
        "running": "handles SIGTERM and SIGINT (a second one stops at once)",
        "client_connected": "refuses clients while stopping",
        "http_connect": "refuses CONNECTs while stopping (503 gateway_unavailable)",
        "requestheaders": "counts the flow in flight; refuses new requests while stopping",
        "response": "names a flow that ends while stopping 'drained' (before it is recorded)",
        "error": "names a flow that fails while stopping 'drained'",
        "websocket_end": "names a WebSocket that ends while stopping 'drained'",
        "tcp_end": "names a raw TCP flow that ends while stopping 'drained'",
        "tcp_error": "names a failed raw TCP flow while stopping 'drained'",
        "tcp_start": "counts the flow in flight; refuses it while stopping",
        "udp_start": "counts the flow in flight; refuses it while stopping",
        "done": "stops listening, drains within the grace, answers, closes and records the rest; "
                "writes the gateway_stop audit line (before any other addon's done)",
    },
    "Core": {
        "load": "declares gateway_policy, gateway_audit_log, gateway_audit_hmac_env; installs the gate",
        "configure": "loads and compiles the policy, checks exposure, opens and keys the audit log",
        "running": "opens the gate, turns the proxy server on, watches the policy file",
        "client_disconnected": "forgets the connection's CONNECT state",
        "done": "closes the gate",
    },
    "Session": {
        "http_connect": "takes the session from the CONNECT's Proxy-Authorization",
        "requestheaders": "assigns the session; strips the identity headers",
        "request": "strips the identity headers again (an addon may have put them back)",
    },
    "CredentialGuard": {
        "http_connect": "refuses placeholders or real secrets in a CONNECT",
        "requestheaders": "refuses leaks in headers and URL before anything awaits",
        "request": "refuses leaks in the body; scrubs real values",
        "responseheaders": "scrubs echoed secrets from headers; wraps streams with a scrubber",
        "response": "scrubs echoed secrets from the body",
        "websocket_message": "drops agent messages carrying a credential",
    },
    "Egress": {
        "client_connected": "refuses clients outside clients.allow",
        "http_connect": "checks the CONNECT target; remembers it",
        "requestheaders": "checks every identity of the request (URL, Host, :authority, SNI)",
        "request": "checks again, then resolves and checks the address",
        "next_layer": "reads the SNI of TLS passed through unread",
        "server_connect": "the backstop: checks every dial of every protocol, pins the address",
        "server_connected": "restores the requested name as the connection's address",
        "server_connect_error": "forgets the pinned address",
        "dns_request": "refuses lookups of names off the allowlist (DNS mode)",
    },
    "UpgradeGuard": {
        "requestheaders": "refuses an Upgrade that is not an inspectable WebSocket (415)",
        "response": "replaces a 101 that will not become a WebSocket with the refusal",
    },
    "HeaderScanner": {
        "http_connect": "refuses a CONNECT whose wildcard-allowed host labels carry data",
        "requestheaders": "scans method, URL keys/fragment, host labels and headers (no NER)",
        "request": "scans them again, and the trailers",
        "responseheaders": "scans the response headers (Set-Cookie included)",
        "response": "scans the trailers; completes a refusal made at responseheaders",
    },
    "Redactor": {
        "load": "declares gateway_body_limit, gateway_scan_workers, gateway_scan_timeout, "
                "gateway_scan_queue, gateway_scan_max_text and "
                "the restore vault's options (gateway_vault_key_env, _ttl, _file)",
        "configure": "starts the scan pool; builds the policy's detection engines; creates the "
                     "restore vault (in the fleet's store with gateway_state; a restore "
                     "rule without its key stops start-up)",
        "requestheaders": "refuses a declared over-limit body before it is buffered",
        "request": "redacts the request's body, query and path (restore rules: into tokens; "
                   "their vault in the fleet's store unreachable: 503 state_unavailable)",
        "responseheaders": "wraps server-sent events with the streaming redactor",
        "response": "redacts the response body, then restores a restore rule's tokens (or "
                    "closes a redacted stream)",
        "error": "closes a redacted stream that failed",
        "websocket_message": "redacts or drops each WebSocket message",
        "tcp_start": "refuses raw TCP (unscannable) unless the policy passes it",
        "udp_start": "refuses raw UDP (unscannable) unless the policy passes it",
        "done": "stops the scan pool; saves the restore vault (gateway_vault_file)",
    },
    "Fleet": {
        "load": "declares gateway_state, gateway_instance",
        "configure": "parses the store's URL (no password in it) and the instance id; puts the "
                     "instance id in every audit line",
        "running": "connects to the store: tables, heartbeat, decisions (LISTEN/NOTIFY + polling), "
                   "the audit chain's head every 5 s",
        "server_connect": "refuses dials to the store's address",
        "done": "ends this instance's open hold rows (shutdown); closes the connections",
    },
    "Approvals": {
        "configure": "guards security options and mitmweb's commands",
        "running": "knows whether a reviewer can exist (mitmweb)",
        "requestheaders": "keeps a request a rule may hold from streaming its body past the hold",
        "request": "holds matching requests until a reviewer (mitmweb or the fleet's queue), a "
                   "timeout or 'unattended' decides",
        "client_disconnected": "ends the holds of a client that went away",
        "server_connect": "refuses dials to mitmweb's own port",
        "done": "denies what is still held",
    },
    "CredentialInjector": {
        "load": "installs the on-the-wire injection (a version-pinned mitmproxy patch)",
        "configure": "warns that proxy_debug disables injection",
        "requestheaders": "refuses a bound request whose body streams past inspection",
        "request": "marks the final request for injection on the wire",
        "responseheaders": "wraps a streamed answer to an injected request with the scrubber",
        "error": "forgets the mark",
    },
    "Limits": {
        "request": "refuses what would take the session or the client address over a volume "
                   "limit (429 rate_limited); counts the request as sent (in a fleet: charged "
                   "in the store; store unreachable: 503 state_unavailable)",
    },
    "Postgres": {
        "configure": "adds one reverse:tcp listen mode per postgres entry; builds its engines",
        "next_layer": "gives a connection on an entry's port the PostgreSQL protocol layer",
        "tls_start_server": "the upstream TLS context of the entry (verify-full with its CA, require)",
        "postgres_statement": "read_only, then approve rules (held in mitmweb, or unattended)",
        "postgres_scan": "masks rows, COPY data, server messages and agent statements off the loop",
        "postgres_event": "records a statement (or login) as a TCP flow; writes its audit line",
        "done": "stops the scan pool; saves the restore vault (gateway_vault_file)",
    },
    "Recorder": {
        "load": "declares the recording options",
        "configure": "opens the recordings folder",
        "running": "starts the background fsync",
        "requestheaders": "refuses every flow while recordings cannot be written",
        "request": "refuses every flow while recordings cannot be written",
        "http_connect": "refuses CONNECTs while recordings cannot be written",
        "http_connected": "records the CONNECT",
        "http_connect_error": "records a refused CONNECT",
        "response": "records the flow as it crossed the boundary; writes its audit line",
        "error": "records a failed flow; writes its audit line",
        "websocket_end": "records the WebSocket's messages",
        "tcp_end": "records a raw TCP flow",
        "tcp_error": "records a failed raw TCP flow",
        "udp_end": "records a raw UDP flow",
        "udp_error": "records a failed raw UDP flow",
        "done": "flushes and closes the recording files",
    },
    "Finished": {
        "response": "a recorded flow is no longer in flight (for the drain)",
        "error": "a recorded failed flow is no longer in flight",
        "websocket_end": "a recorded WebSocket is no longer in flight",
        "tcp_end": "a recorded raw TCP flow is no longer in flight",
        "tcp_error": "a recorded failed raw TCP flow is no longer in flight",
        "udp_end": "a recorded raw UDP flow is no longer in flight",
        "udp_error": "a recorded failed raw UDP flow is no longer in flight",
    },
    "AuditCloser": {
        "done": "closes the audit log after the recorder has written the last lines",
    },
}


def make_addons() -> list:
    core = Core()
    egress = Egress(core)
    redactor = Redactor(core)
    # Approvals after redaction (they match on its counts, the reviewer sees redacted bodies, an
    # edited request is re-scanned by it) and before credentials are injected (the reviewer
    # sees placeholders).
    # The fleet's store (gateway_state) is the review queue of every instance.
    fleet = Fleet(core)
    # with gateway_state the restore vault lives in the store: usable while the store is up
    redactor.vaults.healthy = lambda: fleet.store is not None and fleet.store.up
    approvals = Approvals(core, egress, redactor, fleet=fleet)
    # Session first (refusals carry it). Credentials: the guard before egress (its hooks are
    # synchronous: leaks are refused and real values scrubbed before any hook awaits and mitmweb
    # can read the flow); the injector after approvals and redaction, before the recorder (it
    # marks the final request for injection on the wire). The recorder records the final flow
    # and writes its audit line; the closer closes the audit log after it.
    # The upgrade guard before the redactor: a refused switch is never scanned or forwarded.
    # The PostgreSQL lane owns its connections with its own protocol layer; it records through
    # the recorder (one TCP flow per statement), so it sits just before it.
    recorder = Recorder(core)
    # Shutdown first: its done drains every flow before any other addon's done stops the scan
    # pool, the recorder or the audit log; its tracker after the recorder (a flow is finished
    # once recorded and audited).
    postgres = Postgres(core, recorder)
    shutdown = Shutdown(core, approvals, redactor, recorder, postgres)
    return [shutdown, core, Session(core.connections, SessionIdCheck(core)), CredentialGuard(core), egress,
            UpgradeGuard(core), HeaderScanner(core, redactor), redactor, fleet, approvals,
            CredentialInjector(core), Limits(core, fleet), postgres, recorder, shutdown.finished, core.closer]
