//! `EventService.Subscribe`: the log, replayed after a sequence and then followed live, in order,
//! with no gap and no duplicate, filtered to what the caller may see.

use crate::clock::Clock;
use crate::domain::party_key;
use crate::log::{Log, Viewer, passes};
use crate::store::REPLAY_CHUNK;
use ixn_proto::auth::{Role, identity};
use ixn_proto::common::Party;
use ixn_proto::error::{Failure, Reason};
use ixn_proto::events::event_service_server::EventService;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::validate;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Events buffered per subscriber. A reader that falls behind holds back only its own feeder task,
/// which waits; what it has not read stays in the log, so its memory is bounded by this buffer.
const SUBSCRIBER_BUFFER: usize = 256;
/// The most entries a filter may list.
const MAX_FILTER_ENTRIES: usize = 100;

/// The event stream service.
#[derive(Clone, Debug)]
pub struct Events {
    log: Arc<Log>,
    clock: Clock,
    /// Flips to true when the server drains: every stream ends with UNAVAILABLE.
    draining: watch::Receiver<bool>,
}

impl Events {
    pub fn new(log: Arc<Log>, clock: Clock, draining: watch::Receiver<bool>) -> Events {
        Events {
            log,
            clock,
            draining,
        }
    }
}

#[tonic::async_trait]
impl EventService for Events {
    type SubscribeStream = ReceiverStream<Result<Event, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let filter = r.filter.unwrap_or_default();
        check_filter(&filter)?;
        let head = self.log.head();
        if r.after_sequence > head {
            return Err(Failure::new(
                Reason::SequenceOutOfRange,
                format!(
                    "after_sequence {} is beyond the head {head}",
                    r.after_sequence
                ),
            )
            .with_meta("head", head)
            .into());
        }
        let claims = &who.claims;
        let key = match claims.role {
            Role::Agent => party_key(&Party::agent(
                claims.agent_id.clone().unwrap_or_default(),
                "",
            )),
            Role::Router => party_key(&Party::router(&claims.sub)),
            Role::MediaServer => party_key(&Party::media_server(&claims.sub)),
            _ => String::new(),
        };
        let viewer = Viewer {
            tenant: who.tenant.clone(),
            role: claims.role,
            key,
        };
        let start = if r.from_head { head } else { r.after_sequence };
        let expires = claims.exp.saturating_mul(1_000_000);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        // The stream is fed from its own task, so a slow reader holds back only itself.
        tokio::spawn(follow(
            self.log.clone(),
            viewer,
            filter,
            start,
            tx,
            self.clock.clone(),
            expires,
            self.draining.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn check_filter(filter: &EventFilter) -> Result<(), Failure> {
    if filter.kinds.len() > MAX_FILTER_ENTRIES {
        return Err(Failure::invalid_argument("filter.kinds", "too many kinds"));
    }
    if let Some(unknown) = filter
        .kinds
        .iter()
        .find(|k| !ixn_proto::event::KINDS.contains(&k.as_str()))
    {
        return Err(Failure::invalid_argument(
            "filter.kinds",
            format!("unknown kind `{unknown}`"),
        ));
    }
    if filter.interaction_ids.len() > MAX_FILTER_ENTRIES {
        return Err(Failure::invalid_argument(
            "filter.interaction_ids",
            "too many ids",
        ));
    }
    for id in &filter.interaction_ids {
        validate::uuid("filter.interaction_ids", id)?;
    }
    Ok(())
}

/// Feeds one subscriber from `after` on until it goes away, its token expires or the server drains.
#[allow(clippy::too_many_arguments)]
async fn follow(
    log: Arc<Log>,
    viewer: Viewer,
    filter: EventFilter,
    mut after: u64,
    tx: mpsc::Sender<Result<Event, Status>>,
    clock: Clock,
    expires: i64,
    mut draining: watch::Receiver<bool>,
) {
    let mut head = log.watch_head();
    loop {
        if *draining.borrow() {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the server is shutting down; resume from the last sequence",
                )))
                .await;
            return;
        }
        let known = *head.borrow_and_update();
        if after >= known {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = draining.changed() => {}
                _ = tx.closed() => return,
                _ = clock.sleep_until(expires) => {
                    let status = Failure::new(Reason::TokenExpired, "the token has expired; resume with a fresh one")
                        .with_meta("after_sequence", after)
                        .into_status();
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            continue;
        }
        let entries = match log.read_after(after, REPLAY_CHUNK).await {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                return;
            }
        };
        if entries.is_empty() {
            // The head is published after the commit, so this is not expected; never spin on it.
            tokio::task::yield_now().await;
            continue;
        }
        for entry in entries {
            if clock.now() >= expires {
                break;
            }
            after = entry.sequence;
            if viewer.may_see(&entry)
                && passes(&filter, &entry)
                && tx.send(Ok(entry.event.clone())).await.is_err()
            {
                return;
            }
        }
        if clock.now() >= expires {
            let status = Failure::new(
                Reason::TokenExpired,
                "the token has expired; resume with a fresh one",
            )
            .with_meta("after_sequence", after)
            .into_status();
            let _ = tx.send(Err(status)).await;
            return;
        }
    }
}
