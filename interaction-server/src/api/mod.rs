//! The gRPC handlers. Each one, in the contract's order: the token (the interceptor), the role, the
//! arguments; then the engine, whose domain checks existence, "already stopped", entitlement and
//! state. Handlers decode and encode; they decide nothing.

mod agents;
mod interactions;

use crate::domain::{Caller, Command};
use crate::engine::{Answer, Engine, Submission};
use crate::error::Error;
use ixn_proto::auth::Identity;
use ixn_proto::error::Failure;
use ixn_proto::validate;
use std::sync::Arc;
use tonic::{Response, Status};

pub use ixn_proto::subscribe::Events;

/// The state every handler shares.
#[derive(Clone, Debug)]
pub struct Api {
    engine: Arc<Engine>,
}

impl Api {
    pub fn new(engine: Arc<Engine>) -> Api {
        Api { engine }
    }

    /// Refuses a media type the platform does not list.
    fn media(&self, field: &str, media: &str) -> Result<(), Failure> {
        validate::name(field, media)?;
        if self.engine.platform.knows_media(media) {
            Ok(())
        } else {
            Err(Failure::invalid_argument(
                field,
                format!("unknown media `{media}`"),
            ))
        }
    }

    /// Runs a validated command and answers with the response it calls for.
    async fn run<R: FromAnswer>(
        &self,
        caller: Caller,
        request_id: &str,
        fingerprint: Vec<u8>,
        command: Command,
        traceparent: String,
    ) -> Result<Response<R>, Status> {
        let answer = self
            .engine
            .execute(Submission {
                caller,
                request_id: request_id.to_owned(),
                fingerprint,
                command,
                traceparent,
            })
            .await?;
        R::from_answer(answer)
            .map(Response::new)
            .ok_or_else(|| Status::internal("the engine answered another method"))
    }
}

/// The caller in its one tenant.
fn caller(identity: &Identity) -> Result<Caller, Failure> {
    Ok(Caller {
        tenant: identity.tenant()?.to_owned(),
        role: identity.role(),
        sub: identity.claims.sub.clone(),
        agent_id: identity.claims.agent_id.clone(),
    })
}

fn status(e: impl Into<Error>) -> Status {
    e.into().into()
}

/// Picks the response a method expects out of the engine's answer.
trait FromAnswer: Sized {
    fn from_answer(answer: Answer) -> Option<Self>;
}

macro_rules! from_answer {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl FromAnswer for $t {
            fn from_answer(answer: Answer) -> Option<Self> {
                match answer {
                    Answer::$variant(r) => Some(r),
                    _ => None,
                }
            }
        })*
    };
}

use ixn_proto::interaction as pb;
from_answer!(
    pb::SubmitResponse => Submit,
    pb::PullResponse => Pull,
    pb::DeliverResponse => Deliver,
    pb::AcceptResponse => Accept,
    pb::RejectResponse => Reject,
    pb::StopProcessingResponse => StopProcessing,
    pb::PlaceInQueueResponse => PlaceInQueue,
    pb::ChangePropertiesResponse => ChangeProperties,
    pb::Agent => Agent,
);
