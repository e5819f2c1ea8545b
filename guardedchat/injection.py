"""Prompt-injection and jailbreak detection: returns the name of the rule a message breaks, or None.

Rules are patterns over the normalized message (lower case, traditional characters), each aimed at
the *instruction* part of an attack rather than at single words, so honest questions that share
the words pass: 忽略 alone (debug 模式會忽略中斷嗎), 扮演 alone (扮演了什麼角色), 系統 alone
(系統呼叫). Patterns are package data (data/injection.yaml); a domain never needs code to extend them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Optional

import yaml

from .gate import normalize

SCAN_CHARS = 20_000  # longer messages are refused by the size limit before this runs
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern


@lru_cache(maxsize=1)
def rules() -> tuple[Rule, ...]:
    data = yaml.safe_load(files("guardedchat.data").joinpath("injection.yaml").read_text(encoding="utf-8"))
    return tuple(Rule(name, re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE))
                 for name, patterns in data["rules"].items())


def detect(message: str) -> Optional[str]:
    """The first rule the message breaks (its name), or None. Never raises."""
    text = normalize(message, SCAN_CHARS)
    for rule in rules():
        if rule.pattern.search(text):
            return rule.name
    if _hidden_payload(str(message)):
        return "encoded payload"
    return None


def _hidden_payload(message: str) -> Optional[str]:
    """A Base64 run that decodes to readable text is an instruction smuggled past the patterns."""
    for run in BASE64_RUN.findall(message[:SCAN_CHARS]):
        if len(run) % 4:
            continue
        try:
            decoded = base64.b64decode(run, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if decoded.strip() and sum(ch.isprintable() for ch in decoded) / len(decoded) > 0.9:
            return decoded
    return None
