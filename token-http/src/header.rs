//! The one place an access token becomes an `Authorization` header value,
//! shared by the reqwest and tower middleware.

use http::HeaderValue;
use token_core::AccessToken;

/// Why a token could not be put in a header. Never holds the token.
#[derive(Debug, thiserror::Error)]
#[error("the access token contains characters that cannot go in an Authorization header")]
pub(crate) struct UnsendableToken;

/// `<type> <token>` (for example `Bearer abc`, `DPoP abc`) as a header
/// value marked sensitive, so hyper and reqwest never log it and HTTP/2
/// never puts it in its compression table.
pub(crate) fn authorization_value(token: &AccessToken) -> Result<HeaderValue, UnsendableToken> {
    let mut value = HeaderValue::from_str(token.authorization_header().expose())
        .map_err(|_| UnsendableToken)?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn the_value_is_the_type_and_token_marked_sensitive() {
        let value = authorization_value(&AccessToken::new("abc", SystemTime::now())).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc");
        assert!(value.is_sensitive());
    }

    #[test]
    fn a_token_with_a_newline_is_refused_without_being_quoted() {
        let e =
            authorization_value(&AccessToken::new("ab\ncd-secret", SystemTime::now())).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("cd-secret"));
    }
}
