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
from sidecar.config import OPTIONS, Option, Settings

__all__ = ("load_settings", "main")

# Flags whose Settings field has a plural name (lists).
_FIELD = {"tool_results_dir": "tool_results_dirs", "cors_origin": "cors_origins", "ui_push_header": "ui_push_headers"}
_SECRET_FIELDS = frozenset({"ui_token", "auth_token", "ui_push_headers"})  # never echoed in an error
_BY_FIELD = {_FIELD.get(o.field, o.field): o for o in OPTIONS}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"sidecar: error: {message}\n")


def _add_options(p: argparse.ArgumentParser) -> None:
    for o in OPTIONS:
        if o.flag_bool:
            p.add_argument(o.flag, dest=o.field, action=argparse.BooleanOptionalAction, default=None)
        elif o.repeat:
            p.add_argument(o.flag, dest=o.field, action="append", default=None, metavar="VALUE")
        else:
            p.add_argument(o.flag, dest=o.field, default=None, metavar="VALUE")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sidecar", description="Publish and serve an AI agent's artifacts from its sandbox.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    run = subs.add_parser(
        "run", help="start the services, then CMD as the supervised child: sidecar run [OPTIONS] -- CMD"
    )
    serve = subs.add_parser("serve", help="daemon mode, no child")
    mat = subs.add_parser("materialize", help="materialize the data URLs in FILEs and print one JSON object each")
    health = subs.add_parser("healthcheck", help="exit 0 if the daemon these options describe answers /healthz")
    for p in (run, serve, mat, health):
        _add_options(p)
    mat.add_argument("files", nargs="+", metavar="FILE", type=Path)
    return parser


def _usage_error(message: str) -> NoReturn:
    print(f"sidecar: error: {message}", file=sys.stderr)
    sys.exit(2)


def _describe(field: str) -> str:
    o: Option | None = _BY_FIELD.get(field)
    return f"{o.flag} ({o.env})" if o else field


def load_settings(ns: argparse.Namespace) -> Settings:
    """Flags win over SIDECAR_* variables; a bad value exits 2 naming the option."""
    given: dict[str, Any] = {}
    for o in OPTIONS:
        value = getattr(ns, o.field, None)
        if value is not None:
            given[_FIELD.get(o.field, o.field)] = value
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
            if o.field in _SECRET_FIELDS and getattr(ns, o.field, None) is not None:
                # Every user of the machine reads /proc/<pid>/cmdline; the agent included.
                get_logger("sidecar.cli").warning("security.token_on_command_line", option=o.flag, use=o.flag + "-file")
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
