//! The server as operators run it: the binary itself, its settings from flags, the environment and
//! the TOML file, `/metrics`, and signals. Each test drives a real child process.

mod common;

use common::*;
use ixn_proto::event::interaction_id;
use ixn_proto::testing::output;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const BIN: &str = env!("CARGO_BIN_EXE_interaction-server");

#[test]
fn a_bad_setting_exits_64_naming_it_wherever_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("server.toml");

    let (code, _, err) = output(binary(BIN).args(["--listen", "nowhere"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--listen"), "{err}");

    let (code, _, err) = output(
        binary(BIN)
            .arg("--data-dir")
            .arg(&data)
            .env("IXN_SHUTDOWN_GRACE_MS", "soon"),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--shutdown-grace-ms"), "{err}");

    std::fs::write(&file, "metrics_listne = \"127.0.0.1:0\"\n").unwrap();
    let (code, _, err) = output(binary(BIN).arg("--config").arg(&file));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown setting `metrics_listne`"), "{err}");

    std::fs::write(&file, "metrics_listen = \"everywhere\"\n").unwrap();
    let (code, _, err) = output(binary(BIN).env("IXN_CONFIG", &file));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--metrics-listen") && err.contains("server.toml"),
        "{err}"
    );

    // The transport's limits: a connection must be allowed a stream, a caller's burst a call.
    std::fs::write(&file, "max_concurrent_streams = 0\n").unwrap();
    let (code, _, err) = output(binary(BIN).arg("--config").arg(&file));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--max-concurrent-streams"), "{err}");
    let (code, _, err) =
        output(binary(BIN).args(["--rate-limit-per-s", "10", "--rate-limit-burst", "0"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--rate-limit-burst"), "{err}");
    let (code, _, err) = output(binary(BIN).args(["--rate-limit-burst", "10"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("needs --rate-limit-per-s"), "{err}");

    // TLS: a certificate needs its key, and both must be usable.
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let (code, _, err) = output(binary(BIN).arg("--tls-cert").arg(&cert));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    let (code, _, err) = output(
        binary(BIN)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&cert),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    let (code, _, err) = output(
        binary(BIN)
            .arg("--tls-cert")
            .arg(dir.path().join("missing.pem"))
            .arg("--tls-key")
            .arg(&cert),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("missing.pem (--tls-cert)"), "{err}");

    let (code, _, err) = output(binary(BIN).env("IXN_DATABASE_URL", "postgres://host:port/db"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--database-url"), "{err}");

    // Replicas check tokens against one secret: a shared store needs it given, not generated.
    let (code, _, err) = output(
        binary(BIN)
            .env_remove("IXN_JWT_SECRET")
            .arg("--data-dir")
            .arg(&data)
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/none"]),
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("signing secret must be given"), "{err}");

    std::fs::write(&file, "[platform]\ninvite_timeout_ms = \"long\"\n").unwrap();
    let (code, _, err) = output(binary(BIN).arg("--config").arg(&file));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("invite_timeout"), "{err}");

    assert!(
        !data.exists(),
        "nothing is created before the settings are checked"
    );
}

#[test]
fn help_documents_every_setting_and_its_variable() {
    let (code, out, _) = output(binary(BIN).arg("--help"));
    assert_eq!(code, Some(0));
    for (flag, env) in [
        ("--listen", "IXN_LISTEN"),
        ("--data-dir", "IXN_DATA_DIR"),
        ("--database-url", "IXN_DATABASE_URL"),
        ("--jwt-secret-file", "IXN_JWT_SECRET_FILE"),
        ("--config", "IXN_CONFIG"),
        ("--metrics-listen", "IXN_METRICS_LISTEN"),
        ("--shutdown-grace-ms", "IXN_SHUTDOWN_GRACE_MS"),
        ("--log-format", "IXN_LOG_FORMAT"),
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
        assert!(out.contains(env), "{env} missing from --help:\n{out}");
    }
}

/// The file fills in what neither a flag nor a variable set; a variable wins over the file.
#[tokio::test]
async fn metrics_are_served_from_the_settings_file_and_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        "metrics_listen = \"127.0.0.1:0\"\nshutdown_grace_ms = 1\n[platform]\ndefault_capacity = 5\n",
    )
    .unwrap();
    let mut command = binary(BIN);
    command
        .arg("--config")
        .arg(&file)
        .env("IXN_SHUTDOWN_GRACE_MS", "7000");
    let server = start_process(&dir.path().join("data"), command, true);

    let mut media = process_client(&server, Who::media_server("m1")).await;
    let mut reporter = process_client(&server, Who::reporter()).await;
    let mut feed = reporter.subscribe(0).await;
    media.submit("q", "chat").await.unwrap();
    let stopped = media.submit("q", "chat").await.unwrap();
    media.stop(&stopped.interaction_id).await.unwrap();
    let missing = media
        .get(&uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // The reporter's stream has everything once it has seen the stop.
    while !is(&feed.next().await.unwrap().body, "ProcessingStopped") {}

    let text = server.scrape().await;
    let stop = "method=\"ixn.interaction.v1.InteractionService/StopProcessing\"";
    let submit = "method=\"ixn.interaction.v1.InteractionService/Submit\"";
    let get = "method=\"ixn.interaction.v1.InteractionService/Get\"";
    assert_eq!(
        sample(&text, "ixn_rpc_requests_total", &[stop, "code=\"OK\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ixn_rpc_requests_total", &[submit, "code=\"OK\""]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "ixn_rpc_requests_total",
            &[get, "code=\"NOT_FOUND\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "ixn_rpc_duration_seconds_count",
            &[stop, "code=\"OK\""]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "ixn_events_appended_total", &[]), Some(3.0));
    assert_eq!(sample(&text, "ixn_subscribers", &[]), Some(1.0));
    assert_eq!(sample(&text, "ixn_subscriber_lag_events", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "ixn_interactions", &["state=\"queued\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "ixn_interactions", &["state=\"stopped\""]),
        Some(1.0)
    );
    let commits = sample(&text, "ixn_store_commit_duration_seconds_count", &[]).unwrap();
    assert!(
        (1.0..=3.0).contains(&commits),
        "three commands, batched or not: {commits}"
    );
    assert_eq!(
        sample(&text, "ixn_store_commit_batch_size_sum", &[]),
        Some(3.0)
    );
    assert!(text.contains("# TYPE ixn_rpc_duration_seconds histogram"));

    // The variable, not the file's 1 ms, set the grace: the drain logs it.
    server.signal("TERM");
    let grace = server
        .logs
        .iter()
        .find(|l| l["fields"]["message"] == "draining")
        .expect("the drain is logged");
    assert_eq!(grace["fields"]["grace"], "7s");
    assert!(server.wait().await.success());
}

/// SIGTERM under load: health turns NOT_SERVING, streams end with UNAVAILABLE, in-flight calls
/// finish, the process exits 0 — and every change a client was told succeeded is there after a
/// restart, in a log without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_process(dir.path(), binary(BIN), false);
    let mut reporter = process_client(&server, Who::reporter()).await;
    let mut feed = reporter.subscribe(0).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let (enough_tx, mut enough) = tokio::sync::watch::channel(0usize);
    let mut load = Vec::new();
    for n in 0..8 {
        let mut media = process_client(&server, Who::media_server(&format!("m{n}"))).await;
        let acked = acked.clone();
        let enough_tx = enough_tx.clone();
        load.push(tokio::spawn(async move {
            loop {
                match media.submit("q", "chat").await {
                    Ok(i) => {
                        let mut acked = acked.lock().unwrap();
                        acked.push(i.interaction_id);
                        enough_tx.send_replace(acked.len());
                    }
                    Err(status) => return status,
                }
            }
        }));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = |s: Option<HealthCheckResponse>| ServingStatus::try_from(s.unwrap().status);
    assert_eq!(
        status(health.message().await.unwrap()),
        Ok(ServingStatus::Serving)
    );
    enough.wait_for(|n| *n >= 200).await.unwrap();
    server.signal("TERM");
    assert_eq!(
        status(health.message().await.unwrap()),
        Ok(ServingStatus::NotServing),
        "load balancers are told first"
    );
    // A watch is a call in flight like any other: the drain would wait for it.
    drop(health);

    // The stream ends with a status a client resumes from.
    let mut seen = Vec::new();
    let mut ids = BTreeSet::new();
    let ended = loop {
        match feed.stream.message().await {
            Ok(Some(e)) => {
                seen.push(e.sequence);
                ids.extend(e.body.as_ref().and_then(interaction_id).map(str::to_owned));
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    for task in load {
        let status = task.await.unwrap();
        // A call sent as the server's graceful GOAWAY crossed it was never taken; the client's
        // HTTP/2 stack reports that as INTERNAL with the GOAWAY as its source.
        let crossed_goaway = status.code() == Code::Internal
            && format!("{status:?}").contains("GoAway(b\"\", NO_ERROR, Remote)");
        assert!(
            crossed_goaway
                || matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
            "a refused call says so: {status:?}"
        );
    }
    let status = server.wait().await;
    assert!(status.success(), "exit {status:?}");

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let server = start_process(dir.path(), binary(BIN), false);
    let mut admin = process_client(&server, Who::admin()).await;
    for id in &acked {
        admin
            .get(id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} is lost: {e:?}"));
    }
    // Resuming after the last sequence seen gives the rest of the log: nothing twice, no gap,
    // every acknowledged submission in it.
    let last = seen.last().copied().unwrap_or(0);
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<_>>(),
        "contiguous before the drain"
    );
    let mut reporter = process_client(&server, Who::reporter()).await;
    let mut feed = reporter.subscribe(last).await;
    let mut next = last + 1;
    while !acked.is_subset(&ids) {
        let e = feed.next().await.unwrap();
        assert_eq!(e.sequence, next, "no gap, no duplicate");
        next += 1;
        ids.extend(e.body.as_ref().and_then(interaction_id).map(str::to_owned));
    }
    server.signal("INT");
    assert!(server.wait().await.success(), "SIGINT drains the same way");
}

/// The configuration file the Kubernetes manifests mount is one this server accepts.
#[tokio::test]
async fn the_deployed_configuration_file_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/base/config/interaction-server.toml");
    let mut command = binary(BIN);
    command.arg("--config").arg(file);
    let server = start_process(dir.path(), command, false);
    let mut admin = process_client(&server, Who::admin()).await;
    let platform = admin
        .agents
        .get_platform(ixn_proto::interaction::GetPlatformRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        platform.media_types.iter().any(|m| m == "email"),
        "{platform:?}"
    );
    server.signal("TERM");
    let status = server.wait().await;
    assert!(status.success(), "{status:?}");
}

/// Logs are human-readable lines by default, JSON objects with `--log-format json` (the other
/// tests read those), and `RUST_LOG` chooses what is logged: here only the shared library's lines,
/// so the first one is the metrics endpoint's, not the server's own (which comes before it).
#[test]
fn logs_are_text_by_default_and_filtered_by_rust_log() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut command = binary(BIN);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "ixn_proto=info");
    let mut child = command.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!first.starts_with('{'), "{first}");
    assert!(
        first.contains("INFO") && first.contains("metrics serving metrics_listen=127.0.0.1:"),
        "{first}"
    );
}

/// The TLS settings as an operator gives them: PEM files for the server's certificate and key and
/// for the CA its clients' certificates must come from.
#[tokio::test]
async fn tls_settings_serve_mutual_tls_from_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ixn_proto::testing::Pki::new("deployment CA");
    let server_cert = ca.server("localhost");
    let files = [
        ("server.pem", server_cert.cert.as_str()),
        ("server.key", server_cert.key.as_str()),
        ("clients-ca.pem", &ca.ca()),
    ];
    for (name, pem) in files {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let mut command = binary(BIN);
    command
        .env("IXN_TLS_CERT", dir.path().join("server.pem"))
        .env("IXN_TLS_KEY", dir.path().join("server.key"))
        .arg("--tls-client-ca")
        .arg(dir.path().join("clients-ca.pem"));
    let server = start_process(&dir.path().join("data"), command, false);

    let connect = |client: Option<ixn_proto::testing::Issued>| {
        let tls = ca.client_tls(client.as_ref());
        let addr = server.addr;
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_lazy();
            let who = Who::media_server("ms");
            let token = who.token(ixn_proto::clock::Clock::System.now_secs(), 3_600);
            Client::new(channel, who, token)
        }
    };
    let mut signed = connect(Some(ca.client("ms"))).await;
    signed.submit("q", "chat").await.unwrap();
    let mut anonymous = connect(None).await;
    anonymous
        .submit("q", "chat")
        .await
        .expect_err("a client without a certificate was served");
    server.signal("TERM");
    assert!(server.wait().await.success());
}
