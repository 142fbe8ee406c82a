//! The `waypoint` binary. Until the L7 proxy lands it only reports readiness.

use std::net::{Ipv6Addr, SocketAddr};

use anyhow::Context;
use clap::Parser;
use waypoint::readiness::{Readiness, Server};
use ztunnel::settings::{self, ProcessEnv, Settings};

/// ambit's per-namespace L7 proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Port of the readiness endpoint.
    #[arg(long, default_value_t = settings::READINESS_PORT)]
    readiness_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env(&ProcessEnv).context("invalid settings")?;
    ztunnel::telemetry::init(settings.log_format);
    let readiness = Readiness::default();
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cli.readiness_port));
    let server = Server::bind(addr, readiness.clone())
        .await
        .context("cannot start the readiness endpoint")?;
    tracing::info!(%addr, "readiness endpoint listening");
    readiness.set(true);
    tokio::select! {
        () = server.run() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot wait for SIGINT")?,
    }
    Ok(())
}
