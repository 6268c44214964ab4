"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2's methods
and Triton's repository ones) and the standard ``grpc.health.v1.Health``, on
``EMBED_GRPC_PORT``, in the server's process and event loop, through the same engines.

The stubs are generated at build time (``scripts/grpc_stubs.py``). Every method goes through
``_rpc``: the API key (metadata ``authorization: Bearer <key>``; an admin key for the repository
methods), the status from the one error table (``STATUS_CODES``), the request metrics under the
method's name and one access-log line, as an HTTP request gets. A client that cancels, or whose
deadline passes, cancels the handler, whose rows then leave the queue.

``bind`` checks the port before the server starts (a port that cannot be bound is a start-up
error); ``start`` runs in the app's lifespan, ``drain`` on SIGTERM (health ``NOT_SERVING``, calls
still answered while HTTP drains), ``stop`` at the lifespan's end (in-flight calls get
``EMBED_SHUTDOWN_GRACE_S``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from app.api.responses import counted
from app.config import Settings
from app.core.registry import ModelRegistry
from app.errors import (
    ERROR_TABLE,
    ErrorCode,
    InternalError,
    InvalidApiKey,
    InvalidTensor,
    NotAdmin,
    NotReady,
    RequestTimeout,
    ServiceError,
    StartupError,
)
from app.lifecycle import Lifecycle
from app.transport.context import record_request
from app.transport.guards import matching
from app.v2 import inference
from app.v2.stubs import grpc_service_pb2 as pb
from app.v2.stubs import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("app.grpc")
_FIELDS: ContextVar[dict[str, Any]] = ContextVar("grpc_access_fields")
"""The access-log fields of the call this task serves (each call runs in a task of its own)."""
_ADMIN_KEY: ContextVar[int] = ContextVar("grpc_admin_key", default=0)
SERVICE = "inference.GRPCInferenceService"
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""A gRPC status for each HTTP status of the error table; a timeout is DEADLINE_EXCEEDED."""

Reply = TypeVar("Reply")
Handler = Callable[["InferenceService", Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def status_of(error: ServiceError) -> grpc.StatusCode:
    if isinstance(error, RequestTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return STATUS_CODES.get(error.status, grpc.StatusCode.UNKNOWN)


def _rpc(*, admin: bool = False) -> Callable[[Handler[Reply]], Handler[Reply]]:
    """Key check, errors, metrics and the access line around one method."""

    def wrap(method: Handler[Reply]) -> Handler[Reply]:
        route = f"/{SERVICE}/{method.__name__}"

        @functools.wraps(method)
        async def handle(
            self: InferenceService, request: Any, context: grpc.aio.ServicerContext
        ) -> Reply:
            started = time.perf_counter()
            fields: dict[str, Any] = {}
            _FIELDS.set(fields)
            status = 200
            try:
                self.check_key(context, admin)
                return await method(self, request, context)
            except ServiceError as exc:
                status = exc.status
                await context.abort(status_of(exc), exc.message)
                raise  # abort raises; this is never reached
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                status = ERROR_TABLE[ErrorCode.CLIENT_CLOSED].status
                raise
            except grpc.aio.AbortError:  # a method that aborted the call itself
                raise
            except Exception:
                status = 500
                log.exception("unhandled error in %s", route)
                await context.abort(
                    grpc.StatusCode.INTERNAL, InternalError("internal error").message
                )
                raise
            finally:
                elapsed = time.perf_counter() - started
                record_request(route, status, elapsed, "GRPC", route, fields=fields)

        return handle

    return wrap


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 / Triton inference service over this server's models."""

    def __init__(self, settings: Settings, state: dict[str, Any]) -> None:
        self.settings = settings
        self.state = state  # the lifespan's: "models", "lifecycle"
        self.draining = False
        admin = [key.get_secret_value() for key in settings.admin_keys]
        users = [key.get_secret_value() for key in settings.api_keys]
        self.admin_keys = [key.encode() for key in admin]
        self.user_keys = [key.encode() for key in users + admin] if users else []

    @property
    def models(self) -> ModelRegistry:
        models: ModelRegistry | None = self.state.get("models")
        if models is None:
            raise NotReady("the model is not loaded yet; retry shortly")
        return models

    @property
    def lifecycle(self) -> Lifecycle:
        lifecycle: Lifecycle | None = self.state.get("lifecycle")
        if lifecycle is None:
            raise NotReady("the model repository is not open yet; retry shortly")
        return lifecycle

    def check_key(self, context: grpc.aio.ServicerContext, admin: bool) -> None:
        if not admin and not self.user_keys:
            return
        token = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, found = str(value).partition(" ")
                token = found.strip().encode() if scheme.lower() == "bearer" else b""
                break
        if admin:
            position = matching(token, self.admin_keys)
            if position:
                _ADMIN_KEY.set(position)
                return
            if matching(token, self.user_keys):
                raise NotAdmin("this method needs an admin key (one of EMBED_ADMIN_KEYS)")
            raise InvalidApiKey(
                "an admin key is required: send the metadata authorization: Bearer <key>"
            )
        if not matching(token, self.user_keys):
            raise InvalidApiKey(
                "a valid API key is required: send the metadata authorization: Bearer <key> "
                "(one of EMBED_API_KEYS)"
            )

    @_rpc()
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    @_rpc()
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(
            ready=self.state.get("models") is not None and not self.draining
        )

    @_rpc()
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        try:
            inference.served(self.models, request.name, request.version or None)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc()
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:  # noqa: N802
        metadata = inference.server_metadata(self.state.get("lifecycle") is not None)
        return pb.ServerMetadataResponse(**metadata)

    @_rpc()
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:  # noqa: N802
        models = self.models
        engine = inference.engine_for(models, request.name, request.version or None)
        metadata = inference.model_metadata(models, engine)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]],
            outputs=[tensor(**t) for t in metadata["outputs"]],
        )

    @_rpc()
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        models = self.models
        engine = inference.engine_for(models, request.model_name, request.model_version or None)
        parsed = _request(request)
        outcome = await inference.infer(engine, parsed)
        _FIELDS.get().update(counted(outcome))
        vectors = outcome.values
        return pb.ModelInferResponse(
            model_name=engine.model_id,
            model_version=inference.version_of(models, engine),
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=inference.OUTPUT, datatype=inference.FP32, shape=list(vectors.shape)
                )
            ],
            raw_output_contents=[vectors.astype("<f4", copy=False).tobytes()],
        )

    @_rpc(admin=True)
    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:  # noqa: N802
        index = await inference.repository_index(self.lifecycle, request.ready)
        entries = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index]
        return pb.RepositoryIndexResponse(models=entries)

    @_rpc(admin=True)
    async def RepositoryModelLoad(  # noqa: N802
        self, request: Any, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.lifecycle.deploy_latest(request.model_name, _who(context))
        return pb.RepositoryModelLoadResponse()

    @_rpc(admin=True)
    async def RepositoryModelUnload(  # noqa: N802
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.lifecycle.undeploy_any(request.model_name, _who(context))
        return pb.RepositoryModelUnloadResponse()


def _who(context: Any) -> str:
    return f"admin key #{_ADMIN_KEY.get() or '?'}"


def _request(message: Any) -> inference.Request:
    """The texts and flags of a ``ModelInferRequest``: its one BYTES input, in
    ``raw_input_contents`` (as ``tritonclient.grpc`` sends it) or in its ``contents``."""
    if len(message.inputs) != 1:
        raise InvalidTensor(
            f"{len(message.inputs)} inputs; this model takes one, the texts (datatype BYTES)"
        )
    tensor = message.inputs[0]
    where = f"input {tensor.name!r}"
    inference.check_datatype(tensor.datatype, where)
    count = inference.count_of(list(tensor.shape), where)
    if message.raw_input_contents:
        if len(message.raw_input_contents) != 1:
            raise InvalidTensor(
                f"{len(message.raw_input_contents)} raw_input_contents for one input"
            )
        texts = inference.decode_bytes(message.raw_input_contents[0], count, where)
    else:
        items = tensor.contents.bytes_contents
        if len(items) != count:
            raise InvalidTensor(
                f"{where}: {len(items)} elements in its contents, its shape says {count}"
            )
        texts = [inference.utf8(item, f"{where}: element {i}") for i, item in enumerate(items)]
    inference.check_outputs([output.name for output in message.outputs])
    flags = inference.request_flags(
        {name: _value(parameter) for name, parameter in message.parameters.items()}
    )
    return inference.Request(texts, **flags)


def _value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


class GrpcServer:
    """The gRPC server beside the HTTP one: bound at start-up, started in the lifespan, drained
    on SIGTERM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: dict[str, Any] = {}
        self.service = InferenceService(settings, self.state)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    def bind(self) -> None:
        """Check, before the server starts, that the port can be listened on: a port in use is
        a ``StartupError`` (exit code 2), not a server that answers HTTP only."""
        host, port = self.settings.host, self.settings.grpc_port
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.create_server((host, port), family=family):
                pass
        except OSError as exc:
            raise StartupError(
                f"EMBED_GRPC_PORT={port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "choose another port, or 0 to turn gRPC off"
            ) from None

    async def start(self, models: ModelRegistry, lifecycle: Lifecycle | None) -> None:
        """Serve on the app's event loop (the server is made here: it belongs to the loop that
        makes it)."""
        self.state.update(models=models, lifecycle=lifecycle)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"EMBED_GRPC_PORT: cannot listen on {address} ({exc})") from None
        await self.server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC on %s:%d", self.settings.host, self.port)

    async def drain(self) -> None:
        """From SIGTERM on: ``NOT_SERVING`` to health checks (a ``Watch`` hears it at once) and
        not ready, while calls still run; ``stop`` ends it once HTTP has drained."""
        self.service.draining = True
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuse new calls and give those in flight ``grace`` seconds to finish."""
        if self.server is not None:
            await self.drain()
            await self.server.stop(grace)
            self.server = None
