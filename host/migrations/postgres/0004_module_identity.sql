-- A module is identified by namespace, name and version, not by its bytes: the same
-- component may be uploaded by two namespaces (or as two versions), and a digest that
-- was the key made the second upload a conflict that told one namespace what another
-- had stored. The digest stays, indexed, to find a component by its hash.
ALTER TABLE modules DROP CONSTRAINT modules_pkey;
ALTER TABLE modules DROP CONSTRAINT modules_namespace_name_version_key;
ALTER TABLE modules ADD PRIMARY KEY (namespace, name, version);
CREATE INDEX modules_digest ON modules (digest);
