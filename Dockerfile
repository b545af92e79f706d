# artifact sidecar as the sandbox entrypoint: `docker run IMAGE claude -p "..."` runs the agent under
# `sidecar run --`, serves /artifacts on 5173 and exits with the agent's status after the grace period.
# Build stage: a virtualenv with the package and its dependencies, copied whole into the runtime stage.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sidecar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN /opt/sidecar/bin/pip install .

FROM python:3.11-slim-bookworm
COPY --from=build /opt/sidecar /opt/sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_ARTIFACTS_DIR=/workspace/artifacts \
    SIDECAR_STATE_DIR=/workspace/.sidecar
RUN mkdir -p /workspace/artifacts /workspace/.sidecar
WORKDIR /workspace
EXPOSE 5173
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:5173/healthz', timeout=2).status != 200)"]
# The sidecar is PID 1: it forwards signals to the agent's process group and reaps every orphan.
ENTRYPOINT ["sidecar", "run", "--"]
CMD ["sleep", "infinity"]
