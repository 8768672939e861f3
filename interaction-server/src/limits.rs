//! Bounds on what callers may send, so that no request can make the server hold or store more than
//! it planned for. The transport's own message size limit comes first; these are finer.

use crate::domain::DomainError;
use std::collections::BTreeMap;

/// Properties an interaction may carry.
pub const MAX_PROPERTIES: usize = 64;
pub const MAX_PROPERTY_KEY_BYTES: usize = 128;
pub const MAX_PROPERTY_VALUE_BYTES: usize = 4_096;
/// All keys and values together.
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1_024;
/// A page of `List`.
pub const MAX_PAGE_SIZE: i32 = 1_000;
pub const DEFAULT_PAGE_SIZE: i32 = 100;

/// Checks a whole property map against the bounds.
pub fn check_properties(
    properties: &BTreeMap<String, String>,
    field: &'static str,
) -> Result<(), DomainError> {
    let invalid = |what: String| DomainError::InvalidArgument { field, what };
    if properties.len() > MAX_PROPERTIES {
        return Err(invalid(format!("more than {MAX_PROPERTIES} properties")));
    }
    let mut total = 0;
    for (key, value) in properties {
        if key.is_empty() || key.len() > MAX_PROPERTY_KEY_BYTES {
            return Err(invalid(format!(
                "a property key must be 1 to {MAX_PROPERTY_KEY_BYTES} bytes"
            )));
        }
        if value.len() > MAX_PROPERTY_VALUE_BYTES {
            return Err(invalid(format!(
                "property `{key}` is over {MAX_PROPERTY_VALUE_BYTES} bytes"
            )));
        }
        total += key.len() + value.len();
    }
    if total > MAX_PROPERTIES_BYTES {
        return Err(invalid(format!(
            "properties are over {MAX_PROPERTIES_BYTES} bytes in all"
        )));
    }
    Ok(())
}
