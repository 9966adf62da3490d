//! The behaviour suite every token-cache [`CacheStore`](token_core::CacheStore)
//! must pass, as a library.
//!
//! The contract is written down in the `# Contract` section of
//! `CacheStore`; this crate proves it, one `pub async fn` per behaviour,
//! grouped by theme:
//!
//! - **basic**: get of a missing key, round trip of every field, remove,
//!   rejection of tokens without `expires_at`, newer-wins, invalidate of a
//!   rejected token only, key isolation, large and unicode values, use
//!   through `Box<dyn>` and `Arc<dyn>`.
//! - **expiry**: an expired token is never returned, with real time passing.
//! - **lease**: exclusivity (also under contention of 50 tasks), release only
//!   by the holder, expiry after a holder dies, independence from the token,
//!   and the same across two handles on shared data.
//! - **concurrency**: many tasks putting and reading at once never see a torn
//!   or older value and end with the latest token; a second handle shares the
//!   data; a shared store's invalidate is atomic and notifies other handles.
//! - **corruption**: bytes that cannot be decoded or decrypted read as a
//!   counted miss; encrypted values hide the secret and are bound to their key.
//!
//! Checks pick themselves from the store's
//! [`StoreCapabilities`](token_core::StoreCapabilities) and from what the
//! [`Fixture`] offers (a second handle, raw access to the bytes). A check that
//! does not apply is reported as *skipped*, with its reason, never passed
//! silently.
//!
//! # Running the suite for a backend
//!
//! A backend's `tests/conformance.rs` (with `harness = false`) is a few lines;
//! every check becomes a trial named `<backend>::<theme>::<check>`, so a
//! failure says which behaviour broke and `cargo test -- lease` runs a theme:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn connect() -> Arc<dyn token_core::CacheStore> { unimplemented!() }
//! use token_conformance::Fixture;
//!
//! fn main() {
//!     // Called once per check: give each a fresh, isolated store (a new
//!     // instance, or a random key prefix on a shared server).
//!     token_conformance::run_main("my-store", || async { Ok(Fixture::from_arc(connect())) })
//! }
//! ```
//!
//! Without libtest-mimic, [`run_all`] returns a [`Report`]; one behaviour can
//! also be run by hand, e.g. `token_conformance::basic::older_put_keeps_newer(&fixture)`: each
//! theme is a public module (`basic`, `expiry`, `lease`, `concurrency`,
//! `corruption`) whose file lists its own checks.
//!
//! # Writing a fixture
//!
//! - Shared stores should add [`Fixture::with_second`]: another client on the
//!   same data, so the cross-instance lease and data checks run.
//! - Serialized stores should add [`Fixture::with_raw_access`] so the
//!   corruption checks can rewrite the stored bytes.

pub mod basic;
pub mod concurrency;
pub mod corruption;
pub mod expiry;
mod failure;
mod fixture;
mod harness;
pub mod lease;
mod report;
mod support;

pub use failure::CheckFailure;
pub use fixture::{Fixture, FixtureFactory, FixtureFuture, RawAccess};
pub use harness::{
    checks, run, run_all, run_check, run_main, trials, Check, CheckFuture, CHECK_TIMEOUT,
    TRIAL_WORKER_THREADS,
};
pub use libtest_mimic;
pub use report::{CheckReport, Outcome, Report};
