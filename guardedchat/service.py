"""What the page and the API share: returns the chat service (pipelines per domain, feedback store),
the per-client rate limiter and the client's address, so the API needs none of the page's code.

Client addresses come from GuardedChat's own `trusted_proxies` setting only. uvicorn believes
x-forwarded-for from 127.0.0.1 by default (`proxy_headers`, `FORWARDED_ALLOW_IPS`), which would let
anyone on the host, or any client of a local reverse proxy, choose the address our rate limit sees:
every server we start runs with that off (`UVICORN_OPTIONS`, `server_trusts_no_proxy`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from typing import Iterator, Optional

from .domains import load_all
from .feedback import FeedbackStore
from .runtime import BackendSettings, build_pipeline, get_backend
from .settings import PageSettings, load_settings

UVICORN_OPTIONS = {"proxy_headers": False, "forwarded_allow_ips": ""}


class RateLimiter:
    """At most `limit` messages per client per minute (a sliding window)."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self._times: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        if not self.limit:
            return True
        now = time.monotonic()
        with self._lock:
            times = self._times[client]
            while times and now - times[0] > 60:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True


def client_address(request, trusted_proxies) -> str:
    """The client's address: the connecting peer, unless it is one of our trusted proxies; then
    x-forwarded-for is read from the right (the hop the proxy added) past every trusted proxy, so
    what a client writes into the header itself is never believed."""
    if request is None or request.client is None:
        return "unknown"
    address = request.client.host
    hops = _forwarded_for(request.headers)
    while address in trusted_proxies and hops:
        address = hops.pop()
    return address


def _forwarded_for(headers) -> list[str]:
    """Every x-forwarded-for entry, in order, across repeated headers."""
    if not headers:
        return []
    values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else [headers.get("x-forwarded-for")]
    return [hop.strip() for value in values if value for hop in value.split(",") if hop.strip()]


@contextmanager
def server_trusts_no_proxy() -> Iterator[None]:
    """While a server is configured here (Gradio's launch builds its uvicorn config inside), uvicorn
    believes no x-forwarded-for header: `client_address` alone decides whom to believe."""
    before = os.environ.get("FORWARDED_ALLOW_IPS")
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FORWARDED_ALLOW_IPS", None)
        else:
            os.environ["FORWARDED_ALLOW_IPS"] = before


class ChatService:
    """What the page and the API need from the rest of GuardedChat: pipelines per domain and the
    feedback store. `backend` replaces the configured model (tests pass a scripted one)."""

    def __init__(self, settings: Optional[BackendSettings] = None, feedback: Optional[FeedbackStore] = None,
                 page: Optional[PageSettings] = None, backend=None):
        self.settings = settings or BackendSettings.from_env()
        self.page = page or load_settings()
        self.limiter = RateLimiter(self.page.rate_limit_per_minute)
        report = load_all()
        self.domains = report.loaded
        self.failed = report.failed
        self._pipelines: dict = {}
        self._lock = threading.Lock()
        self._feedback = feedback
        self._backend = backend

    @property
    def feedback(self) -> FeedbackStore:
        if self._feedback is None:
            self._feedback = FeedbackStore()
        return self._feedback

    def pipeline(self, domain_id: str):
        with self._lock:
            if domain_id not in self._pipelines:
                backend = self._backend or get_backend(self.settings)
                self._pipelines[domain_id] = build_pipeline(self.domains[domain_id], backend)
            return self._pipelines[domain_id]
