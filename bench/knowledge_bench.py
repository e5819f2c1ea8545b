"""Retrieval benchmark: index build time and search latency at N generated documents (default 10 000).

Documents are generated from the shipped mingqing and riscv documents (sentences shuffled across
documents, each document given a unique made-up name), so the vocabulary and passage lengths are
realistic. Queries are the questions in eval/knowledge_*.jsonl. Baseline in the same run: the same
TF-IDF rows scored passage-major (`rows @ query.T`, what a straightforward implementation does).

    .venv/bin/python bench/knowledge_bench.py [--docs 10000] [--queries 200]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardedchat import disk_cache, knowledge  # noqa: E402
from guardedchat.domains import load_domain  # noqa: E402
from guardedchat.grounding import Retriever  # noqa: E402
from guardedchat.knowledge import build_index, load_documents, split_sentences  # noqa: E402

SURNAMES = "趙錢孫李周吳鄭王馮陳褚衛蔣沈韓楊朱秦尤許何呂施張孔曹嚴華金魏陶姜"
GIVEN = "文武德明國英華志忠孝仁義禮智信廷士元正"


def generate(folder: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    sentences = []
    for domain in ("mingqing", "riscv"):
        documents, _ = load_documents(ROOT / "domains" / domain / "knowledge")
        for document in documents:
            sentences += [s for s in split_sentences(document.body.replace("\n", "")) if len(s) > 8]
    for i in range(count):
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)
        paragraphs = ["".join(rng.sample(sentences, rng.randint(2, 4))) for _ in range(rng.randint(1, 3))]
        level = rng.choice(("public", "public", "internal", "restricted"))
        body = f"{name}（編號 {i}）。" + "\n\n".join(paragraphs)
        (folder / f"doc-{i:05d}.md").write_text(
            f"---\ntitle: {name} 第 {i} 號\nsources: [generated]\naccess: {level}\n---\n{body}\n", encoding="utf-8")


def queries(limit: int) -> list[str]:
    found = []
    for path in sorted((ROOT / "eval").glob("knowledge_*.jsonl")):
        found += [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(1).shuffle(found)
    return found[:limit]


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "knowledge"
        folder.mkdir()
        started = time.perf_counter()
        generate(folder, args.docs)
        generated_s = time.perf_counter() - started
        started = time.perf_counter()
        index = build_index(folder)
        build_s = time.perf_counter() - started
        path = Path(tmp) / "index.pkl"
        disk_cache.save(path, index)
        started = time.perf_counter()
        loaded = disk_cache.load(path, knowledge.KnowledgeIndex)
        load_s = time.perf_counter() - started
        if loaded is None:  # a load that failed would time nothing
            raise SystemExit(f"{path}: the cached index did not load back")
        asked = queries(args.queries)
        for question in asked[:5]:
            index.search(question)  # warm-up
        ours = timed(lambda q: index.search(q, "restricted", 5), asked)
        public = timed(lambda q: index.search(q, "public", 5), asked)
        rows = index.by_term.T.tocsr()  # passage-major, as TfidfVectorizer returns it

        def baseline(question):
            scores = (rows @ index.vectorizer.transform([question]).T).toarray().ravel()
            return scores.argsort()[::-1][:5]

        base = timed(baseline, asked)
        domain = load_domain(ROOT / "domains" / "mingqing")
        domain = domain.model_copy(update={"knowledge": str(folder)})
        retriever = Retriever(domain)
        knowledge._indexes[str(folder.resolve())] = (time.monotonic() + 1e9, index)
        grounded = timed(lambda q: retriever(domain, [], q, "restricted"), asked)
    result = {
        "benchmark": "knowledge", "documents": args.docs, "passages": len(index.texts),
        "terms": index.by_term.shape[0], "queries": len(asked),
        "generate_s": round(generated_s, 2), "build_index_s": round(build_s, 2), "load_cached_index_s": round(load_s, 3),
        "search_restricted": summary(ours), "search_public": summary(public),
        "retriever_with_entity_filter": summary(grounded),
        "baseline_passage_major": summary(base),
        "speedup_vs_baseline_p50": round(statistics.median(base) / statistics.median(ours), 2),
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
