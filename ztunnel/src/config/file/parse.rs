//! Reading a multi-document YAML file, document by document, as the typed
//! Kubernetes objects their `apiVersion` and `kind` name. The documents come
//! from `serde_yaml_ng`'s own stream iteration, so every line number is the
//! file's.

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::core::PartialObjectMetaExt;
use serde::{
    Deserialize, Serialize,
    de::{self, DeserializeOwned},
};
use serde_json::Value;
use serde_yaml_ng::Deserializer;

use super::DocumentError;
use crate::config::{Resource, crd};

/// One non-empty document of the file, read.
#[derive(Debug)]
pub(super) struct Document {
    /// 1-based line where the document's content starts.
    pub(super) start: usize,
    /// The object it defines.
    pub(super) resource: Resource,
}

/// Why a document was refused while reading.
#[derive(Debug)]
pub(super) struct Failure {
    /// 1-based index of the document among the non-empty ones.
    pub(super) document: usize,
    /// Where the document starts, when the parser got that far.
    pub(super) start: Option<usize>,
    /// The line of the problem, when known.
    pub(super) line: Option<usize>,
    /// What is wrong.
    pub(super) reason: Box<DocumentError>,
}

/// Reads every document of `text`, skipping empty ones (only comments, or
/// nothing between two markers), up to the first one that is refused.
///
/// The stream is walked three times in step: once for where each document
/// starts, once as plain data (for `apiVersion`, `kind` and the unknown-field
/// check) and once as the typed object (so a type error carries its line). A
/// document can be deserialized only once, and a configuration file is small.
pub(super) fn documents(text: &str) -> Result<Vec<Document>, Failure> {
    let mut docs = Vec::new();
    let starts = Deserializer::from_str(text);
    let values = Deserializer::from_str(text);
    let typed = Deserializer::from_str(text);
    for ((at_start, as_value), as_typed) in starts.zip(values).zip(typed) {
        let start = start_line(at_start);
        let failure = |line: Option<usize>, reason: DocumentError| Failure {
            document: docs.len() + 1,
            start,
            line,
            reason: Box::new(reason),
        };
        let value = Value::deserialize(as_value)
            .map_err(|e| failure(line_of(&e), DocumentError::Syntax(strip_location(&e))))?;
        if value.is_null() {
            continue;
        }
        let resource =
            resource(&value, as_typed).map_err(|(line, reason)| failure(line, reason))?;
        docs.push(Document {
            start: start.unwrap_or(1),
            resource,
        });
    }
    Ok(docs)
}

/// The 1-based line of an error's position.
fn line_of(e: &serde_yaml_ng::Error) -> Option<usize> {
    e.location().map(|l| l.line())
}

/// Where a document's content starts. The deserializer tells positions only
/// in its errors, and gives an error raised while visiting a node that node's
/// position; so this refuses the document's root node at once and reads the
/// position of the refusal. (A document the parser cannot read at all fails
/// on its first event, which is where it starts too.)
fn start_line(document: Deserializer<'_>) -> Option<usize> {
    /// No value: the probe only ever fails.
    enum Never {}
    struct Probe;
    impl de::Visitor<'_> for Probe {
        type Value = Never;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("nothing (a position probe)")
        }
    }
    match de::Deserializer::deserialize_any(document, Probe) {
        Ok(never) => match never {},
        Err(e) => line_of(&e),
    }
}

/// A parse failure: the file line when known, and the reason.
type Refusal = (Option<usize>, DocumentError);

/// Reads one document, `value` as plain data and `document` (the same one) as
/// the typed object its `apiVersion` and `kind` name.
fn resource(value: &Value, document: Deserializer<'_>) -> Result<Resource, Refusal> {
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
    let doc = document;
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Resource::Namespace(typed::<Namespace>(doc, value, kind)?),
        // Checked against the full schema, kept as metadata like the
        // Kubernetes source's metadata-only watch.
        ("v1", "Node") => Resource::Node(
            typed::<Node>(doc, value, kind)?
                .metadata
                .into_response_partial(),
        ),
        ("v1", "Pod") => Resource::Pod(typed::<Pod>(doc, value, kind)?),
        ("v1", "Service") => Resource::Service(typed::<Service>(doc, value, kind)?),
        ("v1", "ServiceAccount") => {
            Resource::ServiceAccount(typed::<ServiceAccount>(doc, value, kind)?)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Resource::EndpointSlice(typed::<EndpointSlice>(doc, value, kind)?)
        }
        ("security.istio.io/v1", "PeerAuthentication") => {
            Resource::PeerAuthentication(typed::<crd::PeerAuthentication>(doc, value, kind)?)
        }
        ("security.istio.io/v1", "RequestAuthentication") => {
            Resource::RequestAuthentication(typed::<crd::RequestAuthentication>(doc, value, kind)?)
        }
        ("security.istio.io/v1", "AuthorizationPolicy") => {
            Resource::AuthorizationPolicy(typed::<crd::AuthorizationPolicy>(doc, value, kind)?)
        }
        ("gateway.networking.k8s.io/v1", "Gateway") => {
            Resource::Gateway(typed::<crd::Gateway>(doc, value, kind)?)
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
    document: Deserializer<'_>,
    value: &Value,
    kind: &str,
) -> Result<T, Refusal> {
    let object = T::deserialize(document).map_err(|e| {
        let line = line_of(&e);
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

/// serde_yaml_ng's message without its "at line L column C": the line is
/// reported separately, in the editor's `file:line:` form.
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
    fn documents_keep_file_lines_and_skip_empty_ones() {
        let text = "# header\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n--- # c\n\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n...\n---\n---\n  apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: c\n--- {apiVersion: v1, kind: Namespace, metadata: {name: d}}\n";
        let docs = documents(text).expect("four namespaces");
        let starts: Vec<usize> = docs.iter().map(|d| d.start).collect();
        assert_eq!(starts, [3, 10, 16, 20]);
        let names: Vec<String> = (docs.iter())
            .map(|d| d.resource.key().name.to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_refusal_names_the_document_and_the_file_line() {
        // The second non-empty document has a type error on its fourth line.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n---\n# c\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [], nodeName: [x]}\n";
        let failure = documents(text).expect_err("a bad pod");
        assert_eq!(failure.document, 2);
        assert_eq!(failure.start, Some(8));
        assert_eq!(failure.line, Some(11));
        assert!(
            failure.reason.to_string().contains("spec.nodeName"),
            "{}",
            failure.reason
        );
        // A syntax error in the third: its line is the file's.
        let text = "a: 1\n---\nb: 2\n---\nc: [\n";
        let failure = documents(text).expect_err("bad YAML");
        assert_eq!(failure.document, 1, "a: 1 is not an object");
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nc: [\n";
        let failure = documents(text).expect_err("bad YAML");
        assert_eq!(
            (failure.document, failure.start, failure.line),
            (2, Some(5), Some(6))
        );
        assert!(matches!(*failure.reason, DocumentError::Syntax(_)));
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
