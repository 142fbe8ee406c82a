//! The `ztunnel` binary: loads the eBPF capture, attaches it to the node's cgroup
//! and runs until SIGTERM or SIGINT, when it detaches.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use ztunnel::{
    capture::{self, Capture},
    settings::{self, ProcessEnv, Settings},
    telemetry,
};

/// ambit's node data plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// cgroup v2 directory to attach the capture to (overrides AMBIT_NODE_CGROUP;
    /// default: the cgroup v2 root).
    #[arg(long)]
    node_cgroup: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::from_env(&ProcessEnv).context("invalid settings")?;
    if let Some(path) = cli.node_cgroup {
        settings.node_cgroup = Some(path);
        settings.validate().context("invalid --node-cgroup")?;
    }
    telemetry::init(settings.log_format);
    tracing::info!(settings = ?settings, "starting");

    let cgroup = match settings.node_cgroup.clone() {
        Some(path) => path,
        None => capture::cgroup2_mount()
            .context("cannot find the cgroup v2 hierarchy")?
            .with_context(|| {
                format!(
                    "no cgroup v2 hierarchy is mounted; set {}",
                    settings::NODE_CGROUP_ENV
                )
            })?,
    };
    let mut capture = Capture::load().context("cannot start the eBPF capture")?;
    capture
        .attach(&cgroup)
        .with_context(|| format!("cannot attach the capture to {}", cgroup.display()))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(wait_for_shutdown())
        .context("cannot wait for signals")?;
    tracing::info!("shutting down");
    drop(capture);
    Ok(())
}

async fn wait_for_shutdown() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
