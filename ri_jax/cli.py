"""The command-line error layer shared by every script: argument types, output checks, messages.

* ``run_script(main)`` runs a script's ``main(argv)`` and turns the library's expected
  errors (``ri_jax.errors.RIError``, a ``ValueError`` raised by a ``raise`` in ri_jax or
  the script's folder, ``OSError`` for paths, and ``sys.exit("message")``) into
  ``script.py: error: <message>`` on stderr with exit status 2, the same form argparse uses.
  ``--debug`` (anywhere on the command line) or ``RI_JAX_DEBUG=1`` shows the traceback
  instead. Warnings print as ``script.py: warning: <message>``.
  SIGINT (Ctrl-C) and SIGTERM (``kill``, a SLURM time limit) print one line saying what
  was interrupted and that ``--resume`` continues, and exit with status 130 / 143 (128 +
  the signal), without a traceback; files are written atomically, so none is partial.
* ``positive_int``, ``non_negative_int``, ``positive_float``, ``non_negative_float``,
  ``fraction``, ``output_dir``…: argparse ``type=`` functions, so a bad number or path is
  refused while parsing, naming the option, before anything is computed.
* ``check_output_dir(path, option)``: the path checks of ``output_dir`` as a function.
"""

from __future__ import annotations

import argparse
import linecache
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from ri_jax.errors import RIError, RIInputError

DEBUG_ENV = "RI_JAX_DEBUG"
DEBUG_FLAG = "--debug"
USAGE_EXIT = 2
_PACKAGE_DIR = Path(__file__).resolve().parent


def run_script(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None,
               *, prog: str | None = None) -> Any:
    """Runs ``main(argv)``; expected errors become ``prog: error: message`` and exit status 2.

    Args:
      main: the script's entry point, taking an argv list (without the program name).
      argv: the arguments (default ``sys.argv[1:]``); ``--debug`` is removed from them.
      prog: the name in messages (default the script's file name).

    Returns:
      Whatever ``main`` returns (an int is used as the exit status by the caller).

    Raises:
      SystemExit: status 2 after printing the message, for the errors listed in the module
        docstring; any other exception propagates with its traceback (a bug).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or Path(sys.argv[0]).name or "ri_jax"
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_: f"{prog}: warning: {message}\n"
    previous_term = _on_sigterm(_raise_terminated)
    previous_errors = _printable_everywhere()
    try:
        return main(argv)
    except (KeyboardInterrupt, Terminated) as e:
        if debug:
            raise
        _interrupted(prog, argv, signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message"): the scripts' own refusals
            if debug:
                raise
            _fail(prog, e.code)
        raise
    except Exception as e:  # noqa: BLE001 — filtered by is_expected_error, else re-raised
        if debug or not is_expected_error(e, _code_dirs(main)):
            raise
        _fail(prog, error_message(e))
    finally:
        warnings.formatwarning = previous_format
        _on_sigterm(previous_term)
        _printable_everywhere(previous_errors)


def is_expected_error(e: BaseException, code_dirs: Sequence[Path] = (_PACKAGE_DIR,)) -> bool:
    """True for errors that are the user's to fix (see the module docstring), not bugs.

    Args:
      e: the exception.
      code_dirs: folders of the project's own code; a ``ValueError`` raised there by a
        ``raise`` statement (not inside numpy or JAX) is a validation error.
    """
    if isinstance(e, (RIError, OSError)):
        return True
    if isinstance(e, ValueError):
        # The project validates with `raise ValueError("arg: reason")`; a ValueError from
        # numpy/JAX or from a failed unpacking in our code is a bug and keeps its traceback.
        return _raised_by_a_raise_in(e.__traceback__, code_dirs)
    return False


def error_message(e: BaseException) -> str:
    """The message of an expected error (OSError: the file and the reason)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        target = f"{e.filename} -> {e.filename2}" if e.filename2 else f"{e.filename}"
        return f"{target}: {e.strerror}"
    return str(e) or type(e).__name__


def _code_dirs(main: Callable) -> tuple[Path, ...]:
    code = getattr(main, "__code__", None)
    script_dir = (Path(code.co_filename).resolve().parent,) if code is not None else ()
    return (_PACKAGE_DIR,) + script_dir


def _raised_by_a_raise_in(tb, code_dirs: Sequence[Path]) -> bool:
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    if not any(Path(filename).resolve().is_relative_to(d) for d in code_dirs):
        return False
    return linecache.getline(filename, last.tb_lineno).lstrip().startswith("raise")


def _printable_everywhere(errors: dict | None = None) -> dict:
    """Lets stdout/stderr print any text, as ``\\xe9``-style escapes where their encoding
    cannot (a C locale's ASCII), instead of failing after the results are written.

    Args:
      errors: the streams' previous ``errors`` settings to put back (None: set them).

    Returns:
      The settings replaced.
    """
    if errors is not None:
        for stream, previous in errors.items():
            stream.reconfigure(errors=previous)
        return {}
    replaced = {}
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if hasattr(stream, "reconfigure") and encoding not in ("utf8", ""):
            replaced[stream] = stream.errors
            stream.reconfigure(errors="backslashreplace")
    return replaced


class Terminated(BaseException):
    """SIGTERM (what SLURM and ``kill`` send) arrived: raised like ``KeyboardInterrupt``, so
    ``finally`` blocks run and temporary files are removed."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _on_sigterm(handler):
    """Installs ``handler`` for SIGTERM, returning the previous one (no-op off the main
    thread, where Python cannot install handlers)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def interrupted_message(prog: str, argv: Sequence[str], signum: int) -> str:
    """The one line printed on SIGINT/SIGTERM: what stopped and how to continue."""
    out = _option_value(argv, "--out")
    where = f" writing {out}" if out else ""
    return (f"{prog}: interrupted by {signal.Signals(signum).name}{where}; every file written "
            "so far is complete; run the same command with --resume to continue")


def _option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of ``option`` in ``argv`` (``--opt value`` or ``--opt=value``), if given."""
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a[len(option) + 1:]
    return None


def _interrupted(prog: str, argv: Sequence[str], signum: int) -> None:
    """Prints ``interrupted_message`` and exits with the shell's status, 128 + signal."""
    print(interrupted_message(prog, argv, signum), file=sys.stderr)
    raise SystemExit(128 + signum)


def _fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT)


# ---------------------------------------------------------------- argparse types


def _number(kind: type, text: str, ok: Callable[[Any], bool], wanted: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        return _number(int, text, lambda v: v >= minimum, f"an integer >= {minimum}")
    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, returned sorted without repeats."""
    try:
        values = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(float, text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, lambda v: v >= 0, "a finite number >= 0")


def open_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    return _number(float, text, lambda v: 0 < v < 1, "a number in (0, 1)")


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    return _number(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def output_dir(text: str) -> str:
    """argparse type: a folder that exists or can be created (see ``check_output_dir``)."""
    try:
        check_output_dir(text)
    except RIInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def check_output_dir(path: str | os.PathLike, option: str | None = None) -> Path:
    """Checks that ``path`` is, or can become, a writable folder; creates nothing.

    Refused: an existing file, a dangling symbolic link, a path below a file, and a path
    whose nearest existing folder is not writable.

    Args:
      path: the folder.
      option: the option that named it, for the message (e.g. ``"--out"``).

    Raises:
      RIInputError: naming the option and path and the reason.
    """
    path = Path(path)
    where = f"{option}: {path}" if option else f"{path}"
    if path.is_symlink() and not path.exists():
        raise RIInputError(f"{where}: is a symbolic link to the missing {os.readlink(path)}")
    if path.exists():
        if not path.is_dir():
            raise RIInputError(f"{where}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RIInputError(f"{where}: folder is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        if parent.is_symlink():
            raise RIInputError(f"{where}: {parent} is a symbolic link to the missing "
                               f"{os.readlink(parent)}")
        parent = parent.parent
    if not parent.is_dir():
        raise RIInputError(f"{where}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RIInputError(f"{where}: cannot be created, {parent} is not writable")
    return path
