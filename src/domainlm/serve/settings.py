"""`domainlm serve` settings: one typed YAML file, overridable by `key=value` arguments.

Every field is described; unknown keys are refused with the path of the key, so a typo
(`max_token:`) is an error and not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domainlm.errors import DomainLMError, first_error
from domainlm.io import read_yaml
from domainlm.train.recipe import apply_override


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(_Strict):
    backend: Literal["local", "openai"] = Field(
        "local",
        description="local: DomainLM's continuous-batching engine in this process; openai: "
        "an OpenAI-compatible server (vLLM, SGLang, a llama.cpp server) at `url`",
    )
    url: str | None = Field(None, description="the upstream server's /v1 URL (backend: openai)")
    api_key_env: str | None = Field(
        None, description="environment variable holding the upstream server's API key"
    )
    max_rows: int = Field(32, ge=1, description="most requests decoding at once (local)")
    max_queue: int = Field(256, ge=1, description="most requests waiting; past it: 503")

    @model_validator(mode="after")
    def _url(self) -> EngineSettings:
        if self.backend == "openai" and not self.url:
            raise ValueError("backend openai needs engine.url")
        return self


class Profile(_Strict):
    """An assistant profile: a model name that bundles an expert, the KB, server-side
    tools, a system prompt and sampling defaults."""

    name: str = Field(description="the model id clients ask for")
    description: str = Field("", description="shown in /v1/models and the web page")
    expert: str = Field("base", description="an expert name, `auto` (routed) or `base`")
    kb: bool = Field(False, description="retrieve articles from the KB and check citations")
    tools: list[str] = Field(
        default_factory=list, description="server-side toolsets run by DomainLM: finance, code"
    )
    system: str | None = Field(None, description="system prompt (default: the expert card's)")
    temperature: float | None = Field(None, ge=0, le=2, description="default temperature")
    max_tokens: int | None = Field(None, ge=1, description="default reply length limit")


class Key(_Strict):
    """An API key: give `key` (hashed when read, never kept) or its `sha256`."""

    name: str = Field(description="who holds it (in logs and metrics; never the key)")
    key: str | None = Field(None, description="the key itself (prefer sha256 in files)")
    sha256: str | None = Field(None, description="hex SHA-256 of the key")
    models: list[str] = Field(default_factory=lambda: ["*"], description="model ids, * for all")
    requests_per_minute: int | None = Field(
        None, ge=1, description="its own limit (default: limits.requests_per_minute)"
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="its own limit (default: limits.tokens_per_minute)"
    )
    admin: bool = Field(False, description="may call /admin (kill switch, experts)")

    @model_validator(mode="after")
    def _one_secret(self) -> Key:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"key {self.name!r}: give exactly one of key or sha256")
        if self.key is not None:
            if len(self.key) < 16:
                raise ValueError(f"key {self.name!r}: use at least 16 characters")
            self.sha256, self.key = hash_key(self.key), None
        assert self.sha256 is not None
        self.sha256 = self.sha256.lower()
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"key {self.name!r}: sha256 must be 64 hex digits")
        return self


class Limits(_Strict):
    requests_per_minute: int = Field(600, ge=1, description="per key, unless the key says")
    tokens_per_minute: int = Field(200_000, ge=1, description="prompt + reply tokens per key")
    storage: str = Field(
        "memory://",
        description="where rate-limit counters live: memory:// (one process) or "
        "redis://host:port (shared by replicas)",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body")
    max_tokens: int = Field(2048, ge=1, description="largest max_tokens a request may ask")
    timeout_s: float = Field(300.0, gt=0, description="a request running longer is stopped")


class KillSwitch(_Strict):
    file: Path | None = Field(
        None,
        description="a flag file: while it exists the service is off (its text, if any, is "
        "the message); a line `model: NAME` switches only that model off",
    )
    message: str = Field(
        "The assistant is paused for maintenance. Please try again later.",
        description="what clients and the web page show while switched off",
    )


class ServeSettings(_Strict):
    model: str = Field("default", description="the base model: `default`, `tiny` or a folder")
    experts: list[Path] = Field(
        default_factory=list, description="folders experts load from (admin adds only these)"
    )
    kb: Path | None = Field(None, description="a knowledge base built by `domainlm kb build`")
    chat_format: str = Field("auto", description="chat format of the base (auto: detected)")
    trust_remote_code: bool = Field(False, description="allow the model folder's own code")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port (0: any free one)")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    profiles: list[Profile] = Field(default_factory=list, description="assistant profiles")
    keys: list[Key] = Field(
        default_factory=list, description="API keys; none: no key needed (listen on loopback)"
    )
    keys_file: Path | None = Field(None, description="a YAML list of keys, read at start")
    limits: Limits = Field(default_factory=Limits)
    kill_switch: KillSwitch = Field(default_factory=KillSwitch)
    log_content: bool = Field(False, description="put message text in the access log")
    grace_s: float = Field(10.0, ge=0, description="on shutdown, running requests get this long")
    web: bool = Field(True, description="serve the chat page at /")

    @field_validator("profiles")
    @classmethod
    def _unique(cls, profiles: list[Profile]) -> list[Profile]:
        names = [p.name for p in profiles]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"profile names must be unique: {', '.join(twice)}")
        return profiles

    def all_keys(self) -> list[Key]:
        """The configured keys and those of `keys_file`."""
        keys = list(self.keys)
        if self.keys_file is not None:
            keys += read_keys(self.keys_file)
        return keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> list[Key]:
    raw = read_yaml(path, "keys file", "a list of {name, sha256, models}")
    if not isinstance(raw, list):
        raise DomainLMError(f"keys file {path}: expected a list of keys")
    try:
        return [Key.model_validate(item) for item in raw]
    except ValidationError as exc:
        raise DomainLMError(f"keys file {path}: {first_error(exc)}") from None


def load_settings(path: Path | None, overrides: list[str] | None = None) -> ServeSettings:
    """Settings from a YAML file (None: the defaults) with `a.b=value` overrides applied.

    Raises:
        DomainLMError: an unreadable file, an override without `=` or with a value that is
            not YAML, an unknown key or a value of the wrong type (naming the key).
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw = read_yaml(path, "serve config", "recipes/serve.yaml")
        if raw is not None and not isinstance(raw, dict):
            raise DomainLMError(f"{path}: expected a mapping of settings")
        data = raw or {}
        base = path.parent
    for item in overrides or []:
        apply_override(data, item, example="port=8080")  # as a recipe's overrides are read
    try:
        settings = ServeSettings.model_validate(data)
    except ValidationError as exc:
        raise DomainLMError(f"{path or 'settings'}: {first_error(exc)}") from None
    # Paths in the file are relative to the file.
    settings.experts = [p if p.is_absolute() else base / p for p in settings.experts]
    if settings.kb is not None and not settings.kb.is_absolute():
        settings.kb = base / settings.kb
    if settings.keys_file is not None and not settings.keys_file.is_absolute():
        settings.keys_file = base / settings.keys_file
    if settings.kill_switch.file is not None and not settings.kill_switch.file.is_absolute():
        settings.kill_switch.file = base / settings.kill_switch.file
    return settings
