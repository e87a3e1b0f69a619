//! Writing objects to Ceph RGW: compression, single or multipart PUT, retries until stored.

mod claim;
mod compress;
mod put;
mod sigv4;

use std::sync::Arc;
use std::time::Duration;

use relais_resilience::operation::{AttemptFailure, OperationError, OperationRetry};
use relais_telemetry::shutdown::CancellationToken;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, BucketConfiguration, Region};

use crate::config::{Args, AuditConfig, Compression, RetentionConfig};
use crate::index::IndexEntry;
use crate::metrics::AuditMetrics;
use crate::object::{self, Pending};

use claim::{Identity, StartDecoder};
use compress::compress;
use put::{Body, ObjectsEndpoint, Write, Written};
use sigv4::Signer;

/// Why the service cannot use the store; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Keys(String),
    #[error("invalid S3 settings (endpoint {endpoint}, bucket {bucket})")]
    Settings {
        endpoint: String,
        bucket: String,
        #[source]
        source: S3Error,
    },
    #[error(
        "RGW at {endpoint} refused the credentials for bucket {bucket} (HTTP {status}); check RELAIS_S3_ACCESS_KEY / RELAIS_S3_SECRET_KEY"
    )]
    Credentials {
        endpoint: String,
        bucket: String,
        status: u16,
    },
    #[error("bucket {bucket} does not exist at {endpoint} and storage.create_bucket is false")]
    MissingBucket { endpoint: String, bucket: String },
    #[error("RGW at {endpoint} is not reachable")]
    Unreachable {
        endpoint: String,
        #[source]
        source: S3Error,
    },
    #[error(
        "cannot set the lifecycle rules of bucket {bucket} (set retention.manage_lifecycle = false if it is managed elsewhere)"
    )]
    Lifecycle {
        bucket: String,
        #[source]
        source: S3Error,
    },
    #[error("cannot create bucket {bucket} at {endpoint}")]
    Create {
        endpoint: String,
        bucket: String,
        #[source]
        source: S3Error,
    },
}

/// What was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub compressed_bytes: usize,
    /// NDJSON bytes before compression (the payload as it came, for quarantined records).
    pub uncompressed_bytes: usize,
    /// The lookup index written beside a data object.
    pub index: Option<IndexEntry>,
}

#[derive(Debug)]
pub struct Store {
    bucket: Box<Bucket>,
    /// Where single PUTs go and how they are signed (see `put::ObjectsEndpoint`).
    objects: ObjectsEndpoint,
    prefix: String,
    topic: String,
    compression: Compression,
    level: u32,
    multipart_threshold: usize,
    retry: OperationRetry,
    metrics: AuditMetrics,
    /// Since when every PUT has failed, and the last error; None after a success.
    failing: std::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

impl Store {
    /// Connects, checks the credentials, and creates the bucket if configured to. Fails fast
    /// with a message naming the endpoint, the bucket and what to check.
    pub async fn connect(
        args: &Args,
        config: &AuditConfig,
        metrics: AuditMetrics,
    ) -> Result<Self, StoreError> {
        // rust-s3 builds its own reqwest client on rustls; pick the ring provider once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = args.s3_endpoint.clone();
        let settings = |source| StoreError::Settings {
            endpoint: endpoint.clone(),
            bucket: args.bucket.clone(),
            source,
        };
        let region = Region::Custom {
            region: args.s3_region.clone(),
            endpoint: args.s3_endpoint.clone(),
        };
        let keys = args
            .s3_credentials()
            .map_err(|error| StoreError::Keys(error.to_string()))?;
        let credentials = Credentials::new(
            Some(&keys.access_key),
            Some(&keys.secret_key),
            None,
            None,
            None,
        )
        .map_err(|error| settings(S3Error::Credentials(error)))?;
        let mut bucket = Bucket::new(&args.bucket, region.clone(), credentials.clone())
            .map_err(settings)?
            .with_path_style();
        bucket.set_request_timeout(Some(config.storage.put_timeout));

        let probe = tokio::time::timeout(
            Duration::from_secs(15),
            bucket.list_page(String::new(), None, None, None, Some(1)),
        )
        .await;
        match probe {
            Ok(Ok(_)) => {}
            Ok(Err(S3Error::HttpFailWithBody(403, _))) => {
                return Err(StoreError::Credentials {
                    endpoint,
                    bucket: args.bucket.clone(),
                    status: 403,
                });
            }
            Ok(Err(S3Error::HttpFailWithBody(404, _))) => {
                if !config.storage.create_bucket {
                    return Err(StoreError::MissingBucket {
                        endpoint,
                        bucket: args.bucket.clone(),
                    });
                }
                Bucket::create_with_path_style(
                    &args.bucket,
                    region,
                    credentials,
                    BucketConfiguration::default(),
                )
                .await
                .map_err(|source| StoreError::Create {
                    endpoint: endpoint.clone(),
                    bucket: args.bucket.clone(),
                    source,
                })?;
                tracing::info!(bucket = %args.bucket, "bucket created");
            }
            Ok(Err(source)) => return Err(StoreError::Unreachable { endpoint, source }),
            Err(_) => {
                return Err(StoreError::Unreachable {
                    endpoint,
                    source: S3Error::HttpFail,
                });
            }
        }
        let objects = ObjectsEndpoint::of(
            &bucket,
            Signer::new(&keys.access_key, &keys.secret_key, &args.s3_region),
        )
        .map_err(settings)?;
        Ok(Self {
            bucket,
            objects,
            prefix: config.objects.prefix.clone(),
            topic: config.kafka.audit_topic.clone(),
            compression: config.objects.compression,
            level: config.objects.compression_level,
            multipart_threshold: config.objects.multipart_threshold_bytes,
            retry: OperationRetry::new(
                config.storage.base_backoff,
                config.storage.max_backoff,
                None,
                config.storage.put_timeout,
            ),
            metrics,
            failing: std::sync::Mutex::default(),
        })
    }

    /// How long every PUT has failed, and the last error; None once one succeeds.
    pub fn failing(&self) -> Option<(Duration, String)> {
        self.failures()
            .as_ref()
            .map(|(since, error)| (since.elapsed(), error.clone()))
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Option<(tokio::time::Instant, String)>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note_failure(&self, error: String) {
        let mut failing = self.failures();
        let since = failing
            .as_ref()
            .map_or_else(tokio::time::Instant::now, |(since, _)| *since);
        *failing = Some((since, error));
    }

    /// Sets the retention rules on the bucket (see `retention`).
    pub async fn apply_lifecycle(&self, config: &RetentionConfig) -> Result<(), StoreError> {
        crate::retention::apply(&self.bucket, config, &self.prefix)
            .await
            .map_err(|source| StoreError::Lifecycle {
                bucket: self.bucket.name(),
                source,
            })?;
        tracing::info!(
            expire_after_days = config.expire_after_days,
            abort_incomplete_uploads_after_days = config.abort_incomplete_uploads_after_days,
            "bucket lifecycle set"
        );
        Ok(())
    }

    /// The key an item is stored under.
    pub fn key_of(&self, item: &Pending) -> String {
        match item {
            Pending::Data(object) => object::data_key(
                &self.prefix,
                &self.topic,
                object,
                self.compression.extension(),
            ),
            Pending::Quarantine(record) => {
                object::quarantine_key(&self.prefix, &self.topic, record)
            }
        }
    }

    /// Stores an item, retrying with backoff until it is stored or `cancel` fires. Writing the
    /// same item twice stores the same bytes under the same key; an object of another log of
    /// the topic under its key is kept, and the item stored under its second key (`claim`).
    pub async fn write(
        &self,
        item: Arc<Pending>,
        cancel: &CancellationToken,
    ) -> Result<Stored, OperationError<S3Error>> {
        let own_key = self.key_of(&item);
        let threshold = self.multipart_threshold;
        let (body, content_type, uncompressed_bytes) = match &*item {
            Pending::Data(object) => {
                let (compression, level) = (self.compression, self.level);
                let shared = Arc::clone(&item);
                let body = tokio::task::spawn_blocking(move || match &*shared {
                    Pending::Data(object) => {
                        Body::new(compress(&object.ndjson, compression, level), threshold)
                    }
                    // Not reached: this arm of the outer match is data.
                    Pending::Quarantine(_) => Body::new(Vec::new(), threshold),
                })
                .await
                .map_err(|_| OperationError::Cancelled)?;
                (body, "application/x-ndjson", object.ndjson.len())
            }
            Pending::Quarantine(record) => (
                Body::new(record.payload.clone(), threshold),
                "application/octet-stream",
                record.payload.len(),
            ),
        };
        let size = body.bytes.len();
        let started = tokio::time::Instant::now();
        let key = self
            .retry
            .run(
                cancel,
                || self.put_claiming(&own_key, &item, &body, content_type),
                |_| true,
                |failure, attempt, wait| {
                    self.metrics.put_retries.inc();
                    match failure {
                        AttemptFailure::Error(error) => {
                            tracing::warn!(%error, key = %own_key, attempt, wait_ms = wait.as_millis() as u64, "PUT failed; retrying");
                            self.note_failure(error.to_string());
                        }
                        AttemptFailure::TimedOut => {
                            tracing::warn!(key = %own_key, attempt, "PUT timed out; retrying");
                            self.note_failure("PUT timed out".to_owned());
                        }
                    }
                },
            )
            .await?;
        *self.failures() = None;
        if key != own_key {
            self.metrics.second_keys.inc();
            tracing::warn!(
                key = %own_key,
                stored_as = %key,
                "an object of another log of the topic holds this key (the topic was deleted and created again, or a partition truncated); it is kept, and this one stored beside it"
            );
        }
        // The index goes up after its data object: an index never points at a missing object.
        let index = match &*item {
            Pending::Data(object) => {
                let entry = IndexEntry::build(key.clone(), object.hour, &object.ids);
                let index_key = IndexEntry::index_key(&key);
                let bytes = Body::new(entry.to_bytes(), threshold);
                self.retry
                    .run(
                        cancel,
                        || async {
                            self.put(
                                &index_key,
                                &bytes,
                                "application/octet-stream",
                                Write::Replacing,
                            )
                            .await
                            .map(drop)
                        },
                        |_| true,
                        |_, _, _| {
                            self.metrics.put_retries.inc();
                        },
                    )
                    .await?;
                Some(entry)
            }
            Pending::Quarantine(_) => None,
        };
        relais_telemetry::exemplar::observe(
            &self.metrics.put_duration,
            started.elapsed().as_secs_f64(),
        );
        self.metrics.object_size.observe(size as f64);
        Ok(Stored {
            key,
            compressed_bytes: size,
            uncompressed_bytes,
            index,
        })
    }

    /// Reads an object whole (decompressed when it is a data object).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, S3Error> {
        let data = self.bucket.get_object(key).await?;
        let bytes = data.bytes().to_vec();
        if key.ends_with(".ndjson.gz") {
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(bytes.as_slice()),
                &mut text,
            )
            .map_err(S3Error::Io)?;
            return Ok(text);
        }
        if key.ends_with(".ndjson.zst") {
            return zstd::stream::decode_all(bytes.as_slice()).map_err(S3Error::Io);
        }
        Ok(bytes)
    }

    /// Keys under a prefix.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let pages = self.bucket.list(prefix.to_owned(), None).await?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.contents.into_iter().map(|object| object.key))
            .collect())
    }

    /// Keys under a prefix, each with its ETag (which changes when the object is rewritten).
    pub async fn list_with_etags(&self, prefix: &str) -> Result<Vec<(String, String)>, S3Error> {
        let pages = self.bucket.list(prefix.to_owned(), None).await?;
        Ok(pages
            .into_iter()
            .flat_map(|page| page.contents)
            .map(|object| (object.key, object.e_tag.unwrap_or_default()))
            .collect())
    }

    /// The key prefix of one hour's objects.
    pub fn hour_prefix(&self, hour: chrono::DateTime<chrono::Utc>) -> String {
        use chrono::{Datelike, Timelike};
        format!(
            "{}/dt={:04}-{:02}-{:02}/hour={:02}/",
            self.prefix,
            hour.year(),
            hour.month(),
            hour.day(),
            hour.hour()
        )
    }

    /// Stores `body` under `key` if no object is there, or if the one there starts with the
    /// same record (this item written again); under the item's second key if the one there is
    /// of another log. Returns the key it was stored under.
    async fn put_claiming(
        &self,
        key: &str,
        item: &Pending,
        body: &Body,
        content_type: &str,
    ) -> Result<String, S3Error> {
        if self.put(key, body, content_type, Write::OnlyNew).await? == Written::Stored {
            return Ok(key.to_owned());
        }
        // Only here, where the key is taken (rare), is the item's start copied out.
        let identity = Identity::of(item);
        let stored_start = self.read_start(key, identity.wanted()).await?;
        let key = if identity.matches(&stored_start) {
            key.to_owned()
        } else {
            object::second_key(key, &identity.mark())
        };
        self.put(&key, body, content_type, Write::Replacing).await?;
        Ok(key)
    }

    async fn put(
        &self,
        key: &str,
        body: &Body,
        content_type: &str,
        write: Write,
    ) -> Result<Written, S3Error> {
        match &body.sha256 {
            Some(sha256) => {
                self.objects
                    .put(key, body.bytes.clone(), sha256, content_type, write)
                    .await
            }
            None => {
                // rust-s3's multipart upload sends no conditions: asked first instead. Only
                // this service writes under its prefix, one writer per partition at a time.
                if write == Write::OnlyNew && self.exists(key).await? {
                    return Ok(Written::KeyTaken);
                }
                let mut reader = std::io::Cursor::new(&body.bytes[..]);
                self.bucket
                    .put_object_stream_with_content_type(&mut reader, key, content_type)
                    .await?;
                Ok(Written::Stored)
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, S3Error> {
        match self.bucket.head_object(key).await {
            Ok(_) => Ok(true),
            Err(S3Error::HttpFailWithBody(404, _)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The first `wanted` bytes of an object's decoded content (all of it when it is shorter),
    /// read only as far as needed.
    async fn read_start(&self, key: &str, wanted: usize) -> Result<Vec<u8>, S3Error> {
        use futures::StreamExt as _;
        let mut response = self.bucket.get_object_stream(key).await?;
        let mut decoder = StartDecoder::for_key(key).map_err(S3Error::Io)?;
        while decoder.decoded().len() < wanted {
            match response.bytes().next().await {
                Some(piece) => decoder.feed(&piece?).map_err(S3Error::Io)?,
                None => break,
            }
        }
        let mut start = decoder.decoded().to_vec();
        start.truncate(wanted);
        Ok(start)
    }
}
