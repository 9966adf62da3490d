//! The forward proxy: routes by host, absolute-form requests (what
//! `HTTP_PROXY` clients send) and `CONNECT` tunnels with TLS terminated by a
//! local CA (`HTTPS_PROXY`), so that unmodified programs keep their URLs
//! and the credential never enters them.
//!
//! - **Routes by host.** A route with `host` matches requests for that host
//!   only: the `Host` header, an HTTP/2 `:authority`, an absolute-form
//!   target (`GET http://orders.internal/v1/x`) or, inside a tunnel, the
//!   `CONNECT` target. Names compare case-insensitively, without a trailing
//!   dot; the port is ignored unless the route's host has one (a request
//!   without a port has its scheme's: 80, or 443 inside a tunnel). Among
//!   the routes for a host the longest `prefix` wins (no `prefix` matches
//!   every path), and the path is forwarded as the program sent it.
//!   Routes without `host` never match a request for a routed host, and
//!   routes with `host` never match requests addressed to the sidecar
//!   itself, which no route may name (refused at load): a host is either
//!   the sidecar's (its token endpoints) or a route's (the gateway only).
//! - **Never an open proxy.** An absolute-form request or a `CONNECT` for a
//!   host that no route names gets `403 host_not_routed`; a request for a
//!   routed host on a port its routes do not serve gets `403
//!   host_not_routed` too; a path that no route of that host covers gets
//!   `404 not_found`.
//! - **`CONNECT`** (with `[serve.proxy]`; without it, `405
//!   connect_refused` as before) to `host:443` for a routed host (or to the
//!   port a route's host names) is answered `200`; the sidecar then
//!   terminates TLS with a leaf certificate for that host signed by the
//!   local CA ([`ca`]), offering ALPN `h2` and `http/1.1`, and serves the
//!   tunnel's requests as any other gateway request (guards, token,
//!   timeouts, upstream TLS verified) ([`tunnel`]). A request inside the
//!   tunnel for another host gets `421 misdirected_request`. Tunnels count
//!   against `max_connections` for as long as they are open.
//!
//! An embedder serving [`Sidecar::handle`](crate::Sidecar::handle) on its
//! own hyper connections must enable upgrades (`with_upgrades()`) for
//! `CONNECT` tunnels to start; there, tunnels use the default connection
//! settings and are not counted against a cap.

pub(crate) mod ca;
pub(crate) mod tunnel;

use std::sync::Arc;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::config::{ConnectionSettings, ProxyConfig};
use crate::gateway::{self, GatewayRoute};
use crate::guard::{self, Guards};
use crate::response::{self, Body};
use crate::sidecar::Inner;
use crate::Sidecar;

pub(crate) use ca::LocalCa;

/// `[serve.proxy]` in force: its settings and its CA.
#[derive(Debug, Clone)]
pub(crate) struct ProxyState {
    pub(crate) config: ProxyConfig,
    pub(crate) ca: Arc<LocalCa>,
}

/// What [`serve`](crate::serve) lends a `CONNECT` request so that its
/// tunnel is limited as its connection was: the connection's permit (held
/// while the tunnel lives), the drain, and the connection settings.
#[derive(Clone)]
pub(crate) struct TunnelScope {
    /// Held, not read: the tunnel counts against the cap while it lives.
    pub(crate) _permit: Arc<OwnedSemaphorePermit>,
    pub(crate) phase: watch::Receiver<crate::server::Phase>,
    pub(crate) settings: ConnectionSettings,
}

/// A route's host, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteHost {
    name: String,
    port: Option<u16>,
}

impl RouteHost {
    /// From a route's normalised `host` (config.rs `route_host`).
    fn parse(host: &str) -> Self {
        match crate::config::split_host_port(host) {
            Some((name, port)) => Self {
                name: name.to_owned(),
                port: port.and_then(|p| p.parse().ok()),
            },
            None => Self {
                name: host.to_owned(),
                port: None,
            },
        }
    }
}

/// The host routes of one configuration, in the gateway's order (longest
/// prefix first), by index into its routes.
#[derive(Debug, Default)]
pub(crate) struct HostTable {
    entries: Vec<(RouteHost, usize)>,
}

/// Where a request for a host goes.
pub(crate) enum Lookup<'a> {
    /// No route names the host: the sidecar's own (or refused by the guard).
    NotRouted,
    /// This route.
    Route(&'a GatewayRoute),
    /// Refused with this answer (boxed: a response is large beside a
    /// reference).
    Refused(Box<Response<Body>>),
}

impl HostTable {
    pub(crate) fn new(routes: &[GatewayRoute]) -> Self {
        let entries = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.route.host.as_deref().map(|h| (RouteHost::parse(h), i)))
            .collect();
        Self { entries }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn names(&self, name: &str) -> bool {
        self.entries.iter().any(|(h, _)| h.name == name)
    }

    /// Whether `CONNECT name:port` may open a tunnel: a route names the
    /// host, and its port (443 when the route's host has none).
    fn connect_allowed(&self, name: &str, port: u16) -> bool {
        self.entries
            .iter()
            .any(|(h, _)| h.name == name && h.port.unwrap_or(443) == port)
    }

    /// The route for a request for `name:port` with `path`.
    fn find<'a>(
        &self,
        routes: &'a [GatewayRoute],
        name: &str,
        port: u16,
        path: &str,
    ) -> Lookup<'a> {
        let mut port_served = false;
        for (h, i) in &self.entries {
            if h.name != name || h.port.is_some_and(|p| p != port) {
                continue;
            }
            port_served = true;
            let route = &routes[*i];
            if gateway::prefix_matches(&route.route.prefix, path) {
                return Lookup::Route(route);
            }
        }
        if !port_served {
            return Lookup::Refused(Box::new(not_routed(&format!("{name}:{port}"))));
        }
        Lookup::Refused(Box::new(response::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route of this host covers this path",
        )))
    }
}

/// `403 host_not_routed` for `target`.
pub(crate) fn not_routed(target: &str) -> Response<Body> {
    tracing::info!(
        host = target,
        "request refused: no route names this host (not an open proxy)"
    );
    response::error(
        StatusCode::FORBIDDEN,
        "host_not_routed",
        &format!(
            "no route names {target}: the sidecar forwards only to the hosts its routes name \
             (it is not an open proxy)"
        ),
    )
}

/// A host as routes name it: lower-cased, no trailing dot, IPv6 in its
/// canonical bracketed form.
fn normalise(host: &str) -> String {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    match lower
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
    {
        Some(ip) => format!("[{ip}]"),
        None => lower,
    }
}

/// The request's target authority: an HTTP/2 request's `:authority`, else
/// the guard's reading (absolute-form target, else the one `Host`).
fn target<B>(req: &Request<B>) -> Result<Authority, &'static str> {
    if req.version() == Version::HTTP_2 {
        if let Some(a) = req.uri().authority() {
            return Ok(a.clone());
        }
    }
    guard::host(req)
}

/// Where a plain (not tunnelled) request goes when its host may be a
/// routed one. A malformed `Host` is left to the guard (`400`).
pub(crate) fn lookup<'a>(inner: &'a Inner, req: &Request<Incoming>) -> Lookup<'a> {
    let Ok(authority) = target(req) else {
        return Lookup::NotRouted;
    };
    let name = normalise(authority.host());
    if !inner.hosts.names(&name) {
        return Lookup::NotRouted;
    }
    let https = req.uri().scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    inner
        .hosts
        .find(&inner.routes, &name, port, req.uri().path())
}

/// The host and port a tunnel was opened to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) port: u16,
}

/// Forwards `req` along a host route, after the guards that apply to it:
/// loops (`Via`) and browser requests (the route's
/// `allow_browser_origins`). The DNS-rebinding guard does not apply: the
/// host is a route's, never the sidecar's.
pub(crate) async fn forward(
    inner: &Inner,
    route: &GatewayRoute,
    req: Request<Incoming>,
) -> Response<Body> {
    let refused = guard::loop_refusal(req.headers())
        .or_else(|| Guards::browser(req.headers(), &route.route.allow_browser_origins));
    let response = match refused {
        Some(r) => r,
        None => gateway::forward(inner, route, req).await,
    };
    if inner.metrics.is_some() {
        route.count(response.status());
    }
    response
}

/// Answers a `CONNECT` (`[serve.proxy]` is configured): `200` and a tunnel
/// for a routed host and port, else `403 host_not_routed`.
pub(crate) fn connect(
    sidecar: &Sidecar,
    inner: &Inner,
    proxy: &ProxyState,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_connect_target",
            "CONNECT needs a host:port target (authority form)",
        );
    };
    let Some(port) = authority.port_u16() else {
        return response::error(
            StatusCode::BAD_REQUEST,
            "bad_connect_target",
            "CONNECT needs a host:port target (authority form): the port is missing",
        );
    };
    let name = normalise(authority.host());
    if !inner.hosts.connect_allowed(&name, port) {
        return not_routed(&format!("{name}:{port}"));
    }
    let config = match proxy.ca.server_config(&name) {
        Ok(c) => c,
        Err(why) => {
            tracing::error!(host = %name, %why, "no certificate for a CONNECT tunnel");
            return response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "proxy_certificate_failed",
                &format!("the sidecar could not make a certificate for {name}: {why}"),
            );
        }
    };
    let scope = req.extensions_mut().remove::<TunnelScope>();
    let upgrade = hyper::upgrade::on(&mut req);
    let sidecar = sidecar.clone();
    let target = Target { name, port };
    let handshake = proxy.config.tls_handshake_timeout;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => tunnel::run(sidecar, io, target, config, scope, handshake).await,
            Err(e) => tracing::debug!(error = %e, "the CONNECT connection was not handed over"),
        }
    });
    Response::new(Either::Left(Full::new(Bytes::new())))
}

/// Answers one request that came through the tunnel to `tunnel`.
pub(crate) async fn tunnelled(
    sidecar: &Sidecar,
    req: Request<Incoming>,
    tunnel: &Target,
) -> Response<Body> {
    let current = sidecar.current();
    let inner = &*current;
    if req.method() == Method::CONNECT {
        return response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_refused",
            "CONNECT inside a tunnel is refused",
        );
    }
    let authority = match target(&req) {
        Ok(a) => a,
        Err(why) => return response::error(StatusCode::BAD_REQUEST, "bad_host", why),
    };
    let name = normalise(authority.host());
    if name != tunnel.name || authority.port_u16().is_some_and(|p| p != tunnel.port) {
        return response::error(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            &format!(
                "this tunnel was opened to {}:{}; a request for another host needs its own",
                tunnel.name, tunnel.port
            ),
        );
    }
    match inner
        .hosts
        .find(&inner.routes, &tunnel.name, tunnel.port, req.uri().path())
    {
        Lookup::Route(route) => forward(inner, route, req).await,
        Lookup::Refused(r) => *r,
        // A reload took the host's routes away while the tunnel was open.
        Lookup::NotRouted => not_routed(&format!("{}:{}", tunnel.name, tunnel.port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_as_routes_name_them() {
        assert_eq!(normalise("Orders.Internal."), "orders.internal");
        assert_eq!(normalise("[0:0::1]"), "[::1]");
        assert_eq!(
            RouteHost::parse("orders.internal:8443"),
            RouteHost {
                name: "orders.internal".to_owned(),
                port: Some(8443)
            }
        );
        assert_eq!(RouteHost::parse("[::2]").port, None);
    }
}
