//! The contract from another gRPC stack: a Python client (grpcio, its stubs generated at run time
//! from the committed `.proto` files) plays Stop Processing A–D and the Logout's AF1 against
//! interaction-server and session-service on real sockets, and checks what each party gets against
//! the seeds. Its code is `tests/python/contract_client.py`; this test starts the services, mints
//! the tokens (the client does no JWT of its own) and runs it.
//!
//! Without grpcio, grpcio-tools and grpcio-status the test says it is skipped and passes, so that a
//! contributor without them can still run the suite; CI sets `IXN_REQUIRE_PYTHON_CLIENT=1` to make
//! their absence a failure.

mod common;

use common::{Live, platform};
use interaction_server::domain::{PlatformConfig, ReasonConfig};
use ixn_proto::auth::Role;
use std::process::{Command, Stdio};

/// The platform's logout reasons: what AF1's refusal must offer, in this order.
const LOGOUT_REASONS: &[&str] = &["end-of-shift", "break", "personal"];

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/contract_client.py"
);
const PROTO_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");

/// A platform on which the Logout's AF1 happens: a reason is required.
fn reason_required() -> PlatformConfig {
    PlatformConfig {
        logout_reason_required: Some(true),
        logout_reasons: Some(
            LOGOUT_REASONS
                .iter()
                .map(|code| ReasonConfig {
                    code: (*code).into(),
                    description: String::new(),
                    system_name: String::new(),
                })
                .collect(),
        ),
        ..platform()
    }
}

/// Whether `python3` has the three packages the client needs.
fn python_has_grpc() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_plays_the_seeds() {
    if !python_has_grpc() {
        assert!(
            std::env::var("IXN_REQUIRE_PYTHON_CLIENT").as_deref() != Ok("1"),
            "IXN_REQUIRE_PYTHON_CLIENT=1, but python3 cannot import grpc, grpc_tools and \
             grpc_status (pip install grpcio grpcio-tools grpcio-status)"
        );
        println!(
            "skipped: the Python client needs grpcio, grpcio-tools and grpcio-status \
             (pip install grpcio grpcio-tools grpcio-status)"
        );
        return;
    }

    // interaction-server in this process on the system clock (the Python client waits in real
    // time), with a platform that requires a logout reason; session-service as its own binary.
    let live = Live::start_on(reason_required(), None, false, |_| {}).await;

    // One identity per party of the seeds; the client reads each one's subject to know how the
    // events must address it.
    let party = |role: Role, sub: &str| {
        let agent = (role == Role::Agent).then_some(sub);
        serde_json::json!({ "sub": sub, "token": Live::token(role, sub, agent) })
    };
    let tokens = serde_json::json!({
        "media_server": party(Role::MediaServer, "ms1"),
        "router": party(Role::Router, "r1"),
        "reporter": party(Role::Reporter, "reports"),
        "agent": party(Role::Agent, "a1"),
    });

    let mut client = Command::new("python3");
    client
        .arg(SCRIPT)
        .env("IXN_ADDR", live.ixn_addr.to_string())
        .env("SESSION_ADDR", live.sessions.addr.to_string())
        .env("IXN_TOKENS", tokens.to_string())
        .env("IXN_LOGOUT_REASONS", LOGOUT_REASONS.join(","))
        .env("IXN_PROTO_ROOT", PROTO_ROOT)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    // The client blocks on its own bounded waits; the servers keep running on the runtime's
    // other thread meanwhile.
    let output = tokio::task::spawn_blocking(move || client.output())
        .await
        .unwrap()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let logs: Vec<String> = live
            .sessions
            .logs
            .try_iter()
            .map(|l| l.to_string())
            .collect();
        let tail = &logs[logs.len().saturating_sub(20)..];
        panic!(
            "the Python client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
             --- last lines of session-service's log\n{}",
            output.status,
            tail.join("\n")
        );
    }
    print!("{stdout}");

    live.ixn.stop().await;
}
