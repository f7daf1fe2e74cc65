# syntax=docker/dockerfile:1
#
# rigwatch collector image. Build from the repository root (the context must
# hold the whole Cargo workspace):
#
#   docker build -f packaging/docker/collector.Dockerfile -t rigwatch/collector:0.1.0 .
#
# It runs as the unprivileged user rigwatch-collector (uid/gid 10001) and
# needs no capability; the SQLite database lives in the volume
# /var/lib/rigwatch-collector, which must be writable by uid 10001
# (Kubernetes: fsGroup 10001, as in packaging/kubernetes/collector-deployment.yaml).
#
#   docker run -d --name rigwatch-collector -p 9860:9860 --read-only --tmpfs /tmp \
#     --cap-drop=ALL --security-opt no-new-privileges \
#     -v rigwatch-collector-data:/var/lib/rigwatch-collector rigwatch/collector:0.1.0
#   docker exec rigwatch-collector rigwatch-collector token create HOSTNAME
#
# ENTRYPOINT is the binary and CMD its default arguments, so that a pod's
# `args` (or `docker run IMAGE token list`) replace the default `serve ...`
# as a whole instead of being appended to it.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Cargo.lock and the workspace manifest name all four members, so every one of
# them must be present for `--locked` even though only the collector is built.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY signatures signatures
COPY agent agent
COPY tests tests
COPY collector collector
# The cache mounts keep the crate registry and the build tree between builds
# (BuildKit); the binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p rigwatch-collector --bin rigwatch-collector \
 && install -D -m 0755 target/release/rigwatch-collector /out/rigwatch-collector

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="rigwatch-collector" \
      org.opencontainers.image.description="rigwatch collector: fleet ingest of rigwatch agents' findings, storage (SQLite or PostgreSQL), alerting, campaigns, Prometheus metrics and the analysts' web page on :9860" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="rigwatch" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rigwatch-collector \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
      --home-dir /var/lib/rigwatch-collector --no-create-home \
      --shell /usr/sbin/nologin rigwatch-collector \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/rigwatch-collector

COPY --from=builder /out/rigwatch-collector /usr/bin/rigwatch-collector

VOLUME ["/var/lib/rigwatch-collector"]
USER 10001:10001
EXPOSE 9860
ENTRYPOINT ["/usr/bin/rigwatch-collector"]
CMD ["serve", "--listen", "0.0.0.0:9860", "--data-dir", "/var/lib/rigwatch-collector"]
