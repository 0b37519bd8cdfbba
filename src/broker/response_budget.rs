//! The response budget: bytes read for consumers and not yet handed to their connections,
//! bounded across the whole broker by `response_bytes_in_flight_max`.
//!
//! A fetch or an SSE stream reserves its page (`max_bytes`) before it reads from the log,
//! settles the reservation to the size of what it rendered, and gives it back when the
//! response body has been handed out (or dropped, when the client goes away). A client that
//! never reads keeps its page reserved, so a few hundred of them hold the budget, not the
//! process's memory: a page that does not fit in what is left is refused with `overloaded`
//! (503 with `Retry-After`) and costs nothing.
//!
//! Invariant: the bytes accounted are at least the rendered responses in flight, except a
//! bounded slack: a read may cut a batch (at most one batch above its page), and once a body
//! has been handed out hyper may still buffer part of it (its write buffer, about 400 KiB per
//! connection) and the kernel the rest of its socket buffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Broker, BrokerError};
use crate::limits::Limit;
use crate::metrics as m;

/// `response_bytes_in_flight_max` and what is reserved of it.
#[derive(Debug)]
pub struct ResponseBudget {
    max: u64,
    /// Bytes reserved by pages in flight; never above `max` by a reservation, possibly above
    /// it by a settlement (a rendered page larger than its read).
    reserved: AtomicU64,
}

/// A page's share of the budget, given back on drop.
#[derive(Debug)]
pub struct ResponseBytes {
    budget: Arc<ResponseBudget>,
    bytes: u64,
}

impl ResponseBudget {
    pub fn new(max: u64) -> Arc<ResponseBudget> {
        Arc::new(ResponseBudget {
            max,
            reserved: AtomicU64::new(0),
        })
    }

    /// Reserves `bytes` for a page, or refuses when they do not fit in what is left.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<ResponseBytes, BrokerError> {
        let fits = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                let after = reserved.checked_add(bytes)?;
                (after <= self.max).then_some(after)
            });
        if fits.is_err() {
            return Err(BrokerError::Overloaded {
                limit_name: Limit::ResponseBytesInFlightMax,
                limit: self.max,
            });
        }
        ::metrics::gauge!(m::RESPONSE_BYTES_IN_FLIGHT).increment(bytes as f64);
        Ok(ResponseBytes {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

impl Broker {
    /// Reserves `bytes` of the response budget for a page read for a consumer.
    pub fn reserve_response(&self, bytes: u64) -> Result<ResponseBytes, BrokerError> {
        self.responses.reserve(bytes)
    }

    /// Accounts `bytes` already read, without refusing: for a read whose size is known only
    /// afterwards (a group member fetch, which may wait between admission and its read).
    pub fn charge_response(&self, bytes: u64) -> ResponseBytes {
        let mut page = ResponseBytes {
            budget: Arc::clone(&self.responses),
            bytes: 0,
        };
        page.settle(bytes);
        page
    }
}

impl ResponseBytes {
    /// The page size reserved: the most bytes to read from the log.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sets the reservation to what the page really holds (its rendered size): gives back
    /// what was not used, or accounts for a rendered page larger than its read.
    pub fn settle(&mut self, bytes: u64) {
        let reserved = &self.budget.reserved;
        if bytes > self.bytes {
            reserved.fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            reserved.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        ::metrics::gauge!(m::RESPONSE_BYTES_IN_FLIGHT).increment(bytes as f64 - self.bytes as f64);
        self.bytes = bytes;
    }
}

impl Drop for ResponseBytes {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        ::metrics::gauge!(m::RESPONSE_BYTES_IN_FLIGHT).decrement(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_past_the_budget_are_refused_and_dropped_pages_give_their_bytes_back() {
        let budget = ResponseBudget::new(100);
        let mut a = budget.reserve(60).unwrap();
        assert!(matches!(
            budget.reserve(50),
            Err(BrokerError::Overloaded { limit: 100, .. })
        ));
        a.settle(30);
        let b = budget.reserve(50).unwrap();
        a.settle(80);
        assert!(
            budget.reserve(1).is_err(),
            "over the budget after settling up"
        );
        drop(a);
        drop(b);
        assert_eq!(budget.reserved.load(Ordering::Acquire), 0);
        assert_eq!(budget.reserve(100).unwrap().bytes(), 100);
    }
}
