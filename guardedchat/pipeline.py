"""The turn pipeline: returns a stream of typed events (text, refusal, final record) for one turn."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

from .backend import ChatBackend, CompletionPrompt, SamplingSettings
from .domains import Domain
from .grounding import Grounding, abstain_answer, no_documents_answer, not_found_answer, quote_answer, sources_of
from .prompt import Passage, build_prompt
from .rails.checks import OutputBlocked


@dataclass(frozen=True)
class TextEvent:
    """Text that is safe to show now."""

    text: str


@dataclass(frozen=True)
class RefusalEvent:
    """The turn was refused; `text` is what the user sees, `reason` a stable machine-readable code."""

    reason: str
    text: str


@dataclass
class TurnRecord:
    """Everything about one turn that the CLI's --json, the page's panel and the audit log show."""

    domain: str
    refused: bool = False
    reason: Optional[str] = None
    answer: str = ""
    sources: list = field(default_factory=list)
    rails: list = field(default_factory=list)
    gate: dict = field(default_factory=lambda: {"decision": None, "score": None})
    model: Optional[str] = None
    model_called: bool = False
    abstained: bool = False  # in scope, but the documents do not answer it, and the answer says so
    stopped: bool = False
    tokens: dict = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinalEvent:
    record: TurnRecord


Event = Union[TextEvent, RefusalEvent, FinalEvent]


@dataclass(frozen=True)
class Verdict:
    """What an input check decided: allow, or refuse with a reason and the text to show."""

    allow: bool
    reason: Optional[str] = None
    text: str = ""
    score: Optional[float] = None
    rail: Optional[str] = None
    canned: Optional[str] = None  # allowed, but answered with this text instead of calling the model


ANSWER_MODES = ("auto", "quote", "generate")


class InputCheck(Protocol):
    def __call__(self, domain: Domain, history: Sequence[dict], message: str) -> Verdict: ...


class StreamStage(Protocol):
    """Rewrites streamed text (the Taiwan normalizer): push pieces, flush at the end."""

    def push(self, text: str) -> str: ...

    def flush(self) -> str: ...


def check_not_empty(domain: Domain, history: Sequence[dict], message: str) -> Verdict:
    if not message.strip():
        return Verdict(False, "empty", "請輸入問題。" + domain.greeting, rail="message limits")
    return Verdict(True)


class Pipeline:
    """One domain's guarded turn: input checks → prompt → streaming generation → stream stages."""

    def __init__(self, domain: Domain, backend: ChatBackend, *,
                 input_checks: Sequence[InputCheck] = (check_not_empty,),
                 stream_stages: Sequence[Callable[[], StreamStage]] = (),
                 quote_stages: Optional[Sequence[Callable[[], StreamStage]]] = None,
                 output_check: Optional[Callable[[str, str], Optional[Verdict]]] = None,
                 retrieve: Optional[Callable[..., Optional[Grounding]]] = None,
                 answer_mode: str = "auto",
                 on_record: Sequence[Callable[["TurnRecord", str], None]] = ()):
        self.domain = domain
        self.backend = backend
        self.input_checks = list(input_checks)
        self.stream_stages = list(stream_stages)
        # Quoted document text is shown as written: the guards run on it, the normalizer does not
        # (the documents are the domain's own text: 保存 in a quote stays 保存). Default: every stage.
        self.quote_stages = list(stream_stages if quote_stages is None else quote_stages)
        self.output_check = output_check
        self.retrieve = retrieve
        if answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}")
        self.answer_mode = answer_mode
        self.on_record = list(on_record)

    def run(self, message: str, history: Sequence[dict] = (),
            cancel: Optional[threading.Event] = None, access: str = "public") -> Iterator[Event]:
        """The turn's events; the last one is always a FinalEvent, which also goes to on_record.
        `access` is the user's level: only documents at or below it can reach the prompt or answer."""
        for event in self._events(message, history, cancel, access):
            if isinstance(event, FinalEvent):
                for record_to in self.on_record:
                    record_to(event.record, message)
            yield event

    def _events(self, message, history, cancel, access) -> Iterator[Event]:
        started = time.perf_counter()
        record = TurnRecord(domain=self.domain.id)
        verdict = self._check_input(history, message, record)
        record.timings["checks_ms"] = _ms_since(started)
        if not verdict.allow:
            yield from self._refuse(verdict, record, started)
            return
        if verdict.canned is not None:
            record.answer, record.reason = verdict.canned, verdict.reason
            record.timings["total_ms"] = _ms_since(started)
            yield TextEvent(verdict.canned)
            yield FinalEvent(record)
            return
        grounding = self.retrieve(self.domain, history, message, access) if self.retrieve else None
        record.timings["retrieval_ms"] = round(_ms_since(started) - record.timings["checks_ms"], 2)
        quotes = grounding is not None and self._quotes(self.backend.info())
        if grounding is not None and not grounding.documents and quotes:
            yield from self._answer_without_model(message, no_documents_answer(self.domain), "no_documents", [],
                                                  record, started, abstained=True)
        elif grounding is not None and grounding.documents and not grounding.passages:
            yield from self._answer_without_model(message, not_found_answer(self.domain), "no_sources", [],
                                                  record, started, abstained=True)
        elif quotes and grounding.documents:
            yield from self._quote(message, grounding, record, started)
        else:
            yield from self._generate(message, history, cancel, record, started, grounding.passages if grounding else [])

    def _quote(self, message: str, grounding: Grounding, record: TurnRecord, started: float) -> Iterator[Event]:
        if grounding.abstained:
            text = abstain_answer(self.domain, grounding)
            yield from self._answer_without_model(message, text, "abstained", [], record, started, abstained=True)
        else:
            yield from self._answer_without_model(message, quote_answer(grounding), "quoted", grounding.passages,
                                                  record, started, stages=self.quote_stages)

    def _quotes(self, info) -> bool:
        # A base model without a chat template invents facts even with passages in its prompt:
        # by default its turns are answered by quoting the passages instead.
        return self.answer_mode == "quote" or (self.answer_mode == "auto" and not info.has_chat_template)

    def _answer_without_model(self, message: str, text: str, reason: str, passages, record: TurnRecord,
                              started: float, abstained: bool = False, stages=None) -> Iterator[Event]:
        """Our own text (a quote or "not found"), through the same stream stages as model text
        (a quote through the quote stages)."""
        stages = [make() for make in (self.stream_stages if stages is None else stages)]
        try:
            shown = _through(stages, text) + _flush(stages)
        except OutputBlocked as blocked:
            yield from self._refuse(_blocked_verdict(blocked.blocked), record, started)
            return
        verdict = self.output_check(message, shown.strip()) if self.output_check else None
        if verdict is not None and not verdict.allow:
            yield from self._refuse(verdict, record, started)
            return
        record.answer, record.reason, record.abstained = shown.strip(), reason, abstained
        record.sources = [s for s in sources_of(passages, record.answer) if s["cited"]]
        record.timings["total_ms"] = _ms_since(started)
        yield TextEvent(shown)
        yield FinalEvent(record)

    def _check_input(self, history, message, record: TurnRecord) -> Verdict:
        for check in self.input_checks:
            verdict = check(self.domain, history, message)
            if verdict.score is not None:
                decision = "refuse" if not verdict.allow else ("greet" if verdict.canned is not None else "allow")
                record.gate = {"decision": decision, "score": round(verdict.score, 4)}
            if not verdict.allow or verdict.canned is not None:
                return verdict
        return Verdict(True)

    def _refuse(self, verdict: Verdict, record: TurnRecord, started: float) -> Iterator[Event]:
        record.refused, record.reason, record.answer = True, verdict.reason, verdict.text
        if verdict.rail:
            record.rails.append(verdict.rail)
        record.timings["total_ms"] = _ms_since(started)
        yield RefusalEvent(verdict.reason or "refused", verdict.text)
        yield FinalEvent(record)

    def _generate(self, message, history, cancel, record: TurnRecord, started: float,
                  passages: Sequence[Passage]) -> Iterator[Event]:
        info = self.backend.info()
        prompt = build_prompt(self.domain, history, message, chat_template=info.has_chat_template,
                              count_tokens=self.backend.count_tokens, n_ctx=info.n_ctx, passages=passages)
        record.model, record.model_called = info.name, True
        record.tokens["prompt"] = self.backend.count_tokens(_prompt_text(prompt))
        stages = [make() for make in self.stream_stages]
        pieces: list[str] = []
        first_token_at = None
        stream = self.backend.stream(prompt, sampling(self.domain), cancel)
        try:
            for piece in stream:
                first_token_at = first_token_at or time.perf_counter()
                record.tokens["completion"] += 1
                shown = _through(stages, piece)
                if shown:
                    pieces.append(shown)
                    yield TextEvent(shown)
            tail = _flush(stages)
        except OutputBlocked as blocked:
            # The piece that broke a rule was never shown; what was shown before it stays.
            _finish_timings(record, started, first_token_at)
            yield from self._refuse(_blocked_verdict(blocked.blocked), record, started)
            return
        finally:
            stream.close()
        record.stopped = bool(cancel is not None and cancel.is_set())
        if tail:
            pieces.append(tail)
            yield TextEvent(tail)
        record.answer = "".join(pieces).strip()
        record.sources = sources_of(passages, record.answer)
        _finish_timings(record, started, first_token_at)
        verdict = self.output_check(message, record.answer) if self.output_check else None
        if verdict is not None and not verdict.allow:
            yield from self._refuse(verdict, record, started)
            return
        yield FinalEvent(record)


def _blocked_verdict(blocked) -> Verdict:
    return Verdict(False, blocked.reason, blocked.text, rail=blocked.rail)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, CompletionPrompt):
        return prompt.text
    return "\n".join(message["content"] for message in prompt.messages)


def sampling(domain: Domain) -> SamplingSettings:
    g = domain.generation
    return SamplingSettings(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                            repeat_penalty=g.repeat_penalty)


def _through(stages: list[StreamStage], text: str) -> str:
    for stage in stages:
        text = stage.push(text)
    return text


def _flush(stages: list[StreamStage]) -> str:
    # Each stage's flush output still has to pass through the stages after it.
    text = ""
    for stage in stages:
        text = stage.push(text) + stage.flush() if text else stage.flush()
    return text


def _finish_timings(record: TurnRecord, started: float, first_token_at: Optional[float]) -> None:
    now = time.perf_counter()
    record.timings["total_ms"] = _ms_since(started)
    if first_token_at is not None:
        record.timings["first_token_ms"] = round((first_token_at - started) * 1000, 2)
        generating = now - first_token_at
        if generating > 0 and record.tokens["completion"] > 1:
            record.timings["tokens_per_s"] = round((record.tokens["completion"] - 1) / generating, 2)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
