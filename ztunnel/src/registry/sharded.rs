//! A hash map split into shards behind `Arc`s, so that a new snapshot shares
//! every shard it does not change: applying one change copies one shard
//! (about 1/256 of the map), not the whole map.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    marker::PhantomData,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use hashbrown::{HashTable, hash_table};

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

/// How a [`ShardedTable`] finds its values: by a key each value carries.
pub(crate) trait Index<V> {
    /// The key, borrowed from the value or computed from it.
    type Key<'a>: Hash
    where
        V: 'a;

    /// The key `value` is stored under.
    fn key(value: &V) -> Self::Key<'_>;

    /// Whether `value`'s key is `key`.
    fn matches(value: &V, key: &Self::Key<'_>) -> bool;
}

/// A sharded table of values that carry their key: a bucket holds the value
/// alone (8 bytes for an `Arc`), where a [`ShardedMap`] holds the key besides
/// (24 bytes for an [`ObjectKey`], 4 or 16 for an address). With a million
/// pods the buckets are most of an index's size, at a load factor that can be
/// as low as one half.
///
/// [`ObjectKey`]: super::ObjectKey
pub(crate) struct ShardedTable<V, I> {
    hasher: RandomState,
    shards: Box<[Arc<HashTable<V>>]>,
    len: usize,
    index: PhantomData<fn() -> I>,
}

impl<V, I> Default for ShardedTable<V, I> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Arc::new(HashTable::new())).collect(),
            len: 0,
            index: PhantomData,
        }
    }
}

impl<V, I> Clone for ShardedTable<V, I> {
    fn clone(&self) -> Self {
        Self {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
            len: self.len,
            index: PhantomData,
        }
    }
}

impl<V: fmt::Debug, I> fmt::Debug for ShardedTable<V, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedTable")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<V: Clone, I: Index<V>> ShardedTable<V, I> {
    /// The hash of a key, and the shard it is in. The shard comes from bits
    /// the table does not use for a table under 2^32 buckets (the low bits
    /// pick the bucket, the top seven are its tag): entries of one shard would
    /// otherwise all share their bucket bits.
    fn locate(&self, key: &I::Key<'_>) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // Truncation is the point: eight bits pick a shard.
        #[allow(clippy::cast_possible_truncation)]
        let shard = (hash >> 32) as usize % SHARDS;
        (hash, shard)
    }

    /// The value whose key is `key`.
    pub(crate) fn get(&self, key: &I::Key<'_>) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard].find(hash, |v| I::matches(v, key))
    }

    /// Inserts `value`, replacing the value with the same key; copies the
    /// shard first if another snapshot shares it.
    pub(crate) fn insert(&mut self, value: V) -> Option<V> {
        let key = I::key(&value);
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.shards[shard]);
        let entry = table.entry(
            hash,
            |v| I::matches(v, &key),
            |v| hasher.hash_one(I::key(v)),
        );
        match entry {
            hash_table::Entry::Occupied(mut entry) => {
                drop(key);
                Some(std::mem::replace(entry.get_mut(), value))
            }
            hash_table::Entry::Vacant(entry) => {
                drop(key);
                entry.insert(value);
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value whose key is `key`; a shard without it is not
    /// copied.
    pub(crate) fn remove(&mut self, key: &I::Key<'_>) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let matches = |v: &V| I::matches(v, key);
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

/// A value that carries its own (namespace, name) key.
pub(crate) trait Keyed {
    /// The namespace and the name.
    fn key(&self) -> (&str, &str);
}

/// The (namespace, name) index of [`Keyed`] values.
pub(crate) enum ByName {}

impl<V: Keyed> Index<V> for ByName {
    type Key<'a>
        = (&'a str, &'a str)
    where
        V: 'a;

    fn key(value: &V) -> (&str, &str) {
        value.key()
    }

    fn matches(value: &V, key: &(&str, &str)) -> bool {
        value.key() == *key
    }
}

/// Values by their (namespace, name).
pub(crate) type KeyedMap<V> = ShardedTable<V, ByName>;

/// A value with at most one address of type `A` (a pod: one per family).
pub(crate) trait Addressed<A> {
    /// The address under which the value is found, if any.
    fn address(&self) -> Option<A>;
}

/// The index of [`Addressed`] values by their address of type `A`.
pub(crate) struct ByAddress<A>(PhantomData<A>);

impl<V: Addressed<A>, A: Hash + Eq> Index<V> for ByAddress<A> {
    type Key<'a>
        = Option<A>
    where
        V: 'a;

    fn key(value: &V) -> Option<A> {
        value.address()
    }

    fn matches(value: &V, key: &Option<A>) -> bool {
        value.address().as_ref() == key.as_ref()
    }
}

/// [`Addressed`] values by their addresses: a bucket is the value alone, 8
/// bytes for an `Arc`, where an [`IpMap`] bucket is 16 (IPv4) or 24 (IPv6).
/// A value is stored once per address it has; a later value with the same
/// address replaces the earlier one there (last writer wins).
#[derive(Debug, Clone)]
pub(crate) struct AddressTable<V> {
    v4: ShardedTable<V, ByAddress<Ipv4Addr>>,
    v6: ShardedTable<V, ByAddress<Ipv6Addr>>,
}

impl<V> Default for AddressTable<V> {
    fn default() -> Self {
        Self {
            v4: ShardedTable::default(),
            v6: ShardedTable::default(),
        }
    }
}

impl<V: Addressed<Ipv4Addr> + Addressed<Ipv6Addr> + Clone> AddressTable<V> {
    /// The value with address `ip`.
    pub(crate) fn get(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(ip) => self.v4.get(&Some(ip)),
            IpAddr::V6(ip) => self.v6.get(&Some(ip)),
        }
    }

    /// Stores `value` under each of its addresses.
    pub(crate) fn insert(&mut self, value: &V) {
        if Addressed::<Ipv4Addr>::address(value).is_some() {
            self.v4.insert(value.clone());
        }
        if Addressed::<Ipv6Addr>::address(value).is_some() {
            self.v6.insert(value.clone());
        }
    }

    /// Removes the value stored under `ip`.
    pub(crate) fn remove(&mut self, ip: IpAddr) -> Option<V> {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(&Some(ip)),
            IpAddr::V6(ip) => self.v6.remove(&Some(ip)),
        }
    }

    /// Number of entries (one per address).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
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
        assert_eq!(b.remove(&("ns-6", "pod-6")).map(|v| v.2), Some(6));
        assert_eq!(b.remove(&("ns-6", "pod-6")), None);
        // The right namespace matters, not just the name.
        assert_eq!(b.get(&("ns-0", "pod-5")), None);
        assert_eq!(a.get(&("ns-5", "pod-5")).map(|v| v.2), Some(5));
        assert_eq!(b.get(&("ns-5", "pod-5")).map(|v| v.2), Some(50));
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

    /// A pod-like value: a name and at most one address per family.
    #[derive(Debug, Clone, PartialEq)]
    struct Host(&'static str, Option<Ipv4Addr>, Option<Ipv6Addr>);

    impl Addressed<Ipv4Addr> for Host {
        fn address(&self) -> Option<Ipv4Addr> {
            self.1
        }
    }

    impl Addressed<Ipv6Addr> for Host {
        fn address(&self) -> Option<Ipv6Addr> {
            self.2
        }
    }

    #[test]
    fn address_table_finds_each_family_and_the_last_writer_wins() {
        let v4 = |last: u8| Ipv4Addr::new(198, 18, 0, last);
        let v6 = |last: u16| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last);
        let mut a: AddressTable<Host> = AddressTable::default();
        for i in 0..1_000u16 {
            let last = u8::try_from(i % 250).unwrap();
            let third = u8::try_from(i / 250).unwrap();
            let host = Host("h", Some(Ipv4Addr::new(198, 19, third, last)), None);
            a.insert(&host);
        }
        a.insert(&Host("dual", Some(v4(1)), Some(v6(1))));
        a.insert(&Host("six", None, Some(v6(2))));
        assert_eq!(a.len(), 1_003);
        let name = |t: &AddressTable<Host>, ip: &str| t.get(ip.parse().unwrap()).map(|h| h.0);
        assert_eq!(name(&a, "198.18.0.1"), Some("dual"));
        assert_eq!(name(&a, "fd00::1"), Some("dual"));
        assert_eq!(name(&a, "fd00::2"), Some("six"));
        assert_eq!(name(&a, "198.18.0.2"), None);
        // A later value with the same address takes it; the other family of
        // the earlier one stays.
        let mut b = a.clone();
        b.insert(&Host("new", Some(v4(1)), None));
        assert_eq!(name(&b, "198.18.0.1"), Some("new"));
        assert_eq!(name(&b, "fd00::1"), Some("dual"));
        assert_eq!(name(&a, "198.18.0.1"), Some("dual"), "snapshots are apart");
        assert_eq!(
            b.remove("fd00::1".parse().unwrap()).map(|h| h.0),
            Some("dual")
        );
        assert_eq!(b.remove("fd00::1".parse().unwrap()), None);
        assert_eq!((a.len(), b.len()), (1_003, 1_002));
        let shared = shared_shards(&a.v4.shards, &b.v4.shards);
        assert!(shared >= SHARDS - 1, "{shared} IPv4 shards shared");
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
