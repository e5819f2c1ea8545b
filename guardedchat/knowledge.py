"""Domain knowledge: returns the best passages from domains/<id>/knowledge/*.md for a question,
filtered by the asking user's access level.

A document is Markdown with YAML front matter:

    ---
    title: 鄭成功
    sources: [《明史》, 連橫《臺灣通史》]
    access: public          # public | internal | restricted (required: nothing is public by accident)
    ---
    正文……

Documents are cut into passages of a few sentences; passages are indexed with character n-gram
TF-IDF (no word segmentation, simplified mapped to traditional), and the index is cached on disk
under a hash of every document's bytes. A broken document (bad front matter, empty, binary, too big)
is reported by name and skipped; the rest index normally.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional, Sequence

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from . import disk_cache
from .errors import InputError
from .models import cache_dir

KNOWLEDGE_VERSION = "4"  # bump when chunking or features change, so cached indexes rebuild
ACCESS_LEVELS = ("public", "internal", "restricted")  # each level also sees the ones before it
MAX_DOCUMENT_BYTES = 2_000_000
PASSAGE_CHARS = 260  # a passage is a few sentences: long enough to answer, short enough to quote
MIN_SCORE = 0.05  # below this cosine similarity a passage is not evidence (eval/knowledge_*.jsonl: 2 of 207 answering passages score lower)
TITLE_BONUS = 0.1  # a question that names a document's title (鄭成功, PMP) is most likely about that document
RECHECK_SECONDS = 5.0  # how often a running app looks for added or changed documents
_SENTENCE_END = re.compile(r"(?<=[。！？!?；])|(?<=\.)\s+")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.DOTALL)


def check_level(value: str) -> str:
    """A pydantic validator body: the level, or ValueError naming the allowed ones."""
    if value not in ACCESS_LEVELS:
        raise ValueError(f"access 必須是 {' | '.join(ACCESS_LEVELS)}（收到 {value!r}）")
    return value


AccessLevel = Annotated[str, AfterValidator(check_level)]


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    sources: list[str] = []
    access: AccessLevel

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title 不可空白")
        return value.strip()

    @field_validator("sources", mode="before")
    @classmethod
    def _one_source_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value



@dataclass(frozen=True)
class Document:
    name: str  # the file name without .md: the id the search results and citations use
    title: str
    sources: tuple[str, ...]
    access: str
    body: str


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: which document, how similar, and the passage text."""

    doc: str
    title: str
    score: float
    text: str
    access: str
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"doc": self.doc, "title": self.title, "score": round(self.score, 4), "text": self.text}


def access_rank(level: str) -> int:
    """0 for public, 1 internal, 2 restricted; an unknown level is refused, not guessed."""
    if level not in ACCESS_LEVELS:
        raise InputError(f"不認得的存取等級 '{level}'。修正：使用 {' | '.join(ACCESS_LEVELS)} 之一。")
    return ACCESS_LEVELS.index(level)


def read_document(path: Path) -> Document:
    """One document, or InputError saying what is wrong with the file and how to fix it."""
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise InputError(f"檔案太大（{size / 1e6:.1f} MB，上限 {MAX_DOCUMENT_BYTES / 1e6:.0f} MB）。修正：拆成幾份較短的文件。")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise InputError("看起來是二進位檔，不是文字。修正：只放 UTF-8 的 Markdown 文件。")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"不是 UTF-8 文字（位元組 {exc.start}）。修正：以 UTF-8 重新存檔。") from exc
    match = _FRONT_MATTER.match(text)
    if not match:
        raise InputError("缺少開頭的 front matter。修正：第一行寫 ---，接著 title:、sources:、access:，再一行 ---。")
    meta = _front_matter(match.group(1))
    body = match.group(2).strip()
    if not body:
        raise InputError("文件沒有內文。修正：在 front matter 之後寫內容，或刪除這個檔案。")
    return Document(path.stem, meta.title, tuple(meta.sources), meta.access, body)


def _front_matter(text: str) -> FrontMatter:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"front matter 不是正確的 YAML（{exc}）。修正：檢查冒號與縮排。") from exc
    if not isinstance(data, dict):
        raise InputError("front matter 必須是鍵值對應。修正：寫成 title: …、access: public。")
    try:
        return FrontMatter.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "front matter"
        hint = "缺少必要欄位" if error["type"] == "missing" else error["msg"]
        raise InputError(f"front matter 欄位 '{where}'：{hint}。修正：需要 title 與 access（public | internal | "
                         "restricted），可加 sources；不接受其他欄位。") from exc


def load_documents(folder: Path) -> tuple[list[Document], dict[str, str]]:
    """Every readable document in the folder, and {file name: why it was skipped} for the rest."""
    documents, skipped = [], {}
    for path in sorted(Path(folder).glob("*.md")) if Path(folder).is_dir() else []:
        try:
            documents.append(read_document(path))
        except (InputError, OSError) as exc:
            skipped[path.name] = str(exc)
    return documents, skipped


def passages_of(document: Document, limit: int = PASSAGE_CHARS) -> list[str]:
    """The document cut at paragraph and sentence ends into pieces of about `limit` characters."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", document.body):
        paragraph = " ".join(line.strip().lstrip("#").strip() for line in paragraph.splitlines()).strip()
        if not paragraph:
            continue
        current, first = "", len(pieces)
        for sentence in split_sentences(paragraph):
            if current and len(current) + len(sentence) > limit:
                pieces.append(current)
                current = ""
            current += sentence
        if current and len(pieces) > first and len(current) < limit // 3 and len(pieces[-1]) + len(current) <= limit * 1.5:
            pieces[-1] += current  # a short last sentence belongs with the ones before it
        elif current:
            pieces.append(current)
    return [piece[: limit * 4] for piece in pieces]  # one endless "sentence" still ends somewhere


def short_title(title: str) -> str:
    """The name a question would use: 朱元璋（明太祖） → 朱元璋; PMP：實體記憶體保護 → pmp."""
    return normalize_text(re.split(r"[（(：:、與]", title)[0].strip()) or normalize_text(title)


def split_sentences(text: str) -> list[str]:
    return [part for part in _SENTENCE_END.split(text) if part and part.strip()]


def normalize_text(text: str) -> str:
    from .gate import normalize

    return normalize(text, limit=len(text) + 1)


def _vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Characters 1-3: single characters find two-character names split by particles, bigrams and
    # trigrams carry words; sublinear tf keeps a long passage from winning on repetition.
    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, dtype=np.float32,
                           preprocessor=normalize_text)


@dataclass
class KnowledgeIndex:
    """Passages, their TF-IDF rows (stored term-major so a query touches only its own terms)."""

    fingerprint: str
    documents: int
    skipped: dict[str, str]
    docs: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    access: Optional[np.ndarray] = None
    sources: list[tuple] = field(default_factory=list)
    vectorizer: object = None
    by_term: object = None  # scipy CSR, terms × passages
    doc_text: dict[str, str] = field(default_factory=dict)  # normalized title + body, for entity checks
    short_titles: dict[str, list] = field(default_factory=dict)  # normalized short title → its passage rows

    def search(self, query: str, level: str = "public", k: int = 5, history: Sequence[dict] = (),
               min_score: float = 0.0, mentioning: Sequence[str] = (), title_bonus: bool = True) -> list[Hit]:
        """The best passage of each of the k best documents the level may see, best first.
        With `mentioning`, only documents that name at least one of those (normalized) strings."""
        rank = access_rank(level)
        if not self.texts:
            return []
        scores = self._scores(query, history, title_bonus)
        scores[self.access > rank] = -1.0  # filtered before ranking: nothing above the level competes
        if mentioning:
            named = set().union(*(self.documents_naming(name) for name in mentioning))
            scores[[doc not in named for doc in self.docs]] = -1.0
        return self._best_per_document(scores, k, min_score)

    def scores_at(self, query: str, level: str = "public", history: Sequence[dict] = ()) -> np.ndarray:
        """Every passage's similarity to the query (with the conversation before it); 0 for
        passages above the level and for an empty index."""
        rank = access_rank(level)
        if not self.texts:
            return np.zeros(0, dtype=np.float32)
        scores = self._scores(query, history)
        scores[self.access > rank] = 0.0
        return np.maximum(scores, 0.0)

    def documents_naming(self, name: str) -> frozenset:
        """The documents whose text contains the (normalized) string; remembered, names recur."""
        naming = self.__dict__.setdefault("_naming", {})  # a memo, not part of the cached index
        if name not in naming:
            if len(naming) > 10_000:
                naming.clear()
            naming[name] = frozenset(doc for doc, text in self.doc_text.items() if name in text)
        return naming[name]

    def document_frequency(self, name: str) -> float:
        """The share of documents whose text contains the (normalized) string."""
        return len(self.documents_naming(name)) / max(1, len(self.doc_text))

    def _scores(self, query: str, history: Sequence[dict], title_bonus: bool = True) -> np.ndarray:
        vector = self.vectorizer.transform([query[:2000]])
        context = _recent_questions(history)
        if context:
            # A follow-up ("他後來呢？") leans on the questions before it, at half weight.
            vector = vector + 0.5 * self.vectorizer.transform([context[:2000]])
        scores = np.asarray((vector @ self.by_term).todense()).ravel()
        asked = normalize_text(query[:2000]) if title_bonus else ""
        for title, rows in self.short_titles.items() if asked else ():
            if title in asked:
                scores[rows] += TITLE_BONUS
        return scores

    def _best_per_document(self, scores: np.ndarray, k: int, min_score: float) -> list[Hit]:
        order = np.argsort(-scores, kind="stable")
        hits, seen = [], set()
        for i in order[: max(64, k * 16)]:
            score = float(scores[i])
            if score <= 0 or score < min_score or len(hits) == k:
                break
            if self.docs[i] in seen:
                continue
            seen.add(self.docs[i])
            hits.append(Hit(self.docs[i], self.titles[i], score, self.texts[i], ACCESS_LEVELS[self.access[i]],
                            tuple(self.sources[i])))
        return hits


def _recent_questions(history: Sequence[dict], turns: int = 2) -> str:
    questions = [str(m.get("content") or "") for m in history if isinstance(m, dict) and m.get("role") == "user"]
    return " ".join(questions[-turns:])


def fingerprint(folder: Path) -> str:
    """A hash of every document's name and bytes (and the index version)."""
    digest = hashlib.sha256(KNOWLEDGE_VERSION.encode())
    for path in sorted(Path(folder).glob("*.md")) if Path(folder).is_dir() else []:
        digest.update(path.name.encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                digest.update(hashlib.sha256(handle.read(MAX_DOCUMENT_BYTES + 1)).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()[:16]


def build_index(folder: Path, progress: Optional[Callable[[int, int], None]] = None) -> KnowledgeIndex:
    """Read, cut and index every document in the folder (no cache)."""
    documents, skipped = load_documents(folder)
    index = KnowledgeIndex(fingerprint(folder), len(documents), skipped)
    levels = []
    for done, document in enumerate(documents, 1):
        index.doc_text[document.name] = normalize_text(f"{document.title} {document.body}")
        rows = index.short_titles.setdefault(short_title(document.title), [])
        for text in passages_of(document):
            rows.append(len(index.texts))
            index.docs.append(document.name)
            index.titles.append(document.title)
            index.texts.append(text)
            index.sources.append(document.sources)
            levels.append(access_rank(document.access))
        if progress:
            progress(done, len(documents))
    index.access = np.asarray(levels, dtype=np.int8)
    if index.texts:
        index.vectorizer = _vectorizer()
        rows = index.vectorizer.fit_transform(f"{t} {x}" for t, x in zip(index.titles, index.texts))
        index.by_term = rows.T.tocsr()
    return index


_indexes: dict[str, tuple[float, KnowledgeIndex]] = {}
_lock = threading.Lock()


def index_for(folder: Path, rebuild: bool = False,
              progress: Optional[Callable[[int, int], None]] = None) -> KnowledgeIndex:
    """The folder's index: from memory (rechecked every few seconds), the disk cache, or built now."""
    key = str(Path(folder).resolve())
    with _lock:
        cached = _indexes.get(key)
        if cached and not rebuild and time.monotonic() - cached[0] < RECHECK_SECONDS:
            return cached[1]
        current = fingerprint(folder)
        if cached and not rebuild and cached[1].fingerprint == current:
            _indexes[key] = (time.monotonic(), cached[1])
            return cached[1]
        path = cache_dir() / "knowledge" / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}-{current}.pkl"
        index = None if rebuild else disk_cache.load(path, KnowledgeIndex)
        if index is None:
            index = build_index(folder, progress)
            disk_cache.save(path, index)
        _indexes[key] = (time.monotonic(), index)
        return index
