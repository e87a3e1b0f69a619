//! Replaying dead letters: moves DLQ records back to the ingress topic. Run from the command line
//! (`ingest-worker replay-dlq`) or as a job through the realtime-gateway's admin API.
//!
//! A replay reads every DLQ partition by assignment, from its start up to the end it had when
//! the replay began (records that fail again and return to the DLQ are not looped), and selects
//! records by reason, upstream, message id and the time they were dead-lettered
//! ([`Selection`]). It uses no consumer group and commits no offsets: a record another filter
//! skipped stays there for the next replay, and so does one that arrived during this one.
//!
//! Each selected record goes back to the ingress topic with its original key, value and headers
//! (the worker's `relais-dlq-*` headers removed), plus `relais-replay-of` naming the DLQ record
//! it came from and `relais-replay-job` naming this run. What was replayed is written to the
//! replay ledger, a compacted topic keyed by DLQ position, **in the same Kafka transaction** as
//! the replayed records; a later replay skips what the ledger holds, so each dead letter is
//! replayed at most once, whatever filters the runs use. The transactional id is shared by all
//! replays of a worker group, so a second replay started meanwhile fences the first.
//!
//! A DLQ copy that was cut to the DLQ limits (`relais-dlq-truncated`) is never replayed: it is
//! not the message. The summary counts it, and its headers say where the original is.
//!
//! The replayed message is decided again like any other: it gets a second outcome under the
//! same message id, so its audit trail shows the DEAD_LETTERED outcome and the new one together,
//! and the upstream sees the same `Idempotency-Key`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::KafkaClient;
use crate::headers;

/// Records replayed per transaction.
const BATCH: usize = 500;
/// Longest a replay waits for the rest of a topic it reads.
const READ_DEADLINE: Duration = Duration::from_secs(120);
/// Limit of each blocking Kafka call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which dead letters to replay. Empty lists select everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub reasons: Vec<String>,
    pub upstreams: Vec<String>,
    pub message_ids: Vec<String>,
    /// Dead-lettered at or after.
    pub from: Option<SystemTime>,
    /// Dead-lettered before.
    pub to: Option<SystemTime>,
}

/// What the selection looks at in a DLQ record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    pub upstream: String,
    pub message_id: String,
    /// When it was dead-lettered (the DLQ record's timestamp).
    pub dead_lettered_at: Option<SystemTime>,
    /// The copy was cut to the DLQ limits.
    pub truncated: bool,
}

impl Selection {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let listed =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let after_from = self
            .from
            .is_none_or(|from| letter.dead_lettered_at.is_some_and(|at| at >= from));
        let before_to = self
            .to
            .is_none_or(|to| letter.dead_lettered_at.is_some_and(|at| at < to));
        listed(&self.reasons, &letter.reason)
            && listed(&self.upstreams, &letter.upstream)
            && listed(&self.message_ids, &letter.message_id)
            && after_from
            && before_to
    }
}

/// Where a replay reads and writes.
#[derive(Debug, Clone)]
pub struct ReplayTarget {
    pub kafka: KafkaClient,
    pub dlq_topic: String,
    pub ingress_topic: String,
    pub ledger_topic: String,
    /// Shared by every replay of one pipeline, so that a second replay started meanwhile
    /// (from the command line or the gateway) fences the first instead of racing it.
    pub transactional_id: String,
}

impl ReplayTarget {
    /// The transactional id of the replays of the worker group `group_id`.
    pub fn transactional_id_of(group_id: &str) -> String {
        format!("relais-replay-{group_id}")
    }
}

/// A new replay's id: `replay-{UTC time}-{random}`.
pub fn new_job_id() -> String {
    format!(
        "replay-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// One replay run as asked for.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// The run's id ([`new_job_id`]); one is made when empty.
    pub job: String,
    pub selection: Selection,
    /// Stop after this many replayed records.
    pub limit: Option<u64>,
    /// Count what would be replayed, write nothing.
    pub dry_run: bool,
    /// Who asked (recorded in the ledger).
    pub requested_by: String,
}

/// What a replay did (or has done so far).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    /// This run's id, on every replayed record (`relais-replay-job`) and in the ledger.
    pub job: String,
    pub requested_by: String,
    pub scanned: u64,
    pub replayed: u64,
    /// Not selected by the filters.
    pub skipped: u64,
    /// Selected, but replayed by an earlier run (the ledger holds them).
    pub already_replayed: u64,
    /// Selected, but cut to the DLQ limits: not the message, so not replayed.
    pub truncated: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub dry_run: bool,
}

/// The ledger's key for a DLQ record.
fn ledger_key(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Replays the selected DLQ records; see the module docs. `progress` is called with the counts
/// after every transaction and at the end.
pub async fn replay(
    target: &ReplayTarget,
    request: &ReplayRequest,
    progress: &(dyn Fn(&ReplaySummary) + Send + Sync),
) -> anyhow::Result<ReplaySummary> {
    let job = if request.job.is_empty() {
        new_job_id()
    } else {
        request.job.clone()
    };
    let producer: FutureProducer = target
        .kafka
        .config()
        .set("transactional.id", &target.transactional_id)
        .set("linger.ms", "5")
        .create()
        .context("cannot create the producer")?;
    if !request.dry_run {
        // Fences a replay still running with the same id, and settles what it left open, so
        // the ledger read next is complete.
        let init = producer.clone();
        tokio::task::spawn_blocking(move || init.init_transactions(CALL_TIMEOUT))
            .await?
            .context("cannot initialise the replay's transactions")?;
    }
    let ledger_topic = target.ledger_topic.clone();
    let dlq_topic = target.dlq_topic.clone();
    let kafka = target.kafka.clone();
    let reader = move || -> anyhow::Result<BaseConsumer> {
        kafka.reader().create().context("cannot create a reader")
    };

    let ledger = {
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || read_ledger(&reader()?, &ledger_topic)).await??
    };
    let letters = {
        let reader = reader.clone();
        let dlq_topic = dlq_topic.clone();
        tokio::task::spawn_blocking(move || read_dlq(&reader()?, &dlq_topic)).await??
    };

    let mut summary = ReplaySummary {
        job: job.clone(),
        requested_by: request.requested_by.clone(),
        dry_run: request.dry_run,
        ..ReplaySummary::default()
    };
    let mut batch = Vec::new();
    for record in letters {
        summary.scanned += 1;
        if !request.selection.matches(&record.letter) {
            summary.skipped += 1;
            continue;
        }
        let key = ledger_key(&dlq_topic, record.partition, record.offset);
        if ledger.contains(&key) {
            summary.already_replayed += 1;
            continue;
        }
        if record.letter.truncated {
            summary.truncated += 1;
            continue;
        }
        if request.limit.is_some_and(|limit| summary.replayed >= limit) {
            break;
        }
        summary.replayed += 1;
        *summary
            .by_reason
            .entry(record.letter.reason.clone())
            .or_default() += 1;
        if !request.dry_run {
            batch.push((key, record));
            if batch.len() >= BATCH {
                write_batch(
                    &producer,
                    target,
                    &job,
                    request,
                    &std::mem::take(&mut batch),
                )
                .await?;
                progress(&summary);
            }
        }
    }
    if !batch.is_empty() {
        write_batch(&producer, target, &job, request, &batch).await?;
    }
    progress(&summary);
    tracing::info!(
        job,
        requested_by = %request.requested_by,
        replayed = summary.replayed,
        scanned = summary.scanned,
        "DLQ replay done"
    );
    Ok(summary)
}

/// A DLQ record read for replay.
#[derive(Debug)]
struct Letter {
    partition: i32,
    offset: i64,
    letter: DeadLetter,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Writes one batch of replayed records and their ledger entries in one transaction.
async fn write_batch(
    producer: &FutureProducer,
    target: &ReplayTarget,
    job: &str,
    request: &ReplayRequest,
    batch: &[(String, Letter)],
) -> anyhow::Result<()> {
    let begin = producer.clone();
    tokio::task::spawn_blocking(move || begin.begin_transaction())
        .await?
        .context("cannot begin a replay transaction")?;
    let replayed_at = chrono::Utc::now().to_rfc3339();
    let mut deliveries = Vec::with_capacity(batch.len() * 2);
    for (ledger_key, letter) in batch {
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 2);
        for (name, value) in &letter.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        headers = headers
            .insert(Header {
                key: headers::REPLAY_OF,
                value: Some(ledger_key),
            })
            .insert(Header {
                key: headers::REPLAY_JOB,
                value: Some(job),
            });
        let mut record = FutureRecord::to(&target.ingress_topic)
            .payload(&letter.payload)
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        deliveries.push(producer.send_result(record).map_err(|(error, _)| error)?);
        let entry = serde_json::json!({
            "job": job,
            "replayed_at": replayed_at,
            "requested_by": request.requested_by,
            "reason": letter.letter.reason,
            "message_id": letter.letter.message_id,
        })
        .to_string();
        deliveries.push(
            producer
                .send_result(
                    FutureRecord::to(&target.ledger_topic)
                        .key(ledger_key)
                        .payload(&entry),
                )
                .map_err(|(error, _)| error)?,
        );
    }
    for delivery in deliveries {
        delivery
            .await
            .map_err(|_| anyhow::anyhow!("a replayed record was cancelled"))?
            .map_err(|(error, _)| error)
            .context("cannot write a replayed record")?;
    }
    let commit = producer.clone();
    tokio::task::spawn_blocking(move || commit.commit_transaction(CALL_TIMEOUT))
        .await?
        .context("cannot commit the replay transaction")?;
    Ok(())
}

/// The end offset of every partition of `topic` now, and the list to read them from the start.
fn assign_from_start(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} does not exist");
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, CALL_TIMEOUT)?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(ends)
}

/// Reads `topic` from its start to the ends it had when called, handing each record to `take`.
/// Transaction markers and aborted records are never delivered but count in the end offsets,
/// so a partition is done when the consumer's position reaches its end.
fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    mut take: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let mut ends = assign_from_start(consumer, topic)?;
    let deadline = Instant::now() + READ_DEADLINE;
    while !ends.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} took longer than {READ_DEADLINE:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message))
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() < *end) =>
            {
                take(&message);
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context(format!("reading {topic}")),
            None => {}
        }
        let positions = consumer.position()?;
        for element in positions.elements() {
            if let (Offset::Offset(position), Some(end)) =
                (element.offset(), ends.get(&element.partition()))
                && position >= *end
            {
                ends.remove(&element.partition());
            }
        }
    }
    Ok(())
}

fn read_ledger(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<HashSet<String>> {
    let mut replayed = HashSet::new();
    read_to_end(consumer, topic, |message| {
        if let Some(key) = message.key() {
            replayed.insert(String::from_utf8_lossy(key).into_owned());
        }
    })
    .context("cannot read the replay ledger (kafka.replay_ledger_topic)")?;
    Ok(replayed)
}

fn read_dlq(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<Letter>> {
    let mut letters = Vec::new();
    read_to_end(consumer, topic, |message| letters.push(letter(message)))?;
    letters.sort_by_key(|letter| (letter.partition, letter.offset));
    Ok(letters)
}

fn letter(message: &BorrowedMessage<'_>) -> Letter {
    let mut letter = DeadLetter {
        dead_lettered_at: message
            .timestamp()
            .to_millis()
            .and_then(|millis| u64::try_from(millis).ok())
            .map(|millis| SystemTime::UNIX_EPOCH + Duration::from_millis(millis)),
        ..DeadLetter::default()
    };
    let mut original = Vec::new();
    if let Some(message_headers) = message.headers() {
        for header in message_headers.iter() {
            let text = || String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            match header.key {
                headers::DLQ_REASON => letter.reason = text(),
                headers::DLQ_UPSTREAM => letter.upstream = text(),
                headers::DLQ_MESSAGE_ID => letter.message_id = text(),
                headers::DLQ_TRUNCATED => letter.truncated = true,
                _ => {}
            }
            let added_by_relais = headers::DLQ_ALL.contains(&header.key)
                || header.key == headers::REPLAY_OF
                || header.key == headers::REPLAY_JOB;
            if !added_by_relais {
                original.push((
                    header.key.to_owned(),
                    header.value.unwrap_or_default().to_vec(),
                ));
            }
        }
    }
    Letter {
        partition: message.partition(),
        offset: message.offset(),
        letter,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers: original,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, upstream: &str, id: &str, at_secs: u64) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            upstream: upstream.into(),
            message_id: id.into(),
            dead_lettered_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(at_secs)),
            truncated: false,
        }
    }

    #[test]
    fn an_empty_selection_takes_everything() {
        assert!(Selection::default().matches(&letter("http_410", "a", "m-1", 10)));
        assert!(Selection::default().matches(&DeadLetter::default()));
    }

    #[test]
    fn every_filter_must_match() {
        let selection = Selection {
            reasons: vec!["http_410".into(), "retries_exhausted".into()],
            upstreams: vec!["billing".into()],
            message_ids: Vec::new(),
            from: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            to: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(200)),
        };
        assert!(selection.matches(&letter("http_410", "billing", "m", 100)));
        assert!(selection.matches(&letter("retries_exhausted", "billing", "m", 199)));
        assert!(
            !selection.matches(&letter("wrong_type", "billing", "m", 150)),
            "reason"
        );
        assert!(
            !selection.matches(&letter("http_410", "orders", "m", 150)),
            "upstream"
        );
        assert!(
            !selection.matches(&letter("http_410", "billing", "m", 99)),
            "before from"
        );
        assert!(
            !selection.matches(&letter("http_410", "billing", "m", 200)),
            "to is exclusive"
        );
        let undated = DeadLetter {
            dead_lettered_at: None,
            ..letter("http_410", "billing", "m", 0)
        };
        assert!(!selection.matches(&undated), "a time filter needs a time");
    }

    #[test]
    fn message_ids_select_exactly() {
        let selection = Selection {
            message_ids: vec!["order-7".into()],
            ..Selection::default()
        };
        assert!(selection.matches(&letter("x", "", "order-7", 1)));
        assert!(!selection.matches(&letter("x", "", "order-70", 1)));
    }
}
