//! Time, injected: the system clock in production, a manual one in tests (invite deadlines and token
//! expiry move when a test says so, never by sleeping).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// A source of the current time.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(ManualClock),
}

impl Clock {
    pub fn now(&self) -> Micros {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as Micros)
                .unwrap_or_default(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Seconds since the epoch, for token checks.
    pub fn now_secs(&self) -> i64 {
        self.now().div_euclid(1_000_000)
    }

    /// Waits until the clock reads `deadline` or later.
    pub async fn sleep_until(&self, deadline: Micros) {
        match self {
            Clock::System => {
                let wait = deadline.saturating_sub(self.now()).max(0) as u64;
                tokio::time::sleep(Duration::from_micros(wait)).await;
            }
            Clock::Manual(m) => {
                let _sleeping = Sleeping::new(m, deadline);
                let mut rx = m.changed.subscribe();
                while m.now() < deadline {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// A clock that moves only when told to, and that shows who waits on it.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    changed: Arc<watch::Sender<Micros>>,
    /// How many wait until each deadline.
    sleepers: Arc<watch::Sender<BTreeMap<Micros, usize>>>,
}

/// One wait on a manual clock, counted while it lasts.
struct Sleeping<'a> {
    clock: &'a ManualClock,
    deadline: Micros,
}

impl<'a> Sleeping<'a> {
    fn new(clock: &'a ManualClock, deadline: Micros) -> Sleeping<'a> {
        clock
            .sleepers
            .send_modify(|s| *s.entry(deadline).or_default() += 1);
        Sleeping { clock, deadline }
    }
}

impl Drop for Sleeping<'_> {
    fn drop(&mut self) {
        self.clock.sleepers.send_modify(|s| {
            if let Some(n) = s.get_mut(&self.deadline) {
                *n -= 1;
                if *n == 0 {
                    s.remove(&self.deadline);
                }
            }
        });
    }
}

impl ManualClock {
    pub fn new(start: Micros) -> ManualClock {
        ManualClock {
            now: Arc::new(AtomicI64::new(start)),
            changed: Arc::new(watch::Sender::new(start)),
            sleepers: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }

    /// Starts at the system clock's reading, so tokens minted by real clocks stay valid.
    pub fn starting_now() -> ManualClock {
        ManualClock::new(Clock::System.now())
    }

    pub fn now(&self) -> Micros {
        self.now.load(Ordering::SeqCst)
    }

    /// Completes once something waits on this clock until exactly `deadline`: a test knows then
    /// that moving the clock past it acts on that wait, not on one that has yet to start.
    pub async fn someone_sleeps_until(&self, deadline: Micros) {
        let mut sleepers = self.sleepers.subscribe();
        let _ = sleepers.wait_for(|s| s.contains_key(&deadline)).await;
    }

    /// Moves the clock forward and wakes whatever waits on it.
    pub fn advance(&self, by: Duration) {
        let now = self
            .now
            .fetch_add(by.as_micros() as Micros, Ordering::SeqCst)
            + by.as_micros() as Micros;
        self.changed.send_replace(now);
    }
}

/// A protobuf timestamp from microseconds since the epoch.
pub fn timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Microseconds since the epoch from a protobuf timestamp.
pub fn micros(ts: &prost_types::Timestamp) -> Micros {
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000
}

/// The clock that rate limits are counted on: the service's own, so that a test moves it. The
/// system's is read monotonically (time since the process's first reading): a wall clock stepped
/// back would otherwise refuse every recent caller until it caught up.
impl governor::clock::Clock for Clock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> governor::nanos::Nanos {
        match self {
            Clock::System => {
                static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                let start = *START.get_or_init(std::time::Instant::now);
                governor::nanos::Nanos::from(start.elapsed())
            }
            Clock::Manual(m) => governor::nanos::Nanos::from(m.now().max(0) as u64 * 1_000),
        }
    }
}
