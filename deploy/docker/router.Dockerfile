# syntax=docker/dockerfile:1
# hostmux-router, the tunnel router.
# Build from the repository root (the base image comes from a registry, so CI does not build
# it: docs/deploy.md):
#   docker build -f deploy/docker/router.Dockerfile -t hostmux-router .
# Run, e.g.:
#   docker run -d -p 443:8443 -p 2222:2222 -v hostmux-router:/var/lib/hostmux \
#       -e HOSTMUX_DOMAIN=tunnels.example.org -e HOSTMUX_PUBLIC_PORT=443 hostmux-router
# The listen addresses below (SSH 2222, HTTPS 8443, no plain HTTP) are set in the environment,
# which wins over a --config file: set HOSTMUX_* variables or flags to change them. State (host key, development CA) lives in
# the volume /var/lib/hostmux; several routers share one host key and certificate
# (docs/deploy.md).

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
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /var/lib/hostmux --create-home \
        --shell /usr/sbin/nologin hostmux
COPY --from=build /opt/hostmux /opt/hostmux
ENV PATH=/opt/hostmux/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib \
    HOSTMUX_SSH_LISTEN=0.0.0.0:2222 \
    HOSTMUX_HTTPS_LISTEN=0.0.0.0:8443 \
    HOSTMUX_HTTP_LISTEN=
USER 10001:10001
WORKDIR /var/lib/hostmux
VOLUME ["/var/lib/hostmux"]
EXPOSE 2222 8443
ENTRYPOINT ["hostmux-router"]
