"""Presigned object-storage links (SPEC 11): sha256 -> a GET URL, signed by the offloader, shown by the store."""

from __future__ import annotations

import time

__all__ = ("StorageLinks",)


class StorageLinks:
    """The links of the contents confirmed in object storage. Made before the store (which shows them as
    `storage_url`), the deliveries (a stored content counts as delivered) and the offloader (which signs
    them, and signs them again before they expire): none of them needs another to exist first."""

    def __init__(self) -> None:
        self._links: dict[str, tuple[str, float]] = {}  # sha256 -> (presigned URL, monotonic time signed)
        self._shown: set[str] = set()  # sha256s whose link a committed manifest version holds

    def url(self, sha256: str) -> str | None:
        link = self._links.get(sha256)
        return link[0] if link else None

    def stored(self, sha256: str) -> bool:
        """Confirmed, persisted and shown in a committed manifest: counts as delivered in the grace period
        (before that commit, the final push would not carry the link yet)."""
        return sha256 in self._shown

    def show(self, sha256s: set[str]) -> None:
        """The manifest version just committed holds these contents' links (the ones that have one)."""
        self._shown.update(s for s in sha256s if s in self._links)

    def put(self, sha256: str, url: str) -> None:
        self._links[sha256] = (url, time.monotonic())

    def drop(self, sha256: str) -> bool:
        """Forget this content's link; False when it had none."""
        self._shown.discard(sha256)
        return self._links.pop(sha256, None) is not None

    def signed(self) -> list[tuple[str, float]]:
        """(sha256, monotonic time signed) of every link, a copy (the offloader re-signs while it walks it)."""
        return [(sha, made) for sha, (_, made) in self._links.items()]
