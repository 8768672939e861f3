//! Constructors and comparisons for `Party`, the "who" of every request and event.

use crate::common::{
    AdminParty, AgentParty, MediaServerParty, Party, ReporterParty, RouterParty, ServiceParty,
    SystemParty, party::Kind,
};

impl Party {
    pub fn agent(agent_id: impl Into<String>, place_id: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::Agent(AgentParty {
                agent_id: agent_id.into(),
                place_id: place_id.into(),
            })),
        }
    }

    pub fn router(router_id: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::Router(RouterParty {
                router_id: router_id.into(),
            })),
        }
    }

    pub fn media_server(server_id: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::MediaServer(MediaServerParty {
                server_id: server_id.into(),
            })),
        }
    }

    pub fn admin(subject: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::Admin(AdminParty {
                subject: subject.into(),
            })),
        }
    }

    pub fn system(what: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::System(SystemParty { what: what.into() })),
        }
    }

    pub fn service(subject: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::Service(ServiceParty {
                subject: subject.into(),
            })),
        }
    }

    pub fn reporter(subject: impl Into<String>) -> Party {
        Party {
            kind: Some(Kind::Reporter(ReporterParty {
                subject: subject.into(),
            })),
        }
    }

    /// The agent id, when this party is an agent.
    pub fn agent_id(&self) -> Option<&str> {
        match &self.kind {
            Some(Kind::Agent(agent)) => Some(&agent.agent_id),
            _ => None,
        }
    }

    /// The router id, when this party is a router.
    pub fn router_id(&self) -> Option<&str> {
        match &self.kind {
            Some(Kind::Router(router)) => Some(&router.router_id),
            _ => None,
        }
    }

    /// The media server id, when this party is a media server.
    pub fn media_server_id(&self) -> Option<&str> {
        match &self.kind {
            Some(Kind::MediaServer(server)) => Some(&server.server_id),
            _ => None,
        }
    }

    /// Whether two parties are the same processor: agents are the same agent whatever their place.
    pub fn same_as(&self, other: &Party) -> bool {
        match (&self.kind, &other.kind) {
            (Some(Kind::Agent(a)), Some(Kind::Agent(b))) => a.agent_id == b.agent_id,
            (a, b) => a == b,
        }
    }

    /// A short key naming the party in stores and filters: `a:<agent>` (whatever the place),
    /// `r:<router>`, `m:<server>`…
    pub fn key(&self) -> String {
        // Concatenated, not formatted: every event names its parties by key, on the writer.
        let (prefix, id) = match &self.kind {
            Some(Kind::Agent(a)) => ("a:", &a.agent_id),
            Some(Kind::Router(r)) => ("r:", &r.router_id),
            Some(Kind::MediaServer(m)) => ("m:", &m.server_id),
            Some(Kind::Admin(a)) => ("admin:", &a.subject),
            Some(Kind::System(s)) => ("system:", &s.what),
            Some(Kind::Service(s)) => ("service:", &s.subject),
            Some(Kind::Reporter(r)) => ("reporter:", &r.subject),
            None => return String::new(),
        };
        let mut key = String::with_capacity(prefix.len() + id.len());
        key.push_str(prefix);
        key.push_str(id);
        key
    }

    /// A short readable form, `agent:a1@p1`, `router:r1`…, for logs and transcripts.
    pub fn label(&self) -> String {
        match &self.kind {
            Some(Kind::Agent(a)) if a.place_id.is_empty() => format!("agent:{}", a.agent_id),
            Some(Kind::Agent(a)) => format!("agent:{}@{}", a.agent_id, a.place_id),
            Some(Kind::Router(r)) => format!("router:{}", r.router_id),
            Some(Kind::MediaServer(m)) => format!("media-server:{}", m.server_id),
            Some(Kind::Admin(a)) => format!("admin:{}", a.subject),
            Some(Kind::System(s)) => format!("system:{}", s.what),
            Some(Kind::Service(s)) => format!("service:{}", s.subject),
            Some(Kind::Reporter(r)) => format!("reporter:{}", r.subject),
            None => "nobody".to_owned(),
        }
    }
}

impl From<AgentParty> for Party {
    fn from(agent: AgentParty) -> Party {
        Party {
            kind: Some(Kind::Agent(agent)),
        }
    }
}
