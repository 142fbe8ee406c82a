# syntax=docker/dockerfile:1
# The waypoint image. From the workspace root:
#   docker build -f docker/waypoint.Dockerfile -t ambit/waypoint .
# (Not built here: the project's machines have no container engine.)

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The waypoint alone, so ztunnel's library is built without its `capture`
# feature: no eBPF object, no aya, no nightly.
RUN cargo build --release --locked --package waypoint --bin waypoint \
 && cp target/release/waypoint /waypoint

# glibc, libgcc and CA certificates (for jwksUri over HTTPS) from Debian 12;
# user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /waypoint /usr/local/bin/waypoint
EXPOSE 15008 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
