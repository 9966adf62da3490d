//! The token-conformance suite, run on `MemoryStore`.

use token_conformance::Fixture;
use token_memory::MemoryStore;

fn main() {
    token_conformance::run_main("memory", || async {
        // A fresh store per check; its clone is a second handle on the same data.
        let store = MemoryStore::default();
        Ok(Fixture::new(store.clone()).with_second(store))
    })
}
