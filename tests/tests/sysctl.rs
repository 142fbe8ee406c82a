//! What lets the ztunnel DaemonSet run unprivileged: a container runtime
//! mounts a container's `/proc/sys` read-only, so ztunnel writes the pod's
//! `net.ipv4.tcp_fwmark_accept` through the host's `/proc/sys/net` mounted
//! writable elsewhere (`AMBIT_SYSCTL_NET`), and the kernel shows, under any
//! procfs mount, the sysctls of the opener's network namespace. This runs
//! ztunnel's enrollment step in a mount namespace of its own shaped like the
//! DaemonSet's container: `/proc/sys` read-only, `/proc/sys/net` bound
//! writable at another path.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use ambit_tests::{Testbed, privileged};
use ztunnel::{capture::Netns, settings};

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a path")
}

/// `mount(2)`, with the error named.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), String> {
    let source = source.map(c);
    let target_c = c(target);
    // SAFETY: the strings outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {} (flags {flags:#x}): {}",
            target.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// A container's view, on this thread only: a private mount namespace where
/// `/proc/sys` is read-only and the host's `/proc/sys/net` is bound writable
/// at `bound`. Nothing of it is seen outside this thread.
fn container_mounts(bound: &Path) -> Result<(), String> {
    // SAFETY: unshare only changes this thread's fs context and mount namespace.
    if unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    // The kubelet's hostPath mount, made before the runtime's read-only /proc/sys.
    mount(Some(Path::new("/proc/sys/net")), bound, libc::MS_BIND)?;
    let sys = Path::new("/proc/sys");
    mount(Some(sys), sys, libc::MS_BIND | libc::MS_REC)?;
    mount(
        None,
        sys,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
    )
}

fn fwmark_accept(netns: &Path) -> String {
    ztunnel::capture::in_netns(netns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept")
    })
    .expect("enter the namespace")
    .expect("read the sysctl")
    .trim()
    .to_owned()
}

#[test]
fn a_pod_is_enrolled_with_proc_sys_read_only() {
    if !privileged("a_pod_is_enrolled_with_proc_sys_read_only") {
        return;
    }
    let bed = Testbed::builder("sysctl")
        .node("a")
        .pod("web", "a")
        .build()
        .expect("testbed builds");
    let pod_netns = bed.pod("web").netns_path();
    let host_before =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").expect("the host's sysctl");
    assert_eq!(
        fwmark_accept(&pod_netns),
        "0",
        "a new namespace starts at 0"
    );
    let bound: PathBuf = bed.workdir().join("host-proc-sys-net");
    std::fs::create_dir_all(&bound).expect("workdir is writable");

    let (netns, target) = (pod_netns.clone(), bound.clone());
    let outcome = std::thread::spawn(move || -> Result<(String, String), String> {
        container_mounts(&target)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let netns = Netns::open(&netns).map_err(|e| e.to_string())?;
        let enroll = |sysctl_net: &Path| {
            runtime.block_on(ztunnel::capture::setup_transparent_return(
                &netns,
                sysctl_net,
                settings::TRANSPARENT_MARK,
                settings::ROUTE_TABLE,
            ))
        };
        // As a privileged-less container with the default path: refused, and
        // the error says what to do.
        let refused = match enroll(Path::new(settings::SYSCTL_NET_DEFAULT)) {
            Ok(()) => return Err("the write through read-only /proc/sys succeeded".into()),
            Err(e) => ztunnel::config::ErrorChain(&e).to_string(),
        };
        // Through the bound host /proc/sys/net.
        enroll(&target).map_err(|e| ztunnel::config::ErrorChain(&e).to_string())?;
        Ok((refused, "enrolled".into()))
    })
    .join()
    .expect("the thread does not panic");
    // The thread and its mount namespace are gone: nothing to unmount.
    let (refused, _) = outcome.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        refused.contains("Read-only file system") && refused.contains("AMBIT_SYSCTL_NET"),
        "{refused}"
    );
    assert_eq!(
        fwmark_accept(&pod_netns),
        "1",
        "the write through the host's /proc/sys/net landed in the pod's namespace"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").expect("the host's sysctl"),
        host_before,
        "the host's own value is untouched"
    );
}
