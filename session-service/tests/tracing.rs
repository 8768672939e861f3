//! One Logout is one trace across both services. The spans are received by an OTLP collector in
//! this test (the `TraceService` of `opentelemetry-proto`): session-service runs as its binary with
//! the standard `OTEL_*` variables, interaction-server in this process with the same telemetry
//! set-up its binary uses (so this file holds one test: the subscriber is global).

#[macro_use]
mod common;

use common::*;
use ixn_proto::auth::Role;
use ixn_proto::hosting::LogFormat;
use ixn_proto::session::LogoutRequest;
use ixn_proto::trace::{self, Otlp};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::sync::{Arc, Mutex};

/// A span as the collector received it, ids in hex.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_logout_is_one_trace_across_both_services() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = trace::init(
        "interaction-server",
        LogFormat::Text,
        Some(Otlp {
            endpoint: Some(endpoint.clone()),
        }),
    )
    .unwrap();
    let live = Live::start(None, false, |c| {
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    })
    .await;

    let mut desktop = live.desktop("a1");
    let session = desktop.login(&["chat"], true).await.unwrap();
    let mut logout = tonic::Request::new(LogoutRequest {
        request_id: rid(),
        session_id: session.session_id.clone(),
        reason: None,
    });
    logout.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    desktop.client.logout(logout).await.unwrap();

    // Every event interaction-server made in that trace names the span that made it.
    let mut service = live.ixn(Role::Admin, "ops");
    let mut log = service.subscribe(0).await;
    let mut produced = Vec::new();
    for event in log.until("AgentLogout").await {
        if event.traceparent.contains(TRACE) {
            produced.push(event.traceparent[36..52].to_owned());
        }
    }
    assert!(!produced.is_empty(), "the logout's events carry its trace");

    // Flushed: session-service on its SIGTERM, this process's spans by shutting telemetry down.
    live.sessions.signal("TERM");
    let Live { sessions, ixn, .. } = live;
    assert!(sessions.wait().await.success());
    ixn.stop().await;
    telemetry.shutdown().await;

    let spans = collector.0.lock().unwrap().clone();
    let named = |service: &str, name: &str| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .cloned()
            .collect()
    };
    let logouts = named("session-service", "ixn.session.v1.SessionService/Logout");
    assert_eq!(logouts.len(), 1, "{spans:#?}");
    let logout = &logouts[0];
    assert_eq!(logout.trace_id, TRACE, "the caller's trace continues");
    assert_eq!(logout.parent_span_id, CALLER_SPAN);

    // interaction-server's calls made by that logout are children of its span.
    let switch: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == "interaction-server" && s.trace_id == TRACE)
        .filter(|s| s.name.starts_with("ixn.interaction.v1.AgentService/"))
        .collect();
    assert!(
        switch
            .iter()
            .any(|s| s.name == "ixn.interaction.v1.AgentService/Logout"),
        "{spans:#?}"
    );
    for call in &switch {
        assert_eq!(call.parent_span_id, logout.span_id, "{call:?}");
    }
    // The events' producer is one of those calls.
    for span_id in &produced {
        assert!(
            switch.iter().any(|s| &s.span_id == span_id),
            "{span_id} is no span of the logout's calls"
        );
    }
    // session-service's handling of those events (its relay) is linked to the trace.
    let relays = named("session-service", "relay");
    for span_id in &produced {
        assert!(
            relays
                .iter()
                .any(|r| r.links.contains(&(TRACE.to_owned(), span_id.clone()))),
            "no relay span is linked to {span_id}: {relays:#?}"
        );
    }
    // So is the commit that wrote the logout's events, in each service.
    assert!(
        named("interaction-server", "store commit")
            .iter()
            .any(|c| c.links.iter().any(|(t, _)| t == TRACE))
    );
}
