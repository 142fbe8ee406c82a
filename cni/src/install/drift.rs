//! What [`install`] put in place and is no longer there, and putting it back.
//!
//! Primary CNI plugins (Calico, Cilium, flannel) write their config when they
//! start, so a restart or an upgrade silently drops the plugin's entry, and new
//! pods start uncaptured. [`check`] compares the node with what install would
//! leave: the primary config (chosen as install chooses it) must chain the
//! plugin with the right socket, and the bin directory must hold the binary.
//! [`reconcile`] is one pass of `install --watch`: check, and install again if
//! anything drifted. The config check is install's own plan: a drift is
//! exactly an edit install would make, so a repair is never followed by
//! another one for the same reason.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use super::{BINARY_NAME, Change, Error, InstallOptions, install, plan_config};
use crate::PLUGIN_TYPE;

/// One thing that install put in place and that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drift {
    /// The primary config has no entry for the plugin.
    NotChained {
        /// The primary config.
        config: PathBuf,
    },
    /// The primary config is a single-plugin config (a `.conf`, or a `.json`
    /// without `plugins`), which cannot chain anything.
    SinglePlugin {
        /// The primary config.
        config: PathBuf,
    },
    /// The plugin's entry in the primary config names another socket.
    OtherSocket {
        /// The primary config.
        config: PathBuf,
        /// The entry's `ztunnelSocket` as JSON text; `None` when it has none.
        found: Option<String>,
        /// The socket it should name.
        wanted: String,
    },
    /// The bin directory holds no file of the plugin's name.
    BinaryMissing {
        /// Where the binary belongs.
        path: PathBuf,
    },
    /// The file in the bin directory differs from the binary install copies.
    BinaryChanged {
        /// The file in the bin directory.
        path: PathBuf,
        /// The binary it should be a copy of.
        copy_of: PathBuf,
    },
}

impl fmt::Display for Drift {
    /// The state found, in the present tense (the `installed` probe's answer).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::NotChained { config } => {
                write!(f, "{} does not chain {PLUGIN_TYPE}", config.display())
            }
            Drift::SinglePlugin { config } => write!(
                f,
                "{} is a single-plugin config, which cannot chain {PLUGIN_TYPE}",
                config.display()
            ),
            Drift::OtherSocket {
                config,
                found,
                wanted,
            } => write!(
                f,
                "{} chains {PLUGIN_TYPE} {}, not {wanted:?}",
                config.display(),
                socket_phrase(found.as_deref())
            ),
            Drift::BinaryMissing { path } => write!(f, "{} is missing", path.display()),
            Drift::BinaryChanged { path, copy_of } => write!(
                f,
                "{} is not a copy of {}",
                path.display(),
                copy_of.display()
            ),
        }
    }
}

impl Drift {
    /// One line for the operator after install has put this right: what was
    /// wrong, then what was done.
    pub fn repaired(&self) -> String {
        match self {
            Drift::NotChained { config } => format!(
                "{} no longer chained {PLUGIN_TYPE}: chained it again",
                config.display()
            ),
            Drift::SinglePlugin { config } => format!(
                "{} was a single-plugin config without {PLUGIN_TYPE}: converted it into a \
                 conflist that chains {PLUGIN_TYPE}",
                config.display()
            ),
            Drift::OtherSocket {
                config,
                found,
                wanted,
            } => format!(
                "{} chained {PLUGIN_TYPE} {}: set it to {wanted:?} again",
                config.display(),
                socket_phrase(found.as_deref())
            ),
            Drift::BinaryMissing { path } => {
                format!("{} was missing: installed it again", path.display())
            }
            Drift::BinaryChanged { path, copy_of } => format!(
                "{} was no longer a copy of {}: copied it again",
                path.display(),
                copy_of.display()
            ),
        }
    }
}

fn socket_phrase(found: Option<&str>) -> String {
    match found {
        Some(found) => format!("with ztunnelSocket {found}"),
        None => "without a ztunnelSocket".to_owned(),
    }
}

/// What has drifted from an install with `socket` into `cni_bin_dir` and
/// `cni_conf_dir`; empty when nothing has. With `binary`, the installed binary
/// must have its exact contents; without, it need only be there. A config that
/// install would refuse is an error, not a drift.
pub fn check(
    cni_bin_dir: &Path,
    cni_conf_dir: &Path,
    socket: &str,
    binary: Option<&Path>,
) -> Result<Vec<Drift>, Error> {
    let mut drifts = Vec::new();
    let plan = plan_config(cni_conf_dir, socket)?;
    if plan.converts() {
        drifts.push(Drift::SinglePlugin {
            config: plan.source,
        });
    } else {
        match plan.change {
            Change::Added => drifts.push(Drift::NotChained {
                config: plan.source,
            }),
            Change::SocketSet { previous } => drifts.push(Drift::OtherSocket {
                config: plan.source,
                found: previous,
                wanted: socket.to_owned(),
            }),
            Change::Unchanged => {}
        }
    }
    drifts.extend(binary_drift(&cni_bin_dir.join(BINARY_NAME), binary)?);
    Ok(drifts)
}

/// One pass of `install --watch`: [`check`] against `options`, and when
/// anything drifted, install again. Returns one line saying what was repaired
/// and why (several drifts joined by `; `), or `None` when everything was in
/// place and nothing was written.
pub fn reconcile(options: &InstallOptions) -> Result<Option<String>, Error> {
    let drifts = check(
        &options.cni_bin_dir,
        &options.cni_conf_dir,
        &options.socket,
        Some(&options.binary),
    )?;
    if drifts.is_empty() {
        return Ok(None);
    }
    install(options)?;
    let lines: Vec<String> = drifts.iter().map(Drift::repaired).collect();
    Ok(Some(lines.join("; ")))
}

/// Whether `installed` is a regular file and, given `copy_of`, has its exact
/// contents. Both are read whole: a CNI plugin is a few megabytes at most.
fn binary_drift(installed: &Path, copy_of: Option<&Path>) -> Result<Option<Drift>, Error> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Read { path, source }
    };
    let missing = || {
        Some(Drift::BinaryMissing {
            path: installed.to_owned(),
        })
    };
    let metadata = match fs::metadata(installed) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Ok(missing()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(missing()),
        Err(source) => return Err(read_error(installed)(source)),
    };
    let Some(copy_of) = copy_of else {
        return Ok(None);
    };
    let wanted = fs::metadata(copy_of).map_err(read_error(copy_of))?;
    let same = metadata.len() == wanted.len()
        && fs::read(installed).map_err(read_error(installed))?
            == fs::read(copy_of).map_err(read_error(copy_of))?;
    Ok((!same).then(|| Drift::BinaryChanged {
        path: installed.to_owned(),
        copy_of: copy_of.to_owned(),
    }))
}

#[cfg(test)]
mod tests;
