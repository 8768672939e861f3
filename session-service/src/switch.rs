//! The client of interaction-server: its `AgentService` is the Logout use case's "switch", and its
//! `EventService` is the stream the relay follows.
//!
//! session-service calls as role `service` with the `*` tenant, naming the tenant of each call in the
//! `ixn-tenant` metadata; its token is minted with the deployment's shared secret and renewed before
//! it expires. Every call has a deadline, so an unreachable switch is an answer, not a hang.

use ixn_proto::auth::{self, Claims, Role, Secret, TENANT_HEADER};
use ixn_proto::clock::Clock;
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::event_service_client::EventServiceClient;
use ixn_proto::events::{Event, EventFilter, SubscribeRequest};
use ixn_proto::interaction::agent_service_client::AgentServiceClient;
use ixn_proto::interaction::*;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// The token's subject: who session-service is towards interaction-server.
pub const SERVICE_SUBJECT: &str = "session-service";
/// How long a minted token lives; it is renewed when less than a tenth of that is left.
const TOKEN_TTL_SECS: i64 = 3_600;

/// Why a switch call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwitchError {
    /// The switch could not be reached or did not answer in time.
    #[error("the switch is unreachable: {0}")]
    Unreachable(String),
    /// The switch answered with a refusal.
    #[error("the switch refused: {0}")]
    Refused(Failure),
}

impl SwitchError {
    /// The contract reason of a refusal.
    pub fn reason(&self) -> Option<R> {
        match self {
            SwitchError::Refused(f) => Some(f.reason),
            SwitchError::Unreachable(_) => None,
        }
    }

    fn from_status(status: Status) -> SwitchError {
        match Failure::from_status(&status) {
            Some(failure) => SwitchError::Refused(failure),
            None => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    SwitchError::Unreachable(status.message().to_owned())
                }
                _ => SwitchError::Refused(Failure::new(
                    R::InvalidState,
                    format!(
                        "the switch answered {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                )),
            },
        }
    }

    /// A fault injected by a test (`failpoints` feature): `unreachable`, `ongoing` (the switch
    /// refuses a logout with ONGOING_INTERACTION, as when an interaction arrived after step 1), or
    /// anything else for a plain refusal.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    fn injected(arg: Option<String>) -> SwitchError {
        match arg.as_deref() {
            Some("unreachable") => SwitchError::Unreachable("fault injected".into()),
            Some("ongoing") => SwitchError::Refused(
                Failure::new(R::OngoingInteraction, "fault injected")
                    .with_meta("interaction_ids", "injected"),
            ),
            _ => SwitchError::Refused(Failure::new(R::InvalidState, "fault injected")),
        }
    }
}

/// The connection to interaction-server.
#[derive(Debug)]
pub struct Switch {
    channel: Channel,
    secret: Secret,
    clock: Clock,
    timeout: Duration,
    token: Mutex<Option<(String, i64)>>,
}

impl Switch {
    /// A lazily connecting client: start-up order does not matter.
    /// An `https://` URL is spoken to with `tls`, or with the system's roots if none is given.
    pub fn new(
        url: &str,
        tls: Option<ClientTlsConfig>,
        secret: Secret,
        clock: Clock,
        timeout: Duration,
    ) -> Result<Switch, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls.unwrap_or_else(|| ClientTlsConfig::new().with_native_roots()))?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Switch {
            channel,
            secret,
            clock,
            timeout,
            token: Mutex::new(None),
        })
    }

    fn bearer(&self) -> String {
        let now = self.clock.now_secs();
        let mut cached = self.token.lock().expect("token");
        match cached.as_ref() {
            Some((token, exp)) if exp - now > TOKEN_TTL_SECS / 10 => token.clone(),
            _ => {
                let claims = Claims::new(
                    Role::Service,
                    SERVICE_SUBJECT,
                    auth::ANY_TENANT,
                    now,
                    TOKEN_TTL_SECS,
                );
                let token = auth::mint(&self.secret, &claims);
                *cached = Some((token.clone(), claims.exp));
                token
            }
        }
    }

    /// A request acting in `tenant` (or in every tenant, for `None`).
    fn request<T>(&self, tenant: Option<&str>, message: T, traceparent: &str) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(v) = format!("Bearer {}", self.bearer()).parse() {
            metadata.insert("authorization", v);
        }
        if let Some(Ok(v)) = tenant.map(str::parse) {
            metadata.insert(TENANT_HEADER, v);
        }
        if let Ok(v) = traceparent.parse() {
            metadata.insert("traceparent", v);
        }
        request
    }

    fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    async fn call<T, R, F, Fut>(
        &self,
        tenant: &str,
        message: T,
        trace: &str,
        f: F,
    ) -> Result<R, SwitchError>
    where
        F: FnOnce(AgentServiceClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut request = self.request(Some(tenant), message, trace);
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, f(self.agents(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(SwitchError::from_status(status)),
            Err(_) => Err(SwitchError::Unreachable("no answer in time".into())),
        }
    }

    pub async fn platform(&self, tenant: &str, trace: &str) -> Result<Platform, SwitchError> {
        self.call(
            tenant,
            GetPlatformRequest {},
            trace,
            |mut c, r| async move { c.get_platform(r).await },
        )
        .await
    }

    pub async fn agent(
        &self,
        tenant: &str,
        agent_id: &str,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        let message = GetAgentRequest {
            agent_id: agent_id.to_owned(),
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.get_agent(r).await
        })
        .await
    }

    pub async fn login(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        place_id: &str,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        let message = AgentLoginRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            place_id: place_id.to_owned(),
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.login(r).await
        })
        .await
    }

    pub async fn logout(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        reason: Option<Reason>,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        fail::fail_point!("switch-logout", |arg| Err(SwitchError::injected(arg)));
        let message = AgentLogoutRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            reason,
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.logout(r).await
        })
        .await
    }

    pub async fn add_media(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        media_type: &str,
        ready: bool,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        let message = AddMediaRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            media_type: media_type.to_owned(),
            ready,
            reason: None,
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.add_media(r).await
        })
        .await
    }

    pub async fn remove_media(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        media_type: &str,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        fail::fail_point!("switch-deactivate", |arg| Err(SwitchError::injected(arg)));
        let message = RemoveMediaRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            media_type: media_type.to_owned(),
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.remove_media(r).await
        })
        .await
    }

    pub async fn set_ready(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        media_type: &str,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        let message = SetReadyRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            media_type: media_type.to_owned(),
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.set_ready(r).await
        })
        .await
    }

    pub async fn set_not_ready(
        &self,
        tenant: &str,
        request_id: String,
        agent_id: &str,
        media_type: &str,
        reason: Reason,
        trace: &str,
    ) -> Result<Agent, SwitchError> {
        fail::fail_point!("switch-not-ready", |arg| Err(SwitchError::injected(arg)));
        let message = SetNotReadyRequest {
            request_id,
            agent_id: agent_id.to_owned(),
            media_type: media_type.to_owned(),
            reason: Some(reason),
        };
        self.call(tenant, message, trace, |mut c, r| async move {
            c.set_not_ready(r).await
        })
        .await
    }

    /// interaction-server's whole log after `after`, every tenant, followed live.
    pub async fn follow(&self, after: u64) -> Result<tonic::Streaming<Event>, SwitchError> {
        let request = self.request(
            None,
            SubscribeRequest {
                after_sequence: after,
                from_head: false,
                filter: Some(EventFilter::default()),
            },
            "",
        );
        let mut client = EventServiceClient::new(self.channel.clone());
        match tokio::time::timeout(self.timeout, client.subscribe(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(SwitchError::from_status(status)),
            Err(_) => Err(SwitchError::Unreachable("no answer in time".into())),
        }
    }
}
