//! DPoP (RFC 9449): proof-of-possession keys, the proofs they sign, and the
//! server nonces learned along the way.
//!
//! A [`DpopKey`] is an ES256 (P-256) or EdDSA (Ed25519) key pair, read from
//! a PEM (PKCS#8, or SEC1 `EC PRIVATE KEY`) or JWK file, or generated for
//! the process. Its RFC 7638 thumbprint ([`DpopKey::thumbprint`]) goes into
//! the [`TokenRequest`](token_core::TokenRequest) (`dpop_thumbprint`, part
//! of the cache key as `jkt`), so a token bound to one key is never served
//! for another, DPoP and Bearer tokens never share a key, and a rotated key
//! starts a new partition of the cache.
//!
//! Each proof is fresh: `typ: dpop+jwt`, the public `jwk`, `htm`, `htu`
//! (the URL without query and fragment), `iat`, a random `jti`, the
//! server's `nonce` when one is known and, towards a resource server, `ath`
//! (the access token's SHA-256). Nonces (`DPoP-Nonce`) are remembered per
//! origin and per [`DpopRole`] (the authorization server and a resource
//! server at the same origin keep their own), learned from every answer,
//! successful ones included.
//!
//! ```
//! use token_core::TokenRequest;
//! use token_http::{DpopAlgorithm, DpopKey};
//!
//! let key = DpopKey::generate(DpopAlgorithm::Es256)?;
//! let request = TokenRequest::builder()
//!     .scope("orders.read")
//!     .dpop_thumbprint(key.thumbprint())
//!     .build();
//! assert_eq!(request.dpop_thumbprint(), Some(key.thumbprint()));
//! // Bind an OAuthCredential with `.dpop_key(key.clone())`, and the
//! // middleware with `TokenMiddleware::new(&cache, &request).dpop(key)`.
//! # Ok::<(), token_http::ConfigError>(())
//! ```
//!
//! # Secrets
//!
//! The private key never leaves this type: it is not serialized, not in
//! `Debug` (which shows the algorithm and thumbprint), not in any error. The
//! parsed key pair is kept for the key's lifetime (a proof is signed per
//! request, so parsing it each time would cost more than the signature);
//! `ring` does not wipe it on drop. Proofs are returned as
//! [`Secret`](token_core::Secret)s.
//!
//! # Metrics
//!
//! Through the `metrics` facade: `tokencache_dpop_proofs_signed_total`
//! (label `alg`) and `tokencache_dpop_nonce_retries_total` (label `role`:
//! `authorization_server` or `resource_server`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};
use token_core::Secret;
use zeroize::Zeroizing;

use crate::error::ConfigError;
use crate::pem;

/// A DPoP key file larger than this is refused: a PEM or JWK key is a few
/// hundred bytes.
pub const MAX_DPOP_KEY_FILE_BYTES: u64 = 64 * 1024;

/// How many origins' nonces a key remembers per role. Defaults to this: a
/// client talks to a handful of servers; beyond it the oldest half is
/// forgotten (a forgotten nonce costs one `use_dpop_nonce` round trip).
pub const MAX_NONCE_ORIGINS: usize = 256;

/// The HTTP header of a DPoP proof and of a server's nonce.
pub(crate) const DPOP: &str = "dpop";
/// The header in which a server sends its next nonce.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// The signature algorithm of a [`DpopKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopAlgorithm {
    /// ECDSA on P-256 with SHA-256 (`ES256`), the algorithm every DPoP
    /// server supports.
    Es256,
    /// Ed25519 (`EdDSA`).
    EdDsa,
}

impl DpopAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// `ES256` / `P-256`, `EdDSA` / `Ed25519` (any case).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "es256" | "p-256" | "p256" => Some(Self::Es256),
            "eddsa" | "ed25519" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for DpopAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a proof is for; nonces are kept apart per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopRole {
    /// The authorization server's token endpoint.
    AuthorizationServer,
    /// A resource server (an API called with the token).
    ResourceServer,
}

impl DpopRole {
    /// `authorization_server` or `resource_server` (the metrics label).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AuthorizationServer => "authorization_server",
            Self::ResourceServer => "resource_server",
        }
    }
}

enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

struct Inner {
    alg: DpopAlgorithm,
    signer: Signer,
    rng: SystemRandom,
    thumbprint: String,
    public_jwk: Value,
    /// The proof header (`typ`, `alg`, `jwk`), base64url, ready to prepend.
    header_b64: String,
    nonces: Mutex<HashMap<(DpopRole, String), String>>,
}

/// A DPoP (RFC 9449) proof-of-possession key: ES256 (P-256) or EdDSA
/// (Ed25519), from a PEM (PKCS#8, or SEC1 `EC PRIVATE KEY`) or JWK file, or
/// generated for the process. Cheap to clone: clones share the key and the
/// nonces it learned.
///
/// Its RFC 7638 [`thumbprint`](Self::thumbprint) goes into the
/// [`TokenRequest`](token_core::TokenRequest) (`dpop_thumbprint`, the cache
/// key's `jkt`), so a token bound to one key is never served for another,
/// DPoP and Bearer tokens never share a key, and a rotated key starts a new
/// partition. Each [`proof`](Self::proof) is fresh (`typ: dpop+jwt`, the
/// public `jwk`, `htm`, `htu` without query and fragment, `iat`, a random
/// `jti`, the server's `nonce`, `ath` towards a resource server). Nonces
/// (`DPoP-Nonce`) are kept per origin and per [`DpopRole`].
///
/// ```
/// use token_core::TokenRequest;
/// use token_http::{DpopAlgorithm, DpopKey};
///
/// let key = DpopKey::generate(DpopAlgorithm::Es256)?;
/// let request = TokenRequest::builder()
///     .scope("orders.read")
///     .dpop_thumbprint(key.thumbprint())
///     .build();
/// assert_eq!(request.dpop_thumbprint(), Some(key.thumbprint()));
/// // Bind an OAuthCredential with `.dpop_key(key.clone())`, and the
/// // middleware with `TokenMiddleware::new(&cache, &request).dpop(key)`.
/// # Ok::<(), token_http::ConfigError>(())
/// ```
///
/// The private key never leaves this type: not serialized, not in `Debug`
/// (the algorithm and thumbprint only), not in any error. The parsed key
/// pair is kept for the key's lifetime (a proof is signed per request);
/// `ring` does not wipe it on drop. Proofs are [`Secret`]s.
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

impl DpopKey {
    /// A new random key, for this process only (tokens bound to it are
    /// useless to another process, so do not share a store between
    /// processes with generated keys: use a key file).
    pub fn generate(alg: DpopAlgorithm) -> Result<Self, ConfigError> {
        let rng = SystemRandom::new();
        let failed = |_| ConfigError::Key(format!("could not generate a {alg} DPoP key"));
        let pkcs8 = match alg {
            DpopAlgorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(failed)?
            }
            DpopAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?,
        };
        let der = Zeroizing::new(pkcs8.as_ref().to_vec());
        Self::from_pkcs8(&der, Some(alg))
    }

    /// A key from PEM text: PKCS#8 (`BEGIN PRIVATE KEY`, P-256 or Ed25519)
    /// or SEC1 (`BEGIN EC PRIVATE KEY`, P-256). The first private key block
    /// is used.
    pub fn from_pem(text: &str) -> Result<Self, ConfigError> {
        let blocks = pem::blocks(text, "DPoP key PEM").map_err(ConfigError::Key)?;
        let Some(block) = blocks
            .into_iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
        else {
            return Err(ConfigError::Key(
                "the PEM holds no private key block (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)"
                    .into(),
            ));
        };
        match block.label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(&block.der, None),
            "EC PRIVATE KEY" => Self::from_pkcs8(&sec1_to_pkcs8(&block.der)?, None),
            other => Err(ConfigError::Key(format!(
                "a PEM labelled `{other}` is not a P-256 or Ed25519 private key"
            ))),
        }
    }

    /// A key from a private JWK (RFC 7517): `{"kty":"EC","crv":"P-256",
    /// "x","y","d"}` or `{"kty":"OKP","crv":"Ed25519","x","d"}`.
    pub fn from_jwk(text: &str) -> Result<Self, ConfigError> {
        let jwk: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Key(format!("the JWK is not JSON: {e}")))?;
        let field = |name: &str| -> Result<Zeroizing<Vec<u8>>, ConfigError> {
            let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| {
                ConfigError::Key(format!("the JWK has no `{name}` (a private JWK needs d)"))
            })?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map(Zeroizing::new)
                .map_err(|_| ConfigError::Key(format!("the JWK's `{name}` is not base64url")))
        };
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
        let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
        let rng = SystemRandom::new();
        let unusable = |e: ring::error::KeyRejected| {
            ConfigError::Key(format!("the JWK is not a usable {crv} key: {e}"))
        };
        let signer = match (kty, crv) {
            ("EC", "P-256") => {
                let (x, y, d) = (field("x")?, field("y")?, field("d")?);
                let mut public = vec![4u8];
                public.extend_from_slice(&x);
                public.extend_from_slice(&y);
                Signer::Es256(
                    EcdsaKeyPair::from_private_key_and_public_key(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        &d,
                        &public,
                        &rng,
                    )
                    .map_err(unusable)?,
                )
            }
            ("OKP", "Ed25519") => {
                let (x, d) = (field("x")?, field("d")?);
                Signer::EdDsa(Ed25519KeyPair::from_seed_and_public_key(&d, &x).map_err(unusable)?)
            }
            _ => {
                return Err(ConfigError::Key(format!(
                    "a JWK with kty `{kty}` and crv `{crv}` is not a DPoP key (EC P-256 or OKP Ed25519)"
                )))
            }
        };
        Ok(Self::from_signer(signer))
    }

    /// A key read from `path`: a JWK when the file starts with `{`, PEM
    /// otherwise. Errors name the file, never its contents.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let file_error = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason: format!("DPoP key file {}: {reason}", path.display()),
        };
        let meta = std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?;
        if meta.len() > MAX_DPOP_KEY_FILE_BYTES {
            return Err(file_error(format!(
                "{} bytes, over the {MAX_DPOP_KEY_FILE_BYTES}-byte limit",
                meta.len()
            )));
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| file_error(e.to_string()))?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| file_error("not UTF-8 text (PEM or JWK)".into()))?;
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(file_error("empty".into()));
        }
        let parsed = if trimmed.starts_with('{') {
            Self::from_jwk(trimmed)
        } else {
            Self::from_pem(trimmed)
        };
        parsed.map_err(|e| match e {
            ConfigError::Key(reason) => file_error(reason),
            other => file_error(other.to_string()),
        })
    }

    fn from_pkcs8(der: &[u8], alg: Option<DpopAlgorithm>) -> Result<Self, ConfigError> {
        let rng = SystemRandom::new();
        let ec = || EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng);
        let ed = || Ed25519KeyPair::from_pkcs8_maybe_unchecked(der);
        let signer = match alg {
            Some(DpopAlgorithm::Es256) => ec().ok().map(Signer::Es256),
            Some(DpopAlgorithm::EdDsa) => ed().ok().map(Signer::EdDsa),
            None => ec()
                .ok()
                .map(Signer::Es256)
                .or_else(|| ed().ok().map(Signer::EdDsa)),
        };
        signer.map(Self::from_signer).ok_or_else(|| {
            ConfigError::Key(
                "the PKCS#8 key is neither a P-256 nor an Ed25519 key (DPoP supports ES256 and EdDSA)"
                    .into(),
            )
        })
    }

    fn from_signer(signer: Signer) -> Self {
        describe_metrics();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (alg, public_jwk, canonical) = match &signer {
            Signer::Es256(pair) => {
                // Uncompressed point: 0x04 || x || y.
                let p = pair.public_key().as_ref();
                let (x, y) = (b64(&p[1..33]), b64(&p[33..65]));
                let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                (
                    DpopAlgorithm::Es256,
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                    canonical,
                )
            }
            Signer::EdDsa(pair) => {
                let x = b64(pair.public_key().as_ref());
                let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
                (
                    DpopAlgorithm::EdDsa,
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                    canonical,
                )
            }
        };
        let thumbprint = b64(digest(&SHA256, canonical.as_bytes()).as_ref());
        let header = json!({"typ": "dpop+jwt", "alg": alg.as_str(), "jwk": public_jwk});
        Self {
            inner: Arc::new(Inner {
                alg,
                signer,
                rng: SystemRandom::new(),
                thumbprint,
                public_jwk,
                header_b64: b64(header.to_string().as_bytes()),
                nonces: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The RFC 7638 JWK SHA-256 thumbprint (base64url): the `jkt` a bound
    /// token's `cnf` names, and what goes into the request's cache key.
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DpopAlgorithm {
        self.inner.alg
    }

    /// The public key as a JWK (no private part).
    pub fn public_jwk(&self) -> &Value {
        &self.inner.public_jwk
    }

    /// A fresh proof for `method` on `url` (its query and fragment left
    /// out of `htu`) signed now: a new random `jti`, `iat` = `now`, the
    /// `nonce` given and, when `access_token` is given (a resource request),
    /// its hash as `ath`.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        now: SystemTime,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<Secret, ConfigError> {
        let htu = htu(url)?;
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 16];
        self.inner
            .rng
            .fill(&mut jti)
            .map_err(|_| ConfigError::Key("no randomness for the DPoP proof's jti".into()))?;
        let mut claims = json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": method,
            "htu": htu,
            "iat": iat,
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(token) = access_token {
            claims["ath"] = json!(ath(token));
        }
        let mut jws = Zeroizing::new(String::with_capacity(512));
        jws.push_str(&self.inner.header_b64);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match &self.inner.signer {
            Signer::Es256(pair) => pair
                .sign(&self.inner.rng, jws.as_bytes())
                .map_err(|_| ConfigError::Key("ES256 signing of a DPoP proof failed".into()))?,
            Signer::EdDsa(pair) => pair.sign(jws.as_bytes()),
        };
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        metrics::counter!("tokencache_dpop_proofs_signed_total", "alg" => self.inner.alg.as_str())
            .increment(1);
        Ok(Secret::new(jws.as_str()))
    }

    /// [`proof`](Self::proof) with the nonce last learned for `url`'s
    /// origin and `role`, as a header value marked sensitive.
    pub fn proof_header(
        &self,
        role: DpopRole,
        method: &str,
        url: &str,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, ConfigError> {
        let nonce = self.nonce(role, url);
        let proof = self.proof(
            method,
            url,
            SystemTime::now(),
            nonce.as_deref(),
            access_token,
        )?;
        let mut value = HeaderValue::from_str(proof.expose())
            .map_err(|_| ConfigError::Key("a DPoP proof is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The `DPoP` header (marked sensitive) of one resource request with
    /// `token` (`ath`, the resource server's last nonce for `url`). Refuses
    /// a token that is not a DPoP token rather than send it with a proof.
    pub fn resource_header(
        &self,
        token: &token_core::AccessToken,
        method: &str,
        url: &str,
    ) -> Result<HeaderValue, DpopRequestError> {
        resource_proof(Some(self), token, method, url)?
            .ok_or_else(|| DpopRequestError::Proof("no proof made".into()))
    }

    /// Learns the resource server's nonce from an answer to a request to
    /// `url` and says whether to send the request once more with it: a
    /// `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` bringing a
    /// nonce not used yet, when the caller `can_retry` (its body is still
    /// at hand). Counts the retry it advises
    /// (`tokencache_dpop_nonce_retries_total{role="resource_server"}`).
    pub fn resource_wants_retry(
        &self,
        url: &str,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        can_retry: bool,
    ) -> bool {
        let new = self.learn_nonce(DpopRole::ResourceServer, url, headers);
        let retry = can_retry && new && crate::challenge::asks_for_dpop_nonce(status, headers);
        if retry {
            count_nonce_retry(DpopRole::ResourceServer);
        }
        retry
    }

    /// The nonce last learned from `url`'s origin in `role`.
    pub fn nonce(&self, role: DpopRole, url: &str) -> Option<String> {
        let origin = origin(url)?;
        self.inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(role, origin))
            .cloned()
    }

    /// Remembers the `DPoP-Nonce` of an answer from `url` in `role`, if it
    /// has one (any status). Returns whether the nonce is new.
    pub fn learn_nonce(&self, role: DpopRole, url: &str, headers: &http::HeaderMap) -> bool {
        let Some(nonce) = headers
            .get(DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.len() <= 1024)
        else {
            return false;
        };
        let Some(origin) = origin(url) else {
            return false;
        };
        let mut nonces = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (role, origin);
        if nonces.get(&key).map(String::as_str) == Some(nonce) {
            return false;
        }
        if nonces.len() >= MAX_NONCE_ORIGINS * 2 && !nonces.contains_key(&key) {
            let forget: Vec<_> = nonces.keys().take(MAX_NONCE_ORIGINS).cloned().collect();
            for k in forget {
                nonces.remove(&k);
            }
        }
        nonces.insert(key, nonce.to_owned());
        true
    }
}

/// Why a DPoP-bound resource request could not be prepared. Never holds a
/// token or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DpopRequestError {
    /// The token is a DPoP token but no key was given to sign proofs.
    #[error("the access token is DPoP-bound but no DPoP key was given to sign its proofs (set one on the middleware)")]
    NoKey,
    /// A key was given but the token is not a DPoP token.
    #[error("a DPoP key is set but the access token is a `{0}` token, not DPoP; refusing to send it (the token endpoint downgraded it)")]
    NotDpop(String),
    /// The proof could not be made (an unusable URL, no randomness).
    #[error("could not make a DPoP proof: {0}")]
    Proof(String),
}

/// The `DPoP` header value (marked sensitive) for a resource request with
/// `token`: a fresh proof with `ath` and the resource server's last nonce.
/// Checks that the token and the key agree: a DPoP token needs a key, a key
/// needs a DPoP token. `None` for a Bearer token without a key.
pub(crate) fn resource_proof(
    key: Option<&DpopKey>,
    token: &token_core::AccessToken,
    method: &str,
    url: &str,
) -> Result<Option<HeaderValue>, DpopRequestError> {
    let is_dpop = *token.token_type() == token_core::TokenType::DPoP;
    match (key, is_dpop) {
        (None, false) => Ok(None),
        (None, true) => Err(DpopRequestError::NoKey),
        (Some(_), false) => Err(DpopRequestError::NotDpop(
            token.token_type().as_str().to_owned(),
        )),
        (Some(key), true) => key
            .proof_header(
                DpopRole::ResourceServer,
                method,
                url,
                Some(token.secret().expose()),
            )
            .map(Some)
            .map_err(|e| DpopRequestError::Proof(e.to_string())),
    }
}

/// `# HELP` for the DPoP counters, once per process (a recorder installed
/// later still gets the counts, without the help text).
fn describe_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            "tokencache_dpop_proofs_signed_total",
            "DPoP proofs signed (token and resource requests), by algorithm."
        );
        metrics::describe_counter!(
            "tokencache_dpop_nonce_retries_total",
            "Requests sent again because a server asked for a DPoP nonce (use_dpop_nonce), by role: authorization_server or resource_server."
        );
    });
}

/// Counts one retry because a server asked for a (new) nonce.
pub(crate) fn count_nonce_retry(role: DpopRole) {
    metrics::counter!("tokencache_dpop_nonce_retries_total", "role" => role.as_str()).increment(1);
}

/// `ath`: the base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, access_token.as_bytes()).as_ref())
}

/// `htu`: the URL without query and fragment (RFC 9449 §4.2).
fn htu(url: &str) -> Result<String, ConfigError> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::InvalidUrl {
        what: "DPoP htu",
        reason: e.to_string(),
    })?;
    parsed.set_query(None);
    parsed.set_fragment(None);
    Ok(parsed.into())
}

fn origin(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// A SEC1 `ECPrivateKey` (P-256) wrapped as PKCS#8 (RFC 5208), which is what
/// `ring` reads.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }.
    const ALG: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    if sec1.len() > 1024 {
        return Err(ConfigError::Key(
            "the EC PRIVATE KEY block is too long for a P-256 key".into(),
        ));
    }
    let mut body = Zeroizing::new(vec![0x02, 0x01, 0x00]);
    body.extend_from_slice(ALG);
    body.push(0x04);
    der_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = Zeroizing::new(vec![0x30]);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Ok(out)
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.inner.alg)
            .field("jkt", &self.inner.thumbprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

    fn decode(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn proofs_verify_with_the_embedded_jwk_and_are_fresh() {
        for alg in [DpopAlgorithm::Es256, DpopAlgorithm::EdDsa] {
            let key = DpopKey::generate(alg).unwrap();
            let a = key
                .proof(
                    "POST",
                    "https://as.example/token?x=1#f",
                    SystemTime::now(),
                    Some("n1"),
                    None,
                )
                .unwrap();
            let b = key
                .proof(
                    "GET",
                    "https://rs.example/a",
                    SystemTime::now(),
                    None,
                    Some("tok"),
                )
                .unwrap();
            let parts: Vec<&str> = a.expose().split('.').collect();
            let header = decode(parts[0]);
            let claims = decode(parts[1]);
            assert_eq!(header["typ"], "dpop+jwt");
            assert_eq!(header["alg"], alg.as_str());
            assert!(header["jwk"].get("d").is_none());
            assert_eq!(claims["htu"], "https://as.example/token");
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["nonce"], "n1");
            assert!(claims.get("ath").is_none());
            let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            let signed = format!("{}.{}", parts[0], parts[1]);
            let jwk = &header["jwk"];
            let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
            match alg {
                DpopAlgorithm::Es256 => {
                    let mut p = vec![4];
                    p.extend(x);
                    p.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, p)
                        .verify(signed.as_bytes(), &sig)
                        .unwrap();
                }
                DpopAlgorithm::EdDsa => UnparsedPublicKey::new(&ED25519, x)
                    .verify(signed.as_bytes(), &sig)
                    .unwrap(),
            }
            let b_claims = decode(b.expose().split('.').nth(1).unwrap());
            assert_ne!(claims["jti"], b_claims["jti"]);
            assert_eq!(b_claims["ath"], ath("tok"));
        }
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        // RFC 8037 Appendix A.2/A.3: the Ed25519 key and its thumbprint.
        let jwk = r#"{"kty":"OKP","crv":"Ed25519",
            "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let key = DpopKey::from_jwk(jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert_eq!(key.algorithm(), DpopAlgorithm::EdDsa);
    }

    #[test]
    fn debug_and_errors_show_no_key_material() {
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"AAAA"}"#;
        let e = DpopKey::from_jwk(jwk).unwrap_err().to_string();
        assert!(!e.contains("nWGxne"), "{e}");
        let key = DpopKey::generate(DpopAlgorithm::Es256).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.thumbprint()) && !shown.contains("\"d\""));
    }

    #[test]
    fn nonces_are_kept_per_origin_and_role() {
        let key = DpopKey::generate(DpopAlgorithm::EdDsa).unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(DPOP_NONCE, HeaderValue::from_static("as-nonce"));
        assert!(key.learn_nonce(DpopRole::AuthorizationServer, "https://a.example/token", &h));
        assert!(!key.learn_nonce(DpopRole::AuthorizationServer, "https://a.example/x", &h));
        assert_eq!(
            key.nonce(DpopRole::AuthorizationServer, "https://a.example/other?q")
                .as_deref(),
            Some("as-nonce")
        );
        assert_eq!(
            key.nonce(DpopRole::ResourceServer, "https://a.example/"),
            None
        );
        assert_eq!(
            key.nonce(DpopRole::AuthorizationServer, "https://a.example:8443/"),
            None
        );
    }
}
