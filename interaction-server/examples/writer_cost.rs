//! The writer's cost per StopProcessing, counted in instructions: unlike time, a count is the same
//! from one run to the next on a machine whose speed wanders, so a change worth a few percent of
//! the writer can be judged. Run it under callgrind, which counts only inside the writer's batches:
//!
//! ```text
//! cargo build --release -p interaction-server --example writer_cost
//! valgrind --tool=callgrind --callgrind-out-file=writer.out \
//!     --toggle-collect='*Writer*run_batch*' \
//!     target/release/examples/writer_cost [--stops N] [--batch B]
//! callgrind_annotate --inclusive=yes writer.out | head -40
//! ```
//!
//! and divide callgrind's total (`Collected`) by the stops. The store is seeded straight through the
//! storage layer (agents logged in, each holding interactions in HANDLING), so the only batches the
//! engine commits are the measured ones: `--stops` StopProcessing calls by the owning agents, with
//! request ids, sent `--batch` at a time, each group answered before the next is sent (under
//! callgrind, whose threads take turns, each group is one batch). The SQLite database is durable
//! as in production (`synchronous=FULL`); what the kernel does for its writes and syncs is not
//! counted (valgrind sees only the process's own instructions). Without valgrind it runs as fast
//! as it can and prints the wall time, which is only a sanity check.

use clap::Parser;
use interaction_server::clock::Clock;
use interaction_server::domain::{Agent, AgentKey, Caller, Command, Interaction, Phase, Platform};
use interaction_server::engine::{Engine, Submission};
use interaction_server::store::{Sqlite, Store, Tx};
use ixn_proto::auth::Role;
use ixn_proto::common::{Party, Reason};
use std::collections::BTreeMap;
use std::time::Instant;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "StopProcessing through the writer, for an instruction count per stop")]
struct Args {
    /// How many StopProcessing calls are measured.
    #[arg(long, default_value_t = 2_000)]
    stops: usize,
    /// How many are sent together, and so committed in one batch.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Interactions each agent holds.
    #[arg(long, default_value_t = 10)]
    per_agent: usize,
}

const TENANT: &str = "t1";

/// The server's allocator, whose instructions are part of the writer's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.batch == 0 || args.per_agent == 0 {
        return Err("--batch and --per-agent must be at least 1".into());
    }
    let dir = tempfile::tempdir()?;
    let platform = Platform {
        default_capacity: u32::try_from(args.per_agent)?,
        ..Platform::default()
    };
    let clock = Clock::System;

    let mut store = Sqlite::open(dir.path())?;
    let held = seed(&mut store, &platform, &clock, args.stops, args.per_agent)?;
    let engine = Engine::start(store, platform, clock)?;

    let started = Instant::now();
    for group in held.chunks(args.batch) {
        let calls: Vec<_> = group
            .iter()
            .map(|(agent_id, id)| {
                let engine = engine.clone();
                let submission = stop(agent_id, *id);
                tokio::spawn(async move { engine.execute(submission).await })
            })
            .collect();
        for call in calls {
            call.await?
                .map_err(|e| format!("StopProcessing failed: {e:?}"))?;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} stops in groups of {} ({} agents holding {} each): {:.1} ms, {:.1} µs a stop",
        held.len(),
        args.batch,
        held.len().div_ceil(args.per_agent),
        args.per_agent,
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / held.len().max(1) as f64,
    );
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    Ok(())
}

/// Logs agents in and gives each `per_agent` interactions in HANDLING, in one transaction of
/// `store`, which the engine then loads; returns (agent, interaction) for `count` interactions, in
/// the order they were created.
fn seed(
    store: &mut Sqlite,
    platform: &Platform,
    clock: &Clock,
    count: usize,
    per_agent: usize,
) -> Result<Vec<(String, Uuid)>, Box<dyn std::error::Error>> {
    let now = clock.now();
    let mut tx = store.begin(&mut std::iter::empty())?;
    let mut held = Vec::with_capacity(count);
    for n in 0..count.div_ceil(per_agent) {
        let agent_id = format!("agent-{n}");
        let mut agent = Agent::new(&AgentKey::new(TENANT, &agent_id));
        agent.logged_in = true;
        agent.place_id = format!("place-{n}");
        agent.version = 1;
        tx.save_agent(&agent.row(platform), 0, 1)?;
        let owner = Party::agent(&agent_id, &agent.place_id);
        for _ in 0..per_agent.min(count - held.len()) {
            let id = Uuid::now_v7();
            tx.save_interaction(
                &Interaction {
                    id,
                    tenant: TENANT.into(),
                    media_type: "chat".into(),
                    phase: Phase::Handling,
                    queue: String::new(),
                    owner: Some(owner.clone()),
                    submitted_by: owner.clone(),
                    invite: None,
                    properties: BTreeMap::new(),
                    created: now,
                    updated: now,
                    stop_reason: None,
                    stopped_by: None,
                    version: 1,
                    queued_seq: 0,
                },
                None,
            )?;
            held.push((agent_id.clone(), id));
        }
    }
    tx.commit()?;
    Ok(held)
}

/// The owning agent's StopProcessing of `id`, as the API hands it to the engine.
fn stop(agent_id: &str, id: Uuid) -> Submission {
    let reason = Some(Reason {
        code: "done".into(),
        ..Default::default()
    });
    Submission {
        caller: Caller {
            tenant: TENANT.into(),
            role: Role::Agent,
            sub: agent_id.into(),
            agent_id: Some(agent_id.into()),
        },
        request_id: Uuid::now_v7().to_string(),
        fingerprint: id.as_bytes().to_vec(),
        command: Command::StopProcessing {
            interaction_id: id,
            reason,
        },
        traceparent: String::new(),
    }
}
