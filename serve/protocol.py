"""Request models of every route, with their constraints declared (pydantic ``Field``).

Limits that depend on the server's settings (``max_tokens`` ceiling, ``n``,
stop count, batch sizes) are checked in :func:`serve.bridge.check_sampling` before anything
is tokenised. Unknown fields are ignored (clients send optional extras such as
``user`` or ``store``); features convtune does not have are refused with 400
and the field named, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convtune.tenancy import BEST_OF_N


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


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
