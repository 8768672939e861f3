//! A catalogue of hostile requests, one table across every RPC of interaction-server: bad tokens,
//! wrong roles, malformed and oversized arguments, unknown media and ids, another tenant's
//! interaction, callers not entitled, operations in the wrong state, a reused `request_id` with
//! another body, a message over the size limit and a `Subscribe` from a sequence in the future.
//!
//! Each case asserts the contract's exact status code and `reason`, and that afterwards the store is
//! unchanged row for row (every table of the SQLite database, the event log included): a refused
//! request changes nothing and emits nothing.

mod common;

use common::*;
use ixn_proto::auth::{self, Claims, Role, Secret};
use ixn_proto::common::Reason;
use ixn_proto::error::{Failure, Reason as R};
use ixn_proto::events::{EventFilter, SubscribeRequest};
use ixn_proto::interaction::*;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use tonic::Code;

/// A refused call: what it is, the call itself, and the status and reason the contract gives it
/// (none for the transport's own refusal, which carries no `ErrorInfo`).
struct Case {
    name: &'static str,
    call: Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>,
    code: Code,
    reason: Option<R>,
}

fn case<T, F>(name: &'static str, code: Code, reason: Option<R>, call: F) -> Case
where
    F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
{
    Case {
        name,
        call: Box::pin(async move { call.await.map(|_| ()) }),
        code,
        reason,
    }
}

/// Every row of every table, rendered and sorted: equal snapshots mean an unchanged store.
fn snapshot(data_dir: &Path) -> BTreeMap<String, Vec<String>> {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("interactions.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut snapshot = BTreeMap::new();
    for table in tables {
        let mut statement = db.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = statement.column_count();
        let mut rows: Vec<String> = statement
            .query_map([], |row| {
                let values: Vec<rusqlite::types::Value> =
                    (0..columns).map(|i| row.get(i)).collect::<Result<_, _>>()?;
                Ok(format!("{values:?}"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        snapshot.insert(table, rows);
    }
    snapshot
}

/// A client whose `authorization` is `header` exactly.
async fn raw_client(server: &TestServer, header: &str) -> Client {
    let mut client = Client::new(server.channel().await, Who::admin(), "x".into());
    let bearer = Bearer(header.parse().unwrap());
    let channel = server.channel().await;
    client.interactions =
        ixn_proto::interaction::interaction_service_client::InteractionServiceClient::with_interceptor(
            channel, bearer,
        );
    client
}

/// A client carrying a token minted from `claims` with `secret`.
async fn minted(server: &TestServer, secret: &Secret, claims: &Claims) -> Client {
    raw_client(server, &format!("Bearer {}", auth::mint(secret, claims))).await
}

fn get(id: &str) -> GetInteractionRequest {
    GetInteractionRequest {
        interaction_id: id.into(),
    }
}

fn submit_request(request_id: &str, queue: &str, media: &str) -> SubmitRequest {
    SubmitRequest {
        request_id: request_id.into(),
        media_type: media.into(),
        queue: queue.into(),
        properties: Default::default(),
    }
}

fn stop_request(id: &str) -> StopProcessingRequest {
    StopProcessingRequest {
        request_id: rid(),
        interaction_id: id.into(),
        reason: None,
    }
}

fn pull_request(id: &str) -> PullRequest {
    PullRequest {
        request_id: rid(),
        queue: "q".into(),
        media_type: String::new(),
        interaction_id: id.into(),
    }
}

fn deliver_request(id: &str, agent: &str) -> DeliverRequest {
    DeliverRequest {
        request_id: rid(),
        interaction_id: id.into(),
        agent_id: agent.into(),
        timeout_ms: 0,
    }
}

fn with_properties(properties: BTreeMap<String, String>) -> SubmitRequest {
    SubmitRequest {
        properties: properties.into_iter().collect(),
        ..submit_request(&rid(), "q", "chat")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_is_refused_as_the_contract_says_and_changes_nothing() {
    if on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let now = server.clock.now() / 1_000_000;

    // The world the cases run against: an interaction in each state.
    let mut service = server.client(Who::service()).await;
    service.ready_agent("a1", &["chat"]).await;
    let mut ms1 = server.client(Who::media_server("ms1")).await;
    let mut r1 = server.client(Who::router("r1")).await;
    let mut a1 = server.client(Who::agent("a1")).await;
    let mut admin = server.client(Who::admin()).await;
    let queued = ms1.submit("q", "chat").await.unwrap().interaction_id;
    let handling = ms1.submit("q", "chat").await.unwrap().interaction_id;
    r1.pull("q", &handling).await.unwrap();
    let ticket = r1.deliver(&handling, "a1").await.unwrap().ticket_id;
    a1.accept(&handling, &ticket).await.unwrap();
    let invited = ms1.submit("q", "chat").await.unwrap().interaction_id;
    r1.pull("q", &invited).await.unwrap();
    r1.deliver(&invited, "a1").await.unwrap();
    let routing = ms1.submit("q", "chat").await.unwrap().interaction_id;
    r1.pull("q", &routing).await.unwrap();
    let stopped = ms1.submit("q", "chat").await.unwrap().interaction_id;
    admin.stop(&stopped).await.unwrap();
    let used_id = rid();
    ms1.interactions
        .submit(submit_request(&used_id, "q", "chat"))
        .await
        .unwrap();
    let unknown = uuid::Uuid::now_v7().to_string();

    let ours = secret();
    let theirs = Secret {
        kid: None,
        bytes: b"another-secret-0123456789abcdef".to_vec(),
    };
    let admin_claims = Claims::new(Role::Admin, "ops", "t1", now, 3_600);
    let mut wrong_audience = admin_claims.clone();
    wrong_audience.aud = "elsewhere".into();
    let expired = Claims::new(Role::Admin, "ops", "t1", now - 7_200, 3_600);
    let mut not_yet = admin_claims.clone();
    not_yet.nbf = Some(now + 600);
    let any_tenant = Claims::new(Role::Admin, "ops", "*", now, 3_600);
    // {"alg":"none","typ":"JWT"} . {an admin of t1 until 2286} . (no signature)
    let unsigned = "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJvcHMiLCJ0ZW5hbnQiOiJ0MSIsInJvbGUiOiJhZG1pbiIsImF1ZCI6Iml4biIsImV4cCI6OTk5OTk5OTk5OX0.";

    let reporter = server.client(Who::reporter()).await;
    let a2 = server.client(Who::agent("a2")).await;
    let ms2 = server.client(Who::media_server("ms2")).await;
    let r2 = server.client(Who::router("r2")).await;
    let other_tenant = server.client(Who::admin().in_tenant("t2")).await;

    let oversized_value: BTreeMap<String, String> =
        [("notes".to_owned(), "x".repeat(4_097))].into();
    let too_many: BTreeMap<String, String> =
        (0..65).map(|n| (format!("k{n}"), "v".to_owned())).collect();
    let empty_key: BTreeMap<String, String> = [(String::new(), "v".to_owned())].into();
    let over_the_limit: BTreeMap<String, String> =
        [("blob".to_owned(), "x".repeat(300 * 1_024))].into();
    let long_reason = Reason {
        code: "done".into(),
        description: "x".repeat(513),
        ..Default::default()
    };

    let mut cases = {
        use Code::*;
        vec![
            // Tokens.
            case(
                "no authorization",
                Unauthenticated,
                Some(R::TokenInvalid),
                {
                    let mut c =
                ixn_proto::interaction::interaction_service_client::InteractionServiceClient::new(
                    server.channel().await,
                );
                    let request = get(&handling);
                    async move { c.get(request).await }
                },
            ),
            case(
                "an empty authorization",
                Unauthenticated,
                Some(R::TokenInvalid),
                {
                    let mut c = raw_client(&server, "").await;
                    let request = get(&handling);
                    async move { c.interactions.get(request).await }
                },
            ),
            case("not a bearer", Unauthenticated, Some(R::TokenInvalid), {
                let mut c = raw_client(&server, "Basic b3BzOnNlY3JldA==").await;
                let request = get(&handling);
                async move { c.interactions.get(request).await }
            }),
            case("not a JWT", Unauthenticated, Some(R::TokenInvalid), {
                let mut c = raw_client(&server, "Bearer not.a.token").await;
                let request = get(&handling);
                async move { c.interactions.get(request).await }
            }),
            case(
                "signed with another key",
                Unauthenticated,
                Some(R::TokenInvalid),
                {
                    let mut c = minted(&server, &theirs, &admin_claims).await;
                    let request = get(&handling);
                    async move { c.interactions.get(request).await }
                },
            ),
            case("alg none", Unauthenticated, Some(R::TokenInvalid), {
                let mut c = raw_client(&server, unsigned).await;
                let request = get(&handling);
                async move { c.interactions.get(request).await }
            }),
            case(
                "another audience",
                Unauthenticated,
                Some(R::TokenInvalid),
                {
                    let mut c = minted(&server, &ours, &wrong_audience).await;
                    let request = get(&handling);
                    async move { c.interactions.get(request).await }
                },
            ),
            case("expired", Unauthenticated, Some(R::TokenExpired), {
                let mut c = minted(&server, &ours, &expired).await;
                let request = get(&handling);
                async move { c.interactions.get(request).await }
            }),
            case("not valid yet", Unauthenticated, Some(R::TokenExpired), {
                let mut c = minted(&server, &ours, &not_yet).await;
                let request = get(&handling);
                async move { c.interactions.get(request).await }
            }),
            case(
                "tenant * for an admin",
                Unauthenticated,
                Some(R::TokenInvalid),
                {
                    let mut c = minted(&server, &ours, &any_tenant).await;
                    let request = get(&handling);
                    async move { c.interactions.get(request).await }
                },
            ),
            case(
                "expired, on a mutating call",
                Unauthenticated,
                Some(R::TokenExpired),
                {
                    let mut c = minted(&server, &ours, &expired).await;
                    let request = stop_request(&handling);
                    async move { c.interactions.stop_processing(request).await }
                },
            ),
            // Roles.
            case(
                "a reporter submits",
                PermissionDenied,
                Some(R::RoleDenied),
                {
                    let mut c = reporter.interactions.clone();
                    async move { c.submit(submit_request(&rid(), "q", "chat")).await }
                },
            ),
            case("a router submits", PermissionDenied, Some(R::RoleDenied), {
                let mut c = r1.interactions.clone();
                async move { c.submit(submit_request(&rid(), "q", "chat")).await }
            }),
            case(
                "a media server pulls",
                PermissionDenied,
                Some(R::RoleDenied),
                {
                    let mut c = ms1.interactions.clone();
                    let request = pull_request(&queued);
                    async move { c.pull(request).await }
                },
            ),
            case(
                "a media server delivers",
                PermissionDenied,
                Some(R::RoleDenied),
                {
                    let mut c = ms1.interactions.clone();
                    let request = deliver_request(&routing, "a1");
                    async move { c.deliver(request).await }
                },
            ),
            case("a reporter stops", PermissionDenied, Some(R::RoleDenied), {
                let mut c = reporter.interactions.clone();
                let request = stop_request(&handling);
                async move { c.stop_processing(request).await }
            }),
            case(
                "an agent calls the switch",
                PermissionDenied,
                Some(R::RoleDenied),
                {
                    let mut c = a1.agents.clone();
                    async move {
                        c.set_not_ready(SetNotReadyRequest {
                            request_id: rid(),
                            agent_id: "a1".into(),
                            media_type: "chat".into(),
                            reason: None,
                        })
                        .await
                    }
                },
            ),
            case(
                "a media server reads an agent",
                PermissionDenied,
                Some(R::RoleDenied),
                {
                    let mut c = ms1.agents.clone();
                    async move {
                        c.get_agent(GetAgentRequest {
                            agent_id: "a1".into(),
                        })
                        .await
                    }
                },
            ),
            // Arguments.
            case(
                "an empty request id",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    async move { c.submit(submit_request("", "q", "chat")).await }
                },
            ),
            case(
                "a request id that is no UUID",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    async move { c.submit(submit_request("request-1", "q", "chat")).await }
                },
            ),
            case(
                "an empty queue",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    async move { c.submit(submit_request(&rid(), "", "chat")).await }
                },
            ),
            case(
                "an unknown media",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    async move {
                        c.submit(submit_request(&rid(), "q", "carrier-pigeon"))
                            .await
                    }
                },
            ),
            case(
                "a property over its size",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    let request = with_properties(oversized_value);
                    async move { c.submit(request).await }
                },
            ),
            case(
                "too many properties",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    let request = with_properties(too_many);
                    async move { c.submit(request).await }
                },
            ),
            case(
                "an empty property key",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = ms1.interactions.clone();
                    let request = with_properties(empty_key);
                    async move { c.submit(request).await }
                },
            ),
            case("a message over the size limit", OutOfRange, None, {
                let mut c = ms1.interactions.clone();
                let request = with_properties(over_the_limit);
                async move { c.submit(request).await }
            }),
            case(
                "a malformed interaction id",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.interactions.clone();
                    async move { c.stop_processing(stop_request("42")).await }
                },
            ),
            case(
                "an empty interaction id",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.interactions.clone();
                    async move { c.get(get("")).await }
                },
            ),
            case(
                "a stop reason's text over its size",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.interactions.clone();
                    let mut request = stop_request(&handling);
                    request.reason = Some(long_reason.clone());
                    async move { c.stop_processing(request).await }
                },
            ),
            case(
                "an invite timeout over an hour",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = r1.interactions.clone();
                    let mut request = deliver_request(&routing, "a1");
                    request.timeout_ms = 3_600_001;
                    async move { c.deliver(request).await }
                },
            ),
            case(
                "a page over its size",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.interactions.clone();
                    async move {
                        c.list(ListInteractionsRequest {
                            page_size: 1_001,
                            ..Default::default()
                        })
                        .await
                    }
                },
            ),
            case(
                "a page token that was never given",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.interactions.clone();
                    async move {
                        c.list(ListInteractionsRequest {
                            page_token: "forged".into(),
                            ..Default::default()
                        })
                        .await
                    }
                },
            ),
            case(
                "a not-ready reason the platform does not list",
                InvalidArgument,
                Some(R::ReasonNotAllowed),
                {
                    let mut c = service.agents.clone();
                    async move {
                        c.set_not_ready(SetNotReadyRequest {
                            request_id: rid(),
                            agent_id: "a1".into(),
                            media_type: "chat".into(),
                            reason: Some(Reason {
                                code: "nap".into(),
                                ..Default::default()
                            }),
                        })
                        .await
                    }
                },
            ),
            case(
                "a subscription to an unknown kind",
                InvalidArgument,
                Some(R::InvalidArgument),
                {
                    let mut c = admin.events.clone();
                    async move {
                        c.subscribe(SubscribeRequest {
                            after_sequence: 0,
                            from_head: false,
                            filter: Some(EventFilter {
                                kinds: vec!["Everything".into()],
                                interaction_ids: vec![],
                            }),
                        })
                        .await
                    }
                },
            ),
            case(
                "a subscription from a sequence in the future",
                OutOfRange,
                Some(R::SequenceOutOfRange),
                {
                    let mut c = admin.events.clone();
                    async move {
                        c.subscribe(SubscribeRequest {
                            after_sequence: 1_000_000,
                            from_head: false,
                            filter: None,
                        })
                        .await
                    }
                },
            ),
            // Existence, in the caller's tenant.
            case(
                "an unknown interaction",
                NotFound,
                Some(R::InteractionNotFound),
                {
                    let mut c = admin.interactions.clone();
                    let id = unknown.clone();
                    async move { c.get(get(&id)).await }
                },
            ),
            case(
                "another tenant's interaction, stopped",
                NotFound,
                Some(R::InteractionNotFound),
                {
                    let mut c = other_tenant.interactions.clone();
                    let request = stop_request(&handling);
                    async move { c.stop_processing(request).await }
                },
            ),
            case(
                "another tenant's interaction, read",
                NotFound,
                Some(R::InteractionNotFound),
                {
                    let mut c = other_tenant.interactions.clone();
                    let id = handling.clone();
                    async move { c.get(get(&id)).await }
                },
            ),
            case("an unknown ticket", NotFound, Some(R::InviteNotFound), {
                let mut c = a1.interactions.clone();
                let id = invited.clone();
                async move {
                    c.accept(AcceptRequest {
                        request_id: rid(),
                        interaction_id: id,
                        ticket_id: uuid::Uuid::now_v7().to_string(),
                    })
                    .await
                }
            }),
            // Already stopped.
            case(
                "stopping a stopped interaction",
                FailedPrecondition,
                Some(R::AlreadyStopped),
                {
                    let mut c = admin.interactions.clone();
                    let request = stop_request(&stopped);
                    async move { c.stop_processing(request).await }
                },
            ),
            case(
                "queueing a stopped interaction",
                FailedPrecondition,
                Some(R::AlreadyStopped),
                {
                    let mut c = admin.interactions.clone();
                    let id = stopped.clone();
                    async move {
                        c.place_in_queue(PlaceInQueueRequest {
                            request_id: rid(),
                            interaction_id: id,
                            queue: "q2".into(),
                        })
                        .await
                    }
                },
            ),
            // Entitlement.
            case(
                "an agent stops another's interaction",
                PermissionDenied,
                Some(R::NotOwner),
                {
                    let mut c = a2.interactions.clone();
                    let request = stop_request(&handling);
                    async move { c.stop_processing(request).await }
                },
            ),
            case(
                "a media server stops what it did not submit",
                PermissionDenied,
                Some(R::NotOwner),
                {
                    let mut c = ms2.interactions.clone();
                    let request = stop_request(&handling);
                    async move { c.stop_processing(request).await }
                },
            ),
            case(
                "a router delivers what another owns",
                PermissionDenied,
                Some(R::NotOwner),
                {
                    let mut c = r2.interactions.clone();
                    let request = deliver_request(&routing, "a1");
                    async move { c.deliver(request).await }
                },
            ),
            case(
                "a media server reads what it did not submit",
                PermissionDenied,
                Some(R::NotOwner),
                {
                    let mut c = ms2.interactions.clone();
                    let id = handling.clone();
                    async move { c.get(get(&id)).await }
                },
            ),
            // State.
            case(
                "pulling an interaction an agent handles",
                FailedPrecondition,
                Some(R::InvalidState),
                {
                    let mut c = r2.interactions.clone();
                    let request = pull_request(&handling);
                    async move { c.pull(request).await }
                },
            ),
            case(
                "delivering to an agent who is not logged in",
                FailedPrecondition,
                Some(R::AgentNotAvailable),
                {
                    let mut c = r1.interactions.clone();
                    let request = deliver_request(&routing, "a2");
                    async move { c.deliver(request).await }
                },
            ),
            case(
                "logging out an agent who holds interactions",
                FailedPrecondition,
                Some(R::OngoingInteraction),
                {
                    let mut c = service.agents.clone();
                    async move {
                        c.logout(AgentLogoutRequest {
                            request_id: rid(),
                            agent_id: "a1".into(),
                            reason: None,
                        })
                        .await
                    }
                },
            ),
            // Idempotency.
            case(
                "a request id reused with another body",
                AlreadyExists,
                Some(R::RequestIdReused),
                {
                    let mut c = ms1.interactions.clone();
                    let request = submit_request(&used_id, "another-queue", "chat");
                    async move { c.submit(request).await }
                },
            ),
        ]
    };
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let before = snapshot(&server.data_dir);
    // What the world was built with is there to be compared: 5 submits, and what followed.
    assert!(
        before.get("events").is_some_and(|rows| rows.len() >= 12),
        "the snapshot misses the log: {:?}",
        before.keys().collect::<Vec<_>>()
    );
    let mut wrong = Vec::new();
    for case in cases.drain(..) {
        let status = match case.call.await {
            Ok(()) => {
                wrong.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(status) => status,
        };
        let reason = Failure::from_status(&status).map(|f| f.reason);
        if status.code() != case.code || reason != case.reason {
            wrong.push(format!(
                "{}: {:?} {reason:?}, expected {:?} {:?} ({})",
                case.name,
                status.code(),
                case.code,
                case.reason,
                status.message()
            ));
        }
        if snapshot(&server.data_dir) != before {
            wrong.push(format!("{}: the store changed", case.name));
            break;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The world is as it was: what the cases touched still works for those entitled to it.
    a1.stop(&handling).await.unwrap();
    server.stop().await;
}
