"""The store's tables, created and migrated by the gateway (one version per step, in order).

Step 3 holds the volume limits' counters (``gateway_counters``, ``gateway_charge``); step 4 the
"approve always" decisions every instance applies (``gateway_always``); step 5 the restore
vault (``gateway_vault``: values encrypted under a key derived from the vault key, never clear).
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
    (3, """
CREATE TABLE gateway_counters (      -- volume limits: per (limit, key, second, instance)
    rule text NOT NULL,              -- the limit's name
    key text NOT NULL,               -- session:<id> or client:<address>
    second bigint NOT NULL,          -- unix time, whole seconds
    instance text NOT NULL,
    requests bigint NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (rule, key, second, instance)
);
CREATE INDEX gateway_counters_age ON gateway_counters (second);
-- charge one request of p_bytes to every (rule, key), then return their buckets since p_since
-- (every instance's, this request included): one round trip, in one transaction
CREATE FUNCTION gateway_charge(p_instance text, p_rules text[], p_keys text[], p_second bigint,
                               p_bytes bigint, p_since bigint)
RETURNS TABLE (o_rule text, o_key text, o_second bigint, o_requests bigint, o_bytes bigint)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gateway_counters AS c (rule, key, second, instance, requests, bytes)
        SELECT u.r, u.k, p_second, p_instance, 1, p_bytes FROM unnest(p_rules, p_keys) AS u(r, k)
        ON CONFLICT ON CONSTRAINT gateway_counters_pkey
        DO UPDATE SET requests = c.requests + 1, bytes = c.bytes + EXCLUDED.bytes;
    RETURN QUERY
        SELECT c.rule, c.key, c.second, sum(c.requests)::bigint, sum(c.bytes)::bigint
          FROM gateway_counters c JOIN unnest(p_rules, p_keys) AS u(r, k)
            ON c.rule = u.r AND c.key = u.k
         WHERE c.second >= p_since
         GROUP BY c.rule, c.key, c.second;
END
$$;
"""),
    (4, """
CREATE TABLE gateway_always (        -- "approve always": a session and a rule (its content key)
    session text NOT NULL,
    rule text NOT NULL,
    rule_key text NOT NULL,          -- a changed rule needs a new decision
    decided_by text NOT NULL,
    instance text NOT NULL,          -- where it was decided
    created timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session, rule, rule_key)
);
"""),
    (5, """
CREATE TABLE gateway_vault (         -- restore pseudonyms (pseudonyms.pgvault): (session, token)
    session text NOT NULL,
    token text NOT NULL,
    value bytea NOT NULL,            -- nonce + AES-256-GCM(derived key, value, session NUL token)
    created timestamptz NOT NULL DEFAULT now(),
    used timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session, token)
);
CREATE INDEX gateway_vault_used ON gateway_vault (used);
"""),
]
COUNTERS_KEEP_SECONDS = 120  # counter rows older than this are deleted (the window is 60 s)
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
