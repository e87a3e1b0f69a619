//! What the probe and the retry layer record about each attempt.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::classify::{RetryStop, TimeoutKind, TransportError};
use crate::excerpt::ResponseExcerpt;

/// One HTTP attempt of a delivery, as it ends up in the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// 0 for the first try (OpenTelemetry's `http.request.resend_count`).
    pub number: u32,
    pub started_at: SystemTime,
    /// Status of the response, if one arrived.
    pub status: Option<u16>,
    /// Transport failure, if the attempt failed without a usable response.
    pub error: Option<TransportError>,
    /// The limit that ended the attempt, if any.
    pub timeout: Option<TimeoutKind>,
    pub timings: PhaseTimings,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Wait chosen before the next attempt (zero on the last).
    pub backoff: Duration,
    /// What an unsuccessful answer said; `None` on success or without a response.
    pub response: Option<ResponseExcerpt>,
}

/// Phase durations measured by the probe; a phase that did not happen is zero (a pooled
/// connection has no DNS or connect phase).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimings {
    pub dns: Duration,
    /// TCP connect (DNS excluded).
    pub connect: Duration,
    /// The TLS handshake of an `https` connection made for this attempt.
    pub tls: Duration,
    /// Request start until the response head arrived.
    pub time_to_first_byte: Duration,
    /// Response head until the body was read.
    pub transfer: Duration,
    pub total: Duration,
}

impl AttemptRecord {
    /// The OpenTelemetry `error.type` of the attempt: the status for an HTTP error response,
    /// the transport class for a failure, none for success.
    pub fn error_type(&self) -> Option<Cow<'static, str>> {
        match (self.status, self.error) {
            (_, Some(error)) => Some(Cow::Borrowed(error.error_type())),
            (Some(status), None) if status >= 400 => Some(Cow::Owned(status.to_string())),
            _ => None,
        }
    }

    pub fn to_proto(&self) -> relais_proto::v1::Attempt {
        use relais_proto::v1;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let timeout = match self.timeout {
            None => v1::TimeoutKind::None,
            Some(TimeoutKind::Connect) => v1::TimeoutKind::Connect,
            Some(TimeoutKind::Attempt) => v1::TimeoutKind::Attempt,
            Some(TimeoutKind::Deadline) => v1::TimeoutKind::Deadline,
        };
        v1::Attempt {
            number: self.number,
            started_at: Some(prost_timestamp(self.started_at)),
            status_code: u32::from(self.status.unwrap_or(0)),
            error_type: self
                .error
                .map(|e| e.error_type().to_owned())
                .unwrap_or_default(),
            timeout: timeout as i32,
            timings: Some(v1::ProbeTimings {
                dns_us: micros(self.timings.dns),
                connect_us: micros(self.timings.connect),
                tls_us: micros(self.timings.tls),
                time_to_first_byte_us: micros(self.timings.time_to_first_byte),
                transfer_us: micros(self.timings.transfer),
                total_us: micros(self.timings.total),
            }),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            backoff_ms: u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
            response: self.response.as_ref().map(ResponseExcerpt::to_proto),
        }
    }
}

/// A `SystemTime` as a protobuf timestamp (times before 1970 clamp to the epoch).
pub fn prost_timestamp(time: SystemTime) -> relais_proto::Timestamp {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    relais_proto::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

/// What the layers of one call record together: the deadline, the attempt in progress, the
/// attempts done and why retries stopped. The caller puts it into the request extensions, one
/// entry for the whole call; a timeout that cancels the inner layers loses nothing measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallRecord(Arc<Mutex<CallProgress>>);

#[derive(Debug, Default)]
pub(crate) struct CallProgress {
    /// When the whole call must be over; set by the deadline layer, read by the retry layer so
    /// it never sleeps past it.
    pub(crate) deadline: Option<tokio::time::Instant>,
    /// The attempt in progress; its `started` is `None` once it is recorded.
    pub(crate) current: AttemptProgress,
    pub(crate) attempts: Vec<AttemptRecord>,
    /// Why retries stopped short of a success, if they did.
    pub(crate) retry_stop: Option<RetryStop>,
}

/// Filled in while an attempt runs, by the layers that see each part of it.
#[derive(Debug, Default)]
pub(crate) struct AttemptProgress {
    pub(crate) number: u32,
    pub(crate) started: Option<tokio::time::Instant>,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) timings: PhaseTimings,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    /// The attempt's trace, for metric exemplars (only while spans are exported).
    pub(crate) exemplar: Option<relais_telemetry::exemplar::TraceExemplar>,
    pub(crate) response: Option<ResponseExcerpt>,
}

impl CallRecord {
    /// The call's record in `extensions`, put there if the caller did not (a layer used on its
    /// own), so every layer of the call shares the same one.
    pub(crate) fn of(extensions: &mut http::Extensions) -> Self {
        extensions.get_or_insert_default::<Self>().clone()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, CallProgress> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The call's attempts, in order, and why retries stopped, once the call is over.
    pub(crate) fn take(&self) -> (Vec<AttemptRecord>, Option<RetryStop>) {
        let mut progress = self.lock();
        (std::mem::take(&mut progress.attempts), progress.retry_stop)
    }
}
