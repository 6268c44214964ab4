"""The Prometheus metric families, defined once for the whole process.

They live in prometheus-client's default registry, next to its process and platform collectors,
so ``/metrics`` shows CPU, memory and file descriptors as well.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double every counter on the page and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets from 1 ms to 30 s: one-sentence requests sit at the bottom, bulk ones at the top.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

REQUESTS = Counter(
    "embed_requests", "HTTP requests by route template and status.", ["route", "status"]
)
REQUEST_DURATION = Histogram(
    "embed_request_duration_seconds",
    "Time from a request's arrival to its response, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
INPUTS = Counter("embed_inputs", "Texts embedded, by model.", ["model"])
TOKENS = Counter("embed_tokens", "Tokens fed to the model (special tokens included).", ["model"])
INFERENCE_DURATION = Histogram(
    "embed_inference_duration_seconds",
    "Time of one forward pass (tokenized batch in, pooled vectors out).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "embed_batch_size", "Rows in one forward pass.", ["model"], buckets=SIZE_BUCKETS
)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_TOKENS = Histogram(
    "embed_batch_tokens",
    "Tokens in one forward pass: real (the texts' own) or padded (rows x longest row).",
    ["model", "kind"],
    buckets=TOKEN_BUCKETS,
)
QUEUE_DEPTH = Gauge("embed_queue_depth", "Inputs waiting for a forward pass.", ["model"])
QUEUE_WAIT = Histogram(
    "embed_queue_wait_seconds",
    "Time from a request's arrival in the queue to its first forward pass.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
MODELS_DEPLOYED = Gauge(
    "embed_models_deployed",
    "1 for each model version this server serves now (sum() is how many).",
    ["model", "version"],
)
MODEL_ACTIONS = Counter(
    "embed_model_actions",
    "Model lifecycle actions (register, deploy, undeploy, delete, set_default; converge when a "
    "replica follows the shared state), by outcome: ok, refused or failed.",
    ["action", "outcome"],
)
