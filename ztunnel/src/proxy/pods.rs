//! Enrollment: the pods of this node whose traffic ztunnel captures, with their
//! listeners, and the order in which capture and listeners are switched on and
//! off so that no connection escapes and none is cut.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use std::os::fd::AsFd;

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::task::TaskTracker;

use super::{
    Error, Mesh, SocketFactory, accept, access::Direction, hbone_inbound, inbound, outbound,
    socket::PodSockets,
};
use crate::{
    capture::{self, Capture, Netns, NetnsCookie, NetnsId, OrigDstTable, TransparentFlows},
    registry::EnrolledPod,
};

/// A pod of this node that should be captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// The pod's uid: the identity of an enrollment.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's service account: its identity in the mesh.
    pub service_account: String,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    /// The namespace `netns` must still be when it is opened, when it was
    /// found through the pod's processes (a pid may be reused meanwhile).
    pub netns_id: Option<NetnsId>,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
}

impl LocalPod {
    /// The pod to capture for an enrolled pod of the registry: in the
    /// namespace `found` (from the pod's processes), else the one the
    /// configuration names; `None` when neither is known.
    pub fn from_enrolled(pod: &EnrolledPod, found: Option<(PathBuf, NetnsId)>) -> Option<Self> {
        let (netns, netns_id) = match found {
            Some((path, id)) => (path, Some(id)),
            None => (pod.netns.clone()?, None),
        };
        Some(Self {
            uid: pod.uid.to_string(),
            namespace: pod.namespace.as_str().to_owned(),
            name: pod.name.to_string(),
            service_account: pod.service_account.as_str().to_owned(),
            netns,
            netns_id,
            ips: pod.ips.iter().collect(),
        })
    }
}

/// Settings of the [`PodManager`].
#[derive(Debug, Clone)]
pub struct PodManagerConfig {
    /// ztunnel's `SO_MARK`.
    pub mark: u32,
    /// The mark of transparent sockets (see `settings::TRANSPARENT_MARK`).
    pub transparent_mark: u32,
    /// Routing table for the transparent return path inside pods.
    pub route_table: u32,
    /// Where the network sysctls are written (`settings::SYSCTL_NET_ENV`).
    pub sysctl_net: PathBuf,
    /// Outbound listener port.
    pub outbound_port: u16,
    /// Inbound plaintext listener port.
    pub inbound_plaintext_port: u16,
    /// Inbound HBONE listener port.
    pub hbone_port: u16,
    /// Ports of ztunnel's own listeners: connections to them are loops.
    pub own_ports: Vec<u16>,
    /// How long to wait for a connection to the destination.
    pub connect_timeout: Duration,
    /// A proxied connection without traffic for this long is closed.
    pub idle_timeout: Duration,
}

/// Shared by every connection of the node.
#[derive(Debug)]
pub struct ProxyInputs {
    /// Original destinations of redirected connections.
    pub orig_dst: OrigDstTable,
    /// With the sk_msg shortcut on: where to report what ztunnel read from
    /// the applications' connections.
    pub shortcut_reads: Option<capture::ShortcutReads>,
    /// Transparent connects in flight (see [`TransparentFlows`]).
    pub flows: TransparentFlows,
    /// Every proxied connection, so shutdown can drain them.
    pub connections: TaskTracker,
    /// See [`PodManagerConfig::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`PodManagerConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`PodManagerConfig::own_ports`].
    pub own_ports: Vec<u16>,
    /// See [`PodManagerConfig::hbone_port`].
    pub hbone_port: u16,
    /// Identity, registry and routing.
    pub mesh: Arc<Mesh>,
}

/// What a connection handler knows about its pod.
#[derive(Debug)]
pub struct PodContext {
    /// namespace/name.
    pub name: String,
    /// The pod's namespace and name in the registry.
    pub key: crate::registry::ObjectKey,
    /// The pod's identity (its service account's).
    pub identity: crate::identity::Identity,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The pod's pooled HBONE connections (they leave from its address).
    pub pool: crate::hbone::Pool,
    /// The pod's network namespace cookie.
    pub cookie: NetnsCookie,
    /// Creates the pod's sockets.
    pub sockets: Arc<dyn SocketFactory>,
    /// Node-wide inputs.
    pub inputs: Arc<ProxyInputs>,
}

/// The listeners of one pod, before they are served.
struct PodListeners {
    outbound: Vec<tokio::net::TcpListener>,
    plaintext: tokio::net::TcpListener,
    hbone: tokio::net::TcpListener,
}

impl PodListeners {
    /// Starts an accept loop per listener.
    fn spawn(
        self,
        context: &Arc<PodContext>,
        stopped: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut loops = vec![
            tokio::spawn(accept::serve(
                self.plaintext,
                context.clone(),
                stopped.clone(),
                Direction::Inbound,
                inbound::handle,
            )),
            tokio::spawn(accept::serve(
                self.hbone,
                context.clone(),
                stopped.clone(),
                Direction::Inbound,
                hbone_inbound::handle,
            )),
        ];
        for listener in self.outbound {
            loops.push(tokio::spawn(accept::serve(
                listener,
                context.clone(),
                stopped.clone(),
                Direction::Outbound,
                outbound::handle,
            )));
        }
        loops
    }
}

/// An enrolled pod, as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CapturedPod {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
    /// The identity its connections carry.
    pub identity: String,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Its network namespace's cookie (the `ENROLLED` map's key).
    pub netns_cookie: u64,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// The enrolled pods, for readers outside the task that owns the
/// [`PodManager`] (the admin endpoint).
pub type EnrolledView = Arc<arc_swap::ArcSwap<Vec<CapturedPod>>>;

struct Enrolled {
    pod: LocalPod,
    identity: crate::identity::Identity,
    cookie: NetnsCookie,
    stop: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
}

/// Owns the capture and the enrolled pods of this node: a background task
/// drives it with the desired set of pods ([`PodManager::reconcile`]).
pub struct PodManager {
    capture: Capture,
    config: PodManagerConfig,
    inputs: Arc<ProxyInputs>,
    pods: HashMap<String, Enrolled>,
    /// `pods`, published after each change.
    view: EnrolledView,
    /// The node's own network namespaces (ztunnel's and pid 1's): never
    /// enrolled, whatever the input names.
    host_netns: Vec<NetnsCookie>,
}

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager")
            .field("pods", &self.pods.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PodManager {
    /// With the sk_msg shortcut on: the reports of what ztunnel read, and its
    /// count of bulk connections taken off the shortcut.
    pub fn shortcut_reads(&self) -> Option<capture::ShortcutReads> {
        self.inputs.shortcut_reads.clone()
    }

    /// Takes over an attached capture.
    pub fn new(capture: Capture, config: PodManagerConfig, mesh: Arc<Mesh>) -> Result<Self, Error> {
        let inputs = Arc::new(ProxyInputs {
            orig_dst: capture.orig_dst_table()?,
            shortcut_reads: capture.shortcut_reads()?,
            flows: capture.transparent_flows()?,
            connections: TaskTracker::new(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            own_ports: config.own_ports.clone(),
            hbone_port: config.hbone_port,
            mesh,
        });
        let mut host_netns = vec![capture::own_netns_cookie()?];
        // pid 1's, when this process sees it (the host's, or the container's
        // init, which is in the host's with hostNetwork).
        if let Ok(init) = capture::netns_cookie(std::path::Path::new("/proc/1/ns/net")) {
            host_netns.push(init);
        }
        Ok(Self {
            capture,
            config,
            inputs,
            pods: HashMap::new(),
            view: EnrolledView::default(),
            host_netns,
        })
    }

    /// The uids of the enrolled pods.
    pub fn enrolled(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    /// The enrolled pods, kept up to date, sorted by `namespace/name`.
    pub fn enrolled_view(&self) -> EnrolledView {
        self.view.clone()
    }

    /// Makes the enrolled set equal to `desired`: pods that left or changed are
    /// unenrolled, new ones enrolled. A pod that fails is logged and skipped; the
    /// others proceed. Returns the failures.
    pub async fn reconcile(&mut self, desired: &[LocalPod]) -> Vec<(String, Error)> {
        let mut failures = Vec::new();
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, running)| !desired.iter().any(|p| &p.uid == *uid && *p == running.pod))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Err(error) = self.unenroll(&uid) {
                failures.push((uid, error));
            }
        }
        let new: Vec<&LocalPod> = desired
            .iter()
            .filter(|p| !self.pods.contains_key(&p.uid))
            .collect();
        for pod in new {
            if let Err(error) = self.enroll(pod.clone()).await {
                tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %super::error_chain(&error), "cannot enroll pod");
                failures.push((pod.uid.clone(), error));
            }
        }
        failures
    }

    /// Starts capturing `pod`: routing for transparent connects, listeners, then
    /// the capture itself (so a redirect never points at nothing).
    pub async fn enroll(&mut self, pod: LocalPod) -> Result<(), Error> {
        let name = format!("{}/{}", pod.namespace, pod.name);
        let mesh = &self.inputs.mesh;
        let identity = crate::identity::Identity::from_parts(
            mesh.trust_domain.clone(),
            &pod.namespace,
            &pod.service_account,
        )
        .map_err(|source| Error::Identity {
            pod: name.clone(),
            source,
        })?;
        // Ask for the certificate now, so the first connection does not wait.
        let certs = mesh.certs.clone();
        let warm = identity.clone();
        tokio::spawn(async move {
            if let Err(error) = certs.fetch(&warm).await {
                tracing::warn!(identity = %warm, error = %super::error_chain(&error), "no certificate yet");
            }
        });
        let netns = Arc::new(self.open_netns(&name, &pod)?);
        let missing = capture::missing_addresses(&netns, &pod.ips).await?;
        if pod.ips.is_empty() || !missing.is_empty() {
            let reason = if pod.ips.is_empty() {
                "the pod has no address to check it against".to_owned()
            } else {
                let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
                format!("it does not hold the pod's address {}", missing.join(", "))
            };
            return Err(Error::Netns {
                pod: name,
                path: pod.netns.clone(),
                reason,
            });
        }
        let config = &self.config;
        capture::setup_transparent_return(
            &netns,
            &config.sysctl_net,
            config.transparent_mark,
            config.route_table,
        )
        .await?;
        let sockets: Arc<dyn SocketFactory> = Arc::new(PodSockets::new(
            netns.clone(),
            config.mark,
            config.transparent_mark,
        ));
        let listeners = self.open_listeners(&name, &pod, sockets.as_ref())?;
        // Listeners first, then the capture: a redirect never points at nothing.
        self.capture.enroll(&netns)?;
        self.capture.add_pod_addrs(&pod.ips)?;

        let context = Arc::new(PodContext {
            name: name.clone(),
            key: crate::registry::ObjectKey::new(&pod.namespace, &pod.name),
            identity,
            ips: pod.ips.clone(),
            pool: crate::hbone::Pool::default(),
            cookie: netns.cookie(),
            sockets,
            inputs: self.inputs.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let accept_loops = listeners.spawn(&context, &stopped);
        tracing::info!(pod = %name, netns = %pod.netns.display(), cookie = %netns.cookie(), identity = %context.identity, "pod enrolled");
        let uid = pod.uid.clone();
        self.pods.insert(
            uid,
            Enrolled {
                pod,
                identity: context.identity.clone(),
                cookie: netns.cookie(),
                stop,
                accept_loops,
            },
        );
        self.count_enrolled();
        Ok(())
    }

    /// Publishes the enrolled pods: their count and their view.
    fn count_enrolled(&self) {
        self.inputs
            .mesh
            .metrics
            .enrolled_pods
            .set(i64::try_from(self.pods.len()).unwrap_or(i64::MAX));
        let mut view: Vec<CapturedPod> = self
            .pods
            .values()
            .map(|e| CapturedPod {
                pod: format!("{}/{}", e.pod.namespace, e.pod.name),
                uid: e.pod.uid.clone(),
                identity: e.identity.to_string(),
                netns: e.pod.netns.clone(),
                netns_cookie: e.cookie.get(),
                ips: e.pod.ips.clone(),
            })
            .collect();
        view.sort_by(|a, b| a.pod.cmp(&b.pod));
        self.view.store(Arc::new(view));
    }

    /// Opens the pod's network namespace, refusing one that is not the pod's
    /// alone: the node's own (enrolling it would steer all of the node's
    /// inbound TCP into ztunnel), one another enrolled pod is in (its traffic
    /// would carry this pod's identity), or, when found through the pod's
    /// processes, one that is not the namespace found any more. (`enroll` then
    /// checks that it holds the pod's addresses.)
    fn open_netns(&self, name: &str, pod: &LocalPod) -> Result<Netns, Error> {
        let netns = Netns::open(&pod.netns)?;
        let refuse = |reason: String| Error::Netns {
            pod: name.to_owned(),
            path: pod.netns.clone(),
            reason,
        };
        if self.host_netns.contains(&netns.cookie()) {
            return Err(refuse("it is the node's own network namespace".to_owned()));
        }
        if let Some(other) = self.pods.values().find(|e| e.cookie == netns.cookie()) {
            return Err(refuse(format!(
                "pod {}/{} is already enrolled in it",
                other.pod.namespace, other.pod.name
            )));
        }
        if let Some(expected) = pod.netns_id
            && netns.id()? != expected
        {
            return Err(refuse(
                "it changed since it was found through the pod's processes".to_owned(),
            ));
        }
        Ok(netns)
    }

    /// Opens the pod's listeners and registers the inbound ones for `sk_lookup`.
    fn open_listeners(
        &mut self,
        name: &str,
        pod: &LocalPod,
        sockets: &dyn SocketFactory,
    ) -> Result<PodListeners, Error> {
        let listen = |addr: SocketAddr| {
            sockets.listener(addr).map_err(|source| Error::Listen {
                pod: name.to_owned(),
                addr,
                source,
            })
        };
        // Dual-stack where the pod has IPv6; IPv4 only where it is disabled.
        let listen_any = |port: u16| {
            listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                .or_else(|_| listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        };
        let outbound_port = self.config.outbound_port;
        let outbound4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, outbound_port)))?;
        // IPv6 may be disabled in the pod: then there is no IPv6 to capture either.
        let outbound6 = listen(SocketAddr::from((Ipv6Addr::LOCALHOST, outbound_port))).ok();
        let plaintext = listen_any(self.config.inbound_plaintext_port)?;
        let hbone = listen_any(self.config.hbone_port)?;
        for ip in &pod.ips {
            self.capture.register_listener(
                *ip,
                self.config.inbound_plaintext_port,
                plaintext.as_fd(),
            )?;
            self.capture
                .register_listener(*ip, self.config.hbone_port, hbone.as_fd())?;
        }
        Ok(PodListeners {
            outbound: [Some(outbound4), outbound6].into_iter().flatten().collect(),
            plaintext,
            hbone,
        })
    }

    /// Stops capturing the pod `uid`: new connections are no longer redirected and
    /// its listeners close. Connections in flight keep running.
    pub fn unenroll(&mut self, uid: &str) -> Result<(), Error> {
        let enrolled = self.pods.remove(uid).ok_or_else(|| Error::NotEnrolled {
            uid: uid.to_owned(),
        })?;
        self.count_enrolled();
        let result = self
            .capture
            .unenroll(enrolled.cookie)
            .and_then(|()| self.capture.remove_pod_addrs(&enrolled.pod.ips));
        let ports = [self.config.inbound_plaintext_port, self.config.hbone_port];
        for (ip, port) in enrolled
            .pod
            .ips
            .iter()
            .flat_map(|ip| ports.map(|port| (*ip, port)))
        {
            if let Err(error) = self.capture.unregister_listener(ip, port) {
                tracing::warn!(error = %super::error_chain(&error), "cannot remove an inbound listener");
            }
        }
        let _ = enrolled.stop.send(true);
        tracing::info!(pod = %format!("{}/{}", enrolled.pod.namespace, enrolled.pod.name), "pod unenrolled");
        // The last pod of its identity on this node: stop renewing its
        // certificate (connections in flight keep theirs).
        if !self.pods.values().any(|p| p.identity == enrolled.identity) {
            self.inputs.mesh.certs.forget(&enrolled.identity);
        }
        result.map_err(Error::from)
    }

    /// Removes from the pinned maps the pods that a previous ztunnel of this
    /// node enrolled and that are not enrolled now: pods that left the mesh
    /// while no ztunnel ran, whose connects would otherwise stay redirected to
    /// listeners that no longer exist. Call it once the configuration source
    /// has synced and a reconcile enrolled every desired pod: a pod that could
    /// not be enrolled yet may be one of those entries, and keeps it.
    pub fn release_stale(&mut self) -> Result<usize, Error> {
        let ours: std::collections::HashSet<NetnsCookie> =
            self.pods.values().map(|e| e.cookie).collect();
        let mut released = 0;
        for cookie in self.capture.enrolled_cookies()? {
            if ours.contains(&cookie) {
                continue;
            }
            self.capture.unenroll(cookie)?;
            tracing::info!(cookie = %cookie, "released a pod a previous ztunnel enrolled that is no longer in the mesh");
            released += 1;
        }
        let addrs: std::collections::HashSet<IpAddr> = self
            .pods
            .values()
            .flat_map(|e| e.pod.ips.iter().copied())
            .collect();
        let stale: Vec<IpAddr> = (self.capture.pod_addrs()?.into_iter())
            .filter(|ip| !addrs.contains(ip))
            .collect();
        self.capture.remove_pod_addrs(&stale)?;
        Ok(released)
    }

    /// Graceful shutdown: stops accepting on every pod (a new ztunnel sharing the
    /// listeners' SO_REUSEPORT groups takes new connections) and waits up to
    /// `drain` for the connections in flight to finish. Pods stay enrolled in the
    /// pinned maps, so while no ztunnel runs their connects fail instead of
    /// leaving the pod uncaptured.
    pub async fn shutdown(mut self, drain: Duration) {
        for (_, enrolled) in self.pods.drain() {
            let _ = enrolled.stop.send(true);
            for task in enrolled.accept_loops {
                let _ = task.await;
            }
        }
        let connections = &self.inputs.connections;
        connections.close();
        let open = connections.len();
        if open > 0 {
            tracing::info!(open, drain_s = drain.as_secs_f64(), "draining connections");
        }
        if tokio::time::timeout(drain, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "drain timeout: cutting the remaining connections"
            );
        }
    }
}
