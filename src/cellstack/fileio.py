"""Safe file output: atomic writes, names that stay inside their folder, and clean-up
of what an interrupted write left behind.

Every file cellstack writes goes through :func:`atomic_path` / :func:`atomic_write`:
the data lands in a hidden ``.{name}.XXXX.partial{suffix}`` beside the target and is
renamed onto it only when complete, so a kill at any moment leaves either the old file
or the new one, and at worst an orphan partial that :func:`remove_partials` (run at
the start of the next run) deletes.

Ids that come from user data (CSV rows, COCO file names, file stems) become file names;
:func:`check_name` refuses any that could leave the folder (``../x``, ``/abs``) and
:func:`child` checks every output path before it is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cellstack.errors import CellstackError

PARTIAL = ".partial"
#: The lock file :func:`output_lock` holds in an output folder.
LOCK = ".cellstack.lock"


def _default_mode() -> int:
    # mkstemp creates files readable by the owner only; outputs should get the usual
    # permissions (0o666 less the umask), as open() would give them.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()


def check_name(name: str, where: str) -> str:
    """Return ``name`` if it can serve as one file name inside a folder.

    Refused: empty names, ``.``/``..``, path separators, control characters and names
    that are not valid UTF-8 (a file name read with surrogate escapes).

    Raises:
        CellstackError: ``"{where}: id '../x' cannot be used as a file name (...)"``.
    """
    reason = None
    if not name or name.strip() != name:
        reason = "empty or surrounded by spaces"
    elif name in (".", ".."):
        reason = "a relative folder"
    elif "/" in name or "\\" in name:
        reason = "it contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = "it contains a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > 200:
        reason = "longer than 200 bytes"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            reason = "it is not valid UTF-8"
    if reason:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise CellstackError(f"{where}: id {shown!r} cannot be used as a file name ({reason})")
    return name


def child(folder: str | os.PathLike, *parts: str) -> Path:
    """``folder / parts...``, checked to stay inside ``folder`` (after resolving links)."""
    folder = Path(folder)
    path = folder.joinpath(*parts)
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise CellstackError(f"{path}: would be written outside {folder}")
    return path


def remove_partials(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Delete orphan partial files that a killed write left in ``folder``; their number."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = f".*{PARTIAL}*"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    n = 0
    for p in list(found):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that write by file name.

    The temporary name keeps ``path``'s suffix so format detection by extension works.

    Raises:
        CellstackError: ``path`` is a folder (named as the user gave it, before any
            temporary file exists).
    """
    path = Path(path)
    if path.is_dir():
        raise CellstackError(f"{path}: is a folder; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f"{PARTIAL}{path.suffix}"
    )
    os.close(fd)
    try:
        yield Path(tmp)
        # Data on disk before the rename, whoever wrote it: a crash after the rename
        # must not leave a complete-looking empty file.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _disk_full(exc):
            raise CellstackError(f"{path}: cannot write, no space left on the device") from None
        raise


def _disk_full(exc: BaseException) -> bool:
    """A full disk, as the OS reports it or as a library's writer wraps it (also where
    the OS's error is the cause or context of the library's: torch's writer fails again
    on closing, "unexpected pos ...", while handling it)."""
    import errno

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, RuntimeError) and "No space left" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "cellstack") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block.

    A second process that asks for the same folder meanwhile is refused at once with a
    one-line error, instead of both writing mixed outputs that look complete. The lock
    is the kernel's (``flock``), so a killed process never leaves a stale lock behind.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellstackError(
                f"{folder}: another {what} is writing into this folder; wait for it to "
                "finish or choose another output folder"
            ) from None
        locked = True
        yield
    finally:
        if locked:  # still ours: no one else can hold it while we do
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete
    new one. On an exception the temporary file is removed and ``path`` is untouched.
    Text is written as UTF-8 unless another encoding is asked for.
    """
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content (a leading BOM dropped), with one-line errors.

    Raises:
        CellstackError: the file is missing, unreadable or not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise CellstackError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CellstackError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
        ) from None
    except OSError as exc:
        raise CellstackError(f"{path}: cannot read ({exc.strerror})") from None


@contextlib.contextmanager
def open_text(path: str | os.PathLike, what: str = "file") -> Iterator[IO]:
    """Open a UTF-8 text file for reading (BOM accepted, ``newline=""`` for csv);
    a decoding error anywhere inside the block becomes a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CellstackError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield f
    except UnicodeDecodeError as exc:
        raise CellstackError(f"{path}: not UTF-8 text (byte {exc.start})") from None
