"""Server stack benchmark: streaming through our API with uvicorn's pure-Python HTTP parser and event
loop (h11, asyncio) against its C ones (httptools, uvloop, what `guardedchat serve` uses), both
against calling llama.cpp directly, with llama.cpp in the server's process.

One process drives the direct baseline (llama-cpp-python in this process) and two API servers, one
per stack, interleaved per question in rotating order; each side is warmed with the same question
first (a cached prompt), then measured. Rates are pooled per side: all tokens over all the time
they took.

    .venv/bin/python bench/server_stack_bench.py [--rounds 24]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_bench import (QUESTIONS, ROOT, direct_in_process_once, free_port, median, pooled,  # noqa: E402
                       stream_once, wait_for)

STACKS = {"h11+asyncio": ("h11", "asyncio"), "httptools+uvloop": ("httptools", "uvloop")}

SERVE = """import sys, uvicorn
from guardedchat.api import create_server
uvicorn.run(create_server(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            http=sys.argv[2], loop=sys.argv[3])
"""


def start_api(http: str, loop: str) -> tuple[subprocess.Popen, OpenAI]:
    port = free_port()
    env = {**os.environ, "GUARDEDCHAT_ANSWER_MODE": "generate", "GUARDEDCHAT_AUDIT_LOG": "off"}
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(port), http, loop], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    wait_for(url + "/models", process)
    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    stream_once(client, "鄭和下西洋幾次？")  # load the model, rails and index before measuring
    return process, client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24, help="questions asked of every side")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads, every side")
    args = parser.parse_args()
    os.environ["GUARDEDCHAT_N_THREADS"] = str(args.threads)
    from llama_cpp import Llama

    from guardedchat.models import ensure_default_model

    processes = []
    try:
        llm = Llama(model_path=str(ensure_default_model()), n_ctx=2048, n_threads=args.threads,
                    n_threads_batch=args.threads, verbose=False)
        sides = {"direct": lambda question: direct_in_process_once(llm, question)}
        for name, (http, loop) in STACKS.items():
            process, client = start_api(http, loop)
            processes.append(process)
            sides[name] = (lambda client: lambda question: stream_once(client, question))(client)
        rows = measure(sides, args.rounds)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
    result: dict = {"benchmark": "server_stack", "model": "gemma3-270m (default)", "cpu_count": os.cpu_count(),
                    "llama_threads": args.threads, "rounds": args.rounds}
    direct = rows["direct"]
    for name, side in rows.items():
        result[name] = {"pooled_tokens_per_s": pooled(side), "pooled_decode_tokens_per_s": pooled(side, decode=True),
                        "first_text_s_p50": median(side, "first_text_s")}
        if name != "direct":
            result[name]["over_direct_tokens_per_s"] = round(pooled(side) / pooled(direct), 3)
            result[name]["over_direct_decode_tokens_per_s"] = round(pooled(side, decode=True)
                                                                    / pooled(direct, decode=True), 3)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def measure(sides: dict, rounds: int) -> dict:
    """Each side asked every round's question twice (warm, then measured), in rotating order so no
    side always runs right after another."""
    names = list(sides)
    questions = list(QUESTIONS)
    rows: dict = {name: [] for name in names}
    for i in range(rounds):
        question = questions[i % len(questions)]
        for name in names[i % len(names):] + names[:i % len(names)]:
            sides[name](question)
            rows[name].append(sides[name](question))
    return rows


if __name__ == "__main__":
    sys.exit(main())
