# syntax=docker/dockerfile:1
# LeaderLock controller image.
#
# No Docker engine runs in this repository's CI or dev machines: this Dockerfile is built
# outside them (e.g. `docker build -t <registry>/leaderlock:0.1.0 .` on a machine with Docker),
# and the image is what charts/leaderlock deploys (values: image.repository / image.tag).

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# etcd-client's build script compiles etcd's .proto files with protoc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin leaderlock \
 && cp target/release/leaderlock /leaderlock

# --- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc + libgcc, no shell; the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /leaderlock /leaderlock
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/leaderlock"]
CMD ["controller"]
