//! The Kafka broker of the native stack.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{Endpoints, UnavailableError, unique_name};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A reachable broker, with helpers to give each test its own topics.
pub struct KafkaTestEnv {
    bootstrap: String,
    client: relais_kafka::KafkaClient,
    admin: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for KafkaTestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTestEnv")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl KafkaTestEnv {
    pub(crate) async fn connect(endpoints: &Endpoints) -> Result<Self, UnavailableError> {
        let bootstrap = endpoints.kafka_bootstrap.clone();
        let unreachable = |detail: String| UnavailableError::Unreachable {
            endpoint: format!("Kafka broker {bootstrap}"),
            detail,
        };
        // Security settings from the RELAIS_KAFKA_* variables, as the services read them.
        let client = relais_kafka::KafkaClientConfig::default()
            .resolve(&bootstrap)
            .map_err(|error| unreachable(error.to_string()))?;
        let admin: AdminClient<DefaultClientContext> = client
            .config()
            .create()
            .map_err(|error| unreachable(error.to_string()))?;
        // Metadata is a blocking call in librdkafka; keep it off the async workers.
        let probe: AdminClient<DefaultClientContext> = client
            .config()
            .create()
            .map_err(|error| unreachable(error.to_string()))?;
        let brokers = tokio::task::spawn_blocking(move || {
            probe
                .inner()
                .fetch_metadata(None, METADATA_TIMEOUT)
                .map(|metadata| metadata.brokers().len())
        })
        .await
        .map_err(|error| unreachable(error.to_string()))?
        .map_err(|error| {
            unreachable(format!("{error} (metadata request, {METADATA_TIMEOUT:?})"))
        })?;
        if brokers == 0 {
            return Err(UnavailableError::Unhealthy {
                endpoint: format!("Kafka broker {bootstrap}"),
                detail: "its metadata lists no brokers".into(),
            });
        }
        Ok(Self {
            bootstrap: endpoints.kafka_bootstrap.clone(),
            client,
            admin,
        })
    }

    /// The `bootstrap.servers` value.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration pointing at the broker, to extend per client.
    pub fn client_config(&self) -> ClientConfig {
        self.client.config()
    }

    /// Creates a fresh topic `{prefix}-{uuid}` with `partitions` partitions and waits until the
    /// broker confirms it.
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> String {
        self.create_topic_with(prefix, partitions, &[]).await
    }

    /// Like [`Self::create_topic`], with topic settings such as `("max.message.bytes", "65536")`.
    pub async fn create_topic_with(
        &self,
        prefix: &str,
        partitions: i32,
        settings: &[(&str, &str)],
    ) -> String {
        let name = unique_name(prefix);
        self.create_named_topic(&name, partitions, settings).await;
        name
    }

    /// Creates the topic `name` exactly (a test that starts without it, say).
    pub async fn create_named_topic(&self, name: &str, partitions: i32, settings: &[(&str, &str)]) {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in settings {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .unwrap_or_else(|error| panic!("creating topic {name} failed: {error}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic} failed: {code}");
            }
        }
    }

    /// Deletes the records of `topic`'s `partition` before `offset`, as retention would: a
    /// consumer whose next offset lies before it finds it gone.
    pub async fn delete_records_before(&self, topic: &str, partition: i32, offset: i64) {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("a valid offset");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        let result = self
            .admin
            .delete_records(&offsets, &options)
            .await
            .unwrap_or_else(|error| panic!("deleting records of {topic} failed: {error}"));
        for element in result.elements() {
            if let Err(error) = element.error() {
                panic!("deleting records of {topic} [{partition}] failed: {error}");
            }
        }
    }

    /// Deletes `topic` and creates it again with `partitions` partitions, as an operator who
    /// recreates a topic would: a new, empty log under the same name. Waits until the broker
    /// has finished the deletion (creating it fails until then).
    pub async fn recreate_topic(&self, topic: &str, partitions: i32) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        let results = self
            .admin
            .delete_topics(&[topic], &options)
            .await
            .unwrap_or_else(|error| panic!("deleting topic {topic} failed: {error}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("deleting topic {topic} failed: {code}");
            }
        }
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let results = self
                .admin
                .create_topics([&new_topic], &options)
                .await
                .unwrap_or_else(|error| panic!("creating topic {topic} failed: {error}"));
            match results.into_iter().next() {
                Some(Ok(_)) => return,
                // The deletion is not finished yet.
                Some(Err(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("creating topic {topic} again failed: {other:?}"),
            }
        }
    }

    /// Grows `topic` to `total` partitions, as an operator adding partitions live would.
    pub async fn add_partitions(&self, topic: &str, total: usize) {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
        let results = self
            .admin
            .create_partitions([&NewPartitions::new(topic, total)], &options)
            .await
            .unwrap_or_else(|error| panic!("adding partitions to {topic} failed: {error}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("adding partitions to {topic} failed: {code}");
            }
        }
        // The request returns before every metadata answer lists the new partitions: a
        // client made right after it could still see the old count and write only to those.
        let probe: rdkafka::consumer::BaseConsumer = self
            .client
            .config()
            .create()
            .expect("a metadata client for the broker");
        let name = topic.to_owned();
        let listed = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let count = probe
                    .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                    .ok()
                    .and_then(|metadata| {
                        let topic = metadata.topics().first()?;
                        Some(topic.partitions().len())
                    })
                    .unwrap_or(0);
                if count >= total || std::time::Instant::now() > deadline {
                    return count;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("the metadata task");
        assert!(
            listed >= total,
            "{topic} lists {listed} partitions 30 s after growing to {total}"
        );
    }
}
