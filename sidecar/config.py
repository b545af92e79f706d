"""Settings: every option of SPEC sections 2 and 11, typed and validated once, from flags and SIDECAR_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.privileges import read_secret_file, resolve_child_user

__all__ = ("OPTIONS", "Option", "Settings", "default_tool_results_dirs")

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


def _split(value: Any) -> Any:
    """Comma lists from the environment, repeated flags that may carry comma lists themselves."""
    if value is None:
        return value
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return out


class Settings(BaseSettings):
    """One object, loaded once, passed explicitly. Field names are the flags without `--`."""

    model_config = SettingsConfigDict(env_prefix="SIDECAR_", extra="ignore", frozen=True, populate_by_name=True)

    artifacts_dir: Path = Path("/workspace/artifacts")
    tool_results_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=default_tool_results_dirs)
    tool_results_glob: str = "**/tool-results/*"
    state_dir: Path = Path("/workspace/.sidecar")
    host: str = "0.0.0.0"
    port: int = Field(5173, ge=0, le=65535)
    public_base_url: str | None = None
    ui_push_url: str | None = None
    ui_push_mode: PushMode = "manifest"
    ui_token: SecretStr | None = None
    ui_token_file: Path | None = None
    chat_id: str | None = None
    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None
    child_user: str | None = None
    signed_url_ttl: int = Field(3600, gt=0)
    cors_origins: CommaList = Field(default_factory=lambda: ["*"])
    grace_period: float = Field(30.0, ge=0, allow_inf_nan=False)
    settle_ms: int = Field(150, ge=0)
    rescan_interval: float = Field(10.0, gt=0, allow_inf_nan=False)
    data_url_types: CommaList = Field(default_factory=lambda: ["image/*"])
    min_data_url_bytes: int = Field(512, ge=0)
    max_data_url_bytes: int = Field(104_857_600, gt=0)
    bare_base64_images: bool = True
    rewrite_tool_results: bool = True
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    log_file: Path | None = None
    s3_bucket: str | None = None
    s3_prefix: str | None = None  # None: `<chat_id or sidecar_id>/`, known once the state dir is read
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

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
        if self.min_data_url_bytes > self.max_data_url_bytes:
            raise ValueError("min_data_url_bytes: --min-data-url-bytes is larger than --max-data-url-bytes")
        return self

    @property
    def settle_s(self) -> float:
        return self.settle_ms / 1000.0


class Option:
    """How one setting is spelled on the command line and in the environment."""

    def __init__(self, field: str, *, env: str | None = None, repeat: bool = False, flag_bool: bool = False) -> None:
        self.field = field
        self.flag = "--" + field.replace("_", "-")
        self.env = env or "SIDECAR_" + field.upper()
        self.repeat = repeat
        self.flag_bool = flag_bool


# The flags of SPEC section 2; list options take their plural name in the environment.
OPTIONS: tuple[Option, ...] = (
    Option("artifacts_dir"),
    Option("tool_results_dir", env="SIDECAR_TOOL_RESULTS_DIRS", repeat=True),
    Option("tool_results_glob"),
    Option("state_dir"),
    Option("host"),
    Option("port"),
    Option("public_base_url"),
    Option("ui_push_url"),
    Option("ui_push_mode"),
    Option("ui_token"),
    Option("ui_token_file"),
    Option("chat_id"),
    Option("auth_token"),
    Option("auth_token_file"),
    Option("child_user"),
    Option("signed_url_ttl"),
    Option("cors_origin", env="SIDECAR_CORS_ORIGINS", repeat=True),
    Option("grace_period"),
    Option("settle_ms"),
    Option("rescan_interval"),
    Option("data_url_types", repeat=True),
    Option("min_data_url_bytes"),
    Option("max_data_url_bytes"),
    Option("bare_base64_images", flag_bool=True),
    Option("rewrite_tool_results", flag_bool=True),
    Option("log_format"),
    Option("log_level"),
    Option("log_file"),
    Option("s3_bucket"),
    Option("s3_prefix"),
    Option("s3_endpoint_url"),
    Option("s3_region"),
)
