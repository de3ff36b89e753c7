# syntax=docker/dockerfile:1
# LeaderLock controller image, for building on a machine with a container engine
# (`docker build -t <registry>/leaderlock:0.1.0 .`).
#
# The repository's own build is hack/image.sh, which needs no daemon: it packs the same content
# (a statically linked /leaderlock and the kubectl plugin /kubectl-leaderlock, run as
# 65532:65532, entrypoint /leaderlock, command `controller`) and is the image the e2e test runs
# on a real node; that test also checks that this file's final stage still describes that image.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# etcd-client's build script compiles etcd's .proto files with protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Static glibc (crt-static on the gnu target): `leaderlock copy-self` hands this binary to
# workload containers of any image, with or without a libc of their own. The flags apply to the
# explicit --target only, so build scripts and proc-macros are built as usual.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin leaderlock --bin kubectl-leaderlock \
 && cp target/x86_64-unknown-linux-gnu/release/leaderlock target/x86_64-unknown-linux-gnu/release/kubectl-leaderlock /

# --- runtime -----------------------------------------------------------------------------
# Nothing but the static binaries: the controller and pod-side helper, and the kubectl plugin.
FROM scratch
COPY --from=build /leaderlock /leaderlock
COPY --from=build /kubectl-leaderlock /kubectl-leaderlock
USER 65532:65532
ENTRYPOINT ["/leaderlock"]
CMD ["controller"]
