//! Feeds arbitrary bytes to the token response parser: the first bytes pick
//! the status, a `Date` and a `Retry-After` header and the send time, the
//! rest is the body. The parser must never panic, and a successful parse
//! must never yield an expiry before `obtained_at` unless the server said
//! the token was already expired.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use token_http::{parse_token_response, ExpiresIn};

const DATES: &[&str] = &[
    "Tue, 15 Nov 1994 08:12:31 GMT",
    "Sun, 06 Nov 2094 08:49:37 GMT",
    "garbage",
];
const RETRY: &[&str] = &["0", "120", "18446744073709551615", "Wed, 21 Oct 2015 07:28:00 GMT", "-1"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = StatusCode::from_u16(100 + u16::from(data[0]) % 500).unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    if data[1] & 1 == 1 {
        headers.insert("date", HeaderValue::from_static(DATES[usize::from(data[1] >> 1) % DATES.len()]));
    }
    if data[2] & 1 == 1 {
        headers.insert("retry-after", HeaderValue::from_static(RETRY[usize::from(data[2] >> 1) % RETRY.len()]));
    }
    let sent_at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(data[3]) << 28);
    if let Ok(response) = parse_token_response(status, &headers, &data[4..], sent_at) {
        let token = response.token();
        if let (Some(at), Some(ExpiresIn::Seconds(_))) = (token.expires_at(), response.expires_in()) {
            assert!(at > token.obtained_at());
        }
    }
});
