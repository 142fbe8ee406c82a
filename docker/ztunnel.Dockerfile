# syntax=docker/dockerfile:1
# The ztunnel image, which is also the CA's (`ztunnel ca`). From the
# workspace root:
#   docker build -f docker/ztunnel.Dockerfile -t ambit/ztunnel .
# (Not built here: the project's machines have no container engine.)

FROM docker.io/library/rust:1.95-bookworm AS build
# The nightly that builds the eBPF crate with the pinned aya-ebpf (newer
# nightlies may not: DESIGN.md section 11), installed under the name `nightly`
# that xtask uses. rustup refuses `toolchain link` for a channel name, hence
# the rename.
ARG NIGHTLY=nightly-2026-05-19
RUN rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && mv "$RUSTUP_HOME/toolchains/$NIGHTLY-$host" "$RUSTUP_HOME/toolchains/nightly-$host"
WORKDIR /src
COPY . .
# `cargo xtask bootstrap` installs LLVM 22 (bookworm-security) and bpf-linker;
# `cargo xtask build-ebpf` writes target/ebpf/ambit.bpf.o, which ztunnel's build
# script embeds in the binary (the image needs no separate object file).
RUN cargo xtask bootstrap && cargo xtask build-ebpf
RUN cargo build --release --locked --package ztunnel --bin ztunnel \
 && cargo build --release --locked --package ambit-cni --bin ambit-cni \
 && cp target/release/ztunnel /ztunnel \
 && cp target/release/ambit-cni /ambit-cni

# glibc and libgcc from Debian 12, the builder's own, and nothing else: no
# shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /ztunnel /usr/local/bin/ztunnel
# The CNI plugin, which the DaemonSet's init container copies to the node
# (`ambit-cni install`).
COPY --from=build /ambit-cni /usr/local/bin/ambit-cni
# Root by default: the DaemonSet runs it as root with its capabilities; the CA
# Deployment sets a non-root user.
ENTRYPOINT ["/usr/local/bin/ztunnel"]
