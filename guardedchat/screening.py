"""Input screening: returns the decision on a message before any model sees it.

Order: empty → size limit → injection/jailbreak rules → domain gate. `eval gate` and the pipeline
use this same function, so what is measured is what runs.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from . import injection
from .domains import Domain
from .gate import GateDecision, TrainedGate, decide

MAX_MESSAGE_CHARS = 4000
# A borderline gate refusal (score at least this share of the threshold) is overturned when the
# domain's public documents answer the question this well: retrieval is evidence of being in scope.
EVIDENCE_FLOOR = 0.5
STRONG_EVIDENCE = 0.2  # out-of-scope questions score ≤ 0.17 against the shipped documents

# What the user sees, by the reason a message was stopped (Traditional Chinese, Taiwan).
MESSAGES = {
    "too_long": "抱歉，訊息太長（上限 {limit} 字）。請縮短問題後再試一次。",
    "reveal instructions": "抱歉，我不能分享或改寫我的系統指示。我只回答「{title}」範圍內的問題。",
    "political stance": "抱歉，我不表達政治立場，只回答「{title}」範圍內的問題。",
    "injection": "抱歉，這個要求試圖改變我的規則，我無法照做。我只回答「{title}」範圍內的問題。",
}


def screen(domain: Domain, gate: TrainedGate, message: str, history: Sequence[dict] = (),
           evidence: Optional[Callable[[str], float]] = None) -> GateDecision:
    """allow / greet / refuse for one message; a refusal's reason starts with the rail's name.
    `evidence` scores how well the domain's documents answer the message (0 to 1)."""
    text = str(message or "")
    if len(text) > MAX_MESSAGE_CHARS:
        return GateDecision("refuse", 0.0, gate.threshold, f"message limits: {len(text)} characters")
    rule = injection.detect(text)
    if rule:
        return GateDecision("refuse", 0.0, gate.threshold, f"injection: {rule}")
    decision = decide(gate, text, history)
    if evidence is not None and decision.reason.startswith("out of scope: score") \
            and decision.score >= EVIDENCE_FLOOR * decision.threshold:
        strength = evidence(text)
        if strength >= STRONG_EVIDENCE:
            return GateDecision("allow", decision.score, decision.threshold,
                                f"answered by the domain's documents (retrieval {strength:.2f}); score {decision.score:.2f}")
    return decision


def refusal_text(domain: Domain, decision: GateDecision) -> tuple[str, str, str]:
    """(machine-readable reason, rail name, text the user sees) for a refused decision."""
    if decision.reason.startswith("message limits"):
        return "too_long", "message limits", MESSAGES["too_long"].format(limit=MAX_MESSAGE_CHARS)
    if decision.reason.startswith("injection: "):
        rule = decision.reason.removeprefix("injection: ")
        key = rule if rule in MESSAGES else "injection"
        reason = "unsafe_request" if key == "injection" else key.replace(" ", "_")
        return reason, "injection", MESSAGES[key].format(title=domain.title)
    if decision.reason.startswith("empty"):
        return "empty", "message limits", "請輸入問題。" + domain.greeting
    return "out_of_scope", "domain gate", domain.refusal

