-- A module is identified by namespace, name and version, not by its bytes: the same
-- component may be uploaded by two namespaces (or as two versions), and a digest that
-- was the key made the second upload a conflict that told one namespace what another
-- had stored. The digest stays, indexed, to find a component by its hash.
CREATE TABLE modules_by_version (
    namespace   TEXT    NOT NULL REFERENCES namespaces (name),
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    digest      TEXT    NOT NULL,  -- hex SHA-256 of bytes
    bytes       BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    uploader    TEXT    NOT NULL,
    signature   BLOB,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version)
) STRICT;

INSERT INTO modules_by_version
    (namespace, name, version, digest, bytes, size, uploader, signature, created_at)
SELECT namespace, name, version, digest, bytes, size, uploader, signature, created_at
FROM modules;

DROP TABLE modules;
ALTER TABLE modules_by_version RENAME TO modules;
CREATE INDEX modules_digest ON modules (digest);
