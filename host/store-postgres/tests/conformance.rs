//! The storage seam's conformance suite against a real PostgreSQL server
//! (`scripts/postgres start`): each check on a database of its own, "hosts"
//! as separate pools on it.

mod common;

fn fresh() -> airlock_store::Stores {
    common::fresh_stores()
}

fn peer(stores: &airlock_store::Stores) -> airlock_store::Stores {
    common::peer_stores(stores)
}

airlock_store::conformance_tests!(fresh, peer);
