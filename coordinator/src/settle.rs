//! Settlement: what becomes of a delivery once it has been handled, decided here and only here,
//! from the type of the handler's error.
//!
//! - handled → **ack**;
//! - [`Failure::Message`] (the message itself cannot be handled: a refused job, a malformed
//!   event, a key of the wrong type) → **dead-letter** a copy with the reason to the dead queue
//!   and ack; the connection and every other job carry on;
//! - [`Failure::Fleet`] (RabbitMQ or Redis unavailable) → leave the delivery unsettled, so that
//!   RabbitMQ delivers it again, and return the error: the service reconnects.

use starkscale_common::broker::{Broker, BrokerError, Delivery};
use starkscale_common::store::StoreError;

use crate::CoordinatorError;

/// Why a message could not be handled.
#[derive(Debug)]
pub(crate) enum Failure {
    /// This message cannot be handled, now or later: park it with the reason.
    Message(String),
    /// The fleet's services are unavailable: handle it again after reconnecting.
    Fleet(CoordinatorError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        if e.unavailable {
            Failure::Fleet(e.into())
        } else {
            Failure::Message(e.to_string())
        }
    }
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Failure {
        Failure::Fleet(e.into())
    }
}

impl From<CoordinatorError> for Failure {
    fn from(e: CoordinatorError) -> Failure {
        match e {
            CoordinatorError::Store(e) => e.into(),
            other => Failure::Fleet(other),
        }
    }
}

/// Settles `delivery` from `queue` by how handling it went.
pub(crate) async fn settle<B: Broker>(
    broker: &B,
    delivery: Delivery,
    queue: &str,
    handled: Result<(), Failure>,
) -> Result<(), CoordinatorError> {
    match handled {
        Ok(()) => Ok(delivery.ack().await?),
        Err(Failure::Message(reason)) => {
            tracing::warn!(%queue, %reason, "dead-lettering a message");
            Ok(broker.dead_letter(delivery, queue, &reason).await?)
        }
        Err(Failure::Fleet(e)) => {
            drop(delivery);
            Err(e)
        }
    }
}
