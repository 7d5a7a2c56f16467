"""Writing output files safely: all or nothing (:func:`atomic_write`), and never over an input (:func:`check_outputs`).

Every output file of ``self1e`` (masks, overlays, segment/chat JSON, eval reports) is written by
:func:`atomic_write`: the content goes to a temporary file in the target's folder, which then
replaces the target in one ``os.replace``. A write that fails half-way (full disk, an exception in
the writer, Ctrl-C) leaves an existing file as it was and no temporary file behind. (It guards
against failures and interruptions; ``durable=True`` also survives a power loss by fsyncing the
file and its folder, as the training checkpoints' ``latest`` pointer needs.)
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

PathLike = str | os.PathLike


def _reworded(e: OSError, message: str) -> OSError:
    """``e`` with a message that names our file (same exception class, so callers can still tell
    PermissionError from FileNotFoundError)."""
    try:
        return type(e)(message)
    except TypeError:  # an OSError subclass with another constructor
        return OSError(message)


def fsync_path(path: Path) -> None:
    """fsync one file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, writer: Callable[[Path], object], durable: bool = False) -> Path:
    """Write ``path`` all or nothing: ``writer(tmp)`` writes the content to ``tmp`` (a temporary
    file in the same folder, which already exists, empty, with the usual permissions), then ``tmp``
    replaces ``path``. A missing folder is created. If ``writer`` raises, the temporary file is
    removed and the error propagates; ``path`` is untouched. A folder that cannot be created or
    written raises an ``OSError`` (e.g. ``PermissionError``) whose message names ``path``.

    ``writer`` must not rely on the temporary file's name (pass formats explicitly). ``durable``:
    fsync the file before, and its folder after, the replacement."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _reworded(e, f"cannot write {path}: cannot create the folder {folder}: {e.strerror or e}") from None
    while True:
        tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            # 0o666 and the umask: the same permissions a plain open(path, "w") would give
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _reworded(e, f"cannot write {path}: {e.strerror or e} (folder {folder})") from None
    try:
        writer(tmp)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(folder)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and (e.filename is None or str(tmp) in (str(e.filename), str(e.filename2))):
            raise _reworded(e, f"cannot write {path}: {e.strerror or e}") from None  # name the file, not our tmp
        raise
    return path


def write_text_atomic(path: PathLike, text: str, durable: bool = False) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: equal after resolving symlinks, or (when both
    exist) the same inode, which also catches hard links and case-insensitive file systems."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, Iterable[PathLike | None]],
                  inputs: Mapping[str, Iterable[PathLike | None]] | None = None) -> None:
    """Refuse to overwrite an input, or to write two outputs to one file. ``outputs`` and ``inputs``
    map an option name (``"--out"``) to the files it names (``None`` entries are skipped). Raises
    ValueError naming both options and files."""
    named_in = [(name, Path(p)) for name, paths in (inputs or {}).items() for p in paths if p is not None]
    named_out = [(name, Path(p)) for name, paths in outputs.items() for p in paths if p is not None]
    for k, (name, out) in enumerate(named_out):
        for in_name, inp in named_in:
            if same_file(out, inp):
                raise ValueError(f"{name} {out} is the same file as {in_name} {inp}; refusing to overwrite an input")
        for other_name, other in named_out[:k]:
            if same_file(out, other):
                raise ValueError(f"{other_name} {other} and {name} {out} are the same file; give them different names")
