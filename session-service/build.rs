//! Whether the tests of the shared store run: with `IXN_TEST_DATABASE_URL` set when the tests are
//! built, the `*_on_postgres` suites run against it; without it they say that they are skipped.

fn main() {
    println!("cargo::rerun-if-env-changed=IXN_TEST_DATABASE_URL");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("IXN_TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
