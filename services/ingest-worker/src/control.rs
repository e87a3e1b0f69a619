//! The worker's side of the upstream control topic ([`relais_operator::control`]): every
//! upstream's state as last set is applied to its [`UpstreamHold`], at start-up before the
//! first delivery and then as it changes; and an upstream this worker saw answer 410 is
//! published as disabled, for the other replicas and for the audit trail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::FutureProducer;
use relais_operator::KafkaClient;
use relais_operator::actions;
use relais_operator::control::{ControlFollower, UpstreamControl};
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::hold::UpstreamHold;

/// Longest a worker waits at start-up for the current state of its upstreams.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);

/// Reads the control topic up to its end, applies the state to `holds`, then follows it on
/// a thread of its own until `shutdown`.
pub async fn follow(
    kafka: KafkaClient,
    topic: String,
    holds: BTreeMap<String, Arc<UpstreamHold>>,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let holds = Arc::new(holds);
    let at_start = Arc::clone(&holds);
    let follower = tokio::task::spawn_blocking(move || -> anyhow::Result<ControlFollower> {
        let follower = ControlFollower::open(&kafka, &topic)?;
        for control in follower.catch_up(CATCH_UP_DEADLINE)?.into_values() {
            apply(&at_start, &control);
        }
        Ok(follower)
    })
    .await
    .context("the control topic reader panicked")??;
    Ok(follower.follow(move |control| apply(&holds, &control), shutdown))
}

fn apply(holds: &BTreeMap<String, Arc<UpstreamHold>>, control: &UpstreamControl) {
    let Some(hold) = holds.get(&control.upstream) else {
        return;
    };
    if control.enabled {
        tracing::info!(upstream = %control.upstream, by = %control.changed_by, "upstream enabled");
    } else {
        tracing::warn!(
            upstream = %control.upstream,
            reason = %control.reason,
            by = %control.changed_by,
            detail = %control.detail,
            "upstream disabled: its messages wait until an operator re-enables it"
        );
    }
    hold.set_enabled(control.enabled);
}

/// An upstream this worker found gone.
#[derive(Debug)]
pub struct Disabled {
    pub upstream: String,
    pub detail: String,
    pub trace_id: String,
}

/// Hands disabled upstreams to [`publish`]; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct DisabledSender(mpsc::Sender<Disabled>);

/// Upstreams found gone and not yet published, at most. Each upstream is disabled once per
/// re-enabling, so more than a handful at once means many upstreams went away together.
const PENDING: usize = 64;

impl DisabledSender {
    pub fn channel() -> (Self, mpsc::Receiver<Disabled>) {
        let (sender, receiver) = mpsc::channel(PENDING);
        (Self(sender), receiver)
    }

    pub fn send(&self, disabled: Disabled) {
        if let Err(error) = self.0.try_send(disabled) {
            // The hold is in place here already; only the other replicas learn it later (from
            // their own 410).
            tracing::warn!(%error, "cannot publish a disabled upstream");
        }
    }
}

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Writes each disabled upstream to the control topic and the audit trail, retrying until
/// the broker has it or shutdown.
pub async fn publish(
    mut receiver: mpsc::Receiver<Disabled>,
    producer: FutureProducer,
    control_topic: String,
    audit_topic: String,
    worker_id: String,
    shutdown: CancellationToken,
) {
    let actor = format!("worker:{worker_id}");
    loop {
        let disabled = tokio::select! {
            _ = shutdown.cancelled() => return,
            disabled = receiver.recv() => match disabled {
                Some(disabled) => disabled,
                None => return,
            },
        };
        let control = UpstreamControl {
            upstream: disabled.upstream.clone(),
            enabled: false,
            reason: "http_410".into(),
            detail: disabled.detail.clone(),
            changed_by: actor.clone(),
            changed_at: chrono::Utc::now().to_rfc3339(),
        };
        let action = actions::action_now(
            actions::UPSTREAM_DISABLED,
            actions::upstream_subject(&disabled.upstream),
            actor.clone(),
            disabled.detail,
            disabled.trace_id,
        );
        loop {
            let written = async {
                relais_operator::control::publish(&producer, &control_topic, &control).await?;
                actions::record(&producer, &audit_topic, &action).await
            };
            match written.await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(
                        upstream = %control.upstream,
                        error = format!("{error:#}"),
                        "cannot publish the disabled upstream yet; retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}
