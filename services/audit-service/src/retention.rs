//! How long the audit trail is kept: the bucket's lifecycle rules, set at start-up.
//!
//! RGW applies them itself (its lifecycle thread runs daily): audit objects expire a
//! configured number of days after they were written, and the parts of multipart uploads that
//! were never completed (a crash between parts) are deleted after a day, so neither grows
//! without bound. A bucket has one lifecycle configuration; the service replaces only its own
//! rules (named `relais-…`) and keeps any others an operator has added.

use s3::Bucket;
use s3::error::S3Error;
use s3::serde_types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, Expiration, LifecycleFilter,
    LifecycleRule,
};

use crate::config::RetentionConfig;

/// Names of the rules the service owns start with this.
pub const RULE_PREFIX: &str = "relais-";
pub const EXPIRY_RULE: &str = "relais-audit-expiry";
pub const ABORT_RULE: &str = "relais-abort-incomplete-uploads";

/// The service's rules for objects under `{prefix}/`.
pub fn rules(config: &RetentionConfig, prefix: &str) -> Vec<LifecycleRule> {
    let filter = || LifecycleFilter {
        prefix: Some(format!("{prefix}/")),
        ..LifecycleFilter::default()
    };
    let mut rules = Vec::new();
    if config.expire_after_days > 0 {
        rules.push(LifecycleRule {
            id: Some(EXPIRY_RULE.to_owned()),
            status: "Enabled".to_owned(),
            filter: Some(filter()),
            expiration: Some(Expiration {
                days: Some(config.expire_after_days),
                ..Expiration::default()
            }),
            ..LifecycleRule::default()
        });
    }
    rules.push(LifecycleRule {
        id: Some(ABORT_RULE.to_owned()),
        status: "Enabled".to_owned(),
        filter: Some(filter()),
        abort_incomplete_multipart_upload: Some(AbortIncompleteMultipartUpload {
            days_after_initiation: i32::try_from(config.abort_incomplete_uploads_after_days).ok(),
        }),
        ..LifecycleRule::default()
    });
    rules
}

/// The bucket's rules with the service's own replaced by `ours`.
pub fn merged(existing: Vec<LifecycleRule>, ours: Vec<LifecycleRule>) -> Vec<LifecycleRule> {
    existing
        .into_iter()
        .filter(|rule| {
            !rule
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with(RULE_PREFIX))
        })
        .chain(ours)
        .collect()
}

/// The bucket's lifecycle rules; none when it has no configuration.
pub async fn read(bucket: &Bucket) -> Result<Vec<LifecycleRule>, S3Error> {
    match bucket.get_bucket_lifecycle().await {
        Ok(configuration) => Ok(configuration.rules),
        Err(S3Error::HttpFailWithBody(404, _)) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// Sets the service's rules on the bucket, keeping the others.
pub async fn apply(bucket: &Bucket, config: &RetentionConfig, prefix: &str) -> Result<(), S3Error> {
    let rules = merged(read(bucket).await?, rules(config, prefix));
    bucket
        .put_bucket_lifecycle(BucketLifecycleConfiguration::new(rules))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_abort_under_the_audit_prefix() {
        let rules = rules(&RetentionConfig::default(), "audit");
        assert_eq!(rules.len(), 2);
        let expiry = &rules[0];
        assert_eq!(expiry.id.as_deref(), Some(EXPIRY_RULE));
        assert_eq!(expiry.expiration.as_ref().and_then(|e| e.days), Some(365));
        assert_eq!(
            expiry.filter.as_ref().and_then(|f| f.prefix.as_deref()),
            Some("audit/")
        );
        let abort = &rules[1];
        assert_eq!(
            abort
                .abort_incomplete_multipart_upload
                .as_ref()
                .and_then(|a| a.days_after_initiation),
            Some(1)
        );
        assert!(abort.expiration.is_none());
    }

    #[test]
    fn zero_days_keeps_objects_for_ever_but_still_aborts_uploads() {
        let config = RetentionConfig {
            expire_after_days: 0,
            ..RetentionConfig::default()
        };
        let rules = rules(&config, "audit");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id.as_deref(), Some(ABORT_RULE));
    }

    #[test]
    fn an_operators_rules_are_kept_and_ours_replaced() {
        let operator = LifecycleRule {
            id: Some("archive-logs".into()),
            status: "Enabled".into(),
            ..LifecycleRule::default()
        };
        let old_ours = LifecycleRule {
            id: Some(EXPIRY_RULE.into()),
            status: "Enabled".into(),
            ..LifecycleRule::default()
        };
        let merged = merged(
            vec![operator, old_ours],
            rules(&RetentionConfig::default(), "audit"),
        );
        let ids: Vec<&str> = merged.iter().filter_map(|r| r.id.as_deref()).collect();
        assert_eq!(ids, ["archive-logs", EXPIRY_RULE, ABORT_RULE]);
        assert_eq!(
            merged[1].expiration.as_ref().and_then(|e| e.days),
            Some(365)
        );
    }
}
