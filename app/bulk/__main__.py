"""``python -m app.bulk INPUT OUTPUT``: embed a corpus into Parquet, resumably, on this machine
or (``--ray``) on a Ray cluster. Runs in ``.venv-bulk`` (``make bulk-env``). See docs/bulk.md.

Exit codes: 0 when every row was embedded (or some failed, with ``--allow-failures``); 1 when
some rows failed (listed in ``errors.jsonl``); 2 for an input that cannot be read, a missing
column, bad arguments, or an unfinished output made with other arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import Any

from app.backends.onnx.bundle import load_bundle, sha256_of
from app.bulk import output
from app.bulk.job import Plan, run
from app.bulk.progress import Meter
from app.bulk.sources import BadInput, Record, count_rows, format_of, read
from app.config import Settings
from app.core.engine import Batching, Engine, Limits
from app.core.model import ModelKind
from app.errors import ServiceError, StartupError
from app.loading import load_model, settings_plan

PART_ROWS = 10_000
NO_LIMIT = 1 << 40  # the job's own queue: every chunk it sends is accepted and none times out


class Refused(Exception):
    """Exit code 2 with this one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.bulk", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "input", help=".jsonl, .csv, .tsv, .parquet or .txt; with --ray, a URI too (s3://...)"
    )
    parser.add_argument("output", type=Path, help="a folder for the Parquet parts")
    parser.add_argument("--format", choices=["jsonl", "csv", "tsv", "parquet", "txt"])
    parser.add_argument(
        "--model",
        help="a bundle folder, or a bundle's name under EMBED_MODELS_DIR (else models/); "
        "default: EMBED_MODEL_DIR",
    )
    parser.add_argument("--text-field", default="text", help="default: %(default)s")
    parser.add_argument("--id-field", help="default: the row number, from 0")
    parser.add_argument("--prompt-name", help="one of the model's prompts")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--truncate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--batch-tokens", type=int, help="padded tokens in one pass (EMBED_MAX_BATCH_TOKENS)"
    )
    parser.add_argument("--limit", type=int, help="embed the first N rows only")
    parser.add_argument("--part-rows", type=int, default=PART_ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 even if rows failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run as a Ray Data pipeline: on this machine, or on the cluster at ADDRESS",
    )
    args = parser.parse_args(argv)
    args.source = args.input  # as given: a URI must reach Ray unchanged
    args.input = Path(args.input)
    for name in ("batch_tokens", "limit", "part_rows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def bundle_path(settings: Settings, model: str | None) -> Path:
    if model is None:
        return settings.model_dir
    path = Path(model)
    if not path.exists() and len(path.parts) == 1:
        path = (settings.models_dir or Path("models")) / model
    return path


def open_engine(settings: Settings, path: Path, batch_tokens: int | None) -> Engine:
    """The service's engine on the bundle, with a queue that takes all the job sends. A job
    keeps every worker busy, so it has no lone passes and no runner for them."""
    plan = settings_plan(settings)._replace(lone_threads=0)
    model = load_model(settings, path, plan)
    batching = replace(
        Batching.from_settings(settings, plan),
        max_batch_tokens=batch_tokens or settings.max_batch_tokens,
        max_queue_tokens=NO_LIMIT,
        max_request_tokens=NO_LIMIT,  # the job's chunks are its own; nobody waits behind them
        request_timeout_s=float(NO_LIMIT),
    )
    return Engine(model, Limits.from_settings(settings), batching)


def fingerprint(args: argparse.Namespace, fmt: str, sha256: str, prompt: str) -> dict[str, Any]:
    """What makes two runs the same job: a resume with anything else is refused."""
    stat = args.input.stat()
    return {
        "input": str(args.input.resolve()),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "format": fmt,
        "model_sha256": sha256,
        "text_field": args.text_field,
        "id_field": args.id_field,
        "prompt_name": args.prompt_name,
        "prompt": prompt,
        "normalize": args.normalize,
        "truncate": args.truncate,
        "limit": args.limit,
        "part_rows": args.part_rows,
    }


def model_sha256(path: Path) -> str:
    """The bundle's model.onnx, by its manifest's checksum (load_bundle has verified it)."""
    bundle = load_bundle(path)
    return str(bundle.manifest.get("model_sha256") or sha256_of(bundle.model_path))


def id_type(fmt: str, args: argparse.Namespace) -> Any:
    """Row numbers are int64; an id field's values are strings, except from Parquet, whose
    column keeps its own type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if args.id_field is None:
        return pa.int64()
    if fmt == "parquet":
        return pq.ParquetFile(args.input).schema_arrow.field(args.id_field).type
    return pa.string()


def records_from(args: argparse.Namespace, fmt: str, start: int) -> Iterator[Record]:
    """The rows after the first ``start`` (a resumed job's finished ones), up to ``--limit``;
    ids from a text format as strings."""
    records = read(args.input, fmt, text_field=args.text_field, id_field=args.id_field)
    stop = args.limit
    if args.id_field and fmt != "parquet":
        records = (
            Record(r.row, None if r.id is None else str(r.id), r.text, r.missing) for r in records
        )
    return islice(records, start, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    try:
        fmt = format_of(args.input, args.format)
        if args.ray is not None:
            from app.bulk.on_ray import run_on_ray

            return run_on_ray(args, fmt, settings, bundle_path(settings, args.model))
        return run_locally(args, fmt, settings)
    except (BadInput, Refused, StartupError, output.Mismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:  # an unknown prompt name
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def run_locally(args: argparse.Namespace, fmt: str, settings: Settings) -> int:
    path = bundle_path(settings, args.model)
    engine = open_engine(settings, path, args.batch_tokens)
    sha256 = model_sha256(path)
    info = engine.info
    if info.kind == ModelKind.RERANK:
        raise Refused(f"{info.id} is a reranker; the bulk job embeds with dense or sparse models")
    prompt = engine.prompt(None, args.prompt_name)
    # Opened once up front, so that a missing file or column stops the job here.
    read(args.input, fmt, text_field=args.text_field, id_field=args.id_field)
    progress = output.start(args.output, fingerprint(args, fmt, sha256, prompt))
    total = count_rows(args.input, fmt)
    if args.limit is not None:
        total = args.limit if total is None else min(total, args.limit)
    meter = Meter(total, done=progress.rows, quiet=args.quiet)
    if not output.done(args.output):
        plan = Plan(
            folder=args.output,
            part_rows=args.part_rows,
            kind=info.kind,
            dimension=info.width,
            normalize=args.normalize,
            truncate=args.truncate,
            prompt=prompt,
            id_type=id_type(fmt, args),
            metadata={
                "embed.model": info.id,
                "embed.dimension": str(info.width),
                "embed.kind": info.kind.value,
                "embed.model_sha256": sha256,
            },
            meter=meter,
        )
        stop_on_signals()
        progress = asyncio.run(run(engine, records_from(args, fmt, progress.rows), plan, progress))
        output.finish(args.output)
    print(meter.summary(progress.rows, progress.tokens, progress.failed))
    engine.close()
    return 1 if progress.failed and not args.allow_failures else 0


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end the job at once: every finished part is on disk and recorded, and
    a run with the same arguments goes on from there."""

    def stop(signum: int, frame: FrameType | None) -> None:
        del frame
        sys.stderr.write(
            f"\nstopped by {signal.Signals(signum).name}; run the same command to go on\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)  # the worker threads hold nothing that must be saved

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    sys.exit(main())
