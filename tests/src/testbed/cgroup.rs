//! The cgroup v2 subtrees of the simulated nodes.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::Error;

/// The directory under the cgroup v2 mount that holds every testbed's cgroups.
pub const TESTBEDS_DIR: &str = "ambit-tests";

/// `<cgroup v2 mount>/ambit-tests`, created when missing.
pub fn testbeds_root() -> Result<PathBuf, Error> {
    let mount = ztunnel::capture::cgroup2_mount()
        .map_err(|e| Error::Cgroup {
            path: "/proc/self/mountinfo".into(),
            source: io::Error::other(e),
        })?
        .ok_or(Error::NoCgroup2)?;
    let root = mount.join(TESTBEDS_DIR);
    create(&root)?;
    Ok(root)
}

/// Creates the cgroup `path` (and its parents); an existing one is fine.
pub fn create(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::Cgroup {
        path: path.to_owned(),
        source,
    })
}

/// The pids in the cgroup `path` (not its children).
pub fn pids(path: &Path) -> Result<Vec<u32>, Error> {
    let procs = fs::read_to_string(path.join("cgroup.procs")).map_err(|source| Error::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Kills every process in the subtree at `path` and removes it, children first.
/// A missing cgroup is already removed.
pub fn remove_tree(path: &Path) -> Result<(), Error> {
    if !path.is_dir() {
        return Ok(());
    }
    let children = fs::read_dir(path).map_err(|source| Error::Cgroup {
        path: path.to_owned(),
        source,
    })?;
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&child.path())?;
        }
    }
    kill_all(path)?;
    // The kernel removes killed tasks asynchronously: rmdir fails with EBUSY until
    // the last one is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(16) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Cgroup {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Kills every process in the cgroup at `path` with SIGKILL.
fn kill_all(path: &Path) -> Result<(), Error> {
    // cgroup.kill (Linux 5.14+) kills the whole cgroup atomically, including
    // processes forked while it runs.
    let kill_file = path.join("cgroup.kill");
    if kill_file.exists() {
        return fs::write(&kill_file, "1").map_err(|source| Error::Cgroup {
            path: kill_file,
            source,
        });
    }
    for pid in pids(path)? {
        // Already gone is fine; anything else shows up as EBUSY on rmdir.
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    Ok(())
}
