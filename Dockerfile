# syntax=docker/dockerfile:1
#
# wsgate image: a Rust builder stage with a cached dependency layer (built
# from the workspace's manifests alone), then a small non-root runtime on
# Debian slim (glibc, the same release as the builder).
# Build: docker build -t wsgate:0.1.0 .
#        (add --build-arg WSGATE_COMMIT=$(git rev-parse --short=12 HEAD) for
#        the commit in wsgate_build_info and `wsgate --version`: the build
#        context has no .git)
# Distroless (no shell, no package manager; same binary, user and layout):
#        docker build --target runtime-distroless -t wsgate:0.1.0-distroless .
# Neither needs a shell for its health check: `wsgate healthcheck`.
#
# The image runs `wsgate serve --config /etc/wsgate/wsgate.toml`; in
# Kubernetes the chart mounts its ConfigMap over /etc/wsgate. Configuration
# also comes from WSGATE__SECTION__KEY variables (protocol section 9).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# The distroless image matching DEBIAN_RELEASE (glibc and libgcc, CA roots).
ARG DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# The workspace's manifests and lock file with stub sources (see
# deploy/docker/cargo-recipe.sh): only these decide the dependency layer.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS planner
WORKDIR /src
COPY . .
RUN sh deploy/docker/cargo-recipe.sh /src /recipe

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# Dependencies first, built against the stub sources: this layer is reused
# until a Cargo.toml or Cargo.lock changes.
COPY --from=planner /recipe/ ./
RUN cargo build --release --locked -p wsgate

# The crate itself. `touch` makes cargo rebuild it over the stub artifacts
# (COPY keeps the files' older modification times).
COPY migrations ./migrations
# `wsgate demo` embeds the browser client (include_str!).
COPY clients/js/wsgate.js ./clients/js/wsgate.js
COPY src ./src
# build.rs sets the commit: git is not in the context, so this argument.
COPY build.rs ./build.rs
ARG WSGATE_COMMIT=unknown
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p wsgate --bin wsgate \
    && install -D -m 0755 target/release/wsgate /out/wsgate \
    && install -d -m 0750 /out/data

# Distroless runtime: `docker build --target runtime-distroless`. Numeric
# user (no /etc/passwd entry needed), the data directory owned by it.
FROM ${DISTROLESS_IMAGE} AS runtime-distroless
COPY --from=builder /out/wsgate /usr/local/bin/wsgate
COPY deploy/docker/wsgate.toml /etc/wsgate/wsgate.toml
COPY --from=builder --chown=10001:10001 /out/data/ /var/lib/wsgate/
ENV WSGATE_CONFIG=/etc/wsgate/wsgate.toml
WORKDIR /var/lib/wsgate
USER 10001:10001
EXPOSE 8080 8081 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/wsgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["serve", "--config", "/etc/wsgate/wsgate.toml"]

FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates for rediss:// and TLS to OTLP collectors.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 wsgate \
    && useradd --system --uid 10001 --gid wsgate --home-dir /var/lib/wsgate \
        --no-create-home --shell /usr/sbin/nologin wsgate \
    && install -d -o wsgate -g wsgate -m 0750 /var/lib/wsgate

COPY --from=builder /out/wsgate /usr/local/bin/wsgate
COPY deploy/docker/wsgate.toml /etc/wsgate/wsgate.toml

# `wsgate token issue ...` in the container reads the same file.
ENV WSGATE_CONFIG=/etc/wsgate/wsgate.toml

# Embedded mode keeps its SQLite file and generated API key here.
WORKDIR /var/lib/wsgate
USER 10001:10001

# WebSocket, backend API, metrics and health.
EXPOSE 8080 8081 9090

# `wsgate healthcheck`: GET the node's health endpoint on its metrics
# listener (from the configuration), exit 0 when healthy; no shell or curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/wsgate", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["serve", "--config", "/etc/wsgate/wsgate.toml"]
