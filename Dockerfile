# syntax=docker/dockerfile:1.7
# labelmill, CPU image.
#
#   docker build -t labelmill:cpu .
#   docker run --rm labelmill:cpu tiny-model --out /models/tiny
#
# One image for every x86-64 host: labelmill's matrix-product and softmax kernels (Q8_0, Q4_0,
# Q4_K, attention) check the CPU at run time and use AVX2 + FMA where present, so the default
# baseline (x86-64) loses nothing on them. TARGET_CPU=x86-64-v3 additionally compiles candle's own
# fixed-feature kernels (F16 and the other quantisation types) for AVX2, at the price of not
# starting on pre-Haswell CPUs; TARGET_CPU=generic on arm64.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
ARG TARGET_CPU=x86-64
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
