//! Kubernetes authentication of CA callers: a projected service-account token
//! is checked with a `TokenReview`. A token of one of the allowed service
//! accounts (the ztunnel DaemonSet's) is a node's: the node is read from the
//! pod binding of the token (`extra["authentication.kubernetes.io/node-name"]`,
//! set by the API server for pod-bound tokens since Kubernetes 1.30). Any other
//! service account's token is a workload's (a waypoint), which may obtain a
//! certificate for that service account only.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};

use super::{BoxFuture, Caller, Error, NodeName, TokenAuthenticator};

/// The `extra` key holding the node a pod-bound token belongs to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Username prefix of service-account tokens.
const SA_USER_PREFIX: &str = "system:serviceaccount:";

/// A [`TokenAuthenticator`] backed by the API server's `TokenReview`.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
    allowed_service_accounts: Vec<String>,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audiences", &self.audiences)
            .field("allowed_service_accounts", &self.allowed_service_accounts)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Accepts tokens that carry one of `audiences` (which must not be empty:
    /// the configuration's validation refuses that, and so does every review):
    /// those of `allowed_service_accounts` (`namespace/name`) as nodes', any
    /// other as its service account's.
    pub fn new(
        client: kube::Client,
        audiences: Vec<String>,
        allowed_service_accounts: Vec<String>,
    ) -> Self {
        Self {
            client,
            audiences,
            allowed_service_accounts,
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, Error> {
        let invalid = |reason: String| Error::Invalid { reason };
        if self.audiences.is_empty() {
            return Err(invalid(
                "no token audience is configured, so no token is accepted".to_owned(),
            ));
        }
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| Error::Unavailable(Box::new(err)))?;
        let status = answer
            .status
            .ok_or_else(|| invalid("the TokenReview has no status".to_owned()))?;
        if status.authenticated != Some(true) {
            return Err(invalid(format!(
                "the API server did not authenticate it ({})",
                status.error.as_deref().unwrap_or("no reason given")
            )));
        }
        // The API server lists the requested audiences the token is valid for;
        // an answer without one of ours (an old server ignoring the field) is
        // no proof the token was minted for the CA.
        let granted = status.audiences.unwrap_or_default();
        if !granted.iter().any(|a| self.audiences.contains(a)) {
            return Err(invalid(format!(
                "the token is not for the CA's audience ({}); it is for {:?}",
                self.audiences.join(", "),
                granted
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let account = username
            .strip_prefix(SA_USER_PREFIX)
            .map(|rest| rest.replacen(':', "/", 1))
            .ok_or_else(|| invalid(format!("{username:?} is not a service account")))?;
        if !self.allowed_service_accounts.contains(&account) {
            let (namespace, service_account) = account
                .split_once('/')
                .ok_or_else(|| invalid(format!("{username:?} is not a service account")))?;
            return Ok(Caller::Workload {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            });
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| match &values[..] {
                [node] if !node.is_empty() => Some(node.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                invalid(format!(
                    "the token is not bound to a pod on a node (no {NODE_NAME_EXTRA} in its extra info)"
                ))
            })?;
        Ok(Caller::Node(NodeName::new(node)))
    }
}

impl TokenAuthenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, Error>> {
        Box::pin(self.review(token))
    }
}
