"""A stand-in for an AI agent: writes images, spills a data URL into a tool-results file, then exits.

Run by `make demo` as `sidecar run -- python examples/demo_agent.py ARTIFACTS_DIR TOOL_RESULTS_ROOT`: the
folders come as arguments, since the agent never sees the sidecar's SIDECAR_* variables (SPEC 8).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from images import bar_chart_svg, gradient_png


def main() -> int:
    artifacts, tool_results = Path(sys.argv[1]), Path(sys.argv[2])
    print(f"agent: working in {artifacts}", flush=True)

    # A careful writer: temp name, then rename (the sidecar ignores *.tmp).
    tmp = artifacts / "charts" / "revenue.svg.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(bar_chart_svg([3.1, 4.7, 4.2, 6.8]))
    tmp.rename(artifacts / "charts" / "revenue.svg")
    print("agent: wrote charts/revenue.svg", flush=True)

    # A careless one: written in place, in pieces (published only once it has settled).
    png = gradient_png(320, 200, hue=1.0)
    with open(artifacts / "waves.png", "wb") as f:
        for i in range(0, len(png), 32 * 1024):
            f.write(png[i : i + 32 * 1024])
            f.flush()
            time.sleep(0.05)
    print("agent: wrote waves.png", flush=True)

    # What Claude Code does with a long tool output: the image as a data URL in tool-results/<id>.txt.
    spilled = tool_results / "demo-project" / "session-1" / "tool-results" / "toolu_01demo.txt"
    spilled.parent.mkdir(parents=True, exist_ok=True)
    image = gradient_png(160, 100, hue=2.5)
    payload = {
        "type": "text",
        "text": f"Here is the plot: ![plot](data:image/png;base64,{base64.b64encode(image).decode()})",
    }
    spilled.write_text(json.dumps(payload))
    print(f"agent: spilled a {len(image)} byte PNG as a data URL into {spilled.name}", flush=True)

    print("agent: done, exiting with status 0", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
