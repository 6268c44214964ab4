"""``python -m app``: load the model named by the settings, then serve it with uvicorn.

The model is loaded before the server listens, so a missing bundle, a corrupted model or a
missing CUDA provider ends the process with one line saying how to fix it, not a traceback.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.backends.onnx.model import map_large_blocks
from app.config import Settings
from app.errors import StartupError
from app.loading import load_models
from app.logs import configure_logging
from app.main import create_app
from app.transport.limits import HttpLimits
from app.transport.server import DrainingServer, ServerHttpProtocol

log = logging.getLogger("app")


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(describe(e) for e in exc.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    log_config = configure_logging(settings.log_level, settings.log_format)
    map_large_blocks()  # before the models' weights are read
    try:
        models = load_models(settings)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models.warm_up()
    grpc = None
    if settings.grpc_port:  # grpc's import alone is 22 MB resident: only where it is served
        from app.v2.grpc import GrpcServer

        grpc = GrpcServer(settings)
        try:
            grpc.bind()
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    # What is alive now (the model, the app) lives as long as the process: keep it out of the
    # cyclic collector's scans, and collect less often (docs/design.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)
    for engine in models:
        default = " (default)" if engine.model_id == models.default_id else ""
        info = engine.info
        log.info("model %s%s: %s %s on %s", info.id, default, info.kind, info.variant, info.runtime)
    auth = "API keys required" if settings.api_keys else "no API keys"
    log.info("serving on http://%s:%d (%s)", settings.host, settings.port, auth)
    # On SIGTERM uvicorn stops accepting connections, lets the requests in flight finish (for up
    # to EMBED_SHUTDOWN_GRACE_S), runs the lifespan's shutdown (which finishes the queued work),
    # and then re-raises the signal to the handler it found. With the default handler that kills
    # the process (-15), and orchestrators read a clean drain as a crash; a no-op handler lets
    # the drained process exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    app = create_app(settings, models, grpc)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=log_config,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own access line, with model, tokens and timings
        loop="uvloop",
        http=ServerHttpProtocol.with_limits(HttpLimits.from_settings(settings)),
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    DrainingServer(config, app).run()
    return 0


def describe(error: Any) -> str:
    """One settings error as ``EMBED_<NAME>: what is wrong``."""
    field = "_".join(str(part) for part in error["loc"]).upper()
    name = f"EMBED_{field}: " if field else ""
    return name + str(error["msg"]).removeprefix("Value error, ")


if __name__ == "__main__":
    sys.exit(main())
