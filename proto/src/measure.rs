//! Metrics, in Prometheus's text format on a port of their own (`--metrics-listen`, `GET /metrics`).
//!
//! Both services record through the `metrics` facade; without an installed recorder (tests that run
//! servers in-process, or no `--metrics-listen`) every call here is a no-op. Gauges that are a view
//! of the service's state (interactions by state, the furthest-behind stream) are computed when
//! scraped, by the service's `refresh`, so the hot path pays nothing for them.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `ixn_rpc_requests_total` | counter | `method`, `code` |
//! | `ixn_rpc_duration_seconds` | histogram | `method`, `code` |
//! | `ixn_events_appended_total` | counter | |
//! | `ixn_subscribers` | gauge | |
//! | `ixn_subscriber_lag_events` | gauge | |
//! | `ixn_store_commit_duration_seconds` | histogram | |
//! | `ixn_store_commit_batch_size` | histogram | |
//! | `ixn_interactions` | gauge | `state` (interaction-server) |
//! | `ixn_sessions`, `ixn_channels` | gauge | `state` (session-service) |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

pub const RPC_REQUESTS: &str = "ixn_rpc_requests_total";
pub const RPC_DURATION: &str = "ixn_rpc_duration_seconds";
pub const EVENTS_APPENDED: &str = "ixn_events_appended_total";
pub const SUBSCRIBERS: &str = "ixn_subscribers";
pub const SUBSCRIBER_LAG: &str = "ixn_subscriber_lag_events";
pub const SUBSCRIBERS_CUT: &str = "ixn_subscribers_cut_total";
pub const COMMIT_DURATION: &str = "ixn_store_commit_duration_seconds";
pub const COMMIT_BATCH: &str = "ixn_store_commit_batch_size";
pub const INTERACTIONS: &str = "ixn_interactions";
pub const SESSIONS: &str = "ixn_sessions";
pub const CHANNELS: &str = "ixn_channels";

const SECONDS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often recorded histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Whether a recorder is installed: without one, nothing is worth preparing for it.
static INSTALLED: AtomicBool = AtomicBool::new(false);

pub fn enabled() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Installs the process's recorder. Call once, from within the runtime, before serving.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), BATCH))
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    INSTALLED.store(true, Ordering::Relaxed);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RPC_REQUESTS, "Finished RPCs by method and gRPC code.");
    describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "RPC latency by method and code (a stream's whole life)."
    );
    describe_counter!(EVENTS_APPENDED, "Events committed to the log.");
    describe_gauge!(SUBSCRIBERS, "Open event streams.");
    describe_gauge!(
        SUBSCRIBER_LAG,
        "Events the furthest-behind open stream has still to read."
    );
    describe_counter!(
        SUBSCRIBERS_CUT,
        "Streams cut with SUBSCRIBER_TOO_SLOW because their reader stopped reading."
    );
    describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Store transaction latency, write and fsync."
    );
    describe_histogram!(COMMIT_BATCH, "Changes carried by one store transaction.");
    describe_gauge!(INTERACTIONS, "Interactions by state.");
    describe_gauge!(SESSIONS, "Live sessions by state.");
    describe_gauge!(CHANNELS, "Channels of live sessions by state.");
}

/// Serves `GET /metrics` on `listener` for as long as the process runs (scrapes go on while the
/// service drains); `refresh` sets the gauges that are computed at scrape time.
pub async fn serve<R, F>(listener: TcpListener, handle: PrometheusHandle, refresh: R)
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let refresh = refresh.clone();
            let handle = handle.clone();
            async move {
                refresh().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    tracing::info!(
        metrics_listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "metrics serving"
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// A finished RPC.
pub fn rpc(method: &str, code: &'static str, took: Duration) {
    if !enabled() {
        return;
    }
    let labels = [("method", method.to_owned()), ("code", code.to_owned())];
    metrics::counter!(RPC_REQUESTS, &labels).increment(1);
    metrics::histogram!(RPC_DURATION, &labels).record(took.as_secs_f64());
}

/// A committed store transaction carrying `changes`.
pub fn commit(took: Duration, changes: usize) {
    metrics::histogram!(COMMIT_DURATION).record(took.as_secs_f64());
    metrics::histogram!(COMMIT_BATCH).record(changes as f64);
}

pub fn events_appended(n: u64) {
    metrics::counter!(EVENTS_APPENDED).increment(n);
}

/// A stream cut because its reader stopped reading.
pub fn subscriber_cut() {
    metrics::counter!(SUBSCRIBERS_CUT).increment(1);
}

pub fn subscribers(delta: f64) {
    metrics::gauge!(SUBSCRIBERS).increment(delta);
}

/// Sets a scrape-time gauge.
pub fn set(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// Sets a scrape-time gauge of one `state`.
pub fn set_state(name: &'static str, state: &'static str, value: f64) {
    metrics::gauge!(name, "state" => state).set(value);
}
