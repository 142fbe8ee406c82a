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

/// The PeerAuthentication conformance table: policies as a user writes them
/// (YAML, through the configuration parser and the registry's selection), and
/// the mode in force for a port of `shop/backend` (labels `app: backend`).
#[cfg(test)]
mod conformance {
    use super::*;
    use crate::{config::file, registry::ObjectKey};

    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec: {nodeName: node-a, containers: [{name: app, image: app}]}
status: {podIP: 198.18.1.20}
---
apiVersion: v1
kind: Pod
metadata: {name: pilot, namespace: istio-system, labels: {app: backend}}
spec: {nodeName: node-a, containers: [{name: app, image: app}]}
status: {podIP: 198.18.1.30}
";

    /// `(namespace/name, created, spec)`: one PeerAuthentication.
    type Policy = (&'static str, &'static str, &'static str);
    /// `(name, policies, workload (namespace, name), port, mode wanted)`.
    type Row = (
        &'static str,
        &'static [Policy],
        (&'static str, &'static str),
        u16,
        MtlsMode,
    );

    fn mode(policies: &[Policy], workload: (&str, &str), port: u16) -> MtlsMode {
        let mut text = String::from(BASE);
        for (key, created, spec) in policies {
            let (ns, name) = key.split_once('/').expect("namespace/name");
            text.push_str(&format!(
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                 metadata: {{namespace: {ns}, name: {name}, creationTimestamp: \"{created}\"}}\n\
                 spec: {spec}\n"
            ));
        }
        let snapshot = file::test_registry(&text)
            .expect("the case parses")
            .snapshot();
        let workload = snapshot
            .workload(&ObjectKey::new(workload.0, workload.1))
            .expect("the workload exists");
        mtls_mode(&snapshot.policies_for(workload), port)
    }

    const OLD: &str = "2024-01-01T00:00:00Z";
    const NEW: &str = "2024-06-01T00:00:00Z";
    const BACKEND: (&str, &str) = ("shop", "backend");

    use MtlsMode::{Disable, Permissive, Strict};

    #[test]
    fn rows() {
        let rows: &[Row] = &[
            ("nothing set", &[], BACKEND, 80, Permissive),
            (
                "mesh-wide STRICT",
                &[("istio-system/default", OLD, "{mtls: {mode: STRICT}}")],
                BACKEND,
                80,
                Strict,
            ),
            (
                "the namespace beats the mesh",
                &[
                    ("istio-system/default", OLD, "{mtls: {mode: STRICT}}"),
                    ("shop/relaxed", OLD, "{mtls: {mode: PERMISSIVE}}"),
                ],
                BACKEND,
                80,
                Permissive,
            ),
            (
                "the workload beats the namespace",
                &[
                    ("shop/strict", OLD, "{mtls: {mode: STRICT}}"),
                    (
                        "shop/backend",
                        OLD,
                        "{selector: {matchLabels: {app: backend}}, mtls: {mode: DISABLE}}",
                    ),
                ],
                BACKEND,
                80,
                Disable,
            ),
            (
                "a root-namespace selector is ignored: root app=backend DISABLE, namespace STRICT",
                &[
                    (
                        "istio-system/backend",
                        OLD,
                        "{selector: {matchLabels: {app: backend}}, mtls: {mode: DISABLE}}",
                    ),
                    ("shop/strict", OLD, "{mtls: {mode: STRICT}}"),
                ],
                BACKEND,
                80,
                Strict,
            ),
            (
                "a root-namespace selector is ignored on its own too",
                &[(
                    "istio-system/backend",
                    OLD,
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}}",
                )],
                BACKEND,
                80,
                Permissive,
            ),
            (
                "a root-namespace selector is ignored for root-namespace workloads",
                &[(
                    "istio-system/pilot",
                    OLD,
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}}",
                )],
                ("istio-system", "pilot"),
                80,
                Permissive,
            ),
            (
                "root selector {} is the mesh level: root {} PERMISSIVE, namespace STRICT",
                &[
                    (
                        "istio-system/all",
                        OLD,
                        "{selector: {}, mtls: {mode: PERMISSIVE}}",
                    ),
                    ("shop/strict", NEW, "{mtls: {mode: STRICT}}"),
                ],
                BACKEND,
                80,
                Strict,
            ),
            (
                "root selector {} on its own applies mesh-wide",
                &[(
                    "istio-system/all",
                    OLD,
                    "{selector: {}, mtls: {mode: STRICT}}",
                )],
                BACKEND,
                80,
                Strict,
            ),
            (
                "namespace selector {} is the namespace level, so a workload policy beats it",
                &[
                    (
                        "shop/all",
                        OLD,
                        "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}",
                    ),
                    (
                        "shop/backend",
                        NEW,
                        "{selector: {matchLabels: {app: backend}}, mtls: {mode: PERMISSIVE}}",
                    ),
                ],
                BACKEND,
                80,
                Permissive,
            ),
            (
                "two namespace-level policies, one with selector {}: the oldest wins",
                &[
                    ("shop/newer", NEW, "{mtls: {mode: PERMISSIVE}}"),
                    ("shop/older", OLD, "{selector: {}, mtls: {mode: STRICT}}"),
                ],
                BACKEND,
                80,
                Strict,
            ),
            (
                "a workload policy that does not select the pod",
                &[(
                    "shop/db",
                    OLD,
                    "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}}",
                )],
                BACKEND,
                80,
                Permissive,
            ),
            (
                "port level beats the policy's mode on that port",
                &[(
                    "shop/backend",
                    OLD,
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}, portLevelMtls: {\"8080\": {mode: PERMISSIVE}}}",
                )],
                BACKEND,
                8080,
                Permissive,
            ),
            (
                "port level leaves other ports alone",
                &[(
                    "shop/backend",
                    OLD,
                    "{selector: {matchLabels: {app: backend}}, mtls: {mode: STRICT}, portLevelMtls: {\"8080\": {mode: PERMISSIVE}}}",
                )],
                BACKEND,
                9090,
                Strict,
            ),
            (
                "UNSET at the workload inherits the namespace",
                &[
                    ("shop/strict", OLD, "{mtls: {mode: STRICT}}"),
                    (
                        "shop/backend",
                        OLD,
                        "{selector: {matchLabels: {app: backend}}, mtls: {mode: UNSET}}",
                    ),
                ],
                BACKEND,
                80,
                Strict,
            ),
            (
                "an invalid policy is STRICT for its scope: port levels without a selector",
                &[(
                    "shop/broken",
                    OLD,
                    "{mtls: {mode: PERMISSIVE}, portLevelMtls: {\"8080\": {mode: DISABLE}}}",
                )],
                BACKEND,
                8080,
                Strict,
            ),
            (
                "an invalid workload policy is STRICT for the namespace when its selector cannot be read",
                &[(
                    "shop/broken",
                    OLD,
                    "{selector: {matchLabels: {\"bad key!\": x}}, mtls: {mode: DISABLE}}",
                )],
                BACKEND,
                80,
                Strict,
            ),
        ];
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|(name, policies, workload, port, want)| {
                let got = mode(policies, *workload, *port);
                (got != *want).then(|| format!("{name}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    }
}
