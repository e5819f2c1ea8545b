"""Evaluation runners: return {"summary": {...}, "cases": [...]} for a JSONL case file."""

from __future__ import annotations

import json
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
