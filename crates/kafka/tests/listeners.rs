//! Every security mode against the native broker's secured listeners: records go through each,
//! and each way of being refused ends the start-up check with its reason, within its deadline.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use relais_kafka::access::{AccessError, Needs, check_access};
use relais_kafka::{KafkaClient, KafkaClientConfig, SaslMechanism};
use relais_test_support::unique_name;

const DEADLINE: Duration = Duration::from_secs(20);

/// Produces one record over `client` and reads it back over the same client settings.
fn round_trip(client: &KafkaClient, topic: &str, label: &str) {
    let producer: BaseProducer = client.config().create().expect("producer");
    producer
        .send(BaseRecord::to(topic).key(label).payload(label))
        .map_err(|(error, _)| error)
        .expect("queued");
    producer.flush(Duration::from_secs(20)).expect("delivered");

    let consumer: BaseConsumer = client.reader().create().expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&partitions).expect("assigned");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("readable");
            if message.key() == Some(label.as_bytes()) {
                return;
            }
        }
    }
    panic!("{label}: the record did not come back");
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking task")
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_plain_and_mutual_tls_carry_records() {
    let kafka = relais_test_support::kafka().await;
    let secured = relais_test_support::secured_kafka().await;
    let topic = kafka.create_topic("secured-modes", 1).await;
    let group = unique_name("secured-group");
    let modes = [
        (
            "SCRAM-SHA-512",
            secured.sasl(SaslMechanism::ScramSha512, "relais"),
            &secured.sasl_ssl_bootstrap,
        ),
        (
            "SCRAM-SHA-256",
            secured.sasl(SaslMechanism::ScramSha256, "relais"),
            &secured.sasl_ssl_bootstrap,
        ),
        (
            "PLAIN",
            secured.sasl(SaslMechanism::Plain, "relais"),
            &secured.sasl_ssl_bootstrap,
        ),
        ("mTLS", secured.mtls(), &secured.mtls_bootstrap),
    ];
    for (label, config, bootstrap) in modes {
        let client = config.resolve(bootstrap).expect("resolves");
        let (topic, group) = (topic.clone(), group.clone());
        blocking(move || {
            let needs = Needs {
                topics: vec![topic.clone()],
                group: Some(group),
            };
            check_access(&client, &needs, DEADLINE)
                .unwrap_or_else(|error| panic!("{label}: {error}"));
            round_trip(&client, &topic, label);
        })
        .await;
    }
}

/// Runs the check and returns its error and how long it took.
async fn refused(
    config: KafkaClientConfig,
    bootstrap: &str,
    topic: &str,
) -> (AccessError, Duration) {
    let client = config.resolve(bootstrap).expect("resolves");
    let topic = topic.to_owned();
    blocking(move || {
        let started = Instant::now();
        let needs = Needs {
            topics: vec![topic],
            group: Some("relais-refused-check".to_owned()),
        };
        let error = check_access(&client, &needs, DEADLINE).expect_err("must be refused");
        (error, started.elapsed())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused_with_its_reason_and_not_waited_for() {
    let kafka = relais_test_support::kafka().await;
    let secured = relais_test_support::secured_kafka().await;
    let topic = kafka.create_topic("secured-wrong-password", 1).await;
    let files = relais_test_support::ScratchDir::new("wrong-password");
    let wrong = files.write("password", "not-the-password\n");
    for mechanism in [SaslMechanism::ScramSha512, SaslMechanism::Plain] {
        let mut config = secured.sasl(mechanism, "relais");
        config.sasl.password_file = Some(wrong.clone());
        let (error, took) = refused(config, &secured.sasl_ssl_bootstrap, &topic).await;
        let message = error.to_string();
        assert!(error.is_fatal(), "{mechanism:?}: {message}");
        assert!(
            message.contains("Authentication failed") || message.contains("authentication"),
            "{mechanism:?}: {message}"
        );
        assert!(!message.contains("not-the-password"), "{message}");
        assert!(took < DEADLINE, "{mechanism:?} waited {took:?}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_acls_is_told_which_topic_it_may_not_use() {
    let kafka = relais_test_support::kafka().await;
    let secured = relais_test_support::secured_kafka().await;
    let topic = kafka.create_topic("secured-no-acl", 1).await;
    let config = secured.sasl(SaslMechanism::ScramSha512, "relais-noacl");
    let (error, _) = refused(config, &secured.sasl_ssl_bootstrap, &topic).await;
    assert!(
        matches!(&error, AccessError::NotAuthorized(reason) if reason.contains(&topic) && reason.contains("relais-noacl")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificates_on_either_side_are_refused() {
    let kafka = relais_test_support::kafka().await;
    let secured = relais_test_support::secured_kafka().await;
    let topic = kafka.create_topic("secured-untrusted", 1).await;

    // A client certificate of another CA, on the mutual TLS listener.
    let (error, took) = refused(secured.rogue_mtls(), &secured.mtls_bootstrap, &topic).await;
    assert!(matches!(error, AccessError::Refused(_)), "{error}");
    assert!(took < DEADLINE, "waited {took:?}: {error}");

    // The broker's certificate checked against the system's CAs only, which do not know it.
    let mut config = secured.sasl(SaslMechanism::ScramSha512, "relais");
    config.tls.ca_file = None;
    let (error, _) = refused(config, &secured.sasl_ssl_bootstrap, &topic).await;
    assert!(
        matches!(&error, AccessError::Refused(reason) if reason.contains("certificate")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn brokers_that_do_not_answer_are_waited_for_not_fatal() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let address = closed.local_addr().expect("address").to_string();
    drop(closed);
    let client = KafkaClientConfig::default()
        .resolve(&address)
        .expect("resolves");
    let error = blocking(move || {
        check_access(
            &client,
            &Needs {
                topics: vec!["anything".to_owned()],
                group: None,
            },
            Duration::from_secs(3),
        )
        .expect_err("nobody answers")
    })
    .await;
    assert!(!error.is_fatal(), "{error}");
}
