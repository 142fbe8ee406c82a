//! Finding a pod's network namespace from its own processes (Kubernetes mode).
//!
//! A pod object says nothing trustworthy about its network namespace: whoever
//! may create a pod writes its annotations. Its processes do: the kubelet puts
//! them in a cgroup named after the pod's uid (`…/kubepods/…/pod<uid>/…` with
//! the cgroupfs driver, `…-pod<uid with '_'>.slice/…` with systemd's), which
//! no pod can choose, and they all live in the pod sandbox's namespace. So the
//! namespace of a pod is the one its processes share, read from
//! `/proc/<pid>/ns/net` of a process in its cgroup. Host namespaces (ztunnel's
//! own and pid 1's) are never returned, nor a namespace the pod's processes do
//! not agree on.
//!
//! Cost: one pass over `/proc` (two small reads and two `stat`s per process of
//! a pod looked for, one read per other process) for every set of pods looked
//! up; callers cache what they found.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The identity of a network namespace: device and inode of its nsfs file,
/// unique while the namespace exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The identity of the namespace file at `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let metadata = fs::metadata(path)?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }

    /// The identity of an open namespace file.
    pub fn of_file(file: &fs::File) -> io::Result<Self> {
        let metadata = file.metadata()?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// What the processes of one pod say about its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetns {
    /// The namespace every process of the pod is in, through one of them.
    Found {
        /// `/proc/<pid>/ns/net` of one of its processes.
        path: PathBuf,
        /// The namespace's identity (to check the path still names it).
        id: NetnsId,
    },
    /// The pod's processes are in a host namespace (a host-network pod):
    /// never enrolled.
    Host,
    /// The pod's processes are in several namespaces: not enrolled.
    Ambiguous,
}

/// Looks pods up by uid among the processes of a procfs.
#[derive(Debug, Clone)]
pub struct ProcessScan {
    proc: PathBuf,
    host: HashSet<NetnsId>,
}

impl ProcessScan {
    /// Scans `proc` (normally `/proc`; the host's, when ztunnel runs in a
    /// container), refusing ztunnel's own namespace and pid 1's.
    pub fn new(proc: impl Into<PathBuf>) -> io::Result<Self> {
        let proc = proc.into();
        let mut host = HashSet::from([NetnsId::of(Path::new("/proc/self/ns/net"))?]);
        if let Ok(init) = NetnsId::of(&proc.join("1/ns/net")) {
            host.insert(init);
        }
        Ok(Self { proc, host })
    }

    /// A scan of `proc` that refuses the namespaces `host` (tests).
    pub fn with_host(proc: impl Into<PathBuf>, host: impl IntoIterator<Item = NetnsId>) -> Self {
        Self {
            proc: proc.into(),
            host: host.into_iter().collect(),
        }
    }

    /// What the processes of each pod in `uids` say about its namespace; pods
    /// without a process are absent (not started yet, or gone).
    pub fn find(&self, uids: &HashSet<&str>) -> io::Result<HashMap<String, PodNetns>> {
        let mut found: HashMap<String, PodNetns> = HashMap::new();
        if uids.is_empty() {
            return Ok(found);
        }
        for entry in fs::read_dir(&self.proc)?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let dir = self.proc.join(pid);
            let Some((uid, id)) = pod_process(&dir, uids) else {
                continue;
            };
            let this = if self.host.contains(&id) {
                PodNetns::Host
            } else {
                PodNetns::Found {
                    path: dir.join("ns/net"),
                    id,
                }
            };
            let merged = match found.remove(&uid) {
                None => this,
                Some(seen) => merge(seen, &this),
            };
            found.insert(uid, merged);
        }
        Ok(found)
    }
}

/// Two processes of one pod: the same namespace, or a disagreement.
fn merge(seen: PodNetns, this: &PodNetns) -> PodNetns {
    match (&seen, this) {
        (PodNetns::Found { id: a, .. }, PodNetns::Found { id: b, .. }) if a == b => seen,
        (PodNetns::Host, PodNetns::Host) => PodNetns::Host,
        _ => PodNetns::Ambiguous,
    }
}

/// The pod uid (one of `uids`) and namespace of the process at `dir`, if it
/// belongs to one of those pods. Its cgroup is read on both sides of the
/// namespace's `stat`, and the `stat` twice, so a pid reused in between is
/// not taken for the pod's.
fn pod_process(dir: &Path, uids: &HashSet<&str>) -> Option<(String, NetnsId)> {
    let cgroup = dir.join("cgroup");
    let uid = pod_uid(&fs::read_to_string(&cgroup).ok()?).filter(|u| uids.contains(u.as_str()))?;
    let ns = dir.join("ns/net");
    let id = NetnsId::of(&ns).ok()?;
    let again = pod_uid(&fs::read_to_string(&cgroup).ok()?)?;
    (again == uid && NetnsId::of(&ns).ok()? == id).then_some((uid, id))
}

/// The pod uid in the cgroup v2 line (`0::<path>`) of a `/proc/<pid>/cgroup`
/// text, if the path runs through a pod's cgroup.
pub(crate) fn pod_uid(cgroup: &str) -> Option<String> {
    let path = super::host::own_cgroup_path(cgroup)?;
    path.split('/').find_map(segment_uid)
}

/// The uid a kubelet cgroup name carries: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid, '-' as '_'>.slice` (systemd driver).
fn segment_uid(segment: &str) -> Option<String> {
    let uid = match segment.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => segment.strip_prefix("pod")?.to_owned(),
    };
    is_uuid(&uid).then_some(uid)
}

/// Kubernetes uids are UUIDs: `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f2a9c1e-0b4d-4e6f-8a7b-112233445566";
    const HOSTNET: &str = "00000000-0000-4000-8000-000000000001";
    const SPLIT: &str = "00000000-0000-4000-8000-000000000002";
    const ABSENT: &str = "00000000-0000-4000-8000-000000000003";

    #[test]
    fn uids_come_from_either_cgroup_driver() {
        let cgroupfs = format!("0::/kubepods/besteffort/pod{UID}/0123abcd\n");
        assert_eq!(pod_uid(&cgroupfs).as_deref(), Some(UID));
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f2a9c1e_0b4d_4e6f_8a7b_112233445566.slice/cri-containerd-0123.scope\n";
        assert_eq!(pod_uid(systemd).as_deref(), Some(UID));
        // Hybrid hosts list v1 hierarchies too; only the v2 line counts.
        let hybrid = format!("12:cpu:/kubepods/podother\n0::/kubepods/pod{UID}/c\n");
        assert_eq!(pod_uid(&hybrid).as_deref(), Some(UID));
        for other in [
            "0::/system.slice/kubelet.service\n",
            "0::/\n",
            "0::/kubepods/besteffort\n",
            "0::/kubepods.slice/kubepods-besteffort.slice\n",
            "0::/podding/x\n",
            "0::/kubepods/podnot-a-uid/c\n",
        ] {
            assert_eq!(pod_uid(other), None, "{other}");
        }
    }

    /// A fake procfs: `pid -> (cgroup text, namespace file name)`, the
    /// namespace files being plain files of `dir/ns-<name>` (so their identity
    /// is theirs).
    fn fake_proc(dir: &Path, procs: &[(u32, String, &str)]) {
        for (pid, cgroup, ns) in procs {
            let p = dir.join(pid.to_string());
            fs::create_dir_all(p.join("ns")).unwrap();
            fs::write(p.join("cgroup"), cgroup).unwrap();
            let target = dir.join(format!("ns-{ns}"));
            if !target.exists() {
                fs::write(&target, ns).unwrap();
            }
            fs::hard_link(&target, p.join("ns/net")).unwrap();
        }
    }

    #[test]
    fn pods_are_found_by_their_processes_never_in_a_host_namespace() {
        let dir = std::env::temp_dir().join(format!("ambit-podns-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let pod = |uid: &str| format!("0::/kubepods/pod{uid}/c\n");
        fake_proc(
            &dir,
            &[
                (1, "0::/init.scope\n".into(), "host"),
                (10, pod(UID), "a"),
                (11, pod(UID), "a"),
                (20, pod(HOSTNET), "host"),
                (30, pod(SPLIT), "b"),
                (31, pod(SPLIT), "c"),
                (40, "0::/system.slice/kubelet.service\n".into(), "host"),
            ],
        );
        let host = NetnsId::of(&dir.join("ns-host")).unwrap();
        let scan = ProcessScan::with_host(&dir, [host]);
        let wanted: HashSet<&str> = [UID, HOSTNET, SPLIT, ABSENT].into();
        let found = scan.find(&wanted).unwrap();
        let _ = fs::remove_dir_all(&dir);
        let Some(PodNetns::Found { path, id }) = found.get(UID) else {
            panic!("{found:?}");
        };
        assert!(
            path.ends_with("10/ns/net") || path.ends_with("11/ns/net"),
            "{path:?}"
        );
        assert_ne!(*id, host);
        assert_eq!(found.get(HOSTNET), Some(&PodNetns::Host));
        assert_eq!(found.get(SPLIT), Some(&PodNetns::Ambiguous));
        assert_eq!(found.get(ABSENT), None, "no process: not found yet");
        assert_eq!(found.len(), 3);
    }
}
