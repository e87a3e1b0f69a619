//! Listeners for the services' servers. Every connection they accept has Nagle's algorithm
//! off: a service writes whole responses, frames and messages, and with Nagle a small write
//! waits for the peer to acknowledge the one before, which a peer delaying its ACKs holds back
//! for tens of milliseconds.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpIncoming;

/// `listener` for `axum::serve`, each accepted connection with `TCP_NODELAY` set.
pub fn http_listener(listener: TcpListener) -> impl Listener<Io = TcpStream, Addr = SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
    })
}

/// `listener` for a tonic server's `serve_with_incoming*`, each accepted connection with
/// `TCP_NODELAY` set.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    async fn bound() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        (listener, address)
    }

    #[tokio::test]
    async fn http_connections_are_accepted_without_nagle() {
        let (listener, address) = bound().await;
        let mut listener = http_listener(listener);
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().expect("nodelay"));
    }

    #[tokio::test]
    async fn grpc_connections_are_accepted_without_nagle() {
        let (listener, address) = bound().await;
        let mut incoming = grpc_incoming(listener);
        let _client = TcpStream::connect(address).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("nodelay"));
    }

    #[tokio::test]
    async fn a_plain_listener_leaves_nagle_on() {
        // What the wrappers change: without them, the accepted socket keeps the default.
        let (listener, address) = bound().await;
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(!accepted.nodelay().expect("nodelay"));
    }
}
