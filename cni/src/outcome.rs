//! What one invocation hands back to its caller: the bytes for stdout and
//! stderr and the exit code, plus the CNI error object and its codes.
//!
//! The plugin logic returns an [`Outcome`] instead of writing to the process's
//! streams, so tests can run every command in-process; `main.rs` only copies the
//! outcome to the real streams.

use std::error::Error as StdError;

use serde::Serialize;

/// The CNI version written in errors raised before the network config has been
/// read (and in the `VERSION` answer).
pub const DEFAULT_CNI_VERSION: &str = "1.0.0";

/// The result of one invocation of the binary, before it touches the process's
/// streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Written to stdout: the CNI result or error JSON, or nothing.
    pub stdout: String,
    /// Written to stderr: human-readable lines for the runtime's logs.
    pub stderr: String,
    /// The process exit code: 0 on success, non-zero when stdout holds an error.
    pub exit_code: u8,
}

impl Outcome {
    /// A successful invocation that prints `stdout` (empty for none).
    pub fn success(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            exit_code: 0,
        }
    }

    /// A failed invocation: the error JSON on stdout, its message on stderr.
    pub fn failure(error: &CniError) -> Self {
        Self {
            stdout: error.to_json(),
            stderr: format!("ambit-cni: {}\n", error.one_line()),
            exit_code: 1,
        }
    }

    /// Adds a human-readable line to stderr.
    #[must_use]
    pub fn with_note(mut self, note: &str) -> Self {
        self.stderr.push_str("ambit-cni: ");
        self.stderr.push_str(note);
        self.stderr.push('\n');
        self
    }
}

/// The error codes of the CNI spec (1.0.0, "Error" section) that this plugin
/// uses, plus its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// 1: the config's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 4: a `CNI_*` variable, or a key of `CNI_ARGS`, is missing or wrong.
    InvalidEnv,
    /// 5: an I/O failure of the plugin itself, such as reading stdin.
    IoFailure,
    /// 6: stdin could not be decoded as this plugin's network config.
    DecodeFailed,
    /// 7: the config decoded but holds a value this plugin cannot use.
    InvalidConfig,
    /// 11: a transient condition (ztunnel unreachable); the runtime should
    /// retry later.
    TryAgainLater,
    /// 100 (the first plugin-specific code): ztunnel answered, and the pod is
    /// not (or cannot be) captured.
    ZtunnelRefused,
}

impl Code {
    /// The number written in the error's `code` field.
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::InvalidEnv => 4,
            Code::IoFailure => 5,
            Code::DecodeFailed => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::ZtunnelRefused => 100,
        }
    }
}

/// A CNI error result, as printed on stdout by a failed invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The `cniVersion` of the config when it was read, else
    /// [`DEFAULT_CNI_VERSION`].
    pub cni_version: String,
    /// What kind of failure this is.
    pub code: Code,
    /// One sentence for the operator, naming the pod or setting involved.
    pub msg: String,
    /// The underlying cause (an error chain or ztunnel's own text); empty when
    /// `msg` says it all.
    pub details: String,
}

/// The wire form of [`CniError`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorJson<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    /// An error with no details, under the default CNI version.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            cni_version: DEFAULT_CNI_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Sets `details`.
    #[must_use]
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Sets the `cniVersion` the error is written under.
    #[must_use]
    pub fn version(mut self, cni_version: &str) -> Self {
        cni_version.clone_into(&mut self.cni_version);
        self
    }

    /// The error object as compact JSON followed by a newline.
    pub fn to_json(&self) -> String {
        let json = ErrorJson {
            cni_version: &self.cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing a struct of strings and an integer into a String cannot fail.
        let mut out = serde_json::to_string(&json).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{DEFAULT_CNI_VERSION}","code":{},"msg":"Bug: cannot encode the error"}}"#,
                self.code.number()
            )
        });
        out.push('\n');
        out
    }

    /// The message and details on one line, for stderr.
    pub fn one_line(&self) -> String {
        let mut line = format!("error {}: {}", self.code.number(), self.msg);
        if !self.details.is_empty() {
            line.push_str(" (");
            line.push_str(&self.details);
            line.push(')');
        }
        line.replace('\n', " ")
    }
}

/// An error and its sources, joined by `": "`: the one formatter of error chains
/// in this crate (messages never repeat their source, STYLE.md section 4).
pub fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let error = CniError::new(Code::ZtunnelRefused, "refused")
            .details("no capacity")
            .version("0.4.0");
        let json: serde_json::Value = serde_json::from_str(&error.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "0.4.0", "code": 100, "msg": "refused", "details": "no capacity"})
        );
    }

    #[test]
    fn empty_details_are_left_out() {
        let json: serde_json::Value =
            serde_json::from_str(&CniError::new(Code::InvalidEnv, "x").to_json()).unwrap();
        assert!(json.get("details").is_none(), "{json}");
        assert_eq!(json["code"], 4);
    }

    #[test]
    fn failure_exits_non_zero_with_a_one_line_message() {
        let outcome = Outcome::failure(&CniError::new(Code::TryAgainLater, "a\nb").details("c"));
        assert_ne!(outcome.exit_code, 0);
        assert_eq!(outcome.stderr, "ambit-cni: error 11: a b (c)\n");
    }

    #[derive(Debug)]
    struct Outer(io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_joins_sources() {
        let error = Outer(io::Error::other("inner"));
        assert_eq!(chain(&error), "outer: inner");
    }
}
