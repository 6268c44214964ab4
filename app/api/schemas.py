"""Wire schemas: the JSON the routes take and give, apart from the engine's own types.

Native routes forbid unknown fields and take strict types: ``"normalize": "true"`` is a 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NonEmptyTexts = Annotated[list[str], Field(min_length=1)]


class StrictModel(BaseModel):
    """A request body: no unknown fields, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class EmbedRequest(StrictModel):
    inputs: str | NonEmptyTexts = Field(
        description="One text, or a list of texts; each gets one vector, in input order.",
        examples=["What is the capital of France?"],
    )
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


class SimilarityRequest(StrictModel):
    source: str = Field(examples=["A man is playing a guitar."])
    targets: NonEmptyTexts = Field(
        examples=[["A man plays an instrument.", "A woman is slicing an onion."]]
    )
    truncate: bool = True


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="Cosine similarity of the source with each target.")
    usage: Usage


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str


class LiveResponse(BaseModel):
    status: Literal["alive"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
