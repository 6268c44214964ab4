"""The onnxruntime session: which execution provider, how many threads, and failing loudly.

``EMBED_DEVICE=cpu`` runs on the CPU; ``cuda`` needs the CUDA provider and stops the start-up
with a hint when it is missing or fails to load (onnxruntime would fall back to the CPU in
silence); ``auto`` takes CUDA when it is there and says which it took.
"""

from __future__ import annotations

import logging

import onnxruntime as ort

from app.errors import StartupError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CUDA_HINT = (
    "install the CUDA build of onnxruntime in place of the CPU one "
    "(pip uninstall onnxruntime && pip install onnxruntime-gpu==<same version>) with CUDA 12 "
    "and cuDNN 9 libraries, or set EMBED_DEVICE=cpu"
)


DEVICES = ("cpu", "cuda", "auto")


def runs_on_gpu(device: str) -> bool:
    """Whether ``EMBED_DEVICE`` asks for the GPU and onnxruntime has the CUDA provider."""
    return device != "cpu" and CUDA in ort.get_available_providers()


def select_providers(device: str) -> list[str]:
    """The execution providers to ask onnxruntime for, best first, for ``EMBED_DEVICE``."""
    if device not in DEVICES:
        raise StartupError(f"EMBED_DEVICE={device} is none of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise StartupError(
            f"EMBED_DEVICE=cuda but onnxruntime {ort.__version__} has no CUDA provider "
            f"(it has {', '.join(available)}); {CUDA_HINT}"
        )
    log.info("EMBED_DEVICE=auto: no CUDA provider in onnxruntime, running on the CPU")
    return [CPU]


def create_session(
    model_path: str, *, device: str, intra_op_threads: int, inter_op_threads: int
) -> ort.InferenceSession:
    """Open ``model_path`` on the provider ``device`` asks for; fail loudly, never silently."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # onnxruntime's threads spin between ops by default; on a few cores that burns the CPU the
    # event loop needs to parse the next requests (docs/threads.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = select_providers(device)
    try:
        session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise StartupError(
            f"onnxruntime cannot load {model_path}: {exc}; re-export the bundle"
        ) from None
    active = session.get_providers()[0]
    if device == "cuda" and active != CUDA:
        # onnxruntime falls back to the CPU when the CUDA libraries fail to load.
        raise StartupError(f"EMBED_DEVICE=cuda but the CUDA provider failed to load; {CUDA_HINT}")
    if device == "auto":
        log.info("EMBED_DEVICE=auto: running on %s", active)
    return session
