"""sidecar.cli: each command's --help, one declaration per option (flag, variable, help, default), usage errors,
and the one-line startup errors."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import SecretStr
from support.helpers import Sidecar, settings

from sidecar.cli import build_parser, main
from sidecar.config import OPTIONS, Settings, option, options

COMMANDS = ("run", "serve", "materialize", "healthcheck")
# What `sidecar materialize` and `sidecar healthcheck` read (sidecar/materialize.py, sidecar/healthcheck.py,
# and the logging main() configures before materializing); the daemon reads everything.
MATERIALIZE = {
    "--artifacts-dir",
    "--data-url-types",
    "--min-data-url-bytes",
    "--max-data-url-bytes",
    "--bare-base64-images",
    "--rewrite-tool-results",
    "--log-format",
    "--log-level",
    "--log-file",
}
HEALTHCHECK = {"--host", "--port"}
SERVER = {"--host", "--port", "--state-dir", "--ui-push-url", "--auth-token", "--cors-origin", "--grace-period"}


@pytest.fixture(autouse=True)
def _outside_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the outside environment; a terminal wide enough that argparse wraps no help line."""
    monkeypatch.setenv("COLUMNS", "1000")


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def option_entries(text: str) -> dict[str, str]:
    """`--flag` -> its whole entry in a --help (invocation and help, on one or two lines), spaces squeezed."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = entries.setdefault(line.split()[0].rstrip(","), [])
            current.append(line.strip())
        elif current is not None and line.startswith("   "):
            current.append(line.strip())
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def shown_options(capsys: pytest.CaptureFixture[str], command: str) -> dict[str, str]:
    entries = option_entries(help_of(capsys, command))
    entries.pop("-h")
    return entries


class TestHelp:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_every_option_of_a_command_shows_help_default_and_variable(self, capsys, command):
        """`sidecar COMMAND --help` lists each option COMMAND uses, with its help, default and SIDECAR_* variable."""
        entries = shown_options(capsys, command)
        mine = [o for o in OPTIONS if command in o.commands]
        assert set(entries) == {o.flag for o in mine}
        for o in mine:
            entry = entries[o.flag]
            assert o.help in entry, entry
            assert f"default: {o.default}" in entry, entry
            assert f"env {o.env}" in entry, entry

    @pytest.mark.parametrize(
        ("command", "flag", "shown"),
        [
            ("serve", "--port", "--port PORT port the HTTP API listens on"),
            ("serve", "--port", "(default: 5173; env SIDECAR_PORT)"),
            ("serve", "--artifacts-dir", "(default: /workspace/artifacts; env SIDECAR_ARTIFACTS_DIR)"),
            ("serve", "--tool-results-dir", "default: $CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects;"),
            ("serve", "--tool-results-dir", "env SIDECAR_TOOL_RESULTS_DIRS"),
            ("serve", "--cors-origin", "repeatable, takes comma lists; default: *; env SIDECAR_CORS_ORIGINS"),
            ("serve", "--ui-push-mode", "--ui-push-mode {manifest,cache}"),
            ("serve", "--grace-period", "(default: 30; env SIDECAR_GRACE_PERIOD)"),
            ("serve", "--skyvern-routes", "--skyvern-routes, --no-skyvern-routes"),
            ("serve", "--skyvern-routes", "(default: off; env SIDECAR_SKYVERN_ROUTES)"),
            ("run", "--child-user", "env SIDECAR_CHILD_USER"),
            ("materialize", "--max-data-url-bytes", "(default: 104857600; env SIDECAR_MAX_DATA_URL_BYTES)"),
            ("materialize", "--bare-base64-images", "(default: on; env SIDECAR_BARE_BASE64_IMAGES)"),
            ("healthcheck", "--host", "(default: 0.0.0.0; env SIDECAR_HOST)"),
        ],
    )
    def test_entries_read_like_the_spec(self, capsys, command, flag, shown):
        """An entry is `--flag METAVAR  help (default: D; env SIDECAR_NAME)`, with SPEC 2's names and defaults."""
        assert shown in shown_options(capsys, command)[flag]

    def test_materialize_lists_only_what_it_reads(self, capsys):
        """`sidecar materialize --help` shows the data-URL, artifacts-dir and log options, no server option."""
        entries = shown_options(capsys, "materialize")
        assert set(entries) == MATERIALIZE
        assert not SERVER & set(entries)

    def test_healthcheck_lists_only_host_and_port(self, capsys):
        """`sidecar healthcheck --help` shows the address it probes, nothing else."""
        assert set(shown_options(capsys, "healthcheck")) == HEALTHCHECK

    def test_child_user_is_an_option_of_run_only(self, capsys):
        """Only `run` has a child to start as another user."""
        assert "--child-user" in shown_options(capsys, "run")
        assert "--child-user" not in shown_options(capsys, "serve")

    @pytest.mark.parametrize(("command", "usage"), [
        ("run", "usage: sidecar run [OPTIONS] -- CMD [ARG...]"),
        ("serve", "usage: sidecar serve [OPTIONS]"),
        ("materialize", "usage: sidecar materialize [OPTIONS] FILE..."),
        ("healthcheck", "usage: sidecar healthcheck [OPTIONS]"),
    ])  # fmt: skip
    def test_each_command_says_what_it_does(self, capsys, command, usage):
        """A command's --help starts with its usage and a description of what it does."""
        text = help_of(capsys, command)
        first, _, rest = text.partition("\n\n")
        assert first == usage
        description = rest.split("\n\n")[0]
        assert len(description) > 40 and not description.startswith(("options:", "positional"))

    def test_secrets_show_no_value_and_name_their_file(self, capsys, monkeypatch):
        """A secret is marked as one, its value never printed, its file option and variable named."""
        monkeypatch.setenv("SIDECAR_AUTH_TOKEN", "hunter2-env")
        text = help_of(capsys, "serve", "--ui-token", "hunter2-flag")
        assert "hunter2" not in text
        entries = option_entries(text)
        assert "(secret; default: none; env SIDECAR_AUTH_TOKEN;" in entries["--auth-token"]
        assert "--auth-token-file, SIDECAR_AUTH_TOKEN_FILE" in entries["--auth-token"]
        assert "--ui-token-file, SIDECAR_UI_TOKEN_FILE" in entries["--ui-token"]
        assert "secret" in entries["--ui-push-header"]

    def test_top_level_help_lists_the_commands(self, capsys):
        """`sidecar --help` names the four commands and how to see their options."""
        text = help_of(capsys)
        for command in COMMANDS:
            assert f"    {command}" in text
        assert "sidecar COMMAND --help" in text


class TestDeclarations:
    def test_every_field_has_one_flag_and_one_variable(self):
        """Each Settings field is one option: one flag (with its --no- form for booleans), one variable."""
        assert [o.field for o in OPTIONS] == list(Settings.model_fields)
        assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
        assert len({o.env for o in OPTIONS}) == len(OPTIONS)
        for o in OPTIONS:
            assert o.help and "\n" not in o.help and o.commands, o
            assert o.env == "SIDECAR_" + o.field.upper()  # what pydantic-settings reads
        subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        for command, parser in subs.choices.items():
            for o in OPTIONS:
                actions = [a for a in parser._actions if a.dest == o.field]
                assert len(actions) == 1, (command, o.field)
                negation = ["--no-" + o.flag.removeprefix("--")] if o.kind == "bool" else []
                assert actions[0].option_strings == [o.flag, *negation]

    def test_a_field_without_a_declaration_is_refused(self):
        """A field added without option() (no help, no commands) stops the import, naming it."""

        class Grown(Settings):
            new_knob: int = 3

        with pytest.raises(TypeError, match="new_knob"):
            options(Grown)

        class Declared(Settings):
            new_knob: int = option("a new knob", default=3)

        assert options(Declared)[-1].flag == "--new-knob"

    def test_secrets_are_the_tokens_and_header_values(self):
        """Every field holding a SecretStr is declared secret, and only those."""
        for name, info in Settings.model_fields.items():
            holds_secret = "SecretStr" in str(info.annotation)
            assert next(o for o in OPTIONS if o.field == name).secret == holds_secret, name


# A value other than the default, spelled as on the command line, for the fields whose type does not say one.
SAMPLES = {
    "artifacts_dir": "/tmp/sample-artifacts",
    "tool_results_dirs": "/tmp/sample-results",
    "tool_results_glob": "*/*.txt",
    "state_dir": "/tmp/sample-state",
    "host": "127.0.0.2",
    "public_base_url": "https://sandbox.example",
    "ui_push_url": "https://ui.example/push",
    "ui_push_headers": "X-Sample: 1",
    "ui_token": "sample-ui-token",
    "ui_token_file": "{tmp}/ui-token",
    "chat_id": "chat-sample",
    "auth_token": "sample-auth-token",
    "auth_token_file": "{tmp}/auth-token",
    "child_user": "0",
    "cors_origins": "https://a.example",
    "data_url_types": "application/pdf",
    "log_file": "/tmp/sample.log",
    "s3_bucket": "sample-bucket",
    "s3_prefix": "sample/",
    "s3_endpoint_url": "http://minio.example:9000",
    "s3_region": "eu-west-3",
}


def sample(name: str, tmp: Path) -> tuple[list[str], str]:
    """(the flags, the variable's value) that set field `name` to something other than its default."""
    o = next(o for o in OPTIONS if o.field == name)
    info = Settings.model_fields[name]
    default: Any = info.get_default(call_default_factory=False)
    if info.annotation is bool:
        return ([o.flag] if not default else ["--no-" + o.flag.removeprefix("--")]), str(not default).lower()
    if get_origin(info.annotation) is Literal:
        value = next(c for c in get_args(info.annotation) if c != default)
    elif info.annotation in (int, float):
        value = str(default + 1)
    else:
        assert name in SAMPLES, f"add a sample value for the new option {name} to SAMPLES"
        value = SAMPLES[name].format(tmp=tmp)
    return [o.flag, value], value


class TestReach:
    @pytest.mark.parametrize("name", list(Settings.model_fields))
    def test_the_flag_and_the_variable_set_the_field(self, monkeypatch, tmp_path, name):
        """The option's flag and its SIDECAR_* variable each set its field, to the same value."""
        (tmp_path / "ui-token").write_text("from-file\n")
        (tmp_path / "auth-token").write_text("from-file\n")
        o = next(o for o in OPTIONS if o.field == name)
        flags, env_value = sample(name, tmp_path)
        default = getattr(settings(), name)
        by_flag = getattr(settings(*flags), name)
        monkeypatch.setenv(o.env, env_value)
        by_env = getattr(settings(), name)
        assert by_flag == by_env != default
        if isinstance(by_flag, SecretStr):
            assert by_flag.get_secret_value() == env_value


class TestCommandLine:
    def test_run_takes_the_same_options(self):
        """`run` parses the same options as `serve`."""
        s = settings("--settle-ms", "75", "--grace-period", "1", command="run")
        assert (s.settle_ms, s.grace_period) == (75, 1)

    @pytest.mark.parametrize("command", ["materialize", "healthcheck"])
    def test_options_a_command_does_not_use_are_still_accepted(self, command, capsys):
        """A flag left out of a command's --help still means what its variable means (and is checked)."""
        files = ["f.txt"] if command == "materialize" else []
        assert settings("--grace-period", "2", *files, command=command).grace_period == 2
        with pytest.raises(SystemExit) as exc:
            settings("--grace-period", "forever", *files, command=command)
        assert exc.value.code == 2
        assert "--grace-period (SIDECAR_GRACE_PERIOD)" in capsys.readouterr().err

    def test_unknown_flag_exits_2(self, capsys):
        """An option that does not exist exits 2 naming it, after a usage line."""
        with pytest.raises(SystemExit) as exc:
            settings("--no-such-option", "1")
        assert exc.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("usage: sidecar")
        assert err[-1].startswith("sidecar: error: ") and "--no-such-option" in err[-1]

    def test_run_without_a_command_exits_2(self, capsys):
        """`sidecar run` with no `-- CMD` is a usage error."""
        with pytest.raises(SystemExit) as exc:
            main(["run", "--settle-ms", "10"])
        assert exc.value.code == 2
        assert "run needs a command" in capsys.readouterr().err

    def test_serve_with_a_command_exits_2(self, capsys):
        """`sidecar serve -- CMD` is a usage error: only `run` supervises a child."""
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--", "true"])
        assert exc.value.code == 2
        assert "serve" in capsys.readouterr().err

    def test_bad_value_through_main_exits_2_before_doing_anything(self, capsys, tmp_path):
        """main() refuses bad options before it creates any directory."""
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--artifacts-dir", str(tmp_path / "new"), "--port", "-1"])
        assert exc.value.code == 2
        assert "--port" in capsys.readouterr().err
        assert not (tmp_path / "new").exists()


RunSidecar = Callable[..., Awaitable[Sidecar]]


class TestStartupErrors:
    async def test_a_port_in_use_is_one_line_naming_it_and_exit_1(self, run_sidecar: RunSidecar) -> None:
        """Another process listens on the port: one `sidecar: error:` line naming the port, no traceback, 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            sc = await run_sidecar(port=port, wait_ready=False)
            assert await sc.wait_exit(10) == 1
        lines = sc.stderr().splitlines()
        assert "Traceback" not in sc.stderr()
        assert lines[-1] == f"sidecar: error: port {port} is already in use on 127.0.0.1 (--port, SIDECAR_PORT)"
        for line in lines[:-1]:  # whatever was logged before the bind, as JSON
            json.loads(line)

    async def test_with_a_log_file_stderr_still_gets_the_one_line(
        self, run_sidecar: RunSidecar, tmp_path: Path
    ) -> None:
        """`--log-file`: stderr holds exactly the one error line; the log file has `lifecycle.startup_failed`."""
        log_file = tmp_path / "sidecar.log"
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            sc = await run_sidecar("--log-file", str(log_file), port=port, wait_ready=False)
            assert await sc.wait_exit(10) == 1
        assert sc.stderr().splitlines() == [
            f"sidecar: error: port {port} is already in use on 127.0.0.1 (--port, SIDECAR_PORT)"
        ]
        events = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert [e["event"] for e in events if e["level"] == "error"] == ["lifecycle.startup_failed"]
