//! Request guards: the checks every request passes before any routing or
//! token work, in this order (see [`Guards::check`]). Requests for a host
//! that a route names, and `CONNECT` with `[serve.proxy]`, are the forward
//! proxy's (crate::proxy) and get only steps 3 and 4: such a host is never
//! one the sidecar answers to itself (refused at load).
//!
//! 1. `CONNECT` is refused (`405`) unless `[serve.proxy]` is configured:
//!    the sidecar is then no tunnel, and a `CONNECT` in origin form must
//!    never be forwarded with a token.
//! 2. `Host` (RFC 9112 §3.2): exactly one, and a valid `host[:port]`, else
//!    `400`. The host (the request target's authority when the request is in
//!    absolute form) must be one the sidecar answers to, else `403` (DNS
//!    rebinding: a web page whose name was rebound to 127.0.0.1 sends its
//!    own name as `Host`); an absolute-form request (`HTTP_PROXY`) for such
//!    a host gets `403 host_not_routed` instead. Answered to: the listen address's IP, loopback
//!    (`localhost`, `127.0.0.1`, `[::1]`, any loopback IP); on a wildcard
//!    listen (`0.0.0.0`, `[::]`) any IP literal; the metadata names vendor
//!    SDKs send (`metadata.google.internal`, `metadata`, `169.254.169.254`);
//!    and `[serve] allowed_hosts` (`name` for any port, `name:port` for
//!    one). The port of these built-in names is not compared: a browser
//!    sends `localhost` or an IP literal as `Host` only for a page that this
//!    very origin served, so the name alone tells a rebound page apart, and
//!    an embedder may serve on a listener other than `listen`.
//! 3. Loops: a request that already carries this sidecar's own `Via` entry
//!    (a route whose upstream is the sidecar itself) gets `508 Loop
//!    Detected`.
//! 4. Browsers: a request with `Sec-Fetch-Site: cross-site` or `same-site`,
//!    or with an `Origin`, is refused with `403` unless it is for a route
//!    whose `allow_browser_origins` lists that origin (or `*`). Programs do
//!    not send these headers; browsers do, and no web page may use the
//!    sidecar's tokens.
//!
//! `/healthz` is exempt from all of them: it says nothing and does nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, StatusCode};

use crate::config::ServeConfig;
use crate::response::{self, Body};

/// The names vendor SDKs use for the metadata server: Google's client
/// libraries (`metadata.google.internal`, the short `metadata`, and the
/// link-local IP for their probes) and Azure's IMDS (the same IP).
pub(crate) const METADATA_HOSTS: [&str; 3] =
    ["metadata.google.internal", "metadata", "169.254.169.254"];

/// This process's name in `Via` (`tokencache-<16 hex digits>`): a request
/// that arrives carrying it went through this very sidecar before.
pub(crate) fn via_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let id = token_cache::backend::random_u128();
        format!("tokencache-{:016x}", (id >> 64) as u64 ^ id as u64)
    })
}

/// The `Via` entry the gateway adds to what it forwards (RFC 9110 §7.6.3).
pub(crate) fn via_value() -> HeaderValue {
    static VALUE: OnceLock<HeaderValue> = OnceLock::new();
    VALUE
        .get_or_init(|| {
            HeaderValue::from_str(&format!("1.1 {}", via_name()))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 tokencache"))
        })
        .clone()
}

/// The guards of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Guards {
    listen: SocketAddr,
    /// `[serve] allowed_hosts`: lower-cased names, each with its port or
    /// `None` for any port.
    allowed_hosts: Vec<(String, Option<u16>)>,
    /// `Host` values that the checks below allow, byte for byte: the
    /// listen address, and `localhost` and `127.0.0.1` with and without
    /// its port. Nearly every request carries one of them, and is let
    /// through without parsing it.
    usual_hosts: Vec<HeaderValue>,
}

impl Guards {
    pub(crate) fn new(config: &ServeConfig) -> Self {
        Self::from_parts(config.listen, &config.allowed_hosts)
    }

    fn from_parts(listen: SocketAddr, allowed: &[String]) -> Self {
        let allowed_hosts = allowed
            .iter()
            .filter_map(|e| parse_authority(e.as_bytes()))
            .map(|a| {
                (
                    a.host().trim_end_matches('.').to_ascii_lowercase(),
                    a.port_u16(),
                )
            })
            .collect();
        let port = listen.port();
        let usual_hosts = [
            listen.to_string(),
            format!("localhost:{port}"),
            "localhost".to_owned(),
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
        ]
        .iter()
        .filter_map(|h| HeaderValue::from_str(h).ok())
        .collect();
        Self {
            listen,
            allowed_hosts,
            usual_hosts,
        }
    }

    /// Steps 1 to 3 of the module docs: the refusal, if any. The browser
    /// check needs the route and is [`Guards::browser`].
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Option<http::Response<Body>> {
        if req.method() == Method::CONNECT {
            let mut r = response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_refused",
                "the sidecar does not tunnel: CONNECT is refused (configure [serve.proxy] for HTTPS to routed hosts)",
            );
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Some(r);
        }
        if req.uri().authority().is_none() {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            if let (Some(h), None) = (hosts.next(), hosts.next()) {
                if self.usual_hosts.iter().any(|u| u == h) {
                    return loop_refusal(req.headers());
                }
            }
        }
        let authority = match host(req) {
            Ok(a) => a,
            Err(why) => return Some(response::error(StatusCode::BAD_REQUEST, "bad_host", why)),
        };
        if !self.host_allowed(&authority) {
            if req.uri().authority().is_some() {
                // An absolute-form request (HTTP_PROXY) for a host no route
                // names: the sidecar is not an open proxy.
                return Some(crate::proxy::not_routed(authority.as_str()));
            }
            tracing::info!(host = %authority, "request refused: Host not allowed (DNS rebinding guard)");
            return Some(response::error(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "the sidecar answers only its listen address, loopback, the metadata server's names \
                 and the names in [serve] allowed_hosts",
            ));
        }
        loop_refusal(req.headers())
    }

    fn host_allowed(&self, a: &Authority) -> bool {
        // Compared without case, without a copy: this runs per request.
        let name = a.host().trim_end_matches('.');
        let port = a.port_u16();
        if METADATA_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return true;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|(h, p)| h.eq_ignore_ascii_case(name) && p.is_none_or(|p| Some(p) == port))
        {
            return true;
        }
        // The port is not compared: a browser sends `localhost` or an IP
        // literal as `Host` only to a page that origin (that name or address
        // and that port) served itself, so the name alone tells a rebound
        // page apart; and an embedder may serve on a listener other than
        // `listen`.
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let ip: Option<IpAddr> = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name)
            .parse()
            .ok();
        match ip {
            Some(ip) => {
                ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
            }
            None => false,
        }
    }

    /// Step 4 of the module docs: browser signals, refused unless the
    /// request's `Origin` is in `allowed` (a route's
    /// `allow_browser_origins`; empty for the sidecar's own endpoints).
    /// The refusal, if any.
    pub(crate) fn browser(headers: &HeaderMap, allowed: &[String]) -> Option<http::Response<Body>> {
        let cross = headers.get_all("sec-fetch-site").iter().any(|v| {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
        });
        let origins = headers.get_all(header::ORIGIN);
        let has_origin = origins.iter().next().is_some();
        if !cross && !has_origin {
            return None;
        }
        let allowed_origin = has_origin
            && origins.iter().all(|o| {
                o.to_str().is_ok_and(|o| {
                    allowed
                        .iter()
                        .any(|a| a == "*" || a.eq_ignore_ascii_case(o.trim()))
                })
            });
        if allowed_origin {
            return None;
        }
        Some(response::error(
            StatusCode::FORBIDDEN,
            "browser_request_refused",
            "requests from web pages (Origin, or Sec-Fetch-Site cross-site/same-site) are refused \
             unless the route lists the origin in allow_browser_origins",
        ))
    }
}

/// The request's host: the target's authority in absolute form, else the
/// one `Host` header, which must be a valid `host[:port]`.
pub(crate) fn host<B>(req: &Request<B>) -> Result<Authority, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(value) = hosts.next() else {
        // HTTP/2 carries the host in `:authority` (RFC 9113 §8.3.1).
        if req.version() == http::Version::HTTP_2 {
            if let Some(target) = req.uri().authority() {
                return parse_authority(target.as_str().as_bytes())
                    .ok_or("the request's :authority is not a valid host[:port]");
            }
        }
        return Err("the request has no Host header (RFC 9112 §3.2)");
    };
    if hosts.next().is_some() {
        return Err("the request has more than one Host header (RFC 9112 §3.2)");
    }
    let header =
        parse_authority(value.as_bytes()).ok_or("the Host header is not a valid host[:port]")?;
    match req.uri().authority() {
        Some(target) => parse_authority(target.as_str().as_bytes())
            .ok_or("the request target's authority is not a valid host[:port]"),
        None => Ok(header),
    }
}

fn parse_authority(bytes: &[u8]) -> Option<Authority> {
    if bytes.is_empty()
        || bytes
            .iter()
            .any(|b| matches!(b, b'@' | b'/' | b'?' | b'#' | b' ' | b'\\'))
    {
        return None;
    }
    let a = Authority::try_from(bytes).ok()?;
    // Whatever follows the host is `:port`, a port that fits in 16 bits.
    let after = &a.as_str()[a.host().len()..];
    let port_ok = after.is_empty()
        || after
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    if a.host().is_empty() || !port_ok {
        return None;
    }
    Some(a)
}

/// Step 3 of the module docs: `508` when a `Via` names this sidecar.
pub(crate) fn loop_refusal(headers: &HeaderMap) -> Option<http::Response<Body>> {
    looped(headers).then(|| {
        response::error(
            StatusCode::LOOP_DETECTED,
            "loop_detected",
            "the request already went through this sidecar (Via): a route's upstream is the sidecar itself",
        )
    })
}

/// Whether a `Via` header names this process's sidecar.
fn looped(headers: &HeaderMap) -> bool {
    let me = via_name();
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            entry
                .split_whitespace()
                .nth(1)
                .is_some_and(|by| by.eq_ignore_ascii_case(me))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards(listen: &str, allowed: &[&str]) -> Guards {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        Guards::from_parts(listen.parse().expect("addr"), &allowed)
    }

    fn req(host: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri("/v1/token");
        for h in host {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    fn status(g: &Guards, r: &Request<()>) -> u16 {
        g.check(r).map_or(200, |resp| resp.status().as_u16())
    }

    #[test]
    fn answers_its_listen_address_loopback_and_the_metadata_names() {
        let g = guards("127.0.0.1:8731", &["sidecar.internal", "other:9000"]);
        for ok in [
            "127.0.0.1:8731",
            "localhost:8731",
            "LOCALHOST:8731",
            "[::1]:8731",
            "metadata.google.internal",
            "metadata.google.internal.",
            "metadata",
            "169.254.169.254",
            "169.254.169.254:80",
            "sidecar.internal:8731",
            "sidecar.internal",
            "other:9000",
        ] {
            assert_eq!(status(&g, &req(&[ok])), 200, "{ok}");
        }
        for refused in [
            "evil.example:8731",
            "evil.example",
            "10.0.0.5:8731",
            "10.0.0.5",
            "other:9001",
            "localhost.evil.example:8731",
        ] {
            assert_eq!(status(&g, &req(&[refused])), 403, "{refused}");
        }
    }

    #[test]
    fn the_usual_hosts_skip_parsing_but_not_the_loop_check() {
        let g = guards("127.0.0.1:8731", &[]);
        assert_eq!(g.usual_hosts.len(), 5);
        for usual in ["127.0.0.1:8731", "localhost:8731", "localhost", "127.0.0.1"] {
            assert_eq!(status(&g, &req(&[usual])), 200, "{usual}");
            let mut looped = req(&[usual]);
            looped.headers_mut().insert(header::VIA, via_value());
            assert_eq!(status(&g, &looped), 508, "{usual}");
        }
        // Twice, even the usual value: the full check's 400.
        assert_eq!(status(&g, &req(&["localhost", "localhost"])), 400);
    }

    #[test]
    fn a_wildcard_listen_answers_any_ip_literal_but_no_name() {
        let g = guards("0.0.0.0:8731", &[]);
        assert_eq!(status(&g, &req(&["10.0.0.5:8731"])), 200);
        assert_eq!(status(&g, &req(&["[fd00::5]:8731"])), 200);
        assert_eq!(status(&g, &req(&["pod.example:8731"])), 403);
        let g = guards("10.0.0.5:8731", &[]);
        assert_eq!(status(&g, &req(&["10.0.0.5:8731"])), 200);
        assert_eq!(status(&g, &req(&["10.0.0.6:8731"])), 403);
    }

    #[test]
    fn missing_duplicate_or_invalid_host_is_a_400() {
        let g = guards("127.0.0.1:8731", &[]);
        assert_eq!(status(&g, &req(&[])), 400);
        assert_eq!(status(&g, &req(&["127.0.0.1:8731", "127.0.0.1:8731"])), 400);
        for bad in [
            "",
            "user@127.0.0.1:8731",
            "127.0.0.1:99999",
            "a b",
            "127.0.0.1:8731/x",
            "a\\b",
        ] {
            assert_eq!(status(&g, &req(&[bad])), 400, "{bad:?}");
        }
    }

    #[test]
    fn an_absolute_form_target_s_authority_is_the_host_checked() {
        let g = guards("127.0.0.1:8731", &[]);
        let r = Request::builder()
            .uri("http://evil.example:8731/v1/token")
            .header(header::HOST, "127.0.0.1:8731")
            .body(())
            .expect("request");
        assert_eq!(status(&g, &r), 403);
    }

    #[test]
    fn connect_is_refused() {
        let g = guards("127.0.0.1:8731", &[]);
        let r = Request::builder()
            .method(Method::CONNECT)
            .uri("/orders/x")
            .header(header::HOST, "127.0.0.1:8731")
            .body(())
            .expect("request");
        assert_eq!(status(&g, &r), 405);
    }

    #[test]
    fn this_sidecar_s_via_is_a_loop_and_another_s_is_not() {
        let g = guards("127.0.0.1:8731", &[]);
        let mut r = req(&["127.0.0.1:8731"]);
        r.headers_mut().insert(
            header::VIA,
            HeaderValue::from_static("1.1 tokencache, 1.0 fred"),
        );
        assert_eq!(status(&g, &r), 200);
        r.headers_mut().append(header::VIA, via_value());
        assert_eq!(status(&g, &r), 508);
    }

    #[test]
    fn browser_signals_are_refused_unless_the_origin_is_allowed() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let none: [String; 0] = [];
        let app = ["https://app.example".to_owned()];
        assert!(Guards::browser(&h(&[]), &none).is_none());
        assert!(Guards::browser(&h(&[("sec-fetch-site", "same-origin")]), &none).is_none());
        assert!(Guards::browser(&h(&[("sec-fetch-site", "none")]), &none).is_none());
        for refused in [
            h(&[("sec-fetch-site", "cross-site")]),
            h(&[("sec-fetch-site", "same-site")]),
            h(&[("origin", "https://evil.example")]),
            h(&[("origin", "null")]),
        ] {
            assert!(Guards::browser(&refused, &none).is_some(), "{refused:?}");
            assert!(Guards::browser(&refused, &app).is_some(), "{refused:?}");
        }
        let from_app = h(&[
            ("origin", "https://app.example"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(Guards::browser(&from_app, &none).is_some());
        assert!(Guards::browser(&from_app, &app).is_none());
        assert!(Guards::browser(&from_app, &["*".to_owned()]).is_none());
        // Cross-site without an Origin cannot be matched to a list.
        assert!(Guards::browser(&h(&[("sec-fetch-site", "cross-site")]), &app).is_some());
    }
}
