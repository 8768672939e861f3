//! `AgentService`: agents' media state, the "switch" session-service logs agents in and out at.

use super::{Api, caller, status};
use crate::domain::Command;
use ixn_proto::auth::{Role, identity};
use ixn_proto::error::Failure;
use ixn_proto::interaction::agent_service_server::AgentService;
use ixn_proto::interaction::*;
use ixn_proto::trace::traceparent;
use ixn_proto::validate::{self, fingerprint};
use tonic::{Request, Response, Status};

/// Who may call the switch: session-service and administrators (desktops go through sessions).
const SWITCH_ROLES: &[Role] = &[Role::Service, Role::Admin];

#[tonic::async_trait]
impl AgentService for Api {
    async fn login(&self, request: Request<AgentLoginRequest>) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        validate::optional_name("place_id", &r.place_id)?;
        let command = Command::AgentLogin {
            agent_id: r.agent_id.clone(),
            place_id: r.place_id.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn logout(
        &self,
        request: Request<AgentLogoutRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        validate::reason("reason", r.reason.as_ref())?;
        let command = Command::AgentLogout {
            agent_id: r.agent_id.clone(),
            reason: r.reason.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn add_media(
        &self,
        request: Request<AddMediaRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        self.media("media_type", &r.media_type)?;
        validate::reason("reason", r.reason.as_ref())?;
        let command = Command::AddMedia {
            agent_id: r.agent_id.clone(),
            media_type: r.media_type.clone(),
            ready: r.ready,
            reason: r.reason.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn remove_media(
        &self,
        request: Request<RemoveMediaRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        self.media("media_type", &r.media_type)?;
        let command = Command::RemoveMedia {
            agent_id: r.agent_id.clone(),
            media_type: r.media_type.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn set_ready(
        &self,
        request: Request<SetReadyRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        self.media("media_type", &r.media_type)?;
        let command = Command::SetReady {
            agent_id: r.agent_id.clone(),
            media_type: r.media_type.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn set_not_ready(
        &self,
        request: Request<SetNotReadyRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        self.media("media_type", &r.media_type)?;
        validate::reason("reason", r.reason.as_ref())?;
        let command = Command::SetNotReady {
            agent_id: r.agent_id.clone(),
            media_type: r.media_type.clone(),
            reason: r.reason.clone(),
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn change_media_state_reason(
        &self,
        request: Request<ChangeMediaStateReasonRequest>,
    ) -> Result<Response<Agent>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        validate::request_id(&r.request_id)?;
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        self.media("media_type", &r.media_type)?;
        validate::reason("reason", r.reason.as_ref())?;
        let reason = r
            .reason
            .clone()
            .filter(|reason| !crate::domain::is_empty_reason(reason))
            .ok_or_else(|| Failure::invalid_argument("reason", "is required"))?;
        let command = Command::ChangeMediaStateReason {
            agent_id: r.agent_id.clone(),
            media_type: r.media_type.clone(),
            reason,
        };
        self.run(caller, &r.request_id, fingerprint(&r), command, trace)
            .await
    }

    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<Agent>, Status> {
        let who = identity(&request)?;
        who.require(SWITCH_ROLES)?;
        let r = request.into_inner();
        let caller = caller(&who)?;
        validate::name("agent_id", &r.agent_id)?;
        let agent = self
            .engine
            .agent(&caller.tenant, &r.agent_id)
            .await
            .map_err(status)?;
        // As the domain shows it: capacities are the ones decisions use now.
        Ok(Response::new(agent.to_proto(&self.engine.platform)))
    }

    async fn get_platform(
        &self,
        request: Request<GetPlatformRequest>,
    ) -> Result<Response<Platform>, Status> {
        let who = identity(&request)?;
        who.require(SWITCH_ROLES)?;
        let p = &self.engine.platform;
        Ok(Response::new(Platform {
            logout_reason_required: p.logout_reason_required,
            free_text_reasons_allowed: p.free_text_reasons_allowed,
            channel_deactivation_supported: p.channel_deactivation_supported,
            logout_reasons: p.logout_reasons.clone(),
            not_ready_reasons: p.not_ready_reasons.clone(),
            default_not_ready_reason: Some(p.default_not_ready_reason.clone()),
            media_types: p.media_types.clone(),
            default_capacity: p.default_capacity,
            invite_timeout_ms: p.invite_timeout_ms as u32,
        }))
    }
}
