"""Entry: parse the command line and the SIDECAR_* environment into Settings, configure logging, run."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from sidecar import __version__
from sidecar.config import OPTIONS, Command, Option, Settings

__all__ = ("build_parser", "load_settings", "main")

_BY_FIELD = {o.field: o for o in OPTIONS}
_SECRET_FIELDS = frozenset(o.field for o in OPTIONS if o.secret)  # never echoed in an error

# usage, one line in `sidecar --help`, the description in `sidecar COMMAND --help` (SPEC 1)
_COMMANDS: dict[Command, tuple[str, str, str]] = {
    "run": (
        "sidecar run [OPTIONS] -- CMD [ARG...]",
        "start the services, then CMD as the supervised child",
        "Entrypoint mode: start the services, then CMD as the supervised child; when it exits, finalize, "
        "hold the grace period and exit with its status.",
    ),
    "serve": (
        "sidecar serve [OPTIONS]",
        "daemon mode, no child",
        "Daemon mode, no child: serve until SIGTERM, SIGINT or POST /v1/finalize, then finalize, hold the "
        "grace period and exit 0.",
    ),
    "materialize": (
        "sidecar materialize [OPTIONS] FILE...",
        "materialize the data URLs in FILEs and print one JSON object each",
        "One shot: write the data URLs in FILEs to the artifacts dir and print one JSON object per data URL "
        "found; exit 0, or 1 if a FILE could not be read.",
    ),
    "healthcheck": (
        "sidecar healthcheck [OPTIONS]",
        "exit 0 if the daemon these options describe answers /healthz",
        "Exit 0 if the daemon these options describe answers GET /healthz with 200, else 1 with one line "
        "on stderr saying why.",
    ),
}
_OTHERS = (
    "The other options (see `sidecar run --help`) and their SIDECAR_* variables are accepted and checked "
    "here too, but not used."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"sidecar: error: {message}\n")


def _help(o: Option) -> str:
    """`port the HTTP API listens on (default: 5173; env SIDECAR_PORT)`; `%` is argparse's."""
    facts = ["secret"] if o.secret else []
    if o.kind == "list":
        facts.append("repeatable, takes comma lists")
    facts += [f"default: {o.default}", f"env {o.env}"]
    if o.file:
        f = _BY_FIELD[o.file]
        facts.append(f"or from a file: {f.flag}, {f.env}")
    return f"{o.help} ({'; '.join(facts)})".replace("%", "%%")


def _add_options(p: argparse.ArgumentParser, command: Command) -> None:
    """Every option, so that a flag means what its variable means whatever the command; those this
    command does not use are left out of its --help."""
    for o in OPTIONS:
        shown = _help(o) if command in o.commands else argparse.SUPPRESS
        if o.kind == "bool":
            p.add_argument(o.flag, dest=o.field, action=argparse.BooleanOptionalAction, default=None, help=shown)
        elif o.kind == "list":
            p.add_argument(o.flag, dest=o.field, action="append", default=None, metavar=o.metavar, help=shown)
        else:
            p.add_argument(o.flag, dest=o.field, default=None, metavar=o.metavar, help=shown)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, max_help_position=36)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sidecar",
        description="Publish and serve an AI agent's artifacts from its sandbox.",
        epilog="`sidecar COMMAND --help` lists the options of COMMAND.",
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for command, (usage, summary, description) in _COMMANDS.items():
        p = subs.add_parser(
            command,
            usage=usage,
            help=summary,
            description=description,
            epilog=_OTHERS if any(command not in o.commands for o in OPTIONS) else None,
            formatter_class=_formatter,
        )
        _add_options(p, command)
        if command == "materialize":
            p.add_argument("files", nargs="+", metavar="FILE", type=Path, help="text files to scan")
    return parser


def _usage_error(message: str) -> NoReturn:
    print(f"sidecar: error: {message}", file=sys.stderr)
    sys.exit(2)


def _describe(field: str) -> str:
    o = _BY_FIELD.get(field)
    return f"{o.flag} ({o.env})" if o else field


def load_settings(ns: argparse.Namespace) -> Settings:
    """Flags win over SIDECAR_* variables; a bad value exits 2 naming the option."""
    given: dict[str, Any] = {}
    for o in OPTIONS:
        value = getattr(ns, o.field, None)
        if value is not None:
            given[o.field] = value
    try:
        return Settings(**given)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = err.get("loc") or ()
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if loc:
                field = str(loc[0])
                shown = repr(err.get("input")) if field not in _SECRET_FIELDS else "(hidden)"
                lines.append(f"{_describe(field)}: {msg} (got {shown})")
            else:
                field, _, rest = msg.partition(": ")
                lines.append(f"{_describe(field)}: {rest}" if field in _BY_FIELD else msg)
        _usage_error("; ".join(lines))


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    opts, command = _split_command(args)
    ns = build_parser().parse_args(opts)
    if ns.command == "run" and not command:
        _usage_error("run needs a command: sidecar run [OPTIONS] -- CMD [ARG...]")
    if ns.command != "run" and command is not None:
        _usage_error(f"{ns.command} takes no command after --")
    latch = None
    if ns.command in ("run", "serve"):
        from sidecar.signals import SignalLatch

        # Before the slow part (settings, imports, state, bind): a SIGTERM from here on is honoured (SPEC 8).
        latch = SignalLatch.capture(forwarded=ns.command == "run")
    settings = load_settings(ns)
    if ns.command == "healthcheck":
        from sidecar.healthcheck import check_health

        sys.exit(check_health(settings.host, settings.port))

    from sidecar.logs import configure_logging, get_logger

    configure_logging(fmt=settings.log_format, level=settings.log_level, log_file=settings.log_file)
    if ns.command != "materialize":
        for o in OPTIONS:
            if o.file and getattr(ns, o.field, None) is not None:
                # Every user of the machine reads /proc/<pid>/cmdline; the agent included.
                get_logger("sidecar.cli").warning(
                    "security.token_on_command_line", option=o.flag, use=_BY_FIELD[o.file].flag
                )
    if ns.command == "materialize":
        from sidecar.materialize import run_materialize

        sys.exit(run_materialize(list(ns.files), settings, sys.stdout))

    from sidecar.lifecycle import Sidecar, StartupError

    try:
        code = asyncio.run(Sidecar(settings, ns.command, command or ()).run(latch))
    except StartupError as e:
        if settings.log_file is not None:
            get_logger("sidecar.cli").error("lifecycle.startup_failed", error=str(e))
        # One line on stderr, whatever --log-file says: the operator looks there when the daemon is gone.
        print(f"sidecar: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
