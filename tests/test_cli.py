"""The real CLI on the real default model: answers, JSON records, and errors without tracebacks."""

import json

import pytest

from .conftest import ROOT, run_cli

pytestmark = pytest.mark.model


GENERATE = {"GUARDEDCHAT_ANSWER_MODE": "generate"}  # the model writes the answer (default: quoted documents)


def test_ask_prints_a_well_formed_answer():
    result = run_cli("ask", "--domain", "mingqing", "鄭和是誰？", env=GENERATE)
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.strip().split("\n")  # the answer on one line, then what it drew on
    assert answer and sources.startswith(("來源：[1] ", "參考資料：[1] "))
    assert "問：" not in answer and "答：" not in answer
    assert result.stderr == ""


def test_ask_json_record_follows_the_contract():
    result = run_cli("ask", "--domain", "riscv", "--json", "RV64GC 包含哪些擴充？", env=GENERATE)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert {"refused", "reason", "answer", "sources", "rails", "gate", "model_called", "timings"} <= set(record)
    assert record["refused"] is False and record["model_called"] is True and record["answer"]
    assert set(record["gate"]) == {"decision", "score"}
    assert record["tokens"]["completion"] > 0 and record["timings"]["total_ms"] > 0


def test_ask_with_model_given_as_a_path():
    from guardedchat.models import ensure_default_model

    result = run_cli("ask", "--domain", "mingqing", "--model", str(ensure_default_model()), "海瑞是誰？")
    assert result.returncode == 0 and result.stdout.strip()


def test_chat_repl_keeps_history_and_exits_on_eof():
    result = _chat("雍正是怎麼即位的？\n/clear\n/help\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("助理：") == 1
    assert "已清除對話。" in result.stdout and "指令：/clear" in result.stdout


def _chat(stdin):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "guardedchat.cli", "chat", "--domain", "mingqing"],
                          input=stdin, capture_output=True, text=True, timeout=300, cwd=ROOT)


ERRORS = [
    (["ask", "--domain", "tang", "李白是誰？"],
     "錯誤：找不到領域 'tang'。可用的領域：mingqing, riscv。修正：用 `guardedchat domains` 查看清單，"
     "或建立 domains/tang/domain.yaml。\n"),
    (["ask", "--domain", "mingqing", "--model", "/nonexistent/model.gguf", "海瑞是誰？"],
     "錯誤：找不到模型檔 /nonexistent/model.gguf。修正：確認路徑正確，或重新下載這個 GGUF 檔；"
     "可用的模型見 `guardedchat models`。\n"),
    (["ask", "--domain", "mingqing", "--model", "gpt-9", "海瑞是誰？"],
     "錯誤：不認得模型 'gpt-9'：它不是登錄的名稱，也不是 .gguf 檔。可用的名稱：breeze-7b, gemma3-270m, "
     "llama3-taiwan-8b, smollm2-135m, taide-8b。修正：用 `guardedchat models` 查看，或給一個 .gguf 檔的路徑。\n"),
]


@pytest.mark.parametrize("args,stderr", ERRORS)
def test_errors_are_one_clear_message_and_a_nonzero_exit(args, stderr):
    result = run_cli(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", stderr)


def test_corrupt_model_file(tmp_path):
    from guardedchat.models import ensure_default_model

    path = tmp_path / "corrupt.gguf"
    path.write_bytes(ensure_default_model().read_bytes()[:4096])
    result = run_cli("ask", "--domain", "mingqing", "--model", str(path), "海瑞是誰？")
    assert result.returncode == 2
    assert result.stderr.startswith(f"錯誤：llama.cpp 無法載入 {path}（檔案可能被截斷或損毀：")
    assert "Traceback" not in result.stderr


def test_broken_domain_yaml_through_the_cli(domains_copy):
    path = domains_copy / "riscv" / "domain.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("greeting: >-", "greating: >-"), encoding="utf-8")
    env = {"GUARDEDCHAT_DOMAINS": str(domains_copy)}
    result = run_cli("ask", "--domain", "riscv", "RV32I 有幾個暫存器？", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"錯誤：{path}: 缺少必填欄位 'greeting'。修正：在 YAML 中加上 greeting:。\n"
                             "欄位 'greating' 不認得（未知的鍵）。修正：是不是要寫 'greeting'？請改名或刪除它。\n")
    listing = run_cli("domains", env=env)
    assert listing.returncode == 1
    assert listing.stdout.splitlines()[0] == "✓ mingqing     明清人物研究助理（213 個範例問題）"
    assert listing.stdout.splitlines()[1] == f"✗ riscv        無法載入：{path}: 缺少必填欄位 'greeting'。修正：在 YAML 中加上 greeting:。"


def test_models_lists_the_registry():
    result = run_cli("models")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✓ gemma3-270m") and lines[0].endswith("Gemma Terms of Use（預設）")
    assert any(line.startswith("    下載：curl -L -o ") for line in lines)


def test_help_everywhere():
    for args in (["--help"], ["ask", "--help"], ["chat", "--help"], ["domains", "--help"], ["models", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage: guardedchat" in result.stdout
