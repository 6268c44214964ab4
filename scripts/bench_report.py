"""The benchmark's table and target checks, as Markdown (printed and kept in docs/)."""

from __future__ import annotations

from typing import Any

import numpy as np

COMMAND = "make bench  (= .venv-export/bin/python scripts/bench.py)"


def _row(
    name: str,
    sent_s: float,
    tok_s: float,
    p50: float,
    p99: float,
    rss: float,
    ceiling: float,
    note: str = "",
) -> str:
    shown = "| - | - |" if np.isnan(p50) else f"| {p50:.1f} | {p99:.1f} |"
    return f"| {name} | {sent_s:,.0f} | {tok_s:,.0f} {shown} {rss:,.0f} | {ceiling:.0%} | {note} |"


def _median_served(rounds: list[tuple[float, float]]) -> float:
    return float(np.median([served for _, served in rounds]))


def _layout(workers: int, cores: int) -> str:
    """How an in-process run used the cores, e.g. "2 passes at once x 1 thread"."""
    threads = max(1, cores // workers)
    passes = f"{workers} pass" + ("es" if workers > 1 else "")
    return f"{passes} at once x {threads} thread" + ("s" if threads > 1 else "")


def report(
    st: dict[str, Any],
    engines: dict[str, dict[str, Any]],
    measured: dict[str, Any],
    gemm: float,
    flops_per_token: float,
    n_sentences: int,
    machine: dict[str, Any],
    int8_spearman: float,
) -> tuple[str, bool]:
    """The Markdown report, and whether every target was met.

    ``measured`` holds the services (``services``, by variant), which fp32 variant they ran
    (``fp32``: the faster in-process), the 64-client rounds on it and on the padded graph
    (``rounds``, ``padded_rounds``: engine and service sentences/s, each round with
    ``round_seconds`` of service) and the fp32 server's start-to-ready times (``starts``).
    """
    services, fp32 = measured["services"], measured["fp32"]
    starts = measured["starts"]
    rounds = [served / engine for engine, served in measured["rounds"]]
    padded_rounds = [served / engine for engine, served in measured["padded_rounds"]]
    tokens_per_sentence = st["tokens"] / n_sentences

    def ceiling(tok_s: float) -> float:
        return tok_s * flops_per_token / gemm

    def in_process(name: str, r: dict[str, Any], note: str = "") -> tuple[str, float]:
        sent_s, tok_s = n_sentences / r["seconds"], r["tokens"] / r["seconds"]
        lat = np.array(r["latencies"]) * 1000
        p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (np.nan,) * 2
        line = _row(
            name,
            sent_s,
            tok_s,
            p50,
            p99,
            r["peak_rss_mb"],
            ceiling(tok_s),
            note,
        )
        return line, sent_s

    lines = [
        "# Benchmarks",
        "",
        f"Command: `{COMMAND}`. Input: the {n_sentences:,} STS-B test sentences "
        f"({tokens_per_sentence:.1f} tokens on average with [CLS] and [SEP]).",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GiB, "
        f"Python {machine['python']}. NumPy fp32 GEMM measured in the same run: "
        f"{gemm / 1e9:.0f} GFLOP/s; the model's dense layers cost "
        f"{flops_per_token / 1e6:.1f} MFLOP per token, so the fp32 ceiling is "
        f'{gemm / flops_per_token:,.0f} tokens/s. "Ceiling" is real tokens/s as a fraction of it.',
        "",
        "In-process latencies are per batch; service latencies are per request (wrk). Peak RSS is"
        " VmHWM of the process doing the work.",
        "",
        "| configuration | sentences/s | tokens/s | p50 ms | p99 ms | peak RSS MB | ceiling "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    line, st_rate = in_process(
        "sentence-transformers, PyTorch fp32, encode on the whole list",
        st,
        "as users call it: its own sorting and batching; every ratio is against this",
    )
    lines.append(line)
    rates = {}
    for variant, r in engines.items():
        line, rates[variant] = in_process(
            f"engine {variant}, in-process, batch {r['batch']}",
            r,
            f"{_layout(r['workers'], machine['cores'])}; "
            f"one sentence alone: {r['single_p50'] * 1000:.1f} ms",
        )
        lines.append(line)
    served = {}
    for variant, s in services.items():
        for load, run in s["runs"].items():
            clients, per_request = load.split("x")
            served[(variant, load)] = run["sentences_per_s"]
            note = f"wrk used {run['wrk_cpu']:.2f} cores"
            if run["errors"]:
                note += f", {run['errors']} errors"
            lines.append(
                _row(
                    f"service {variant}, {clients} clients x {per_request} sentence(s)",
                    run["sentences_per_s"],
                    run["sentences_per_s"] * tokens_per_sentence,
                    run["p50_ms"],
                    run["p99_ms"],
                    s["peak_rss_mb"],
                    ceiling(run["sentences_per_s"] * tokens_per_sentence),
                    note,
                )
            )
    best_fp32 = rates[fp32]
    fp32_service = float(np.median(rounds))
    int8_service = served[("int8", "64x1")] / rates["int8"]
    idle_gap = services[fp32]["runs"]["1x1"]["p50_ms"] - engines[fp32]["single_p50"] * 1000
    rss = services[fp32]["peak_rss_mb"]
    ready = float(np.median(starts))
    targets = [
        (
            f"engine fp32 (best bundle: {fp32}) vs sentence-transformers",
            best_fp32 / st_rate,
            ">= 1.6x",
            best_fp32 / st_rate >= 1.6,
        ),
        (
            "engine int8 vs sentence-transformers",
            rates["int8"] / st_rate,
            ">= 3x",
            rates["int8"] / st_rate >= 3,
        ),
        (
            "int8 STS-B Spearman (from the export's gate)",
            int8_spearman,
            ">= 0.815",
            int8_spearman >= 0.815,
        ),
        (
            f"service {fp32}, 64 one-sentence clients vs engine (median of the rounds below)",
            fp32_service,
            ">= 85%",
            fp32_service >= 0.85,
        ),
        ("service int8, 64 one-sentence clients vs engine (reported)", int8_service, "-", True),
        (
            "service fp32-padded (the padded graph), 64 one-sentence clients vs its engine "
            "(reported; median of its rounds)",
            float(np.median(padded_rounds)),
            "-",
            True,
        ),
        (
            "idle one-sentence p50 over the engine's own time (ms)",
            idle_gap,
            "<= 3 ms",
            idle_gap <= 3,
        ),
        ("peak RSS of the fp32 server under that load (MB)", rss, "<= 300", rss <= 300),
        (
            f"fp32 server start to ready (s, median of {len(starts)} starts)",
            ready,
            "<= 3",
            ready <= 3,
        ),
    ]
    lines += ["", "## Targets", "", "| target | measured | goal | met |", "|---|---:|---|---|"]
    for name, value, goal, met in targets:
        shown = f"{value:.0%}" if "%" in goal or goal == "-" else f"{value:.2f}"
        if "x" in goal:
            shown = f"{value:.2f}x"
        lines.append(f"| {name} | {shown} | {goal} | {'yes' if met else '**no**'} |")
    shown_rounds = ", ".join(f"{r:.0%}" for r in rounds)
    other = "fp32-opt" if fp32 == "fp32" else "fp32"
    lines += [
        "",
        f"The 64-client {fp32} ratio in {len(rounds)} interleaved rounds, each the engine once over"
        f" the test set at its best layout and batch, then the service for"
        f" {measured['round_seconds']} s: {shown_rounds}."
        f" In the table above, measured minutes apart:"
        f" {served[(fp32, '64x1')] / rates[fp32]:.0%}.",
        "",
        "The same rounds on the padded fp32 graph (`fp32-padded`), straight after: "
        + ", ".join(f"{r:.0%}" for r in padded_rounds)
        + ". Service sentences/s, median of the rounds: "
        + f"{_median_served(measured['rounds']):,.0f} on {fp32}, "
        + f"{_median_served(measured['padded_rounds']):,.0f} on fp32-padded.",
        "",
        f"Start to ready of the {fp32} server: "
        + ", ".join(f"{t:.2f}" for t in [services[fp32]["ready_seconds"], *starts])
        + " s (the first is the start of the load runs above).",
        "",
        f"The services ran {fp32}, the faster fp32 bundle in-process here ({rates[fp32]:,.0f}"
        f" against {other}'s {rates[other]:,.0f} sentences/s). `make run` serves plain fp32"
        " (`fp32`, the packed graph).",
        "",
        "Batch sizes tried in-process (sentences/s):",
        "",
    ]
    for variant, r in engines.items():
        for layout in r["layouts"]:
            tried = ", ".join(
                f"{a['batch']}: {n_sentences / a['seconds']:,.0f}" for a in layout["all"]
            )
            lines.append(f"- {variant}, {_layout(layout['workers'], machine['cores'])}: {tried}")
    lines.append("")
    return "\n".join(lines), all(met for *_, met in targets)
