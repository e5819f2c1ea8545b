"""Reranker benchmark: does the default model, as a reranker, pick passages holding the fact more often
than our extraction does, within the quote-mode latency target (p50 <= 50 ms after the gate, 2 cores)?

For each answerable case in eval/answers_*_dev.jsonl (never the test halves) whose grounding has at
least 2 candidate passages, the first 3 of `extraction.ranked_rows` are the candidates.
- ours: the passage of the extraction's first answer sentence (ranked_rows[0] when it abstained).
- rerank_loglik: the candidate maximising the mean log-probability of the question's tokens after
  "資料：{passage}\\n問題：" under the default model (Gemma 3 270M base, 2 threads).
- rerank_pmi: the same score minus the question's mean log-probability after "問題：" alone.
A pick counts when its passage holds one of the case's `any_of` strings. Times: our whole retrieve
stage per question, and the reranking per question (3 candidates plus the no-passage pass).

    .venv/bin/python bench/rerank_bench.py [--limit N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardedchat.domains import load_domain  # noqa: E402
from guardedchat.evaluate import holds_any  # noqa: E402
from guardedchat.grounding import Retriever  # noqa: E402
from guardedchat.models import resolve_model  # noqa: E402

N_CTX = 1024
LATENCY_TARGET_MS = 50


def load_cases(limit: int | None) -> list[dict]:
    cases = []
    for path in sorted((ROOT / "eval").glob("answers_*_dev.jsonl")):
        cases += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    cases = [case for case in cases if case["answerable"]]
    return cases[:limit] if limit else cases


def question_logprob(llm, context: str, question: str) -> float:
    """Mean log-probability of the question's tokens after the context (passage cut to fit n_ctx)."""
    asked = llm.tokenize(question.encode("utf-8"), add_bos=False)[: N_CTX // 4]
    tail = llm.tokenize(("\n問題：" if context else "問題：").encode("utf-8"), add_bos=False)
    head = llm.tokenize(context.encode("utf-8"), add_bos=True)[: N_CTX - len(tail) - len(asked) - 1]
    prompt = head + tail
    llm.reset()
    # Logits only where they score a question token: the 262k-word output layer on every passage
    # token would cost seconds per candidate. (Llama keeps this switch private; a benchmark may flip it.)
    llm._logits_all = False
    llm.eval(prompt[:-1])
    llm._logits_all = True
    llm.eval(prompt[-1:] + asked)
    logits = llm.scores[len(prompt) - 1: len(prompt) + len(asked) - 1].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(logprobs[np.arange(len(asked)), asked].mean())


def rerank(llm, candidates: list[str], question: str) -> tuple[int, int]:
    """Indices of the best candidate by log-likelihood and by PMI (likelihood minus the no-passage one)."""
    scores = [question_logprob(llm, f"資料：{text}", question) for text in candidates]
    alone = question_logprob(llm, "", question)
    return int(np.argmax(scores)), int(np.argmax([score - alone for score in scores]))


def our_row(grounding) -> int:
    extraction = grounding.extraction
    if extraction.answers:
        return grounding.answers.sentences[extraction.answers[0][0]].row
    return extraction.ranked_rows[0]


def run_case(llm, retriever, domain, case: dict) -> dict | None:
    started = time.perf_counter()
    grounding = retriever(domain, case["history"], case["question"], "public")
    ours_ms = (time.perf_counter() - started) * 1000
    if grounding is None or len(grounding.extraction.ranked_rows) < 2:
        return None
    texts = grounding.answers.index.texts
    candidates = [texts[row] for row in grounding.extraction.ranked_rows[:3]]
    started = time.perf_counter()
    by_loglik, by_pmi = rerank(llm, candidates, case["question"])
    rerank_ms = (time.perf_counter() - started) * 1000
    facts = case["any_of"]
    return {"ours": holds_any(texts[our_row(grounding)], facts), "loglik": holds_any(candidates[by_loglik], facts),
            "pmi": holds_any(candidates[by_pmi], facts), "any": any(holds_any(text, facts) for text in candidates),
            "ours_ms": ours_ms, "rerank_ms": rerank_ms}


def percentiles(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2)}


def verdict(rates: dict, ours_p50: float, rerank_p50: float) -> str:
    best = max(rates["rerank_loglik_fact_rate"], rates["rerank_pmi_fact_rate"])
    total = ours_p50 + rerank_p50
    better = best > rates["ours_fact_rate"]
    fits = total <= LATENCY_TARGET_MS
    if better and fits:
        return f"keep: reranking improves the fact rate and fits the target ({total:.1f} ms p50)"
    reasons = [] if better else ["no better than ours"]
    reasons += [] if fits else [f"ours + rerank p50 {total:.1f} ms > {LATENCY_TARGET_MS} ms"]
    return "drop: " + "; ".join(reasons)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="at most N answerable dev cases (default all)")
    args = parser.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=str(resolve_model(None).path), n_ctx=N_CTX, logits_all=True, verbose=False, n_threads=2)
    domains, retrievers, rows = {}, {}, []
    for case in load_cases(args.limit):
        name = case["domain"]
        if name not in domains:
            domains[name] = load_domain(ROOT / "domains" / name)
            retrievers[name] = Retriever(domains[name])
            retrievers[name](domains[name], [], "warm-up", "public")  # builds the indexes outside the timings
        row = run_case(llm, retrievers[name], domains[name], case)
        rows += [row] if row else []
    if not rows:
        print(json.dumps({"cases": 0}))
        return 1
    rate = lambda key: round(sum(row[key] for row in rows) / len(rows), 3)  # noqa: E731
    rates = {"ours_fact_rate": rate("ours"), "rerank_loglik_fact_rate": rate("loglik"),
             "rerank_pmi_fact_rate": rate("pmi")}
    ours_ms, rerank_ms = percentiles([r["ours_ms"] for r in rows]), percentiles([r["rerank_ms"] for r in rows])
    print(json.dumps({"cases": len(rows), **rates, "candidates_fact_rate": rate("any"), "ours_ms": ours_ms,
                      "rerank_ms": rerank_ms, "latency_target_ms": LATENCY_TARGET_MS,
                      "verdict": verdict(rates, ours_ms["p50"], rerank_ms["p50"])}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
