#!/bin/sh
# The sandbox side of a Janus baseline: serve the agent's artifacts with the sidecar while the agent runs.
#
# It replaces the usual bootstrap block
#     mkdir -p /workspace/artifacts
#     cd /workspace/artifacts && nohup python -m http.server 5173 >/dev/null 2>&1 &
#     cd /workspace && claude -p "$PROMPT" ...
# with one supervised command: the sidecar starts, runs the agent as its child, publishes what it writes
# (also images spilled as data URLs into Claude Code's tool results), and stays up after the agent exits
# until everything was downloaded (or --grace-period). Use it as: sandbox.sh claude -p "$PROMPT" ...
#
# Environment (secrets go here, not on the command line; the agent never sees a SIDECAR_* variable):
#   SANDBOX_PUBLIC_URL   the sandbox's public URL for port 5173 (artifact URLs are built on it)
#   CHAT_ID              the Janus chat id
#   SIDECAR_AUTH_TOKEN   optional: the API needs this bearer token; artifact URLs are signed
#   JANUS_URL            optional: the Janus UI; with it, each artifact is pushed to its cache route
#   SIDECAR_UI_PUSH_HEADERS  with JANUS_URL behind the pre-release gate: "X-PreReleasePassword: <password>"
set -eu

ARTIFACTS_DIR=${ARTIFACTS_DIR:-/workspace/artifacts}
SANDBOX_HOST=${SANDBOX_HOST:-0.0.0.0}  # IPv4, all interfaces: the port the sandbox exposes
SANDBOX_PORT=${SANDBOX_PORT:-5173}
SIDECAR=${SIDECAR:-sidecar}            # split on purpose: "python -m sidecar" works too

set -- --artifacts-dir "$ARTIFACTS_DIR" --host "$SANDBOX_HOST" --port "$SANDBOX_PORT" \
    --public-base-url "$SANDBOX_PUBLIC_URL" --chat-id "$CHAT_ID" -- "$@"
if [ -n "${JANUS_URL:-}" ]; then
    set -- --ui-push-url "${JANUS_URL%/}/api/artifacts/cache" --ui-push-mode cache "$@"
fi
# shellcheck disable=SC2086
exec $SIDECAR run "$@"
