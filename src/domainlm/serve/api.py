"""The OpenAI request bodies DomainLM accepts, and its errors in OpenAI's shape.

Fields OpenAI defines that DomainLM cannot honour (`n` > 1, `logprobs`, penalties other
than 0, `logit_bias`, JSON schema output) are refused with a 400 that names the field,
instead of being silently ignored; unknown fields are refused as OpenAI refuses them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class _Sampled(_Body):
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    user: str | None = Field(None, max_length=256)
    # Extensions vLLM also takes:
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)

    def unsupported(self) -> APIError | None:
        """A 400 for a field set to what DomainLM does not do."""
        checks = [
            ("n", self.n != 1, "only n=1 is supported"),
            ("presence_penalty", self.presence_penalty != 0, "use repetition_penalty instead"),
            ("frequency_penalty", self.frequency_penalty != 0, "use repetition_penalty instead"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("logprobs", bool(self.logprobs), "logprobs are not supported"),
        ]
        for param, bad, why in checks:
            if bad:
                return APIError(400, f"{param}: {why}", param=param, code="unsupported_value")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            return APIError(400, "stop: up to 4 non-empty strings of 256 characters", "stop")
        return None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(_Sampled):
    messages: list[Any] = Field(min_length=1)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    top_logprobs: int | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    def unsupported(self) -> APIError | None:
        error = super().unsupported()
        if error is None and self.response_format and self.response_format.type != "text":
            error = APIError(
                400,
                f"response_format {self.response_format.type} is not supported: DomainLM does "
                "not constrain decoding, so it cannot promise valid JSON",
                param="response_format",
                code="unsupported_value",
            )
        return error

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    def unsupported(self) -> APIError | None:
        error = super().unsupported()
        if error is None and (self.echo or self.suffix):
            error = APIError(400, "echo and suffix are not supported", code="unsupported_value")
        return error


def read_body(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or a 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {where}"
        elif error["type"] == "missing":
            message = f"Missing required parameter: {where}"
        else:
            message = f"Invalid value for {where}: {message}"
        raise APIError(400, message, param=where or None, code="invalid_value") from None
