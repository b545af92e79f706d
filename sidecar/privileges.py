"""What the agent must not get (SPEC 8, 9): the sidecar's environment secrets, its user, its state and memory."""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import stat
from collections.abc import Mapping
from pathlib import Path

from sidecar.numbers import ascii_uint

__all__ = (
    "CREDENTIAL_ENV",
    "SYSTEMD_PRIVATE",
    "ChildUser",
    "child_environ",
    "make_writable_for",
    "read_secret_file",
    "readable_by_others",
    "resolve_child_user",
    "secure_state_dir",
    "set_non_dumpable",
)

# The standard AWS credential sources that live in the environment (botocore's env, assume-role-with-web-
# identity and container providers, plus the legacy names some tools still read). Region, profile and
# config-file locations are not secrets and stay: an agent with its own profile keeps working.
CREDENTIAL_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    }
)
# systemd's notification socket and watchdog belong to the sidecar; a child that wrote READY=1 would lie.
SYSTEMD_PRIVATE = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
PR_SET_DUMPABLE = 4


def child_environ(env: Mapping[str, str], user: ChildUser | None = None) -> dict[str, str]:
    """The child's environment: the parent's less every SIDECAR_* variable, the object-storage credentials
    and systemd's private variables; as another user, HOME, USER and LOGNAME are that user's (like `su`)."""
    out = {k: v for k, v in env.items() if not k.startswith("SIDECAR_") and k not in CREDENTIAL_ENV | SYSTEMD_PRIVATE}
    if user is not None:
        out.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    return out


@dataclasses.dataclass(frozen=True)
class ChildUser:
    """Who `sidecar run --child-user` starts the child as; supplementary groups are always dropped."""

    uid: int
    gid: int
    name: str
    home: str


def resolve_child_user(spec: str) -> ChildUser:
    """`user[:group]`, each a name or a number. A number with no passwd entry runs with gid = uid and
    HOME=/ (what Docker does for `--user N`, minus its group 0). ValueError names what is unknown."""
    user_text, _, group_text = spec.strip().partition(":")
    if not user_text:
        raise ValueError("needs a user: user[:group]")
    uid = ascii_uint(user_text, 10)
    try:
        pw = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user_text)
    except (KeyError, OverflowError):
        if uid is None:
            raise ValueError(f"no such user {user_text!r}") from None
        pw = None
    gid = pw.pw_gid if pw is not None else uid
    if group_text:
        gid = ascii_uint(group_text, 10)
        if gid is None:
            try:
                gid = grp.getgrnam(group_text).gr_gid
            except KeyError:
                raise ValueError(f"no such group {group_text!r}") from None
    assert gid is not None
    if pw is not None:
        return ChildUser(pw.pw_uid, gid, pw.pw_name, pw.pw_dir or "/")
    assert uid is not None
    return ChildUser(uid, gid, str(uid), "/")


def read_secret_file(path: Path) -> str:
    """One secret from a file: surrounding whitespace (the trailing newline) stripped; ValueError when the
    file cannot be read, is empty, or holds more than one line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"{str(path)!r} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{str(path)!r} is empty")
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{str(path)!r} holds more than one line")
    return text


def make_writable_for(path: Path, user: ChildUser) -> bool:
    """Let the child write `path` (the artifacts dir) when its mode does not already allow that user: the
    directory itself (not what is in it) gets the child's group and group rwx. The owner stays: the agent
    cannot chmod the sidecar out of its own served root, and the sidecar writes there without needing
    CAP_DAC_OVERRIDE. True when the directory was changed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid == user.uid:
            need = stat.S_IWUSR | stat.S_IXUSR
        elif st.st_gid == user.gid:
            need = stat.S_IWGRP | stat.S_IXGRP
        else:
            need = stat.S_IWOTH | stat.S_IXOTH
        if user.uid == 0 or st.st_mode & need == need:
            return False
        # chmod while the group is still the old one is harmless; chmod after a chown could need CAP_FOWNER.
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU | stat.S_IRWXG)
        if st.st_uid != user.uid:
            os.fchown(fd, -1, user.gid)
        return True
    finally:
        os.close(fd)


def readable_by_others(path: Path, user: ChildUser | None) -> bool:
    """Whether a token file is readable by every user, or by the child user through its owner or group."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_mode & stat.S_IROTH:
        return True
    if user is None or user.uid == 0:
        return False
    return st.st_uid == user.uid or (st.st_gid == user.gid and bool(st.st_mode & stat.S_IRGRP))


def secure_state_dir(path: Path) -> None:
    """The state dir is the sidecar's own: created 0700, and tightened to 0700 when it already exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def set_non_dumpable() -> bool:
    """PR_SET_DUMPABLE 0: a process of the same uid can no longer read our memory or /proc/<pid>/environ
    (the kernel hands those files to root), and no core dump spills the tokens. False where prctl is missing."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # here: every command imports this module through config, few need ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    return False
