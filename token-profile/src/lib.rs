#![doc = include_str!("../README.md")]

mod build;
mod client_auth;
mod discovery;
mod error;
mod file;
mod fingerprint;
mod key;
mod owner;
mod paths;
mod resolve;
mod spec;
mod store;
mod warm;

pub use build::{build, check, token_request, warm_token, Built, Stores};
pub use discovery::{forget_all as forget_discovered_endpoints, EndpointSource};
pub use error::{set_notices, Error, ErrorKind, Missing, Notice, NoticeLevel, Notices};
pub use file::{config_path, ProfilesFile, CONFIG_ENV};
pub use fingerprint::FingerprintKey;
pub use key::{KeySource, KEY_ENV, KEY_FILE_ENV};
pub use owner::{held_by_serve, FILE as OWNER_FILE};
pub use paths::{cache_dir, config_dir, set_state_dir, state_dir, STATE_DIR_ENV};
pub use resolve::{readable_by_others, Naming, Resolved};
pub use spec::{Alg, AuthMethod, Format, ManagedKind, ProfileSpec};
pub use store::{
    open as open_store, open_redis, open_redis_with, open_sled, open_with as open_store_with,
    sled_has_data, IndexEntry, OpenedStore, RedisStartup, StoreSpec, REDIS_PASSWORD_ENV,
};
pub use warm::{remove_all as remove_warm_files, write as write_warm_file, DIR as WARM_DIR};
