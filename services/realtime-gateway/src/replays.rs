//! DLQ replays run as jobs of the gateway ([`relais_operator::replay`], the same code as
//! `ingest-worker replay-dlq`): started by an admin over the REST API, watched while they run
//! (counts so far), and recorded in the audit trail when they start and when they end, with the
//! token's name.
//!
//! One job runs at a time here; a replay started elsewhere meanwhile (the command line, another
//! gateway) shares the transactional id, so the later one fences the earlier, which then ends
//! failed and says why. What a fenced job replayed stays replayed: the ledger is written in the
//! same transactions, and a new job skips it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::producer::FutureProducer;
use relais_operator::actions;
use relais_operator::replay::{ReplayRequest, ReplaySummary, ReplayTarget};
use serde::Serialize;
use utoipa::ToSchema;

/// Jobs kept for `GET /api/v1/admin/replays`, newest first; older ones are forgotten (the
/// audit trail keeps them).
const KEPT_JOBS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A replay job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayJob {
    /// Also on every replayed record (`relais-replay-job`) and in the replay ledger.
    pub id: String,
    pub state: JobState,
    /// The token that started it.
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// What was asked for.
    pub selection: SelectionView,
    pub limit: Option<u64>,
    pub dry_run: bool,
    /// DLQ records looked at so far.
    pub scanned: u64,
    /// Written back to the ingress topic so far (with `dry_run`, would be).
    pub replayed: u64,
    /// Not selected by the filters.
    pub skipped: u64,
    /// Selected, but replayed by an earlier job.
    pub already_replayed: u64,
    /// Selected, but cut to the DLQ limits: not the message, so not replayed.
    pub truncated: u64,
    /// Replayed, by reason code.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct SelectionView {
    pub reasons: Vec<String>,
    pub upstreams: Vec<String>,
    pub message_ids: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl ReplayJob {
    fn take_counts(&mut self, summary: &ReplaySummary) {
        self.scanned = summary.scanned;
        self.replayed = summary.replayed;
        self.skipped = summary.skipped;
        self.already_replayed = summary.already_replayed;
        self.truncated = summary.truncated;
        self.by_reason.clone_from(&summary.by_reason);
    }

    fn counts(&self) -> String {
        format!(
            "scanned {}, replayed {}, skipped {}, already replayed {}, truncated {}",
            self.scanned, self.replayed, self.skipped, self.already_replayed, self.truncated
        )
    }
}

/// A job is already running here.
#[derive(Debug, thiserror::Error)]
#[error("replay {0} is still running; one replay runs at a time")]
pub struct Busy(pub String);

pub struct ReplayJobs {
    target: ReplayTarget,
    audit_topic: String,
    producer: FutureProducer,
    jobs: Mutex<VecDeque<Arc<Mutex<ReplayJob>>>>,
}

impl std::fmt::Debug for ReplayJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayJobs")
            .field("audit_topic", &self.audit_topic)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReplayJobs {
    pub fn new(target: ReplayTarget, audit_topic: &str) -> anyhow::Result<Self> {
        let producer = target
            .kafka
            .config()
            .set("client.id", "realtime-gateway-replays")
            .create()?;
        Ok(Self {
            target,
            audit_topic: audit_topic.to_owned(),
            producer,
            jobs: Mutex::default(),
        })
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<ReplayJob> {
        lock(&self.jobs)
            .iter()
            .map(|job| lock(job).clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<ReplayJob> {
        lock(&self.jobs)
            .iter()
            .map(|job| lock(job).clone())
            .find(|job| job.id == id)
    }

    /// Starts a job for `request` on behalf of `actor`; returns it as it starts.
    pub fn start(
        self: &Arc<Self>,
        mut request: ReplayRequest,
        actor: &str,
        trace_id: String,
    ) -> Result<ReplayJob, Busy> {
        request.job = relais_operator::replay::new_job_id();
        request.requested_by = actor.to_owned();
        let selection = &request.selection;
        let time = |at: Option<std::time::SystemTime>| {
            at.map(|at| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339())
        };
        let job = ReplayJob {
            id: request.job.clone(),
            state: JobState::Running,
            requested_by: actor.to_owned(),
            started_at: now(),
            finished_at: None,
            selection: SelectionView {
                reasons: selection.reasons.clone(),
                upstreams: selection.upstreams.clone(),
                message_ids: selection.message_ids.clone(),
                from: time(selection.from),
                to: time(selection.to),
            },
            limit: request.limit,
            dry_run: request.dry_run,
            scanned: 0,
            replayed: 0,
            skipped: 0,
            already_replayed: 0,
            truncated: 0,
            by_reason: Default::default(),
            error: None,
        };
        let shared = Arc::new(Mutex::new(job.clone()));
        {
            let mut jobs = lock(&self.jobs);
            if let Some(running) = jobs
                .iter()
                .map(|job| lock(job))
                .find(|job| job.state == JobState::Running)
            {
                return Err(Busy(running.id.clone()));
            }
            jobs.push_front(Arc::clone(&shared));
            jobs.truncate(KEPT_JOBS);
        }
        let jobs = Arc::clone(self);
        let actor = actor.to_owned();
        tokio::spawn(async move { jobs.run(request, shared, actor, trace_id).await });
        Ok(job)
    }

    async fn run(
        &self,
        request: ReplayRequest,
        job: Arc<Mutex<ReplayJob>>,
        actor: String,
        trace_id: String,
    ) {
        let subject = actions::replay_subject(&request.job);
        let started = {
            let job = lock(&job);
            serde_json::json!({
                "selection": job.selection,
                "limit": job.limit,
                "dry_run": job.dry_run,
            })
            .to_string()
        };
        self.record(
            actions::REPLAY_STARTED,
            &subject,
            &actor,
            started,
            &trace_id,
        )
        .await;
        let progress = |summary: &ReplaySummary| lock(&job).take_counts(summary);
        let result = relais_operator::replay::replay(&self.target, &request, &progress).await;
        let detail = {
            let mut job = lock(&job);
            job.finished_at = Some(now());
            match result {
                Ok(summary) => {
                    job.take_counts(&summary);
                    job.state = JobState::Succeeded;
                    tracing::info!(job = %job.id, by = %actor, counts = %job.counts(), "replay job done");
                    job.counts()
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    tracing::error!(job = %job.id, by = %actor, %error, "replay job failed");
                    job.state = JobState::Failed;
                    job.error = Some(error.clone());
                    format!("failed: {error}; {}", job.counts())
                }
            }
        };
        self.record(
            actions::REPLAY_FINISHED,
            &subject,
            &actor,
            detail,
            &trace_id,
        )
        .await;
    }

    /// Records an action of a job; a failure is logged, the job goes on (what it replayed is
    /// in the ledger and on each record's headers either way).
    async fn record(
        &self,
        action: &str,
        subject: &str,
        actor: &str,
        detail: String,
        trace_id: &str,
    ) {
        let action = actions::action_now(
            action,
            subject.to_owned(),
            actor.to_owned(),
            detail,
            trace_id.to_owned(),
        );
        if let Err(error) = actions::record(&self.producer, &self.audit_topic, &action).await {
            tracing::error!(
                error = format!("{error:#}"),
                subject,
                "replay action not recorded in the audit trail"
            );
        }
    }
}
