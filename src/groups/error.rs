//! What a consumer-group call can fail with, in terms a client can act on.
//!
//! `http::groups` maps each variant to a status and a stable problem `code`; nothing here
//! knows about HTTP.

use std::fmt;

use crate::broker::BrokerError;
use crate::limits::Limit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    InvalidGroupName(String),
    GroupNotFound(String),
    /// The member left or its session expired; the client must join again.
    MemberNotFound {
        group: String,
        member: String,
    },
    /// The member's generation is not one in which it owned every partition it commits.
    StaleGeneration {
        detail: String,
        generation: u32,
    },
    /// The operation needs a group without members (reset, delete, commit without membership).
    GroupNotEmpty {
        group: String,
        members: u32,
    },
    /// A named limit was crossed.
    LimitExceeded {
        limit_name: Limit,
        limit: u64,
        detail: String,
    },
    InvalidRequest(String),
    /// The group changed under a concurrent offset write too often; retrying is safe.
    Conflict(String),
    Broker(BrokerError),
}

impl From<BrokerError> for GroupError {
    fn from(e: BrokerError) -> Self {
        GroupError::Broker(e)
    }
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::InvalidGroupName(why) => write!(f, "invalid group name: {why}"),
            GroupError::GroupNotFound(g) => write!(f, "group '{g}' does not exist"),
            GroupError::MemberNotFound { group, member } => write!(
                f,
                "member '{member}' is not in group '{group}' (it left or its session expired); join again"
            ),
            GroupError::StaleGeneration { detail, .. } => write!(f, "{detail}"),
            GroupError::GroupNotEmpty { group, members } => write!(
                f,
                "group '{group}' has {members} members; this needs a group without members"
            ),
            GroupError::LimitExceeded { detail, .. } => write!(f, "{detail}"),
            GroupError::InvalidRequest(why) => write!(f, "{why}"),
            GroupError::Conflict(why) => write!(f, "{why}"),
            GroupError::Broker(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GroupError {}
