//! Errors raised by the resilience layers themselves.

use std::time::Duration;

use crate::circuit::CircuitOpen;
use crate::classify::{TimeoutKind, TransportError};

/// A call ended by one of our own layers rather than by the upstream or the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResilienceError {
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    #[error("no free bulkhead slot within {0:?}")]
    BulkheadFull(Duration),
    #[error("{} timeout", .0.as_str())]
    Timeout(TimeoutKind),
    #[error("response body larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
}

impl ResilienceError {
    pub(crate) fn into_middleware(self) -> reqwest_middleware::Error {
        reqwest_middleware::Error::Middleware(anyhow::Error::new(self))
    }
}

/// Classifies any error of the middleware stack by type.
pub(crate) fn transport_error(error: &reqwest_middleware::Error) -> TransportError {
    match error {
        reqwest_middleware::Error::Reqwest(error) => TransportError::from_reqwest(error),
        reqwest_middleware::Error::Middleware(error) => {
            match error.downcast_ref::<ResilienceError>() {
                Some(ResilienceError::Timeout(kind)) => TransportError::Timeout(*kind),
                Some(ResilienceError::ResponseTooLarge { .. }) => TransportError::ResponseTooLarge,
                // A reqwest error wrapped by a layer that needed to add nothing to it.
                _ => error
                    .downcast_ref::<reqwest::Error>()
                    .map_or(TransportError::Other, TransportError::from_reqwest),
            }
        }
    }
}

/// Our own refusal, if the error is one (circuit open, bulkhead full).
pub(crate) fn refusal(error: &reqwest_middleware::Error) -> Option<&ResilienceError> {
    match error {
        reqwest_middleware::Error::Middleware(error) => {
            error.downcast_ref::<ResilienceError>().filter(|e| {
                matches!(
                    e,
                    ResilienceError::CircuitOpen(_) | ResilienceError::BulkheadFull(_)
                )
            })
        }
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}
