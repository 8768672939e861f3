//! W3C trace context as it crosses the wire: a call's `traceparent` metadata is carried into the
//! events the call produces, and onward into the calls it makes.

/// The caller's W3C `traceparent`, or empty; an oversized value is ignored.
pub fn traceparent<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or_default()
        .to_owned()
}
