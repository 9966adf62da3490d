//! Reading a resource server's `WWW-Authenticate` challenge (RFC 6750 §3,
//! RFC 9110 §11.6.1): shared by the reqwest and tower middleware.

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;

/// The `error` parameter of the first challenge that has one, e.g.
/// `invalid_token` or `insufficient_scope`.
pub(crate) fn challenge_error(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(error_param)
}

/// True when the answer says the token itself was rejected: a 401 whose
/// challenge carries `error="invalid_token"`.
pub(crate) fn rejects_token(status: http::StatusCode, headers: &HeaderMap) -> bool {
    status == http::StatusCode::UNAUTHORIZED
        && challenge_error(headers).is_some_and(|e| e.eq_ignore_ascii_case("invalid_token"))
}

/// Scans `Bearer realm="x", error="invalid_token", error_description="..."`
/// for the `error` auth-param, honouring quoted strings (a description may
/// contain `error=` or commas).
fn error_param(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Read a token (a scheme or a parameter name).
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b',' | b'=') {
            i += 1;
        }
        let name = &value[start..i];
        let mut j = i;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' {
            j += 1;
            while j < bytes.len() && matches!(bytes[j], b' ' | b'\t') {
                j += 1;
            }
            let (param, next) = if j < bytes.len() && bytes[j] == b'"' {
                let mut out = String::new();
                let mut k = j + 1;
                let mut chars = value[k..].char_indices();
                let mut end = bytes.len();
                while let Some((off, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        '"' => {
                            end = k + off + 1;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                k = end;
                (out, k)
            } else {
                let s = j;
                while j < bytes.len() && !matches!(bytes[j], b' ' | b'\t' | b',') {
                    j += 1;
                }
                (value[s..j].to_owned(), j)
            };
            if name.eq_ignore_ascii_case("error") {
                return Some(param);
            }
            i = next;
        } else if i == start {
            // A lone '=' or similar: skip it.
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_error_parameter() {
        for (v, want) in [
            (
                r#"Bearer realm="api", error="invalid_token", error_description="expired""#,
                Some("invalid_token"),
            ),
            (r#"Bearer error=invalid_token"#, Some("invalid_token")),
            (
                r#"Bearer error_description="error=invalid_token, no", error="insufficient_scope""#,
                Some("insufficient_scope"),
            ),
            (
                r#"Bearer realm="a\"b", error = "invalid_token""#,
                Some("invalid_token"),
            ),
            (r#"Bearer realm="api""#, None),
            (r#"Basic realm="x""#, None),
            ("=,=\"", None),
            ("", None),
        ] {
            assert_eq!(error_param(v).as_deref(), want, "{v}");
        }
    }
}
