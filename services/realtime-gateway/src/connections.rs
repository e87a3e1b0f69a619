//! WebSocket connection slots: a cap for the gateway and a smaller one per token, reserved
//! before the handshake completes and checked and taken under one lock, so two handshakes
//! cannot both take the last slot, and one token (one dashboard, one script gone wrong) cannot
//! take them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug)]
pub struct ConnectionSlots {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_token: usize,
    /// `relais_gateway_ws_connections`.
    gauge: Gauge,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_token: HashMap<Arc<str>, usize>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The gateway holds `max_connections`.
    GatewayFull,
    /// The token holds `max_connections_per_token`.
    TokenFull,
}

impl ConnectionSlots {
    pub fn new(max_total: usize, max_per_token: usize, gauge: Gauge) -> Self {
        Self {
            counts: Mutex::default(),
            max_total,
            max_per_token,
            gauge,
        }
    }

    /// Takes a slot for `token`, or says which cap refuses it.
    pub fn reserve(self: &Arc<Self>, token: &Arc<str>) -> Result<Slot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refused::GatewayFull);
        }
        let held = counts.per_token.entry(Arc::clone(token)).or_default();
        if *held >= self.max_per_token {
            return Err(Refused::TokenFull);
        }
        *held += 1;
        counts.total += 1;
        self.gauge.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            token: Arc::clone(token),
        })
    }

    /// Connections held in all.
    pub fn len(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, token: &Arc<str>) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_token.get_mut(token) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_token.remove(token);
            }
        }
        self.gauge.dec();
    }
}

/// One connection's slot, given back when dropped (the connection ended, or the handshake
/// never completed).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    token: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_share_and_the_gateway_its_total() {
        let slots = Arc::new(ConnectionSlots::new(3, 2, Gauge::default()));
        let (viewer, other): (Arc<str>, Arc<str>) = (Arc::from("viewer"), Arc::from("other"));
        let first = slots.reserve(&viewer).unwrap_or_else(|_| unreachable!());
        let _second = slots.reserve(&viewer).unwrap_or_else(|_| unreachable!());
        assert_eq!(slots.reserve(&viewer).err(), Some(Refused::TokenFull));
        let _third = slots.reserve(&other).unwrap_or_else(|_| unreachable!());
        assert_eq!(slots.reserve(&other).err(), Some(Refused::GatewayFull));
        drop(first);
        assert_eq!(slots.len(), 2);
        assert!(slots.reserve(&viewer).is_ok());
    }

    #[test]
    fn racing_reservations_never_pass_the_caps() {
        let slots = Arc::new(ConnectionSlots::new(1000, 50, Gauge::default()));
        let token: Arc<str> = Arc::from("viewer");
        let kept: Vec<Slot> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (slots, token) = (Arc::clone(&slots), Arc::clone(&token));
                    scope.spawn(move || {
                        (0..100)
                            .filter_map(|_| slots.reserve(&token).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(kept.len(), 50);
        assert_eq!(slots.len(), 50);
        drop(kept);
        assert!(slots.is_empty());
    }
}
