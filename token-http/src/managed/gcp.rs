//! The Google Cloud metadata server (`Metadata-Flavor: Google`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::HeaderValue;
use http::StatusCode;
use token_core::{
    AccessToken, Clock, Credential, CredentialError, FailureCause, SystemClock, TokenRequest,
};

use super::{
    check, metadata_client, parse_answer, refuse_unsupported, send_with_retries, RetryRules,
    DEFAULT_METADATA_CONNECT_TIMEOUT, DEFAULT_METADATA_REQUEST_TIMEOUT,
};
use crate::error::ConfigError;

/// The metadata server's host on every Google Cloud VM, GKE node and
/// serverless instance.
pub const GCP_METADATA_HOST: &str = "metadata.google.internal";

/// Environment variables naming another metadata host (`host[:port]`), as
/// Google's client libraries read them (emulators, tests): the current name,
/// then the older one.
const HOST_ENVS: [&str; 2] = ["GCE_METADATA_HOST", "GCE_METADATA_ROOT"];

const FLAVOR: &str = "Metadata-Flavor";

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

impl RetryRules {
    /// Retries of the Google metadata server: 429 and 5xx, 3 retries,
    /// exponential from 0.5 s, within 8 s.
    pub const fn gcp_metadata() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            gone_base_delay: Duration::from_millis(500),
            min_server_error_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(8),
        }
    }
}

/// An access token for a Google service account from the metadata server:
/// `GET http://<host>/computeMetadata/v1/instance/service-accounts/<account>/token?scopes=...`
/// with `Metadata-Flavor: Google`. An answer without that header back is
/// refused (it is not the metadata server).
///
/// The request's scopes are sent (none: the instance's default scopes).
/// Audiences and resources are refused: these access tokens are for Google
/// APIs, chosen by scope.
///
/// # Identity
///
/// [`id`](Credential::id) is `gcp-metadata|<host>|<account>`.
pub struct GcpMetadataCredential {
    id: String,
    url: String,
    client: reqwest::Client,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl GcpMetadataCredential {
    /// Starts a credential for the instance's default service account at
    /// [`GCP_METADATA_HOST`] (or the host in `GCE_METADATA_HOST`, else in
    /// `GCE_METADATA_ROOT`).
    pub fn builder() -> GcpMetadataCredentialBuilder {
        let host = HOST_ENVS
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .map(|h| h.trim().to_owned())
            .find(|h| !h.is_empty())
            .unwrap_or_else(|| GCP_METADATA_HOST.to_owned());
        GcpMetadataCredentialBuilder {
            base: format!("http://{host}"),
            account: "default".to_owned(),
            connect_timeout: DEFAULT_METADATA_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_METADATA_REQUEST_TIMEOUT,
            retry: RetryRules::gcp_metadata(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The token URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Credential for GcpMetadataCredential {
    fn id(&self) -> &str {
        &self.id
    }

    async fn fetch(
        &self,
        request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        const WHAT: &str = "the Google metadata server";
        refuse_unsupported(request, WHAT, false)?;
        let scopes = request.scopes().join(",");
        let build = || {
            let mut http = self
                .client
                .get(&self.url)
                .header(FLAVOR, HeaderValue::from_static("Google"));
            if !scopes.is_empty() {
                http = http.query(&[("scopes", scopes.as_str())]);
            }
            http
        };
        let attempt = send_with_retries(
            build,
            WHAT,
            &self.url,
            self.request_timeout,
            &*self.clock,
            &self.retry,
            retryable,
        )
        .await?;
        let status = attempt.received.status;
        let flavored = attempt
            .received
            .headers
            .get(FLAVOR)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
        if status.is_success() && !flavored {
            return Err(CredentialError::permanent(
                "no `Metadata-Flavor: Google` header, so it is not the Google metadata server (a proxy or another service answered); refused",
            )
            .with_cause(FailureCause::InvalidResponse)
            .with_status(status.as_u16())
            .with_service(WHAT)
            .with_endpoint(&self.url));
        }
        parse_answer(attempt, WHAT, &self.url, retryable, &[])
    }
}

impl fmt::Debug for GcpMetadataCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpMetadataCredential")
            .field("id", &self.id)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds a [`GcpMetadataCredential`].
pub struct GcpMetadataCredentialBuilder {
    base: String,
    account: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryRules,
    clock: Arc<dyn Clock>,
}

impl GcpMetadataCredentialBuilder {
    /// The metadata server's base URL, `http://host[:port]`. Defaults to
    /// `http://metadata.google.internal` (or the host in
    /// `GCE_METADATA_HOST`); tests point it at a loopback server.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base = url.into();
        self
    }

    /// The service account (its email, or `default`). Defaults to
    /// `default`.
    pub fn service_account(mut self, account: impl Into<String>) -> Self {
        self.account = account.into();
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

    /// The retries within one fetch. Defaults to [`RetryRules::gcp_metadata`].
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
    pub fn build(self) -> Result<GcpMetadataCredential, ConfigError> {
        let account = self.account.trim();
        if account.is_empty() || account.contains(['/', '?', '#']) {
            return Err(ConfigError::Invalid(format!(
                "`{account}` is not a service account (an email, or `default`)"
            )));
        }
        let base = self.base.trim_end_matches('/');
        let url = format!("{base}/computeMetadata/v1/instance/service-accounts/{account}/token");
        check(
            "Google metadata server",
            &url,
            &[self.connect_timeout, self.request_timeout],
        )?;
        Ok(GcpMetadataCredential {
            id: format!("gcp-metadata|{base}|{account}"),
            url,
            client: metadata_client(self.connect_timeout)?,
            request_timeout: self.request_timeout,
            retry: self.retry,
            clock: self.clock,
        })
    }
}

impl fmt::Debug for GcpMetadataCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpMetadataCredentialBuilder")
            .field("base", &self.base)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}
