//! Argument checks both services apply before anything else: ids, names and reasons are bounded and
//! well-formed, or the request is refused with `INVALID_ARGUMENT` naming the field.

use crate::common::Reason;
use crate::error::Failure;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Names (agent, place, queue, media, subject…) are at most this long.
pub const MAX_NAME_BYTES: usize = 128;
/// A reason's `description` (free text) is at most this long.
pub const MAX_REASON_TEXT_BYTES: usize = 512;
/// A reason's `code` and `system_name` are at most this long.
pub const MAX_REASON_CODE_BYTES: usize = 64;

/// A `request_id`: a UUID, as AIP-155 asks.
pub fn request_id(value: &str) -> Result<(), Failure> {
    uuid("request_id", value).map(|_| ())
}

/// A UUID-valued field.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Failure> {
    if value.is_empty() {
        return Err(Failure::invalid_argument(field, "is required"));
    }
    Uuid::try_parse(value).map_err(|_| Failure::invalid_argument(field, "is not a UUID"))
}

/// A required name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
pub fn name(field: &str, value: &str) -> Result<(), Failure> {
    if value.is_empty() {
        return Err(Failure::invalid_argument(field, "is required"));
    }
    optional_name(field, value)
}

/// An optional name: empty, or as [`name`] says.
pub fn optional_name(field: &str, value: &str) -> Result<(), Failure> {
    if value.len() > MAX_NAME_BYTES {
        return Err(Failure::invalid_argument(
            field,
            format!("is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Failure::invalid_argument(
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

/// A reason's sizes (whether the platform allows it is the domain's check).
pub fn reason(field: &str, reason: Option<&Reason>) -> Result<(), Failure> {
    let Some(r) = reason else { return Ok(()) };
    let too_long = |part: &str, len: usize, max: usize| {
        (len > max).then(|| {
            Failure::invalid_argument(
                &format!("{field}.{part}"),
                format!("is longer than {max} bytes"),
            )
        })
    };
    if let Some(f) = too_long("code", r.code.len(), MAX_REASON_CODE_BYTES)
        .or_else(|| too_long("system_name", r.system_name.len(), MAX_REASON_CODE_BYTES))
        .or_else(|| too_long("description", r.description.len(), MAX_REASON_TEXT_BYTES))
    {
        return Err(f);
    }
    Ok(())
}

/// A digest of a decoded request, for telling a retry (same digest) from a reuse of its id.
pub fn fingerprint(request: &impl Message) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason as R;

    #[test]
    fn ids_names_and_reasons_are_bounded() {
        assert!(request_id("0190b3c5-9d4e-7c4a-8f1e-2b3c4d5e6f70").is_ok());
        assert_eq!(request_id("nope").unwrap_err().reason, R::InvalidArgument);
        assert_eq!(name("queue", "").unwrap_err().violations[0].0, "queue");
        assert!(name("queue", &"q".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(name("queue", &"q".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(name("queue", "a\nb").is_err());
        let long = Reason {
            description: "x".repeat(MAX_REASON_TEXT_BYTES + 1),
            ..Default::default()
        };
        assert_eq!(
            reason("reason", Some(&long)).unwrap_err().violations[0].0,
            "reason.description"
        );
    }
}
