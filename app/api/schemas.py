"""Wire schemas: the JSON the routes take and give, apart from the engine's own types.

Native routes forbid unknown fields and take strict types: ``"normalize": "true"`` is a 422.
The OpenAI-compatible ``/v1`` routes ignore unknown fields, as OpenAI-style servers do.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NonEmptyTexts = Annotated[list[str], Field(min_length=1)]
TokenIdList = Annotated[list[int], Field(min_length=1)]
ModelField = Annotated[
    str | None,
    Field(
        description="Id of a served model (see /v1/models), or name@version for one version of "
        "it, which must be the deployed one; the default model when omitted.",
        examples=["all-MiniLM-L6-v2"],
    ),
]


PromptField = Annotated[
    str | None,
    Field(
        description='A literal prompt put before each input; "" turns prompts off. Takes '
        "precedence over prompt_name.",
        examples=["query: "],
    ),
]
PromptNameField = Annotated[
    str | None,
    Field(
        description="One of the model's prompts by name (see /info), as "
        "SentenceTransformer.encode(prompt_name=...); when neither this nor prompt is given, "
        "EMBED_DEFAULT_PROMPT_NAME if the model has it, else the model's default prompt.",
        examples=["query"],
    ),
]


class StrictModel(BaseModel):
    """A request body: no unknown fields, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Prompted(BaseModel):
    """The prompt fields of a request that embeds texts."""

    prompt: PromptField = None
    prompt_name: PromptNameField = None


class EmbedRequest(StrictModel, Prompted):
    inputs: str | NonEmptyTexts = Field(
        description="One text, or a list of texts; each gets one vector, in input order.",
        examples=["What is the capital of France?"],
    )
    model: ModelField = None
    normalize: bool = Field(default=True, description="Scale each vector to unit length.")
    truncate: bool = Field(
        default=True,
        description="Cut inputs longer than the model's limit; when false they are a 422.",
    )


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens fed to the model, special tokens included.")
    total_tokens: int


class EmbedResponse(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]]
    usage: Usage


class SparseEmbedRequest(StrictModel, Prompted):
    inputs: str | NonEmptyTexts = Field(
        description="One text, or a list of texts; each gets one sparse vector, in input order.",
        examples=["What is the capital of France?"],
    )
    model: ModelField = None
    truncate: bool = Field(
        default=True,
        description="Cut inputs longer than the model's limit; when false they are a 422.",
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="Keep at most this many entries per input, the highest (after threshold).",
    )
    threshold: float = Field(
        default=0.0, ge=0.0, description="Keep entries whose value is above this."
    )
    return_tokens: bool = Field(default=False, description="Give each entry its token too.")


class SparseEntry(BaseModel):
    index: int = Field(description="The vocabulary id.")
    value: float
    token: str | None = Field(default=None, description="With return_tokens: the token.")


class SparseEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[SparseEntry]] = Field(
        description="Per input, its entries, highest value first (ties by index)."
    )
    usage: Usage


class SimilarityRequest(StrictModel):
    source: str = Field(examples=["A man is playing a guitar."])
    targets: NonEmptyTexts = Field(
        examples=[["A man plays an instrument.", "A woman is slicing an onion."]]
    )
    model: ModelField = None
    truncate: bool = True


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="Cosine similarity of the source with each target.")
    usage: Usage


class TokenizeRequest(StrictModel, Prompted):
    inputs: str | NonEmptyTexts = Field(examples=["How many tokens is this?"])
    model: ModelField = None


class Tokenized(BaseModel):
    ids: list[int] = Field(description="Token ids, special tokens included, nothing cut off.")
    tokens: list[str]
    offsets: list[tuple[int, int]] = Field(
        description="Each token's [start, end) in the input, in characters; [0, 0] for special "
        "tokens."
    )
    count: int
    truncated: bool = Field(description="True when an embedding would cut this input short.")


class TokenizeResponse(BaseModel):
    model: str
    max_tokens: int = Field(description="The model's limit: tokens past it are cut off.")
    data: list[Tokenized]


class OpenAIEmbeddingRequest(Prompted):
    """OpenAI's embeddings request. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    input: str | NonEmptyTexts | TokenIdList | Annotated[list[TokenIdList], Field(min_length=1)] = (
        Field(
            description="A text, a list of texts, or token ids (one array, or an array of them) "
            "taken verbatim as the model's own ids.",
            examples=["What is the capital of France?"],
        )
    )
    model: ModelField = None
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: each vector as little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        default=None,
        description="Keep the first N components, then re-normalise (Matryoshka); at most the "
        "model's dimension. Out of range is a 400 `invalid_parameter`, as OpenAI answers it.",
        json_schema_extra={"minimum": 1},
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: Usage


KindField = Annotated[
    Literal["dense", "sparse", "rerank"], Field(description="What the model returns.")
]
PromptsField = Annotated[
    dict[str, str], Field(description="The model's prompts by name (prompt_name).")
]


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: KindField
    prompts: PromptsField
    default_prompt_name: str | None


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class ModelInfo(BaseModel):
    id: str
    kind: KindField
    prompts: PromptsField
    default_prompt_name: str | None = Field(
        description="The prompt used when a request names none (EMBED_DEFAULT_PROMPT_NAME, "
        "else the model's own)."
    )
    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    variant: str
    provider: str
    default: bool


class RerankRequest(StrictModel):
    """text-embeddings-inference's rerank request."""

    query: str = Field(examples=["What is the capital of France?"])
    texts: NonEmptyTexts = Field(
        examples=[["Paris is the capital of France.", "Berlin is in Germany."]]
    )
    model: Annotated[
        str | None,
        Field(description="A served rerank model; the only one served when omitted."),
    ] = None
    raw_scores: bool = Field(default=False, description="The logit, with no activation.")
    return_text: bool = Field(default=False, description="Give each result its text.")
    truncate: bool = Field(
        default=True,
        description="Cut pairs longer than the model's limit, longest text first; when false "
        "they are a 422.",
    )


class Rank(BaseModel):
    index: int = Field(description="The text's position in the request.")
    score: float
    text: str | None = None


class CohereDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str


class CohereRerankRequest(BaseModel):
    """Cohere's rerank request (``/v1/rerank`` and ``/v2/rerank``). Unknown fields are ignored,
    as Cohere-style servers do."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: str = Field(examples=["What is the capital of France?"])
    documents: Annotated[list[str | CohereDocument], Field(min_length=1)] = Field(
        description='Strings, or on /v1 {"text": ...} objects.',
        examples=[["Paris is the capital of France.", "Berlin is in Germany."]],
    )
    model: Annotated[
        str | None,
        Field(description="A served rerank model; the only one served when omitted."),
    ] = None
    top_n: int | None = Field(
        default=None, ge=1, description="Return the best N; more than the documents returns all."
    )
    return_documents: bool = Field(default=False, description="Give each result its document.")


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereDocument | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, object]


class InfoResponse(BaseModel):
    version: str
    models: list[ModelInfo]
    limits: dict[str, int | float]
    auth: bool = Field(description="Whether routes other than the probes need an API key.")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str = Field(description="The default model.")
    models: list[str] = Field(description="Every model served.")


class LiveResponse(BaseModel):
    status: Literal["alive"]


class VersionRecord(BaseModel):
    """One version of a model in the repository, and its state on the server that answers."""

    name: str
    version: int
    state: Literal["registered", "loading", "deployed", "failed", "deleted"]
    reason: str | None = Field(description="Why it failed to deploy, when state is failed.")
    kind: str = Field(examples=["dense"])
    dimension: int = Field(examples=[384])
    variant: str = Field(examples=["int8"])
    size_bytes: int = Field(description="All its files.")
    sha256: str = Field(description="Of model.onnx.")
    created: str = Field(description="RFC 3339.", examples=["2026-11-30T21:04:05+00:00"])
    description: str
    source: Literal["uploaded", "static"] = Field(
        description="static: a bundle the settings serve (EMBED_MODELS), never deleted."
    )
    rss_added_bytes: int | None = Field(
        description="What deploying it added to the server's resident memory, where measured."
    )


class DefaultModel(StrictModel):
    model: str = Field(description="A deployed model's name.", examples=["all-MiniLM-L6-v2"])


class DefaultModelResponse(BaseModel):
    default: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = Field(default=None, description="On /v1 routes: the field at fault.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class InferenceError(BaseModel):
    """An error under the Open Inference Protocol's ``/v2`` paths: the protocol's shape."""

    error: str
