//! Generates the gRPC code of `ambit-httpbin` (client and server) from
//! `proto/echo.proto` into `OUT_DIR` (protox: no `protoc` needed).

/// The test gRPC service of `ambit-httpbin serve` and `grpc-call`.
const ECHO_PROTO: &str = "proto/echo.proto";

fn main() {
    println!("cargo::rerun-if-changed={ECHO_PROTO}");
    let descriptors = match protox::compile([ECHO_PROTO], ["proto"]) {
        Ok(descriptors) => descriptors,
        Err(err) => panic!("{ECHO_PROTO} does not compile: {err}"),
    };
    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)
    {
        panic!("cannot generate the gRPC code of {ECHO_PROTO}: {err}");
    }
}
