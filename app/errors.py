"""The service's errors and the one table that gives each its HTTP status, type and code.

Every error a client can see is a ``ServiceError``; the API layer turns it into
``{"error": {"message", "type", "code"}}`` with the status from ``ERROR_TABLE``. Nothing else
decides a status code. The tree::

    ServiceError
    ├── InvalidHttp          400  the request is not valid HTTP (or HTTP/1.1 without Host)
    ├── InvalidJSON          400  body is not JSON, or not valid UTF-8
    ├── InvalidParameter     400  a value out of range for this model (``dimensions``)
    ├── WrongModelKind       400  a route for one kind of model called on another kind
    ├── InvalidTensor        400  an Open Inference Protocol tensor that is not what it says
    ├── InvalidApiKey        401  no API key, or a wrong one, when EMBED_API_KEYS is set
    ├── NotAdmin             403  a user key on an admin route (EMBED_ADMIN_KEYS)
    ├── ValidationFailed     422  field missing, wrong type, unknown field, empty list
    ├── InvalidText          422  text that cannot be encoded (a lone surrogate)
    ├── InvalidTokenId       422  a token id outside the model's vocabulary
    ├── InputTooLong         422  more tokens than the model takes, with truncate=false
    ├── InvalidBundle        422  a model bundle that cannot be served (the file or field)
    │   └── InvalidArchive   422  an unsafe or malformed bundle archive (nothing extracted)
    ├── DeployFailed         422  a version that would not load; the one deployed before stays
    ├── PayloadTooLarge      413  too many inputs, too many characters, body too large
    ├── NotFound             404  no such route
    ├── ModelNotFound        404  no such model served here
    ├── VersionNotFound      404  no such version of a model in the repository
    ├── ModelExists          409  the name belongs to a bundle the settings serve
    ├── ModelDeployed        409  a deployed (or settings-served) model cannot be deleted
    ├── ModelIsDefault       409  the default model cannot be undeployed
    ├── DeployInProgress     409  a version of that model is being loaded already
    ├── MethodNotAllowed     405  route exists, method does not
    ├── ClientTimeout        408  headers not complete in time, or a body that trickles in
    ├── HeadersTooLarge      431  a header line, or all of them, over the limit; too many
    ├── Overloaded           429  the queue is full (with Retry-After)
    ├── ClientClosed         499  the client left before its answer (nginx's code; never seen)
    ├── NotReady             503  model not loaded yet
    ├── ShuttingDown         503  the server is draining
    ├── TooManyConnections   503  past EMBED_MAX_CONNECTIONS open connections
    ├── RequestTimeout       503  the request waited past its deadline
    └── InternalError        500  anything unexpected (the message never says what)

Apart from that tree, ``StartupError`` is a fault that keeps the process from starting (a
missing bundle, a missing CUDA provider); it never reaches a client.

This module imports nothing from FastAPI, so the engine raises these too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Final, NamedTuple


class ErrorCode(StrEnum):
    """The machine-readable ``code`` of an error response."""

    INVALID_HTTP = "invalid_http"
    INVALID_JSON = "invalid_json"
    INVALID_PARAMETER = "invalid_parameter"
    WRONG_MODEL_KIND = "wrong_model_kind"
    INVALID_TENSOR = "invalid_tensor"
    INVALID_API_KEY = "invalid_api_key"
    NOT_ADMIN = "not_admin"
    VALIDATION_ERROR = "validation_error"
    INVALID_TEXT = "invalid_text"
    INVALID_TOKEN_ID = "invalid_token_id"
    INPUT_TOO_LONG = "input_too_long"
    INVALID_BUNDLE = "invalid_bundle"
    INVALID_ARCHIVE = "invalid_archive"
    DEPLOY_FAILED = "deploy_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    VERSION_NOT_FOUND = "version_not_found"
    MODEL_EXISTS = "model_exists"
    MODEL_DEPLOYED = "model_deployed"
    MODEL_IS_DEFAULT = "model_is_default"
    DEPLOY_IN_PROGRESS = "deploy_in_progress"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CLIENT_TIMEOUT = "client_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    OVERLOADED = "overloaded"
    CLIENT_CLOSED = "client_closed"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"


class ErrorRow(NamedTuple):
    """One row of the error table: the HTTP status and the error ``type``."""

    status: int
    type: str


_INVALID = "invalid_request_error"
_UNAVAILABLE = "service_unavailable"

ERROR_TABLE: Final[dict[ErrorCode, ErrorRow]] = {
    ErrorCode.INVALID_HTTP: ErrorRow(400, _INVALID),
    ErrorCode.INVALID_JSON: ErrorRow(400, _INVALID),
    ErrorCode.INVALID_PARAMETER: ErrorRow(400, _INVALID),
    ErrorCode.WRONG_MODEL_KIND: ErrorRow(400, _INVALID),
    ErrorCode.INVALID_TENSOR: ErrorRow(400, _INVALID),
    ErrorCode.INVALID_API_KEY: ErrorRow(401, "authentication_error"),
    ErrorCode.NOT_ADMIN: ErrorRow(403, "permission_error"),
    ErrorCode.VALIDATION_ERROR: ErrorRow(422, _INVALID),
    ErrorCode.INVALID_TEXT: ErrorRow(422, _INVALID),
    ErrorCode.INVALID_TOKEN_ID: ErrorRow(422, _INVALID),
    ErrorCode.INPUT_TOO_LONG: ErrorRow(422, _INVALID),
    ErrorCode.INVALID_BUNDLE: ErrorRow(422, _INVALID),
    ErrorCode.INVALID_ARCHIVE: ErrorRow(422, _INVALID),
    ErrorCode.DEPLOY_FAILED: ErrorRow(422, _INVALID),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorRow(413, _INVALID),
    ErrorCode.NOT_FOUND: ErrorRow(404, _INVALID),
    ErrorCode.MODEL_NOT_FOUND: ErrorRow(404, _INVALID),
    ErrorCode.VERSION_NOT_FOUND: ErrorRow(404, _INVALID),
    ErrorCode.MODEL_EXISTS: ErrorRow(409, _INVALID),
    ErrorCode.MODEL_DEPLOYED: ErrorRow(409, _INVALID),
    ErrorCode.MODEL_IS_DEFAULT: ErrorRow(409, _INVALID),
    ErrorCode.DEPLOY_IN_PROGRESS: ErrorRow(409, _INVALID),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorRow(405, _INVALID),
    ErrorCode.CLIENT_TIMEOUT: ErrorRow(408, _INVALID),
    ErrorCode.HEADERS_TOO_LARGE: ErrorRow(431, _INVALID),
    ErrorCode.OVERLOADED: ErrorRow(429, "overloaded_error"),
    ErrorCode.CLIENT_CLOSED: ErrorRow(499, _INVALID),
    ErrorCode.NOT_READY: ErrorRow(503, _UNAVAILABLE),
    ErrorCode.SHUTTING_DOWN: ErrorRow(503, _UNAVAILABLE),
    ErrorCode.TOO_MANY_CONNECTIONS: ErrorRow(503, _UNAVAILABLE),
    ErrorCode.TIMEOUT: ErrorRow(503, _UNAVAILABLE),
    ErrorCode.INTERNAL_ERROR: ErrorRow(500, "server_error"),
}


ECHO_CHARS = 64
"""An error message echoes at most this many characters of any string the client sent."""


def cut(text: str, limit: int = ECHO_CHARS) -> str:
    """A client's string as an error message echoes it: at most ``limit`` characters, then an
    ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"


class ServiceError(Exception):
    """Base of every error a client may see; ``code`` picks its row in ``ERROR_TABLE``."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}  # extra response headers, such as Retry-After
        self.param: str | None = None  # the request field at fault, where one is

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.code].status

    @property
    def type(self) -> str:
        return ERROR_TABLE[self.code].type


class InvalidHttp(ServiceError):
    """The HTTP parser refused the request, or an HTTP/1.1 request has no ``Host``."""

    code = ErrorCode.INVALID_HTTP


class InvalidJSON(ServiceError):
    """The body is not JSON, or not valid UTF-8."""

    code = ErrorCode.INVALID_JSON


class InvalidParameter(ServiceError):
    """A well-formed value this model cannot honour, such as more ``dimensions`` than it has."""

    code = ErrorCode.INVALID_PARAMETER

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class WrongModelKind(ServiceError):
    """A dense route called on a sparse model, or the other way round; names the right route."""

    code = ErrorCode.WRONG_MODEL_KIND

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"


class InvalidTensor(ServiceError):
    """A ``/v2`` or gRPC inference request whose tensor is not what it declares: a datatype
    other than BYTES, a shape that does not match its data, binary sizes that do not add up,
    bytes that are not UTF-8, an output this model does not have."""

    code = ErrorCode.INVALID_TENSOR


class InvalidApiKey(ServiceError):
    """``EMBED_API_KEYS`` is set and the request has no key, or a key that is not one of them."""

    code = ErrorCode.INVALID_API_KEY


class NotAdmin(ServiceError):
    """A valid user key on a route that needs an admin key (``EMBED_ADMIN_KEYS``)."""

    code = ErrorCode.NOT_ADMIN


class ValidationFailed(ServiceError):
    """The JSON does not match the route's schema."""

    code = ErrorCode.VALIDATION_ERROR


class InvalidText(ServiceError):
    """A text holds something that cannot be encoded as UTF-8, such as a lone surrogate."""

    code = ErrorCode.INVALID_TEXT


class InvalidTokenId(ServiceError):
    """A token-id input holds an id outside the model's vocabulary."""

    code = ErrorCode.INVALID_TOKEN_ID


class InputTooLong(ServiceError):
    """An input has more tokens than the model takes and truncation was turned off."""

    code = ErrorCode.INPUT_TOO_LONG


class PayloadTooLarge(ServiceError):
    """A request is over one of the size limits."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class NotFound(ServiceError):
    """No route matches the path."""

    code = ErrorCode.NOT_FOUND


class InvalidBundle(ServiceError):
    """A model bundle that cannot be served; the message names the file or field, what was
    expected and what was found."""

    code = ErrorCode.INVALID_BUNDLE


class InvalidArchive(InvalidBundle):
    """A bundle archive that is unsafe or malformed; nothing of it was extracted."""

    code = ErrorCode.INVALID_ARCHIVE


class DeployFailed(ServiceError):
    """A registered version that would not load or warm up; the message says why."""

    code = ErrorCode.DEPLOY_FAILED


class ModelNotFound(ServiceError):
    """The request names a model this server does not serve."""

    code = ErrorCode.MODEL_NOT_FOUND


class VersionNotFound(ServiceError):
    """The repository has no such version of the model."""

    code = ErrorCode.VERSION_NOT_FOUND


class ModelExists(ServiceError):
    """The name belongs to a bundle the settings serve (``EMBED_MODELS``); it cannot be
    registered."""

    code = ErrorCode.MODEL_EXISTS


class ModelDeployed(ServiceError):
    """The model is deployed, or served by the settings, so its files must stay."""

    code = ErrorCode.MODEL_DEPLOYED


class ModelIsDefault(ServiceError):
    """The default model cannot be undeployed; set another default first."""

    code = ErrorCode.MODEL_IS_DEFAULT


class DeployInProgress(ServiceError):
    """A version of this model is being deployed on this server already."""

    code = ErrorCode.DEPLOY_IN_PROGRESS


class MethodNotAllowed(ServiceError):
    """The route exists but does not take this method."""

    code = ErrorCode.METHOD_NOT_ALLOWED


class ClientTimeout(ServiceError):
    """The request's headers were not complete in time, or its body came in too slowly."""

    code = ErrorCode.CLIENT_TIMEOUT


class HeadersTooLarge(ServiceError):
    """A header line, or the headers together, are over the limit, or there are too many."""

    code = ErrorCode.HEADERS_TOO_LARGE


class Overloaded(ServiceError):
    """The queue is full; the response says when to retry."""

    code = ErrorCode.OVERLOADED


class ClientClosed(ServiceError):
    """The client closed the connection before its answer was ready; its work was dropped."""

    code = ErrorCode.CLIENT_CLOSED


class RequestTimeout(ServiceError):
    """The request waited longer than its deadline (EMBED_REQUEST_TIMEOUT_S)."""

    code = ErrorCode.TIMEOUT


class NotReady(ServiceError):
    """The model is not loaded and warmed up yet."""

    code = ErrorCode.NOT_READY


class ShuttingDown(ServiceError):
    """The server is draining and takes no new work."""

    code = ErrorCode.SHUTTING_DOWN


class TooManyConnections(ServiceError):
    """The server holds ``EMBED_MAX_CONNECTIONS`` connections already; this one is closed."""

    code = ErrorCode.TOO_MANY_CONNECTIONS


class InternalError(ServiceError):
    """Something unexpected; the message is generic and the details go to the log."""

    code = ErrorCode.INTERNAL_ERROR


class StartupError(Exception):
    """The service cannot start; the message says what is wrong and how to fix it."""
