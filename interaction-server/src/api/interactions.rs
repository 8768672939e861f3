//! `InteractionService`: the lifecycle of interactions and who processes them.

use super::{Api, caller, status};
use crate::domain::{Command, Phase, party_key};
use crate::limits;
use crate::store::{ListQuery, Visibility};
use ixn_proto::auth::{Role, identity};
use ixn_proto::error::{Failure, Reason};
use ixn_proto::interaction::interaction_service_server::InteractionService;
use ixn_proto::interaction::*;
use ixn_proto::trace::traceparent;
use ixn_proto::validate::{self, fingerprint};
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl InteractionService for Api {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::MediaServer, Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        self.media("media_type", &r.media_type)?;
        if who.role() == Role::Agent {
            validate::optional_name("queue", &r.queue)?;
        } else {
            validate::name("queue", &r.queue)?;
        }
        limits::check_properties(&r.properties, "properties").map_err(status)?;
        let command = Command::Submit {
            media_type: r.media_type.clone(),
            queue: r.queue.clone(),
            properties: r.properties.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Router])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("queue", &r.queue)?;
        if !r.media_type.is_empty() {
            self.media("media_type", &r.media_type)?;
        }
        let interaction_id = match r.interaction_id.as_str() {
            "" => None,
            id => Some(validate::uuid("interaction_id", id)?),
        };
        let command = Command::Pull {
            queue: r.queue.clone(),
            media_type: (!r.media_type.is_empty()).then(|| r.media_type.clone()),
            interaction_id,
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Router])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        let interaction_id = validate::uuid("interaction_id", &r.interaction_id)?;
        validate::name("agent_id", &r.agent_id)?;
        if u64::from(r.timeout_ms) > crate::domain::MAX_INVITE_TIMEOUT_MS {
            return Err(Failure::invalid_argument(
                "timeout_ms",
                format!("is more than {} ms", crate::domain::MAX_INVITE_TIMEOUT_MS),
            )
            .into());
        }
        let command = Command::Deliver {
            interaction_id,
            agent_id: r.agent_id.clone(),
            timeout_ms: u64::from(r.timeout_ms),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn accept(
        &self,
        request: Request<AcceptRequest>,
    ) -> Result<Response<AcceptResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        let command = Command::Accept {
            interaction_id: validate::uuid("interaction_id", &r.interaction_id)?,
            ticket_id: validate::uuid("ticket_id", &r.ticket_id)?,
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn reject(
        &self,
        request: Request<RejectRequest>,
    ) -> Result<Response<RejectResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::reason("reason", r.reason.as_ref())?;
        let command = Command::Reject {
            interaction_id: validate::uuid("interaction_id", &r.interaction_id)?,
            ticket_id: validate::uuid("ticket_id", &r.ticket_id)?,
            reason: r.reason.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn stop_processing(
        &self,
        request: Request<StopProcessingRequest>,
    ) -> Result<Response<StopProcessingResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::MediaServer, Role::Agent, Role::Router, Role::Admin])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::reason("reason", r.reason.as_ref())?;
        let command = Command::StopProcessing {
            interaction_id: validate::uuid("interaction_id", &r.interaction_id)?,
            reason: r.reason.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn place_in_queue(
        &self,
        request: Request<PlaceInQueueRequest>,
    ) -> Result<Response<PlaceInQueueResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Router, Role::Admin])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        let interaction_id = validate::uuid("interaction_id", &r.interaction_id)?;
        validate::name("queue", &r.queue)?;
        let command = Command::PlaceInQueue {
            interaction_id,
            queue: r.queue.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn change_properties(
        &self,
        request: Request<ChangePropertiesRequest>,
    ) -> Result<Response<ChangePropertiesResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::MediaServer, Role::Agent, Role::Router, Role::Admin])?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        let interaction_id = validate::uuid("interaction_id", &r.interaction_id)?;
        if r.changed.is_empty() && r.deleted.is_empty() {
            return Err(Failure::invalid_argument("changed", "nothing to change").into());
        }
        limits::check_properties(&r.changed, "changed").map_err(status)?;
        if r.deleted.len() > limits::MAX_PROPERTIES {
            return Err(Failure::invalid_argument("deleted", "too many keys").into());
        }
        for key in &r.deleted {
            validate::name("deleted", key)?;
        }
        let command = Command::ChangeProperties {
            interaction_id,
            changed: r.changed.clone(),
            deleted: r.deleted.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn get(
        &self,
        request: Request<GetInteractionRequest>,
    ) -> Result<Response<Interaction>, Status> {
        let who = identity(&request)?;
        who.require(&[
            Role::MediaServer,
            Role::Agent,
            Role::Router,
            Role::Reporter,
            Role::Service,
            Role::Admin,
        ])?;
        let r = request.into_inner();
        let caller = caller(&who)?;
        let id = validate::uuid("interaction_id", &r.interaction_id)?;
        let found = self
            .engine
            .reads
            .interaction(&caller.tenant, id)
            .await
            .map_err(status)?;
        let Some((interaction, owner, invitee, submitter)) = found else {
            return Err(
                Failure::new(Reason::InteractionNotFound, format!("no interaction {id}"))
                    .with_meta("interaction_id", id)
                    .into(),
            );
        };
        let visible = match visibility(&caller) {
            Visibility::All => true,
            Visibility::SubmittedBy(key) => submitter == key,
            Visibility::OwnedBy(key) => owner == key,
            Visibility::HeldBy(key) => owner == key || invitee == key,
        };
        if !visible {
            return Err(Failure::new(
                Reason::NotOwner,
                format!("the caller is not entitled to interaction {id}"),
            )
            .with_meta("interaction_id", id)
            .into());
        }
        Ok(Response::new(interaction))
    }

    async fn list(
        &self,
        request: Request<ListInteractionsRequest>,
    ) -> Result<Response<ListInteractionsResponse>, Status> {
        let who = identity(&request)?;
        who.require(&[
            Role::MediaServer,
            Role::Agent,
            Role::Router,
            Role::Reporter,
            Role::Service,
            Role::Admin,
        ])?;
        let r = request.into_inner();
        let caller = caller(&who)?;
        let page_size = match r.page_size {
            0 => limits::DEFAULT_PAGE_SIZE,
            n if (1..=limits::MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(Failure::invalid_argument(
                    "page_size",
                    format!("must be 0 to {}", limits::MAX_PAGE_SIZE),
                )
                .into());
            }
        } as usize;
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(validate::uuid("page_token", token)?),
        };
        let state = match r.state() {
            InteractionState::Unspecified => None,
            s => Phase::from_proto(s),
        };
        validate::optional_name("queue", &r.queue)?;
        let queue = (!r.queue.is_empty()).then(|| r.queue.clone());
        // One more than a page says whether another page follows.
        let query = ListQuery {
            tenant: caller.tenant.clone(),
            visibility: visibility(&caller),
            state,
            queue,
            after,
            limit: page_size + 1,
        };
        let mut interactions = self.engine.reads.list(query).await.map_err(status)?;
        let next_page_token = if interactions.len() > page_size {
            interactions.truncate(page_size);
            interactions
                .last()
                .map(|i| i.interaction_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListInteractionsResponse {
            interactions,
            next_page_token,
        }))
    }
}

/// The contract's Get / List column: what each role may read.
fn visibility(caller: &crate::domain::Caller) -> Visibility {
    use ixn_proto::common::Party;
    match caller.role {
        Role::MediaServer => Visibility::SubmittedBy(party_key(&Party::media_server(&caller.sub))),
        Role::Agent => Visibility::HeldBy(party_key(&Party::agent(caller.agent(), ""))),
        Role::Router => Visibility::OwnedBy(party_key(&Party::router(&caller.sub))),
        Role::Reporter | Role::Service | Role::Admin => Visibility::All,
    }
}
