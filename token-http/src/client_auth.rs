//! How the client authenticates to the token endpoint (RFC 6749 §2.3,
//! OIDC Core §9).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use token_core::Secret;

use crate::jwt::PrivateKey;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Client authentication at the token endpoint.
///
/// `Debug` never shows the secret or the key.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret, each
    /// form-urlencoded first as RFC 6749 §2.3.1 requires (so a secret with
    /// `:` or `%` or non-ASCII characters reaches the server intact).
    ClientSecretBasic(Secret),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    ClientSecretPost(Secret),
    /// `private_key_jwt`: a signed assertion (RFC 7523) in the form body.
    PrivateKeyJwt(PrivateKey),
    /// `none`: a public client that sends only its `client_id` (for example
    /// for a refresh-token grant of a native app).
    None,
}

impl ClientAuth {
    /// The method's registered name (`token_endpoint_auth_method`).
    pub fn method(&self) -> &'static str {
        match self {
            Self::ClientSecretBasic(_) => "client_secret_basic",
            Self::ClientSecretPost(_) => "client_secret_post",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
            Self::None => "none",
        }
    }

    /// The secret this method sends, for redaction.
    pub(crate) fn secret(&self) -> Option<&str> {
        match self {
            Self::ClientSecretBasic(s) | Self::ClientSecretPost(s) => Some(s.expose()),
            Self::PrivateKeyJwt(_) | Self::None => None,
        }
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrivateKeyJwt(key) => f.debug_tuple("PrivateKeyJwt").field(key).finish(),
            other => write!(f, "{}(***)", other.method()),
        }
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn basic_header(client_id: &str, secret: &Secret) -> Secret {
    let mut pair = zeroize::Zeroizing::new(String::new());
    pair.push_str(&form_encode(client_id));
    pair.push(':');
    pair.push_str(&form_encode(secret.expose()));
    Secret::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let h = basic_header("my client:1", &Secret::new("p@ss:w%rd+é"));
        let b64 = h.expose().strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "my+client%3A1:p%40ss%3Aw%25rd%2B%C3%A9");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let a = ClientAuth::ClientSecretPost(Secret::new("hunter2-abc"));
        assert_eq!(format!("{a:?}"), "client_secret_post(***)");
    }
}
