//! `private_key_jwt` client assertions (RFC 7523 §2.2, OIDC Core §9):
//! RS256 and ES256 keys read from PEM, signed with `ring`.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::ConfigError;

/// How long a client assertion is valid. Defaults to this: long enough for
/// a slow request, short enough that a leaked assertion is soon useless (it
/// also carries a fresh `jti`, which servers remember to refuse replays).
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The JWS algorithm of a client assertion key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl SigningAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DerKind {
    Pkcs8,
    Pkcs1Rsa,
}

/// A private key for `private_key_jwt`, read from PEM.
///
/// The DER bytes are kept in memory that is wiped on drop; the key is
/// parsed by `ring` for each signature (once per token fetch) and dropped
/// right after, so no long-lived parsed copy exists. `Debug` shows the
/// algorithm and key id only.
#[derive(Clone)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
    kind: DerKind,
    alg: SigningAlgorithm,
    kid: Option<String>,
}

impl PrivateKey {
    /// An RSA key for RS256, from a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) PEM. Keys under 2048 bits are refused.
    pub fn rs256_from_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::from_pem(pem, SigningAlgorithm::Rs256)
    }

    /// A P-256 key for ES256, from a PKCS#8 PEM (`BEGIN PRIVATE KEY`; turn
    /// a `BEGIN EC PRIVATE KEY` file into one with
    /// `openssl pkcs8 -topk8 -nocrypt`).
    pub fn es256_from_pem(pem: &str) -> Result<Self, ConfigError> {
        Self::from_pem(pem, SigningAlgorithm::Es256)
    }

    /// A key for `alg` from PEM text. Checked at once, so a wrong key fails
    /// at start-up rather than at the first token fetch.
    pub fn from_pem(pem: &str, alg: SigningAlgorithm) -> Result<Self, ConfigError> {
        let (label, der) = decode_pem(pem)?;
        let kind = match (label.as_str(), alg) {
            ("PRIVATE KEY", _) => DerKind::Pkcs8,
            ("RSA PRIVATE KEY", SigningAlgorithm::Rs256) => DerKind::Pkcs1Rsa,
            ("EC PRIVATE KEY", _) => {
                return Err(ConfigError::Key(
                    "SEC1 `EC PRIVATE KEY` PEM is not supported; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".into(),
                ))
            }
            (other, _) => {
                return Err(ConfigError::Key(format!(
                    "a PEM labelled `{other}` is not a private key for {}",
                    alg.as_str()
                )))
            }
        };
        let key = Self {
            der,
            kind,
            alg,
            kid: None,
        };
        key.sign(b"check")?;
        Ok(key)
    }

    /// Sets the key id (`kid` in the assertion's header), so the server can
    /// pick the right key from the client's JWK set.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.alg
    }

    /// The key id, when set.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ConfigError> {
        let rng = SystemRandom::new();
        match self.alg {
            SigningAlgorithm::Rs256 => {
                let pair = match self.kind {
                    DerKind::Pkcs8 => RsaKeyPair::from_pkcs8(&self.der),
                    DerKind::Pkcs1Rsa => RsaKeyPair::from_der(&self.der),
                }
                .map_err(|e| ConfigError::Key(format!("not a usable RSA private key: {e}")))?;
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .map_err(|_| ConfigError::Key("RSA signing failed".into()))?;
                Ok(signature)
            }
            SigningAlgorithm::Es256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.der, &rng)
                        .map_err(|e| {
                            ConfigError::Key(format!("not a usable P-256 private key: {e}"))
                        })?;
                let signature = pair
                    .sign(&rng, message)
                    .map_err(|_| ConfigError::Key("ECDSA signing failed".into()))?;
                Ok(signature.as_ref().to_vec())
            }
        }
    }

    /// A signed client assertion: `iss` = `sub` = `client_id`, `aud` =
    /// `audience` (the token endpoint), a fresh random `jti`, `iat` = `now`
    /// and `exp` = `now + lifetime`. The result is a secret.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Zeroizing<String>, ConfigError> {
        let iat = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 18];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| ConfigError::Key("no randomness for the assertion's jti".into()))?;
        let mut header = json!({ "alg": self.alg.as_str(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": iat,
            "exp": iat.saturating_add(lifetime.as_secs().max(1)),
        });
        let mut jws = Zeroizing::new(String::new());
        jws.push_str(&URL_SAFE_NO_PAD.encode(header.to_string()));
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.sign(jws.as_bytes())?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(jws)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("der", &"***")
            .finish()
    }
}

/// The first PEM block: its label and DER bytes (in wiped memory).
fn decode_pem(pem: &str) -> Result<(String, Zeroizing<Vec<u8>>), ConfigError> {
    let invalid = || ConfigError::Key("not a PEM private key (no BEGIN/END block)".into());
    let start = pem.find("-----BEGIN ").ok_or_else(invalid)?;
    let rest = &pem[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or_else(invalid)?;
    let label = rest[..label_end].trim().to_owned();
    let body_and_end = &rest[label_end + 5..];
    let end = body_and_end
        .find(&format!("-----END {label}-----"))
        .ok_or_else(invalid)?;
    let body = &body_and_end[..end];
    if body.contains(':') {
        return Err(ConfigError::Key(
            "encrypted PEM keys are not supported; decrypt it first".into(),
        ));
    }
    let b64: Zeroizing<String> =
        Zeroizing::new(body.chars().filter(|c| !c.is_whitespace()).collect());
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| ConfigError::Key(format!("the `{label}` PEM block is not valid base64")))?;
    Ok((label, Zeroizing::new(der)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_a_clear_error() {
        for pem in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        ] {
            let e = PrivateKey::rs256_from_pem(pem).unwrap_err();
            assert!(matches!(e, ConfigError::Key(_)), "{e}");
        }
        let e = PrivateKey::es256_from_pem(
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("pkcs8"), "{e}");
    }
}
