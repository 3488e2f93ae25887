-- Pad ids. A subject's data key is masked with a pad from the subject vault; the vault
-- used to file each pad under the subject's blind index, so a new subject's first task
-- waited on a synced write of the vault. Pads are now made ahead, each under an id of its
-- own (`pad_…`), and `pad` says which one masks the key: taking a new subject's pad is
-- part of the transaction that stores its key. NULL: the pad is filed under `subject`.
ALTER TABLE data_keys ADD COLUMN pad TEXT;
