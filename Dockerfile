# syntax=docker/dockerfile:1.7
# Multi-stage build: a builder with the C/C++ toolchain RocksDB needs, and a slim runtime.

FROM rust:1.95-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own cached layer.
COPY Cargo.toml Cargo.lock ./
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
RUN mkdir -p src benches bench integration-tests/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/stages.rs && echo 'fn main() {}' > bench/typed_parse.rs \
 && touch integration-tests/src/lib.rs \
 && cargo build --release --locked --bin clickstream \
 && rm -rf src
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin clickstream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 clickstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/clickstream clickstream \
 && mkdir -p /var/lib/clickstream && chown 10001:10001 /var/lib/clickstream
COPY --from=builder /src/target/release/clickstream /usr/local/bin/clickstream
COPY config /etc/clickstream/config
COPY schemas /etc/clickstream/schemas
USER 10001:10001
WORKDIR /var/lib/clickstream
VOLUME ["/var/lib/clickstream"]
ENV CLICKSTREAM__REPLAY__SCHEMAS=/etc/clickstream/schemas
ENTRYPOINT ["/usr/local/bin/clickstream"]
CMD ["--help"]
