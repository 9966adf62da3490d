//! `Unavailable::from_engine`: the 503 cause code comes from the error's
//! fields, never from its text.

use std::time::Duration;

use token_cache::{CredentialError, Error, FailureCause};

use super::Unavailable;

fn code(c: CredentialError) -> &'static str {
    Unavailable::from_engine(&Error::Credential(c)).code
}

/// A permanent or transient error as token-http builds it for an answer.
fn answered(status: u16, transient: bool) -> CredentialError {
    let e = if transient {
        CredentialError::transient("detail")
    } else {
        CredentialError::permanent("detail")
    };
    e.with_cause(FailureCause::HttpStatus)
        .with_status(status)
        .with_service("the token endpoint")
        .with_endpoint("http://idp/token")
}

#[test]
fn a_permanent_oauth_error_is_idp_rejected() {
    assert_eq!(
        code(answered(401, false).with_code("invalid_client")),
        "idp_rejected"
    );
    assert_eq!(code(answered(404, false)), "idp_rejected");
}

#[test]
fn transient_failures_are_idp_unavailable_and_timeouts_idp_timeout() {
    assert_eq!(code(answered(503, true)), "idp_unavailable");
    let refused =
        CredentialError::transient("connection refused").with_cause(FailureCause::Connect);
    assert_eq!(code(refused), "idp_unavailable");
    let slow = CredentialError::transient("waited 8s").with_cause(FailureCause::Timeout);
    assert_eq!(code(slow), "idp_timeout");
    let engine = Unavailable::from_engine(&Error::FetchTimeout(Duration::from_secs(10)));
    assert_eq!(engine.code, "idp_timeout");
}

#[test]
fn an_answer_that_is_not_a_token_response_is_idp_invalid_response() {
    let html = answered(200, false).with_cause(FailureCause::InvalidResponse);
    assert_eq!(code(html), "idp_invalid_response");
}

#[test]
fn the_code_ignores_misleading_text() {
    let says_timeout = CredentialError::permanent("timed out; 503 Service Unavailable")
        .with_cause(FailureCause::HttpStatus)
        .with_status(400)
        .with_code("invalid_scope");
    assert_eq!(code(says_timeout), "idp_rejected");
    let says_rejected = CredentialError::transient("invalid_client: rejected");
    assert_eq!(code(says_rejected), "idp_unavailable");
}

#[test]
fn the_description_is_the_errors_sentence_without_space_runs() {
    let e = Unavailable::from_engine(&Error::Credential(
        answered(401, false).with_code("invalid_client"),
    ));
    assert_eq!(
        e.cause,
        "the token endpoint at http://idp/token answered 401 Unauthorized: invalid_client: detail"
    );
    assert!(!e.cause.contains("  "));
}

#[test]
fn an_answer_without_an_oauth_error_is_named_but_its_body_is_not_quoted() {
    let echo = CredentialError::permanent(
        "120 bytes of text/plain: \"POST /token Authorization: Basic Y2xpZW50OnMzY3JldA==\"",
    )
    .with_cause(FailureCause::HttpStatus)
    .with_status(400)
    .with_service("the token endpoint")
    .with_endpoint("http://idp/token");
    let e = Unavailable::from_engine(&Error::Credential(echo));
    assert!(
        !e.cause.contains("Y2xp") && !e.cause.contains("Basic"),
        "{}",
        e.cause
    );
    assert!(
        e.cause.contains("400 Bad Request") && e.cause.contains("http://idp/token"),
        "{}",
        e.cause
    );
    assert!(e.cause.contains("not quoted"), "{}", e.cause);
}

#[test]
fn a_503_carries_its_metric_cause_refused_or_unreachable() {
    use crate::metrics::Cause;
    let cause = |c: CredentialError| {
        let u = Unavailable::from_engine(&Error::Credential(c));
        u.response("p").extensions().get::<Cause>().copied()
    };
    assert_eq!(
        cause(answered(401, false).with_code("invalid_client")),
        Some(Cause::IDP_REFUSED)
    );
    assert_eq!(cause(answered(503, true)), Some(Cause::IDP_UNREACHABLE));
    let refused =
        CredentialError::transient("connection refused").with_cause(FailureCause::Connect);
    assert_eq!(cause(refused), Some(Cause::IDP_UNREACHABLE));
    let timeout = Unavailable::from_engine(&Error::FetchTimeout(Duration::from_secs(1)));
    assert_eq!(timeout.metric_cause(), Cause::IDP_UNREACHABLE);
}
