//! The gRPC handlers of `SessionService`, and what they share.
//!
//! Each operation on an agent runs under that agent's lock (across replicas on a shared store, where
//! the agent's session is then read as committed), so a Logout's steps and a concurrent SetReady, or
//! two logins of one agent, never interleave. Within it: the recorded outcome of the same
//! request is answered again; otherwise the session is checked (domain), the switch is called, and
//! the events are committed before the next step or the answer.

mod connect;
mod sessions;

pub use connect::{Connections, Shared};

use crate::domain::{AgentKey, Emitted};
use crate::error::Error;
use crate::store::{AgentLock, Reads};
use crate::switch::Switch;
use crate::writer::{Commit, Committed, Outcome, Response, View, Writer};
use ixn_proto::auth::{Identity, Role};
use ixn_proto::clock::Clock;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::log::Log;
use ixn_proto::session::Session;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Inner {
    pub view: Arc<Mutex<View>>,
    pub writer: Arc<Writer>,
    pub switch: Arc<Switch>,
    pub reads: Reads,
    pub log: Arc<Log>,
    pub clock: Clock,
    /// How long a session may have no `Connect` stream before its Ready channels go Not Ready.
    pub grace: Duration,
    pub draining: watch::Receiver<bool>,
    pub connections: Connections,
    locks: Mutex<HashMap<AgentKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// The `SessionService` implementation.
#[derive(Clone, Debug)]
pub struct Api {
    pub inner: Arc<Inner>,
}

impl Api {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        view: Arc<Mutex<View>>,
        writer: Arc<Writer>,
        switch: Arc<Switch>,
        reads: Reads,
        log: Arc<Log>,
        clock: Clock,
        grace: Duration,
        draining: watch::Receiver<bool>,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                view,
                writer,
                switch,
                reads,
                log,
                clock,
                grace,
                draining,
                connections: Connections::default(),
                locks: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    /// The agent's lock: held for the whole of an operation on the agent. On a shared store it is
    /// also taken across replicas, and memory then takes the agent's session as committed.
    pub async fn lock(&self, key: &AgentKey) -> Result<AgentGuard, Error> {
        let lock = {
            let mut locks = self.locks.lock().expect("locks");
            // Forget locks nobody holds, so the map does not grow with every agent ever seen.
            if locks.len() > 1_024 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key.clone()).or_default().clone()
        };
        let local = lock.lock_owned().await;
        let shared = self.reads.lock_agent(key).await?;
        if let Some(shared) = &shared {
            let mut view = self.view.lock().expect("view");
            view.put_agent(key, shared.live.clone());
        }
        Ok(AgentGuard {
            _local: local,
            _shared: shared,
        })
    }

    /// What the agent holds (interaction → media), as the relay last committed it.
    pub async fn held_by(&self, key: &AgentKey) -> Result<BTreeMap<String, String>, Error> {
        if self.reads.shared() {
            return Ok(self.reads.held_by(key).await?);
        }
        Ok(self.view.lock().expect("view").mirror.held_by(key))
    }

    /// The live session, as committed.
    pub fn live_session(&self, session_id: &str) -> Option<Session> {
        self.view
            .lock()
            .expect("view")
            .sessions
            .get(session_id)
            .cloned()
    }

    /// The session the caller may act on: live, or (for reads and retries) from the store.
    pub async fn session_for(&self, who: &Identity, session_id: &str) -> Result<Session, Error> {
        // On a shared store another replica may have changed it: the store says.
        let found = match self
            .live_session(session_id)
            .filter(|_| !self.reads.shared())
        {
            Some(s) => Some(s),
            None => self.reads.session(session_id).await?,
        };
        let tenant = who.tenant()?;
        let visible = found.filter(|s| {
            s.tenant == tenant
                && (who.role() == Role::Admin
                    || who.claims.agent_id.as_deref() == Some(s.agent_id.as_str()))
        });
        visible.ok_or_else(|| {
            Failure::new(R::SessionNotFound, format!("no session {session_id}"))
                .with_meta("session_id", session_id)
                .into()
        })
    }

    /// The recorded outcome of the same request, if it succeeded before.
    pub async fn recorded(&self, key: &RequestKey) -> Result<Option<Vec<u8>>, Error> {
        let stored = self
            .reads
            .request(&key.tenant, &key.subject, key.method, &key.request_id)
            .await?;
        match stored {
            None => Ok(None),
            Some(s) if s.fingerprint == key.fingerprint => Ok(Some(s.response)),
            Some(_) => Err(Failure::new(
                R::RequestIdReused,
                "this request_id was used for a different request",
            )
            .with_meta("request_id", &key.request_id)
            .into()),
        }
    }

    /// Commits events (and the session as they leave it, decided on its version `was`; `None` for a
    /// new one), durable before this returns. The events
    /// carry `request`'s id as their correlation id; `record` says what outcome to keep for
    /// retries — none for one step of a longer request (a Logout's steps 3 and 4), which may still
    /// fail, and a failure is not recorded.
    pub async fn commit(
        &self,
        events: Vec<Emitted>,
        session: Option<Session>,
        was: Option<u64>,
        request: Option<&RequestKey>,
        record: Option<Response>,
        trace: &str,
    ) -> Result<Committed, Error> {
        let outcome = request.zip(record).map(|(k, response)| Outcome {
            tenant: k.tenant.clone(),
            subject: k.subject.clone(),
            method: k.method,
            request_id: k.request_id.clone(),
            fingerprint: k.fingerprint.clone(),
            response,
        });
        let commit = Commit {
            events,
            session,
            session_was: was,
            outcome,
            correlation_id: request.map(|k| k.request_id.clone()).unwrap_or_default(),
            traceparent: trace.to_owned(),
            ..Default::default()
        };
        self.writer.commit(commit).await.map_err(Error::Store)
    }
}

/// An agent's lock, held while it lives.
#[derive(Debug)]
pub struct AgentGuard {
    _local: tokio::sync::OwnedMutexGuard<()>,
    _shared: Option<AgentLock>,
}

/// What keys a request's recorded outcome.
#[derive(Clone, Debug)]
pub struct RequestKey {
    pub tenant: String,
    pub subject: String,
    pub method: &'static str,
    pub request_id: String,
    pub fingerprint: Vec<u8>,
}

impl RequestKey {
    pub fn new(
        who: &Identity,
        method: &'static str,
        request_id: &str,
        request: &impl Message,
    ) -> Result<RequestKey, Failure> {
        ixn_proto::validate::request_id(request_id)?;
        Ok(RequestKey {
            tenant: who.tenant()?.to_owned(),
            subject: who.claims.sub.clone(),
            method,
            request_id: request_id.to_owned(),
            fingerprint: ixn_proto::validate::fingerprint(request),
        })
    }

    /// The id of a call this request makes to the switch: derived from `<request id>/<step>`, so a
    /// retry repeats it, and a UUID (v5), as every request id is.
    pub fn derive(&self, step: &str) -> String {
        derived_id(&format!("{}/{step}", self.request_id))
    }
}

/// The namespace of derived request ids.
const DERIVED_IDS: uuid::Uuid = uuid::Uuid::from_u128(0x6a1c_7f3e_2b4d_4e5f_9a8b_7c6d_5e4f_3a2b);

/// A request id derived from a name: the same name always gives the same id.
pub fn derived_id(name: &str) -> String {
    uuid::Uuid::new_v5(&DERIVED_IDS, name.as_bytes()).to_string()
}
