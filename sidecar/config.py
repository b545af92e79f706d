"""Settings: every option of SPEC sections 2 and 11, typed and validated once, from flags and SIDECAR_* variables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import Field, JsonValue, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.privileges import read_secret_file, resolve_child_user

__all__ = (
    "COMMANDS",
    "OPTIONS",
    "Command",
    "Option",
    "Settings",
    "default_tool_results_dirs",
    "option",
    "options",
    "parse_push_headers",
)

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
PushMode = Literal["manifest", "cache"]
CommaList = Annotated[list[str], NoDecode]


def default_tool_results_dirs(home: str | None = None) -> list[Path]:
    """`$CLAUDE_CONFIG_DIR/projects`, else `~/.claude/projects` (Claude Code's own layout); `home` is the
    child user's when `--child-user` is set, since that is where its Claude Code writes."""
    base = os.environ.get("CLAUDE_CONFIG_DIR")
    if base:
        return [Path(base) / "projects"]
    return [(Path(home) if home else Path.home()) / ".claude" / "projects"]


# A secret and the file that holds it: one or the other, never both (SPEC 2).
_SECRET_FILES = (("auth_token", "auth_token_file"), ("ui_token", "ui_token_file"))


# An HTTP field name (RFC 9110 5.1, a token); a value may hold any visible character, space or tab.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A comma starts the next header only when a `Name:` follows it, so values keep their commas.
_NEXT_HEADER = re.compile(r",\s*(?=[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*:)")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Set by the pusher itself, or framing that a second value would corrupt.
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "connection", "idempotency-key"}
)


def parse_push_headers(value: Any) -> Any:
    """`Name: value` strings (repeated flags, or one comma list) into (name, value) pairs. Errors never
    quote a value: these headers carry secrets such as a pre-release password."""
    if value is None or not isinstance(value, (str, list, tuple)):
        return value
    items = [value] if isinstance(value, str) else list(value)
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, tuple):
            out.append(item)
            continue
        for part in _NEXT_HEADER.split(str(item)):
            if not part.strip():
                continue
            name, colon, val = part.partition(":")
            name, val = name.strip(), val.strip()
            if not colon or not _HEADER_NAME.fullmatch(name):
                raise ValueError("each header must be `Name: value` with a valid header name")
            if _BAD_VALUE.search(val):
                raise ValueError(f"the value of header {name} holds a control character")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the sidecar itself")
            out.append((name, val))
    return out


def _split(value: Any) -> Any:
    """Comma lists from the environment, repeated flags that may carry comma lists themselves."""
    if value is None:
        return value
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


Command = Literal["run", "serve", "materialize", "healthcheck"]
COMMANDS: tuple[Command, ...] = get_args(Command)
_DAEMON: tuple[Command, ...] = ("run", "serve")
_ALSO_ONE_SHOT: tuple[Command, ...] = (*_DAEMON, "materialize")  # read by the daemon and by `sidecar materialize`
_PROBED: tuple[Command, ...] = (*_DAEMON, "healthcheck")  # what `sidecar healthcheck` reads


def option(
    help: str,
    commands: tuple[Command, ...] = _DAEMON,
    *,
    flag: str | None = None,
    secret: bool = False,
    shown: str | None = None,
    **field: Any,
) -> Any:
    """A Settings field that is an option: pydantic's `Field(**field)` plus what the command line shows.

    `help` is one line; `commands` are those whose --help lists it (every command accepts every option,
    as every command reads every `SIDECAR_*` variable); `flag` when it is not the field's name (lists
    have a plural field and variable, a singular repeatable flag); `secret` is never shown or echoed;
    `shown` is the default as --help prints it, when the value itself would not say it."""
    cli: dict[str, JsonValue] = {"commands": list(commands), "secret": secret}
    if flag is not None:
        cli["flag"] = flag
    if shown is not None:
        cli["shown"] = shown
    if "default_factory" not in field:
        field.setdefault("default", None)  # an option nobody gives is unset, never missing
    return Field(description=help, json_schema_extra={"cli": cli}, **field)


class Settings(BaseSettings):
    """One object, loaded once, passed explicitly. Each field is one option, declared once with `option()`:
    its flag (the field name, unless it says otherwise), its `SIDECAR_<FIELD>` variable, help and commands."""

    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="ignore", frozen=True, populate_by_name=True)

    artifacts_dir: Path = option(
        "where artifacts are watched, served and materialized; created if missing",
        _ALSO_ONE_SHOT,
        default=Path("/workspace/artifacts"),
    )
    tool_results_dirs: Annotated[list[Path], NoDecode] = option(
        "a root searched for tool-results files; a missing root is picked up once it appears",
        flag="--tool-results-dir",
        shown="$CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects",
        default_factory=default_tool_results_dirs,
    )
    tool_results_glob: str = option(
        "which files under the tool-results roots are scanned for data URLs", default="**/tool-results/*"
    )
    state_dir: Path = option(
        "persisted manifest and push state; never inside the artifacts dir", default=Path("/workspace/.sidecar")
    )
    host: str = option("address the HTTP API listens on, which healthcheck probes", _PROBED, default="0.0.0.0")
    port: int = option(
        "port the HTTP API listens on; 0 picks a free one, logged in http.listening",
        _PROBED,
        default=5173,
        ge=0,
        le=65535,
    )
    public_base_url: str | None = option("absolute base of `url` in the manifest: the sandbox's public URL")
    ui_push_url: str | None = option("where manifests are pushed; none disables pushing")
    ui_push_mode: PushMode = option("what is pushed; cache needs --public-base-url and --chat-id", default="manifest")
    # (name, value) pairs; values are secrets (never logged), names are not.
    ui_push_headers: Annotated[list[tuple[str, SecretStr]], NoDecode] = option(
        "an extra `Name: value` header on every push; values are never logged",
        flag="--ui-push-header",
        secret=True,
        default_factory=list,
    )
    ui_token: SecretStr | None = option("bearer token sent with pushes", secret=True)
    ui_token_file: Path | None = option("read --ui-token from this file, kept out of /proc/<pid>/cmdline")
    chat_id: str | None = option("copied into the manifest and pushes")
    auth_token: SecretStr | None = option("bearer token the HTTP API requires", secret=True)
    auth_token_file: Path | None = option("read --auth-token from this file, kept out of /proc/<pid>/cmdline")
    child_user: str | None = option("run the child as this user[:group], names or numbers", ("run",))
    signed_url_ttl: int = option("seconds a signed artifact URL lives", default=3600, gt=0)
    cors_origins: CommaList = option("an allowed browser origin", flag="--cors-origin", default_factory=lambda: ["*"])
    grace_period: float = option(
        "longest wait, in seconds, after the final manifest", default=30.0, ge=0, allow_inf_nan=False
    )
    settle_ms: int = option("milliseconds a file must stay unchanged to be published", default=150, ge=0)
    rescan_interval: float = option(
        "seconds between full reconciliation scans, a safety net under the watcher",
        default=10.0,
        gt=0,
        allow_inf_nan=False,
    )
    # SPEC 9: a client that reads nothing is cut
    write_timeout: float = option(
        "seconds a client may read nothing of a response before it is cut", default=30.0, gt=0, allow_inf_nan=False
    )
    data_url_types: CommaList = option(
        "media types or ranges materialized from data URLs", _ALSO_ONE_SHOT, default_factory=lambda: ["image/*"]
    )
    min_data_url_bytes: int = option("smaller decoded payloads are left alone", _ALSO_ONE_SHOT, default=512, ge=0)
    max_data_url_bytes: int = option(
        "larger decoded payloads are rejected as too_large", _ALSO_ONE_SHOT, default=104_857_600, gt=0
    )
    bare_base64_images: bool = option(
        "also materialize bare base64 JSON strings that decode to a complete image", _ALSO_ONE_SHOT, default=True
    )
    rewrite_tool_results: bool = option(
        "replace materialized data URLs in the source file", _ALSO_ONE_SHOT, default=True
    )
    skyvern_routes: bool = option(
        "also serve Skyvern's /artifact/{image,json,text,recording}?path= routes", default=False
    )
    log_format: LogFormat = option("auto is console on a TTY, json elsewhere", _ALSO_ONE_SHOT, default="auto")
    log_level: LogLevel = option("the least severe level logged", _ALSO_ONE_SHOT, default="info")
    log_file: Path | None = option("logs go to this file instead of stderr", _ALSO_ONE_SHOT)
    s3_bucket: str | None = option("offload artifacts to this S3 bucket; none: no offload")
    # None: `<chat_id or sidecar_id>/`, known once the state dir is read
    s3_prefix: str | None = option(
        "key prefix, used as it is; empty: the bucket's root", shown="<chat_id or sidecar_id>/"
    )
    s3_endpoint_url: str | None = option("endpoint of an S3-compatible store: MinIO, R2...", shown="none, AWS")
    s3_region: str = option("the bucket's region; auto for R2", default="us-east-1")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Read `--*-token-file` into its secret; a secret given both ways is refused, whichever way each came."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for secret, file in _SECRET_FILES:
            if data.get(file) is None:
                continue
            if not str(data[file]).strip():
                raise ValueError(f"{file}: needs a path")
            if data.get(secret) not in (None, ""):
                flag = "--" + secret.replace("_", "-")
                raise ValueError(f"{file}: the secret is also given as {flag} (SIDECAR_{secret.upper()}); give one")
            try:
                data[secret] = read_secret_file(Path(str(data[file])))
            except ValueError as e:
                raise ValueError(f"{file}: {e}") from None
        if data.get("child_user") is not None and data.get("tool_results_dirs") is None:
            try:
                home = resolve_child_user(str(data["child_user"])).home
            except ValueError:
                home = None  # _known_user says why
            data["tool_results_dirs"] = default_tool_results_dirs(home)
        return data

    @field_validator("child_user")
    @classmethod
    def _known_user(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_child_user(value)
        return value

    @field_validator("tool_results_dirs", "cors_origins", "data_url_types", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("ui_push_headers", mode="before")
    @classmethod
    def _push_headers(cls, value: Any) -> Any:
        return parse_push_headers(value)

    @field_validator("ui_push_mode", "log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("ui_push_url", "s3_endpoint_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("s3_bucket", "s3_region")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @field_validator("data_url_types")
    @classmethod
    def _media_ranges(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.count("/") != 1 or not all(item.split("/")):
                raise ValueError(f"{item!r} is not a media type or range like image/*")
        return [v.lower() for v in value]

    @model_validator(mode="after")
    def _paths_and_modes(self) -> Settings:
        # normpath: `a/../b` must not hide that the state dir is inside the artifacts dir.
        artifacts = Path(os.path.normpath(self.artifacts_dir.absolute()))
        state = Path(os.path.normpath(self.state_dir.absolute()))
        if state == artifacts or artifacts in state.parents:
            raise ValueError("state_dir: --state-dir must not be inside --artifacts-dir")
        if self.ui_push_url and self.ui_push_mode == "cache":
            missing = [
                f for f, v in (("--public-base-url", self.public_base_url), ("--chat-id", self.chat_id)) if not v
            ]
            if missing:
                raise ValueError(f"ui_push_mode: --ui-push-mode cache needs {' and '.join(missing)}")
        if self.ui_token is not None and any(n.lower() == "authorization" for n, _ in self.ui_push_headers):
            raise ValueError("ui_push_headers: an Authorization header and --ui-token are two answers to one question")
        if self.min_data_url_bytes > self.max_data_url_bytes:
            raise ValueError("min_data_url_bytes: --min-data-url-bytes is larger than --max-data-url-bytes")
        return self

    @property
    def settle_s(self) -> float:
        return self.settle_ms / 1000.0


@dataclass(frozen=True)
class Option:
    """How one Settings field is spelled on the command line and in the environment, and shown in --help."""

    field: str
    flag: str
    env: str
    help: str
    default: str  # as --help shows it
    commands: frozenset[Command]
    secret: bool
    kind: Literal["value", "list", "bool"]
    metavar: str
    file: str | None = None  # the field that holds the path of this secret's file


def _shown(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        value = ",".join(map(str, value)) or None
    return "none" if value is None else str(value)


def _metavar(flag: str, info: FieldInfo) -> str:
    """`{a,b}` for a choice, SECONDS for a duration, else the flag's last word: --artifacts-dir DIR."""
    if get_origin(info.annotation) is Literal:
        return "{" + ",".join(map(str, get_args(info.annotation))) + "}"
    return "SECONDS" if info.annotation is float else flag.rsplit("-", 1)[-1].upper()


def _option(name: str, info: FieldInfo, env_prefix: str) -> Option:
    extra = info.json_schema_extra
    cli = extra.get("cli") if isinstance(extra, dict) else None
    commands = cli.get("commands") if isinstance(cli, dict) else None
    if not isinstance(cli, dict) or not isinstance(commands, list) or not info.description:
        raise TypeError(f"Settings.{name} is not declared with option(): it needs help text and commands")
    flag = str(cli.get("flag") or "--" + name.replace("_", "-"))
    kind: Literal["value", "list", "bool"] = "value"
    if info.annotation is bool:
        kind = "bool"
    elif get_origin(info.annotation) is list:
        kind = "list"
    return Option(
        field=name,
        flag=flag,
        env=env_prefix + name.upper(),
        help=info.description,
        default=str(cli["shown"]) if "shown" in cli else _shown(info),
        commands=frozenset(c for c in COMMANDS if c in commands),
        secret=cli.get("secret") is True,
        kind=kind,
        metavar=_metavar(flag, info),
        file=dict(_SECRET_FILES).get(name),
    )


def options(settings: type[Settings] = Settings) -> tuple[Option, ...]:
    """Every option, in declaration order, read from the fields themselves; TypeError names a field
    that was added without `option()`."""
    prefix = str(settings.model_config.get("env_prefix") or "")
    return tuple(_option(name, info, prefix) for name, info in settings.model_fields.items())


OPTIONS: tuple[Option, ...] = options()
