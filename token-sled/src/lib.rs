#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod open;
mod store;

pub use builder::SledStoreBuilder;
pub use error::SledError;
pub use open::{Quarantine, STORE_FORMAT};
pub use store::{
    Durability, RekeyReport, SledStore, SweepReport, DEFAULT_CACHE_CAPACITY,
    DEFAULT_MAX_ENCRYPTIONS_PER_KEY, DEFAULT_SWEEP_INTERVAL,
};
