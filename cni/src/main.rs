//! The `ambit-cni` binary. Without arguments it is a CNI plugin: it reads the
//! `CNI_*` variables and the network config on stdin, and writes the result or
//! error JSON to stdout (see the library's docs for when a pod may start). With
//! arguments it is the node installer (`install`, `installed`, `uninstall`,
//! `--help`); `install --watch` runs until the container is stopped.
//!
//! All the logic is in the library; this file only connects it to the process's
//! environment, streams and exit code.
#![forbid(unsafe_code)]

use std::{
    io::{self, Read, Write},
    process::ExitCode,
};

use ambit_cni::{
    Outcome, cli,
    outcome::{CniError, Code},
    plugin,
};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(std::ffi::OsString::into_string)
        .collect();
    let outcome = match args {
        Ok(args) if args.is_empty() => cni(),
        Ok(args) => match cli::run(&args) {
            cli::Run::Exit(outcome) => outcome,
            cli::Run::Watch { report, watch } => {
                let _ = io::stdout().lock().write_all(report.as_bytes());
                watch.forever(&mut io::stdout(), &mut io::stderr())
            }
        },
        Err(arg) => Outcome {
            stdout: String::new(),
            stderr: format!("ambit-cni: argument {arg:?} is not UTF-8\n"),
            exit_code: 2,
        },
    };
    // If the streams are gone there is no one left to tell.
    let _ = io::stdout().lock().write_all(outcome.stdout.as_bytes());
    let _ = io::stderr().lock().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.exit_code)
}

/// One CNI invocation on the process's environment and stdin.
fn cni() -> Outcome {
    let mut stdin = Vec::new();
    if let Err(error) = io::stdin().lock().read_to_end(&mut stdin) {
        return Outcome::failure(
            &CniError::new(Code::IoFailure, "cannot read the network config from stdin")
                .details(error.to_string()),
        );
    }
    plugin::run(&|name| std::env::var(name).ok(), &stdin)
}
