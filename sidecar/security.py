"""Pure checks at the HTTP edge: artifact names from request paths, bearer tokens, signed URLs."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
import time
from urllib.parse import quote, unquote_to_bytes

from sidecar.numbers import ascii_uint

__all__ = (
    "TEMP_SUFFIXES",
    "bearer_ok",
    "encode_path",
    "is_loopback_address",
    "is_loopback_host",
    "is_publishable_name",
    "name_from_raw_path",
    "reachable_host",
    "sign",
    "signature_ok",
    "signed_query",
)

# Writers use these while a file is being written; they are never published (SPEC 3).
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")

_EMPTY_OR_DOT = re.compile(r"(?:^|/)(?:[./]|$)")
_UNSPELLABLE = re.compile(r"[\x00-\x1f\x7f\\]")

# RFC 3986 pchar minus the characters that break markdown, HTML attributes and shells: ' ( ) *
_PATH_SAFE = "-._~!$&+,;=:@"


def encode_path(name: str) -> str:
    """`/artifacts/<name>`, percent-encoded one segment at a time (SPEC 6)."""
    return "/artifacts/" + "/".join(quote(seg, safe=_PATH_SAFE) for seg in name.split("/"))


def is_publishable_name(name: str) -> bool:
    """True when a relative POSIX name may ever be published: no dot component, no temp suffix."""
    # Regular expressions, not a loop a character: names can be thousands of levels deep (SPEC 9).
    # An empty or dot component; a name that no request path can spell (backslash, control characters)
    # would be listed but never served.
    if not name or _EMPTY_OR_DOT.search(name) or _UNSPELLABLE.search(name):
        return False
    return not name.endswith(TEMP_SUFFIXES)


def name_from_raw_path(raw_path: str) -> str | None:
    """The artifact name a raw request path asks for, or None if it can never name one.

    Each segment is percent-decoded on its own, so `%2F` never makes a new segment; anything that is
    not clean UTF-8, or holds a separator, NUL, control character or dot component, names nothing.
    """
    return _name_from_path(raw_path.split("?", 1)[0])


@functools.lru_cache(maxsize=4096)  # the same few names are asked for again and again
def _name_from_path(path: str) -> str | None:
    if not path.startswith("/artifacts/"):
        return None
    segments: list[str] = []
    for raw in path[len("/artifacts/") :].split("/"):
        try:
            seg = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeError:  # not UTF-8 once decoded, or a surrogate escape of a raw non-UTF-8 byte
            return None
        if not seg or "/" in seg or "\\" in seg or any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg):
            return None
        segments.append(seg)
    name = "/".join(segments)
    return name if is_publishable_name(name) else None


def bearer_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, scheme case-insensitive, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def sign(token: str, path: str, expires: int) -> str:
    """base64url (no padding) of HMAC-SHA256(token, path + "\\n" + expires) (SPEC 9)."""
    mac = hmac.new(token.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def signed_query(token: str, path: str, ttl: int, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + ttl
    return f"expires={expires}&signature={sign(token, path, expires)}"


def signature_ok(token: str, path: str, expires: str | None, signature: str | None, now: float | None = None) -> bool:
    when = ascii_uint(expires, 12)  # ASCII digits only: `²` passes str.isdigit() but not int()
    if when is None or not signature:
        return False
    if when < (now if now is not None else time.time()):
        return False
    try:
        return hmac.compare_digest(sign(token, path, when).encode(), signature.encode())
    except UnicodeEncodeError:  # a raw non-UTF-8 byte in the path or the query: no signature matches it
        return False


def is_loopback_address(addr: str | None) -> bool:
    """A client's address is this machine's loopback: 127.0.0.0/8, ::1 or IPv4-mapped ::ffff:127.x.

    Anything else, an unparsable address or none at all (not a TCP peer) is not."""
    if not addr:
        return False
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def reachable_host(host: str) -> str:
    """Where to reach a daemon bound to `host`: a wildcard bind is reached over loopback (no brackets)."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def is_loopback_host(host: str) -> bool:
    """`--host` binds only the loopback interface (`127.0.0.1`, `::1`, `localhost`): nothing else can reach it."""
    return host.strip("[]").lower() in ("localhost", "localhost.") or is_loopback_address(host.strip("[]"))
