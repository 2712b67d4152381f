# wsroom in a container: `docker build -t wsroom .`, then
#   docker run -p 8787:8787 -v wsroom-data:/var/lib/wsroom wsroom
# The default room is embedded; mount your own component and pass
# `--component /rooms/room.wasm` (or WSROOM_COMPONENT) to run another.
# tests/e2e/install.rs runs this file's runtime stage on the test host (as
# its user, with its environment, its health check and stop signal): CI has
# no container engine or registry to build the image itself.

# --- build: the release binary, the default room compiled into it --------
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --locked --release -p wsroom \
 && install -m 0755 target/release/wsroom /usr/local/bin/wsroom

# --- run: the binary alone, as an unprivileged user ----------------------
FROM debian:bookworm-slim
# The roots a `tls://` NATS server's certificate is checked against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/wsroom --create-home \
        --shell /usr/sbin/nologin wsroom
COPY --from=build /usr/local/bin/wsroom /usr/local/bin/wsroom
USER wsroom
WORKDIR /var/lib/wsroom
# Every flag has its WSROOM_* variable (`wsroom --help`). HOME holds
# wasmtime's cache of compiled components: restarts skip compilation.
# A named volume gets the user's ownership; a host directory mounted here
# must be writable by uid 10001.
ENV WSROOM_LISTEN=0.0.0.0:8787 \
    WSROOM_DATA_DIR=/var/lib/wsroom/data \
    HOME=/var/lib/wsroom
VOLUME ["/var/lib/wsroom"]
EXPOSE 8787
# Liveness, at WSROOM_LISTEN's port on loopback; `--url
# http://127.0.0.1:8787/health?ready` also fails while the server is at a
# limit (readiness).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/wsroom", "health"]
# SIGTERM (docker stop) drains: connections get 1001 after what is queued.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsroom"]
