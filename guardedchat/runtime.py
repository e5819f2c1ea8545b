"""Runtime assembly: returns the shared backend and per-domain pipelines, each built once."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .audit import AuditLog
from .backend import LlamaCppBackend
from .domains import Domain, load_all
from .engine import EngineSettings, OpenAICompatBackend
from .gate import gate_for
from .grounding import Retriever
from .models import resolve_model
from .errors import BackendError, InputError, ModelLoadError
from .pipeline import ANSWER_MODES, Pipeline, TurnRecord, Verdict, sampling
from .rails import BackendLLM, GuardRails
from .rails.checks import OutputGuard, RailChecks
from .taiwan import for_domain


@dataclass(frozen=True)
class BackendSettings:
    model: Optional[str] = None  # registry name or GGUF path; None = the default model
    n_ctx: int = 2048
    n_threads: Optional[int] = None
    n_gpu_layers: int = 0
    engine_url: Optional[str] = None  # an OpenAI-compatible server instead of llama.cpp in process
    engine_model: str = "default"
    engine_api_key: Optional[str] = None
    engine_chat_template: bool = False  # False: our completion prompt goes to the engine's /completions

    @classmethod
    def from_env(cls, **overrides) -> "BackendSettings":
        env = os.environ
        values = dict(
            model=env.get("GUARDEDCHAT_MODEL") or None,
            n_ctx=int(env.get("GUARDEDCHAT_N_CTX", 2048)),
            n_threads=int(env["GUARDEDCHAT_N_THREADS"]) if env.get("GUARDEDCHAT_N_THREADS") else None,
            n_gpu_layers=int(env.get("GUARDEDCHAT_N_GPU_LAYERS", 0)),
            engine_url=env.get("GUARDEDCHAT_ENGINE_URL") or None,
            engine_model=env.get("GUARDEDCHAT_ENGINE_MODEL") or "default",
            engine_api_key=env.get("GUARDEDCHAT_ENGINE_API_KEY") or None,
            engine_chat_template=env.get("GUARDEDCHAT_ENGINE_CHAT_TEMPLATE", "0").lower() in ("1", "true", "yes"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_backends: dict = {}
_lock = threading.Lock()


def get_backend(settings: BackendSettings, progress: Optional[Callable[[int, int], None]] = None,
                on_load=None):
    """One backend per settings per process: a model is loaded once and shared by every domain."""
    with _lock:
        if settings not in _backends and settings.engine_url:
            _backends[settings] = OpenAICompatBackend(EngineSettings(
                settings.engine_url, settings.engine_model, settings.engine_api_key,
                settings.engine_chat_template, settings.n_ctx))
        if settings not in _backends:
            resolved = resolve_model(settings.model, progress)
            _backends[settings] = LlamaCppBackend(
                resolved.path, name=resolved.name, fix=resolved.fix, n_ctx=settings.n_ctx,
                n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers,
                chat_format=resolved.chat_format, on_load=on_load)
        return _backends[settings]


def other_domains(domain: Domain) -> list[Domain]:
    """The other domains that load from the same folder (negatives for this domain's gate)."""
    return [d for d in load_all(domain.folder.parent).loaded.values() if d.id != domain.id]


def build_pipeline(domain: Domain, backend, audit: Optional[AuditLog] = None,
                   answer_mode: Optional[str] = None) -> Pipeline:
    """The full guarded pipeline for a domain: NeMo input rails (limits, injection, banned words,
    the domain gate) → retrieval from the domain's documents → generation (or quoting, for a base
    model) → Taiwan normalizer → output guard → NeMo output rails → audit.
    answer_mode (auto | quote | generate) defaults to $GUARDEDCHAT_ANSWER_MODE, else auto."""
    retriever = Retriever(domain)
    checks = RailChecks(domain, lambda: gate_for(domain, other_domains(domain)), retriever.strength)
    rails = LazyRails(domain, checks, backend)
    normalizer = for_domain(domain)
    mode = answer_mode or os.environ.get("GUARDEDCHAT_ANSWER_MODE") or "auto"
    if mode not in ANSWER_MODES:
        raise InputError(f"GUARDEDCHAT_ANSWER_MODE 是 '{mode}'，不認得。修正：用 {' | '.join(ANSWER_MODES)} 之一。")
    return AuditedPipeline(domain, backend, input_checks=[rails.input_check],
                           stream_stages=[normalizer.stream, lambda: OutputGuard(checks)],
                           quote_stages=[lambda: OutputGuard(checks)],
                           output_check=rails.output_check, retrieve=retriever, answer_mode=mode,
                           on_record=[audit or AuditLog.from_env()])


class LazyRails:
    """The domain's NeMo rails, built on first use (importing NeMo takes about two seconds)."""

    def __init__(self, domain: Domain, checks: RailChecks, backend):
        self.domain, self.checks, self.backend = domain, checks, backend
        self._rails: Optional[GuardRails] = None
        self._lock = threading.Lock()

    @property
    def rails(self) -> GuardRails:
        with self._lock:
            if self._rails is None:
                self._rails = GuardRails(self.domain, self.checks, BackendLLM(self.backend, sampling(self.domain)))
            return self._rails

    def input_check(self, domain: Domain, history, message: str) -> Verdict:
        result = self.rails.check_input(message, history)
        decision = result.gate
        score = decision.score if decision is not None else None
        if result.blocked is not None:
            return Verdict(False, result.blocked.reason, result.blocked.text, score=score, rail=result.blocked.rail)
        if decision is not None and decision.decision == "greet":
            return Verdict(True, "greeting", score=score, canned=domain.greeting)
        return Verdict(True, score=score)

    def output_check(self, message: str, answer: str) -> Optional[Verdict]:
        result = self.rails.check_output(message, answer)
        if result.blocked is None:
            return None
        return Verdict(False, result.blocked.reason, result.blocked.text, rail=result.blocked.rail)


class AuditedPipeline(Pipeline):
    """A pipeline whose failed turns (the engine down, the model failing, a bug) still reach the
    audit log: the pipeline records a turn only at its final event, which a failure never reaches."""

    def run(self, message, history=(), cancel=None, access="public"):
        started = time.perf_counter()
        try:
            yield from super().run(message, history, cancel, access)
        except Exception as exc:
            failed = _failed_record(self, exc, started)
            for record_to in self.on_record:
                record_to(failed, message)
            raise


def _failed_record(pipeline: Pipeline, exc: Exception, started: float) -> TurnRecord:
    engine = isinstance(exc, (BackendError, ModelLoadError))
    record = TurnRecord(domain=pipeline.domain.id, reason="engine_error" if engine else "internal_error")
    record.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
    try:
        record.model = pipeline.backend.info().name
    except Exception:  # the backend that just failed may not even say its name
        record.model = None
    return record
