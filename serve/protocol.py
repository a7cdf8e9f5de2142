"""Request models of every route, with their constraints declared (pydantic ``Field``).

Each generating request builds its own decoding settings, ``request.to_sampling(settings)``,
which also checks the limits that depend on the server's settings (``max_tokens`` ceiling,
``n``, stop count and length, JSON schema support) before anything is tokenised, naming
the request's own field in the 400. Unknown fields are ignored (clients send optional extras such as
``user`` or ``store``); features convtune does not have are refused with 400
and the field named, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from convtune.tenancy import BEST_OF_N
from serve.engine import Sampling
from serve.errors import invalid
from serve.settings import ServerSettings


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _sampling(limits: ServerSettings, *, max_tokens: int | None, max_tokens_param: str, stop: list[str],
              stop_param: str, n: int = 1, schema: dict[str, Any] | None = None,
              schema_param: str = "response_format", **decoding: Any) -> Sampling:
    """Decoding settings with the server's limits checked (400 naming the request's field).
    ``decoding``: temperature, top_p, top_k, seed, repetition_penalty, strip_links."""
    if max_tokens is not None and max_tokens > limits.max_tokens_limit:
        raise invalid(max_tokens_param, f"{max_tokens_param} must be <= {limits.max_tokens_limit}")
    if n > limits.max_n:
        raise invalid("n", f"n must be <= {limits.max_n}")
    if len(stop) > limits.max_stop:
        raise invalid(stop_param, f"at most {limits.max_stop} stop sequences")
    for item in stop:
        if not item:
            raise invalid(stop_param, "stop sequences must not be empty")
        if len(item) > limits.max_stop_chars:
            raise invalid(stop_param, f"stop sequences must be at most {limits.max_stop_chars} characters")
    if schema is not None:
        from convtune.guided import SchemaError, check_schema

        try:
            check_schema(schema)
        except SchemaError as exc:
            raise invalid(schema_param, f"{schema_param}: unsupported JSON schema: {exc}") from None
    return Sampling(max_tokens=max_tokens or limits.default_max_tokens, stop=tuple(stop), schema=schema,
                    **decoding)


class RetrievalSpec(BaseModel):
    """convtune extension: ground the answer in a collection of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(min_length=1, max_length=64)
    k: int = Field(4, ge=1, le=64)


# ---- OpenAI ------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=2000)
    schema_: dict[str, Any] = Field(alias="schema", default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``json_object``: one JSON object; ``json_schema``: JSON matching ``json_schema.schema``.
    Both are enforced while decoding (grammar-guided), not asked for and hoped."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    def decoding_schema(self) -> dict[str, Any] | None:
        """The JSON schema decoding follows (None: free text)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.schema_
        return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class BestOf(BaseModel):
    """convtune extension: sample ``n`` answers, return the one the tenant's reward model scores highest."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(4, ge=BEST_OF_N[0], le=BEST_OF_N[1])
    reward_model: str = Field(min_length=1, max_length=200, description="one of your reward models")


class ChatCompletionRequest(_Request):
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (default) is greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    response_format: ResponseFormat | None = None
    retrieval: RetrievalSpec | None = None
    best_of: BestOf | None = None
    # refused when used (convtune has no tools or logprobs)
    tools: list[Any] | None = None
    logprobs: bool | None = None

    def to_sampling(self, limits: ServerSettings) -> Sampling:
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise invalid("response_format.json_schema",
                          "response_format.json_schema is required with type json_schema")
        json_schema = fmt is not None and fmt.type == "json_schema"
        return _sampling(
            limits, max_tokens=self.max_completion_tokens or self.max_tokens,
            max_tokens_param=("max_completion_tokens" if self.max_completion_tokens is not None
                              else "max_tokens"),
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []), stop_param="stop",
            n=self.n, schema=fmt.decoding_schema() if fmt is not None else None,
            schema_param="response_format.json_schema" if json_schema else "response_format",
            temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            strip_links=self.retrieval is not None)  # grounded answers: markdown links stripped


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


# ---- Nebula --------------------------------------------------------------------------------------


class NebulaConversation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)


class NebulaPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instruction: str = Field(min_length=1)
    conversation: NebulaConversation | None = None


class _NebulaSampling(_Request):
    """Decoding fields Nebula's generate and chat share (its documented limits)."""

    model: str | None = Field(None, max_length=200)
    max_new_tokens: int = Field(128, ge=1)
    stop_sequences: list[str] = Field(default_factory=list, max_length=5)
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    retrieval: RetrievalSpec | None = None

    def to_sampling(self, limits: ServerSettings) -> Sampling:
        return _sampling(limits, max_tokens=self.max_new_tokens, max_tokens_param="max_new_tokens",
                         stop=list(self.stop_sequences), stop_param="stop_sequences",
                         temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                         repetition_penalty=self.repetition_penalty, strip_links=self.retrieval is not None)


class NebulaGenerateRequest(_NebulaSampling):
    prompt: str | NebulaPrompt


class NebulaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["human", "assistant"]
    text: str


class NebulaChatRequest(_NebulaSampling):
    system_prompt: str | None = None
    messages: list[NebulaMessage] = Field(min_length=1)


class NebulaEmbedRequest(_Request):
    text: str
    model: str | None = Field(None, max_length=200)


# ---- call analytics ---------------------------------------------------------------------------


class AnalyzeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, min_length=1, max_length=64)
    speaker: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, ge=0)
    role: str | None = Field(None, max_length=20)


class AnalyzeConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[AnalyzeMessage] = Field(min_length=1)
    channel: str | None = Field(None, max_length=50)
    language: str | None = Field(None, max_length=20)


class AnalyzeRequest(_Request):
    model: str | None = Field(None, max_length=200)
    conversation: AnalyzeConversation
    tasks: list[str] | None = Field(None, min_length=1, max_length=32)
    redact: bool = True


class ParseRequest(_Request):
    """convtune extension: a transcript or conversations file as text, read by the importers."""

    text: str = Field(min_length=1, max_length=5_000_000)
    format: Literal["convtune", "openai", "csv", "transcript", "symbl"] | None = None
    filename: str = Field("pasted", min_length=1, max_length=200, pattern=r"^[^/\\]+$")


# ---- batches ----------------------------------------------------------------------------------


class BatchCreate(_Request):
    input_file_id: str = Field(min_length=1, max_length=48)
    endpoint: Literal["/v1/conversations/analyze", "/v1/chat/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16,
                                            description="convtune: the value of webhook_url is a webhook")

    @field_validator("metadata")
    @classmethod
    def _short(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v and any(len(k) > 64 or len(x) > 2000 for k, x in v.items()):
            raise ValueError("metadata keys are at most 64 characters, values at most 2000")
        return v


# ---- retrieval --------------------------------------------------------------------------------


class CollectionCreate(_Request):
    name: str = Field(min_length=1, max_length=64)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsAdd(_Request):
    documents: list[DocumentIn] = Field(default_factory=list, max_length=2048)
    conversations: list[dict[str, Any]] = Field(default_factory=list, max_length=512)


class SearchRequest(_Request):
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1, le=64)
    speaker: str | None = None
    channel: str | None = None
    date_from: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    date_to: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    tags: list[str] = Field(default_factory=list)
