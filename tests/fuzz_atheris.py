"""Coverage-guided fuzzing with atheris (libFuzzer) of the parsers that meet hostile input first.

Targets: `sidecar.datauri.parse_data_url` (only DataURLError may be raised), the streaming scanner
(`sidecar.scanner.scan_bytes`: the same payloads whatever the pieces the text is fed in), and
`sidecar.security.name_from_raw_path` and `signature_ok` on request paths as aiohttp hands them over
(bytes decoded as UTF-8 with surrogateescape): never an exception, never a name outside the artifacts dir.

    python tests/fuzz_atheris.py -runs=20000            # a bounded run (tests/test_fuzz.py runs this, marked slow)
    python tests/fuzz_atheris.py -max_total_time=600    # a longer session; crashes are written as crash-*

Not collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from sidecar.datauri import DataURLError, parse_data_url
    from sidecar.scanner import scan_bytes
    from sidecar.security import name_from_raw_path, signature_ok


def _seen(data: bytes, splits: list[int], bare: bool) -> list[tuple[object, ...]]:
    # after an `invalid_base64` end the decoded bytes are not to be trusted: they are not compared
    return [
        (m.offset, m.end, m.bare, m.mime_type, m.error, m.body if m.error is None else b"")
        for m in scan_bytes(data, bare_images=bare, splits=splits)
    ]


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    target = fdp.ConsumeIntInRange(0, 2)
    if target == 0:
        text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
        for candidate in (text, "data:" + text):
            try:
                d = parse_data_url(candidate)
            except DataURLError:
                continue
            assert isinstance(d.body, bytes) and d.essence == d.essence.lower(), d
    elif target == 1:
        bare = fdp.ConsumeBool()
        cuts = [fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 6))]
        prefix = [b"", b"data:image/png;base64,", b"data:image/svg+xml,", b'"iVBORw0KGgo', b"data:image/gif;base64,"]
        data = prefix[fdp.ConsumeIntInRange(0, len(prefix) - 1)] + fdp.ConsumeBytes(fdp.remaining_bytes())
        whole = _seen(data, [], bare)
        assert _seen(data, [c % (len(data) + 1) for c in cuts], bare) == whole, (data, cuts)
    else:
        expires = str(fdp.ConsumeIntInRange(0, 1 << 40))
        signature = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)).decode("utf-8", "surrogateescape")
        # what aiohttp's pure-Python parser makes of the request target's bytes
        path = "/artifacts/" + fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "surrogateescape")
        assert signature_ok("token", path.split("?", 1)[0], expires, signature) in (True, False)
        name = name_from_raw_path(path)
        if name is not None:
            parts = name.split("/")
            assert not name.startswith("/") and "\\" not in name and "\x00" not in name, (path, name)
            assert all(p and not p.startswith(".") for p in parts), (path, name)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
