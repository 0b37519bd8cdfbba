//! What a producer-session call can fail with; `http::producers` maps each variant to a
//! status and a stable problem `code`.

use std::fmt;

use crate::broker::BrokerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerError {
    InvalidName(String),
    /// An id this broker never handed out, or an epoch its session never had.
    Unknown {
        producer_id: i64,
        producer_epoch: i16,
    },
    /// The name's epoch reached `i16::MAX`: no newer incarnation can fence the older ones.
    EpochExhausted(String),
    Broker(BrokerError),
}

impl From<BrokerError> for ProducerError {
    fn from(e: BrokerError) -> Self {
        ProducerError::Broker(e)
    }
}

impl fmt::Display for ProducerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProducerError::InvalidName(why) => write!(f, "invalid producer name: {why}"),
            ProducerError::Unknown {
                producer_id,
                producer_epoch,
            } => write!(
                f,
                "producer {producer_id} with epoch {producer_epoch} was never handed out by this \
                 broker; start a session with POST /v1/producers"
            ),
            ProducerError::EpochExhausted(name) => write!(
                f,
                "producer '{name}' has used every epoch ({}); use another name",
                i16::MAX
            ),
            ProducerError::Broker(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProducerError {}
