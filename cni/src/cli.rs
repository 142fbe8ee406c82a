//! The binary's own command line, used only when it is run with arguments
//! (the runtime runs CNI plugins without any): `install`, `uninstall` and
//! `--help`. A handful of flags, parsed by hand; each flag may be written
//! `--flag VALUE` or `--flag=VALUE`.

use std::{fmt, path::PathBuf};

use crate::{
    config::DEFAULT_ZTUNNEL_SOCKET,
    install::{self, InstallOptions},
    outcome::{Outcome, chain},
};

/// The `--help` text.
pub const USAGE: &str = "\
ambit-cni: CNI plugin that has the node's ztunnel enroll each new pod before it starts.

Run without arguments by the container runtime, as a CNI plugin chained after the
primary one. Run with arguments to install or remove it on a node:

  ambit-cni install --cni-bin-dir DIR --cni-conf-dir DIR [--socket PATH] [--binary PATH]
      Copies the binary (this one, or --binary) to DIR/ambit-cni and appends
      {\"type\":\"ambit-cni\",\"ztunnelSocket\":PATH} to the primary network config
      (the first *.conflist, *.conf or *.json of --cni-conf-dir; a single-plugin
      config becomes a conflist). --socket defaults to /var/run/ambit/cni.sock.
      Running it again changes nothing.

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
        }
    }
}

impl std::error::Error for Error {}

const BIN_DIR: &str = "--cni-bin-dir";
const CONF_DIR: &str = "--cni-conf-dir";
const SOCKET: &str = "--socket";
const BINARY: &str = "--binary";

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
            let [bin, conf, socket, binary] =
                flags("install", rest, [BIN_DIR, CONF_DIR, SOCKET, BINARY])?;
            let socket = socket.unwrap_or_else(|| DEFAULT_ZTUNNEL_SOCKET.to_owned());
            if !socket.starts_with('/') {
                return Err(Error::RelativeSocket(socket));
            }
            Ok(Invocation::Install {
                cni_bin_dir: required("install", BIN_DIR, bin)?,
                cni_conf_dir: required("install", CONF_DIR, conf)?,
                socket,
                binary: binary.map(PathBuf::from),
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

fn required(
    command: &'static str,
    flag: &'static str,
    value: Option<String>,
) -> Result<PathBuf, Error> {
    value
        .map(PathBuf::from)
        .ok_or(Error::MissingFlag { command, flag })
}

/// Runs the command line `args` (after the program name): exit 0 on success, 1
/// when install or uninstall fails, 2 for a command line that cannot be run.
pub fn run(args: &[String]) -> Outcome {
    let invocation = match parse(args) {
        Ok(invocation) => invocation,
        Err(error) => {
            return Outcome {
                stdout: String::new(),
                stderr: format!("ambit-cni: {error}\n\n{USAGE}"),
                exit_code: 2,
            };
        }
    };
    let report = match invocation {
        Invocation::Help => return Outcome::success(USAGE.to_owned()),
        Invocation::Install {
            cni_bin_dir,
            cni_conf_dir,
            socket,
            binary,
        } => {
            let binary = match binary.map_or_else(std::env::current_exe, Ok) {
                Ok(binary) => binary,
                Err(error) => return failed(&format!("cannot find the running binary: {error}")),
            };
            install::install(&InstallOptions {
                cni_bin_dir,
                cni_conf_dir,
                socket,
                binary,
            })
        }
        Invocation::Uninstall {
            cni_bin_dir,
            cni_conf_dir,
        } => install::uninstall(&cni_bin_dir, &cni_conf_dir),
    };
    match report {
        Ok(lines) => Outcome::success(lines.iter().map(|line| format!("{line}\n")).collect()),
        Err(error) => failed(&chain(&error)),
    }
}

fn failed(message: &str) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("ambit-cni: {message}\n"),
        exit_code: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn install_with_all_flags() {
        assert_eq!(
            parse(&args(
                "install --cni-bin-dir /opt/cni/bin --cni-conf-dir=/etc/cni/net.d --socket /run/a.sock --binary /b"
            )),
            Ok(Invocation::Install {
                cni_bin_dir: "/opt/cni/bin".into(),
                cni_conf_dir: "/etc/cni/net.d".into(),
                socket: "/run/a.sock".into(),
                binary: Some("/b".into()),
            })
        );
    }

    #[test]
    fn install_defaults_the_socket_and_binary() {
        assert_eq!(
            parse(&args("install --cni-conf-dir /c --cni-bin-dir /b")),
            Ok(Invocation::Install {
                cni_bin_dir: "/b".into(),
                cni_conf_dir: "/c".into(),
                socket: DEFAULT_ZTUNNEL_SOCKET.into(),
                binary: None,
            })
        );
    }

    #[test]
    fn uninstall_takes_the_two_directories() {
        assert_eq!(
            parse(&args("uninstall --cni-bin-dir /b --cni-conf-dir /c")),
            Ok(Invocation::Uninstall {
                cni_bin_dir: "/b".into(),
                cni_conf_dir: "/c".into(),
            })
        );
    }

    #[test]
    fn help_in_any_position() {
        for line in ["--help", "-h", "help", "install --help", "uninstall -h"] {
            assert_eq!(parse(&args(line)), Ok(Invocation::Help), "{line}");
        }
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let cases = [
            ("frobnicate", Error::UnknownCommand("frobnicate".into())),
            (
                "uninstall --cni-bin-dir /b --cni-conf-dir /c --socket /s",
                Error::UnknownFlag {
                    command: "uninstall",
                    flag: "--socket".into(),
                },
            ),
            ("install --cni-bin-dir", Error::MissingValue(BIN_DIR)),
            (
                "install --cni-bin-dir= --cni-conf-dir /c",
                Error::MissingValue(BIN_DIR),
            ),
            (
                "install --cni-bin-dir /a --cni-bin-dir /b",
                Error::Repeated(BIN_DIR),
            ),
            (
                "install --cni-bin-dir /b",
                Error::MissingFlag {
                    command: "install",
                    flag: CONF_DIR,
                },
            ),
            (
                "install --cni-bin-dir /b --cni-conf-dir /c --socket run/a.sock",
                Error::RelativeSocket("run/a.sock".into()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(&args(line)), Err(expected), "{line}");
        }
    }

    #[test]
    fn usage_errors_exit_2_with_the_usage() {
        let outcome = run(&args("frobnicate"));
        assert_eq!(outcome.exit_code, 2);
        assert!(
            outcome.stderr.contains("unknown command"),
            "{}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains("ambit-cni install"),
            "{}",
            outcome.stderr
        );
        assert_eq!(run(&args("--help")), Outcome::success(USAGE.to_owned()));
    }

    #[test]
    fn install_failure_exits_1_naming_the_directory() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("net.d");
        let line = format!(
            "install --cni-bin-dir {} --cni-conf-dir {} --binary /nonexistent",
            dir.path().display(),
            missing.display()
        );
        let outcome = run(&args(&line));
        assert_eq!(outcome.exit_code, 1, "{outcome:?}");
        assert!(
            outcome.stderr.contains(&missing.display().to_string()),
            "{}",
            outcome.stderr
        );
    }
}
