"""sidecar.deliveries: what counts as delivered (SPEC 8 step 3) is content, and the file keeps it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from support.helpers import sha256

from sidecar.deliveries import STATE_FILE, Deliveries
from sidecar.manifest import Entry, Identity


def entry(name: str, data: bytes) -> Entry:
    return Entry(name, sha256(data), len(data), "text/plain", 1.0, 1.0, Identity(1, hash(name) & 0xFFFF, len(data), 1))


class TestContent:
    def test_ranges_of_two_names_with_the_same_bytes_add_up(self):
        """Half through one name and half through another is one whole download of those bytes."""
        d = Deliveries()
        a, b = entry("a.txt", b"0123456789"), entry("copy/a.txt", b"0123456789")
        d.served(a, 0, 5)
        assert not d.delivered(b)
        d.served(b, 5, 10)
        assert d.delivered(a) and d.delivered(b)
        assert not d.delivered(entry("other.txt", b"other bytes"))

    def test_an_acknowledged_cache_push_counts_for_every_name(self):
        """In cache mode the UI's acknowledgement of a content is its download."""
        d = Deliveries()
        d.acknowledged(sha256(b"x" * 10))
        assert d.delivered(entry("x.bin", b"x" * 10)) and d.delivered(entry("y/x.bin", b"x" * 10))
        assert d.changed.is_set()

    def test_a_file_of_the_older_name_sha256_pairs_is_read_as_contents(self, tmp_path: Path):
        """deliveries.json from before (`[name, sha256]` pairs) still counts, for any name with that content."""
        doc = {"sidecar_id": "s1", "done": [["a.txt", sha256(b"abc")]]}
        (tmp_path / STATE_FILE).write_text(json.dumps(doc))
        d = Deliveries(tmp_path)
        d.load("s1")
        assert d.delivered(entry("renamed.txt", b"abc"))

    def test_the_file_lists_contents_and_survives_a_restart(self, tmp_path: Path):
        """What is written is read back by the next process with the same sidecar_id, and only by it."""
        d = Deliveries(tmp_path)
        d.load("s1")
        d.served(entry("a.txt", b"abc"), 0, 3)
        d.flush()
        assert json.loads((tmp_path / STATE_FILE).read_text())["done"] == [sha256(b"abc")]
        again, other = Deliveries(tmp_path), Deliveries(tmp_path)
        again.load("s1")
        other.load("s2")
        assert again.delivered(entry("b.txt", b"abc")) and not other.delivered(entry("b.txt", b"abc"))


class TestStoredAndSaving:
    def test_the_stored_predicate_given_at_construction_counts_as_delivered(self):
        """With offload, a content confirmed in object storage counts as delivered (SPEC 11); others do not."""
        stored = {sha256(b"in the bucket")}
        d = Deliveries(stored=stored.__contains__)
        assert d.delivered(entry("a.bin", b"in the bucket")) and not d.delivered(entry("b.bin", b"not there"))

    async def test_save_now_has_every_change_on_disk_when_it_returns(self, tmp_path: Path):
        """save_now writes what changed before it was called, also when a periodic save is under way."""
        d = Deliveries(tmp_path)
        d.load("s1")
        persist = asyncio.create_task(d.persist_forever())
        try:
            d.acknowledged(sha256(b"one"))
            await asyncio.sleep(0.3)  # the periodic save of "one" starts
            d.acknowledged(sha256(b"two"))
            await d.save_now()
            done = json.loads((tmp_path / STATE_FILE).read_text())["done"]
            assert sorted(done) == sorted([sha256(b"one"), sha256(b"two")])
        finally:
            persist.cancel()
            await asyncio.gather(persist, return_exceptions=True)
