"""How every command ends on an error: one line saying what and what to do, the traceback only with --debug.

Exit codes: 0 done, 2 the user's input is wrong (a flag, a file, a config, a cache to rebuild), 1 the
work failed (a run that stopped early, a disk that filled, a crash), 130 interrupted.
"""

from __future__ import annotations

import errno
import sys
import traceback
from typing import Callable, Sequence

USER_ERROR = 2
FAILURE = 1

# Errors in what the user gave us: a wrong flag, a missing or malformed file.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def describe(exc: BaseException) -> str:
    """One line for `exc`: its message, and for file-system errors the path and what to do."""
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"cannot write{where}: the disk is full; free space there and run again"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"cannot write{where}: permission denied; fix the permissions or choose another folder"
        if exc.errno is not None:
            return f"{exc.strerror or type(exc).__name__}:{where}"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (ValueError, OSError)) or type(exc).__module__.startswith("ltxv2_diffusers"):
        return text
    return f"{type(exc).__name__}: {text}"  # an unexpected error: its type tells a bug report more


def exit_code(exc: BaseException) -> int:
    """2 for the user's input errors, 1 for failures (`TrainingFailed` is a `RuntimeError`: a failure)."""
    return USER_ERROR if isinstance(exc, _USER_ERRORS) else FAILURE


DEBUG_HELP = "print the full traceback of an error instead of its one-line message"


def add_debug_flag(parser) -> None:
    """`--debug` on a command's argparse parser (the trainer's is in its FLAGS table)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


_debug_requested = False


def request_debug() -> None:
    """Show tracebacks for this command even though `--debug` came from a config file, not the command line."""
    global _debug_requested
    _debug_requested = True


def run_cli(fn: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *,
            prog: str | None = None) -> int:
    """Run a command's `fn(argv)` and turn any error into one line on stderr and an exit code.

    `--debug` anywhere on the command line prints the traceback as well."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    prefix = f"{prog}: error: " if prog else "error: "
    global _debug_requested
    _debug_requested = False
    try:
        return fn(argv)
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise  # argparse and explicit exits already said what is wrong
    except Exception as exc:
        debug = debug or _debug_requested
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows the traceback)"
        code = exit_code(exc)
        print(f"{prefix}{describe(exc)}" + (hint if code == FAILURE else ""), file=sys.stderr)
        return code
