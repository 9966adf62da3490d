//! Azure App Service, Functions and Container Apps managed identity
//! (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{HeaderValue, ACCEPT};
use http::StatusCode;
use token_core::{
    AccessToken, Clock, Credential, CredentialError, FailureCause, Secret, SystemClock,
    TokenRequest,
};

use super::{
    azure_resource, check, metadata_client, parse_answer, send_with_retries, ManagedIdentityId,
    RetryRules, DEFAULT_METADATA_CONNECT_TIMEOUT, DEFAULT_METADATA_REQUEST_TIMEOUT,
};
use crate::error::ConfigError;

/// The identity API version sent (the current one of App Service and
/// Container Apps, answering `expires_on` in epoch seconds).
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

const ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
const HEADER_ENV: &str = "IDENTITY_HEADER";

/// 429 and 5xx pass; everything else is an answer.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

impl RetryRules {
    /// Retries of the App Service / Container Apps endpoint: 429 and 5xx,
    /// 3 retries, exponential from 0.8 s, within 8 s.
    pub const fn azure_app_service() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(800),
            gone_base_delay: Duration::from_millis(800),
            min_server_error_delay: Duration::from_millis(800),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(8),
        }
    }
}

/// A token from the managed identity of an Azure App Service, Functions or
/// Container Apps app: `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=...`
/// with `X-IDENTITY-HEADER: $IDENTITY_HEADER` (the platform's guard against
/// request forgery, a secret here).
///
/// The request names the resource as for
/// [`AzureImdsCredential`](crate::AzureImdsCredential).
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credential = token_http::AppServiceCredential::from_env()?.build()?;
/// # let _ = credential; Ok(()) }
/// ```
///
/// # Identity
///
/// [`id`](Credential::id) is `azure-app-service|<endpoint>|<identity>`;
/// the header value is not part of it (the platform rotates it).
pub struct AppServiceCredential {
    id: String,
    endpoint: String,
    header: Secret,
    identity: ManagedIdentityId,
    client: reqwest::Client,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl AppServiceCredential {
    /// Starts a credential for the endpoint and header value the platform
    /// gives.
    pub fn builder(
        endpoint: impl Into<String>,
        identity_header: impl Into<Secret>,
    ) -> AppServiceCredentialBuilder {
        AppServiceCredentialBuilder {
            endpoint: endpoint.into(),
            header: identity_header.into(),
            identity: ManagedIdentityId::SystemAssigned,
            connect_timeout: DEFAULT_METADATA_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_METADATA_REQUEST_TIMEOUT,
            retry: RetryRules::azure_app_service(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Starts a credential from `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`;
    /// an error names the variable that is missing.
    pub fn from_env() -> Result<AppServiceCredentialBuilder, ConfigError> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{name} is not set: not running with a managed identity on App Service or Container Apps"
                    ))
                })
        };
        let endpoint = var(ENDPOINT_ENV)?;
        let header = Secret::new(var(HEADER_ENV)?);
        Ok(Self::builder(endpoint, header))
    }

    /// The token endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[async_trait]
impl Credential for AppServiceCredential {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        const WHAT: &str = "the App Service managed identity endpoint";
        let resource = azure_resource(request, WHAT)?;
        let mut query: Vec<(&str, &str)> = vec![
            ("api-version", APP_SERVICE_API_VERSION),
            ("resource", &resource),
        ];
        match &self.identity {
            ManagedIdentityId::SystemAssigned => {}
            ManagedIdentityId::ClientId(v) => query.push(("client_id", v)),
            ManagedIdentityId::ObjectId(v) => query.push(("principal_id", v)),
            ManagedIdentityId::ResourceId(v) => query.push(("mi_res_id", v)),
        }
        let mut header = HeaderValue::from_str(self.header.expose()).map_err(|_| {
            CredentialError::permanent("IDENTITY_HEADER is not a valid header value")
                .with_cause(FailureCause::Local)
        })?;
        header.set_sensitive(true);
        let build = || {
            self.client
                .get(&self.endpoint)
                .query(&query)
                .header("X-IDENTITY-HEADER", header.clone())
                .header(ACCEPT, HeaderValue::from_static("application/json"))
        };
        let attempt = send_with_retries(
            build,
            WHAT,
            &self.endpoint,
            self.request_timeout,
            &*self.clock,
            &self.retry,
            retryable,
        )
        .await?;
        parse_answer(
            attempt,
            WHAT,
            &self.endpoint,
            retryable,
            &[self.header.expose()],
        )
    }
}

impl fmt::Debug for AppServiceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppServiceCredential")
            .field("id", &self.id)
            .field("header", &self.header)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AppServiceCredential`].
pub struct AppServiceCredentialBuilder {
    endpoint: String,
    header: Secret,
    identity: ManagedIdentityId,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl AppServiceCredentialBuilder {
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

    /// The retries within one fetch. Defaults to
    /// [`RetryRules::azure_app_service`].
    pub fn retry(mut self, rules: RetryRules) -> Self {
        self.retry = rules;
        self
    }

    /// The clock for retry delays. Defaults to [`SystemClock`].
    pub fn clock_arc(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the settings and builds the credential.
    pub fn build(self) -> Result<AppServiceCredential, ConfigError> {
        check(
            "App Service identity endpoint",
            &self.endpoint,
            &[self.connect_timeout, self.request_timeout],
        )?;
        self.identity.check()?;
        if self.header.is_empty() {
            return Err(ConfigError::Invalid(
                "the identity header value is empty".into(),
            ));
        }
        Ok(AppServiceCredential {
            id: format!(
                "azure-app-service|{}|{}",
                self.endpoint,
                self.identity.id_part()
            ),
            endpoint: self.endpoint,
            header: self.header,
            identity: self.identity,
            client: metadata_client(self.connect_timeout)?,
            request_timeout: self.request_timeout,
            retry: self.retry,
            clock: self.clock,
        })
    }
}

impl fmt::Debug for AppServiceCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppServiceCredentialBuilder")
            .field("endpoint", &self.endpoint)
            .field("header", &self.header)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
