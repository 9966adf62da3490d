//! How the client authenticates to the token endpoint (RFC 6749 §2.3,
//! RFC 7523, RFC 8705, OIDC Core §9): what each method adds to a token
//! request, apart from the grant's own fields.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderValue;
use token_core::{CredentialError, Secret};
use zeroize::Zeroizing;

use crate::assertion::AssertionSource;
use crate::certificate::ClientCertificate;
use crate::jwt::PrivateKey;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Client authentication at the token endpoint.
///
/// `Debug` never shows a secret, a key or an assertion.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and secret, each
    /// form-urlencoded first as RFC 6749 §2.3.1 requires (so a secret with
    /// `:` or `%` or non-ASCII characters reaches the server intact).
    ClientSecretBasic(Secret),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    ClientSecretPost(Secret),
    /// `private_key_jwt`: an assertion (RFC 7523) signed with this key at
    /// each request, naming the key's certificate (`x5t#S256`) when it has
    /// one.
    PrivateKeyJwt(PrivateKey),
    /// A client assertion minted elsewhere and obtained at each request
    /// from the source (workload identity federation: a file that rotates,
    /// or a callback). Sent like `private_key_jwt`.
    ClientAssertion(Arc<dyn AssertionSource>),
    /// `tls_client_auth` (RFC 8705 §2.1): the client presents a certificate
    /// issued by a CA the server trusts, registered by subject.
    TlsClientAuth(ClientCertificate),
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): the client presents a
    /// certificate registered with the server (in its JWK set).
    SelfSignedTlsClientAuth(ClientCertificate),
    /// `none`: a public client that sends only its `client_id` (for example
    /// for a refresh-token grant of a native app).
    None,
}

impl ClientAuth {
    /// The method's registered name (`token_endpoint_auth_method`; a
    /// client assertion from a source registers as `private_key_jwt`, or
    /// as whatever federated method the server calls it).
    pub fn method(&self) -> &'static str {
        match self {
            Self::ClientSecretBasic(_) => "client_secret_basic",
            Self::ClientSecretPost(_) => "client_secret_post",
            Self::PrivateKeyJwt(_) => "private_key_jwt",
            Self::ClientAssertion(_) => "client_assertion",
            Self::TlsClientAuth(_) => "tls_client_auth",
            Self::SelfSignedTlsClientAuth(_) => "self_signed_tls_client_auth",
            Self::None => "none",
        }
    }

    /// The certificate presented in the TLS handshake, for mutual TLS.
    pub fn tls_certificate(&self) -> Option<&ClientCertificate> {
        match self {
            Self::TlsClientAuth(c) | Self::SelfSignedTlsClientAuth(c) => Some(c),
            _ => None,
        }
    }

    /// The method's part of the credential id: its name and, where it
    /// identifies what authenticates, a non-secret handle (a certificate
    /// thumbprint, an assertion source's id). A token bound to one
    /// certificate (RFC 8705 §3) thus never serves a credential with
    /// another.
    pub(crate) fn id_part(&self) -> String {
        let mut id = self.method().to_owned();
        match self {
            Self::PrivateKeyJwt(key) => {
                if let Some(cert) = key.certificate() {
                    let _ = write!(id, "|x5t#S256={}", cert.thumbprint_sha256());
                }
            }
            Self::ClientAssertion(source) => {
                let _ = write!(id, "|assertion={}", source.id());
            }
            Self::TlsClientAuth(c) | Self::SelfSignedTlsClientAuth(c) => {
                let _ = write!(id, "|x5t#S256={}", c.certificate().thumbprint_sha256());
            }
            Self::ClientSecretBasic(_) | Self::ClientSecretPost(_) | Self::None => {}
        }
        id
    }

    /// What this method adds to one token request.
    pub(crate) async fn authenticate(
        &self,
        context: &AuthContext<'_>,
    ) -> Result<Authentication, CredentialError> {
        let mut out = Authentication::default();
        let client_id = || Zeroizing::new(context.client_id.to_owned());
        match self {
            Self::ClientSecretBasic(secret) => {
                let mut value =
                    HeaderValue::from_str(basic_header(context.client_id, secret).expose())
                        .map_err(|_| {
                            CredentialError::permanent(
                                "the Basic authorization header is not a valid header value",
                            )
                        })?;
                value.set_sensitive(true);
                out.header = Some(value);
                out.redact.push(secret.clone());
            }
            Self::ClientSecretPost(secret) => {
                out.form.push(("client_id", client_id()));
                out.form
                    .push(("client_secret", Zeroizing::new(secret.expose().to_owned())));
                out.redact.push(secret.clone());
            }
            Self::PrivateKeyJwt(key) => {
                let jwt = key
                    .assertion(
                        context.client_id,
                        context.audience,
                        context.now,
                        context.assertion_lifetime,
                    )
                    .map_err(|e| CredentialError::permanent(e.to_string()))?;
                out.push_assertion(context.client_id, jwt);
            }
            Self::ClientAssertion(source) => {
                let assertion = source.assertion().await?;
                out.push_assertion(
                    context.client_id,
                    Zeroizing::new(assertion.expose().to_owned()),
                );
                out.redact.push(assertion);
            }
            Self::TlsClientAuth(_) | Self::SelfSignedTlsClientAuth(_) | Self::None => {
                // RFC 8705 §2: the client id in the body, the proof in the
                // TLS handshake.
                out.form.push(("client_id", client_id()));
            }
        }
        Ok(out)
    }
}

/// What client authentication needs to know about one request.
pub(crate) struct AuthContext<'a> {
    pub(crate) client_id: &'a str,
    /// The `aud` of a signed assertion.
    pub(crate) audience: &'a str,
    pub(crate) now: SystemTime,
    pub(crate) assertion_lifetime: Duration,
}

/// The fields, header and secrets of one request's client authentication.
#[derive(Default)]
pub(crate) struct Authentication {
    pub(crate) form: Vec<(&'static str, Zeroizing<String>)>,
    /// An `Authorization` header (marked sensitive).
    pub(crate) header: Option<HeaderValue>,
    /// Secrets sent, to be redacted from any error body quoted.
    pub(crate) redact: Vec<Secret>,
}

impl Authentication {
    fn push_assertion(&mut self, client_id: &str, assertion: Zeroizing<String>) {
        self.form
            .push(("client_id", Zeroizing::new(client_id.to_owned())));
        self.form.push((
            "client_assertion_type",
            Zeroizing::new(JWT_BEARER_ASSERTION_TYPE.to_owned()),
        ));
        self.form.push(("client_assertion", assertion));
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PrivateKeyJwt(key) => f.debug_tuple("PrivateKeyJwt").field(key).finish(),
            Self::ClientAssertion(source) => {
                write!(f, "ClientAssertion({})", source.id())
            }
            Self::TlsClientAuth(c) => f.debug_tuple("TlsClientAuth").field(c).finish(),
            Self::SelfSignedTlsClientAuth(c) => {
                f.debug_tuple("SelfSignedTlsClientAuth").field(c).finish()
            }
            Self::None => f.write_str("none"),
            other => write!(f, "{}(***)", other.method()),
        }
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn basic_header(client_id: &str, secret: &Secret) -> Secret {
    let mut pair = Zeroizing::new(String::new());
    pair.push_str(&form_encode(client_id));
    pair.push(':');
    pair.push_str(&Zeroizing::new(form_encode(secret.expose())));
    Secret::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())))
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub(crate) fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assertion::AssertionFn;

    fn context() -> AuthContext<'static> {
        AuthContext {
            client_id: "client-1",
            audience: "https://idp.example/token",
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            assertion_lifetime: Duration::from_secs(60),
        }
    }

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
        let a = ClientAuth::ClientAssertion(Arc::new(AssertionFn::new("m", || async {
            Ok(Secret::new("assertion-xyz"))
        })));
        assert_eq!(format!("{a:?}"), "ClientAssertion(fn:m)");
    }

    #[tokio::test]
    async fn basic_puts_a_sensitive_header_and_nothing_in_the_body() {
        let auth = ClientAuth::ClientSecretBasic(Secret::new("s3cret"))
            .authenticate(&context())
            .await
            .unwrap();
        assert!(auth.form.is_empty());
        assert!(auth.header.unwrap().is_sensitive());
        assert_eq!(auth.redact[0].expose(), "s3cret");
    }

    #[tokio::test]
    async fn an_assertion_source_is_sent_as_a_jwt_bearer_client_assertion() {
        let auth = ClientAuth::ClientAssertion(Arc::new(AssertionFn::new("m", || async {
            Ok(Secret::new("h.p.s"))
        })))
        .authenticate(&context())
        .await
        .unwrap();
        let fields: Vec<(&str, &str)> = auth.form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("client_id", "client-1"),
                ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                ("client_assertion", "h.p.s"),
            ]
        );
        assert_eq!(auth.redact[0].expose(), "h.p.s");
    }
}
