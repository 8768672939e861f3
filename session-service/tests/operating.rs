//! session-service as operators run it: its binary's settings, both services' `/metrics`, and the
//! Grafana dashboard's queries checked against what the services really export.

#[macro_use]
mod common;

use common::*;
use ixn_proto::testing::{binary, output, sample, scrape};
use std::collections::BTreeSet;
use std::path::PathBuf;

const BIN: &str = env!("CARGO_BIN_EXE_session-service");

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_bad_setting_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.toml");
    let (code, _, err) = output(binary(BIN, SECRET).args(["--switch-timeout-ms", "0"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--switch-timeout-ms"), "{err}");

    // A CA or a client certificate for interaction-server needs it reached over TLS.
    let (code, _, err) = output(
        binary(BIN, SECRET)
            .args(["--interaction-server", "http://127.0.0.1:1"])
            .arg("--interaction-server-ca")
            .arg(&file),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("need an https:// --interaction-server"),
        "{err}"
    );
    let (code, _, err) = output(
        binary(BIN, SECRET)
            .args(["--interaction-server", "https://127.0.0.1:1"])
            .arg("--interaction-server-ca")
            .arg(dir.path().join("missing-ca.pem")),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("(--interaction-server-ca)"), "{err}");
    std::fs::write(&file, "not a certificate").unwrap();
    let (code, _, err) = output(
        binary(BIN, SECRET)
            .args(["--interaction-server", "https://127.0.0.1:1"])
            .arg("--interaction-server-ca")
            .arg(&file),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("holds no PEM certificate"), "{err}");

    let (code, _, err) = output(binary(BIN, SECRET).env("IXN_SESSION_LISTEN", "here"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, _, err) =
        output(binary(BIN, SECRET).env("IXN_SESSION_DATABASE_URL", "postgres://host:port/db"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--database-url"), "{err}");

    std::fs::write(&file, "[platform]\n").unwrap();
    let (code, _, err) = output(binary(BIN, SECRET).env("IXN_SESSION_CONFIG", &file));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown table [platform]"), "{err}");

    let (code, _, err) = output(
        binary(BIN, SECRET)
            .env_remove("IXN_JWT_SECRET")
            .args(["--interaction-server", "http://127.0.0.1:1"]),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("IXN_JWT_SECRET"), "{err}");
}

#[test]
fn help_documents_every_setting_and_its_variable() {
    let (code, out, _) = output(binary(BIN, SECRET).arg("--help"));
    assert_eq!(code, Some(0));
    for (flag, env) in [
        ("--listen", "IXN_SESSION_LISTEN"),
        ("--data-dir", "IXN_SESSION_DATA_DIR"),
        ("--database-url", "IXN_SESSION_DATABASE_URL"),
        ("--interaction-server", "IXN_INTERACTION_SERVER"),
        ("--jwt-secret-file", "IXN_JWT_SECRET_FILE"),
        ("--connection-lost-grace-ms", "IXN_CONNECTION_LOST_GRACE_MS"),
        ("--switch-timeout-ms", "IXN_SWITCH_TIMEOUT_MS"),
        ("--config", "IXN_SESSION_CONFIG"),
        ("--metrics-listen", "IXN_SESSION_METRICS_LISTEN"),
        ("--shutdown-grace-ms", "IXN_SHUTDOWN_GRACE_MS"),
        ("--log-format", "IXN_LOG_FORMAT"),
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
        assert!(out.contains(env), "{env} missing from --help:\n{out}");
    }
}

/// The names of the series in a scrape.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `ixn_…` name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = repository().join("deploy/grafana/ixn-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its queries");
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ixn_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_export_what_the_dashboard_queries() {
    let ixn_metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ixn_metrics_addr = ixn_metrics.local_addr().unwrap();
    let live = Live::start(Some(ixn_metrics), true, |c| {
        c.arg("--config")
            .arg(repository().join("deploy/kubernetes/base/config/session-service.toml"));
    })
    .await;

    let mut a1 = live.desktop("a1");
    let session = a1.login(&["chat", "email"], true).await.unwrap();
    let mut bus = a1.connect(&session.session_id, 0).await;
    bus.next()
        .await
        .unwrap()
        .expect("the session's first event");
    let mut a2 = live.desktop("a2");
    let other = a2.login(&["chat"], false).await.unwrap();
    a2.logout(&other.session_id, None).await.unwrap();

    let sessions = live.sessions.scrape().await;
    let login = "method=\"ixn.session.v1.SessionService/Login\"";
    assert_eq!(
        sample(&sessions, "ixn_rpc_requests_total", &[login, "code=\"OK\""]),
        Some(2.0),
        "{sessions}"
    );
    assert_eq!(
        sample(&sessions, "ixn_sessions", &["state=\"active\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&sessions, "ixn_sessions", &["state=\"logging_out\""]),
        Some(0.0)
    );
    assert_eq!(
        sample(&sessions, "ixn_channels", &["state=\"ready\""]),
        Some(2.0)
    );
    assert_eq!(sample(&sessions, "ixn_subscribers", &[]), Some(1.0));
    assert!(sample(&sessions, "ixn_events_appended_total", &[]).unwrap() > 0.0);
    assert!(sample(&sessions, "ixn_store_commit_batch_size_count", &[]).unwrap() > 0.0);

    let ixn = scrape(ixn_metrics_addr).await;
    let switch_login = "method=\"ixn.interaction.v1.AgentService/Login\"";
    assert_eq!(
        sample(
            &ixn,
            "ixn_rpc_requests_total",
            &[switch_login, "code=\"OK\""]
        ),
        Some(2.0),
        "{ixn}"
    );
    // session-service's relay follows interaction-server's log: one subscriber, caught up or not.
    assert_eq!(sample(&ixn, "ixn_subscribers", &[]), Some(1.0));

    let exported: BTreeSet<String> = series(&sessions).union(&series(&ixn)).cloned().collect();
    let queried = dashboard_metrics();
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no service exports: {missing:?}\nexported: {exported:?}"
    );

    live.sessions.signal("TERM");
    let Live { sessions, ixn, .. } = live;
    assert!(sessions.wait().await.success());
    ixn.stop().await;
}
