-- stepbox schema, PostgreSQL flavour. Mirrored file for file by ../sqlite/0001_initial.sql:
-- same tables, columns, constraints and indexes; only the type names differ.
-- Timestamps are BIGINT unix milliseconds and JSON is TEXT on both backends so the Rust
-- code is identical; ciphertexts are BYTEA.

CREATE TABLE namespaces (
    name        TEXT    NOT NULL PRIMARY KEY,
    policy      TEXT    NOT NULL,              -- JSON
    created_at  BIGINT  NOT NULL
);

CREATE TABLE modules (
    digest      TEXT    NOT NULL PRIMARY KEY,  -- hex SHA-256 of bytes
    namespace   TEXT    NOT NULL REFERENCES namespaces (name),
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    bytes       BYTEA   NOT NULL,
    size        BIGINT  NOT NULL,
    uploader    TEXT    NOT NULL,
    signature   BYTEA,
    created_at  BIGINT  NOT NULL,
    UNIQUE (namespace, name, version)
);

CREATE TABLE workflows (
    namespace   TEXT    NOT NULL REFERENCES namespaces (name),
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    definition  TEXT    NOT NULL,              -- JSON
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE INDEX workflows_latest ON workflows (namespace, name, created_at);

CREATE TABLE data_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    kek_id        TEXT    NOT NULL,
    wrapped       BYTEA   NOT NULL,            -- empty once destroyed
    subject       TEXT,                        -- blind index of the data subject, if any
    created_at    BIGINT  NOT NULL,
    destroyed_at  BIGINT
);

CREATE TABLE subjects (
    blind_index  TEXT    NOT NULL PRIMARY KEY,
    data_key_id  TEXT    NOT NULL REFERENCES data_keys (id),
    created_at   BIGINT  NOT NULL
);

CREATE TABLE tasks (
    id                TEXT    NOT NULL PRIMARY KEY,
    namespace         TEXT    NOT NULL,
    workflow_name     TEXT    NOT NULL,
    workflow_version  TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('pending', 'in_progress', 'complete', 'error', 'cancelled')),
    context           BYTEA   NOT NULL,        -- ciphertext
    data_key_id       TEXT    NOT NULL REFERENCES data_keys (id),
    subject           TEXT,                    -- blind index
    classification    TEXT    NOT NULL,
    contains_pii      BOOLEAN NOT NULL,
    created_by        TEXT    NOT NULL,
    principal         TEXT    NOT NULL,        -- JSON permission snapshot
    reason            TEXT,
    tags              TEXT    NOT NULL,        -- JSON
    error_step        TEXT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL,
    finished_at       BIGINT,
    FOREIGN KEY (namespace, workflow_name, workflow_version)
        REFERENCES workflows (namespace, name, version)
);

CREATE INDEX tasks_by_namespace ON tasks (namespace, created_at);
CREATE INDEX tasks_by_status ON tasks (status);
CREATE INDEX tasks_by_subject ON tasks (subject);

CREATE TABLE steps (
    task_id           TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    name              TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('pending', 'in_progress', 'waiting_for_retry', 'complete', 'error', 'cancelled')),
    depends_on        TEXT    NOT NULL,        -- JSON array of step names
    attempts          BIGINT  NOT NULL,
    next_run_at       BIGINT  NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    result            BYTEA,                   -- ciphertext
    error             TEXT,                    -- JSON
    started_at        BIGINT,
    finished_at       BIGINT,
    PRIMARY KEY (task_id, name)
);

-- Claiming walks runnable steps in due order and in-progress steps by lease expiry.
-- Partial indexes: the (status, next_run_at) claim index holding only the rows a claim
-- can want, so it stays small however many finished steps accumulate.
CREATE INDEX steps_runnable ON steps (next_run_at)
    WHERE status IN ('pending', 'waiting_for_retry');
CREATE INDEX steps_leased ON steps (lease_expires_at) WHERE status = 'in_progress';

CREATE TABLE step_attempts (
    task_id      TEXT    NOT NULL,
    step         TEXT    NOT NULL,
    attempt      BIGINT  NOT NULL,
    worker       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    record       BYTEA   NOT NULL,             -- ciphertext
    started_at   BIGINT  NOT NULL,
    duration_ms  BIGINT  NOT NULL,
    PRIMARY KEY (task_id, step, attempt),
    FOREIGN KEY (task_id, step) REFERENCES steps (task_id, name) ON DELETE CASCADE
);

CREATE TABLE audit_events (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    ts              BIGINT  NOT NULL,
    actor           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    namespace       TEXT,
    outcome         TEXT    NOT NULL,
    classification  TEXT,
    contains_pii    BOOLEAN NOT NULL,
    correlation_id  TEXT,
    details         TEXT    NOT NULL,          -- JSON
    prev_hash       BYTEA,
    hash            BYTEA                      -- NULL until the sealer chains it
);

-- The sealer looks for unsealed events; queries filter by actor, resource and time.
CREATE INDEX audit_unsealed ON audit_events (seq) WHERE hash IS NULL;
CREATE INDEX audit_by_actor ON audit_events (actor, ts);
CREATE INDEX audit_by_resource ON audit_events (resource, seq);
CREATE INDEX audit_by_ts ON audit_events (ts);

CREATE TABLE audit_checkpoints (
    seq         BIGINT  NOT NULL PRIMARY KEY,
    hash        BYTEA   NOT NULL,
    signature   BYTEA   NOT NULL,
    key_id      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
