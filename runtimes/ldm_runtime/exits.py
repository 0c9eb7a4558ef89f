"""The exit-code contract of ``ldm-run`` and ``ldm-export`` (docs/errors.md), in one decorator.

* 0: done;
* 1: over tolerance (``verify``, ``parity`` and the quality gates of ``build`` and ``report``);
* 2: the user's error (bad input, a missing file or package, a wrong device): one line on stderr, no
  traceback, nothing the user had is changed;
* 3: an internal error, i.e. our bug: the traceback, and a line asking to report it;
* 130: interrupted (Ctrl-C, or SIGTERM from a CI timeout): nothing half-written is left.

So a CI gate can tell drift (1) from breakage (2, 3).
"""

from __future__ import annotations

import functools
import sys
import traceback

import click

from .errors import BelowTolerance, UserError

OK, OVER_TOLERANCE, USER_ERROR, INTERNAL_ERROR, INTERRUPTED = 0, 1, 2, 3, 130
MAX_MESSAGE = 600  # characters: a message longer than this is cut (it quotes something the user gave)


def one_line_message(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def exit_codes(tool: str):
    """Wrap a click command so that it ends with the contract's exit codes."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                click.echo(f"error: {one_line_message(e)}", err=True)
                sys.exit(USER_ERROR)
            except BelowTolerance as e:
                click.echo(f"FAIL: {one_line_message(e)}", err=True)
                sys.exit(OVER_TOLERANCE)
            except KeyboardInterrupt:
                click.echo("interrupted; nothing half-written was left behind", err=True)
                sys.exit(INTERRUPTED)
            except (SystemExit, click.exceptions.Exit, click.ClickException):
                raise
            except Exception:
                traceback.print_exc()
                click.echo(f"internal error in {tool}: this is a bug in {tool}, not a problem with your input; "
                           "please report it with the command line and the traceback above", err=True)
                sys.exit(INTERNAL_ERROR)

        return wrapper

    return decorate


class OneLineGroup(click.Group):
    """A click group whose usage errors (an unknown option, a value out of range) are one line too, with the
    command's ``--help`` named, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # a bare group: its help
                click.echo(e.ctx.get_help())
                sys.exit(USER_ERROR)
            where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            click.echo(f"error: {one_line_message(e.format_message())}{where}", err=True)
            sys.exit(USER_ERROR)
        except click.ClickException as e:
            click.echo(f"error: {one_line_message(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
