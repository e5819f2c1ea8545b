"""Answer extraction: the sentence that answers, or an honest "the documents don't say"."""

import json

import pytest

from guardedchat.answering import AnswerIndex
from guardedchat.domains import load_domain
from guardedchat.grounding import ABSTAIN, RELATED_HEADING, Retriever, abstain_answer, quote_answer
from guardedchat.knowledge import build_index
from guardedchat.question import Synonyms, analyze, predicate_terms, question_type

from .conftest import ROOT, run_cli

YU_QIAN = [{"role": "user", "content": "于謙是誰？"},
           {"role": "assistant", "content": "于謙（1398–1457）是明朝的兵部尚書，土木堡之變後主持北京保衛戰。"}]


def answer(domain_id, question, history=()):
    domain = load_domain(ROOT / "domains" / domain_id)
    grounding = Retriever(domain)(domain, list(history), question)
    if grounding.abstained:
        return abstain_answer(domain, grounding)
    return quote_answer(grounding)


@pytest.mark.parametrize("domain_id,question,history,first_line", [
    # The answer is a later passage of the document, not its opening paragraph.
    ("mingqing", "鄭成功如何取得台灣？", (),
     "摘自資料〈鄭成功〉：「為了尋找穩固的基地，他在 1661 年率軍從金門料羅灣出發，經澎湖，由鹿耳門進入台江內海，"
     "先攻下普羅民遮城（赤崁樓），再圍困熱蘭遮城九個月。」[1]"),
    ("mingqing", "于謙為什麼被殺？", (),
     "摘自資料〈于謙〉：「1457 年英宗發動「奪門之變」復辟，于謙被以「意欲迎立外藩」的罪名處死。」[1]"),
    # 被貶 ↔ 革職、發配: synonyms from the shipped list.
    ("mingqing", "林則徐後來被貶到哪裡？", (), "摘自資料〈林則徐〉：「鴉片戰爭爆發後他被革職，發配新疆伊犁，在當地推廣水利。」[1]"),
    # A follow-up is about the person the conversation is about, and what came after.
    ("mingqing", "他後來怎麼了？", YU_QIAN,
     "摘自資料〈于謙〉：「1457 年英宗發動「奪門之變」復辟，于謙被以「意欲迎立外藩」的罪名處死。」[1]"),
    # "What is X" is answered by the definition, the opening of X's own document.
    ("riscv", "RISC-V 的 PMP 是什麼？", (), "摘自資料〈PMP：實體記憶體保護〉：「實體記憶體保護（PMP）讓 M 模式限制較低特權模式可以存取哪些實體位址。」[1]"),
    # Simplified input, the same answer.
    ("mingqing", "于谦为什么被杀？", (),
     "摘自資料〈于謙〉：「1457 年英宗發動「奪門之變」復辟，于謙被以「意欲迎立外藩」的罪名處死。」[1]"),
])
def test_the_sentence_that_answers_comes_first(domain_id, question, history, first_line):
    assert answer(domain_id, question, history).split("\n\n")[0] == first_line


def test_a_comparison_gets_one_cited_sentence_per_side():
    lines = answer("mingqing", "鄭成功和鄭經有什麼不同？").split("\n\n")
    assert [line.split("：")[0] for line in lines] == ["摘自資料〈鄭經〉", "摘自資料〈鄭成功〉"]
    assert lines[0].endswith("[1]") and lines[1].endswith("[2]")


@pytest.mark.parametrize("domain_id,question,related", [
    # Named, in scope, but what is asked is in no document: say so; the person's documents are reading only.
    ("mingqing", "鄭成功喜歡吃什麼？", "〈鄭成功〉、〈鄭經〉、〈施琅〉"),
    ("mingqing", "崇禎皇帝有幾個兒子？", "〈皇太極〉、〈崇禎皇帝朱由檢〉、〈魏忠賢〉"),
    ("riscv", "SiFive U74 的管線有幾級？", "〈開源核心與開發板〉"),
])
def test_unanswered_questions_abstain_and_list_related_reading(domain_id, question, related):
    domain = load_domain(ROOT / "domains" / domain_id)
    assert answer(domain_id, question) == ABSTAIN.format(title=domain.title) + "\n\n" + RELATED_HEADING + related


@pytest.mark.parametrize("text,qtype", [
    ("于謙幾歲過世？", "how_old"), ("鄭和下西洋幾次？", "how_many"), ("胡惟庸案是哪一年？", "when"),
    ("海瑞為什麼被罷官？", "why"), ("林則徐被貶到哪裡？", "where"), ("誰平定了寧王之亂？", "who"),
    ("CLINT 和 PLIC 差在哪？", "compare"), ("Zbb 有哪些指令？", "list"), ("鄭成功如何取得台灣？", "how"),
    ("PMP 是什麼？", "definition"), ("QEMU 可以模擬 RVV 嗎？", "yes_no"), ("康熙在位多久？", "duration"),
    ("How many privilege levels are there?", "how_many"), ("Why does RISC-V need fences?", "why"),
])
def test_question_types(text, qtype):
    assert question_type(text.lower()) == qtype


@pytest.mark.parametrize("text,terms", [
    ("為什麼被殺", ["被殺"]),               # question words and particles go, the known word stays whole
    ("他後來被貶到哪裡", ["被貶", "到"]),   # 後來 marks a follow-up in time, not a predicate
    ("what is the stack pointer", ["stack pointer"]),
])
def test_predicate_terms(text, terms):
    from guardedchat.question import general_alias_groups

    synonyms = Synonyms(general_alias_groups(), lambda word: word.lower())
    assert [term.text for term in predicate_terms(text, synonyms)] == terms


def test_synonyms_match_in_both_directions_but_one_character_stands_only_for_itself():
    synonyms = Synonyms([["兒子", "子", "長子"], ["中斷", "interrupt"]], str)
    assert set(synonyms.forms("兒子")) == {"兒子", "長子"}
    assert set(synonyms.forms("子")) == {"兒子", "長子", "子"}
    assert set(synonyms.forms("interrupt")) == {"interrupt", "中斷"}


def test_domain_aliases_make_other_names_point_at_the_same_document():
    domain = load_domain(ROOT / "domains/mingqing")
    index = Retriever(domain).answer_index(Retriever(domain).index)
    assert index.about["koxinga"] == {"zheng-chenggong"} and index.about["國姓爺"] == {"zheng-chenggong"}
    assert index.about["廷益"] == {"yu-qian"}  # 字 from the document's opening line


@pytest.mark.parametrize("body", ["", "。！？", "？" * 200])
def test_questions_of_only_punctuation_abstain(body):
    assert answer("mingqing", body).startswith("抱歉")


def test_a_huge_question_is_cut_not_crashed():
    assert answer("mingqing", "于謙為什麼被殺？" * 12_500).startswith("摘自資料〈于謙〉")


@pytest.mark.parametrize("chat_template,reason,model_called", [(False, "no_documents", False), (True, None, True)])
def test_an_empty_documents_folder(tmp_path, scripted, chat_template, reason, model_called):
    from guardedchat.pipeline import FinalEvent, Pipeline

    domain = load_domain(ROOT / "domains/mingqing").model_copy(update={"folder": tmp_path})
    (tmp_path / "knowledge").mkdir()
    grounding = Retriever(domain)(domain, [], "于謙為什麼被殺？")
    assert (grounding.documents, grounding.passages) == (False, [])
    events = list(Pipeline(domain, scripted(["模型的回答。"], chat_template=chat_template),
                           retrieve=Retriever(domain)).run("于謙為什麼被殺？"))
    record = events[-1].record
    assert isinstance(events[-1], FinalEvent) and (record.reason, record.model_called) == (reason, model_called)
    if not chat_template:  # a quoting model has nothing to quote: it says so, and who can fix it
        assert record.answer.startswith("抱歉，「明清人物研究助理」還沒有可以引用的資料文件，這題無法回答。") and record.abstained


def test_a_document_without_sentences_still_indexes(tmp_path):
    folder = tmp_path / "knowledge"
    folder.mkdir()
    (folder / "a.md").write_text("---\ntitle: 甲\naccess: public\n---\n#\n", encoding="utf-8")
    (folder / "b.md").write_text("---\ntitle: 乙\naccess: public\n---\n乙是明朝人，1500 年生。\n", encoding="utf-8")
    index = build_index(folder)
    answers = AnswerIndex(index)
    assert [s.doc for s in answers.sentences] == ["b"]


def test_cli_eval_answers_scores_what_the_user_sees(tmp_path):
    rows = [{"id": "a1", "domain": "mingqing", "history": [], "question": "于謙為什麼被殺？", "answerable": True,
             "any_of": ["奪門之變"]},
            {"id": "a2", "domain": "mingqing", "history": [], "question": "鄭成功喜歡吃什麼？", "answerable": False, "any_of": []},
            {"id": "a3", "domain": "mingqing", "history": [], "question": "推薦台北的牛肉麵", "answerable": False, "any_of": []}]
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    result = run_cli("eval", "answers", str(cases), "--baseline", "--json", "--answer-mode", "quote")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    got = [(c["id"], c["expect"], c["got"], c["correct"], c["first_sentence_ok"]) for c in report["cases"]]
    assert got == [("a1", "answer", "answer", True, True), ("a2", "abstain", "abstain", True, None),
                   ("a3", "abstain", "refuse", False, None)]
    baseline = [(c["id"], c["baseline"]["got"], c["baseline"]["correct"]) for c in report["cases"]]
    # Before extraction the quote was the document's opening paragraph, which does not say why.
    assert baseline == [("a1", "answer", False), ("a2", "answer", False), ("a3", "refuse", False)]
    summary = report["summary"]
    assert (summary["fact_in_answer"], summary["abstained_when_unanswerable"], summary["refused"]) == (1.0, 0.5, 0.3333)
    assert summary["baseline"]["fact_in_answer"] == 0.0 and summary["baseline"]["abstained_when_unanswerable"] == 0.0 and set(summary["by_qtype"]) == {"why", "what"}


def test_quoted_document_text_is_shown_as_written(scripted):
    """The normalizer would turn the document's 項目 into 專案; a quote is the document's own words."""
    from guardedchat.pipeline import FinalEvent, TextEvent
    from guardedchat.runtime import build_pipeline

    domain = load_domain(ROOT / "domains/riscv")
    pipeline = build_pipeline(domain, scripted(["不該出現"], chat_template=False), answer_mode="quote")
    events = list(pipeline.run("RISC-V 的 PMP 是什麼？"))
    shown = "".join(event.text for event in events if isinstance(event, TextEvent))
    assert "64 組 PMP 項目" in shown and "專案" not in shown
    assert isinstance(events[-1], FinalEvent) and events[-1].record.reason == "quoted"


@pytest.mark.parametrize("domain_id,question,history,first_line", [
    # English names of a multi-word title: C 擴充 ↔ C extension.
    ("riscv", "What does the C extension do?", (),
     "摘自資料〈C 擴充：16 位元壓縮指令〉：「C 擴充加入 16 位元長的壓縮指令，每一條都對應到一條既有的 32 位元指令，"
     "例如 c.addi、c.lw、c.j、c.mv。」[1]"),
    # "And then?" moves past what the last answer already showed (its whole passage).
    ("mingqing", "他後來呢？", [{"role": "user", "content": "鄭成功是誰？"},
                               {"role": "assistant", "content": "摘自資料〈鄭成功〉：「鄭成功（1624–1662），本名森，字明儼，福建南安人，"
                                "生於日本平戶，父親是鄭芝龍，母親是日本人田川氏，七歲回到福建。」[1]\n\n前後文：「南明隆武帝賜他國姓朱，"
                                "改名成功，所以人稱「國姓爺」。」[1]"}],
     "摘自資料〈鄭成功〉：「1646 年鄭芝龍降清，鄭成功在南澳起兵抗清，以廈門、金門為根據地，奉永曆年號，受封延平郡王。」[1]"),
])
def test_names_and_follow_ups_from_a_new_users_session(domain_id, question, history, first_line):
    assert answer(domain_id, question, history).split("\n\n")[0] == first_line
