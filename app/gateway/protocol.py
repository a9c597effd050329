"""The parts of OpenAI's request bodies the gateway reads; the rest passes through."""

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class CompletionLike(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions requests."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = None


class CompletionRequest(CompletionLike):
    prompt: str | list = Field(...)


class ChatCompletionRequest(CompletionLike):
    messages: list[dict] = Field(min_length=1)
