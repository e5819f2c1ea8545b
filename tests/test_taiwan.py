"""Taiwan vocabulary: exact outputs, streaming equal to batch for any chunking, no input can break it."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardedchat.taiwan import TaiwanNormalizer, Vocabulary, normalizer_for, to_taiwan

from .conftest import ROOT, run_cli

BEHAVIOUR = [
    # simplified → traditional with Taiwan vocabulary
    ("软件和视频的信息", "軟體和影片的資訊"),
    ("内存不足，服务器宕机了。", "記憶體不足，伺服器當機了。"),
    ("产品质量、公交车、账户、智能手机", "產品品質、公車、帳戶、智慧型手機"),
    ("台湾的网络", "台灣的網路"),
    # traditional with mainland words: vocabulary only, no character mapping
    ("軟件、視頻、網絡", "軟體、影片、網路"),
    ("台灣的軟件", "台灣的軟體"),
    ("這裏着急爲什麼", "這裡著急為什麼"),  # OpenCC-standard variants become the forms Taiwan writes
    # already Taiwan: unchanged
    ("台北的干擾很少，主管准許里長于先生和范小姐去岳陽。", "台北的干擾很少，主管准許里長于先生和范小姐去岳陽。"),
    ("田徑項目、服務窗口、政府文件、法律程序、行政程序法", "田徑項目、服務窗口、政府文件、法律程序、行政程序法"),
    ("餐廳菜單，我支持你，找對象，經濟循環，住宅社區", "餐廳菜單，我支持你，找對象，經濟循環，住宅社區"),
    ("電視頻道、雄壯的士兵、質量守恆", "電視頻道、雄壯的士兵、質量守恆"),
    # code, URLs and paths untouched
    ("用 `print(\"软件\")` 输出", "用 `print(\"软件\")` 輸出"),
    ("```\n软件\n```\n软件", "```\n软件\n```\n軟體"),
    ("见 https://example.com/软件 说明", "見 https://example.com/软件 說明"),
    ("放在 /opt/软件/bin 里面", "放在 /opt/软件/bin 裡面"),
    # edge cases
    ("", ""),
    ("`未閉合的反引號 软件", "`未閉合的反引號 軟體"),
    ("```\n未閉合的程式碼區塊 软件", "```\n未閉合的程式碼區塊 软件"),
]


@pytest.mark.parametrize("text,expected", BEHAVIOUR)
def test_behaviour(text, expected):
    assert to_taiwan(text) == expected


def test_domain_keep_and_replace_entries():
    normalizer = TaiwanNormalizer(Vocabulary.of(keep=["視頻"], replace={"計算機": "電腦"}))
    assert normalizer.convert("計算機的視頻和軟件") == "電腦的視頻和軟體"
    assert to_taiwan("計算機的視頻") == "計算機的影片"


def _eval_inputs():
    path = ROOT / "eval" / "taiwan.jsonl"
    return [json.loads(line)["input"] for line in path.read_text(encoding="utf-8").splitlines()]


def _stream(normalizer, text, sizes):
    stream, out, i = normalizer.stream(), [], 0
    for size in sizes:
        out.append(stream.push(text[i:i + size]))
        i += size
    out.append(stream.push(text[i:]))
    return "".join(out) + stream.flush()


@pytest.mark.parametrize("chunk", range(1, 9))
def test_streaming_equals_batch_for_fixed_chunk_sizes(chunk):
    normalizer = normalizer_for()
    for text in _eval_inputs():
        assert _stream(normalizer, text, [chunk] * (len(text) // chunk)) == normalizer.convert(text), text


ALPHABET = list("软件視頻台灣干擾里长程序窗口的士兵`/:.http s w\n，。 ！？a1項目服務于范支持你菜單0929\\~_-年们間")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_streaming_equals_batch_for_random_chunking(data):
    pool = _eval_inputs()
    text = data.draw(st.one_of(st.sampled_from(pool),
                               st.lists(st.sampled_from(pool), min_size=2, max_size=4).map("\n".join),
                               st.text(alphabet=ALPHABET, max_size=60)))
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=8), max_size=len(text)))
    normalizer = normalizer_for()
    assert _stream(normalizer, text, sizes) == normalizer.convert(text)


# What a stream shows after each piece: text up to the last whitespace or punctuation; before its
# first text, also the digits that open the run after it, all but the last (a year arrives a digit
# per token, and the answer's first text should not wait for all of it).
SHOWN_AFTER_EACH_PIECE = [
    (["1", "4", "0", "5", " ", "年"], ["", "1", "", "", "405 ", ""]),
    (["1", "8", "7", "4", "年间"], ["", "1", "", "", ""]),
    (["，", "1", "8", "7", "4"], ["，", "", "", "", ""]),
    (["康熙", "6", "1", "年，"], ["", "", "", "康熙61年，"]),
    (["RV", "3", "2", "I"], ["", "", "", ""]),
    (["18", "74/软件", "/x "], ["1", "", "874/軟體/x "]),  # after a digit, "/软件/x" is not a path
    (["`", "1", "2", "3", "`"], ["", "", "", "", "`123`"]),
]


@pytest.mark.parametrize("pieces,shown", SHOWN_AFTER_EACH_PIECE)
def test_what_a_stream_shows_after_each_piece(pieces, shown):
    stream = normalizer_for().stream()
    assert [stream.push(piece) for piece in pieces] == shown
    assert "".join(shown) + stream.flush() == to_taiwan("".join(pieces))


def test_digits_wait_for_the_run_when_the_vocabulary_has_a_key_with_a_digit():
    stream = TaiwanNormalizer(Vocabulary.of(replace={"3D列印": "3D印表"})).stream()
    assert [stream.push(piece) for piece in ["3", "3", "D列印"]] == ["", "", ""]
    assert stream.flush() == "33D印表"


@pytest.mark.parametrize("text", [
    "\ud800孤立代理\udfff", "控制\x00字元\x07\x1b[31m", "😀🎉👍", "Mixed 中文 English 日本語 한국어 العربية",
    "\u200b\u200d\ufeff", "`" * 50, "```" * 20, "/" * 100, "http://" * 10,
])
def test_any_input_returns_text(text):
    out = to_taiwan(text)
    assert isinstance(out, str)
    stream = normalizer_for().stream()
    assert "".join(stream.push(c) for c in text) + stream.flush() == out


def test_one_megabyte_of_text():
    rng = random.Random(7)
    pool = [line for line in _eval_inputs() if "`" not in line and "/" not in line]
    text = ""
    while len(text.encode("utf-8")) < 1_000_000:
        text += "\n".join(rng.choice(pool) for _ in range(1000)) + "\n"
    out = to_taiwan(text)
    assert out.count("\n") == text.count("\n") and "軟件" not in out and "视频" not in out


def test_cli_normalize_one_line_out_per_line_in():
    lines = ["软件", "", "台灣的干擾", "```code", "视频 https://a.b/软件"]
    for extra in ([], ["--chunk", "1"], ["--chunk", "3"]):
        result = run_cli("normalize", *extra, input_text="\n".join(lines) + "\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[:-1] == ["軟體", "", "台灣的干擾", "```code", "影片 https://a.b/软件"]


def test_cli_normalize_rejects_a_bad_chunk_size():
    result = run_cli("normalize", "--chunk", "0", input_text="软件\n")
    assert (result.returncode, result.stderr) == (2, "錯誤：--chunk 必須是正整數（收到 0）。修正：例如 --chunk 4。\n")


def test_cli_eval_taiwan_json_contract():
    result = run_cli("eval", "taiwan", str(ROOT / "eval" / "taiwan.jsonl"), "--json", "--baseline")
    report = json.loads(result.stdout)
    assert report["summary"]["cases"] >= 300
    assert report["summary"]["exact_match"] >= 0.97
    assert report["summary"]["already_taiwan_unchanged"] >= 0.995
    assert report["summary"]["baseline_s2twp"]["exact_match"] < report["summary"]["exact_match"]
    case = report["cases"][0]
    assert {"id", "expect", "got"} <= set(case)


def test_cli_eval_reports_a_broken_case_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": "a", "input": "x", "expect": ["x"]}\nnot json\n', encoding="utf-8")
    result = run_cli("eval", "taiwan", str(path), "--json")
    assert result.returncode == 2
    assert result.stderr == f"錯誤：{path} 第 2 行不是合法的 JSON（Expecting value）。修正：每行一個 JSON 物件。\n"


def test_shared_sample_cases():
    """The format samples from ../shared/eval-samples/ (copied into tests/data/) all pass."""
    result = run_cli("eval", "taiwan", str(ROOT / "tests" / "data" / "taiwan_sample.jsonl"), "--json")
    report = json.loads(result.stdout)
    assert [c["id"] for c in report["cases"] if not c["ok"]] == []
