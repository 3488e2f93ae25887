-- Data-subject requests (PostgreSQL flavour of ../sqlite/0005_subjects.sql). A subject is found by the blind index of the schema's subject
-- property (`tasks.subject`) or of another identifier the task holds about them (an email
-- address, an identity number): `subject_aliases` maps the alias's blind index to the
-- subject's, so "who is jane.doe@example.com" needs no plaintext. Erasure marks the
-- subject's tasks `anonymized_at`.
ALTER TABLE tasks ADD COLUMN anonymized_at BIGINT;

CREATE TABLE subject_aliases (
    alias       TEXT    NOT NULL,   -- blind index of the identifier
    subject     TEXT    NOT NULL,   -- blind index of the subject
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (alias, subject)
);
