//! Splitting a multi-document YAML file and reading each document as the typed
//! Kubernetes object its `apiVersion` and `kind` name, keeping line numbers.

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::core::PartialObjectMetaExt;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::DocumentError;
use crate::config::{Resource, crd};

/// One document of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Document {
    /// 1-based line of the document's first line in the file.
    pub(super) first_line: usize,
    /// The document's text (without its `---` marker).
    pub(super) text: String,
}

impl Document {
    /// 1-based line of the first line with content (not blank, not a comment),
    /// which is what a reader looks for.
    pub(super) fn start_line(&self) -> usize {
        let skipped = self
            .text
            .lines()
            .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            .count();
        self.first_line + skipped
    }
}

/// Splits `text` at `---` markers (and `...` ends), as YAML does: a marker is
/// three dashes at the start of a line, alone or followed by a space.
pub(super) fn split(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = Document {
        first_line: 1,
        text: String::new(),
    };
    let mut ended = false;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker {
            docs.push(std::mem::replace(
                &mut current,
                Document {
                    first_line: number + 1,
                    text: String::new(),
                },
            ));
            ended = false;
            let rest = line[3..].trim_start();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.first_line = number;
                current.text.push_str(rest);
                current.text.push('\n');
            }
            continue;
        }
        if line == "..." || line.starts_with("... ") {
            ended = true;
            continue;
        }
        if !ended {
            current.text.push_str(line);
        }
        current.text.push('\n');
    }
    docs.push(current);
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// A parse failure: the document-relative line when known, and the reason.
pub(super) type Failure = (Option<usize>, DocumentError);

/// Reads one document as a typed object.
pub(super) fn resource(doc: &Document) -> Result<Resource, Failure> {
    let value: Value = serde_yaml_ng::from_str(&doc.text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        (line, DocumentError::Syntax(strip_location(&e)))
    })?;
    let object = value
        .as_object()
        .ok_or((None, DocumentError::NotAnObject))?;
    let field = |name: &'static str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .ok_or((None, DocumentError::MissingTypeField(name)))
    };
    let (api_version, kind) = (field("apiVersion")?, field("kind")?);
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Resource::Namespace(typed::<Namespace>(doc, &value, kind)?),
        // Checked against the full schema, kept as metadata like the
        // Kubernetes source's metadata-only watch.
        ("v1", "Node") => Resource::Node(
            typed::<Node>(doc, &value, kind)?
                .metadata
                .into_response_partial(),
        ),
        ("v1", "Pod") => Resource::Pod(typed::<Pod>(doc, &value, kind)?),
        ("v1", "Service") => Resource::Service(typed::<Service>(doc, &value, kind)?),
        ("v1", "ServiceAccount") => {
            Resource::ServiceAccount(typed::<ServiceAccount>(doc, &value, kind)?)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Resource::EndpointSlice(typed::<EndpointSlice>(doc, &value, kind)?)
        }
        ("security.istio.io/v1", "PeerAuthentication") => {
            Resource::PeerAuthentication(typed::<crd::PeerAuthentication>(doc, &value, kind)?)
        }
        ("security.istio.io/v1", "RequestAuthentication") => {
            Resource::RequestAuthentication(typed::<crd::RequestAuthentication>(doc, &value, kind)?)
        }
        ("security.istio.io/v1", "AuthorizationPolicy") => {
            Resource::AuthorizationPolicy(typed::<crd::AuthorizationPolicy>(doc, &value, kind)?)
        }
        ("gateway.networking.k8s.io/v1", "Gateway") => {
            Resource::Gateway(typed::<crd::Gateway>(doc, &value, kind)?)
        }
        _ => {
            return Err((
                None,
                DocumentError::UnknownKind {
                    api_version: api_version.to_owned(),
                    kind: kind.to_owned(),
                },
            ));
        }
    })
}

/// Deserializes the document as `T` (from the text, so type errors carry a
/// line), then refuses fields `T` does not have: a misspelled policy field
/// silently ignored would change what the policy allows.
fn typed<T: DeserializeOwned + Serialize>(
    doc: &Document,
    value: &Value,
    kind: &str,
) -> Result<T, Failure> {
    let object: T = serde_yaml_ng::from_str(&doc.text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let reason = DocumentError::Schema {
            kind: kind.to_owned(),
            message: strip_location(&e),
        };
        (line, reason)
    })?;
    let back = serde_json::to_value(&object).map_err(|e| {
        let reason = DocumentError::Schema {
            kind: kind.to_owned(),
            message: e.to_string(),
        };
        (None, reason)
    })?;
    if let Some(path) = unknown_field(value, &back, "") {
        return Err((None, DocumentError::UnknownField(path)));
    }
    Ok(object)
}

/// The first field present in `given` but not in `known` (what the typed object
/// kept), ignoring empty values the typed object drops.
fn unknown_field(given: &Value, known: &Value, path: &str) -> Option<String> {
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => given.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match known.get(k) {
                Some(kv) => unknown_field(v, kv, &here),
                None if is_empty(v) => None,
                None => Some(here),
            }
        }),
        (Value::Array(given), Value::Array(known)) if given.len() == known.len() => given
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (g, k))| unknown_field(g, k, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    }
}

/// serde_yaml_ng's message without its "at line L column C", which is relative
/// to the document; the file line is reported separately.
fn strip_location(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    let Some(i) = text.find(" at line ") else {
        return text;
    };
    let rest = &text[i + " at line ".len()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix(" column ") else {
        return text;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{}{rest}", &text[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_line_numbers_and_skips_empty_documents() {
        let text = "# header\n---\napiVersion: v1\nkind: Namespace\n---\n# only a comment\n--- # c\n\nkind: x\n...\n---\na: 1\n";
        let docs = split(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].first_line, 3);
        assert_eq!(docs[0].start_line(), 3);
        assert_eq!(docs[1].start_line(), 9);
        assert_eq!(docs[2].start_line(), 12);
    }

    #[test]
    fn unknown_fields_are_found_with_their_path() {
        let given =
            serde_json::json!({"spec": {"rules": [{"from": [{"source": {"principal": ["a"]}}]}]}});
        let known = serde_json::json!({"spec": {"rules": [{"from": [{"source": {}}]}]}});
        assert_eq!(
            unknown_field(&given, &known, "").as_deref(),
            Some("spec.rules[0].from[0].source.principal")
        );
        let empty = serde_json::json!({"spec": {"selector": null, "rules": []}});
        assert_eq!(
            unknown_field(&empty, &serde_json::json!({"spec": {}}), ""),
            None
        );
    }
}
