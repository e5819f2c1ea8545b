"""The rail checks: returns None (pass) or a Blocked verdict for one rail and one turn.

Pure Python and fast; NeMo's flows call them through one action, and the streaming output guard
calls the output ones directly on each piece before it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Callable, Optional

from ..domains import Domain
from ..gate import GateDecision, TrainedGate, normalize
from ..screening import MAX_MESSAGE_CHARS, refusal_text, screen

LEAK_SHINGLE = 12       # this many consecutive characters of the locked system prompt count as a leak
DRIFT_MIN_CHARS = 40    # shorter answers are not judged for drift
DRIFT_FLOOR = 0.02      # an answer the domain gate scores below this has left the domain

MESSAGES = {
    "banned words": "抱歉，這則內容含有不適當的字詞，無法顯示。",
    "system prompt leak": "抱歉，我不能分享我的系統指示。",
    "answer drift": "抱歉，這個回答偏離了「{title}」的範圍，已停止顯示。請換個方式問領域內的問題。",
}


@dataclass(frozen=True)
class Blocked:
    """Why a rail stopped the turn: a stable reason code, the rail's name, what the user sees."""

    reason: str
    rail: str
    text: str


@lru_cache(maxsize=1)
def shipped_banned_words() -> tuple[str, ...]:
    text = files("guardedchat.rails").joinpath("banned_words.txt").read_text(encoding="utf-8")
    return tuple(normalize(line) for line in text.splitlines() if line.strip() and not line.startswith("#"))


class RailChecks:
    """A domain's checks. gate_loader() returns its trained gate (loaded on first use)."""

    def __init__(self, domain: Domain, gate_loader: Callable[[], TrainedGate],
                 evidence: Optional[Callable[[str], float]] = None):
        self.domain = domain
        self.evidence = evidence
        self._gate_loader = gate_loader
        self._gate: Optional[TrainedGate] = None
        self.banned = tuple(sorted(set(shipped_banned_words()) | {normalize(w) for w in domain.banned_words}))
        self.leak_shingles = _private_shingles(domain)

    @property
    def gate(self) -> TrainedGate:
        if self._gate is None:
            self._gate = self._gate_loader()
        return self._gate

    def run(self, rail: str, turn: dict) -> Optional[Blocked]:
        check = {
            "message limits": self._limits, "injection": self._injection, "domain gate": self._gate_check,
            "banned words input": lambda t: self.banned_words(t["message"]),
            "banned words output": lambda t: self.banned_words(t["answer"]),
            "system prompt leak": lambda t: self.system_prompt_leak(t["answer"]),
            "answer drift": lambda t: self.drift(t["answer"]),
        }[rail]
        return check(turn)

    # -- input

    def _screen(self, turn: dict) -> GateDecision:
        if "decision" not in turn:
            turn["decision"] = screen(self.domain, self.gate, turn["message"], turn.get("history", ()),
                                      self.evidence)
            turn["result"].gate = turn["decision"]
        return turn["decision"]

    def _limits(self, turn: dict) -> Optional[Blocked]:
        message = str(turn["message"] or "")
        if len(message) > MAX_MESSAGE_CHARS or not message.strip():
            return self._blocked_from(self._screen(turn))
        return None

    def _injection(self, turn: dict) -> Optional[Blocked]:
        decision = self._screen(turn)
        return self._blocked_from(decision) if decision.reason.startswith("injection") else None

    def _gate_check(self, turn: dict) -> Optional[Blocked]:
        decision = self._screen(turn)
        return self._blocked_from(decision) if decision.decision == "refuse" else None

    def _blocked_from(self, decision: GateDecision) -> Optional[Blocked]:
        if decision.decision != "refuse":
            return None
        reason, rail, text = refusal_text(self.domain, decision)
        return Blocked(reason, rail, text)

    # -- input and output

    def banned_words(self, text: str) -> Optional[Blocked]:
        plain = normalize(text, 100_000)
        if any(word in plain for word in self.banned):
            return Blocked("banned_words", "banned words", MESSAGES["banned words"])
        return None

    # -- output

    def system_prompt_leak(self, answer: str) -> Optional[Blocked]:
        plain = normalize(answer, 100_000)
        if any(shingle in plain for shingle in self.leak_shingles):
            return Blocked("system_prompt_leak", "system prompt leak", MESSAGES["system prompt leak"])
        return None

    def drift(self, answer: str) -> Optional[Blocked]:
        if len(answer.strip()) < DRIFT_MIN_CHARS or self.gate.score(answer) >= DRIFT_FLOOR:
            return None
        return Blocked("answer_drift", "answer drift", MESSAGES["answer drift"].format(title=self.domain.title))


def _private_shingles(domain: Domain) -> frozenset[str]:
    """Runs of the system prompt that appear nowhere the user may see (greeting, refusal, facts)."""
    public = normalize(" ".join([domain.greeting, domain.refusal, domain.title, *domain.facts,
                                 domain.description.in_scope, domain.description.out_of_scope]), 100_000)
    prompt = normalize(domain.system_prompt, 100_000)
    shingles = {prompt[i:i + LEAK_SHINGLE] for i in range(len(prompt) - LEAK_SHINGLE + 1)}
    return frozenset(s for s in shingles if s not in public and len(s.strip()) == LEAK_SHINGLE)


class OutputGuard:
    """A stream stage: passes each piece on only after the output checks pass on everything so far.

    Runs after the Taiwan normalizer, whose pieces end at punctuation or spaces, so a banned word or
    a leaked run of the system prompt is caught before the piece holding it is shown. Drift is
    judged once the answer has DRIFT_MIN_CHARS characters, so at most that much of a drifting
    answer is shown before it is cut.
    """

    def __init__(self, checks: RailChecks):
        self.checks = checks
        self.shown = ""

    def push(self, text: str) -> str:
        if text:
            candidate = self.shown + text
            # Drift needs DRIFT_MIN_CHARS of text to judge; from then on every piece is judged first.
            blocked = (self.checks.banned_words(candidate) or self.checks.system_prompt_leak(candidate)
                       or self.checks.drift(candidate))
            if blocked is not None:
                raise OutputBlocked(blocked)
            self.shown = candidate
        return text

    def flush(self) -> str:
        return ""


class OutputBlocked(Exception):
    """Raised by the output guard; the pipeline turns it into a refusal event."""

    def __init__(self, blocked: Blocked):
        super().__init__(blocked.reason)
        self.blocked = blocked
