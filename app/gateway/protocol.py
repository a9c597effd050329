"""The parts of OpenAI's request bodies the gateway reads; the rest passes through.

Fields that multiply a request's cost (n, best_of, logprobs, prompt lists) are declared so
that the serving logic can hold them to the deployment's caps; their types follow OpenAI's
API and vLLM's extensions (`prompt_logprobs`)."""

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class CompletionLike(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions requests. Sampling fields
    are declared for the OpenAPI document (and typed: a wrong type is a 400 here); fields
    not declared pass through to vLLM unchanged."""

    model_config = ConfigDict(extra="allow")
    # Fields that ask for that many log-probabilities per position (capped together).
    LOGPROB_COUNTS: ClassVar[tuple[str, ...]] = ("prompt_logprobs",)
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    ignore_eos: bool | None = None  # vLLM's: fixed output lengths for benchmarks
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = None
    n: int | None = Field(default=None, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    prompt_logprobs: int | None = Field(default=None, ge=0)

    def prompt_count(self) -> int:
        return 1

    def prompt_text(self) -> str | None:
        """The prompt as text, for bytes of work and quality scoring; None where it is not
        one text (token ids, several prompts)."""
        return None


class CompletionRequest(CompletionLike):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    logprobs: int | None = Field(default=None, ge=0)
    LOGPROB_COUNTS = ("prompt_logprobs", "logprobs")

    def prompt_count(self) -> int:
        # A list of token ids is one prompt; a list of strings or of id lists is several.
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            return len(self.prompt)
        return 1

    def prompt_text(self) -> str | None:
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 and isinstance(self.prompt[0], str) else None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(CompletionLike):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)
    LOGPROB_COUNTS = ("prompt_logprobs", "top_logprobs")  # logprobs is a yes/no here

    def prompt_text(self) -> str | None:
        """The messages' text, one message a paragraph (without the chat template, which
        differs between models: the same bytes for every variant)."""
        parts = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text for part in content)
            if content:
                parts.append(content)
        return "\n\n".join(parts)
