//! Shared state: the current faults (with an outage signal for the listener), the delivery
//! counts and the metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::faults::{Action, Faults};
use crate::store::DeliveryStore;

#[derive(Debug)]
pub struct SimState {
    faults: Mutex<Faults>,
    rng: Mutex<SmallRng>,
    outage: watch::Sender<bool>,
    pub(crate) store: DeliveryStore,
    pub(crate) metrics: SimMetrics,
    /// What every delivery must carry (none by default).
    pub(crate) auth: crate::auth::AuthChecks,
    /// Requests in progress now, and the most at once since the last reset.
    in_progress: AtomicUsize,
    pub(crate) peak_in_progress: AtomicUsize,
    /// Turns to be served while `serves_at_once` is set, with how many there are.
    turns: Mutex<Option<(usize, Arc<Semaphore>)>>,
}

/// One request in progress, counted while it lives.
#[derive(Debug)]
pub(crate) struct InProgress<'a> {
    state: &'a SimState,
    /// Requests in progress with this one.
    pub(crate) count: usize,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.state.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimState {
    pub fn new(
        registry: &mut Registry,
        key_capacity: usize,
        auth: crate::auth::AuthChecks,
    ) -> Self {
        Self {
            auth,
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(SmallRng::from_os_rng()),
            outage: watch::Sender::new(false),
            store: DeliveryStore::new(key_capacity),
            metrics: SimMetrics::register(registry),
            in_progress: AtomicUsize::new(0),
            peak_in_progress: AtomicUsize::new(0),
            turns: Mutex::new(None),
        }
    }

    /// The concurrency limit in force, read without copying the whole fault configuration
    /// (this runs on every request).
    pub(crate) fn concurrency_limit(&self) -> Option<crate::faults::ConcurrencyLimit> {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .concurrency_limit
    }

    /// Counts a request in progress until the guard is dropped.
    pub(crate) fn enter(&self) -> InProgress<'_> {
        let count = self.in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_progress.fetch_max(count, Ordering::Relaxed);
        InProgress { state: self, count }
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for a turn to be served while `serves_at_once` is set; the turn lasts as long as
    /// the permit.
    pub(crate) async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        let turns = self
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, turns)| Arc::clone(turns))?;
        // Never closed: a replaced semaphore serves the requests already waiting for it.
        turns.acquire_owned().await.ok()
    }

    pub fn set_faults(&self, faults: Faults) {
        let outage = faults.outage;
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        if faults.serves_at_once != turns.as_ref().map(|(at_once, _)| *at_once) {
            *turns = faults
                .serves_at_once
                .map(|at_once| (at_once, Arc::new(Semaphore::new(at_once))));
        }
        drop(turns);
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
        self.outage.send_replace(outage);
    }

    /// Follows the outage flag (the listener closes while it is true).
    pub fn outage(&self) -> watch::Receiver<bool> {
        self.outage.subscribe()
    }

    pub(crate) fn decide(&self) -> (Duration, Action) {
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        faults.decide(&mut *rng)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabels {
    action: &'static str,
}

#[derive(Debug)]
pub(crate) struct SimMetrics {
    requests: Family<ActionLabels, Counter>,
    duration: Family<ActionLabels, Histogram>,
    pub(crate) duplicates: Counter,
    pub(crate) order_violations: Counter,
    pub(crate) signatures_refused: Counter,
}

impl SimMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
            }),
            duplicates: Counter::default(),
            order_violations: Counter::default(),
            signatures_refused: Counter::default(),
        };
        let sim = registry.sub_registry_with_prefix("upstream_sim");
        sim.register(
            "requests",
            "Deliveries received, by what the simulator did",
            metrics.requests.clone(),
        );
        sim.register_with_unit(
            "request_duration",
            "Time to answer a delivery, injected latency included",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        sim.register(
            "duplicate_deliveries",
            "Accepted deliveries whose Idempotency-Key had been accepted before",
            metrics.duplicates.clone(),
        );
        sim.register(
            "signatures_refused",
            "Deliveries answered 401 by the authentication checks (--require-header, --oauth-client, --webhook-keys): a missing or wrong header, token or signature",
            metrics.signatures_refused.clone(),
        );
        sim.register(
            "order_violations",
            "Events accepted for the first time although a later event of the same order key had been accepted before (data.order_key, data.seq)",
            metrics.order_violations.clone(),
        );
        metrics
    }

    pub(crate) fn observe(&self, action: Action, elapsed: Duration) {
        let labels = ActionLabels {
            action: match action {
                Action::Accept => "accepted",
                Action::Error(_) => "error",
                Action::RateLimit { .. } => "rate_limited",
                Action::Redirect(_) => "redirected",
                Action::Hang(_) => "hung",
                Action::Reset => "reset",
            },
        };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}
