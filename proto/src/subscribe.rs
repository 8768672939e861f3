//! `EventService.Subscribe`, as both services serve it over their own log: replayed after a sequence
//! and then followed live, in order, with no gap and no duplicate, filtered to what the caller may see.

use crate::auth::{Role, identity};
use crate::clock::Clock;
use crate::common::Party;
use crate::error::{Failure, Reason};
use crate::events::event_service_server::EventService;
use crate::events::{EventFilter, SubscribeRequest};
use crate::log::{DEFAULT_PATIENCE, Feed, Log, LogEntry, Outlet, Viewer, follow, passes};
use crate::validate;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The most entries a filter may list.
pub const MAX_FILTER_ENTRIES: usize = 100;

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
    type SubscribeStream = Outlet;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = identity(&request)?;
        let r = request.into_inner();
        let filter = r.filter.unwrap_or_default();
        check_filter(&filter)?;
        let mut head = self.log.head();
        if r.after_sequence > head {
            head = self
                .log
                .known_head()
                .await
                .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?;
        }
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
            Role::Agent => Party::agent(claims.agent_id.clone().unwrap_or_default(), "").key(),
            Role::Router => Party::router(&claims.sub).key(),
            Role::MediaServer => Party::media_server(&claims.sub).key(),
            _ => String::new(),
        };
        let viewer = Viewer {
            tenant: who.tenant.clone(),
            role: claims.role,
            key,
        };
        let start = if r.from_head { head } else { r.after_sequence };
        let expires = claims.exp.saturating_mul(1_000_000);
        // A reader that falls behind holds back only its own feeder task, which waits; what it has
        // not read stays in the log. One that stops reading is cut (see `log::stream`).
        let (tx, rx) = crate::log::stream(self.clock.clone(), DEFAULT_PATIENCE);
        let feed = Feed {
            log: self.log.clone(),
            visible: move |e: &LogEntry| viewer.may_see(e) && passes(&filter, e),
            ends_after: |_: &LogEntry| false,
            after: start,
            clock: self.clock.clone(),
            expires,
            draining: self.draining.clone(),
        };
        // The stream is fed from its own task, so a slow reader holds back only itself.
        tokio::spawn(follow(feed, tx));
        Ok(Response::new(rx))
    }
}

/// Checks a `Subscribe` filter's arguments: at most [`MAX_FILTER_ENTRIES`] kinds, each a known
/// kind, and as many interaction ids, each a UUID.
pub fn check_filter(filter: &EventFilter) -> Result<(), Failure> {
    if filter.kinds.len() > MAX_FILTER_ENTRIES {
        return Err(Failure::invalid_argument("filter.kinds", "too many kinds"));
    }
    if let Some(unknown) = filter
        .kinds
        .iter()
        .find(|k| !crate::event::KINDS.contains(&k.as_str()))
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
