"""Benchmark peer: the plainest aiohttp static file server, serving DIR at /artifacts/.

    python bench/peers/aiohttp_static.py --dir DIR --port PORT [--host 127.0.0.1]

No middlewares, no access log: what `web.static` alone costs.
"""

from __future__ import annotations

import argparse

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.add_routes([web.static("/artifacts", args.dir)])
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
