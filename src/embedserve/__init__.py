"""embedserve: tokenize, run ONNX Runtime, pool and normalise; the library under the service and the export stage.

Nothing here imports torch, bentoml, optimum or sentence-transformers.
"""

from __future__ import annotations

from embedserve.artifact import MANIFEST_NAME, Artifact
from embedserve.config import Limits, RuntimeConfig, Settings
from embedserve.engine import EmbedOptions, EmbedResult, Engine
from embedserve.errors import (
    ArtifactError,
    AuthenticationError,
    ConfigError,
    EmbedServeError,
    EmptyInputError,
    InputError,
    InputTooLongError,
    JobAbandoned,
    MalformedRequestError,
    OverloadedError,
    PayloadTooLargeError,
    ProviderUnavailableError,
    TokenIdsError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactError",
    "AuthenticationError",
    "ConfigError",
    "EmbedOptions",
    "EmbedResult",
    "EmbedServeError",
    "EmptyInputError",
    "Engine",
    "InputError",
    "InputTooLongError",
    "JobAbandoned",
    "Limits",
    "MalformedRequestError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProviderUnavailableError",
    "RuntimeConfig",
    "Settings",
    "TokenIdsError",
    "UnsupportedModelError",
    "__version__",
]
