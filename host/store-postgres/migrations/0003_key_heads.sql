-- Airlock schema version 3: what recovery and the ledger's sweep read of an
-- idempotency key, beside its body, so that listing every key does not
-- fetch every stored result. Portable SQL, as version 1.
--
-- The head is written with the row's version (`head_version`): a row
-- written before version 3, or updated by a host still running an older
-- build during an upgrade (which changes `version` and `body` only), has
-- a `head_version` other than its `version`, and its body is read instead.
ALTER TABLE airlock_keys ADD COLUMN IF NOT EXISTS head_version bigint;
ALTER TABLE airlock_keys ADD COLUMN IF NOT EXISTS created_ms bigint;
ALTER TABLE airlock_keys ADD COLUMN IF NOT EXISTS in_flight boolean;
ALTER TABLE airlock_keys ADD COLUMN IF NOT EXISTS in_flight_host text;
