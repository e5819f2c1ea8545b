"""Quote-mode answer latency after the gate: answer extraction against the quote mode it replaced.

Both sides answer the same questions (every case in eval/answers_*.jsonl, dev and test, interleaved
per question and repeated) from the shipped documents, in one process, warmed first:

- extraction: `Retriever(domain)(...)` (candidate documents, every sentence scored, abstention)
  plus the quoted or abstaining text (`quote_answer` / `abstain_answer`);
- baseline: `LegacyQuoteBaseline` (best passage of each of the 3 best documents naming the
  question's lexicon names, the first quoted whole): the quote mode before extraction.

Neither includes the gate (it runs before both, identically) or the Taiwan normalizer.

    .venv/bin/python bench/answers_bench.py [--rounds 3]

Prints one JSON object; the issue's target is extraction p50 <= 50 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardedchat.domains import load_domain  # noqa: E402
from guardedchat.evaluate import LegacyQuoteBaseline, read_cases  # noqa: E402
from guardedchat.grounding import Retriever, abstain_answer, quote_answer  # noqa: E402


def extraction_answer(domain, retriever):
    def answer(question, history):
        grounding = retriever(domain, history, question)
        if grounding is None or grounding.abstained:
            return abstain_answer(domain, grounding) if grounding else ""
        return quote_answer(grounding)
    return answer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cases = [case for path in sorted((ROOT / "eval").glob("answers_*.jsonl"))
             for case in read_cases(path, ("id", "domain", "question"))]
    sides = {}
    for domain_id in sorted({case["domain"] for case in cases}):
        domain = load_domain(ROOT / "domains" / domain_id)
        sides[domain_id] = {"extraction": extraction_answer(domain, Retriever(domain)),
                            "baseline": LegacyQuoteBaseline(domain)}
    for case in cases:  # warm: indexes, sentence tables, word weights
        for answer in sides[case["domain"]].values():
            answer(case["question"], case.get("history") or [])
    times = {"extraction": [], "baseline": []}
    for round_number in range(args.rounds):
        for number, case in enumerate(cases):
            order = ["extraction", "baseline"] if (number + round_number) % 2 == 0 else ["baseline", "extraction"]
            for side in order:
                started = time.perf_counter()
                sides[case["domain"]][side](case["question"], case.get("history") or [])
                times[side].append((time.perf_counter() - started) * 1000)
    report = {side: {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "turns": len(values)}
              for side, values in times.items()}
    report["ratio_p50"] = round(report["extraction"]["p50_ms"] / report["baseline"]["p50_ms"], 2)
    report["target_p50_ms"] = 50
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
