"""Exceptions genie_hub raises for problems a user can fix.

Every error carries a one-paragraph message meant to be printed as-is by the CLI (no traceback):
what went wrong, and what to do about it.
"""


class GenieError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in genie_hub."""


class ModelLoadError(GenieError):
    """The model (Hub id or local folder) could not be resolved or loaded."""


class NoBatchNormError(GenieError):
    """Zero-shot synthesis was asked of a model that has no BatchNorm statistics to match."""


class UnsupportedModelError(GenieError):
    """The model's own code does not run with genie_hub's quantized layers in place (it reads something a
    quantized layer does not provide); raised before any long compute, naming what is missing."""


class ConfigError(GenieError, ValueError):
    """An invalid setting, e.g. a bit-width outside 2..8."""


class ReconstructionDivergedError(GenieError):
    """A reconstruction loss became NaN/inf; names the unit. Finished units stay on disk."""


class CheckpointError(GenieError):
    """A quantized checkpoint is missing, corrupt, truncated or inconsistent."""


class PushError(GenieError):
    """Publishing to the Hub failed or cannot start (no token, offline mode, HTTP error)."""


class DataError(GenieError):
    """Images or labels could not be found or read (missing dataset, empty folder, unknown source)."""


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first non-empty line of an exception's message ("" when it has none), cut at `limit` characters, for
    one-line summaries. Not simply the first line: some messages start with a newline (transformers'
    missing-backend ImportError does), and quoting that gave "(ImportError: )"; and some lines run to kilobytes
    (transformers' unknown image processor type lists every model type)."""
    line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[:limit].rstrip() + " ..."
