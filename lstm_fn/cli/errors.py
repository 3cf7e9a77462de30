"""How a command ends: the exit codes, and what an error looks like on the console.

The project's own errors (:mod:`lstm_fn.errors`, and a weights file that cannot be read)
and the operating system's (a file that cannot be read or written) are one line on stderr
and exit code 2. Anything else that escapes a command is a bug in lstm_fn: one line that
says so, with the hint to rerun with ``--debug`` for the traceback, and exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from lstm_fn.cli import interrupts

OK = 0
BUG = 1
BAD_INPUT = 2
NONFINITE = 3  # training stopped on a non-finite loss or parameter
LOST_PROCESS = 4  # another process of a run of several is gone
INTERRUPTED = interrupts.EXIT_CODE  # 130, as a shell reports a process ended by Ctrl-C
CLOSED_PIPE = 128 + signal.SIGPIPE  # 141


def for_signal(signum: int) -> int:
    """The exit code of a run stopped by ``signum``, as a shell reports a process it ended."""
    return 128 + signum


class BadInput(click.ClickException):
    """Bad input from the user: one line on stderr, exit code 2."""

    exit_code = BAD_INPUT


class Bug(click.ClickException):
    """An exception lstm_fn did not expect: one line, exit code 1."""

    exit_code = BUG


def user_errors() -> tuple[type, ...]:
    """The exception types that mean "the input is wrong" (imported when a command fails,
    so that ``--help`` loads nothing of the library)."""
    from lstm_fn.errors import LstmFnError
    from reference_numpy.weights import WeightsError

    return (LstmFnError, WeightsError)


def one_line(error: BaseException) -> click.ClickException:
    """The console's form of an error that escaped a command (see the module docstring)."""
    if isinstance(error, user_errors()):
        return BadInput(first_line(error))
    if isinstance(error, OSError):
        where = f" ({os.fsdecode(error.filename)})" if error.filename is not None else ""
        return BadInput(f"{error.strerror or first_line(error)}{where}")
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] not in (
            "lstm_fn", "reference_numpy"):  # e.g. `python cli.py` where jax is missing
        return click.ClickException(f"the Python package {error.name!r} is not installed "
                                    "here; `pip install -e .` installs what lstm_fn needs")
    return Bug(f"internal error, a bug in lstm_fn: {type(error).__name__}: "
               f"{first_line(error)}; rerun with --debug for the traceback")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on a closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests capture it)
        pass


class App(click.Group):
    """The command group: turns what escapes a command into its one line and exit code;
    ``--debug`` shows the traceback instead. The arguments it was given are kept in
    ``ctx.meta["argv"]`` (a run records its command line)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # the reader left (`lstm-fn sample | head`): stop quietly
            silence_stdout()
            sys.exit(CLOSED_PIPE)
        except KeyboardInterrupt:  # before training's own handling starts (or after it)
            interrupts.taken()
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
        except Exception as error:
            if ctx.params.get("debug"):
                raise
            raise one_line(error) from None
