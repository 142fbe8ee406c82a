//! The `waypoint` binary: one instance of a waypoint (a Gateway of class
//! `istio-waypoint`), in its own pod. It gets its certificate from the mesh
//! CA, reads the mesh's configuration (the Kubernetes API, or a local file
//! of the same objects), and serves HBONE on 15008 until SIGTERM or SIGINT,
//! then drains.
#![forbid(unsafe_code)]

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use waypoint::{
    jwt::{JwksCache, JwksSettings, TrustRoots},
    proxy::{ProxyConfig, Waypoint, metrics::RequestMetrics},
    readiness::{Readiness, Server},
};
use ztunnel::{
    config::{ErrorChain, file::FileSource, kubernetes::KubeSource},
    identity::Identity,
    registry::{ObjectKey, Options, Registry},
    settings::{self, ProcessEnv, Settings},
};

/// How long the first certificate may take to arrive before start-up fails.
const FIRST_CERTIFICATE_TIMEOUT: Duration = Duration::from_secs(30);

/// ambit's per-namespace L7 proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The Gateway this waypoint is, `<namespace>/<name>` (also from
    /// AMBIT_WAYPOINT_GATEWAY).
    #[arg(long, env = "AMBIT_WAYPOINT_GATEWAY")]
    gateway: String,
    /// The service account its pods run as (its identity); default: the
    /// Gateway's name, as Istio names a waypoint's service account.
    #[arg(long, env = "AMBIT_WAYPOINT_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Local mode: a YAML file of Kubernetes objects, watched for changes
    /// (overrides AMBIT_CONFIG; default: the Kubernetes API).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node it runs on, for endpoint locality (overrides NODE_NAME).
    #[arg(long)]
    node: Option<String>,
    /// A PEM bundle of the CAs trusted for `jwksUri` fetches, instead of the
    /// system's roots (also AMBIT_JWKS_CA_FILE).
    #[arg(long, env = "AMBIT_JWKS_CA_FILE")]
    jwks_ca: Option<PathBuf>,
    /// Seconds a request may wait for its response's head before a 504.
    #[arg(
        long,
        env = "AMBIT_WAYPOINT_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 15.0
    )]
    request_timeout: f64,
    /// Port of the readiness endpoint.
    #[arg(long, default_value_t = settings::READINESS_PORT)]
    readiness_port: u16,
    /// Port of the Prometheus metrics endpoint (`GET /metrics`).
    #[arg(long, default_value_t = settings::STATS_PORT)]
    stats_port: u16,
    /// Port of the HBONE listener.
    #[arg(long, default_value_t = settings::HBONE_PORT)]
    hbone_port: u16,
    /// Port of the admin endpoint (localhost): `/ui`, `/config_dump`,
    /// `/certs`, `/logging`.
    #[arg(long, default_value_t = settings::ADMIN_PORT)]
    admin_port: u16,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::from_env(&ProcessEnv).context("invalid settings")?;
    settings.config_file = cli.config.clone().or(settings.config_file);
    settings.node_name = cli.node.clone().or(settings.node_name);
    let log = ztunnel::telemetry::init(settings.log_format, settings.otlp("waypoint").as_ref());
    ztunnel::telemetry::set_access_sample(settings.access_log_sample);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let workers = settings
        .worker_threads
        .unwrap_or_else(|| settings::default_worker_threads(cores));
    // One worker: the current-thread scheduler, which runs every task on
    // the thread that drives the I/O (no hand-off between threads).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli, settings, log.level()))
}

fn gateway_key(value: &str) -> anyhow::Result<ObjectKey> {
    match value.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(ObjectKey::new(namespace, name))
        }
        _ => anyhow::bail!("--gateway must be <namespace>/<name>, got {value:?}"),
    }
}

async fn run(
    cli: Cli,
    settings: Settings,
    log_level: Option<ztunnel::telemetry::LogLevel>,
) -> anyhow::Result<()> {
    let gateway = gateway_key(&cli.gateway)?;
    if !(cli.request_timeout.is_finite() && cli.request_timeout > 0.0) {
        anyhow::bail!(
            "--request-timeout must be a positive number of seconds, got {}",
            cli.request_timeout
        );
    }
    let service_account = cli
        .service_account
        .clone()
        .unwrap_or_else(|| gateway.name.to_string());
    // TRUST_DOMAIN, as the ztunnels and the CA read it.
    let trust_domain = settings.trust_domain.clone();
    let identity = Identity::from_parts(trust_domain.clone(), &gateway.namespace, &service_account)
        .with_context(|| {
            format!(
                "cannot make an identity for {}/{service_account}",
                gateway.namespace
            )
        })?;

    let registry = Arc::new(Registry::new(Options {
        node: settings.node_name.clone(),
        ..Options::default()
    }));
    match settings.config_file.clone() {
        Some(path) => {
            let mut source = FileSource::new(path);
            source
                .load(&registry)
                .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
                .context("cannot load the configuration")?;
            tokio::spawn(source.run(registry.clone()));
        }
        None => {
            let source = KubeSource::from_environment()
                .await
                .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
                .context("no --config: cannot reach the Kubernetes API")?;
            let mut synced = source.synced();
            tokio::spawn(source.run(registry.clone()));
            // Policies from a partial view would let through what a policy
            // not yet listed denies.
            synced
                .wait_for(|s| *s)
                .await
                .context("the Kubernetes watch ended before its first list")?;
        }
    }
    let mut updates = registry.subscribe();

    let (certs, bundle) = settings.ca.start().with_context(|| {
        format!(
            "cannot use the mesh CA at {} (root {}, token {})",
            settings.ca.address,
            settings.ca.root_file.display(),
            settings.ca.token_file.display()
        )
    })?;
    tokio::time::timeout(FIRST_CERTIFICATE_TIMEOUT, certs.fetch(&identity))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {FIRST_CERTIFICATE_TIMEOUT:?}"))
        .and_then(|r| r.map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e))))
        .with_context(|| format!("cannot get a certificate for {identity}"))?;

    let roots = match &cli.jwks_ca {
        Some(path) => TrustRoots::Pem(
            std::fs::read(path)
                .with_context(|| format!("cannot read --jwks-ca {}", path.display()))?,
        ),
        None => TrustRoots::Native,
    };
    let jwks = JwksCache::https(&roots, JwksSettings::default())
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
        .context("cannot set up JWKS fetching")?;

    let mut metrics = ztunnel::metrics::Metrics::new();
    let request_metrics = RequestMetrics::register(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    metrics.observe_snapshot(&registry.snapshot());
    let waypoint = Waypoint::new(
        gateway.clone(),
        identity.clone(),
        settings.node_name.clone().unwrap_or_default(),
        trust_domain,
        registry.clone(),
        certs,
        bundle,
        jwks,
        ProxyConfig {
            request_timeout: Duration::from_secs_f64(cli.request_timeout),
            idle_timeout: settings.idle_timeout,
            hbone_port: settings::HBONE_PORT,
            connect_timeout: settings::CONNECT_TIMEOUT,
            hbone_guard: Arc::new(ztunnel::hbone::Guard::new(
                settings.hbone.clone(),
                metrics.proxy().hbone_rejections.clone(),
            )),
        },
        request_metrics,
    );
    if !waypoint.is_declared() {
        tracing::warn!(%gateway, "the Gateway is not in the configuration (yet): streams are refused until it is");
    }

    let hbone_addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cli.hbone_port));
    let listener = tokio::net::TcpListener::bind(hbone_addr)
        .await
        .with_context(|| format!("cannot listen on {hbone_addr}"))?;
    let readiness = Readiness::default();
    let readiness_addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cli.readiness_port));
    let server = Server::bind(readiness_addr, readiness.clone())
        .await
        .context("cannot start the readiness endpoint")?;
    tokio::spawn(server.run());
    let stats_addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, cli.stats_port));
    let stats = tokio::net::TcpListener::bind(stats_addr)
        .await
        .with_context(|| format!("cannot listen on {stats_addr} for metrics"))?;
    tokio::spawn(ztunnel::metrics::serve(stats, metrics.clone()));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], cli.admin_port));
    match ztunnel::admin::bind(admin_addr) {
        Ok(admin) => {
            let state = ztunnel::admin::AdminState {
                registry: registry.clone(),
                certs: waypoint.certs.clone(),
                ready: readiness.clone(),
                log_level,
                connections: None,
                capture: None,
                flows: Some(waypoint.flows.clone()),
                trust_domain: waypoint.trust_domain.to_string(),
            };
            tokio::spawn(ztunnel::admin::serve(admin, state));
        }
        Err(error) => tracing::warn!(error = %ErrorChain(&error), "admin endpoint unavailable"),
    }
    let serving = tokio::spawn(waypoint.clone().serve(listener));
    {
        // Unused upstream connections close after their idle timeout.
        let waypoint = waypoint.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let closed = waypoint.close_idle_upstreams();
                if closed > 0 {
                    tracing::debug!(closed, "idle upstream connections closed");
                }
            }
        });
    }
    readiness.set(true);
    tracing::info!(%gateway, %identity, hbone = %hbone_addr, readiness = %readiness_addr, metrics = %stats_addr, admin = %admin_addr, "ready");

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
                waypoint.update_policies(&snapshot);
                metrics.observe_snapshot(&snapshot);
                tracing::info!(generation = snapshot.generation(), "configuration applied");
            }
        }
    }
    tracing::info!(
        drain_s = settings.drain_timeout.as_secs_f64(),
        active = waypoint.active(),
        "shutting down"
    );
    readiness.set(false);
    waypoint.drain();
    let _ = serving.await;
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    while waypoint.active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(left = waypoint.active(), "stopped");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_flag_is_namespace_slash_name() {
        let key = gateway_key("demo/wp").unwrap();
        assert_eq!(key, ObjectKey::new("demo", "wp"));
        for bad in ["wp", "/wp", "demo/", "a/b/c", ""] {
            let error = gateway_key(bad).unwrap_err().to_string();
            assert!(error.contains("<namespace>/<name>"), "{bad}: {error}");
        }
    }
}
