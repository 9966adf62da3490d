//! Parsing a token endpoint's answer (RFC 6749 §5.1 and §5.2): pure, no I/O.
//!
//! Everything an authorization server can send ends up as either a
//! [`TokenResponse`] or a [`CredentialError`] that says whether retrying can
//! help. Nothing here panics, whatever the bytes (a fuzz target and a
//! random-bytes test hold it to that), and no error ever quotes a token.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, CONTENT_TYPE, DATE, RETRY_AFTER};
use http::StatusCode;
use serde_json::Value;
use token_core::{AccessToken, CredentialError, FailureCause, Secret, TokenType};

/// Bodies longer than this are refused: a token response is a few KiB at
/// most, and a larger body is a misconfigured endpoint or an attack on our
/// memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What errors call a token endpoint ([`CredentialError::service`]).
pub(crate) const TOKEN_ENDPOINT: &str = "the token endpoint";

/// How many characters of an error body an error message quotes.
const EXCERPT_CHARS: usize = 120;

/// A differing `Date` header is only believed beyond this: the header has a
/// resolution of one second and the request spends time in flight.
const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

/// `expires_in` values above this many seconds are clamped (about 100
/// years); the engine's policy caps lifetimes far below that anyway.
const MAX_EXPIRES_IN_SECS: u64 = 100 * 365 * 24 * 3600;

/// Error codes (RFC 6749 §5.2 and extensions) that repeat until someone
/// changes the configuration: retrying them only burdens the server.
const PERMANENT_CODES: &[&str] = &[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_target",
    "access_denied",
];

/// Words that make a body or an `error_description` too dangerous to quote
/// in an error: it may carry a token or a credential. `authorization`,
/// `basic ` and `bearer ` catch a server that echoes the request's headers
/// (Basic client credentials are base64, which no comparison with the
/// secret itself finds); `dpop` a proof echoed back.
const NEVER_QUOTE: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "assertion",
    "secret",
    "password",
    "authorization",
    "basic ",
    "bearer ",
    "dpop",
];

/// The difference between the local clock and the authorization server's,
/// measured from the token response's `Date` header.
///
/// Positive when the local clock is ahead of the server's. Only differences
/// beyond the header's one-second resolution plus a small allowance for
/// time in flight are recorded, and the estimate is a lower bound: the true
/// difference is at least this large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSkew {
    millis: i64,
}

impl ClockSkew {
    /// A skew of `millis` milliseconds; positive when the local clock is
    /// ahead.
    pub fn from_millis(millis: i64) -> Self {
        Self { millis }
    }

    /// The skew in milliseconds; positive when the local clock is ahead.
    pub fn as_millis(&self) -> i64 {
        self.millis
    }

    /// How far the local clock is ahead of the server's, if it is.
    pub fn local_ahead_by(&self) -> Option<Duration> {
        u64::try_from(self.millis)
            .ok()
            .filter(|m| *m > 0)
            .map(Duration::from_millis)
    }

    /// How far the local clock is behind the server's, if it is.
    pub fn local_behind_by(&self) -> Option<Duration> {
        (self.millis < 0).then(|| Duration::from_millis(self.millis.unsigned_abs()))
    }

    /// The size of the difference, in whichever direction.
    pub fn magnitude(&self) -> Duration {
        Duration::from_millis(self.millis.unsigned_abs())
    }
}

impl fmt::Display for ClockSkew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.magnitude().as_secs_f64();
        if self.millis >= 0 {
            write!(
                f,
                "local clock at least {secs:.1}s ahead of the authorization server"
            )
        } else {
            write!(
                f,
                "local clock at least {secs:.1}s behind the authorization server"
            )
        }
    }
}

/// A successful token response (RFC 6749 §5.1).
///
/// The token's `obtained_at` is the moment the request was sent and its
/// expiry is counted from then, so time in flight shortens the lifetime and
/// never lengthens it. When the server sent no `expires_in` the expiry is
/// left unset and the cache's policy assumes one.
#[derive(Clone)]
pub struct TokenResponse {
    token: AccessToken,
    expires_in: Option<ExpiresIn>,
    extra: BTreeMap<String, Value>,
    clock_skew: Option<ClockSkew>,
}

/// What the server said about the token's lifetime, after normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiresIn {
    /// A lifetime in seconds, clamped to about 100 years.
    Seconds(u64),
    /// Zero or negative: the token was already expired when issued. The
    /// token carries an `expires_at` at or before `obtained_at`, which the
    /// cache refuses with a clear error instead of serving it.
    AlreadyExpired(i64),
}

impl TokenResponse {
    /// The token, ready for the cache (its refresh token, if the server sent
    /// one, attached).
    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// Takes the token.
    pub fn into_token(self) -> AccessToken {
        self.token
    }

    /// The normalised `expires_in`, or `None` when the server did not say.
    pub fn expires_in(&self) -> Option<ExpiresIn> {
        self.expires_in
    }

    /// Every field besides `access_token`, `token_type`, `expires_in`,
    /// `refresh_token` and `scope` (for example `issued_token_type` of a
    /// token exchange, or an `id_token`). Values may be sensitive: `Debug`
    /// shows only the names.
    pub fn extra(&self) -> &BTreeMap<String, Value> {
        &self.extra
    }

    /// The clock difference measured from the `Date` header, when it was
    /// beyond the tolerance.
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        self.clock_skew
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &self.token)
            .field("expires_in", &self.expires_in)
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .field("clock_skew", &self.clock_skew)
            .finish()
    }
}

/// Parses what a token endpoint answered.
///
/// - `status`, `headers` and `body` are the HTTP response; `sent_at` is the
///   local wall-clock moment the request was sent.
/// - A 2xx with a JSON object holding a string `access_token` is a success.
///   `expires_in` may be a number or a numeric string; absent or `null`
///   means unknown (the cache's policy assumes a lifetime); zero or negative
///   gives a token that is already expired (the cache refuses it with a
///   clear error); huge values such as `1e20` or `u64::MAX` are clamped.
///   `token_type` is case-insensitive and defaults to `Bearer` when absent.
/// - Otherwise the result is a [`CredentialError`]: RFC 6749 §5.2 error
///   codes with their description (`invalid_client`, `invalid_grant`,
///   `invalid_scope`, `unauthorized_client`, `unsupported_grant_type` and
///   `invalid_request` are permanent); 5xx, 429 and 408 are transient, with
///   `Retry-After` in seconds or as an HTTP date; anything else that is not
///   a token (HTML, truncated JSON, a 2xx without `access_token`) is an
///   error naming the status with a short excerpt of the body. The excerpt
///   is never taken from a 2xx body that looks like JSON, nor from any body
///   that mentions a token or secret field, so no token is ever quoted.
///
/// # Clock skew
///
/// When the `Date` header shows that the local clock is ahead of the
/// server's, the lifetime is shortened by that difference (by at most half
/// the lifetime). The reason: `expires_at` is wall-clock time stored in
/// shared caches and read by other machines; a local clock running ahead
/// would otherwise push `expires_at` past the moment the token really
/// expires, as other (correct) clocks see it. A local clock that is behind
/// only makes the token look shorter-lived elsewhere, which is safe, so it
/// is recorded but changes nothing. A skewed server can therefore never make
/// a token look longer-lived.
pub fn parse_token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent_at: SystemTime,
) -> Result<TokenResponse, CredentialError> {
    parse_redacting(status, headers, body, sent_at, &[])
}

/// [`parse_token_response`], also refusing to quote any body that contains
/// one of `secrets` (the credential's own client secret, refresh token or
/// subject token, which a misbehaving server might echo).
pub(crate) fn parse_redacting(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    sent_at: SystemTime,
    secrets: &[&str],
) -> Result<TokenResponse, CredentialError> {
    let json = serde_json::from_slice::<Value>(body).ok();
    if !status.is_success() {
        return Err(error_response(status, headers, body, json, secrets));
    }
    let invalid = |detail: String| invalid_response(status, detail);
    let Some(Value::Object(mut fields)) = json else {
        let what = if json.is_some() {
            "a JSON value that is not an object"
        } else {
            "a body that is not JSON (truncated, or an error page)"
        };
        return Err(invalid(format!(
            "{what}, {}",
            describe_body(status, headers, body, secrets)
        )));
    };
    let access_token = match fields.remove("access_token") {
        Some(Value::String(s)) if !s.is_empty() => Secret::new(s),
        Some(_) => {
            return Err(invalid(
                "an `access_token` that is not a non-empty string".to_owned(),
            ))
        }
        None => {
            return Err(invalid(format!(
                "no `access_token` {}",
                field_names(&fields)
            )))
        }
    };
    let mut token = AccessToken::new(access_token, sent_at);
    match fields.remove("token_type") {
        Some(Value::String(t)) if !t.trim().is_empty() => {
            token = token.with_token_type(TokenType::parse(t.trim()));
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(invalid("a `token_type` that is not a string".to_owned())),
    }
    let expires_in = match fields.remove("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_expires_in(&v).ok_or_else(|| {
            invalid(format!(
                "an `expires_in` that is not a number of seconds ({})",
                json_kind(&v)
            ))
        })?),
    };
    let clock_skew = measure_skew(headers, sent_at);
    match expires_in {
        Some(ExpiresIn::Seconds(secs)) => {
            let lifetime = Duration::from_secs(secs);
            let lifetime = match clock_skew.and_then(|s| s.local_ahead_by()) {
                Some(ahead) => lifetime.saturating_sub(ahead.min(lifetime / 2)),
                None => lifetime,
            };
            token = token.with_expires_in(lifetime);
        }
        Some(ExpiresIn::AlreadyExpired(secs)) => {
            let before = Duration::from_secs(secs.unsigned_abs());
            let at = sent_at.checked_sub(before).unwrap_or(sent_at);
            token = token.with_expires_at(at);
        }
        None => {}
    }
    match fields.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => token = token.with_refresh_token(Secret::new(s)),
        _ => {}
    }
    match fields.remove("scope") {
        Some(Value::String(s)) => token = token.with_scope(s),
        Some(Value::Array(items)) => {
            // Not RFC 6749, but some servers send a list.
            let scope: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            token = token.with_scope(scope.join(" "));
        }
        _ => {}
    }
    Ok(TokenResponse {
        token,
        expires_in,
        extra: fields.into_iter().collect(),
        clock_skew,
    })
}

/// `expires_in` as the server sent it: a JSON number (integer or float) or
/// a string holding one. Clamped; `None` when it is not a number at all.
fn parse_expires_in(value: &Value) -> Option<ExpiresIn> {
    let number = match value {
        Value::Number(n) => n.clone(),
        Value::String(s) => serde_json::from_str::<serde_json::Number>(s.trim()).ok()?,
        _ => return None,
    };
    if let Some(u) = number.as_u64() {
        return Some(if u == 0 {
            ExpiresIn::AlreadyExpired(0)
        } else {
            ExpiresIn::Seconds(u.min(MAX_EXPIRES_IN_SECS))
        });
    }
    if let Some(i) = number.as_i64() {
        // Only negative values reach here.
        return Some(ExpiresIn::AlreadyExpired(
            i.max(-(MAX_EXPIRES_IN_SECS as i64)),
        ));
    }
    let f = number.as_f64()?;
    if !f.is_finite() {
        return None;
    }
    Some(if f <= 0.0 || f < 1.0 {
        // Fractions of a second round down to an unusable token.
        ExpiresIn::AlreadyExpired(f.max(-(MAX_EXPIRES_IN_SECS as f64)) as i64)
    } else if f >= MAX_EXPIRES_IN_SECS as f64 {
        ExpiresIn::Seconds(MAX_EXPIRES_IN_SECS)
    } else {
        // In range and positive: the cast truncates, it cannot overflow.
        ExpiresIn::Seconds(f as u64)
    })
}

/// The local clock's offset from the `Date` header's, as a lower bound.
///
/// The server stamped `Date` after our request was sent, and truncated it
/// to the second: its true time then was in `[date, date + 1 s)`. So the
/// local clock is ahead by at least `sent_at - (date + 1 s)`. Going the
/// other way, without the receive time, `date - sent_at` overstates how far
/// behind we are by the time in flight, which is why a tolerance applies.
fn measure_skew(headers: &HeaderMap, sent_at: SystemTime) -> Option<ClockSkew> {
    let date = headers.get(DATE)?.to_str().ok()?;
    let server = httpdate::parse_http_date(date).ok()?;
    let millis = match sent_at.duration_since(server) {
        Ok(ahead) => {
            let ahead = ahead.saturating_sub(Duration::from_secs(1));
            if ahead <= SKEW_TOLERANCE {
                return None;
            }
            i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX)
        }
        Err(e) => {
            let behind = e.duration();
            if behind <= SKEW_TOLERANCE {
                return None;
            }
            -i64::try_from(behind.as_millis()).unwrap_or(i64::MAX)
        }
    };
    Some(ClockSkew::from_millis(millis))
}

/// A success status whose body is not a usable token response: permanent,
/// the endpoint will answer the same until someone fixes it.
fn invalid_response(status: StatusCode, detail: String) -> CredentialError {
    CredentialError::permanent(detail)
        .with_cause(FailureCause::InvalidResponse)
        .with_status(status.as_u16())
        .with_service(TOKEN_ENDPOINT)
}

/// Turns a non-2xx answer into an error that says whether to retry.
fn error_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    json: Option<Value>,
    secrets: &[&str],
) -> CredentialError {
    let retry_after = retry_after(headers);
    let mut code = None;
    let mut description = None;
    if let Some(Value::Object(fields)) = &json {
        code = fields
            .get("error")
            .and_then(Value::as_str)
            .map(|s| printable(s, 64));
        description = fields
            .get("error_description")
            .and_then(Value::as_str)
            .map(|s| printable(s, 300));
    }
    // A server that echoes the request in its error (the client secret, a
    // refresh token) must not put a secret in our error message.
    let quotes_a_secret = |text: &String| {
        let lower = text.to_ascii_lowercase();
        NEVER_QUOTE.iter().any(|w| lower.contains(w))
            || secrets
                .iter()
                .any(|secret| !secret.is_empty() && text.contains(secret))
    };
    if description.as_ref().is_some_and(quotes_a_secret) {
        description = Some("(withheld: it quotes a secret that was sent)".to_owned());
    }
    let transient_status = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    let permanent_code = code
        .as_deref()
        .is_some_and(|c| PERMANENT_CODES.contains(&c));
    let transient = !permanent_code
        && (transient_status
            || matches!(
                code.as_deref(),
                Some("temporarily_unavailable" | "server_error" | "slow_down")
            ));
    // The code is a field of its own; the message is what the IdP said
    // about it, or what the body was when it said nothing in OAuth terms.
    let mut message = match (&code, description) {
        (Some(_), Some(d)) => d,
        (Some(_), None) => String::new(),
        (None, _) => describe_body(status, headers, body, secrets),
    };
    if code.is_none() && json.is_none() && !body.is_empty() && status.is_client_error() {
        message.push_str(" (not an OAuth error response)");
    }
    let mut error = if transient {
        CredentialError::transient(message)
    } else {
        CredentialError::permanent(message)
    }
    .with_cause(FailureCause::HttpStatus)
    .with_status(status.as_u16())
    .with_service(TOKEN_ENDPOINT);
    if let Some(c) = code {
        error = error.with_code(c);
    }
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `<n> bytes of <content type>: "<excerpt>"`, or without the excerpt
/// when quoting the body could reveal a token or a secret.
fn describe_body(status: StatusCode, headers: &HeaderMap, body: &[u8], secrets: &[&str]) -> String {
    if body.is_empty() {
        return "an empty body".to_owned();
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| format!("of {}", printable(s, 60)))
        .unwrap_or_else(|| "without a content type".to_owned());
    let mut out = format!("{} bytes {content_type}", body.len());
    match excerpt(status, body, secrets) {
        Some(text) => out.push_str(&format!(": \"{text}\"")),
        None => out.push_str(", not quoted because it may hold a token or secret"),
    }
    out
}

/// A short, printable excerpt of `body`, or `None` when quoting it is not
/// safe: a 2xx body that looks like JSON (a truncated token response), or
/// any body that mentions a token field, a secret field or a known secret.
fn excerpt(status: StatusCode, body: &[u8], secrets: &[&str]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let first = text.trim_start().chars().next();
    if status.is_success() && matches!(first, Some('{' | '[' | '"')) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if NEVER_QUOTE.iter().any(|w| lower.contains(w))
        || secrets.iter().any(|s| !s.is_empty() && text.contains(s))
    {
        return None;
    }
    Some(printable(&text, EXCERPT_CHARS))
}

/// `s` with whitespace runs collapsed, control characters dropped and
/// the length capped (with an ellipsis).
fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for ch in s.trim().chars() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if ch.is_whitespace() {
            if !last_space {
                out.push(' ');
                count += 1;
            }
            last_space = true;
        } else if !ch.is_control() {
            out.push(ch);
            count += 1;
            last_space = false;
        }
    }
    out
}

fn field_names(fields: &serde_json::Map<String, Value>) -> String {
    if fields.is_empty() {
        return "(an empty JSON object)".to_owned();
    }
    let names: Vec<String> = fields.keys().take(10).map(|k| printable(k, 40)).collect();
    format!("(fields: {})", names.join(", "))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
