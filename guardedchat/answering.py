"""Answer extraction: returns the sentences of a domain's documents that answer a question, or an
abstention when none does (only the name matches).

Sentences compete, not documents: each sentence of the candidate documents is scored by how much of
the question's predicate it covers (synonyms count, rare words weigh more), whether it holds the
evidence the question type needs (a year for "when", a count for "how many"), and whether it belongs
to the document about the person or term asked about.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .knowledge import ACCESS_LEVELS, KnowledgeIndex, normalize_text, split_sentences
from .question import (REQUIRED_EVIDENCE, Question, Synonyms, Term, analyze, contains, find_names, fold,
                       general_alias_groups)

MIN_COVERAGE = 0.5       # share of the predicate's weight a sentence must hold to count as an answer
EVIDENCE_BONUS = 0.25    # the sentence holds what the question type needs (a year, a count, a cause)
SUBJECT_BONUS = 0.3      # the sentence's document is about the person or term asked about
NAMING_BONUS = 0.1       # the sentence's document names it
RETRIEVAL_WEIGHT = 0.3   # the passage's TF-IDF similarity to the whole question
COMMON_NAME_SHARE = 0.3  # a name in more documents than this (RISC-V, 明朝) says nothing about which one
LOOSE_CHARACTER_WEIGHT = 0.75  # a character of the question no document word holds
PARTIAL_CREDIT = 0.5      # a word's characters found apart count for at most this much of it
LATER_BONUS = 0.2         # at most, for the last sentence of a document, when the question asks what came later
SHOWN_SHARE = 0.6         # a sentence whose character pairs were mostly in the last answer was shown already
MAX_WORD = 6              # the longest run of a question looked up whole in the documents
SHORT_SENTENCE = 24      # an answering sentence shorter than this is shown with the next one
CANDIDATE_DOCUMENTS = 5
WEAK_TERM_WEIGHT = 3.0   # a word in more than about an eighth of all sentences (指令, 暫存器) adds nothing to a name
OPENING_ANSWERS = frozenset({"definition", "who", "what", "yes_no", "how", "why", "compare"})
GENERIC_NAME_SHARE = 0.2  # a name in more documents than this (CSR, S 模式) leaves the question open to others
_TITLE_PARTS = re.compile(r"[（）()：:、，,與《》〈〉「」/／]+")
_STYLE_NAMES = re.compile(r"(?:字|號|自號|別號|諡號|諡|人稱|又稱|俗稱|稱為|通稱)\s*「?([\u4e00-\u9fff]{2,4}?)」?(?=[，,。；）)、\s]|$)")
_EMPEROR = re.compile(r"^(.{2,}?)(皇帝|太后|皇后|帝)(.*)$")


@dataclass(frozen=True)
class Sentence:
    row: int        # the passage row in the knowledge index
    doc: str
    text: str       # as written, for quoting
    norm: str       # normalized, for matching
    position: int   # its place in the document


@dataclass(frozen=True)
class Scored:
    sentence: int   # index into AnswerIndex.sentences
    score: float
    coverage: float
    evidence: bool
    anchored: bool = True  # the sentence's document is about a subject, or its passage names one


@dataclass
class Extraction:
    """What the documents say to one question: the answering sentences (grouped per side for a
    comparison), or none, with the documents that came closest."""

    question: Question
    answers: list[list[int]] = field(default_factory=list)  # sentence indices, one list per side
    related: list[str] = field(default_factory=list)        # document names, best first
    ranked_rows: list[int] = field(default_factory=list)     # passage rows, best first

    @property
    def abstained(self) -> bool:
        return not self.answers


class AnswerIndex:
    """The sentences and names of one knowledge index, with the synonym groups of its domain."""

    def __init__(self, index: KnowledgeIndex, extra_names: Sequence[str] = (), alias_groups: Sequence = ()):
        self.index = index
        self.sentences: list[Sentence] = []
        self.by_doc: dict[str, list[int]] = {}
        for row, (doc, text) in enumerate(zip(index.docs, index.texts)):
            sentences = self.by_doc.setdefault(doc, [])
            for part in split_sentences(text):
                if part.strip():
                    sentences.append(len(self.sentences))
                    self.sentences.append(Sentence(row, doc, part.strip(), _norm(part), len(sentences)))
        self.synonyms = Synonyms([*general_alias_groups(), *alias_groups], _norm)
        self.corpus = "\n".join(sentence.norm for sentence in self.sentences)
        self.passage_norms = [_norm(text) for text in index.texts]
        self.about = self._names_from_titles()
        self._add_names(extra_names, alias_groups)
        self._add_variants()
        self.names = sorted(_without_compounds(self.about), key=len, reverse=True)
        self.common = {name for name in self.names if index.document_frequency(name) > COMMON_NAME_SHARE}
        self._df: dict[str, int] = {}
        self._lock = threading.Lock()

    def _names_from_titles(self) -> dict[str, set[str]]:
        """Name → the documents about it: each title's parts (朱棣（明成祖，永樂帝）), a ruler's
        reign and personal names (崇禎皇帝朱由檢 → 崇禎, 朱由檢), and 字／號 from the opening lines."""
        about: dict[str, set[str]] = {}
        titles = dict(zip(self.index.docs, self.index.titles))
        for doc, title in titles.items():
            for name in _title_names(title) | _style_names(self.index.doc_text.get(doc, "")[:300]):
                about.setdefault(_norm(name), set()).add(doc)
        return about

    def _add_names(self, extra_names: Sequence[str], alias_groups: Sequence) -> None:
        for name in map(_norm, extra_names):
            if len(name) >= 2 and name not in self.about:
                self.about[name] = set()  # named in the lexicon: documents that name it are found on use
        for group in alias_groups:  # 國姓爺 ↔ 鄭成功: every form is about the same documents
            forms = [_norm(str(word)) for word in group]
            docs = set().union(*(self.about.get(form, set()) for form in forms))
            if docs:
                for form in forms:
                    self.about.setdefault(form, set()).update(docs)

    def _add_variants(self) -> None:
        """A name of several words in its synonyms' forms too: c 擴充 → c extension, c 擴展."""
        for name, docs in list(self.about.items()):
            parts = name.split(" ")
            for k, part in enumerate(parts if docs and len(parts) > 1 else ()):
                for form in self.synonyms.forms(part):
                    if form != part:
                        self.about.setdefault(" ".join(parts[:k] + [form] + parts[k + 1:]), set()).update(docs)

    def documents(self, name: str) -> tuple[set[str], set[str]]:
        """(documents about the name, documents that name it)."""
        naming = set().union(*(self.index.documents_naming(form) for form in _match_forms(name)))
        return self.about.get(name, set()), naming

    def weight(self, form: str) -> float:
        """Inverse sentence frequency: a word few sentences hold says more."""
        with self._lock:
            if form not in self._df:
                self._df[form] = sum(1 for s in self.sentences if contains(s.norm, form))
            df = self._df[form]
        return math.log((len(self.sentences) + 1) / (df + 1)) + 1.0

    def term_weight(self, term) -> float:
        """A word's own weight; a lone character left over from a run weighs less (它 may be
        part of a word the documents phrase otherwise)."""
        return self.weight(term.text) * (LOOSE_CHARACTER_WEIGHT if term.soft else 1.0)

    def analyze(self, text: str) -> Question:
        """The question's type, names and terms; runs no word list knows are cut into the words
        the documents use (訓練戚家軍 → 訓練, 戚家軍) and single characters."""
        question = analyze(_without(_norm(text), self.common), self.names, self.synonyms)
        terms = [part for term in question.terms for part in (self._segment(term) if term.soft else [term])]
        return replace(question, terms=tuple(terms))

    def expansion(self, text: str) -> str:
        """The other forms of the question's words, for retrieval."""
        question = self.analyze(text)
        return " ".join(form for term in question.terms for form in term.forms[:6] if form != term.text)

    def _segment(self, term: Term) -> list[Term]:
        parts, i, text = [], 0, term.text
        while i < len(text):
            size = next((n for n in range(min(MAX_WORD, len(text) - i), 1, -1) if text[i:i + n] in self.corpus), 1)
            word = text[i:i + size]
            parts.append(Term(word, self.synonyms.forms(word), soft=size == 1))
            i += size
        return parts


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


def _without_compounds(about: dict[str, set[str]]) -> list[str]:
    """The names, less those that only join a documented name to a predicate (鄭和下西洋 is 鄭和 +
    下西洋: read that way, the question is about 鄭和 and asks about 下西洋)."""
    documented = [name for name, docs in about.items() if docs]
    return [name for name, docs in about.items()
            if docs or not any(short != name and short in name for short in documented)]


def _norm(text: str) -> str:
    return fold(normalize_text(text))


def _title_names(title: str) -> set[str]:
    names = set()
    for part in (p.strip() for p in _TITLE_PARTS.split(title)):
        if len(part) < 2:
            continue
        names.add(part)
        if not part.isascii():  # 記憶體模型 RVWMO → rvwmo too
            names.update(token for token in re.findall(r"[A-Za-z][A-Za-z0-9_/.-]+", part) if len(token) >= 2)
        match = _EMPEROR.match(part)
        if match and len(match.group(1)) >= 2:
            names.update({match.group(1), match.group(1) + match.group(2)})
            if match.group(2) == "皇帝":
                names.add(match.group(1) + "帝")
            if len(match.group(3)) >= 2:
                names.add(match.group(3))
        for suffix in ("事件", "之變", "之亂", "擴充"):
            if part.endswith(suffix) and len(part) - len(suffix) >= 1:
                names.add(part[: -len(suffix)].strip())
    return {name for name in names if len(name) >= 2}


def _style_names(opening: str) -> set[str]:
    return {match.group(1) for match in _STYLE_NAMES.finditer(opening)}


def _without(text: str, common: set[str]) -> str:
    for name in find_names(text, sorted(common, key=len, reverse=True)):
        text = text.replace(name, " ")
    return text


def extract(answer_index: AnswerIndex, message: str, history: Sequence[dict], level: str,
            tfidf: np.ndarray) -> Extraction:
    """The sentences that answer the message, or an abstention with related documents."""
    question = _with_conversation(answer_index, answer_index.analyze(message), history)
    if not question.subjects and not question.terms:
        # RISC-V 是哪一年開始的？: nothing but the domain's own name is left; it is the subject after all.
        question = replace(question, subjects=tuple(find_names(_norm(message), sorted(answer_index.common, key=len, reverse=True))))
    subjects = _by_specificity(answer_index, question.subjects)
    # 鄭成功是誰？ Zbb 有哪些指令？: nothing asked beyond the name but words every document uses.
    asks_about_subject_only = not question.terms or bool(question.subjects) and all(
        answer_index.term_weight(term) < WEAK_TERM_WEIGHT for term in question.terms)
    about, naming = _subject_documents(answer_index, subjects)
    allowed = _visible_docs(answer_index.index, level)
    extraction = Extraction(question)
    if subjects and not (about | naming) & allowed:
        return extraction  # the question names someone no document mentions
    if question.qtype != "compare" and len(subjects) > 1:
        # 朱棣派鄭和下西洋…: the most specific name is what it is about, the others are part of what it asks.
        question = replace(question, terms=question.terms + tuple(
            Term(name, answer_index.synonyms.forms(name), docs=frozenset(answer_index.about.get(name, ())))
            for name in subjects[1:]))
    specific = [name for name in subjects if answer_index.index.document_frequency(name) <= GENERIC_NAME_SHARE]
    context = _Context(tfidf, about, naming, tuple(form for name in specific for form in answer_index.synonyms.forms(name)))
    scored = _scored(answer_index, question, _candidate_docs(answer_index, tfidf, about | naming, allowed, subjects),
                     context)
    extraction.ranked_rows = _rows_in_order(answer_index, scored)
    extraction.related = _docs_in_order(answer_index, scored)[:3]
    if question.qtype == "compare" and len(subjects) >= 2:
        extraction.answers = _compare(answer_index, subjects[:2], scored)
    elif asks_about_subject_only:
        extraction.answers = _about(answer_index, question, subjects, about, history, scored)
    else:
        best = _best_answer(answer_index, question, scored)
        if not best and subjects and _generic(answer_index, subjects):
            # CSR, 指令: a term many documents use does not say which one answers; look wider.
            wider = _scored(answer_index, question, _candidate_docs(answer_index, tfidf, set(), allowed, ()), context)
            best = _best_answer(answer_index, question, wider)
        extraction.answers = [best] if best else []
    return extraction


@dataclass(frozen=True)
class _Context:
    tfidf: np.ndarray     # each passage's similarity to the question
    about: set            # documents about the question's names
    naming: set           # documents that name them
    names: tuple          # every form of those names


def _scored(answer_index: AnswerIndex, question: Question, docs: Sequence[str], context: _Context) -> list[Scored]:
    scored = [_score(answer_index, question, i, context) for doc in docs for i in answer_index.by_doc.get(doc, [])]
    scored.sort(key=lambda s: -s.score)
    return scored


def _with_conversation(answer_index: AnswerIndex, question: Question, history: Sequence[dict]) -> Question:
    """A follow-up read with the conversation: the names it continues (他後來呢？ → 于謙), and for an
    ellipsis (浮點的呢？ after 整數暫存器有幾個？) the earlier question's predicate and type too."""
    if not question.follow_up:
        return question
    named = _previous_question(answer_index, history)
    subjects = question.subjects
    if named and (not subjects or (question.qtype == "compare" and len(subjects) < 2)):
        subjects = tuple(dict.fromkeys(subjects + named.subjects))
    last = _last_user_question(answer_index, history)
    if last is not None and _ELLIPSIS.search(question.text) and not question.terms[1:]:
        return replace(question, qtype=last.qtype, unit=last.unit, subjects=subjects,
                       terms=question.terms + last.terms if not question.subjects else last.terms)
    return replace(question, subjects=subjects)


def _last_user_question(answer_index: AnswerIndex, history: Sequence[dict]) -> Optional[Question]:
    for message in reversed([m for m in history if isinstance(m, dict) and m.get("content")]):
        if message.get("role") == "user":
            return answer_index.analyze(str(message["content"])[:2000])
    return None


_ELLIPSIS = re.compile(r"^(那|那麼|還有|而|then|and|what about)?\s*.{0,16}?(的)?(呢|怎麼樣|如何)[？?]?$")


def _previous_question(answer_index: AnswerIndex, history: Sequence[dict]) -> Optional[Question]:
    """The latest earlier user turn that names something, analyzed; else the names in the latest answer."""
    turns = [m for m in history if isinstance(m, dict) and m.get("content")]
    for message in reversed(turns):
        if message.get("role") == "user":
            previous = answer_index.analyze(str(message["content"])[:2000])
            if previous.subjects:
                return previous
    for message in reversed(turns):
        if message.get("role") == "assistant":
            previous = answer_index.analyze(str(message["content"])[:2000])
            if previous.subjects:
                return replace(previous, terms=(), qtype="what")
    return None


def _by_specificity(answer_index: AnswerIndex, subjects: Sequence[str]) -> list[str]:
    """The names the question is most specifically about first (mtvec before CSR)."""
    return sorted(subjects, key=lambda name: (answer_index.index.document_frequency(name), -len(name)))


def _generic(answer_index: AnswerIndex, subjects: Sequence[str]) -> bool:
    return all(answer_index.index.document_frequency(name) > GENERIC_NAME_SHARE for name in subjects)


def _subject_documents(answer_index: AnswerIndex, subjects: Sequence[str]) -> tuple[set[str], set[str]]:
    about, naming = set(), set()
    for name in subjects:
        docs_about, docs_naming = answer_index.documents(name)
        about |= docs_about
        naming |= docs_naming
    return about, naming


def _visible_docs(index: KnowledgeIndex, level: str) -> set[str]:
    rank = ACCESS_LEVELS.index(level)
    return {doc for doc, access in zip(index.docs, index.access) if access <= rank}


def _candidate_docs(answer_index: AnswerIndex, tfidf: np.ndarray, subject_docs: set[str], allowed: set[str],
                    subjects: Sequence[str]) -> list[str]:
    """The subject's documents, else the documents whose passages are most like the question."""
    if subjects:
        return sorted(subject_docs & allowed)
    order = np.argsort(-tfidf, kind="stable")
    docs: list[str] = []
    for row in order:
        doc = answer_index.index.docs[row]
        if tfidf[row] <= 0 or len(docs) == CANDIDATE_DOCUMENTS:
            break
        if doc in allowed and doc not in docs:
            docs.append(doc)
    return docs


def _score(answer_index: AnswerIndex, question: Question, i: int, context: _Context) -> Scored:
    sentence = answer_index.sentences[i]
    coverage = _coverage(answer_index, question, sentence)
    evidence = question.evidence(sentence.norm)
    score = coverage + EVIDENCE_BONUS * evidence + RETRIEVAL_WEIGHT * float(context.tfidf[sentence.row])
    score += SUBJECT_BONUS if sentence.doc in context.about else NAMING_BONUS if sentence.doc in context.naming else 0.0
    if question.later:  # 他最後死在哪？: the later part of a life or a story
        score += LATER_BONUS * sentence.position / max(1, len(answer_index.by_doc[sentence.doc]))
    # A passage of someone else's document answers only if it names who the question is about.
    # Someone else's document answers only in a sentence that names who the question is about
    # (its 他 is that document's own subject).
    anchored = not context.names or sentence.doc in context.about or \
        any(contains(sentence.norm, form) for form in context.names)
    return Scored(i, score, coverage, evidence, anchored)


def _coverage(answer_index: AnswerIndex, question: Question, sentence: Sentence) -> float:
    """The share of the predicate's weight the sentence holds (a term in any of its forms; a name
    also by the sentence belonging to the name's own document)."""
    total = held = 0.0
    for term in question.terms:
        weight = answer_index.term_weight(term)
        total += weight
        if sentence.doc in term.docs or any(contains(sentence.norm, form) for form in term.forms):
            held += weight
        elif len(term.text) > 1 and not term.text.isascii():
            # 讀出 ~ 讀取, 建設 ~ 修建: a word the sentence does not hold whole counts in part for the
            # characters it shares, by their weight.
            chars = [(answer_index.weight(char), char in sentence.norm) for char in term.text]
            held += weight * PARTIAL_CREDIT * sum(w for w, hit in chars if hit) / sum(w for w, _ in chars)
    return held / total if total else 0.0


def _best_answer(answer_index: AnswerIndex, question: Question, scored: list[Scored]) -> list[int]:
    """The best sentence covering the predicate (and its neighbour when the evidence the type
    needs, or the sense, continues there); [] when none covers enough."""
    if _unknown_identifier(answer_index, question):
        return []
    for candidate in scored:
        if candidate.coverage < MIN_COVERAGE or not candidate.anchored:
            continue
        sentences = [candidate.sentence]
        if question.qtype in REQUIRED_EVIDENCE and not candidate.evidence:
            neighbour = _neighbour_with_evidence(answer_index, question, candidate.sentence)
            if neighbour is None:
                continue
            sentences = sorted([candidate.sentence, neighbour])
        return _with_short_follower(answer_index, sentences)
    return []


def _unknown_identifier(answer_index: AnswerIndex, question: Question) -> Optional[str]:
    """A technical term the question asks about that no document uses in any form (XiangShan,
    tape-out, CEO): the documents cannot be answering it."""
    for term in question.terms:
        if term.text.isascii() and len(term.text) >= 3 and not term.docs \
                and not any(contains(answer_index.corpus, form) for form in term.forms):
            return term.text
    return None


def _neighbour_with_evidence(answer_index: AnswerIndex, question: Question, i: int) -> Optional[int]:
    """The sentence before or after, in the same passage, that holds the year or count and shares
    something of the question (the year of a birth is not the year of a death)."""
    row = answer_index.sentences[i].row
    for j in (i + 1, i - 1):
        if 0 <= j < len(answer_index.sentences) and answer_index.sentences[j].row == row \
                and question.evidence(answer_index.sentences[j].norm) \
                and _coverage(answer_index, question, answer_index.sentences[j]) > 0:
            return j
    return None


def _with_short_follower(answer_index: AnswerIndex, sentences: list[int]) -> list[int]:
    last = sentences[-1]
    shown = sum(len(answer_index.sentences[i].text) for i in sentences)
    nxt = last + 1
    if shown < SHORT_SENTENCE and nxt < len(answer_index.sentences) \
            and answer_index.sentences[nxt].doc == answer_index.sentences[last].doc:
        return sentences + [nxt]
    return sentences


def _about(answer_index: AnswerIndex, question: Question, subjects: Sequence[str], about: set[str],
           history: Sequence[dict], scored: list[Scored]) -> list[list[int]]:
    """A question with no predicate of its own (于謙是誰？ mtvec 是做什麼的？ 他後來呢？): the opening
    of the document about its most specific subject, the best sentence naming it when no document
    is about it, or what follows the part the conversation already covered."""
    if not subjects:
        return []
    name = subjects[0]
    own_docs = answer_index.about.get(name, set()) & about
    docs = _docs_in_order(answer_index, [s for s in scored if answer_index.sentences[s.sentence].doc in own_docs])
    if docs and question.later:
        start = _after_conversation(answer_index, answer_index.by_doc[docs[0]], history)
        return [_with_short_follower(answer_index, [start])] if start is not None else []
    if docs and question.qtype in REQUIRED_EVIDENCE:
        # 于謙幾歲過世？ RISC-V 是哪一年開始的？: the best sentence of its documents with the year or count.
        evident = [s for s in scored if s.evidence and answer_index.sentences[s.sentence].doc in docs[:1]]
        return [_with_short_follower(answer_index, [evident[0].sentence])] if evident else []
    opening = answer_index.by_doc[docs[0]][0] if docs else None
    if opening is not None and question.qtype in OPENING_ANSWERS \
            and contains(answer_index.sentences[opening].norm, name):
        return [_with_short_follower(answer_index, [opening])]
    # Zbb 有哪些指令？ (a document about B, Zba, Zbb and Zbs): the sentence that names it, one
    # holding what the type asks for (a list, a place) first.
    naming = [s for s in scored if contains(answer_index.sentences[s.sentence].norm, name)
              and (not docs or answer_index.sentences[s.sentence].doc in docs)]
    # The sentence it is the subject of (Zbs 提供…) before one that only lists it among others.
    naming.sort(key=lambda s: (not s.evidence, not answer_index.sentences[s.sentence].norm.startswith(name), -s.score))
    if naming:
        return [_with_short_follower(answer_index, [naming[0].sentence])]
    return [_with_short_follower(answer_index, [opening])] if opening is not None else []


def _after_conversation(answer_index: AnswerIndex, sentences: list[int], history: Sequence[dict]) -> Optional[int]:
    """The first sentence after the one the last answer most resembles that the user has not been
    shown yet (a quoted answer shows its whole passage); the document's last passage when there
    is no answer to follow."""
    said = next((str(m.get("content") or "") for m in reversed(history)
                 if isinstance(m, dict) and m.get("role") == "assistant"), "")
    if not said:
        return _first_of_row(answer_index, sentences[-1])
    said_bigrams = _bigrams(_norm(said))
    seen = [len(said_bigrams & _bigrams(answer_index.sentences[i].norm)) for i in sentences]
    anchor = max(range(len(sentences)), key=lambda k: (seen[k], -k))
    for k in range(anchor + 1, len(sentences)):
        own = _bigrams(answer_index.sentences[sentences[k]].norm)
        if len(own & said_bigrams) < SHOWN_SHARE * len(own):
            return sentences[k]
    return None


def _first_of_row(answer_index: AnswerIndex, i: int) -> int:
    row = answer_index.sentences[i].row
    while i > 0 and answer_index.sentences[i - 1].row == row:
        i -= 1
    return i


def _bigrams(text: str) -> set[str]:
    return {text[i:i + 2] for i in range(len(text) - 1) if not text[i:i + 2].isspace()}


def _compare(answer_index: AnswerIndex, subjects: Sequence[str], scored: list[Scored]) -> list[list[int]]:
    """One cited sentence per side: the best sentence of the side's own documents that names it
    and covers the predicate, else its document's opening (or the best sentence naming it, when
    one document covers both sides); nothing when a side has no document."""
    sides = []
    for name in subjects:
        about, naming = answer_index.documents(name)
        in_docs = [s for s in scored if answer_index.sentences[s.sentence].doc in (about or naming)]
        if not in_docs:
            return []
        # Its own document speaks of it as 他; another document must name it.
        pool = [s for s in in_docs if answer_index.sentences[s.sentence].doc in about
                or contains(answer_index.sentences[s.sentence].norm, name)] or in_docs
        covered = [s for s in pool if s.coverage >= MIN_COVERAGE]
        opening = _opening_naming(answer_index, about, name)
        if covered or pool[0].coverage > 0 or opening is None:
            sides.append([(covered or pool)[0].sentence])  # what it says on the point asked, if anything
        else:
            sides.append([opening])
    return sides if len({tuple(side) for side in sides}) == len(sides) else sides[:1]


def _opening_naming(answer_index: AnswerIndex, docs: set[str], name: str) -> Optional[int]:
    """The first sentence of a document about the name, if that sentence names it."""
    for doc in sorted(docs):
        first = answer_index.by_doc[doc][0] if answer_index.by_doc.get(doc) else None
        if first is not None and contains(answer_index.sentences[first].norm, name):
            return first
    return None


def _rows_in_order(answer_index: AnswerIndex, scored: list[Scored]) -> list[int]:
    """The passages of the scored sentences, best first, each once."""
    return list(dict.fromkeys(answer_index.sentences[candidate.sentence].row for candidate in scored))


def _docs_in_order(answer_index: AnswerIndex, scored: list[Scored]) -> list[str]:
    """The documents of the scored sentences, best first, each once."""
    return list(dict.fromkeys(answer_index.sentences[candidate.sentence].doc for candidate in scored))
