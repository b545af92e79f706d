"""sidecar.links.StorageLinks: the presigned links the offloader signs and the store shows (SPEC 11)."""

from __future__ import annotations

import time

from sidecar.links import StorageLinks


class TestStorageLinks:
    def test_a_link_counts_as_stored_once_a_commit_shows_it(self):
        """After put, url gives the link (the next commit shows it); stored only once `show` says a committed
        version holds it, so the grace period never ends on a link the final push would not carry."""
        links = StorageLinks()
        links.put("a" * 64, "https://s3.example/a?X-Amz-Signature=1")
        assert links.url("a" * 64) == "https://s3.example/a?X-Amz-Signature=1" and not links.stored("a" * 64)
        links.show({"a" * 64, "b" * 64})
        assert links.stored("a" * 64)
        assert links.url("b" * 64) is None and not links.stored("b" * 64)
        links.drop("a" * 64)
        assert not links.stored("a" * 64)

    def test_drop_says_whether_there_was_a_link(self):
        """drop forgets the link and is True only when there was one."""
        links = StorageLinks()
        links.put("a" * 64, "https://s3.example/a")
        assert links.drop("a" * 64) is True
        assert links.drop("a" * 64) is False and links.url("a" * 64) is None

    def test_signed_lists_when_each_link_was_made_and_is_a_copy(self):
        """signed gives (sha256, monotonic time signed); changing the links while walking it is fine."""
        before = time.monotonic()
        links = StorageLinks()
        links.put("a" * 64, "u1")
        links.put("b" * 64, "u2")
        seen = links.signed()
        for sha, made in seen:
            assert before <= made <= time.monotonic()
            links.drop(sha)
        assert [sha for sha, _ in seen] == ["a" * 64, "b" * 64] and links.signed() == []
