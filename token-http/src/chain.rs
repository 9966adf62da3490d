//! `ChainCredential`: credentials tried in order, the first that works kept
//! for good, one of them selectable by an environment variable.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use token_core::{AccessToken, Credential, CredentialError, TokenRequest};

use crate::error::ConfigError;

/// The environment variable that selects one member of a chain by name
/// (for example `TOKEN_CACHE_CREDENTIAL=workload`), so production runs
/// exactly the credential it was deployed with and never wanders into a
/// developer's.
pub const CREDENTIAL_SELECTOR_VAR: &str = "TOKEN_CACHE_CREDENTIAL";

const NONE_YET: usize = usize::MAX;

/// Credentials tried in order until one obtains a token.
///
/// - **Order:** members are tried in the order they were added.
/// - **Sticky:** the first member that obtains a token is used for every
///   later fetch of this chain, even when it fails (its error is returned
///   as it is, so the cache's backoff and stale-if-error apply to it), so a
///   passing failure never switches a running service to another identity.
/// - **Errors:** when no member has worked yet and all fail, the error
///   names every member with its error, in order. It is transient when any
///   member's error was (the cache then retries the chain), permanent
///   otherwise.
/// - **Selection:** when [`CREDENTIAL_SELECTOR_VAR`] (or the variable set
///   with [`ChainCredentialBuilder::selector_var`]) is set, only the member
///   of that name is in the chain; an unknown name fails to build, listing
///   the names there are.
///
/// # Identity
///
/// A chain of one member (after selection) has that member's id, so its
/// tokens are shared with the member used directly. A longer chain's id is
/// `chain(<name>=<member id>,...)`: every process with the same chain
/// shares its tokens, whichever member each one stuck with; select a member
/// where that matters.
pub struct ChainCredential {
    id: String,
    members: Vec<(String, Arc<dyn Credential>)>,
    sticky: AtomicUsize,
}

impl ChainCredential {
    /// Starts an empty chain.
    pub fn builder() -> ChainCredentialBuilder {
        ChainCredentialBuilder {
            members: Vec::new(),
            selector_var: Some(CREDENTIAL_SELECTOR_VAR.to_owned()),
            selected: None,
        }
    }

    /// The members' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(name, _)| name.as_str())
    }

    /// The name of the member the chain stuck with, once one has worked.
    pub fn active(&self) -> Option<&str> {
        let i = self.sticky.load(Ordering::Acquire);
        self.members.get(i).map(|(name, _)| name.as_str())
    }
}

#[async_trait]
impl Credential for ChainCredential {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let stuck = self.sticky.load(Ordering::Acquire);
        if let Some((_, member)) = self.members.get(stuck) {
            return member.fetch(request, previous).await;
        }
        let mut failures: Vec<(&str, CredentialError)> = Vec::new();
        for (i, (name, member)) in self.members.iter().enumerate() {
            match member.fetch(request, previous).await {
                Ok(token) => {
                    // Concurrent first fetches (of different keys) may both
                    // succeed; the earliest member that did wins.
                    let _ = self.sticky.fetch_min(i, Ordering::AcqRel);
                    tracing::info!(
                        chain = %self.id,
                        member = %name,
                        "the credential chain uses `{name}` from now on"
                    );
                    return Ok(token);
                }
                Err(e) => {
                    tracing::debug!(member = %name, error = %e, "credential chain member failed");
                    failures.push((name, e));
                }
            }
        }
        Err(chain_error(failures))
    }
}

fn chain_error(failures: Vec<(&str, CredentialError)>) -> CredentialError {
    let mut message = String::from("no credential of the chain obtained a token:");
    let mut transient = false;
    let mut retry_after: Option<Duration> = None;
    for (name, e) in &failures {
        let _ = write!(message, " [{name}] {e};");
        if e.is_transient() {
            transient = true;
            if let Some(after) = e.retry_after() {
                retry_after = Some(retry_after.map_or(after, |r| r.min(after)));
            }
        }
    }
    message.pop();
    let error = if transient {
        CredentialError::transient(message)
    } else {
        CredentialError::permanent(message)
    };
    match retry_after {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

impl fmt::Debug for ChainCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainCredential")
            .field("id", &self.id)
            .field("members", &self.members)
            .field("active", &self.active())
            .finish()
    }
}

/// Builds a [`ChainCredential`].
pub struct ChainCredentialBuilder {
    members: Vec<(String, Arc<dyn Credential>)>,
    selector_var: Option<String>,
    selected: Option<String>,
}

impl ChainCredentialBuilder {
    /// Adds a member named `name` (what the selector variable names it by).
    pub fn member(self, name: impl Into<String>, credential: impl Credential + 'static) -> Self {
        self.member_arc(name, Arc::new(credential))
    }

    /// [`member`](Self::member) for a shared credential.
    pub fn member_arc(mut self, name: impl Into<String>, credential: Arc<dyn Credential>) -> Self {
        self.members.push((name.into(), credential));
        self
    }

    /// The environment variable that selects a member. Defaults to
    /// [`CREDENTIAL_SELECTOR_VAR`]; `None` reads no variable.
    pub fn selector_var(mut self, var: Option<&str>) -> Self {
        self.selector_var = var.map(str::to_owned);
        self
    }

    /// Selects a member by name, as the variable would (it wins over the
    /// variable). For configuration that comes from elsewhere, and tests.
    pub fn select(mut self, name: impl Into<String>) -> Self {
        self.selected = Some(name.into());
        self
    }

    /// Checks the chain: at least one member, unique names, and a selected
    /// name that exists.
    pub fn build(self) -> Result<ChainCredential, ConfigError> {
        if self.members.is_empty() {
            return Err(ConfigError::Invalid(
                "a credential chain needs at least one member".into(),
            ));
        }
        for (i, (name, _)) in self.members.iter().enumerate() {
            if name.is_empty() || name.contains([',', '=', '(', ')']) {
                return Err(ConfigError::Invalid(format!(
                    "credential chain member name {name:?} must be non-empty and without , = ( )"
                )));
            }
            if self.members[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::Invalid(format!(
                    "two credential chain members are named `{name}`"
                )));
            }
        }
        let from_var = self
            .selector_var
            .as_deref()
            .and_then(|var| std::env::var(var).ok().map(|v| (var.to_owned(), v)))
            .filter(|(_, v)| !v.trim().is_empty());
        let selected = match (self.selected, from_var) {
            (Some(name), _) => Some((name, "the builder".to_owned())),
            (None, Some((var, value))) => Some((value.trim().to_owned(), var)),
            (None, None) => None,
        };
        let mut members = self.members;
        if let Some((name, source)) = selected {
            let Some(i) = members.iter().position(|(n, _)| *n == name) else {
                let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
                return Err(ConfigError::Invalid(format!(
                    "{source} selects credential `{name}`, but the chain has only: {}",
                    names.join(", ")
                )));
            };
            members = vec![members.swap_remove(i)];
        }
        let id = match members.as_slice() {
            [(_, only)] => only.id().to_owned(),
            all => {
                let mut id = String::from("chain(");
                for (i, (name, member)) in all.iter().enumerate() {
                    if i > 0 {
                        id.push(',');
                    }
                    let _ = write!(id, "{name}={}", member.id());
                }
                id.push(')');
                id
            }
        };
        Ok(ChainCredential {
            id,
            members,
            sticky: AtomicUsize::new(NONE_YET),
        })
    }
}

impl fmt::Debug for ChainCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainCredentialBuilder")
            .field("members", &self.members)
            .field("selector_var", &self.selector_var)
            .field("selected", &self.selected)
            .finish()
    }
}
