"""What the unit tests, the end-to-end scenario (tests/e2e) and the benchmarks share.

- `helpers`: the real sidecar process (`Sidecar`, `spawn`, `daemon_env`), workspaces, HTTP helpers, a fake UI.
- `s3server`: moto on 127.0.0.1 with a log of what it was sent.
- `bulk`: many published artifacts written fast; `corpus`: tool results as agents write them.
- `images`: small images built byte by byte, base64 and wrapping, the names materialized files get.
- `stalled`: clients that never read, and connections that never send.
- `squeeze`: the sidecar under a low descriptor limit.
- `machine`: small tmpfs mounts (a full disk), the inotify queue length, a non-root test user.
- `janus_ui.mjs`: a Node stand-in of the Janus chat UI's cache route.
"""
