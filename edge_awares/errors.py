"""Typed errors. Every error a user can cause derives from EdgeAwaresError, so the CLI can print one line
and exit non-zero instead of a traceback."""


class EdgeAwaresError(Exception):
    """Base class of all errors a user can cause (bad input, missing files, unavailable backends)."""

    exit_code = 2


class ImageError(EdgeAwaresError):
    """The image is missing, empty, truncated, not an image, or too large."""


class CropError(EdgeAwaresError):
    """A crop id or crop set is unknown or malformed."""


class ProtocolError(EdgeAwaresError):
    """A protocol name is unknown, or a conversation does not fit the protocol."""


class PromptError(EdgeAwaresError):
    """The question is empty, or the prompt does not fit the context."""


class ModelLoadError(EdgeAwaresError):
    """A checkpoint folder is missing, incomplete, or of an unsupported model family."""


class BackendUnavailableError(EdgeAwaresError):
    """An optional backend's library is not installed; the message names the pip extra."""


class ConfigError(EdgeAwaresError):
    """A configuration value is out of range; the message lists the legal values."""


class DataError(EdgeAwaresError):
    """A data file is missing or malformed (the message names file:line), or a dataset lacks a column."""


class EngineError(EdgeAwaresError):
    """An engine directory is missing, malformed, or fails validation; the message names the problem."""


class EngineVersionError(EngineError):
    """An engine's manifest uses a schema version this toolkit does not read (newer, or too old)."""


class EngineIntegrityError(EngineError):
    """A file the manifest lists is missing, or its size or sha256 does not match (tampered or corrupt)."""


class ExportError(EdgeAwaresError):
    """An export failed (unsupported model, a graph that did not build, or verification against the reference
    failed); nothing was left in the output directory."""


class MemoryBudgetError(EngineError):
    """A request would need more memory than the runtime's stated budget; refused before allocating."""


class ExportGateError(ExportError):
    """An exported engine stayed below its precision's acceptance gate (top-1 agreement, logit error)."""


class ProviderUnavailableError(BackendUnavailableError):
    """An execution provider (cuda, tensorrt) is not available in the installed onnxruntime build."""


class TrainError(EdgeAwaresError):
    """A training run cannot start or continue: data that does not fit the model's protocol or crop set, a setting
    TRL cannot honour (e.g. a completion budget that would drop crop results), or a run folder in an unusable state."""


class OutputError(EdgeAwaresError):
    """A place the toolkit was asked to write is unsafe (not ours to replace, the input itself, outside an
    existing folder) or cannot be written (read-only, full disk); nothing was left behind."""


class BadSamplesError(DataError):
    """Some samples could not be used (malformed row, refused or unreadable image, prompt too long): raised at the
    first with --on-bad-sample stop, else after the run's outputs are written (unless --allow-bad-samples)."""

    exit_code = 3
