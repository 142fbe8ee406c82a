//! `ambit-cni install` and `uninstall`: put the binary into the node's CNI bin
//! directory and chain it into the primary network config, or take both out.
//!
//! The primary config is the one the runtime uses: like libcni, the first file
//! in byte-wise order of its name among those ending in `.conflist`, `.conf` or
//! `.json` in the config directory. A single-plugin config (`.conf`, or a
//! `.json` without `plugins`) is turned into a conflist first, because only a
//! conflist can chain plugins.
//!
//! Every file is replaced atomically (written to a temporary file in the same
//! directory, then renamed over the old one), so the runtime, which watches the
//! directory, never reads half a file. Install copies the binary before it
//! edits the config, and uninstall edits the configs before it removes the
//! binary, so a config never names a plugin that is not there. Both are
//! idempotent: a second run changes nothing.
//!
//! The primary plugin may rewrite its config at any time (on a restart or an
//! upgrade), dropping the entry; [`drift`] finds what install put in place and
//! is gone, for `install --watch` and the `installed` probe.

use std::{
    fmt, fs,
    io::{self, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use crate::{PLUGIN_TYPE, config::SUPPORTED_VERSIONS};

pub mod drift;

pub use drift::{Drift, check, reconcile};

/// The name of the binary in the CNI bin directory, which is also the `type`
/// of its conflist entry.
pub const BINARY_NAME: &str = PLUGIN_TYPE;

/// Errors of install and uninstall; each names the file or directory involved.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The config directory cannot be listed.
    ReadDir {
        /// The CNI config directory.
        dir: PathBuf,
        /// Why it cannot be listed.
        source: io::Error,
    },
    /// The config directory holds no network config to chain into.
    NoConfig {
        /// The CNI config directory.
        dir: PathBuf,
    },
    /// A config file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: io::Error,
    },
    /// A config file is not valid JSON.
    NotJson {
        /// The file.
        path: PathBuf,
        /// Where the JSON breaks.
        source: serde_json::Error,
    },
    /// A config file is JSON but not a network config this tool can edit.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Converting `conf` would overwrite an existing conflist.
    ConflistExists {
        /// The single-plugin config to convert.
        conf: PathBuf,
        /// The conflist it would become.
        conflist: PathBuf,
    },
    /// The binary cannot be copied into the bin directory.
    CopyBinary {
        /// The binary being installed.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// Why the copy failed.
        source: io::Error,
    },
    /// A file cannot be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why it cannot be written.
        source: io::Error,
    },
    /// A file cannot be removed.
    Remove {
        /// The file.
        path: PathBuf,
        /// Why it cannot be removed.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ReadDir { dir, .. } => {
                write!(f, "cannot list the CNI config directory {}", dir.display())
            }
            Error::NoConfig { dir } => write!(
                f,
                "no network config (*.conflist, *.conf, *.json) in {}: install ambit-cni after \
                 the primary CNI plugin has written its config",
                dir.display()
            ),
            Error::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            Error::NotJson { path, .. } => write!(f, "{} is not valid JSON", path.display()),
            Error::Invalid { path, problem } => write!(f, "{}: {problem}", path.display()),
            Error::ConflistExists { conf, conflist } => write!(
                f,
                "cannot convert {} into a conflist: {} already exists",
                conf.display(),
                conflist.display()
            ),
            Error::CopyBinary { from, to, .. } => {
                write!(f, "cannot install {} as {}", from.display(), to.display())
            }
            Error::Write { path, .. } => write!(f, "cannot write {}", path.display()),
            Error::Remove { path, .. } => write!(f, "cannot remove {}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ReadDir { source, .. }
            | Error::Read { source, .. }
            | Error::CopyBinary { source, .. }
            | Error::Write { source, .. }
            | Error::Remove { source, .. } => Some(source),
            Error::NotJson { source, .. } => Some(source),
            Error::NoConfig { .. } | Error::Invalid { .. } | Error::ConflistExists { .. } => None,
        }
    }
}

/// What `install` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The runtime's CNI binary directory (`/opt/cni/bin` on most nodes).
    pub cni_bin_dir: PathBuf,
    /// The runtime's CNI config directory (`/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// ztunnel's socket, written as the entry's `ztunnelSocket`.
    pub socket: String,
    /// The binary to copy in.
    pub binary: PathBuf,
}

/// Installs the binary and chains it into the primary config. Returns one line
/// per thing done, for the operator. A config it refuses is found before
/// anything is written.
pub fn install(options: &InstallOptions) -> Result<Vec<String>, Error> {
    let plan = plan_config(&options.cni_conf_dir, &options.socket)?;

    let target = options.cni_bin_dir.join(BINARY_NAME);
    let copy_error = |source| Error::CopyBinary {
        from: options.binary.clone(),
        to: target.clone(),
        source,
    };
    let mut binary = fs::File::open(&options.binary).map_err(copy_error)?;
    replace_atomic(&target, &mut binary, 0o755).map_err(copy_error)?;
    let mut report = vec![format!(
        "installed {} as {}",
        options.binary.display(),
        target.display()
    )];

    let converted = plan.converts();
    if converted || plan.change != Change::Unchanged {
        write_json(&plan.destination, &plan.config, plan.mode)?;
    }
    if converted {
        fs::remove_file(&plan.source).map_err(|source| Error::Remove {
            path: plan.source.clone(),
            source,
        })?;
        report.push(format!(
            "converted {} into {}",
            plan.source.display(),
            plan.destination.display()
        ));
    }
    let destination = plan.destination.display();
    report.push(match plan.change {
        Change::Added => format!("chained {PLUGIN_TYPE} into {destination}"),
        Change::SocketSet { .. } => format!(
            "set the ztunnelSocket of {PLUGIN_TYPE} in {destination} to {}",
            options.socket
        ),
        Change::Unchanged => format!("{destination} already chains {PLUGIN_TYPE}"),
    });
    Ok(report)
}

/// The edit install makes to the primary config, computed before any write.
struct ConfigPlan {
    /// The primary config as found.
    source: PathBuf,
    /// Where the edited conflist goes: `source`, or `<stem>.conflist` when
    /// `source` is a single-plugin config.
    destination: PathBuf,
    /// The conflist with the plugin's entry.
    config: Map<String, Value>,
    /// The permission bits of `source`, kept.
    mode: u32,
    /// What happened to the entry.
    change: Change,
}

impl ConfigPlan {
    /// Whether `source` is a single-plugin config that becomes `destination`.
    fn converts(&self) -> bool {
        self.source != self.destination
    }
}

fn plan_config(dir: &Path, socket: &str) -> Result<ConfigPlan, Error> {
    let source = primary_config(dir)?;
    let mode = file_mode(&source)?;
    let mut config = read_object(&source)?;
    check_version(&source, &config)?;
    let destination = if is_single_plugin(&source, &config) {
        let conflist = source.with_extension("conflist");
        config = to_conflist(&source, config)?;
        if conflist.exists() {
            // A conflist that chains the plugin is one an earlier install made
            // from this config: that install stopped before it removed the
            // `.conf`, or the primary plugin has since written the `.conf`
            // again (the runtime reads the `.conf`, which sorts first). Either
            // way the `.conf` is the primary plugin's latest word; convert it
            // again and keep the old conflist's entries of the plugin, with any
            // fields an operator added. Any other conflist of that name is not
            // ours to overwrite.
            let existing = read_object(&conflist)?;
            let ours: Vec<Value> = (existing.get("plugins").and_then(Value::as_array))
                .map(|plugins| {
                    plugins
                        .iter()
                        .filter(|plugin| is_ours(plugin))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if ours.is_empty() {
                return Err(Error::ConflistExists {
                    conf: source,
                    conflist,
                });
            }
            if let Some(Value::Array(plugins)) = config.get_mut("plugins") {
                plugins.extend(ours);
            }
        }
        conflist
    } else {
        source.clone()
    };
    let change = ensure_entry(&source, &mut config, socket)?;
    Ok(ConfigPlan {
        source,
        destination,
        config,
        mode,
        change,
    })
}

/// Removes the plugin's entries from every conflist in `cni_conf_dir` and the
/// binary from `cni_bin_dir`. Files that are not valid configs are skipped
/// (and reported), since they cannot hold an entry this tool wrote.
pub fn uninstall(cni_bin_dir: &Path, cni_conf_dir: &Path) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    for path in config_files(cni_conf_dir)? {
        let mut config = match read_object(&path) {
            Ok(config) => config,
            Err(error) => {
                report.push(format!("skipped: {}", crate::outcome::chain(&error)));
                continue;
            }
        };
        let Some(Value::Array(plugins)) = config.get_mut("plugins") else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|plugin| !is_ours(plugin));
        if plugins.len() != before {
            write_json(&path, &config, file_mode(&path)?)?;
            report.push(format!("removed {PLUGIN_TYPE} from {}", path.display()));
        }
    }
    let binary = cni_bin_dir.join(BINARY_NAME);
    match fs::remove_file(&binary) {
        Ok(()) => report.push(format!("removed {}", binary.display())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            report.push(format!("{} was not installed", binary.display()));
        }
        Err(source) => {
            return Err(Error::Remove {
                path: binary,
                source,
            });
        }
    }
    Ok(report)
}

/// What [`ensure_entry`] did to the plugin list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Added,
    /// An entry named another socket: `previous` is its `ztunnelSocket` as
    /// JSON text, `None` when it had none.
    SocketSet {
        previous: Option<String>,
    },
    Unchanged,
}

/// The config files of `dir` the runtime would consider, in its order.
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let wanted = matches!(
            path.extension().and_then(|ext| ext.to_str()),
            Some("conflist" | "conf" | "json")
        );
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The config the runtime uses: the first of [`config_files`].
fn primary_config(dir: &Path) -> Result<PathBuf, Error> {
    config_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoConfig {
            dir: dir.to_owned(),
        })
}

fn read_object(path: &Path) -> Result<Map<String, Value>, Error> {
    let bytes = fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(config)) => Ok(config),
        Ok(_) => Err(invalid(path, "the config is not a JSON object")),
        Err(source) => Err(Error::NotJson {
            path: path.to_owned(),
            source,
        }),
    }
}

fn invalid(path: &Path, problem: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// A `.conf` is always a single plugin's config; a `.json` is one when it has
/// no `plugins`.
fn is_single_plugin(path: &Path, config: &Map<String, Value>) -> bool {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some("conf") => true,
        Some("json") => !config.contains_key("plugins"),
        _ => false,
    }
}

/// Refuses configs whose `cniVersion` this plugin cannot serve: chaining it
/// there would fail every pod's ADD.
fn check_version(path: &Path, config: &Map<String, Value>) -> Result<(), Error> {
    match config.get("cniVersion").and_then(Value::as_str) {
        Some(version) if SUPPORTED_VERSIONS.contains(&version) => Ok(()),
        Some(version) => Err(invalid(
            path,
            format!(
                "cniVersion {version:?} cannot chain {PLUGIN_TYPE} (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
        None => Err(invalid(path, "the config has no cniVersion string")),
    }
}

/// `{cniVersion, name, plugins: [<the conf without cniVersion and name>]}`.
fn to_conflist(path: &Path, mut conf: Map<String, Value>) -> Result<Map<String, Value>, Error> {
    if !conf.get("type").is_some_and(Value::is_string) {
        return Err(invalid(path, "the single-plugin config has no type"));
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = conf.remove(key) {
            list.insert(key.to_owned(), value);
        }
    }
    list.insert(
        "plugins".to_owned(),
        Value::Array(vec![Value::Object(conf)]),
    );
    Ok(list)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Appends the plugin's entry to `plugins`, or points existing entries at
/// `socket`; other fields of an existing entry are kept.
fn ensure_entry(
    path: &Path,
    config: &mut Map<String, Value>,
    socket: &str,
) -> Result<Change, Error> {
    let Some(Value::Array(plugins)) = config.get_mut("plugins") else {
        return Err(invalid(path, "plugins is not an array"));
    };
    let socket_value = Value::String(socket.to_owned());
    let mut found = false;
    let mut updated = None;
    for plugin in plugins.iter_mut() {
        let Value::Object(entry) = plugin else {
            continue;
        };
        if entry.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE) {
            continue;
        }
        found = true;
        if entry.get("ztunnelSocket") != Some(&socket_value) {
            let previous = entry.insert("ztunnelSocket".to_owned(), socket_value.clone());
            updated.get_or_insert(previous.map(|value| value.to_string()));
        }
    }
    Ok(match (found, updated) {
        (true, Some(previous)) => Change::SocketSet { previous },
        (true, None) => Change::Unchanged,
        (false, _) => {
            let mut entry = Map::new();
            entry.insert("type".to_owned(), Value::String(PLUGIN_TYPE.to_owned()));
            entry.insert("ztunnelSocket".to_owned(), socket_value);
            plugins.push(Value::Object(entry));
            Change::Added
        }
    })
}

/// The permission bits of `path`, which its replacement keeps.
fn file_mode(path: &Path) -> Result<u32, Error> {
    fs::metadata(path)
        .map(|metadata| metadata.permissions().mode() & 0o7777)
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
}

fn write_json(path: &Path, config: &Map<String, Value>, mode: u32) -> Result<(), Error> {
    // A map of JSON values always serializes.
    let mut text = serde_json::to_vec_pretty(config).unwrap_or_default();
    text.push(b'\n');
    replace_atomic(path, &mut text.as_slice(), mode).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` with the bytes of `contents` and permission bits `mode`: the
/// bytes go to a temporary file beside it, which is synced and renamed over
/// `path`. The temporary name starts with `.` and ends in no config extension,
/// so the runtime ignores it.
fn replace_atomic(path: &Path, contents: &mut dyn Read, mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of a crashed run with the same pid; absent almost always.
    let _ = fs::remove_file(&temporary);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        io::copy(contents, &mut file)?;
        file.flush()?;
        // The umask applied at creation; set the bits exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
        return written;
    }
    // Make the rename itself durable; a failure here leaves a correct file.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests;
