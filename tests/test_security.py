"""sidecar.security: artifact names from raw request paths, signed URLs, bearer tokens, path encoding."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from sidecar.security import (
    TEMP_SUFFIXES,
    bearer_ok,
    encode_path,
    is_loopback_address,
    is_loopback_host,
    is_publishable_name,
    name_from_raw_path,
    sign,
    signature_ok,
    signed_query,
)

TOKEN = "tok-0123456789"  # noqa: S105 - a test token
NOW = 1_800_000_000


class TestNameFromRawPath:
    @pytest.mark.parametrize(
        ("raw", "name"),
        [
            ("/artifacts/a.png", "a.png"),
            ("/artifacts/charts/q3.png", "charts/q3.png"),
            ("/artifacts/charts/q3.png?download=1&x=%2F", "charts/q3.png"),
            ("/artifacts/a%20b.txt", "a b.txt"),
            ("/artifacts/caf%C3%A9.png", "café.png"),
            ("/artifacts/caf%c3%a9.png", "café.png"),
            ("/artifacts/%E5%9B%BE.png", "图.png"),
            ("/artifacts/100%25.txt", "100%.txt"),
            ("/artifacts/a..b.txt", "a..b.txt"),
            ("/artifacts/v1.2/x", "v1.2/x"),
        ],
    )
    def test_plain_and_percent_encoded_names(self, raw, name):
        """Each segment is percent-decoded once into the artifact name; the query is not part of it."""
        assert name_from_raw_path(raw) == name

    @pytest.mark.parametrize(
        "raw",
        [
            "/artifacts/../canary.txt",
            "/artifacts/sub/../../canary.txt",
            "/artifacts/./a.txt",
            "/artifacts/%2e%2e/canary.txt",
            "/artifacts/%2E%2E/canary.txt",
            "/artifacts/.%2e/canary.txt",
            "/artifacts/%2e./canary.txt",
            "/artifacts/%2e/a.txt",
            "/artifacts/..%2fcanary.txt",
            "/artifacts/sub%2f..%2f..%2fcanary.txt",
            "/artifacts/a%2Fb.txt",
            "/artifacts/..%5ccanary.txt",
            "/artifacts/..\\canary.txt",
            "/artifacts/sub%5ca.txt",
            "/artifacts/a.txt%00.png",
            "/artifacts/%00",
            "/artifacts/a%0ab.txt",
            "/artifacts/a%7fb.txt",
            "/artifacts/%c0%ae%c0%ae/canary.txt",
            "/artifacts/%c0%af..",
            "/artifacts/%e0%80%ae%e0%80%ae/canary.txt",
            "/artifacts/%ff.txt",
            "/artifacts/%ed%a0%80.txt",
            "/artifacts//etc/passwd",
            "/artifacts/%2fetc%2fpasswd",
            "/artifacts/",
            "/artifacts",
            "/artifacts//",
            "/artifacts/a//b.txt",
            "//artifacts/a.txt",
            "/etc/passwd",
            "/v1/manifest",
            "/artifactsx/a.txt",
        ],
    )
    def test_traversal_and_undecodable_paths_name_nothing(self, raw):
        """Dot segments, encoded separators, backslashes, NUL, bad UTF-8 and empty segments name nothing."""
        assert name_from_raw_path(raw) is None

    @pytest.mark.parametrize(
        "raw",
        ["/artifacts/.env", "/artifacts/.git/config", "/artifacts/sub/.hidden/a.txt", "/artifacts/%2eenv"],
    )
    def test_dotfiles_name_nothing(self, raw):
        """No component of a served name may start with a dot, however it is spelled."""
        assert name_from_raw_path(raw) is None

    @pytest.mark.parametrize("suffix", TEMP_SUFFIXES)
    def test_temp_suffixes_name_nothing(self, suffix):
        """Names writers use while writing (.tmp, .part, .partial, .crdownload, .swp, ~) are never served."""
        assert set(TEMP_SUFFIXES) == {".tmp", ".part", ".partial", ".crdownload", ".swp", "~"}
        assert name_from_raw_path(f"/artifacts/report.pdf{suffix}") is None
        assert name_from_raw_path(f"/artifacts/sub/report{suffix}") is None

    def test_decoding_happens_exactly_once(self):
        """A double-encoded `%252e%252e` is the literal name `%2e%2e`, never `..`."""
        assert name_from_raw_path("/artifacts/%252e%252e/x.txt") == "%2e%2e/x.txt"

    def test_look_alike_dots_and_slashes_stay_literal(self):
        """Fullwidth dots and division slashes are ordinary characters, not normalised into `..` or `/`."""
        assert name_from_raw_path("/artifacts/%EF%BC%8E%EF%BC%8E/x.txt") == "\uff0e\uff0e/x.txt"
        assert name_from_raw_path("/artifacts/a%E2%88%95b.txt") == "a\u2215b.txt"


class TestPublishableNames:
    @pytest.mark.parametrize("name", ["a.png", "charts/q3.png", "a b/c d.txt", "café.png", "x.tmp.png", "a~b"])
    def test_ordinary_names_are_publishable(self, name):
        """Relative POSIX names without dot components or temp suffixes may be published."""
        assert is_publishable_name(name)

    @pytest.mark.parametrize(
        "name", ["", "/abs.png", ".env", "a/.git/x", "a/../b", "./a", "a//b", "a/", "x.part", "x~", "d/y.swp"]
    )
    def test_hidden_temp_and_malformed_names_are_not(self, name):
        """Dot components, temp suffixes, empty or absolute names are never published."""
        assert not is_publishable_name(name)

    @pytest.mark.parametrize(
        "name", ["a b.txt", "café/图 1.png", "100%.txt", "it's (1).png", "a#b?.txt", "x+y=z&w;v.csv", "é~.txt"]
    )
    def test_encoded_names_decode_back(self, name):
        """encode_path and name_from_raw_path are inverse for publishable names."""
        assert name_from_raw_path(encode_path(name)) == name

    @pytest.mark.parametrize("name", ["back\\slash.txt", "new\nline.txt", "tab\there.txt", "bell\x07.txt"])
    def test_every_publishable_name_can_be_served(self, name):
        """A name the watcher would publish is one the server can serve: its manifest path must not be a dead link."""
        if is_publishable_name(name):
            assert name_from_raw_path(encode_path(name)) == name


class TestEncodePath:
    @pytest.mark.parametrize(
        ("name", "path"),
        [
            ("charts/q3.png", "/artifacts/charts/q3.png"),
            ("a b.png", "/artifacts/a%20b.png"),
            ("café.png", "/artifacts/caf%C3%A9.png"),
            ("100%.txt", "/artifacts/100%25.txt"),
            ("a#b?.png", "/artifacts/a%23b%3F.png"),
            ("it's (1).png", "/artifacts/it%27s%20%281%29.png"),
            ("x/y/z.txt", "/artifacts/x/y/z.txt"),
        ],
    )
    def test_each_segment_is_percent_encoded(self, name, path):
        """`path` is `/artifacts/` plus the name encoded per segment; `/` between segments stays."""
        assert encode_path(name) == path


class TestSignedUrls:
    def test_signature_is_hmac_sha256_base64url_without_padding(self):
        """The signature is base64url(HMAC-SHA256(token, path + "\\n" + expires)) with no `=` padding."""
        mac = hmac.new(TOKEN.encode(), b"/artifacts/a.png\n1800000600", hashlib.sha256).digest()
        want = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        got = sign(TOKEN, "/artifacts/a.png", NOW + 600)
        assert got == want
        assert "=" not in got and "+" not in got and "/" not in got

    def test_valid_until_expiry(self):
        """A signature is accepted until its expiry time and refused after it."""
        sig = sign(TOKEN, "/artifacts/a.png", NOW + 60)
        assert signature_ok(TOKEN, "/artifacts/a.png", str(NOW + 60), sig, now=NOW)
        assert signature_ok(TOKEN, "/artifacts/a.png", str(NOW + 60), sig, now=NOW + 59)
        assert not signature_ok(TOKEN, "/artifacts/a.png", str(NOW + 60), sig, now=NOW + 61)

    def test_tampering_is_refused(self):
        """Another path, expiry, token or signature byte makes the signature invalid."""
        path, exp = "/artifacts/a.png", NOW + 60
        sig = sign(TOKEN, path, exp)
        assert not signature_ok(TOKEN, "/artifacts/b.png", str(exp), sig, now=NOW)
        assert not signature_ok(TOKEN, path, str(exp + 1), sig, now=NOW)
        assert not signature_ok("other-token", path, str(exp), sig, now=NOW)
        flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
        assert not signature_ok(TOKEN, path, str(exp), flipped, now=NOW)
        assert not signature_ok(TOKEN, path, str(exp), sig + "=", now=NOW)

    @pytest.mark.parametrize(
        ("expires", "signature"),
        [(None, "x"), ("", "x"), ("1800000060", None), ("1800000060", ""), ("-1", "x"), ("1e12", "x"), ("0x10", "x")],
    )
    def test_missing_or_malformed_parts_are_refused(self, expires, signature):
        """A missing or non-numeric expiry or a missing signature is refused."""
        assert not signature_ok(TOKEN, "/artifacts/a.png", expires, signature, now=NOW)

    def test_signed_query_round_trips(self):
        """signed_query gives `expires=<now+ttl>&signature=...` that signature_ok accepts for that path."""
        query = signed_query(TOKEN, "/artifacts/a%20b.png", 300, now=NOW)
        params = dict(part.split("=", 1) for part in query.split("&"))
        assert params["expires"] == str(NOW + 300)
        assert signature_ok(TOKEN, "/artifacts/a%20b.png", params["expires"], params["signature"], now=NOW)
        assert not signature_ok(TOKEN, "/artifacts/a b.png", params["expires"], params["signature"], now=NOW)


class TestBearer:
    @pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"  Bearer  {TOKEN} "])
    def test_right_token_any_scheme_case(self, header):
        """`Bearer <token>` is accepted whatever the case of the scheme."""
        assert bearer_ok(header, TOKEN)

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            "Bearer wrong",
            f"Bearer {TOKEN}x",
            f"Bearer {TOKEN[:-1]}",
            f"Basic {TOKEN}",
            f"Token {TOKEN}",
            f"Bearer{TOKEN}",
            f"Bearer {TOKEN} extra",
        ],
    )
    def test_anything_else_is_refused(self, header):
        """A missing header, another scheme, or a token that differs in any way is refused."""
        assert not bearer_ok(header, TOKEN)


class TestLoopback:
    @pytest.mark.parametrize(
        "addr", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1", "::ffff:127.1.2.3"]
    )
    def test_loopback_clients(self, addr):
        """127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x are this machine's loopback."""
        assert is_loopback_address(addr)

    @pytest.mark.parametrize(
        "addr",
        [
            None,
            "",
            "10.0.0.1",
            "192.0.2.2",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "fe80::1",
            "128.0.0.1",
            "126.255.255.255",
            "localhost",
            "127.0.0.1.evil",
            "127.0.0.1, 10.0.0.1",
            "::ffff:7f00:1:0",
        ],
    )
    def test_everything_else_is_not(self, addr):
        """Other addresses, names, lists, unparsable text or no address at all are not loopback."""
        assert not is_loopback_address(addr)

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [
            ("127.0.0.1", True),
            ("::1", True),
            ("[::1]", True),
            ("localhost", True),
            ("0.0.0.0", False),
            ("::", False),
            ("", False),
            ("192.0.2.2", False),
            ("sandbox.example", False),
        ],
    )
    def test_hosts_that_only_loopback_clients_reach(self, host, loopback):
        """Only a loopback --host keeps other machines out; 0.0.0.0, ::, names and addresses do not."""
        assert is_loopback_host(host) is loopback
