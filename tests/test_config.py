"""sidecar.config through sidecar.cli: defaults, flags over SIDECAR_* variables, lists, booleans, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import helpers
from support.helpers import settings


@pytest.fixture(autouse=True)
def _outside_env(clean_env: Path) -> None:
    """Every test here runs with conftest's clean_env: nothing from the outside, a fresh HOME."""


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """helpers.refused, where argparse's own refusals (a usage line first) count too."""
    return helpers.refused(capsys, *argv, after_usage=True)


class TestDefaults:
    def test_defaults_are_the_documented_ones(self, clean_env):
        """Without flags or variables every option has the SPEC section 2 default."""
        s = settings()
        assert s.artifacts_dir == Path("/workspace/artifacts")
        assert s.tool_results_dirs == [clean_env / ".claude" / "projects"]
        assert s.tool_results_glob == "**/tool-results/*"
        assert s.state_dir == Path("/workspace/.sidecar")
        assert (s.host, s.port) == ("0.0.0.0", 5173)
        assert (s.public_base_url, s.ui_push_url, s.ui_token, s.chat_id, s.auth_token) == (None,) * 5
        assert s.ui_push_mode == "manifest"
        assert s.signed_url_ttl == 3600
        assert s.cors_origins == ["*"]
        assert s.grace_period == 30
        assert s.settle_ms == 150
        assert s.rescan_interval == 10
        assert s.data_url_types == ["image/*"]
        assert (s.min_data_url_bytes, s.max_data_url_bytes) == (512, 104_857_600)
        assert (s.bare_base64_images, s.rewrite_tool_results) == (True, True)
        assert (s.log_format, s.log_level, s.log_file) == ("auto", "info", None)

    def test_tool_results_default_follows_claude_config_dir(self, monkeypatch, tmp_path):
        """With CLAUDE_CONFIG_DIR set, the default tool-results root is `$CLAUDE_CONFIG_DIR/projects`."""
        monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
        assert settings().tool_results_dirs == [tmp_path / "claude" / "projects"]


class TestPrecedence:
    def test_environment_sets_options(self, monkeypatch):
        """Every option can come from `SIDECAR_<NAME>`."""
        monkeypatch.setenv("SIDECAR_PORT", "8080")
        monkeypatch.setenv("SIDECAR_ARTIFACTS_DIR", "/data/out")
        monkeypatch.setenv("SIDECAR_GRACE_PERIOD", "2.5")
        monkeypatch.setenv("SIDECAR_CHAT_ID", "chat-1")
        monkeypatch.setenv("SIDECAR_AUTH_TOKEN", "tok")
        s = settings()
        assert (s.port, s.artifacts_dir, s.grace_period, s.chat_id) == (8080, Path("/data/out"), 2.5, "chat-1")
        assert s.auth_token is not None and s.auth_token.get_secret_value() == "tok"

    def test_flag_wins_over_environment(self, monkeypatch):
        """A flag overrides its variable, lists included (the flag's list replaces the variable's)."""
        monkeypatch.setenv("SIDECAR_PORT", "8080")
        monkeypatch.setenv("SIDECAR_LOG_LEVEL", "debug")
        monkeypatch.setenv("SIDECAR_CORS_ORIGINS", "https://env.example")
        monkeypatch.setenv("SIDECAR_BARE_BASE64_IMAGES", "false")
        s = settings("--port", "9090", "--cors-origin", "https://flag.example", "--bare-base64-images")
        assert s.port == 9090
        assert s.cors_origins == ["https://flag.example"]
        assert s.bare_base64_images is True
        assert s.log_level == "debug"  # no flag: the variable still counts


class TestLists:
    def test_environment_lists_are_comma_separated(self, monkeypatch):
        """List variables (plural names) split on commas and drop blanks and surrounding spaces."""
        monkeypatch.setenv("SIDECAR_TOOL_RESULTS_DIRS", "/a/projects, /b/projects,")
        monkeypatch.setenv("SIDECAR_CORS_ORIGINS", "https://a.example , https://b.example")
        monkeypatch.setenv("SIDECAR_DATA_URL_TYPES", "image/png,IMAGE/SVG+XML")
        s = settings()
        assert s.tool_results_dirs == [Path("/a/projects"), Path("/b/projects")]
        assert s.cors_origins == ["https://a.example", "https://b.example"]
        assert s.data_url_types == ["image/png", "image/svg+xml"]

    def test_repeated_flags_add_up_and_take_comma_lists(self):
        """A repeatable flag may be given several times, each time with a comma list."""
        s = settings(
            "--cors-origin",
            "https://a.example,https://b.example",
            "--cors-origin",
            "https://c.example",
            "--tool-results-dir",
            "/x",
            "--tool-results-dir",
            "/y,/z",
            "--data-url-types",
            "image/*,application/pdf",
        )
        assert s.cors_origins == ["https://a.example", "https://b.example", "https://c.example"]
        assert s.tool_results_dirs == [Path("/x"), Path("/y"), Path("/z")]
        assert s.data_url_types == ["image/*", "application/pdf"]


class TestBooleans:
    @pytest.mark.parametrize(
        ("spelling", "value"),
        [
            ("true", True),
            ("false", False),
            ("1", True),
            ("0", False),
            ("yes", True),
            ("no", False),
            ("on", True),
            ("off", False),
            ("TRUE", True),
            ("Off", False),
        ],
    )
    def test_environment_spellings(self, monkeypatch, spelling, value):
        """Boolean variables accept true/false, 1/0, yes/no and on/off."""
        monkeypatch.setenv("SIDECAR_BARE_BASE64_IMAGES", spelling)
        monkeypatch.setenv("SIDECAR_REWRITE_TOOL_RESULTS", spelling)
        s = settings()
        assert (s.bare_base64_images, s.rewrite_tool_results) == (value, value)

    def test_flags_have_a_no_form(self):
        """`--no-bare-base64-images` and `--no-rewrite-tool-results` turn the options off."""
        s = settings("--no-bare-base64-images", "--no-rewrite-tool-results")
        assert (s.bare_base64_images, s.rewrite_tool_results) == (False, False)

    def test_unknown_boolean_spelling_is_refused(self, monkeypatch, capsys):
        """A boolean variable that is none of the spellings exits 2 naming the option."""
        monkeypatch.setenv("SIDECAR_REWRITE_TOOL_RESULTS", "maybe")
        line = refused(capsys)
        assert "--rewrite-tool-results" in line
        assert "SIDECAR_REWRITE_TOOL_RESULTS" in line


class TestRefusals:
    @pytest.mark.parametrize(
        ("argv", "option"),
        [
            (["--port", "abc"], "--port"),
            (["--port", "70000"], "--port"),
            (["--settle-ms", "-1"], "--settle-ms"),
            (["--grace-period", "nan"], "--grace-period"),
            (["--grace-period", "-3"], "--grace-period"),
            (["--rescan-interval", "0"], "--rescan-interval"),
            (["--signed-url-ttl", "0"], "--signed-url-ttl"),
            (["--ui-push-mode", "carrier-pigeon"], "--ui-push-mode"),
            (["--log-format", "xml"], "--log-format"),
            (["--log-level", "loud"], "--log-level"),
            (["--public-base-url", "ftp://example.com"], "--public-base-url"),
            (["--ui-push-url", "example.com/push"], "--ui-push-url"),
            (["--data-url-types", "image"], "--data-url-types"),
            (["--max-data-url-bytes", "0"], "--max-data-url-bytes"),
            (["--min-data-url-bytes", "10", "--max-data-url-bytes", "5"], "--min-data-url-bytes"),
            (["--s3-bucket", " "], "--s3-bucket"),
            (["--s3-endpoint-url", "minio:9000"], "--s3-endpoint-url"),
            (["--s3-region", ""], "--s3-region"),
        ],
    )
    def test_bad_values_exit_2_naming_the_option(self, capsys, argv, option):
        """A bad value exits with status 2 and a one-line error that names the option."""
        assert option in refused(capsys, *argv)

    def test_bad_environment_value_names_the_variable(self, monkeypatch, capsys):
        """A bad value from the environment names both the flag and the variable."""
        monkeypatch.setenv("SIDECAR_PORT", "eighty")
        line = refused(capsys)
        assert "--port" in line
        assert "SIDECAR_PORT" in line
        assert "eighty" in line

    def test_tokens_are_not_echoed_in_errors(self, monkeypatch, capsys):
        """An error about a secret option never prints the secret."""
        monkeypatch.setenv("SIDECAR_UI_TOKEN", "hunter2-secret")
        line = refused(capsys, "--port", "x")
        assert "hunter2-secret" not in line

    @pytest.mark.parametrize(
        ("artifacts", "state"),
        [
            pytest.param("{tmp}/a", "{tmp}/a", id="same"),
            pytest.param("{tmp}/a", "{tmp}/a/.sidecar", id="child"),
            pytest.param("{tmp}/a", "{tmp}/a/deep/state", id="grandchild"),
            pytest.param("{tmp}/a/", "{tmp}/a/.sidecar/", id="trailing-slashes"),
            pytest.param("{tmp}/b/../a", "{tmp}/a/.sidecar", id="dotdot-in-artifacts-dir"),
            pytest.param("{tmp}/a", "{tmp}/b/../a/.sidecar", id="dotdot-in-state-dir"),
        ],
    )
    def test_state_dir_inside_artifacts_dir_is_refused(self, capsys, tmp_path, artifacts, state):
        """A state dir equal to or below the artifacts dir, however the path is spelled, exits 2 naming it."""
        line = refused(
            capsys,
            "--artifacts-dir",
            artifacts.format(tmp=tmp_path),
            "--state-dir",
            state.format(tmp=tmp_path),
        )
        assert "--state-dir" in line

    def test_relative_state_dir_inside_artifacts_dir_is_refused(self, capsys, tmp_path, monkeypatch):
        """Relative paths are compared from the working directory."""
        monkeypatch.chdir(tmp_path)
        line = refused(capsys, "--artifacts-dir", "out", "--state-dir", str(tmp_path / "out" / "state"))
        assert "--state-dir" in line

    def test_state_dir_beside_artifacts_dir_is_fine(self, tmp_path):
        """A sibling directory, even one whose name starts like the artifacts dir, is accepted."""
        s = settings("--artifacts-dir", str(tmp_path / "a"), "--state-dir", str(tmp_path / "a-state"))
        assert s.state_dir == tmp_path / "a-state"

    @pytest.mark.parametrize(
        ("extra", "missing"),
        [
            ([], ["--public-base-url", "--chat-id"]),
            (["--chat-id", "c1"], ["--public-base-url"]),
            (["--public-base-url", "https://sandbox.example"], ["--chat-id"]),
        ],
    )
    def test_cache_mode_needs_public_base_url_and_chat_id(self, capsys, extra, missing):
        """`--ui-push-mode cache` without --public-base-url or --chat-id exits 2 naming what is missing."""
        line = refused(
            capsys, "--ui-push-url", "http://ui.example/api/artifacts/cache", "--ui-push-mode", "cache", *extra
        )
        for option in missing:
            assert option in line
        assert "--ui-push-mode" in line

    def test_cache_mode_with_both_is_accepted(self):
        """With a public base URL and a chat id, cache mode is fine; the base URL loses its trailing slash."""
        s = settings(
            "--ui-push-url",
            "http://ui.example/api/artifacts/cache",
            "--ui-push-mode",
            "CACHE",
            "--public-base-url",
            "https://sandbox.example/",
            "--chat-id",
            "c1",
        )
        assert (s.ui_push_mode, s.public_base_url, s.chat_id) == ("cache", "https://sandbox.example", "c1")


class TestObjectStorage:
    def test_offload_is_off_by_default(self):
        """Without --s3-bucket nothing is offloaded; the prefix default is left for run time (SPEC 11)."""
        s = settings()
        assert (s.s3_bucket, s.s3_prefix, s.s3_endpoint_url, s.s3_region) == (None, None, None, "us-east-1")

    def test_flags(self):
        """--s3-bucket, --s3-prefix, --s3-endpoint-url and --s3-region set the four settings."""
        s = settings(
            "--s3-bucket", "artifacts", "--s3-prefix", "runs/7/", "--s3-endpoint-url", "http://minio:9000",
            "--s3-region", "auto",
        )  # fmt: skip
        assert (s.s3_bucket, s.s3_prefix, s.s3_endpoint_url, s.s3_region) == (
            "artifacts", "runs/7/", "http://minio:9000", "auto"
        )  # fmt: skip

    def test_environment_and_precedence(self, monkeypatch):
        """SIDECAR_S3_* variables set them; a flag wins; an empty prefix means keys at the bucket's root."""
        monkeypatch.setenv("SIDECAR_S3_BUCKET", "from-env")
        monkeypatch.setenv("SIDECAR_S3_PREFIX", "")
        monkeypatch.setenv("SIDECAR_S3_ENDPOINT_URL", "https://acct.r2.cloudflarestorage.com")
        monkeypatch.setenv("SIDECAR_S3_REGION", "eu-west-3")
        s = settings("--s3-bucket", "from-flag")
        assert (s.s3_bucket, s.s3_prefix, s.s3_endpoint_url, s.s3_region) == (
            "from-flag", "", "https://acct.r2.cloudflarestorage.com", "eu-west-3"
        )  # fmt: skip


class TestPushHeaders:
    def test_none_by_default(self):
        """No extra push header unless asked."""
        assert settings().ui_push_headers == []

    def test_repeated_flag_and_comma_lists_keep_commas_inside_values(self):
        """`--ui-push-header "Name: value"` adds up; a comma starts a new header only before `Name:`."""
        s = settings(
            "--ui-push-header", "X-PreReleasePassword: pass, word",
            "--ui-push-header", "X-A: 1,X-B:two",
        )  # fmt: skip
        pairs = [(n, v.get_secret_value()) for n, v in s.ui_push_headers]
        assert pairs == [("X-PreReleasePassword", "pass, word"), ("X-A", "1"), ("X-B", "two")]

    def test_environment_list(self, monkeypatch):
        """SIDECAR_UI_PUSH_HEADERS is a comma list by the same rule; the flag wins over it."""
        monkeypatch.setenv("SIDECAR_UI_PUSH_HEADERS", "X-PreReleasePassword: a,b , X-Trace: on")
        pairs = [(n, v.get_secret_value()) for n, v in settings().ui_push_headers]
        assert pairs == [("X-PreReleasePassword", "a,b"), ("X-Trace", "on")]
        assert [n for n, _ in settings("--ui-push-header", "X-Only: 1").ui_push_headers] == ["X-Only"]

    def test_values_are_secret(self):
        """The Settings repr never shows a header value."""
        assert "hunter2" not in repr(settings("--ui-push-header", "X-PreReleasePassword: hunter2"))

    @pytest.mark.parametrize(
        "value",
        ["no colon here", ": empty-name", "Bad Name: v", "X-Ok: fine\r\nX-Evil: 1", "Content-Length: 3", "Host: h"],
    )
    def test_malformed_exits_2_naming_the_option_without_the_value(self, capsys, value):
        """A malformed or reserved header exits 2 naming --ui-push-header, never echoing what was given."""
        line = refused(capsys, "--ui-push-header", "X-Fine: secret-1", "--ui-push-header", value)
        assert "--ui-push-header" in line and "SIDECAR_UI_PUSH_HEADERS" in line
        assert "secret-1" not in line and "fine" not in line

    def test_authorization_header_and_ui_token_together_are_refused(self, capsys):
        """Two sources for one Authorization header exit 2."""
        line = refused(capsys, "--ui-token", "t", "--ui-push-header", "Authorization: Basic eDp5")
        assert "--ui-push-header" in line and "eDp5" not in line
