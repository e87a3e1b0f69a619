//! Standard Webhooks signatures.
//!
//! Every signed delivery carries `webhook-id` (the message id), `webhook-timestamp` (Unix
//! seconds of the attempt) and `webhook-signature`: space-separated signatures of
//! `{id}.{timestamp}.{body}`, `v1,` + base64 HMAC-SHA256 for a symmetric secret (`whsec_` +
//! base64) and `v1a,` + base64 Ed25519 for a signing key (`whsk_` + base64 of its 32-byte
//! seed; receivers verify with `whpk_` + base64 of the public key). A sender signs with every
//! active key, so that receivers can move from an old key to a new one without a gap.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use subtle::ConstantTimeEq as _;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Symmetric secrets shorter than this are refused (the specification asks for 24 to 64).
const MIN_SECRET_BYTES: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {index}: expected whsec_, whsk_ or whpk_ followed by base64")]
    Format { index: usize },
    #[error("key {index}: not valid base64")]
    Base64 { index: usize },
    #[error("key {index}: a whsec_ secret must hold at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret { index: usize },
    #[error(
        "key {index}: an Ed25519 key must be 32 bytes (whsk_: the seed, whpk_: the public key)"
    )]
    Ed25519Length { index: usize },
    #[error("no signing key")]
    None,
}

enum SigningKey {
    Hmac(ring::hmac::Key),
    Ed25519(Ed25519KeyPair),
}

/// The keys a sender signs with.
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

fn decode(index: usize, text: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Base64 { index })
}

/// The HMAC key of a `whsec_` secret (its base64 part).
fn hmac_key(index: usize, secret: &str) -> Result<ring::hmac::Key, KeyError> {
    let bytes = decode(index, secret)?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret { index });
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

impl Signer {
    /// Keys as `whsec_...` (HMAC) or `whsk_...` (Ed25519), in any mix.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut parsed = Vec::new();
        for (index, key) in keys.into_iter().enumerate() {
            let index = index + 1;
            let key = key.trim();
            if let Some(secret) = key.strip_prefix("whsec_") {
                parsed.push(SigningKey::Hmac(hmac_key(index, secret)?));
            } else if let Some(seed) = key.strip_prefix("whsk_") {
                let bytes = decode(index, seed)?;
                let pair = Ed25519KeyPair::from_seed_unchecked(&bytes)
                    .map_err(|_| KeyError::Ed25519Length { index })?;
                parsed.push(SigningKey::Ed25519(pair));
            } else {
                return Err(KeyError::Format { index });
            }
        }
        if parsed.is_empty() {
            return Err(KeyError::None);
        }
        Ok(Self { keys: parsed })
    }

    /// The three headers of one attempt: `(name, value)`.
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
        let content = signed_content(id, timestamp, body);
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|key| match key {
                SigningKey::Hmac(key) => {
                    format!("v1,{}", STANDARD.encode(ring::hmac::sign(key, &content)))
                }
                SigningKey::Ed25519(pair) => {
                    format!("v1a,{}", STANDARD.encode(pair.sign(&content)))
                }
            })
            .collect();
        [
            (ID_HEADER, id.to_owned()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, signatures.join(" ")),
        ]
    }

    /// The public keys (`whpk_...`) of the Ed25519 signing keys, for receivers.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|key| match key {
                SigningKey::Ed25519(pair) => Some(format!(
                    "whpk_{}",
                    STANDARD.encode(pair.public_key().as_ref())
                )),
                SigningKey::Hmac(_) => None,
            })
            .collect()
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    content
}

enum VerifyingKey {
    Hmac(ring::hmac::Key),
    Ed25519(Vec<u8>),
}

/// The keys a receiver accepts, and how far a timestamp may be from its clock.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    tolerance_seconds: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} keys)", self.keys.len())
    }
}

/// Why a delivery's signature is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the webhook-id, webhook-timestamp or webhook-signature header is missing")]
    Missing,
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now, beyond the tolerance")]
    Stale(i64),
    #[error("no signature matches an accepted key")]
    Mismatch,
}

impl Verifier {
    /// Keys as `whsec_...` (HMAC) or `whpk_...` (Ed25519 public keys); timestamps further than
    /// `tolerance_seconds` from now are refused (the specification suggests five minutes).
    pub fn new<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        tolerance_seconds: i64,
    ) -> Result<Self, KeyError> {
        let mut parsed = Vec::new();
        for (index, key) in keys.into_iter().enumerate() {
            let index = index + 1;
            let key = key.trim();
            if let Some(secret) = key.strip_prefix("whsec_") {
                parsed.push(VerifyingKey::Hmac(hmac_key(index, secret)?));
            } else if let Some(public) = key.strip_prefix("whpk_") {
                let bytes = decode(index, public)?;
                if bytes.len() != 32 {
                    return Err(KeyError::Ed25519Length { index });
                }
                parsed.push(VerifyingKey::Ed25519(bytes));
            } else {
                return Err(KeyError::Format { index });
            }
        }
        if parsed.is_empty() {
            return Err(KeyError::None);
        }
        Ok(Self {
            keys: parsed,
            tolerance_seconds,
        })
    }

    /// Checks one delivery's headers (`None` when absent) and body against the keys, at `now`
    /// (Unix seconds).
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Refusal> {
        let (Some(id), Some(timestamp), Some(signatures)) = (id, timestamp, signatures) else {
            return Err(Refusal::Missing);
        };
        let seconds: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| Refusal::BadTimestamp)?;
        let skew = now - seconds;
        if skew.abs() > self.tolerance_seconds {
            return Err(Refusal::Stale(skew));
        }
        let content = signed_content(id, seconds, body);
        let mut matched = false;
        for signature in signatures.split_whitespace() {
            let Some((version, encoded)) = signature.split_once(',') else {
                continue;
            };
            let Ok(presented) = STANDARD.decode(encoded) else {
                continue;
            };
            for key in &self.keys {
                matched |= match (version, key) {
                    ("v1", VerifyingKey::Hmac(key)) => {
                        let expected = ring::hmac::sign(key, &content);
                        bool::from(expected.as_ref().ct_eq(&presented))
                    }
                    ("v1a", VerifyingKey::Ed25519(public)) => {
                        UnparsedPublicKey::new(&ED25519, public)
                            .verify(&content, &presented)
                            .is_ok()
                    }
                    _ => false,
                };
            }
        }
        if matched {
            Ok(())
        } else {
            Err(Refusal::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn seed_key(byte: u8) -> String {
        format!("whsk_{}", STANDARD.encode([byte; 32]))
    }

    #[test]
    fn the_specification_example_signs_and_verifies() {
        let signer = Signer::new([SECRET]).expect("valid");
        let headers = signer.headers(ID, TIMESTAMP, BODY);
        assert_eq!(headers[0], (ID_HEADER, ID.to_owned()));
        assert_eq!(headers[1], (TIMESTAMP_HEADER, TIMESTAMP.to_string()));
        assert_eq!(headers[2], (SIGNATURE_HEADER, SIGNATURE.to_owned()));
        let verifier = Verifier::new([SECRET], 300).expect("valid");
        assert_eq!(
            verifier.verify(
                Some(ID),
                Some("1614265330"),
                Some(SIGNATURE),
                BODY,
                TIMESTAMP + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_a_wrong_key_or_a_stale_timestamp_is_refused() {
        let verifier = Verifier::new([SECRET], 300).expect("valid");
        let check = |body: &[u8], now| {
            verifier.verify(Some(ID), Some("1614265330"), Some(SIGNATURE), body, now)
        };
        assert_eq!(
            check(br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(Refusal::Mismatch)
        );
        assert_eq!(check(BODY, TIMESTAMP + 301), Err(Refusal::Stale(301)));
        let other =
            Verifier::new(["whsec_c2VjcmV0LW9mLWFub3RoZXItc2VuZGVyLTEyMzQ="], 300).expect("valid");
        assert_eq!(
            other.verify(
                Some(ID),
                Some("1614265330"),
                Some(SIGNATURE),
                BODY,
                TIMESTAMP
            ),
            Err(Refusal::Mismatch)
        );
        assert_eq!(
            verifier.verify(None, Some("1"), Some(SIGNATURE), BODY, TIMESTAMP),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn ed25519_and_hmac_keys_sign_side_by_side_during_a_rotation() {
        let signer = Signer::new([SECRET, seed_key(7).as_str()]).expect("valid");
        let [_, _, (_, signatures)] = signer.headers(ID, TIMESTAMP, BODY);
        assert!(
            signatures.starts_with("v1,") && signatures.contains(" v1a,"),
            "{signatures}"
        );
        // A receiver that knows only the new Ed25519 key accepts the delivery ...
        let public = signer.public_keys();
        let new_only = Verifier::new(public.iter().map(String::as_str), 300).expect("valid");
        assert_eq!(
            new_only.verify(
                Some(ID),
                Some("1614265330"),
                Some(&signatures),
                BODY,
                TIMESTAMP
            ),
            Ok(())
        );
        // ... and one that knows another Ed25519 key does not.
        let stranger = Signer::new([seed_key(8).as_str()])
            .expect("valid")
            .public_keys();
        let wrong = Verifier::new(stranger.iter().map(String::as_str), 300).expect("valid");
        assert_eq!(
            wrong.verify(
                Some(ID),
                Some("1614265330"),
                Some(&signatures),
                BODY,
                TIMESTAMP
            ),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn malformed_keys_are_named_by_position() {
        assert_eq!(
            Signer::new(["secret"]).unwrap_err(),
            KeyError::Format { index: 1 }
        );
        assert_eq!(
            Signer::new([SECRET, "whsec_c2hvcnQ="]).unwrap_err(),
            KeyError::ShortSecret { index: 2 }
        );
        assert_eq!(
            Verifier::new(["whpk_AAAA"], 300).unwrap_err(),
            KeyError::Ed25519Length { index: 1 }
        );
        assert_eq!(Signer::new([]).unwrap_err(), KeyError::None);
    }
}
