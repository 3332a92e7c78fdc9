# syntax=docker/dockerfile:1
# signal-node image: build with the Rust toolchain, run on distroless (glibc, CA
# certificates for rediss://, no shell, no package manager).
#
#   docker build -t signal-node .
#   docker run -p 8000:8000 -e REDIS_URL=redis://redis:6379/0 signal-node

FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer, so that editing src/ does not recompile
# them: build the locked dependency graph against stub sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real sources. `touch` makes them newer than the stub's build artefacts: COPY
# keeps the files' original mtimes, which cargo could otherwise take as up to date.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin signal-node \
 && install -D -m 0755 target/release/signal-node /out/signal-node

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/signal-node /usr/local/bin/signal-node

# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
ENV HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
EXPOSE 8000

# No curl here: the binary checks itself (GET 127.0.0.1:$PORT/healthz, exit 0 on 200).
# Liveness only; readiness (/readyz, Redis-dependent) is for load balancers to decide.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/signal-node", "healthcheck"]

# SIGTERM (docker stop, Kubernetes) drains in at most 10 s; docker's default 10 s
# stop timeout is tight, so compose and k8s give it more (see their files).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/signal-node"]
