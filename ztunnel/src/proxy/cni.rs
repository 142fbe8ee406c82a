//! The enrollment socket of the CNI plugin `ambit-cni`.
//!
//! The container runtime runs `ambit-cni` after the pod's primary network
//! plugin and before the pod's containers start; the plugin connects to this
//! unix socket and writes one JSON line:
//!
//! ```json
//! {"command":"add","pod":{"namespace":"demo","name":"web-1","uid":"..."},
//!  "netns":"/var/run/netns/cni-1234","containerId":"...","ips":["198.18.1.10"]}
//! ```
//!
//! and reads one line back: `{"enrolled":true}` once the pod's listeners and
//! its `ENROLLED` entry are in place (so no connection of the app escapes
//! capture), `{"enrolled":false,"reason":"..."}` when the pod is not in the
//! mesh, or `{"error":"..."}`. `del` forgets the namespace and unenrolls the
//! pod; `check` says whether it is enrolled.
//!
//! The socket is the node's own (mode 0600 in a directory only the node's
//! root reaches), so what it names is trusted: the runtime created that
//! namespace. Which pod it is, and whether it is in the mesh, still comes
//! from the registry: an ADD waits (up to `settings::CNI_ENROLL_TIMEOUT`)
//! for its pod, by uid, to appear on this node (the pod watch may lag the
//! kubelet), then is answered at once for a pod outside the mesh. Entries
//! are per sandbox (the runtime's container id): a recreated sandbox's ADD
//! replaces the old one's namespace, a late DEL of the old sandbox leaves the
//! new one alone and fails the old one's ADDs that still wait, and an ADD is
//! answered `enrolled` only when its own sandbox's namespace is the one
//! enrolled. Beside the socket, `enrolled-namespaces`
//! lists the enrolled namespaces, rewritten on every configuration change,
//! so that the plugin can refuse a pod of the mesh when ztunnel is down
//! (fail closed) and let the others start.

use std::{
    io,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Desired, NetnsSource, PodManager};
use crate::registry::Snapshot;

/// The largest request line read.
pub const MAX_REQUEST: usize = 16 * 1024;

/// How long a connected plugin may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The file beside the socket that lists the enrolled namespaces.
pub const ENROLLED_NAMESPACES: &str = "enrolled-namespaces";

/// What the plugin asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Enroll the new pod.
    Add,
    /// The pod is being torn down.
    Del,
    /// Is the pod enrolled?
    Check,
}

/// The pod of a request, as the runtime names it (`K8S_POD_*`).
#[derive(Debug, Clone, Deserialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// One request of the plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// For which pod.
    pub pod: PodRef,
    /// The pod's network namespace file (`CNI_NETNS`).
    #[serde(default)]
    pub netns: PathBuf,
    /// The runtime's sandbox id, for the logs.
    #[serde(default)]
    pub container_id: String,
    /// The addresses the primary plugin gave the pod.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The pod is captured.
    Enrolled,
    /// The pod is not in the mesh, and why.
    NotEnrolled(String),
    /// The pod should be captured but is not.
    Error(String),
}

impl Reply {
    fn to_line(&self) -> String {
        let value = match self {
            Self::Enrolled => serde_json::json!({ "enrolled": true }),
            Self::NotEnrolled(reason) => serde_json::json!({ "enrolled": false, "reason": reason }),
            Self::Error(error) => serde_json::json!({ "error": error }),
        };
        format!("{value}\n")
    }
}

/// A request on its way to the enrollment loop, with where its reply goes.
pub type Incoming = (Request, oneshot::Sender<Reply>);

/// Binds the socket at `path`: its directory is created (0700 when new), a
/// socket left by an earlier ztunnel is replaced, and the socket is 0600.
///
/// # Errors
///
/// When the directory cannot be made, something other than a socket is in
/// the way, or the bind fails.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts plugin connections until the process ends, handing each request
/// to `requests` and writing back its reply.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Incoming>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = FIRST_BACKOFF;
                tokio::spawn(connection(stream, requests.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "CNI socket: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let reply = match read {
        Err(_) => Reply::Error(format!("no request within {READ_TIMEOUT:?}")),
        Ok(Err(error)) => Reply::Error(format!("cannot read the request: {error}")),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Reply::Error(format!(
            "the request is not one line of at most {MAX_REQUEST} bytes"
        )),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(error) => Reply::Error(format!("the request is not valid: {error}")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                let pod = format!("{}/{}", request.pod.namespace, request.pod.name);
                if requests.send((request, tx)).await.is_err() {
                    Reply::Error("ztunnel is shutting down".to_owned())
                } else {
                    rx.await.unwrap_or_else(|_| {
                        Reply::Error(format!("ztunnel dropped the request for {pod}"))
                    })
                }
            }
        },
    };
    if let Err(error) = write.write_all(reply.to_line().as_bytes()).await {
        tracing::debug!(%error, "CNI socket: cannot answer the plugin");
    }
}

/// Rewrites `<dir>/enrolled-namespaces` from `snapshot` (a temporary file,
/// then a rename, so the plugin never reads half of it).
///
/// # Errors
///
/// When the file cannot be written.
pub fn write_enrolled_namespaces(dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    let mut text =
        String::from("# namespaces in the mesh, one per line (ztunnel, for ambit-cni)\n");
    for name in snapshot.enrolled_namespaces() {
        text.push_str(name);
        text.push('\n');
    }
    let path = dir.join(ENROLLED_NAMESPACES);
    let temporary = dir.join(format!(".{ENROLLED_NAMESPACES}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)
}

/// Requests waiting for their pod, and the answering of them.
#[derive(Debug, Default)]
pub struct Enrollments {
    waiting: Vec<(Request, oneshot::Sender<Reply>, Instant)>,
}

/// What answering requests needs.
pub struct Context<'a> {
    /// Where namespaces come from (the CNI ones are set here).
    pub netns: &'a mut NetnsSource,
    /// The enrolled pods.
    pub pods: &'a mut PodManager,
    /// The configuration now.
    pub snapshot: &'a Snapshot,
    /// This node.
    pub node: &'a str,
}

impl Enrollments {
    /// Takes a new request, to be answered by the next [`Self::settle`]
    /// (within `timeout`). A DEL first fails the ADDs of its sandbox that
    /// still wait: the sandbox they would enroll is gone.
    pub fn push(&mut self, (request, reply): Incoming, timeout: Duration) {
        tracing::info!(
            command = ?request.command,
            pod = %format!("{}/{}", request.pod.namespace, request.pod.name),
            pod_uid = request.pod.uid.as_str(),
            netns = %request.netns.display(),
            container = request.container_id.as_str(),
            "CNI request"
        );
        if request.command == Command::Del {
            let (gone, kept) =
                std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|(waiting, _, _)| {
                        waiting.command == Command::Add
                            && waiting.pod.uid == request.pod.uid
                            && waiting.container_id == request.container_id
                    });
            self.waiting = kept;
            for (waiting, reply, _) in gone {
                let error = "the sandbox was deleted before the pod was enrolled".to_owned();
                answer_with(&waiting, reply, Reply::Error(error));
            }
        }
        self.waiting
            .push((request, reply, Instant::now() + timeout));
    }

    /// Whether requests wait for their pod.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Applies what the waiting requests say, reconciles the enrolled pods
    /// with the registry, and answers every request that can be answered.
    /// Returns what was reconciled to, and the failures of the reconcile.
    pub async fn settle(&mut self, mut ctx: Context<'_>) -> (Desired, Vec<(String, super::Error)>) {
        let mut open = Vec::new();
        for (request, reply, deadline) in std::mem::take(&mut self.waiting) {
            // The plugin gave up (its own timeout): the runtime tears the
            // sandbox down and sends DEL.
            if reply.is_closed() {
                continue;
            }
            match prepare(&request, ctx.netns, ctx.snapshot, ctx.node) {
                Some(answer) => answer_with(&request, reply, answer),
                None => open.push((request, reply, deadline)),
            }
        }
        let desired = ctx.netns.desired(ctx.snapshot, ctx.node);
        let failures = ctx.pods.reconcile(&desired.pods).await;
        let now = Instant::now();
        for (request, reply, deadline) in open {
            match conclude(&request, &mut ctx, &failures, now >= deadline) {
                Some(answer) => answer_with(&request, reply, answer),
                None => self.waiting.push((request, reply, deadline)),
            }
        }
        (desired, failures)
    }
}

/// The answer to `request` after the reconcile, if there is one yet; with
/// `expired`, there must be.
fn conclude(
    request: &Request,
    ctx: &mut Context<'_>,
    failures: &[(String, super::Error)],
    expired: bool,
) -> Option<Reply> {
    let pod = &request.pod;
    let uid = pod.uid.as_str();
    let name = format!("{}/{}", pod.namespace, pod.name);
    let enrolled = ctx.pods.enrolled().any(|u| u == uid);
    let sandbox = ctx.netns.cni_sandbox(uid);
    let ours = sandbox == Some(request.container_id.as_str());
    let known = ctx.snapshot.pod_by_uid(ctx.node, uid);
    if request.command == Command::Check {
        let in_mesh = known.is_some_and(|w| ctx.snapshot.is_enrolled(w));
        return Some(match (enrolled && (ours || sandbox.is_none()), in_mesh) {
            (true, _) => Reply::Enrolled,
            (false, true) => Reply::Error(format!("pod {name} is in the mesh but not captured")),
            (false, false) => Reply::NotEnrolled("not in the mesh".to_owned()),
        });
    }
    if known.is_some() && !ours {
        return Some(Reply::Error(format!(
            "pod {name}: sandbox {} was replaced by {} before it was enrolled",
            request.container_id,
            sandbox.unwrap_or("none")
        )));
    }
    if enrolled && ours {
        return Some(Reply::Enrolled);
    }
    if let Some((_, error)) = failures.iter().find(|(u, _)| u == uid) {
        ctx.netns.remove_cni(uid, &request.container_id);
        return Some(Reply::Error(crate::config::ErrorChain(error).to_string()));
    }
    if !expired {
        return None;
    }
    ctx.netns.remove_cni(uid, &request.container_id);
    Some(match known {
        // Never seen: in the mesh only if its namespace is.
        None if !ctx.snapshot.is_namespace_enrolled(&pod.namespace) => {
            Reply::NotEnrolled(format!("namespace {} is not enrolled", pod.namespace))
        }
        None => Reply::Error(format!(
            "pod {name} (uid {uid}) is not on node {} in ztunnel's configuration yet",
            ctx.node
        )),
        Some(_) => Reply::Error(format!("pod {name} was not enrolled in time")),
    })
}

/// Applies `request` to `netns`; its answer when known before reconciling.
fn prepare(
    request: &Request,
    netns: &mut NetnsSource,
    snapshot: &Snapshot,
    node: &str,
) -> Option<Reply> {
    let pod = &request.pod;
    let name = format!("{}/{}", pod.namespace, pod.name);
    match request.command {
        Command::Del => Some(if netns.remove_cni(&pod.uid, &request.container_id) {
            Reply::NotEnrolled("unenrolled".to_owned())
        } else {
            Reply::NotEnrolled("no enrollment of this sandbox".to_owned())
        }),
        // Answered after the reconcile, from what is enrolled then.
        Command::Check => None,
        Command::Add => {
            // Not known yet (the pod watch lags the kubelet): wait, even if
            // its namespace looks unenrolled, since that may lag too.
            let workload = snapshot.pod_by_uid(node, &pod.uid)?;
            if workload.namespace.as_str() != pod.namespace || *workload.name != *pod.name {
                return Some(Reply::Error(format!(
                    "uid {} belongs to another pod than {name}",
                    pod.uid
                )));
            }
            if !snapshot.is_enrolled(workload) {
                return Some(Reply::NotEnrolled(format!("pod {name} is not in the mesh")));
            }
            match netns.set_cni(
                &pod.uid,
                &request.container_id,
                &request.netns,
                request.ips.clone(),
            ) {
                Ok(_) => None,
                Err(error) => Some(Reply::Error(format!(
                    "cannot open the network namespace {}: {error}",
                    request.netns.display()
                ))),
            }
        }
    }
}

fn answer_with(request: &Request, reply: oneshot::Sender<Reply>, answer: Reply) {
    let pod = format!("{}/{}", request.pod.namespace, request.pod.name);
    match &answer {
        Reply::Error(error) => {
            tracing::warn!(pod, command = ?request.command, error = error.as_str(), "CNI request refused");
        }
        Reply::Enrolled => {
            tracing::info!(pod, command = ?request.command, "CNI request: enrolled");
        }
        Reply::NotEnrolled(reason) => {
            tracing::info!(pod, command = ?request.command, reason = reason.as_str(), "CNI request: not enrolled");
        }
    }
    // The plugin may have given up; nothing more to do then.
    let _ = reply.send(answer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::test_registry;

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: uid-web}
spec: {nodeName: node-a, containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: plain, uid: uid-legacy}
spec: {nodeName: node-a, containers: [{name: app, image: app}]}
";

    fn request(command: Command, name: &str, uid: &str, sandbox: &str, netns: &Path) -> Request {
        let namespace = if name == "legacy" { "plain" } else { "shop" };
        Request {
            command,
            pod: PodRef {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
            },
            netns: netns.to_owned(),
            container_id: sandbox.into(),
            ips: vec!["198.18.1.10".parse().unwrap()],
        }
    }

    #[test]
    fn sandboxes_of_one_pod_do_not_undo_each_other() {
        let registry = test_registry(MESH).unwrap();
        let snapshot = registry.snapshot();
        // Two files stand for two namespaces (only their identity matters).
        let dir = std::env::temp_dir().join(format!("ambit-cni-sandboxes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old_ns, new_ns) = (dir.join("ns-1"), dir.join("ns-2"));
        std::fs::write(&old_ns, b"").unwrap();
        std::fs::write(&new_ns, b"").unwrap();
        let mut netns = NetnsSource::config();
        let prep = |netns: &mut NetnsSource, r: &Request| prepare(r, netns, &snapshot, "node-a");

        // ADD of sandbox s1 names its namespace and waits for the reconcile.
        let add1 = request(Command::Add, "web", "uid-web", "s1", &old_ns);
        assert_eq!(prep(&mut netns, &add1), None);
        assert_eq!(netns.cni_sandbox("uid-web"), Some("s1"));
        // The pod's sandbox is recreated: s2's ADD replaces s1's entry.
        let add2 = request(Command::Add, "web", "uid-web", "s2", &new_ns);
        assert_eq!(prep(&mut netns, &add2), None);
        assert_eq!(netns.cni_sandbox("uid-web"), Some("s2"));
        // A late DEL of s1 leaves s2 enrolled.
        let del1 = request(Command::Del, "web", "uid-web", "s1", &old_ns);
        assert_eq!(
            prep(&mut netns, &del1),
            Some(Reply::NotEnrolled("no enrollment of this sandbox".into()))
        );
        assert_eq!(netns.cni_sandbox("uid-web"), Some("s2"));
        // s2's own DEL removes it.
        let del2 = request(Command::Del, "web", "uid-web", "s2", &new_ns);
        assert_eq!(
            prep(&mut netns, &del2),
            Some(Reply::NotEnrolled("unenrolled".into()))
        );
        assert_eq!(netns.cni_sandbox("uid-web"), None);

        // A pod outside the mesh is answered at once and names nothing.
        let legacy = request(Command::Add, "legacy", "uid-legacy", "s9", &old_ns);
        assert!(matches!(
            prep(&mut netns, &legacy),
            Some(Reply::NotEnrolled(_))
        ));
        assert_eq!(netns.cni_sandbox("uid-legacy"), None);
        // A pod the registry does not have yet waits (its namespace may lag).
        let unknown = request(Command::Add, "web", "uid-later", "s3", &old_ns);
        assert_eq!(prep(&mut netns, &unknown), None);
        assert_eq!(netns.cni_sandbox("uid-later"), None);
        // A uid under another pod's name is refused.
        let mut liar = request(Command::Add, "web", "uid-legacy", "s4", &old_ns);
        liar.pod.namespace = "shop".into();
        assert!(matches!(prep(&mut netns, &liar), Some(Reply::Error(_))));
        // A namespace file that is not there is an error, not a wait.
        let missing = request(Command::Add, "web", "uid-web", "s5", &dir.join("gone"));
        assert!(matches!(prep(&mut netns, &missing), Some(Reply::Error(e)) if e.contains("gone")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_del_fails_the_adds_of_its_sandbox_that_still_wait() {
        let mut enrollments = Enrollments::default();
        let path = Path::new("/nonexistent");
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, _rx3) = oneshot::channel();
        enrollments.push(
            (request(Command::Add, "web", "uid-web", "s1", path), tx1),
            READ_TIMEOUT,
        );
        enrollments.push(
            (request(Command::Add, "web", "uid-web", "s2", path), tx2),
            READ_TIMEOUT,
        );
        enrollments.push(
            (request(Command::Del, "web", "uid-web", "s1", path), tx3),
            READ_TIMEOUT,
        );
        assert!(
            matches!(rx1.try_recv(), Ok(Reply::Error(e)) if e.contains("deleted")),
            "s1's ADD is failed by s1's DEL"
        );
        assert!(rx2.try_recv().is_err(), "s2's ADD still waits");
        assert_eq!(enrollments.waiting.len(), 2, "s2's ADD and the DEL");
    }

    #[test]
    fn replies_are_the_lines_the_plugin_reads() {
        assert_eq!(Reply::Enrolled.to_line(), "{\"enrolled\":true}\n");
        assert_eq!(
            Reply::NotEnrolled("namespace x is not enrolled".into()).to_line(),
            "{\"enrolled\":false,\"reason\":\"namespace x is not enrolled\"}\n"
        );
        assert_eq!(
            Reply::Error("no \"pod\"".into()).to_line(),
            "{\"error\":\"no \\\"pod\\\"\"}\n"
        );
    }

    #[test]
    fn requests_parse_as_the_plugin_writes_them() {
        let line = br#"{"command":"add","pod":{"namespace":"demo","name":"web-1","uid":"u-1"},"netns":"/var/run/netns/cni-1","containerId":"abc","ips":["198.18.1.10","fd00::10"]}"#;
        let request: Request = serde_json::from_slice(line).unwrap();
        assert_eq!(request.command, Command::Add);
        assert_eq!(request.pod.uid, "u-1");
        assert_eq!(request.netns, Path::new("/var/run/netns/cni-1"));
        assert_eq!(request.ips.len(), 2);
        let del: Request = serde_json::from_slice(
            br#"{"command":"del","pod":{"namespace":"a","name":"b","uid":"c"}}"#,
        )
        .unwrap();
        assert_eq!(del.command, Command::Del);
        assert!(serde_json::from_slice::<Request>(br#"{"command":"nuke","pod":{}}"#).is_err());
    }

    #[tokio::test]
    async fn a_bad_or_oversized_request_is_answered_with_an_error() {
        let dir = std::env::temp_dir().join(format!("ambit-cni-test-{}", std::process::id()));
        let path = dir.join("cni.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only root may talk to it");
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, tx));
        // Answer whatever reaches the loop.
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Reply::Enrolled);
            }
        });
        let ask = |bytes: Vec<u8>| {
            let path = path.clone();
            async move {
                let mut stream = UnixStream::connect(&path).await.unwrap();
                stream.write_all(&bytes).await.unwrap();
                let mut answer = String::new();
                BufReader::new(stream).read_line(&mut answer).await.unwrap();
                answer
            }
        };
        assert!(
            ask(b"not json\n".to_vec())
                .await
                .contains("\"error\":\"the request is not valid")
        );
        let mut huge = vec![b' '; MAX_REQUEST + 10];
        huge.push(b'\n');
        assert!(ask(huge).await.contains("at most"));
        let good = br#"{"command":"check","pod":{"namespace":"a","name":"b","uid":"c"}}
"#;
        assert_eq!(ask(good.to_vec()).await, "{\"enrolled\":true}\n");
        // A second ztunnel replaces the socket the first one left.
        drop(bind(&path).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
