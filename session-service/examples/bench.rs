//! `cargo xtask bench`: the performance harness. It starts the release binaries of
//! interaction-server and session-service (from `IXN_BENCH_BIN_DIR`) as child processes on fresh
//! temporary data directories, drives them over loopback with tonic clients from this process, and
//! writes `report.json` (a flat object: every key of the issue → a number, or `null` when it cannot
//! be measured, plus metadata) and `report.md` (a table against the targets) into the output
//! directory (`--out`, default `target/bench`). `--quick` shrinks every case (CI runs it so the
//! harness never rots); every key is still present. A case that fails prints why, its keys stay
//! `null` and the run exits non-zero.
//!
//! Servers are separate processes, as in production, so client and server CPU are accounted apart
//! (on a small machine they still share the cores: the echo baseline, measured the same way, is what
//! the ratios normalise by). Setup (logging agents in, creating interactions, seeding stores) is not
//! measured.
//!
//! # One client code path
//!
//! Every throughput figure comes from the same closed-loop driver ([`drive`]): `C` tasks share `N`
//! HTTP/2 connections (task `k` uses connection `k mod N`; `N = min(C, 4)`), each issuing its next
//! call as soon as the previous one answers, for a fixed time after a short warm-up. Only successes
//! count; latencies (call to answer) go into an HDR histogram (µs, 3 significant digits); a failure
//! is counted, shown, and fails the run.
//!
//! # The cases
//!
//! - `baseline_echo_rps` — the ceiling: a bare tonic server serving only `grpc.health.v1.Health`
//!   (`Check` is the echo: a tiny request, a trivial handler, no token, no store), run as a child
//!   process (this example re-executed with `--echo-server`), concurrency 64 over 4 connections.
//!   It runs first, and the ratios divide by it. `baseline_echo_rps_after` (extra) is the same echo
//!   run again last (case `echo_after`): the machine's speed moves during a run (other tenants of
//!   the host), and the two echoes show how far.
//! - `stop_rps_c{1,16,64,256}`, `stop_p50_ms_c64`, `stop_p99_ms_c64` — `StopProcessing` on
//!   interactions that are HANDLING, each stopped once with a fresh `request_id` by its owning agent
//!   (version C: `Revoked`, `PartyRemoved`, `ProcessingStopped`), durable SQLite
//!   (`synchronous=FULL`, group commit). The interactions are created beforehand by agents'
//!   `Submit` (an agent owns at once), spread over many agents ([`PER_AGENT`], 10, each) logged in
//!   through `AgentService`; each window gets enough of them to outlast it (sized from a short probe
//!   and the previous windows). `stop_ratio_to_echo = stop_rps_c64 / baseline_echo_rps`.
//! - `lifecycle_per_s` — 64 concurrent loops of Submit (media server) → Pull by id (router) →
//!   Deliver (router → agent) → Accept (agent, with the ticket from Deliver) → StopProcessing
//!   (media server), while one reporter subscriber follows the log; the run fails unless the
//!   reporter receives every reporting event (8 per lifecycle) by the end.
//!   `lifecycle_rpc_ratio_to_echo = 5 × lifecycle_per_s / baseline_echo_rps`.
//! - `event_delivery_p50_ms`, `event_delivery_p99_ms` — lifecycles started open-loop at half of
//!   `lifecycle_per_s`; for every event the reporter receives, receipt time minus the event's `time`
//!   (both the system clock of this one machine). interaction-server stamps `time` when the batch
//!   that commits the event starts, so the figure covers the commit (its fsync), publishing and the
//!   stream. `event_delivery_after_ack_*` (extra) measure from the moment the stopping client had its
//!   ack to the reporter's receipt of that `ProcessingStopped` (0 when the event came first).
//! - `fanout_deliveries_per_s` — 1,000 reporter subscribers (25 per connection) follow the log from
//!   its head; a burst of stops (3 events each, 2 of them reporting) is committed as fast as
//!   possible; deliveries (events received, summed over subscribers) divided by the time from the
//!   burst's start until every subscriber has them all (or until the time box ends). The burst
//!   stays within the log's in-memory ring, so this is live fan-out, not replay from SQLite. The
//!   writer, the fan-out and this process's decoding share the machine: when the subscribers keep
//!   up, the figure is bounded by how fast the burst commits under that load.
//! - `session_rss_bytes_per_session` — session-service's VmRSS (`/proc/<pid>/status`) after a
//!   warm-up, then after 100,000 logins (3 channels each, Not Ready, no `Connect` stream): the growth
//!   divided by the sessions. Memory is also read half-way: `…_second_half` (extra) is the growth
//!   of the second 50,000 alone, once pools and caches are full.
//! - `login_per_s` — those 100,000 logins (concurrency 64; each is GetPlatform, AgentService.Login
//!   and 3 AddMedia at interaction-server plus session-service's own commit). `logout_per_s`,
//!   `logout_p99_ms` — logging those sessions out (3 deactivations, the switch's logout, disposal).
//! - `stop_p99_ratio_1m_vs_1k` — the `stop_p99_ms_c64` measurement on a store holding 1,000,000
//!   stopped interactions over the same on one holding 1,000. The stopped interactions (rows and 5
//!   events each, as a real stop leaves them) are written straight into the SQLite file while the
//!   server is down, after the server created its schema; the extra keys `stop_p99_ms_c64_1k` and
//!   `_1m` are the two sides.
//! - `interaction_server_rss_bytes_per_live_interaction` — interaction-server's VmRSS after a
//!   warm-up that fills its event ring, then after 100,000 more HANDLING interactions (agents'
//!   Submit, 10 per agent, the agents logged in before): the growth divided by the interactions;
//!   `…_second_half` (extra) as for sessions.
//! - `pg_*` — the same stop and lifecycle figures with interaction-server on PostgreSQL (the URL from
//!   `--database-url`, `IXN_BENCH_DATABASE_URL` or `IXN_TEST_DATABASE_URL`; each server gets a schema
//!   of its own, dropped at the end): `null` when none is given. `pg_stop_p99_ratio_1m_vs_1k` is not
//!   measured (the large store is seeded straight into SQLite's file).
//!
//! `…_server_cpu_us…` (extra) — the CPU time (user and system, from `/proc/<pid>/stat`) the server
//! process used during a measured window, per successful call (per lifecycle for
//! `lifecycle_server_cpu_us`): for the echo, StopProcessing at c64 and the lifecycle. On a machine
//! shared with other work the rates move from run to run; the CPU a call costs moves much less.
//! `…_client_cpu_us…` is the same for this load generator's process, and `…_idle_share…` the share
//! of all the machine's CPU time that went idle during the window (`/proc/stat`): near 0 when the
//! figure is bound by the CPUs, higher when something waits (a serial thread, the disk).
//! `…_writer_cpu_us…` is the part of the server's that interaction-server's one writer thread
//! (`ixn-writer`, from `/proc/<pid>/task/*/stat`) used: every commit goes through it, so it is the
//! serial part of a call's cost.
//!
//! `--quick` runs each timed case for 1 s and uses 1,000 sessions, 10,000 stored and 10,000 live
//! interactions and 100 subscribers. `--only echo,stop,…` runs some cases (for working on the
//! harness; the other keys are `null`).

mod support;

use hdrhistogram::Histogram;
use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::Party;
use ixn_proto::error::Failure;
use ixn_proto::events::event::Body;
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{self as ev, Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::interaction_service_client::InteractionServiceClient;
use ixn_proto::interaction::{self as pb, InteractionState};
use ixn_proto::session::session_service_client::SessionServiceClient;
use ixn_proto::session::{self as ss};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{free_port, reason, rid};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const USAGE: &str =
    "usage: bench [--quick] [--out DIR] [--bin-dir DIR] [--database-url URL] [--only CASE,…]
  --quick         short runs and small sizes (CI); every key is still reported
  --out           where report.json and report.md go (default target/bench)
  --bin-dir       the built interaction-server and session-service (default $IXN_BENCH_BIN_DIR)
  --database-url  PostgreSQL for the pg_* cases (default $IXN_BENCH_DATABASE_URL, then
                  $IXN_TEST_DATABASE_URL; without one they are null)
  --only          some of: echo, stop, lifecycle, fanout, sessions, stored, live, pg_stop,
                  pg_lifecycle";

/// The cases, in the order they run.
const CASES: &[(&str, &str)] = &[
    (
        "echo",
        "bare tonic echo (grpc.health Check), concurrency 64",
    ),
    (
        "stop",
        "StopProcessing on HANDLING interactions, durable SQLite",
    ),
    (
        "lifecycle",
        "Submit → Pull → Deliver → Accept → StopProcessing, one reporter following",
    ),
    ("fanout", "subscribers following one log"),
    (
        "sessions",
        "session-service: memory per session, login, logout",
    ),
    (
        "stored",
        "StopProcessing p99 over a small and a large store",
    ),
    ("live", "interaction-server memory per live interaction"),
    (
        "pg_stop",
        "StopProcessing on HANDLING interactions, interaction-server on PostgreSQL",
    ),
    (
        "pg_lifecycle",
        "Submit → Pull → Deliver → Accept → StopProcessing on PostgreSQL",
    ),
    (
        "echo_after",
        "the echo again, last: how far the machine's speed moved during the run",
    ),
];

const TENANT: &str = "t1";
/// Agents may hold as many interactions as the benchmark gives them.
const CAPACITY_CONFIG: &str = "[platform]\ndefault_capacity = 1000000\n";
const PATIENCE: Duration = Duration::from_secs(60);
/// Concurrency of setup work (not measured).
const SETUP_CONCURRENCY: usize = 64;
/// Interactions per agent when many are created: an agent handles a handful at once (chat,
/// email).
const PER_AGENT: usize = 10;
/// Subscribers per connection in the fan-out case.
const SUBSCRIBERS_PER_CONNECTION: usize = 25;
/// Reporting events of one lifecycle: Submitted; TakenFromQueue, PartyAdded; AgentInvited;
/// PartyRemoved, PartyAdded; PartyRemoved, ProcessingStopped.
const REPORTING_PER_LIFECYCLE: u64 = 8;

// ------------------------------------------------------------------------------------------------
// Keys and targets

#[derive(Clone, Copy, Debug)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
    None,
}

/// Every key of the issue, in the report's order, with its target and unit.
const KEYS: &[(&str, Goal, &str)] = &[
    ("baseline_echo_rps", Goal::None, "req/s"),
    ("stop_rps_c1", Goal::None, "req/s"),
    ("stop_rps_c16", Goal::None, "req/s"),
    ("stop_rps_c64", Goal::None, "req/s"),
    ("stop_rps_c256", Goal::None, "req/s"),
    ("stop_p50_ms_c64", Goal::None, "ms"),
    ("stop_p99_ms_c64", Goal::None, "ms"),
    ("stop_ratio_to_echo", Goal::AtLeast(0.5), ""),
    ("lifecycle_per_s", Goal::None, "/s"),
    ("lifecycle_rpc_ratio_to_echo", Goal::AtLeast(0.4), ""),
    ("event_delivery_p50_ms", Goal::None, "ms"),
    ("event_delivery_p99_ms", Goal::Below(5.0), "ms"),
    ("fanout_deliveries_per_s", Goal::AtLeast(500_000.0), "/s"),
    ("session_rss_bytes_per_session", Goal::AtMost(10_240.0), "B"),
    ("login_per_s", Goal::None, "/s"),
    ("logout_per_s", Goal::None, "/s"),
    ("logout_p99_ms", Goal::None, "ms"),
    ("stop_p99_ratio_1m_vs_1k", Goal::AtMost(1.5), ""),
    (
        "interaction_server_rss_bytes_per_live_interaction",
        Goal::AtMost(2_048.0),
        "B",
    ),
    ("pg_stop_rps_c1", Goal::None, "req/s"),
    ("pg_stop_rps_c16", Goal::None, "req/s"),
    ("pg_stop_rps_c64", Goal::None, "req/s"),
    ("pg_stop_rps_c256", Goal::None, "req/s"),
    ("pg_stop_p50_ms_c64", Goal::None, "ms"),
    ("pg_stop_p99_ms_c64", Goal::None, "ms"),
    ("pg_stop_ratio_to_echo", Goal::AtLeast(0.5), ""),
    ("pg_stop_p99_ratio_1m_vs_1k", Goal::AtMost(1.5), ""),
    ("pg_lifecycle_per_s", Goal::None, "/s"),
];

/// Figures beyond the issue's keys that explain them.
const EXTRA_KEYS: &[(&str, &str)] = &[
    // CPU time (user and system) of the server process per successful call (per lifecycle for
    // `lifecycle_…`), during the measured window: steadier than a rate on a shared machine.
    ("baseline_echo_server_cpu_us", "µs"),
    ("stop_server_cpu_us_c64", "µs"),
    ("lifecycle_server_cpu_us", "µs"),
    ("pg_stop_server_cpu_us_c64", "µs"),
    ("pg_lifecycle_server_cpu_us", "µs"),
    // The load generator's CPU time the same way, and the share of the machine's CPU time that
    // went idle in the window.
    ("baseline_echo_client_cpu_us", "µs"),
    ("stop_client_cpu_us_c64", "µs"),
    ("lifecycle_client_cpu_us", "µs"),
    ("pg_stop_client_cpu_us_c64", "µs"),
    ("pg_lifecycle_client_cpu_us", "µs"),
    // The server's writer thread's share of its CPU time per call, the same way.
    ("stop_writer_cpu_us_c64", "µs"),
    ("lifecycle_writer_cpu_us", "µs"),
    ("pg_stop_writer_cpu_us_c64", "µs"),
    ("pg_lifecycle_writer_cpu_us", "µs"),
    ("baseline_echo_idle_share", ""),
    // The echo measured again at the end of the run (`echo_after`): how far the machine's speed
    // moved between the first echo and the cases after it.
    ("baseline_echo_rps_after", "req/s"),
    ("baseline_echo_server_cpu_us_after", "µs"),
    ("baseline_echo_client_cpu_us_after", "µs"),
    ("baseline_echo_idle_share_after", ""),
    ("stop_idle_share_c64", ""),
    ("lifecycle_idle_share", ""),
    ("pg_stop_idle_share_c64", ""),
    ("pg_lifecycle_idle_share", ""),
    ("lifecycle_p99_ms", "ms"),
    ("event_delivery_after_ack_p50_ms", "ms"),
    ("event_delivery_after_ack_p99_ms", "ms"),
    ("login_p99_ms", "ms"),
    ("session_rss_bytes_per_session_second_half", "B"),
    (
        "interaction_server_rss_bytes_per_live_interaction_second_half",
        "B",
    ),
    ("stop_p99_ms_c64_1k", "ms"),
    ("stop_p99_ms_c64_1m", "ms"),
    ("fanout_subscribers", ""),
];

// ------------------------------------------------------------------------------------------------
// Sizes

/// How big and long each case is.
#[derive(Clone, Copy, Debug)]
struct Plan {
    quick: bool,
    /// The measured window of each timed case.
    window: Duration,
    /// Warm-up before each timed case (not measured).
    warmup: Duration,
    sessions: usize,
    /// Logins and logouts before the session memory is first read.
    session_warmup: usize,
    stored_small: usize,
    stored_large: usize,
    subscribers: usize,
    /// Stops in the fan-out burst (3 events each; the log's ring holds 16,384).
    fanout_stops: usize,
    /// The longest the fan-out may take.
    fanout_limit: Duration,
    live: usize,
    /// Interactions created and stopped before interaction-server's memory is first read.
    live_warmup: usize,
    /// The longest one case may take.
    case_limit: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                window: Duration::from_secs(1),
                warmup: Duration::from_millis(200),
                sessions: 1_000,
                session_warmup: 200,
                stored_small: 1_000,
                stored_large: 10_000,
                subscribers: 100,
                fanout_stops: 1_000,
                fanout_limit: Duration::from_secs(5),
                live: 10_000,
                live_warmup: 4_000,
                case_limit: Duration::from_secs(60),
            }
        } else {
            Plan {
                quick,
                window: Duration::from_secs(4),
                warmup: Duration::from_millis(500),
                sessions: 100_000,
                session_warmup: 3_000,
                stored_small: 1_000,
                stored_large: 1_000_000,
                subscribers: 1_000,
                fanout_stops: 1_500,
                fanout_limit: Duration::from_secs(10),
                live: 100_000,
                live_warmup: 8_000,
                case_limit: Duration::from_secs(240),
            }
        }
    }

    fn label(n: usize) -> String {
        match n {
            n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
            n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
            n => n.to_string(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Entry point

struct Options {
    quick: bool,
    out: PathBuf,
    bin_dir: PathBuf,
    only: Option<BTreeSet<String>>,
    database_url: Option<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut quick = false;
        let mut out = PathBuf::from("target/bench");
        let mut bin_dir = std::env::var_os("IXN_BENCH_BIN_DIR").map(PathBuf::from);
        let mut only = None;
        let mut database_url = ["IXN_BENCH_DATABASE_URL", "IXN_TEST_DATABASE_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().cloned().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--quick" => quick = true,
                "--out" => out = PathBuf::from(value()?),
                "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
                "--database-url" => database_url = Some(value()?),
                "--only" => {
                    let names: BTreeSet<String> =
                        value()?.split(',').map(|s| s.trim().to_owned()).collect();
                    if let Some(bad) = names
                        .iter()
                        .find(|n| !CASES.iter().any(|(case, _)| case == n))
                    {
                        return Err(format!("no case `{bad}`"));
                    }
                    only = Some(names);
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        let bin_dir = bin_dir.ok_or(
            "IXN_BENCH_BIN_DIR (or --bin-dir) must name the directory of the release binaries \
             (cargo xtask bench sets it)",
        )?;
        Ok(Options {
            quick,
            out,
            bin_dir,
            only,
            database_url,
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--echo-server") {
        return echo_server(args.get(1).map(String::as_str));
    }
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(options))
}

async fn run(options: Options) -> ExitCode {
    let plan = Plan::new(options.quick);
    for bin in ["interaction-server", "session-service"] {
        if !options.bin_dir.join(bin).is_file() {
            eprintln!(
                "bench: {} is not built (cargo build --release -p {bin})",
                options.bin_dir.join(bin).display()
            );
            return ExitCode::from(2);
        }
    }
    if let Err(e) = std::fs::create_dir_all(&options.out) {
        eprintln!("bench: cannot create {}: {e}", options.out.display());
        return ExitCode::FAILURE;
    }
    let work = match tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&options.out)
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("bench: no work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let ctx = Ctx {
        plan,
        bin_dir: options.bin_dir.clone(),
        work: work.path().to_owned(),
        secret: Secret {
            kid: None,
            bytes: secret.as_bytes().to_vec(),
        },
        secret_text: secret,
        database_url: None,
        prefix: "",
    };
    let pg = options.database_url.as_ref().map(|url| Ctx {
        database_url: Some(url.clone()),
        prefix: "pg_",
        ..ctx.clone()
    });
    let mut report = Report::default();
    println!(
        "ixn benchmark ({}): servers from {}, {} cpu(s)",
        if plan.quick { "quick" } else { "full" },
        options.bin_dir.display(),
        cpus()
    );
    let started = Instant::now();
    for (name, what) in CASES {
        if options.only.as_ref().is_some_and(|o| !o.contains(*name)) {
            report.note(format!("case `{name}` not run (--only)"));
            continue;
        }
        println!("\n== {name}: {what}");
        let t = Instant::now();
        let result = match *name {
            "echo" => limit(plan.case_limit, echo_case(&ctx, &mut report, "")).await,
            "echo_after" => limit(plan.case_limit, echo_case(&ctx, &mut report, "_after")).await,
            "stop" => limit(plan.case_limit, stop_case(&ctx, &mut report)).await,
            "lifecycle" => limit(plan.case_limit, lifecycle_case(&ctx, &mut report)).await,
            "fanout" => limit(plan.case_limit, fanout_case(&ctx, &mut report)).await,
            "sessions" => limit(plan.case_limit, sessions_case(&ctx, &mut report)).await,
            "stored" => limit(plan.case_limit, stored_case(&ctx, &mut report)).await,
            "live" => limit(plan.case_limit, live_case(&ctx, &mut report)).await,
            "pg_stop" | "pg_lifecycle" => match &pg {
                None => {
                    println!("   not run: no PostgreSQL (--database-url)");
                    report.note(format!("case `{name}` not run: no PostgreSQL given"));
                    continue;
                }
                Some(pg) if *name == "pg_stop" => {
                    limit(plan.case_limit, stop_case(pg, &mut report)).await
                }
                Some(pg) => limit(plan.case_limit, lifecycle_case(pg, &mut report)).await,
            },
            _ => unreachable!("every case is dispatched"),
        };
        let secs = t.elapsed().as_secs_f64();
        report.timings.push((name.to_string(), secs));
        match result {
            Ok(()) => println!("   ({secs:.1} s)"),
            Err(e) => {
                println!("   FAILED after {secs:.1} s: {e}");
                report.failures.push(format!("{name}: {e}"));
            }
        }
    }
    if let Some(pg) = &pg {
        pg.drop_schemas().await;
    }
    println!("\n== derived");
    report.derive();
    let total = started.elapsed();
    let md = report.markdown(&plan, total);
    let json = report.json(&plan, total);
    let written = std::fs::write(options.out.join("report.md"), &md).and_then(|()| {
        std::fs::write(
            options.out.join("report.json"),
            serde_json::to_string_pretty(&json).expect("json") + "\n",
        )
    });
    println!("\n{md}");
    if report.failures.is_empty() {
        drop(work);
    } else {
        // The servers' logs stay for whoever looks into the failure.
        println!(
            "the servers' data and logs are kept in {}",
            work.keep().display()
        );
    }
    if let Err(e) = written {
        eprintln!("bench: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "wrote {} and {} in {:.0} s",
        options.out.join("report.json").display(),
        options.out.join("report.md").display(),
        total.as_secs_f64()
    );
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("\n{} failure(s):", report.failures.len());
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        ExitCode::FAILURE
    }
}

async fn limit(
    limit: Duration,
    case: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(limit, case)
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {limit:?}")))
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

// ------------------------------------------------------------------------------------------------
// The report

#[derive(Default)]
struct Report {
    values: BTreeMap<String, f64>,
    notes: Vec<String>,
    failures: Vec<String>,
    timings: Vec<(String, f64)>,
}

impl Report {
    fn set(&mut self, key: &str, value: f64) {
        println!("   {key} = {}", show(value));
        self.values.insert(key.to_owned(), value);
    }

    fn note(&mut self, note: String) {
        println!("   note: {note}");
        self.notes.push(note);
    }

    /// A measured run with failures: its successes still count, but the run fails.
    fn failed_calls(&mut self, what: &str, run: &Run) {
        if run.failed > 0 {
            let f = format!(
                "{what}: {} of {} calls failed ({})",
                run.failed,
                run.failed + run.ok,
                run.errors()
            );
            println!("   {f}");
            self.failures.push(f);
        }
    }

    /// The ratios, from what the cases measured.
    fn derive(&mut self) {
        let echo = self.values.get("baseline_echo_rps").copied();
        if let (Some(echo), Some(stop)) = (echo, self.values.get("stop_rps_c64").copied()) {
            self.set("stop_ratio_to_echo", stop / echo);
        }
        if let (Some(echo), Some(stop)) = (echo, self.values.get("pg_stop_rps_c64").copied()) {
            self.set("pg_stop_ratio_to_echo", stop / echo);
        }
        if let (Some(echo), Some(l)) = (echo, self.values.get("lifecycle_per_s").copied()) {
            self.set("lifecycle_rpc_ratio_to_echo", 5.0 * l / echo);
        }
        if let (Some(small), Some(large)) = (
            self.values.get("stop_p99_ms_c64_1k").copied(),
            self.values.get("stop_p99_ms_c64_1m").copied(),
        ) {
            self.set("stop_p99_ratio_1m_vs_1k", large / small);
        }
    }

    fn json(&self, plan: &Plan, total: Duration) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (key, _, _) in KEYS {
            map.insert((*key).into(), number(self.values.get(*key).copied()));
        }
        for (key, _) in EXTRA_KEYS {
            map.insert((*key).into(), number(self.values.get(*key).copied()));
        }
        map.insert("quick".into(), plan.quick.into());
        map.insert("date".into(), utc_now().into());
        map.insert(
            "git_commit".into(),
            git(&["rev-parse", "HEAD"]).map_or(serde_json::Value::Null, Into::into),
        );
        map.insert(
            "git_dirty".into(),
            git(&["status", "--porcelain"])
                .map_or(serde_json::Value::Null, |s| (!s.is_empty()).into()),
        );
        map.insert("cpus".into(), cpus().into());
        map.insert("echo_server".into(), "child process".into());
        map.insert("window_s".into(), plan.window.as_secs_f64().into());
        map.insert("interactions_per_agent".into(), PER_AGENT.into());
        map.insert("duration_s".into(), round(total.as_secs_f64(), 1).into());
        map.insert("failures".into(), self.failures.clone().into());
        map.insert("notes".into(), self.notes.clone().into());
        serde_json::Value::Object(map)
    }

    fn markdown(&self, plan: &Plan, total: Duration) -> String {
        let mut md = String::new();
        md.push_str(&format!(
            "# ixn benchmark{}\n\n{} · commit {} · {} cpu(s) · {:.0} s\n\n",
            if plan.quick { " (quick)" } else { "" },
            utc_now(),
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            cpus(),
            total.as_secs_f64()
        ));
        md.push_str("| key | value | target | met? |\n| --- | ---: | --- | --- |\n");
        for (key, goal, unit) in KEYS {
            let value = self.values.get(*key).copied();
            let shown = match value {
                Some(v) => format!("{}{}", show(v), unit_suffix(unit)),
                None if *key == "pg_stop_p99_ratio_1m_vs_1k" => {
                    "null (not measured on PostgreSQL)".into()
                }
                None if key.starts_with("pg_") => "null (no PostgreSQL given)".into(),
                None => "null (not measured)".into(),
            };
            let (target, met) = match (goal, value) {
                (Goal::None, _) => (String::new(), String::new()),
                (g, None) => (target_text(*g), "—".into()),
                (g, Some(v)) => (
                    target_text(*g),
                    if meets(*g, v) { "yes" } else { "**no**" }.into(),
                ),
            };
            md.push_str(&format!("| `{key}` | {shown} | {target} | {met} |\n"));
        }
        md.push_str("\nExplanatory figures:\n\n| key | value |\n| --- | ---: |\n");
        for (key, unit) in EXTRA_KEYS {
            let shown = self
                .values
                .get(*key)
                .map(|v| format!("{}{}", show(*v), unit_suffix(unit)))
                .unwrap_or_else(|| "null".into());
            md.push_str(&format!("| `{key}` | {shown} |\n"));
        }
        md.push_str(&format!(
            "\nHow: servers are the release binaries in child processes on fresh data directories \
             (SQLite, `synchronous=FULL`); the echo baseline is a bare tonic server (only \
             `grpc.health.v1.Health/Check`) in a child process; clients are closed loops on \
             `min(C, 4)` HTTP/2 connections in one tokio process; each timed case runs {:.1} s \
             after a {:.1} s warm-up; latencies are HDR histograms; agents hold {PER_AGENT} \
             interactions each where many are prepared. See the doc comment of \
             `session-service/examples/bench.rs` for how each figure is derived. The `pg_*` keys \
             are interaction-server on PostgreSQL (on the same machine, its WAL synced at each \
             commit), each server on a schema of its own.\n",
            plan.window.as_secs_f64(),
            plan.warmup.as_secs_f64()
        ));
        if !self.timings.is_empty() {
            md.push_str("\nCase durations (setup included): ");
            let t: Vec<String> = self
                .timings
                .iter()
                .map(|(n, s)| format!("{n} {s:.0} s"))
                .collect();
            md.push_str(&t.join(", "));
            md.push('\n');
        }
        if !self.notes.is_empty() {
            md.push_str("\nNotes:\n\n");
            for n in &self.notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        if !self.failures.is_empty() {
            md.push_str("\n**Failures:**\n\n");
            for f in &self.failures {
                md.push_str(&format!("- {}\n", f.replace('\n', "\n  ")));
            }
        }
        md
    }
}

fn number(v: Option<f64>) -> serde_json::Value {
    v.and_then(|v| serde_json::Number::from_f64(round(v, 4)))
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn show(v: f64) -> String {
    if v.abs() >= 1_000.0 {
        // No decimals, thousands separated by commas.
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn unit_suffix(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

fn target_text(goal: Goal) -> String {
    match goal {
        Goal::AtLeast(v) => format!("≥ {}", show(v)),
        Goal::AtMost(v) => format!("≤ {}", show(v)),
        Goal::Below(v) => format!("< {}", show(v)),
        Goal::None => String::new(),
    }
}

fn meets(goal: Goal, v: f64) -> bool {
    match goal {
        Goal::AtLeast(t) => v >= t,
        Goal::AtMost(t) => v <= t,
        Goal::Below(t) => v < t,
        Goal::None => true,
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Now, as `YYYY-MM-DDThh:mm:ssZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

// ------------------------------------------------------------------------------------------------
// Servers

/// What every case shares.
#[derive(Clone)]
struct Ctx {
    plan: Plan,
    bin_dir: PathBuf,
    work: PathBuf,
    secret: Secret,
    secret_text: String,
    /// interaction-server's store: PostgreSQL at this URL (a schema per server), else SQLite.
    database_url: Option<String>,
    /// Put before the keys the cases report (`pg_` on PostgreSQL).
    prefix: &'static str,
}

type Token = MetadataValue<Ascii>;

impl Ctx {
    fn dir(&self, name: &str) -> PathBuf {
        self.work.join(format!("{}{name}", self.prefix))
    }

    /// A report key, with this context's prefix.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The schema a server on `dir` uses on PostgreSQL.
    fn schema(dir: &Path) -> String {
        let name: String = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        format!("bench_{}_{name}", std::process::id())
    }

    /// A connection to the benchmark's PostgreSQL.
    async fn postgres(&self) -> Result<tokio_postgres::Client, String> {
        support::postgres(self.database_url.as_deref().ok_or("no PostgreSQL")?).await
    }

    /// A fresh schema for a server on `dir`, and the URL that selects it.
    async fn database(&self, dir: &Path) -> Result<String, String> {
        let url = self.database_url.as_deref().ok_or("no PostgreSQL")?;
        let schema = Ctx::schema(dir);
        self.postgres()
            .await?
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        Ok(ixn_proto::pg::in_schema(url, &schema))
    }

    /// Drops the schemas this run made.
    async fn drop_schemas(&self) {
        let Ok(client) = self.postgres().await else {
            return;
        };
        let prefix = format!("bench_{}_%", std::process::id());
        if let Ok(rows) = client
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1",
                &[&prefix],
            )
            .await
        {
            for row in rows {
                let name: String = row.get(0);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await;
            }
        }
    }

    fn token(&self, role: Role, sub: &str) -> Token {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut claims = Claims::new(role, sub, TENANT, now, 4 * 3_600);
        if role == Role::Agent {
            claims.agent_id = Some(sub.to_owned());
        }
        format!("Bearer {}", auth::mint(&self.secret, &claims))
            .parse()
            .expect("a token is ASCII")
    }

    /// interaction-server on `dir`, with a platform configuration if given.
    async fn interaction_server(&self, dir: &Path, config: Option<&str>) -> Result<Proc, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let addr = free_port()?;
        let mut cmd = Command::new(self.bin_dir.join("interaction-server"));
        cmd.args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.join("data"))
            .env("IXN_JWT_SECRET", &self.secret_text)
            .env("RUST_LOG", "info");
        if self.database_url.is_some() {
            cmd.arg("--database-url").arg(self.database(dir).await?);
        }
        if let Some(config) = config {
            let path = dir.join("platform.toml");
            std::fs::write(&path, config).map_err(|e| e.to_string())?;
            cmd.arg("--config").arg(path);
        }
        Proc::start("interaction-server", cmd, addr, dir.join("server.log")).await
    }

    /// session-service on `dir`, following the interaction-server at `ixn`.
    async fn session_service(&self, dir: &Path, ixn: SocketAddr) -> Result<Proc, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let addr = free_port()?;
        let mut cmd = Command::new(self.bin_dir.join("session-service"));
        cmd.args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.join("data"))
            .args(["--interaction-server", &format!("http://{ixn}")])
            .env("IXN_JWT_SECRET", &self.secret_text)
            .env("RUST_LOG", "info");
        Proc::start("session-service", cmd, addr, dir.join("server.log")).await
    }

    /// The echo baseline: this example re-executed as a bare tonic server.
    async fn echo_server(&self) -> Result<Proc, String> {
        let addr = free_port()?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["--echo-server", &addr.to_string()]);
        let dir = self.dir("echo");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Proc::start("echo server", cmd, addr, dir.join("server.log")).await
    }
}

/// The echo server's process: `grpc.health.v1.Health` alone, Nagle off as the services have it.
fn echo_server(addr: Option<&str>) -> ExitCode {
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("--echo-server needs an address");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::bind(addr)
            .map_err(|e| e.to_string())?
            .with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A server in a child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    async fn start(
        name: &'static str,
        mut cmd: Command,
        addr: SocketAddr,
        log: PathBuf,
    ) -> Result<Proc, String> {
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?;
        let mut proc = Proc {
            name,
            child,
            addr,
            log,
        };
        proc.healthy().await?;
        Ok(proc)
    }

    /// Waits until the health check answers SERVING.
    async fn healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited at start ({status}):\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if let Ok(ch) = Endpoint::from_shared(format!("http://{}", self.addr))
                .expect("url")
                .connect()
                .await
            {
                let answer = HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await;
                if answer.is_ok_and(|r| r.into_inner().status == 1) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not become healthy", self.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The CPU time (user and system) the process has used.
    fn cpu(&self) -> Option<Duration> {
        process_cpu(&self.child.id().to_string())
    }

    /// The CPU time of interaction-server's writer thread (`None` for a process without one).
    fn writer_cpu(&self) -> Option<Duration> {
        thread_cpu(
            &self.child.id().to_string(),
            interaction_server::engine::WRITER_THREAD,
        )
    }

    /// The resident set size, from `/proc/<pid>/status`.
    fn rss(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1_024)
            .ok_or_else(|| format!("{path} has no VmRSS"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether it is still running (a crash under load is a failure of the case).
    fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}):\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` separate HTTP/2 connections to `addr`.
async fn connect(addr: SocketAddr, n: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(ch);
    }
    Ok(channels)
}

// ------------------------------------------------------------------------------------------------
// The driver

/// What one closed-loop run did.
struct Run {
    ok: u64,
    failed: u64,
    /// Distinct failures and how often each happened.
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    /// Call-to-answer latencies of the successes, µs.
    latency: Histogram<u64>,
    /// Items handed out (successes and failures).
    used: u64,
    /// Whether the items ran out before the time did.
    exhausted: bool,
    /// The CPU time used during the run, when it was watched.
    usage: Option<Usage>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn per_call_us(&self, cpu: Option<Duration>) -> Option<f64> {
        cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64)
    }

    /// Sets `<stem>_server_cpu_us<suffix>`, its writer thread's and the load generator's, per
    /// successful call, and `<stem>_idle_share<suffix>`, for a watched run.
    fn report_usage(&self, report: &mut Report, stem: &str, suffix: &str) {
        let Some(usage) = &self.usage else { return };
        if let Some(cpu) = self.per_call_us(usage.server) {
            report.set(&format!("{stem}_server_cpu_us{suffix}"), cpu);
        }
        if let Some(cpu) = self.per_call_us(usage.client) {
            report.set(&format!("{stem}_client_cpu_us{suffix}"), cpu);
        }
        if let Some(cpu) = self.per_call_us(usage.writer) {
            report.set(&format!("{stem}_writer_cpu_us{suffix}"), cpu);
        }
        if let Some(idle) = usage.idle {
            report.set(
                &format!("{stem}_idle_share{suffix}"),
                (idle.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)).min(1.0),
            );
        }
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1_000.0
    }

    fn errors(&self) -> String {
        self.errors
            .iter()
            .map(|(e, n)| format!("{n}× {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn summary(&self) -> String {
        format!(
            "{} ok in {:.2} s = {}/s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            self.ok,
            self.elapsed.as_secs_f64(),
            show(self.per_sec()),
            self.ms(0.5),
            self.ms(0.99),
            self.latency.max() as f64 / 1_000.0,
            if self.failed > 0 {
                format!("; {} FAILED", self.failed)
            } else {
                String::new()
            }
        )
    }

    /// Two runs one after the other, as one.
    fn merge(mut self, other: Run) -> Run {
        self.ok += other.ok;
        self.failed += other.failed;
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
        self.elapsed += other.elapsed;
        self.latency.add(other.latency).expect("same bounds");
        self.used += other.used;
        self.exhausted = other.exhausted;
        self
    }

    /// For setup: every call must have succeeded.
    fn clean(self, what: &str) -> Result<Run, String> {
        if self.failed == 0 {
            Ok(self)
        } else {
            Err(format!(
                "{what}: {} of {} calls failed ({})",
                self.failed,
                self.failed + self.ok,
                self.errors()
            ))
        }
    }
}

/// The CPU time (user and system) a process has used, from `/proc/<pid>/stat` (`self` for this one).
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks_to_duration(ticks))
}

/// The CPU time (user and system) of the threads of process `pid` named `name`, if it has any.
fn thread_cpu(pid: &str, name: &str) -> Option<Duration> {
    let mut total = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let tid = task.file_name();
            let cpu = process_cpu(&format!("{pid}/task/{}", tid.to_string_lossy()))?;
            total = Some(total.unwrap_or(Duration::ZERO) + cpu);
        }
    }
    total
}

/// The time the machine's CPUs have spent idle or waiting for I/O, per CPU, from `/proc/stat`
/// (which counts every CPU of the machine, whatever this process may use).
fn machine_idle() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    // `cpu  user nice system idle iowait …`, then a `cpuN …` line for each CPU.
    let fields: Vec<&str> = lines.next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(4)?.parse::<u64>().ok()? + fields.get(5)?.parse::<u64>().ok()?;
    let cpus = lines.take_while(|l| l.starts_with("cpu")).count().max(1);
    Some(ticks_to_duration(ticks) / cpus as u32)
}

/// Linux reports CPU times in USER_HZ, which is 100 on every architecture it supports.
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// CPU times taken at the start of a measured window.
struct Usage {
    server: Option<Duration>,
    /// The server's writer thread.
    writer: Option<Duration>,
    client: Option<Duration>,
    /// Per CPU of the machine.
    idle: Option<Duration>,
}

impl Usage {
    fn now(server: Option<&Proc>) -> Usage {
        Usage {
            server: server.and_then(Proc::cpu),
            writer: server.and_then(Proc::writer_cpu),
            client: process_cpu("self"),
            idle: machine_idle(),
        }
    }

    /// What was used since `self`.
    fn since(self, server: Option<&Proc>) -> Usage {
        let later = Usage::now(server);
        let spent = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        Usage {
            server: spent(self.server, later.server),
            writer: spent(self.writer, later.writer),
            client: spent(self.client, later.client),
            idle: spent(self.idle, later.idle),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Items `0..n` in two runs, reading the server's memory in between (after a second to settle).
/// Answers the combined run, the memory in the middle, and the successes after each half.
async fn in_halves<F, Fut>(
    channels: &[Channel],
    n: u64,
    op: F,
    server: &Proc,
) -> Result<(Run, u64, (u64, u64)), String>
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let half = n / 2;
    let first = {
        let op = op.clone();
        drive(channels, 64, None, half, move |c, i| op(c, i)).await
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let middle = server.rss()?;
    let first_ok = first.ok;
    let second = drive(channels, 64, None, n - half, move |c, i| op(c, half + i)).await;
    let run = first.merge(second);
    let all_ok = run.ok;
    Ok((run, middle, (first_ok, all_ok)))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Runs `op(channel, item)` for items `0..items` from `concurrency` closed loops spread over
/// `channels`, until the items run out or `duration` has passed.
async fn drive<F, Fut>(
    channels: &[Channel],
    concurrency: usize,
    duration: Option<Duration>,
    items: u64,
    op: F,
) -> Run
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut tasks = JoinSet::new();
    for k in 0..concurrency {
        let ch = channels[k % channels.len()].clone();
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut latency = histogram();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    break;
                }
                let t0 = Instant::now();
                match op(ch.clone(), i).await {
                    Ok(()) => {
                        ok += 1;
                        latency.saturating_record(t0.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        failed += 1;
                        if errors.len() < 8 || errors.contains_key(&e) {
                            *errors.entry(e).or_default() += 1;
                        }
                    }
                }
            }
            (latency, ok, failed, errors)
        });
    }
    let mut run = Run {
        ok: 0,
        failed: 0,
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency: histogram(),
        used: 0,
        exhausted: false,
        usage: None,
    };
    while let Some(done) = tasks.join_next().await {
        let (latency, ok, failed, errors) = done.expect("a load task panicked");
        run.latency.add(latency).expect("same bounds");
        run.ok += ok;
        run.failed += failed;
        for (e, n) in errors {
            *run.errors.entry(e).or_default() += n;
        }
    }
    run.elapsed = start.elapsed();
    run.used = next.load(Ordering::Relaxed).min(items);
    run.exhausted = run.used >= items;
    run
}

/// A warm-up (not kept) and then the measured window, over the same items. The CPU time used
/// during the window is kept too: this process's, the machine's idle time and, with a `server`,
/// that process's.
async fn warm_and_measure<F, Fut>(
    plan: &Plan,
    server: Option<&Proc>,
    channels: &[Channel],
    concurrency: usize,
    items: u64,
    op: F,
) -> Run
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let warm = {
        let op = op.clone();
        drive(
            channels,
            concurrency,
            Some(plan.warmup),
            items,
            move |c, i| op(c, i),
        )
        .await
    };
    let base = warm.used;
    let usage = Usage::now(server);
    let mut run = drive(
        channels,
        concurrency,
        Some(plan.window),
        items.saturating_sub(base),
        move |c, i| op(c, base + i),
    )
    .await;
    run.usage = Some(usage.since(server));
    run
}

// ------------------------------------------------------------------------------------------------
// Calls

fn authed<T>(message: T, token: &Token) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

fn status_text(what: &str, s: &Status) -> String {
    match Failure::from_status(s) {
        Some(f) => format!("{what}: {} ({:?})", f.reason.as_str(), s.code()),
        None => format!("{what}: {:?} {}", s.code(), s.message()),
    }
}

/// Agents logged in at interaction-server, each with its token.
struct Agents {
    names: Vec<String>,
    tokens: Vec<Token>,
}

/// Logs `count` agents in through `AgentService` (as an admin); Ready on chat if asked.
async fn log_in_agents(
    ctx: &Ctx,
    channels: &[Channel],
    prefix: &str,
    count: usize,
    ready_on_chat: bool,
) -> Result<Arc<Agents>, String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let tokens = names.iter().map(|n| ctx.token(Role::Agent, n)).collect();
    let agents = Arc::new(Agents { names, tokens });
    let admin = ctx.token(Role::Admin, "bench-admin");
    let a = agents.clone();
    drive(
        channels,
        SETUP_CONCURRENCY,
        None,
        count as u64,
        move |ch, i| {
            let (agents, admin) = (a.clone(), admin.clone());
            async move {
                let name = &agents.names[i as usize];
                let mut client = AgentServiceClient::new(ch);
                client
                    .login(authed(
                        pb::AgentLoginRequest {
                            request_id: rid(),
                            agent_id: name.clone(),
                            place_id: format!("place-{i}"),
                        },
                        &admin,
                    ))
                    .await
                    .map_err(|s| status_text("AgentService.Login", &s))?;
                if ready_on_chat {
                    client
                        .add_media(authed(
                            pb::AddMediaRequest {
                                request_id: rid(),
                                agent_id: name.clone(),
                                media_type: "chat".into(),
                                ready: true,
                                reason: None,
                            },
                            &admin,
                        ))
                        .await
                        .map_err(|s| status_text("AgentService.AddMedia", &s))?;
                }
                Ok(())
            }
        },
    )
    .await
    .clean("logging agents in")?;
    Ok(agents)
}

/// An interaction some agent handles.
#[derive(Clone)]
struct Held {
    id: String,
    agent: usize,
}

/// `count` HANDLING interactions, submitted by the agents in turn (an agent's Submit owns at once).
async fn submit_held(
    channels: &[Channel],
    agents: &Arc<Agents>,
    count: usize,
) -> Result<(Vec<Held>, Run), String> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (a, o) = (agents.clone(), out.clone());
    let run = drive(
        channels,
        SETUP_CONCURRENCY,
        None,
        count as u64,
        move |ch, i| {
            let (agents, out) = (a.clone(), o.clone());
            async move {
                let agent = i as usize % agents.names.len();
                let answer = InteractionServiceClient::new(ch)
                    .submit(authed(
                        pb::SubmitRequest {
                            request_id: rid(),
                            media_type: "chat".into(),
                            queue: String::new(),
                            properties: Default::default(),
                        },
                        &agents.tokens[agent],
                    ))
                    .await
                    .map_err(|s| status_text("Submit", &s))?;
                let id = answer
                    .into_inner()
                    .interaction
                    .map(|i| i.interaction_id)
                    .ok_or("Submit answered no interaction")?;
                out.lock().expect("held").push(Held { id, agent });
                Ok(())
            }
        },
    )
    .await
    .clean("creating HANDLING interactions")?;
    let held = std::mem::take(&mut *out.lock().expect("held"));
    Ok((held, run))
}

/// The owning agent stops each interaction of `pool`, item `i` being `pool[i]`.
fn stop_op(
    pool: Arc<Vec<Held>>,
    agents: Arc<Agents>,
) -> impl Fn(Channel, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static {
    move |ch, i| {
        let (pool, agents) = (pool.clone(), agents.clone());
        Box::pin(async move {
            let held = &pool[i as usize];
            InteractionServiceClient::new(ch)
                .stop_processing(authed(
                    pb::StopProcessingRequest {
                        request_id: rid(),
                        interaction_id: held.id.clone(),
                        reason: reason("done"),
                    },
                    &agents.tokens[held.agent],
                ))
                .await
                .map(|_| ())
                .map_err(|s| status_text("StopProcessing", &s))
        })
    }
}

/// A timed run at `rate` uses `rate × (warm-up + window)` items; with a margin.
fn needed(plan: &Plan, rate: f64) -> usize {
    (1.3 * rate * (plan.warmup + plan.window).as_secs_f64()).ceil() as usize + 200
}

// ------------------------------------------------------------------------------------------------
// Case: echo

/// The echo; `suffix` names its keys (`baseline_echo_rps{suffix}`, …).
async fn echo_case(ctx: &Ctx, report: &mut Report, suffix: &str) -> Result<(), String> {
    let mut server = ctx.echo_server().await?;
    let channels = connect(server.addr, 4).await?;
    let run = warm_and_measure(
        &ctx.plan,
        Some(&server),
        &channels,
        64,
        u64::MAX,
        |ch, _| async move {
            HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| status_text("Health.Check", &s))
        },
    )
    .await;
    println!("   c64 over 4 connections: {}", run.summary());
    server.alive()?;
    report.failed_calls(&format!("echo{suffix}"), &run);
    report.set(&format!("baseline_echo_rps{suffix}"), run.per_sec());
    run.report_usage(report, "baseline_echo", suffix);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: StopProcessing

async fn stop_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    let mut server = ctx
        .interaction_server(&ctx.dir("stop"), Some(CAPACITY_CONFIG))
        .await?;
    let channels = connect(server.addr, 4).await?;
    let probe_size: usize = if plan.quick { 3_000 } else { 8_000 };
    let agents = log_in_agents(
        ctx,
        &channels,
        "probe-a",
        probe_size.div_ceil(PER_AGENT),
        false,
    )
    .await?;
    // A first batch of interactions, stopped for a moment at c64, tells how fast this machine
    // stops: that sizes the pools so that each outlasts its window (the lowest concurrency goes
    // about a third as fast).
    let (mut pool, created) = submit_held(&channels, &agents, probe_size).await?;
    println!("   setup: Submit by agents, c64: {}", created.summary());
    let probe_items: Arc<Vec<Held>> = Arc::new(std::mem::take(&mut pool));
    let probe = drive(
        &channels,
        64,
        Some(Duration::from_millis(300)),
        probe_items.len() as u64,
        stop_op(probe_items, agents.clone()),
    )
    .await
    .clean("the probe")?;
    println!("   setup: probe, c64: {}", probe.summary());
    let (mut estimate, mut measured) = (probe.per_sec(), 0f64);
    // Enough agents that none holds more than about PER_AGENT of the largest pool.
    let agents = log_in_agents(
        ctx,
        &channels,
        "stop-a",
        needed(plan, 1.5 * estimate).div_ceil(PER_AGENT),
        false,
    )
    .await?;
    for c in [1usize, 16, 64, 256] {
        let rate = if c == 1 { estimate / 3.0 } else { estimate };
        let need = needed(plan, rate);
        if pool.len() < need {
            let t = Instant::now();
            let (more, _) = submit_held(&channels, &agents, need - pool.len()).await?;
            pool.extend(more);
            println!(
                "   setup: {need} HANDLING interactions ready in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
        let items: Arc<Vec<Held>> = Arc::new(pool.drain(..need).collect());
        let conns = &channels[..c.min(4)];
        let run = warm_and_measure(
            plan,
            Some(&server),
            conns,
            c,
            items.len() as u64,
            stop_op(items, agents.clone()),
        )
        .await;
        println!(
            "   c{c} over {} connection(s): {}",
            conns.len(),
            run.summary()
        );
        server.alive()?;
        if run.exhausted {
            report.note(format!(
                "stop c{c}: the prepared interactions ran out after {:.2} s of the window",
                run.elapsed.as_secs_f64()
            ));
        }
        report.failed_calls(&format!("stop c{c}"), &run);
        report.set(&ctx.key(&format!("stop_rps_c{c}")), run.per_sec());
        if c == 64 {
            report.set(&ctx.key("stop_p50_ms_c64"), run.ms(0.5));
            report.set(&ctx.key("stop_p99_ms_c64"), run.ms(0.99));
            run.report_usage(report, &ctx.key("stop"), "_c64");
        }
        // Later windows: the probe's rate, or more if this machine did better at a lower
        // concurrency (higher ones are usually faster still).
        measured = measured.max(run.per_sec());
        estimate = probe.per_sec().max(1.4 * measured);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: lifecycle and event delivery

/// One subscriber's view of the log.
struct Follower {
    /// The last sequence received.
    seen: watch::Receiver<u64>,
    /// Whether receipts are being measured.
    recording: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Followed>,
}

#[derive(Default)]
struct Followed {
    events: u64,
    /// Receipt minus the event's `time`, µs, while recording.
    latency: Option<Histogram<u64>>,
    /// When each `ProcessingStopped` arrived, while recording.
    stopped: HashMap<String, Instant>,
    error: Option<String>,
}

fn micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn follow(channel: Channel, token: &Token) -> Result<Follower, String> {
    let mut stream = EventServiceClient::new(channel)
        .subscribe(authed(
            SubscribeRequest {
                after_sequence: 0,
                from_head: true,
                filter: Some(EventFilter::default()),
            },
            token,
        ))
        .await
        .map_err(|s| status_text("Subscribe", &s))?
        .into_inner();
    let (seen_tx, seen) = watch::channel(0u64);
    let (stop, mut stopped) = watch::channel(false);
    let recording = Arc::new(AtomicBool::new(false));
    let rec = recording.clone();
    let task = tokio::spawn(async move {
        let mut out = Followed {
            latency: Some(histogram()),
            ..Default::default()
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stopped.changed() => break,
            };
            match message {
                Ok(Some(e)) => {
                    out.events += 1;
                    if rec.load(Ordering::Relaxed) {
                        if let Some(t) = &e.time {
                            let at = t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000;
                            if let Some(h) = out.latency.as_mut() {
                                h.saturating_record((micros_now() - at).max(0) as u64);
                            }
                        }
                        if let Some(Body::ProcessingStopped(b)) = &e.body {
                            out.stopped.insert(b.interaction_id.clone(), Instant::now());
                        }
                    }
                    seen_tx.send_replace(e.sequence);
                }
                Ok(None) => {
                    out.error = Some("the stream ended".into());
                    break;
                }
                Err(s) => {
                    out.error = Some(status_text("the stream", &s));
                    break;
                }
            }
        }
        out
    });
    Ok(Follower {
        seen,
        recording,
        stop,
        task,
    })
}

/// The parties of a lifecycle.
struct Cast {
    ms: Token,
    router: Token,
    agents: Arc<Agents>,
    /// When the media server had each stop's ack, while recording.
    acks: Mutex<HashMap<String, Instant>>,
    recording: AtomicBool,
    /// The highest `ProcessingStopped` sequence acknowledged.
    last_stop: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Submit → Pull → Deliver → Accept → StopProcessing, counted.
async fn lifecycle(ch: Channel, cast: &Cast, n: u64) -> Result<(), String> {
    let result = lifecycle_steps(ch, cast, n).await;
    match &result {
        Ok(()) => cast.completed.fetch_add(1, Ordering::Relaxed),
        Err(_) => cast.failed.fetch_add(1, Ordering::Relaxed),
    };
    result
}

async fn lifecycle_steps(ch: Channel, cast: &Cast, n: u64) -> Result<(), String> {
    let mut ixn = InteractionServiceClient::new(ch);
    let id = ixn
        .submit(authed(
            pb::SubmitRequest {
                request_id: rid(),
                media_type: "chat".into(),
                queue: "bench".into(),
                properties: Default::default(),
            },
            &cast.ms,
        ))
        .await
        .map_err(|s| status_text("Submit", &s))?
        .into_inner()
        .interaction
        .map(|i| i.interaction_id)
        .ok_or("Submit answered no interaction")?;
    ixn.pull(authed(
        pb::PullRequest {
            request_id: rid(),
            queue: "bench".into(),
            media_type: String::new(),
            interaction_id: id.clone(),
        },
        &cast.router,
    ))
    .await
    .map_err(|s| status_text("Pull", &s))?;
    let agent = n as usize % cast.agents.names.len();
    let ticket_id = ixn
        .deliver(authed(
            pb::DeliverRequest {
                request_id: rid(),
                interaction_id: id.clone(),
                agent_id: cast.agents.names[agent].clone(),
                timeout_ms: 0,
            },
            &cast.router,
        ))
        .await
        .map_err(|s| status_text("Deliver", &s))?
        .into_inner()
        .ticket_id;
    ixn.accept(authed(
        pb::AcceptRequest {
            request_id: rid(),
            interaction_id: id.clone(),
            ticket_id,
        },
        &cast.agents.tokens[agent],
    ))
    .await
    .map_err(|s| status_text("Accept", &s))?;
    let ack = ixn
        .stop_processing(authed(
            pb::StopProcessingRequest {
                request_id: rid(),
                interaction_id: id.clone(),
                reason: reason("done"),
            },
            &cast.ms,
        ))
        .await
        .map_err(|s| status_text("StopProcessing", &s))?
        .into_inner();
    let at = Instant::now();
    cast.last_stop.fetch_max(ack.sequence, Ordering::Relaxed);
    if cast.recording.load(Ordering::Relaxed) {
        cast.acks.lock().expect("acks").insert(id, at);
    }
    Ok(())
}

async fn lifecycle_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    let mut server = ctx
        .interaction_server(&ctx.dir("lifecycle"), Some(CAPACITY_CONFIG))
        .await?;
    let channels = connect(server.addr, 4).await?;
    let agents = log_in_agents(ctx, &channels, "life-a", 64, true).await?;
    let cast = Arc::new(Cast {
        ms: ctx.token(Role::MediaServer, "ms1"),
        router: ctx.token(Role::Router, "r1"),
        agents,
        acks: Mutex::new(HashMap::new()),
        recording: AtomicBool::new(false),
        last_stop: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // The reporter has a connection of its own.
    let reporter_channel = connect(server.addr, 1).await?.remove(0);
    let reporter = follow(reporter_channel, &ctx.token(Role::Reporter, "reports")).await?;

    // Throughput: 64 lifecycles at a time.
    let c = cast.clone();
    let run = warm_and_measure(
        plan,
        Some(&server),
        &channels,
        64,
        u64::MAX,
        move |ch, n| {
            let cast = c.clone();
            async move { lifecycle(ch, &cast, n).await }
        },
    )
    .await;
    println!("   c64 lifecycles over 4 connections: {}", run.summary());
    server.alive()?;
    report.failed_calls("lifecycle", &run);
    let max_rate = run.per_sec();
    report.set(&ctx.key("lifecycle_per_s"), max_rate);
    run.report_usage(report, &ctx.key("lifecycle"), "");
    if !ctx.prefix.is_empty() {
        // On PostgreSQL only the throughput is reported.
        return Ok(());
    }
    report.set("lifecycle_p99_ms", run.ms(0.99));

    // Delivery latency: lifecycles started at half that rate, open loop.
    let rate = max_rate / 2.0;
    cast.recording.store(true, Ordering::Relaxed);
    reporter.recording.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut started = 0u64;
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < plan.window {
        ticker.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while started < due {
            let (cast, ch) = (cast.clone(), channels[started as usize % 4].clone());
            let n = started;
            tasks.spawn(async move { lifecycle(ch, &cast, n).await });
            started += 1;
        }
    }
    let mut paced_failures = BTreeMap::<String, u64>::new();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.expect("a lifecycle task panicked") {
            *paced_failures.entry(e).or_default() += 1;
        }
    }
    println!(
        "   paced at {:.0}/s for {:.1} s: {started} lifecycles started",
        rate,
        plan.window.as_secs_f64()
    );
    if !paced_failures.is_empty() {
        report.failures.push(format!(
            "lifecycle (paced): {paced_failures:?} of {started}"
        ));
    }

    // The reporter must have every event up to the last stop.
    let target = cast.last_stop.load(Ordering::Relaxed);
    let mut seen = reporter.seen.clone();
    let caught_up = tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|s| *s >= target))
        .await
        .is_ok_and(|r| r.is_ok());
    reporter.recording.store(false, Ordering::Relaxed);
    let _ = reporter.stop.send(true);
    let followed = reporter.task.await.map_err(|e| e.to_string())?;
    server.alive()?;
    if !caught_up {
        return Err(format!(
            "the reporter did not receive the last stop (sequence {target}) within 30 s; it had \
             {}{}",
            *reporter.seen.borrow(),
            followed
                .error
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    let (completed, failed) = (
        cast.completed.load(Ordering::Relaxed),
        cast.failed.load(Ordering::Relaxed),
    );
    if failed == 0 && followed.events != REPORTING_PER_LIFECYCLE * completed {
        // Every lifecycle completed, so the reporter must have exactly 8 events of each.
        return Err(format!(
            "the reporter received {} events; {completed} lifecycles make {}",
            followed.events,
            REPORTING_PER_LIFECYCLE * completed
        ));
    }
    println!(
        "   the reporter received all {} reporting events of {completed} lifecycles",
        followed.events
    );
    let latency = followed.latency.expect("histogram");
    println!(
        "   delivery (event time → reporter): {} events, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.len(),
        latency.value_at_quantile(0.5) as f64 / 1_000.0,
        latency.value_at_quantile(0.99) as f64 / 1_000.0,
        latency.max() as f64 / 1_000.0
    );
    if latency.is_empty() {
        return Err("the reporter received nothing while delivery was measured".into());
    }
    report.set(
        "event_delivery_p50_ms",
        latency.value_at_quantile(0.5) as f64 / 1_000.0,
    );
    report.set(
        "event_delivery_p99_ms",
        latency.value_at_quantile(0.99) as f64 / 1_000.0,
    );
    let acks = std::mem::take(&mut *cast.acks.lock().expect("acks"));
    let mut after_ack = histogram();
    for (id, ack) in &acks {
        if let Some(received) = followed.stopped.get(id) {
            after_ack
                .saturating_record(received.saturating_duration_since(*ack).as_micros() as u64);
        }
    }
    if !after_ack.is_empty() {
        report.set(
            "event_delivery_after_ack_p50_ms",
            after_ack.value_at_quantile(0.5) as f64 / 1_000.0,
        );
        report.set(
            "event_delivery_after_ack_p99_ms",
            after_ack.value_at_quantile(0.99) as f64 / 1_000.0,
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: fan-out

async fn fanout_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    let mut server = ctx
        .interaction_server(&ctx.dir("fanout"), Some(CAPACITY_CONFIG))
        .await?;
    let channels = connect(server.addr, 4).await?;
    let agent_count = plan.fanout_stops.div_ceil(PER_AGENT).max(16);
    let agents = log_in_agents(ctx, &channels, "fan-a", agent_count, false).await?;
    let (pool, _) = submit_held(&channels, &agents, plan.fanout_stops).await?;
    // Each stop makes Revoked (to its agent), PartyRemoved and ProcessingStopped: a reporter gets 2.
    let expected = 2 * pool.len() as u64;

    let subscribers = plan.subscribers;
    let connections = connect(
        server.addr,
        subscribers.div_ceil(SUBSCRIBERS_PER_CONNECTION),
    )
    .await?;
    let token = ctx.token(Role::Reporter, "fanout");
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    for k in 0..subscribers {
        let ch = connections[k / SUBSCRIBERS_PER_CONNECTION].clone();
        let mut stream = EventServiceClient::new(ch)
            .subscribe(authed(
                SubscribeRequest {
                    after_sequence: 0,
                    from_head: true,
                    filter: Some(EventFilter::default()),
                },
                &token,
            ))
            .await
            .map_err(|s| status_text(&format!("Subscribe #{k}"), &s))?
            .into_inner();
        let delivered = delivered.clone();
        readers.spawn(async move {
            let mut n = 0u64;
            while n < expected {
                match stream.message().await {
                    Ok(Some(_)) => {
                        n += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => return Err(format!("subscriber #{k}: the stream ended at {n}")),
                    Err(s) => return Err(status_text(&format!("subscriber #{k}"), &s)),
                }
            }
            Ok(Instant::now())
        });
    }
    println!(
        "   {subscribers} reporter subscribers on {} connections follow the head; {} stops \
         ({expected} reporting events) are committed at c64",
        connections.len(),
        pool.len()
    );

    let start = Instant::now();
    let producer = {
        let (channels, pool, agents) = (channels.clone(), Arc::new(pool), agents.clone());
        tokio::spawn(async move {
            let items = pool.len() as u64;
            drive(&channels, 64, None, items, stop_op(pool, agents)).await
        })
    };
    let deadline = tokio::time::Instant::from_std(start + plan.fanout_limit);
    let (mut complete, mut finished, mut errors) = (0usize, start, Vec::new());
    loop {
        match tokio::time::timeout_at(deadline, readers.join_next()).await {
            Ok(Some(Ok(Ok(at)))) => {
                complete += 1;
                finished = finished.max(at);
            }
            Ok(Some(Ok(Err(e)))) => errors.push(e),
            Ok(Some(Err(e))) => errors.push(e.to_string()),
            Ok(None) | Err(_) => break,
        }
    }
    let counted = delivered.load(Ordering::Relaxed);
    readers.abort_all();
    let producer = producer.await.map_err(|e| e.to_string())?;
    println!("   producer: {}", producer.summary());
    server.alive()?;
    report.failed_calls("fan-out producer", &producer);
    if let Some(first) = errors.first() {
        return Err(format!("{} subscriber(s) failed: {first}", errors.len()));
    }
    let elapsed = if complete == subscribers {
        finished - start
    } else {
        report.note(format!(
            "fan-out: {complete} of {subscribers} subscribers had every event when the {:?} time \
             box ended; the rate counts what was delivered by then",
            plan.fanout_limit
        ));
        plan.fanout_limit
    };
    println!(
        "   {counted} deliveries in {:.2} s ({complete} of {subscribers} subscribers complete)",
        elapsed.as_secs_f64()
    );
    report.set("fanout_subscribers", subscribers as f64);
    report.set(
        "fanout_deliveries_per_s",
        counted as f64 / elapsed.as_secs_f64(),
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: sessions

/// Desktops: an agent token each, and the session each one logged in.
struct Desktops {
    tokens: Vec<Token>,
    sessions: Vec<OnceLock<String>>,
}

impl Desktops {
    fn new(ctx: &Ctx, prefix: &str, count: usize) -> Arc<Desktops> {
        Arc::new(Desktops {
            tokens: (0..count)
                .map(|i| ctx.token(Role::Agent, &format!("{prefix}{i}")))
                .collect(),
            sessions: (0..count).map(|_| OnceLock::new()).collect(),
        })
    }

    fn len(&self) -> u64 {
        self.tokens.len() as u64
    }
}

/// Desktop `i` logs in: chat, email and voice, Not Ready, no `Connect` stream.
fn login_op(
    desktops: Arc<Desktops>,
) -> impl Fn(Channel, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static {
    move |ch, i| {
        let desktops = desktops.clone();
        Box::pin(async move {
            let session = SessionServiceClient::new(ch)
                .login(authed(
                    ss::LoginRequest {
                        request_id: rid(),
                        agent_id: String::new(),
                        place_id: format!("place-{i}"),
                        media_types: vec!["chat".into(), "email".into(), "voice".into()],
                        ready: false,
                    },
                    &desktops.tokens[i as usize],
                ))
                .await
                .map_err(|s| status_text("Login", &s))?
                .into_inner();
            let _ = desktops.sessions[i as usize].set(session.session_id);
            Ok(())
        })
    }
}

/// Desktop `i` logs out with a reason.
fn logout_op(
    desktops: Arc<Desktops>,
) -> impl Fn(Channel, u64) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static {
    move |ch, i| {
        let desktops = desktops.clone();
        Box::pin(async move {
            let session_id = desktops.sessions[i as usize]
                .get()
                .cloned()
                .ok_or("Logout: this desktop has no session")?;
            SessionServiceClient::new(ch)
                .logout(authed(
                    ss::LogoutRequest {
                        request_id: rid(),
                        session_id,
                        reason: reason("end-of-shift"),
                    },
                    &desktops.tokens[i as usize],
                ))
                .await
                .map(|_| ())
                .map_err(|s| status_text("Logout", &s))
        })
    }
}

async fn sessions_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    let dir = ctx.dir("sessions");
    let mut ixn = ctx.interaction_server(&dir.join("ixn"), None).await?;
    let mut svc = ctx.session_service(&dir.join("sessions"), ixn.addr).await?;
    let channels = connect(svc.addr, 4).await?;

    // Warm-up: enough logins and logouts to fill session-service's event ring and caches.
    let warm = Desktops::new(ctx, "warm-", plan.session_warmup);
    drive(&channels, 64, None, warm.len(), login_op(warm.clone()))
        .await
        .clean("warm-up logins")?;
    drive(&channels, 64, None, warm.len(), logout_op(warm))
        .await
        .clean("warm-up logouts")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = svc.rss()?;

    // The sessions log in two halves, memory read after each: the growth over all of them is the
    // key; the second half's alone shows the cost of a session once caches and pools are full.
    let desktops = Desktops::new(ctx, "agent-", plan.sessions);
    let (run, middle, halves) =
        in_halves(&channels, desktops.len(), login_op(desktops.clone()), &svc).await?;
    println!(
        "   {} logins, c64 over 4 connections: {}",
        desktops.len(),
        run.summary()
    );
    svc.alive()?;
    ixn.alive()?;
    report.failed_calls("login", &run);
    report.set("login_per_s", run.per_sec());
    report.set("login_p99_ms", run.ms(0.99));
    if halves.1 == 0 {
        return Err("no login succeeded".into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = svc.rss()?;
    println!(
        "   session-service VmRSS {} → {} ({} sessions) → {} ({} sessions)",
        mib(before),
        mib(middle),
        halves.0,
        mib(after),
        halves.1
    );
    report.set(
        "session_rss_bytes_per_session",
        (after as f64 - before as f64) / halves.1 as f64,
    );
    report.set(
        "session_rss_bytes_per_session_second_half",
        (after as f64 - middle as f64) / (halves.1 - halves.0).max(1) as f64,
    );

    let run = warm_and_measure(
        plan,
        None,
        &channels,
        64,
        desktops.len(),
        logout_op(desktops),
    )
    .await;
    println!("   logouts, c64 over 4 connections: {}", run.summary());
    svc.alive()?;
    ixn.alive()?;
    if run.exhausted {
        report.note(format!(
            "logout: every session was logged out after {:.2} s of the window",
            run.elapsed.as_secs_f64()
        ));
    }
    report.failed_calls("logout", &run);
    report.set("logout_per_s", run.per_sec());
    report.set("logout_p99_ms", run.ms(0.99));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: a small and a large store

async fn stored_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    // Pools sized from the stop case's c64 rate, when it ran.
    let rate = report
        .values
        .get("stop_rps_c64")
        .copied()
        .unwrap_or(3_000.0);
    if plan.stored_large != 1_000_000 {
        report.note(format!(
            "stop_p99_ratio_1m_vs_1k compares {} stored interactions with {} in this run",
            Plan::label(plan.stored_large),
            Plan::label(plan.stored_small)
        ));
    }
    for (key, stored) in [
        ("stop_p99_ms_c64_1k", plan.stored_small),
        ("stop_p99_ms_c64_1m", plan.stored_large),
    ] {
        let label = Plan::label(stored);
        let dir = ctx.dir(&format!("stored-{label}"));
        // The server creates its schema; stopped, it lets the rows be written into its file.
        drop(ctx.interaction_server(&dir, Some(CAPACITY_CONFIG)).await?);
        let t = Instant::now();
        let db = dir.join("data").join("interactions.db");
        tokio::task::spawn_blocking(move || seed_stopped(&db, stored))
            .await
            .map_err(|e| e.to_string())??;
        println!(
            "   {label}: seeded {stored} stopped interactions ({} events) in {:.1} s",
            stored * SEEDED_EVENTS,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let mut server = ctx.interaction_server(&dir, Some(CAPACITY_CONFIG)).await?;
        let channels = connect(server.addr, 4).await?;
        let need = needed(plan, 1.2 * rate);
        let agents =
            log_in_agents(ctx, &channels, "stored-a", need.div_ceil(PER_AGENT), false).await?;
        let (pool, _) = submit_held(&channels, &agents, need).await?;
        println!(
            "   {label}: started, {} HANDLING interactions prepared in {:.1} s",
            pool.len(),
            t.elapsed().as_secs_f64()
        );
        let items = pool.len() as u64;
        let run = warm_and_measure(
            plan,
            None,
            &channels,
            64,
            items,
            stop_op(Arc::new(pool), agents),
        )
        .await;
        println!("   {label}: c64 over 4 connections: {}", run.summary());
        server.alive()?;
        report.failed_calls(&format!("stop c64 over {label} stored"), &run);
        report.set(key, run.ms(0.99));
    }
    Ok(())
}

/// Events a stop leaves per interaction: InteractionSubmitted, PartyAdded, Revoked (to the agent),
/// PartyRemoved, ProcessingStopped.
const SEEDED_EVENTS: usize = 5;

const INSERT_INTERACTION: &str = "INSERT INTO interactions
    (id, tenant, state, queue, owner, invitee, submitter, queued_seq, version, body)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_EVENT: &str = "INSERT INTO events
    (sequence, tenant, kind, interaction_id, reporting, recipients, submitter, body)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Writes `count` stopped interactions, each with the rows and events its life would have left,
/// into interaction-server's SQLite file (the server must not be running). The columns are the
/// ones `interaction-server/src/store/sqlite.rs` and `proto/src/sqlite.rs` write.
fn seed_stopped(db: &Path, count: usize) -> Result<(), String> {
    use ixn_proto::clock::timestamp;
    let e = |e: rusqlite::Error| format!("seeding {}: {e}", db.display());
    let mut conn = rusqlite::Connection::open(db).map_err(e)?;
    // Setup only: the file is synced once at the end.
    conn.pragma_update(None, "synchronous", "OFF").map_err(e)?;
    let mut sequence: i64 = conn
        .query_row("SELECT coalesce(max(sequence), 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(e)?;
    // They lived two days ago, a millisecond apart.
    let epoch = micros_now() - 2 * 86_400 * 1_000_000;
    let mut done = 0;
    while done < count {
        let chunk = (count - done).min(50_000);
        let tx = conn.transaction().map_err(e)?;
        {
            let mut rows = tx.prepare_cached(INSERT_INTERACTION).map_err(e)?;
            let mut events = tx.prepare_cached(INSERT_EVENT).map_err(e)?;
            for i in done..done + chunk {
                let id = uuid::Uuid::now_v7().to_string();
                let agent_id = format!("seed-a{}", i % 1_000);
                let agent = Party::agent(agent_id.clone(), format!("place-{}", i % 1_000));
                let key = agent.key();
                let created = epoch + i as i64 * 1_000;
                let handling = pb::Interaction {
                    interaction_id: id.clone(),
                    tenant: TENANT.into(),
                    media_type: "chat".into(),
                    state: InteractionState::Handling as i32,
                    owner: Some(agent.clone()),
                    submitted_by: Some(agent.clone()),
                    create_time: Some(timestamp(created)),
                    update_time: Some(timestamp(created)),
                    version: 1,
                    ..Default::default()
                };
                let stopped = pb::Interaction {
                    state: InteractionState::Stopped as i32,
                    owner: None,
                    update_time: Some(timestamp(created + 500)),
                    stop_reason: reason("done"),
                    stopped_by: Some(agent.clone()),
                    version: 2,
                    ..handling.clone()
                };
                rows.execute(rusqlite::params![
                    id,
                    TENANT,
                    InteractionState::Stopped as i32,
                    "",
                    "",
                    "",
                    key,
                    0i64,
                    2i64,
                    stopped.encode_to_vec()
                ])
                .map_err(e)?;
                let bodies = [
                    (
                        created,
                        Body::InteractionSubmitted(ev::InteractionSubmitted {
                            interaction: Some(handling),
                        }),
                    ),
                    (
                        created,
                        Body::PartyAdded(ev::PartyAdded {
                            interaction_id: id.clone(),
                            party: Some(agent.clone()),
                        }),
                    ),
                    (
                        created + 500,
                        Body::Revoked(ev::Revoked {
                            interaction_id: id.clone(),
                            ticket_id: String::new(),
                            cause: "stopped".into(),
                        }),
                    ),
                    (
                        created + 500,
                        Body::PartyRemoved(ev::PartyRemoved {
                            interaction_id: id.clone(),
                            party: Some(agent.clone()),
                        }),
                    ),
                    (
                        created + 500,
                        Body::ProcessingStopped(ev::ProcessingStopped {
                            interaction_id: id.clone(),
                            reason: reason("done"),
                            stopped_by: Some(agent.clone()),
                        }),
                    ),
                ];
                let correlation = rid();
                for (at, body) in bodies {
                    sequence += 1;
                    let kind = ixn_proto::event::kind(&body);
                    let reporting = ixn_proto::event::is_reporting(&body);
                    let to = if reporting {
                        Vec::new()
                    } else {
                        vec![agent.clone()]
                    };
                    let recipients: Vec<String> = to.iter().map(Party::key).collect();
                    let event = Event {
                        sequence: sequence as u64,
                        event_id: rid(),
                        time: Some(timestamp(at)),
                        source: ixn_proto::event::SOURCE_INTERACTION_SERVER.into(),
                        tenant: TENANT.into(),
                        correlation_id: correlation.clone(),
                        traceparent: String::new(),
                        actor: Some(agent.clone()),
                        to,
                        relayed_from: None,
                        body: Some(body),
                    };
                    events
                        .execute(rusqlite::params![
                            sequence,
                            TENANT,
                            kind,
                            id,
                            reporting,
                            serde_json::to_string(&recipients).expect("strings encode"),
                            key,
                            event.encode_to_vec()
                        ])
                        .map_err(e)?;
                }
            }
        }
        tx.commit().map_err(e)?;
        done += chunk;
    }
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .map_err(e)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Case: memory per live interaction

async fn live_case(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let plan = &ctx.plan;
    let mut server = ctx
        .interaction_server(&ctx.dir("live"), Some(CAPACITY_CONFIG))
        .await?;
    let channels = connect(server.addr, 4).await?;
    let agents = log_in_agents(
        ctx,
        &channels,
        "live-a",
        plan.live.div_ceil(PER_AGENT),
        false,
    )
    .await?;
    // Warm-up: interactions created and stopped fill the event ring (16,384 events) and caches.
    let (warm, _) = submit_held(&channels, &agents, plan.live_warmup).await?;
    let items = warm.len() as u64;
    drive(
        &channels,
        SETUP_CONCURRENCY,
        None,
        items,
        stop_op(Arc::new(warm), agents.clone()),
    )
    .await
    .clean("warm-up stops")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss()?;
    let (first, _) = submit_held(&channels, &agents, plan.live / 2).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let middle = server.rss()?;
    let (second, run) = submit_held(&channels, &agents, plan.live - plan.live / 2).await?;
    println!(
        "   {} HANDLING interactions over {} agents; the second half: {}",
        first.len() + second.len(),
        agents.names.len(),
        run.summary()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss()?;
    server.alive()?;
    println!(
        "   interaction-server VmRSS {} → {} ({} live) → {} ({} live)",
        mib(before),
        mib(middle),
        first.len(),
        mib(after),
        first.len() + second.len()
    );
    report.set(
        "interaction_server_rss_bytes_per_live_interaction",
        (after as f64 - before as f64) / (first.len() + second.len()) as f64,
    );
    report.set(
        "interaction_server_rss_bytes_per_live_interaction_second_half",
        (after as f64 - middle as f64) / second.len().max(1) as f64,
    );
    Ok(())
}
