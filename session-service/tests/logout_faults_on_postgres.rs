//! The suite of `logout_faults.rs` again, with session-service on PostgreSQL (`IXN_TEST_DATABASE_URL`, read
//! when the tests are built and when they run). Without it, the suite says that it is skipped.

#[cfg(postgres_tests)]
#[path = "logout_faults.rs"]
mod suite;

#[cfg(not(postgres_tests))]
#[test]
#[ignore = "IXN_TEST_DATABASE_URL is not set: this suite's PostgreSQL run is skipped"]
fn on_postgres() {}
