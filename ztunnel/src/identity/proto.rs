//! Code generated at build time from `proto/ca.proto` (Istio's
//! `istio.v1.auth.IstioCertificateService`); see `ztunnel/build.rs`.
#![allow(
    missing_docs,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]

include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
