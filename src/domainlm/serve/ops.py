"""Operations: API keys, rate limits, the kill switch and metrics.

Keys are kept as SHA-256 hashes and a presented key is compared with every stored hash by
`hmac.compare_digest` (constant time, and the loop does not stop at a match). Rate limits
use the `limits` library (moving windows; in memory for one process, Redis for replicas).
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.serve.api import APIError
from domainlm.serve.settings import Key, ServeSettings, hash_key


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's name (or the client address when keys are off)."""

    name: str
    models: tuple[str, ...]
    requests_per_minute: int
    tokens_per_minute: int
    admin: bool

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class Keys:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.keys: list[Key] = settings.all_keys()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def caller(self, authorization: str | None, client: str) -> Caller:
        limits = self.settings.limits
        if not self.keys:
            return Caller(
                f"anonymous@{client}",
                ("*",),
                limits.requests_per_minute,
                limits.tokens_per_minute,
                admin=False,
            )
        presented = _bearer(authorization)
        digest = hash_key(presented).encode() if presented else b""
        found: Key | None = None
        for key in self.keys:  # every hash compared: the time does not tell which matched
            assert key.sha256 is not None
            if hmac.compare_digest(digest, key.sha256.encode()) and presented:
                found = key
        if found is None:
            raise APIError(
                401,
                "Incorrect API key provided."
                if presented
                else "Missing API key: send 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )
        return Caller(
            found.name,
            tuple(found.models),
            found.requests_per_minute or limits.requests_per_minute,
            found.tokens_per_minute or limits.tokens_per_minute,
            admin=found.admin,
        )


def _bearer(authorization: str | None) -> str:
    if not authorization:
        return ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    value = value.strip()
    # A key is printable ASCII without spaces; anything else is not a key of ours.
    if not value or len(value) > 512 or not all(33 <= ord(c) < 127 for c in value):
        return ""
    return value


class RateLimits:
    """Requests and tokens per minute per caller (moving windows)."""

    def __init__(self, storage_uri: str):
        from limits import storage, strategies

        self.storage = storage.storage_from_string(storage_uri)
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)

    def check(self, caller: Caller, tokens: int) -> dict[str, str]:
        """Count one request of `tokens` (prompt + most new tokens) for `caller`; returns the
        `x-ratelimit-*` headers, or raises a 429 with them and `Retry-After`."""
        from limits import RateLimitItemPerMinute

        requests = RateLimitItemPerMinute(caller.requests_per_minute)
        budget = RateLimitItemPerMinute(caller.tokens_per_minute)
        if tokens > caller.tokens_per_minute:
            raise APIError(
                400,
                f"this request may use {tokens} tokens (prompt and max_tokens), more than the "
                f"{caller.tokens_per_minute} a minute your key allows: lower max_tokens",
                param="max_tokens",
                code="tokens_over_limit",
            )
        if not self.limiter.test(requests, "requests", caller.name):
            raise self._refused(caller, requests, budget, "requests")
        if not self.limiter.hit(budget, "tokens", caller.name, cost=tokens):
            raise self._refused(caller, requests, budget, "tokens")
        self.limiter.hit(requests, "requests", caller.name)
        return self._headers(caller, requests, budget)

    def _headers(self, caller: Caller, requests: Any, budget: Any) -> dict[str, str]:
        headers = {}
        now = time.time()
        for kind, item in (("requests", requests), ("tokens", budget)):
            stats = self.limiter.get_window_stats(item, kind, caller.name)
            headers[f"x-ratelimit-limit-{kind}"] = str(item.amount)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, stats.remaining))
            headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, stats.reset_time - now):.0f}s"
        return headers

    def _refused(self, caller: Caller, requests: Any, budget: Any, kind: str) -> APIError:
        headers = self._headers(caller, requests, budget)
        wait = headers[f"x-ratelimit-reset-{kind}"].removesuffix("s")
        headers["retry-after"] = str(max(1, math.ceil(float(wait))))
        return APIError(
            429,
            f"Rate limit reached for {kind} per minute ({caller.name}): retry after "
            f"{headers['retry-after']} s.",
            kind="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers=headers,
        )


class KillSwitch:
    """Off for everyone or per model: by the admin API, or while the flag file exists.

    The flag file's lines: `model: NAME` switches only NAME off; any other text is the
    message shown (the configured one when the file is empty)."""

    def __init__(self, file: Path | None, message: str):
        self.file = file
        self.message = message
        self.off_all: str | None = None  # set by the admin API
        self.off_models: dict[str, str] = {}

    def set(self, on: bool, model: str | None, message: str | None) -> None:
        text = message or self.message
        if model is None:
            self.off_all = None if on else text
            if on:
                self.off_models.clear()
        elif on:
            self.off_models.pop(model, None)
        else:
            self.off_models[model] = text

    def _file(self) -> tuple[str | None, dict[str, str]]:
        if self.file is None:
            return None, {}
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, {}
        except OSError:
            return self.message, {}  # there but unreadable: off, to be safe
        models = {}
        lines = []
        for line in text.splitlines():
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == "model" and value.strip():
                models[value.strip()] = self.message
            elif line.strip():
                lines.append(line.strip())
        message = "\n".join(lines) or self.message
        if models:
            models = dict.fromkeys(models, message)
            return None, models
        return message, {}

    def status(self, model: str | None = None) -> str | None:
        """The message when `model` (or, with None, the whole service) is off."""
        whole, models = self._file()
        if self.off_all or whole:
            return self.off_all or whole
        if model is not None:
            return self.off_models.get(model) or models.get(model)
        return None

    def models_off(self) -> dict[str, str]:
        _, models = self._file()
        return {**models, **self.off_models}


class Metrics:
    """Prometheus metrics of one app (its own registry: two apps in a process never mix)."""

    def __init__(self, load: Any):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "domainlm_requests", "Requests answered", ["model", "status"], registry=self.registry
        )
        self.tokens = Counter(
            "domainlm_tokens", "Tokens processed", ["model", "kind"], registry=self.registry
        )
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
        self.latency = Histogram(
            "domainlm_request_seconds", "Time to the last token", ["model"],
            buckets=buckets, registry=self.registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "domainlm_time_to_first_token_seconds", "Time to the first token", ["model"],
            buckets=buckets, registry=self.registry,
        )  # fmt: skip
        for name, what in (("waiting", "Requests queued"), ("running", "Rows decoding")):
            gauge = Gauge(f"domainlm_engine_{name}", what, registry=self.registry)
            gauge.set_function(_reader(load, name))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


def _reader(load: Any, name: str) -> Any:
    def read() -> float:
        return float(load().get(name, 0))

    return read
