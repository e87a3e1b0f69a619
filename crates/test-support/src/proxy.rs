//! A TCP proxy on loopback in front of a real component, which a test can cut and restore:
//! one client loses the component while others (connected directly) keep it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct TcpProxy {
    address: SocketAddr,
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding connections from a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("cannot bind a loopback port for the proxy: {error}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("proxy address: {error}"));
        let (cut, _) = watch::channel(false);
        let cut_state = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cut_state.subscribe();
                if *cut.borrow_and_update() {
                    // Refused: closed at once, before a byte is read.
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        // Cut: both sides are dropped, whatever was in flight.
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self {
            address,
            cut,
            accept,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://` and the proxy's address.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes every connection through the proxy and every new one, until `restore`.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accept.abort();
    }
}
