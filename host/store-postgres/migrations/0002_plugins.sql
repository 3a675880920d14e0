-- Airlock schema version 2: installed plugin versions and their rollouts.
-- Portable SQL, as version 1.

-- Files of installed versions (manifests, components, cases, signatures),
-- by SHA-256 (hex). Written once; a second write of a digest is a no-op.
CREATE TABLE airlock_artifacts (
    digest text PRIMARY KEY,
    data bytea NOT NULL
);

-- Installed versions: immutable, one row per (plugin, version).
CREATE TABLE airlock_plugin_versions (
    plugin text NOT NULL,
    version text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (plugin, version)
);

-- Rollouts: one row per plugin, replaced by compare-and-swap on version.
CREATE TABLE airlock_rollouts (
    plugin text PRIMARY KEY,
    version bigint NOT NULL,
    body text NOT NULL
);
