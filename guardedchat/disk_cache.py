"""On-disk cache of trained things (gates, knowledge indexes): returns the object, or None to rebuild."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional


def load(path: Path, kind: type) -> Optional[object]:
    """The cached object if it is there, readable and of the expected kind; otherwise None."""
    try:
        with open(path, "rb") as handle:
            value = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
        return None  # missing or from another version: rebuild
    return value if isinstance(value, kind) else None


def save(path: Path, value: object) -> None:
    """Write atomically (a crash never leaves half a file); a read-only cache only costs a rebuild."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as handle:
            pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(path)
    except OSError:
        pass
