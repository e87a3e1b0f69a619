//! upstream-sim: the "external API" of Relais for development, demos and tests.
//!
//! It accepts deliveries on any path and counts them per `Idempotency-Key`, so a test can tell
//! how many duplicates reached the upstream. Faults (latency distributions, 5xx mixes, 429 with
//! `Retry-After`, hangs, connection resets, full outages) are set at run time through the admin
//! API; see [`app`] for the routes and [`faults::Faults`] for the configuration.

pub mod app;
pub mod auth;
pub mod faults;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use relais_telemetry::admin::{AdminServer, Readiness};
use relais_telemetry::shutdown::CancellationToken;

/// A running simulator: its bound addresses and the tasks serving them.
#[derive(Debug)]
pub struct RunningSim {
    /// The simulated API.
    pub api: SocketAddr,
    /// Fault control, `/metrics` and health.
    pub admin: SocketAddr,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_server: AdminServer,
}

/// Binds both ports (port 0 picks free ones) and serves until `shutdown`.
pub async fn start(
    api: SocketAddr,
    admin: SocketAddr,
    key_capacity: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningSim> {
    start_checking(
        api,
        admin,
        key_capacity,
        auth::AuthChecks::default(),
        shutdown,
    )
    .await
}

/// [`start`], answering 401 to every delivery that fails `auth` (a required header, an OAuth2
/// token of its own token endpoint, a Standard Webhooks signature).
pub async fn start_checking(
    api: SocketAddr,
    admin: SocketAddr,
    key_capacity: usize,
    auth: auth::AuthChecks,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningSim> {
    start_with(
        api,
        admin,
        SimOptions {
            key_capacity,
            auth,
            tls: None,
        },
        shutdown,
    )
    .await
}

/// How the simulated API checks its callers.
#[derive(Debug, Default)]
pub struct SimOptions {
    /// Idempotency keys remembered for duplicate counts.
    pub key_capacity: usize,
    pub auth: auth::AuthChecks,
    /// HTTPS, and with a client CA, mutual TLS.
    pub tls: Option<tls::ApiTls>,
}

/// Binds both ports (port 0 picks free ones) and serves until `shutdown`, as `options` says.
pub async fn start_with(
    api: SocketAddr,
    admin: SocketAddr,
    options: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningSim> {
    let SimOptions {
        key_capacity,
        auth,
        tls,
    } = options;
    let acceptor = tls
        .map(|tls| tls.server_config().map(tokio_rustls::TlsAcceptor::from))
        .transpose()
        .map_err(|error| anyhow::anyhow!("TLS: {error}"))?;
    let mut registry = Registry::default();
    let state = Arc::new(state::SimState::new(&mut registry, key_capacity, auth));
    let readiness = Readiness::default();
    let serving = readiness.register("api_listening");
    let admin_server = AdminServer::start_with_routes(
        admin,
        Arc::new(registry),
        readiness,
        app::admin_router(Arc::clone(&state)),
        shutdown.clone(),
    )
    .await?;
    let listener = server::bind(api)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {api}: {error}"))?;
    let api = listener.local_addr()?;
    let api_task = tokio::spawn(server::serve(
        listener,
        app::api_router(Arc::clone(&state)),
        state,
        acceptor,
        shutdown,
    ));
    serving.set_ready();
    Ok(RunningSim {
        api,
        admin: admin_server.local_addr(),
        api_task,
        admin_server,
    })
}

impl RunningSim {
    /// Waits until both servers have stopped (after shutdown).
    pub async fn join(self) -> anyhow::Result<()> {
        let api = self.api;
        let result = self.api_task.await?;
        self.admin_server.join().await;
        result.map_err(|error| anyhow::anyhow!("upstream API on {api} failed: {error}"))
    }
}
