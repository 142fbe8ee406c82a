//! The local file source: a multi-document YAML file of Kubernetes objects
//! (format in `docs/configuration.md`), validated as a whole, applied to the
//! registry as a diff, and watched for changes. A bad file is refused with the
//! file, line, document and reason, and the last good configuration stays in
//! force.

mod endpoints;
mod parse;

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use super::{ErrorChain, Invalid};
use crate::{
    registry::{Change, Kind, Object, ObjectKey, Registry},
    settings::CONFIG_FILE_POLL_INTERVAL,
};

/// The file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the file failed.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// One document is refused, so the whole file is.
    #[error("{path}:{line}: document {document} (line {start}) is refused")]
    Document {
        /// The file.
        path: PathBuf,
        /// The line of the problem, or the document's start when not known.
        line: usize,
        /// 1-based index of the document among the non-empty ones.
        document: usize,
        /// The line where the document starts.
        start: usize,
        /// What is wrong with the document.
        #[source]
        reason: Box<DocumentError>,
    },
    /// A security policy failed validation: it is enforced in a fail-closed
    /// form and the rest of the file applies (not an error that stops a load).
    #[error("{path}:{line}: document {document} (line {start}) is enforced fail-closed")]
    FailClosed {
        /// The file.
        path: PathBuf,
        /// The document's start.
        line: usize,
        /// 1-based index of the document among the non-empty ones.
        document: usize,
        /// The line where the document starts.
        start: usize,
        /// What is wrong with it.
        #[source]
        reason: Box<DocumentError>,
    },
}

/// Why a document is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Not YAML.
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// YAML, but not a mapping.
    #[error("not a Kubernetes object (a mapping with apiVersion and kind)")]
    NotAnObject,
    /// `apiVersion` or `kind` is missing.
    #[error("{0} is missing")]
    MissingTypeField(&'static str),
    /// Not a kind this source reads.
    #[error("unknown kind {kind} of apiVersion {api_version}")]
    UnknownKind {
        /// `apiVersion`.
        api_version: String,
        /// `kind`.
        kind: String,
    },
    /// A field has the wrong type (or a required one is missing).
    #[error("{kind} does not match its schema: {message}")]
    Schema {
        /// `kind`.
        kind: String,
        /// The deserializer's message, naming the field.
        message: String,
    },
    /// A field the kind does not have.
    #[error("unknown field {0}")]
    UnknownField(String),
    /// The object is one Istio or Kubernetes would reject.
    #[error("{kind} {key} is invalid")]
    Invalid {
        /// The kind.
        kind: Kind,
        /// Namespace and name.
        key: ObjectKey,
        /// What is wrong.
        #[source]
        source: Invalid,
    },
    /// A security policy that failed validation: it is kept in a fail-closed
    /// form (see [`Object::problems`]) and the rest of the file applies.
    #[error("{kind} {key} is invalid: {problems}")]
    FailClosed {
        /// The kind.
        kind: Kind,
        /// Namespace and name.
        key: ObjectKey,
        /// What is wrong, `; `-separated.
        problems: String,
    },
    /// The same object appears twice.
    #[error("{kind} {key} is already defined by document {first}")]
    Duplicate {
        /// The kind.
        kind: Kind,
        /// Namespace and name.
        key: ObjectKey,
        /// The document that defines it first.
        first: usize,
    },
    /// Two pods (or two Services) share an address.
    #[error("{kind} {key} uses address {ip}, already used by {other} (document {other_document})")]
    DuplicateAddress {
        /// Pod or Service.
        kind: Kind,
        /// The object refused.
        key: ObjectKey,
        /// The IP address that is claimed twice.
        ip: IpAddr,
        /// The object that has it first.
        other: ObjectKey,
        /// Its document.
        other_document: usize,
    },
}

/// Where each document of a file is, for error messages.
struct Located<'a> {
    path: &'a Path,
    docs: Vec<(usize, usize)>, // (document index, start line)
}

impl Located<'_> {
    fn error(&self, doc: usize, line: Option<usize>, reason: DocumentError) -> Error {
        let (document, start) = self.docs[doc];
        Error::Document {
            path: self.path.to_owned(),
            line: line.unwrap_or(start),
            document,
            start,
            reason: Box::new(reason),
        }
    }

    fn fail_closed(&self, doc: usize, reason: DocumentError) -> Error {
        let (document, start) = self.docs[doc];
        Error::FailClosed {
            path: self.path.to_owned(),
            line: start,
            document,
            start,
            reason: Box::new(reason),
        }
    }
}

/// A configuration file, parsed and validated.
#[derive(Debug)]
pub struct Parsed {
    /// The objects it defines.
    pub objects: Vec<Object>,
    /// The security policies among them that failed validation and are
    /// enforced fail-closed, each with its place in the file (to log).
    pub fail_closed: Vec<Error>,
}

/// Parses and validates the text of a configuration file named `path` (for
/// messages): the objects it defines, or the first refused document. An
/// invalid security policy does not refuse the file: it is kept fail-closed
/// and reported in [`Parsed::fail_closed`].
pub fn parse(text: &str, path: &Path) -> Result<Parsed, Error> {
    let docs = parse::documents(text).map_err(|failure| {
        let start = failure.start.or(failure.line).unwrap_or(1);
        Error::Document {
            path: path.to_owned(),
            line: failure.line.unwrap_or(start),
            document: failure.document,
            start,
            reason: failure.reason,
        }
    })?;
    let located = Located {
        path,
        docs: (docs.iter().enumerate())
            .map(|(i, d)| (i + 1, d.start))
            .collect(),
    };
    let resources: Vec<super::Resource> = docs.into_iter().map(|d| d.resource).collect();
    let mut objects = Vec::with_capacity(resources.len());
    let mut fail_closed = Vec::new();
    let mut seen: HashMap<(Kind, ObjectKey), usize> = HashMap::new();
    for (i, resource) in resources.iter().enumerate() {
        let (kind, key) = (resource.kind(), resource.key());
        if let Some(&first) = seen.get(&(kind, key.clone())) {
            let reason = DocumentError::Duplicate {
                kind,
                key,
                first: first + 1,
            };
            return Err(located.error(i, None, reason));
        }
        seen.insert((kind, key.clone()), i);
        match resource.to_change() {
            Ok(Change::Upsert(mut object)) => {
                name_netns(resource, &mut object);
                if !object.problems().is_empty() {
                    let problems = object.problems().join("; ");
                    let reason = DocumentError::FailClosed {
                        kind,
                        key,
                        problems,
                    };
                    fail_closed.push(located.fail_closed(i, reason));
                }
                objects.push((i, object));
            }
            Ok(Change::Delete(..)) => {}
            Err(source) => {
                return Err(located.error(i, None, DocumentError::Invalid { kind, key, source }));
            }
        }
    }
    unique_addresses(&objects).map_err(|(i, reason)| located.error(i, None, reason))?;
    let mut objects: Vec<Object> = objects.into_iter().map(|(_, o)| o).collect();
    objects.extend(endpoints::derive(&resources, &objects));
    Ok(Parsed {
        objects,
        fail_closed,
    })
}

/// Local mode: the pod's network namespace is the one its `ambit.dev/netns`
/// annotation names. The operator writes this file, so it is trusted here and
/// nowhere else (the Kubernetes source never reads the annotation).
fn name_netns(resource: &super::Resource, object: &mut Object) {
    use kube::ResourceExt;
    if let (super::Resource::Pod(pod), Object::Workload(workload)) = (resource, object)
        && let Some(local) = workload.local.as_mut()
    {
        local.netns = pod
            .annotations()
            .get(super::NETNS_ANNOTATION)
            .map(PathBuf::from);
    }
}

/// Refuses a second pod with the same IP (host-network pods share the node's)
/// and a second Service with the same VIP.
fn unique_addresses(objects: &[(usize, Object)]) -> Result<(), (usize, DocumentError)> {
    let mut owners: HashMap<(Kind, IpAddr), (ObjectKey, usize)> = HashMap::new();
    for (i, object) in objects {
        let ips: Vec<IpAddr> = match object {
            Object::Workload(w) if !w.host_network => w.ips.iter().collect(),
            Object::Service(s) => s.vips.clone(),
            _ => continue,
        };
        let kind = object.kind();
        for ip in ips {
            if let Some((other, doc)) = owners.get(&(kind, ip)) {
                let reason = DocumentError::DuplicateAddress {
                    kind,
                    key: object.key(),
                    ip,
                    other: other.clone(),
                    other_document: doc + 1,
                };
                return Err((*i, reason));
            }
            owners.insert((kind, ip), (object.key(), *i));
        }
    }
    Ok(())
}

/// The local file source of one ztunnel.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    poll_interval: Duration,
    /// What was last applied, by kind and key.
    applied: HashMap<(Kind, ObjectKey), Object>,
    /// Hash of the text last loaded (good or bad), to notice changes.
    last_text: Option<u64>,
}

impl FileSource {
    /// A source reading `path` (nothing is read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            poll_interval: CONFIG_FILE_POLL_INTERVAL,
            applied: HashMap::new(),
            last_text: None,
        }
    }

    /// How often [`run`](Self::run) checks the file (default
    /// [`CONFIG_FILE_POLL_INTERVAL`]).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The file this source reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file and applies the difference to what was
    /// applied before. On error nothing changes. Returns the number of changes.
    pub fn load(&mut self, registry: &Registry) -> Result<usize, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        self.last_text = Some(hash(&text));
        let parsed = parse(&text, &self.path)?;
        report_fail_closed(&parsed);
        Ok(self.apply(parsed.objects, registry))
    }

    /// Applies `objects` as the complete configuration: a diff against the
    /// previous one.
    fn apply(&mut self, objects: Vec<Object>, registry: &Registry) -> usize {
        let next: HashMap<(Kind, ObjectKey), Object> = objects
            .into_iter()
            .map(|o| ((o.kind(), o.key()), o))
            .collect();
        let mut changes: Vec<Change> = (self.applied.keys())
            .filter(|k| !next.contains_key(k))
            .map(|(kind, key)| Change::Delete(*kind, key.clone()))
            .collect();
        changes.extend(
            (next.iter())
                .filter(|(k, o)| self.applied.get(k) != Some(o))
                .map(|(_, o)| Change::Upsert(o.clone())),
        );
        let count = changes.len();
        if count > 0 {
            registry.apply(changes);
        }
        self.applied = next;
        count
    }

    /// Checks the file every poll interval and applies changes; a bad file is
    /// logged and skipped, keeping the last good configuration. Runs until the
    /// task is dropped. Call [`load`](Self::load) first for the initial state.
    pub async fn run(mut self, registry: Arc<Registry>) {
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.poll(&registry);
        }
    }

    /// One check: reload when the text changed since the last load.
    fn poll(&mut self, registry: &Registry) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                if self.last_text.take().is_some() {
                    super::rejected_updates().inc();
                    tracing::error!(path = %self.path.display(), error = %ErrorChain(&error), "cannot read the configuration file; keeping the last good configuration");
                }
                return;
            }
        };
        if self.last_text == Some(hash(&text)) {
            return;
        }
        self.last_text = Some(hash(&text));
        match parse(&text, &self.path) {
            Ok(parsed) => {
                report_fail_closed(&parsed);
                let changes = self.apply(parsed.objects, registry);
                tracing::info!(path = %self.path.display(), changes, "configuration file applied");
            }
            Err(error) => {
                super::rejected_updates().inc();
                tracing::error!(error = %ErrorChain(&error), "configuration file refused; keeping the last good configuration");
            }
        }
    }
}

/// A registry of the node `node-a` holding the objects of `yaml`, as the file
/// source would fill it (tests of what the registry and policies make of
/// what users write).
#[cfg(test)]
pub(crate) fn test_registry(yaml: &str) -> Result<Registry, Error> {
    let parsed = parse(yaml, Path::new("test.yaml"))?;
    let registry = Registry::new(crate::registry::Options {
        node: Some("node-a".into()),
        ..crate::registry::Options::default()
    });
    registry.apply(parsed.objects.into_iter().map(Change::Upsert));
    Ok(registry)
}

/// Logs each policy of the file that is enforced fail-closed, with its place.
fn report_fail_closed(parsed: &Parsed) {
    for problem in &parsed.fail_closed {
        tracing::error!(error = %ErrorChain(problem), "invalid policy enforced fail-closed");
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests;
