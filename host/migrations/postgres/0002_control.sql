-- Operator control and secrets at rest, PostgreSQL flavour. Mirrored by
-- ../sqlite/0002_control.sql.

-- A manual retry gives a failed step a fresh retry budget. `attempts` keeps counting (it is
-- the fencing token and keys `step_attempts`), so the budget is measured from
-- `attempt_base`: the value of `attempts` when the step was last retried by hand.
ALTER TABLE steps ADD COLUMN attempt_base BIGINT NOT NULL DEFAULT 0;

-- Secret values granted to a namespace's steps. Each value is sealed (AES-256-GCM) under a
-- data key of its own, bound by associated data to `secrets`/<namespace>/<name>/`value`;
-- the data key is wrapped in `data_keys`, so KEK rotation re-wraps it with the rest.
CREATE TABLE secrets (
    namespace    TEXT    NOT NULL REFERENCES namespaces (name),
    name         TEXT    NOT NULL,
    data_key_id  TEXT    NOT NULL REFERENCES data_keys (id),
    value        BYTEA   NOT NULL,             -- ciphertext
    created_by   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name)
);
