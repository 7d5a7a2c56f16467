"""A restricted unpickler for the RefCOCO-family ``refs(<splitBy>).p`` files.

A pickle can name any importable callable and have it run while loading, so an untrusted ``.p``
file is code. This unpickler refuses every global lookup: only what pickle's own opcodes build (dicts,
lists, tuples, sets, strings, bytes, numbers, booleans, None) can come out of it.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from self1e.common.errors import DataError


class UnsafePickleError(DataError):
    """The pickle asked for a Python global (a class or function), which is never allowed."""


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` refuses everything (see the module docstring)."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        # The official refs files were written by Python 2: its byte strings are read as UTF-8 text.
        super().__init__(file, encoding="utf-8")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refusing to load the Python object {module}.{name}: only plain lists, "
            "dicts, strings and numbers are allowed in a refs pickle (the file may be malicious)")


def loads(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with SafeUnpickler; malformed data raises DataError naming ``source``."""
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError) as e:
        raise DataError(f"{source}: not a valid pickle: {e}") from None


def load(path: str | Path) -> Any:
    """Read and safely unpickle the file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pickle file not found: {path}")
    return loads(path.read_bytes(), str(path))
