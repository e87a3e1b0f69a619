//! A single PUT, signed here with its body's SHA-256 and sent on rust-s3's HTTP client.

use s3::Bucket;
use s3::error::S3Error;

use super::sigv4::{self, Signer};

/// A body to store, and the SHA-256 its single PUT is signed with: computed once, not again
/// for every attempt. None above the multipart threshold, where rust-s3 uploads in parts.
pub(super) struct Body {
    pub(super) bytes: bytes::Bytes,
    pub(super) sha256: Option<String>,
}

impl Body {
    pub(super) fn new(bytes: Vec<u8>, multipart_threshold: usize) -> Self {
        let sha256 = (bytes.len() <= multipart_threshold).then(|| sigv4::sha256_hex(&bytes));
        Self {
            bytes: bytes.into(),
            sha256,
        }
    }
}

/// Whether a PUT may replace an object already under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Replacing,
    OnlyNew,
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// An object was under the key already, and was left as it was ([`Write::OnlyNew`]).
    KeyTaken,
}

/// Single PUTs, sent on rust-s3's HTTP client (its TLS settings and trusted CAs) but signed
/// here: rust-s3 hashes a body twice with SHA-256 and once more with MD5 for `Content-MD5`,
/// while a body signed with its SHA-256 needs that one hash, and RGW checks it (a body changed
/// on the way is refused with `XAmzContentSHA256Mismatch`).
#[derive(Debug)]
pub(super) struct ObjectsEndpoint {
    http: reqwest_for_s3::Client,
    /// The bucket's URL, path-style: `scheme://host[:port]/bucket`.
    bucket_url: String,
    /// The `Host` header, as the client sends it for that URL.
    host: String,
    signer: Signer,
}

impl ObjectsEndpoint {
    pub(super) fn of(bucket: &Bucket, signer: Signer) -> Result<Self, S3Error> {
        let bucket_url = bucket.url();
        let parsed = reqwest_for_s3::Url::parse(&bucket_url)?;
        let host = parsed.host_str().unwrap_or_default();
        let host = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            http: bucket.http_client(),
            bucket_url,
            host,
            signer,
        })
    }

    /// Stores `body` under `key`; with [`Write::OnlyNew`], only if no object is there yet.
    pub(super) async fn put(
        &self,
        key: &str,
        body: bytes::Bytes,
        sha256: &str,
        content_type: &str,
        write: Write,
    ) -> Result<Written, S3Error> {
        let url = reqwest_for_s3::Url::parse(&format!(
            "{}/{}",
            self.bucket_url,
            sigv4::encode_path(key)
        ))?;
        // Signed as the client sends it (the URL parser may normalise the path).
        let signed = self.signer.sign(
            "PUT",
            url.path(),
            &[("host", &self.host)],
            sha256,
            chrono::Utc::now(),
        );
        let mut request = self
            .http
            .put(url)
            .header("host", &self.host)
            .header("content-type", content_type)
            .header("x-amz-content-sha256", sha256)
            .header("x-amz-date", signed.amz_date)
            .header("authorization", signed.authorization);
        if write == Write::OnlyNew {
            request = request.header("if-none-match", "*");
        }
        let response = request.body(body).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(Written::Stored);
        }
        if status == reqwest_for_s3::StatusCode::PRECONDITION_FAILED && write == Write::OnlyNew {
            return Ok(Written::KeyTaken);
        }
        let text = response.text().await.unwrap_or_default();
        Err(S3Error::HttpFailWithBody(status.as_u16(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh bucket of the native RGW and single PUTs into it, signed with `secret_key`.
    async fn bucket_and_endpoint(secret_key: &str) -> (Box<Bucket>, ObjectsEndpoint) {
        let endpoints = relais_test_support::Endpoints::from_env();
        let rgw = relais_test_support::rgw().await;
        let bucket = rgw.create_bucket("audit-put").await;
        let signer = Signer::new(&endpoints.s3_access_key, secret_key, &endpoints.s3_region);
        let objects = ObjectsEndpoint::of(&bucket, signer).unwrap();
        (bucket, objects)
    }

    #[tokio::test]
    async fn a_signed_put_stores_the_body_under_its_key() {
        let endpoints = relais_test_support::Endpoints::from_env();
        let (bucket, objects) = bucket_and_endpoint(&endpoints.s3_secret_key).await;
        // Characters a key may hold that the path must encode: `=`, a space, `+`, non-ASCII.
        let key = "audit/dt=2026-12-05/hour=23/a b+c-é.ndjson.gz";
        let body = Body::new(b"{\"id\":1}\n{\"id\":2}\n".to_vec(), 1024);
        let sha256 = body.sha256.clone().unwrap();
        objects
            .put(
                key,
                body.bytes.clone(),
                &sha256,
                "application/x-ndjson",
                Write::Replacing,
            )
            .await
            .unwrap();
        let stored = bucket.get_object(key).await.unwrap();
        assert_eq!(stored.bytes(), &body.bytes);
        let listed = bucket.list(String::new(), None).await.unwrap();
        let keys: Vec<&str> = listed
            .iter()
            .flat_map(|page| page.contents.iter().map(|object| object.key.as_str()))
            .collect();
        assert_eq!(keys, [key]);
    }

    #[tokio::test]
    async fn a_body_that_is_not_what_was_signed_is_refused_and_not_stored() {
        let endpoints = relais_test_support::Endpoints::from_env();
        let (bucket, objects) = bucket_and_endpoint(&endpoints.s3_secret_key).await;
        let signed = Body::new(b"the body that was hashed".to_vec(), 1024);
        let error = objects
            .put(
                "changed",
                bytes::Bytes::from_static(b"the body that was sent"),
                signed.sha256.as_deref().unwrap(),
                "application/octet-stream",
                Write::Replacing,
            )
            .await
            .unwrap_err();
        match error {
            S3Error::HttpFailWithBody(400, body) => {
                assert!(body.contains("XAmzContentSHA256Mismatch"), "{body}");
            }
            other => panic!("expected HTTP 400, got {other}"),
        }
        assert!(bucket.get_object("changed").await.is_err());
    }

    #[tokio::test]
    async fn a_wrong_secret_key_is_refused() {
        let (_bucket, objects) = bucket_and_endpoint("not-the-secret").await;
        let body = Body::new(b"x".to_vec(), 1024);
        let error = objects
            .put(
                "refused",
                body.bytes.clone(),
                body.sha256.as_deref().unwrap(),
                "application/octet-stream",
                Write::Replacing,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, S3Error::HttpFailWithBody(403, _)),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_put_only_of_a_new_object_leaves_one_already_there() {
        let endpoints = relais_test_support::Endpoints::from_env();
        let (bucket, objects) = bucket_and_endpoint(&endpoints.s3_secret_key).await;
        let put = |text: &'static [u8], write| {
            let body = Body::new(text.to_vec(), 1024);
            let objects = &objects;
            async move {
                let sha256 = body.sha256.clone().unwrap();
                objects
                    .put("key", body.bytes, &sha256, "text/plain", write)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(put(b"first", Write::OnlyNew).await, Written::Stored);
        assert_eq!(put(b"second", Write::OnlyNew).await, Written::KeyTaken);
        assert_eq!(
            bucket.get_object("key").await.unwrap().bytes(),
            &b"first"[..]
        );
        assert_eq!(put(b"third", Write::Replacing).await, Written::Stored);
        assert_eq!(
            bucket.get_object("key").await.unwrap().bytes(),
            &b"third"[..]
        );
    }

    #[test]
    fn a_body_above_the_multipart_threshold_is_not_hashed_for_a_single_put() {
        assert!(Body::new(vec![0; 1025], 1024).sha256.is_none());
        assert_eq!(
            Body::new(Vec::new(), 1024).sha256.as_deref(),
            Some(sigv4::sha256_hex(b"").as_str())
        );
    }
}
