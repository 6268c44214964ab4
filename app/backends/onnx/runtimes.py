"""The runtimes that run a bundle's ONNX graph: onnxruntime, and OpenVINO on the CPU.

``EMBED_BACKEND`` picks one and ``EMBED_PRECISION`` what it computes in. fp32 runs anywhere.
bf16 runs only on OpenVINO, only on a CPU that computes bf16 natively (AVX512_BF16 or AMX, read
from the CPU's flags: elsewhere it would be emulated, slower than fp32) and only for a bundle
whose bf16 gate held at export (its manifest's ``bf16``: STS-B Spearman and the worst cosine to
fp32). The precision is always set explicitly: OpenVINO's own default on a bf16 CPU is bf16.
``auto`` takes bf16 on OpenVINO where all of that holds, else fp32 on onnxruntime: measured on
a CPU without bf16 (docs/runtimes.md), OpenVINO in fp32 gained too little to be worth its memory.

A runner is one way to run the graph: ``run`` takes the feed the graph declares and gives back
its one output. A model may hold two over the same graph, the one its workers share (one thread
per pass) and one that spreads a lone pass over every core.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import onnxruntime as ort

from app.backends.onnx.bundle import Bundle
from app.backends.onnx.session import create_session
from app.errors import StartupError

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_GATE = {"stsb_spearman": 0.8195, "worst_cosine_to_fp32": 0.999}
"""What a bundle's bf16 run must reach, over every STS-B sentence, for bf16 to serve it."""
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
SHAPE_CACHE = 200
"""OpenVINO keeps compiled kernels per input shape (5,000 by default): bounded, so that a server
seeing every width from 1 to 256 tokens does not grow without end."""


class Runner(Protocol):
    """One way to run a graph: thread-safe, one output."""

    name: str  # what /info shows as the runtime, e.g. "OpenVINO CPU bf16"
    input_names: list[str]

    def run(self, output: str, feed: dict[str, NDArray[Any]]) -> NDArray[np.float32]: ...

    def shrink(self, output: str, feed: dict[str, NDArray[Any]]) -> None:
        """Run ``feed`` (a tiny pass) and give back the working memory larger passes left."""
        ...


class Choice(NamedTuple):
    backend: str
    precision: str


ONNXRUNTIME_FP32 = Choice("onnxruntime", "fp32")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags, as the kernel lists them (empty where it does not)."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX)."""
    return bool((cpu_flags() if flags is None else flags) & set(BF16_FLAGS))


def bf16_gate(bundle: Bundle) -> str | None:
    """Why bf16 may not serve ``bundle`` (``None``: its gate held at export)."""
    gate = bundle.manifest.get("bf16")
    if not isinstance(gate, dict):
        return "its manifest records no bf16 check (re-export it on a CPU with bf16)"
    if not gate.get("passed"):
        return f"its bf16 check at export did not pass: {gate.get('reason', gate)}"
    return None


def choose(backend: str, precision: str, bundle: Bundle, *, device: str = "cpu") -> Choice:
    """The runtime and precision for ``bundle`` under the settings; ``StartupError`` when the
    settings ask for what cannot run here, saying why."""
    runs_on = bundle.manifest.get("backends")  # a bundle only one runtime runs says so
    if backend != "auto" and runs_on and backend not in runs_on:
        raise StartupError(
            f"EMBED_BACKEND={backend}, but {bundle.id} runs only on {', '.join(runs_on)} "
            "(its manifest's backends); set EMBED_BACKEND=auto"
        )
    if backend == "openvino" and device != "cpu":
        raise StartupError("EMBED_BACKEND=openvino runs on the CPU only; set EMBED_DEVICE=cpu")
    if precision == "bf16":
        why = _bf16_refused(bundle, backend, device)
        if why:
            raise StartupError(f"EMBED_PRECISION=bf16 cannot serve {bundle.id}: {why}")
        return Choice("openvino", "bf16")
    if precision == "auto" and not _bf16_refused(bundle, backend, device):
        return Choice("openvino", "bf16")
    if backend == "auto":  # onnxruntime, unless the bundle runs on another runtime only
        backend = "onnxruntime" if not runs_on or "onnxruntime" in runs_on else runs_on[0]
    return Choice(backend, "fp32")


def _bf16_refused(bundle: Bundle, backend: str, device: str) -> str | None:
    if backend == "onnxruntime":
        return "bf16 runs on openvino only (EMBED_BACKEND=openvino or auto)"
    if device != "cpu":
        return "bf16 runs on the CPU only (EMBED_DEVICE=cpu)"
    if not native_bf16():
        return f"this CPU has none of {', '.join(BF16_FLAGS)}, so bf16 would be emulated"
    if "openvino" not in (bundle.manifest.get("backends") or BACKENDS):
        return "its graph runs on onnxruntime only"
    return bf16_gate(bundle)


def open_runner(
    bundle: Bundle, choice: Choice, *, device: str, streams: int, threads: int, inter_op: int = 1
) -> Runner:
    """A runner of ``bundle`` for ``streams`` passes at once on ``threads`` threads each."""
    if choice.backend == "openvino":
        return OpenVinoRunner(
            bundle.model_path, precision=choice.precision, streams=streams, threads=threads
        )
    session = create_session(
        str(bundle.model_path), device=device, intra_op_threads=threads, inter_op_threads=inter_op
    )
    return OrtRunner(session)


class OrtRunner:
    """One onnxruntime session: thread-safe as it is."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.name: str = session.get_providers()[0]
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, output: str, feed: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = self.session.run([output], feed)[0]
        return out

    def shrink(self, output: str, feed: dict[str, NDArray[Any]]) -> None:
        """onnxruntime keeps the largest pass's working memory in its arena for good; a pass
        with arena shrinkage on gives back all but what that pass needs."""
        self.session.run([output], feed, _SHRINK)


_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class OpenVinoRunner:
    """One graph compiled by OpenVINO for the CPU, with a pool of infer requests (one request
    is not thread-safe; each pass takes one, and one per stream is all that run at once)."""

    def __init__(self, path: Path, *, precision: str, streams: int, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise StartupError(
                "EMBED_BACKEND=openvino needs the openvino package "
                "(pip install -r requirements/runtime.txt)"
            ) from None
        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
            "NUM_STREAMS": str(streams),
            "INFERENCE_NUM_THREADS": str(streams * threads),
            "ENABLE_CPU_PINNING": "NO",  # the event loop shares these cores
            "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPE_CACHE),
        }
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError and others for graphs it lacks
            first = str(exc).strip().splitlines()
            raise StartupError(
                f"OpenVINO cannot run {path}: {' '.join(first[-3:])[:300]}; "
                "serve it with EMBED_BACKEND=onnxruntime"
            ) from None
        self.name = f"OpenVINO CPU {precision}"
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0

    def run(self, output: str, feed: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        with self._lock:
            self._running += 1
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer(feed)
            out: NDArray[np.float32] = np.array(request.get_tensor(output).data, copy=True)
            return out
        finally:
            self._idle.put(request)
            with self._lock:
                self._running -= 1

    def shrink(self, output: str, feed: dict[str, NDArray[Any]]) -> None:
        """Give back the intermediate buffers of past passes, if no pass is running."""
        with self._lock:
            if not self._running:
                self.compiled.release_memory()
