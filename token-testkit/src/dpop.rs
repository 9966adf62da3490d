//! A DPoP (RFC 9449) resource server: what an API that accepts
//! DPoP-bound tokens checks, written once for the tests of the middleware
//! (token-http) and of the gateway (token-serve).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use ring::digest::{digest, SHA256};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
use serde_json::Value;

use crate::upstream::HttpServer;

/// An HTTP/1.1 resource server on loopback that accepts only DPoP-bound
/// tokens, after RFC 9449 §7 and §9. For each request it checks:
///
/// - `Authorization: DPoP <token>` and exactly one `DPoP` header;
/// - the proof's `typ` (`dpop+jwt`), `alg` (ES256 or EdDSA), a public
///   `jwk` and the signature made with it;
/// - `htm` (the method), `htu` (its own URL, without query), `iat` within
///   60 s, `ath` (the token's SHA-256), a `jti` it has never seen;
/// - its own nonce (`use_dpop_nonce` with a `DPoP-Nonce` otherwise;
///   [`rotate_nonce`](Self::rotate_nonce) changes it);
/// - the token itself, at the authorization server's introspection URL
///   (`POST token=...`, oidc-provider's `/__test/dpop-introspect`): active
///   and bound (`cnf.jkt`) to the proof's key.
///
/// Accepted requests get `200` with the path and query; refused ones `401`
/// with `WWW-Authenticate: DPoP error="..."`.
#[derive(Clone, Debug)]
pub struct DpopResourceServer {
    server: HttpServer,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    introspection_url: String,
    origin: OnceLock<String>,
    nonce: Mutex<String>,
    jtis: Mutex<HashSet<String>>,
    served: AtomicUsize,
    nonce_challenges: AtomicUsize,
    refusals: Mutex<Vec<String>>,
    client: reqwest::Client,
}

impl DpopResourceServer {
    /// Starts one, asking `introspection_url` about tokens.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start(introspection_url: impl Into<String>) -> Self {
        let state = Arc::new(State {
            introspection_url: introspection_url.into(),
            origin: OnceLock::new(),
            nonce: Mutex::new("rs-nonce-1".into()),
            jtis: Mutex::new(HashSet::new()),
            served: AtomicUsize::new(0),
            nonce_challenges: AtomicUsize::new(0),
            refusals: Mutex::new(Vec::new()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a reqwest client"),
        });
        let handler_state = Arc::clone(&state);
        let server = HttpServer::start(move |req: Request<Incoming>| {
            let state = Arc::clone(&handler_state);
            async move { state.answer(req).await }
        })
        .await;
        let _ = state.origin.set(server.url());
        Self { server, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server underneath.
    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// Demands `nonce` from now on.
    pub fn rotate_nonce(&self, nonce: &str) {
        *self.state.nonce.lock().expect("nonce") = nonce.to_owned();
    }

    /// Requests accepted.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Requests answered `use_dpop_nonce`.
    pub fn nonce_challenges(&self) -> usize {
        self.state.nonce_challenges.load(Ordering::SeqCst)
    }

    /// Why other requests were refused (`htu`, `ath`, `jti replayed`...).
    pub fn refusals(&self) -> Vec<String> {
        self.state.refusals.lock().expect("refusals").clone()
    }
}

impl State {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let nonce = self.nonce.lock().expect("nonce").clone();
        let (error, why) = match self.check(&req).await {
            Ok(()) => {
                self.served.fetch_add(1, Ordering::SeqCst);
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                return Response::new(Full::new(Bytes::from(format!("ok {pq}"))));
            }
            Err(e) => e,
        };
        if error == "use_dpop_nonce" {
            self.nonce_challenges.fetch_add(1, Ordering::SeqCst);
        } else {
            self.refusals.lock().expect("refusals").push(why);
        }
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                "www-authenticate",
                format!(r#"DPoP error="{error}", algs="ES256 EdDSA""#),
            )
            .header("dpop-nonce", nonce)
            .body(Full::new(Bytes::new()))
            .expect("a response")
    }

    async fn check(&self, req: &Request<Incoming>) -> Result<(), (&'static str, String)> {
        let invalid = |why: &str| ("invalid_dpop_proof", why.to_owned());
        let text = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let token = text("authorization")
            .and_then(|a| a.strip_prefix("DPoP "))
            .ok_or(("invalid_token", "no DPoP authorization".to_owned()))?;
        let proofs: Vec<_> = req.headers().get_all("dpop").iter().collect();
        if proofs.len() != 1 {
            return Err(invalid("not exactly one DPoP header"));
        }
        let proof = proofs[0].to_str().map_err(|_| invalid("proof not text"))?;
        let parts: Vec<&str> = proof.split('.').collect();
        if parts.len() != 3 {
            return Err(invalid("not a JWS"));
        }
        let header = b64json(parts[0]).ok_or_else(|| invalid("header"))?;
        let claims = b64json(parts[1]).ok_or_else(|| invalid("claims"))?;
        let jwk = &header["jwk"];
        if header["typ"] != "dpop+jwt" || jwk.get("d").is_some() {
            return Err(invalid("typ or jwk"));
        }
        let b64 = |v: &Value| {
            v.as_str()
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .ok_or_else(|| invalid("jwk coordinates"))
        };
        let signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .map_err(|_| invalid("signature encoding"))?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        let verified = match header["alg"].as_str() {
            Some("ES256") if jwk["crv"] == "P-256" => {
                let mut point = vec![4];
                point.extend(b64(&jwk["x"])?);
                point.extend(b64(&jwk["y"])?);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &signature)
            }
            Some("EdDSA") if jwk["crv"] == "Ed25519" => {
                UnparsedPublicKey::new(&ED25519, b64(&jwk["x"])?)
                    .verify(signed.as_bytes(), &signature)
            }
            _ => return Err(invalid("alg")),
        };
        verified.map_err(|_| invalid("signature"))?;
        if claims["htm"] != req.method().as_str() {
            return Err(invalid("htm"));
        }
        let origin = self.origin.get().map_or("", String::as_str);
        let htu = format!("{origin}{}", req.uri().path());
        if claims["htu"] != htu.as_str() {
            return Err(invalid(&format!("htu {} is not {htu}", claims["htu"])));
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if claims["iat"].as_u64().unwrap_or(0).abs_diff(now) > 60 {
            return Err(invalid("iat"));
        }
        let ath = URL_SAFE_NO_PAD.encode(digest(&SHA256, token.as_bytes()));
        if claims["ath"] != ath.as_str() {
            return Err(invalid("ath"));
        }
        let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
        if jti.len() < 16 || !self.jtis.lock().expect("jtis").insert(jti) {
            return Err(invalid("jti replayed or too short"));
        }
        if claims["nonce"] != self.nonce.lock().expect("nonce").as_str() {
            return Err(("use_dpop_nonce", "nonce".to_owned()));
        }
        let record = self
            .introspect(token)
            .await
            .map_err(|e| ("invalid_token", format!("introspection failed: {e}")))?;
        if record["active"] != true || record["cnf"]["jkt"] != jwk_thumbprint(jwk).as_str() {
            return Err(("invalid_token", "not bound to the proof's key".to_owned()));
        }
        Ok(())
    }

    async fn introspect(&self, token: &str) -> Result<Value, String> {
        let body = self
            .client
            .post(&self.introspection_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

fn b64json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The RFC 7638 thumbprint of a public EC or OKP JWK.
pub fn jwk_thumbprint(jwk: &Value) -> String {
    let s = |k: &str| jwk[k].as_str().unwrap_or_default();
    let canonical = match s("kty") {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        _ => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
    };
    URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
}
