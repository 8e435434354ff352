# syntax=docker/dockerfile:1.7
# clickstream image: a builder with the C/C++ toolchain that RocksDB and librdkafka need, and a
# slim Debian runtime that runs `clickstream run` as uid 10001. See deploy/README.md.
#
#   docker build -t clickstream:dev .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# libclang-dev: RocksDB's bindings (bindgen). g++, make: RocksDB and librdkafka (built from
# source by rdkafka-sys, with ./configure + make). pkg-config, libssl-dev, zlib1g-dev: rdkafka's
# "ssl" feature and librdkafka's zlib support link the system OpenSSL and zlib. cmake: for
# build scripts that prefer it (aws-lc-sys, rdkafka's cmake-build feature if ever turned on).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libclang-dev g++ make cmake pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own cached layer: the manifests with a stub for every target
# they name (binary, library, bench, example, and the integration-tests crate's lib and test),
# so this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
RUN mkdir -p src benches bench integration-tests/src integration-tests/tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/stages.rs \
 && echo 'fn main() {}' > bench/typed_parse.rs \
 && echo 'fn main() {}' > bench/scale_gen.rs \
 && touch integration-tests/src/lib.rs \
 && echo 'fn main() {}' > integration-tests/tests/it/main.rs \
 && cargo build --release --locked --bin clickstream \
 && rm -rf src
# The real sources. COPY keeps the context's modification times, which can be older than the
# stubs just built: touch them so cargo rebuilds the crate itself.
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin clickstream \
 && cp target/release/clickstream /usr/local/bin/clickstream

FROM debian:bookworm-slim
# ca-certificates: TLS to S3 and to brokers. curl: the HEALTHCHECK. libssl3, zlib1g, libstdc++6:
# what the binary links dynamically (librdkafka's OpenSSL and zlib, RocksDB's C++ runtime).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 clickstream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/clickstream --shell /usr/sbin/nologin clickstream \
 && mkdir -p /var/lib/clickstream/state \
 && chown -R 10001:10001 /var/lib/clickstream
COPY --from=builder /usr/local/bin/clickstream /usr/local/bin/clickstream
# Every setting with its default, for reference (the same file is built into the binary).
COPY config/default.toml /etc/clickstream/default.toml
# The extraction rules in force when [registry] location is empty.
COPY schemas /etc/clickstream/schemas
# The configuration `run` reads; Kubernetes mounts its ConfigMap over this one file.
COPY deploy/clickstream.toml /etc/clickstream/clickstream.toml
ENV CLICKSTREAM__REPLAY__SCHEMAS=/etc/clickstream/schemas
USER 10001:10001
WORKDIR /var/lib/clickstream
# RocksDB state (run.state = /var/lib/clickstream/state): must outlive the container.
VOLUME ["/var/lib/clickstream"]
# Admin API: /healthz, /livez, /readyz, /metrics (and /schemas, behind the token).
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/livez"]
# Exec form: the binary is PID 1 and gets SIGTERM itself (drain, final checkpoint, exit).
ENTRYPOINT ["/usr/local/bin/clickstream"]
CMD ["run", "--config", "/etc/clickstream/clickstream.toml"]
