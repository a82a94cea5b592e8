"""Pieces shared by the ``flowmesh`` and ``flowmesh-edge`` command lines."""

from __future__ import annotations

import sys

import click
import psycopg

from . import settings
from .errors import ERROR, FlowMeshError, describe

database_url_option = click.option(
    "--database-url",
    envvar=settings.DATABASE_URL_ENV,
    show_envvar=True,
    metavar="URL",
    help="PostgreSQL URL (15 or newer, Supabase included). Without it the embedded "
    "server in the data directory is used, started when needed.",
)


class FriendlyGroup(click.Group):
    """A click group that reports expected failures as one line, not a traceback.

    Exit codes (from ``errors.describe``): 1 for an error, 3 when the database
    cannot be reached, 2 for usage errors (click's own).
    """

    def __init__(self, *args, prog: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.prog = prog

    def main(self, args=None, prog_name=None, **extra):
        """Like click's, but a usage error is one line: what is wrong and where help is."""
        try:
            super().main(args=args, prog_name=prog_name or self.prog, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
            if no_args and isinstance(exc, no_args):  # bare command: show its help
                click.echo(exc.format_message(), err=True)
                sys.exit(exc.exit_code)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"{self.prog}: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"{self.prog}: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(f"{self.prog}: interrupted", err=True)
            sys.exit(130)
        sys.exit(0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FlowMeshError, psycopg.Error) as exc:
            failure = describe(exc)
            label = "error: " if failure.kind == ERROR else ""
            click.echo(f"{self.prog}: {label}{failure.message}", err=True)
            sys.exit(failure.exit_code)
