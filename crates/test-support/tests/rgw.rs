//! The native Ceph RGW serves what audit-service needs, through rust-s3: buckets, PUT, LIST,
//! GET (byte-identical), multipart upload and DELETE.

use rand::RngCore;

#[tokio::test]
async fn bucket_put_list_get_multipart_delete() {
    let env = relais_test_support::rgw().await;
    let bucket = env.create_bucket("it-rgw").await;

    // PUT and GET byte-identical, including bytes that are not UTF-8.
    let mut small = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut small);
    let key = "dt=2026-11-27/hour=03/relais.audit+0+00000000000000000000.ndjson.gz";
    let put = bucket
        .put_object_with_content_type(key, &small, "application/gzip")
        .await
        .expect("put");
    assert_eq!(put.status_code(), 200);
    let got = bucket.get_object(key).await.expect("get");
    assert_eq!(got.status_code(), 200);
    assert!(
        got.bytes().as_ref() == small.as_slice(),
        "GET returns the PUT bytes"
    );

    // Multipart: rust-s3 switches to a multipart upload above its 8 MiB chunk size.
    let mut large = vec![0u8; 20 * 1024 * 1024 + 123];
    rand::rng().fill_bytes(&mut large);
    let large_key = "dt=2026-11-27/hour=03/large.bin";
    let mut reader = std::io::Cursor::new(large.clone());
    let uploaded = bucket
        .put_object_stream(&mut reader, large_key)
        .await
        .expect("multipart put");
    assert_eq!(uploaded.status_code(), 200);
    let head = bucket.head_object(large_key).await.expect("head").0;
    let etag = head.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').contains('-'),
        "a multipart object's ETag ends in -<parts>, got {etag}"
    );
    assert_eq!(head.content_length, Some(large.len() as i64));
    let got = bucket.get_object(large_key).await.expect("get large");
    assert!(
        got.bytes().as_ref() == large.as_slice(),
        "multipart object is byte-identical"
    );

    // LIST under a prefix sees both, and only them.
    let pages = bucket
        .list("dt=2026-11-27/".to_owned(), None)
        .await
        .expect("list");
    let mut keys: Vec<String> = pages
        .iter()
        .flat_map(|page| page.contents.iter().map(|object| object.key.clone()))
        .collect();
    keys.sort();
    assert_eq!(keys, [large_key, key]);

    // DELETE, then the bucket is empty and can itself be deleted.
    for key in &keys {
        let deleted = bucket.delete_object(key).await.expect("delete");
        assert_eq!(deleted.status_code(), 204);
    }
    let after = bucket.list(String::new(), None).await.expect("list");
    assert!(after.iter().all(|page| page.contents.is_empty()));
    bucket.delete().await.expect("delete bucket");
}
