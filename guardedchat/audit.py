"""The audit log: appends one JSON line per turn; returns nothing, never breaks a turn.

Each line: time, domain, gate decision and score, rails fired, model, token counts, timings, and
whether the turn was refused and why. The message and answer text are written only where the
deployment opts in (GUARDEDCHAT_AUDIT_TEXT=1), because users' questions can be personal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from .models import cache_dir

log = logging.getLogger("guardedchat.audit")


def default_path() -> Optional[Path]:
    """$GUARDEDCHAT_AUDIT_LOG (a path, or 'off'), else ~/.cache/guardedchat/audit.jsonl."""
    value = os.environ.get("GUARDEDCHAT_AUDIT_LOG", "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value) if value else cache_dir() / "audit.jsonl"


class AuditLog:
    """Append-only JSON lines, one lock per file so concurrent turns never interleave a line."""

    def __init__(self, path: Optional[Path], include_text: bool = False):
        self.path = Path(path) if path else None
        self.include_text = include_text
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "AuditLog":
        return cls(default_path(), os.environ.get("GUARDEDCHAT_AUDIT_TEXT", "") in ("1", "true", "yes"))

    def __call__(self, record, message: str) -> None:
        if self.path is None:
            return
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "domain": record.domain,
            "refused": record.refused, "reason": record.reason, "gate": record.gate, "rails": record.rails,
            "model": record.model, "model_called": record.model_called, "stopped": record.stopped,
            "tokens": record.tokens, "timings": record.timings,
        }
        if self.include_text:
            entry["message"], entry["answer"] = message, record.answer
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A lone surrogate in a message must not cost the turn its line (nor the turn itself).
                with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as handle:
                    handle.write(line)
        except OSError as exc:  # a full disk must not take the chat down; say so in the log
            log.warning("audit log %s not written: %s", self.path, exc)
