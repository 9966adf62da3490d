//! Sending a request and reading a bounded body: the only network code of
//! the credentials, with reqwest's failures turned into transient errors.

use std::time::Duration;

use http::StatusCode;
use token_core::{CredentialError, FailureCause};

use crate::certificate::ClientCertificate;
use crate::error::ConfigError;
use crate::response::MAX_BODY_BYTES;

/// Time allowed to establish a TCP (and TLS) connection to the token
/// endpoint. Defaults to this: a healthy endpoint connects in milliseconds,
/// and a dead one should fail fast so the cache's backoff takes over.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for a whole token request, body included. Defaults to this:
/// below the cache's own fetch timeout (10 s by default), so a hung endpoint
/// fails with this credential's transient error naming the endpoint instead
/// of the cache abandoning the fetch.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// A reqwest client for token and discovery requests: rustls, the connect
/// timeout, and no redirects (a redirect could carry the client's
/// credentials to another server); with a client certificate for mutual
/// TLS and extra trusted roots when given.
pub(crate) fn build_client(
    connect_timeout: Duration,
    identity: Option<&ClientCertificate>,
    root_pems: &[String],
) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("token-http/", env!("CARGO_PKG_VERSION")));
    if let Some(certificate) = identity {
        builder = builder.identity(certificate.identity()?);
    }
    for pem in root_pems {
        let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
            ConfigError::Certificate(format!(
                "a trusted root PEM could not be read: {}",
                e.without_url()
            ))
        })?;
        if roots.is_empty() {
            return Err(ConfigError::Certificate(
                "a trusted root PEM holds no certificate".into(),
            ));
        }
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| ConfigError::HttpClient(e.without_url().to_string()))
}

/// A response with its body read (at most [`MAX_BODY_BYTES`]).
pub(crate) struct Received {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// Sends `request` and reads the body incrementally, refusing it as soon as
/// it passes the cap, so a huge body is never buffered whole.
///
/// Errors carry their cause (connect, timeout, network, body too large),
/// the status when there was one, and `url` as their endpoint; the caller
/// adds what the endpoint is ([`CredentialError::with_service`]).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
    timeout: Duration,
) -> Result<Received, CredentialError> {
    let mut response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| network_error(e, url, timeout))?;
    let status = response.status();
    let headers = response.headers().clone();
    let too_large = |size: String| {
        let message = format!("a body of {size}, over the {MAX_BODY_BYTES}-byte limit; refused");
        let error = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            CredentialError::transient(message)
        } else {
            CredentialError::permanent(message)
        };
        error
            .with_cause(FailureCause::BodyTooLarge)
            .with_status(status.as_u16())
            .with_endpoint(url)
    };
    if let Some(len) = response.content_length() {
        if len > MAX_BODY_BYTES as u64 {
            return Err(too_large(format!("{len} bytes")));
        }
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_large("more than that".to_owned()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(network_error(e, url, timeout)),
        }
    }
    Ok(Received {
        status,
        headers,
        body,
    })
}

/// A reqwest failure as a transient error with its cause and endpoint. The
/// message is the part that says why: the OS's reason for a failed
/// connection (`connection refused`), the timeout, or every layer's wording
/// for anything else. reqwest's error, without its URL, is the source.
fn network_error(e: reqwest::Error, url: &str, timeout: Duration) -> CredentialError {
    let detail = e.without_url();
    let (cause, message) = if detail.is_timeout() {
        (
            FailureCause::Timeout,
            format!("waited {timeout:?} (the request timeout)"),
        )
    } else if detail.is_connect() {
        (FailureCause::Connect, root_cause(&detail))
    } else {
        (FailureCause::Network, error_chain(&detail))
    };
    CredentialError::transient(message)
        .with_cause(cause)
        .with_endpoint(url)
        .with_source(detail)
}

/// The innermost cause of `e`, in a few words: an OS error's description
/// without its number (`connection refused`), else the innermost error's
/// text, starting in lower case.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = match inner.downcast_ref::<std::io::Error>() {
        Some(io) => {
            let text = io.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
        None => inner.to_string(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// An error and its sources on one line: reqwest's top-level message alone
/// ("error sending request") rarely says what happened.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
