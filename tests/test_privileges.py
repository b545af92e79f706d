"""sidecar.privileges: the child's user and environment, secret files, and what only the sidecar may read.

The same guarantees end to end (a real `sidecar run --child-user`) are in test_secrets."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT, Workspace

from sidecar.privileges import (
    CREDENTIAL_ENV,
    ChildUser,
    child_environ,
    make_writable_for,
    read_secret_file,
    readable_by_others,
    resolve_child_user,
    secure_state_dir,
)

ROOT = ChildUser(0, 0, "root", "/root")


def unused_id(taken: object) -> int:
    """A number above the system range with no passwd (or group) entry."""
    n = 54_321
    while True:
        try:
            taken(n)  # type: ignore[operator]
        except KeyError:
            return n
        n += 1


def as_user(user: ChildUser, *argv: str) -> subprocess.CompletedProcess[str]:
    """argv run as that user, its group and no supplementary group (as `sidecar run --child-user` starts it)."""
    return subprocess.run(
        list(argv), user=user.uid, group=user.gid, extra_groups=[], capture_output=True, text=True, timeout=30
    )


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


class TestResolveChildUser:
    def test_a_user_by_name_or_number(self, agent: pwd.struct_passwd) -> None:
        """A name or its uid gives the passwd entry: uid, primary group, name and home."""
        want = ChildUser(agent.pw_uid, agent.pw_gid, agent.pw_name, agent.pw_dir)
        assert resolve_child_user(agent.pw_name) == want
        assert resolve_child_user(str(agent.pw_uid)) == want
        assert resolve_child_user(f"  {agent.pw_name}\n") == want

    def test_a_group_by_name_or_number(self, agent: pwd.struct_passwd) -> None:
        """`user:group` replaces the primary group; names and numbers alike."""
        assert resolve_child_user(f"{agent.pw_name}:0").gid == 0
        assert resolve_child_user(f"{agent.pw_name}:{grp.getgrgid(0).gr_name}").gid == 0
        assert resolve_child_user(f"{agent.pw_uid}:12345").gid == 12345

    def test_a_number_with_no_passwd_entry(self) -> None:
        """Like `docker run --user N`: gid N (not 0), HOME=/, the number as its name."""
        uid = unused_id(pwd.getpwuid)
        assert resolve_child_user(str(uid)) == ChildUser(uid, uid, str(uid), "/")
        assert resolve_child_user(f"{uid}:7") == ChildUser(uid, 7, str(uid), "/")

    @pytest.mark.parametrize(
        ("spec", "says"),
        [
            ("no-such-user-x9", "no such user 'no-such-user-x9'"),
            ("root:no-such-group-x9", "no such group 'no-such-group-x9'"),
            (":0", "needs a user"),
            ("", "needs a user"),
            ("99999999999", "no such user"),  # eleven digits: not a uid
            ("\uff11\uff12", "no such user"),  # fullwidth digits are no number
        ],
    )
    def test_what_is_unknown_is_named(self, spec: str, says: str) -> None:
        """ValueError naming the unknown user or group, never a KeyError or OverflowError."""
        with pytest.raises(ValueError, match=says):
            resolve_child_user(spec)

    def test_the_resolved_user_is_who_the_child_is(self, agent: pwd.struct_passwd) -> None:
        """A process started with the resolved ids is that user, in that group alone."""
        user = resolve_child_user(agent.pw_name)
        ids = as_user(user, "sh", "-c", "id -u; id -g; id -G").stdout.split()
        assert ids == [str(agent.pw_uid), str(agent.pw_gid), str(agent.pw_gid)]


class TestChildEnviron:
    def test_secrets_and_systemd_variables_are_removed(self) -> None:
        """Every SIDECAR_*, every AWS credential source and systemd's socket go; the rest stays."""
        env = {
            "PATH": "/usr/bin",
            "AWS_REGION": "eu-west-1",
            "AWS_PROFILE": "agent",
            "SIDECAR_AUTH_TOKEN": "t",
            "SIDECAR_ANYTHING_NEW": "x",
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "WATCHDOG_USEC": "1000",
            "WATCHDOG_PID": "1",
            **dict.fromkeys(CREDENTIAL_ENV, "secret"),
        }
        assert child_environ(env) == {"PATH": "/usr/bin", "AWS_REGION": "eu-west-1", "AWS_PROFILE": "agent"}

    def test_as_another_user_its_names_and_home(self) -> None:
        """Like `su`: HOME, USER and LOGNAME are the child user's; the parent's mapping is not changed."""
        env = {"HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8"}
        out = child_environ(env, ChildUser(1234, 1234, "agent", "/home/agent"))
        assert out == {"HOME": "/home/agent", "USER": "agent", "LOGNAME": "agent", "LANG": "C.UTF-8"}
        assert env["HOME"] == "/root"


class TestReadSecretFile:
    def test_surrounding_whitespace_is_stripped(self, tmp_path: Path) -> None:
        """`echo token > file` gives `token`."""
        path = tmp_path / "t"
        path.write_text("  tok-123 \n")
        assert read_secret_file(path) == "tok-123"

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (None, "cannot read"),
            (b"", "is empty"),
            (b" \n\t\n", "is empty"),
            (b"tok-a1\ntok-b2\n", "more than one line"),
            (b"tok-a1\rtok-b2", "more than one line"),
            (b"tok-a1\0tok-b2", "more than one line"),
            (b"\xff\xfe", "not UTF-8"),
        ],
        ids=["missing", "empty", "blank", "two-lines", "carriage-return", "nul", "not-utf8"],
    )
    def test_what_is_refused(self, tmp_path: Path, content: bytes | None, says: str) -> None:
        """ValueError naming the file; the message never carries its content."""
        path = tmp_path / "t"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ValueError, match=says) as e:
            read_secret_file(path)
        assert str(path) in str(e.value) and "tok-" not in str(e.value)

    def test_a_directory_cannot_be_read(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="cannot read"):
            read_secret_file(tmp_path)


class TestMakeWritableFor:
    def test_the_child_user_can_then_write(self, agent: pwd.struct_passwd, open_ws: Workspace) -> None:
        """A root-owned 0755 dir: the child's group and g+rwx are added, the owner stays root, and a process
        of that user can now create a file in it (it could not before)."""
        user = resolve_child_user(agent.pw_name)
        d = open_ws.root / "out"
        d.mkdir(mode=0o755)
        d.chmod(0o755)
        probe = ("sh", "-c", 'echo hi > "$0/made-by-agent"', str(d))
        assert as_user(user, *probe).returncode != 0
        assert make_writable_for(d, user)
        st = d.stat()
        assert (st.st_uid, st.st_gid) == (0, agent.pw_gid)
        assert mode(d) == 0o775
        assert as_user(user, *probe).returncode == 0
        assert (d / "made-by-agent").stat().st_uid == agent.pw_uid
        assert not make_writable_for(d, user), "a second call has nothing to do"

    def test_nothing_changes_when_the_mode_already_allows_it(
        self, agent: pwd.struct_passwd, open_ws: Workspace
    ) -> None:
        """World-writable, or the child is root: False and the directory is as it was."""
        d = open_ws.root / "open"
        d.mkdir()
        d.chmod(0o777)
        assert not make_writable_for(d, resolve_child_user(agent.pw_name))
        assert not make_writable_for(open_ws.artifacts, ROOT)
        assert mode(d) == 0o777 and d.stat().st_gid == 0

    def test_a_symlink_is_refused(self, agent: pwd.struct_passwd, open_ws: Workspace) -> None:
        """The artifacts dir given as a link: OSError, and the directory it points to is untouched."""
        real = open_ws.root / "real"
        real.mkdir()
        real.chmod(0o755)
        link = open_ws.root / "link"
        link.symlink_to(real)
        with pytest.raises(OSError):
            make_writable_for(link, resolve_child_user(agent.pw_name))
        assert mode(real) == 0o755 and real.stat().st_gid == 0


class TestReadableByOthers:
    def test_world_readable(self, tmp_path: Path) -> None:
        """0644 is readable by everyone, child user or not."""
        path = tmp_path / "token"
        path.write_text("t")
        path.chmod(0o644)
        assert readable_by_others(path, None)

    def test_through_the_child_users_owner_or_group(self, tmp_path: Path, agent: pwd.struct_passwd) -> None:
        """0600 root-owned is private; owned by the child, or 0640 in its group, it is not."""
        user = resolve_child_user(agent.pw_name)
        path = tmp_path / "token"
        path.write_text("t")
        path.chmod(0o600)
        assert not readable_by_others(path, None) and not readable_by_others(path, user)
        os.chown(path, -1, agent.pw_gid)
        assert not readable_by_others(path, user), "the group has no read bit"
        path.chmod(0o640)
        assert readable_by_others(path, user)
        assert not readable_by_others(path, ROOT), "root reads everything anyway: nothing to warn about"
        os.chown(path, agent.pw_uid, 0)
        path.chmod(0o600)
        assert readable_by_others(path, user)

    def test_a_missing_file_is_not_readable(self, tmp_path: Path) -> None:
        assert not readable_by_others(tmp_path / "missing", None)


class TestSecureStateDir:
    def test_created_0700(self, tmp_path: Path) -> None:
        """A new state dir (and its missing parents) is made; the dir itself is 0700 whatever the umask."""
        old = os.umask(0)
        try:
            secure_state_dir(tmp_path / "a" / "state")
        finally:
            os.umask(old)
        assert mode(tmp_path / "a" / "state") == 0o700

    def test_an_existing_one_is_tightened(self, tmp_path: Path) -> None:
        """A state dir that is 0755 becomes 0700; its files keep their modes."""
        d = tmp_path / "state"
        d.mkdir()
        d.chmod(0o755)
        (d / "manifest.json").write_text("{}")
        before = mode(d / "manifest.json")
        secure_state_dir(d)
        assert mode(d) == 0o700 and mode(d / "manifest.json") == before

    def test_a_symlink_is_refused(self, tmp_path: Path) -> None:
        """The state dir given as a link: OSError, and its target keeps its mode."""
        real = tmp_path / "real"
        real.mkdir()
        real.chmod(0o755)
        (tmp_path / "link").symlink_to(real)
        with pytest.raises(OSError):
            secure_state_dir(tmp_path / "link")
        assert mode(real) == 0o755


class TestSetNonDumpable:
    def test_the_process_is_no_longer_dumpable(self) -> None:
        """In a process of its own: dumpable before, not after, and the call says it worked."""
        code = (
            "import ctypes\n"
            "from sidecar.privileges import set_non_dumpable\n"
            "libc = ctypes.CDLL(None)\n"
            "before = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
            "ok = set_non_dumpable()\n"
            "print(before, ok, libc.prctl(3, 0, 0, 0, 0))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, check=True
        )
        assert done.stdout.split() == ["1", "True", "0"]
