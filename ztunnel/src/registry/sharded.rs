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

#[cfg(test)]
mod tests {
    use super::*;

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
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(
            shared >= SHARDS - 3,
            "only touched shards are copied ({shared} shared)"
        );
        assert_eq!(b.iter().count(), b.len());
    }
}
