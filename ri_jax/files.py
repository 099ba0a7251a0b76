"""Files a run writes: whole or not at all, full disks named, one run per folder.

* ``atomic_path(path)``: a context manager giving a temporary path beside ``path``; what
  is written there is renamed over ``path`` only when the block finishes, so a killed,
  interrupted or failed write leaves the previous file (or none), never a partial one.
  ``atomic_write_bytes`` / ``atomic_write_text`` write a whole payload that way; figures
  (``ri_jax.plots``), pages (``ri_jax.html_report``), CSV, Markdown and JSON all go
  through here.
* A write that fails for lack of space or a file-size limit (ENOSPC, EDQUOT, EFBIG)
  raises an ``OSError`` whose ``filename`` is the file being written (not the temporary
  one), so ``ri_jax.cli.run_script`` prints ``script.py: error: <file>: No space left on
  device`` and exits with status 2.
* ``OutputLock``: ``<out>/.ri_jax.lock``, taken by a run for its whole life, so two runs
  on one ``--out`` never interleave; the second is refused naming the lock and its
  holder. The lock is an ``flock`` (released by the kernel when its process dies), and
  the file records the holder's pid, so a lock left by a dead process is taken over.
* ``display_name``: a file or folder name as text that any font and any file encoding
  can show, losslessly (undecodable bytes become ``\\xNN``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Iterator

from ri_jax.errors import RIInputError

LOCK_NAME = ".ri_jax.lock"
TEMP_MARK = ".tmp"
# Errors that mean "the disk or the file limit is full", not "this path is wrong".
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, in the same folder (so the
    rename is atomic), per process, with the same suffix (so savefig/np.savez infer the
    format and add no extension)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{TEMP_MARK}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path; on a clean exit it is renamed over ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is untouched. An ``OSError`` while writing names ``path``.

    Raises:
      OSError: with ``filename`` = ``path`` and the reason (``strerror``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise _naming(e, path) from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` whole or not at all (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` as UTF-8 to ``path`` whole or not at all.

    Undecodable bytes of file names (surrogate escapes, ``os.fsdecode``) are written back
    as the original bytes, so paths in CSV files still open the same files.
    """
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` as an ``OSError`` naming ``path`` (the file meant, not its temporary name)."""
    reason = e.strerror or str(e)
    if e.errno in _SPACE_ERRNOS:
        reason += " (nothing was written; the previous file, if any, is unchanged)"
    return OSError(e.errno, reason, str(path))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def remove_stale_temps(folder: Path) -> list[Path]:
    """Removes temporary files (``temp_path``) of processes that no longer run in ``folder``.

    A write killed with ``kill -9`` leaves its hidden temporary file; the next run on the
    folder clears it.

    Returns:
      The removed paths.
    """
    removed = []
    for p in folder.glob(f".*{TEMP_MARK}*"):
        pid = p.name.split(TEMP_MARK)[0].rpartition(".")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove(p)
            removed.append(p)
    return removed


def name_bytes(name: str | os.PathLike) -> bytes:
    """The bytes of a file name or other text, for hashing: never fails.

    ``os.fsencode`` under a UTF-8 file system encoding (the same bytes), but also for a
    Unicode name under the C locale's ASCII, and surrogate escapes give back the
    original bytes.
    """
    name = os.fspath(name)
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def display_name(name: str | os.PathLike) -> str:
    """``name`` as printable text: undecodable bytes as ``\\xNN``, everything else kept.

    File names are bytes on POSIX; Python decodes the undecodable ones to surrogate
    escapes, which fonts, UTF-8 files and the C locale's ASCII cannot hold. Under the C
    locale, UTF-8 names decoded as escapes are shown as the characters they are.
    """
    return name_bytes(name).decode("utf-8", "backslashreplace")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ------------------------------------------------------------------------ the lock

_HELD: dict[Path, "OutputLock"] = {}


class OutputLock:
    """The lock of one output folder (``<folder>/.ri_jax.lock``), held by this process.

    Re-entrant within a process (a script run twice in one process, as the tests do);
    released when the process exits (``atexit``) or by ``release``.
    """

    def __init__(self, folder: Path, fd: int):
        self.folder, self.path, self._fd = folder, folder / LOCK_NAME, fd

    @classmethod
    def acquire(cls, folder: str | os.PathLike, option: str = "--out") -> "OutputLock":
        """Takes ``folder``'s lock or refuses, naming the lock and who holds it.

        Raises:
          RIInputError: another live process holds the lock.
        """
        folder = Path(folder).resolve()
        if folder in _HELD:
            return _HELD[folder]
        path = folder / LOCK_NAME
        for _ in range(3):  # the holder may release (unlink) between our open and flock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_flock(fd, path):
                    raise RIInputError(f"{option}: {folder} is in use by another run "
                                       f"({_holder(path)}; lock file {path}); wait for it to "
                                       "finish or choose another folder")
                if _same_file(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise RIInputError(f"{option}: cannot take the lock {path}: it keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        lock = cls(folder, fd)
        _HELD[folder] = lock
        atexit.register(lock.release)
        return lock

    def release(self) -> None:
        """Removes the lock file and lets the lock go (idempotent)."""
        if _HELD.get(self.folder) is not self:
            return
        del _HELD[self.folder]
        _remove(self.path)  # unlink before unlocking: a waiting run then makes a new file
        os.close(self._fd)


def _try_flock(fd: int, path: Path) -> bool:
    """True when the exclusive lock is ours; False when a live process holds it."""
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: fall back on the recorded pid
        pid, host = _recorded(path)
        return pid is None or pid == os.getpid() or (host == socket.gethostname()
                                                     and not pid_alive(pid))


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one its holder unlinked)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _recorded(path: Path) -> tuple[int | None, str | None]:
    """(pid, host) written in a lock file, or (None, None) when unreadable."""
    try:
        pid, host = path.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None, None


def _holder(path: Path) -> str:
    pid, host = _recorded(path)
    return "held by an unknown process" if pid is None else f"held by process {pid} on {host}"
