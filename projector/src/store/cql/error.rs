//! Driver errors as [`StoreError`]s, with what the store was doing when they happened.
//!
//! The split matters to callers: [`StoreError::Unavailable`] says "try again later" (the cluster
//! is unreachable, overloaded or timing out, which a retry may well get past), while
//! [`StoreError::Storage`] says something is wrong that retrying will not fix (a bad statement, a
//! schema that does not match, a value that does not decode).

use std::fmt::Display;

use scylla::deserialize::{DeserializationError, TypeCheckError};
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    IntoRowsResultError, MaybeFirstRowError, MetadataError, NewSessionError, NextPageError,
    NextRowError, PagerExecutionError, PrepareError, RequestAttemptError, RequestError, RowsError,
    UseKeyspaceError,
};

use crate::store::StoreError;

/// Whether an error is the cluster being unreachable or too busy for now.
pub(super) trait Transient: Display {
    fn is_transient(&self) -> bool;
}

/// `error`, which happened while doing `context`, as a [`StoreError`] of the right kind.
pub(super) fn failed(context: impl Display, error: impl Transient) -> StoreError {
    let message = format!("{context}: {error}");
    if error.is_transient() {
        StoreError::Unavailable(message)
    } else {
        StoreError::Storage(message)
    }
}

/// A stored value this code would never have written.
pub(super) fn corrupt(context: impl Display, problem: impl Display) -> StoreError {
    StoreError::Storage(format!("corrupt {context}: {problem}"))
}

impl Transient for RequestAttemptError {
    fn is_transient(&self) -> bool {
        match self {
            RequestAttemptError::UnableToAllocStreamId
            | RequestAttemptError::BrokenConnectionError(_) => true,
            RequestAttemptError::DbError(error, _) => matches!(
                error,
                DbError::Unavailable { .. }
                    | DbError::Overloaded
                    | DbError::IsBootstrapping
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteTimeout { .. }
                    | DbError::RateLimitReached { .. }
            ),
            _ => false,
        }
    }
}

impl Transient for ExecutionError {
    fn is_transient(&self) -> bool {
        match self {
            ExecutionError::EmptyPlan
            | ExecutionError::ConnectionPoolError(_)
            | ExecutionError::RequestTimeout(_)
            | ExecutionError::SchemaAgreementError(_)
            | ExecutionError::MetadataError(_) => true,
            ExecutionError::LastAttemptError(error) => error.is_transient(),
            ExecutionError::PrepareError(error) => error.is_transient(),
            ExecutionError::UseKeyspaceError(error) => error.is_transient(),
            _ => false,
        }
    }
}

impl Transient for RequestError {
    fn is_transient(&self) -> bool {
        match self {
            RequestError::EmptyPlan
            | RequestError::ConnectionPoolError(_)
            | RequestError::RequestTimeout(_) => true,
            RequestError::LastAttemptError(error) => error.is_transient(),
            _ => false,
        }
    }
}

impl Transient for PrepareError {
    fn is_transient(&self) -> bool {
        match self {
            PrepareError::ConnectionPoolError(_) => true,
            PrepareError::AllAttemptsFailed { first_attempt } => first_attempt.is_transient(),
            _ => false,
        }
    }
}

impl Transient for UseKeyspaceError {
    fn is_transient(&self) -> bool {
        matches!(self, UseKeyspaceError::RequestError(error) if error.is_transient())
    }
}

impl Transient for NextPageError {
    fn is_transient(&self) -> bool {
        matches!(self, NextPageError::RequestFailure(error) if error.is_transient())
    }
}

impl Transient for PagerExecutionError {
    fn is_transient(&self) -> bool {
        match self {
            PagerExecutionError::PrepareError(error) => error.is_transient(),
            PagerExecutionError::NextPageError(error) => error.is_transient(),
            PagerExecutionError::UseKeyspaceError(error) => error.is_transient(),
            PagerExecutionError::SchemaAgreementError(_)
            | PagerExecutionError::MetadataError(_) => true,
            _ => false,
        }
    }
}

impl Transient for NextRowError {
    fn is_transient(&self) -> bool {
        matches!(self, NextRowError::NextPageError(error) if error.is_transient())
    }
}

/// Every way of failing to open a session is the cluster being out of reach, except for a
/// configuration the driver refuses outright and a node that turns this client away.
impl Transient for NewSessionError {
    fn is_transient(&self) -> bool {
        match self {
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => false,
            NewSessionError::MetadataError(MetadataError::ConnectionPoolError(
                ConnectionPoolError::Broken { last_connection_error },
            )) => !refused(last_connection_error),
            _ => true,
        }
    }
}

/// Whether the node turned this client away: refused its login, or failed the TLS handshake
/// (a certificate that does not chain to the trusted CAs, or no TLS on the other end). Trying
/// again with the same settings cannot get past that.
fn refused(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionSetupRequestError(setup) => matches!(
            setup.get_error(),
            ConnectionSetupRequestErrorKind::DbError(DbError::AuthenticationError, _)
        ),
        ConnectionError::IoError(io) => {
            io.get_ref().is_some_and(|inner| inner.is::<openssl::ssl::Error>())
        }
        _ => false,
    }
}

/// Results that do not have the shape a statement promises: never fixed by retrying.
macro_rules! permanent {
    ($($error:ty),*) => {$(
        impl Transient for $error {
            fn is_transient(&self) -> bool {
                false
            }
        }
    )*};
}

permanent!(
    IntoRowsResultError,
    RowsError,
    MaybeFirstRowError,
    DeserializationError,
    TypeCheckError
);
