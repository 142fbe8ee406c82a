//! The binary's own command line, used only when it is run with arguments
//! (the runtime runs CNI plugins without any): `install` (once, or with
//! `--watch` for the life of the container), `installed` (the container's
//! readiness probe), `uninstall` and `--help`. A handful of flags, parsed by
//! hand; each flag may be written `--flag VALUE` or `--flag=VALUE`.
//!
//! Every command but `install --watch` is one [`Outcome`]. `install --watch`
//! hands `main` a [`Watch`] after its first install: a loop that sleeps and
//! makes one [`install::reconcile`] pass per tick, printing a line to stdout
//! for each repair and one to stderr for each new error, and never returns.

use std::{
    fmt,
    io::Write,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use crate::{
    PLUGIN_TYPE,
    config::DEFAULT_ZTUNNEL_SOCKET,
    install::{self, InstallOptions},
    outcome::{Outcome, chain},
};

/// The `--help` text.
pub const USAGE: &str = "\
ambit-cni: CNI plugin that has the node's ztunnel enroll each new pod before it starts.

Run without arguments by the container runtime, as a CNI plugin chained after the
primary one. Run with arguments to install it on a node, keep it installed, check
it or remove it:

  ambit-cni install --cni-bin-dir DIR --cni-conf-dir DIR [--socket PATH] [--binary PATH]
                    [--watch SECONDS]
      Copies the binary (this one, or --binary) to DIR/ambit-cni and appends
      {\"type\":\"ambit-cni\",\"ztunnelSocket\":PATH} to the primary network config
      (the first *.conflist, *.conf or *.json of --cni-conf-dir; a single-plugin
      config becomes a conflist). --socket defaults to /var/run/ambit/cni.sock.
      Running it again changes nothing.
      With --watch, it then runs until killed: every SECONDS (at least 1) it
      checks that the primary config still chains ambit-cni with that socket
      and that DIR/ambit-cni is still a copy of the binary, installs again when
      not (a primary plugin rewrites its config when it restarts or upgrades),
      and prints a line for each repair. Errors after the first install are
      printed (once while the same error repeats) and retried at the next check.

  ambit-cni installed --cni-bin-dir DIR --cni-conf-dir DIR [--socket PATH]
      Exits 0 when the primary config chains ambit-cni with that socket and
      DIR/ambit-cni is present; otherwise prints why and exits 1. Meant as the
      readiness probe of the container that runs install --watch.

  ambit-cni uninstall --cni-bin-dir DIR --cni-conf-dir DIR
      Removes the ambit-cni entries from every config of --cni-conf-dir and
      DIR/ambit-cni. Running it again changes nothing.

  ambit-cni --help
      Prints this text.
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Print [`USAGE`].
    Help,
    /// Install; `binary` is `None` when the running binary is meant.
    Install {
        /// The runtime's CNI binary directory.
        cni_bin_dir: PathBuf,
        /// The runtime's CNI config directory.
        cni_conf_dir: PathBuf,
        /// ztunnel's socket for the plugin's entry.
        socket: String,
        /// The binary to copy, from `--binary`.
        binary: Option<PathBuf>,
        /// From `--watch`: after installing, check this often and repair.
        watch: Option<Duration>,
    },
    /// Check that the plugin is installed (the readiness probe).
    Installed {
        /// The runtime's CNI binary directory.
        cni_bin_dir: PathBuf,
        /// The runtime's CNI config directory.
        cni_conf_dir: PathBuf,
        /// The socket the plugin's entry must name.
        socket: String,
    },
    /// Uninstall.
    Uninstall {
        /// The runtime's CNI binary directory.
        cni_bin_dir: PathBuf,
        /// The runtime's CNI config directory.
        cni_conf_dir: PathBuf,
    },
}

/// A command line that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The first argument is not a command.
    UnknownCommand(String),
    /// A flag the command does not take.
    UnknownFlag {
        /// The command.
        command: &'static str,
        /// The flag as written.
        flag: String,
    },
    /// A flag without its value.
    MissingValue(&'static str),
    /// A flag given twice.
    Repeated(&'static str),
    /// A flag the command needs is absent.
    MissingFlag {
        /// The command.
        command: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// `--socket` is not absolute; the runtime runs the plugin in no particular
    /// directory.
    RelativeSocket(String),
    /// `--watch` is not a whole number of seconds of at least 1.
    BadInterval(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownCommand(command) => write!(f, "unknown command {command:?}"),
            Error::UnknownFlag { command, flag } => {
                write!(f, "{command} does not take {flag:?}")
            }
            Error::MissingValue(flag) => write!(f, "{flag} needs a value"),
            Error::Repeated(flag) => write!(f, "{flag} is given twice"),
            Error::MissingFlag { command, flag } => write!(f, "{command} needs {flag}"),
            Error::RelativeSocket(socket) => {
                write!(f, "--socket {socket:?} is not an absolute path")
            }
            Error::BadInterval(value) => write!(
                f,
                "--watch takes a whole number of seconds, at least 1, not {value:?}"
            ),
        }
    }
}

impl std::error::Error for Error {}

const BIN_DIR: &str = "--cni-bin-dir";
const CONF_DIR: &str = "--cni-conf-dir";
const SOCKET: &str = "--socket";
const BINARY: &str = "--binary";
const WATCH: &str = "--watch";

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, Error> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Invocation::Help);
    };
    if rest.iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Invocation::Help);
    }
    match command.as_str() {
        "--help" | "-h" | "help" => Ok(Invocation::Help),
        "install" => {
            let [bin, conf, socket, binary, watch] =
                flags("install", rest, [BIN_DIR, CONF_DIR, SOCKET, BINARY, WATCH])?;
            Ok(Invocation::Install {
                cni_bin_dir: required("install", BIN_DIR, bin)?,
                cni_conf_dir: required("install", CONF_DIR, conf)?,
                socket: socket_or_default(socket)?,
                binary: binary.map(PathBuf::from),
                watch: watch.map(interval).transpose()?,
            })
        }
        "installed" => {
            let [bin, conf, socket] = flags("installed", rest, [BIN_DIR, CONF_DIR, SOCKET])?;
            Ok(Invocation::Installed {
                cni_bin_dir: required("installed", BIN_DIR, bin)?,
                cni_conf_dir: required("installed", CONF_DIR, conf)?,
                socket: socket_or_default(socket)?,
            })
        }
        "uninstall" => {
            let [bin, conf] = flags("uninstall", rest, [BIN_DIR, CONF_DIR])?;
            Ok(Invocation::Uninstall {
                cni_bin_dir: required("uninstall", BIN_DIR, bin)?,
                cni_conf_dir: required("uninstall", CONF_DIR, conf)?,
            })
        }
        other => Err(Error::UnknownCommand(other.to_owned())),
    }
}

/// Collects the values of `known` flags from `args`, in `known`'s order.
fn flags<const N: usize>(
    command: &'static str,
    args: &[String],
    known: [&'static str; N],
) -> Result<[Option<String>; N], Error> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(index) = known.iter().position(|flag| *flag == name) else {
            return Err(Error::UnknownFlag {
                command,
                flag: arg.clone(),
            });
        };
        let flag = known[index];
        let value = match inline {
            Some(value) => value,
            None => args.next().cloned().ok_or(Error::MissingValue(flag))?,
        };
        if value.is_empty() {
            return Err(Error::MissingValue(flag));
        }
        if values[index].replace(value).is_some() {
            return Err(Error::Repeated(flag));
        }
    }
    Ok(values)
}

/// `--socket`, absolute, or the default.
fn socket_or_default(socket: Option<String>) -> Result<String, Error> {
    let socket = socket.unwrap_or_else(|| DEFAULT_ZTUNNEL_SOCKET.to_owned());
    if socket.starts_with('/') {
        Ok(socket)
    } else {
        Err(Error::RelativeSocket(socket))
    }
}

/// `--watch`'s seconds: a check at least every second is already more than a
/// primary plugin's restart needs, and 0 would spin.
fn interval(value: String) -> Result<Duration, Error> {
    match value.parse::<u64>() {
        Ok(seconds) if seconds >= 1 => Ok(Duration::from_secs(seconds)),
        _ => Err(Error::BadInterval(value)),
    }
}

fn required(
    command: &'static str,
    flag: &'static str,
    value: Option<String>,
) -> Result<PathBuf, Error> {
    value
        .map(PathBuf::from)
        .ok_or(Error::MissingFlag { command, flag })
}

/// What [`run`] leaves to `main`.
#[derive(Debug)]
#[must_use]
pub enum Run {
    /// Write the outcome to the process's streams and exit with its code.
    Exit(Outcome),
    /// `install --watch` whose first install succeeded: print `report`, then
    /// hand the process to [`Watch::forever`].
    Watch {
        /// What the first install did, a line each.
        report: String,
        /// The loop to run.
        watch: Watch,
    },
}

/// Runs the command line `args` (after the program name). Exit codes: 0 on
/// success, 1 when install or uninstall fails or `installed` finds the plugin
/// missing, 2 for a command line that cannot be run.
pub fn run(args: &[String]) -> Run {
    let invocation = match parse(args) {
        Ok(invocation) => invocation,
        Err(error) => {
            return Run::Exit(Outcome {
                stdout: String::new(),
                stderr: format!("ambit-cni: {error}\n\n{USAGE}"),
                exit_code: 2,
            });
        }
    };
    let report = match invocation {
        Invocation::Help => return Run::Exit(Outcome::success(USAGE.to_owned())),
        Invocation::Install {
            cni_bin_dir,
            cni_conf_dir,
            socket,
            binary,
            watch,
        } => {
            let binary = match binary.map_or_else(std::env::current_exe, Ok) {
                Ok(binary) => binary,
                Err(error) => {
                    return Run::Exit(failed(&format!("cannot find the running binary: {error}")));
                }
            };
            let options = InstallOptions {
                cni_bin_dir,
                cni_conf_dir,
                socket,
                binary,
            };
            match (install::install(&options), watch) {
                (Ok(mut report), Some(interval)) => {
                    report.push(format!(
                        "checking every {}s that {PLUGIN_TYPE} stays installed",
                        interval.as_secs()
                    ));
                    return Run::Watch {
                        report: lines(&report),
                        watch: Watch::new(options, interval),
                    };
                }
                (report, _) => report,
            }
        }
        Invocation::Installed {
            cni_bin_dir,
            cni_conf_dir,
            socket,
        } => return Run::Exit(installed(&cni_bin_dir, &cni_conf_dir, &socket)),
        Invocation::Uninstall {
            cni_bin_dir,
            cni_conf_dir,
        } => install::uninstall(&cni_bin_dir, &cni_conf_dir),
    };
    Run::Exit(match report {
        Ok(report) => Outcome::success(lines(&report)),
        Err(error) => failed(&chain(&error)),
    })
}

/// The `installed` probe: nothing on stdout but a line when installed, the
/// drifts or the error on stderr with exit 1 when not.
fn installed(cni_bin_dir: &Path, cni_conf_dir: &Path, socket: &str) -> Outcome {
    match install::check(cni_bin_dir, cni_conf_dir, socket, None) {
        Ok(drifts) if drifts.is_empty() => Outcome::success(format!(
            "{PLUGIN_TYPE} is installed in {} and chained in {}\n",
            cni_bin_dir.display(),
            cni_conf_dir.display()
        )),
        Ok(drifts) => {
            let why: Vec<String> = drifts.iter().map(ToString::to_string).collect();
            failed(&format!("not installed: {}", why.join("; ")))
        }
        Err(error) => failed(&format!("cannot tell whether installed: {}", chain(&error))),
    }
}

fn lines(report: &[String]) -> String {
    report.iter().map(|line| format!("{line}\n")).collect()
}

fn failed(message: &str) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("ambit-cni: {message}\n"),
        exit_code: 1,
    }
}

/// The loop of `install --watch` after its first install: sleep for the
/// interval, make one [`install::reconcile`] pass, repeat. Nothing a pass meets
/// ends the loop: the primary plugin may leave a half-written or invalid config
/// for a moment, and the container must outlive that.
#[derive(Debug)]
pub struct Watch {
    options: InstallOptions,
    interval: Duration,
    /// The last pass's error, so that one that persists (a config install
    /// refuses) is printed once rather than at every tick.
    last_error: Option<String>,
}

impl Watch {
    /// A loop that keeps `options` installed, checking every `interval`.
    pub fn new(options: InstallOptions, interval: Duration) -> Self {
        Self {
            options,
            interval,
            last_error: None,
        }
    }

    /// One tick without the sleep: writes the repair line to `out`, or the
    /// error to `err` unless the previous tick wrote the same one, or nothing
    /// when everything was in place. Failed writes are ignored: there is no
    /// one left to tell.
    pub fn tick(&mut self, out: &mut dyn Write, err: &mut dyn Write) {
        match install::reconcile(&self.options) {
            Ok(repair) => {
                self.last_error = None;
                if let Some(line) = repair {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Err(error) => {
                let text = chain(&error);
                if self.last_error.as_ref() != Some(&text) {
                    let _ = writeln!(
                        err,
                        "ambit-cni: {text} (trying again in {}s)",
                        self.interval.as_secs()
                    );
                    let _ = err.flush();
                    self.last_error = Some(text);
                }
            }
        }
    }

    /// Ticks every interval until the process is killed.
    pub fn forever(mut self, out: &mut dyn Write, err: &mut dyn Write) -> ! {
        loop {
            thread::sleep(self.interval);
            self.tick(out, err);
        }
    }
}

#[cfg(test)]
mod tests;
