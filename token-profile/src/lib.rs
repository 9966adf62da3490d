//! The tokencache profiles file as a library: one typed [`ProfileSpec`]
//! per profile (parsed from the file, overlaid by a command line's flags),
//! validation that names each problem in one sentence
//! ([`ProfileSpec::resolve`]), and one [`build`] that returns the cache,
//! the request, the store and every index entry. `tokencache get`,
//! `tokencache serve` and embedders of token-serve all build profiles
//! here, so one profile is the same cache key and store entry everywhere.
//!
//! ```no_run
//! use token_profile::{build, Naming, ProfilesFile, Stores};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let file = ProfilesFile::load("/etc/tokencache/config.toml".as_ref())?;
//! let mut stores = Stores::new();
//! let profile = file.profile("orders")?.clone().resolve(Naming::FileKeys)?;
//! let built = build(profile, &mut stores).await?;
//! let token = built.cache.get_token(&built.request).await?;
//! built.record().await?; // so `tokencache inspect` lists it
//! # let _ = token; Ok(()) }
//! ```

mod build;
mod client_auth;
mod discovery;
mod error;
mod file;
mod fingerprint;
mod key;
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
pub use paths::{cache_dir, config_dir};
pub use resolve::{Naming, Resolved};
pub use spec::{Alg, AuthMethod, Format, ManagedKind, ProfileSpec};
pub use store::{
    open as open_store, open_redis, open_sled, sled_has_data, IndexEntry, OpenedStore, StoreSpec,
    REDIS_PASSWORD_ENV,
};
pub use warm::{remove_all as remove_warm_files, write as write_warm_file, DIR as WARM_DIR};
