//! Logs and traces. Logs go to standard error (text, or JSON for collectors), filtered by
//! `RUST_LOG`. Traces are exported by OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other standard `OTEL_*` variables (service
//! name, resource attributes, headers, timeout, sampler) are honoured by the SDK.
//!
//! W3C trace context crosses the wire both ways: a served call's span is a child of the caller's
//! `traceparent` ([`server_span`]); the calls it makes and the events it produces carry that span's
//! own `traceparent` ([`traceparent`]); a consumer's handling of an event is linked to it
//! ([`link`]). Without an exporter no span is made at all (spans cost nothing then), and a call's
//! incoming `traceparent` is passed on unchanged, so a trace still crosses the services.

use crate::hosting::LogFormat;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic::codegen::http::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Whether spans are exported (and so worth making).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Where spans go, as the environment says: `None` when no OTLP endpoint is configured.
pub fn otlp_from_env() -> Option<Otlp> {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
    .then_some(Otlp { endpoint: None })
}

/// An OTLP/gRPC destination for spans.
#[derive(Clone, Debug)]
pub struct Otlp {
    /// `None`: the standard variables say where.
    pub endpoint: Option<String>,
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "shut it down before exiting, or the last spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter cannot be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("logging is already set up: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
}

/// Starts logging and, with `otlp`, span export, for the service `name` (unless `OTEL_SERVICE_NAME`
/// or `OTEL_RESOURCE_ATTRIBUTES` names it). Call from within the runtime: the exporter's channel is
/// a task of it.
pub fn init(
    name: &str,
    format: LogFormat,
    otlp: Option<Otlp>,
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // RUST_LOG filters the logs only: the spans that carry trace context are made whatever the
    // log level, and only they (INFO and above) become OpenTelemetry spans, never the transport's.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a pipe or a file gets plain text.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    }
    .with_filter(filter);
    let provider = match otlp {
        Some(otlp) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = otlp.endpoint {
                use opentelemetry_otlp::WithExportConfig;
                exporter = exporter.with_endpoint(endpoint);
            }
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter.build()?)
                    .with_resource(resource(name))
                    .build(),
            )
        }
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(name.to_owned()))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()?;
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// The service's name, unless the standard variables give one.
fn resource(name: &str) -> opentelemetry_sdk::Resource {
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(name.to_owned())
            .build()
    }
}

impl Telemetry {
    /// Exports what is left and stops the exporter (on a blocking thread: the export needs the
    /// runtime free to drive its channel).
    pub async fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Some(provider) = self.provider {
            match tokio::task::spawn_blocking(move || provider.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("spans could not all be exported: {e}"),
                Err(e) => eprintln!("spans could not all be exported: {e}"),
            }
        }
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one served call, named after its method, a child of the caller's trace context.
pub fn server_span(headers: &HeaderMap, method: &str) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Before the span is first entered: afterwards its parent is fixed.
    let _ = span.set_parent(parent);
    span
}

/// The W3C `traceparent` to carry into the events a call produces and the calls it makes: the
/// current span's when spans are exported, else the caller's own (an oversized one is ignored).
pub fn traceparent<T>(request: &tonic::Request<T>) -> String {
    if exporting()
        && let Some(own) = current()
    {
        return own;
    }
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or_default()
        .to_owned()
}

/// The current span's `traceparent`, if it is a sampled-or-not but valid OpenTelemetry span.
pub fn current() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Links `span` to the trace of `traceparent` (an event's producer), if it is a valid one.
pub fn link(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// A span for work done on behalf of events (a relay, a delivery, a commit), linked to the traces
/// that produced up to [`MAX_LINKS`] of them; none when spans are not exported.
pub fn linked_span<'a>(
    name: &'static str,
    kind: &'static str,
    traceparents: impl Iterator<Item = &'a str>,
) -> tracing::Span {
    if !exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("ixn", otel.name = name, otel.kind = kind);
    for traceparent in traceparents.take(MAX_LINKS) {
        link(&span, traceparent);
    }
    span
}

/// The most links one span carries.
pub const MAX_LINKS: usize = 32;
