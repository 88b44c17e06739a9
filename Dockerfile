# syntax=docker/dockerfile:1
# The starkscale binary (coordinator, worker, client) on a slim Debian.
#
#   docker build -t starkscale .
#
# Built for x86-64-v3 (AVX2), which stwo's SIMD backend needs to be fast, rather than for the
# build host's CPU as local builds are.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target \
    RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/patch-deps.sh \
    && cargo build --release --locked --bin starkscale \
    && cp target/release/starkscale /usr/local/bin/starkscale

FROM debian:bookworm-slim
# curl serves the compose healthchecks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /srv/starkscale --create-home starkscale
COPY --from=build /usr/local/bin/starkscale /usr/local/bin/starkscale
USER starkscale
WORKDIR /srv/starkscale
# 9464: coordinator metrics; 9465: worker metrics.
EXPOSE 9464 9465
ENTRYPOINT ["starkscale"]
CMD ["--help"]
