"""The Open Inference Protocol over gRPC against HTTP ``/embed``, on one server: part of
``make bench``.

Two loads, each over both protocols, interleaved in rounds: 64 clients sending one STS-B
sentence per request, and 4 clients sending 32. The gRPC clients share one ``grpc.aio`` channel
(as gRPC users do) and call ``ModelInfer`` with the texts in ``raw_input_contents``, as
``tritonclient.grpc`` sends them; the HTTP clients are keep-alive connections posting JSON to
``/embed``. Both load generators are asyncio Python in one process of their own, on the same
cores as the server (the machine has two). Besides sentences/s and latency, the server's CPU per
request: its event-loop thread's (HTTP parsing, gRPC's Python side, the routes) and the whole
process's, from ``/proc``. Run alone::

    .venv/bin/python scripts/bench_protocol.py
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BUNDLES, MODELS, ROOT, SERVER_PYTHON, free_port, sentences

LOADS = {"64 clients x 1 sentence": (64, 1), "4 clients x 32 sentences": (4, 32)}
SECONDS, WARMUP, ROUNDS = 10.0, 2.0, 2
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextmanager
def server() -> Any:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EMBED_PORT": str(http_port),
        "EMBED_GRPC_PORT": str(grpc_port),
        "EMBED_MODEL_DIR": str(MODELS / BUNDLES["fp32"]),
        "EMBED_LOG_LEVEL": "warning",  # no access line per request: the same for both
    }
    process = subprocess.Popen(
        [str(SERVER_PYTHON), "-m", "app"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    try:
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        yield process, http_port, grpc_port
    finally:
        process.terminate()
        process.wait(timeout=60)


# --- the load generator (a child process on the server's environment) ----------------------


async def http_client(port: int, batches: list[list[str]], stop: float, seen: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    while time.perf_counter() < stop:
        body = json.dumps({"inputs": batches[index % len(batches)]}).encode()
        index += 1
        started = time.perf_counter()
        writer.write(
            b"POST /embed HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        seen.append(time.perf_counter() - started)
    writer.close()


async def grpc_client(stub: Any, batches: list[list[str]], stop: float, seen: list[float]) -> None:
    from app.v2.inference import encode_bytes
    from app.v2.stubs import grpc_service_pb2 as pb

    requests = []
    for texts in batches:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="TEXT", datatype="BYTES", shape=[len(texts)]
        )
        request = pb.ModelInferRequest(model_name=BUNDLES["fp32"], inputs=[tensor])
        request.raw_input_contents.append(encode_bytes(texts))
        requests.append(request)
    index = 0
    while time.perf_counter() < stop:
        started = time.perf_counter()
        await stub.ModelInfer(requests[index % len(requests)])
        index += 1
        seen.append(time.perf_counter() - started)


async def load(protocol: str, port: int, clients: int, per_request: int, seconds: float) -> Any:
    texts = sentences()
    batches = [
        [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
        for i in range(len(texts) // per_request)
    ]
    seen: list[float] = []
    stop = time.perf_counter() + seconds
    if protocol == "grpc":
        import grpc

        from app.v2.stubs import grpc_service_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            await asyncio.gather(
                *(grpc_client(stub, batches[i::clients], stop, seen) for i in range(clients))
            )
    else:
        await asyncio.gather(
            *(http_client(port, batches[i::clients], stop, seen) for i in range(clients))
        )
    return seen


def run_load(protocol: str, port: int, clients: int, per_request: int) -> dict[str, Any]:
    """A child: warm up, then load for SECONDS; JSON on stdout."""
    asyncio.run(load(protocol, port, clients, per_request, WARMUP))
    print("go", flush=True)  # the parent reads the server's CPU now
    sys.stdin.readline()
    started = time.perf_counter()
    seen = asyncio.run(load(protocol, port, clients, per_request, SECONDS))
    elapsed = time.perf_counter() - started
    seen.sort()
    return {
        "requests": len(seen),
        "seconds": elapsed,
        "p50_ms": seen[len(seen) // 2] * 1000,
        "p99_ms": seen[int(len(seen) * 0.99)] * 1000,
    }


# --- the parent ------------------------------------------------------------------------------


def measure(pid: int, protocol: str, port: int, clients: int, per_request: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [
            str(SERVER_PYTHON),
            __file__,
            "--load",
            protocol,
            str(port),
            str(clients),
            str(per_request),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    assert child.stdout.readline().strip() == "go"
    loop_before, process_before = cpu_seconds(pid, pid), cpu_seconds(pid)
    child.stdin.write("\n")
    child.stdin.flush()
    result: dict[str, Any] = json.loads(child.stdout.readline())
    loop_cpu, process_cpu = cpu_seconds(pid, pid) - loop_before, cpu_seconds(pid) - process_before
    assert child.wait(timeout=60) == 0
    result["loop_ms_per_request"] = loop_cpu * 1000 / result["requests"]
    result["process_ms_per_request"] = process_cpu * 1000 / result["requests"]
    result["sentences_per_s"] = result["requests"] * per_request / result["seconds"]
    return result


def section() -> tuple[str, bool]:
    """The benchmark's protocol section in Markdown (a report: no goal to meet)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with server() as (process, http_port, grpc_port):
        for round_ in range(ROUNDS):
            for name, (clients, per_request) in LOADS.items():
                for protocol, port in (("grpc", grpc_port), ("http", http_port)):
                    print(f"protocol round {round_ + 1}: {protocol}, {name} ...", flush=True)
                    run = measure(process.pid, protocol, port, clients, per_request)
                    runs.setdefault((name, protocol), []).append(run)
    rows = []
    for (name, protocol), found in runs.items():
        best = max(found, key=lambda r: r["sentences_per_s"])
        label = "gRPC ModelInfer" if protocol == "grpc" else "HTTP /embed"
        rows.append(
            f"| {name} | {label} | {best['sentences_per_s']:,.0f} | {best['p50_ms']:.1f} | "
            f"{best['p99_ms']:.1f} | {best['loop_ms_per_request']:.2f} | "
            f"{best['process_ms_per_request']:.2f} |"
        )
    lines = [
        "## The inference protocol: gRPC against HTTP",
        "",
        f"One server (fp32 bundle, default settings, access log off for both), {ROUNDS} "
        f"interleaved rounds of {SECONDS:.0f} s per run after a {WARMUP:.0f} s warm-up; the "
        "best round of each. Clients: asyncio Python in a process of its own on the same cores; "
        "gRPC on one shared channel with the texts in raw_input_contents (as tritonclient sends "
        "them), HTTP on keep-alive connections posting JSON. CPU per request: the server's "
        "event-loop thread, and the whole server process (the passes included).",
        "",
        "| load | protocol | sentences/s | p50 ms | p99 ms | event loop CPU ms/request | "
        "process CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    return "\n".join(lines), True


def main() -> int:
    if sys.argv[1:2] == ["--load"]:
        protocol, port, clients, per_request = sys.argv[2:6]
        result = run_load(protocol, int(port), int(clients), int(per_request))
        print(json.dumps(result), flush=True)
        return 0
    text, _ = section()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
