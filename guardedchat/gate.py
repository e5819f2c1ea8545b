"""The domain gate: returns allow / refuse / greet, with a score and a reason, in about a millisecond.

One scikit-learn model per domain: character n-gram TF-IDF (no word segmentation; simplified text is
mapped to traditional characters first) plus ASCII word n-grams, into a logistic regression.

Trained from, for domain D:
  positives  D's in-scope examples, and questions built from D's lexicon (people, works, terms...)
             with generic question templates, so an unseen name in a familiar frame is still in scope;
  negatives  D's hard negatives, the shared general out-of-scope corpus, other domains' examples,
             and "borrowed-word" requests: D's own entities inside out-of-scope requests
             (鄭成功會推薦哪家牛肉湯？), so that domain words alone never open the gate.
A shared follow-up detector lets a short, context-dependent question ("他的父親是誰？") through
after an in-scope turn; greetings and "what can you do?" get the domain's greeting.

The threshold is chosen by cross-validation, leaning towards refusing, unless the domain YAML sets
gate.threshold. Training is deterministic; the trained gate is cached on disk under a hash of
everything it was trained from.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Optional, Sequence

import yaml

from . import disk_cache
from .domains import Domain
from .models import cache_dir

GATE_VERSION = "11"  # bump when features or training change, so cached gates retrain
MAX_FEATURE_CHARS = 600  # a 100 000-character message is judged on its start (and always refused later by limits)
FOLLOWUP_MAX_CHARS = 40
CONTEXT_DEPTH = 3  # a follow-up of a follow-up of a follow-up still counts; deeper history does not
FOREIGN_BAR = 0.9  # a message naming only outside entities needs this score to pass
REQUEST_VETO_LOSS = 0.01  # the share of domain questions the request veto may cost (out of fold)
# A message naming a lexicon entity needs only this fraction of the threshold. (Choosing it by
# cross-validation does not work: every lexicon-built positive names an entity by construction.)
ENTITY_FLOOR = 0.75


@dataclass(frozen=True)
class GateDecision:
    """allow / refuse / greet, the in-scope probability, the threshold used and a readable reason."""

    decision: str
    score: float
    threshold: float
    reason: str

    @property
    def allowed(self) -> bool:
        return self.decision != "refuse"

    def to_json(self) -> dict:
        return {"decision": self.decision, "score": round(self.score, 4), "threshold": round(self.threshold, 4),
                "reason": self.reason}


@lru_cache(maxsize=None)
def _data(name: str) -> dict:
    return yaml.safe_load(files("guardedchat.data").joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _to_traditional():
    import opencc

    return opencc.OpenCC("s2t")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\ufeff\ud800-\udfff]")
_SPACES = re.compile(r"\s+")


def normalize(text: str, limit: int = MAX_FEATURE_CHARS) -> str:
    """The form the gate reads: NFKC (full-width → ASCII), lower case, traditional characters."""
    text = _CONTROL.sub(" ", str(text)[: limit * 2])
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SPACES.sub(" ", text).strip()[:limit]
    return _to_traditional().convert(text).replace("臺", "台")


def _features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("chars", TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1)),
        ("words", TfidfVectorizer(analyzer="word", token_pattern=r"[a-z][a-z0-9_.+-]*", ngram_range=(1, 2),
                                  sublinear_tf=True)),
    ])


def _classifier(c: float = 10.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline as SkPipeline

    return SkPipeline([("features", _features()),
                       ("model", LogisticRegression(C=c, class_weight="balanced", solver="liblinear"))])


WORD_TOKEN = re.compile(r"[a-z][a-z0-9_.+-]*")


class FastScorer:
    """The fitted TF-IDF + logistic regression as plain dictionaries: the same probability as
    sklearn's predict_proba (checked by a test), in tens of microseconds instead of milliseconds."""

    def __init__(self, fitted):
        union, model = fitted.named_steps["features"], fitted.named_steps["model"]
        coef = model.coef_[0]
        self.intercept = float(model.intercept_[0])
        self.tables = []
        offset = 0
        for _, vectorizer in union.transformer_list:
            idf = vectorizer.idf_
            table = {term: (float(idf[i]), float(coef[offset + i])) for term, i in vectorizer.vocabulary_.items()}
            self.tables.append(table)
            offset += len(vectorizer.vocabulary_)

    def probability(self, text: str) -> float:
        z = self.intercept
        for table, grams in zip(self.tables, (_char_grams(text), _word_grams(text))):
            z += _weighted(table, grams)
        return 1.0 / (1.0 + math.exp(-z)) if z > -500 else 0.0


def _char_grams(text: str) -> list[str]:
    grams = list(text)
    for n in (2, 3):
        grams += [text[i:i + n] for i in range(len(text) - n + 1)]
    return grams


def _word_grams(text: str) -> list[str]:
    tokens = WORD_TOKEN.findall(text)
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def _weighted(table: dict, grams: list[str]) -> float:
    counts: dict[str, int] = {}
    for gram in grams:
        if gram in table:
            counts[gram] = counts.get(gram, 0) + 1
    if not counts:
        return 0.0
    dot = norm = 0.0
    for gram, count in counts.items():
        idf, coef = table[gram]
        weight = (1.0 + math.log(count)) * idf  # sublinear tf, then L2 normalization per vectorizer
        dot += weight * coef
        norm += weight * weight
    return dot / math.sqrt(norm)


# ---------------------------------------------------------------- training data


def _expand(templates: Sequence[str], values: Sequence[str], limit_per_value: int) -> list[str]:
    """Fill {x} templates with values, deterministically rotating through templates."""
    out = []
    for index, value in enumerate(values):
        for step in range(limit_per_value):
            out.append(templates[(index + step * 7) % len(templates)].replace("{x}", str(value)))
    return out


def training_set(domain: Domain, others: Sequence[Domain]) -> tuple[list[str], list[int]]:
    """Texts and labels (1 = in scope) for domain, from everything listed in the module docstring."""
    templates = _data("gate_templates")
    followups = set(_followup_texts())
    positives = [q for q in domain.examples.in_scope if q not in followups]
    for kind, names in domain.lexicon.items():
        positives += _expand(templates["in_scope"].get(kind, templates["in_scope"]["term"]), names, 1)
    negatives = list(domain.examples.out_of_scope) + _general_out_of_scope()
    for other in others:
        negatives += [q for q in other.examples.in_scope if q not in followups]
        negatives += [q for q in other.examples.out_of_scope if q not in domain.examples.in_scope]
    entities = [name for names in domain.lexicon.values() for name in names]
    negatives += _expand(templates["borrowed"], entities, 1)
    # The most prominent names of each kind (listed first: RISC-V, 朱元璋) in every borrowed frame.
    leaders = [name for names in domain.lexicon.values() for name in names[:3]]
    negatives += _expand(templates["borrowed"], leaders, len(templates["borrowed"]))
    negatives += _expand(templates["general_entity"], _general_entities(), 1)
    negatives += _expand(templates["other_era"], _general_entity_group("eras"), 3)
    negatives += _expand(templates["other_isa"], _general_entity_group("isas"), 3)
    texts = positives + negatives
    labels = [1] * len(positives) + [0] * len(negatives)
    return [normalize(t) for t in texts], labels


def request_training_set(domains: Sequence[Domain]) -> tuple[list[str], list[int]]:
    """Domain questions of every domain (1) against everyday, creative and commercial requests (0),
    with every domain's entities on both sides, so that what is asked weighs more than who is named."""
    templates = _data("gate_templates")
    followups = set(_followup_texts())
    # Jailbreak phrasing is the injection rules' job; here it would teach that "ignore" is off-domain.
    general = _data("general_out_of_scope")["questions"]
    positives, negatives = [], [q for name, qs in general.items() if name != "jailbreak" for q in qs]
    for domain in domains:
        positives += [q for q in domain.examples.in_scope if q not in followups]
        for kind, names in domain.lexicon.items():
            positives += _expand(templates["in_scope"].get(kind, templates["in_scope"]["term"]), names, 1)
        entities = [name for names in domain.lexicon.values() for name in names]
        negatives += _expand(templates["borrowed"], entities, 1)
        leaders = [name for names in domain.lexicon.values() for name in names[:3]]
        negatives += _expand(templates["borrowed"], leaders, len(templates["borrowed"]))
    texts = positives + negatives
    return [normalize(t) for t in texts], [1] * len(positives) + [0] * len(negatives)


@lru_cache(maxsize=1)
def _general_out_of_scope() -> list[str]:
    return [q for questions in _data("general_out_of_scope")["questions"].values() for q in questions]


@lru_cache(maxsize=1)
def _general_entities() -> list[str]:
    groups = _data("general_out_of_scope")["entities"]
    return [e for group in ("people", "other_era_people", "places", "things") for e in groups[group]]


def _general_entity_group(name: str) -> list[str]:
    return list(_data("general_out_of_scope")["entities"][name])


@lru_cache(maxsize=1)
def _followup_texts() -> list[str]:
    return list(_data("gate_followups")["followups"])


def _training_fingerprint(domain: Domain, others: Sequence[Domain]) -> str:
    """A hash of everything the gate is trained from: a changed YAML or data file retrains."""
    parts = [GATE_VERSION, _domain_fingerprint(domain)] + sorted(_domain_fingerprint(o) for o in others)
    for name in ("gate_templates", "general_out_of_scope", "gate_followups", "greetings"):
        parts.append(files("guardedchat.data").joinpath(f"{name}.yaml").read_text(encoding="utf-8"))
    parts.append(importlib.metadata.version("scikit-learn"))  # importing sklearn itself costs a second
    return hashlib.sha256("\x1e".join(parts).encode("utf-8")).hexdigest()[:20]


def _domain_fingerprint(domain: Domain) -> str:
    return json.dumps(domain.model_dump(mode="json", exclude={"folder"}), ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- the trained gate


class TrainedGate:
    """A domain's trained classifier, its threshold, and the shared follow-up detector."""

    def __init__(self, domain_id: str, model, threshold: float, cv_report: dict, followup_model,
                 lexicon: Sequence[str] = ()):
        self.domain_id = domain_id
        self.threshold = float(threshold)
        self.cv_report = cv_report
        # Only plain tables are kept (and pickled): loading a gate never imports scikit-learn.
        self.scorer = FastScorer(model)
        self.followup_scorer = FastScorer(followup_model)
        self.entity_pattern = _entity_pattern(lexicon)

    def score(self, text: str) -> float:
        return self.scorer.probability(normalize(text))

    def followup_score(self, text: str) -> float:
        return self.followup_scorer.probability(normalize(text))

    def foreign_entity_in(self, text: str) -> Optional[str]:
        pattern = getattr(self, "foreign_pattern", None)
        match = pattern.search(normalize(text)) if pattern else None
        return match.group() if match else None

    def entity_in(self, text: str) -> Optional[str]:
        match = self.entity_pattern.search(normalize(text)) if self.entity_pattern else None
        return match.group() if match else None


def _entity_pattern(lexicon: Sequence[str]) -> Optional[re.Pattern]:
    """One regex for the lexicon, longest first: CJK names as substrings (no word breaks in Chinese),
    ASCII terms of three or more characters (or a letter and a digit, like x0) as whole words, so
    'ra' never matches inside 'rate'."""
    parts = []
    for entity in sorted({normalize(e) for e in lexicon}, key=len, reverse=True):
        if re.search(r"[\u3400-\u9fff]", entity):
            if len(entity) >= 2:
                parts.append(re.escape(entity))
        elif len(entity) >= 3 or re.fullmatch(r"[a-z][0-9]", entity):  # x0, a7: register names
            parts.append(rf"(?<![a-z0-9_]){re.escape(entity)}(?![a-z0-9_])")
    return re.compile("|".join(parts)) if parts else None


def _choose_threshold(scores, labels) -> tuple[float, dict]:
    """Best balanced accuracy on out-of-fold scores; among near-ties, the highest (refuse when unsure)."""
    candidates = sorted(set(round(s, 3) for s in scores) | {0.5})
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    rows = []
    for t in candidates:
        accept = sum(s >= t for s in positives) / len(positives)
        refuse = sum(s < t for s in negatives) / len(negatives)
        rows.append((accept + refuse, t, accept, refuse))
    best = max(r[0] for r in rows)
    chosen = max((r for r in rows if r[0] >= best - 0.004), key=lambda r: r[1])
    return chosen[1], {"cv_in_scope_acceptance": round(chosen[2], 4),
                       "cv_out_of_scope_refusal": round(chosen[3], 4)}


def train(domain: Domain, others: Sequence[Domain]) -> TrainedGate:
    """Train (deterministically) the gate for domain: model, CV threshold, follow-up detector."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts, labels = training_set(domain, others)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    oof = cross_val_predict(_classifier(), texts, labels, cv=folds, method="predict_proba")[:, 1]
    threshold, report = _choose_threshold(list(oof), labels)
    if domain.gate.threshold is not None:
        threshold, report["override"] = domain.gate.threshold, True
    entities = [name for names in domain.lexicon.values() for name in names]
    entity_floor = ENTITY_FLOOR * threshold
    model = _classifier().fit(texts, labels)
    request_model, veto = _request_model([domain, *others])
    report = {key: float(value) if not isinstance(value, bool) else value for key, value in report.items()}
    report.update({"threshold": float(threshold), "entity_floor": float(entity_floor), "request_veto": veto,
                   "positives": sum(labels), "negatives": len(labels) - sum(labels)})
    gate = TrainedGate(domain.id, model, threshold, report, _followup_detector(texts, labels), entities)
    gate.entity_floor = float(entity_floor)
    gate.request_scorer, gate.request_veto = FastScorer(request_model), veto
    own = {normalize(e) for e in entities}
    foreign = [e for e in _general_entities() + _general_entity_group("eras") + _general_entity_group("isas")
               + [n for o in others for names in o.lexicon.values() for n in names] if normalize(e) not in own]
    gate.foreign_pattern = _entity_pattern(foreign)
    return gate


def _request_model(domains: Sequence[Domain]):
    """The shared request-type model and its veto bar: the score below which a message is an
    everyday or creative request whatever it names. The bar is set on out-of-fold scores so that at
    most REQUEST_VETO_LOSS of domain questions fall under it."""
    texts, labels = request_training_set(domains)
    key = hashlib.sha256("\x1e".join(sorted(texts)).encode("utf-8")).hexdigest()
    if key not in _request_models:  # shared by every domain of the same set: train once per process
        _request_models[key] = _fit_request_model(texts, labels)
    return _request_models[key]


_request_models: dict = {}


def _fit_request_model(texts: list[str], labels: list[int]):
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    oof = cross_val_predict(_classifier(), texts, labels, cv=folds, method="predict_proba")[:, 1]
    positives = sorted(score for score, label in zip(oof, labels) if label == 1)
    veto = float(positives[int(REQUEST_VETO_LOSS * len(positives))])
    return _classifier().fit(texts, labels), round(veto, 4)


def _followup_detector(texts: list[str], labels: list[int]):
    """Generic, context-dependent questions (他的父親是誰？) against everything specific."""
    followups = [normalize(t) for t in _followup_texts()]
    model = _classifier(c=2.0)
    return model.fit(followups + texts, [1] * len(followups) + [0] * len(texts))


# ---------------------------------------------------------------- decisions


@lru_cache(maxsize=1)
def _greeting_patterns() -> list[re.Pattern]:
    return [re.compile(p, re.IGNORECASE) for p in _data("greetings")["patterns"]]


_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def is_greeting(text: str) -> bool:
    """A bare greeting or a question about the assistant itself, with nothing else in it."""
    plain = normalize(text)
    if len(plain) > 30:
        return False
    return any(p.fullmatch(plain) for p in _greeting_patterns())


def decide(gate: TrainedGate, message: str, history: Sequence[dict] = (), depth: int = 0) -> GateDecision:
    """The gate's decision for message, given the conversation so far."""
    text = str(message or "")
    if not _PUNCT.sub("", text):
        return GateDecision("refuse", 0.0, gate.threshold, "empty or punctuation only")
    if is_greeting(text):
        return GateDecision("greet", 1.0, gate.threshold, "greeting or question about the assistant")
    score = gate.score(text)
    if score < gate.threshold and len(normalize(text)) <= FOLLOWUP_MAX_CHARS:
        followup = gate.followup_score(text)
        if followup >= 0.5 and _context_in_scope(gate, history, depth):
            return GateDecision("allow", score, gate.threshold,
                                f"follow-up of an in-scope question (follow-up {followup:.2f})")
    request = gate.request_scorer.probability(normalize(text))
    if request < gate.request_veto:
        return GateDecision("refuse", score, gate.threshold,
                            f"an everyday or creative request, not a domain question (request {request:.2f})")
    entity = gate.entity_in(text)
    foreign = None if entity else gate.foreign_entity_in(text)
    if foreign and score < FOREIGN_BAR:
        # Names someone or something from outside the domain (劉邦, x86) and nothing from inside it.
        return GateDecision("refuse", score, gate.threshold, f"names {foreign}, which is outside the domain")
    if score >= gate.threshold:
        return GateDecision("allow", score, gate.threshold, f"in scope: score {score:.2f} ≥ {gate.threshold:.2f}")
    if entity and score >= gate.entity_floor:
        # A named domain entity is strong evidence; requests that only borrow it score far lower.
        return GateDecision("allow", score, gate.threshold, f"names a domain entity ({entity}); score {score:.2f}")
    return GateDecision("refuse", score, gate.threshold, f"out of scope: score {score:.2f} < {gate.threshold:.2f}")


def _context_in_scope(gate: TrainedGate, history: Sequence[dict], depth: int) -> bool:
    """Whether the last user question before this one was itself allowed (judged with its own context)."""
    if depth >= CONTEXT_DEPTH:
        return False
    turns = [item for item in (history or []) if isinstance(item, dict)]
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].get("role") == "user" and str(turns[index].get("content") or "").strip():
            earlier = decide(gate, str(turns[index]["content"]), turns[:index], depth + 1)
            return earlier.decision == "allow"
    return False


# ---------------------------------------------------------------- loading and caching


_gates: dict[str, TrainedGate] = {}
_lock = threading.Lock()


def gate_for(domain: Domain, others: Sequence[Domain]) -> TrainedGate:
    """The trained gate for domain: from memory, else from the disk cache, else trained now."""
    key = _training_fingerprint(domain, others)
    with _lock:
        if key in _gates:
            return _gates[key]
        path = cache_dir() / "gates" / f"{domain.id}-{key}.pkl"
        gate = disk_cache.load(path, TrainedGate)
        if gate is None:
            gate = train(domain, others)
            disk_cache.save(path, gate)
        _gates[key] = gate
        return gate
