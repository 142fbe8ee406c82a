//! Logging: one place sets up the `tracing` subscriber for the whole process.
//!
//! `RUST_LOG` selects what is logged (default `info`), `LOG_FORMAT` how.

use tracing_subscriber::{EnvFilter, fmt};

use crate::settings::LogFormat;

/// Installs the process-wide subscriber. Safe to call more than once (later calls
/// do nothing), so tests and binaries can both call it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already installed: keep that one.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
