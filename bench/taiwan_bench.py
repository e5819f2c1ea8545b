"""Taiwan normalizer benchmark: prints one JSON object.

Batch throughput (MB/s) against plain OpenCC s2twp on the same text in the same run, the cost per
streamed chunk, and the hold-back (characters received but not yet shown) while streaming.
Run: .venv/bin/python bench/taiwan_bench.py [--mb 2] [--repeat 5]
"""

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardedchat.taiwan import normalizer_for, plain_s2twp  # noqa: E402


def corpus(megabytes: float, category=None) -> str:
    """Text built from the evaluation inputs: one category (a model's answer is written in one
    script and one vocabulary) or, with category=None, every kind shuffled line by line (worst case)."""
    cases = [json.loads(line) for line in (ROOT / "eval" / "taiwan.jsonl").read_text("utf-8").splitlines()]
    lines = [c["input"] for c in cases if category is None or c["category"] == category]
    rng = random.Random(1)
    parts, size = [], 0
    while size < megabytes * 1_000_000:
        line = rng.choice(lines)
        parts.append(line)
        size += len(line.encode("utf-8")) + 1
    return "\n".join(parts)


def best_seconds(function, text: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(text)
        times.append(time.perf_counter() - started)
    return min(times)


def streaming(normalizer, text: str, chunk: int) -> dict:
    stream = normalizer.stream()
    held, started = [], time.perf_counter()
    pieces = 0
    for i in range(0, len(text), chunk):
        stream.push(text[i:i + chunk])
        held.append(stream.held)
        pieces += 1
    stream.flush()
    elapsed = time.perf_counter() - started
    held.sort()
    return {
        "chunk_chars": chunk,
        "per_chunk_us": round(elapsed / pieces * 1e6, 2),
        "holdback_mean": round(statistics.fmean(held), 2),
        "holdback_p99": held[int(0.99 * (len(held) - 1))],
        "holdback_max": held[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=2.0, help="size of the batch corpus in MB")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; the best time counts")
    args = parser.parse_args()
    ours, baseline = normalizer_for(), plain_s2twp()
    ours.convert("暖身")  # build converters outside the timing
    baseline("暖身")
    batch = {}
    for name in ("simplified", "traditional-mainland", "already-taiwan", None):
        text = corpus(args.mb, name)
        megabytes = len(text.encode("utf-8")) / 1_000_000
        ours_s = best_seconds(ours.convert, text, args.repeat)
        base_s = best_seconds(baseline, text, args.repeat)
        batch[name or "mixed-line-by-line"] = {
            "mb": round(megabytes, 3),
            "guardedchat_mb_s": round(megabytes / ours_s, 2),
            "plain_s2twp_mb_s": round(megabytes / base_s, 2),
            "ratio_to_s2twp": round(base_s / ours_s, 3),
        }
    stream_text = corpus(0.05)
    print(json.dumps({
        "batch": batch,
        # Model tokens are 1-4 characters; 1 is the worst case for per-chunk cost.
        "streaming": [streaming(ours, stream_text, chunk) for chunk in (1, 2, 4, 8)],
    }, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
