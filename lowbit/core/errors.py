"""Lowbit's exceptions. Everything raised on purpose derives from LowbitError.

Builtins are mixed in where a caller may reasonably catch the builtin, e.g. a
missing model file is also a FileNotFoundError.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Root of every error Lowbit raises on purpose."""


class NativeError(LowbitError):
    """The kernel library refused a request. ``status`` is its lb_status code."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class InvalidArgumentError(NativeError, ValueError):
    """A shape, size, type or value that the kernel library rejected."""


class CancelledError(LowbitError):
    """The job was cancelled by its caller."""


class ModelNotFoundError(LowbitError, FileNotFoundError):
    """The model file or folder does not exist."""


class ModelFormatError(LowbitError, ValueError):
    """The file is not a valid GGUF model or is damaged (truncated, bad offsets...)."""


class UnsupportedModelError(LowbitError, ValueError):
    """A valid model that Lowbit cannot run (architecture, tensor type...)."""


class TokenizerError(LowbitError, ValueError):
    """The model has no usable tokenizer, or text could not be tokenized."""


class ChatTemplateError(LowbitError, ValueError):
    """The chat template is missing, invalid, or raised an error while rendering."""


class ContextFullError(LowbitError):
    """The tokens do not fit in the model's context window."""

    def __init__(self, message: str, *, needed: int = 0, n_ctx: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.n_ctx = n_ctx


class UnsafeCheckpointError(LowbitError, ValueError):
    """Weights stored in a format that can run code when loaded (pickle checkpoints)."""


class QuantizeError(LowbitError, ValueError):
    """A quantization request that cannot be carried out (unknown preset, budget too small...)."""


class DiskFullError(LowbitError, OSError):
    """Not enough free disk space for the output."""


class EvaluationError(LowbitError, ValueError):
    """An accuracy evaluation cannot run: text too short, mismatched vocabularies, bad settings..."""


class HubError(LowbitError):
    """A request to the Hugging Face Hub failed or was refused."""


class OfflineError(HubError, ConnectionError):
    """The Hub cannot be reached: no network, or offline mode is on. Local models still work."""


class GatedModelError(HubError, PermissionError):
    """The repository is gated or private: it needs a logged-in token with access to it."""


class RepoNotFoundError(HubError, FileNotFoundError):
    """No such repository, revision or file on the Hub."""


class DownloadError(HubError, OSError):
    """A download failed or gave content that does not match the Hub's checksum."""


class LibraryError(LowbitError, ValueError):
    """A request about the model library that cannot be carried out (unknown model, bad import...)."""
