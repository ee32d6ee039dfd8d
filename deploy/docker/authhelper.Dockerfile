# syntax=docker/dockerfile:1
# hostmux-authhelper, the OAuth2 gate in front of an app (a sidecar).
# Build from the repository root (the base image comes from a registry, so CI does not build
# it: docs/deploy.md):
#   docker build -f deploy/docker/authhelper.Dockerfile -t hostmux-authhelper .
# Run, e.g.:
#   docker run -d --network container:APP hostmux-authhelper --instance-id myapp \
#       --portal-url https://portal.example.org --app 127.0.0.1:8888 --cookie-keys-file /var/lib/hostmux-authhelper/cookie-keys
# It listens on 127.0.0.1:8081 by default, for a listener in the same network namespace
# (a pod, or --network container:...); --listen 0.0.0.0:8081 to be reached from elsewhere.

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
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /var/lib/hostmux-authhelper --create-home \
        --shell /usr/sbin/nologin hostmux
COPY --from=build /opt/hostmux /opt/hostmux
ENV PATH=/opt/hostmux/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/hostmux-authhelper
EXPOSE 8081
ENTRYPOINT ["hostmux-authhelper"]
