//! Moves to retry tiers: where a message goes when it cannot be delivered now, and the key
//! order state ([`crate::parked`]) each move or outcome updates.

use std::time::SystemTime;

use super::{Processor, Upstream};
use crate::parked::Placement;
use crate::records::{Inbound, Scheduled};
use crate::schedule::Ordering;

impl Processor {
    /// The key a message keeps its order by, if its upstream keeps order and has tiers.
    pub(super) fn ordered_key<'a>(inbound: &'a Inbound, upstream: &Upstream) -> Option<&'a [u8]> {
        (upstream.ordering == Ordering::Key && !upstream.retry_tiers.is_empty())
            .then_some(inbound.key.as_deref())
            .flatten()
    }

    /// Whether the message may be delivered now, or must follow an older message of its key
    /// into a tier ([`crate::parked`]).
    pub(super) fn placement(
        &self,
        inbound: &Inbound,
        upstream: &Upstream,
        from_tier: Option<usize>,
    ) -> Placement {
        match Self::ordered_key(inbound, upstream) {
            Some(key) => {
                self.retry
                    .parked
                    .place(inbound.partition, upstream.client.name(), key, from_tier)
            }
            None => Placement::Deliver,
        }
    }

    /// The move of a message read from `from_tier` (`None`: the ingress topic) to the tier
    /// after it; `None` after the last.
    pub(super) fn next_tier(
        &self,
        inbound: &Inbound,
        upstream: &Upstream,
        from_tier: Option<usize>,
        reason: &str,
    ) -> Option<Scheduled> {
        let tier = from_tier.map_or(0, |tier| tier + 1);
        self.schedule(inbound, upstream, from_tier, tier, reason)
    }

    /// The move of a message to `tier`, recorded in the key order state; `None` when the
    /// upstream has no such tier.
    pub(super) fn schedule(
        &self,
        inbound: &Inbound,
        upstream: &Upstream,
        from_tier: Option<usize>,
        tier: usize,
        reason: &str,
    ) -> Option<Scheduled> {
        let delay = *upstream.retry_tiers.get(tier)?;
        let topic_index = self.retry.topics.of_delay(delay)?;
        let topic = self.retry.topics.name(topic_index)?.to_owned();
        let origin = inbound.origin();
        let state = crate::retry::RetryState {
            tier,
            due: SystemTime::now() + delay,
            upstream: upstream.client.name().to_owned(),
            origin_topic: origin.topic,
            origin_partition: origin.partition,
            origin_offset: origin.offset,
            first_seen: inbound.first_seen(),
            ingress_time: inbound.ingress_time(),
            reason: reason.to_owned(),
        };
        if let Some(key) = Self::ordered_key(inbound, upstream) {
            self.retry.parked.moved(
                inbound.partition,
                upstream.client.name(),
                key,
                from_tier,
                tier,
            );
        }
        Some(Scheduled {
            state,
            tiers: upstream.retry_tiers.len(),
            delay,
            topic,
            reason: reason.to_owned(),
        })
    }

    /// A message read from a tier got its outcome: its key no longer waits there.
    pub(super) fn decided_from_tier(
        &self,
        inbound: &Inbound,
        upstream: &Upstream,
        from_tier: Option<usize>,
    ) {
        if let (Some(tier), Some(key)) = (from_tier, Self::ordered_key(inbound, upstream)) {
            self.retry
                .parked
                .decided(inbound.partition, upstream.client.name(), key, tier);
        }
    }
}
