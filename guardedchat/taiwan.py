"""Taiwan vocabulary: returns text rewritten to Taiwan usage, in batch or as a stream.

How it avoids plain OpenCC's damage:
- Only text that contains simplified-only characters (not in Big5) gets a simplified→traditional
  character mapping; Taiwan text (台, 干擾, 里長, 于, 范, 岳陽) never goes through one.
- Vocabulary (軟件→軟體) is converted by OpenCC's Taiwan phrase dictionary *plus* our curated
  override list (data/taiwan_vocab.yaml) and the domain's own keep/replace lists, loaded as an OpenCC
  text dictionary in front of it, so 法律程序, 服務窗口, 電視頻道 match as longer phrases and stay.
- Code (fenced and inline), URLs and file paths pass through untouched.
- Text is cut only at whitespace and punctuation (no dictionary key contains either), and before
  its first text a stream also lets out the digits that open a run (no key contains an ASCII digit
  either), which is why the streaming output equals the batch output for any chunking.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Mapping, Optional

import yaml

from .models import cache_dir

# Whitespace, CJK punctuation and the ASCII punctuation that never occurs inside a URL's host part.
BOUNDARY_CHARS = (" \t\r\n\f\v\u3000，。、；：？！「」『』（）《》〈〉【】〔〕…—～·．！＂＇,;!?()[]{}\"'<>"
                  "\u00a0\u2018\u2019\u201c\u201d\ufe50\ufe51\ufe52")
_BOUNDARY_SET = frozenset(BOUNDARY_CHARS)
_B = re.escape(BOUNDARY_CHARS)
_BOUNDARY_SPLIT = re.compile(f"([{_B}]+)")
_BOUNDARY = re.compile(f"[{_B}]")
_ASCII_DIGIT = re.compile("[0-9]")
_ASCII_DIGITS = re.compile("[0-9]+")
# URLs and paths never cross a boundary character, so matching them in a long text gives the same
# pieces as matching them run by run (what streaming sees).
_PATH_PART = rf"(?:[^/\\{_B}]+(?=[/\\])|[A-Za-z0-9_.\-]+)"  # a CJK component needs a separator after it
_URL_OR_PATH = re.compile(
    rf"(?:https?://|ftp://|www\.)[^{_B}]+"
    rf"|(?:(?:^|(?<=[{_B}]))|(?<![A-Za-z0-9_.])(?:~|\.{{1,2}}|[A-Za-z]:))[/\\]{_PATH_PART}(?:[/\\]{_PATH_PART})*[/\\]?"
    # a path glued to the text before it (請執行/usr/bin/gcc) must start with an ASCII component
    rf"|(?<![A-Za-z0-9_.])[/\\][A-Za-z0-9_.\-]+(?:[/\\]{_PATH_PART})*[/\\]?",
    re.IGNORECASE)
_SPECIAL_START = re.compile(r"[~./\\]|https?://|ftp://|www\.|[A-Za-z]:[/\\]", re.IGNORECASE)

# Traditional text from OpenCC's s2t is "OpenCC standard"; these are the forms Taiwan writes. Only
# characters that never appear in Taiwan text are listed, so applying the map to Taiwan text is safe.
SAFE_VARIANTS = str.maketrans({"裏": "裡", "着": "著", "爲": "為", "衆": "眾", "羣": "群", "峯": "峰",
                               "僞": "偽", "啓": "啟", "綫": "線", "牀": "床", "麪": "麵", "竈": "灶",
                               "纔": "才", "脣": "唇", "擡": "抬", "嫺": "嫻", "鉢": "缽", "衞": "衛",
                               "説": "說", "悦": "悅", "綉": "繡", "鷄": "雞", "囘": "回", "眞": "真"})
SAFE_VARIANTS_TABLE = "".join(f"{chr(k)}\t{v}\n" for k, v in sorted(SAFE_VARIANTS.items()))
# After s2t on simplified text: Taiwan keeps 台 (台灣, 台北) where OpenCC writes 臺.
SIMPLIFIED_FIXES = str.maketrans({"臺": "台"})


@dataclass(frozen=True)
class Vocabulary:
    """Extra keep/replace entries (a domain's), on top of the curated list."""

    keep: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, keep: Iterable[str] = (), replace: Optional[Mapping[str, str]] = None) -> "Vocabulary":
        return cls(tuple(sorted(set(keep))), tuple(sorted((replace or {}).items())))


@lru_cache(maxsize=1)
def curated_vocabulary() -> dict:
    """The project's override list: replace, keep and simplified_replace entries (see the YAML's header)."""
    text = files("guardedchat.data").joinpath("taiwan_vocab.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _opencc(config: str):
    import opencc

    return opencc.OpenCC(config)


def _opencc_data_dir() -> Path:
    import opencc

    return Path(opencc.__file__).resolve().parent / "clib" / "share" / "opencc"


class _Converters:
    """OpenCC converters and character sets, built once per vocabulary (converters are thread-safe)."""

    def __init__(self, vocabulary: Vocabulary):
        self.s2t = _opencc("s2t")
        self.vocab = _opencc(str(_write_vocab_config(_dictionary_entries(vocabulary), variants=True)))
        self.to_traditional = _opencc(str(_write_traditional_config()))
        self.vocab_simplified = _opencc(str(_write_vocab_config(_dictionary_entries(vocabulary, simplified=True),
                                                                variants=False)))
        self.simplified_only, self.traditional_only, self.ambiguous = _character_classes()
        # No key of OpenCC's dictionaries contains an ASCII digit (checked in its 1.4.2 sources); when
        # ours don't either, a digit is never part of a phrase and converts to itself in either mode.
        self.digits_stand_alone = not any(_ASCII_DIGIT.search(key) for key in _dictionary_entries(vocabulary, True))


def _dictionary_entries(vocabulary: Vocabulary, simplified: bool = False) -> dict[str, str]:
    """Our dictionary: curated replace and keep entries, then the domain's, which win on conflict."""
    curated = curated_vocabulary()
    entries = {item[0]: item[1] for item in curated["replace"]}
    entries.update({item[0]: item[0] for item in curated["keep"]})
    if simplified:
        entries.update({item[0]: item[1] for item in curated["simplified_replace"]})
    entries.update(dict(vocabulary.replace))
    entries.update({phrase: phrase for phrase in vocabulary.keep})
    return {k: v for k, v in entries.items() if k and not (_BOUNDARY_SET & set(k))}


def _write_vocab_config(entries: dict[str, str], variants: bool) -> Path:
    """An OpenCC config for traditional text: (safe variants, then) our dictionary in front of
    OpenCC's Taiwan phrases; no simplified→traditional character mapping at all.

    Files are named by a hash of their content, so a changed list never reuses a stale file.
    """
    data, folder = _opencc_data_dir(), _config_folder()
    ours = _text_dict(folder, "vocab", "".join(f"{k}\t{v}\n" for k, v in sorted(entries.items())))
    vocab = {"type": "group", "match_policy": "union", "dicts": [ours, _ocd2(data, "TWPhrases")]}
    chain = ([{"dict": _text_dict(folder, "variants", SAFE_VARIANTS_TABLE)}] if variants else []) + [{"dict": vocab}]
    return _write_spec(folder, chain, vocab)


def _write_traditional_config() -> Path:
    """Simplified → traditional characters as Taiwan writes them: s2t, 臺→台, Taiwan variants.

    A separate call from the vocabulary step on purpose: OpenCC segments once per call, and
    segments cut on the simplified input (了账|号) would hide the traditional phrase (賬號) from it.
    """
    data, folder = _opencc_data_dir(), _config_folder()
    st_phrases = {"type": "group", "match_policy": "union",
                  "dicts": [_ocd2(data, "STPhrases"), _ocd2(data, "STPhrases_GeneratedFromRegionalPhrases")]}
    chain = [
        {"dict": {"type": "group", "match_policy": "short_circuit", "dicts": [st_phrases, _ocd2(data, "STCharacters")]}},
        {"dict": _text_dict(folder, "tai", "臺\t台\n")},
        {"dict": {"type": "group", "match_policy": "short_circuit",
                  "dicts": [_ocd2(data, "TWVariantsPhrases"), _ocd2(data, "TWVariants")]}},
    ]
    return _write_spec(folder, chain, st_phrases)


def _config_folder() -> Path:
    folder = cache_dir() / "opencc"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_spec(folder: Path, chain: list, segmentation: dict) -> Path:
    spec = json.dumps({"name": "GuardedChat Taiwan vocabulary", "conversion_chain": chain,
                       "segmentation": {"type": "mmseg", "dict": segmentation}}, ensure_ascii=False)
    return _write_once(folder, "taiwan", ".json", spec)


def _text_dict(folder: Path, name: str, body: str) -> dict:
    return {"type": "text", "file": str(_write_once(folder, name, ".txt", body))}


def _write_once(folder: Path, name: str, suffix: str, body: str) -> Path:
    """folder/name-<hash of body>.suffix, written atomically if it is not there yet."""
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    path = folder / f"{name}-{digest}{suffix}"
    if not path.exists():
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(body, encoding="utf-8")
        partial.replace(path)
    return path


def _ocd2(data: Path, name: str) -> dict:
    return {"type": "ocd2", "file": str(data / f"{name}.ocd2")}


@lru_cache(maxsize=1)
def _character_classes() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """Regexes for characters only simplified text uses, only traditional text uses, and both use.

    A character OpenCC would convert but that Big5 can encode (台, 干, 里, 于, 范, 岳, 后, 么) is
    valid Taiwan text and proves nothing alone; 们, 软, 这 (not in Big5) prove the text is simplified.
    """
    chars = [chr(code) for code in range(0x4E00, 0xA000)]
    joined = "\n".join(chars)
    to_trad = _opencc("s2t").convert(joined).split("\n")
    to_simp = _opencc("t2s").convert(joined).split("\n")
    simplified, traditional, ambiguous = [], [], []
    for char, trad, simp in zip(chars, to_trad, to_simp):
        big5 = _in_big5(char)
        if trad != char and not big5:
            simplified.append(char)
        elif trad != char:
            ambiguous.append(char)
        elif simp != char and big5:
            traditional.append(char)
    return _char_class(simplified), _char_class(traditional), _char_class(ambiguous)


def _in_big5(char: str) -> bool:
    try:
        char.encode("big5")
    except UnicodeEncodeError:
        return False
    return True


def _char_class(chars: list[str]) -> re.Pattern:
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


_converters: dict[Vocabulary, _Converters] = {}
_converters_lock = threading.Lock()


def _get_converters(vocabulary: Vocabulary) -> _Converters:
    with _converters_lock:
        if vocabulary not in _converters:
            _converters[vocabulary] = _Converters(vocabulary)
        return _converters[vocabulary]


@dataclass
class _State:
    """What carries over from one piece of text to the next."""

    simplified: bool = False   # mode of the last text that showed evidence either way
    in_fence: bool = False
    fence_closing: bool = False
    line_start: bool = True


class TaiwanNormalizer:
    """Rewrites text to Taiwan usage. `convert` for whole texts, `stream()` for streamed ones."""

    def __init__(self, vocabulary: Vocabulary = Vocabulary()):
        self.vocabulary = vocabulary
        self._converters: Optional[_Converters] = None

    @property
    def _conv(self) -> _Converters:
        if self._converters is None:  # built on first use, shared by normalizers with the same vocabulary
            self._converters = _get_converters(self.vocabulary)
        return self._converters

    def convert(self, text: str) -> str:
        out, consumed = self._process(_clean(text), _State(), final=True)
        return out

    def stream(self) -> "TaiwanStream":
        return TaiwanStream(self)

    def _process(self, buffer: str, state: _State, final: bool, eager_digits: bool = False) -> tuple[str, int]:
        """Convert as much of buffer as can be decided now; return (output, characters consumed).
        eager_digits: also let out the digits that open the unfinished run (see _leading_digits_end)."""
        out: list[str] = []
        i, n = 0, len(buffer)
        while i < n:
            if state.in_fence:
                step = _fence_step(buffer, i, state, final)
                if step == i:
                    break
                out.append(buffer[i:step])
                i = step
                continue
            tick = buffer.find("`", i)
            end = n if tick == -1 else tick
            if tick == -1 and not final:
                end = _last_boundary(buffer, i, n)
                if eager_digits and self._conv.digits_stand_alone:
                    end = _leading_digits_end(buffer, end, n)
            if end > i:
                out.append(self._prose(buffer[i:end], state))
                state.line_start = buffer[end - 1] == "\n"
                i = end
            if i >= n or i != tick:
                break
            step = _backtick_step(buffer, i, state, final)
            if step == i:
                break
            out.append(buffer[i:step])
            i = step
        return "".join(out), i

    def _prose(self, text: str, state: _State) -> str:
        """Prose (no backticks): code-like pieces raw, the rest converted by the mode it shows.

        The mode changes only at a run that shows evidence, so long stretches without contrary
        evidence go to OpenCC in one call; this gives exactly what run-by-run processing gives.
        """
        conv, out = self._conv, []
        while text:
            contrary = (conv.traditional_only if state.simplified else conv.simplified_only).search(text)
            cut = _run_start(text, contrary.start()) if contrary else len(text)
            head, text = text[:cut], text[cut:]
            if head:
                out.append(self._stretch(head, state))
            if text:  # the run holding the contrary evidence decides the mode from here on
                end = _run_end(text, contrary.start() - cut)
                out.append(self._runs(text[:end], state))
                text = text[end:]
        return "".join(out)

    def _stretch(self, text: str, state: _State) -> str:
        """Text without evidence against the current mode: one conversion when nothing can flip it."""
        if not state.simplified and self._shared_characters_prove_simplified(text):
            return self._runs(text, state)
        return "".join(p if raw else self._convert(state.simplified, p) for p, raw in _split_specials(text))

    def _shared_characters_prove_simplified(self, text: str) -> bool:
        """Whether some run of text, read on its own, would switch traditional mode to simplified.

        Only runs with shared characters (台, 后, 么) and no traditional-only ones can (然后, 什么).
        """
        conv, checked_until = self._conv, 0
        for match in conv.ambiguous.finditer(text):
            if match.start() < checked_until:
                continue
            start, checked_until = _run_start(text, match.start()), _run_end(text, match.start())
            for piece, raw in _split_specials(text[start:checked_until]):
                if not raw and self._mode(piece, False):
                    return True
        return False

    def _runs(self, text: str, state: _State) -> str:
        """Run-by-run processing: each run between boundaries may switch the mode."""
        groups: list[list] = []  # [simplified?, [pieces]] or [None, raw]
        for index, part in enumerate(_BOUNDARY_SPLIT.split(text)):
            if not part:
                continue
            if index % 2 == 1:  # a run of boundary characters: joins the current group
                _append(groups, state.simplified, part)
                continue
            for piece, raw in _split_specials(part):
                if raw:
                    groups.append([None, piece])
                    continue
                state.simplified = self._mode(piece, state.simplified)
                _append(groups, state.simplified, piece)
        return "".join(g[1] if g[0] is None else self._convert(g[0], "".join(g[1])) for g in groups)

    def _mode(self, piece: str, previous: bool) -> bool:
        conv = self._conv
        if conv.simplified_only.search(piece):
            return True
        if conv.traditional_only.search(piece):
            return False
        if conv.ambiguous.search(piece):
            # Only shared characters (然后, 什么, 里面 vs 台中, 皇后): simplified if OpenCC, reading it
            # as simplified, would change it beyond the 台/臺 spelling Taiwan keeps.
            if conv.s2t.convert(piece).translate(SIMPLIFIED_FIXES) != piece:
                return True
        return previous  # no evidence either way (digits, 台中, 的): keep the current mode

    def _convert(self, simplified: bool, text: str) -> str:
        if "\x00" in text:  # OpenCC takes C strings: a NUL would cut the text short
            return "\x00".join(self._convert(simplified, part) for part in text.split("\x00"))
        conv = self._conv
        if simplified:
            return conv.vocab_simplified.convert(conv.to_traditional.convert(text))
        return conv.vocab.convert(text)


def _run_start(text: str, position: int) -> int:
    """Start of the run (text between boundary characters) holding position."""
    index = position
    while index > 0 and text[index - 1] not in _BOUNDARY_SET:
        index -= 1
    return index


def _run_end(text: str, position: int) -> int:
    match = _BOUNDARY.search(text, position)
    return match.start() if match else len(text)


def _append(groups: list, simplified: bool, piece: str) -> None:
    if groups and groups[-1][0] is simplified:
        groups[-1][1].append(piece)
    else:
        groups.append([simplified, [piece]])


def _split_specials(text: str):
    """Split text into (piece, is_raw) pieces: URLs and file paths are raw, the rest is prose."""
    start = 0
    # Scanning with the full pattern costs at every character; try it only where one could start.
    for candidate in _SPECIAL_START.finditer(text):
        if candidate.start() < start:
            continue
        match = _URL_OR_PATH.match(text, candidate.start())
        if not match:
            continue
        if match.start() > start:
            yield text[start:match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def _last_boundary(buffer: str, start: int, end: int) -> int:
    """One past the last boundary character in buffer[start:end], or start if there is none."""
    for index in range(end - 1, start - 1, -1):
        if buffer[index] in _BOUNDARY_SET:
            return index + 1
    return start


def _leading_digits_end(buffer: str, start: int, end: int) -> int:
    """Past the ASCII digits that open the unfinished run at buffer[start:end], all but the last.

    Models write numbers a digit per token ("1405 " is five tokens); waiting for the space after
    one delayed the first text of many answers by 50-100 ms. Digits convert to themselves, so they
    can go out at once; the last one stays, so the text that follows never starts a new piece right
    after a digit (a path there is only a path when nothing alphanumeric comes before it)."""
    digits = _ASCII_DIGITS.match(buffer, start, end)
    return max(start, digits.end() - 1) if digits else start


def _backtick_step(buffer: str, i: int, state: _State, final: bool) -> int:
    """At a backtick: open a fence, take inline code, or pass a lone backtick. Returns the new index."""
    if state.line_start:
        head = buffer[i:i + 3]
        if head == "```":
            state.in_fence, state.fence_closing, state.line_start = True, False, False
            return i + 3
        if len(head) < 3 and "```".startswith(head) and not final:
            return i  # could still become a fence
    close = _first_of(buffer, i + 1, "`\n")
    if close == -1:
        if not final:
            return i
        close = None
    state.line_start = False
    if close is not None and buffer[close] == "`":
        return close + 1
    return i + 1  # no closing backtick on this line: a lone backtick


def _fence_step(buffer: str, i: int, state: _State, final: bool) -> int:
    """Inside a fenced block everything is raw; a line starting with ``` ends it."""
    if state.line_start:
        head = buffer[i:i + 3]
        if len(head) < 3 and "```".startswith(head) and "\n" not in head and not final:
            return i
        state.fence_closing = head == "```"
        state.line_start = False
    newline = buffer.find("\n", i)
    if newline == -1:
        return len(buffer)
    state.line_start = True
    if state.fence_closing:
        state.in_fence = state.fence_closing = False
    return newline + 1


def _first_of(buffer: str, start: int, chars: str) -> int:
    positions = [p for p in (buffer.find(c, start) for c in chars) if p != -1]
    return min(positions) if positions else -1


_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Lone surrogates cannot be encoded (OpenCC would raise): replace them, keep everything else."""
    if not isinstance(text, str):
        text = str(text)
    return _SURROGATES.sub("\ufffd", text)


class TaiwanStream:
    """Push chunks, get back the text that is safe to show now; flush at the end."""

    def __init__(self, normalizer: TaiwanNormalizer):
        self.normalizer = normalizer
        self.buffer = ""
        self.state = _State()
        self.shown = False

    @property
    def held(self) -> int:
        """Characters received but not yet shown."""
        return len(self.buffer)

    def push(self, text: str) -> str:
        self.buffer += _clean(text)
        # Digits go out early only until the first text is shown: that is when waiting for the end of
        # a number is felt. Once text flows, each early digit would be one more piece (a wake-up of
        # every reader and a guard check) for nothing anyone notices.
        out, consumed = self.normalizer._process(self.buffer, self.state, final=False, eager_digits=not self.shown)
        self.buffer = self.buffer[consumed:]
        self.shown = self.shown or bool(out)
        return out

    def flush(self) -> str:
        out, _ = self.normalizer._process(self.buffer, self.state, final=True)
        self.buffer = ""
        return out


@lru_cache(maxsize=None)
def normalizer_for(keep: tuple[str, ...] = (), replace: tuple[tuple[str, str], ...] = ()) -> TaiwanNormalizer:
    return TaiwanNormalizer(Vocabulary(keep, replace))


def for_domain(domain) -> TaiwanNormalizer:
    """The normalizer with a domain's own keep/replace entries added."""
    vocabulary = Vocabulary.of(domain.vocabulary.keep, domain.vocabulary.replace)
    return normalizer_for(vocabulary.keep, vocabulary.replace)


def to_taiwan(text: str) -> str:
    """Batch conversion with the curated list only."""
    return normalizer_for().convert(text)


def plain_s2twp():
    """Plain OpenCC s2twp, the baseline the evaluation and benchmark compare against."""
    return _opencc("s2twp").convert
