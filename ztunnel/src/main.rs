//! The `ztunnel` binary: one per node. Loads the eBPF capture, attaches it to the
//! node's cgroup, enrolls the node's ambient pods and proxies their connections
//! until SIGTERM or SIGINT, then drains.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use ztunnel::{
    capture::{self, Capture, CaptureConfig},
    config::{ErrorChain, file::FileSource},
    proxy::{LocalPod, PodManager, PodManagerConfig},
    registry::{Options, Registry, Snapshot},
    settings::{self, ProcessEnv, Settings},
    telemetry,
};

/// ambit's node data plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Local mode: a YAML file of Kubernetes objects (Namespaces, Pods, ...) to run
    /// this node from; watched for changes (overrides AMBIT_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (overrides NODE_NAME).
    #[arg(long)]
    node: Option<String>,
    /// cgroup v2 directory to attach the capture to (overrides AMBIT_NODE_CGROUP;
    /// default: the cgroup v2 root).
    #[arg(long)]
    node_cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps and links (overrides AMBIT_BPF_PIN_DIR;
    /// default: /sys/fs/bpf/ambit/<node>).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Do not shortcut the app <-> ztunnel loopback hop with sk_msg (overrides
    /// AMBIT_SOCKMAP).
    #[arg(long)]
    no_sockmap: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = settings(cli)?;
    telemetry::init(settings.log_format);
    tracing::info!(settings = ?settings, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(settings))
}

fn settings(cli: Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings::from_env(&ProcessEnv).context("invalid settings")?;
    settings.config_file = cli.config.or(settings.config_file);
    settings.node_name = cli.node.or(settings.node_name);
    settings.node_cgroup = cli.node_cgroup.or(settings.node_cgroup);
    settings.pin_dir = cli.pin_dir.or(settings.pin_dir);
    settings.sockmap &= !cli.no_sockmap;
    settings.validate().context("invalid flags")?;
    Ok(settings)
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let node = settings
        .node_name
        .clone()
        .context("the node name is required: --node or NODE_NAME")?;
    let config_file = settings
        .config_file
        .clone()
        .context("a configuration file is required: --config or AMBIT_CONFIG (the Kubernetes source is not wired yet)")?;
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
    let capture_config = CaptureConfig {
        pin_dir: settings.pin_dir(&node),
        cgroup,
        mark: settings::ZTUNNEL_MARK,
        mark_mask: settings::ZTUNNEL_MARK_MASK,
        sockmap: settings.sockmap,
        outbound_port: settings::OUTBOUND_PORT,
        hbone_port: settings::HBONE_PORT,
        inbound_plaintext_port: settings::INBOUND_PLAINTEXT_PORT,
        excluded_nets: Vec::new(),
    };
    // The configuration first: a bad file stops ztunnel before it touches the
    // kernel.
    let registry = Arc::new(Registry::new(Options {
        node: Some(node.clone()),
        ..Options::default()
    }));
    let mut source = FileSource::new(config_file);
    source
        .load(&registry)
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
        .context("cannot load the configuration")?;
    let mut updates = registry.subscribe();
    tokio::spawn(source.run(registry.clone()));

    let mut capture = Capture::load(capture_config).context("cannot start the eBPF capture")?;
    capture.attach().context("cannot attach the eBPF capture")?;
    let mut pods =
        PodManager::new(capture, pod_manager_config()).context("cannot start the proxy")?;
    let desired = local_pods(&registry.snapshot(), &node);
    report(pods.reconcile(&desired).await);
    tracing::info!(pods = desired.len(), "ready");

    let shutdown = wait_for_shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = &mut shutdown => {
                result.context("cannot wait for signals")?;
                break;
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = updates.borrow_and_update().clone();
                report(pods.reconcile(&local_pods(&snapshot, &node)).await);
            }
        }
    }
    tracing::info!(
        drain_s = settings.drain_timeout.as_secs_f64(),
        "shutting down"
    );
    pods.shutdown(settings.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// The pods of `node` that the registry says to capture. A pod whose network
/// namespace is not known yet (Kubernetes mode without the CNI plugin) cannot be
/// captured and is left out.
fn local_pods(snapshot: &Snapshot, node: &str) -> Vec<LocalPod> {
    snapshot
        .enrolled_pods(node)
        .iter()
        .filter_map(|pod| {
            let local = LocalPod::from_enrolled(pod);
            if local.is_none() {
                tracing::debug!(pod = %pod.name, "enrolled pod without a known network namespace");
            }
            local
        })
        .collect()
}

fn pod_manager_config() -> PodManagerConfig {
    PodManagerConfig {
        mark: settings::ZTUNNEL_MARK,
        transparent_mark: settings::TRANSPARENT_MARK,
        route_table: settings::ROUTE_TABLE,
        outbound_port: settings::OUTBOUND_PORT,
        inbound_plaintext_port: settings::INBOUND_PLAINTEXT_PORT,
        own_ports: vec![
            settings::OUTBOUND_PORT,
            settings::INBOUND_PLAINTEXT_PORT,
            settings::HBONE_PORT,
        ],
        connect_timeout: settings::CONNECT_TIMEOUT,
    }
}

fn report(failures: Vec<(String, ztunnel::proxy::Error)>) {
    for (uid, error) in failures {
        tracing::error!(pod = uid, error = %ztunnel::proxy::error_chain(&error), "pod not captured");
    }
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
