#![doc = include_str!("../README.md")]

mod expiry;
mod store;

pub use store::{MemoryStore, MemoryStoreBuilder, DEFAULT_MAX_ENTRIES};
