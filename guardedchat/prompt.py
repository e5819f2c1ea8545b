"""Prompt building: returns the prompt for one turn, fitted into the model's context window."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Callable, Sequence

import yaml

from .backend import ChatPrompt, CompletionPrompt, Prompt
from .domains import Domain
from .errors import InputError

# Chat templates add a few tokens of markup per message; this keeps the estimate on the safe side.
MESSAGE_OVERHEAD_TOKENS = 8
SAFETY_MARGIN_TOKENS = 32
# Turn markup of the common chat templates (ChatML and Llama 3 <|...|>, Gemma, Llama 2 / Mistral).
# llama.cpp tokenizes the rendered template with special tokens on, so this text inside a message
# would become real turn boundaries: a user (or a document) could open a new system turn.
CHAT_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?(?:start_of_turn|end_of_turn|s|bos|eos)>|\[/?INST\]|<</?SYS>>")


@dataclass(frozen=True)
class Passage:
    """A retrieved passage shown to the model with its citation number."""

    number: int
    title: str
    text: str
    doc: str = ""       # the document's file name, shown with the citation
    score: float = 0.0  # retrieval similarity, for choosing what to quote
    works: tuple[str, ...] = ()  # the works the document cites (《明史》…), shown in source lines
    row: int = -1  # the passage's row in the knowledge index


@lru_cache(maxsize=None)
def _template(name: str) -> dict:
    return yaml.safe_load(files("guardedchat.prompts").joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


def build_prompt(domain: Domain, history: Sequence[dict], message: str, *, chat_template: bool,
                 count_tokens: Callable[[str], int], n_ctx: int,
                 passages: Sequence[Passage] = ()) -> Prompt:
    """The chat messages (model with a template) or few-shot text (base model) for this turn."""
    budget = n_ctx - domain.generation.max_tokens - SAFETY_MARGIN_TOKENS
    turns = _alternating_turns(history)
    if chat_template:
        return _chat_prompt(domain, turns, message, passages, count_tokens, budget)
    return _completion_prompt(domain, turns, message, passages, count_tokens, budget)


def _alternating_turns(history: Sequence[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs: strict user/assistant alternation, as Gemma-style templates demand."""
    pairs: list[tuple[str, str]] = []
    question = None
    for item in history:
        role, content = item.get("role"), str(item.get("content") or "").strip()
        if not content:
            continue
        if role == "user":
            question = content if question is None else f"{question}\n{content}"
        elif role == "assistant" and question is not None:
            pairs.append((question, content))
            question = None
    return pairs


def _chat_prompt(domain, turns, message, passages, count_tokens, budget) -> ChatPrompt:
    template = _template("chat")
    system = _with_sections(domain.system_prompt, template, domain.facts, passages)
    fixed = count_tokens(system) + count_tokens(message) + 2 * MESSAGE_OVERHEAD_TOKENS
    kept = _fit_turns(turns, budget - fixed, count_tokens, per_turn_overhead=2 * MESSAGE_OVERHEAD_TOKENS)
    messages = [{"role": "system", "content": system}]
    for question, answer in kept:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": message})
    return ChatPrompt([{"role": m["role"], "content": _without_markup(m["content"])} for m in messages])


def _without_markup(text: str) -> str:
    return CHAT_MARKUP.sub("", text)


def _completion_prompt(domain, turns, message, passages, count_tokens, budget) -> CompletionPrompt:
    template = _template("completion")
    header = template["header"].format(title=domain.title, in_scope=domain.description.in_scope)
    header = _with_sections(header, template, domain.facts, passages)
    final = template["question"].format(text=_one_line(message)) + "\n" + template["answer"].format(text="").rstrip()
    fixed = count_tokens(header) + count_tokens(final)
    shots = [(shot.question, shot.answer) for shot in domain.fewshot]
    # History matters more than examples; examples fill what is left, at least one kept when possible.
    kept_turns = _fit_turns(turns, budget - fixed - _pairs_tokens(shots[:1], count_tokens), count_tokens)
    left = budget - fixed - _pairs_tokens(kept_turns, count_tokens)
    kept_shots = _fit_turns(shots, left, count_tokens, keep_newest=False)
    blocks = [header] + [_pair_text(template, q, a) for q, a in kept_shots + kept_turns] + [final]
    return CompletionPrompt(template["separator"].join(blocks) + " ", list(template["stop"]))


def _with_sections(text: str, template: dict, facts: Sequence[str], passages: Sequence[Passage]) -> str:
    if facts:
        text += "\n\n" + template["facts_heading"] + "\n" + "\n".join(f"- {fact}" for fact in facts)
    if passages:
        lines = [f"[{p.number}] {p.title}：{_one_line(p.text)}" for p in passages]
        text += "\n\n" + template["passages_heading"] + "\n" + "\n".join(lines)
    return text


def _pair_text(template: dict, question: str, answer: str) -> str:
    return template["question"].format(text=_one_line(question)) + "\n" + template["answer"].format(text=_one_line(answer))


def _one_line(text: str) -> str:
    # A blank line is a stop sequence for the completion prompt; keep every turn on one line.
    return " ".join(text.split())


def _pairs_tokens(pairs, count_tokens) -> int:
    return sum(count_tokens(q) + count_tokens(a) + MESSAGE_OVERHEAD_TOKENS for q, a in pairs)


def _fit_turns(pairs, budget: int, count_tokens, per_turn_overhead: int = MESSAGE_OVERHEAD_TOKENS,
               keep_newest: bool = True) -> list:
    """As many pairs as fit the budget: the newest history first, or the first examples first."""
    if budget < 0:
        raise InputError("訊息太長，放不進模型的上下文視窗。修正：縮短問題，或換用上下文較大的模型（--n-ctx）。")
    ordered = list(reversed(pairs)) if keep_newest else list(pairs)
    kept, used = [], 0
    for question, answer in ordered:
        cost = count_tokens(question) + count_tokens(answer) + per_turn_overhead
        if used + cost > budget:
            break
        kept.append((question, answer))
        used += cost
    return list(reversed(kept)) if keep_newest else kept
