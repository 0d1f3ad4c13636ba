"""Domain errors, defined once. Only ``service.py`` maps them to HTTP status codes."""

from __future__ import annotations


class EmbedServeError(Exception):
    """Base class of every error raised on purpose by embedserve."""


class InputError(EmbedServeError, ValueError):
    """The client sent something we will not embed (a client mistake, never a server fault).

    Attributes:
        param: the request field at fault (``"input"``, ``"dimensions"``...), or ``None``.
        limit_name: the configured limit that was broken, if any (``"max_inputs"``...).
        limit: that limit's value.
    """

    kind = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        limit_name: str | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.limit_name = limit_name
        self.limit = limit


class MalformedRequestError(InputError):
    """The request body is not valid JSON (or not JSON at all)."""

    kind = "malformed_request"


class EmptyInputError(InputError):
    """No text at all: an empty list or an empty string."""

    kind = "empty_input"


class TokenIdsError(InputError):
    """The input holds token ids (what LangChain's ``OpenAIEmbeddings`` sends on its defaults, from OpenAI's
    tiktoken): ids of another model's vocabulary cannot be embedded faithfully, so they are refused."""

    kind = "token_ids_not_supported"


class InputTooLongError(InputError):
    """An input has more tokens than the model accepts and the client asked not to truncate."""

    kind = "input_too_long"


class PayloadTooLargeError(InputError):
    """A request (body bytes, number of inputs or characters) is above a configured size limit."""

    kind = "payload_too_large"


class UnsupportedMediaTypeError(InputError):
    """The body's Content-Type is not JSON, or its Content-Encoding is not one the server decodes."""

    kind = "unsupported_media_type"


class RequestTimeoutError(InputError):
    """The client did not send its whole request body within the configured body timeout."""

    kind = "request_timeout"


class AuthenticationError(EmbedServeError):
    """The request carries no API key, or not an accepted one (the key itself is never in the message)."""

    def __init__(self, message: str, *, code: str = "invalid_api_key") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class OverloadedError(EmbedServeError):
    """The server cannot take the request now (its queue would wait too long, or holds too many texts).

    Attributes:
        retry_after_s: when the queue is predicted to have room for it again (the ``Retry-After`` header).
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class UnfinishedError(EmbedServeError):
    """An accepted request the server did not finish, and whose remaining work it dropped (a 5xx: the server, not
    the client, is the reason)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DeadlineExceededError(UnfinishedError):
    """An accepted request waited past its deadline without starting to compute: it is dropped rather than computed
    for a caller that has probably given up (a 503)."""


class ShuttingDownError(UnfinishedError):
    """The server reached its shutdown deadline with the request unfinished: it is answered 503 (retry on another
    replica)."""


class ComputeTimeoutError(UnfinishedError):
    """An accepted request took longer than the request timeout in all: it is answered 504."""


class JobAbandoned(EmbedServeError):
    """Every caller of an inference job went away (timed out or cancelled): the rest of its batches are not run."""


class ArtifactError(EmbedServeError):
    """An exported artifact is missing, incomplete, corrupt or of an unknown format."""


class UnsupportedModelError(EmbedServeError):
    """The model uses a module, pooling mode or activation this project cannot reproduce faithfully."""


class ProviderUnavailableError(EmbedServeError):
    """The operator demanded a GPU execution provider and ONNX Runtime did not give one."""


class ConfigError(EmbedServeError, ValueError):
    """A configuration value (usually from an ``EMBEDSERVE_*`` environment variable) is invalid."""
