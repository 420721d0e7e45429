"""Continuous batching: requests join and leave the running batch at every step, each with
its own expert, sampling settings, stop strings and stream; cancellation and limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.generation import Overloaded, Request, Sampling, decode
from domainlm.engine.local import LocalEngine
from domainlm.errors import DomainLMError
from tests.engine_helpers import make_expert, read_concurrently, tiny_base

GREEDY = Sampling(max_new_tokens=24)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> AdapterPool:
    root = tmp_path_factory.mktemp("batching_experts")
    pool = AdapterPool(tiny_base(), roots=[root])
    for i, name in enumerate(("law", "fin", "tax")):
        pool.add(make_expert(root, name, seed=i + 1))
    return pool


@pytest.fixture
def engine(pool: AdapterPool) -> Any:
    engine = LocalEngine(pool)
    yield engine
    engine.close()


def _ids(pool: AdapterPool, text: str) -> list[int]:
    ids: list[int] = pool.base.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def _alone(engine: LocalEngine, request: Request) -> Any:
    """The completion of `request` with nothing else in the engine."""
    # A stream ends as its row finishes; the worker drops the row just after.
    for _ in range(500):
        if engine.load == {"waiting": 0, "prefilling": 0, "running": 0}:
            break
        time.sleep(0.01)
    assert engine.load == {"waiting": 0, "prefilling": 0, "running": 0}
    return engine.run([request])[0]


SETTINGS = [
    ("law", "定金是什么", GREEDY, []),
    ("fin", "利息怎么算", Sampling(max_new_tokens=20, temperature=0.9, top_p=0.8, seed=7), []),
    (BASE, "hello there", Sampling(max_new_tokens=16, repetition_penalty=1.3), []),
    ("tax", "合同 成立", Sampling(max_new_tokens=24, temperature=1.2, top_k=5, seed=1), []),
    ("law", "违约金", GREEDY, ["的"]),
    (BASE, "借款利率", Sampling(max_new_tokens=30, temperature=0.7, seed=3), []),
]


def test_concurrent_streams_give_what_each_gets_alone(pool: AdapterPool, engine: Any) -> None:
    requests = [Request(_ids(pool, t), e, s, stop) for e, t, s, stop in SETTINGS]
    alone = [_alone(engine, r) for r in requests]
    assert read_concurrently(engine, requests) == [c.text for c in alone]
    assert max(engine.stats.rows_seen) > 1  # they did share decode steps
    assert {c.finish_reason for c in alone} <= {"stop", "length"}


def test_sampling_settings_per_row(pool: AdapterPool, engine: Any) -> None:
    prompt = _ids(pool, "定金是什么")
    greedy = _alone(engine, Request(prompt, "law", GREEDY)).text
    # top_k=1 and a tiny top_p leave only the most likely token: greedy, though sampled.
    for sampling in (
        Sampling(max_new_tokens=24, temperature=1.5, top_k=1),
        Sampling(max_new_tokens=24, temperature=1.5, top_p=1e-6),
    ):
        assert _alone(engine, Request(prompt, "law", sampling)).text == greedy
    hot = Sampling(max_new_tokens=24, temperature=1.5, seed=11)
    first = _alone(engine, Request(prompt, "law", hot)).text
    assert first != greedy and _alone(engine, Request(prompt, "law", hot)).text == first


def test_repetition_penalty_matches_transformers(pool: AdapterPool, engine: Any) -> None:
    prompt = _ids(pool, "定金定金定金")
    sampling = Sampling(max_new_tokens=20, repetition_penalty=1.5)
    ours = _alone(engine, Request(prompt, BASE, sampling))
    with torch.no_grad(), pool.model.disable_adapter():
        out = pool.model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=20,
            do_sample=False,
            repetition_penalty=1.5,
            pad_token_id=pool.base.tokenizer.eos_token_id,
        )
    theirs = out[0, len(prompt) :].tolist()
    assert ours.tokens == len(theirs)
    assert ours.text == decode(pool.base.tokenizer, theirs)  # less a cut-off character


def test_a_request_admitted_mid_batch(pool: AdapterPool, engine: Any) -> None:
    long = Request(_ids(pool, "定金是什么"), "law", Sampling(max_new_tokens=60))
    late = Request(_ids(pool, "利息怎么算"), "fin", GREEDY)
    alone_long, alone_late = _alone(engine, long), _alone(engine, late)
    assert alone_long.finish_reason == "length"
    first = engine.submit(long)
    pieces = iter(first)
    head = next(pieces)  # the long one is decoding
    second = engine.submit(late)
    assert second.result(timeout=60).text == alone_late.text
    assert head + "".join(pieces) == alone_long.text
    assert first.result().tokens == 60
    assert 2 in engine.stats.rows_seen


def test_cancel_frees_the_row(pool: AdapterPool, engine: Any) -> None:
    keep = Request(_ids(pool, "利息怎么算"), "fin", Sampling(max_new_tokens=50))
    drop = Request(_ids(pool, "定金是什么"), "law", Sampling(max_new_tokens=2000))
    expected = _alone(engine, keep).text
    doomed, other = engine.submit(drop), engine.submit(keep)
    next(iter(doomed))
    doomed.cancel()
    assert other.result(timeout=60).text == expected
    cancelled = doomed.result(timeout=60)
    assert cancelled.finish_reason == "cancelled" and cancelled.tokens < 2000
    assert engine.load == {"waiting": 0, "prefilling": 0, "running": 0}
    # A stream closed by its reader (a caller gone) cancels too.
    stream = engine.stream(drop)
    next(stream)
    stream.close()
    assert engine.run([keep])[0].text == expected
    assert engine.stats.cancelled == 2


def test_async_stream_and_cancel(pool: AdapterPool, engine: Any) -> None:
    request = Request(_ids(pool, "合同 成立"), "tax", GREEDY)
    expected = _alone(engine, request).text

    async def both() -> tuple[str, int]:
        pieces = [piece async for piece in engine.astream(request)]
        endless = engine.astream(Request(request.prompt, "tax", Sampling(max_new_tokens=5000)))
        await endless.__anext__()
        await endless.aclose()  # the caller went away: its row goes at the next step
        for _ in range(600):
            if engine.stats.cancelled:
                break
            await asyncio.sleep(0.1)
        return "".join(pieces), engine.stats.cancelled

    text, cancelled = asyncio.run(both())
    assert text == expected and cancelled == 1


def test_overload_and_limits_are_clean_errors(pool: AdapterPool) -> None:
    engine = LocalEngine(pool, max_rows=1, max_queue=1)
    try:
        running = engine.submit(Request(_ids(pool, "定金"), "law", Sampling(max_new_tokens=5000)))
        next(iter(running))
        queued = engine.submit(Request(_ids(pool, "利息"), "fin", GREEDY))
        with pytest.raises(Overloaded, match="overloaded: 1 requests are waiting; retry later"):
            engine.submit(Request(_ids(pool, "税"), BASE, GREEDY))
        assert engine.load == {"waiting": 1, "prefilling": 0, "running": 1}
        running.cancel()
        assert queued.result(timeout=60).finish_reason == "length"
        with pytest.raises(DomainLMError, match=r"no expert 'nobody' \(loaded: base, .*fin"):
            engine.submit(Request([5, 6], "nobody"))
        with pytest.raises(DomainLMError, match="exceeds the model's context"):
            engine.submit(Request([5] * (engine.context + 1)))
        with pytest.raises(DomainLMError, match="empty prompt"):
            engine.submit(Request([]))
    finally:
        engine.close()
    small = LocalEngine(pool, max_kv_bytes=60 * LocalEngine(pool).token_bytes)
    try:
        with pytest.raises(DomainLMError, match="MiB of KV cache; the engine's limit is"):
            small.submit(Request([5] * 10, sampling=Sampling(max_new_tokens=60)))
        # Two that fit one at a time run one after the other, never together.
        pair = [Request(_ids(pool, t), sampling=Sampling(max_new_tokens=35)) for t in "甲乙"]
        assert len(small.run(pair)) == 2 and max(small.stats.rows_seen) == 1
    finally:
        small.close()


def test_prompts_queued_together_are_prefilled_together(pool: AdapterPool, engine: Any) -> None:
    requests = [Request(_ids(pool, t), e, s, stop) for e, t, s, stop in SETTINGS]
    requests.append(Request(_ids(pool, "一个字"), "fin", Sampling(max_new_tokens=1)))
    alone = [_alone(engine, r).text for r in requests]
    passes = engine.stats.prefill_passes
    together = engine.run(requests)  # queued at once: one padded prefill of all of them
    assert engine.stats.prefill_passes == passes + 1
    assert [c.text for c in together] == alone  # different lengths, experts and settings
    assert together[-1].tokens == 1  # done at its first token, gone before the decode


def test_long_prompts_are_prefilled_in_chunks(pool: AdapterPool) -> None:
    prompt = _ids(pool, "当事人可以约定一方向对方给付定金作为债权的担保。" * 4)
    request = Request(prompt, "law", GREEDY)
    whole = LocalEngine(pool)
    chunked = LocalEngine(pool, prefill_chunk=16)
    try:
        expected = whole.run([request])[0].text
        assert whole.stats.prefill_passes == 1
        assert chunked.run([request])[0].text == expected
        assert chunked.stats.prefill_passes == -(-len(prompt) // 16)
    finally:
        whole.close()
        chunked.close()


def test_an_unloaded_expert_fails_its_rows_only(pool: AdapterPool, tmp_path: Path) -> None:
    mine = AdapterPool(tiny_base(), roots=[tmp_path])
    for i, name in enumerate(("law", "fin")):
        mine.add(make_expert(tmp_path, name, seed=i + 1))
    engine = LocalEngine(mine)
    try:
        request = Request(_ids(mine, "利息怎么算"), "fin", Sampling(max_new_tokens=40))
        expected = engine.run([request])[0].text
        doomed = engine.submit(Request(_ids(mine, "定金"), "law", Sampling(max_new_tokens=5000)))
        next(iter(doomed))
        other = engine.submit(request)
        mine.remove("law")
        with pytest.raises(DomainLMError, match="expert 'law' was unloaded"):
            doomed.result(timeout=60)
        assert other.result(timeout=60).text == expected
    finally:
        engine.close()


def test_close_fails_what_is_left(pool: AdapterPool) -> None:
    engine = LocalEngine(pool)
    stream = engine.submit(Request([5, 6], sampling=Sampling(max_new_tokens=5000)))
    next(iter(stream))
    engine.close()
    with pytest.raises(DomainLMError, match="engine was closed"):
        stream.result(timeout=5)
    with pytest.raises(DomainLMError, match="engine is closed"):
        engine.submit(Request([5, 6]))


def test_bad_settings_are_refused_and_a_failing_row_fails_alone(
    pool: AdapterPool, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sampling, message in (
        (Sampling(repetition_penalty=0), "repetition_penalty must be more than 0"),
        (Sampling(top_p=0), r"top_p must be in \(0, 1\]"),
        (Sampling(max_new_tokens=0), "max_new_tokens must be at least 1"),
        (Sampling(temperature=float("nan")), "temperature must be 0 or more"),
    ):
        with pytest.raises(DomainLMError, match=message):
            engine.submit(Request([5, 6], sampling=sampling))
    good = Request(_ids(pool, "利息怎么算"), "fin", Sampling(max_new_tokens=30))
    expected = _alone(engine, good).text
    import domainlm.engine.local as local

    real = local.next_tokens

    def poisoned(logits: Any, settings: Any, randoms: Any, seen: Any) -> list[int]:
        if any(s.temperature == 0.77 for s in settings):  # stands in for NaN logits
            raise RuntimeError("probability tensor contains inf or nan")
        return real(logits, settings, randoms, seen)

    monkeypatch.setattr(local, "next_tokens", poisoned)
    other = engine.submit(good)
    poison = engine.submit(
        Request(good.prompt, "law", Sampling(max_new_tokens=30, temperature=0.77))
    )
    with pytest.raises(DomainLMError, match=r"generation failed: RuntimeError: .*inf or nan"):
        poison.result(timeout=60)
    assert other.result(timeout=60).text == expected


def test_a_reader_whose_event_loop_closed_does_not_stop_the_engine(
    pool: AdapterPool, engine: Any
) -> None:
    request = Request(_ids(pool, "定金"), "law", Sampling(max_new_tokens=3000, ignore_eos=True))

    streams = []

    async def impatient() -> None:
        stream = engine.submit(request)
        streams.append(stream)
        pieces = stream.__aiter__()
        await pieces.__anext__()
        with pytest.raises(asyncio.TimeoutError):
            while True:  # the reader gives up while waiting for the next piece
                await asyncio.wait_for(pieces.__anext__(), timeout=0.0001)

    asyncio.run(impatient())  # its loop is closed now; the request goes on
    after = Request(_ids(pool, "利息"), "fin", Sampling(max_new_tokens=8))
    assert engine.run([after])[0].tokens == 8
    streams[0].cancel()
    assert streams[0].result(timeout=60).finish_reason == "cancelled"


def test_experts_with_requests_in_flight_are_not_evicted(tmp_path: Path) -> None:
    mine = AdapterPool(tiny_base(), roots=[tmp_path], max_loaded=2)
    paths = {n: make_expert(tmp_path, n, seed=i + 1) for i, n in enumerate(("law", "fin", "tax"))}
    mine.add(paths["law"])
    mine.add(paths["fin"])
    engine = LocalEngine(mine)
    try:
        busy = engine.submit(Request(_ids(mine, "定金"), "law", Sampling(max_new_tokens=5000)))
        next(iter(busy))
        mine.resolve("fin")  # law is now the least recently used, but in flight
        mine.add(paths["tax"])
        assert mine.names == [BASE, "law", "tax"]
        also = engine.submit(Request(_ids(mine, "税"), "tax", Sampling(max_new_tokens=5000)))
        next(iter(also))
        with pytest.raises(DomainLMError, match="all 2 loaded experts have requests in flight"):
            mine.add(paths["fin"])
        busy.cancel()
        also.cancel()
        busy.result(timeout=60)
        also.result(timeout=60)
        mine.add(paths["fin"])  # idle again: evicted as usual
        assert "fin" in mine.names
    finally:
        engine.close()


def test_grouped_decode_attention_matches_transformers_eager() -> None:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from domainlm.engine.attention import decode_mask, grouped_decode

    torch.manual_seed(0)
    rows, heads, kv_heads, width, dim = 3, 6, 2, 7, 8
    query = torch.randn(rows, heads, 1, dim)
    key, value = torch.randn(2, rows, kv_heads, width, dim)
    keep = torch.ones(rows, width, dtype=torch.bool)
    keep[0, :3] = False  # left padding of different lengths
    keep[2, :1] = False
    mask = decode_mask(keep, query.dtype)

    class Module(torch.nn.Module):
        num_key_value_groups = heads // kv_heads

    ours, _ = grouped_decode(Module(), query, key, value, mask, 0.35)
    theirs, _ = eager_attention_forward(Module().eval(), query, key, value, mask, 0.35)
    assert ours.shape == theirs.shape == (rows, 1, heads, dim)
    assert torch.allclose(ours, theirs, atol=1e-6)
