//! What every call leaves behind: a server span (a child of the caller's W3C trace context) and
//! the RPC count and latency by method and gRPC code. A tower layer around all of a server's
//! routes, so no handler has to remember it.
//!
//! The code of a call is in the response headers when the call failed before answering
//! ("trailers-only"), and otherwise in the trailers after the body, so the body is wrapped and the
//! call is finished when its trailers pass — or when the body is dropped without them (the client
//! went away: `CANCELLED`). A stream's latency is therefore its whole life.

use crate::measure;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Body, BoxFuture, Bytes, Service};
use tracing::Instrument;

/// The layer: `Server::builder().layer(ObserveLayer)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The service the layer makes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let span = crate::trace::server_span(request.headers(), path);
        // Kept only for what records it.
        let method = if measure::enabled() {
            path.to_owned()
        } else {
            String::new()
        };
        let start = Instant::now();
        let response = self.inner.call(request).instrument(span.clone());
        // Made before the answer: a call dropped before it answers counts as CANCELLED.
        let mut call = Call {
            method,
            start,
            span,
            done: false,
        };
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            if let Some(code) = grpc_status(&parts.headers) {
                call.finish(code);
            }
            Ok(Response::from_parts(
                parts,
                Observed {
                    inner: body,
                    call: Some(call),
                },
            ))
        })
    }
}

/// One call until its code is known.
struct Call {
    method: String,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let code = tonic::Code::from_i32(code);
        // An unknown method is answered UNIMPLEMENTED by the router: whatever path a client
        // invents must not become a label of its own.
        let method = if code == tonic::Code::Unimplemented {
            "unknown"
        } else {
            self.method.as_str()
        };
        self.span.record("rpc.grpc.status_code", code as i32);
        measure::rpc(method, code_name(code), self.start.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled as i32);
    }
}

/// A response body that finishes its call when the trailers pass.
pub struct Observed<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> std::fmt::Debug for Observed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(code), Some(call)) = (
                    frame.trailers_ref().and_then(grpc_status),
                    self.call.as_mut(),
                ) {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.as_mut() {
                    call.finish(tonic::Code::Internal as i32);
                }
            }
            Poll::Ready(None) => {
                // The end without trailers: a body that carried no status.
                if let Some(call) = self.call.as_mut() {
                    call.finish(tonic::Code::Unknown as i32);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The code's name as the gRPC specification spells it (the `code` label).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
