"""The hub: a Starlette REST server that owns the store, takes agents' ingest and serves queries."""
