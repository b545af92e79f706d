"""SPEC 2, 8, 9: the agent gets none of the sidecar's secrets — environment, tokens, state, memory."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support.helpers import (
    REPO_ROOT,
    Sidecar,
    Workspace,
    daemon_env,
    entry,
    free_port,
    refused,
    settings,
    sha256,
    start_logged,
    wait_manifest,
)
from support.machine import AGENT

AUTH = "auth-7f3c9e1d5b"
UI = "ui-2a8b4c6d0e"
AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE0KEYID00",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-5e6f7a8b9c",
    "AWS_SESSION_TOKEN": "aws-session-1b2c3d4e5f",
    "AWS_SECURITY_TOKEN": "aws-security-9a8b7c6d",
}
SECRETS = (AUTH, UI, *AWS.values())
CREDENTIAL_ENV = (*AWS, "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN")

# What a prompt-injected agent would try first: the sidecar's environment and command line, its state
# dir and the token file. $1 is the state dir, $2 the token file; the sidecar is the child's parent.
PROBE = r"""
echo "id $(id -u) $(id -g) $(id -G)"
for f in /proc/$PPID/environ "$1/manifest.json" "$2"; do
  if cat "$f" >/dev/null 2>&1; then echo "read $f"; cat "$f"; echo; else echo "denied $f"; fi
done
if ls "$1" >/dev/null 2>&1; then echo "listed state dir"; else echo "denied state dir"; fi
echo "cmdline $(tr '\0' ' ' < /proc/$PPID/cmdline)"
"""


def token_file(ws: Workspace, name: str, value: str) -> Path:
    """A root-owned 0600 file holding the secret and a trailing newline, as `echo $TOKEN > file` writes it."""
    path = ws.root / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def child_env(stdout: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.decode().splitlines() if "=" in line)


class TestChildEnvironment:
    async def test_child_gets_no_sidecar_variable_and_no_cloud_credential(self, run_sidecar):
        """`sidecar run -- sh -c env`: no SIDECAR_* and no AWS credential variable; the rest is inherited."""
        env = {"SIDECAR_UI_TOKEN": UI, "SIDECAR_AUTH_TOKEN": AUTH, "SIDECAR_CHAT_ID": "chat-1", **AWS}
        env |= {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "aws-ct"}
        env |= {"AWS_REGION": "eu-west-1", "AGENT_SETTING": "kept"}
        sc = await run_sidecar(mode="run", command=["sh", "-c", "env"], env=env, wait_ready=False)
        assert await sc.wait_exit(15) == 0, sc.stderr()
        seen = child_env(sc.stdout())
        assert [k for k in seen if k.startswith("SIDECAR_") or k in CREDENTIAL_ENV] == []
        assert (seen.get("AWS_REGION"), seen.get("AGENT_SETTING")) == ("eu-west-1", "kept")
        assert not [s for s in SECRETS if s in sc.stdout().decode()]


class TestTokenFiles:
    async def _check(self, sc: Sidecar, ui, http) -> None:
        sc.workspace.write("a.txt", b"a")
        async with http.get(sc.url("/v1/manifest")) as resp:
            assert resp.status == 401
        async with http.get(sc.url("/v1/manifest"), headers={"Authorization": f"Bearer {AUTH}"}) as resp:
            assert resp.status == 200
        sc.auth_token = AUTH  # for wait_manifest and the release at teardown
        await wait_manifest(http, sc, lambda d: entry(d, "a.txt"))
        await sc.wait_log("push.ok")
        assert {p.headers.get("Authorization") for p in ui.requests} == {f"Bearer {UI}"}
        cmdline = Path(f"/proc/{sc.pid}/cmdline").read_bytes()
        assert AUTH.encode() not in cmdline and UI.encode() not in cmdline

    async def test_token_files_as_flags(self, run_sidecar, run_ui, workspace, http):
        """--auth-token-file guards the API with the file's token; --ui-token-file's token goes with pushes."""
        ws, ui = workspace(), await run_ui()
        auth, ui_tok = token_file(ws, "auth.token", AUTH), token_file(ws, "ui.token", UI)
        sc = await run_sidecar("--auth-token-file", str(auth), "--ui-token-file", str(ui_tok), "--ui-push-url", ui.url)
        await self._check(sc, ui, http)

    async def test_token_files_from_the_environment(self, run_sidecar, run_ui, workspace, http):
        """SIDECAR_AUTH_TOKEN_FILE and SIDECAR_UI_TOKEN_FILE work like the flags."""
        ws, ui = workspace(), await run_ui()
        env = {
            "SIDECAR_AUTH_TOKEN_FILE": str(token_file(ws, "auth.token", AUTH)),
            "SIDECAR_UI_TOKEN_FILE": str(token_file(ws, "ui.token", UI)),
        }
        sc = await run_sidecar("--ui-push-url", ui.url, env=env)
        await self._check(sc, ui, http)


@pytest.mark.usefixtures("clean_env")
class TestRefusals:
    @pytest.mark.parametrize("secret", ["auth-token", "ui-token"])
    @pytest.mark.parametrize("value_from", ["flag", "env"])
    @pytest.mark.parametrize("file_from", ["flag", "env"])
    def test_a_secret_given_both_ways_exits_2(self, capsys, monkeypatch, tmp_path, secret, value_from, file_from):
        """A token and a token file for the same secret, by flag or variable in any mix: exit 2 naming it."""
        path = tmp_path / "t"
        path.write_text("from-file\n")
        argv: list[str] = []
        var = "SIDECAR_" + secret.upper().replace("-", "_")
        if value_from == "flag":
            argv += [f"--{secret}", "value-x1y2"]
        else:
            monkeypatch.setenv(var, "value-x1y2")
        if file_from == "flag":
            argv += [f"--{secret}-file", str(path)]
        else:
            monkeypatch.setenv(var + "_FILE", str(path))
        line = refused(capsys, *argv)
        assert f"--{secret}-file" in line
        assert "value-x1y2" not in line and "from-file" not in line

    @pytest.mark.parametrize("option", ["--auth-token-file", "--ui-token-file"])
    @pytest.mark.parametrize("case", ["missing", "directory", "empty", "blank", "no path"])
    def test_an_unreadable_or_empty_file_exits_2(self, capsys, tmp_path, option, case):
        """A token file that cannot be read, or holds nothing but whitespace: exit 2 naming the option."""
        path = tmp_path / "t"
        if case == "directory":
            path.mkdir()
        elif case in ("empty", "blank"):
            path.write_text("" if case == "empty" else " \n\n")
        assert option in refused(capsys, option, "" if case == "no path" else str(path))

    def test_one_trailing_newline_and_surrounding_blanks_are_stripped(self, tmp_path):
        """`echo token > file` gives `token`."""
        path = tmp_path / "t"
        path.write_text("  tok-123 \n")
        s = settings("--auth-token-file", str(path))
        assert s.auth_token is not None and s.auth_token.get_secret_value() == "tok-123"

    @pytest.mark.parametrize("spec", ["no-such-user-x9", "root:no-such-group-x9", ":0"])
    def test_an_unknown_child_user_or_group_exits_2(self, capsys, spec):
        """--child-user names a user and optionally a group that exist (or numbers)."""
        assert "--child-user" in refused(capsys, "--child-user", spec)

    def test_default_tool_results_root_follows_the_child_users_home(self, clean_env, monkeypatch):
        """With --child-user and no --tool-results-dir or CLAUDE_CONFIG_DIR, the agent's Claude Code writes
        under the child user's HOME, so that is the default root; either override still wins."""

        def roots(*argv: str) -> list[Path]:
            return settings(*argv, command="run").tool_results_dirs

        home = Path(pwd.getpwuid(0).pw_dir)
        assert roots("--child-user", "0") == [home / ".claude" / "projects"]
        assert roots("--child-user", "0", "--tool-results-dir", "/x") == [Path("/x")]
        monkeypatch.setenv("CLAUDE_CONFIG_DIR", "/cfg")
        assert roots("--child-user", "0") == [Path("/cfg/projects")]


class TestWarnings:
    async def test_a_token_given_as_a_flag_is_warned_about(self, run_sidecar):
        """A token on the command line is readable by every user: the sidecar says so (without the token)."""
        sc = await run_sidecar("--auth-token", AUTH)
        await sc.wait_log("security.token_on_command_line", option="--auth-token", use="--auth-token-file")
        assert AUTH not in sc.stderr()

    async def test_a_token_file_others_can_read_is_warned_about(self, run_sidecar, workspace):
        """A world-readable token file is logged as `security.token_file_readable`; a 0600 one is not."""
        ws = workspace()
        auth, ui = token_file(ws, "auth.token", AUTH), token_file(ws, "ui.token", UI)
        auth.chmod(0o644)
        sc = await run_sidecar("--auth-token-file", str(auth), "--ui-token-file", str(ui))
        sc.auth_token = AUTH
        await sc.wait_log("security.token_file_readable", option="--auth-token-file")
        assert not sc.events("security.token_file_readable", option="--ui-token-file")
        assert not sc.events("security.token_on_command_line")


class TestStateDir:
    async def test_state_dir_is_0700_and_state_files_0600(self, run_sidecar, workspace):
        """A state dir left world-readable is tightened at start; state files are the sidecar's alone."""
        ws = workspace()
        ws.state.mkdir(mode=0o755)
        ws.state.chmod(0o755)
        await run_sidecar(ws=ws)
        assert stat.S_IMODE(ws.state.stat().st_mode) == 0o700
        files = list(ws.state.iterdir())
        assert files and all(stat.S_IMODE(f.stat().st_mode) & 0o077 == 0 for f in files), files


class TestChildUser:
    async def test_non_root_child_cannot_read_the_sidecars_secrets(self, agent, open_ws, run_sidecar):
        """A child started with --child-user cannot read the sidecar's environ, state dir or token file,
        has no supplementary group, and finds no token in the sidecar's command line."""
        tok = token_file(open_ws, "auth.token", AUTH)
        sc = await run_sidecar(
            "--auth-token-file",
            str(tok),
            "--child-user",
            AGENT,
            ws=open_ws,
            mode="run",
            command=["sh", "-c", PROBE, "probe", str(open_ws.state), str(tok)],
            env={"SIDECAR_UI_TOKEN": UI, **AWS},
            wait_ready=False,
        )
        sc.auth_token = AUTH
        assert await sc.wait_exit(15) == 0, sc.stderr()
        out = sc.stdout().decode()
        lines = out.splitlines()
        assert f"id {agent.pw_uid} {agent.pw_gid} {agent.pw_gid}" in lines, out
        for target in (f"/proc/{sc.pid}/environ", f"{open_ws.state}/manifest.json", str(tok), "state dir"):
            assert f"denied {target}" in lines, out
        assert "--auth-token-file" in next(line for line in lines if line.startswith("cmdline "))
        assert not [s for s in SECRETS if s in out]

    async def test_child_as_another_user_gets_its_home_and_names(self, agent, open_ws, run_sidecar):
        """HOME, USER and LOGNAME are the child user's (like `su`); the rest of the environment is inherited."""
        sc = await run_sidecar(
            "--child-user", AGENT, ws=open_ws, mode="run", command=["sh", "-c", "env"], wait_ready=False
        )
        assert await sc.wait_exit(15) == 0, sc.stderr()
        seen = child_env(sc.stdout())
        assert (seen["HOME"], seen["USER"], seen["LOGNAME"]) == (agent.pw_dir, AGENT, AGENT)
        assert seen["PYTHONPATH"].startswith(str(REPO_ROOT))

    async def test_child_writes_an_artifact_that_is_published_and_served(self, agent, open_ws, run_sidecar, http):
        """The artifacts dir (root's, 0755) is opened to the child's group (its owner stays), and the file the
        child writes there is published and served."""
        body = b"written by the agent\n"
        sc = await run_sidecar(
            "--child-user",
            AGENT,
            "--grace-period",
            "30",
            ws=open_ws,
            mode="run",
            command=[
                "sh",
                "-c",
                'printf "%s\\n" "$1" > "$2/agent.txt"',
                "w",
                body.decode().strip(),
                str(open_ws.artifacts),
            ],
        )
        doc = await wait_manifest(http, sc, lambda d: entry(d, "agent.txt"), timeout=10)
        assert (open_ws.artifacts / "agent.txt").stat().st_uid == agent.pw_uid
        st = open_ws.artifacts.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, agent.pw_gid, 0o775)
        assert entry(doc, "agent.txt")["sha256"] == sha256(body)
        async with http.get(sc.url("/artifacts/agent.txt")) as resp:
            assert (resp.status, await resp.read()) == (200, body)
        assert await sc.wait_exit(10) == 0, sc.stderr()


def _python_for(user: pwd.struct_passwd, pythonpath: str) -> str | None:
    """A Python of our version that `user` may run with our packages (ours may sit under a 0700 /root)."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys([sys.executable, f"/usr/bin/python{v}", f"/usr/local/bin/python{v}"]):
        try:
            probe = subprocess.run(
                [exe, "-c", "import aiohttp, pydantic_settings, structlog, sidecar.lifecycle"],
                env={"PYTHONPATH": pythonpath, "PATH": os.environ.get("PATH", "")},
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                check=False,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return exe
    return None


class TestNonDumpable:
    async def test_same_uid_child_cannot_read_the_sidecars_environ(self, agent, open_ws):
        """Without --child-user the agent shares the sidecar's uid; the sidecar is non-dumpable, so even then
        /proc/<sidecar>/environ (where SIDECAR_UI_TOKEN lives) stays closed."""
        pythonpath = os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()["purelib"]])
        exe = _python_for(agent, pythonpath)
        if exe is None:
            pytest.skip("no Python the test user can run")
        subprocess.run(["chown", "-R", f"{agent.pw_uid}:{agent.pw_gid}", str(open_ws.root)], check=True)
        port = free_port()
        env = daemon_env(open_ws, {"SIDECAR_UI_TOKEN": UI, "PYTHONPATH": pythonpath})
        argv = [exe, "-m", "sidecar", "run", "--artifacts-dir", str(open_ws.artifacts), "--state-dir"]
        argv += [str(open_ws.state), "--tool-results-dir", str(open_ws.tool_results), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--log-format", "json", "--grace-period", "0", "--"]
        argv += ["sh", "-c", 'echo "uid $(id -u)"; tr "\\0" "\\n" < /proc/$PPID/environ; echo "exit $?"']
        sc = start_logged(argv, port, open_ws, env, "sc", user=agent.pw_uid, group=agent.pw_gid, extra_groups=[])
        try:
            assert await sc.wait_exit(15) == 0, sc.stderr()
        finally:
            await sc.stop()
        out = sc.stdout().decode()
        assert f"uid {agent.pw_uid}" in out.splitlines(), out
        assert UI not in out and "exit 0" not in out, out
