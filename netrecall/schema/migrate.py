"""Create the schema idempotently and move an older store forward, one numbered step at a time."""

from __future__ import annotations

from netrecall.errors import NetrecallError
from netrecall.schema.tables import DEFAULT_TTL_SECONDS, schema_statements
from netrecall.store import Store

SCHEMA_VERSION = 1

# MIGRATIONS[n] takes a store at version n to n + 1. Version 0 is an empty database: its step is the
# whole current schema, so a new store and a migrated one end up with the same tables.
MIGRATIONS: dict[int, list[str]] = {0: []}


def stored_version(store: Store) -> int:
    exists = store.scalar("EXISTS TABLE netrecall_meta")
    if not exists:
        return 0
    value = store.scalar("SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = 'schema_version'")
    return int(value) if value else 0


def ensure_schema(store: Store) -> int:
    """Bring the store to SCHEMA_VERSION; safe to call on every start. Returns the version."""
    version = stored_version(store)
    if version > SCHEMA_VERSION:
        raise NetrecallError(
            f"store {store.address.display} has schema version {version}, newer than this netrecall "
            f"({SCHEMA_VERSION}): upgrade netrecall"
        )
    if version == SCHEMA_VERSION:
        return version
    for statement in schema_statements(ttl_seconds=current_ttl_seconds(store)):
        store.command(statement)
    for step in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS.get(step, []):
            store.command(statement)
    store.command(
        "INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', {v:String})",
        {"v": str(SCHEMA_VERSION)},
    )
    return SCHEMA_VERSION


def current_ttl_seconds(store: Store) -> int:
    """The TTL last set with `netrecall retention --ttl` (kept in netrecall_meta), else the default."""
    if not store.scalar("EXISTS TABLE netrecall_meta"):
        return DEFAULT_TTL_SECONDS
    value = store.scalar("SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = 'ttl_seconds'")
    return int(value) if value else DEFAULT_TTL_SECONDS
