# syntax=docker/dockerfile:1
# hostmux-listener, a tunnel client (a sidecar of the app it exposes).
# Build from the repository root (the base image comes from a registry, so CI does not build
# it: docs/deploy.md):
#   docker build -f deploy/docker/listener.Dockerfile -t hostmux-listener .
# Run, e.g.:
#   docker run -d -v ./id_ed25519:/run/secrets/identity:ro hostmux-listener \
#       --router tunnels.example.org:2222 --name myapp --target app:3000 \
#       --identity-file /run/secrets/identity --host-key-fingerprint SHA256:...
# It only dials out: no port to publish.

FROM python:3.11-slim-bookworm AS build
# gcc builds the compiled core (setup.py: mypyc); the image that runs gets only its result.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every package of the distribution (pyproject.toml lists them all; one missing fails the build).
COPY pyproject.toml setup.py README.md LICENSE ./
COPY hostmux/ hostmux/
COPY router/ router/
COPY listener/ listener/
COPY authhelper/ authhelper/
COPY keys/ keys/
RUN python -m venv /opt/hostmux \
    && /opt/hostmux/bin/pip install --no-cache-dir /src

FROM python:3.11-slim-bookworm
# Its own group with the same id, so USER 10001:10001 (and a pod's runAsGroup) owns the home.
RUN groupadd --gid 10001 hostmux \
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /home/hostmux --create-home \
        --shell /usr/sbin/nologin hostmux
COPY --from=build /opt/hostmux /opt/hostmux
ENV PATH=/opt/hostmux/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/hostmux
ENTRYPOINT ["hostmux-listener"]
