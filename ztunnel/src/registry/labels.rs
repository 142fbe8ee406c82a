//! Label sets, interned names, and the interner that lets thousands of
//! workloads share one copy of their labels and of their namespace, service
//! account and node names.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, HashSet},
    fmt,
    ops::Deref,
    sync::Arc,
};

/// A name many objects share (namespace, service account, node): a thin
/// pointer, 8 bytes, interned by the registry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<Box<str>>);

impl Name {
    /// A name (not interned yet; the registry interns on apply).
    pub fn new(s: &str) -> Self {
        Self(Arc::new(s.into()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Self(Arc::new(s.into_boxed_str()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

use serde::{Serialize, Serializer, ser::SerializeMap};

/// A Kubernetes label set: sorted `(key, value)` pairs, looked up by binary search.
///
/// A sorted boxed slice costs far less than a map per pod; sets are interned, so
/// the pods of one Deployment share a single copy.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The value of label `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Whether every pair of `selector` is in this set (an empty selector matches
    /// everything, as in Kubernetes).
    pub fn contains_all(&self, selector: &Labels) -> bool {
        selector.iter().all(|(k, v)| self.get(k) == Some(v))
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether the set has no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        // A map first: later duplicates win, as when a YAML mapping repeats a key.
        let map: BTreeMap<Box<str>, Box<str>> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self(map.into_iter().collect())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Deduplicates the strings and label sets stored by the registry.
///
/// Only the registry's writer uses it. Entries nobody else holds any more are
/// purged when the table has doubled since the last purge, so churn (a new
/// `pod-template-hash` per rollout) does not grow it without bound.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: HashSet<Name>,
    labels: HashSet<Arc<Labels>>,
    purge_at: usize,
}

/// Size below which the interner is never purged.
const PURGE_MIN: usize = 4096;

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn name(&mut self, s: &Name) -> Name {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    /// The shared copy of `labels`.
    pub(crate) fn labels(&mut self, labels: &Arc<Labels>) -> Arc<Labels> {
        if let Some(shared) = self.labels.get(labels) {
            return Arc::clone(shared);
        }
        self.labels.insert(Arc::clone(labels));
        Arc::clone(labels)
    }

    /// Drops entries held by nobody else, when the tables have grown enough.
    pub(crate) fn maybe_purge(&mut self) {
        let size = self.strings.len() + self.labels.len();
        if size < self.purge_at.max(PURGE_MIN) {
            return;
        }
        self.strings.retain(|s| Arc::strong_count(&s.0) > 1);
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.purge_at = 2 * (self.strings.len() + self.labels.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_selection() {
        let labels: Labels = [("app", "web"), ("tier", "front"), ("version", "v1")]
            .into_iter()
            .collect();
        assert_eq!(labels.get("tier"), Some("front"));
        assert_eq!(labels.get("missing"), None);
        let selector: Labels = [("app", "web")].into_iter().collect();
        assert!(labels.contains_all(&selector));
        assert!(labels.contains_all(&Labels::empty()));
        let other: Labels = [("app", "db")].into_iter().collect();
        assert!(!labels.contains_all(&other));
    }

    #[test]
    fn interner_shares_and_purges() {
        let mut interner = Interner::default();
        let a = Name::new("default");
        let b = Name::new("default");
        let first = interner.name(&a);
        let second = interner.name(&b);
        assert!(Arc::ptr_eq(&first.0, &second.0));
        drop((a, b, first, second));
        interner.purge_at = 0;
        for i in 0..PURGE_MIN {
            let _ = interner.name(&Name::from(i.to_string()));
        }
        interner.maybe_purge();
        assert!(
            interner.strings.is_empty(),
            "unreferenced entries are purged"
        );
    }
}
