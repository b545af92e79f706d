"""sidecar.manifest.ManifestStore: versions, persistence across restarts, change log, the JSON document."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.manifest import STATE_FILE, Entry, Identity, ManifestStore, Rejected
from sidecar.security import signature_ok

MTIME = 1_700_000_000.25
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_entry(
    name: str, data: bytes = b"data", *, mime: str = "text/plain", mtime: float = MTIME, ino: int = 1
) -> Entry:
    return Entry(
        name=name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        mime_type=mime,
        mtime=mtime,
        created_at=time.time(),
        identity=Identity(1, ino, len(data), int(mtime * 1e9)),
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The store's directory; removed after the test."""
    path = tmp_path / "state"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_store(state_dir: Path) -> Callable[..., ManifestStore]:
    """Factory: a loaded store on the test's state dir (call again to simulate a restart)."""

    def make(**kw: Any) -> ManifestStore:
        store = ManifestStore(state_dir, **kw)
        store.load()
        return store

    return make


def on_disk(state_dir: Path) -> dict[str, Any]:
    return json.loads((state_dir / STATE_FILE).read_bytes())  # type: ignore[no-any-return]


class TestLoad:
    def test_fresh_state_dir_starts_at_version_zero(self, open_store, state_dir):
        """A new state dir gets a new UUID sidecar_id, version 0, state running, written to disk at once."""
        store = open_store()
        assert uuid.UUID(store.sidecar_id)
        assert (store.version, store.state, store.entries) == (0, "running", {})
        assert on_disk(state_dir)["sidecar_id"] == store.sidecar_id

    async def test_reload_keeps_identity_version_entries_and_state(self, open_store):
        """A restart on the same state dir continues: same sidecar_id, version, entries, refusals and state."""
        store = open_store()
        a = make_entry("a.txt", b"a")
        await store.commit(upserts=[a, make_entry("b/c.png", b"c", mime="image/png")])
        await store.commit(rejected_add=[Rejected("/w/link", "symlink", "symbolic links are never published")])
        await store.commit(state="final")
        again = open_store()
        assert again.sidecar_id == store.sidecar_id
        assert (again.version, again.state) == (store.version, "final") == (4, "final")
        assert again.entries == store.entries
        assert again.entries["a.txt"].created_at == a.created_at
        assert list(again.rejected.values()) == list(store.rejected.values())

    @pytest.mark.parametrize(
        "content",
        [b"not json at all", b'{"sidecar_id": "x", "vers', b"\x00\xff\xfe", b"[]", b'{"version": 3}'],
        ids=["garbage", "truncated", "binary", "list", "no-sidecar-id"],
    )
    def test_corrupt_state_file_is_set_aside(self, open_store, state_dir, content):
        """An unreadable state file is kept aside as `manifest.json.corrupt-*`; the store starts over."""
        state_dir.mkdir(parents=True)
        (state_dir / STATE_FILE).write_bytes(content)
        store = open_store()
        assert (store.version, store.entries) == (0, {})
        assert uuid.UUID(store.sidecar_id)
        kept = list(state_dir.glob(f"{STATE_FILE}.corrupt-*"))
        assert [p.read_bytes() for p in kept] == [content]
        assert on_disk(state_dir)["sidecar_id"] == store.sidecar_id

    async def test_stored_entries_are_claims(self, open_store, state_dir):
        """An edited state file cannot retype an entry (mime_type is recomputed from the name, size_bytes is
        the hashed identity's) nor bring in a name that could never be published or a malformed identity."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt", b"abc"), make_entry("b.png", b"png", mime="image/png")])
        doc = on_disk(state_dir)
        for e in doc["entries"]:
            e.update(mime_type="text/javascript", size_bytes=999)
        good = doc["entries"][0]
        doc["entries"] += [
            {**good, "name": ".env"},
            {**good, "name": "../escape.txt"},
            {**good, "name": "x/../y.txt"},
            {**good, "name": "odd.txt", "identity": ["1", 2, 3, 4]},
            {**good, "name": "odder.txt", "identity": [1, 2, 3.5, 4]},
            {**good, "name": 7},
        ]
        (state_dir / STATE_FILE).write_text(json.dumps(doc))
        again = open_store()
        assert sorted(again.entries) == ["a.txt", "b.png"]
        assert again.entries["a.txt"].mime_type == "text/plain"
        assert again.entries["b.png"].mime_type == "image/png"
        assert again.entries["a.txt"].size_bytes == 3


class TestVersions:
    async def test_each_visible_change_is_one_version(self, open_store):
        """New entry, new content, removal, refusal added or cleared, state change: each is exactly +1."""
        store = open_store()
        steps = [
            {"upserts": [make_entry("a.txt", b"1")]},
            {"upserts": [make_entry("a.txt", b"2")]},
            {"upserts": [make_entry("a.txt", b"2", mime="text/markdown")]},
            {"rejected_add": [Rejected("/w/l", "symlink", "no")]},
            {"rejected_remove": ["/w/l"]},
            {"removals": ["a.txt"]},
            {"state": "finalizing"},
        ]
        for i, kw in enumerate(steps, start=1):
            change = await store.commit(**kw)
            assert change is not None, kw
            assert (change.from_version, change.version, store.version) == (i - 1, i, i), kw

    async def test_a_batch_counts_every_change_in_it(self, open_store):
        """One commit with three changes advances the version by three and reports them together."""
        store = open_store()
        await store.commit(upserts=[make_entry("old.txt")])
        change = await store.commit(
            upserts=[make_entry("x.txt"), make_entry("y.txt")], removals=["old.txt"], state="finalizing"
        )
        assert change is not None
        assert (change.from_version, change.version) == (1, 5)
        assert [e.name for e in change.upserted] == ["x.txt", "y.txt"]
        assert (change.removed, change.state_changed) == (("old.txt",), True)

    async def test_nothing_new_is_no_version(self, open_store):
        """Republishing the same content, removing an unknown name, repeating a refusal or the state: no version."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt")], rejected_add=[Rejected("/w/l", "symlink", "no")])
        before = store.version
        for kw in (
            {"upserts": [make_entry("a.txt")]},
            {"removals": ["missing.txt"]},
            {"rejected_add": [Rejected("/w/l", "symlink", "no")]},
            {"rejected_remove": ["/w/other"]},
            {"state": "running"},
            {},
        ):
            assert await store.commit(**kw) is None, kw
            assert store.version == before

    async def test_identity_only_update_is_silent_but_persisted(self, open_store, state_dir):
        """Same content and mtime under a new inode: no new version, but the new identity is stored and saved."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt", ino=1)])
        created = store.entries["a.txt"].created_at
        assert await store.commit(upserts=[make_entry("a.txt", ino=2)]) is None
        assert store.version == 1
        assert store.entries["a.txt"].identity.ino == 2
        assert store.entries["a.txt"].created_at == created
        assert store.changes_since(0) is not None and len(store.changes_since(0) or []) == 1
        assert on_disk(state_dir)["entries"][0]["identity"][1] == 2
        assert open_store().entries["a.txt"].identity.ino == 2

    async def test_republication_keeps_created_at(self, open_store):
        """A changed file keeps the `created_at` of its first publication."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt", b"1")])
        first = store.entries["a.txt"].created_at
        await asyncio.sleep(0.01)
        await store.commit(upserts=[make_entry("a.txt", b"2", mtime=MTIME + 5)])
        assert store.entries["a.txt"].created_at == first
        assert store.entries["a.txt"].sha256 != make_entry("a.txt", b"1").sha256

    async def test_every_change_is_on_disk_when_commit_returns(self, open_store, state_dir):
        """The state file already holds a version when commit() returns it."""
        store = open_store()
        for i in range(3):
            await store.commit(upserts=[make_entry(f"f{i}.txt")])
            doc = on_disk(state_dir)
            assert doc["version"] == store.version == i + 1
            assert sorted(e["name"] for e in doc["entries"]) == [f"f{j}.txt" for j in range(i + 1)]
        assert not [p for p in state_dir.iterdir() if p.name != STATE_FILE]  # no temp file left behind


class TestChanges:
    async def test_changes_since_lists_the_batches_after_a_version(self, open_store):
        """changes_since(V) gives every batch after V in order; nothing at or past the current version."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt")])
        await store.commit(upserts=[make_entry("b.txt"), make_entry("c.txt")])
        await store.commit(removals=["a.txt"])
        got = store.changes_since(0)
        assert got is not None
        assert [(c.from_version, c.version) for c in got] == [(0, 1), (1, 3), (3, 4)]
        assert got[2].removed == ("a.txt",)
        assert [c.version for c in store.changes_since(1) or []] == [3, 4]
        assert [c.version for c in store.changes_since(2) or []] == [3, 4]  # inside a batch: that whole batch
        assert store.changes_since(4) == []
        assert store.changes_since(99) == []

    async def test_changes_from_before_a_restart_are_not_available(self, open_store):
        """After a reload the old batches are gone: changes_since answers None (the caller sends the manifest)."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt")])
        await store.commit(upserts=[make_entry("b.txt")])
        again = open_store()
        assert again.changes_since(0) is None
        await again.commit(upserts=[make_entry("c.txt")])
        assert again.changes_since(1) is None
        assert [c.version for c in again.changes_since(2) or []] == [3]

    async def test_wait_change(self, open_store):
        """wait_change returns True as soon as something is committed, False after the timeout."""
        store = open_store()
        started = time.monotonic()
        assert await store.wait_change(0.2) is False
        assert 0.15 < time.monotonic() - started < 2
        waiter = asyncio.create_task(store.wait_change(10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await store.commit(upserts=[make_entry("a.txt")])
        assert await asyncio.wait_for(waiter, 2) is True


class TestDocument:
    async def test_document_has_the_spec_fields(self, open_store):
        """The manifest has schema, ids, version, state, timestamps and SPEC 6 entries sorted by code point."""
        store = open_store(chat_id="chat-7", ttl=900)
        await store.commit(
            upserts=[
                make_entry("b.csv", b"b", mime="text/csv"),
                make_entry("B/q 3.png", b"q", mime="image/png"),
                make_entry("a.bin", b"a", mime="application/octet-stream"),
                make_entry("é.pdf", b"e", mime="application/pdf"),
            ]
        )
        doc = json.loads(store.body())
        assert doc["schema"] == 1
        assert (doc["sidecar_id"], doc["chat_id"], doc["version"], doc["state"]) == (
            store.sidecar_id,
            "chat-7",
            4,
            "running",
        )
        assert RFC3339_MS.match(doc["generated_at"])
        assert [a["name"] for a in doc["artifacts"]] == ["B/q 3.png", "a.bin", "b.csv", "é.pdf"]
        png = doc["artifacts"][0]
        e = store.entries["B/q 3.png"]
        assert png["id"] == "artf_" + e.sha256[:16]
        assert (png["type"], png["display_name"], png["path"]) == ("image", "q 3.png", "/artifacts/B/q%203.png")
        assert (png["mime_type"], png["size_bytes"], png["sha256"]) == ("image/png", 1, e.sha256)
        assert (png["ttl_seconds"], png["source"], png["origin"], png["url"]) == (900, "file", None, None)
        assert RFC3339_MS.match(png["created_at"]) and png["modified_at"] == "2023-11-14T22:13:20.250Z"
        assert [a["type"] for a in doc["artifacts"][1:]] == ["binary", "dataset", "file"]
        assert doc["rejected"] == []

    async def test_body_is_cached_per_version(self, open_store):
        """body() returns the same bytes object while the version stands, and new bytes after a change."""
        store = open_store()
        await store.commit(upserts=[make_entry("a.txt")])
        first = store.body()
        assert store.body() is first
        await store.commit(upserts=[make_entry("b.txt")])
        second = store.body()
        assert second is not first
        assert json.loads(second)["version"] == 2
        assert [a["name"] for a in json.loads(second)["artifacts"]] == ["a.txt", "b.txt"]

    async def test_url_is_absolute_only_with_a_public_base(self, open_store):
        """`url` is null without --public-base-url and base + path with it."""
        store = open_store()
        await store.commit(upserts=[make_entry("a b.txt")])
        assert json.loads(store.body())["artifacts"][0]["url"] is None
        based = open_store(public_base_url="https://sandbox.example")
        assert json.loads(based.body())["artifacts"][0]["url"] == "https://sandbox.example/artifacts/a%20b.txt"

    async def test_url_is_signed_when_an_auth_token_is_set(self, open_store):
        """With an auth token the entry's url carries `expires` (now + ttl) and a valid signature for its path."""
        store = open_store(public_base_url="https://sandbox.example", auth_token="tok", ttl=600)  # noqa: S106 - a test token
        await store.commit(upserts=[make_entry("charts/q 3.png", mime="image/png")])
        url = json.loads(store.body())["artifacts"][0]["url"]
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://sandbox.example/artifacts/charts/q%203.png"
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert abs(int(query["expires"]) - (time.time() + 600)) < 5
        assert signature_ok("tok", parts.path, query["expires"], query["signature"])
        assert not signature_ok("other", parts.path, query["expires"], query["signature"])


class TestStorageUrl:
    async def test_entries_show_the_storage_url_the_injected_links_have(self, open_store, state_dir):
        """An entry whose content has a presigned link gets `storage_url`; one without has no such field."""
        links = {hashlib.sha256(b"up").hexdigest(): "https://bucket.example/up?X-Amz-Signature=s"}

        class Links:
            def url(self, sha256: str) -> str | None:
                return links.get(sha256)

        store = open_store(storage=Links())
        await store.commit(upserts=[make_entry("up.txt", b"up"), make_entry("down.txt", b"down")])
        docs = {a["name"]: a for a in store.document()["artifacts"]}
        assert docs["up.txt"]["storage_url"] == "https://bucket.example/up?X-Amz-Signature=s"
        assert "storage_url" not in docs["down.txt"]
