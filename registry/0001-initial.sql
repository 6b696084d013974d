-- 0001-initial.sql - the first registry schema (user_version 1).
-- Applied by registry.c inside one transaction, which then sets
-- PRAGMA user_version = 1.  Never edit a released migration: add the
-- next numbered file instead.

-- Public keys the user trusts to sign adapters (minisign format).
CREATE TABLE keys (
    key_id  TEXT PRIMARY KEY,          -- as minisign 0.11 prints it (upper-case hex)
    pubkey  TEXT NOT NULL UNIQUE,      -- the 56-character base64 public key
    name    TEXT,                      -- who it belongs to (--name), or NULL
    added   INTEGER NOT NULL           -- unix seconds
);

-- One row per registered archive; the archive itself is the blob
-- blobs/<hash>.lora beside the database.
CREATE TABLE adapters (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,         -- semantic version, as in the manifest
    -- the version split for ordering through an index: precedence is
    -- major, minor, patch, then a release above its pre-releases, then
    -- the pre-release identifiers (compared in C among the few rows
    -- that tie on the integers)
    v_major     INTEGER NOT NULL,
    v_minor     INTEGER NOT NULL,
    v_patch     INTEGER NOT NULL,
    v_release   INTEGER NOT NULL CHECK (v_release IN (0, 1)),
    task        TEXT NOT NULL,
    base_model  TEXT,                  -- base model name from the manifest, or NULL
    base_hash   TEXT,                  -- base hash from the manifest, or NULL
    r           INTEGER NOT NULL,
    alpha       REAL NOT NULL,
    hash        TEXT NOT NULL UNIQUE,  -- BLAKE2b-256 of the archive, lower-case hex
    size        INTEGER NOT NULL,      -- archive bytes
    signer      TEXT,                  -- key id of the signature
    trusted     INTEGER NOT NULL CHECK (trusted IN (0, 1)),
    added       INTEGER NOT NULL,      -- unix seconds
    UNIQUE (name, version)
);

-- resolve TASK [--base NAME]: newest trusted version for a task.
CREATE INDEX adapters_resolve ON adapters
    (task, trusted, v_major DESC, v_minor DESC, v_patch DESC, v_release DESC);
CREATE INDEX adapters_resolve_base ON adapters
    (task, base_model, trusted, v_major DESC, v_minor DESC, v_patch DESC, v_release DESC);
-- ls --task T, ls --base NAME: rows in (name, version) order.
CREATE INDEX adapters_ls_task ON adapters (task, name, v_major, v_minor, v_patch);
CREATE INDEX adapters_ls_base ON adapters (base_model, name, v_major, v_minor, v_patch);
-- show NAME: newest version of a name.
CREATE INDEX adapters_name ON adapters
    (name, v_major DESC, v_minor DESC, v_patch DESC, v_release DESC);
-- untrust KEYID: the rows it signed.
CREATE INDEX adapters_signer ON adapters (signer);

-- Evaluation results (lora-eval --record).  Removing an adapter
-- removes its results.
CREATE TABLE evals (
    id            INTEGER PRIMARY KEY,
    adapter_id    INTEGER NOT NULL REFERENCES adapters (id) ON DELETE CASCADE,
    base_hash     TEXT NOT NULL,       -- hash of the base checkpoint evaluated on
    dataset_hash  TEXT NOT NULL,       -- BLAKE2b-256 of the data set file
    dataset       TEXT,                -- data set name, for people, or NULL
    metric        TEXT NOT NULL,       -- "accuracy", "nll", ...
    value         REAL NOT NULL,
    items         INTEGER NOT NULL,    -- items evaluated
    time          INTEGER NOT NULL,    -- unix seconds
    tool_version  TEXT NOT NULL        -- lora-eval version that measured it
);
CREATE INDEX evals_adapter ON evals (adapter_id, metric, time);
