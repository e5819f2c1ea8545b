"""Grounding: returns the passages a turn may use (by the user's access level), and the answer
quoted from them when the model cannot be trusted to write one (a base model without a chat template).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from .domains import Domain
from .knowledge import MIN_SCORE, KnowledgeIndex, index_for, normalize_text, split_sentences
from .prompt import Passage

TOP_PASSAGES = 3
COMMON_ENTITY_SHARE = 0.3  # a name found in more documents than this (RISC-V, 明朝) says nothing about which one
SECOND_PASSAGE_RATIO = 0.7  # the second passage is quoted only when it is nearly as relevant as the first
_CITATION = re.compile(r"\[(\d+)\]")

NOT_FOUND = ("抱歉，我在「{title}」的資料中找不到和這個問題相關的內容。為了不提供錯誤的資訊，這題先不回答。"
             "可以換個問法，或問資料中收錄的人物與主題。")
QUOTE_HEADING = "以下是資料庫中最相關段落的原文（未經模型改寫）："


class Retriever:
    """The pipeline's `retrieve` stage for one domain: None when the domain has no documents
    (the model answers ungrounded, as before), [] when nothing relevant is found."""

    def __init__(self, domain: Domain):
        self.domain = domain
        self._entities = sorted({normalize_text(name) for names in domain.lexicon.values() for name in names if name},
                                key=len, reverse=True)

    @property
    def index(self) -> KnowledgeIndex:
        return index_for(self.domain.knowledge_dir)

    def __call__(self, domain: Domain, history: Sequence[dict], message: str,
                 access: str = "public") -> Optional[list[Passage]]:
        index = self.index
        if not index.texts:
            return None
        hits = index.search(message, access, TOP_PASSAGES, history, min_score=MIN_SCORE,
                            mentioning=self.named_in(message, index))
        return [Passage(number, hit.title, hit.text, hit.doc, hit.score) for number, hit in enumerate(hits, 1)]

    def strength(self, message: str) -> float:
        """How well the public documents answer the message: the gate's evidence (never restricted
        documents, whose contents must not show through what the gate lets in)."""
        # Without the title bonus: a request that only borrows a name (以戚繼光為名的健身房) must not pass for one about him.
        hits = self.index.search(message, "public", 1, title_bonus=False)
        return hits[0].score if hits else 0.0

    def named_in(self, message: str, index: KnowledgeIndex) -> list[str]:
        """The specific lexicon names the question mentions: a document that answers it names one too."""
        text = normalize_text(message)
        found = {form for name in self._entities if name in text for form in _match_forms(name)}
        return sorted(name for name in found if index.document_frequency(name) <= COMMON_ENTITY_SHARE)


_EVENT_SUFFIX = re.compile(r"(之亂|之變|之役|之戰|事件|案)$")


def _match_forms(name: str) -> set[str]:
    """A name and the shorter forms a document may use instead: 寧王之亂 → 寧王; linker relaxation → relaxation."""
    forms = {name}
    stem = _EVENT_SUFFIX.sub("", name)
    if len(stem) >= 2:
        forms.add(stem)
    if name.isascii() and " " in name:
        forms.add(name.split()[-1])
    return forms


def not_found_answer(domain: Domain) -> str:
    return NOT_FOUND.format(title=domain.title)


def quote_answer(message: str, passages: Sequence[Passage]) -> str:
    """The best passage whole and the sentence of the runner-up that best matches the question,
    verbatim, each with its citation number."""
    if not passages:
        return ""
    quotes = [f"「{passages[0].text}」[{passages[0].number}]"]
    if len(passages) > 1 and passages[1].score >= SECOND_PASSAGE_RATIO * passages[0].score:
        quotes.append(f"「{_best_sentences(message, passages[1].text, 1)}」[{passages[1].number}]")
    return QUOTE_HEADING + "\n\n" + "\n\n".join(quotes)


def _best_sentences(message: str, text: str, count: int) -> str:
    sentences = [s.strip() for s in split_sentences(text) if s.strip()]
    if len(sentences) <= count:
        return "".join(sentences)
    question = _bigrams(message)
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(question & _bigrams(sentences[i])), i))
    keep = sorted(ranked[:count])
    return "".join(sentences[i] for i in keep)


def _bigrams(text: str) -> set[str]:
    text = normalize_text(text)
    return {text[i:i + 2] for i in range(len(text) - 1) if not text[i:i + 2].isspace()}


def cited_numbers(answer: str) -> set[int]:
    return {int(number) for number in _CITATION.findall(answer)}


def sources_of(passages: Sequence[Passage], answer: str) -> list[dict]:
    """Every passage given to the answer, marked cited when the answer names its number."""
    cited = cited_numbers(answer)
    return [{"number": p.number, "doc": p.doc, "title": p.title, "cited": p.number in cited} for p in passages]


def sources_line(sources: Sequence[dict], with_doc: bool = False) -> str:
    """The cited sources with titles ("來源"), or every passage given when none was cited ("參考資料")."""
    cited = [s for s in sources if s.get("cited")]
    heading = "來源" if cited else "參考資料"
    return f"{heading}：" + "；".join(f"[{s['number']}] {s['title']}" + (f"（{s['doc']}）" if with_doc else "")
                                    for s in cited or sources)
