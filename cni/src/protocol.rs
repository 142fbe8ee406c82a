//! The messages between this plugin and ztunnel on ztunnel's CNI socket.
//!
//! One exchange per connection: the plugin writes one line of JSON (a
//! [`Request`]) ending in `\n`, ztunnel answers with one line (a [`Reply`]).
//!
//! ```text
//! -> {"command":"add","pod":{"namespace":"demo","name":"web-1","uid":"7f3c"},
//!     "netns":"/var/run/netns/cni-1234","containerId":"abc","ips":["198.18.1.10"]}
//! <- {"enrolled":true}
//! <- {"enrolled":false,"reason":"namespace demo is not enrolled"}
//! <- {"error":"..."}
//! ```

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::cni_args::PodRef;

/// What the plugin asks of ztunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Capture the pod's network namespace before the pod starts (CNI ADD).
    Add,
    /// The pod's sandbox is going away; stop capturing it (CNI DEL).
    Del,
    /// Say whether the pod is captured (CNI CHECK).
    Check,
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// The pod, from `CNI_ARGS`.
    pub pod: PodRef,
    /// The path of the pod's network namespace (`CNI_NETNS`; empty on a DEL
    /// that the runtime sent without one).
    pub netns: String,
    /// The runtime's sandbox ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The pod's addresses from the primary plugin's result, without prefix
    /// lengths; serialized as strings.
    pub ips: Vec<IpAddr>,
}

impl Request {
    /// The request as one line of JSON, `\n` included.
    pub fn to_line(&self) -> Vec<u8> {
        // A struct of strings, an enum and addresses always serializes.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// ztunnel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The pod's namespace is captured (or already was).
    Enrolled,
    /// The pod is not in the mesh, so ztunnel leaves it alone.
    NotEnrolled {
        /// ztunnel's explanation, when it gave one.
        reason: Option<String>,
    },
    /// ztunnel could not capture the pod.
    Refused {
        /// ztunnel's error text.
        error: String,
    },
}

/// A reply line that is none of the three forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedReply {
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for MalformedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply: {}", self.problem)
    }
}

impl std::error::Error for MalformedReply {}

/// The reply's fields; extra fields are ignored so ztunnel may add some.
#[derive(Deserialize)]
struct RawReply {
    enrolled: Option<bool>,
    reason: Option<String>,
    error: Option<String>,
}

impl Reply {
    /// Reads one reply line (with or without its trailing newline).
    pub fn parse(line: &[u8]) -> Result<Self, MalformedReply> {
        let raw: RawReply = serde_json::from_slice(line).map_err(|error| MalformedReply {
            problem: error.to_string(),
        })?;
        match (raw.enrolled, raw.error) {
            (Some(true), None) => Ok(Reply::Enrolled),
            (Some(false), None) => Ok(Reply::NotEnrolled { reason: raw.reason }),
            (None, Some(error)) => Ok(Reply::Refused { error }),
            (Some(_), Some(_)) => Err(MalformedReply {
                problem: "it has both enrolled and error".to_owned(),
            }),
            (None, None) => Err(MalformedReply {
                problem: "it has neither enrolled nor error".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn request_line_matches_the_protocol() {
        let request = Request {
            command: Command::Add,
            pod: PodRef {
                namespace: "demo".into(),
                name: "web-1".into(),
                uid: "7f3c".into(),
            },
            netns: "/var/run/netns/cni-1234".into(),
            container_id: "abc".into(),
            ips: vec!["198.18.1.10".parse().unwrap(), "fd00::10".parse().unwrap()],
        };
        let line = request.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let json: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            json,
            json!({
                "command": "add",
                "pod": {"namespace": "demo", "name": "web-1", "uid": "7f3c"},
                "netns": "/var/run/netns/cni-1234",
                "containerId": "abc",
                "ips": ["198.18.1.10", "fd00::10"],
            })
        );
    }

    #[test]
    fn commands_are_lowercase() {
        for (command, text) in [
            (Command::Add, "\"add\""),
            (Command::Del, "\"del\""),
            (Command::Check, "\"check\""),
        ] {
            assert_eq!(serde_json::to_string(&command).unwrap(), text);
        }
    }

    #[test]
    fn the_three_replies_parse() {
        assert_eq!(Reply::parse(b"{\"enrolled\":true}\n"), Ok(Reply::Enrolled));
        assert_eq!(
            Reply::parse(br#"{"enrolled":false,"reason":"namespace demo is not enrolled"}"#),
            Ok(Reply::NotEnrolled {
                reason: Some("namespace demo is not enrolled".into())
            })
        );
        assert_eq!(
            Reply::parse(br#"{"error":"netns gone"}"#),
            Ok(Reply::Refused {
                error: "netns gone".into()
            })
        );
    }

    #[test]
    fn other_replies_are_malformed() {
        for line in [
            &b""[..],
            b"yes\n",
            b"[]",
            b"{}",
            br#"{"enrolled":"true"}"#,
            br#"{"enrolled":true,"error":"x"}"#,
        ] {
            let parsed = Reply::parse(line);
            assert!(
                parsed.is_err(),
                "{:?} parsed as {parsed:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
