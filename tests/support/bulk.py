"""Many published artifacts in seconds: small files plus the state dir's manifest that lists them, so a
sidecar starts with all of them published instead of hashing them one by one (tests and bench/)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

__all__ = ("bulk_names", "write_published")


def bulk_names(count: int) -> list[str]:
    """Names like an agent's: a folder per hundred, ~40 characters each."""
    return [f"reports/run-{i // 100:04d}/quarterly-chart-{i:06d}.txt" for i in range(count)]


def write_published(artifacts: Path, state: Path, count: int) -> list[str]:
    """`count` distinct small text files under `artifacts`, and `state/manifest.json` publishing each one
    (the stored identity matches the file, so the sidecar trusts it at start and hashes nothing)."""
    names = bulk_names(count)
    now = time.time()
    entries = []
    for i, name in enumerate(names):
        path = artifacts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"artifact {i}\n".encode()
        path.write_bytes(data)
        st = os.stat(path)
        entries.append(
            {
                "name": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
                "mime_type": "text/plain",
                "mtime": st.st_mtime,
                "created_at": now,
                "identity": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns],
                "source": "file",
                "origin": None,
                "declared_mime_type": None,
            }
        )
    state.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": 1,
        "sidecar_id": str(uuid.uuid4()),
        "version": count,
        "state": "running",
        "entries": entries,
        "rejected": [],
    }
    (state / "manifest.json").write_text(json.dumps(doc))
    return names
