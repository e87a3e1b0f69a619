//! The bucket's lifecycle rules, set by the service at start-up and read back from RGW.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Instance;
use relais_audit_service::config::{AuditConfig, KafkaConfig, RetentionConfig};
use relais_audit_service::retention::{ABORT_RULE, EXPIRY_RULE, read};
use relais_test_support::{unique_name, wait_until};
use s3::serde_types::{BucketLifecycleConfiguration, Expiration, LifecycleFilter, LifecycleRule};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_sets_expiry_and_upload_abort_and_keeps_an_operators_rules() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let endpoints = relais_test_support::Endpoints::from_env();
    let bucket = rgw.create_bucket("it-audit-retention").await;
    let operator_rule = LifecycleRule {
        id: Some("archive-exports".into()),
        status: "Enabled".into(),
        filter: Some(LifecycleFilter {
            prefix: Some("exports/".into()),
            ..LifecycleFilter::default()
        }),
        expiration: Some(Expiration {
            days: Some(7),
            ..Expiration::default()
        }),
        ..LifecycleRule::default()
    };
    bucket
        .put_bucket_lifecycle(BucketLifecycleConfiguration::new(vec![operator_rule]))
        .await
        .unwrap();

    let topic = kafka.create_topic("it-audit-retention", 1).await;
    let config = AuditConfig {
        kafka: KafkaConfig {
            group_id: unique_name("it-audit-retention"),
            audit_topic: topic,
            ..KafkaConfig::default()
        },
        retention: RetentionConfig {
            expire_after_days: 90,
            ..RetentionConfig::default()
        },
        ..AuditConfig::default()
    };
    let instance = Instance::start(
        common::args(&kafka, &bucket.name(), endpoints.s3_endpoint.clone()),
        config,
        Default::default(),
    );
    wait_until(
        "the service's lifecycle rules on the bucket",
        Duration::from_secs(30),
        || async {
            read(&bucket)
                .await
                .unwrap()
                .iter()
                .any(|rule| rule.id.as_deref() == Some(ABORT_RULE))
        },
    )
    .await;
    instance.stop().await;

    let rules = read(&bucket).await.unwrap();
    let by_id = |id: &str| {
        rules
            .iter()
            .find(|rule| rule.id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no rule {id} in {rules:?}"))
    };
    let prefix = |rule: &LifecycleRule| rule.filter.as_ref().and_then(|f| f.prefix.clone());
    let expiry = by_id(EXPIRY_RULE);
    assert_eq!(expiry.status, "Enabled");
    assert_eq!(expiry.expiration.as_ref().and_then(|e| e.days), Some(90));
    assert_eq!(prefix(expiry).as_deref(), Some("audit/"));
    let abort = by_id(ABORT_RULE);
    assert_eq!(
        abort
            .abort_incomplete_multipart_upload
            .as_ref()
            .and_then(|a| a.days_after_initiation),
        Some(1)
    );
    let kept = by_id("archive-exports");
    assert_eq!(kept.expiration.as_ref().and_then(|e| e.days), Some(7));
    assert_eq!(prefix(kept).as_deref(), Some("exports/"));
    assert_eq!(rules.len(), 3, "{rules:?}");
}
