"""Knowledge documents, the retrieval index, grounded answers and access levels."""

import json

import pytest

from guardedchat import knowledge
from guardedchat.domains import load_domain
from guardedchat.errors import InputError
from guardedchat.grounding import QUOTE_HEADING, Retriever, sources_line, sources_of
from guardedchat.knowledge import Document, build_index, index_for, load_documents, passages_of, read_document
from guardedchat.pipeline import FinalEvent, Pipeline, TextEvent
from guardedchat.prompt import Passage

from .conftest import ROOT, run_cli

SECRET = "SL-2026-紅鯉"  # only in the shipped restricted document domains/mingqing/knowledge/lab-notes-shilang.md
GOOD = "---\ntitle: 測試人物\nsources: [測試史料]\naccess: public\n---\n測試人物是明朝的官員。\n"

BROKEN = [
    ("no-front-matter.md", "只有內文。".encode(),
     "缺少開頭的 front matter。修正：第一行寫 ---，接著 title:、sources:、access:，再一行 ---。"),
    ("bad-yaml.md", "---\ntitle: [未關閉\naccess: public\n---\n內文".encode(), "front matter 不是正確的 YAML"),
    ("no-access.md", "---\ntitle: 甲\n---\n內文".encode(),
     "front matter 欄位 'access'：缺少必要欄位。修正：需要 title 與 access（public | internal | restricted），可加 sources；不接受其他欄位。"),
    ("bad-access.md", "---\ntitle: 甲\naccess: secret\n---\n內文".encode(), "front matter 欄位 'access'：Value error, access 必須是"),
    ("extra-key.md", "---\ntitle: 甲\naccess: public\nauthor: 乙\n---\n內文".encode(), "front matter 欄位 'author'"),
    ("empty-body.md", "---\ntitle: 甲\naccess: public\n---\n\n".encode(), "文件沒有內文。修正：在 front matter 之後寫內容，或刪除這個檔案。"),
    ("empty.md", b"", "缺少開頭的 front matter。"),
    ("binary.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "看起來是二進位檔，不是文字。修正：只放 UTF-8 的 Markdown 文件。"),
    ("latin1.md", "---\ntitle: café\naccess: public\n---\ncafé".encode("latin-1"), "不是 UTF-8 文字（位元組"),
    ("huge.md", GOOD.encode() + b"x" * 10_000_000, "檔案太大（10.0 MB，上限 2 MB）。修正：拆成幾份較短的文件。"),
]


@pytest.mark.parametrize("name,data,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_documents_say_what_is_wrong(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        read_document(path)
    assert str(caught.value).startswith(message)


def test_broken_documents_are_skipped_by_name_and_the_rest_index(tmp_path):
    for name, data, _ in BROKEN:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "good.md").write_text(GOOD, encoding="utf-8")
    documents, skipped = load_documents(tmp_path)
    assert [d.name for d in documents] == ["good"]
    assert sorted(skipped) == sorted(b[0] for b in BROKEN)
    index = build_index(tmp_path)
    assert [hit.doc for hit in index.search("測試人物是誰？")] == ["good"]


def test_front_matter_fields():
    document = read_document(ROOT / "domains/mingqing/knowledge/zheng-chenggong.md")
    assert (document.name, document.title, document.access) == ("zheng-chenggong", "鄭成功", "public")
    assert document.sources == ("《清史稿》", "連橫《臺灣通史·建國紀》", "楊英《從征實錄》")


@pytest.mark.parametrize("body,pieces", [
    ("甲。乙。", ["甲。乙。"]),
    ("第一段。\n\n第二段。", ["第一段。", "第二段。"]),
    ("# 標題\n第一行\n第二行。", ["標題 第一行 第二行。"]),
    ("長" * 200 + "。" + "短" * 100 + "。" + "尾。", ["長" * 200 + "。", "短" * 100 + "。尾。"]),
    ("長" * 250 + "。" + "尾。", ["長" * 250 + "。尾。"]),  # a short last sentence joins the ones before it
])
def test_passages_cut_at_paragraph_and_sentence_ends(body, pieces):
    assert passages_of(Document("d", "t", (), "public", body)) == pieces


def test_shipped_knowledge_is_complete_and_cites_sources():
    for domain, minimum in (("mingqing", 40), ("riscv", 25)):
        documents, skipped = load_documents(ROOT / "domains" / domain / "knowledge")
        assert skipped == {}
        public = [d for d in documents if d.access == "public"]
        assert len(public) >= minimum and all(d.sources for d in documents)
    names = {d.title for d in load_documents(ROOT / "domains/mingqing/knowledge")[0]}
    assert {"鄭成功", "施琅", "沈葆楨", "劉銘傳"} <= names


@pytest.fixture
def levels_folder(tmp_path):
    for name, level in (("open", "public"), ("staff", "internal"), ("secret", "restricted")):
        (tmp_path / f"{name}.md").write_text(
            f"---\ntitle: {name}\naccess: {level}\n---\n鄭成功的{name}筆記：關於鄭成功與台灣的紀錄。\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("level,docs", [
    ("public", ["open"]), ("internal", ["open", "staff"]), ("restricted", ["open", "secret", "staff"]),
])
def test_search_sees_only_the_users_level(levels_folder, level, docs):
    assert sorted(hit.doc for hit in build_index(levels_folder).search("鄭成功的筆記", level)) == docs


def test_unknown_level_is_an_error(levels_folder):
    with pytest.raises(InputError, match="不認得的存取等級 'admin'"):
        build_index(levels_folder).search("鄭成功", "admin")


def test_index_is_cached_and_picks_up_added_documents(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDEDCHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(knowledge, "RECHECK_SECONDS", 0.0)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(GOOD, encoding="utf-8")
    first = index_for(folder)
    assert index_for(folder) is first and len(list((tmp_path / "cache/knowledge").glob("*.pkl"))) == 1
    (folder / "b.md").write_text(GOOD.replace("測試人物", "新增人物"), encoding="utf-8")
    assert [hit.doc for hit in index_for(folder).search("新增人物", k=1)] == ["b"]
    knowledge._indexes.clear()  # a new process: the index comes from the disk cache, not rebuilt
    assert index_for(folder).fingerprint == knowledge.fingerprint(folder)


@pytest.mark.parametrize("question,docs", [
    ("鄭成功如何從荷蘭人手中取得台灣？", "zheng-chenggong"),
    ("台灣第一任巡撫是誰？", "liu-mingchuan"),
    ("寧王之亂是誰平定的？", "wang-shouren"),
    ("唐寅的畫有什麼特色？", None),  # named, in scope, but in no document: nothing, rather than a wrong passage
    ("史可法守揚州的經過？", None),
])
def test_retriever_finds_the_document_or_nothing(question, docs):
    domain = load_domain(ROOT / "domains/mingqing")
    passages = Retriever(domain)(domain, [], question).passages
    assert (passages[0].doc if passages else None) == docs


def test_retriever_uses_the_previous_question_for_follow_ups():
    domain = load_domain(ROOT / "domains/mingqing")
    history = [{"role": "user", "content": "施琅是誰？"}, {"role": "assistant", "content": "清朝水師提督。"}]
    assert Retriever(domain)(domain, history, "他為什麼投降清朝？").passages[0].doc == "shi-lang"


def test_sources_carry_the_works_each_document_cites():
    passages = [Passage(1, "甲", "第一句。", "a", 0.5, ("《明史》", "《國榷》")), Passage(2, "乙", "無關。", "b", 0.4)]
    assert sources_of(passages, "…[1]…") == [
        {"number": 1, "doc": "a", "title": "甲", "works": ["《明史》", "《國榷》"], "cited": True},
        {"number": 2, "doc": "b", "title": "乙", "works": [], "cited": False}]
    assert sources_line(sources_of(passages, "…[1]…")) == "來源：[1] 甲（《明史》、《國榷》）"
    assert sources_line(sources_of(passages, "…[1]…"), with_doc=True) == "來源：[1] 甲（《明史》、《國榷》） — a.md"
    assert sources_line(sources_of(passages, "")) == "參考資料：[1] 甲（《明史》、《國榷》）；[2] 乙"


def run_turn(pipeline, message, access="public"):
    text, record = "", None
    for event in pipeline.run(message, access=access):
        text += event.text if isinstance(event, TextEvent) else ""
        record = event.record if isinstance(event, FinalEvent) else record
    return text, record


def test_base_model_answers_by_quoting_without_calling_the_model(scripted):
    domain = load_domain(ROOT / "domains/mingqing")
    backend = scripted(["不該出現"], chat_template=False)
    text, record = run_turn(Pipeline(domain, backend, retrieve=Retriever(domain)), "台灣第一任巡撫是誰？")
    assert backend.prompts == [] and not record.model_called and record.reason == "quoted"
    assert text.startswith(QUOTE_HEADING + "〈劉銘傳〉：「") and "首任台灣巡撫" in text and text.endswith("[1]")
    assert record.sources == [{"number": 1, "doc": "liu-mingchuan", "title": "劉銘傳", "works": ["《清史稿·劉銘傳傳》", "《劉壯肅公奏議》", "連橫《臺灣通史》"], "cited": True}]
    assert not record.abstained


def test_chat_model_gets_the_passages_and_its_citations_are_marked(scripted):
    domain = load_domain(ROOT / "domains/mingqing")
    backend = scripted(["劉銘傳是首任台灣巡撫[1]。"], chat_template=True)
    text, record = run_turn(Pipeline(domain, backend, retrieve=Retriever(domain)), "台灣第一任巡撫是誰？")
    system = backend.prompts[0].messages[0]["content"]
    assert "參考資料（引用時標註編號，例如 [1]）：\n[1] 劉銘傳：" in system
    assert all(f"- {fact}" in system for fact in domain.facts)  # pinned facts always go in
    assert text == "劉銘傳是首任台灣巡撫[1]。"
    assert [s["cited"] for s in record.sources][0] is True and record.sources[0]["doc"] == "liu-mingchuan"


def test_nothing_relevant_says_so_without_the_model(scripted):
    domain = load_domain(ROOT / "domains/mingqing")
    backend = scripted(["編造的答案"], chat_template=True)
    text, record = run_turn(Pipeline(domain, backend, retrieve=Retriever(domain)), "唐寅的畫有什麼特色？")
    assert backend.prompts == [] and record.reason == "no_sources" and record.sources == [] and record.abstained
    assert text == ("抱歉，我在「明清人物研究助理」的資料中找不到和這個問題相關的內容。為了不提供錯誤的資訊，這題先不回答。"
                    "可以換個問法，或問資料中收錄的人物與主題。")


@pytest.mark.parametrize("access,sees", [("public", False), ("internal", False), ("restricted", True)])
@pytest.mark.parametrize("mode", ["quote", "generate"])
def test_restricted_passage_reaches_only_restricted_users_through_the_whole_pipeline(scripted, access, sees, mode):
    from guardedchat.runtime import build_pipeline

    domain = load_domain(ROOT / "domains/mingqing")
    backend = scripted(["整理進度見 [1]。"], chat_template=True)
    pipeline = build_pipeline(domain, backend, answer_mode=mode)
    text, record = run_turn(pipeline, "研究室的施琅題本整理計畫代號是什麼？進度如何？", access)
    prompts = json.dumps([p.messages for p in backend.prompts], ensure_ascii=False)
    shown = text + json.dumps(record.to_json(), ensure_ascii=False)
    assert (SECRET in prompts) == (sees and mode == "generate")
    assert (SECRET in shown) == (sees and mode == "quote")
    assert any(s["doc"] == "lab-notes-shilang" for s in record.sources) == sees


def test_cli_search_contract_and_access():
    result = run_cli("search", "--domain", "mingqing", "施琅題本整理", "--json")
    hits = json.loads(result.stdout)
    assert result.returncode == 0 and list(hits[0]) == ["doc", "title", "score", "text"]
    assert all(SECRET not in h["text"] and h["doc"] != "lab-notes-shilang" for h in hits)
    restricted = json.loads(run_cli("search", "--domain", "mingqing", "施琅題本整理", "--json", "--access", "restricted").stdout)
    assert restricted[0]["doc"] == "lab-notes-shilang" and SECRET in restricted[0]["text"]
    assert hits == sorted(hits, key=lambda h: -h["score"])


def write_cases(folder, rows):
    cases = folder / "cases.jsonl"
    cases.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return cases


def test_cli_eval_retrieval_against_the_whole_document_baseline(tmp_path):
    rows = [{"id": "r1", "domain": "riscv", "question": "PMP 的 TOR 模式", "doc": "pmp"},
            {"id": "m1", "domain": "mingqing", "question": "鄭和下西洋幾次？", "doc": "zheng-he"}]
    cases = write_cases(tmp_path, rows)
    report = json.loads(run_cli("eval", "retrieval", str(cases), "--baseline", "--json").stdout)
    assert [(case["id"], case["rank"]) for case in report["cases"]] == [("r1", 1), ("m1", 1)]
    assert sorted(report["baseline"]["domains"]) == ["mingqing", "riscv"]
    assert report["baseline"]["cases"] == 2 and 0 <= report["baseline"]["recall_at_5"] <= 1
    lines = run_cli("eval", "retrieval", str(cases), "--baseline").stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["riscv", "mingqing", "baseline (whole documents) riscv",
                                                      "baseline (whole documents) mingqing"]
    assert lines[0].startswith("riscv: cases 1  recall@1 100.00%  recall@5 100.00%  MRR 1.000  p50 ")


@pytest.mark.model
def test_cli_eval_grounded_summary_on_the_default_model(tmp_path):
    rows = [{"id": "r1", "domain": "riscv", "question": "PMP 的 TOR 模式是什麼？", "doc": "pmp"},
            {"id": "m1", "domain": "mingqing", "question": "鄭和下西洋幾次？", "doc": "zheng-he"},
            {"id": "m2", "domain": "mingqing", "question": "推薦台北的牛肉麵", "doc": "zheng-he"}]
    cases = write_cases(tmp_path, rows)
    result = run_cli("eval", "grounded", str(cases))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("cases 3  cites the right document 66.67%  cites any 66.67%  refused 33.33%  "
                                     "{'quoted': 2, 'out_of_scope': 1}")


def test_cli_bad_access_level_from_the_environment():
    result = run_cli("search", "--domain", "riscv", "PMP", env={"GUARDEDCHAT_ACCESS": "admin"})
    assert result.returncode == 2
    assert result.stderr.strip() == "錯誤：不認得的存取等級 'admin'。修正：使用 public | internal | restricted 之一。"


def test_cli_index_reports_broken_documents_and_indexes_the_rest(domains_copy, tmp_path):
    folder = domains_copy / "riscv" / "knowledge"
    (folder / "broken.md").write_bytes(b"\x00\x01binary")
    (folder / "big.md").write_bytes(GOOD.encode() + b"x" * 10_000_000)
    env = {"GUARDEDCHAT_DOMAINS": str(domains_copy), "GUARDEDCHAT_CACHE": str(tmp_path / "cache")}
    result = run_cli("index", "--domain", "riscv", env=env)
    count = len(list(folder.glob("*.md"))) - 2
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1].startswith(f"riscv：已索引 {count} 份文件、")
    assert f"略過 {folder / 'broken.md'}：看起來是二進位檔" in result.stderr
    assert f"略過 {folder / 'big.md'}：檔案太大" in result.stderr
    assert "100%" in result.stderr  # the progress bar
    hits = json.loads(run_cli("search", "--domain", "riscv", "PMP 的 TOR 模式", "--json", env=env).stdout)
    assert hits[0]["doc"] == "pmp"


@pytest.mark.model
def test_cli_ask_quotes_and_cites_with_the_default_model():
    result = run_cli("ask", "--domain", "riscv", "mtimecmp 是做什麼的？", "--json")
    record = json.loads(result.stdout)
    assert (record["refused"], record["reason"], record["model_called"]) == (False, "quoted", False)
    works = ["RISC-V Platform-Level Interrupt Controller Specification", "RISC-V Advanced Interrupt Architecture",
             "SiFive CLINT documentation"]
    assert record["sources"] == [{"number": 1, "doc": "interrupts", "title": "中斷控制器：CLINT、PLIC 與 AIA",
                                  "works": works, "cited": True}]
    assert not record["abstained"]
    text = run_cli("ask", "--domain", "riscv", "mtimecmp 是做什麼的？").stdout
    assert text.startswith("摘自資料〈中斷控制器：CLINT、PLIC 與 AIA〉：「") and "mtimecmp" in text.split("\n")[0]
    assert text.rstrip().endswith("來源：[1] 中斷控制器：CLINT、PLIC 與 AIA（" + "、".join(works) + "） — interrupts.md")


@pytest.mark.model
def test_generate_mode_with_the_default_model_puts_passages_in_its_prompt():
    result = run_cli("ask", "--domain", "mingqing", "台灣第一任巡撫是誰？", "--json",
                     env={"GUARDEDCHAT_ANSWER_MODE": "generate"})
    record = json.loads(result.stdout)
    assert record["model_called"] and record["reason"] is None
    assert record["sources"][0]["doc"] == "liu-mingchuan"
    assert record["tokens"]["prompt"] > 300  # the passages went in with the few-shot prompt


@pytest.mark.model
def test_page_lab_roles_and_showcase_levels(tmp_path):
    from gradio_client import Client

    from guardedchat.settings import PageSettings

    from .conftest import start_page

    question = "研究室的施琅題本整理計畫代號是什麼？進度如何？"
    lab = PageSettings(profile="lab", login_required=True, users={"ada": "pw1", "lin": "pw2"}, roles={"ada": "restricted"})
    app, url, _ = start_page(tmp_path / "lab", lab)
    try:
        answers = {}
        for user, password in (("ada", "pw1"), ("lin", "pw2")):
            history, _ = Client(url, auth=(user, password), verbose=False).predict(question, [], "mingqing", api_name="/respond")
            answers[user] = "".join(part["text"] for part in history[-1]["content"])
    finally:
        app.close()
    assert SECRET in answers["ada"] and "研究室筆記：施琅題本整理進度（未公開）" in answers["ada"]
    assert SECRET not in answers["lin"] and "未公開" not in answers["lin"]
    showcase = PageSettings(profile="showcase", show_panel=False, access="restricted", roles={"ada": "restricted"})
    app, url, _ = start_page(tmp_path / "showcase", showcase)
    try:
        history, _ = Client(url, verbose=False).predict(question, [], "mingqing", api_name="/respond")
    finally:
        app.close()
    assert SECRET not in json.dumps(history, ensure_ascii=False)
