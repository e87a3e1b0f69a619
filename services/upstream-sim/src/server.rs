//! The API listener. It is a hand-written accept loop rather than `axum::serve` for two faults
//! that need the socket: an outage closes the listening port (clients see "connection
//! refused") and drops open connections; a reset closes a connection without an answer. With
//! TLS each accepted connection first completes its handshake (bounded); one that fails it, a
//! client without an acceptable certificate for instance, is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use relais_telemetry::shutdown::CancellationToken;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::ResetConnection;
use crate::state::SimState;

/// Time a client gets to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection was dropped on purpose (an injected reset).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
struct InjectedReset;

/// Binds the API port; a taken port fails the start instead of looping.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "upstream API listening");
    Ok(listener)
}

/// Serves `router` on the bound listener until `shutdown`, honouring outages (the same
/// address is bound again when an outage ends).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    state: Arc<SimState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let mut outage = state.outage();
    let mut listener = Some(listener);
    loop {
        if *outage.borrow_and_update() {
            if listener.take().is_some() {
                tracing::warn!("outage: port closed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = outage.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        }
        let active = match listener.take() {
            Some(active) => active,
            None => match TcpListener::bind(address).await {
                Ok(active) => {
                    tracing::info!("outage over: port open again");
                    active
                }
                Err(error) => {
                    tracing::error!(%error, "cannot re-open the port; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = outage.changed() => {
                // Dropping `active` closes the port; the loop head notices the outage.
                drop(active);
            }
            accepted = active.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let (router, outage, shutdown) = (router.clone(), state.outage(), shutdown.clone());
                        match tls.clone() {
                            None => {
                                tokio::spawn(serve_connection(stream, router, outage, shutdown));
                            }
                            Some(acceptor) => {
                                tokio::spawn(async move {
                                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => serve_connection(stream, router, outage, shutdown).await,
                                        Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                                    }
                                });
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "accept failed"),
                }
                listener = Some(active);
            }
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    router: axum::Router,
    mut outage: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            async move {
                let response = router
                    .oneshot(request.map(axum::body::Body::new))
                    .await
                    .map_err(|never| match never {})?;
                if response.extensions().get::<ResetConnection>().is_some() {
                    return Err(InjectedReset);
                }
                Ok(response)
            }
        });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        // Errors here are the injected resets and clients going away: nothing to report.
        _ = connection => {}
        _ = outage.wait_for(|down| *down) => {}
        _ = shutdown.cancelled() => {}
    }
}
