-- Airlock schema version 1. Portable SQL: standard types, no PL/pgSQL, no
-- advisory locks, no LISTEN/NOTIFY (PostgreSQL, CockroachDB, YugabyteDB).
-- Strings a caller chooses (keys, scopes) are bytea: byte order and no NUL
-- restriction, whatever the database's collation.

-- Approvals: one row each, the record as JSON, its state for filtering,
-- and the version a compare-and-swap compares.
CREATE TABLE airlock_approvals (
    id text PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX airlock_approvals_by_state ON airlock_approvals (state);

-- Idempotency keys, by airlock_store::KeyRef::encode().
CREATE TABLE airlock_keys (
    key bytea PRIMARY KEY,
    version bigint NOT NULL,
    body text NOT NULL
);

-- Small host-wide values.
CREATE TABLE airlock_meta (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- The host mode: one row.
CREATE TABLE airlock_mode (
    id smallint PRIMARY KEY CHECK (id = 1),
    body text NOT NULL
);

-- Workspace keys, by plugin, owner (KeyOwner::encode()) and key.
CREATE TABLE airlock_kv (
    plugin text NOT NULL,
    owner bytea NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (plugin, owner, key)
);

-- Workspace blobs, by plugin and SHA-256.
CREATE TABLE airlock_blobs (
    plugin text NOT NULL,
    hash bytea NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (plugin, hash)
);

-- A plugin's usage. Every workspace write locks its plugin's row first,
-- so writers of one plugin are serialized on every host.
CREATE TABLE airlock_usage (
    plugin text PRIMARY KEY,
    keys bigint NOT NULL,
    blobs bigint NOT NULL,
    bytes bigint NOT NULL
);

-- Rate-limit buckets.
CREATE TABLE airlock_buckets (
    scope bytea PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_ms bigint NOT NULL
);

-- Audit chains: each origin's head (compare-and-swap on append), its
-- records, checkpoints and calls in flight.
CREATE TABLE airlock_audit_chains (
    origin text PRIMARY KEY,
    head bigint NOT NULL
);
CREATE TABLE airlock_audit_records (
    origin text NOT NULL,
    seq bigint NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (origin, seq)
);
CREATE TABLE airlock_audit_checkpoints (
    origin text NOT NULL,
    seq bigint NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (origin, seq)
);
CREATE TABLE airlock_audit_open (
    origin text NOT NULL,
    call_id text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (origin, call_id)
);
