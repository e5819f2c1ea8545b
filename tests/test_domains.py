"""Domains as data: the shipped domains load; broken files fail with exact, fixable messages."""

import pytest

from guardedchat.domains import get_domain, load_all, load_domain
from guardedchat.errors import DomainError, UnknownDomainError

from .conftest import ROOT


@pytest.mark.parametrize("domain_id", ["mingqing", "riscv"])
def test_shipped_domain_loads_with_enough_examples(domain_id):
    domain = load_domain(ROOT / "domains" / domain_id)
    assert domain.id == domain_id
    assert len(domain.examples.in_scope) >= 150
    assert len(domain.examples.out_of_scope) >= 80
    assert len(set(domain.examples.in_scope)) == len(domain.examples.in_scope), "duplicate examples"


def test_all_shipped_domains_load_without_failures():
    report = load_all(ROOT / "domains")
    assert sorted(report.loaded) == ["mingqing", "riscv"]
    assert report.failed == {}


def _break(domains_copy, old, new):
    path = domains_copy / "riscv" / "domain.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


BROKEN = [
    ("title: RISC-V 知識小助手", "titel: RISC-V 知識小助手",
     "缺少必填欄位 'title'。修正：在 YAML 中加上 title:。\n"
     "欄位 'titel' 不認得（未知的鍵）。修正：是不是要寫 'title'？請改名或刪除它。"),
    ("greeting: >-", "greating: >-",
     "缺少必填欄位 'greeting'。修正：在 YAML 中加上 greeting:。\n"
     "欄位 'greating' 不認得（未知的鍵）。修正：是不是要寫 'greeting'？請改名或刪除它。"),
    ("  in_scope:\n    # 基本指令集", "  in_scop:\n    # 基本指令集",
     "缺少必填欄位 'examples.in_scope'。修正：在 YAML 中加上 examples.in_scope:。\n"
     "欄位 'examples.in_scop' 不認得（未知的鍵）。修正：是不是要寫 'in_scope'？請改名或刪除它。"),
    ("knowledge: knowledge", "knowledge: knowledge\nflavour: spicy",
     "欄位 'flavour' 不認得（未知的鍵）。修正：刪除它；這一層可用的欄位有：aliases, banned_words, description, examples, facts, "
     "fewshot, gate, generation, greeting, id, knowledge, lexicon, refusal, system_prompt, title, vocabulary。"),
    ("  max_tokens: 160", "  max_tokens: many",
     "欄位 'generation.max_tokens' 的值 'many' 不正確：Input should be a valid integer, unable to parse "
     "string as an integer。修正：改成正確型別或範圍的值。"),
    ("id: riscv", "id: RISC V",
     "欄位 'id' 的值 'RISC V' 不正確：Value error, must be lowercase letters, digits, '-' or '_', "
     "starting with a letter。修正：改成正確型別或範圍的值。"),
    ("id: riscv", "id: other",
     "欄位 'id' 是 'other'，但資料夾名稱是 'riscv'。修正：把 id 改成 'riscv'，或把資料夾改名為 'other'。"),
    ("  replace: {}", "  replace: {3D列印: 3D 列印}",
     "欄位 'vocabulary.replace' 的值 dict 不正確：Value error, 「3D列印」的替換字「3D 列印」是空的或含空白，詞典寫不進去；"
     "請改成不含空白的詞。修正：改成正確型別或範圍的值。"),
    ("  keep: [暫存器, 記憶體, 中斷, 例外]", "  keep: [暫存器, 記憶體, 中斷, 例外, 程式，設計]",
     "欄位 'vocabulary.keep' 的值 list 不正確：Value error, 「程式，設計」是空的或含空白、標點，永遠對不到（文字在空白與標點處切開）；"
     "請只寫詞本身。修正：改成正確型別或範圍的值。"),
    ("title: RISC-V 知識小助手", "title: [unclosed",
     "YAML 語法錯誤（第 3 行第 12 欄：expected ',' or ']', but got ':'）。修正：檢查該行的縮排、冒號與引號。"),
]


@pytest.mark.parametrize("old,new,message", BROKEN)
def test_broken_domain_message_names_file_field_and_fix(domains_copy, old, new, message):
    path = _break(domains_copy, old, new)
    with pytest.raises(DomainError) as caught:
        load_domain(path.parent)
    assert str(caught.value) == f"{path}: {message}"


def test_yaml_syntax_error_points_at_the_line(domains_copy):
    path = domains_copy / "riscv" / "domain.yaml"
    path.write_text("id: riscv\ntitle: x\n  bad: indent: here\n", encoding="utf-8")
    with pytest.raises(DomainError) as caught:
        load_domain(path.parent)
    assert str(caught.value).startswith(f"{path}: YAML 語法錯誤（第 3 行")


@pytest.mark.parametrize("content,message", [
    (b"- a\n- b\n", "最外層必須是鍵值對應（id:、title:…），不是清單或純文字。修正：參考 domains/mingqing/domain.yaml 的格式。"),
    (b"\xff\xfe\x00binary", "檔案不是 UTF-8 文字。修正：以 UTF-8 編碼重新儲存這個 YAML 檔。"),
])
def test_unusable_yaml_content(domains_copy, content, message):
    path = domains_copy / "riscv" / "domain.yaml"
    path.write_bytes(content)
    with pytest.raises(DomainError) as caught:
        load_domain(path.parent)
    assert str(caught.value) == f"{path}: {message}"


def test_one_broken_domain_does_not_stop_the_others(domains_copy):
    _break(domains_copy, "greeting: >-", "greating: >-")
    report = load_all(domains_copy)
    assert list(report.loaded) == ["mingqing"]
    assert list(report.failed) == ["riscv"]


def test_unknown_domain_lists_what_is_available(domains_copy):
    with pytest.raises(UnknownDomainError) as caught:
        get_domain("tang", domains_copy)
    assert str(caught.value) == ("找不到領域 'tang'。可用的領域：mingqing, riscv。修正：用 `guardedchat domains` "
                                 "查看清單，或建立 domains/tang/domain.yaml。")


def test_asking_for_a_broken_domain_reports_why(domains_copy):
    _break(domains_copy, "greeting: >-", "greating: >-")
    with pytest.raises(DomainError, match="greating"):
        get_domain("riscv", domains_copy)


def test_a_new_domain_needs_no_code(domains_copy):
    folder = domains_copy / "tea"
    folder.mkdir()
    (folder / "domain.yaml").write_text(
        "id: tea\ntitle: 台灣茶小助手\ndescription: {in_scope: 台灣茶, out_of_scope: 其他}\n"
        "system_prompt: 只談台灣茶。\nrefusal: 抱歉。\ngreeting: 您好。\n"
        "examples: {in_scope: [凍頂烏龍茶產在哪裡？]}\n", encoding="utf-8")
    report = load_all(domains_copy)
    assert report.loaded["tea"].title == "台灣茶小助手"
    assert report.loaded["tea"].generation.max_tokens == 200
