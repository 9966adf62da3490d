//! The grants (RFC 6749 §4.4 and §6, RFC 8693) and the form fields each
//! one sends: `grant_type`, its own fields, and what the request asks for
//! (scope, audience, resources). Client authentication adds its fields
//! separately (`client_auth.rs`).

use std::fmt;

use token_core::{AccessToken, Actor, CredentialError, ExchangeGrant, Secret, TokenRequest};
use zeroize::Zeroizing;

/// The default `subject_token_type` of a token exchange: the caller's
/// incoming access token is exchanged for one to call the next service.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The `subject_token_type` of a JWT subject token (RFC 8693 §3).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The RFC 8693 `grant_type`.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The RFC 7523 `grant_type` of the on-behalf-of flow (Microsoft Entra).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Which OAuth 2.0 grant a credential uses.
#[derive(Clone)]
#[non_exhaustive]
pub enum Grant {
    /// Client credentials (RFC 6749 §4.4): the client acts for itself.
    ClientCredentials,
    /// Refresh token (RFC 6749 §6), starting from this refresh token. The
    /// newest refresh token known for the key (from the cached token) is
    /// used when there is one; a rotated refresh token from the server
    /// replaces the old one on the cached token.
    RefreshToken(Secret),
    /// Token exchange (RFC 8693): the request's [`Actor::Assertion`] is the
    /// `subject_token`.
    TokenExchange {
        /// `subject_token_type`. Defaults to [`ACCESS_TOKEN_TYPE`].
        subject_token_type: String,
        /// `requested_token_type`, when a specific type is wanted.
        requested_token_type: Option<String>,
    },
}

impl Grant {
    /// A token exchange of access tokens (the common on-behalf-of case).
    pub fn token_exchange() -> Self {
        Self::TokenExchange {
            subject_token_type: ACCESS_TOKEN_TYPE.to_owned(),
            requested_token_type: None,
        }
    }

    pub(crate) fn grant_type(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken(_) => "refresh_token",
            Self::TokenExchange { .. } => TOKEN_EXCHANGE_GRANT,
        }
    }

    pub(crate) fn short_name(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken(_) => "refresh_token",
            Self::TokenExchange { .. } => "token_exchange",
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientCredentials => f.write_str("ClientCredentials"),
            Self::RefreshToken(_) => f.write_str("RefreshToken(***)"),
            Self::TokenExchange {
                subject_token_type,
                requested_token_type,
            } => f
                .debug_struct("TokenExchange")
                .field("subject_token_type", subject_token_type)
                .field("requested_token_type", requested_token_type)
                .finish(),
        }
    }
}

/// The grant's fields of one token request.
pub(crate) struct GrantFields {
    pub(crate) form: Vec<(&'static str, Zeroizing<String>)>,
    /// The refresh token redeemed, if any.
    pub(crate) used_refresh: Option<Secret>,
    /// Secrets sent (subject token, refresh token), for redaction.
    pub(crate) redact: Vec<Secret>,
}

impl Grant {
    /// The grant's form fields for `request`. `refresh_token` is the
    /// refresh token to redeem (refresh grant only: chosen by the caller,
    /// who knows the newest one). Refuses a request whose parts this grant
    /// cannot honour, rather than return a token that was not asked for.
    pub(crate) fn fields(
        &self,
        request: &TokenRequest,
        refresh_token: impl FnOnce(&Secret) -> Secret,
    ) -> Result<GrantFields, CredentialError> {
        let unsupported = |what: &str| {
            CredentialError::permanent(format!(
                "this {} credential cannot honour the request's {what}; it would return a token that was not asked for",
                self.short_name()
            ))
        };
        if request.tenant().is_some() {
            return Err(unsupported("tenant (use one credential per tenant)"));
        }
        let plain = |s: &str| Zeroizing::new(s.to_owned());
        let mut out = GrantFields {
            form: vec![("grant_type", plain(self.grant_type()))],
            used_refresh: None,
            redact: Vec::new(),
        };
        // A per-caller exchange (`Actor::Exchange`) goes through the grant
        // it names, with this credential's client authentication.
        if let Some(Actor::Exchange(x)) = request.actor() {
            if let Self::RefreshToken(_) = self {
                return Err(unsupported(
                    "per-caller exchange (use a credential with client authentication)",
                ));
            }
            let subject = x.token();
            match x.grant() {
                ExchangeGrant::JwtBearerOnBehalfOf => {
                    out.form[0].1 = plain(JWT_BEARER_GRANT);
                    out.form.push(("assertion", plain(subject.expose())));
                    out.form
                        .push(("requested_token_use", plain("on_behalf_of")));
                }
                ExchangeGrant::TokenExchange { subject_token_type } => {
                    out.form[0].1 = plain(TOKEN_EXCHANGE_GRANT);
                    out.form.push(("subject_token", plain(subject.expose())));
                    out.form
                        .push(("subject_token_type", plain(subject_token_type)));
                }
                _ => {
                    return Err(CredentialError::permanent(
                        "this token-http does not know the exchange grant the request names",
                    ))
                }
            }
            out.redact.push(subject.clone());
        } else {
            match self {
                Self::ClientCredentials | Self::RefreshToken(_) if request.actor().is_some() => {
                    return Err(unsupported(
                        "actor (on-behalf-of needs a token exchange credential)",
                    ));
                }
                Self::ClientCredentials => {}
                Self::RefreshToken(configured) => {
                    let rt = refresh_token(configured);
                    out.form.push(("refresh_token", plain(rt.expose())));
                    out.redact.push(rt.clone());
                    out.used_refresh = Some(rt);
                }
                Self::TokenExchange {
                    subject_token_type,
                    requested_token_type,
                } => {
                    let Some(Actor::Assertion(subject)) = request.actor() else {
                        return Err(CredentialError::permanent(
                        "a token exchange needs the request's actor to be an Actor::Assertion holding the subject token",
                    ));
                    };
                    out.form.push(("subject_token", plain(subject.expose())));
                    out.form
                        .push(("subject_token_type", plain(subject_token_type)));
                    if let Some(t) = requested_token_type {
                        out.form.push(("requested_token_type", plain(t)));
                    }
                    out.redact.push(subject.clone());
                }
            }
        }
        if !request.scopes().is_empty() {
            out.form.push(("scope", plain(&request.scope_string())));
        }
        if let Some(aud) = request.audience() {
            out.form.push(("audience", plain(aud)));
        }
        for r in request.resources() {
            out.form.push(("resource", plain(r)));
        }
        Ok(out)
    }

    /// The refresh token to redeem: the cached token's (newest across the
    /// fleet), else `latest` (the newest this process saw), else the
    /// configured one.
    pub(crate) fn pick_refresh_token(
        previous: Option<&AccessToken>,
        latest: Option<&Secret>,
        configured: &Secret,
    ) -> Secret {
        previous
            .and_then(AccessToken::refresh_token)
            .or(latest)
            .unwrap_or(configured)
            .clone()
    }
}
