# syntax=docker/dockerfile:1
#
# rigwatch agent image. Build from the repository root (the context must hold
# the whole Cargo workspace):
#
#   docker build -f packaging/docker/agent.Dockerfile -t rigwatch/agent:0.1.0 .
#
# Privileges. The agent runs as root (uid 0) inside the container, but that
# root holds only the capabilities the pod spec grants.
# packaging/kubernetes/agent-daemonset.yaml drops ALL and adds exactly the four
# that the systemd unit (packaging/systemd/rigwatch.service) gives it:
#   SYS_PTRACE       read other processes' /proc/PID/{exe,fd,environ,mem,maps}
#   DAC_READ_SEARCH  read binaries, miner configs, cron and unit files of any owner
#   NET_RAW          the passive AF_PACKET capture (stratum, TLS SNI, DNS)
#   NET_ADMIN        the kernel's proc connector (exec events) and sock_diag
# It is root, not an unprivileged user as under systemd, because Kubernetes
# cannot grant ambient capabilities: capabilities added for a non-root
# container user never become effective. Root with everything else dropped
# and allowPrivilegeEscalation: false is the closest equivalent.
#
# Outside Kubernetes, drop Docker's default capability set the same way
# (Docker's defaults lack five of the six and include others the agent must
# not have):
#
#   docker run -d --name rigwatch --pid=host --network=host --read-only \
#     --cap-drop=ALL --cap-add=SYS_PTRACE --cap-add=DAC_READ_SEARCH \
#     --cap-add=NET_RAW --cap-add=NET_ADMIN --cap-add=BPF --cap-add=PERFMON \
#     --security-opt no-new-privileges --security-opt apparmor=unconfined \
#     -v /proc:/host/proc:ro -v /var/lib/rigwatch:/var/lib/rigwatch \
#     rigwatch/agent:0.1.0 run --proc-root /host/proc --listen 0.0.0.0:9861
#
# ENTRYPOINT is the binary and CMD its default arguments, so that a pod's
# `args` (or the words after the image in `docker run`) replace the default
# `run --listen 0.0.0.0:9861` as a whole instead of being appended to it.

FROM rust:1.95-bookworm AS builder
# clang and libbpf's headers compile the eBPF programs (agent/bpf/*.bpf.c)
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cargo.lock and the workspace manifest name all four members, so every one of
# them must be present for `--locked` even though only the agent is built.
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
    cargo build --release --locked -p rigwatch-agent --bin rigwatch \
 && install -D -m 0755 target/release/rigwatch /out/rigwatch

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="rigwatch-agent" \
      org.opencontainers.image.description="rigwatch agent: watches processes, binaries, GPU use and network traffic for crypto miners; Prometheus metrics on :9861, findings shipped to the rigwatch collector" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="rigwatch" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/rigwatch /usr/bin/rigwatch
# Extra signature directory (read when it exists) and the spool of findings
# not yet delivered to the collector; the spool must outlive the container.
RUN install -d -m 0755 /etc/rigwatch/signatures.d \
 && install -d -m 0750 /var/lib/rigwatch
VOLUME ["/var/lib/rigwatch"]

# root, limited to the capabilities granted at run time (see above)
USER 0:0
EXPOSE 9861
ENTRYPOINT ["/usr/bin/rigwatch"]
CMD ["run", "--listen", "0.0.0.0:9861"]
