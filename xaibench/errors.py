"""The exception hierarchy every xaibench error belongs to; the CLI catches these by type.

Each class also derives from the built-in exception a Python user would expect
(``ValueError`` for bad input, ``KeyError`` for unknown names, ...), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

from typing import Sequence


class XaibenchError(Exception):
    """Base of every error xaibench raises on purpose; the message says what and how to fix it."""


class UnknownNameError(XaibenchError, KeyError):
    """A registry key that is not registered (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SettingsError(XaibenchError, ValueError):
    """One or more bad settings of a plugin, each with its path, the value and what is allowed.

    Attributes:
        who: the plugin (``explainer 'cnn.gradcam'``).
        problems: ``(path, message)`` for each bad setting.
    """

    def __init__(self, who: str, problems: Sequence[tuple[str, str]]) -> None:
        self.who = who
        self.problems = list(problems)
        lines = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.problems)
        super().__init__(f"{who}: {lines}")


class ConfigError(XaibenchError, ValueError):
    """A benchmark configuration is invalid; the message names the key and the fix."""


class RunExistsError(XaibenchError, RuntimeError):
    """The run folder already holds results and neither resume nor force was asked for."""


class ConfigMismatchError(XaibenchError, RuntimeError):
    """Resuming a run whose stored configuration (or data) differs from the given one."""


class RunLockedError(XaibenchError, RuntimeError):
    """Another live process holds the run folder."""


class StoreError(XaibenchError, RuntimeError):
    """A run folder's database is missing, empty or not an xaibench results database."""


class CellError(XaibenchError, RuntimeError):
    """A grid cell failed; the message names the cell and the cause."""


class BaselineError(XaibenchError, ValueError):
    """A regression baseline is unreadable or does not fit the run."""


class DataError(XaibenchError, ValueError):
    """A data file (FCS, image, DICOM, weights, ...) is unreadable; the message names the file."""


__all__ = ["BaselineError", "CellError", "ConfigError", "ConfigMismatchError", "DataError", "RunExistsError",
           "RunLockedError", "SettingsError", "StoreError", "UnknownNameError", "XaibenchError"]
