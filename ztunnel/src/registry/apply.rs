//! Applying changes to a snapshot under construction: every index is kept in step
//! with the primary maps.

use std::sync::Arc;

use super::{
    Change, Interner, Kind, Object, ObjectKey, Snapshot, Workload, snapshot::NamespacePolicies,
};

impl Snapshot {
    /// Applies one change (the writer holds the only copy of `self`).
    pub(super) fn apply(&mut self, change: Change, interner: &mut Interner) {
        match change {
            Change::Upsert(object) => self.upsert(object, interner),
            Change::Delete(kind, key) => self.delete(kind, &key),
        }
    }

    fn upsert(&mut self, object: Object, interner: &mut Interner) {
        match object {
            Object::Namespace(mut ns) => {
                ns.name = interner.name(&ns.name);
                ns.labels = interner.labels(&ns.labels);
                self.namespaces.insert(ns.name.clone(), Arc::new(ns));
            }
            Object::Workload(w) => self.upsert_workload(w, interner),
            Object::Service(mut svc) => {
                svc.key = intern_key(&svc.key, interner);
                svc.labels = interner.labels(&svc.labels);
                let key = svc.key.clone();
                self.delete(Kind::Service, &key);
                let svc = Arc::new(svc);
                for vip in &svc.vips {
                    self.by_vip.insert(*vip, Arc::clone(&svc));
                }
                self.services.insert(svc);
            }
            Object::EndpointSet(mut set) => {
                set.key = intern_key(&set.key, interner);
                for endpoint in &mut set.endpoints {
                    // Thousands of endpoints share a few node and zone names.
                    endpoint.node = endpoint.node.as_ref().map(|n| interner.name(n));
                    endpoint.zone = endpoint.zone.as_ref().map(|z| interner.name(z));
                }
                let key = set.key.clone();
                self.delete(Kind::EndpointSet, &key);
                let set = Arc::new(set);
                let sets = self.sets_by_service.get_or_default(set.service_key());
                sets.push(Arc::clone(&set));
                sets.sort_by(|a, b| a.key.cmp(&b.key));
                // Most Services have one or two slices: no room for four.
                sets.shrink_to_fit();
                self.endpoint_sets.insert(set);
            }
            Object::ServiceAccount(key) => {
                self.service_accounts.insert(intern_key(&key, interner), ());
            }
            Object::AuthorizationPolicy(mut p) => {
                p.key = intern_key(&p.key, interner);
                let p = Arc::new(p);
                self.authorization.insert(p.key.clone(), Arc::clone(&p));
                let list = &mut self.namespace_policies(&p.key).authorization;
                replace_sorted(list, p, |p| &p.key);
            }
            Object::PeerAuthentication(mut p) => {
                p.key = intern_key(&p.key, interner);
                let p = Arc::new(p);
                self.peer.insert(p.key.clone(), Arc::clone(&p));
                replace_sorted(&mut self.namespace_policies(&p.key).peer, p, |p| &p.key);
            }
            Object::RequestAuthentication(mut p) => {
                p.key = intern_key(&p.key, interner);
                let p = Arc::new(p);
                self.request.insert(p.key.clone(), Arc::clone(&p));
                replace_sorted(&mut self.namespace_policies(&p.key).request, p, |p| &p.key);
            }
            Object::Waypoint(mut w) => {
                w.key = intern_key(&w.key, interner);
                self.waypoints.insert(w.key.clone(), Arc::new(w));
            }
            Object::Node(mut n) => {
                n.name = interner.name(&n.name);
                n.zone = n.zone.as_ref().map(|z| interner.name(z));
                self.nodes.insert(n.name.clone(), n);
            }
        }
    }

    fn upsert_workload(&mut self, mut w: Workload, interner: &mut Interner) {
        w.namespace = interner.name(&w.namespace);
        w.service_account = interner.name(&w.service_account);
        w.node = interner.name(&w.node);
        w.labels = interner.labels(&w.labels);
        if self.node.as_deref() != Some(&*w.node) {
            // Only the own node's pods are kept in full.
            w.local = None;
        }
        let key = w.object_key();
        self.remove_workload(&key);
        let w = Arc::new(w);
        // Under each address (none for a host-network pod).
        self.by_ip.insert(&w);
        (self.by_node)
            .get_or_default(w.node.clone())
            .push(Arc::clone(&w));
        if let Some(gateway) = waypoint_of(&w) {
            self.waypoint_instances
                .get_or_default(gateway)
                .push(Arc::clone(&w));
        }
        if self.node.as_deref() == Some(&*w.node) {
            self.local.insert(key.clone(), Arc::clone(&w));
        }
        self.workloads.insert(w);
    }

    fn remove_workload(&mut self, key: &ObjectKey) {
        let Some(old) = self.workloads.remove(&(&key.namespace, &key.name)) else {
            return;
        };
        for ip in old.ips.iter() {
            // Another pod may have taken the address meanwhile (last writer wins).
            if self.by_ip.get(ip).is_some_and(|w| Arc::ptr_eq(w, &old)) {
                self.by_ip.remove(ip);
            }
        }
        if let Some(list) = self.by_node.get_mut(&*old.node) {
            list.retain(|w| !Arc::ptr_eq(w, &old));
            if list.is_empty() {
                self.by_node.remove(&*old.node);
            }
        }
        if let Some(gateway) = waypoint_of(&old)
            && let Some(list) = self.waypoint_instances.get_mut(&gateway)
        {
            list.retain(|w| !Arc::ptr_eq(w, &old));
            if list.is_empty() {
                self.waypoint_instances.remove(&gateway);
            }
        }
        self.local.remove(key);
    }

    fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        match kind {
            Kind::Namespace => {
                self.namespaces.remove(&*key.name);
            }
            Kind::Workload => self.remove_workload(key),
            Kind::Service => {
                if let Some(old) = self.services.remove(&(&key.namespace, &key.name)) {
                    for vip in &old.vips {
                        if self.by_vip.get(*vip).is_some_and(|s| Arc::ptr_eq(s, &old)) {
                            self.by_vip.remove(*vip);
                        }
                    }
                }
            }
            Kind::EndpointSet => {
                if let Some(old) = self.endpoint_sets.remove(&(&key.namespace, &key.name)) {
                    let service = old.service_key();
                    if let Some(list) = self.sets_by_service.get_mut(&service) {
                        list.retain(|s| s.key != *key);
                        if list.is_empty() {
                            self.sets_by_service.remove(&service);
                        }
                    }
                }
            }
            Kind::ServiceAccount => {
                self.service_accounts.remove(key);
            }
            Kind::AuthorizationPolicy => {
                if self.authorization.remove(key).is_some() {
                    self.namespace_policies(key)
                        .authorization
                        .retain(|p| p.key != *key);
                }
            }
            Kind::PeerAuthentication => {
                if self.peer.remove(key).is_some() {
                    self.namespace_policies(key).peer.retain(|p| p.key != *key);
                }
            }
            Kind::RequestAuthentication => {
                if self.request.remove(key).is_some() {
                    self.namespace_policies(key)
                        .request
                        .retain(|p| p.key != *key);
                }
            }
            Kind::Waypoint => {
                self.waypoints.remove(key);
            }
            Kind::Node => {
                self.nodes.remove(&*key.name);
            }
        }
        self.drop_empty_policy_namespace(key);
    }

    fn namespace_policies(&mut self, key: &ObjectKey) -> &mut NamespacePolicies {
        self.policies_by_namespace
            .get_or_default(key.namespace.clone())
    }

    fn drop_empty_policy_namespace(&mut self, key: &ObjectKey) {
        if let Some(p) = self.policies_by_namespace.get(&*key.namespace)
            && p.authorization.is_empty()
            && p.peer.is_empty()
            && p.request.is_empty()
        {
            self.policies_by_namespace.remove(&key.namespace);
        }
    }
}

/// Replaces the entry with `item`'s key in a list sorted by key, or inserts it.
fn replace_sorted<T>(list: &mut Vec<Arc<T>>, item: Arc<T>, key: impl Fn(&T) -> &ObjectKey) {
    match list.binary_search_by(|p| key(p).cmp(key(&item))) {
        Ok(i) => list[i] = item,
        Err(i) => list.insert(i, item),
    }
}

fn intern_key(key: &ObjectKey, interner: &mut Interner) -> ObjectKey {
    ObjectKey {
        namespace: interner.name(&key.namespace),
        name: Arc::clone(&key.name),
    }
}

/// Unused-capacity check for tests: the sizes of the main indexes.
#[cfg(test)]
pub(super) fn index_sizes(s: &Snapshot) -> std::collections::HashMap<&'static str, usize> {
    std::collections::HashMap::from([
        ("workloads", s.workloads.len()),
        ("by_ip", s.by_ip.len()),
        ("by_node", s.by_node.len()),
        ("local", s.local.len()),
        ("services", s.services.len()),
        ("by_vip", s.by_vip.len()),
        ("endpoint_sets", s.endpoint_sets.len()),
        ("sets_by_service", s.sets_by_service.len()),
        ("policies_by_namespace", s.policies_by_namespace.len()),
    ])
}

/// The Gateway a pod is an instance of (its `gateway.networking.k8s.io/gateway-name`
/// label, in its own namespace).
fn waypoint_of(w: &Workload) -> Option<ObjectKey> {
    let name = w.labels.get(super::GATEWAY_NAME_LABEL)?;
    Some(ObjectKey {
        namespace: w.namespace.clone(),
        name: name.into(),
    })
}
