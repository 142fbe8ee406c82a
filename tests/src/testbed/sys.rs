//! Running the tools the testbed is built with (`ip`, `nsenter`), with errors that
//! name the command and what it printed.

use std::{
    io::Read,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use super::Error;

/// The command line as a user would type it.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `program args...` and fails, naming it, when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> Result<Output, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    output(&mut cmd, Duration::from_secs(30))
}

/// `ip -n <netns> args...`: configures a namespace without entering it.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<Output, Error> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `cmd` to completion within `timeout`, capturing its output; a non-zero
/// exit or a timeout is an error that carries what it printed.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, Error> {
    let line = display(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: line.clone(),
            source,
        })?;
    let output = wait_with_timeout(child, timeout).map_err(|source| Error::Spawn {
        command: line.clone(),
        source,
    })?;
    match output {
        Some(output) if output.status.success() => Ok(output),
        Some(output) => Err(Error::Failed {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        }),
        None => Err(Error::Timeout {
            command: line,
            after: timeout,
        }),
    }
}

/// Waits for `child` up to `timeout`; kills it and returns `None` past that.
///
/// Output is drained on helper threads so a child that prints a lot never blocks
/// on a full pipe.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::io::Result<Option<Output>> {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    Ok(status.map(|status| Output {
        status,
        stdout,
        stderr,
    }))
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}
