"""Where things live: NETRECALL_HOME, the default store URL and the exports directory."""

import os
from pathlib import Path


def home() -> Path:
    """NETRECALL_HOME, defaulting to ~/.local/share/netrecall."""
    configured = os.environ.get("NETRECALL_HOME")
    return Path(configured) if configured else Path.home() / ".local" / "share" / "netrecall"


def default_store_url() -> str:
    """NETRECALL_STORE if set, else the embedded store under NETRECALL_HOME."""
    return os.environ.get("NETRECALL_STORE") or f"chdb://{home() / 'store'}"


def exports_dir() -> Path:
    return home() / "exports"
