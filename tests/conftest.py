"""Shared fixtures: a scripted fake backend (no mocks of our own code) and paths to real parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from guardedchat.backend import ModelInfo

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "guardedchat.cli"]


class ScriptedBackend:
    """Streams pre-written replies piece by piece and records every prompt it was given."""

    def __init__(self, replies=("好的。",), chat_template=False, n_ctx=2048):
        self.replies = list(replies)
        self.prompts = []
        self.chat_template = chat_template
        self.n_ctx = n_ctx
        self.closed = 0

    def info(self) -> ModelInfo:
        return ModelInfo("scripted", "scripted.gguf", "none", self.n_ctx, "CPU", self.chat_template)

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, prompt, settings, cancel: threading.Event | None = None):
        self.prompts.append(prompt)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        try:
            for piece in reply if isinstance(reply, list) else list(reply):
                if cancel is not None and cancel.is_set():
                    return
                yield piece
        finally:
            self.closed += 1


@pytest.fixture
def scripted():
    return ScriptedBackend


@pytest.fixture
def domains_copy(tmp_path):
    """A writable copy of the shipped domains, for tests that break one on purpose."""
    target = tmp_path / "domains"
    shutil.copytree(ROOT / "domains", target)
    return target


def free_port() -> int:
    """A TCP port nothing listens on, for a page launched by a test."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_page(folder, page_settings=None, settings=None, backend=None):
    """A real page on a free loopback port, in this process: returns (app, url, feedback store).
    `settings` (BackendSettings) chooses the model; default: the environment's. `backend` (a
    ScriptedBackend) replaces the model where its text does not matter."""
    from guardedchat.feedback import FeedbackStore
    from guardedchat.ui import ChatService, create_app, launch

    store = FeedbackStore(folder / "feedback.sqlite3")
    port = free_port()
    service = ChatService(settings, feedback=store, page=page_settings, backend=backend)
    app = create_app(service)
    launch(app, service, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, inbrowser=False)
    return app, f"http://127.0.0.1:{port}/", store


def run_cli(*args, env=None, timeout=300, cwd=None, input_text=None):
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, encoding="utf-8",
                          env=full_env, cwd=cwd or ROOT, input=input_text)


@pytest.fixture(autouse=True, scope="session")
def audit_log_in_tmp(tmp_path_factory):
    """Tests (and the CLI they start) write their audit lines to a temporary file, not the user's."""
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    os.environ["GUARDEDCHAT_AUDIT_LOG"] = str(path)
    return path
