"""Question analysis: returns what a question asks (its type, its subjects, the terms of its predicate)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Iterable, Sequence

import yaml

# Question types, first match wins: the more specific patterns come before the general ones.
QUESTION_TYPES: tuple[tuple[str, str], ...] = (
    ("compare", r"差別|差在|差異|區別|不同|比較一下|做比較|的比較|比較起來|(誰|哪個|哪一個|哪位).{0,12}比較|相比|比起|異同|有何不同|有什麼不一樣|差很多|差多少|哪個好|\bvs\.?(?![a-z])|versus|differ|compared?\b"),
    ("how_old", r"幾歲|多少歲|多大年紀|年紀|享年|how old|\bage\b"),
    ("duration", r"多久|多長時間|多少年|幾年|how long"),
    ("when", r"哪一?年|何年|何時|什麼時候|什麼年代|年份|哪個年代|哪一天|\bwhen\b|what year|which year"),
    ("how_many", r"幾[個次位種組名人項條本卷冊級層道座艘萬千百部種類套條支]|多少|how many|how much|number of|幾"),
    ("why", r"為什麼|為何|為啥|何故|原因|怎麼會|\bwhy\b|what for|purpose"),
    ("where", r"哪裡|哪兒|何處|何地|哪個地方|什麼地方|在哪|哪裏|去哪|\bwhere\b"),
    ("who", r"誰|哪位|什麼人|哪個人|\bwho\b|\bwhom\b|\bwhose\b"),
    ("list", r"有哪些|哪些|包括什麼|包含什麼|包括哪|有什麼.{0,6}(種類|類型|指令|模式|作品|著作)|列出|\blist\b|what are the"),
    ("how", r"如何|怎麼|怎樣|怎麼做|\bhow\b"),
    ("definition", r"是什麼|什麼是|是甚麼|是啥|指什麼|什麼意思|介紹|簡介|\bwhat is\b|\bwhat's\b|\bwhat are\b|explain|是做什麼|做什麼用|用途|拿來做什麼|用來做什麼|做什麼的|是幹嘛的|有什麼用|作用是"),
    ("yes_no", r"嗎|是不是|有沒有|是否|能不能|可不可以|^(is|are|can|does|do|did|was|were)\b"),
)
_TYPE_PATTERNS = tuple((name, re.compile(pattern)) for name, pattern in QUESTION_TYPES)

# What each type needs to see in an answering sentence. The types listed in REQUIRED_EVIDENCE are
# questions about one fact (a year, a count, an age): a sentence without it does not answer them.
EVIDENCE = {
    "when": r"\d{3,4}\s*年|\d{4}\s*[–\-~]|[元一二三四五六七八九十]{1,3}年|(?<!\d)(1[3-9]|20)\d{2}(?!\d)|年間",
    "duration": r"\d+\s*[多餘]?\s*年|[一二兩三四五六七八九十百]+\s*[多餘]?\s*年|年間|\d{4}\s*[–\-~]\s*\d{2,4}",
    # a count, not a year: 三萬多人, 16 個, 七次 (1380 年 is a date)
    "how_many": r"(?<!\d)\d{1,3}(?!\d)(?:\.\d+)?\s*(?!年)(?:[多餘]?\s*[個次位種組名人項條本卷冊級層道座艘部類套支萬千百億]|[a-z%])"
                r"|[一二兩三四五六七八九十百千萬幾]+[多餘]?\s*[個次位種組名人項條本卷冊級層道座艘部類套支萬千百億]|數十|數百|上百|上千",
    "how_old": r"歲|\d{4}\s*[–\-~—]\s*約?\s*\d{4}|享年",
    "why": r"因|由於|為了|罪名|以致|導致|所以|於是|使得|為由|因此|目的|避免|以便|才能|讓|使|because|so that|in order",
    "where": r"[\u4e00-\u9fff]{1,4}(省|府|州|縣|城|島|灣|港|關|堡|寺|山|衛|鎮|京|海|江|河|洋|國|地區)|到|至|在|於",
    "definition": r"是|指|為|讓|即|稱為|負責|用來|用於|提供|定義|存放|記錄|保存|控制|指向|決定|：|\bis\b|\bare\b|refers",
    "list": r"、.*、|包括|包含|分為|有[一二兩三四五六七八九十\d]+[種個類]",
    "how": r"以|用|透過|藉|率|經由|先|再|然後|後|方式|方法|靠",
}
_NUMBER = r"(?:\d+|[一二兩三四五六七八九十百千萬幾數]+)"
_UNIT = re.compile(r"(?:幾|多少)\s*([個次位種組名人項條本卷冊級層道座艘部類套支])")
REQUIRED_EVIDENCE = frozenset({"when", "duration", "how_many", "how_old"})
_EVIDENCE = {name: re.compile(pattern) for name, pattern in EVIDENCE.items()}

# Words that carry no predicate: question words, pronouns, particles, politeness. Removed before
# the predicate's terms are read; longest first so 為什麼 goes before 什麼.
_FUNCTION_WORDS = sorted("""
為什麼 為何 為啥 什麼時候 什麼 甚麼 怎麼樣 怎麼 怎樣 如何 哪一年 哪一個 哪一位 哪一 哪裡 哪裏 哪兒 哪個 哪些 哪位 哪 誰
幾歲 多少 幾 是不是 有沒有 是否 能不能 可不可以 可以 嗎 呢 吧 啊 呀 欸 喔 哦 嘛 啦 耶 請問 請 問一下 一下 介紹 簡介 告訴 說明
解釋 我們 我 你們 你 妳 您 想要 想 知道 了解 瞭解 一些 有關 關於 相關 的話 的 了 是 在 有 和 與 跟 及 以及 或 還是 他們 他 她
它們 它 牠 其 這個 這些 這 那個 那些 那麼 那 個 些 一 被 把 對 得 著 就 都 也 還 又 所 麼 之 而 要 會 能 該 應該 到底 究竟
嗎 呢 曾經 曾 主要 具體 大概 一般 通常 最 很 非常 比較 差別 差在 差異 區別 不同 相比 比起 異同 多久 年紀 何時 何處 何地
時候 什么 怎么 为什么 哪里 吗 么 意思 定義 做了 做過 做 幹 搞 事情 事蹟 事 經過 過程 情形 情況 發生 拿來 用來 用途 幹嘛
一定 裡面 裏面 當中 其中 之中 大家 需要 到底 方面 部分 一個 一種 哪種 哪一種 種 樣 這樣 那樣 怎麼了 如何了 開始的 的時候
才 真的 真 不是 不 最近 想問 問一下 有名 總共 一共 前後 好不容易 那麼 這麼 最多 最少 為了 爆發 兩個人 兩人 當時 那時
一生 這輩子 先 再 也是 他們兩個 她們兩個 兩個 這兩本 兩本 兩位 兩者 這兩 兩
""".split(), key=len, reverse=True)
_ENGLISH_STOPWORDS = frozenset("""
a an the of in on at for to from by with about between and or is are was were be been being do does did
done how what whats what's which who whom whose why when where can could would should will shall may might
it its this that these those there their they them he she his her i me my we our you your tell explain
please difference differences compare compared versus vs than more most much many number list some any
mean means meaning used use kind kinds type types way does doing also just only really exactly old
define defines defined there exist exists have has had i
""".split())
_LATER = re.compile(r"後來|最後|結局|下場|之後|然後呢|後半生|晚年|later|afterwards|in the end")
_FOLLOW_UP = re.compile(r"^(那|而|還有|另外|then|and|what about)|^(他|她|它|其|這|那)|(他|她|它|他們|她們|這個|那個|呢)[？?]?$")
_CJK = re.compile(r"[\u3400-\u9fff]+")
_ASCII = re.compile(r"[a-z0-9][a-z0-9_./+-]*[a-z0-9+]|[a-z0-9]")
GAP = "|"
_VARIANTS = str.maketrans("爲裏着綫衆峯羣僞啓麪於捨", "為裡著線眾峰群偽啟麵于舍")
# Words a question type already implies: "幾歲" asks about the life span, so 過世／活到 add nothing.
_IMPLIED = {"how_old": {"活到", "活", "享年", "壽命", "壽", "時候", "死", "過世", "去世", "逝世", "被殺", "處死", "卒", "死的"}}


def fold(text: str) -> str:
    """Variant characters OpenCC leaves apart (爲/為, 裏/裡) folded to one form, for matching only."""
    return text.translate(_VARIANTS)


@dataclass(frozen=True)
class Term:
    """One predicate term as written in the question, and every form that counts as a match."""

    text: str
    forms: tuple[str, ...]
    soft: bool = False  # a run no word list knows: sharing some of its characters counts in part
    docs: frozenset = frozenset()  # a name's own documents: any sentence of them holds it


@dataclass(frozen=True)
class Question:
    text: str                  # normalized
    qtype: str
    subjects: tuple[str, ...]  # the names it mentions (normalized), longest first
    terms: tuple[Term, ...]    # what it asks about those names
    later: bool = False        # asks what happened afterwards (他後來呢？)
    unit: str = ""             # what a count question counts in (幾種格式 → 種), "" for any
    follow_up: bool = False    # leans on the conversation (pronoun, ellipsis, no name of its own)

    def evidence(self, sentence: str) -> bool:
        if self.qtype == "how_many" and self.unit and self.unit != "個":
            # 幾種格式 is not answered by "16 位元": the count must be in the unit asked about.
            return bool(re.search(_NUMBER + r"\s*[多餘]?\s*" + re.escape(self.unit), sentence))
        pattern = _EVIDENCE.get(self.qtype)
        return bool(pattern and pattern.search(sentence))


class Synonyms:
    """Groups of words that mean the same thing here; each form maps to every form of its groups."""

    def __init__(self, groups: Iterable[Sequence[str]], normalize):
        self._forms: dict[str, set[str]] = {}
        for group in groups:
            forms = {normalize(str(word)) for word in group if str(word).strip()}
            for form in forms:
                self._forms.setdefault(form, set()).update(forms)
        self._cjk_words = sorted((f for f in self._forms if not f.isascii()), key=len, reverse=True)
        self._max_len = max((len(w) for w in self._cjk_words), default=1)
        self._ascii_phrases = sorted((f for f in self._forms if f.isascii() and " " in f), key=len, reverse=True)

    def ascii_phrases_in(self, text: str) -> list[str]:
        """Known English phrases of more than one word (stack pointer, supervisor mode) in the text."""
        found = []
        for phrase in self._ascii_phrases:
            for form in (phrase, phrase + "s"):  # privilege levels → privilege level
                start = text.find(form)
                if start >= 0 and _word_bounded(text, start, start + len(form)):
                    found.append(form)
                    break
        return found

    def singular(self, word: str) -> str:
        """levels → level when only the singular is known."""
        if word.endswith("s") and len(word) > 3 and word not in self._forms and word[:-1] in self._forms:
            return word[:-1]
        return word

    def forms(self, word: str) -> tuple[str, ...]:
        # A one-character form stands in only for itself: 子 inside 天子 is not 兒子.
        alternatives = {form for form in self._forms.get(word, ()) if len(form) > 1 or form == word}
        return tuple(sorted(alternatives | {word}, key=len, reverse=True))

    def known(self, word: str) -> bool:
        return word in self._forms

    def longest_at(self, text: str, start: int) -> str:
        for size in range(min(self._max_len, len(text) - start), 1, -1):
            if text[start:start + size] in self._forms:
                return text[start:start + size]
        return ""


@lru_cache(maxsize=1)
def general_alias_groups() -> tuple[tuple[str, ...], ...]:
    """The zh/en synonym groups shipped with the package (guardedchat/data/aliases.yaml)."""
    data = yaml.safe_load(files("guardedchat.data").joinpath("aliases.yaml").read_text(encoding="utf-8"))
    return tuple(tuple(str(word) for word in group) for group in data.get("groups", []))


def question_type(text: str) -> str:
    for name, pattern in _TYPE_PATTERNS:
        if pattern.search(text):
            return name
    return "what"


def find_names(text: str, names: Sequence[str]) -> list[str]:
    """The names (longest first, not overlapping) that occur in the normalized text."""
    found, taken = [], [False] * len(text)
    for name in names:
        start = text.find(name)
        while start >= 0:
            end = start + len(name)
            if not any(taken[start:end]) and _word_bounded(text, start, end):
                found.append(name)
                taken[start:end] = [True] * len(name)
                break
            start = text.find(name, start + 1)
    return found


def _word_bounded(text: str, start: int, end: int) -> bool:
    # An ASCII name must stand as a word: "sp" is not in "spec".
    if not text[start:end].isascii():
        return True
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    return not (before.isascii() and before.isalnum()) and not (after.isascii() and after.isalnum())


def contains(sentence: str, form: str) -> bool:
    """Whether a normalized sentence holds the form (an ASCII form as a whole word)."""
    start = sentence.find(form)
    while start >= 0:
        if _word_bounded(sentence, start, start + len(form)):
            return True
        start = sentence.find(form, start + 1)
    return False


def analyze(text: str, names: Sequence[str], synonyms: Synonyms) -> Question:
    """Type, subjects and predicate terms of one normalized question."""
    subjects = find_names(text, names)
    rest = text
    for name in subjects:
        rest = rest.replace(name, GAP)
    qtype = question_type(text)
    implied = _IMPLIED.get(qtype, set())
    terms = [term for term in predicate_terms(rest, synonyms) if term.text not in implied]
    unit = _UNIT.search(text)
    return Question(text, qtype, tuple(subjects), tuple(terms), unit=unit.group(1) if unit else "",
                    later=bool(_LATER.search(text)), follow_up=not subjects or bool(_FOLLOW_UP.search(text)))


def predicate_terms(text: str, synonyms: Synonyms) -> list[Term]:
    """The terms left once names and function words are gone: known words (and English phrases)
    whole, other runs of characters as soft terms."""
    text = _LATER.sub(GAP, text)
    terms: list[Term] = []
    for phrase in synonyms.ascii_phrases_in(text):
        terms.append(Term(phrase, synonyms.forms(phrase.removesuffix("s") if not synonyms.known(phrase) else phrase)))
        text = text.replace(phrase, GAP)
    for word in _ASCII.findall(text):
        if word not in _ENGLISH_STOPWORDS and not word.isdigit():
            word = synonyms.singular(word)
            terms.append(Term(word, synonyms.forms(word)))
    for run in _CJK.findall(_strip_function_words(text, synonyms)):
        terms.extend(_run_terms(run, synonyms))
    unique = {term.text: term for term in terms}
    return list(unique.values())


def _strip_function_words(text: str, synonyms: Synonyms) -> str:
    out, i = [], 0
    while i < len(text):
        known = synonyms.longest_at(text, i)  # a known word (被殺, 過世) keeps the characters it holds
        word = next((w for w in _FUNCTION_WORDS if text.startswith(w, i)), "")
        if known and len(known) >= len(word):
            out.append(known)
            i += len(known)
        elif word:
            out.append(GAP)
            i += len(word)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _run_terms(run: str, synonyms: Synonyms) -> list[Term]:
    terms, loose, i = [], "", 0
    while i < len(run):
        word = synonyms.longest_at(run, i)
        if word:
            if loose:
                terms.append(Term(loose, synonyms.forms(loose), soft=len(loose) > 1))
            loose = ""
            terms.append(Term(word, synonyms.forms(word)))
            i += len(word)
        else:
            loose += run[i]
            i += 1
    if loose:
        terms.append(Term(loose, synonyms.forms(loose), soft=len(loose) > 1))
    return terms
