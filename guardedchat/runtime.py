"""Runtime assembly: returns the shared backend and per-domain pipelines, each built once."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .backend import LlamaCppBackend
from .domains import Domain, load_all
from .screening import screening_check
from .models import resolve_model
from .pipeline import Pipeline
from .taiwan import for_domain


@dataclass(frozen=True)
class BackendSettings:
    model: Optional[str] = None  # registry name or GGUF path; None = the default model
    n_ctx: int = 2048
    n_threads: Optional[int] = None
    n_gpu_layers: int = 0

    @classmethod
    def from_env(cls, **overrides) -> "BackendSettings":
        env = os.environ
        values = dict(
            model=env.get("GUARDEDCHAT_MODEL") or None,
            n_ctx=int(env.get("GUARDEDCHAT_N_CTX", 2048)),
            n_threads=int(env["GUARDEDCHAT_N_THREADS"]) if env.get("GUARDEDCHAT_N_THREADS") else None,
            n_gpu_layers=int(env.get("GUARDEDCHAT_N_GPU_LAYERS", 0)),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_backends: dict[BackendSettings, LlamaCppBackend] = {}
_lock = threading.Lock()


def get_backend(settings: BackendSettings, progress: Optional[Callable[[int, int], None]] = None,
                on_load=None) -> LlamaCppBackend:
    """One backend per settings per process: a model is loaded once and shared by every domain."""
    with _lock:
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


def build_pipeline(domain: Domain, backend) -> Pipeline:
    """The full guarded pipeline for a domain: input checks, generation, Taiwan normalizer."""
    normalizer = for_domain(domain)
    return Pipeline(domain, backend, input_checks=[screening_check(other_domains)],
                    stream_stages=[normalizer.stream])
