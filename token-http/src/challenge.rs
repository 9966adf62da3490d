//! Reading a resource server's `WWW-Authenticate` challenge (RFC 6750 §3,
//! RFC 9110 §11.6.1), shared by the reqwest middleware, the tower layer and
//! the sidecar's gateway (token-serve), so that all of them decide "the
//! token was rejected" the same way.
//!
//! The `error` is read as an auth-param of a `Bearer` challenge, never as a
//! substring: `Basic realm="invalid_token"`, `Bearer
//! error_description="invalid_token"` or `DPoP error="invalid_token"` do
//! not say that the bearer token was rejected.
//!
//! ```
//! use http::{header::WWW_AUTHENTICATE, HeaderMap, HeaderValue, StatusCode};
//! use token_http::challenge::{bearer_error, rejects_token};
//!
//! let mut h = HeaderMap::new();
//! h.insert(
//!     WWW_AUTHENTICATE,
//!     HeaderValue::from_static(r#"Basic realm="x", Bearer realm="api", error="invalid_token""#),
//! );
//! assert_eq!(bearer_error(&h).as_deref(), Some("invalid_token"));
//! assert!(rejects_token(StatusCode::UNAUTHORIZED, &h));
//! ```

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;

/// The `error` auth-param of the first `Bearer` challenge that has one
/// (e.g. `invalid_token` or `insufficient_scope`), across every
/// `WWW-Authenticate` field of `headers`.
pub fn bearer_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| error_param(v, "Bearer"))
}

/// The `error` auth-param of the first `DPoP` challenge (RFC 9449 §7.1)
/// that has one (e.g. `invalid_token` or `use_dpop_nonce`).
pub fn dpop_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| error_param(v, "DPoP"))
}

/// True when a resource server asks for a DPoP nonce (RFC 9449 §9): a `401`
/// whose `DPoP` challenge carries `error="use_dpop_nonce"`.
pub fn asks_for_dpop_nonce(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && dpop_error(headers).is_some_and(|e| e.eq_ignore_ascii_case("use_dpop_nonce"))
}

/// True when the answer says a DPoP-bound token itself was rejected: a `401`
/// whose `DPoP` (or `Bearer`) challenge carries `error="invalid_token"`.
pub fn rejects_dpop_token(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && (dpop_error(headers).is_some_and(|e| e.eq_ignore_ascii_case("invalid_token"))
            || rejects_token(status, headers))
}

/// True when the answer says the token itself was rejected: a `401` whose
/// `Bearer` challenge carries `error="invalid_token"`.
pub fn rejects_token(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && bearer_error(headers).is_some_and(|e| e.eq_ignore_ascii_case("invalid_token"))
}

/// Scans one field value, `Basic realm="x", Bearer realm="y",
/// error="invalid_token", error_description="..."`, for the `error`
/// auth-param of a `Bearer` challenge. A name not followed by `=` starts a
/// new challenge (its auth-scheme); quoted strings are honoured (a
/// description may contain `error=`, commas or a scheme's name).
#[cfg(test)]
fn bearer_error_param(value: &str) -> Option<String> {
    error_param(value, "Bearer")
}

/// As [`bearer_error_param`] for the challenge of auth-scheme `wanted`.
fn error_param(value: &str, wanted: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut scheme_is_bearer = false;
    let mut i = 0;
    while i < bytes.len() {
        // Read a token (a scheme or a parameter name).
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b',' | b'=' | b'"') {
            i += 1;
        }
        let name = &value[start..i];
        let mut j = i;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' && !name.is_empty() {
            j += 1;
            while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
                j += 1;
            }
            let (param, next) = if j < bytes.len() && bytes[j] == b'"' {
                quoted(value, j + 1)
            } else {
                let s = j;
                while j < bytes.len() && !matches!(bytes[j], b' ' | b'\t' | b',') {
                    j += 1;
                }
                (value[s..j].to_owned(), j)
            };
            if scheme_is_bearer && name.eq_ignore_ascii_case("error") {
                return Some(param);
            }
            i = next;
        } else if !name.is_empty() {
            // A name without `=`: the auth-scheme of the next challenge (or
            // a token68, which no Bearer challenge has).
            scheme_is_bearer = name.eq_ignore_ascii_case(wanted);
            i = j;
        } else if i < bytes.len() && bytes[i] == b'"' {
            // A stray quoted string: skip it whole.
            i = quoted(value, i + 1).1;
        } else {
            // A lone '=' or similar: skip it.
            i += 1;
        }
    }
    None
}

/// The quoted string starting after the opening quote at `from`: its
/// unescaped contents and the index after its closing quote.
fn quoted(value: &str, from: usize) -> (String, usize) {
    let mut out = String::new();
    let mut chars = value[from..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            }
            '"' => return (out, from + off + 1),
            c => out.push(c),
        }
    }
    (out, value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_error_parameter_of_the_bearer_challenge_only() {
        for (v, want) in [
            (
                r#"Bearer realm="api", error="invalid_token", error_description="expired""#,
                Some("invalid_token"),
            ),
            (r#"Bearer error=invalid_token"#, Some("invalid_token")),
            (r#"bearer error=invalid_token"#, Some("invalid_token")),
            (
                r#"Bearer error_description="error=invalid_token, no", error="insufficient_scope""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="a\"b", error = "invalid_token""#,
                Some("invalid_token"),
            ),
            (
                r#"Basic realm="x", Bearer realm="y", error="invalid_token""#,
                Some("invalid_token"),
            ),
            (r#"Bearer realm="api""#, None),
            (r#"Basic realm="x""#, None),
            (r#"Basic realm="invalid_token""#, None),
            (r#"Basic error="invalid_token""#, None),
            (r#"DPoP error="invalid_token", algs="ES256""#, None),
            (r#"Bearer realm="x", Basic error="invalid_token""#, None),
            (r#"Bearer error_description="invalid_token""#, None),
            (r#"Bearer realm="Bearer error=invalid_token""#, None),
            (
                r#"Newauth realm="apps", type=1, title="Login to \"apps\"""#,
                None,
            ),
            ("=,=\"", None),
            ("", None),
            ("invalid_token", None),
        ] {
            assert_eq!(bearer_error_param(v).as_deref(), want, "{v}");
        }
    }

    #[test]
    fn a_dpop_challenge_asking_for_a_nonce_is_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                r#"Bearer realm="x", DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#,
            ),
        );
        assert!(asks_for_dpop_nonce(http::StatusCode::UNAUTHORIZED, &h));
        assert!(!asks_for_dpop_nonce(http::StatusCode::BAD_REQUEST, &h));
        assert!(!rejects_dpop_token(http::StatusCode::UNAUTHORIZED, &h));
        assert_eq!(bearer_error(&h), None);
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"DPoP error="invalid_token", algs="ES256""#),
        );
        assert!(rejects_dpop_token(http::StatusCode::UNAUTHORIZED, &h));
        assert!(!asks_for_dpop_nonce(http::StatusCode::UNAUTHORIZED, &h));
    }

    #[test]
    fn only_a_401_with_invalid_token_rejects_the_token() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        assert!(rejects_token(http::StatusCode::UNAUTHORIZED, &h));
        assert!(!rejects_token(http::StatusCode::FORBIDDEN, &h));
        h.insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Basic realm="invalid_token""#),
        );
        assert!(!rejects_token(http::StatusCode::UNAUTHORIZED, &h));
    }
}
