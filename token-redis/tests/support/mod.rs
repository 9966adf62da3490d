//! What token-redis's tests share beyond token-testkit's Redis servers
//! (`RedisServer`, `RedisCluster`, `redis_standalone`, `redis_cluster`):
//! fresh key prefixes and raw access to a `RedisStore`'s stored bytes.
#![allow(dead_code)]

use async_trait::async_trait;
use token_core::{CacheKey, StoreError};
use token_redis::redis;
use token_redis::RedisStore;

/// A key prefix no other test uses.
pub(crate) fn fresh_prefix(label: &str) -> String {
    format!("test:{label}:{:x}:", token_core::backend::random_u128())
}

/// Raw access to a `RedisStore`'s stored bytes, through its documented
/// storage format (`<expires_at ms>:<payload>`).
pub(crate) struct Raw(pub(crate) RedisStore);

fn split(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let sep = value.iter().take(21).position(|&b| b == b':')?;
    let (head, rest) = value.split_at(sep);
    (!head.is_empty() && head.iter().all(u8::is_ascii_digit)).then(|| (head, &rest[1..]))
}

fn store_err(e: redis::RedisError) -> StoreError {
    StoreError::unavailable("raw access", e)
}

impl Raw {
    pub(crate) async fn get_value(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        let mut c = self.0.connection();
        redis::cmd("GET")
            .arg(self.0.token_key(key))
            .query_async(&mut c)
            .await
            .map_err(store_err)
    }
}

#[async_trait]
impl token_conformance::RawAccess for Raw {
    async fn write_raw(&self, key: &CacheKey, bytes: &[u8]) -> Result<(), StoreError> {
        let header = match self.get_value(key).await? {
            Some(v) => split(&v).map(|(h, _)| h.to_vec()),
            None => None,
        };
        let header = header.unwrap_or_else(|| {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                + 3_600_000;
            ms.to_string().into_bytes()
        });
        let mut value = header;
        value.push(b':');
        value.extend_from_slice(bytes);
        let mut c = self.0.connection();
        redis::cmd("SET")
            .arg(self.0.token_key(key))
            .arg(value)
            .arg("PX")
            .arg(3_600_000)
            .query_async::<()>(&mut c)
            .await
            .map_err(store_err)
    }

    async fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get_value(key)
            .await?
            .map(|v| split(&v).map_or(v.clone(), |(_, payload)| payload.to_vec())))
    }
}

/// Commands that are connection set-up or a measurement's own (`INFO`,
/// `CONFIG`), not token work.
const NOT_COUNTED: [&str; 9] = [
    "info",
    "config",
    "hello",
    "client",
    "subscribe",
    "ping",
    "select",
    "auth",
    "cluster",
];

/// Every counted command the servers on `ports` ran since their last
/// `CONFIG RESETSTAT` (scripts' own `GET`/`SET`/`PUBLISH` included), less
/// [`NOT_COUNTED`].
///
/// # Panics
///
/// When a server does not answer: a count of 0 would pass any bound.
pub(crate) fn commands(ports: &[u16]) -> u64 {
    ports.iter().map(|&port| commands_of(port)).sum()
}

/// `CONFIG RESETSTAT` on each server.
///
/// # Panics
///
/// When a server does not answer.
pub(crate) fn reset_commands(ports: &[u16]) {
    for &port in ports {
        token_testkit::redis_command(port, &["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    }
}

fn commands_of(port: u16) -> u64 {
    let info =
        token_testkit::redis_command(port, &["INFO", "commandstats"]).expect("INFO commandstats");
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let base = name.split('|').next().unwrap_or(name);
            if NOT_COUNTED.contains(&base) {
                return None;
            }
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            calls.parse::<u64>().ok()
        })
        .sum()
}
