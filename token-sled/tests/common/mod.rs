//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use token_core::{AccessToken, CacheKey, Credential, CredentialError, TokenRequest};

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

/// A credential that counts its calls and hands out a fixed secret.
#[derive(Debug)]
pub struct FakeIdp {
    pub secret: String,
    pub calls: Arc<AtomicU64>,
}

impl FakeIdp {
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Credential for FakeIdp {
    fn id(&self) -> &str {
        "fake-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(AccessToken::new(self.secret.clone(), SystemTime::now())
            .with_expires_in(Duration::from_secs(3600)))
    }
}

pub fn request() -> TokenRequest {
    TokenRequest::builder().scope("orders.read").build()
}
