//! Azure Instance Metadata Service (IMDS) managed identity.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderValue, ACCEPT};
use http::StatusCode;
use token_core::{AccessToken, Clock, Credential, CredentialError, SystemClock, TokenRequest};

use super::{
    azure_resource, check, metadata_client, parse_answer, send_with_retries, ManagedIdentityId,
    RetryRules, DEFAULT_METADATA_CONNECT_TIMEOUT, DEFAULT_METADATA_REQUEST_TIMEOUT,
};
use crate::error::ConfigError;

/// The IMDS token endpoint every Azure VM reaches (link-local, not routed).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// The IMDS identity API version sent (the one Azure's SDKs use).
pub const IMDS_API_VERSION: &str = "2018-02-01";

/// Environment variable naming another IMDS host (`http://host:port`), as
/// azure-identity reads it (AAD Pod Identity, emulators).
const AUTHORITY_HOST_ENV: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

/// The statuses IMDS documents as passing: 404 (IMDS updating, or the
/// identity not yet assigned), 410 (IMDS upgrading: retry for at least 70 s),
/// 429 (throttled), and 5xx (retry no sooner than after 1 s).
fn imds_retryable(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND
        || status == StatusCode::GONE
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl RetryRules {
    /// IMDS's documented retries as Azure's SDKs apply them: 5 retries,
    /// exponential from 0.8 s (from 3 s after a 410, so five of them span
    /// 93 s, past the 70 s IMDS asks for), at least 1 s after a 5xx, within
    /// `max_elapsed` (8 s by default, under the cache's 10 s fetch timeout;
    /// raise both to wait out a 410 within the first fetch: the cache's
    /// backoff keeps retrying after the fetch fails anyway).
    pub const fn azure_imds() -> Self {
        Self {
            max_retries: 5,
            base_delay: Duration::from_millis(800),
            gone_base_delay: Duration::from_secs(3),
            min_server_error_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(64),
            max_elapsed: Duration::from_secs(8),
        }
    }
}

/// A token from the managed identity of an Azure VM or scale set, through
/// the Instance Metadata Service: `GET <endpoint>?api-version=2018-02-01&resource=...`
/// with `Metadata: true`, no proxy, retried as IMDS documents
/// ([`RetryRules::azure_imds`]).
///
/// The request names the resource: a resource indicator, an audience, or
/// one `<resource>/.default` scope. Tenants, actors, DPoP and extra
/// parameters are refused.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use token_core::{TokenCache, TokenRequest};
/// use token_http::AzureImdsCredential;
///
/// let cache = TokenCache::builder(AzureImdsCredential::builder().build()?).build();
/// let vault = TokenRequest::builder().scope("https://vault.azure.net/.default").build();
/// let token = cache.get_token(&vault).await?;
/// # let _ = token; Ok(()) }
/// ```
///
/// # Identity
///
/// [`id`](Credential::id) is `azure-imds|<endpoint>|<identity>`.
pub struct AzureImdsCredential {
    id: String,
    endpoint: String,
    identity: ManagedIdentityId,
    client: reqwest::Client,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl AzureImdsCredential {
    /// Starts a credential for the system-assigned identity at
    /// [`IMDS_ENDPOINT`] (or the host in `AZURE_POD_IDENTITY_AUTHORITY_HOST`).
    pub fn builder() -> AzureImdsCredentialBuilder {
        let endpoint = std::env::var(AUTHORITY_HOST_ENV)
            .ok()
            .filter(|h| !h.trim().is_empty())
            .map(|h| {
                format!(
                    "{}/metadata/identity/oauth2/token",
                    h.trim().trim_end_matches('/')
                )
            })
            .unwrap_or_else(|| IMDS_ENDPOINT.to_owned());
        AzureImdsCredentialBuilder {
            endpoint,
            identity: ManagedIdentityId::SystemAssigned,
            connect_timeout: DEFAULT_METADATA_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_METADATA_REQUEST_TIMEOUT,
            retry: RetryRules::azure_imds(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The token endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[async_trait]
impl Credential for AzureImdsCredential {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        const WHAT: &str = "Azure IMDS";
        let resource = azure_resource(request, WHAT)?;
        let mut query: Vec<(&str, &str)> =
            vec![("api-version", IMDS_API_VERSION), ("resource", &resource)];
        match &self.identity {
            ManagedIdentityId::SystemAssigned => {}
            ManagedIdentityId::ClientId(v) => query.push(("client_id", v)),
            ManagedIdentityId::ObjectId(v) => query.push(("object_id", v)),
            ManagedIdentityId::ResourceId(v) => query.push(("msi_res_id", v)),
        }
        let build = || {
            self.client
                .get(&self.endpoint)
                .query(&query)
                .header("Metadata", HeaderValue::from_static("true"))
                .header(ACCEPT, HeaderValue::from_static("application/json"))
        };
        let attempt = send_with_retries(
            build,
            WHAT,
            &self.endpoint,
            self.request_timeout,
            &*self.clock,
            &self.retry,
            imds_retryable,
        )
        .await?;
        parse_answer(attempt, WHAT, &self.endpoint, imds_retryable, &[])
    }
}

impl fmt::Debug for AzureImdsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureImdsCredential")
            .field("id", &self.id)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AzureImdsCredential`].
pub struct AzureImdsCredentialBuilder {
    endpoint: String,
    identity: ManagedIdentityId,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl AzureImdsCredentialBuilder {
    /// The token endpoint. Defaults to [`IMDS_ENDPOINT`] (or the host in
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`); tests point it at a loopback
    /// server.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// Which identity. Defaults to [`ManagedIdentityId::SystemAssigned`].
    pub fn identity(mut self, identity: ManagedIdentityId) -> Self {
        self.identity = identity;
        self
    }

    /// Time to connect. Defaults to [`DEFAULT_METADATA_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time for one request. Defaults to [`DEFAULT_METADATA_REQUEST_TIMEOUT`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The retries within one fetch. Defaults to [`RetryRules::azure_imds`].
    pub fn retry(mut self, rules: RetryRules) -> Self {
        self.retry = rules;
        self
    }

    /// The clock for retry delays. Defaults to [`SystemClock`]; tests share
    /// a `ManualClock`.
    pub fn clock_arc(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the settings and builds the credential.
    pub fn build(self) -> Result<AzureImdsCredential, ConfigError> {
        check(
            "Azure IMDS endpoint",
            &self.endpoint,
            &[self.connect_timeout, self.request_timeout],
        )?;
        self.identity.check()?;
        Ok(AzureImdsCredential {
            id: format!("azure-imds|{}|{}", self.endpoint, self.identity.id_part()),
            endpoint: self.endpoint,
            identity: self.identity,
            client: metadata_client(self.connect_timeout)?,
            request_timeout: self.request_timeout,
            retry: self.retry,
            clock: self.clock,
        })
    }
}

impl fmt::Debug for AzureImdsCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureImdsCredentialBuilder")
            .field("endpoint", &self.endpoint)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
