"""What every command-line program shares: user errors as one readable line and exit status 2.

A user's mistake (a misspelt config field, a missing directory, a resume the workdir refuses, a dataset
not built yet, a missing extra) is not a bug, and a page of library traceback hides the one line that
says what to change. `run` replaces `absl.app.run`: such errors print as `<program>: error: <message>`
on stderr and exit with status 2; anything else is a bug and keeps its traceback (exit 1). `--verbose`
shows the traceback of user errors too, and absl's `--pdb` stops in the debugger on any error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags

USAGE_EXIT = 2  # As argparse and the shell builtins: the command was used wrongly.


class UserError(Exception):
    """A mistake in what the user asked for; its message says what to change."""


def _program() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0])


def fail(message: str) -> None:
    """Prints the one-line error and exits with status 2."""
    print(f"{_program()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)


def _message(e: BaseException) -> str:
    """The exception's text on one line. ml_collections wraps a KeyError's quoted text in an
    AttributeError, so the innermost text is unwrapped and its quotes dropped."""
    text = e
    while isinstance(text, BaseException) and text.args:
        text = text.args[0]
    text = str(text) if not isinstance(text, BaseException) else type(text).__name__
    return " ".join(text.strip("'\"").replace("\\n", " ").split()) or type(e).__name__


def _override_error(argv: list[str], e: BaseException) -> str:
    """'--config.batch_sizee=4: no such config field (Did you mean "batch_size" ...?)' from the lookup
    error ml_collections raises while it parses the flags."""
    field, _, hint = _message(e).partition(" ")
    field = field.strip("'\"")
    flag = next((a.split("=")[0] for a in argv[1:] if a.startswith("--") and field in a.split("=")[0]), None)
    where = f"{flag}: " if flag else ""
    return f"{where}no such config field {field!r}" + (f" ({hint.strip()})" if hint else "")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with its errors as user errors. A config override that names no field (or gives a
    value of the wrong type) raises from inside ml_collections while the flags are parsed."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # Unknown flag, missing required flag, bad value.
        fail(f"{_message(e)} (see --help)")
    except (KeyError, AttributeError) as e:
        fail(_override_error(argv, e))
    except (TypeError, ValueError, OSError) as e:
        fail(_message(e))
    raise AssertionError("unreachable")


def config_value(holder: flags.FlagHolder | flags.Flag):
    """The `--config` file's ConfigDict; a file that does not exist is a user error (ml_collections loads
    the file lazily and reports a missing one as a chained OSError on first use). Errors raised by the file's
    own code keep their traceback: they are bugs in that file."""
    try:
        value = holder.value
        value.keys()  # A file that failed to load gives a stand-in that raises on first use.
        return value
    except OSError as e:
        arg = flags.FLAGS[holder.name].serialize().partition("=")[2]
        path = arg.split(":")[0]
        reason = "no such file" if not os.path.exists(path) else _message(e)
        raise UserError(f"--{holder.name}={arg}: {reason}") from e


def _debugging() -> bool:
    """--verbose or absl's --pdb: let the user error's traceback through."""
    return any(name in flags.FLAGS and flags.FLAGS[name].value for name in ("verbose", "pdb_post_mortem"))


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, with user errors (`UserError`, its subclasses such as `ConfigError`, and
    `app.UsageError`) reported in one line with exit status 2."""

    def guarded(argv):
        try:
            return main(argv)
        except (UserError, app.UsageError) as e:
            if _debugging():
                raise
            fail(_message(e))

    if "verbose" not in flags.FLAGS:  # Defined only in programs, so that importing this module never clashes.
        flags.DEFINE_bool("verbose", False, "Show the full traceback of user errors too.")
    app.run(guarded, flags_parser=_parse_flags)
