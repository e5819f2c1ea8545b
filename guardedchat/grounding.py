"""Grounding: returns what a domain's documents offer one turn (the passages a prompt may use, by
the user's access level) and the answer quoted from them when the model cannot be trusted to write
one (a base model without a chat template): the sentences that answer, cited, or an honest
"the documents do not answer this".
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

from .answering import AnswerIndex, Extraction, extract
from .domains import Domain
from .knowledge import KnowledgeIndex, index_for, normalize_text
from .prompt import Passage

TOP_PASSAGES = 3
CONTEXT_CHARS = 260  # the rest of the answering passage is shown as context up to this length
_CITATION = re.compile(r"\[(\d+)\]")

NOT_FOUND = ("抱歉，我在「{title}」的資料中找不到和這個問題相關的內容。為了不提供錯誤的資訊，這題先不回答。"
             "可以換個問法，或問資料中收錄的人物與主題。")
NO_DOCUMENTS = ("抱歉，「{title}」還沒有可以引用的資料文件，這題無法回答。"
                "（管理者：把 Markdown 文件放進這個領域的 knowledge 資料夾，格式見 README「知識文件與引用」；"
                "或改用有對話模板的模型。）")
ABSTAIN = "抱歉，「{title}」收錄的資料沒有回答這個問題。為了不提供錯誤的資訊，這題先不回答。"
RELATED_HEADING = "相關閱讀（僅供參考，不是這題的答案）："
QUOTE_HEADING = "摘自資料"  # 摘自資料〈于謙〉：「…」[1]: the quote is the first sentence the user reads
CONTEXT_HEADING = "前後文："


@dataclass
class Grounding:
    """What the documents offer one turn: passages for a prompt (numbered, the answering ones
    first) and the extraction that says which sentences answer, if any."""

    passages: list[Passage]
    extraction: Optional[Extraction] = None
    answers: Optional[AnswerIndex] = None  # the sentences the extraction points into
    documents: bool = True  # False: the domain's knowledge folder has no readable document

    @property
    def abstained(self) -> bool:
        return self.extraction is None or self.extraction.abstained


class Retriever:
    """The pipeline's `retrieve` stage for one domain: the turn's Grounding (with documents=False
    when the domain has no documents: a model with a chat template answers ungrounded, a quoting
    model says there is nothing to quote)."""

    def __init__(self, domain: Domain):
        self.domain = domain
        self._entities = sorted({normalize_text(name) for names in domain.lexicon.values() for name in names if name},
                                key=len, reverse=True)
        self._answer_indexes: dict[int, AnswerIndex] = {}
        self._lock = threading.Lock()

    @property
    def index(self) -> KnowledgeIndex:
        return index_for(self.domain.knowledge_dir)

    def answer_index(self, index: KnowledgeIndex) -> AnswerIndex:
        """Sentences and names of the current index, built once per index."""
        with self._lock:
            built = self._answer_indexes.get(id(index))
            if built is None or built.index is not index:
                built = AnswerIndex(index, self._entities, self.domain.aliases)
                self._answer_indexes = {id(index): built}
            return built

    def __call__(self, domain: Domain, history: Sequence[dict], message: str,
                 access: str = "public") -> Optional[Grounding]:
        index = self.index
        if not index.texts:
            return Grounding([], documents=False)
        answers = self.answer_index(index)
        message = message[:2000]
        # The question's words in their other forms too (stack pointer → sp, 堆疊指標): documents
        # that say it differently still come up as candidates.
        tfidf = index.scores_at(message + " " + answers.expansion(message), access, history)
        extraction = extract(answers, message, history, access, tfidf)
        return Grounding(_numbered(index, _passage_rows(answers, extraction)), extraction, answers)

    def strength(self, message: str) -> float:
        """How well the public documents answer the message: the gate's evidence (never restricted
        documents, whose contents must not show through what the gate lets in)."""
        # Without the title bonus: a request that only borrows a name (以戚繼光為名的健身房) must not pass for one about him.
        hits = self.index.search(message, "public", 1, title_bonus=False)
        return hits[0].score if hits else 0.0


def _passage_rows(answers: AnswerIndex, extraction: Extraction) -> list[int]:
    """The passages holding the answer (one per side), then the best-ranked others."""
    rows: list[int] = []
    for side in extraction.answers:
        row = answers.sentences[side[0]].row
        if row not in rows:
            rows.append(row)
    for row in extraction.ranked_rows:
        if len(rows) >= max(TOP_PASSAGES, len(extraction.answers)):
            break
        if row not in rows:
            rows.append(row)
    return rows


def _numbered(index: KnowledgeIndex, rows: Sequence[int]) -> list[Passage]:
    return [Passage(number, index.titles[row], index.texts[row], index.docs[row], 0.0, tuple(index.sources[row]), row)
            for number, row in enumerate(rows, 1)]


def no_documents_answer(domain: Domain) -> str:
    return NO_DOCUMENTS.format(title=domain.title)


def not_found_answer(domain: Domain) -> str:
    return NOT_FOUND.format(title=domain.title)


def abstain_answer(domain: Domain, grounding: Grounding) -> str:
    """The documents do not answer: say so, and list the closest documents as reading, not as the answer."""
    text = ABSTAIN.format(title=domain.title)
    related = grounding.extraction.related if grounding.extraction else []
    if related and grounding.answers:
        titles = dict(zip(grounding.answers.index.docs, grounding.answers.index.titles))
        text += "\n\n" + RELATED_HEADING + "、".join(f"〈{titles.get(doc, doc)}〉" for doc in related)
    return text


def quote_answer(grounding: Grounding) -> str:
    """The answering sentences first, verbatim and cited (one line per side of a comparison),
    then the rest of the passage they come from as context when there is one side."""
    answers = grounding.answers
    by_row = {passage.row: passage for passage in grounding.passages}
    lines, context = [], ""
    for side in grounding.extraction.answers:
        first = answers.sentences[side[0]]
        passage = by_row[first.row]
        quoted = "".join(answers.sentences[i].text for i in side)
        lines.append(f"{QUOTE_HEADING}〈{passage.title}〉：「{quoted}」[{passage.number}]")
        rest = "".join(answers.sentences[i].text for i in _row_sentences(answers, first.row) if i not in side)
        if len(grounding.extraction.answers) == 1 and rest and len(rest) <= CONTEXT_CHARS:
            context = f"{CONTEXT_HEADING}「{rest}」[{passage.number}]"
    return "\n\n".join(lines + ([context] if context else []))


def _row_sentences(answers: AnswerIndex, row: int) -> list[int]:
    doc = answers.index.docs[row]
    return [i for i in answers.by_doc.get(doc, []) if answers.sentences[i].row == row]


def cited_numbers(answer: str) -> set[int]:
    return {int(number) for number in _CITATION.findall(answer)}


def sources_of(passages: Sequence[Passage], answer: str) -> list[dict]:
    """Every passage given to the answer, marked cited when the answer names its number."""
    cited = cited_numbers(answer)
    return [{"number": p.number, "doc": p.doc, "title": p.title, "works": list(p.works), "cited": p.number in cited}
            for p in passages]


def sources_line(sources: Sequence[dict], with_doc: bool = False) -> str:
    """The cited sources with titles and the works they cite ("來源"), or every passage given when
    none was cited ("參考資料")."""
    cited = [s for s in sources if s.get("cited")]
    heading = "來源" if cited else "參考資料"
    return f"{heading}：" + "；".join(f"[{s['number']}] {s['title']}" + _source_detail(s, with_doc) for s in cited or sources)


def _source_detail(source: dict, with_doc: bool) -> str:
    works = f"（{'、'.join(source['works'])}）" if source.get("works") else ""
    return works + (f" — {source['doc']}.md" if with_doc else "")
