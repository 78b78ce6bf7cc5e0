"""The store's tables, created and migrated by the gateway (one version per step, in order).

Issue 23 adds the pseudonym vault and volume counters as further steps of `MIGRATIONS`.
"""

from __future__ import annotations

# Concurrent instances starting together migrate one at a time (a transaction-level lock).
LOCK = "SELECT pg_advisory_xact_lock(hashtext('egress_gateway_schema'))"
VERSION_TABLE = "CREATE TABLE IF NOT EXISTS gateway_schema (version int NOT NULL)"

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE gateway_instances (
    id text PRIMARY KEY,
    started timestamptz NOT NULL DEFAULT now(),
    seen timestamptz NOT NULL DEFAULT now(),
    pid int,
    listen text
);
CREATE TABLE gateway_holds (
    id text PRIMARY KEY,                 -- the flow id
    instance text NOT NULL,
    session text,
    rule text NOT NULL,
    reason text NOT NULL,
    method text, host text, port int, path text,   -- the redacted request line, no query
    detected jsonb NOT NULL DEFAULT '{}',          -- entity counts, never values
    created timestamptz NOT NULL DEFAULT now(),
    deadline timestamptz NOT NULL,
    on_timeout text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'decided', 'ended')),
    verdict text CHECK (verdict IN ('approve', 'deny')),
    always boolean NOT NULL DEFAULT false,
    decided_by text,
    decided_at timestamptz,
    outcome text,
    ended_at timestamptz
);
CREATE INDEX gateway_holds_open ON gateway_holds (instance) WHERE state <> 'ended';
"""),
    (2, """
CREATE TABLE gateway_audit_heads (   -- each instance's audit chain head, checkpointed
    instance text PRIMARY KEY,
    log text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    alg text NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
"""),
]
HEAD_SECONDS = 5.0  # how often an instance checkpoints its audit chain's head to the store
LATEST = MIGRATIONS[-1][0]

# channels: a decision for an instance (payload: instance id); a new hold (payload: flow id)
DECISIONS_CHANNEL = "gateway_decisions"
HOLDS_CHANNEL = "gateway_holds"

# An instance silent for this long is lost; its holds end as denied (instance lost). Instances
# beat every HEARTBEAT_SECONDS, so a lost instance's holds end within 10 s of its last beat.
LOST_SECONDS = 9.0
HEARTBEAT_SECONDS = 0.5

REAP_LOST = f"""
UPDATE gateway_holds SET state = 'ended', outcome = 'denied', decided_by = 'instance lost',
       ended_at = now()
 WHERE state <> 'ended' AND instance IN (
       SELECT id FROM gateway_instances WHERE seen < now() - interval '{LOST_SECONDS} seconds')
RETURNING id
"""
