//! Managed identities and metadata servers: tokens from the platform the
//! workload runs on, with no secret to configure.
//!
//! - [`AzureImdsCredential`]: Azure VMs and scale sets (the Instance
//!   Metadata Service, `Metadata: true`, with its documented retries).
//! - [`AppServiceCredential`]: Azure App Service, Functions and Container
//!   Apps (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`).
//! - [`GcpMetadataCredential`]: Google Compute Engine, GKE, Cloud Run
//!   (`Metadata-Flavor: Google`).
//!
//! Their tokens live up to 24 hours; the cache refreshes them by its policy
//! (a quarter of the lifetime ahead by default), earlier when the endpoint
//! sends a `refresh_in` hint. Endpoints are overridable, for tests and for
//! the platforms' own emulators.

mod app_service;
mod azure_imds;
mod gcp;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::Value;
use token_core::{AccessToken, Clock, CredentialError, FailureCause, FailureKind, TokenRequest};

use crate::error::ConfigError;
use crate::response::{parse_redacting, retry_after};
use crate::transport::{self, Received};

pub use app_service::{AppServiceCredential, AppServiceCredentialBuilder, APP_SERVICE_API_VERSION};
pub use azure_imds::{
    AzureImdsCredential, AzureImdsCredentialBuilder, IMDS_API_VERSION, IMDS_ENDPOINT,
};
pub use gcp::{GcpMetadataCredential, GcpMetadataCredentialBuilder, GCP_METADATA_HOST};

/// Time to connect to a metadata endpoint. Defaults to this: the endpoint
/// is on the host or link-local, and answers at once when it exists; when
/// it does not (not on that platform), failing fast matters more.
pub const DEFAULT_METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time for one metadata request. Defaults to this: the endpoint may itself
/// fetch the token from the platform's IdP, so it gets as long as a token
/// request does.
pub const DEFAULT_METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// Which identity of the workload to use, when it has several (Azure).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentityId {
    /// The system-assigned identity (or the only user-assigned one).
    SystemAssigned,
    /// A user-assigned identity by its client (application) id.
    ClientId(String),
    /// A user-assigned identity by its object (principal) id.
    ObjectId(String),
    /// A user-assigned identity by its Azure resource id.
    ResourceId(String),
}

impl ManagedIdentityId {
    /// The identity's part of a credential id.
    fn id_part(&self) -> String {
        match self {
            Self::SystemAssigned => "system".to_owned(),
            Self::ClientId(v) => format!("client_id={v}"),
            Self::ObjectId(v) => format!("object_id={v}"),
            Self::ResourceId(v) => format!("resource_id={v}"),
        }
    }
}

impl ManagedIdentityId {
    /// Refuses an empty user-assigned id (it would silently select the
    /// system-assigned identity).
    fn check(&self) -> Result<(), ConfigError> {
        match self {
            Self::SystemAssigned => Ok(()),
            Self::ClientId(v) | Self::ObjectId(v) | Self::ResourceId(v) if v.trim().is_empty() => {
                Err(ConfigError::Invalid(format!(
                    "the managed identity's {} is empty",
                    match self {
                        Self::ClientId(_) => "client id",
                        Self::ObjectId(_) => "object id",
                        _ => "resource id",
                    }
                )))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for ManagedIdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id_part())
    }
}

/// How a metadata credential retries, within one fetch, the answers its
/// protocol documents as passing. What is left after the budget goes to the
/// cache as a transient error (with a `Retry-After` when known), and the
/// cache's backoff continues.
///
/// Start from a protocol's rules ([`azure_imds`](Self::azure_imds),
/// [`azure_app_service`](Self::azure_app_service),
/// [`gcp_metadata`](Self::gcp_metadata)) and change what you need with the
/// `with_` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryRules {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first delay; each next one doubles.
    pub base_delay: Duration,
    /// The first delay after a 410 (Azure IMDS: upgrading).
    pub gone_base_delay: Duration,
    /// The shortest wait after a 5xx.
    pub min_server_error_delay: Duration,
    /// The longest single delay.
    pub max_delay: Duration,
    /// The budget of one fetch: a retry starts only with at least 0.5 s
    /// of it left after its delay, and gets what is left as its timeout, so
    /// a fetch ends within the budget (or the first attempt's timeout) and
    /// so within the cache's own fetch timeout.
    pub max_elapsed: Duration,
}

impl RetryRules {
    /// No retries: one request per fetch, the cache's backoff does the rest.
    pub const fn none() -> Self {
        Self {
            max_retries: 0,
            base_delay: Duration::ZERO,
            gone_base_delay: Duration::ZERO,
            min_server_error_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            max_elapsed: Duration::ZERO,
        }
    }

    /// Sets [`max_retries`](Self::max_retries).
    pub const fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets [`base_delay`](Self::base_delay).
    pub const fn with_base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets [`gone_base_delay`](Self::gone_base_delay).
    pub const fn with_gone_base_delay(mut self, d: Duration) -> Self {
        self.gone_base_delay = d;
        self
    }

    /// Sets [`min_server_error_delay`](Self::min_server_error_delay).
    pub const fn with_min_server_error_delay(mut self, d: Duration) -> Self {
        self.min_server_error_delay = d;
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub const fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets [`max_elapsed`](Self::max_elapsed), the budget of one fetch. To
    /// wait out an IMDS 410 inside the first fetch, give it 100 s and raise
    /// the cache's `RefreshPolicy::fetch_timeout` above it.
    pub const fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }
}

/// A retry is not started with less time than this left in the budget.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// A metadata endpoint's answer as the parts the retry loop and the parser
/// need.
pub(crate) struct Attempt {
    pub(crate) received: Received,
    pub(crate) sent_at: SystemTime,
}

/// Sends `build()` until it succeeds, fails for good, or the retry rules
/// are exhausted. `retryable` says which statuses the protocol documents as
/// passing. Errors name `what` at `url`.
pub(crate) async fn send_with_retries(
    build: impl Fn() -> reqwest::RequestBuilder,
    what: &str,
    url: &str,
    timeout: Duration,
    clock: &dyn Clock,
    rules: &RetryRules,
    retryable: fn(StatusCode) -> bool,
) -> Result<Attempt, CredentialError> {
    let started = clock.monotonic();
    let mut attempt = 0u32;
    let mut this_timeout = timeout;
    loop {
        let sent_at = clock.now();
        let received = transport::send(build(), url, this_timeout)
            .await
            .map_err(|e| e.with_service(what))?;
        let status = received.status;
        if status.is_success() || !retryable(status) || attempt >= rules.max_retries {
            return Ok(Attempt { received, sent_at });
        }
        let base = if status == StatusCode::GONE {
            rules.gone_base_delay
        } else {
            rules.base_delay
        };
        let mut delay = base
            .saturating_mul(1u32 << attempt.min(16))
            .min(rules.max_delay);
        if status.is_server_error() {
            delay = delay.max(rules.min_server_error_delay);
        }
        if let Some(after) = retry_after(&received.headers) {
            delay = delay.max(after.min(rules.max_delay));
        }
        // A retry gets what is left of the budget, so the whole fetch ends
        // within the budget (or the first attempt's timeout, if longer).
        let elapsed = clock.monotonic().saturating_duration_since(started);
        let left = rules
            .max_elapsed
            .saturating_sub(elapsed)
            .saturating_sub(delay);
        if left < MIN_ATTEMPT {
            return Ok(Attempt { received, sent_at });
        }
        this_timeout = timeout.min(left);
        tracing::debug!(
            url,
            status = status.as_u16(),
            ?delay,
            attempt,
            "metadata endpoint answered a passing error; retrying"
        );
        clock.sleep(delay).await;
        attempt += 1;
    }
}

/// Turns an endpoint's answer into a token: the OAuth-style parser, then
/// what metadata endpoints add (`expires_on` as epoch seconds when there is
/// no `expires_in`; a `refresh_in` hint). Errors name `what` at `url`;
/// statuses in `retryable` stay transient after the retries.
pub(crate) fn parse_answer(
    attempt: Attempt,
    what: &str,
    url: &str,
    retryable: fn(StatusCode) -> bool,
    secrets: &[&str],
) -> Result<AccessToken, CredentialError> {
    let Attempt { received, sent_at } = attempt;
    let status = received.status;
    // The parser's error with this endpoint's name and URL; a status the
    // protocol documents as passing stays transient after the retries.
    let here = |e: CredentialError| -> CredentialError {
        let e = e.with_service(what).with_endpoint(url);
        if retryable(status) {
            e.with_kind(FailureKind::Transient)
        } else {
            e
        }
    };
    let response = parse_redacting(status, &received.headers, &received.body, sent_at, secrets)
        .map_err(here)?;
    let extra_secs = |name: &str| response.extra().get(name).and_then(seconds);
    let expires_on = if response.expires_in().is_none() {
        extra_secs("expires_on")
    } else {
        None
    };
    let refresh_in = extra_secs("refresh_in");
    if response.expires_in().is_none() && expires_on.is_none() {
        if let Some(v) = response.extra().get("expires_on") {
            return Err(CredentialError::permanent(format!(
                "an `expires_on` that is not epoch seconds ({})",
                match v {
                    Value::String(_) => "a string",
                    _ => "not a number",
                }
            ))
            .with_cause(FailureCause::InvalidResponse)
            .with_status(status.as_u16())
            .with_service(what)
            .with_endpoint(url));
        }
    }
    let mut token = response.into_token();
    if let Some(secs) = expires_on {
        token = token.with_expires_at(UNIX_EPOCH + Duration::from_secs(secs));
    }
    if let Some(secs) = refresh_in {
        if let Some(at) = token.obtained_at().checked_add(Duration::from_secs(secs)) {
            token = token.with_refresh_at(at);
        }
    }
    Ok(token)
}

/// A JSON number or numeric string of whole seconds, below 10^10 (epoch
/// seconds up to the year 2286; `SystemTime` arithmetic stays far from
/// overflow).
fn seconds(v: &Value) -> Option<u64> {
    let n = match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (n < 10_000_000_000).then_some(n)
}

/// The single Azure resource a request names: a resource indicator, else the
/// audience, else one scope of the form `<resource>/.default`.
pub(crate) fn azure_resource(
    request: &TokenRequest,
    what: &str,
) -> Result<String, CredentialError> {
    refuse_unsupported(request, what, true)?;
    azure_resource_of(request, what).map_err(|e| e.with_cause(FailureCause::Local))
}

/// [`azure_resource`] once unsupported parts are refused.
fn azure_resource_of(request: &TokenRequest, what: &str) -> Result<String, CredentialError> {
    let resources = request.resources();
    if resources.len() > 1 {
        return Err(CredentialError::permanent(format!(
            "{what} issues a token for one resource at a time; the request names {}",
            resources.len()
        )));
    }
    let from_scope = || -> Result<Option<String>, CredentialError> {
        match request.scopes() {
            [] => Ok(None),
            [one] => Ok(Some(one.strip_suffix("/.default").unwrap_or(one).to_owned())),
            more => Err(CredentialError::permanent(format!(
                "{what} issues a token for one resource; the request has {} scopes (use one `<resource>/.default` scope, or a resource)",
                more.len()
            ))),
        }
    };
    let resource = match (resources.first(), request.audience()) {
        (Some(r), _) => r.clone(),
        (None, Some(a)) => a.to_owned(),
        (None, None) => from_scope()?.ok_or_else(|| {
            CredentialError::permanent(format!(
                "{what} needs the resource to get a token for: give the request a resource, an audience or a `<resource>/.default` scope"
            ))
        })?,
    };
    if resource.is_empty() {
        return Err(CredentialError::permanent(format!(
            "{what}: the resource is empty"
        )));
    }
    Ok(resource)
}

/// Refuses request parts a metadata endpoint cannot honour, rather than
/// returning a token that was not asked for.
pub(crate) fn refuse_unsupported(
    request: &TokenRequest,
    what: &str,
    azure: bool,
) -> Result<(), CredentialError> {
    let unsupported = |part: &str| {
        Err(CredentialError::permanent(format!(
            "{what} cannot honour the request's {part}; it would return a token that was not asked for"
        ))
        .with_cause(FailureCause::Local))
    };
    if request.tenant().is_some() {
        return unsupported("tenant");
    }
    if request.actor().is_some() {
        return unsupported("actor (on-behalf-of)");
    }
    if request.dpop_thumbprint().is_some() {
        return unsupported("DPoP key binding");
    }
    if !request.params().is_empty() {
        return unsupported("extra parameters");
    }
    if !azure && (request.audience().is_some() || !request.resources().is_empty()) {
        return unsupported(
            "audience or resource (access tokens from it are for Google APIs, chosen by scope)",
        );
    }
    Ok(())
}

/// A reqwest client for a metadata endpoint: no proxy (the endpoint is on
/// the host or link-local, and a proxy would see the token), no redirects.
pub(crate) fn metadata_client(connect_timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("token-http/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::HttpClient(e.without_url().to_string()))
}

/// Checks an endpoint URL and that timeouts are positive.
pub(crate) fn check(
    what: &'static str,
    url: &str,
    timeouts: &[Duration],
) -> Result<(), ConfigError> {
    crate::discovery::check_url(what, url)?;
    if timeouts.iter().any(Duration::is_zero) {
        return Err(ConfigError::Invalid(
            "timeouts must be longer than zero".into(),
        ));
    }
    Ok(())
}
