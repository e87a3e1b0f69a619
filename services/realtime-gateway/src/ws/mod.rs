//! `/ws`: the live event feed (protocol in [`crate::protocol`]).
//!
//! Each connection is one task that writes to its socket, and a second one, live as long as
//! the first, that reads what the client sends (pongs, close). Events reach the writer through
//! its own receiver on the feed, a bounded ring shared by all clients in which each client has
//! its own cursor: a client that falls more than `client_queue` events behind (a slow reader,
//! a stalled network) gets a `lagged` frame and is disconnected, and nobody else waits for it.
//! A socket write that does not complete within `write_timeout` ends the connection the same
//! way. A resuming client is first sent what it missed, read from the history a batch at a time.
//! Connection slots are capped for the gateway and per token ([`crate::connections`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::task::AbortOnDropHandle;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::connections::{Refused, Slot};
use crate::event::Outcome;
use crate::history::{Entry, EventFilter, Position};
use crate::metrics::ReasonLabels;
use crate::problem::Problem;
use crate::protocol::{self, ControlFrame};
use crate::state::AppState;

mod upkeep;

use upkeep::{Chores, PongClock};

type Feed = tokio::sync::broadcast::Receiver<Arc<Entry>>;

/// The subprotocol the gateway speaks; the token subprotocol is never chosen.
pub const SUBPROTOCOL: &str = "relais.v1";
/// Frames written before one flush, so a busy feed costs one write per batch, not per event.
const BATCH: usize = 64;
/// Bytes taken from the socket per read. The WebSocket library zero-fills this much before
/// every read attempt, and the connection loop attempts one on every wake (each event), so its
/// 128 KiB default cost 38 % of the gateway's CPU fanning 100 events/s out to 1,000 clients.
/// Clients send only control frames (pong, close); a longer message is read in several reads.
const READ_BUFFER_BYTES: usize = 4096;

/// Subscription filters and the resume position.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    pub upstream: Option<String>,
    pub outcome: Option<Outcome>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    pub trace_id: Option<String>,
    /// Only the events of this message.
    pub message_id: Option<String>,
    /// The last event id per partition the client has seen (`0:812,1:790`): what it missed
    /// since is replayed first, within the gateway's history.
    pub resume: Option<String>,
}

#[utoipa::path(
    get,
    path = "/ws",
    tag = "feed",
    security(("bearer" = [])),
    params(WsQuery),
    responses(
        (status = 101, description = "WebSocket feed (subprotocol relais.v1; the token may also be offered as subprotocol relais.bearer.<token>)"),
        (status = 400, description = "Invalid filter or resume position, or not a WebSocket handshake", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit exhausted, or this token holds as many connections as one token may", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The gateway holds as many connections as it accepts", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return Problem::bad_request("/ws is a WebSocket endpoint: send a WebSocket handshake")
            .into_response();
    };
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return Problem::bad_request(rejection.body_text()).into_response(),
    };
    let resume = match query
        .resume
        .as_deref()
        .map(protocol::parse_resume)
        .transpose()
    {
        Ok(resume) => resume,
        Err(error) => return Problem::bad_request(error.to_string()).into_response(),
    };
    let config = &state.config.websocket;
    // Taken now, before the handshake completes; given back if it never does.
    let slot = match state.connections.reserve(&principal.name) {
        Ok(slot) => slot,
        Err(Refused::GatewayFull) => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway has as many WebSocket clients as it accepts; retry later",
            )
            .into_response();
        }
        Err(Refused::TokenFull) => {
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token holds {} WebSocket connections, as many as one token may; close one first",
                    config.max_connections_per_token
                ),
            )
            .into_response();
        }
    };
    let filter = EventFilter::new(
        query.upstream,
        query.outcome,
        query.event_type,
        query.trace_id,
        query.message_id,
    );
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
        .on_upgrade(move |socket| async move {
            Connection::open(state, filter, resume)
                .serve(socket, slot)
                .await;
        })
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    Lagged(u64),
    WriteTimedOut,
    WriteFailed,
    PongMissed,
    ShuttingDown,
}

struct Connection {
    state: AppState,
    id: u64,
    filter: EventFilter,
    resume: Option<Position>,
    /// The last event id per partition this client has been offered (sent, or filtered out).
    position: Position,
}

impl Connection {
    fn open(state: AppState, filter: EventFilter, resume: Option<Position>) -> Self {
        let id = state.next_connection.fetch_add(1, Ordering::Relaxed);
        Self {
            state,
            id,
            filter,
            resume,
            position: Position::new(),
        }
    }

    fn filter_description(&self) -> BTreeMap<&'static str, String> {
        let mut shown = BTreeMap::new();
        if let Some(upstream) = &self.filter.upstream {
            shown.insert("upstream", upstream.clone());
        }
        if let Some(outcome) = self.filter.outcome {
            shown.insert("outcome", outcome.as_str().to_owned());
        }
        if let Some(event_type) = &self.filter.event_type {
            shown.insert("type", event_type.clone());
        }
        if let Some(trace_id) = &self.filter.trace_id {
            shown.insert("trace_id", trace_id.clone());
        }
        if let Some(message_id) = &self.filter.message_id {
            shown.insert("message_id", message_id.clone());
        }
        shown
    }

    /// Serves the connection until it ends; `_slot` is given back then, however it ends.
    async fn serve(mut self, socket: WebSocket, _slot: Slot) {
        let (mut sink, incoming) = socket.split();
        let end = self.run(&mut sink, incoming).await;
        let (code, reason) = match end {
            End::Lagged(_) | End::WriteTimedOut => {
                self.state.metrics.ws_lagged_disconnects.inc();
                (close_code::POLICY, "lagged")
            }
            End::PongMissed => (close_code::POLICY, "no pong"),
            End::ShuttingDown => (close_code::AWAY, "gateway shutting down"),
            End::ClientClosed | End::WriteFailed => (close_code::NORMAL, ""),
        };
        if end != End::ClientClosed && end != End::WriteFailed {
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
        }
        tracing::debug!(connection = self.id, ?end, "WebSocket closed");
    }

    async fn run(
        &mut self,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        incoming: futures::stream::SplitStream<WebSocket>,
    ) -> End {
        let config = self.state.config.websocket.clone();
        let subscription = self.state.history.subscribe(self.resume.as_ref());
        let feed = subscription.feed;
        // A resuming client's position stays its own until the replay has been written: if the
        // connection drops halfway, it must resume from what it really received.
        self.position = match &self.resume {
            Some(resume) => resume.clone(),
            None => subscription.position.clone(),
        };
        let filter = self.filter_description();
        let welcome = ControlFrame::Welcome {
            connection: self.id,
            position: protocol::position_ids(&self.position),
            filter: &filter,
            resumed: self.resume.is_some(),
        };
        if let Err(end) = self
            .write(sink, Message::Text(welcome.encode()), &config)
            .await
        {
            return end;
        }
        if !subscription.gaps.is_empty() {
            self.state.metrics.ws_gaps.inc();
            let gap = ControlFrame::Gap {
                gaps: &subscription.gaps,
                message: "some events you missed are no longer held by the gateway",
            };
            if let Err(end) = self.write(sink, Message::Text(gap.encode()), &config).await {
                return end;
            }
        }
        if let Some(mut replay) = subscription.replay {
            let mut replayed = 0;
            while !replay.is_done() {
                let batch = match self.state.history.replay_batch(&mut replay, BATCH) {
                    Ok(batch) => batch,
                    Err(overtaken) => return self.lagged(sink, overtaken.missed).await,
                };
                match self.write_events(sink, batch.iter(), &config).await {
                    Ok(written) => replayed += written,
                    Err(end) => return end,
                }
            }
            self.state.metrics.ws_replayed.inc_by(replayed);
            // Everything up to the feed's start has now been offered: replayed if it matched
            // the filter, skipped if not.
            for (partition, offset) in &subscription.position {
                let known = self.position.entry(*partition).or_insert(*offset);
                *known = (*known).max(*offset);
            }
            let replayed = ControlFrame::Replayed {
                count: usize::try_from(replayed).unwrap_or(usize::MAX),
                position: protocol::position_ids(&self.position),
            };
            if let Err(end) = self
                .write(sink, Message::Text(replayed.encode()), &config)
                .await
            {
                return end;
            }
        }

        self.live(sink, incoming, feed, &config).await
    }

    /// The live feed, until the connection ends. The client's frames (pongs, close) are read
    /// by a task of their own, so an event wakes only the writing side: polling the socket
    /// for a read on every event cost more than the read ever did.
    async fn live(
        &mut self,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        incoming: futures::stream::SplitStream<WebSocket>,
        mut feed: Feed,
        config: &crate::config::WebSocketConfig,
    ) -> End {
        let started = Instant::now();
        let pongs = Arc::new(PongClock::new(started));
        let mut reader =
            AbortOnDropHandle::new(tokio::spawn(read_client(incoming, pongs.clone(), self.id)));
        let mut chores = Chores::new(started, config.ping_interval, config.position_interval);
        let chore_timer = tokio::time::sleep_until(chores.next().into());
        tokio::pin!(chore_timer);
        let shutdown = self.state.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                _ = &mut cancelled => return End::ShuttingDown,
                _ = &mut reader => return End::ClientClosed,
                received = feed.recv() => {
                    let first = match received {
                        Ok(entry) => entry,
                        Err(RecvError::Lagged(missed)) => return self.lagged(sink, missed).await,
                        Err(RecvError::Closed) => return End::ShuttingDown,
                    };
                    // Take what else is already queued, up to a batch, and write it at once.
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match feed.try_recv() {
                            Ok(entry) => batch.push(entry),
                            Err(TryRecvError::Lagged(missed)) => return self.lagged(sink, missed).await,
                            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        }
                    }
                    if let Err(end) = self.write_events(sink, batch.iter(), config).await {
                        return end;
                    }
                }
                _ = &mut chore_timer => {
                    let now = Instant::now();
                    let due = chores.take_due(now);
                    if due.ping {
                        if pongs.silent_for(now) > config.pong_timeout {
                            return End::PongMissed;
                        }
                        if let Err(end) = self.write(sink, Message::Ping(Default::default()), config).await {
                            return end;
                        }
                    }
                    if due.position {
                        let position = ControlFrame::Position { position: protocol::position_ids(&self.position) };
                        if let Err(end) = self.write(sink, Message::Text(position.encode()), config).await {
                            return end;
                        }
                    }
                    chore_timer.as_mut().reset(chores.next().into());
                }
            }
        }
    }

    async fn lagged(
        &self,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        missed: u64,
    ) -> End {
        self.state
            .metrics
            .ws_messages_dropped
            .get_or_create(&ReasonLabels { reason: "lagged" })
            .inc_by(missed);
        let notice = ControlFrame::Lagged {
            missed,
            message: "you fell too far behind the feed; reconnect with resume to catch up",
        };
        // The client is slow by definition: give the notice a short, bounded chance.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Text(notice.encode())),
        )
        .await;
        End::Lagged(missed)
    }

    /// Writes the frames of the events that pass the filter, then flushes once; returns how
    /// many were written. The whole batch shares one deadline, armed once.
    async fn write_events<'a>(
        &mut self,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        entries: impl Iterator<Item = &'a Arc<Entry>>,
        config: &crate::config::WebSocketConfig,
    ) -> Result<u64, End> {
        let now = SystemTime::now();
        let metrics = &self.state.metrics;
        let position = &mut self.position;
        let filter = &self.filter;
        let write = async {
            let mut written = 0u64;
            for entry in entries {
                let id = entry.event.id;
                let offset = position.entry(id.partition).or_insert(-1);
                *offset = (*offset).max(id.offset);
                if !filter.matches(&entry.event) {
                    continue;
                }
                sink.feed(Message::Text(entry.frame.clone())).await?;
                written += 1;
                if let Ok(age) = now.duration_since(entry.event.decided_at) {
                    metrics.ws_delivery_latency.observe(
                        age.as_secs_f64(),
                        relais_telemetry::exemplar::of_trace_id(&entry.event.view.trace_id),
                        None,
                    );
                }
            }
            if written > 0 {
                sink.flush().await?;
            }
            Ok::<_, axum::Error>(written)
        };
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(written)) => {
                metrics.ws_messages_sent.inc_by(written);
                Ok(written)
            }
            Ok(Err(_)) => Err(End::WriteFailed),
            Err(_) => Err(End::WriteTimedOut),
        }
    }

    async fn write(
        &self,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        message: Message,
        config: &crate::config::WebSocketConfig,
    ) -> Result<(), End> {
        match tokio::time::timeout(config.write_timeout, sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::WriteFailed),
            Err(_) => Err(End::WriteTimedOut),
        }
    }
}

/// Reads what the client sends until it closes the connection or the read fails; pongs are
/// noted on `pongs`. Pings are answered by the WebSocket layer; text and binary frames carry
/// nothing the gateway acts on (filters are set when connecting).
async fn read_client(
    mut incoming: futures::stream::SplitStream<WebSocket>,
    pongs: Arc<PongClock>,
    connection: u64,
) {
    while let Some(message) = incoming.next().await {
        match message {
            Ok(Message::Pong(_)) => pongs.pong(Instant::now()),
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(connection, %error, "WebSocket read failed");
                return;
            }
        }
    }
}
