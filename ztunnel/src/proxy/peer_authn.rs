//! PeerAuthentication resolution with Istio's precedence: a policy selecting the
//! workload beats the namespace's, which beats the mesh-wide one (root
//! namespace); a port-level mode beats the policy's own mode; UNSET inherits;
//! several at one level: the oldest wins. Nothing set: PERMISSIVE.

use crate::registry::{MtlsMode, PeerAuthentication, WorkloadPolicies};

/// The mTLS mode in force for `port` of the workload the policies apply to.
pub fn mtls_mode(policies: &WorkloadPolicies, port: u16) -> MtlsMode {
    let levels = [
        &policies.peer_workload,
        &policies.peer_namespace,
        &policies.peer_mesh,
    ];
    levels
        .into_iter()
        .filter_map(|level| level.first())
        .find_map(|policy| mode_of(policy, port))
        .unwrap_or(MtlsMode::Permissive)
}

/// The mode one policy sets for `port`, if it sets one.
fn mode_of(policy: &PeerAuthentication, port: u16) -> Option<MtlsMode> {
    let set = |mode: MtlsMode| (mode != MtlsMode::Unset).then_some(mode);
    policy
        .port_level_mtls
        .get(&port)
        .copied()
        .and_then(set)
        .or_else(|| policy.mtls.and_then(set))
}

/// Whether plaintext is accepted under `mode`.
pub fn allows_plaintext(mode: MtlsMode) -> bool {
    !matches!(mode, MtlsMode::Strict)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::registry::{ObjectKey, WorkloadSelector};

    fn pa(
        ns: &str,
        mode: Option<MtlsMode>,
        ports: &[(u16, MtlsMode)],
        selected: bool,
    ) -> Arc<PeerAuthentication> {
        Arc::new(PeerAuthentication {
            key: ObjectKey::new(ns, "pa"),
            created: None,
            selector: selected.then(|| WorkloadSelector {
                match_labels: Default::default(),
            }),
            mtls: mode,
            port_level_mtls: ports.iter().copied().collect::<BTreeMap<_, _>>(),
            problems: Vec::new(),
        })
    }

    fn policies(
        workload: &[Arc<PeerAuthentication>],
        namespace: &[Arc<PeerAuthentication>],
        mesh: &[Arc<PeerAuthentication>],
    ) -> WorkloadPolicies {
        WorkloadPolicies {
            peer_workload: workload.to_vec(),
            peer_namespace: namespace.to_vec(),
            peer_mesh: mesh.to_vec(),
            ..WorkloadPolicies::default()
        }
    }

    use MtlsMode::{Disable, Permissive, Strict, Unset};

    #[test]
    fn nothing_set_is_permissive() {
        assert_eq!(mtls_mode(&policies(&[], &[], &[]), 80), Permissive);
    }

    #[test]
    fn workload_beats_namespace_beats_mesh() {
        let mesh = [pa("istio-system", Some(Strict), &[], false)];
        let ns = [pa("shop", Some(Permissive), &[], false)];
        let wl = [pa("shop", Some(Disable), &[], true)];
        assert_eq!(mtls_mode(&policies(&[], &[], &mesh), 80), Strict);
        assert_eq!(mtls_mode(&policies(&[], &ns, &mesh), 80), Permissive);
        assert_eq!(mtls_mode(&policies(&wl, &ns, &mesh), 80), Disable);
    }

    #[test]
    fn unset_inherits_from_the_level_above() {
        let mesh = [pa("istio-system", Some(Strict), &[], false)];
        let ns = [pa("shop", Some(Unset), &[], false)];
        let wl = [pa("shop", None, &[], true)];
        assert_eq!(mtls_mode(&policies(&wl, &ns, &mesh), 80), Strict);
    }

    #[test]
    fn port_level_overrides_the_policy_mode_for_that_port_only() {
        let mesh = [pa("istio-system", Some(Strict), &[], false)];
        let wl = [pa(
            "shop",
            Some(Strict),
            &[(8080, Permissive), (9090, Unset)],
            true,
        )];
        let p = policies(&wl, &[], &mesh);
        assert_eq!(mtls_mode(&p, 8080), Permissive);
        assert_eq!(
            mtls_mode(&p, 9090),
            Strict,
            "an UNSET port inherits the policy's mode"
        );
        assert_eq!(mtls_mode(&p, 80), Strict);
        assert!(allows_plaintext(mtls_mode(&p, 8080)));
        assert!(!allows_plaintext(mtls_mode(&p, 80)));
    }

    #[test]
    fn the_oldest_policy_of_a_level_wins() {
        let older = pa("shop", Some(Strict), &[], false);
        let newer = pa("shop", Some(Disable), &[], false);
        assert_eq!(mtls_mode(&policies(&[], &[older, newer], &[]), 80), Strict);
    }
}
