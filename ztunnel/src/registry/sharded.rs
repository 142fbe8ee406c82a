//! A hash map split into shards behind `Arc`s, so that a new snapshot shares
//! every shard it does not change: applying one change copies one shard
//! (about 1/256 of the map), not the whole map.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hashbrown::HashTable;

/// Number of shards: a 100k-entry map copies ~400 entries per touched shard.
const SHARDS: usize = 256;

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct ShardedMap<K, V> {
    hasher: RandomState,
    shards: Box<[Arc<HashMap<K, V>>]>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // Truncation is fine: any bits pick a shard.
        #[allow(clippy::cast_possible_truncation)]
        let hash = self.hasher.hash_one(key) as usize;
        hash % SHARDS
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key)
    }

    /// Whether `key` is present.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts, copying the shard first if another snapshot shares it.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard(&key);
        let old = Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes; a shard without `key` is not copied.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    /// The value of `key` for changing it; a shard without `key` is not copied.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.shards[i]).get_mut(key)
    }

    /// The value of `key`, inserting the default first when absent.
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = self.shard(&key);
        let shard = Arc::make_mut(&mut self.shards[i]);
        if !shard.contains_key(&key) {
            self.len += 1;
        }
        shard.entry(key).or_default()
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// A map by IP address, split by family: a bucket of the IPv4 map is half the
/// size of one keyed by `IpAddr` (17 bytes, padded to 24).
#[derive(Debug, Clone)]
pub(crate) struct IpMap<V> {
    v4: ShardedMap<Ipv4Addr, V>,
    v6: ShardedMap<Ipv6Addr, V>,
}

impl<V> Default for IpMap<V> {
    fn default() -> Self {
        Self {
            v4: ShardedMap::default(),
            v6: ShardedMap::default(),
        }
    }
}

impl<V: Clone> IpMap<V> {
    /// The value for `ip`.
    pub(crate) fn get(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(ip) => self.v4.get(&ip),
            IpAddr::V6(ip) => self.v6.get(&ip),
        }
    }

    /// Inserts.
    pub(crate) fn insert(&mut self, ip: IpAddr, value: V) -> Option<V> {
        match ip {
            IpAddr::V4(ip) => self.v4.insert(ip, value),
            IpAddr::V6(ip) => self.v6.insert(ip, value),
        }
    }

    /// Removes.
    pub(crate) fn remove(&mut self, ip: IpAddr) -> Option<V> {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(&ip),
            IpAddr::V6(ip) => self.v6.remove(&ip),
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A value that carries its own (namespace, name) key.
pub(crate) trait Keyed {
    /// The namespace and the name.
    fn key(&self) -> (&str, &str);
}

/// A [`ShardedMap`] for values that carry their key: a bucket holds the value
/// alone (8 bytes for an `Arc`), where a map keyed by [`ObjectKey`] holds
/// the key's 24 bytes besides. With a million pods that is the difference
/// between a 33- and a 9-byte bucket, at a load factor that can be as low as
/// one half.
///
/// [`ObjectKey`]: super::ObjectKey
#[derive(Debug, Clone)]
pub(crate) struct KeyedMap<V> {
    hasher: RandomState,
    shards: Box<[Arc<HashTable<V>>]>,
    len: usize,
}

impl<V> Default for KeyedMap<V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect(),
            len: 0,
        }
    }
}

impl<V: Keyed + Clone> KeyedMap<V> {
    /// The hash of a key, and the shard it is in. The shard comes from bits
    /// the table does not use for a table under 2^32 buckets (the low bits
    /// pick the bucket, the top seven are its tag): entries of one shard would
    /// otherwise all share their bucket bits.
    fn locate(&self, (namespace, name): (&str, &str)) -> (u64, usize) {
        let hash = self.hasher.hash_one((namespace, name));
        // Truncation is the point: eight bits pick a shard.
        #[allow(clippy::cast_possible_truncation)]
        let shard = (hash >> 32) as usize % SHARDS;
        (hash, shard)
    }

    fn hash_of(hasher: &RandomState, value: &V) -> u64 {
        hasher.hash_one(value.key())
    }

    /// The value whose key is (`namespace`, `name`).
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        let (hash, shard) = self.locate((namespace, name));
        self.shards[shard].find(hash, |v| v.key() == (namespace, name))
    }

    /// Inserts `value`, replacing the value with the same key; copies the
    /// shard first if another snapshot shares it.
    pub(crate) fn insert(&mut self, value: V) -> Option<V> {
        let (hash, shard) = self.locate(value.key());
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let key = value.key();
        match table.entry(hash, |v| v.key() == key, |v| Self::hash_of(hasher, v)) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => {
                Some(std::mem::replace(entry.get_mut(), value))
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(value);
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value whose key is (`namespace`, `name`); a shard without
    /// it is not copied.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> Option<V> {
        let (hash, shard) = self.locate((namespace, name));
        let matches = |v: &V| v.key() == (namespace, name);
        self.shards[shard].find(hash, matches)?;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let (old, _) = table.find_entry(hash, matches).ok()?.remove();
        self.len -= 1;
        Some(old)
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many shards two maps share (the same `Arc`).
    fn shared_shards<T>(a: &[Arc<T>], b: &[Arc<T>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| Arc::ptr_eq(x, y)).count()
    }

    impl Keyed for (String, String, u32) {
        fn key(&self) -> (&str, &str) {
            (&self.0, &self.1)
        }
    }

    #[test]
    fn keyed_values_are_found_replaced_and_removed_by_their_key() {
        let value = |i: u32, v: u32| (format!("ns-{}", i % 7), format!("pod-{i}"), v);
        let mut a: KeyedMap<(String, String, u32)> = KeyedMap::default();
        for i in 0..10_000 {
            assert!(a.insert(value(i, i)).is_none());
        }
        assert_eq!(a.len(), 10_000);
        let mut b = a.clone();
        assert_eq!(b.insert(value(5, 50)).map(|v| v.2), Some(5));
        assert_eq!(b.remove("ns-6", "pod-6").map(|v| v.2), Some(6));
        assert_eq!(b.remove("ns-6", "pod-6"), None);
        // The right namespace matters, not just the name.
        assert_eq!(b.get("ns-0", "pod-5"), None);
        assert_eq!(a.get("ns-5", "pod-5").map(|v| v.2), Some(5));
        assert_eq!(b.get("ns-5", "pod-5").map(|v| v.2), Some(50));
        assert_eq!((a.len(), b.len()), (10_000, 9_999));
        assert_eq!(b.values().count(), b.len());
        let shared = shared_shards(&a.shards, &b.shards);
        assert!(
            shared >= SHARDS - 2,
            "only touched shards are copied ({shared} shared)"
        );
        // Every shard is used: the shard bits are not the bucket bits.
        let used = a.shards.iter().filter(|s| !s.is_empty()).count();
        assert!(used > SHARDS * 9 / 10, "{used} shards used");
    }

    #[test]
    fn snapshots_share_untouched_shards() {
        let mut a: ShardedMap<u32, u32> = ShardedMap::default();
        for i in 0..10_000 {
            a.insert(i, i);
        }
        let mut b = a.clone();
        b.insert(5, 50);
        assert_eq!(b.remove(&6), Some(6));
        assert_eq!(b.remove(&6), None);
        *b.get_or_default(20_000) += 1;
        assert_eq!((a.get(&5), b.get(&5)), (Some(&5), Some(&50)));
        assert_eq!((a.len(), b.len()), (10_000, 10_000));
        let shared = shared_shards(&a.shards, &b.shards);
        assert!(
            shared >= SHARDS - 3,
            "only touched shards are copied ({shared} shared)"
        );
        assert_eq!(b.iter().count(), b.len());
    }
}
