"""Every knob of the service, read once from the environment (prefix ``EMBED_``).

Settings are built once at start-up and passed down; tests build their own ``Settings(...)``.
This module imports nothing from the core, the backends or the API: each layer reads what it
needs from ``Settings``.
List values are comma-separated in the environment (``EMBED_X=a,b``), never JSON.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    """Turn ``"a, b,,c"`` into ``["a", "b", "c"]``; leave lists as they are."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list setting written as comma-separated text in the environment."""

SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_commas)]
"""Comma-separated secrets: kept out of ``repr`` and logs."""

LogLevel = Literal["critical", "error", "warning", "info", "debug"]

Device = Literal["cpu", "cuda", "auto"]
"""Where passes run: the CPU, the GPU (or fail), or the GPU when there is one."""

Backend = Literal["onnxruntime", "openvino", "auto"]
"""The runtime that runs a bundle's graph (``app.backends.onnx.runtimes``)."""

Precision = Literal["fp32", "bf16", "auto"]
"""What a pass computes in: fp32, or bf16 where the CPU and the bundle's gate allow it."""


REQUEST_TOKENS = 32768
"""``EMBED_MAX_REQUEST_TOKENS``' default: half the default queue, 128 inputs of 256 tokens."""


class Settings(BaseSettings):
    """The service's configuration; each field is an ``EMBED_<NAME>`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="the Open Inference Protocol over gRPC (with the health service); 0: off",
    )
    model_dir: Path = Field(
        default=Path("models/all-MiniLM-L6-v2"),
        description="the one bundle to serve when neither EMBED_MODELS nor EMBED_MODELS_DIR is set",
    )
    models: CommaList = Field(
        default=[], description="bundle folders to serve; a bare name is looked up in models_dir"
    )
    models_dir: Path | None = Field(default=None, description="serve every bundle under it")
    default_model: str | None = Field(
        default=None, description="the model id a request without `model` gets; else the first"
    )
    default_prompt_name: str | None = Field(
        default=None,
        description="the prompt a request without prompt or prompt_name gets, for each model "
        "that has a prompt of that name; else the model's own default",
    )
    api_keys: SecretList = Field(default=[], description="Bearer keys; empty means no auth")
    admin_keys: SecretList = Field(
        default=[],
        description="Bearer keys for /admin/ (also accepted as user keys); empty: no admin API",
    )
    repository: Path = Field(
        default=Path("repository"), description="the model repository folder (uploaded bundles)"
    )
    repository_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="seconds between looks at the repository's shared state (replicas converge)",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024,
        description="a bundle upload's body, and its archive uncompressed, at most",
    )
    cors_origins: CommaList = Field(default=[], description="browser origins allowed; * for any")
    device: Device = "cpu"
    backend: Backend = Field(
        default="auto",
        description="the runtime: onnxruntime, openvino, or auto (openvino where it runs the "
        "bundle in bf16, else onnxruntime)",
    )
    precision: Precision = Field(
        default="auto",
        description="fp32; bf16 (a CPU with AVX512_BF16 or AMX and a bundle whose bf16 gate "
        "held, on openvino); auto: bf16 where it may run, else fp32",
    )
    inference_workers: int = Field(
        default=0, ge=0, description="forward passes run at once; 0: one per core (one on CUDA)"
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="onnxruntime threads in one pass; 0: cores / workers"
    )
    lone_pass_threads: int = Field(
        default=0,
        ge=0,
        description="threads for a pass that runs alone (nothing else running or queued): a "
        "second runner of each model over these; 0: every core; at most intra_op_threads: none",
    )
    inter_op_threads: int = Field(default=1, ge=0)
    max_inputs: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_batch_tokens: int = Field(default=1024, ge=256, description="padded tokens per pass")
    max_batch_rows: int = Field(default=64, ge=1)
    pass_overhead_tokens: int = Field(
        default=0, ge=0, description="a pass's fixed cost in tokens; 0: 8 per thread (32 on CUDA)"
    )
    max_sparse_pass_tokens: int = Field(
        default=2048,
        ge=64,
        description="padded tokens in one pass of a sparse model, whose graph holds tokens x "
        "vocabulary logits before the max (2,048 x 30,522 floats: 250 MB)",
    )
    max_queue_tokens: int = Field(default=65536, ge=256)
    max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    max_request_tokens: int = Field(
        default=REQUEST_TOKENS,
        ge=1,
        description="tokens (after truncation) one request may hold; at most max_queue_tokens "
        "(left unset, it is lowered to a smaller queue)",
    )
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_retry_after_s: int = Field(default=30, ge=1, description="the most Retry-After says")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request's headers by then")
    body_min_rate_bps: int = Field(
        default=1024, ge=0, description="a slower request body is cut; 0: never"
    )
    body_rate_grace_s: float = Field(
        default=5.0, gt=0, description="seconds into a body before its rate is checked"
    )
    keepalive_timeout_s: float = Field(default=5.0, gt=0, description="idle connections closed")
    max_connections: int = Field(
        default=1000, ge=1, description="open connections; never above the open-file limit"
    )
    max_header_bytes: int = Field(
        default=8192, ge=256, description="one header line; four times this for all of them"
    )
    max_headers: int = Field(default=100, ge=1)
    shutdown_grace_s: int = Field(
        default=30, ge=0, description="on SIGTERM, seconds the requests in flight may take"
    )
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="before")
    @classmethod
    def _request_fits_the_queue(cls, data: Any) -> Any:
        """Left unset, the request limit is at most the queue: lowering the queue alone is
        never a contradiction."""
        if isinstance(data, dict) and "max_request_tokens" not in data:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # reported by the field
                queue = int(data["max_queue_tokens"])
                return {**data, "max_request_tokens": min(REQUEST_TOKENS, queue)}
        return data

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        if self.max_request_tokens > self.max_queue_tokens:
            raise ValueError(
                f"EMBED_MAX_REQUEST_TOKENS={self.max_request_tokens} is more than "
                f"EMBED_MAX_QUEUE_TOKENS={self.max_queue_tokens}: such a request could never be "
                "queued; lower the first or raise the second"
            )
        return self
