# syntax=docker/dockerfile:1.7
# labelmill, CPU image.
#
#   docker build -t labelmill:cpu .
#   docker run --rm labelmill:cpu tiny-model --out /models/tiny
#
# The repository's .cargo/config.toml builds with -C target-cpu=native (candle picks its AVX2/FMA
# kernels at compile time). An image must run on other machines than the one that built it, so
# RUSTFLAGS (which replaces the config's rustflags) pins a portable baseline instead: x86-64-v3 is
# AVX2 + FMA (Haswell and later, every current cloud x86 CPU). Pass --build-arg TARGET_CPU=x86-64-v4
# for AVX-512 hosts, or TARGET_CPU=generic on arm64.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
ARG TARGET_CPU=x86-64-v3
ENV RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    CARGO_TERM_COLOR=never
# librdkafka (bundled, features ssl + libz) is built by its configure script with the C toolchain;
# openssl-sys (rdkafka ssl, lapin native-tls) finds OpenSSL with pkg-config; onig_sys needs cc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
# The manifest names these bench targets: cargo refuses a manifest whose targets are missing.
COPY benches benches
# The target dir is a cache mount (kept between builds, absent from the image), so the binary is
# copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,id=labelmill-target-cpu \
    cargo build --release --locked --bin labelmill \
 && install -D -m 0755 target/release/labelmill /out/labelmill

FROM ${RUNTIME_IMAGE}
# curl serves the docker-compose healthcheck (GET /readyz); Kubernetes probes need nothing inside.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it. /models is owned by it so that a
# fresh named volume mounted there (docker-compose's `model` service) is writable by the worker user.
RUN groupadd --system --gid 10001 labelmill \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin labelmill \
 && mkdir -p /models /etc/labelmill \
 && chown 10001:10001 /models
COPY --from=builder /out/labelmill /usr/local/bin/labelmill
USER 10001:10001
# /metrics, /healthz, /readyz ([http] listen in the worker config).
EXPOSE 9464
ENTRYPOINT ["labelmill"]
CMD ["worker", "--config", "/etc/labelmill/worker.toml"]
