"""Small helpers shared by the core and the plugin packages: close-match suggestions,
submodule import, atomic file writes. No xaibench imports (every module may use it)."""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import tempfile
from pathlib import Path
from typing import Iterable


def close_matches(name: object, choices: Iterable[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    """Up to ``n`` entries of ``choices`` that look like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(str(name), sorted(choices), n=n, cutoff=cutoff)


def did_you_mean(name: object, choices: Iterable[str], n: int = 5, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` or ``""`` when nothing is close."""
    close = close_matches(name, choices, n, cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def import_submodules(package: str) -> list[str]:
    """Import every public submodule of ``package`` (importing registers); returns their names.

    A plugin package's ``__init__`` calls ``import_submodules(__name__)`` so that a new module
    in it needs no other edit.
    """
    pkg = importlib.import_module(package)
    names = []
    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"{package}.{m.name}")
            names.append(m.name)
    return names


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files: give the result the mode a plain open() would (or the old file's)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
