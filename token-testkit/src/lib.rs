#![doc = include_str!("../README.md")]

mod ci;
mod dpop;
mod idp;
mod ports;
mod redis;
mod upstream;

pub use ci::{in_ci, require, skip_or_fail};
pub use dpop::{jwk_thumbprint, DpopResourceServer};
pub use idp::Idp;
pub use ports::free_port;
pub use redis::{redis_cluster, redis_command, redis_standalone, RedisCluster, RedisServer};
pub use upstream::{HttpServer, Seen, Upstream};
