//! `SessionService`: login, Ready / Not Ready, channel (de)activation, the Logout use case, and
//! `Connect`.

use super::{Api, Inner, RequestKey};
use crate::domain::{self, agent_key};
use crate::error::Error;
use crate::switch::SwitchError;
use crate::writer::{Response as Recorded, logout_response};
use ixn_proto::auth::{Identity, Role, identity};
use ixn_proto::common::{AgentState, Party};
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::session::session_service_server::SessionService;
use ixn_proto::session::*;
use ixn_proto::trace::traceparent;
use ixn_proto::validate;
use prost::Message;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

/// How long `Connect` waits for the other replicas to be able to see its stream.
const SHARE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The most channels one session may have.
const MAX_CHANNELS: usize = 16;

/// Who a change is attributed to.
fn actor(who: &Identity, s: &Session) -> Party {
    match who.role() {
        Role::Agent => domain::agent_of(s),
        _ => Party::admin(&who.claims.sub),
    }
}

/// A switch failure outside the Logout flow: the switch's own reason, or UNAVAILABLE.
fn switch_error(e: SwitchError) -> Error {
    match e {
        SwitchError::Unreachable(m) => Error::Unavailable(m),
        SwitchError::Refused(f) => Error::Failure(f),
    }
}

/// A Logout step that failed at the switch (EF2, EF3): ABORTED when the switch refused,
/// UNAVAILABLE when it could not be reached.
fn step_failed(reason: R, e: SwitchError, s: &Session, media: &str) -> Error {
    let (code, why) = match &e {
        SwitchError::Unreachable(_) => (Code::Unavailable, "unreachable".to_owned()),
        SwitchError::Refused(f) => (Code::Aborted, f.reason.as_str().to_owned()),
    };
    Failure::new(reason, format!("{media}: {e}"))
        .with_code(code)
        .with_meta("session_id", &s.session_id)
        .with_meta("media_type", media)
        .with_meta("switch", why)
        .into()
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::internal(format!("a recorded outcome is unreadable: {e}")))
}

fn inactive(s: &Session, media: &str) -> Error {
    Failure::new(
        R::InvalidState,
        format!("the {media} channel is not active"),
    )
    .with_meta("session_id", &s.session_id)
    .with_meta("media_type", media)
    .into()
}

impl Inner {
    /// The session as a reader sees it: each channel with what the agent holds on that media.
    pub async fn present(&self, mut s: Session) -> Result<Session, Error> {
        let held = self.held_by(&agent_key(&s.tenant, &s.agent_id)).await?;
        if let Some(group) = s.channel_group.as_mut() {
            for c in &mut group.channels {
                c.interaction_ids = held
                    .iter()
                    .filter(|(_, media)| **media == c.media_type)
                    .map(|(id, _)| id.clone())
                    .collect();
            }
        }
        Ok(s)
    }

    /// The live session under its agent's lock: re-read, since it may have changed while waiting.
    fn locked_session(&self, session_id: &str) -> Result<Session, Error> {
        self.live_session(session_id).ok_or_else(|| {
            Failure::new(
                R::SessionNotFound,
                format!("session {session_id} has ended"),
            )
            .with_meta("session_id", session_id)
            .into()
        })
    }

    /// The common shape of the channel operations: check the request, take the agent's lock, answer
    /// a retry from its record, else apply `change` (switch call and events) and commit.
    async fn channel_op<F, Fut>(
        &self,
        who: &Identity,
        key: RequestKey,
        session_id: &str,
        trace: &str,
        change: F,
    ) -> Result<Session, Status>
    where
        F: FnOnce(Session) -> Fut,
        Fut: std::future::Future<Output = Result<(Session, Vec<domain::Emitted>), Error>>,
    {
        validate::uuid("session_id", session_id)?;
        let found = self.session_for(who, session_id).await?;
        let _guard = self
            .lock(&agent_key(&found.tenant, &found.agent_id))
            .await?;
        if let Some(bytes) = self.recorded(&key).await? {
            return decode(&bytes);
        }
        let session = self.locked_session(session_id)?;
        let was = session.version;
        let (session, events) = change(session).await?;
        let committed = self
            .commit(
                events,
                Some(session),
                Some(was),
                Some(&key),
                Some(Recorded::Session),
                trace,
            )
            .await?;
        Ok(self.present(committed.session.unwrap_or_default()).await?)
    }
}

#[tonic::async_trait]
impl SessionService for Api {
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<Session>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "Login", &r.request_id, &r)?;
        let agent_id = match who.role() {
            Role::Agent => {
                let own = who.claims.agent_id.clone().unwrap_or_default();
                if !r.agent_id.is_empty() && r.agent_id != own {
                    return Err(Failure::invalid_argument(
                        "agent_id",
                        "an agent logs in as itself",
                    )
                    .into());
                }
                own
            }
            _ => {
                validate::name("agent_id", &r.agent_id)?;
                r.agent_id.clone()
            }
        };
        validate::optional_name("place_id", &r.place_id)?;
        if r.media_types.is_empty() || r.media_types.len() > MAX_CHANNELS {
            return Err(Failure::invalid_argument(
                "media_types",
                format!("must name 1 to {MAX_CHANNELS} media"),
            )
            .into());
        }
        for (i, media) in r.media_types.iter().enumerate() {
            validate::name("media_types", media)?;
            if r.media_types[..i].contains(media) {
                return Err(Failure::invalid_argument(
                    "media_types",
                    format!("`{media}` is named twice"),
                )
                .into());
            }
        }
        let inner = &self.inner;
        let tenant = key.tenant.clone();
        let akey = agent_key(&tenant, &agent_id);
        let _guard = inner.lock(&akey).await?;
        if let Some(bytes) = inner.recorded(&key).await? {
            return Ok(Response::new(decode(&bytes)?));
        }
        if inner
            .view
            .lock()
            .expect("view")
            .by_agent
            .contains_key(&akey)
        {
            return Err(Failure::new(
                R::AlreadyLoggedIn,
                format!("agent {agent_id} has a live session"),
            )
            .with_meta("agent_id", &agent_id)
            .into());
        }
        let platform = inner
            .switch
            .platform(&tenant, &trace)
            .await
            .map_err(switch_error)?;
        if let Some(unknown) = r
            .media_types
            .iter()
            .find(|m| !platform.media_types.contains(m))
        {
            return Err(Failure::invalid_argument(
                "media_types",
                format!("unknown media `{unknown}`"),
            )
            .into());
        }
        let switch = &inner.switch;
        // Log in at the switch. An agent logged in there with no session here was left by a login
        // that did not finish: it is taken over, and its media are set as this login asks.
        let adopted = match switch
            .login(&tenant, key.derive("login"), &agent_id, &r.place_id, &trace)
            .await
        {
            Ok(_) => None,
            Err(SwitchError::Refused(f)) if f.reason == R::AlreadyLoggedIn => Some(
                switch
                    .agent(&tenant, &agent_id, &trace)
                    .await
                    .map_err(switch_error)?,
            ),
            Err(e) => return Err(switch_error(e).into()),
        };
        for media in &r.media_types {
            let present = adopted
                .as_ref()
                .and_then(|a| a.media.iter().find(|m| &m.media_type == media));
            let result = match present {
                None => {
                    switch
                        .add_media(
                            &tenant,
                            key.derive(&format!("add/{media}")),
                            &agent_id,
                            media,
                            r.ready,
                            &trace,
                        )
                        .await
                }
                Some(m) if (m.state() == AgentState::Ready) == r.ready => continue,
                Some(_) if r.ready => {
                    switch
                        .set_ready(
                            &tenant,
                            key.derive(&format!("ready/{media}")),
                            &agent_id,
                            media,
                            &trace,
                        )
                        .await
                }
                Some(_) => {
                    let reason = platform
                        .default_not_ready_reason
                        .clone()
                        .unwrap_or_default();
                    switch
                        .set_not_ready(
                            &tenant,
                            key.derive(&format!("not-ready/{media}")),
                            &agent_id,
                            media,
                            reason,
                            &trace,
                        )
                        .await
                }
            };
            result.map_err(switch_error)?;
        }
        // Media the taken-over agent has but this login did not ask for get no channel here: they
        // go (or, where channels cannot be deactivated, stop being Ready), so the switch offers the
        // agent nothing the session cannot show.
        let strays = adopted
            .iter()
            .flat_map(|a| &a.media)
            .filter(|m| !r.media_types.contains(&m.media_type));
        for stray in strays {
            let media = &stray.media_type;
            let result = if platform.channel_deactivation_supported {
                switch
                    .remove_media(
                        &tenant,
                        key.derive(&format!("remove/{media}")),
                        &agent_id,
                        media,
                        &trace,
                    )
                    .await
            } else if stray.state() == AgentState::Ready {
                switch
                    .set_not_ready(
                        &tenant,
                        key.derive(&format!("not-ready/{media}")),
                        &agent_id,
                        media,
                        platform
                            .default_not_ready_reason
                            .clone()
                            .unwrap_or_default(),
                        &trace,
                    )
                    .await
            } else {
                continue;
            };
            result.map_err(switch_error)?;
        }
        let default_reason = platform.default_not_ready_reason.clone();
        let session = Session {
            session_id: Uuid::now_v7().to_string(),
            tenant: tenant.clone(),
            agent_id: agent_id.clone(),
            place_id: r.place_id.clone(),
            state: SessionState::Active as i32,
            channel_group: Some(ChannelGroup {
                channel_group_id: Uuid::now_v7().to_string(),
                channels: r
                    .media_types
                    .iter()
                    .map(|media| Channel {
                        channel_id: Uuid::now_v7().to_string(),
                        media_type: media.clone(),
                        active: true,
                        state: if r.ready {
                            AgentState::Ready
                        } else {
                            AgentState::NotReady
                        } as i32,
                        reason: if r.ready {
                            None
                        } else {
                            default_reason.clone()
                        },
                        interaction_ids: Vec::new(),
                    })
                    .collect(),
            }),
            logout_reasons: platform.logout_reasons.clone(),
            not_ready_reasons: platform.not_ready_reasons.clone(),
            logout_reason_required: platform.logout_reason_required,
            free_text_reasons_allowed: platform.free_text_reasons_allowed,
            version: 1,
            default_not_ready_reason: default_reason,
            channel_deactivation_supported: platform.channel_deactivation_supported,
            created_sequence: 0,
        };
        let events = domain::created(&session, &actor(&who, &session));
        let committed = inner
            .commit(
                events,
                Some(session),
                None,
                Some(&key),
                Some(Recorded::Session),
                &trace,
            )
            .await?;
        let session = committed.session.unwrap_or_default();
        // No desktop is connected yet: the connection-lost grace starts now.
        inner
            .connections
            .disconnected(self.inner.clone(), &session.session_id);
        Ok(Response::new(inner.present(session).await?))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "Logout", &r.request_id, &r)?;
        validate::uuid("session_id", &r.session_id)?;
        validate::reason("reason", r.reason.as_ref())?;
        let inner = &self.inner;
        let found = inner.session_for(&who, &r.session_id).await?;
        let (tenant, agent_id) = (found.tenant.clone(), found.agent_id.clone());
        let akey = agent_key(&tenant, &agent_id);
        let _guard = inner.lock(&akey).await?;
        if let Some(bytes) = inner.recorded(&key).await? {
            return Ok(Response::new(decode(&bytes)?));
        }
        let mut session = inner.locked_session(&r.session_id)?;
        let actor = actor(&who, &session);
        let switch = &inner.switch;

        // Steps 1 and 2: EF1 (an ongoing interaction), AF1 (a reason is required). Nothing changes.
        let held = inner.held_by(&akey).await?;
        let plan = domain::plan_logout(&session, &held, r.reason.as_ref())?;

        // Step 3: every Ready channel goes Not Ready at the switch, each durable before the next.
        // (A deactivated channel has no state at the switch any more.)
        let ready: Vec<String> = domain::channels(&session)
            .iter()
            .filter(|c| c.active && domain::is_ready(c))
            .map(|c| c.media_type.clone())
            .collect();
        for media in ready {
            let step = key.derive(&format!("not-ready/{media}"));
            switch
                .set_not_ready(
                    &tenant,
                    step,
                    &agent_id,
                    &media,
                    plan.not_ready_reason.clone(),
                    &trace,
                )
                .await
                .map_err(|e| step_failed(R::NotReadyFailed, e, &session, &media))?;
            let was = session.version;
            session.state = SessionState::LoggingOut as i32;
            let event = domain::state_changed(
                &mut session,
                &media,
                false,
                Some(plan.not_ready_reason.clone()),
                &actor,
            );
            inner
                .commit(
                    vec![event],
                    Some(session.clone()),
                    Some(was),
                    Some(&key),
                    None,
                    &trace,
                )
                .await?;
        }

        // Step 4: every active channel is deactivated, where the platform supports it.
        if session.channel_deactivation_supported {
            let active: Vec<String> = domain::channels(&session)
                .iter()
                .filter(|c| c.active)
                .map(|c| c.media_type.clone())
                .collect();
            for media in active {
                let step = key.derive(&format!("deactivate/{media}"));
                switch
                    .remove_media(&tenant, step, &agent_id, &media, &trace)
                    .await
                    .map_err(|e| step_failed(R::DeactivationFailed, e, &session, &media))?;
                let was = session.version;
                session.state = SessionState::LoggingOut as i32;
                let event = domain::activation_changed(&mut session, &media, false, None, &actor);
                inner
                    .commit(
                        vec![event],
                        Some(session.clone()),
                        Some(was),
                        Some(&key),
                        None,
                        &trace,
                    )
                    .await?;
            }
        }

        // Step 5: the agent logs out at the switch, the decisive check of what the agent holds.
        match switch
            .logout(
                &tenant,
                key.derive("logout"),
                &agent_id,
                plan.reason.clone(),
                &trace,
            )
            .await
        {
            Ok(_) => {}
            // Not logged in there: there is nothing left to log out of.
            Err(SwitchError::Refused(f)) if f.reason == R::AgentNotAvailable => {}
            Err(SwitchError::Refused(f)) if f.reason == R::OngoingInteraction => {
                let mut failure = Failure::new(
                    R::OngoingInteraction,
                    "an interaction arrived; the logout is not possible",
                )
                .with_meta("session_id", &session.session_id);
                if let Some(ids) = f.metadata.get("interaction_ids") {
                    failure = failure.with_meta("interaction_ids", ids);
                }
                return Err(failure.into());
            }
            Err(e) => {
                let switch = e.reason().map(R::as_str).unwrap_or("unreachable");
                return Err(Failure::new(R::SwitchLogoutFailed, e.to_string())
                    .with_meta("session_id", &session.session_id)
                    .with_meta("switch", switch)
                    .into());
            }
        }

        // Step 6: dispose of each channel, the channel group and the session; step 7 follows: the
        // session's Connect streams end once they have delivered SessionDisposed.
        let was = session.version;
        let events = domain::disposed(&mut session, plan.reason.clone(), &actor);
        let committed = inner
            .commit(
                events,
                Some(session),
                Some(was),
                Some(&key),
                Some(Recorded::Logout),
                &trace,
            )
            .await?;
        Ok(Response::new(logout_response(
            committed.session.as_ref(),
            &committed.sequences,
        )))
    }

    async fn set_ready(
        &self,
        request: Request<SetReadyRequest>,
    ) -> Result<Response<Session>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "SetReady", &r.request_id, &r)?;
        validate::name("media_type", &r.media_type)?;
        let inner = self.inner.clone();
        let media = r.media_type.clone();
        let step = key.derive("ready");
        let (w, t) = (who.clone(), trace.clone());
        let session = self
            .inner
            .channel_op(&who, key, &r.session_id, &trace, |mut s| async move {
                let c = domain::channel(&s, &media)?;
                if !c.active {
                    return Err(inactive(&s, &media));
                }
                if domain::is_ready(c) {
                    return Ok((s, Vec::new()));
                }
                inner
                    .switch
                    .set_ready(&s.tenant, step, &s.agent_id, &media, &t)
                    .await
                    .map_err(switch_error)?;
                let by = actor(&w, &s);
                let event = domain::state_changed(&mut s, &media, true, None, &by);
                Ok((s, vec![event]))
            })
            .await?;
        Ok(Response::new(session))
    }

    async fn set_not_ready(
        &self,
        request: Request<SetNotReadyRequest>,
    ) -> Result<Response<Session>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "SetNotReady", &r.request_id, &r)?;
        validate::name("media_type", &r.media_type)?;
        validate::reason("reason", r.reason.as_ref())?;
        let inner = self.inner.clone();
        let media = r.media_type.clone();
        let step = key.derive("not-ready");
        let (w, t) = (who.clone(), trace.clone());
        let session = self
            .inner
            .channel_op(&who, key, &r.session_id, &trace, |mut s| async move {
                let reason = domain::not_ready_reason(&s, r.reason.as_ref())?;
                let c = domain::channel(&s, &media)?;
                if !c.active {
                    return Err(inactive(&s, &media));
                }
                if !domain::is_ready(c) && c.reason.as_ref() == Some(&reason) {
                    return Ok((s, Vec::new()));
                }
                inner
                    .switch
                    .set_not_ready(&s.tenant, step, &s.agent_id, &media, reason.clone(), &t)
                    .await
                    .map_err(switch_error)?;
                let by = actor(&w, &s);
                let event = domain::state_changed(&mut s, &media, false, Some(reason), &by);
                Ok((s, vec![event]))
            })
            .await?;
        Ok(Response::new(session))
    }

    async fn activate_channel(
        &self,
        request: Request<ActivateChannelRequest>,
    ) -> Result<Response<Session>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "ActivateChannel", &r.request_id, &r)?;
        validate::name("media_type", &r.media_type)?;
        let inner = self.inner.clone();
        let media = r.media_type.clone();
        let step = key.derive("activate");
        let (w, t) = (who.clone(), trace.clone());
        let session = self
            .inner
            .channel_op(&who, key, &r.session_id, &trace, |mut s| async move {
                if domain::channel(&s, &media)?.active {
                    return Ok((s, Vec::new()));
                }
                inner
                    .switch
                    .add_media(&s.tenant, step, &s.agent_id, &media, false, &t)
                    .await
                    .map_err(switch_error)?;
                let reason = s.default_not_ready_reason.clone();
                let by = actor(&w, &s);
                let event = domain::activation_changed(&mut s, &media, true, reason, &by);
                Ok((s, vec![event]))
            })
            .await?;
        Ok(Response::new(session))
    }

    async fn deactivate_channel(
        &self,
        request: Request<DeactivateChannelRequest>,
    ) -> Result<Response<Session>, Status> {
        let (who, trace) = (identity(&request)?, traceparent(&request));
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        let key = RequestKey::new(&who, "DeactivateChannel", &r.request_id, &r)?;
        validate::name("media_type", &r.media_type)?;
        let inner = self.inner.clone();
        let media = r.media_type.clone();
        let step = key.derive("deactivate");
        let (w, t) = (who.clone(), trace.clone());
        let session = self
            .inner
            .channel_op(&who, key, &r.session_id, &trace, |mut s| async move {
                if !s.channel_deactivation_supported {
                    return Err(Failure::new(
                        R::InvalidState,
                        "the platform does not support channel deactivation",
                    )
                    .with_meta("session_id", &s.session_id)
                    .into());
                }
                if !domain::channel(&s, &media)?.active {
                    return Ok((s, Vec::new()));
                }
                inner
                    .switch
                    .remove_media(&s.tenant, step, &s.agent_id, &media, &t)
                    .await
                    .map_err(switch_error)?;
                let by = actor(&w, &s);
                let event = domain::activation_changed(&mut s, &media, false, None, &by);
                Ok((s, vec![event]))
            })
            .await?;
        Ok(Response::new(session))
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let who = identity(&request)?;
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        validate::uuid("session_id", &r.session_id)?;
        let session = self.inner.session_for(&who, &r.session_id).await?;
        Ok(Response::new(self.inner.present(session).await?))
    }

    type ConnectStream = ixn_proto::log::Outlet;

    async fn connect(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let who = identity(&request)?;
        who.require(&[Role::Agent, Role::Admin])?;
        let r = request.into_inner();
        validate::uuid("session_id", &r.session_id)?;
        let session = self.inner.session_for(&who, &r.session_id).await?;
        let head = match self.inner.log.head() {
            // Another replica may have committed more than has reached this one's log.
            head if r.after_sequence > head => {
                self.inner.log.known_head().await.map_err(Error::from)?
            }
            head => head,
        };
        let (stream, shared) = self.inner.connect(&who, session, r.after_sequence, head)?;
        if let Some(shared) = shared {
            // The other replicas' grace timers see the desktop here before it is told so (unless
            // the store is slow to take it: the stream is served all the same).
            let _ = tokio::time::timeout(SHARE_PATIENCE, shared).await;
        }
        Ok(Response::new(stream))
    }
}
