//! The trace context of the work in hand.
//!
//! With spans exported, a unit of work (a message) has a `tracing` span, and its trace context
//! is the span's. Without export nobody sees that span, and making, entering and closing one
//! for every message costs more than everything else its tracing does; what the work needs
//! from it is its ids. So without export a unit of work carries only its span context, in a
//! task-local [`scope`], and logs, outgoing calls and records read it from there
//! ([`span_context`]) as they would read the span's.

use std::future::Future;

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tokio::task::futures::TaskLocalFuture;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

tokio::task_local! {
    static WORK: SpanContext;
}

/// Runs `work` with `context` as the span context of the work in hand, across every await.
pub fn scope<F: Future>(context: SpanContext, work: F) -> TaskLocalFuture<SpanContext, F> {
    WORK.scope(context, work)
}

/// Runs `work` with `context` as the span context of the work in hand.
pub fn sync_scope<R>(context: SpanContext, work: impl FnOnce() -> R) -> R {
    WORK.sync_scope(context, work)
}

/// The span context of the work in hand: the one in [`scope`] if any, else the current
/// span's (invalid when neither has a trace).
pub fn span_context() -> SpanContext {
    WORK.try_with(SpanContext::clone).unwrap_or_else(|_| {
        let context = tracing::Span::current().context();
        context.span().span_context().clone()
    })
}

/// The span context of new work whose parent is `parent` (read from the work's headers): the
/// parent's trace, flags and state with a span id of its own, or a new sampled trace when
/// the parent has none, as the SDK's default parent-based sampler decides for a span.
pub fn child_of(parent: &SpanContext) -> SpanContext {
    let ids = RandomIdGenerator::default();
    if parent.is_valid() {
        return SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        );
    }
    SpanContext::new(
        new_trace_id(&ids),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    )
}

fn new_trace_id(ids: &RandomIdGenerator) -> TraceId {
    // The generator never gives the all-zero id (invalid), but a trace id is mandatory
    // downstream, so that is not left to chance.
    let id = ids.new_trace_id();
    if id == TraceId::INVALID {
        TraceId::from(1_u128)
    } else {
        id
    }
}

/// A span context for an outgoing call that has no span of its own: the caller's trace, flags
/// and state with a fresh span id, so each call still carries its own parent id on the wire.
/// An invalid caller (no trace) stays as it is.
pub fn unexported_child(caller: &SpanContext) -> SpanContext {
    if caller.is_valid() {
        child_of(caller)
    } else {
        caller.clone()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanId;

    use super::*;

    fn parent(flags: TraceFlags) -> SpanContext {
        SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            flags,
            true,
            TraceState::from_key_value([("vendor", "value")]).expect("valid state"),
        )
    }

    #[test]
    fn a_child_keeps_its_parents_trace_flags_and_state_with_a_span_id_of_its_own() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::NOT_SAMPLED] {
            let parent = parent(flags);
            for child in [child_of(&parent), unexported_child(&parent)] {
                assert_eq!(child.trace_id(), parent.trace_id());
                assert_ne!(child.span_id(), parent.span_id());
                assert_ne!(child.span_id(), SpanId::INVALID);
                assert_eq!(child.trace_flags(), flags);
                assert_eq!(child.trace_state(), parent.trace_state());
                assert!(!child.is_remote());
            }
            assert_ne!(
                unexported_child(&parent).span_id(),
                unexported_child(&parent).span_id(),
                "each call its own id"
            );
        }
    }

    #[test]
    fn work_without_a_parent_starts_a_sampled_trace_and_a_call_without_one_sends_none() {
        let root = child_of(&SpanContext::empty_context());
        assert!(root.is_valid());
        assert!(root.is_sampled());
        assert_ne!(
            child_of(&SpanContext::empty_context()).trace_id(),
            root.trace_id()
        );
        assert!(!unexported_child(&SpanContext::empty_context()).is_valid());
    }

    #[tokio::test]
    async fn the_work_in_hand_is_the_scopes_across_awaits_and_nothing_outside_it() {
        let work = child_of(&parent(TraceFlags::SAMPLED));
        let seen = scope(work.clone(), async {
            tokio::task::yield_now().await;
            span_context()
        })
        .await;
        assert_eq!(seen, work);
        assert_eq!(sync_scope(work.clone(), span_context), work);
        assert!(!span_context().is_valid(), "no scope and no span: no trace");
    }
}
