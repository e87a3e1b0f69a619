//! Helpers shared by the audit-service test binaries.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each binary uses a part

use std::collections::BTreeMap;
use std::io::Read as _;

/// message id → how many times it is stored.
pub async fn stored_message_ids(
    rgw: &relais_test_support::RgwTestEnv,
    bucket: &str,
) -> BTreeMap<String, usize> {
    let bucket = rgw.bucket(bucket);
    let mut seen = BTreeMap::new();
    for page in bucket.list("audit/".to_owned(), None).await.unwrap() {
        for object in page
            .contents
            .iter()
            .filter(|o| o.key.ends_with(".ndjson.gz"))
        {
            let body = bucket
                .get_object(&object.key)
                .await
                .unwrap()
                .bytes()
                .to_vec();
            let mut text = String::new();
            flate2::read::GzDecoder::new(body.as_slice())
                .read_to_string(&mut text)
                .unwrap();
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                *seen
                    .entry(value["message_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
    }
    seen
}
