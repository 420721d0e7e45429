"""Serving over HTTP: the engine bench's arrival trace sent with the `openai` client.

    python bench/serve.py                        (or `make bench`)
    python bench/serve.py --rounds 5 --requests 32 --concurrency 1,8,32

Peers, all on SmolLM2-135M-Instruct in bf16 on this machine, each a process of its own:

  (a) `domainlm`: `domainlm serve` with 4 LoRA experts (r=16, all-linear) and the base,
      requests spread over all five as the trace says (experts mixed in every step);
  (b) `transformers`: `transformers serve --continuous-batching` on the base alone (its
      own OpenAI-compatible server; every request to the base);
  (c) `engine`: DomainLM's engine in-process, no HTTP (what HTTP costs: (c) vs (a)).

The trace (seeded Poisson arrivals at `--rate`, questions chat-rendered, reply lengths
16-256 tokens) is replayed with at most `--concurrency` requests in flight (a client that
waits for a free slot sends late); every request streams (`stream_options.include_usage`)
with temperature 0 and `max_tokens` from the trace. Replies end at EOS or at `max_tokens`
(transformers serve has no `ignore_eos`), so tokens/s counts the tokens each server
generated. A run stops at `--deadline`; what had not finished by then counts as not
finished. Reported per run: output tokens/s, time to first token p50/p95 and request
latency p50/p95 (from sending), requests finished. Each (concurrency, peer) runs
`--rounds` times, peers taking turns; the JSON and the printout give median, min-max and
per-round ratios (domainlm/transformers tokens/s, engine/domainlm: HTTP overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import machine, spread
from serving import EXPERTS, make_experts, make_trace, percentile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "serve.json"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_up(url: str, process: subprocess.Popen[Any], seconds: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server at {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    sys.exit(f"the server at {url} did not come up in {seconds:.0f} s")


class Result:
    def __init__(self, sent: float):
        self.sent = sent
        self.first: float | None = None
        self.done: float | None = None
        self.tokens = 0
        self.error: str | None = None


def replay(trace: list[Any], concurrency: int, deadline: float, send: Any) -> dict[str, Any]:
    """Send the trace's requests at their arrival times, at most `concurrency` at once;
    `send(item, result)` fills the result."""
    slots = threading.Semaphore(concurrency)
    results: list[Result] = []
    threads = []
    start = time.perf_counter()
    stop_at = start + deadline

    def worker(item: Any, result: Result) -> None:
        try:
            send(item, result, stop_at)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            slots.release()

    for item in trace:
        delay = start + item.at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not slots.acquire(timeout=max(0.0, stop_at - time.perf_counter())):
            break
        result = Result(time.perf_counter())
        results.append(result)
        thread = threading.Thread(target=worker, args=(item, result), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=max(0.1, stop_at - time.perf_counter() + 30))
    finished = [r for r in results if r.done is not None and r.error is None]
    end = max((r.done for r in finished if r.done), default=start)
    span = max(end - start, 1e-9)
    ttft = [r.first - r.sent for r in finished if r.first is not None]
    latency = [r.done - r.sent for r in finished if r.done is not None]
    errors = sorted({r.error for r in results if r.error})
    return {
        "requests": len(trace),
        "finished": len(finished),
        "output_tokens": sum(r.tokens for r in finished),
        "tokens_per_s": sum(r.tokens for r in finished) / span,
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p95_s": percentile(ttft, 0.95),
        "latency_p50_s": percentile(latency, 0.5),
        "latency_p95_s": percentile(latency, 0.95),
        "errors": errors[:5],
    }


def http_sender(url: str, model_of: Any) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)

    def send(item: Any, result: Result, stop_at: float) -> None:
        stream = client.chat.completions.create(
            model=model_of(item),
            messages=[{"role": "user", "content": item.question}],
            max_tokens=item.new_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        counted = 0
        for chunk in stream:
            if time.perf_counter() > stop_at:
                stream.close()
                return
            if chunk.choices and chunk.choices[0].delta.content:
                counted += 1
                result.first = result.first or time.perf_counter()
            if chunk.usage is not None:
                result.tokens = chunk.usage.completion_tokens
        result.tokens = result.tokens or counted
        result.done = time.perf_counter()

    return send


def engine_sender(pool: Any, engine: Any) -> Any:
    from domainlm.chat.conversation import Conversation
    from domainlm.chat.formats import get_format
    from domainlm.engine.generation import Request, Sampling

    chat = get_format("auto", pool.base.tokenizer)

    def send(item: Any, result: Result, stop_at: float) -> None:
        conversation = Conversation.model_validate(
            {"messages": [{"role": "user", "content": item.question}]}
        )
        prompt = chat.render_prompt(conversation)
        sampling = Sampling(max_new_tokens=item.new_tokens)
        stream = engine.submit(Request(prompt, item.expert, sampling, chat.stop_strings))
        for _ in stream:
            if time.perf_counter() > stop_at:
                stream.cancel()
                return
            result.first = result.first or time.perf_counter()
        result.tokens = stream.result().tokens
        result.done = time.perf_counter()

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per run")
    parser.add_argument("--peers", default="domainlm,transformers,engine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    peers = args.peers.split(",")

    from domainlm.engine.adapters import AdapterPool
    from domainlm.engine.local import LocalEngine
    from domainlm.engine.setup import device_dtype
    from domainlm.models.base import load_base

    _, dtype = device_dtype()
    base = load_base("default", dtype=dtype)
    base.model.eval()
    trace = make_trace(base.tokenizer, args.requests, args.rate, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="domainlm-bench-serve-"))
    servers: list[subprocess.Popen[Any]] = []
    try:
        experts = folder / "experts"
        experts.mkdir()
        paths = make_experts(base, experts)
        plain = folder / "base"  # the base as an HF folder, for transformers serve
        base.model.save_pretrained(plain)
        base.tokenizer.save_pretrained(plain)
        pool = AdapterPool(base, roots=[experts])
        for path in paths:
            pool.add(path)
        urls: dict[str, str] = {}
        env = {**os.environ, "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        if "domainlm" in peers:
            port = free_port()
            config = folder / "serve.yaml"
            config.write_text(
                json.dumps(
                    {
                        "model": "default", "experts": [str(experts)], "port": port,
                        "web": False, "engine": {"max_rows": 32},
                        "limits": {"requests_per_minute": 100000,
                                   "tokens_per_minute": 10**8, "max_tokens": 1024},
                    }
                )
            )  # fmt: skip
            servers.append(
                subprocess.Popen(
                    [str(BIN / "domainlm"), "serve", str(config)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls["domainlm"] = f"http://127.0.0.1:{port}"
            wait_up(urls["domainlm"] + "/health", servers[-1])
        if "transformers" in peers:
            port = free_port()
            servers.append(
                subprocess.Popen(
                    [
                        str(BIN / "transformers"),
                        "serve",
                        "--continuous-batching",
                        "--dtype",
                        "bfloat16",
                        "--device",
                        "cpu",
                        "--port",
                        str(port),
                        str(plain),
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls["transformers"] = f"http://127.0.0.1:{port}"
            wait_up(urls["transformers"] + "/health", servers[-1])
        engine = LocalEngine(pool, max_rows=32) if "engine" in peers else None
        senders = {
            "domainlm": lambda: http_sender(urls["domainlm"] + "/v1", lambda item: item.expert),
            "transformers": lambda: http_sender(urls["transformers"] + "/v1", lambda _: str(plain)),
            "engine": lambda: engine_sender(pool, engine),
        }
        runs: dict[str, dict[str, list[Any]]] = {str(c): {p: [] for p in peers} for c in levels}
        for round_ in range(args.rounds):
            for level in levels:
                for peer in peers:
                    result = replay(trace, level, args.deadline, senders[peer]())
                    runs[str(level)][peer].append(result)
                    print(
                        f"round {round_ + 1}/{args.rounds} c={level:<3d} {peer:13s} "
                        f"{result['tokens_per_s']:7.1f} tokens/s  TTFT p95 "
                        f"{result['ttft_p95_s'] or float('nan'):6.2f} s  finished "
                        f"{result['finished']}/{result['requests']}"
                        + (f"  errors: {result['errors']}" if result["errors"] else ""),
                        flush=True,
                    )
        if engine is not None:
            engine.close()
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(folder, ignore_errors=True)
    report = summarise(runs, args, trace)
    report["machine"] = machine(dtype=str(dtype))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"-> {RESULTS}")


def summarise(runs: dict[str, dict[str, list[Any]]], args: Any, trace: list[Any]) -> dict[str, Any]:
    metrics = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s",
               "finished")  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "serving over HTTP, SmolLM2-135M-Instruct (+ 4 LoRA experts for domainlm)",
        "setup": vars(args) | {"experts": EXPERTS, "arrivals_over_s": trace[-1].at},
        "runs": runs,
        "summary": {},
        "pairs": {},
    }
    for level, by_peer in runs.items():
        report["summary"][level] = {
            peer: {m: spread([r[m] for r in results if r[m] is not None]) for m in metrics}
            for peer, results in by_peer.items()
        }
        pairs = {}
        for ours, theirs, name in (
            ("domainlm", "transformers", "domainlm_vs_transformers"),
            ("engine", "domainlm", "engine_vs_domainlm"),
        ):
            if ours in by_peer and theirs in by_peer:
                ratios = [
                    a["tokens_per_s"] / b["tokens_per_s"]
                    for a, b in zip(by_peer[ours], by_peer[theirs], strict=True)
                    if b["tokens_per_s"]
                ]
                pairs[name] = spread(ratios) if ratios else None
        report["pairs"][level] = pairs
    return report


def print_report(report: dict[str, Any]) -> None:
    def show(value: dict[str, float] | None, unit: str = "") -> str:
        if not value:
            return "-"
        return f"{value['median']:.2f}{unit} ({value['min']:.2f}-{value['max']:.2f})"

    print("medians (min-max) over rounds:")
    for level, by_peer in report["summary"].items():
        for peer, summary in by_peer.items():
            print(
                f"  c={level:<3s} {peer:13s} {show(summary['tokens_per_s'])} tokens/s  TTFT p50 "
                f"{show(summary['ttft_p50_s'], ' s')} p95 {show(summary['ttft_p95_s'], ' s')}  "
                f"latency p95 {show(summary['latency_p95_s'], ' s')}"
            )
        for name, pair in report["pairs"][level].items():
            print(f"  c={level:<3s} {name}: tokens/s x{show(pair)}")


if __name__ == "__main__":
    main()
