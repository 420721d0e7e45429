"""The upstream backend against a real OpenAI-compatible server on 127.0.0.1 (DomainLM's
local engine behind a minimal HTTP front): same texts as the local engine, streams,
experts as upstream models, and the server's failures as clean per-request errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domainlm.chat.formats import get_format
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.assistant import Assistant, Session
from domainlm.engine.generation import Request, Sampling
from domainlm.engine.local import LocalEngine
from domainlm.engine.upstream import UpstreamEngine
from domainlm.errors import DomainLMError
from tests.engine_helpers import make_expert, read_concurrently, tiny_base
from tests.upstream_front import BASE_ID, serving


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> AdapterPool:
    root: Path = tmp_path_factory.mktemp("upstream_experts")
    pool = AdapterPool(tiny_base(), roots=[root])
    for i, name in enumerate(("law", "fin")):
        pool.add(make_expert(root, name, seed=i + 1))
    return pool


@pytest.fixture(scope="module")
def local(pool: AdapterPool) -> Iterator[LocalEngine]:
    engine = LocalEngine(pool)
    yield engine
    engine.close()


@pytest.fixture
def faults() -> dict[str, Any]:
    return {}


@pytest.fixture
def url(local: LocalEngine, faults: dict[str, Any]) -> Iterator[str]:
    with serving(local, faults) as address:
        yield address


def _ids(pool: AdapterPool, text: str) -> list[int]:
    ids: list[int] = pool.base.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def test_experts_are_read_from_the_model_list(pool: AdapterPool, url: str) -> None:
    upstream = UpstreamEngine(url, pool.base.tokenizer)
    assert upstream.models == {BASE: BASE_ID, "law": "law", "fin": "fin"}
    with pytest.raises(DomainLMError, match=r"no expert 'tax' upstream \(loaded: base, law, fin"):
        upstream.submit(Request([5, 6], "tax"))
    with pytest.raises(DomainLMError, match="cannot list models"):
        UpstreamEngine("http://127.0.0.1:9/v1", pool.base.tokenizer, max_retries=0)


def test_same_texts_as_the_local_engine(pool: AdapterPool, local: LocalEngine, url: str) -> None:
    requests = [
        Request(_ids(pool, "定金是什么"), "law", Sampling(max_new_tokens=20)),
        Request(
            _ids(pool, "利息怎么算"), "fin", Sampling(max_new_tokens=16, temperature=0.8, seed=5)
        ),
        Request(_ids(pool, "hello"), BASE, Sampling(max_new_tokens=12, repetition_penalty=1.3)),
        Request(
            _ids(pool, "合同"), "law", Sampling(max_new_tokens=24, top_k=3, temperature=1.0, seed=2)
        ),
    ]
    expected = [c.text for c in local.run(requests)]
    stop = expected[0][4:6]
    requests.append(Request(requests[0].prompt, "law", requests[0].sampling, [stop]))
    expected.append(expected[0].split(stop, 1)[0])
    upstream = UpstreamEngine(url, pool.base.tokenizer)
    assert [c.text for c in upstream.run(requests)] == expected
    assert read_concurrently(upstream, requests) == expected
    completion = upstream.run([requests[0]])[0]
    assert completion.finish_reason == "length" and completion.tokens == 20
    assert completion.prompt_tokens == len(requests[0].prompt)


def test_token_ids_go_up_unchanged_or_as_text(
    pool: AdapterPool, faults: dict[str, Any], url: str
) -> None:
    prompt = _ids(pool, "<|user|>你好")  # typed by a user: plain text, not a role token
    upstream = UpstreamEngine(url, pool.base.tokenizer)
    upstream.run([Request(prompt, sampling=Sampling(max_new_tokens=2))])
    assert faults["bodies"][-1]["prompt"] == prompt
    as_text = UpstreamEngine(url, pool.base.tokenizer, prompt_format="text")
    as_text.run([Request(_ids(pool, "hello there"), sampling=Sampling(max_new_tokens=2))])
    assert faults["bodies"][-1]["prompt"] == "hello there"


def test_retries_what_the_server_turned_away(
    pool: AdapterPool, faults: dict[str, Any], url: str
) -> None:
    request = Request(_ids(pool, "定金"), "law", Sampling(max_new_tokens=6))
    upstream = UpstreamEngine(url, pool.base.tokenizer, max_retries=2)
    faults.update({"429_times": 1, "500_times": 1})
    assert upstream.run([request])[0].tokens == 6
    assert faults["requests"] == 3
    faults.update({"500_times": 5})
    with pytest.raises(DomainLMError, match="upstream: HTTP 500"):
        upstream.run([request])


def test_a_dropped_stream_or_a_silent_server_fails_that_request_only(
    pool: AdapterPool, local: LocalEngine, faults: dict[str, Any], url: str
) -> None:
    request = Request(_ids(pool, "定金"), "law", Sampling(max_new_tokens=30, ignore_eos=True))
    upstream = UpstreamEngine(url, pool.base.tokenizer, max_retries=0, timeout=1.0)
    faults["drop_after"] = 3
    with pytest.raises(DomainLMError, match="dropped"):
        upstream.run([request])
    faults.pop("drop_after")
    faults["stall"] = 3.0
    with pytest.raises(DomainLMError, match=r"upstream: .*(?i:timed? ?out)"):
        upstream.run([request])
    faults.pop("stall")
    assert upstream.run([request])[0].tokens == 30  # the engine goes on


def test_cancel_reaches_the_server(pool: AdapterPool, local: LocalEngine, url: str) -> None:
    upstream = UpstreamEngine(url, pool.base.tokenizer)
    before = local.stats.cancelled
    stream = upstream.stream(
        Request(_ids(pool, "定金"), "law", Sampling(max_new_tokens=3000, ignore_eos=True))
    )
    next(stream)
    stream.close()
    for _ in range(600):
        if local.stats.cancelled > before:
            break
        threading.Event().wait(0.1)
    assert local.stats.cancelled == before + 1 and upstream.stats.cancelled == 1


def test_the_assistant_runs_unchanged_over_the_upstream(
    pool: AdapterPool, local: LocalEngine, url: str
) -> None:
    chat = get_format("hf", pool.base.tokenizer)
    sampling = Sampling(max_new_tokens=16)
    here = Assistant(pool, chat, sampling=sampling, engine=local)
    there = Assistant(
        pool, chat, sampling=sampling, engine=UpstreamEngine(url, pool.base.tokenizer)
    )
    for expert in ("law", BASE):
        ours = here.reply(Session(), "什么是定金？", expert=expert)
        theirs = there.reply(Session(), "什么是定金？", expert=expert)
        assert theirs.text == ours.text


def test_vllm_command_serves_the_experts_that_vllm_can(tmp_path: Path, cli: Any) -> None:
    import shlex

    base = tiny_base()
    base.model.save_pretrained(tmp_path / "model")
    base.tokenizer.save_pretrained(tmp_path / "model")
    root = tmp_path / "experts"
    for i, name in enumerate(("law", "fin")):
        make_expert(root, name, seed=i + 1)
    (root / "half.partial" / "checkpoints").mkdir(parents=True)
    code, out, err = cli("vllm-command", tmp_path / "model", "--experts", root, "--port", "8100")
    assert code == 0, err
    words = shlex.split(out.strip())
    assert words[:3] == ["vllm", "serve", str((tmp_path / "model").resolve())]
    modules = words[words.index("--lora-modules") + 1 :]
    assert modules == [f"fin={(root / 'fin').resolve()}", f"law={(root / 'law').resolve()}"]
    assert words[words.index("--max-lora-rank") + 1] == "8"  # r=4, vLLM's next rank
    assert words[words.index("--max-loras") + 1] == "2" and "8100" in words
    assert "warning:" in err and "half" in err and "http://127.0.0.1:8100/v1" in err
    code, _, err = cli("vllm-command", "tiny")
    assert code == 2 and "vLLM needs a model folder" in err
