//! AWS Signature Version 4 for the one request the service sends itself: a PUT whose body is
//! signed by its SHA-256 (see `Store::put`). Pure functions; the request is sent elsewhere.

use chrono::{DateTime, Utc};
use ring::hmac;

/// The keys a request is signed with and the region they are scoped to.
#[derive(Clone)]
pub(super) struct Signer {
    access_key: String,
    signing_secret: String,
    region: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The headers a signed request carries besides its body's.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SignedHeaders {
    pub(super) authorization: String,
    pub(super) amz_date: String,
}

impl Signer {
    pub(super) fn new(access_key: &str, secret_key: &str, region: &str) -> Self {
        Self {
            access_key: access_key.to_owned(),
            signing_secret: format!("AWS4{secret_key}"),
            region: region.to_owned(),
        }
    }

    /// Signs a request without a query string. `path` is already encoded (see
    /// [`encode_path`]); `headers` are the other signed headers, lowercase, sorted by name,
    /// besides `x-amz-content-sha256` (`payload_sha256`) and `x-amz-date` (`at`), which are
    /// added here.
    pub(super) fn sign(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload_sha256: &str,
        at: DateTime<Utc>,
    ) -> SignedHeaders {
        let amz_date = at.format("%Y%m%dT%H%M%SZ").to_string();
        let day = at.format("%Y%m%d").to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("x-amz-content-sha256", payload_sha256));
        all.push(("x-amz-date", &amz_date));
        all.sort_unstable_by_key(|(name, _)| *name);

        let mut canonical = format!("{method}\n{path}\n\n");
        for (name, value) in &all {
            canonical.push_str(name);
            canonical.push(':');
            canonical.push_str(value.trim());
            canonical.push('\n');
        }
        let signed_names = all
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(";");
        canonical.push('\n');
        canonical.push_str(&signed_names);
        canonical.push('\n');
        canonical.push_str(payload_sha256);

        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let mut key = self.signing_secret.as_bytes().to_vec();
        for part in [day.as_str(), self.region.as_str(), "s3", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
        SignedHeaders {
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_names},Signature={signature}",
                self.access_key
            ),
            amz_date,
        }
    }
}

/// The SHA-256 of `bytes` in lowercase hex, as `x-amz-content-sha256` carries it.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// An object key as a URL path segment in the form SigV4 signs: every byte but the
/// unreserved characters and `/` percent-encoded, in uppercase hex.
pub(super) fn encode_path(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push_str(&hex(&[byte]).to_ascii_uppercase());
        }
    }
    encoded
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, message).as_ref().to_vec()
}

/// Lowercase hex, as SigV4 writes hashes and signatures.
fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET Object example of Amazon's SigV4 documentation (its published keys, request
    /// and signature).
    #[test]
    fn the_documented_example_gets_the_documented_signature() {
        let signer = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        let at = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let signed = signer.sign(
            "GET",
            "/test.txt",
            &[
                ("range", "bytes=0-9"),
                ("host", "examplebucket.s3.amazonaws.com"),
            ],
            &sha256_hex(b""),
            at,
        );
        assert_eq!(signed.amz_date, "20130524T000000Z");
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn a_key_keeps_its_slashes_and_unreserved_characters_and_encodes_the_rest() {
        assert_eq!(
            encode_path("audit/dt=2026-12-05/hour=23/relais.audit-3-00000042.ndjson.gz"),
            "audit/dt%3D2026-12-05/hour%3D23/relais.audit-3-00000042.ndjson.gz"
        );
        assert_eq!(encode_path("a b+c~d_é"), "a%20b%2Bc~d_%C3%A9");
    }

    #[test]
    fn the_payload_hash_is_the_sha256_in_lowercase_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_secret_key_is_not_printed() {
        let signer = Signer::new("access", "very-secret", "default");
        assert!(!format!("{signer:?}").contains("very-secret"));
    }
}
