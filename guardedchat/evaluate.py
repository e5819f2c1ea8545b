"""Evaluation runners: return {"summary": {...}, "cases": [...]} for a JSONL case file."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from .errors import InputError


def read_cases(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Read a JSONL case file; a bad line is reported by number, not skipped silently."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise InputError(f"找不到評測檔 {path}。修正：確認路徑，格式見 ../shared/eval-samples/。") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} 不是 UTF-8 文字檔。修正：以 UTF-8 儲存，每行一個 JSON 物件。") from exc
    cases = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} 第 {number} 行不是合法的 JSON（{exc.msg}）。修正：每行一個 JSON 物件。") from exc
        missing = [key for key in required if not isinstance(case, dict) or key not in case]
        if missing:
            raise InputError(f"{path} 第 {number} 行缺少欄位 {', '.join(missing)}。修正：每個案例都要有 {', '.join(required)}。")
        cases.append(case)
    return cases


def evaluate_taiwan(path: Path, normalizer, baseline=None) -> dict:
    """Exact match of the normalizer (and optionally plain OpenCC s2twp) against the expected outputs."""
    results = []
    for case in read_cases(path, ("id", "input", "expect")):
        expect = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
        got = normalizer.convert(case["input"])
        row = {"id": case["id"], "category": case.get("category"), "input": case["input"],
               "expect": expect, "got": got, "ok": got in expect}
        if baseline is not None:
            row["baseline_got"] = baseline(case["input"])
            row["baseline_ok"] = row["baseline_got"] in expect
        results.append(row)
    return {"summary": _taiwan_summary(results, baseline is not None), "cases": results}


def _taiwan_summary(results: list[dict], with_baseline: bool) -> dict:
    def rate(rows, key="ok"):
        return round(sum(r[key] for r in rows) / len(rows), 4) if rows else None

    by_category = defaultdict(list)
    for row in results:
        by_category[row["category"] or "uncategorized"].append(row)
    unchanged = [r for r in results if r["expect"] == [r["input"]]]
    summary = {
        "cases": len(results),
        "exact_match": rate(results),
        "already_taiwan_unchanged": rate(unchanged),
        "by_category": {name: {"cases": len(rows), "exact_match": rate(rows)} for name, rows in sorted(by_category.items())},
    }
    if with_baseline:
        summary["baseline_s2twp"] = {
            "exact_match": rate(results, "baseline_ok"),
            "already_taiwan_unchanged": rate(unchanged, "baseline_ok"),
            "by_category": {name: rate(rows, "baseline_ok") for name, rows in sorted(by_category.items())},
        }
    return summary


def evaluate_gate(path: Path, decide_for) -> dict:
    """Run the gate on each case; decide_for(domain_id) returns a function (message, history) → decision."""
    results = []
    for case in read_cases(path, ("id", "domain", "message", "expect")):
        decide = decide_for(case["domain"])
        history = case.get("history") or []
        started = time.perf_counter()
        decision = decide(case["message"], history if isinstance(history, list) else [])
        elapsed = (time.perf_counter() - started) * 1000
        got = "allow" if decision.allowed else "refuse"
        results.append({"id": case["id"], "domain": case["domain"], "kind": case.get("kind"),
                        "message": case["message"], "expect": case["expect"], "got": got,
                        "ok": got == case["expect"], "score": round(decision.score, 4),
                        "decision": decision.decision, "reason": decision.reason, "ms": round(elapsed, 3)})
    return {"summary": _gate_summary(results), "cases": results}


def _gate_summary(results: list[dict]) -> dict:
    by_domain = defaultdict(list)
    for row in results:
        by_domain[row["domain"]].append(row)
    latencies = sorted(row["ms"] for row in results)
    summary = {"cases": len(results), "accuracy": _rate(results, lambda r: r["ok"]), "domains": {}}
    if latencies:
        summary["latency_ms"] = {"p50": latencies[len(latencies) // 2],
                                 "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}
    for domain, rows in sorted(by_domain.items()):
        inside = [r for r in rows if r["expect"] == "allow"]
        outside = [r for r in rows if r["expect"] == "refuse"]
        matrix = Counter((r["expect"], r["got"]) for r in rows)
        summary["domains"][domain] = {
            "cases": len(rows),
            "in_scope_acceptance": _rate(inside, lambda r: r["got"] == "allow"),
            "out_of_scope_refusal": _rate(outside, lambda r: r["got"] == "refuse"),
            "confusion": {f"expect_{e}": {f"got_{g}": matrix[(e, g)] for g in ("allow", "refuse")}
                          for e in ("allow", "refuse")},
            "by_kind": {kind: _rate(krows, lambda r: r["ok"]) for kind, krows in _group(rows, "kind").items()},
        }
    return summary


def _rate(rows, predicate):
    return round(sum(1 for r in rows if predicate(r)) / len(rows), 4) if rows else None


def _group(rows, key):
    groups = defaultdict(list)
    for row in rows:
        groups[row.get(key) or "uncategorized"].append(row)
    return dict(sorted(groups.items()))


def evaluate_retrieval(path: Path, index_for_domain, k: int = 5) -> dict:
    """Recall@1/@k and MRR: does the document that answers each question come back in the top k?"""
    results = []
    for case in read_cases(path, ("id", "domain", "question", "doc")):
        index = index_for_domain(case["domain"])
        started = time.perf_counter()
        hits = index.search(case["question"], "restricted", k)
        docs = [hit.doc for hit in hits]
        rank = docs.index(case["doc"]) + 1 if case["doc"] in docs else None
        results.append({"id": case["id"], "domain": case["domain"], "question": case["question"],
                        "expect": case["doc"], "got": docs, "rank": rank, "ok": rank is not None,
                        "ms": round((time.perf_counter() - started) * 1000, 3)})
    return {"summary": _retrieval_summary(results, k), "cases": results}


class WholeDocumentBaseline:
    """The baseline retrieval is measured against: one TF-IDF row per whole document, plain character
    1–3 grams (no passages, no title bonus, no script normalization), what a first attempt would do."""

    def __init__(self, folder: Path):
        from sklearn.feature_extraction.text import TfidfVectorizer

        from .knowledge import load_documents

        documents, _ = load_documents(folder)
        self.names = [document.name for document in documents]
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        self.rows = self.vectorizer.fit_transform(f"{d.title}\n{d.body}" for d in documents)

    def search(self, question: str, level: str, k: int) -> list:
        from .knowledge import Hit

        scores = (self.rows @ self.vectorizer.transform([question]).T).toarray().ravel()
        return [Hit(self.names[i], "", float(scores[i]), "", "") for i in scores.argsort()[::-1][:k]]


def _retrieval_summary(results: list[dict], k: int) -> dict:
    by_domain = defaultdict(list)
    for row in results:
        by_domain[row["domain"]].append(row)

    def stats(rows):
        n = len(rows) or 1
        return {"cases": len(rows), "recall_at_1": round(sum(r["rank"] == 1 for r in rows) / n, 4),
                f"recall_at_{k}": round(sum(r["ok"] for r in rows) / n, 4),
                "mrr": round(sum(1 / r["rank"] for r in rows if r["rank"]) / n, 4),
                "p50_ms": _percentile([r["ms"] for r in rows], 50)}

    return {**stats(results), "domains": {name: stats(rows) for name, rows in by_domain.items()}}


def evaluate_grounded(path: Path, pipeline_for, limit=None) -> dict:
    """Full guarded turns: is the answering document among the cited sources?"""
    results = []
    for case in read_cases(path, ("id", "domain", "question", "doc"))[:limit]:
        record = None
        for event in pipeline_for(case["domain"]).run(case["question"], access="restricted"):
            record = getattr(event, "record", record)
        cited = [source["doc"] for source in record.sources if source.get("cited")]
        results.append({"id": case["id"], "domain": case["domain"], "question": case["question"],
                        "expect": case["doc"], "got": cited, "answer": record.answer, "reason": record.reason,
                        "refused": record.refused, "model_called": record.model_called,
                        "ok": case["doc"] in cited, "cited_any": bool(cited)})
    n = len(results) or 1
    summary = {"cases": len(results), "cites_right_doc": round(sum(r["ok"] for r in results) / n, 4),
               "cites_any": round(sum(r["cited_any"] for r in results) / n, 4),
               "refused": round(sum(r["refused"] for r in results) / n, 4),
               "reasons": dict(Counter(r["reason"] or "generated" for r in results))}
    return {"summary": summary, "cases": results}


def _percentile(values: list[float], q: float):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


_SENTENCE_BREAK = re.compile(r"[。！？!?\n]")


def first_sentence(answer: str) -> str:
    """The first sentence a reader sees: up to the first 。！？ or line break."""
    return next((part.strip() for part in _SENTENCE_BREAK.split(answer) if part.strip()), "")


def holds_any(text: str, needles) -> bool:
    """Whether the text holds one of the strings, compared in the normalized form (script, width, case)."""
    from .knowledge import normalize_text

    normalized = normalize_text(text)
    return any(needle in text or normalize_text(needle) in normalized for needle in needles if needle)


def evaluate_answers(path: Path, turn_for, baseline_for=None) -> dict:
    """Whole turns scored on what the user sees: does an answerable question's answer hold the fact
    (anywhere, and in its first sentence), and does an unanswerable one say the documents don't answer?
    turn_for(domain_id) returns (question, history) → TurnRecord; baseline_for likewise, for the
    answer stage measured against ours (cases our gate refuses count as refused for both)."""
    results = []
    for case in read_cases(path, ("id", "domain", "question", "answerable")):
        history = case.get("history") if isinstance(case.get("history"), list) else []
        started = time.perf_counter()
        record = turn_for(case["domain"])(case["question"], history)
        row = _answer_row(case, record)
        row["ms"] = round((time.perf_counter() - started) * 1000, 2)
        row["after_gate_ms"] = round(record.timings.get("total_ms", 0) - record.timings.get("checks_ms", 0), 2)
        if baseline_for is not None:
            base = record if record.refused else baseline_for(case["domain"])(case["question"], history)
            row["baseline"] = {key: _answer_row(case, base)[key] for key in ("got", "correct", "first_sentence_ok")}
            row["baseline"]["answer"] = base.answer
        results.append(row)
    return {"summary": _answers_summary(results, baseline_for is not None), "cases": results}


def _answer_row(case: dict, record) -> dict:
    from .question import question_type

    expect = "answer" if case["answerable"] else "abstain"
    got = "refuse" if record.refused else "abstain" if getattr(record, "abstained", False) else "answer"
    needles = case.get("any_of") or []
    holds = got == "answer" and holds_any(record.answer, needles)
    first_ok = got == "answer" and holds_any(first_sentence(record.answer), needles)
    return {"id": case["id"], "domain": case["domain"], "qtype": case.get("qtype") or question_type(case["question"]),
            "question": case["question"], "expect": expect, "got": got,
            "correct": holds if expect == "answer" else got == "abstain",
            "first_sentence_ok": first_ok if expect == "answer" else None,
            "answer": record.answer, "reason": record.reason}


def _answers_summary(results: list[dict], with_baseline: bool) -> dict:
    def stats(rows, pick=lambda r: r):
        answerable = [pick(r) for r in rows if r["expect"] == "answer"]
        unanswerable = [pick(r) for r in rows if r["expect"] == "abstain"]
        return {"cases": len(rows), "answerable": len(answerable), "unanswerable": len(unanswerable),
                "fact_in_answer": _rate(answerable, lambda r: r["correct"]),
                "fact_in_first_sentence": _rate(answerable, lambda r: r["first_sentence_ok"]),
                "abstained_when_unanswerable": _rate(unanswerable, lambda r: r["correct"]),
                "refused": _rate([pick(r) for r in rows], lambda r: r["got"] == "refuse"),
                "correct": _rate([pick(r) for r in rows], lambda r: r["correct"])}

    summary = {**stats(results), "by_qtype": {name: stats(rows) for name, rows in _group(results, "qtype").items()},
               "domains": {name: stats(rows) for name, rows in _group(results, "domain").items()},
               # The answer stage alone: the cases the gate let through (its refusals are the gate's errors).
               "past_the_gate": stats([r for r in results if r["got"] != "refuse"])}
    after_gate = [r["after_gate_ms"] for r in results if r["got"] != "refuse"]
    summary["after_gate_ms"] = {"p50": _percentile(after_gate, 50), "p99": _percentile(after_gate, 99)}
    if with_baseline:
        pick = lambda r: {**r, **r["baseline"]}  # noqa: E731 - the baseline's fields over the case's
        summary["baseline"] = {**stats(results, pick),
                               "by_qtype": {name: stats(rows, pick) for name, rows in _group(results, "qtype").items()},
                               "past_the_gate": stats([r for r in results if r["got"] != "refuse"], pick)}
    return summary


class LegacyQuoteBaseline:
    """The answer stage answers are measured against: the quote mode as it was before answer
    extraction (the best passage of each of the 3 best documents that name the question's lexicon
    names; the first passage whole, the runner-up's best-matching sentence; no abstention unless
    nothing matched at all)."""

    def __init__(self, domain):
        from .knowledge import index_for, normalize_text

        self.domain = domain
        self.index = index_for(domain.knowledge_dir)
        self.entities = sorted({normalize_text(n) for names in domain.lexicon.values() for n in names if n},
                               key=len, reverse=True)

    def __call__(self, question: str, history):
        from types import SimpleNamespace

        from .answering import _match_forms
        from .grounding import not_found_answer
        from .knowledge import MIN_SCORE, normalize_text

        text = normalize_text(question)
        named = sorted({form for name in self.entities if name in text for form in _match_forms(name)
                        if self.index.document_frequency(form) <= 0.3})
        hits = self.index.search(question, "public", 3, history, min_score=MIN_SCORE, mentioning=named)
        if not hits:
            return SimpleNamespace(refused=False, abstained=True, answer=not_found_answer(self.domain), reason="no_sources")
        quotes = [f"「{hits[0].text}」[1]"]
        if len(hits) > 1 and hits[1].score >= 0.7 * hits[0].score:
            quotes.append(f"「{_legacy_best_sentence(question, hits[1].text)}」[2]")
        answer = "以下是資料庫中最相關段落的原文（未經模型改寫）：\n\n" + "\n\n".join(quotes)
        return SimpleNamespace(refused=False, abstained=False, answer=answer, reason="quoted")


def _legacy_best_sentence(question: str, text: str) -> str:
    from .knowledge import normalize_text, split_sentences

    def bigrams(value):
        value = normalize_text(value)
        return {value[i:i + 2] for i in range(len(value) - 1)}

    sentences = [s.strip() for s in split_sentences(text) if s.strip()]
    asked = bigrams(question)
    return max(sentences, key=lambda s: (len(asked & bigrams(s)), -sentences.index(s))) if sentences else text
