//! The token endpoints: `/v1/token` (the JSON of `tokencache get --format
//! json`), the Azure App Service managed-identity protocol (`/azure/token`)
//! and the Google metadata server's token paths (`/computeMetadata/v1/...`).
//!
//! # Guards (SSRF)
//!
//! A token endpoint on loopback is reachable by anything that can make this
//! host send a request, including a server tricked into fetching a URL. So
//! every token request must carry a header such a request cannot add, and
//! requests that went through a proxy are refused:
//!
//! - any request with `X-Forwarded-For` or `Forwarded`: `403`;
//! - `/v1/token` and `/v1/token/exchange`: `Metadata: true` (else `400`),
//!   and `X-Identity-Header: <secret>` when a secret is configured (else
//!   `401`);
//! - `/azure/token`: `X-IDENTITY-HEADER: <secret>` (the protocol's own
//!   header; the endpoint is off without a configured secret);
//! - `/computeMetadata/...`: `Metadata-Flavor: Google` (else `403`, as the
//!   real metadata server answers).

use std::time::SystemTime;

use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::response::{self, rfc3339, unix_seconds, Body};
use crate::sidecar::Inner;

/// The header carrying the shared secret.
pub const SECRET_HEADER: &str = "x-identity-header";

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key("x-forwarded-for") || headers.contains_key(http::header::FORWARDED)
}

fn refuse_forwarded() -> Response<Body> {
    response::error(
        StatusCode::FORBIDDEN,
        "forwarded_request_refused",
        "token requests that went through a proxy (X-Forwarded-For or Forwarded) are refused",
    )
}

fn method_not_allowed() -> Response<Body> {
    let mut r = response::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "token endpoints answer GET only",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
    r
}

fn expires_in(expires_at: Option<SystemTime>) -> u64 {
    expires_at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/token?profile=NAME`.
pub(crate) async fn token(inner: &Inner, req: &Request<Incoming>) -> Response<Body> {
    if forwarded(req.headers()) {
        return refuse_forwarded();
    }
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    if req.headers().get("metadata").map(HeaderValue::as_bytes) != Some(b"true") {
        return response::error(
            StatusCode::BAD_REQUEST,
            "metadata_header_required",
            "token requests must carry the header `Metadata: true`",
        );
    }
    if inner.secret.is_some()
        && !inner.secret_matches(req.headers().get(SECRET_HEADER).map(HeaderValue::as_bytes))
    {
        return response::error(
            StatusCode::UNAUTHORIZED,
            "invalid_secret",
            "token requests must carry the sidecar's secret in X-Identity-Header",
        );
    }
    let Some(name) = query_param(req, "profile") else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "profile_required",
            "give the profile: /v1/token?profile=NAME",
        );
    };
    let Some(profile) = inner.profiles.get(&name) else {
        return response::error(
            StatusCode::NOT_FOUND,
            "unknown_profile",
            &format!("the sidecar has no profile `{name}`"),
        );
    };
    let asked_at = SystemTime::now();
    let token = match inner.token(profile).await {
        Ok(t) => t,
        Err(u) => return u.response(&name),
    };
    let body = serde_json::json!({
        "access_token": token.secret().expose(),
        "token_type": token.token_type().as_str(),
        "expires_at": token.expires_at().map(rfc3339),
        "expires_in": expires_in(token.expires_at()),
        "from_cache": token.obtained_at() < asked_at,
    });
    response::json(StatusCode::OK, body.to_string())
}

/// `POST /v1/token/exchange` (per-caller token exchange, issue 20): the
/// guards of `/v1/token`, then [`crate::exchange::endpoint`].
pub(crate) async fn token_exchange(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    if forwarded(req.headers()) {
        return refuse_forwarded();
    }
    if req.headers().get("metadata").map(HeaderValue::as_bytes) != Some(b"true") {
        return response::error(
            StatusCode::BAD_REQUEST,
            "metadata_header_required",
            "token requests must carry the header `Metadata: true`",
        );
    }
    if inner.secret.is_some()
        && !inner.secret_matches(req.headers().get(SECRET_HEADER).map(HeaderValue::as_bytes))
    {
        return response::error(
            StatusCode::UNAUTHORIZED,
            "invalid_secret",
            "token requests must carry the sidecar's secret in X-Identity-Header",
        );
    }
    crate::exchange::endpoint(inner, req).await
}

/// Azure's error shape for the App Service identity endpoint.
fn azure_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": { "code": status.canonical_reason().unwrap_or("Error"), "message": message },
    });
    response::json(status, body.to_string())
}

/// `GET /azure/token?resource=R&api-version=2019-08-01` with
/// `X-IDENTITY-HEADER`: what `IDENTITY_ENDPOINT` points at.
pub(crate) async fn azure(inner: &Inner, req: &Request<Incoming>) -> Response<Body> {
    if forwarded(req.headers()) {
        return refuse_forwarded();
    }
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    if inner.secret.is_none() {
        return azure_error(
            StatusCode::NOT_FOUND,
            "the Azure managed-identity endpoint needs [serve] secret_file (the IDENTITY_HEADER value)",
        );
    }
    if !inner.secret_matches(req.headers().get(SECRET_HEADER).map(HeaderValue::as_bytes)) {
        return azure_error(
            StatusCode::UNAUTHORIZED,
            "the X-IDENTITY-HEADER header is missing or wrong",
        );
    }
    match query_param(req, "api-version").as_deref() {
        Some("2019-08-01") => {}
        Some(v) => {
            return azure_error(
                StatusCode::BAD_REQUEST,
                &format!("api-version {v} is not supported; use 2019-08-01"),
            )
        }
        None => return azure_error(StatusCode::BAD_REQUEST, "api-version is required"),
    }
    for unsupported in ["client_id", "principal_id", "mi_res_id", "object_id"] {
        if query_param(req, unsupported).is_some() {
            return azure_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "{unsupported} is not supported: the sidecar serves one identity per resource"
                ),
            );
        }
    }
    let Some(resource) = query_param(req, "resource") else {
        return azure_error(StatusCode::BAD_REQUEST, "resource is required");
    };
    let name = inner
        .azure
        .get(&resource)
        .or_else(|| inner.azure.get(resource.trim_end_matches('/')))
        .or_else(|| inner.azure.get(&format!("{resource}/")));
    let Some(profile) = name.and_then(|n| inner.profiles.get(n).map(|p| (n, p))) else {
        return azure_error(
            StatusCode::BAD_REQUEST,
            &format!("no profile is mapped to resource {resource} in [serve.azure]"),
        );
    };
    let (name, profile) = profile;
    let token = match inner.token(profile).await {
        Ok(t) => t,
        Err(u) => {
            return u.metric_cause().mark(azure_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no valid token for profile `{name}`: {}", u.cause),
            ))
        }
    };
    let Some(expires_at) = token.expires_at() else {
        return azure_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token has no expiry, which the Azure protocol requires",
        );
    };
    let body = serde_json::json!({
        "access_token": token.secret().expose(),
        "expires_on": unix_seconds(expires_at).to_string(),
        "resource": resource,
        "token_type": token.token_type().as_str(),
    });
    response::json(StatusCode::OK, body.to_string())
}

fn google_response(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert("metadata-flavor", HeaderValue::from_static("Google"));
    r
}

/// A text answer as the metadata server gives it (`application/text`).
fn google_text(text: impl Into<String>) -> Response<Body> {
    google_response(response::text(
        StatusCode::OK,
        "application/text",
        text.into(),
    ))
}

/// `404` with a sentence saying what is not served (and why).
fn google_not_found(why: &str) -> Response<Body> {
    google_response(response::text(
        StatusCode::NOT_FOUND,
        "text/plain",
        format!("{why}\n"),
    ))
}

/// The Google metadata server's paths that Google's client libraries ask
/// for default credentials (Node `google-auth-library`/`gcp-metadata`,
/// Python `google-auth`, Rust `google-cloud-auth`):
///
/// - detection: `/` (Python's ping, with `Metadata-Flavor`),
///   `/computeMetadata/v1/` and `/computeMetadata/v1/instance` (Node's);
/// - `project/project-id`, `project/numeric-project-id` (configured, else
///   404), `universe/universe-domain` (default `googleapis.com`);
/// - `instance/service-accounts/` and, for `default` or the configured
///   e-mail: `?recursive=true` (JSON), `email`, `aliases`, `scopes`, and
///   `token` with `?scopes=a,b`: a token for exactly those scopes from the
///   profile's credential, each scope set its own cache key (bounded by
///   `max_scope_sets`);
/// - `identity` (ID tokens): 404 saying they are not served.
///
/// Every answer carries `Metadata-Flavor: Google`; every request must carry
/// it too (else `403`, as the real server answers).
pub(crate) async fn google(inner: &Inner, req: &Request<Incoming>) -> Response<Body> {
    if forwarded(req.headers()) {
        return google_response(refuse_forwarded());
    }
    if req.method() != Method::GET {
        return google_response(method_not_allowed());
    }
    if req
        .headers()
        .get("metadata-flavor")
        .map(HeaderValue::as_bytes)
        != Some(b"Google")
    {
        return google_response(response::text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "Missing required header: Metadata-Flavor: Google\n",
        ));
    }
    let Some(account) = &inner.google else {
        return google_not_found("the Google metadata endpoints need [serve.google] profile = ...");
    };
    let Some(profile) = inner.profiles.get(&account.profile) else {
        return google_not_found("the [serve.google] profile is not configured");
    };
    let raw = req.uri().path();
    if raw == "/" {
        return google_text("computeMetadata/\n");
    }
    let path = raw.trim_end_matches('/');
    let Some(rest) = path
        .strip_prefix("/computeMetadata/v1")
        .map(|r| r.trim_start_matches('/'))
    else {
        if path == "/computeMetadata" {
            return google_text("v1/\n");
        }
        return google_not_found("Not Found: this sidecar serves /computeMetadata/v1/ only");
    };
    let scopes: Vec<String> = profile.handle.request().scopes().to_vec();
    match rest {
        "" => return google_text("instance/\nproject/\nuniverse/\n"),
        "instance" => return google_text("service-accounts/\n"),
        "instance/service-accounts" => {
            return google_text(format!("default/\n{}/\n", account.email))
        }
        "project" => return google_text("numeric-project-id\nproject-id\n"),
        "project/project-id" => {
            return match &account.project_id {
                Some(id) => google_text(id.clone()),
                None => google_not_found(
                    "project/project-id is not configured: set [serve.google] project_id",
                ),
            }
        }
        "project/numeric-project-id" => {
            return match &account.numeric_project_id {
                Some(id) => google_text(id.clone()),
                None => google_not_found(
                    "project/numeric-project-id is not configured: set [serve.google] numeric_project_id",
                ),
            }
        }
        "universe" => return google_text("universe-domain\n"),
        "universe/universe-domain" => return google_text(account.universe_domain.clone()),
        _ => {}
    }
    let Some(rest) = rest.strip_prefix("instance/service-accounts/") else {
        return google_not_found(&format!(
            "Not Found: this sidecar does not serve {path} (it serves the default service \
             account's token, e-mail and scopes, project/project-id and universe/universe-domain)"
        ));
    };
    let (who, what) = rest.split_once('/').unwrap_or((rest, ""));
    if who != "default" && who != account.email {
        return google_not_found(&format!(
            "Not Found: no service account {who} (this sidecar serves default, {})",
            account.email
        ));
    }
    match what {
        "" if query_param(req, "recursive").as_deref() == Some("true") => {
            let body = serde_json::json!({
                "aliases": ["default"],
                "email": account.email,
                "scopes": scopes,
            });
            google_response(response::json(StatusCode::OK, body.to_string()))
        }
        "" => google_text("aliases\nemail\nidentity\nscopes\ntoken\n"),
        "aliases" => google_text("default"),
        "email" => google_text(account.email.clone()),
        "scopes" => google_text(scopes.join("\n")),
        "identity" => google_not_found(
            "identity tokens (ID tokens) are not served by this sidecar: it serves access tokens only",
        ),
        "token" => {
            let profile = match query_param(req, "scopes") {
                None => profile.clone(),
                Some(asked) => match scoped(inner, &account.profile, profile, &asked) {
                    Ok(p) => p,
                    Err(why) => {
                        return google_response(response::text(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            why,
                        ))
                    }
                },
            };
            let token = match inner.token(&profile).await {
                Ok(t) => t,
                Err(u) => return google_response(u.response(&account.profile)),
            };
            let body = serde_json::json!({
                "access_token": token.secret().expose(),
                "expires_in": expires_in(token.expires_at()),
                "token_type": token.token_type().as_str(),
            });
            google_response(response::json(StatusCode::OK, body.to_string()))
        }
        _ => google_not_found(&format!(
            "Not Found: this sidecar does not serve service-accounts/{who}/{what}"
        )),
    }
}

/// The profile serving `asked` (`?scopes=a,b`, commas or spaces): the
/// account profile itself when they are its scopes, a route's token with
/// those scopes, or a scope set of its own (made on first use, bounded);
/// else the `400` sentence saying why not.
fn scoped(
    inner: &Inner,
    name: &str,
    base: &crate::sidecar::Profile,
    asked: &str,
) -> Result<crate::sidecar::Profile, String> {
    let asked: Vec<&str> = asked.split([',', ' ']).filter(|s| !s.is_empty()).collect();
    if asked.is_empty() {
        return Ok(base.clone());
    }
    if let Some(bad) = asked.iter().find(|s| s.chars().any(char::is_control)) {
        return Err(format!("the scope {bad:?} has a control character\n"));
    }
    let request = base
        .handle
        .request()
        .to_builder()
        .clear_scopes()
        .scopes(&asked)
        .build();
    if request == *base.handle.request() {
        return Ok(base.clone());
    }
    if let Some(v) = inner
        .variants
        .iter()
        .find(|v| v.profile_name == name && v.request == request)
    {
        return Ok(v.profile.clone());
    }
    let Some(sets) = &inner.scope_sets else {
        return Ok(base.clone());
    };
    sets.get(base, &request).map_err(|full| {
        format!(
            "this sidecar serves at most {} distinct scope sets for profile `{name}` \
             ([serve.google] max_scope_sets) and all are taken; ask for one of the scope \
             sets already in use or raise max_scope_sets\n",
            full.0
        )
    })
}
