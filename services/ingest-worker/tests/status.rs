//! The worker streams its status to the gateway's WorkerReport service: it keeps working while
//! the gateway is away, connects when it appears, and reconnects after it restarts.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use relais_ingest_worker::config::PipelineConfig;
use relais_proto::v1::worker_report_server::{WorkerReport, WorkerReportServer};
use relais_proto::v1::{ReportAck, WorkerStatus};
use relais_resilience::UpstreamPolicy;
use relais_telemetry::shutdown::CancellationToken;
use relais_test_support::unique_name;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// A WorkerReport server that forwards every status it receives.
struct Collector(mpsc::Sender<WorkerStatus>);

#[tonic::async_trait]
impl WorkerReport for Collector {
    async fn report(
        &self,
        request: tonic::Request<tonic::Streaming<WorkerStatus>>,
    ) -> Result<tonic::Response<ReportAck>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut received = 0;
        while let Some(status) = stream.next().await {
            let _ = self.0.send(status?).await;
            received += 1;
        }
        Ok(tonic::Response::new(ReportAck { received }))
    }
}

async fn serve(address: SocketAddr, sink: mpsc::Sender<WorkerStatus>) -> CancellationToken {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let until = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(WorkerReportServer::new(Collector(sink)))
            .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
            .await
            .unwrap();
    });
    stop
}

async fn next_status(receiver: &mut mpsc::Receiver<WorkerStatus>) -> WorkerStatus {
    tokio::time::timeout(Duration::from_secs(30), receiver.recv())
        .await
        .expect("a status within 30 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reaches_the_gateway_and_survives_its_restart() {
    init_telemetry();
    let kafka = relais_test_support::kafka().await;
    let sim = Sim::start().await;
    let topics = Topics::create(&kafka, 3).await;
    let gateway = free_port();
    let worker = Worker::start_with(
        &kafka,
        &topics,
        &unique_name("it-group"),
        sim.api,
        UpstreamPolicy::default(),
        PipelineConfig::default(),
        Some(format!("http://{gateway}")),
    );

    // The gateway is away: the pipeline does not notice.
    produce(&kafka, &topics.ingress, &valid_events("s", 300, 30)).await;
    read_exactly(
        &kafka,
        &topics.audit,
        300,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await;

    let (sink, mut received) = mpsc::channel(64);
    let stop = serve(gateway, sink.clone()).await;
    let status = next_status(&mut received).await;
    assert!(
        status.worker_id.starts_with("worker-"),
        "{}",
        status.worker_id
    );
    assert_eq!(status.partitions.len(), 3);
    assert_eq!(status.circuits.len(), 1);
    assert_eq!(status.circuits[0].upstream, "default");
    assert!(status.queue_capacity > 0);
    assert!(status.reported_at.is_some() && status.started_at.is_some());

    // The gateway restarts on the same address: the worker reconnects by itself.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while received.try_recv().is_ok() {}
    let stop = serve(gateway, sink).await;
    let status = next_status(&mut received).await;
    assert_eq!(
        status.partitions.iter().map(|p| p.lag).sum::<i64>(),
        status.total_lag
    );
    stop.cancel();
    worker.stop().await;
}
