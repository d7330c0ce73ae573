-- The registry's schema: one table per tree of the storage boundary
-- (bootstrap/src/storage), keys and values as bytes in the same encodings
-- as the sled backend, so both backends hold the same data.

-- agent key -> agent record (JSON)
CREATE TABLE registry_agents (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- capability || 0 || agent key -> empty (search index)
CREATE TABLE registry_caps (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- agent key -> prekey bundle (JSON)
CREATE TABLE registry_prekeys (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- session id -> session receipt (JSON)
CREATE TABLE registry_receipts (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- agent key || session id -> empty
CREATE TABLE registry_receipts_by (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- target || rater || session id -> rating (JSON)
CREATE TABLE registry_feedback (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- rater || target -> empty (mutual rule)
CREATE TABLE registry_rated_by (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- subject key -> signed revocation (CBOR)
CREATE TABLE registry_revocations (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- domain -> organization (JSON)
CREATE TABLE registry_orgs (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- organization key -> domain
CREATE TABLE registry_org_keys (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- SHA-256 of a request signature -> timestamp (replay store)
CREATE TABLE registry_seen (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- name -> bytes (secrets, the root keystore, health probe)
CREATE TABLE registry_meta (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- leaf index (u64 BE) -> leaf data
CREATE TABLE registry_translog_leaves (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- level || index -> subtree hash; 'size' -> leaf count
CREATE TABLE registry_translog_nodes (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- leaf hash -> first leaf index
CREATE TABLE registry_translog_by_hash (
    key bytea PRIMARY KEY,
    value bytea NOT NULL
);

-- Bumped by every node after a write that changes reputation inputs, so
-- the other nodes drop their cached scores.
CREATE TABLE registry_generation (
    id integer PRIMARY KEY CHECK (id = 1),
    n bigint NOT NULL
);

INSERT INTO registry_generation (id, n) VALUES (1, 0);
