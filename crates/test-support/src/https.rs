//! HTTPS servers for tests of TLS clients: an axum router served with a certificate of a
//! [`TestPki`], optionally requiring client certificates of the same CA.

use std::net::SocketAddr;

use crate::TestPki;

/// Serves `app` over HTTPS (HTTP/1.1 and HTTP/2) on a free loopback port with the server
/// certificate `upstream` of `pki`; with `require_client_certificate`, only callers that
/// present a client certificate of `pki` get through the handshake.
pub async fn serve_https(
    pki: &TestPki,
    app: axum::Router,
    require_client_certificate: bool,
) -> SocketAddr {
    let server = pki.server("upstream");
    let read = |path: &std::path::Path| {
        std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&server.certificate), read(&server.key)),
    );
    if require_client_certificate {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            &pki.ca_file(),
        )));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder()
        .tls_config(tls)
        .expect("the server's TLS configuration")
        .accept_http1(true);
    let router = builder.add_routes(tonic::service::Routes::from(app));
    tokio::spawn(router.serve_with_incoming(incoming));
    address
}
