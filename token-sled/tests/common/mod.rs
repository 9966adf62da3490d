//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use token_core::test_util::FakeIdp;
use token_core::{AccessToken, CacheKey, TokenRequest};

/// A token that expires in an hour.
pub fn token(secret: &str) -> AccessToken {
    AccessToken::new(secret, SystemTime::now())
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_at(SystemTime::now() + Duration::from_secs(1800))
}

pub fn key(name: &str) -> CacheKey {
    CacheKey::from_raw(format!("tc1|test|{name}"))
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// token-core's shared fake IdP, handing out `secret` (tokens that last an
/// hour) and counting its calls.
pub fn fake_idp(secret: &str) -> Arc<FakeIdp> {
    Arc::new(FakeIdp::new().with_id("fake-idp").with_secret(secret))
}

pub fn request() -> TokenRequest {
    TokenRequest::builder().scope("orders.read").build()
}
