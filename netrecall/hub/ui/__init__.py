"""The hub's web page for people (docs/ui.md): traffic with KFL, call detail, service map, errors, DNS and
snapshots, served by the hub itself from the files in static/ (plain ES modules: no build, no Node)."""

from __future__ import annotations

# Paths served without the token: the page's own files, which hold no data (every /api route needs it).
OPEN_PATHS = frozenset({"/"})
OPEN_PREFIXES = ("/ui/",)
