"""``python -m app.bulk --ray [ADDRESS]``: the same job as a Ray Data pipeline.

Ray reads the input in parallel blocks, ``map_batches`` sends each block to an actor that holds
the service's own engine and model (one per actor, loaded once), and Ray writes the Parquet
files. Without ADDRESS it runs on this machine (``ray.init()`` on its cores); with one, on that
cluster: INPUT must then be a path or URI every node can read (a shared volume, ``s3://...``),
and OUTPUT a folder every node can write (a shared volume), where failed rows go to
``errors.jsonl`` as in the local job.

Ray numbers no rows, so the ids come from ``--id-field``: a plain-text input, which has none, is
refused (turn it into JSONL with an id per line). A Ray job is not resumable the way the local job
is: Ray retries failed tasks itself, and a job stopped half-way is run again from the start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.bulk import output
from app.bulk.job import problem
from app.config import Settings
from app.core.model import ModelKind

BATCH_ROWS = 512


class Embedder:
    """One Ray actor: the service's engine on the bundle, embedding Arrow batches.

    ``__call__`` is a coroutine, so Ray Data keeps several batches in flight on the actor (as the
    local job keeps several chunks on the engine): the engine's batcher shares passes between
    them, and its workers, one core each, never wait for Ray to hand over the next batch.
    """

    def __init__(self, bundle: str, options: dict[str, Any], errors_dir: str) -> None:
        from app.bulk.__main__ import model_sha256, open_engine

        settings = Settings(
            model_dir=Path(bundle), inference_workers=options["cores"], intra_op_threads=1
        )
        self.engine = open_engine(settings, Path(bundle), options["batch_tokens"])
        self.options = options
        self.prompt = self.engine.prompt(None, options["prompt_name"])
        self.sha256 = model_sha256(Path(bundle))
        self.errors = Path(errors_dir) / f"{uuid.uuid4().hex}.jsonl"

    async def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(self.options["id_field"]).to_pylist()
        texts = batch.column(self.options["text_field"]).to_pylist()
        max_chars = self.engine.limits.max_input_chars
        keep, failed = [], []
        for i, text in enumerate(texts):
            reason = problem(text, max_chars)
            if reason is None:
                keep.append(i)
            else:
                failed.append({"id": ids[i], "row": None, "reason": reason})
        if failed:
            with self.errors.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(e, default=str) + "\n" for e in failed)
        id_type = batch.schema.field(self.options["id_field"]).type
        vectors = await self._embed(texts, keep)
        columns = {"id": pa.array([ids[i] for i in keep], type=id_type), **vectors}
        return pa.table(columns).replace_schema_metadata(
            {
                "embed.model": self.engine.info.id,
                "embed.dimension": str(self.engine.info.width),
                "embed.kind": self.engine.info.kind.value,
                "embed.model_sha256": self.sha256,
            }
        )

    async def _embed(self, texts: list[Any], keep: list[int]) -> dict[str, pa.Array]:
        """The vector columns for ``texts[keep]``, as the local job writes them."""
        chosen = [texts[i] for i in keep]
        width = self.engine.info.width
        truncate, prompt = self.options["truncate"], self.prompt
        if self.engine.info.kind == ModelKind.SPARSE:
            sparse = (
                (await self.engine.embed_sparse(chosen, truncate=truncate, prompt=prompt)).values
                if keep
                else []
            )
            return {
                "indices": pa.array([v.indices for v in sparse], type=pa.list_(pa.int32())),
                "values": pa.array([v.values for v in sparse], type=pa.list_(pa.float32())),
            }
        normalize = self.options["normalize"]
        vectors = (
            (
                await self.engine.embed(
                    chosen, normalize=normalize, truncate=truncate, prompt=prompt
                )
            ).values
            if keep
            else np.zeros((0, width))
        )
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        return {"embedding": pa.FixedSizeListArray.from_arrays(flat, width)}


def read_dataset(fmt: str, path: str) -> Any:
    import pyarrow.csv as pacsv
    import ray.data

    if fmt == "jsonl":
        return ray.data.read_json(path, lines=True)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        return ray.data.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        )
    return ray.data.read_parquet(path)


def run_on_ray(args: argparse.Namespace, fmt: str, settings: Settings, bundle: Path) -> int:
    import ray
    import ray.data

    from app.bulk.__main__ import Refused

    if fmt == "txt" or args.id_field is None:
        raise Refused(
            "--ray takes ids from --id-field (Ray numbers no rows); for plain text, write it as "
            "JSONL with an id per line"
        )
    address = args.ray or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    started = time.perf_counter()  # as the local job's clock starts once its model is loaded
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in input order, as locally
        context.enable_progress_bars = not args.quiet
        cpus = int(ray.cluster_resources().get("CPU", 1))
        local = address is None
        # Here one actor drives every core; on a cluster, one actor per 4 CPUs, one core each
        # for Ray's own read and write tasks left over.
        cores = (os.cpu_count() or 1) if local else 4
        actors = 1 if local else max(1, cpus // 4)
        errors_dir = args.output / "_errors"
        if args.output.exists():
            shutil.rmtree(args.output)
        errors_dir.mkdir(parents=True)
        options = {
            "id_field": args.id_field,
            "text_field": args.text_field,
            "normalize": args.normalize,
            "truncate": args.truncate,
            "prompt_name": args.prompt_name,
            "batch_tokens": args.batch_tokens,
            "cores": cores,
        }
        dataset = read_dataset(fmt, args.source).select_columns([args.id_field, args.text_field])
        if args.limit is not None:
            dataset = dataset.limit(args.limit)
        embedded = dataset.map_batches(
            Embedder,
            fn_constructor_kwargs={
                "bundle": str(bundle.resolve()),
                "options": options,
                "errors_dir": str(errors_dir),
            },
            batch_size=BATCH_ROWS,
            batch_format="pyarrow",
            concurrency=actors,
            num_cpus=1,
        )
        embedded.write_parquet(str(args.output), compression="zstd")
    finally:
        ray.shutdown()
    failed = _gather_errors(args.output, errors_dir)
    rows = failed + sum(pq.ParquetFile(p).metadata.num_rows for p in args.output.glob("*.parquet"))
    output.finish(args.output)
    seconds = time.perf_counter() - started
    print(f"done: {rows} rows, {seconds:.1f} s, {rows / seconds:.0f} rows/s, {failed} failed (Ray)")
    return 1 if failed and not args.allow_failures else 0


def _gather_errors(folder: Path, errors_dir: Path) -> int:
    lines = 0
    with (folder / output.ERRORS).open("w", encoding="utf-8") as out:
        for part in sorted(errors_dir.glob("*.jsonl")):
            text = part.read_text(encoding="utf-8")
            out.write(text)
            lines += text.count("\n")
    shutil.rmtree(errors_dir)
    return lines
