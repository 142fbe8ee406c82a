//! The Kubernetes manifests in `deploy/`: every document parses; the
//! Kubernetes kinds validate against the schemas of a Kubernetes release
//! (`kubernetes-validate --strict`, installed by `cargo xtask bootstrap`),
//! and the custom resources against ztunnel's own parser; the kustomizations
//! list every manifest; RBAC is least privilege; the DaemonSet and the
//! Deployments agree with the ports and paths of `ztunnel::settings`; the
//! policies of docs/install.md are accepted by ztunnel.
//!
//! No root needed. Without `kubernetes-validate` the schema test skips with
//! the reason, except under `CI`, where it fails.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_yaml_ng::Value;
use ztunnel::settings;

/// The Kubernetes release whose schemas the manifests must pass (the newest
/// that the pinned kubernetes-validate knows, see xtask/src/bootstrap.rs).
const KUBERNETES_VERSION: &str = "1.37.0";

/// The kinds ztunnel's Kubernetes source watches (`watch::<...>` in
/// ztunnel/src/config/kubernetes.rs), as (API group, resource): what the
/// ztunnel, the CA and the waypoint may list and watch, and all they may read.
const WATCHED: [(&str, &str); 10] = [
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("", "nodes"),
    ("discovery.k8s.io", "endpointslices"),
    ("security.istio.io", "peerauthentications"),
    ("security.istio.io", "requestauthentications"),
    ("security.istio.io", "authorizationpolicies"),
    ("gateway.networking.k8s.io", "gateways"),
];

/// The name of the CA's root Secret (`--root-secret` in ca/deployment.yaml).
const ROOT_SECRET: &str = "ambit-ca-root";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// Every `.yaml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/ is readable") {
            let path = entry.expect("deploy/ is readable").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The manifest files (everything but the kustomizations).
fn manifest_files() -> Vec<PathBuf> {
    (yaml_files(&deploy_dir()).into_iter())
        .filter(|p| !is_kustomization(p))
        .collect()
}

/// The non-empty YAML documents of `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("a manifest is readable");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every document of every manifest, with its file.
fn all_documents() -> Vec<(PathBuf, Value)> {
    (manifest_files().into_iter())
        .flat_map(|path| documents(&path).into_iter().map(move |d| (path.clone(), d)))
        .collect()
}

fn str_at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(doc, |value, key| value.get(*key))
        .and_then(Value::as_str)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    (value.and_then(Value::as_sequence).into_iter().flatten())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn kind(doc: &Value) -> &str {
    str_at(doc, &["kind"]).unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    str_at(doc, &["metadata", "name"]).unwrap_or_default()
}

/// The one document of `kind` named `name`.
fn find<'a>(docs: &'a [(PathBuf, Value)], kind_: &str, name_: &str) -> &'a Value {
    let found: Vec<&Value> = (docs.iter())
        .map(|(_, d)| d)
        .filter(|d| kind(d) == kind_ && name(d) == name_)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind_} {name_} in deploy/");
    found[0]
}

/// What the CA's waypoint controller makes from deploy/'s PodTemplate for
/// the example Gateway of deploy/waypoint/ (the objects a cluster gets).
fn rendered_waypoint() -> Vec<Value> {
    use ztunnel::controller::objects::{self, Inputs, WaypointGateway};
    let docs = all_documents();
    let template: k8s_openapi::api::core::v1::PodTemplate =
        serde_yaml_ng::from_value(find(&docs, "PodTemplate", "ambit-waypoint").clone())
            .expect("the waypoint template is a PodTemplate");
    let gateway: ztunnel::config::crd::gateway::Gateway = {
        let mut gateway = find(&docs, "Gateway", "waypoint").clone();
        // The API server gives every object a uid.
        gateway["metadata"]["uid"] = Value::from("00000000-0000-4000-8000-000000000001");
        serde_yaml_ng::from_value(gateway).expect("the example Gateway parses")
    };
    let gateway = WaypointGateway::from_gateway(&gateway)
        .expect("the example Gateway is a waypoint")
        .expect("the example Gateway is deployable");
    let (desired, problem) = objects::desired(Inputs {
        gateways: std::slice::from_ref(&gateway),
        template: Some(&template),
        trust_domain: "cluster.local",
        roots: Some(("ambit-ca-root-cert", "-----BEGIN CERTIFICATE-----\n")),
        system_namespace: "ambit-system",
    });
    assert_eq!(problem, None, "the controller refuses deploy/'s template");
    fn yaml<T: serde::Serialize>(objects: &[T]) -> Vec<Value> {
        (objects.iter())
            .map(|o| serde_yaml_ng::to_value(o).expect("a Kubernetes object serializes"))
            .collect()
    }
    [
        yaml(&desired.service_accounts),
        yaml(&desired.bindings),
        yaml(&desired.deployments),
        yaml(&desired.config_maps),
    ]
    .concat()
}

#[test]
fn every_document_parses_and_names_its_kind() {
    let docs = all_documents();
    assert!(docs.len() > 10, "deploy/ has {} documents", docs.len());
    for (path, doc) in &docs {
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            assert!(
                str_at(doc, field).is_some_and(|s| !s.is_empty()),
                "{}: a document without {}",
                path.display(),
                field.join(".")
            );
        }
    }
}

/// How to run kubernetes-validate here, or `None`.
fn validator() -> Option<Command> {
    let works = |mut cmd: Command| {
        cmd.arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(Command::new("kubernetes-validate")) {
        return Some(Command::new("kubernetes-validate"));
    }
    // `pip install --user` puts the script where PATH may not look.
    let module = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate"]);
        cmd
    };
    works(module()).then(module)
}

/// The API groups of the CRDs in deploy/crds.
fn crd_groups() -> BTreeSet<String> {
    (documents_of(&deploy_dir().join("crds")).iter())
        .filter_map(|doc| str_at(doc, &["spec", "group"]).map(str::to_owned))
        .collect()
}

fn documents_of(dir: &Path) -> Vec<Value> {
    yaml_files(dir).iter().flat_map(|p| documents(p)).collect()
}

#[test]
fn kubernetes_kinds_validate_against_the_schemas_of_a_release() {
    let Some(mut cmd) = validator() else {
        let reason = "kubernetes-validate is not installed (`cargo xtask bootstrap` installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("{reason}; CI is set, so this fails instead of skipping");
        }
        eprintln!("skipping the schema validation: {reason}");
        return;
    };
    let mut files = manifest_files();
    // And what the waypoint controller makes from them.
    let rendered = rendered_waypoint();
    let rendered_file = std::env::temp_dir().join(format!(
        "ambit-manifests-{}-controller.yaml",
        std::process::id()
    ));
    let text: Vec<String> = (rendered.iter())
        .map(|doc| serde_yaml_ng::to_string(doc).expect("serializes"))
        .collect();
    std::fs::write(&rendered_file, text.join("---\n")).expect("the temp dir is writable");
    files.push(rendered_file.clone());
    cmd.args(["-k", KUBERNETES_VERSION, "--strict"])
        .args(&files);
    let output = cmd.output().expect("kubernetes-validate runs");
    let _ = std::fs::remove_file(&rendered_file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stdout.contains("ERROR"),
        "the manifests do not validate against Kubernetes {KUBERNETES_VERSION}:\n{stdout}{stderr}"
    );
    // A document without a schema is only a warning to kubernetes-validate: it
    // must be a custom resource of our CRDs (checked in the next test).
    let groups = crd_groups();
    for line in stdout.lines().chain(stderr.lines()) {
        if line.starts_with("WARN") {
            let api_version = line
                .split("with api version ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected warning: {line}"));
            let group = api_version.split('/').next().unwrap_or_default();
            assert!(
                api_version.contains('/') && groups.contains(group),
                "no schema for a kind outside deploy/crds: {line}"
            );
        }
    }
    let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
    let custom = (all_documents().iter())
        .filter(|(_, d)| {
            let api = str_at(d, &["apiVersion"]).unwrap_or_default();
            groups.contains(api.split('/').next().unwrap_or_default()) && api.contains('/')
        })
        .count();
    assert_eq!(
        passed + custom,
        all_documents().len() + rendered.len(),
        "every document is either validated or a custom resource:\n{stdout}"
    );
}

#[test]
fn custom_resources_are_accepted_by_ztunnels_parser() {
    let groups = crd_groups();
    for (path, doc) in all_documents() {
        let api = str_at(&doc, &["apiVersion"]).unwrap_or_default();
        let Some((group, _)) = api.split_once('/') else {
            continue;
        };
        if !groups.contains(group) {
            continue;
        }
        // The parser ztunnel applies to its configuration: unknown fields, bad
        // values and missing required ones are refused.
        let text = serde_yaml_ng::to_string(&doc).expect("a parsed document serializes");
        if let Err(error) = ztunnel::config::file::parse(&text, &path) {
            panic!(
                "{}: {} {} is refused by ztunnel: {}",
                path.display(),
                kind(&doc),
                name(&doc),
                ztunnel::config::ErrorChain(&error)
            );
        }
    }
}

/// The files a kustomization lists (its `resources`, relative to it).
fn kustomization_resources(path: &Path) -> Vec<PathBuf> {
    let docs = documents(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    let dir = path.parent().expect("a file has a directory");
    strings(docs[0].get("resources"))
        .into_iter()
        .map(|r| dir.join(r))
        .collect()
}

#[test]
fn kustomizations_list_every_manifest_once() {
    let deploy = deploy_dir();
    let canonical = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|_| panic!("{} is listed but does not exist", p.display()))
    };
    let mut listed = Vec::new();
    for kustomization in yaml_files(&deploy).iter().filter(|p| is_kustomization(p)) {
        let resources = kustomization_resources(kustomization);
        assert!(!resources.is_empty(), "{}", kustomization.display());
        for resource in resources {
            assert!(
                resource.is_file(),
                "{} lists {}, which is not a file",
                kustomization.display(),
                resource.display()
            );
            listed.push(canonical(&resource));
        }
    }
    let unique: BTreeSet<&PathBuf> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a manifest is listed twice");
    let manifests: BTreeSet<PathBuf> = manifest_files().iter().map(|p| canonical(p)).collect();
    let missing: Vec<_> = manifests.iter().filter(|m| !unique.contains(m)).collect();
    assert!(missing.is_empty(), "not in any kustomization: {missing:?}");
    // Every generated CRD is part of the mesh's own kustomization.
    let root = kustomization_resources(&deploy.join("kustomization.yaml"));
    let root: BTreeSet<PathBuf> = root.iter().map(|p| canonical(p)).collect();
    for crd in yaml_files(&deploy.join("crds")) {
        assert!(
            root.contains(&canonical(&crd)),
            "{} is not in deploy/kustomization.yaml",
            crd.display()
        );
    }
    // Both images can be set from the kustomization.
    let images: Vec<String> = (documents(&deploy.join("kustomization.yaml"))[0]["images"]
        .as_sequence()
        .expect("deploy/kustomization.yaml has images")
        .iter())
    .filter_map(|i| str_at(i, &["name"]).map(str::to_owned))
    .collect();
    assert_eq!(images, ["ambit/ztunnel", "ambit/waypoint"]);
}

/// The rules of a ClusterRole or Role.
fn rules(role: &Value) -> Vec<&Value> {
    role.get("rules")
        .and_then(Value::as_sequence)
        .map(|r| r.iter().collect())
        .unwrap_or_default()
}

/// (group, resource) pairs a role may `verb`.
fn grants(role: &Value, verb: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules(role) {
        if !strings(rule.get("verbs")).iter().any(|v| v == verb) {
            continue;
        }
        for group in strings(rule.get("apiGroups")) {
            for resource in strings(rule.get("resources")) {
                out.insert((group.clone(), resource));
            }
        }
    }
    out
}

fn watched() -> BTreeSet<(String, String)> {
    (WATCHED.iter())
        .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
        .collect()
}

#[test]
fn the_watched_kinds_are_those_of_the_kubernetes_source() {
    // A new watcher in kubernetes.rs needs RBAC: this table (and the roles)
    // must grow with it.
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ztunnel/src/config/kubernetes.rs"),
    )
    .expect("kubernetes.rs is readable");
    assert_eq!(
        source.matches("watchers.spawn(watch::<").count(),
        WATCHED.len(),
        "ztunnel/src/config/kubernetes.rs watches another set of kinds than WATCHED"
    );
}

#[test]
fn rbac_is_least_privilege() {
    let docs = all_documents();
    let roles: Vec<&Value> = (docs.iter())
        .map(|(_, d)| d)
        .filter(|d| matches!(kind(d), "ClusterRole" | "Role"))
        .collect();
    assert!(roles.len() >= 4, "{} roles", roles.len());
    for role in &roles {
        for rule in rules(role) {
            let (verbs, resources, groups) = (
                strings(rule.get("verbs")),
                strings(rule.get("resources")),
                strings(rule.get("apiGroups")),
            );
            assert!(
                !verbs
                    .iter()
                    .chain(&resources)
                    .chain(&groups)
                    .any(|s| s.contains('*')),
                "{} {} has a wildcard: {rule:?}",
                kind(role),
                name(role)
            );
            assert!(rule.get("nonResourceURLs").is_none(), "{}", name(role));
            assert!(
                !verbs
                    .iter()
                    .any(|v| matches!(v.as_str(), "escalate" | "impersonate")),
                "{} may {verbs:?}",
                name(role)
            );
            // `bind` lets a role grant what it does not hold: only the
            // waypoint controller has it, for the waypoints' role alone.
            if verbs.iter().any(|v| v == "bind") {
                assert_eq!(name(role), "ambit-waypoint-controller");
                assert_eq!(verbs, ["bind"]);
                assert_eq!(resources, ["clusterroles"]);
                assert_eq!(strings(rule.get("resourceNames")), ["ambit-waypoint"]);
            }
        }
    }

    // ztunnel and the waypoint read exactly what the source watches, and write nothing.
    for role_name in ["ambit-ztunnel", "ambit-waypoint"] {
        let role = find(&docs, "ClusterRole", role_name);
        for verb in ["list", "watch"] {
            assert_eq!(grants(role, verb), watched(), "{role_name} {verb}");
        }
        for rule in rules(role) {
            let verbs = strings(rule.get("verbs"));
            assert!(
                verbs.iter().all(|v| v == "list" || v == "watch"),
                "{role_name} may {verbs:?}"
            );
            assert!(
                !strings(rule.get("resources"))
                    .iter()
                    .any(|r| r == "secrets"),
                "{role_name} may touch Secrets"
            );
        }
    }

    // The CA: the same reads, TokenReview, and its root Secret.
    let ca = find(&docs, "ClusterRole", "ambit-ca");
    for verb in ["list", "watch"] {
        assert_eq!(grants(ca, verb), watched(), "ambit-ca {verb}");
    }
    let tokenreviews = BTreeSet::from([(
        "authentication.k8s.io".to_owned(),
        "tokenreviews".to_owned(),
    )]);
    assert_eq!(grants(ca, "create"), tokenreviews);
    let cluster_secrets = (roles.iter())
        .filter(|r| kind(r) == "ClusterRole")
        .flat_map(|r| rules(r))
        .any(|rule| {
            strings(rule.get("resources"))
                .iter()
                .any(|r| r == "secrets")
        });
    assert!(!cluster_secrets, "a ClusterRole grants access to Secrets");
    let root_role = find(&docs, "Role", "ambit-ca-root");
    assert_eq!(
        str_at(root_role, &["metadata", "namespace"]),
        Some("ambit-system")
    );
    for rule in rules(root_role) {
        let verbs = strings(rule.get("verbs"));
        assert_eq!(strings(rule.get("resources")), ["secrets"]);
        if verbs == ["create"] {
            // RBAC cannot limit create by name; the Role is namespaced.
            continue;
        }
        assert_eq!(
            verbs,
            ["get"],
            "the CA may only read and create its root Secret"
        );
        assert_eq!(strings(rule.get("resourceNames")), [ROOT_SECRET]);
    }
    // The waypoint controller: writes what a waypoint is made of, changes no
    // ConfigMap but the root's, and reads its template by name.
    let controller = find(&docs, "ClusterRole", "ambit-waypoint-controller");
    let pair = |g: &str, r: &str| (g.to_owned(), r.to_owned());
    assert_eq!(
        grants(controller, "create"),
        BTreeSet::from([
            pair("", "serviceaccounts"),
            pair("", "configmaps"),
            pair("apps", "deployments"),
            pair("rbac.authorization.k8s.io", "clusterrolebindings"),
        ])
    );
    assert!(grants(controller, "get").is_empty() && grants(controller, "watch").is_empty());
    for rule in rules(controller) {
        if strings(rule.get("resources")) == ["configmaps"]
            && strings(rule.get("verbs")) != ["create"]
        {
            assert_eq!(strings(rule.get("resourceNames")), ["ambit-ca-root-cert"]);
        }
    }
    let template_role = find(&docs, "Role", "ambit-waypoint-template");
    assert_eq!(
        grants(template_role, "get"),
        BTreeSet::from([pair("", "podtemplates")])
    );
    assert_eq!(
        strings(rules(template_role)[0].get("resourceNames")),
        ["ambit-waypoint"]
    );
    // Any other Role touching Secrets must name them.
    for role in roles.iter().filter(|r| kind(r) == "Role") {
        for rule in rules(role) {
            let verbs = strings(rule.get("verbs"));
            if strings(rule.get("resources"))
                .iter()
                .any(|r| r == "secrets")
                && verbs != ["create"]
            {
                assert!(
                    !strings(rule.get("resourceNames")).is_empty(),
                    "{} reads Secrets without resourceNames",
                    name(role)
                );
            }
        }
    }
}

/// The first container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    (container["env"].as_sequence().into_iter().flatten())
        .find(|e| str_at(e, &["name"]) == Some(var))
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    env(container, var).and_then(|e| str_at(e, &["value"]))
}

/// The projected service-account token for the CA: audience and mount.
fn assert_ca_token(workload: &Value, what: &str) {
    let pod = &workload["spec"]["template"]["spec"];
    let c = container(workload);
    let token = Path::new(settings::CA_TOKEN_FILE_DEFAULT);
    assert_eq!(
        env_value(c, settings::CA_TOKEN_FILE_ENV),
        token.to_str(),
        "{what}"
    );
    assert_eq!(
        env_value(c, settings::CA_ROOT_ENV),
        Some(settings::CA_ROOT_DEFAULT),
        "{what}"
    );
    let mounted = |file: &Path| -> Option<String> {
        let dir = file.parent()?.to_str()?;
        let mount = (c["volumeMounts"].as_sequence()?.iter())
            .find(|m| str_at(m, &["mountPath"]) == Some(dir))?;
        let volume =
            (pod["volumes"].as_sequence()?.iter()).find(|v| v.get("name") == mount.get("name"))?;
        serde_yaml_ng::to_string(volume).ok()
    };
    let volume =
        mounted(token).unwrap_or_else(|| panic!("{what}: no volume at the token's directory"));
    assert!(
        volume.contains(&format!("audience: {}", settings::CA_TOKEN_AUDIENCE))
            && volume.contains("path: ambit-ca"),
        "{what}: the CA token volume is\n{volume}"
    );
    let root = mounted(Path::new(settings::CA_ROOT_DEFAULT))
        .unwrap_or_else(|| panic!("{what}: no volume at the root certificate's directory"));
    assert!(root.contains("path: root-cert.pem"), "{what}: {root}");
    assert_eq!(
        env_value(c, settings::CA_ADDRESS_ENV),
        Some(settings::CA_ADDRESS_DEFAULT),
        "{what}"
    );
}

/// The mesh's trust domain variable (`ztunnel::settings`, read by ztunnel,
/// the CA and the waypoint).
const TRUST_DOMAIN_ENV: &str = "TRUST_DOMAIN";

#[test]
fn one_trust_domain_for_the_whole_mesh() {
    let docs = all_documents();
    let kustomization = &documents(&deploy_dir().join("kustomization.yaml"))[0];
    let generator = (kustomization["configMapGenerator"]
        .as_sequence()
        .into_iter()
        .flatten())
    .find(|g| str_at(g, &["name"]) == Some("ambit-mesh"))
    .expect("deploy/kustomization.yaml generates the ambit-mesh ConfigMap");
    let prefix = format!("{TRUST_DOMAIN_ENV}=");
    let trust_domain = (strings(generator.get("literals")).into_iter())
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .expect("ambit-mesh sets TRUST_DOMAIN");
    for (kind_, name_) in [("DaemonSet", "ztunnel"), ("Deployment", "ambit-ca")] {
        let var = env(container(find(&docs, kind_, name_)), TRUST_DOMAIN_ENV)
            .unwrap_or_else(|| panic!("{name_} has no {TRUST_DOMAIN_ENV}"));
        assert_eq!(
            str_at(var, &["valueFrom", "configMapKeyRef", "name"]),
            Some("ambit-mesh"),
            "{name_}"
        );
        assert_eq!(
            str_at(var, &["valueFrom", "configMapKeyRef", "key"]),
            Some(TRUST_DOMAIN_ENV)
        );
    }
    // The CA takes it from the environment: a flag would win over it.
    let args = strings(container(find(&docs, "Deployment", "ambit-ca")).get("args"));
    assert!(
        !args.iter().any(|a| a.starts_with("--trust-domain")),
        "{args:?}"
    );
    // Waypoints get the CA's: the template must not pretend to set it.
    let template = find(&docs, "PodTemplate", "ambit-waypoint");
    assert!(
        env(
            &template["template"]["spec"]["containers"][0],
            TRUST_DOMAIN_ENV
        )
        .is_none(),
        "the waypoint template sets {TRUST_DOMAIN_ENV}, which the controller replaces"
    );
    let rendered = rendered_waypoint();
    let waypoint = (rendered.iter())
        .find(|d| kind(d) == "Deployment")
        .expect("a waypoint Deployment");
    assert_eq!(
        env_value(container(waypoint), TRUST_DOMAIN_ENV),
        Some("cluster.local"),
        "the CA's trust domain ({trust_domain} in the kustomization) reaches the waypoint"
    );
}

#[test]
fn workloads_agree_with_ztunnels_settings() {
    let docs = all_documents();
    let ztunnel = find(&docs, "DaemonSet", "ztunnel");
    let c = container(ztunnel);
    assert_ca_token(ztunnel, "ztunnel");
    assert_eq!(
        str_at(
            env(c, settings::NODE_NAME_ENV).expect("NODE_NAME is set"),
            &["valueFrom", "fieldRef", "fieldPath"]
        ),
        Some("spec.nodeName")
    );
    // Not privileged: the pods' sysctl goes through the host's /proc/sys/net,
    // mounted writable where AMBIT_SYSCTL_NET says (tests/tests/sysctl.rs).
    assert_ne!(c["securityContext"]["privileged"].as_bool(), Some(true));
    let sysctl_net = env_value(c, settings::SYSCTL_NET_ENV).expect("AMBIT_SYSCTL_NET is set");
    let mount = (c["volumeMounts"].as_sequence().into_iter().flatten())
        .find(|m| str_at(m, &["mountPath"]) == Some(sysctl_net))
        .unwrap_or_else(|| panic!("nothing is mounted at {sysctl_net}"));
    assert_ne!(
        mount["readOnly"].as_bool(),
        Some(true),
        "{sysctl_net} is read-only"
    );
    let volume = (ztunnel["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten())
    .find(|v| v.get("name") == mount.get("name"))
    .expect("the sysctl volume");
    assert_eq!(str_at(volume, &["hostPath", "path"]), Some("/proc/sys/net"));
    let caps = strings(c["securityContext"]["capabilities"].get("add"));
    for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(
            caps.iter().any(|c| c == needed),
            "ztunnel lacks CAP_{needed}: {caps:?}"
        );
    }
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(
        probe["port"].as_u64(),
        Some(u64::from(settings::READINESS_PORT))
    );
    assert_eq!(str_at(probe, &["path"]), Some("/healthz/ready"));
    let strategy = &ztunnel["spec"]["updateStrategy"]["rollingUpdate"];
    // A surge: the new ztunnel takes over before the old one drains.
    assert_eq!(strategy["maxUnavailable"].as_u64(), Some(0));
    assert_eq!(strategy["maxSurge"].as_u64(), Some(1));
    let grace = ztunnel["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64();
    assert!(
        grace > Some(settings::DRAIN_TIMEOUT_DEFAULT.as_secs()),
        "the grace period must outlast the drain"
    );
    // The CNI plugin is installed to talk to the socket ztunnel listens on
    // (its default), and that socket's directory is the host's.
    let pod = &ztunnel["spec"]["template"]["spec"];
    let install = (pod["initContainers"].as_sequence())
        .and_then(|list| list.iter().find(|c| c["name"] == "install-cni"))
        .expect("an install-cni init container");
    let command = strings(install.get("command"));
    let socket_arg = command
        .windows(2)
        .find(|w| w[0] == "--socket")
        .map(|w| w[1].clone());
    assert_eq!(socket_arg.as_deref(), Some(settings::CNI_SOCKET_DEFAULT));
    let socket_dir = Path::new(settings::CNI_SOCKET_DEFAULT)
        .parent()
        .and_then(|d| d.to_str())
        .expect("the socket is in a directory");
    let mount = (c["volumeMounts"]
        .as_sequence()
        .expect("ztunnel mounts volumes")
        .iter())
    .find(|m| str_at(m, &["mountPath"]) == Some(socket_dir))
    .unwrap_or_else(|| panic!("ztunnel does not mount {socket_dir}"));
    let volume = (pod["volumes"].as_sequence().expect("volumes").iter())
        .find(|v| v.get("name") == mount.get("name"))
        .expect("the socket's volume");
    assert_eq!(str_at(volume, &["hostPath", "path"]), Some(socket_dir));

    let ca = find(&docs, "Deployment", "ambit-ca");
    let args = strings(container(ca).get("args"));
    assert_eq!(args.first().map(String::as_str), Some("ca"));
    assert!(
        args.contains(&format!("--root-secret=ambit-system/{ROOT_SECRET}")),
        "{args:?}"
    );
    assert!(args.contains(&format!(
        "--token-review-audience={}",
        settings::CA_TOKEN_AUDIENCE
    )));
    assert!(args.contains(&"--allowed-service-account=ambit-system/ztunnel".to_owned()));
    let service = find(&docs, "Service", "ambit-ca");
    assert_eq!(
        str_at(service, &["metadata", "namespace"]),
        Some("ambit-system")
    );
    assert_eq!(
        service["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(settings::CA_PORT))
    );
    assert!(settings::CA_SERVER_NAMES.contains(&"ambit-ca.ambit-system.svc"));

    for flag in [
        "--root-configmap=ambit-ca-root-cert",
        "--waypoint-template=ambit-waypoint",
    ] {
        assert!(
            args.contains(&flag.to_owned()),
            "the CA lacks {flag}: {args:?}"
        );
    }
    let rendered = rendered_waypoint();
    let waypoint = (rendered.iter())
        .find(|d| kind(d) == "Deployment")
        .expect("a waypoint Deployment");
    assert_ca_token(waypoint, "waypoint");
    // The root the waypoint mounts is published in its namespace.
    let published = (rendered.iter()).any(|d| {
        kind(d) == "ConfigMap"
            && name(d) == "ambit-ca-root-cert"
            && str_at(d, &["metadata", "namespace"]) == Some("demo")
    });
    assert!(published, "no root ConfigMap for the waypoint's namespace");
    let pod = &waypoint["spec"]["template"];
    let gateway = str_at(
        pod,
        &[
            "metadata",
            "labels",
            "gateway.networking.k8s.io/gateway-name",
        ],
    )
    .expect("the waypoint's pods carry the gateway-name label");
    assert_eq!(str_at(pod, &["spec", "serviceAccountName"]), Some(gateway));
    let c = container(waypoint);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"].as_u64(),
        Some(u64::from(settings::READINESS_PORT))
    );
    let ports: Vec<u64> = (c["ports"].as_sequence().into_iter().flatten())
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(settings::HBONE_PORT)),
        "{ports:?}"
    );
}

/// The ```yaml blocks of a Markdown text, with their indentation removed.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed == "```yaml" => current = Some((indent, String::new())),
            None => {}
            Some(_) if trimmed == "```" => blocks.push(current.take().expect("in a block").1),
            Some((indent, text)) => {
                text.push_str(line.get(*indent..).unwrap_or_default());
                text.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn the_policies_of_the_install_guide_are_accepted_by_ztunnel() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/install.md");
    let text = std::fs::read_to_string(&path).expect("docs/install.md is readable");
    let policies: Vec<String> = (yaml_blocks(&text).into_iter())
        .filter(|b| b.contains("apiVersion: security.istio.io/"))
        .collect();
    assert!(
        !policies.is_empty(),
        "docs/install.md has no policy example"
    );
    for block in policies {
        match ztunnel::config::file::parse(&block, &path) {
            Ok(parsed) => assert!(
                parsed.fail_closed.is_empty(),
                "docs/install.md has an invalid policy: {:?}",
                parsed.fail_closed
            ),
            Err(error) => panic!(
                "docs/install.md: a block is refused: {}\n{block}",
                ztunnel::config::ErrorChain(&error)
            ),
        }
    }
}

#[test]
fn kustomize_renders_the_mesh_and_sets_every_image() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        let reason = "kubectl is not installed (`cargo xtask bootstrap` installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("{reason}; CI is set, so this fails instead of skipping");
        }
        eprintln!("skipping the kustomize rendering: {reason}");
        return;
    }
    // An overlay as docs/install.md describes: the images from a registry.
    let overlay = std::env::temp_dir().join(format!("ambit-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).expect("the temp dir is writable");
    let overlay = overlay.canonicalize().expect("the overlay exists");
    // Kustomize takes relative paths only: up to / and down to deploy/.
    let base = deploy_dir().canonicalize().expect("deploy/ exists");
    let up = "../".repeat(overlay.components().count() - 1);
    let base = format!(
        "{up}{}",
        base.strip_prefix("/").expect("absolute").display()
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {base}\n\
             images:\n- name: ambit/ztunnel\n  newName: registry.example/ztunnel\n  newTag: v9\n\
             - name: ambit/waypoint\n  newName: registry.example/waypoint\n  newTag: v9\n"
        ),
    )
    .expect("the overlay is writable");
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .expect("kubectl runs");
    let _ = std::fs::remove_dir_all(&overlay);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl kustomize fails:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).expect("kustomize's output parses"))
        .collect();
    // Every container of the mesh, the waypoint template's included, runs
    // the overlay's images.
    let images: Vec<String> = (docs.iter())
        .flat_map(|d| {
            let pod = match kind(d) {
                "PodTemplate" => &d["template"]["spec"],
                _ => &d["spec"]["template"]["spec"],
            };
            let containers = pod["containers"].as_sequence().into_iter().flatten();
            let init = pod["initContainers"].as_sequence().into_iter().flatten();
            containers
                .chain(init)
                .filter_map(|c| str_at(c, &["image"]).map(str::to_owned))
        })
        .collect();
    assert!(images.len() >= 4, "{images:?}");
    for image in &images {
        assert!(
            image.starts_with("registry.example/") && image.ends_with(":v9"),
            "{images:?}"
        );
    }
    assert!(
        images.iter().any(|i| i == "registry.example/waypoint:v9"),
        "{images:?}"
    );
    // The trust domain's ConfigMap gets its hash suffix, and its users follow.
    assert!(
        stdout.contains("name: ambit-mesh-"),
        "no generated ambit-mesh ConfigMap"
    );
}

/// The metric names of a PromQL expression: identifiers that start like
/// ambit's or Istio's, without the histogram series suffixes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_lowercase()) {
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with("istio_") || word.starts_with("ambit_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            names.insert(base.to_owned());
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_that_exist() {
    let path = deploy_dir().join("grafana/ambit-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard exists"))
            .expect("the dashboard is JSON");
    // What ztunnel exports (every family, empty or not), and the waypoint's
    // request metrics (docs/metrics.md; waypoint/src/proxy/metrics.rs).
    // A family without a series prints nothing: give each one.
    let metrics = ztunnel::metrics::Metrics::new();
    let registry = ztunnel::registry::Registry::new(ztunnel::registry::Options::default());
    metrics.observe_snapshot(&registry.snapshot());
    let proxy = metrics.proxy();
    let connection = proxy.open(&ztunnel::metrics::TcpLabels::new("source"));
    connection.received(1);
    connection.sent(1);
    proxy.failed("reset");
    proxy.decided("ALLOW", true);
    proxy
        .certificate_expiry
        .get_or_create(&ztunnel::metrics::IdentityLabel {
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
        })
        .set(1);
    let exposition = metrics.encode();
    drop(connection);
    let mut exported: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect();
    exported.extend(
        [
            "istio_requests_total",
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ]
        .map(str::to_owned),
    );
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            used.extend(metric_names(expr));
        }
    }
    used.extend(metric_names(
        dashboard["templating"]["list"][1]["query"]
            .as_str()
            .unwrap_or_default(),
    ));
    assert!(used.len() >= 8, "{used:?}");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which nothing exports: {exported:?}"
    );
}
