"""What a server runs on: the base, its experts, the engine, the chat format, the KB and one
Assistant per profile, put together from ServeSettings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.chat.formats import ChatFormat
from domainlm.engine.adapters import BASE, AdapterPool
from domainlm.engine.assistant import Assistant
from domainlm.engine.generation import Engine, Sampling
from domainlm.errors import DomainLMError
from domainlm.serve.settings import Profile, ServeSettings

#: The model id of the base model in /v1/models (experts list it as their `parent`).
BASE_ID = "base"


@dataclass
class Runtime:
    settings: ServeSettings
    pool: AdapterPool
    engine: Engine
    format: ChatFormat
    kb: Any = None
    assistants: dict[str, Assistant] = field(default_factory=dict)  # by profile name
    raw: Assistant | None = None  # for plain model calls: tool descriptions, no KB

    def profile(self, name: str) -> Profile | None:
        return next((p for p in self.settings.profiles if p.name == name), None)

    def experts(self) -> list[str]:
        """The experts served: loaded here, or listed by the upstream server."""
        upstream = self.settings.engine.backend == "openai"
        names = list(getattr(self.engine, "names", [])) if upstream else self.pool.names
        return [name for name in names if name != BASE]

    def close(self) -> None:
        self.engine.close()


def build_runtime(settings: ServeSettings) -> Runtime:
    """Load the model, experts, KB and engine that `settings` name.

    Raises:
        DomainLMError: a missing model, experts folder or KB, a profile naming an expert
            or toolset that is not there, an upstream server that cannot be reached.
    """
    from domainlm.chat.formats import get_format
    from domainlm.engine.setup import load_pool, make_toolset

    for folder in settings.experts:
        if not folder.is_dir():
            raise DomainLMError(f"experts folder {folder} does not exist")
    pool = load_pool(
        settings.model, list(settings.experts), trust_remote_code=settings.trust_remote_code
    )
    base = pool.base
    engine = _engine(settings, pool)
    chat_format = get_format(settings.chat_format, base.tokenizer)
    kb = None
    if settings.kb is not None:
        from domainlm.kb.base import KnowledgeBase

        kb = KnowledgeBase.open(settings.kb)
    runtime = Runtime(settings, pool, engine, chat_format, kb)
    runtime.raw = Assistant(pool, chat_format, engine=engine)
    try:
        for profile in settings.profiles:
            if profile.kb and kb is None:
                raise DomainLMError(f"profile {profile.name}: kb is on but no kb is configured")
            if profile.expert not in ("auto", BASE, *runtime.experts()):
                why = pool.skipped.get(profile.expert)
                raise DomainLMError(
                    f"profile {profile.name}: no expert {profile.expert!r}"
                    + (f" ({why})" if why else f" (experts: {', '.join(runtime.experts())})")
                )
            runtime.assistants[profile.name] = Assistant(
                pool,
                chat_format,
                kb=kb if profile.kb else None,
                toolset=make_toolset(profile.tools),
                sampling=Sampling(
                    max_new_tokens=profile.max_tokens or 512,
                    temperature=profile.temperature if profile.temperature is not None else 0.0,
                ),
                engine=engine,
            )
    except DomainLMError:
        engine.close()
        raise
    return runtime


def _engine(settings: ServeSettings, pool: AdapterPool) -> Engine:
    if settings.engine.backend == "openai":
        from domainlm.engine.upstream import UpstreamEngine

        key = os.environ.get(settings.engine.api_key_env) if settings.engine.api_key_env else None
        assert settings.engine.url is not None
        context = int(getattr(pool.base.model.config, "max_position_embeddings", 0) or 0)
        return UpstreamEngine(
            settings.engine.url,
            pool.base.tokenizer,
            api_key=key,
            context=context,
            max_concurrency=settings.engine.max_rows,
            max_queue=settings.engine.max_queue,
        )
    from domainlm.engine.local import LocalEngine

    return LocalEngine(pool, max_rows=settings.engine.max_rows, max_queue=settings.engine.max_queue)


def within(path: Path, roots: list[Path]) -> bool:
    """Whether `path` lies inside one of `roots` (after resolving links and `..`)."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)
