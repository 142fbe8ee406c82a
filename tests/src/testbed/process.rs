//! A process started in a pod or on a node, killed when dropped.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::{Error, sys};

/// A background process of a test. Its stdout is read line by line on a helper
/// thread, its stderr collected (for logs); dropping the handle kills and reaps
/// the process.
#[derive(Debug)]
pub struct Process {
    command: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub(super) fn spawn(mut cmd: Command) -> Result<Self, Error> {
        let command = sys::display(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        Ok(Self {
            command,
            child: Some(child),
            lines,
            stderr,
        })
    }

    /// Every line the process printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every stderr line that is JSON (a process logging with
    /// `LOG_FORMAT=json`), parsed.
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.stderr()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for a JSON stderr line that satisfies `matches`,
    /// and returns it parsed.
    pub fn wait_for_json(
        &self,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, Error> {
        let line = self.wait_for_stderr(timeout, |line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| matches(&value))
        })?;
        serde_json::from_str(&line).map_err(|e| Error::Process {
            command: self.command.clone(),
            reason: e.to_string(),
        })
    }

    /// Waits up to `timeout` for a stderr line that satisfies `matches`.
    pub fn wait_for_stderr(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().into_iter().find(|l| matches(l)) {
                return Ok(line);
            }
            if Instant::now() >= deadline {
                return Err(Error::Process {
                    command: self.command.clone(),
                    reason: format!(
                        "no matching stderr line within {timeout:?}; stderr:\n{}",
                        self.stderr().join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Process {
                command: self.command.clone(),
                reason: "already stopped".to_owned(),
            });
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout {
                        command: self.command.clone(),
                        after: timeout,
                    });
                }
            }
        }
    }

    /// The process id (also its id inside the pod: pods share the host's pid
    /// namespace).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The next line the process prints, waiting up to `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Result<String, Error> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|e| Error::Process {
                command: self.command.clone(),
                reason: match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("printed no line within {timeout:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        "exited without printing a line".to_owned()
                    }
                },
            })
    }

    /// Waits for the line that starts with `prefix` (skipping others), up to
    /// `timeout` for each line.
    pub fn wait_for_line(&self, prefix: &str, timeout: Duration) -> Result<String, Error> {
        loop {
            let line = self.next_line(timeout)?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its
    /// exit status and the stdout lines not read yet.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, Error> {
        let Some(child) = self.child.take() else {
            return Err(Error::Process {
                command: self.command.clone(),
                reason: "already killed".to_owned(),
            });
        };
        let output = sys::wait_with_timeout(child, timeout)
            .map_err(|source| Error::Spawn {
                command: self.command.clone(),
                source,
            })?
            .ok_or_else(|| Error::Timeout {
                command: self.command.clone(),
                after: timeout,
            })?;
        // The reader thread ends at EOF, right after the exit; a grandchild that
        // keeps stdout open can delay that, hence the bound per line.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            rest.push(line);
        }
        Ok(Output {
            stdout: rest.join("\n").into_bytes(),
            ..output
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
