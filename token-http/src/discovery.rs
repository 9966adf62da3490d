//! Finding the token endpoint from an issuer: OpenID Connect Discovery 1.0
//! and OAuth 2.0 Authorization Server Metadata (RFC 8414).

use serde_json::Value;

use crate::error::ConfigError;
use crate::response::MAX_BODY_BYTES;
use crate::transport::{self, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

/// What an authorization server says about itself, as far as getting tokens
/// is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    mtls_token_endpoint: Option<String>,
    auth_methods: Vec<String>,
    grant_types: Vec<String>,
}

impl ServerMetadata {
    /// Fetches the metadata of `issuer`: first
    /// `<issuer>/.well-known/openid-configuration` (OIDC Discovery), then
    /// `<origin>/.well-known/oauth-authorization-server<path>` (RFC 8414
    /// §3.1). The document's `issuer` must equal `issuer` (RFC 8414 §3.3,
    /// a trailing slash aside), so a document copied from elsewhere is not
    /// believed.
    pub async fn discover(issuer: &str) -> Result<Self, ConfigError> {
        let client = transport::build_client(DEFAULT_CONNECT_TIMEOUT, None, &[])?;
        Self::discover_with(&client, issuer).await
    }

    /// [`discover`](Self::discover) with a given reqwest client.
    pub async fn discover_with(
        client: &reqwest::Client,
        issuer: &str,
    ) -> Result<Self, ConfigError> {
        check_url("issuer", issuer)?;
        let fail = |reason: String| ConfigError::Discovery {
            issuer: issuer.to_owned(),
            reason,
        };
        let trimmed = issuer.trim_end_matches('/');
        let oidc = format!("{trimmed}/.well-known/openid-configuration");
        let rfc8414 = rfc8414_url(issuer).ok_or_else(|| fail("not an absolute URL".into()))?;
        let mut reasons = Vec::new();
        for url in [oidc, rfc8414] {
            match fetch_document(client, &url).await {
                Ok(doc) => return Self::from_document(issuer, &doc).map_err(fail),
                Err(reason) => reasons.push(format!("{url}: {reason}")),
            }
        }
        Err(fail(reasons.join("; ")))
    }

    /// Reads a metadata document (JSON) published for `issuer`.
    pub fn from_document(issuer: &str, document: &[u8]) -> Result<Self, String> {
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(document) else {
            return Err("the metadata is not a JSON object".into());
        };
        let published = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or("the metadata has no `issuer`")?;
        if published.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(format!(
                "the metadata names issuer `{published}`, not `{issuer}`; refusing it"
            ));
        }
        let token_endpoint = doc
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or("the metadata has no `token_endpoint`")?;
        check_url("token endpoint", token_endpoint).map_err(|e| e.to_string())?;
        let list = |name: &str| -> Vec<String> {
            doc.get(name)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        // RFC 8705 §5: where clients authenticating by mutual TLS go.
        let mtls_token_endpoint = match doc
            .get("mtls_endpoint_aliases")
            .and_then(|a| a.get("token_endpoint"))
        {
            None => None,
            Some(Value::String(url)) => {
                check_url("mTLS token endpoint", url).map_err(|e| e.to_string())?;
                Some(url.clone())
            }
            Some(_) => return Err("`mtls_endpoint_aliases.token_endpoint` is not a string".into()),
        };
        Ok(Self {
            issuer: published.to_owned(),
            token_endpoint: token_endpoint.to_owned(),
            mtls_token_endpoint,
            auth_methods: list("token_endpoint_auth_methods_supported"),
            grant_types: list("grant_types_supported"),
        })
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// The token endpoint for mutual-TLS clients
    /// (`mtls_endpoint_aliases.token_endpoint`, RFC 8705 §5), when the
    /// server publishes one. A credential built
    /// [`from_metadata`](crate::OAuthCredential::from_metadata) with mTLS
    /// client authentication uses it.
    pub fn mtls_token_endpoint(&self) -> Option<&str> {
        self.mtls_token_endpoint.as_deref()
    }

    /// `token_endpoint_auth_methods_supported` (empty when not published;
    /// RFC 8414 then implies `client_secret_basic`).
    pub fn auth_methods_supported(&self) -> &[String] {
        &self.auth_methods
    }

    /// `grant_types_supported` (empty when not published).
    pub fn grant_types_supported(&self) -> &[String] {
        &self.grant_types
    }
}

/// `https://host/.well-known/oauth-authorization-server/path` for
/// `https://host/path` (RFC 8414 §3.1: the well-known part goes between host
/// and path).
fn rfc8414_url(issuer: &str) -> Option<String> {
    let url = reqwest::Url::parse(issuer).ok()?;
    let path = url.path().trim_end_matches('/');
    let origin = url.origin().ascii_serialization();
    Some(format!(
        "{origin}/.well-known/oauth-authorization-server{path}"
    ))
}

async fn fetch_document(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let request = client
        .get(url)
        .header(http::header::ACCEPT, "application/json");
    let received = transport::send(request, url, DEFAULT_REQUEST_TIMEOUT)
        .await
        .map_err(|e| e.message().to_owned())?;
    if !received.status.is_success() {
        return Err(format!("answered {}", received.status));
    }
    debug_assert!(received.body.len() <= MAX_BODY_BYTES);
    Ok(received.body)
}

/// An absolute `http` or `https` URL without user info.
pub(crate) fn check_url(what: &'static str, url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidUrl { what, reason };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is not http or https",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not allowed; configure the client secret instead".into(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(invalid("a fragment is not allowed".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8414_inserts_the_well_known_part_before_the_path() {
        assert_eq!(
            rfc8414_url("https://idp.example/tenant/a/").as_deref(),
            Some("https://idp.example/.well-known/oauth-authorization-server/tenant/a")
        );
        assert_eq!(
            rfc8414_url("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080/.well-known/oauth-authorization-server")
        );
    }

    #[test]
    fn a_document_for_another_issuer_is_refused() {
        let doc =
            br#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/token"}"#;
        let e = ServerMetadata::from_document("https://idp.example", doc).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        let doc = br#"{"issuer":"https://idp.example/","token_endpoint":"https://idp.example/token","token_endpoint_auth_methods_supported":["private_key_jwt"]}"#;
        let m = ServerMetadata::from_document("https://idp.example", doc).unwrap();
        assert_eq!(m.token_endpoint(), "https://idp.example/token");
        assert_eq!(m.auth_methods_supported(), ["private_key_jwt"]);
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        assert!(check_url("t", "https://u:p@idp.example/token").is_err());
        assert!(check_url("t", "ftp://idp.example/token").is_err());
        assert!(check_url("t", "not a url").is_err());
        assert!(check_url("t", "http://127.0.0.1:1/token").is_ok());
    }
}
