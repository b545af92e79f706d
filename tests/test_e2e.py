"""The end-to-end proof, short: the scripted agent under the sidecar, a Janus-like receiver, seeded faults.

The long version is `make soak` (tests/e2e/soak.py). Each run here is checked for: every artifact of the final
manifest delivered byte-exact, nothing truncated or half-written ever published, the right final manifest,
and the agent's exit status coming through. The offload run has the receiver download every artifact
from its presigned storage URL after the sidecar has exited.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.scenario import Faults, run_scenario

RUNS = [
    pytest.param(
        Faults(seed=11, burst=200, ui_down_s=1.5, ui_error_rate=0.1, polling=True, exit_status=7),
        40.0,  # an upper bound: the grace period ends as soon as everything is downloaded
        id="run-ui-down-503-429-polling",
    ),
    pytest.param(
        Faults(seed=12, burst=200, kill_restart_at=2.5, full_disk=True, overflow=True, exit_status=3),
        40.0,  # an upper bound too: downloads before the SIGKILL are remembered (deliveries.json)
        id="serve-sigkill-restart-full-disk-overflow",
    ),
    pytest.param(
        Faults(seed=13, burst=200, ui_down_s=1.0, offload=True, exit_status=5),
        40.0,  # ends once everything is in the store and the UI was told where
        id="run-offload-download-from-the-store-after-exit",
    ),
    pytest.param(
        Faults(seed=14, burst=200, fd_squeeze_s=8.0, exit_status=0),
        40.0,  # 256 descriptors and 400 idle connections for the first 8 s: nothing lost
        id="run-fd-squeeze",
    ),
]


@pytest.mark.parametrize(("faults", "grace"), RUNS)
async def test_everything_published_arrives_byte_exact(tmp_path: Path, faults: Faults, grace: float) -> None:
    res = await run_scenario(tmp_path / "e2e", faults, grace=grace)
    detail = {k: v for k, v in res.__dict__.items() if k != "latencies"}
    assert not res.errors, detail
    assert not res.broken_published, detail
    assert not res.corrupt, detail
    assert not res.manifest_diff, detail
    assert not res.lost, detail
    assert res.delivered == res.expected > 100
    assert res.exit_got == faults.exit_status
    assert res.ok
