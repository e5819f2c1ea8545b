"""Feedback store: returns ratings (👍, 👎, "this should have been answered") kept in SQLite.

WAL journal, one connection per thread, each rating committed before add() returns: a rating that
was acknowledged survives the process being killed (SIGKILL) at any moment.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import InputError
from .models import cache_dir

RATINGS = ("up", "down", "should_answer")
MAX_COMMENT_CHARS = 2000
COLUMNS = ("id", "time", "domain", "model", "rating", "comment", "question", "answer", "messages",
           "gate_score", "rails", "refused", "sources")
JSON_COLUMNS = ("messages", "rails", "sources")
# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...) phones home).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    domain TEXT NOT NULL,
    model TEXT,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down', 'should_answer')),
    comment TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    messages TEXT NOT NULL DEFAULT '[]',
    gate_score REAL,
    rails TEXT NOT NULL DEFAULT '[]',
    refused INTEGER NOT NULL DEFAULT 0,
    sources TEXT NOT NULL DEFAULT '[]'
)
"""
# Columns added after the first release: a database created before them gets them on open.
ADDED_COLUMNS = {"sources": "sources TEXT NOT NULL DEFAULT '[]'"}


def default_path() -> Path:
    """$GUARDEDCHAT_FEEDBACK_DB, else ~/.cache/guardedchat/feedback.sqlite3."""
    value = os.environ.get("GUARDEDCHAT_FEEDBACK_DB")
    return Path(value) if value else cache_dir() / "feedback.sqlite3"


class FeedbackStore:
    """Ratings in one SQLite file, safe to use from many threads at once."""

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path else default_path()
        self._local = threading.local()
        self._connect()  # create the file and schema now, so a bad path fails at start-up

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
                connection.execute(SCHEMA)
                _add_missing_columns(connection)
            except (sqlite3.Error, OSError) as exc:
                raise InputError(f"無法開啟回饋資料庫 {self.path}（{exc}）。修正：確認資料夾可寫入，"
                                 "或用 GUARDEDCHAT_FEEDBACK_DB 指定其他位置。") from exc
            self._local.connection = connection
        return connection

    def add(self, *, domain: str, rating: str, question: str = "", answer: str = "", comment: str = "",
            model: Optional[str] = None, messages: Sequence[dict] = (), gate_score: Optional[float] = None,
            rails: Sequence[str] = (), refused: bool = False, sources: Sequence[dict] = ()) -> int:
        """Store one rating; returns its id once it is committed."""
        if rating not in RATINGS:
            raise InputError(f"不認得的評分 '{rating}'。修正：使用 {', '.join(RATINGS)} 之一。")
        comment = str(comment or "")
        if len(comment) > MAX_COMMENT_CHARS:
            raise InputError(f"意見太長（{len(comment)} 字，上限 {MAX_COMMENT_CHARS}）。修正：請縮短後再送出。")
        row = (time.strftime("%Y-%m-%dT%H:%M:%S%z"), str(domain), model, rating, comment, str(question),
               str(answer), json.dumps(list(messages), ensure_ascii=False, default=str),
               None if gate_score is None else float(gate_score), json.dumps(list(rails), ensure_ascii=False),
               int(bool(refused)), json.dumps(list(sources), ensure_ascii=False, default=str))
        cursor = self._connect().execute(
            "INSERT INTO feedback (time, domain, model, rating, comment, question, answer, messages, "
            "gate_score, rails, refused, sources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return int(cursor.lastrowid)

    def rows(self, domain: Optional[str] = None) -> list[dict]:
        query = f"SELECT {', '.join(COLUMNS)} FROM feedback"
        args: tuple = ()
        if domain:
            query, args = query + " WHERE domain = ?", (domain,)
        result = []
        for values in self._connect().execute(query + " ORDER BY id", args):
            row = dict(zip(COLUMNS, values))
            for column in JSON_COLUMNS:
                row[column] = json.loads(row[column])
            row["refused"] = bool(row["refused"])
            result.append(row)
        return result


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    present = {row[1] for row in connection.execute("PRAGMA table_info(feedback)")}
    for name, definition in ADDED_COLUMNS.items():
        if name not in present:
            try:
                connection.execute(f"ALTER TABLE feedback ADD COLUMN {definition}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


def spreadsheet_safe(value):
    """Text a spreadsheet shows as text: a leading apostrophe before a formula's first character,
    as spreadsheet-safe exports do (OWASP, CSV injection). Numbers and empty cells stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def export(rows: Iterable[dict], fmt: str) -> str:
    """The rows as JSON lines or CSV (nested fields as JSON text; no cell a spreadsheet would run)."""
    rows = list(rows)
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            cells = {**row, **{column: json.dumps(row[column], ensure_ascii=False) for column in JSON_COLUMNS}}
            writer.writerow({column: spreadsheet_safe(value) for column, value in cells.items()})
        return buffer.getvalue()
    raise InputError(f"不支援的格式 '{fmt}'。修正：使用 --format jsonl 或 --format csv。")


def suggest(rows: Iterable[dict], known: dict[str, set[str]]) -> str:
    """Wrongly refused questions as YAML candidates for each domain's examples, for a person to review.
    Users wrote these texts: a question or comment a spreadsheet would run as a formula gets an apostrophe."""
    by_domain: dict[str, Counter] = defaultdict(Counter)
    comments: dict[tuple, list] = defaultdict(list)
    for row in rows:
        asked = row["question"].strip()
        if row["rating"] != "should_answer" or not asked or asked in known.get(row["domain"], set()):
            continue
        question = spreadsheet_safe(asked)
        by_domain[row["domain"]][question] += 1
        if row["comment"]:
            comments[(row["domain"], question)].append(spreadsheet_safe(row["comment"]))
    if not by_domain:
        return "# 沒有「應該回答」的回饋可建議。\n"
    lines = ["# 由使用者回饋整理的候選範例（被拒絕但使用者認為應回答）。請人工確認後，",
             "# 再加入 domains/<id>/domain.yaml 的 examples.in_scope。"]
    for domain, counter in sorted(by_domain.items()):
        lines.append(f"# {domain}")
        lines.append(f"{domain}:")
        lines.append("  examples:")
        lines.append("    in_scope:")
        for question, count in counter.most_common():
            note = " ".join("；".join(comments[(domain, question)]).split())[:200]
            lines.append(f"      - {json.dumps(question, ensure_ascii=False)}  # {count} 次" + (f"：{note}" if note else ""))
    return "\n".join(lines) + "\n"
