# artifact sidecar as the sandbox entrypoint: `docker run IMAGE claude -p "..."` runs the agent under
# `sidecar run --` as the unprivileged user `agent`, serves /artifacts on 5173 and exits with the agent's
# status after the grace period. The sidecar itself runs as root and keeps its state and secrets to itself.
# BASE: any Debian bookworm image with python3 and venv (image/build.sh builds it from debootstrap).
ARG BASE=python:3.11-slim-bookworm

# Build stage: a virtualenv with the pinned packages (image/requirements.txt) and the sidecar, without pip.
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY image/requirements.txt image/
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    python3 -m venv /opt/sidecar \
    && /opt/sidecar/bin/pip install -q --no-deps -r image/requirements.txt
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# --no-deps and `pip check`: exactly the locked set, and nothing missing from it. Then pip and setuptools go.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    /opt/sidecar/bin/pip install -q --no-deps . \
    && /opt/sidecar/bin/pip check \
    && /opt/sidecar/bin/pip uninstall -q -y pip setuptools

FROM ${BASE}
COPY --from=build /opt/sidecar /opt/sidecar
# /workspace is sticky and the agent's group may write it: the agent can work there but cannot move the
# sidecar's 0700 state dir; the artifacts dir is the agent's.
RUN useradd --create-home --shell /bin/sh --user-group agent \
    && install -d -m 1775 -o root -g agent /workspace \
    && install -d -m 0755 -o agent -g agent /workspace/artifacts \
    && install -d -m 0700 -o root -g root /workspace/.sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_ARTIFACTS_DIR=/workspace/artifacts \
    SIDECAR_STATE_DIR=/workspace/.sidecar \
    SIDECAR_CHILD_USER=agent
WORKDIR /workspace
EXPOSE 5173
# `sidecar healthcheck` reads SIDECAR_PORT and SIDECAR_HOST like the daemon does.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["sidecar", "healthcheck"]
# The sidecar is PID 1: it forwards signals to the agent's process group and reaps every orphan.
ENTRYPOINT ["sidecar", "run", "--"]
CMD ["sleep", "infinity"]
