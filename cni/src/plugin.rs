//! The CNI commands: reads the invocation (environment and stdin), asks ztunnel,
//! and decides what the runtime is told. See the crate docs for the decision
//! table; `add` and `check` are the only places that apply it.

use serde::Serialize;

use crate::{
    client,
    cni_args::{self, PodRef},
    config::{self, NetConf, SUPPORTED_VERSIONS},
    enrolled::{self, Membership},
    outcome::{CniError, Code, DEFAULT_CNI_VERSION, Outcome, chain},
    protocol::{Command, Reply, Request},
};

/// The variable that names the CNI command.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// The variable with the runtime's sandbox ID.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// The variable with the path of the pod's network namespace.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// The variable with the runtime's `K=V;K=V` arguments.
pub const CNI_ARGS: &str = "CNI_ARGS";

/// Reads a variable of the invocation's environment; `None` when unset. The
/// binary passes the process environment, tests pass a map.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Runs one CNI invocation: `env` gives the `CNI_*` variables and `stdin` is
/// the network config. Never panics and never touches the process's streams.
pub fn run(env: Env<'_>, stdin: &[u8]) -> Outcome {
    match env(CNI_COMMAND).as_deref() {
        Some("VERSION") => Outcome::success(version_json()),
        Some("ADD") => add(env, stdin).unwrap_or_else(|error| Outcome::failure(&error)),
        Some("DEL") => del(env, stdin),
        Some("CHECK") => check(env, stdin).unwrap_or_else(|error| Outcome::failure(&error)),
        Some(other) => Outcome::failure(&CniError::new(
            Code::InvalidEnv,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION"),
        )),
        None => Outcome::failure(&CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set")),
    }
}

/// The `VERSION` answer, a newline included.
pub fn version_json() -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct VersionInfo {
        cni_version: &'static str,
        supported_versions: [&'static str; SUPPORTED_VERSIONS.len()],
    }
    let info = VersionInfo {
        cni_version: DEFAULT_CNI_VERSION,
        supported_versions: SUPPORTED_VERSIONS,
    };
    // A struct of static strings always serializes.
    let mut out = serde_json::to_string(&info).unwrap_or_default();
    out.push('\n');
    out
}

/// ADD: the pod starts only if ztunnel enrolled it, said it is not in the
/// mesh, or is unreachable while the file says the namespace is not enrolled.
fn add(env: Env<'_>, stdin: &[u8]) -> Result<Outcome, CniError> {
    let (conf, request) = invocation(env, stdin, Command::Add)?;
    let pod = &request.pod;
    match client::exchange(&conf.ztunnel_socket, &request, conf.timeout) {
        Ok(Reply::Enrolled | Reply::NotEnrolled { .. }) => Ok(Outcome::success(conf.result_json())),
        Ok(Reply::Refused { error }) => Err(refused(&conf, pod, error)),
        Err(error @ client::Error::Malformed { .. }) => Err(refused(&conf, pod, chain(&error))),
        Err(error @ client::Error::Unreachable { .. }) => {
            match enrolled::membership(&conf.enrolled_namespaces_file(), &pod.namespace) {
                Membership::NotListed => Ok(Outcome::success(conf.result_json())
                    .with_note(&not_in_mesh_note(&conf, pod, &error))),
                Membership::Listed => Err(unreachable(&conf, &request, Doubt::Listed, &error)),
                Membership::Unknown(file) => {
                    Err(unreachable(&conf, &request, Doubt::Unknown(&file), &error))
                }
            }
        }
    }
}

/// CHECK: fails when the pod should be captured and ztunnel says it is not (or
/// cannot say so while the namespace is enrolled).
fn check(env: Env<'_>, stdin: &[u8]) -> Result<Outcome, CniError> {
    let (conf, request) = invocation(env, stdin, Command::Check)?;
    let pod = &request.pod;
    let listed = || {
        matches!(
            enrolled::membership(&conf.enrolled_namespaces_file(), &pod.namespace),
            Membership::Listed
        )
    };
    match client::exchange(&conf.ztunnel_socket, &request, conf.timeout) {
        Ok(Reply::Enrolled) => Ok(Outcome::success(String::new())),
        Ok(Reply::NotEnrolled { reason }) if listed() => Err(not_captured(
            &conf,
            pod,
            reason.unwrap_or_else(|| "ztunnel says the pod is not enrolled".to_owned()),
        )),
        Ok(Reply::NotEnrolled { .. }) => Ok(Outcome::success(String::new())),
        Ok(Reply::Refused { error }) => Err(not_captured(&conf, pod, error)),
        Err(error @ client::Error::Malformed { .. }) => {
            Err(not_captured(&conf, pod, chain(&error)))
        }
        Err(error @ client::Error::Unreachable { .. }) if listed() => {
            Err(unreachable(&conf, &request, Doubt::Listed, &error))
        }
        Err(error @ client::Error::Unreachable { .. }) => Ok(Outcome::success(String::new())
            .with_note(&format!(
                "{}; CHECK passes as namespace {} is not listed as enrolled",
                chain(&error),
                pod.namespace
            ))),
    }
}

/// DEL: tells ztunnel, and succeeds whatever happens. The spec wants DEL to be
/// idempotent and not to fail, and ztunnel also releases pods that leave its
/// registry, so a lost DEL costs nothing lasting. Problems go to stderr only.
fn del(env: Env<'_>, stdin: &[u8]) -> Outcome {
    let done = Outcome::success(String::new());
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(error) => return done.with_note(&format!("DEL ignored: {}", chain(&error))),
    };
    let pod = match cni_args::pod(env(CNI_ARGS).as_deref()) {
        Ok(pod) => pod,
        Err(error) => return done.with_note(&format!("DEL not sent to ztunnel: {error}")),
    };
    let request = Request {
        command: Command::Del,
        pod,
        netns: env(CNI_NETNS).unwrap_or_default(),
        container_id: env(CNI_CONTAINERID).unwrap_or_default(),
        ips: conf.pod_ips().unwrap_or_default(),
    };
    match client::exchange(&conf.ztunnel_socket, &request, conf.timeout) {
        Ok(Reply::Enrolled | Reply::NotEnrolled { .. }) => done,
        Ok(Reply::Refused { error }) => done.with_note(&format!(
            "ztunnel could not release pod {} (ignored): {error}",
            request.pod
        )),
        Err(error) => done.with_note(&format!(
            "DEL of pod {} ignored: {}",
            request.pod,
            chain(&error)
        )),
    }
}

/// Reads what ADD and CHECK need: the config, the pod, and the request for
/// ztunnel. Every failure is a CNI error under the config's version.
fn invocation(
    env: Env<'_>,
    stdin: &[u8],
    command: Command,
) -> Result<(NetConf, Request), CniError> {
    let conf = NetConf::parse(stdin).map_err(|error| config_error(&error))?;
    let version = conf.cni_version.as_str();
    let invalid_env = |msg: String| CniError::new(Code::InvalidEnv, msg).version(version);
    let pod =
        cni_args::pod(env(CNI_ARGS).as_deref()).map_err(|error| invalid_env(error.to_string()))?;
    let required = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| invalid_env(format!("{name} is not set")))
    };
    let netns = required(CNI_NETNS)?;
    let container_id = required(CNI_CONTAINERID)?;
    let ips = conf
        .pod_ips()
        .map_err(|error| CniError::new(Code::InvalidConfig, error.to_string()).version(version))?;
    let request = Request {
        command,
        pod,
        netns,
        container_id,
        ips,
    };
    Ok((conf, request))
}

/// The CNI error for a config that cannot be used.
fn config_error(error: &config::Error) -> CniError {
    let code = match error {
        config::Error::Decode(_) => Code::DecodeFailed,
        config::Error::UnsupportedVersion { .. } => Code::IncompatibleVersion,
        _ => Code::InvalidConfig,
    };
    let details = std::error::Error::source(error)
        .map(chain)
        .unwrap_or_default();
    CniError::new(code, error.to_string()).details(details)
}

/// ADD: ztunnel answered, and not with an enrollment.
fn refused(conf: &NetConf, pod: &PodRef, details: String) -> CniError {
    CniError::new(
        Code::ZtunnelRefused,
        format!("ztunnel refused to enroll pod {pod}"),
    )
    .details(details)
    .version(&conf.cni_version)
}

/// CHECK: ztunnel answered, and the pod is not captured although it should be.
fn not_captured(conf: &NetConf, pod: &PodRef, details: String) -> CniError {
    CniError::new(
        Code::ZtunnelRefused,
        format!("pod {pod} should be captured by ztunnel but is not"),
    )
    .details(details)
    .version(&conf.cni_version)
}

/// Why an unreachable ztunnel blocks the pod.
#[derive(Clone, Copy)]
enum Doubt<'a> {
    /// The file lists the namespace.
    Listed,
    /// The file cannot be read: ztunnel has likely not started on this node.
    Unknown(&'a enrolled::Error),
}

/// ztunnel is unreachable and the pod may belong in the mesh: refuse it (ADD)
/// or report it (CHECK) with "try again later".
fn unreachable(
    conf: &NetConf,
    request: &Request,
    doubt: Doubt<'_>,
    error: &client::Error,
) -> CniError {
    let pod = &request.pod;
    let namespace = &pod.namespace;
    let (membership, file_details) = match doubt {
        Doubt::Listed => (
            format!("namespace {namespace} is enrolled in the mesh"),
            String::new(),
        ),
        Doubt::Unknown(file) => (
            format!(
                "namespace {namespace} may be enrolled in the mesh (its enrolled-namespaces \
                 file cannot be read: ztunnel may not have started on this node yet)"
            ),
            format!("; {}", chain(file)),
        ),
    };
    let consequence = match request.command {
        Command::Check => format!("cannot confirm that pod {pod} is captured"),
        Command::Add | Command::Del => {
            format!("refusing pod {pod} rather than starting it uncaptured")
        }
    };
    CniError::new(
        Code::TryAgainLater,
        format!(
            "ztunnel on this node is unreachable at {} and {membership}; {consequence}",
            conf.ztunnel_socket.display()
        ),
    )
    .details(format!("{}{file_details}", chain(error)))
    .version(&conf.cni_version)
}

/// The stderr note when ztunnel is unreachable but the pod is not in the mesh.
fn not_in_mesh_note(conf: &NetConf, pod: &PodRef, error: &client::Error) -> String {
    format!(
        "{}; namespace {} is not listed in {}, so pod {pod} is not in the mesh and goes ahead",
        chain(error),
        pod.namespace,
        conf.enrolled_namespaces_file().display()
    )
}

#[cfg(test)]
mod tests;
