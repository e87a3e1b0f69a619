//! The upstream control topic: a compacted topic keyed by upstream name whose latest record says
//! whether that upstream is enabled.
//!
//! A worker that is answered 410 (the endpoint is gone) writes "disabled"; an operator re-enables
//! the upstream through the gateway's admin API (or disables one by hand). Every worker replica
//! follows the topic, so all of them hold a disabled upstream alike, and a replica that starts
//! later starts from the current state instead of dead-lettering its way to the same 410.
//! Records are JSON, so `kcat -C -t relais.upstream-control -e` shows them as they are.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::KafkaClient;

/// The state of one upstream as last set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamControl {
    pub upstream: String,
    pub enabled: bool,
    /// Why it was set: `http_410` (a worker was answered 410) or `operator`.
    pub reason: String,
    /// What happened, for the operator reading it (the URL and message for a 410, the note
    /// given with an admin request).
    pub detail: String,
    /// Who set it: `worker:{id}` or `token:{name}`.
    pub changed_by: String,
    /// When, RFC 3339 UTC.
    pub changed_at: String,
}

impl UpstreamControl {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Limit of each Kafka call made here.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes one control record and waits until the broker has it.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    control: &UpstreamControl,
) -> anyhow::Result<()> {
    let payload = control.encode();
    producer
        .send(
            FutureRecord::to(topic)
                .key(&control.upstream)
                .payload(&payload),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("cannot write to the upstream control topic {topic}"))?;
    Ok(())
}

/// Reads the control topic from its start, by assignment (no consumer group, no offsets), and
/// keeps following it.
pub struct ControlFollower {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for ControlFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFollower")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ControlFollower {
    /// Assigns every partition of `topic` from its start. Blocking: call off the async threads.
    pub fn open(kafka: &KafkaClient, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .reader()
            .create()
            .context("cannot create the control topic reader")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), CALL_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of {topic}"))?;
        let mut assignment = TopicPartitionList::new();
        for found in metadata.topics().iter().filter(|t| t.name() == topic) {
            if let Some(error) = found.error() {
                anyhow::bail!(
                    "the upstream control topic {topic} is not usable ({error:?}); create it \
                     (compacted, one partition) as deploy/native/kafka/topics.txt does"
                );
            }
            for partition in found.partitions() {
                assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
            }
        }
        anyhow::ensure!(
            assignment.count() > 0,
            "the upstream control topic {topic} does not exist; create it (compacted, one \
             partition) as deploy/native/kafka/topics.txt does"
        );
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Reads up to the end the topic has now and returns the latest state of each upstream.
    /// Blocking, bounded by `deadline`.
    pub fn catch_up(
        &self,
        deadline: Duration,
    ) -> anyhow::Result<BTreeMap<String, UpstreamControl>> {
        let started = std::time::Instant::now();
        let mut ends = BTreeMap::new();
        for element in self.consumer.assignment()?.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, element.partition(), CALL_TIMEOUT)?;
            if high > low {
                ends.insert(element.partition(), high);
            }
        }
        let mut state = BTreeMap::new();
        while !ends.is_empty() {
            anyhow::ensure!(
                started.elapsed() < deadline,
                "reading the upstream control topic {} took longer than {deadline:?}",
                self.topic
            );
            if let Some(control) = self.poll(Duration::from_millis(200))? {
                state.insert(control.upstream.clone(), control);
            }
            for element in self.consumer.position()?.elements() {
                if let (Offset::Offset(position), Some(end)) =
                    (element.offset(), ends.get(&element.partition()))
                    && position >= *end
                {
                    ends.remove(&element.partition());
                }
            }
        }
        Ok(state)
    }

    /// The next record, if one arrives within `timeout`. A record that does not decode is
    /// logged and skipped: it cannot say which upstream it meant.
    pub fn poll(&self, timeout: Duration) -> anyhow::Result<Option<UpstreamControl>> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(error)) => {
                Err(error).with_context(|| format!("reading the control topic {}", self.topic))
            }
            Some(Ok(message)) => {
                match UpstreamControl::decode(message.payload().unwrap_or_default()) {
                    Ok(control) => Ok(Some(control)),
                    Err(error) => {
                        tracing::warn!(
                            topic = %self.topic,
                            partition = message.partition(),
                            offset = message.offset(),
                            %error,
                            "control record ignored: not an upstream state"
                        );
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Hands every further record to `apply` until `shutdown`; runs on its own thread (the
    /// consumer's calls block). Errors are logged and polling goes on: librdkafka reconnects.
    pub fn follow(
        self,
        mut apply: impl FnMut(UpstreamControl) + Send + 'static,
        shutdown: CancellationToken,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while !shutdown.is_cancelled() {
                match self.poll(Duration::from_millis(500)) {
                    Ok(Some(control)) => apply(control),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "upstream control topic");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_record_reads_back_and_junk_is_an_error() {
        let control = UpstreamControl {
            upstream: "billing".into(),
            enabled: false,
            reason: "http_410".into(),
            detail: "410 Gone from http://127.0.0.1:9/events".into(),
            changed_by: "worker:w-1".into(),
            changed_at: "2026-12-02T08:00:00Z".into(),
        };
        assert_eq!(UpstreamControl::decode(&control.encode()).unwrap(), control);
        assert!(UpstreamControl::decode(b"{\"upstream\":1}").is_err());
        assert!(UpstreamControl::decode(b"\xff").is_err());
    }
}
