//! Command-line flags of `ztunnel ca`, turned into a validated [`CaServerConfig`].
//! `main.rs` flattens [`CaArgs`] into its `ca` subcommand.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{CaServerConfig, Error, NodeAuthConfig, RootSource};
use crate::settings;

/// Flags of `ztunnel ca`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CaArgs {
    /// Address to serve the CA API on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], settings::CA_PORT)))]
    pub listen: SocketAddr,
    /// Trust domain of the identities signed (also TRUST_DOMAIN, as the
    /// ztunnels and waypoints read it).
    #[arg(long, env = settings::TRUST_DOMAIN_ENV, default_value = settings::TRUST_DOMAIN_DEFAULT)]
    pub trust_domain: String,
    /// Directory with the root key and certificate (`ca.key`, `ca.crt`); created
    /// with a new root when empty. Exclusive with --root-secret and --cacerts-dir.
    #[arg(long, conflicts_with_all = ["root_secret", "cacerts_dir"])]
    pub root_dir: Option<PathBuf>,
    /// Kubernetes Secret `<namespace>/<name>` holding the root; created when absent.
    /// Exclusive with --cacerts-dir.
    #[arg(long, conflicts_with = "cacerts_dir")]
    pub root_secret: Option<String>,
    /// Plug-in CA: a directory in Istio's `cacerts` layout (`ca-cert.pem`,
    /// `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), e.g. the Secret
    /// `cacerts` mounted; the CA signs with that intermediate (also
    /// AMBIT_CACERTS_DIR).
    #[arg(long, env = settings::CACERTS_DIR_ENV)]
    pub cacerts_dir: Option<PathBuf>,
    /// PEM file of other roots handed out with every chain (root rotation).
    #[arg(long)]
    pub extra_roots: Option<PathBuf>,
    /// Lifetime of certificates when the caller asks for none (e.g. `24h`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub default_validity: Duration,
    /// Longest lifetime issued (e.g. `7d`).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub max_validity: Duration,
    /// DNS name (or IP) of the CA's serving certificate; repeatable. Default:
    /// `ambit-ca`, `ambit-ca.ambit-system.svc`, `localhost`.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Local mode: file of `<token> <node-name>` lines. Exclusive with
    /// --token-review-audience and --allowed-service-account.
    #[arg(long, conflicts_with_all = ["token_review_audiences", "allowed_service_accounts"])]
    pub token_file: Option<PathBuf>,
    /// Kubernetes: audience the ztunnel tokens must carry; repeatable
    /// (default: `ambit-ca`; never the API server's own).
    #[arg(long = "token-review-audience")]
    pub token_review_audiences: Vec<String>,
    /// Kubernetes: service account `<namespace>/<name>` whose tokens are accepted
    /// (the ztunnel DaemonSet's); repeatable.
    #[arg(long = "allowed-service-account")]
    pub allowed_service_accounts: Vec<String>,
    /// Kubernetes: the CA's own namespace, where it publishes the roots and
    /// reads the waypoint template (also POD_NAMESPACE).
    #[arg(long, env = settings::POD_NAMESPACE_ENV, default_value = settings::SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Kubernetes: publish the roots as this ConfigMap (key `root-cert.pem`)
    /// in the CA's namespace and in each namespace with a waypoint (also
    /// AMBIT_ROOT_CONFIGMAP).
    #[arg(long, env = settings::ROOT_CONFIGMAP_ENV)]
    pub root_configmap: Option<String>,
    /// Kubernetes: deploy a waypoint for each Gateway of class
    /// `istio-waypoint`, from this PodTemplate of the CA's namespace (also
    /// AMBIT_WAYPOINT_TEMPLATE).
    #[arg(long, env = settings::WAYPOINT_TEMPLATE_ENV)]
    pub waypoint_template: Option<String>,
    /// How often the controller applies everything again (e.g. `5m`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub controller_resync: Duration,
}

impl CaArgs {
    /// The configuration these flags describe, checked.
    pub fn to_config(&self) -> Result<CaServerConfig, Error> {
        let config_err = |reason: String| Error::Config { reason };
        let root = match (&self.root_dir, &self.root_secret, &self.cacerts_dir) {
            (Some(dir), None, None) => RootSource::Directory(dir.clone()),
            (None, None, Some(dir)) => RootSource::Cacerts(dir.clone()),
            (None, Some(secret), None) => {
                let (namespace, name) = secret
                    .split_once('/')
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                    .ok_or_else(|| {
                        config_err(format!(
                            "--root-secret={secret:?} is not <namespace>/<name>"
                        ))
                    })?;
                RootSource::KubernetesSecret {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }
            }
            _ => {
                return Err(config_err(
                    "give exactly one of --root-dir, --root-secret and --cacerts-dir".to_owned(),
                ));
            }
        };
        let node_auth = match &self.token_file {
            Some(path) => NodeAuthConfig::TokenFile(path.clone()),
            None if self.allowed_service_accounts.is_empty() => {
                return Err(config_err(
                    "give --token-file, or --allowed-service-account for TokenReview".to_owned(),
                ));
            }
            None => {
                if let Some(bad) = self
                    .allowed_service_accounts
                    .iter()
                    .find(|sa| sa.split('/').filter(|p| !p.is_empty()).count() != 2)
                {
                    return Err(config_err(format!(
                        "--allowed-service-account={bad:?} is not <namespace>/<name>"
                    )));
                }
                let audiences = if self.token_review_audiences.is_empty() {
                    vec![settings::CA_TOKEN_AUDIENCE.to_owned()]
                } else {
                    self.token_review_audiences.clone()
                };
                NodeAuthConfig::TokenReview {
                    audiences,
                    allowed_service_accounts: self.allowed_service_accounts.clone(),
                }
            }
        };
        let server_names = if self.server_names.is_empty() {
            settings::CA_SERVER_NAMES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            self.server_names.clone()
        };
        let config = CaServerConfig {
            listen: self.listen,
            trust_domain: self.trust_domain.clone(),
            root,
            extra_roots_file: self.extra_roots.clone(),
            default_validity: self.default_validity,
            max_validity: self.max_validity,
            server_names,
            node_auth,
            controller: crate::controller::ControllerConfig {
                namespace: self.namespace.clone(),
                root_config_map: self.root_configmap.clone().filter(|n| !n.is_empty()),
                waypoint_template: self.waypoint_template.clone().filter(|n| !n.is_empty()),
                resync: self.controller_resync,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// `<n>` seconds, or `<n>s`, `<n>m`, `<n>h`, `<n>d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 15m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} has an unknown unit: use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ca: CaArgs,
    }

    fn parse(args: &[&str]) -> Result<CaServerConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("ca").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.ca
            .to_config()
            .map_err(|e| crate::identity::error_chain(&e))
    }

    #[test]
    fn local_flags() {
        let config = parse(&["--root-dir", "/var/lib/ambit/ca", "--token-file", "/t"]).unwrap();
        assert_eq!(
            config.root,
            RootSource::Directory("/var/lib/ambit/ca".into())
        );
        assert_eq!(config.node_auth, NodeAuthConfig::TokenFile("/t".into()));
        assert_eq!(config.listen.port(), 15012);
        assert_eq!(config.trust_domain, "cluster.local");
        assert_eq!(config.default_validity, Duration::from_secs(86_400));
        assert_eq!(config.max_validity, Duration::from_secs(7 * 86_400));
        assert_eq!(config.server_names[0], "ambit-ca");
    }

    #[test]
    fn cacerts_flags() {
        let config = parse(&[
            "--cacerts-dir",
            "/etc/cacerts",
            "--token-file",
            "/t",
            "--trust-domain",
            "mesh.example",
        ])
        .unwrap();
        assert_eq!(config.root, RootSource::Cacerts("/etc/cacerts".into()));
        assert_eq!(config.trust_domain, "mesh.example");
        for other in [["--root-dir", "/d"], ["--root-secret", "a/b"]] {
            let err = parse(&[
                "--cacerts-dir",
                "/etc/cacerts",
                "--token-file",
                "/t",
                other[0],
                other[1],
            ])
            .unwrap_err();
            assert!(err.contains("cannot be used with"), "{other:?}: {err}");
        }
    }

    #[test]
    fn kubernetes_flags() {
        let config = parse(&[
            "--root-secret",
            "ambit-system/ambit-ca-root",
            "--allowed-service-account",
            "ambit-system/ztunnel",
            "--token-review-audience",
            "ambit-ca",
            "--max-validity",
            "2d",
            "--default-validity",
            "12h",
            "--server-name",
            "ca.example",
        ])
        .unwrap();
        assert_eq!(
            config.root,
            RootSource::KubernetesSecret {
                namespace: "ambit-system".to_owned(),
                name: "ambit-ca-root".to_owned()
            }
        );
        assert_eq!(
            config.node_auth,
            NodeAuthConfig::TokenReview {
                audiences: vec!["ambit-ca".to_owned()],
                allowed_service_accounts: vec!["ambit-system/ztunnel".to_owned()],
            }
        );
        assert_eq!(config.max_validity, Duration::from_secs(2 * 86_400));
        assert_eq!(config.server_names, vec!["ca.example".to_owned()]);
    }

    #[test]
    fn token_review_needs_a_dedicated_audience_by_default() {
        let config = parse(&[
            "--root-secret",
            "ambit-system/ambit-ca-root",
            "--allowed-service-account",
            "ambit-system/ztunnel",
        ])
        .unwrap();
        let NodeAuthConfig::TokenReview { audiences, .. } = &config.node_auth else {
            panic!("{:?}", config.node_auth);
        };
        assert_eq!(audiences, &["ambit-ca".to_owned()]);
        let mut without = config.clone();
        without.node_auth = NodeAuthConfig::TokenReview {
            audiences: Vec::new(),
            allowed_service_accounts: vec!["ambit-system/ztunnel".to_owned()],
        };
        let err = without.validate().unwrap_err();
        assert!(
            crate::identity::error_chain(&err).contains("dedicated token audience"),
            "{err}"
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (args, expected) in [
            (
                &["--token-file", "/t"][..],
                "exactly one of --root-dir, --root-secret and --cacerts-dir",
            ),
            (
                &["--root-dir", "/d"][..],
                "give --token-file, or --allowed-service-account",
            ),
            (
                &["--root-secret", "nons", "--token-file", "/t"][..],
                "is not <namespace>/<name>",
            ),
            (
                &["--root-dir", "/d", "--allowed-service-account", "ztunnel"][..],
                "--allowed-service-account=\"ztunnel\" is not <namespace>/<name>",
            ),
            (
                &[
                    "--root-dir",
                    "/d",
                    "--token-file",
                    "/t",
                    "--max-validity",
                    "1h",
                    "--default-validity",
                    "2h",
                ][..],
                "the default validity must be positive and at most the maximum",
            ),
            (
                &[
                    "--root-dir",
                    "/d",
                    "--token-file",
                    "/t",
                    "--max-validity",
                    "1w",
                ][..],
                "unknown unit",
            ),
            (
                &[
                    "--root-dir",
                    "/d",
                    "--token-file",
                    "/t",
                    "--trust-domain",
                    "Bad",
                ][..],
                "trust domain \"Bad\" is invalid",
            ),
            (
                &[
                    "--root-dir",
                    "/d",
                    "--root-secret",
                    "a/b",
                    "--token-file",
                    "/t",
                ][..],
                "cannot be used with",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
