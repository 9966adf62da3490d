//! The servers token-cache's tests start, written once: the real
//! authorization server ([`Idp`], oidc-provider), private `redis-server`s
//! ([`RedisServer`], [`RedisCluster`]), and hyper upstreams on loopback
//! ([`HttpServer`], the recording [`Upstream`]). One rule for a missing
//! prerequisite: [`skip_or_fail`] skips loudly, or fails under CI
//! ([`in_ci`]).
//!
//! Dev-only: the crate is never published and is only ever a
//! `[dev-dependencies]` entry. Every server listens on 127.0.0.1 only, on a
//! free port ([`free_port`]), and is stopped when its handle is dropped.

mod ci;
mod idp;
mod ports;
mod redis;
mod upstream;

pub use ci::{in_ci, require, skip_or_fail};
pub use idp::Idp;
pub use ports::free_port;
pub use redis::{
    redis_cluster, redis_command, redis_standalone, RedisCluster, RedisServer,
    REDIS_CLUSTER_URLS_ENV, REDIS_URL_ENV,
};
pub use upstream::{HttpServer, Seen, Upstream};
