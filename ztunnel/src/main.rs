//! The `ztunnel` binary, one per node: loads the eBPF capture, attaches it to the
//! node's cgroup, enrolls the node's ambient pods and carries their connections
//! (HBONE with mTLS into the mesh) until SIGTERM or SIGINT, then drains.
//! `ztunnel ca` runs the mesh certificate authority instead.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ztunnel::{
    admin::AdminState,
    capture::{self, Capture, CaptureConfig},
    config::{ErrorChain, file::FileSource, kubernetes::KubeSource},
    identity::{
        BundleWatcher, CertManager, ManagerConfig, TrustDomain,
        auth::{NodeAuthorizer, NodeName},
        ca::{
            LocalCa,
            server::{CaArgs, CaServerConfig},
        },
        client::CaClient,
    },
    metrics::Metrics,
    proxy::{
        Desired, Mesh, NetnsSource, PodManager, PodManagerConfig,
        cni::{self, Enrollments},
    },
    readiness::Readiness,
    registry::{ObjectKey, Options, Registry},
    settings::{self, ProcessEnv, Settings},
    telemetry,
};

/// ambit's node data plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mesh certificate authority.
    Ca {
        #[command(flatten)]
        ca: CaArgs,
        /// Local mode: authorize nodes from this YAML file of Kubernetes objects
        /// (default: watch the Kubernetes API).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Flags of the node data plane (the default command).
#[derive(Debug, Args)]
struct NodeArgs {
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
    /// Shortcut the app <-> ztunnel loopback hop with sk_msg (overrides
    /// AMBIT_SOCKMAP; off by default, see docs/architecture.md).
    #[arg(long)]
    sockmap: bool,
    /// Run the mesh CA in-process from this directory of key material (created
    /// with a new root when empty), shared by the nodes of one mesh.
    /// Development only: every node then holds the root key. Without it,
    /// ztunnel is a client of the CA at CA_ADDRESS.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
}

/// glibc's allocator, counting what it holds, so the heap check reads a
/// counter instead of walking the allocator's free lists (`ztunnel::heap`).
#[cfg(target_env = "gnu")]
#[global_allocator]
static ALLOCATOR: ztunnel::heap::Counting = ztunnel::heap::Counting;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = settings(&cli.node)?;
    let log = telemetry::init(settings.log_format, settings.otlp("ztunnel").as_ref());
    telemetry::set_access_sample(settings.access_log_sample);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            settings
                .worker_threads
                .unwrap_or_else(|| settings::default_worker_threads(cores)),
        )
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Some(Command::Ca { ca, config }) => runtime.block_on(run_ca(ca, config)),
        None => {
            tracing::info!(settings = ?settings, "starting");
            runtime.block_on(run_node(settings, cli.node.ca_dir, log.level()))
        }
    }
}

fn settings(cli: &NodeArgs) -> anyhow::Result<Settings> {
    let mut settings = Settings::from_env(&ProcessEnv).context("invalid settings")?;
    settings.config_file = cli.config.clone().or(settings.config_file);
    settings.node_name = cli.node.clone().or(settings.node_name);
    settings.node_cgroup = cli.node_cgroup.clone().or(settings.node_cgroup);
    settings.pin_dir = cli.pin_dir.clone().or(settings.pin_dir);
    settings.sockmap |= cli.sockmap;
    settings.validate().context("invalid flags")?;
    Ok(settings)
}

/// Authorizes CA requests by the registry: a node may get certificates only for
/// service accounts with a pod on it.
struct RegistryAuthorizer(Arc<Registry>);

impl NodeAuthorizer for RegistryAuthorizer {
    fn has_pod_on_node(&self, namespace: &str, service_account: &str, node: &NodeName) -> bool {
        self.0
            .snapshot()
            .service_account_on_node(&ObjectKey::new(namespace, service_account), node.as_str())
    }
}

async fn load_file(registry: &Arc<Registry>, path: PathBuf) -> anyhow::Result<()> {
    let mut source = FileSource::new(path);
    source
        .load(registry)
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
        .context("cannot load the configuration")?;
    tokio::spawn(source.run(registry.clone()));
    Ok(())
}

async fn run_ca(args: CaArgs, config: Option<PathBuf>) -> anyhow::Result<()> {
    let ca_config = args.to_config().context("invalid ztunnel ca flags")?;
    let registry = Arc::new(Registry::new(Options::default()));
    match config {
        Some(path) => load_file(&registry, path).await?,
        None => {
            let source = KubeSource::from_environment()
                .await
                .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
                .context("cannot reach the Kubernetes API")?;
            tokio::spawn(source.run(registry.clone()));
        }
    }
    let shutdown = async {
        let _ = wait_for_shutdown().await;
    };
    ztunnel::identity::ca::server::run(ca_config, Arc::new(RegistryAuthorizer(registry)), shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
        .context("the CA failed")
}

/// Local mode's identity: an in-process CA from `dir`, and this node's
/// certificate manager as its client.
async fn local_identity(
    dir: PathBuf,
    node: &str,
    trust_domain: &TrustDomain,
    registry: &Arc<Registry>,
) -> anyhow::Result<(LocalCa, CertManager, ztunnel::identity::TrustBundle)> {
    let mut ca_config = CaServerConfig::local(&dir);
    ca_config.trust_domain = trust_domain.to_string();
    // Each node runs its own: an ephemeral port avoids clashes between a ztunnel
    // and its successor during a restart.
    ca_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let authorizer = Arc::new(RegistryAuthorizer(registry.clone()));
    let ca = LocalCa::start(ca_config, authorizer)
        .await
        .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
        .with_context(|| format!("cannot start the local CA from {}", dir.display()))?;
    let token = ca
        .add_node(&NodeName::new(node))
        .context("cannot register this node with the CA")?;
    let bundle = ca
        .trust_bundle()
        .context("cannot read the CA's trust bundle")?;
    // Roots change (a rotation adds one, then drops the old): follow the file.
    tokio::spawn(
        BundleWatcher::new(
            bundle.clone(),
            ca.bundle_path(),
            settings::TRUST_BUNDLE_POLL_INTERVAL,
        )
        .run(),
    );
    let client = CaClient::new(ca.client_config(token), bundle.clone())
        .context("cannot create the CA client")?;
    let certs = CertManager::new(Arc::new(client), bundle.clone(), ManagerConfig::default());
    Ok((ca, certs, bundle))
}

async fn run_node(
    settings: Settings,
    ca_dir: Option<PathBuf>,
    log_level: Option<telemetry::LogLevel>,
) -> anyhow::Result<()> {
    let node = settings
        .node_name
        .clone()
        .context("the node name is required: --node or NODE_NAME")?;

    if let Some(dir) = &ca_dir {
        tracing::warn!(
            ca_dir = %dir.display(),
            "--ca-dir runs the mesh CA inside this node process: the node holds the mesh root key and the CA's node authorization protects nothing; a development mode, not for production (docs/identity.md)"
        );
    }
    // Before anything else: a host that cannot run the capture stops here, with
    // the missing piece named.
    capture::check_host().context("cannot start the eBPF capture")?;
    match capture::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    let cgroups = node_cgroups(&settings)?;
    // The configuration first: a bad file stops ztunnel before it touches the
    // kernel.
    let registry = Arc::new(Registry::new(Options {
        node: Some(node.clone()),
        ..Options::default()
    }));
    let mut netns_source = match settings.config_file.clone() {
        Some(path) => {
            load_file(&registry, path).await?;
            NetnsSource::config()
        }
        None => {
            let source = KubeSource::from_environment()
                .await
                .map_err(|e| anyhow::anyhow!("{}", ErrorChain(&e)))
                .context("no --config: cannot reach the Kubernetes API")?;
            let synced = source.synced();
            tokio::spawn(source.run(registry.clone()));
            // Enrolling from a partial view would unenroll the pods a previous
            // ztunnel left captured: wait for the first full list.
            if !wait_for_sync(synced).await? {
                return Ok(());
            }
            // A pod's object names nothing about its namespace that can be
            // trusted: its processes do.
            NetnsSource::processes(&settings.host_proc).with_context(|| {
                format!(
                    "cannot read {} to find the pods' namespaces",
                    settings.host_proc.display()
                )
            })?
        }
    };
    let mut updates = registry.subscribe();
    // The in-process CA of --ca-dir lives as long as this binding.
    let (_ca, certs, bundle) = match ca_dir {
        Some(dir) => {
            let (ca, certs, bundle) =
                local_identity(dir, &node, &settings.trust_domain, &registry).await?;
            (Some(ca), certs, bundle)
        }
        None => {
            let (certs, bundle) = settings.ca.start().with_context(|| {
                format!(
                    "cannot use the mesh CA at {} (root {}, token {})",
                    settings.ca.address,
                    settings.ca.root_file.display(),
                    settings.ca.token_file.display()
                )
            })?;
            (None, certs, bundle)
        }
    };
    let mut metrics = Metrics::new();
    let map_metrics = ztunnel::metrics::MapMetrics::register(metrics.registry_mut());
    #[cfg(target_env = "gnu")]
    if settings.heap_trim {
        // What a burst of traffic left free on the heap goes back to the
        // kernel (glibc keeps it resident otherwise).
        let released = prometheus_client::metrics::counter::Counter::default();
        metrics.registry_mut().register(
            "ambit_heap_released_bytes",
            "Free heap pages given back to the kernel after a burst of traffic",
            released.clone(),
        );
        tokio::spawn(ztunnel::heap::run(released));
    }
    let metrics = Arc::new(metrics);
    metrics.observe_snapshot(&registry.snapshot());
    let mesh = Arc::new(Mesh {
        node: node.clone(),
        registry: registry.clone(),
        certs,
        bundle,
        trust_domain: settings.trust_domain.clone(),
        router: Default::default(),
        policies: Default::default(),
        metrics: metrics.proxy().clone(),
        open: Default::default(),
        flows: Default::default(),
        hbone_guard: Arc::new(ztunnel::hbone::Guard::new(
            settings.hbone.clone(),
            metrics.proxy().hbone_rejections.clone(),
        )),
    });
    mesh.update_policies(&registry.snapshot());
    {
        // Certificate expiry, read at each scrape (identities come and go
        // with the node's pods: the gauge holds those of now).
        let (certs, proxy) = (mesh.certs.clone(), metrics.proxy().clone());
        metrics.on_scrape(move || {
            proxy.observe_pools();
            let now = std::time::SystemTime::now();
            proxy.certificate_expiry.clear();
            for (identity, not_after) in certs.expiries() {
                let left = match not_after.duration_since(now) {
                    Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
                };
                proxy
                    .certificate_expiry
                    .get_or_create(&ztunnel::metrics::IdentityLabel { identity })
                    .set(left);
            }
        });
    }
    serve_metrics(&metrics);

    capture::add_probe_addresses()
        .await
        .context("cannot add the health probe addresses to the node's loopback")?;
    let mut capture = Capture::load(capture_config(&settings, &node, cgroups))
        .context("cannot start the eBPF capture")?;
    capture.attach().context("cannot attach the eBPF capture")?;
    let pin_dir = capture.config().pin_dir.clone();
    // The start-up check may have turned the shortcut off.
    let sockmap = capture.config().sockmap;
    let mut pods = PodManager::new(capture, pod_manager_config(&settings), mesh.clone())
        .context("cannot start the proxy")?;
    if sockmap {
        watch_tcp_pressure(&pin_dir, map_metrics.clone());
    }
    let maps = watch_maps(pin_dir, map_metrics, pods.shortcut_reads());
    let cni_socket = settings.cni_socket(settings.config_file.is_none());
    let mut cni_requests = start_cni(cni_socket.as_deref(), &registry.snapshot())?;
    let mut enrollments = Enrollments::default();
    let mut desired = netns_source.desired(&registry.snapshot(), &node);
    let mut stale_released = false;
    let failures = pods.reconcile(&desired.pods).await;
    release_stale(&mut pods, &mut stale_released, &desired, &failures);
    report(failures);
    let ready = Readiness::default();
    // The kubelet's probe (15021, all addresses: the node's own with
    // hostNetwork); a ztunnel that cannot bind it still runs.
    let probe_addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, settings::READINESS_PORT));
    let probe_server = match ztunnel::readiness::Server::bind(probe_addr, ready.clone()).await {
        Ok(server) => Some(tokio::spawn(server.run()).abort_handle()),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "readiness endpoint unavailable");
            None
        }
    };
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], settings::ADMIN_PORT));
    match ztunnel::admin::bind(admin_addr) {
        Ok(listener) => {
            let state = AdminState {
                registry: registry.clone(),
                certs: mesh.certs.clone(),
                ready: ready.clone(),
                log_level: log_level.clone(),
                connections: Some({
                    let open = mesh.open.clone();
                    ztunnel::admin::JsonView(Arc::new(move || {
                        serde_json::to_value(open.snapshot()).unwrap_or_default()
                    }))
                }),
                flows: Some(mesh.flows.clone()),
                trust_domain: settings.trust_domain.to_string(),
                capture: Some({
                    let enrolled = pods.enrolled_view();
                    ztunnel::admin::JsonView(Arc::new(move || {
                        serde_json::json!({
                            "enrolled_pods": &**enrolled.load(),
                            "maps": &**maps.load(),
                        })
                    }))
                }),
            };
            tokio::spawn(ztunnel::admin::serve(listener, state));
        }
        Err(error) => tracing::warn!(error = %ErrorChain(&error), "admin endpoint unavailable"),
    }
    ready.set(true);
    claim_node(&node, ready.clone(), probe_server);
    tracing::info!(pods = desired.pods.len(), admin = %admin_addr, readiness = %probe_addr, "ready");

    let shutdown = wait_for_shutdown();
    tokio::pin!(shutdown);
    loop {
        // What woke the loop; a new configuration is reported once applied.
        let applied = tokio::select! {
            result = &mut shutdown => {
                result.context("cannot wait for signals")?;
                break;
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = updates.borrow_and_update().clone();
                mesh.update_policies(&snapshot);
                metrics.observe_snapshot(&snapshot);
                enrolled_namespaces(cni_socket.as_deref(), &snapshot);
                Some(snapshot.generation())
            }
            // The CNI plugin names a new pod's namespace.
            Some(request) = cni_requests.recv() => {
                enrollments.push(request, settings::CNI_ENROLL_TIMEOUT);
                None
            }
            // Pods whose namespace is not known yet (their processes have not
            // started), and CNI requests whose pod is not known yet, are
            // looked at again.
            () = tokio::time::sleep(settings::POD_NETNS_RETRY),
                if desired.unresolved > 0 || enrollments.is_waiting() => None,
        };
        let failures;
        (desired, failures) = enrollments
            .settle(cni::Context {
                netns: &mut netns_source,
                pods: &mut pods,
                snapshot: &registry.snapshot(),
                node: &node,
            })
            .await;
        release_stale(&mut pods, &mut stale_released, &desired, &failures);
        report(failures);
        if let Some(generation) = applied {
            // From here on, new connections see this generation.
            tracing::info!(generation, "configuration applied");
        }
    }
    // Unready first, so that no probe sends a new pod's traffic here.
    ready.set(false);
    tracing::info!(
        drain_s = settings.drain_timeout.as_secs_f64(),
        "shutting down"
    );
    pods.shutdown(settings.drain_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// Listens on the CNI socket, when there is one; its requests arrive on
/// the returned channel (which never yields without a socket).
fn start_cni(
    socket: Option<&std::path::Path>,
    snapshot: &ztunnel::registry::Snapshot,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<cni::Incoming>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let Some(path) = socket else {
        // Kept open: the channel stays pending instead of closing.
        std::mem::forget(tx);
        return Ok(rx);
    };
    let listener = cni::bind(path)
        .with_context(|| format!("cannot listen on the CNI socket {}", path.display()))?;
    enrolled_namespaces(Some(path), snapshot);
    tracing::info!(socket = %path.display(), "CNI socket ready");
    tokio::spawn(cni::serve(listener, tx));
    Ok(rx)
}

/// Rewrites the enrolled-namespaces file beside the CNI socket.
fn enrolled_namespaces(socket: Option<&std::path::Path>, snapshot: &ztunnel::registry::Snapshot) {
    let Some(dir) = socket.and_then(std::path::Path::parent) else {
        return;
    };
    if let Err(error) = cni::write_enrolled_namespaces(dir, snapshot) {
        tracing::warn!(%error, dir = %dir.display(), "cannot write the enrolled namespaces for the CNI plugin");
    }
}

/// The cgroups the capture needs to know.
struct NodeCgroups {
    /// Where the programs attach (the node's pods are below it).
    node: PathBuf,
    /// ztunnel's own.
    own: PathBuf,
    /// The kubelet's, if there is one.
    probe: Option<PathBuf>,
}

fn node_cgroups(settings: &Settings) -> anyhow::Result<NodeCgroups> {
    let mount = capture::cgroup2_mount()
        .context("cannot find the cgroup v2 hierarchy")?
        .with_context(|| {
            format!(
                "no cgroup v2 hierarchy is mounted; set {}",
                settings::NODE_CGROUP_ENV
            )
        })?;
    let own = capture::own_cgroup(&mount).context("cannot find ztunnel's own cgroup")?;
    let probe = settings.probe_cgroup.as_ref().map(|p| mount.join(p));
    let probe = match probe {
        Some(path) if path.is_dir() => Some(path),
        Some(path) => {
            tracing::warn!(
                probe_cgroup = %path.display(),
                "the kubelet's cgroup does not exist: health probes get no exemption, so STRICT pods refuse them; set {}",
                settings::PROBE_CGROUP_ENV
            );
            None
        }
        None => None,
    };
    Ok(NodeCgroups {
        node: settings.node_cgroup.clone().unwrap_or(mount),
        own,
        probe,
    })
}

fn capture_config(settings: &Settings, node: &str, cgroups: NodeCgroups) -> CaptureConfig {
    CaptureConfig {
        pin_dir: settings.pin_dir(node),
        cgroup: cgroups.node,
        own_cgroup: cgroups.own,
        probe_cgroup: cgroups.probe,
        sockmap: settings.sockmap,
        shortcut_cap: settings.sockmap_cap,
        shortcut_bulk: settings.sockmap_bulk,
        sockmap_ignore_read_check: settings.sockmap_ignore_read_check,
        outbound_port: settings::OUTBOUND_PORT,
        hbone_port: settings::HBONE_PORT,
        inbound_plaintext_port: settings::INBOUND_PLAINTEXT_PORT,
        excluded_nets: Vec::new(),
    }
}

/// Once per process, after the first reconcile that captured every pod to
/// capture, releases what a previous ztunnel left enrolled for pods that are
/// gone (see [`PodManager::release_stale`]).
fn release_stale(
    pods: &mut PodManager,
    done: &mut bool,
    desired: &Desired,
    failures: &[(String, ztunnel::proxy::Error)],
) {
    if *done || desired.unresolved > 0 || !failures.is_empty() {
        return;
    }
    *done = true;
    match pods.release_stale() {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "released stale enrollments"),
        Err(error) => {
            tracing::warn!(error = %ztunnel::proxy::error_chain(&error), "cannot release stale enrollments");
        }
    }
}

/// Waits until the Kubernetes source has listed every kind once; `false`
/// when a shutdown signal came first.
async fn wait_for_sync(mut synced: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<bool> {
    let shutdown = wait_for_shutdown();
    tokio::pin!(shutdown);
    let mut waited = 0u64;
    loop {
        tokio::select! {
            result = synced.wait_for(|s| *s) => {
                result.context("the Kubernetes source stopped")?;
                return Ok(true);
            }
            result = &mut shutdown => {
                result.context("cannot wait for signals")?;
                return Ok(false);
            }
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
                waited += 10;
                tracing::warn!(waited_s = waited, "waiting for the first list from the Kubernetes API");
            }
        }
    }
}

fn pod_manager_config(settings: &Settings) -> PodManagerConfig {
    PodManagerConfig {
        mark: settings::ZTUNNEL_MARK,
        transparent_mark: settings::TRANSPARENT_MARK,
        route_table: settings::ROUTE_TABLE,
        sysctl_net: settings.sysctl_net.clone(),
        outbound_port: settings::OUTBOUND_PORT,
        inbound_plaintext_port: settings::INBOUND_PLAINTEXT_PORT,
        hbone_port: settings::HBONE_PORT,
        own_ports: vec![
            settings::OUTBOUND_PORT,
            settings::INBOUND_PLAINTEXT_PORT,
            settings::HBONE_PORT,
        ],
        connect_timeout: settings::CONNECT_TIMEOUT,
        idle_timeout: settings.idle_timeout,
    }
}

fn report(failures: Vec<(String, ztunnel::proxy::Error)>) {
    for (uid, error) in failures {
        tracing::error!(pod = uid, error = %ztunnel::proxy::error_chain(&error), "pod not captured");
    }
}

/// Serves the metrics on every address of the node (Prometheus scrapes them),
/// IPv4 only where IPv6 is off.
/// Claims node `node` for this ztunnel: an abstract unix socket named after
/// the node, in the node's network namespace, is held by the ztunnel that
/// runs the node now. A newer one finds it taken, connects to it (the
/// signal), and takes the name once the older one has let it go. The older
/// one then turns unready and closes its readiness port (during a surge both
/// listen on it: from then on only the newest answers), and keeps proxying
/// its connections until it is stopped and drains.
fn claim_node(node: &str, ready: Readiness, probe_server: Option<tokio::task::AbortHandle>) {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ambit/ztunnel/{node}");
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(addr) => addr,
        Err(error) => {
            tracing::warn!(%error, "cannot name the node's ztunnel socket");
            return;
        }
    };
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(listener) => break listener,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    if tokio::time::Instant::now() > deadline {
                        tracing::warn!(
                            "the ztunnel running this node does not let go of it; readiness stays with both"
                        );
                        return;
                    }
                    // Tell the one holding it, then try again.
                    let _ = std::os::unix::net::UnixStream::connect_addr(&addr);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim the node for this ztunnel");
                    return;
                }
            }
        };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot claim the node for this ztunnel");
                return;
            }
        };
        if listener.accept().await.is_ok() {
            ready.set(false);
            // Every probe goes to the successor from now on.
            if let Some(server) = probe_server {
                server.abort();
            }
            tracing::info!(
                "a newer ztunnel takes over this node: unready; connections keep running until this one is stopped"
            );
        }
        // Dropped: the name is free for the successor.
    });
}

/// Reads how full the capture's maps are every [`settings::MAP_OCCUPANCY_PERIOD`],
/// on a blocking thread (a walk costs a system call per entry), into the
/// gauges and the returned view. A failing read is logged once until it works
/// again.
fn watch_maps(
    pin_dir: PathBuf,
    metrics: ztunnel::metrics::MapMetrics,
    shortcut_reads: Option<capture::ShortcutReads>,
) -> Arc<arc_swap::ArcSwap<Vec<capture::MapOccupancy>>> {
    let view = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
    let published = view.clone();
    tokio::spawn(async move {
        let mut failing = false;
        let mut period = tokio::time::interval(settings::MAP_OCCUPANCY_PERIOD);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            period.tick().await;
            let dir = pin_dir.clone();
            let read = tokio::task::spawn_blocking(move || {
                Ok::<_, capture::Error>((
                    capture::map_occupancy(&dir)?,
                    capture::shortcut_stats(&dir)?,
                ))
            })
            .await;
            match read {
                Ok(Ok((maps, shortcut))) => {
                    for map in &maps {
                        metrics.observe(map.name, map.entries, map.capacity);
                    }
                    metrics.observe_shortcut([
                        shortcut.redirected_bytes,
                        shortcut.tcp_bytes,
                        shortcut.to_tcp,
                        shortcut.to_redirect,
                        shortcut_reads
                            .as_ref()
                            .map_or(0, capture::ShortcutReads::left_for_tcp),
                    ]);
                    published.store(Arc::new(maps));
                    failing = false;
                }
                Ok(Err(error)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %ErrorChain(&error), "cannot read the eBPF maps' occupancy");
                }
                Ok(Err(_)) => {}
                Err(error) => tracing::warn!(%error, "the eBPF map reader failed"),
            }
        }
    });
    view
}

/// While the shortcut is on, reads the node's TCP memory every
/// [`settings::TCP_PRESSURE_PERIOD`] and stops new redirects while it is past
/// `tcp_mem[0]`: what the shortcut would queue then goes through TCP's own
/// limits. A failing read turns redirects off (fail safe) and is logged once.
fn watch_tcp_pressure(pin_dir: &std::path::Path, metrics: ztunnel::metrics::MapMetrics) {
    let limits = match capture::TcpMemory::limits() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the node's TCP memory limits: the sk_msg shortcut redirects nothing");
            [0; 3]
        }
    };
    let mut pressure = match capture::TcpPressure::open(pin_dir) {
        Ok(pressure) => pressure,
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "cannot watch TCP memory for the sk_msg shortcut");
            return;
        }
    };
    tokio::spawn(async move {
        let mut failing = false;
        let mut period = tokio::time::interval(settings::TCP_PRESSURE_PERIOD);
        period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            period.tick().await;
            let on = match capture::TcpMemory::pages() {
                Ok(pages) => {
                    failing = false;
                    capture::TcpMemory { pages, limits }.under_pressure()
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read the node's TCP memory: the sk_msg shortcut redirects nothing until it can");
                    }
                    failing = true;
                    true
                }
            };
            match pressure.set(on) {
                Ok(true) => {
                    metrics.observe_tcp_pressure(on);
                    tracing::info!(
                        pressure = on,
                        "TCP memory pressure changed: the sk_msg shortcut {}",
                        if on {
                            "redirects nothing"
                        } else {
                            "redirects again"
                        }
                    );
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "cannot switch the sk_msg shortcut for TCP memory pressure");
                }
            }
        }
    });
}

fn serve_metrics(metrics: &Arc<Metrics>) {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, settings::STATS_PORT));
    let any4 = SocketAddr::from(([0, 0, 0, 0], settings::STATS_PORT));
    match ztunnel::admin::bind(any6).or_else(|_| ztunnel::admin::bind(any4)) {
        Ok(listener) => {
            tokio::spawn(ztunnel::metrics::serve(listener, metrics.clone()));
        }
        Err(error) => tracing::warn!(error = %ErrorChain(&error), "metrics endpoint unavailable"),
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
