"""The `guardedchat` command line: returns an exit code; the only place errors become messages."""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .domains import get_domain, load_all
from .errors import GuardedChatError, InputError
from .grounding import sources_line
from .knowledge import ACCESS_LEVELS, access_rank
from .models import download_command, ensure_default_model, load_registry, model_path, models_dir
from .pipeline import FinalEvent, RefusalEvent, TextEvent
from .progress import ProgressBar, Spinner
from .runtime import BackendSettings, build_pipeline, get_backend

EXIT_ERROR = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except GuardedChatError as exc:
        print(f"錯誤：{exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\n已中斷。", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardedchat",
        description="GuardedChat: a domain-restricted chatbot that answers in Taiwan Mandarin.")
    parser.add_argument("--version", action="version", version=f"guardedchat {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    ask = commands.add_parser("ask", help="ask one question and print the guarded answer")
    _add_domain_and_model(ask)
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("--json", action="store_true", help="print one JSON record instead of streaming text")
    _add_access(ask)
    ask.set_defaults(handler=cmd_ask)

    chat = commands.add_parser("chat", help="an interactive chat with history (/help inside)")
    _add_domain_and_model(chat)
    _add_access(chat)
    chat.set_defaults(handler=cmd_chat)

    serve = commands.add_parser("serve", help="start the page and the OpenAI-compatible API on one port")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for a network)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.set_defaults(handler=cmd_serve)

    api_key = commands.add_parser("api-key", help="API keys (stored hashed in $GUARDEDCHAT_API_KEYS)")
    key_actions = api_key.add_subparsers(title="actions", metavar="ACTION")
    create = key_actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--access", choices=ACCESS_LEVELS, default="public", help="documents the key may see")
    create.add_argument("--rate-limit", type=int, metavar="N", help="requests per minute (default: unlimited)")
    create.add_argument("--file", metavar="PATH", help="key file (default: $GUARDEDCHAT_API_KEYS)")
    create.set_defaults(handler=cmd_api_key_create)

    index = commands.add_parser("index", help="rebuild a domain's knowledge index (reports skipped documents)")
    index.add_argument("--domain", required=True, metavar="ID", help="domain id")
    index.set_defaults(handler=cmd_index)

    search = commands.add_parser("search", help="print the passages retrieved for a question, best first")
    search.add_argument("--domain", required=True, metavar="ID", help="domain id")
    search.add_argument("question", help="the question (quote it)")
    search.add_argument("--json", action="store_true", help='print [{"doc", "title", "score", "text"}, ...]')
    search.add_argument("-k", type=int, default=5, metavar="N", help="how many documents (default 5)")
    _add_access(search)
    search.set_defaults(handler=cmd_search)

    domains = commands.add_parser("domains", help="list the domains that loaded and those that did not, and why")
    domains.add_argument("--json", action="store_true", help="print JSON")
    domains.set_defaults(handler=cmd_domains)

    models = commands.add_parser("models", help="list the model registry and what is on disk")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=cmd_models)

    normalize = commands.add_parser("normalize", help="rewrite stdin to Taiwan usage, one line out per line in")
    normalize.add_argument("--chunk", type=int, metavar="N", help="feed each line to the streaming normalizer N characters at a time")
    normalize.add_argument("--domain", metavar="ID", help="add this domain's vocabulary keep/replace lists")
    normalize.set_defaults(handler=cmd_normalize)

    evaluate = commands.add_parser("eval", help="run an evaluation case file (JSONL)")
    kinds = evaluate.add_subparsers(title="kinds", metavar="KIND")
    taiwan = kinds.add_parser("taiwan", help="Taiwan vocabulary cases: {id, input, expect: [...]}")
    taiwan.add_argument("cases", help="JSONL case file")
    taiwan.add_argument("--json", action="store_true", help="print the JSON report (default: a summary table)")
    taiwan.add_argument("--baseline", action="store_true", help="also score plain OpenCC s2twp on the same cases")
    taiwan.set_defaults(handler=cmd_eval_taiwan)

    retrieval = kinds.add_parser("retrieval", help="knowledge cases: {id, domain, question, doc} → recall@1/@5")
    retrieval.add_argument("cases", help="JSONL case file")
    retrieval.add_argument("--json", action="store_true", help="print the JSON report (default: a summary)")
    retrieval.add_argument("--baseline", action="store_true",
                           help="also score whole-document character TF-IDF on the same cases")
    retrieval.set_defaults(handler=cmd_eval_retrieval)
    grounded = kinds.add_parser("grounded", help="knowledge cases through the whole pipeline: is the right document cited?")
    grounded.add_argument("cases", help="JSONL case file")
    grounded.add_argument("--json", action="store_true", help="print the JSON report (default: a summary)")
    grounded.add_argument("--answer-mode", choices=["auto", "quote", "generate"], default="auto",
                          help="quote passages, or let the model write a cited answer (default: auto)")
    grounded.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    grounded.add_argument("--model", metavar="NAME|PATH", help="registry name or GGUF file (default: gemma3-270m)")
    grounded.set_defaults(handler=cmd_eval_grounded)
    answers = kinds.add_parser("answers", help="answer cases {id, domain, history, question, answerable, any_of}: "
                                               "does the answer hold the fact, or say honestly that the documents don't?")
    answers.add_argument("cases", help="JSONL case file")
    answers.add_argument("--json", action="store_true", help="print the JSON report (default: a summary)")
    answers.add_argument("--baseline", action="store_true",
                         help="also score the quote mode as it was before answer extraction, in the same run")
    answers.add_argument("--answer-mode", choices=["auto", "quote", "generate"], default="auto",
                         help="quote passages, or let the model write a cited answer (default: auto)")
    answers.add_argument("--model", metavar="NAME|PATH", help="registry name or GGUF file (default: gemma3-270m)")
    answers.set_defaults(handler=cmd_eval_answers)

    gate = kinds.add_parser("gate", help="domain gate cases: {id, domain, history, message, expect}")
    gate.add_argument("cases", help="JSONL case file")
    gate.add_argument("--json", action="store_true", help="print the JSON report (default: a summary)")
    gate.add_argument("--report", metavar="DIR", help="also write an HTML report with PNG plots into DIR")
    gate.set_defaults(handler=cmd_eval_gate)

    feedback = commands.add_parser("feedback", help="ratings users gave: export them, or turn them into candidate examples")
    actions = feedback.add_subparsers(title="actions", metavar="ACTION")
    export = actions.add_parser("export", help="print every rating as JSON lines or CSV")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--domain", metavar="ID", help="only this domain")
    export.add_argument("--db", metavar="PATH", help="feedback database (default: $GUARDEDCHAT_FEEDBACK_DB or ~/.cache/guardedchat/feedback.sqlite3)")
    export.set_defaults(handler=cmd_feedback_export)
    suggest = actions.add_parser("suggest", help="wrongly refused questions as candidate in-scope examples (YAML, for review)")
    suggest.add_argument("--domain", metavar="ID", help="only this domain")
    suggest.add_argument("--db", metavar="PATH", help="feedback database")
    suggest.set_defaults(handler=cmd_feedback_suggest)

    setup = commands.add_parser("setup", help="assemble and verify the default model (run by `make install`)")
    setup.set_defaults(handler=cmd_setup)
    return parser


def _add_domain_and_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True, metavar="ID", help="domain id (see `guardedchat domains`)")
    _add_model_options(parser)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME|PATH", help="registry name or GGUF file (default: gemma3-270m)")
    parser.add_argument("--n-ctx", type=int, metavar="N", help="context window in tokens (default 2048)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for llama.cpp (default: all)")
    parser.add_argument("--gpu-layers", type=int, metavar="N", help="layers to offload to CUDA/Metal (-1 = all)")
    parser.add_argument("--engine", metavar="URL", help="generate on an OpenAI-compatible server instead, e.g. "
                        "http://127.0.0.1:8080/v1 (default: $GUARDEDCHAT_ENGINE_URL; model: $GUARDEDCHAT_ENGINE_MODEL)")


def _add_access(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--access", choices=ACCESS_LEVELS, default=None,
                        help="the documents you may see: public (default, or $GUARDEDCHAT_ACCESS), internal, restricted")


def _access(args) -> str:
    level = args.access or os.environ.get("GUARDEDCHAT_ACCESS") or "public"
    access_rank(level)  # an unknown level in the environment is an error, not "public"
    return level


def _pipeline_for(args, quiet: bool = False):
    domain = get_domain(args.domain)
    settings = backend_settings(args)
    backend = get_backend(settings, progress=None if quiet else _assembly_progress())
    if not quiet and sys.stderr.isatty():
        with Spinner(f"載入模型 {backend.name}"):
            backend.info()
    return build_pipeline(domain, backend)


def backend_settings(args) -> BackendSettings:
    return BackendSettings.from_env(model=args.model, n_ctx=args.n_ctx, n_threads=args.threads,
                                    n_gpu_layers=args.gpu_layers, engine_url=args.engine)


def _assembly_progress():
    bar: list[ProgressBar] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(ProgressBar("組合預設模型", total))
        bar[0].advance(done - bar[0].done)
        if done >= total:
            bar[0].close()

    return report if sys.stderr.isatty() else None


def cmd_ask(args) -> int:
    pipeline = _pipeline_for(args, quiet=args.json)
    record = None
    for event in pipeline.run(args.question, access=_access(args)):
        if isinstance(event, FinalEvent):
            record = event.record
        elif not args.json and isinstance(event, (TextEvent, RefusalEvent)):
            sys.stdout.write(event.text)
            sys.stdout.flush()
    if args.json:
        print(json.dumps(record.to_json(), ensure_ascii=False))
    else:
        print()
        _print_sources(record.sources)
    return 0


def _print_sources(sources: list[dict]) -> None:
    if sources:
        print(sources_line(sources, with_doc=True))


CHAT_HELP = "指令：/clear 清除對話　/exit 離開　/help 說明。回答時按 Ctrl-C 可停止生成。"


def cmd_chat(args) -> int:
    pipeline = _pipeline_for(args)
    print(f"{pipeline.domain.title}\n{pipeline.domain.greeting}\n{CHAT_HELP}")
    history: list[dict] = []
    while True:
        try:
            message = input("\n你：")
        except EOFError:
            print()
            return 0
        command = message.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/clear":
            history.clear()
            print("已清除對話。")
            continue
        if command == "/help":
            print(CHAT_HELP)
            continue
        answer, refused = _chat_turn(pipeline, message, history, _access(args))
        if not refused:
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]


def _chat_turn(pipeline, message: str, history: list[dict], access: str = "public") -> tuple[str, bool]:
    cancel = threading.Event()
    sys.stdout.write("助理：")
    answer, refused, sources = "", False, []
    events = pipeline.run(message, history, cancel, access)
    try:
        for event in events:
            if isinstance(event, (TextEvent, RefusalEvent)):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            if isinstance(event, RefusalEvent):
                refused = True
            if isinstance(event, FinalEvent):
                answer, sources = event.record.answer, event.record.sources
    except KeyboardInterrupt:
        cancel.set()
        events.close()
        print("\n（已停止）")
        return answer, True
    print()
    _print_sources(sources)
    return answer, refused


def cmd_serve(args) -> int:
    from .api import serve
    from .ui import ChatService

    if not 0 < args.port < 65536:
        raise InputError(f"--port 必須在 1–65535 之間（收到 {args.port}）。")
    serve(args.host, args.port, ChatService(backend_settings(args)))
    return 0


def cmd_api_key_create(args) -> int:
    from .api_keys import ApiKeys

    path = args.file or os.environ.get("GUARDEDCHAT_API_KEYS")
    if not path:
        raise InputError("沒有指定金鑰檔。修正：加上 --file keys.yaml，或設定 GUARDEDCHAT_API_KEYS。")
    token = ApiKeys.load(Path(path)).create(args.name, args.access, args.rate_limit)
    print(token)
    print(f"已加入 {path}（只存雜湊；這是唯一一次顯示金鑰）。啟動時設定 GUARDEDCHAT_API_KEYS={path}。", file=sys.stderr)
    return 0


def cmd_index(args) -> int:
    from .knowledge import index_for

    domain = get_domain(args.domain)
    bar: list[ProgressBar] = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(ProgressBar(f"建立 {domain.id} 的知識索引", total))
        bar[0].advance(done - bar[0].done)

    index = index_for(domain.knowledge_dir, rebuild=True, progress=report)
    if bar:
        bar[0].close()
    for name, reason in index.skipped.items():
        print(f"略過 {domain.knowledge_dir / name}：{reason}", file=sys.stderr)
    print(f"{domain.id}：已索引 {index.documents} 份文件、{len(index.texts)} 個段落；略過 {len(index.skipped)} 份。")
    return 0


def cmd_search(args) -> int:
    from .knowledge import index_for

    if args.k < 1:
        raise InputError(f"-k 必須是正整數（收到 {args.k}）。修正：例如 -k 5。")
    domain = get_domain(args.domain)
    index = index_for(domain.knowledge_dir)
    hits = index.search(args.question, _access(args), args.k)
    if args.json:
        print(json.dumps([hit.to_json() for hit in hits], ensure_ascii=False))
        return 0
    if not index.texts:
        print(f"{domain.id} 沒有任何知識文件。修正：把 Markdown 文件放進 {domain.knowledge_dir}/。")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. {hit.title}（{hit.doc}，{hit.score:.3f}）\n   {hit.text}")
    return 0


def cmd_domains(args) -> int:
    report = load_all()
    if args.json:
        print(json.dumps({
            "loaded": [{"id": d.id, "title": d.title, "folder": str(d.folder)} for d in report.loaded.values()],
            "failed": [{"id": name, "error": str(error)} for name, error in report.failed.items()],
        }, ensure_ascii=False, indent=2))
    else:
        for domain in report.loaded.values():
            print(f"✓ {domain.id:<12} {domain.title}（{len(domain.examples.in_scope)} 個範例問題）")
        for name, error in report.failed.items():
            print(f"✗ {name:<12} 無法載入：{error}")
        if not report.loaded and not report.failed:
            print("沒有找到任何領域。修正：建立 domains/<id>/domain.yaml。")
    return 1 if report.failed else 0


def cmd_models(args) -> int:
    folder = models_dir()
    rows = []
    for entry in load_registry(folder):
        path = model_path(entry, folder)
        rows.append({"name": entry.name, "file": str(path or entry.url), "on_disk": bool(path and path.is_file()),
                     "size_gb": entry.size_gb, "ram_gb": entry.ram_gb, "licence": entry.licence,
                     "default": entry.default, "download": download_command(entry, folder)})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for row in rows:
        mark = "✓" if row["on_disk"] else "·"
        default = "（預設）" if row["default"] else ""
        print(f"{mark} {row['name']:<18} {row['size_gb']:>5} GB  RAM {row['ram_gb']} GB  {row['licence']}{default}")
        if not row["on_disk"]:
            print(f"    下載：{row['download']}")
    return 0


def cmd_normalize(args) -> int:
    from .taiwan import for_domain, normalizer_for

    if args.chunk is not None and args.chunk < 1:
        raise InputError(f"--chunk 必須是正整數（收到 {args.chunk}）。修正：例如 --chunk 4。")
    normalizer = for_domain(get_domain(args.domain)) if args.domain else normalizer_for()
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    for line in stdin:
        text = line[:-1] if line.endswith("\n") else line
        sys.stdout.write(_normalize_line(normalizer, text, args.chunk).replace("\n", " ") + "\n")
    sys.stdout.flush()
    return 0


def _normalize_line(normalizer, text: str, chunk: Optional[int]) -> str:
    if chunk is None:
        return normalizer.convert(text)
    stream = normalizer.stream()
    pieces = [stream.push(text[i:i + chunk]) for i in range(0, len(text), chunk)]
    return "".join(pieces) + stream.flush()


def cmd_eval_taiwan(args) -> int:
    from .evaluate import evaluate_taiwan
    from .taiwan import normalizer_for, plain_s2twp

    report = evaluate_taiwan(args.cases, normalizer_for(), plain_s2twp() if args.baseline else None)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    summary = report["summary"]
    print(f"cases {summary['cases']}  exact match {summary['exact_match']:.2%}  "
          f"already-Taiwan unchanged {_pct(summary['already_taiwan_unchanged'])}")
    if "baseline_s2twp" in summary:
        base = summary["baseline_s2twp"]
        print(f"plain s2twp: exact match {base['exact_match']:.2%}  already-Taiwan unchanged {_pct(base['already_taiwan_unchanged'])}")
    for row in report["cases"]:
        if not row["ok"]:
            print(f"✗ {row['id']}: {row['input']!r} → {row['got']!r}（預期 {row['expect'][0]!r}）")
    return 0


def cmd_eval_retrieval(args) -> int:
    from .evaluate import WholeDocumentBaseline, evaluate_retrieval
    from .knowledge import index_for

    report = evaluate_retrieval(args.cases, lambda domain_id: index_for(get_domain(domain_id).knowledge_dir))
    if args.baseline:
        baseline_for = functools.cache(lambda domain_id: WholeDocumentBaseline(get_domain(domain_id).knowledge_dir))
        report["baseline"] = evaluate_retrieval(args.cases, baseline_for)["summary"]
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    rows = [("", report["summary"])] + ([("baseline (whole documents) ", report["baseline"])] if args.baseline else [])
    for label, summary in rows:
        for domain, stats in summary["domains"].items():
            print(f"{label}{domain}: cases {stats['cases']}  recall@1 {stats['recall_at_1']:.2%}  "
                  f"recall@5 {stats['recall_at_5']:.2%}  MRR {stats['mrr']:.3f}  p50 {stats['p50_ms']} ms")
    for row in report["cases"]:
        if not row["ok"]:
            print(f"✗ {row['id']} {row['question']} → {row['got'][:3]}（預期 {row['expect']}）")
    return 0


def cmd_eval_grounded(args) -> int:
    from .evaluate import evaluate_grounded

    settings = BackendSettings.from_env(model=args.model)

    @functools.cache
    def pipeline_for(domain_id: str):
        return build_pipeline(get_domain(domain_id), get_backend(settings), answer_mode=args.answer_mode)

    report = evaluate_grounded(args.cases, pipeline_for, args.limit)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    summary = report["summary"]
    print(f"cases {summary['cases']}  cites the right document {summary['cites_right_doc']:.2%}  "
          f"cites any {summary['cites_any']:.2%}  refused {summary['refused']:.2%}  {summary['reasons']}")
    return 0


def cmd_eval_answers(args) -> int:
    from .evaluate import LegacyQuoteBaseline, evaluate_answers

    settings = BackendSettings.from_env(model=args.model)

    @functools.cache
    def turn_for(domain_id: str):
        pipeline = build_pipeline(get_domain(domain_id), get_backend(settings), answer_mode=args.answer_mode)
        return lambda question, history: _final_record(pipeline.run(question, history))

    baseline_for = functools.cache(lambda domain_id: LegacyQuoteBaseline(get_domain(domain_id)))
    report = evaluate_answers(args.cases, turn_for, baseline_for if args.baseline else None)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    summary = report["summary"]
    rows = [("GuardedChat", summary)] + ([("baseline (quote mode before extraction)", summary["baseline"])]
                                         if args.baseline else [])
    for label, stats in rows:
        print(f"{label}: cases {stats['cases']}  fact in answer {_pct(stats['fact_in_answer'])}  "
              f"in first sentence {_pct(stats['fact_in_first_sentence'])}  "
              f"abstained when unanswerable {_pct(stats['abstained_when_unanswerable'])}  refused {_pct(stats['refused'])}")
    for row in report["cases"]:
        if not row["correct"]:
            print(f"✗ {row['id']} expect {row['expect']} got {row['got']}: {row['question']}")
    return 0


def _final_record(events):
    record = None
    for event in events:
        if isinstance(event, FinalEvent):
            record = event.record
    return record


def cmd_eval_gate(args) -> int:
    from .evaluate import evaluate_gate
    from .gate import gate_for
    from .runtime import other_domains
    from .grounding import Retriever
    from .screening import screen

    def decide_for(domain_id: str):
        domain = get_domain(domain_id)
        gate = gate_for(domain, other_domains(domain))
        evidence = Retriever(domain).strength
        return lambda message, history: screen(domain, gate, message, history, evidence)

    report = evaluate_gate(args.cases, decide_for)
    if args.report:
        from .report import write_gate_report

        print(f"報告已寫入 {write_gate_report(report, args.report)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    for domain, stats in report["summary"]["domains"].items():
        print(f"{domain}: cases {stats['cases']}  in-scope acceptance {_pct(stats['in_scope_acceptance'])}  "
              f"out-of-scope refusal {_pct(stats['out_of_scope_refusal'])}")
    for row in report["cases"]:
        if not row["ok"]:
            print(f"✗ {row['id']} expect {row['expect']} got {row['got']} ({row['score']:.2f}) {row['message']}")
    return 0


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _feedback_store(args):
    from .feedback import FeedbackStore, default_path

    path = Path(args.db) if args.db else default_path()
    if not path.exists():
        raise InputError(f"找不到回饋資料庫 {path}。修正：先在網頁上給評分，或用 --db 指定檔案。")
    return FeedbackStore(path)


def cmd_feedback_export(args) -> int:
    from .feedback import export

    sys.stdout.write(export(_feedback_store(args).rows(args.domain), args.format))
    return 0


def cmd_feedback_suggest(args) -> int:
    from .feedback import suggest

    report = load_all()
    known = {d.id: set(d.examples.in_scope) for d in report.loaded.values()}
    sys.stdout.write(suggest(_feedback_store(args).rows(args.domain), known))
    return 0


def cmd_setup(args) -> int:
    path = ensure_default_model(_assembly_progress())
    print(f"預設模型已就緒：{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
