"""NeMo Guardrails around the model: returns input and output verdicts from a real LLMRails config.

The config (Colang 1.0, passthrough) lives in guardedchat/rails/config/ or, for a domain that ships
its own, in domains/<id>/rails/. Each flow calls one action, `guardedchat_check(rails=...)`,
backed by the checks in checks.py (the flow lists which rails to run, in order); the action
records why it blocked, so the pipeline can show the
user a short Traditional Chinese reason and the audit log can name the rail. Our backend is plugged
in as an in-process `LLMModel` (no network, no LangChain, no hub downloads).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence

from ..domains import Domain
from ..errors import GuardedChatError
from .checks import Blocked, RailChecks

# NeMo Guardrails reports usage to NVIDIA by default (an event per config, a heartbeat thread every
# 10 minutes, a copy in ~/.config/nemoguardrails/). A lab's guarded chatbot must not phone home
# unasked: off unless the operator sets NEMO_GUARDRAILS_NO_USAGE_STATS=0 themselves.
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

INPUT_ONLY = {"rails": {"input": True, "output": False, "dialog": False, "retrieval": False}}
OUTPUT_ONLY = {"rails": {"input": False, "output": True, "dialog": False, "retrieval": False}}
RAIL_TIMEOUT_S = 30


@dataclass
class RailResult:
    """What the rails decided for one check: blocked or not, why, and the gate decision seen."""

    blocked: Optional[Blocked] = None
    gate: Any = None
    activated: list = field(default_factory=list)


class _EventLoop:
    """One background event loop per process: NeMo is async, the pipeline is a plain generator."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="guardedchat-rails").start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(RAIL_TIMEOUT_S)


_loop: Optional[_EventLoop] = None
_loop_lock = threading.Lock()


def _event_loop() -> _EventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = _EventLoop()
        return _loop


def config_dir(domain: Domain) -> Path:
    own = domain.folder / "rails"
    return own if (own / "config.yml").is_file() else Path(str(files("guardedchat.rails").joinpath("config")))


class GuardRails:
    """A domain's LLMRails, built once, with GuardedChat's checks registered as its actions."""

    def __init__(self, domain: Domain, checks: RailChecks, llm):
        from nemoguardrails import LLMRails, RailsConfig

        self.domain = domain
        self.checks = checks
        self._turns: dict[int, dict] = {}
        self._ids = itertools.count(1)
        try:
            config = RailsConfig.from_path(str(config_dir(domain)))
        except Exception as exc:  # NeMo raises many types for a bad config; translate at this boundary
            raise GuardedChatError(f"{config_dir(domain)}：NeMo Guardrails 設定無法載入（{exc}）。"
                                   "修正：對照 guardedchat/rails/config/ 修正 config.yml 與 rails.co。") from exc
        self.rails = LLMRails(config, llm=llm)
        register_checks(self.rails, checks, self._turns)

    def check_input(self, message: str, history: Sequence[dict]) -> RailResult:
        return self._run({"message": message, "history": list(history)},
                         [{"role": "user", "content": message}], INPUT_ONLY)

    def check_output(self, message: str, answer: str) -> RailResult:
        return self._run({"message": message, "answer": answer},
                         [{"role": "user", "content": message}, {"role": "assistant", "content": answer}],
                         OUTPUT_ONLY)

    def _run(self, turn: dict, messages: list, options: dict) -> RailResult:
        turn_id = next(self._ids)
        turn["result"] = RailResult()
        self._turns[turn_id] = turn
        context = {"role": "context", "content": {"guardedchat_turn": turn_id}}
        try:
            _event_loop().run(self.rails.generate_async(messages=[context, *messages], options=options))
            return turn["result"]
        finally:
            self._turns.pop(turn_id, None)
            # NeMo caches each conversation's events to resume it later; every turn here is a new
            # conversation (its own turn id), so the cache would only grow (about 20 KB a turn).
            self.rails.events_history_cache.clear()


def register_checks(app, checks: RailChecks, turns: Optional[dict] = None) -> None:
    """Register GuardedChat's checks as the `guardedchat_check` action of a NeMo LLMRails app.

    Within the pipeline, the turn (message, history, answer) comes from `turns` by the id passed in
    the context; in a plain NeMo conversation (TestChat, the NeMo server) it comes from NeMo's own
    context variables, so the same config works in both."""
    turns = {} if turns is None else turns

    async def guardedchat_check(rails: str, context: Optional[dict] = None):
        context = context or {}
        turn = turns.get(context.get("guardedchat_turn"))
        if turn is None:
            turn = {"message": context.get("user_message") or "", "answer": context.get("bot_message") or "",
                    "history": [], "result": RailResult()}
        for rail in (name.strip() for name in rails.split(",") if name.strip()):
            if turn["result"].blocked is not None:
                return False
            blocked = checks.run(rail, turn)
            turn["result"].activated.append(rail)
            if blocked is not None:
                turn["result"].blocked = blocked
                return False
        return True

    app.register_action(guardedchat_check, "guardedchat_check")


class BackendLLM:
    """Our ChatBackend as NeMo's in-process LLMModel (the protocol in nemoguardrails.types)."""

    def __init__(self, backend, sampling):
        self.backend = backend
        self.sampling = sampling

    @property
    def model_name(self) -> str:
        return getattr(self.backend, "name", "guardedchat")

    @property
    def provider_name(self) -> Optional[str]:
        return "guardedchat"

    @property
    def provider_url(self) -> Optional[str]:
        return None

    def _prompt(self, prompt, stop):
        from ..backend import ChatPrompt, CompletionPrompt

        if isinstance(prompt, str):
            return CompletionPrompt(prompt, list(stop or []))
        return ChatPrompt([{"role": getattr(m, "role", "user").value if hasattr(getattr(m, "role", None), "value")
                            else str(getattr(m, "role", "user")), "content": m.content or ""} for m in prompt])

    async def generate_async(self, prompt, *, stop=None, **kwargs):
        from nemoguardrails.types import LLMResponse

        text = await asyncio.to_thread(lambda: "".join(self.backend.stream(self._prompt(prompt, stop), self.sampling)))
        return LLMResponse(content=text, model=self.model_name)

    async def stream_async(self, prompt, *, stop=None, **kwargs) -> AsyncIterator:
        from nemoguardrails.types import LLMResponseChunk

        from ..handoff import batches_in_thread

        cancel = threading.Event()
        pieces = batches_in_thread(lambda: self.backend.stream(self._prompt(prompt, stop), self.sampling, cancel), cancel)
        async for batch in pieces:
            yield LLMResponseChunk(delta_content="".join(batch), model=self.model_name)
