//! The worker's side of the upstream control topic ([`relais_operator::control`]): every
//! upstream's state as last set is applied to its [`UpstreamHold`], at start-up before the
//! first delivery and then as it changes. What this worker's calls change is told beyond it:
//! an upstream that answered 410 is published as disabled (for the other replicas) and every
//! hold, disabling and release is an operator action in the audit trail (actor
//! `worker:{id}`), the operational event an operator finds beside the messages it held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::FutureProducer;
use relais_operator::KafkaClient;
use relais_operator::actions;
use relais_operator::control::{ControlFollower, UpstreamControl};
use relais_proto::v1::OperatorAction;
use relais_telemetry::shutdown::CancellationToken;
use tokio::sync::mpsc;

use crate::hold::{HoldChange, UpstreamHold};

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

/// A change of an upstream's hold made by one of this worker's calls.
#[derive(Debug)]
pub struct HoldEvent {
    pub change: HoldChange,
    pub upstream: String,
    /// The answer and the message that made it.
    pub detail: String,
    pub trace_id: String,
}

/// Hands hold events to [`publish`]; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct HoldEvents(mpsc::Sender<HoldEvent>);

/// Events not yet published, at most. Holds change once per upstream per outage, so more than
/// a handful at once means many upstreams changed together.
const PENDING: usize = 64;

impl HoldEvents {
    pub fn channel() -> (Self, mpsc::Receiver<HoldEvent>) {
        let (sender, receiver) = mpsc::channel(PENDING);
        (Self(sender), receiver)
    }

    pub fn send(&self, event: HoldEvent) {
        if let Err(error) = self.0.try_send(event) {
            // The hold is in place here already; only its report is lost.
            tracing::warn!(%error, "cannot publish an upstream hold change");
        }
    }
}

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Writes each hold change to the audit trail, and a disabled upstream to the control topic
/// first, retrying until the broker has it or shutdown.
pub async fn publish(
    mut receiver: mpsc::Receiver<HoldEvent>,
    producer: FutureProducer,
    control_topic: String,
    audit_topic: String,
    worker_id: String,
    shutdown: CancellationToken,
) {
    let actor = format!("worker:{worker_id}");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = receiver.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let control = (event.change == HoldChange::Disabled).then(|| UpstreamControl {
            upstream: event.upstream.clone(),
            enabled: false,
            reason: "http_410".into(),
            detail: event.detail.clone(),
            changed_by: actor.clone(),
            changed_at: chrono::Utc::now().to_rfc3339(),
        });
        let action = actions::action_now(
            match event.change {
                HoldChange::Disabled => actions::UPSTREAM_DISABLED,
                HoldChange::Held => actions::UPSTREAM_HELD,
                HoldChange::Released => actions::UPSTREAM_RELEASED,
            },
            actions::upstream_subject(&event.upstream),
            actor.clone(),
            event.detail,
            event.trace_id,
        );
        if !write_until_stored(
            &producer,
            control
                .as_ref()
                .map(|control| (control_topic.as_str(), control)),
            &audit_topic,
            &action,
            &shutdown,
        )
        .await
        {
            return;
        }
    }
}

/// Writes `action` to the audit trail, after `control` to its topic if there is one, trying
/// again every [`RETRY`] until the broker has them; false if `shutdown` came first.
pub async fn write_until_stored(
    producer: &FutureProducer,
    control: Option<(&str, &UpstreamControl)>,
    audit_topic: &str,
    action: &OperatorAction,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let written = async {
            if let Some((topic, control)) = control {
                relais_operator::control::publish(producer, topic, control).await?;
            }
            actions::record(producer, audit_topic, action).await
        };
        match written.await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(
                    subject = %action.subject,
                    action = %action.action,
                    error = format!("{error:#}"),
                    "cannot publish the action yet; retrying"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}
