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
//! also be run by hand, e.g. `token_conformance::older_put_keeps_newer(&fixture)`.
//!
//! # Writing a fixture
//!
//! - Shared stores should add [`Fixture::with_second`]: another client on the
//!   same data, so the cross-instance lease and data checks run.
//! - Serialized stores should add [`Fixture::with_raw_access`] so the
//!   corruption checks can rewrite the stored bytes.

mod basic;
mod concurrency;
mod corruption;
mod expiry;
mod failure;
mod fixture;
mod harness;
mod lease;
mod report;
mod support;

pub use basic::{
    equal_expiry_put_replaces, get_missing_is_none, invalidate_removes_only_the_rejected_token,
    invalidate_spares_a_newer_token, large_values_round_trip, newer_put_replaces_older,
    older_put_keeps_newer, put_then_get_round_trips_every_field, put_without_expiry_is_rejected,
    remove_deletes_the_token, remove_missing_key_is_ok, similar_keys_are_isolated,
    unicode_values_round_trip, works_through_arc_dyn, works_through_box_dyn,
};
pub use concurrency::{
    concurrent_distinct_keys_do_not_interfere, concurrent_puts_keep_the_latest_expiry,
    invalidate_is_atomic, invalidate_notifies_other_handles, second_handle_shares_tokens,
};
pub use corruption::{
    empty_value_reads_as_miss, encrypted_value_hides_the_secret,
    encrypted_value_is_bound_to_its_key, future_format_version_reads_as_miss,
    garbage_bytes_read_as_miss, put_replaces_a_corrupt_value, raw_access_reaches_the_stored_value,
    truncated_value_reads_as_miss,
};
pub use expiry::{
    expired_put_keeps_the_valid_token, expired_token_is_never_returned,
    token_disappears_when_it_expires,
};
pub use failure::CheckFailure;
pub use fixture::{Fixture, FixtureFactory, FixtureFuture, RawAccess};
pub use harness::{
    checks, run, run_all, run_check, run_main, trials, Check, CheckFuture, CHECK_TIMEOUT,
    TRIAL_WORKER_THREADS,
};
pub use lease::{
    lease_and_token_are_independent, lease_contention_across_handles,
    lease_exclusive_across_handles, lease_exclusive_under_contention,
    lease_expires_after_holder_dies, lease_release_by_holder_frees_it,
    lease_release_by_non_holder_is_refused, lease_second_acquire_fails_while_held,
    stale_holder_cannot_release_new_lease,
};
pub use libtest_mimic;
pub use report::{CheckReport, Outcome, Report};
