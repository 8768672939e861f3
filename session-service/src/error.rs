//! session-service's one error type and its one mapping to a gRPC status.

use ixn_proto::error::Failure;
use ixn_proto::sqlite::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A contract failure (checks, the switch's refusals, the Logout error flows).
    #[error(transparent)]
    Failure(#[from] Failure),
    /// The store could not be read or written: nothing was acknowledged.
    #[error("the store is unavailable: {0}")]
    Store(String),
    /// The switch is needed and cannot be reached.
    #[error("interaction-server is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Store(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Failure(f) => f.into_status(),
            Error::Store(s) => {
                tracing::error!(error = %s, "store failure");
                Status::unavailable(format!("the store is unavailable: {s}"))
            }
            Error::Unavailable(s) => {
                Status::unavailable(format!("interaction-server is unavailable: {s}"))
            }
        }
    }
}
