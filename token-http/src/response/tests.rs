//! The parser's cases, and random bytes that must never make it panic.
use super::*;
use http::HeaderValue;

const TOKEN: &str = "at-3f9c1d2e-very-secret-access-token";
const REFRESH: &str = "rt-7b1a-very-secret-refresh-token";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn ok(body: &str) -> Result<TokenResponse, CredentialError> {
    parse_token_response(StatusCode::OK, &HeaderMap::new(), body.as_bytes(), t0())
}

fn lifetime(r: &TokenResponse) -> Option<Duration> {
    r.token()
        .expires_at()
        .map(|at| at.duration_since(t0()).unwrap_or_default())
}

fn with_expires_in(v: &str) -> TokenResponse {
    ok(&format!(
        r#"{{"access_token":"{TOKEN}","token_type":"Bearer","expires_in":{v}}}"#
    ))
    .expect("parses")
}

#[test]
fn expires_in_number_or_numeric_string() {
    assert_eq!(
        lifetime(&with_expires_in("3600")),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        lifetime(&with_expires_in("\"3600\"")),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        lifetime(&with_expires_in("\" 60 \"")),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        lifetime(&with_expires_in("3600.9")),
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn expires_in_absent_or_null_leaves_expiry_to_policy() {
    let r = ok(&format!(r#"{{"access_token":"{TOKEN}"}}"#)).unwrap();
    assert_eq!(r.token().expires_at(), None);
    assert_eq!(r.expires_in(), None);
    let r = with_expires_in("null");
    assert_eq!(r.token().expires_at(), None);
}

#[test]
fn zero_and_negative_expires_in_give_an_already_expired_token() {
    for (v, at_or_before) in [
        ("0", 0),
        ("-30", 30),
        ("\"-5\"", 5),
        ("0.5", 0),
        ("-1e300", 0),
    ] {
        let r = with_expires_in(v);
        let at = r.token().expires_at().expect("has expiry");
        assert!(at <= t0(), "{v}");
        if at_or_before > 0 {
            assert_eq!(
                t0().duration_since(at).unwrap(),
                Duration::from_secs(at_or_before)
            );
        }
        assert!(
            matches!(r.expires_in(), Some(ExpiresIn::AlreadyExpired(_))),
            "{v}"
        );
    }
}

#[test]
fn absurd_expires_in_is_clamped_not_a_panic() {
    for v in [
        "1e20",
        "18446744073709551615",
        "\"18446744073709551615\"",
        "1.7976931348623157e308",
        "99999999999999999999999999",
    ] {
        let r = with_expires_in(v);
        assert_eq!(
            r.expires_in(),
            Some(ExpiresIn::Seconds(MAX_EXPIRES_IN_SECS)),
            "{v}"
        );
        assert!(r.token().expires_at().is_some());
    }
    assert_eq!(
        with_expires_in(&i64::MIN.to_string()).expires_in(),
        Some(ExpiresIn::AlreadyExpired(-(MAX_EXPIRES_IN_SECS as i64)))
    );
}

#[test]
fn expires_in_that_is_not_a_number_is_an_error() {
    for v in ["\"soon\"", "true", "[1]", "{}"] {
        let body = format!(r#"{{"access_token":"{TOKEN}","expires_in":{v}}}"#);
        let e = ok(&body).unwrap_err();
        assert!(e.message().contains("expires_in"), "{e}");
        assert!(!e.to_string().contains(TOKEN));
    }
}

#[test]
fn expiry_counts_from_when_the_request_was_sent() {
    let r = with_expires_in("60");
    assert_eq!(r.token().obtained_at(), t0());
    assert_eq!(r.token().expires_at(), Some(t0() + Duration::from_secs(60)));
}

#[test]
fn token_type_is_case_insensitive_and_defaults_to_bearer() {
    for (v, want) in [
        ("bearer", "Bearer"),
        ("BEARER", "Bearer"),
        ("DPoP", "DPoP"),
        ("dpop", "DPoP"),
        ("N_A", "N_A"),
    ] {
        let r = ok(&format!(
            r#"{{"access_token":"{TOKEN}","token_type":"{v}"}}"#
        ))
        .unwrap();
        assert_eq!(r.token().token_type().as_str(), want);
    }
    let r = ok(&format!(r#"{{"access_token":"{TOKEN}"}}"#)).unwrap();
    assert_eq!(r.token().token_type(), &TokenType::Bearer);
}

#[test]
fn refresh_token_scope_and_extra_fields_are_kept() {
    let r = ok(&format!(
        r#"{{"access_token":"{TOKEN}","refresh_token":"{REFRESH}","scope":"a b","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","id_token":"x.y.z","n":1}}"#
    ))
    .unwrap();
    assert_eq!(r.token().refresh_token().map(Secret::expose), Some(REFRESH));
    assert_eq!(r.token().scope(), Some("a b"));
    assert_eq!(
        r.extra().get("issued_token_type").and_then(Value::as_str),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(r.extra().len(), 3);
    let debug = format!("{r:?}");
    assert!(
        !debug.contains(TOKEN) && !debug.contains(REFRESH) && !debug.contains("x.y.z"),
        "{debug}"
    );
}

#[test]
fn missing_or_bad_access_token_is_a_clear_error() {
    for body in [
        r#"{"token_type":"Bearer","expires_in":3600}"#,
        r#"{}"#,
        r#"{"access_token":""}"#,
        r#"{"access_token":42}"#,
        "[]",
        "\"x\"",
    ] {
        let e = ok(body).unwrap_err();
        assert!(!e.is_transient(), "{body}");
        assert_eq!(e.cause(), FailureCause::InvalidResponse, "{body}");
        assert_eq!(e.status(), Some(200), "{body}");
        assert!(e.to_string().contains("answered 200 OK"), "{e}");
    }
    let e = ok(r#"{"token_type":"Bearer","expires_in":3600}"#).unwrap_err();
    assert!(e.message().contains("no `access_token`"), "{e}");
    assert!(e.message().contains("token_type"), "{e}");
}

#[test]
fn truncated_or_non_json_success_bodies_never_quote_a_token() {
    let truncated =
        format!(r#"{{"access_token":"{TOKEN}","refresh_token":"{REFRESH}","expires_in":36"#);
    let e = ok(&truncated).unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains(TOKEN) && !text.contains(REFRESH) && !text.contains("at-3f9c"),
        "{text}"
    );
    assert!(
        text.contains("200") && text.contains("not quoted"),
        "{text}"
    );

    let html = "<html><body><h1>Proxy login required</h1></body></html>";
    let e = ok(html).unwrap_err();
    assert!(e.message().contains("Proxy login required"), "{e}");
    assert!(e.message().contains("not JSON"), "{e}");
}

#[test]
fn oauth_errors_carry_code_and_description_and_know_if_permanent() {
    for code in [
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_grant_type",
    ] {
        for status in [400u16, 401, 500] {
            let body = format!(r#"{{"error":"{code}","error_description":"because reasons"}}"#);
            let e = parse_token_response(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                body.as_bytes(),
                t0(),
            )
            .unwrap_err();
            assert!(!e.is_transient(), "{code} {status}");
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.message(), "because reasons", "{e}");
            assert_eq!(e.status(), Some(status), "{e}");
            assert_eq!(e.cause(), FailureCause::HttpStatus, "{e}");
            assert!(e.to_string().contains(&status.to_string()), "{e}");
        }
    }
    let e = parse_token_response(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        br#"{"error":"temporarily_unavailable"}"#,
        t0(),
    )
    .unwrap_err();
    assert!(e.is_transient());
}

#[test]
fn server_errors_and_429_are_transient_with_retry_after() {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
    let e =
        parse_token_response(StatusCode::TOO_MANY_REQUESTS, &h, b"slow down", t0()).unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(17)));

    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
    let e = parse_token_response(StatusCode::SERVICE_UNAVAILABLE, &h, b"", t0()).unwrap_err();
    assert!(e.is_transient());
    let after = e.retry_after().unwrap();
    assert!(
        after > Duration::from_secs(100) && after <= Duration::from_secs(120),
        "{after:?}"
    );

    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let e = parse_token_response(StatusCode::SERVICE_UNAVAILABLE, &h, b"", t0()).unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::ZERO));

    h.insert(RETRY_AFTER, HeaderValue::from_static("whenever"));
    let e = parse_token_response(
        StatusCode::BAD_GATEWAY,
        &h,
        b"<html>Bad gateway</html>",
        t0(),
    )
    .unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), None);
    assert_eq!(e.status(), Some(502));
    assert!(
        e.to_string().contains("502 Bad Gateway") && e.message().contains("Bad gateway"),
        "{e}"
    );
}

#[test]
fn html_error_pages_get_status_and_a_short_excerpt() {
    let page = format!(
        "<html><head><title>Not Found</title></head><body>{}</body></html>",
        "x".repeat(10_000)
    );
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    let e = parse_token_response(StatusCode::NOT_FOUND, &h, page.as_bytes(), t0()).unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.code(), None);
    assert!(
        e.to_string().contains("answered 404 Not Found")
            && e.message().contains("Not Found")
            && e.message().contains("text/html"),
        "{e}"
    );
    assert!(e.to_string().len() < 400, "{}", e.to_string().len());
}

#[test]
fn error_bodies_that_mention_tokens_or_known_secrets_are_not_quoted() {
    let body = format!("echo: grant_type=refresh_token&refresh_token={REFRESH}");
    let e = parse_token_response(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body.as_bytes(),
        t0(),
    )
    .unwrap_err();
    assert!(!e.to_string().contains(REFRESH), "{e}");
    let body = "echo: client_id=a&cs=hunter2-client-secret";
    let e = parse_redacting(
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body.as_bytes(),
        t0(),
        &["hunter2-client-secret"],
    )
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn an_error_description_that_echoes_a_secret_sent_is_withheld() {
    let body =
        r#"{"error":"invalid_client","error_description":"bad secret hunter2-client-secret"}"#;
    let e = parse_redacting(
        StatusCode::UNAUTHORIZED,
        &HeaderMap::new(),
        body.as_bytes(),
        t0(),
        &["hunter2-client-secret"],
    )
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(e.to_string().contains("withheld"), "{e}");
    assert_eq!(e.code(), Some("invalid_client"));
}

#[test]
fn local_clock_ahead_shortens_the_lifetime_never_lengthens() {
    let mut h = HeaderMap::new();
    // The server's clock says 10 minutes earlier than ours.
    let server = t0() - Duration::from_secs(600);
    h.insert(
        DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(server)).unwrap(),
    );
    let body = format!(r#"{{"access_token":"{TOKEN}","expires_in":3600}}"#);
    let r = parse_token_response(StatusCode::OK, &h, body.as_bytes(), t0()).unwrap();
    let skew = r.clock_skew().unwrap();
    assert_eq!(skew.local_ahead_by(), Some(Duration::from_secs(599)));
    assert_eq!(lifetime(&r), Some(Duration::from_secs(3600 - 599)));

    // Never more than half the lifetime.
    let body = format!(r#"{{"access_token":"{TOKEN}","expires_in":300}}"#);
    let r = parse_token_response(StatusCode::OK, &h, body.as_bytes(), t0()).unwrap();
    assert_eq!(lifetime(&r), Some(Duration::from_secs(150)));

    // Local clock behind: recorded, lifetime unchanged.
    h.insert(
        DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(t0() + Duration::from_secs(600))).unwrap(),
    );
    let body = format!(r#"{{"access_token":"{TOKEN}","expires_in":3600}}"#);
    let r = parse_token_response(StatusCode::OK, &h, body.as_bytes(), t0()).unwrap();
    assert_eq!(
        r.clock_skew().unwrap().local_behind_by(),
        Some(Duration::from_secs(600))
    );
    assert_eq!(lifetime(&r), Some(Duration::from_secs(3600)));

    // Within tolerance: nothing recorded.
    h.insert(
        DATE,
        HeaderValue::from_str(&httpdate::fmt_http_date(t0())).unwrap(),
    );
    let r = parse_token_response(StatusCode::OK, &h, body.as_bytes(), t0()).unwrap();
    assert_eq!(r.clock_skew(), None);
    h.insert(DATE, HeaderValue::from_static("not a date"));
    let r = parse_token_response(StatusCode::OK, &h, body.as_bytes(), t0()).unwrap();
    assert_eq!(r.clock_skew(), None);
}

/// SplitMix64: deterministic, so a failure reproduces.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn random_bytes_and_mutated_responses_never_panic() {
    let seeds: &[&[u8]] = &[
        br#"{"access_token":"abc","token_type":"bearer","expires_in":3600,"refresh_token":"r","scope":"a b"}"#,
        br#"{"access_token":"abc","expires_in":"1e20"}"#,
        br#"{"error":"invalid_client","error_description":"nope"}"#,
        b"<html>oops</html>",
    ];
    let statuses = [200u16, 201, 400, 401, 429, 500, 503, 302];
    let mut state = 0x5eed_u64;
    let mut headers = HeaderMap::new();
    headers.insert(
        DATE,
        HeaderValue::from_static("Tue, 15 Nov 1994 08:12:31 GMT"),
    );
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from_static("18446744073709551615"),
    );
    for i in 0..20_000u32 {
        let mut body: Vec<u8> = if i % 2 == 0 {
            let len = (next(&mut state) % 256) as usize;
            (0..len).map(|_| next(&mut state) as u8).collect()
        } else {
            seeds[(next(&mut state) % seeds.len() as u64) as usize].to_vec()
        };
        if !body.is_empty() {
            for _ in 0..(next(&mut state) % 4) {
                let at = (next(&mut state) % body.len() as u64) as usize;
                body[at] = b"{}[]\":,0123456789-.e \\"[(next(&mut state) % 22) as usize];
            }
        }
        let status =
            StatusCode::from_u16(statuses[(next(&mut state) % statuses.len() as u64) as usize])
                .unwrap();
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(next(&mut state) % (1 << 40));
        let _ = parse_token_response(status, &headers, &body, sent);
    }
}

#[test]
fn every_error_names_the_token_endpoint_in_one_sentence_without_space_runs() {
    let mut html = HeaderMap::new();
    html.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    let cases: Vec<(StatusCode, &HeaderMap, Vec<u8>)> = vec![
        (
            StatusCode::NOT_FOUND,
            &html,
            b"<h1>Not   Found</h1>\n\n".to_vec(),
        ),
        (
            StatusCode::UNAUTHORIZED,
            &html,
            br#"{"error":"invalid_client"}"#.to_vec(),
        ),
        (
            StatusCode::BAD_REQUEST,
            &html,
            br#"{"error":"invalid_scope","error_description":"no  such\n scope"}"#.to_vec(),
        ),
        (StatusCode::SERVICE_UNAVAILABLE, &html, Vec::new()),
        (StatusCode::OK, &html, b"<html>proxy</html>".to_vec()),
        (StatusCode::OK, &html, b"{}".to_vec()),
        (
            StatusCode::OK,
            &html,
            br#"{"access_token":"a","expires_in":"x"}"#.to_vec(),
        ),
    ];
    for (status, headers, body) in cases {
        let e = parse_token_response(status, headers, &body, t0()).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("  "), "{text}");
        assert!(text.starts_with("the token endpoint answered "), "{text}");
        assert_eq!(e.service(), Some("the token endpoint"));
        assert_eq!(e.status(), Some(status.as_u16()));
        assert!(e.cause().endpoint_answered(), "{e:?}");
    }
}

#[test]
fn an_error_that_echoes_the_request_s_basic_credentials_is_not_quoted() {
    // base64("client:hunter2"): no comparison with the secret finds it.
    let echo = "POST /token HTTP/1.1 Authorization: Basic Y2xpZW50Omh1bnRlcjI= grant_type=client_credentials";
    let json = format!(r#"{{"error":"invalid_request","error_description":"{echo}"}}"#);
    for (status, body) in [
        (StatusCode::BAD_REQUEST, json.as_str()),
        (StatusCode::BAD_REQUEST, echo),
        (StatusCode::SERVICE_UNAVAILABLE, echo),
    ] {
        let e = parse_redacting(
            status,
            &HeaderMap::new(),
            body.as_bytes(),
            t0(),
            &["hunter2"],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("Y2xpZW50Omh1bnRlcjI"), "{text}");
        assert!(!text.contains("Authorization"), "{text}");
    }
}
