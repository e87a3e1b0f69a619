//! Upstreams as operators see and steer them: the state each has in the upstream control topic
//! ([`relais_operator::control`]), and the admin action that disables or re-enables one. Every
//! change is written to the control topic (which every worker follows) and recorded in the
//! audit trail with the token's name.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::FutureProducer;
use relais_operator::KafkaClient;
use relais_operator::actions;
use relais_operator::control::{ControlFollower, UpstreamControl};
use relais_telemetry::shutdown::CancellationToken;

/// Longest the first read of the control topic may take.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
/// Wait before trying again to open a control topic that could not be read.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// The upstreams' states as last read, and the writer of changes.
pub struct Upstreams {
    /// `None` until the control topic was read to its end once.
    states: RwLock<Option<BTreeMap<String, UpstreamControl>>>,
    producer: FutureProducer,
    control_topic: String,
    audit_topic: String,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("control_topic", &self.control_topic)
            .field("audit_topic", &self.audit_topic)
            .finish_non_exhaustive()
    }
}

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the upstream control topic has not been read yet")]
    NotLoaded,
    #[error(transparent)]
    Kafka(#[from] anyhow::Error),
}

impl Upstreams {
    pub fn new(
        kafka: &KafkaClient,
        control_topic: &str,
        audit_topic: &str,
    ) -> anyhow::Result<Self> {
        let producer = kafka
            .config()
            .set("client.id", "realtime-gateway-admin")
            .create()
            .context("cannot create the admin producer")?;
        Ok(Self {
            states: RwLock::new(None),
            producer,
            control_topic: control_topic.to_owned(),
            audit_topic: audit_topic.to_owned(),
        })
    }

    /// Every upstream with a state in the control topic; `None` until it was read.
    pub fn states(&self) -> Option<BTreeMap<String, UpstreamControl>> {
        self.states
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn apply(&self, control: UpstreamControl) {
        if let Some(states) = self
            .states
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            states.insert(control.upstream.clone(), control);
        }
    }

    /// Sets an upstream's state as the operator `actor` asked, and records it in the audit
    /// trail. The control record is written first: the change takes effect even if the audit
    /// write then fails (the error says so).
    pub async fn set(
        &self,
        upstream: &str,
        enabled: bool,
        actor: &str,
        note: &str,
        trace_id: String,
    ) -> Result<UpstreamControl, ChangeError> {
        if self.states().is_none() {
            return Err(ChangeError::NotLoaded);
        }
        let control = UpstreamControl {
            upstream: upstream.to_owned(),
            enabled,
            reason: "operator".into(),
            detail: note.to_owned(),
            changed_by: actor.to_owned(),
            changed_at: chrono::Utc::now().to_rfc3339(),
        };
        relais_operator::control::publish(&self.producer, &self.control_topic, &control).await?;
        self.apply(control.clone());
        let action = actions::action_now(
            if enabled {
                actions::UPSTREAM_ENABLED
            } else {
                actions::UPSTREAM_DISABLED
            },
            actions::upstream_subject(upstream),
            actor.to_owned(),
            note.to_owned(),
            trace_id,
        );
        actions::record(&self.producer, &self.audit_topic, &action)
            .await
            .context("the upstream was changed, but the audit record of it was not written")?;
        Ok(control)
    }

    /// Reads the control topic to its end, then follows it until `shutdown`; a topic that
    /// cannot be read is tried again every few seconds.
    pub async fn follow(self: Arc<Self>, kafka: KafkaClient, shutdown: CancellationToken) {
        loop {
            let opened = {
                let (kafka, topic) = (kafka.clone(), self.control_topic.clone());
                tokio::task::spawn_blocking(move || {
                    let follower = ControlFollower::open(&kafka, &topic)?;
                    let current = follower.catch_up(CATCH_UP_DEADLINE)?;
                    anyhow::Ok((follower, current))
                })
                .await
            };
            match opened {
                Ok(Ok((follower, current))) => {
                    *self.states.write().unwrap_or_else(PoisonError::into_inner) = Some(current);
                    let upstreams = Arc::clone(&self);
                    let thread = follower.follow(move |control| upstreams.apply(control), shutdown);
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    return;
                }
                Ok(Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot read the upstream control topic yet; upstream states unavailable"
                ),
                Err(error) => tracing::error!(%error, "the control topic reader panicked"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REOPEN_AFTER) => {}
            }
        }
    }
}
