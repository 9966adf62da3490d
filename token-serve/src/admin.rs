//! The admin listener (`[serve] admin_listen`): health, readiness and
//! metrics for probes and scrapers, and the admin API, on an address of its
//! own, so that Kubernetes probes and Prometheus never need the gateway's
//! listener exposed.
//!
//! What it serves, and nothing else (the gateway's routes, `/v1/token`, the
//! Azure and Google endpoints are never answered here: `404`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | as on the main listener: `200`, or `503` with each profile's cause (`?strict`: a degraded store counts) |
//! | `GET /metrics` | as on the main listener (Prometheus text) |
//! | `GET /admin/keys` | every profile's cache key, routes, state and expiry (never a token) |
//! | `POST /admin/keys/PROFILE/purge` | drops the profile's cached token (hot slot and store) |
//! | `POST /admin/keys/PROFILE/refresh` | drops it and fetches a new one now; says until when it is valid |
//!
//! Purge and refresh answer `429` (`Retry-After`) when the key was purged,
//! refreshed or invalidated by an upstream's `401` within the engine's
//! invalidate floor (30 s by default): the same bound on forced refreshes
//! per key as for `401`s. `409` when no token is cached; `502` with the
//! cause when the IdP gives no new token.
//!
//! `/healthz`, `/readyz` and `/metrics` stay on the main listener too (what
//! existing probes and scrapers use keeps working); the admin API is only
//! here. The main listener's `Host` guard does not apply on this listener
//! (kubelet probes name the pod's IP), the admin API's own guard does:
//!
//! - **Without `admin_secret_file`**, the admin API answers only clients
//!   connecting from loopback, whose `Host` is an IP literal or
//!   `localhost` (a DNS-rebinding page cannot read it), `403` otherwise.
//! - **With `admin_secret_file`**, every admin API call, from loopback too,
//!   must carry `Authorization: Bearer <the file's content>` (`401`
//!   otherwise); the listener may then be reached through any name. The
//!   token endpoint's `secret_file` is not reused: who may read tokens and
//!   who may purge them are different people.
//! - A browser's cross-site request (`Origin`, `Sec-Fetch-Site`) is refused
//!   either way (`403`): a page cannot make the sidecar purge or refresh.
//!
//! The admin listener has its own connection cap (`admin_max_connections`,
//! [`DEFAULT_ADMIN_CONNECTIONS`](crate::DEFAULT_ADMIN_CONNECTIONS)) and
//! the main listener's timeouts. Like `listen`, it is read at start only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use http::{header, Method, Request, Response, StatusCode};
use token_cache::Secret;
use tokio::net::TcpListener;

use crate::config::{ConfigError, ServeConfig};
use crate::guard::Guards;
use crate::response::{self, Body};
use crate::sidecar::{safe_cause, Inner, Profile, Sidecar};

/// How long listing the keys waits for one profile's token: a cached token
/// answers at once; this bounds a fetch in flight.
const PEEK_TIMEOUT: Duration = Duration::from_millis(200);

/// The admin listener's settings, as the `[serve]` table gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AdminSettings {
    /// `admin_listen`; `None`: no admin listener.
    pub listen: Option<SocketAddr>,
    /// `admin_secret_file`.
    pub secret_file: Option<PathBuf>,
    /// `admin_max_connections`.
    pub max_connections: usize,
}

impl AdminSettings {
    /// The admin settings of `config`.
    pub fn of(config: &ServeConfig) -> Self {
        Self {
            listen: config.admin_listen,
            secret_file: config.admin_secret_file.clone(),
            max_connections: config.admin_max_connections,
        }
    }
}

/// A bound admin listener (`[serve] admin_listen`) and who may call its
/// admin API; give it to [`serve_with_admin`](crate::serve_with_admin).
///
/// It serves `GET /healthz`, `GET /readyz`, `GET /metrics` (as the main
/// listener does) and the admin API: `GET /admin/keys` (each profile's
/// cache key, routes, state and expiry, never a token), `POST
/// /admin/keys/PROFILE/purge` and `POST /admin/keys/PROFILE/refresh`;
/// never the gateway or the token endpoints. Without `admin_secret_file`
/// the admin API answers loopback clients only (and `Host` must be
/// `localhost` or an IP); with it, every call must carry `Authorization:
/// Bearer <secret>`. Browser cross-site requests are refused.
pub struct AdminListener {
    pub(crate) listener: TcpListener,
    pub(crate) access: std::sync::Arc<Access>,
    pub(crate) max_connections: usize,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("addr", &self.listener.local_addr().ok())
            .field("secret", &self.access.secret.as_ref().map(|_| "***"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Who may call the admin API.
pub(crate) struct Access {
    secret: Option<Secret>,
}

impl AdminListener {
    /// Binds `settings.listen` and reads `settings.secret_file`. `Ok(None)`
    /// when no admin listener is configured.
    pub async fn bind(settings: &AdminSettings) -> Result<Option<Self>, ConfigError> {
        let Some(addr) = settings.listen else {
            return Ok(None);
        };
        let secret = match &settings.secret_file {
            Some(path) => Some(crate::sidecar::read_secret_named(
                path,
                "[serve] admin_secret_file",
            )?),
            None => None,
        };
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            ConfigError::new(format!(
                "cannot listen on [serve] admin_listen = {addr}: {e}"
            ))
        })?;
        Ok(Some(Self::new(listener, secret, settings.max_connections)))
    }

    /// An admin listener on `listener`; `secret`: what admin API calls
    /// must present (`None`: loopback clients only).
    pub fn new(listener: TcpListener, secret: Option<Secret>, max_connections: usize) -> Self {
        Self {
            listener,
            access: std::sync::Arc::new(Access { secret }),
            max_connections: max_connections.max(1),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Answers one request on the admin listener, from `peer`.
pub(crate) async fn handle<B>(
    sidecar: &Sidecar,
    req: Request<B>,
    peer: Option<SocketAddr>,
    access: &Access,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => return response::text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => return sidecar.readyz_with(crate::sidecar::strict(&req)).await,
        "/metrics" => return sidecar.metrics(&sidecar.current()).await,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/admin/") else {
        return response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin listener serves /healthz, /readyz, /metrics and /admin/keys; the gateway \
             and token endpoints are on [serve] listen",
        );
    };
    if let Some(refused) = access.check(&req, peer) {
        return refused;
    }
    let inner = sidecar.current();
    let parts: Vec<&str> = rest.split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["keys"]) => keys(&inner).await,
        (&Method::POST, ["keys", profile, action @ ("purge" | "refresh")]) => {
            let Some(p) = inner.profiles.get(*profile) else {
                return response::error(
                    StatusCode::NOT_FOUND,
                    "unknown_profile",
                    &format!("no profile `{profile}` is served (GET /admin/keys lists them)"),
                );
            };
            if *action == "purge" {
                purge(profile, p).await
            } else {
                refresh(profile, p).await
            }
        }
        (_, ["keys"]) | (_, ["keys", _, "purge" | "refresh"]) => {
            let allow = if parts.len() == 1 { "GET" } else { "POST" };
            let mut r = response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("use {allow} here"),
            );
            r.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static(allow));
            r
        }
        _ => response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin API: GET /admin/keys, POST /admin/keys/PROFILE/purge, POST \
             /admin/keys/PROFILE/refresh",
        ),
    }
}

impl Access {
    /// `None` when the admin API may be called; the refusal otherwise.
    fn check<B>(&self, req: &Request<B>, peer: Option<SocketAddr>) -> Option<Response<Body>> {
        if let Some(refused) = Guards::browser(req.headers(), &[]) {
            return Some(refused);
        }
        match &self.secret {
            Some(secret) => {
                let got = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
                if got.is_some_and(|got| same(secret.expose().as_bytes(), got)) {
                    None
                } else {
                    let mut r = response::error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the admin API needs Authorization: Bearer with the content of [serve] \
                         admin_secret_file",
                    );
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer realm=\"tokencache-admin\""),
                    );
                    Some(r)
                }
            }
            None => {
                let loopback = peer.is_some_and(|p| p.ip().is_loopback());
                if !loopback {
                    return Some(response::error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "the admin API answers loopback clients only; set [serve] \
                         admin_secret_file to call it from elsewhere",
                    ));
                }
                if !host_is_local(req) {
                    return Some(response::error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "without [serve] admin_secret_file the admin API must be called as \
                         localhost or by IP address (DNS rebinding)",
                    ));
                }
                None
            }
        }
    }
}

/// Whether the request's `Host` is `localhost` or an IP literal (or
/// absent, as HTTP/1.0 allows).
fn host_is_local<B>(req: &Request<B>) -> bool {
    let Some(host) = req.headers().get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Constant-time equality of two byte strings of the same length.
fn same(want: &[u8], got: &[u8]) -> bool {
    want.len() == got.len() && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// `GET /admin/keys`.
async fn keys(inner: &Inner) -> Response<Body> {
    let mut out = Vec::with_capacity(inner.profiles.len());
    for (name, p) in &inner.profiles {
        let routes: Vec<&str> = inner
            .routes
            .iter()
            .filter(|r| &r.route.profile == name)
            .map(|r| r.route.prefix.as_str())
            .collect();
        let mut fields = serde_json::Map::new();
        fields.insert("profile".into(), name.as_str().into());
        fields.insert("key".into(), p.handle.cache_key().as_str().into());
        fields.insert("routes".into(), routes.into());
        match tokio::time::timeout(PEEK_TIMEOUT, p.handle.token()).await {
            Ok(Ok(t)) => {
                let now = SystemTime::now();
                let state = if !t.is_live_at(now) {
                    "expired"
                } else if t.refresh_at().is_some_and(|at| now >= at) {
                    "refresh_due"
                } else {
                    "fresh"
                };
                fields.insert("state".into(), state.into());
                insert_times(&mut fields, t.expires_at(), t.refresh_at());
            }
            Ok(Err(e)) => {
                fields.insert("state".into(), "unavailable".into());
                fields.insert("cause".into(), safe_cause(&e).into());
            }
            Err(_) => {
                fields.insert("state".into(), "fetching".into());
            }
        }
        out.push(serde_json::Value::Object(fields));
    }
    response::json(
        StatusCode::OK,
        serde_json::json!({ "keys": out }).to_string(),
    )
}

fn insert_times(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    expires_at: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
) {
    if let Some(at) = expires_at {
        fields.insert("expires_at".into(), response::rfc3339(at).into());
        let left = at
            .duration_since(SystemTime::now())
            .map_or(0, |d| d.as_secs());
        fields.insert("expires_in".into(), left.into());
    }
    if let Some(at) = refresh_at {
        fields.insert("refresh_at".into(), response::rfc3339(at).into());
    }
}

/// Why a purge or forced refresh dropped nothing.
const TOO_SOON: &str = "this key was purged or refreshed moments ago (at most one per key per \
                        the engine's invalidate floor, 30 s by default), or its token changed \
                        meanwhile; try again later";

/// Drops `p`'s cached token (hot slot and store). `Err`: the answer to give
/// when nothing is cached or nothing could be dropped.
async fn drop_token(name: &str, key: &str, p: &Profile) -> Result<(), Response<Body>> {
    let token = match tokio::time::timeout(PEEK_TIMEOUT, p.handle.token()).await {
        Ok(Ok(t)) => t.to_access_token(),
        _ => {
            return Err(response::json(
                StatusCode::CONFLICT,
                serde_json::json!({
                    "profile": name, "key": key, "error": "no_token",
                    "error_description": "no token is cached for this key",
                })
                .to_string(),
            ))
        }
    };
    if p.handle.invalidate(&token).await {
        return Ok(());
    }
    let mut r = response::json(
        StatusCode::TOO_MANY_REQUESTS,
        serde_json::json!({
            "profile": name, "key": key, "error": "too_soon", "error_description": TOO_SOON,
        })
        .to_string(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("30"));
    Err(r)
}

/// `POST /admin/keys/PROFILE/purge`: the profile's token is dropped from
/// the hot slot and the store; the next request (or the keep-warm timer)
/// fetches a new one. At most one purge or forced refresh per key per
/// invalidate floor (`429` otherwise), as for a `401` from an upstream.
async fn purge(name: &str, p: &Profile) -> Response<Body> {
    let key = p.handle.cache_key().as_str().to_owned();
    if let Err(r) = drop_token(name, &key, p).await {
        return r;
    }
    tracing::info!(profile = name, key = %key, "admin: purged");
    response::json(
        StatusCode::OK,
        serde_json::json!({ "profile": name, "key": key, "purged": true }).to_string(),
    )
}

/// `POST /admin/keys/PROFILE/refresh`: the token is dropped (as by a purge)
/// and a new one fetched now; `502` with the cause when the IdP gives none
/// (the key then has no token until a fetch succeeds).
async fn refresh(name: &str, p: &Profile) -> Response<Body> {
    let key = p.handle.cache_key().as_str().to_owned();
    if let Err(r) = drop_token(name, &key, p).await {
        return r;
    }
    match p.handle.token().await {
        Ok(t) => {
            tracing::info!(profile = name, key = %key, "admin: refreshed");
            let mut fields = serde_json::Map::new();
            fields.insert("profile".into(), name.into());
            fields.insert("key".into(), key.into());
            fields.insert("refreshed".into(), true.into());
            insert_times(&mut fields, t.expires_at(), t.refresh_at());
            response::json(
                StatusCode::OK,
                serde_json::Value::Object(fields).to_string(),
            )
        }
        Err(e) => {
            let cause = safe_cause(&e);
            tracing::warn!(profile = name, key = %key, cause = %cause, "admin: refresh failed");
            response::json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "profile": name, "key": key, "refreshed": false,
                    "error": "refresh_failed", "error_description": cause,
                })
                .to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> Request<()> {
        Request::builder()
            .uri("/admin/keys")
            .header(header::HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn only_local_host_names_pass_without_a_secret() {
        for ok in ["127.0.0.1:8732", "localhost:8732", "[::1]:8732", "10.0.0.5"] {
            assert!(host_is_local(&req(ok)), "{ok}");
        }
        for bad in ["evil.example:8732", "rebind.attacker", "localhost.evil:1"] {
            assert!(!host_is_local(&req(bad)), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_compared_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
