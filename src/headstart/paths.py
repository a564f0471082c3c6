"""Where headstart keeps what it writes for itself (a bottom-layer utility: it imports nothing from headstart).

It lives apart from `cache.py` because `data.py` (below the cache) needs it too, for the Fashion-MNIST
download; keeping it in `cache.py` made `data` import upward into `cache`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `--cache-dir`, else `$HEADSTART_CACHE`, else `$XDG_CACHE_HOME/headstart` (or
    `~/.cache/headstart`), so tests and users can each point it elsewhere without touching code."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"
