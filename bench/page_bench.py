"""Page load benchmark: N gradio_client users for T seconds against a launched page on the default
model; prints one JSON object (turns, errors, crossed answers, queue positions seen, latency, and the
server process's memory, sampled every 10 s; the page runs in its own process).

Run: .venv/bin/python bench/page_bench.py [--users 8] [--seconds 60] [--queue-poll 0.001,0.01]

--queue-poll sets the Gradio queue's polling intervals (work, progress) in seconds; 0.001,0.01 is
Gradio's own default, the baseline for ours (guardedchat.ui.QUEUE_POLL_SECONDS, PROGRESS_POLL_SECONDS).
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GUARDEDCHAT_AUDIT_LOG", "off")

from gradio_client import Client  # noqa: E402

from guardedchat.feedback import FeedbackStore  # noqa: E402
from guardedchat.settings import PageSettings  # noqa: E402
from guardedchat.ui import ChatService, create_app, launch  # noqa: E402

from api_bench import idle_cpu_share  # noqa: E402  (bench/ is on sys.path when run as a script)

QUESTIONS = ["鄭成功如何取得台灣？", "海瑞為什麼被罷官？", "張居正推行了哪些改革？", "康熙怎麼除掉鰲拜？",
             "推薦台北的牛肉麵", "今天天氣如何？", "王陽明的心學主張什麼？", "和珅是怎麼發跡的？"]


def rss_mb(pid="self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def user(url, seconds, results, seed):
    rng = random.Random(seed)
    client = Client(url, verbose=False)
    end = time.time() + seconds
    while time.time() < end:
        question = f"{rng.choice(QUESTIONS)}"
        started = time.perf_counter()
        job = client.submit(question, [], "mingqing", api_name="/respond")
        positions = []
        while not job.done():
            status = job.status()
            if status.rank is not None:
                positions.append(status.rank)
            time.sleep(0.05)
        try:
            history, _ = job.result()
            asked = "".join(part["text"] for part in history[0]["content"])
            answer = "".join(part["text"] for part in history[-1]["content"])
            results.append({"ok": True, "crossed": asked != question or not answer.strip(),
                            "seconds": time.perf_counter() - started, "max_queue_rank": max(positions, default=0)})
        except Exception as exc:  # an error is a result here, counted and reported
            results.append({"ok": False, "error": repr(exc)[:200], "seconds": time.perf_counter() - started})


def serve(port: int) -> None:
    poll = os.environ.get("PAGE_BENCH_QUEUE_POLL")
    if poll:
        import guardedchat.ui as ui

        ui.QUEUE_POLL_SECONDS, ui.PROGRESS_POLL_SECONDS = (float(x) for x in poll.split(","))
    service = ChatService(feedback=FeedbackStore(Path("/tmp") / f"page-bench-{os.getpid()}.sqlite3"),
                          page=PageSettings(profile="showcase", show_panel=False, queue_size=64))
    launch(create_app(service), service=service, server_name="127.0.0.1", server_port=port, quiet=True,
           inbrowser=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--queue-poll", metavar="WORK,PROGRESS", help="Gradio queue polling (default: ours)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The model writes every answer (quoted answers would never load it): the load this measures.
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.DEVNULL,
                              env={**os.environ, "GUARDEDCHAT_ANSWER_MODE": "generate",
                                   "PAGE_BENCH_QUEUE_POLL": args.queue_poll or ""},
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        client = _wait_for(url)
        client.predict("海瑞是誰？", [], "mingqing", api_name="/respond")  # warm up
        idle_cpu = idle_cpu_share(server.pid)
        refusals = []
        for _ in range(20):  # one user, nothing else queued: the page's own latency
            started = time.perf_counter()
            client.predict("推薦台北的牛肉麵", [], "mingqing", api_name="/respond")
            refusals.append((time.perf_counter() - started) * 1000)
        rss_start = rss_mb(server.pid)
        results: list = []
        threads = [threading.Thread(target=user, args=(url, args.seconds, results, i)) for i in range(args.users)]
        for thread in threads:
            thread.start()
        samples = []
        while any(t.is_alive() for t in threads):
            time.sleep(10)
            samples.append(rss_mb(server.pid))
        for thread in threads:
            thread.join()
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait()
    ok = [r for r in results if r["ok"]]
    latencies = sorted(r["seconds"] for r in ok)
    print(json.dumps({
        "queue_poll": args.queue_poll or "guardedchat default", "server_idle_cpu_share": idle_cpu,
        "refusal_ms_p50_one_user": round(sorted(refusals)[len(refusals) // 2], 1),
        "users": args.users, "seconds": args.seconds, "turns": len(results),
        "errors": len(results) - len(ok), "crossed_or_empty": sum(r["crossed"] for r in ok),
        "max_queue_rank_seen": max((r["max_queue_rank"] for r in ok), default=0),
        "latency_s_p50": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "latency_s_max": round(latencies[-1], 2) if latencies else None,
        "server_rss_mb_start": rss_start, "server_rss_mb_every_10s": samples, "server_rss_mb_end": rss_end,
        "error_samples": [r["error"] for r in results if not r["ok"]][:3],
    }, ensure_ascii=False, indent=2))


def _wait_for(url: str, timeout: float = 120.0) -> Client:
    deadline = time.time() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            if time.time() > deadline:
                raise
            time.sleep(1)


if __name__ == "__main__":
    main()
