"""File-descriptor writes and private files, shared by the recorder, the CLI's outputs, the
spool and the file sink.

Events describe people (person ids, ages, sexes, face-image URLs), so every file the package
creates is private to its owner: files ``0600`` and directories ``0700``, whatever the umask
(a umask only removes permission bits, and a lax one such as ``000`` would otherwise leave
files world-readable).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "make_private",
    "make_private_dirs",
    "open_private",
    "write_all",
]

PRIVATE_FILE_MODE = 0o600
"""The mode of every file the package creates: read and write for its owner only."""
PRIVATE_DIR_MODE = 0o700
"""The mode of every directory the package creates."""


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write only part)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def append_whole(fd: int, data: bytes, *, fsync: bool) -> None:
    """Append ``data`` to ``fd`` (and ``fsync`` it when asked), or nothing: on an error the
    file is cut back to its size before, so a retry appends the batch whole, never after half
    of it.

    Raises:
        OSError: the write or the ``fsync`` failed (the file is as it was, where it can be cut).
    """
    before = os.fstat(fd).st_size
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, before)
        raise


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory, so that names created or renamed in it survive a power loss."""
    fd = os.open(os.fspath(directory) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: str | os.PathLike[str], flags: int, *, mode: int = PRIVATE_FILE_MODE) -> int:
    """Open ``path`` with ``flags`` (``os.O_CREAT`` is added), creating it with ``mode``.

    A file this call creates gets exactly ``mode``, whatever the umask; an existing file keeps
    its mode (see :func:`make_private`). The descriptor is not inherited by child processes.

    Raises:
        OSError: the file cannot be opened or created.
    """
    flags = (flags | getattr(os, "O_CLOEXEC", 0)) & ~(os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        # An existing file, or a symbolic link (O_EXCL refuses even a dangling one, which
        # O_CREAT then creates through, like any other open would).
        return os.open(path, flags | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)  # the umask applied to os.open's mode; set it exactly
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(path: str | os.PathLike[str], mode: int = PRIVATE_FILE_MODE) -> int | None:
    """Remove every permission of ``path`` beyond ``mode`` (group and others, by default).

    Returns:
        The file's former permission bits if they were changed, ``None`` if nothing was
        looser than ``mode`` or the file does not exist.

    Raises:
        OSError: the mode cannot be changed (the file belongs to another user).
    """
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if current & ~mode == 0:
        return None
    os.chmod(path, current & mode)
    return current


def make_private_dirs(path: str | os.PathLike[str], mode: int = PRIVATE_DIR_MODE) -> None:
    """Create the directory ``path`` and its missing parents, each with ``mode`` (``0700``).

    Directories that already exist are left as they are (a user's home, ``/var/lib``).

    Raises:
        OSError: a directory cannot be created.
    """
    missing: list[Path] = []
    current = Path(path)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # created meanwhile by someone else: theirs, left as it is
        os.chmod(directory, mode)  # the umask applied to mkdir's mode
