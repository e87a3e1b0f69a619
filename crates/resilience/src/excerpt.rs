//! What an unsuccessful answer said, kept in the attempt record: an allow-listed set of the
//! response's headers and the first bytes of its body. Enough to read why an upstream refused
//! (a validation message, a `Location`, a rate-limit header, a request id to quote to its
//! operators) without reproducing the call. Request headers are never kept: they carry the
//! caller's credentials.

use http::HeaderMap;

/// Response headers worth keeping, lower-case. Everything else (cookies above all) is dropped.
const KEPT_HEADERS: [&str; 16] = [
    "content-type",
    "content-length",
    "location",
    "retry-after",
    "www-authenticate",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// Longest header value kept; a longer one is cut.
const MAX_HEADER_VALUE_BYTES: usize = 256;

/// The kept part of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseExcerpt {
    /// Allow-listed headers, names lower-case, each once (repeated values joined).
    pub headers: Vec<(String, String)>,
    /// The body's first bytes as text (invalid UTF-8 replaced).
    pub body: String,
    /// The body was longer than what is kept.
    pub body_truncated: bool,
}

impl ResponseExcerpt {
    /// Keeps the allow-listed headers and at most `body_limit` bytes of `body`.
    pub fn capture(headers: &HeaderMap, body: &[u8], body_limit: usize) -> Self {
        let mut kept: Vec<(String, String)> = Vec::new();
        for name in KEPT_HEADERS {
            // A repeated header is kept once, its values joined as HTTP allows, then cut.
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            let joined = values
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            kept.push((name.to_owned(), cut(joined, MAX_HEADER_VALUE_BYTES)));
        }
        Self {
            headers: kept,
            body: String::from_utf8_lossy(&body[..body.len().min(body_limit)]).into_owned(),
            body_truncated: body.len() > body_limit,
        }
    }

    /// The value of a kept header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(kept, _)| kept.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn to_proto(&self) -> relais_proto::v1::ResponseExcerpt {
        relais_proto::v1::ResponseExcerpt {
            headers: self
                .headers
                .iter()
                .map(|(name, value)| relais_proto::v1::HeaderValue {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body: self.body.clone(),
            body_truncated: self.body_truncated,
        }
    }
}

/// `text` cut to at most `limit` bytes on a character boundary.
fn cut(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderValue, LOCATION, SET_COOKIE};

    use super::*;

    #[test]
    fn keeps_the_allow_listed_headers_and_drops_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LOCATION,
            HeaderValue::from_static("https://elsewhere.example/x"),
        );
        headers.insert(SET_COOKIE, HeaderValue::from_static("session=secret"));
        headers.insert("x-request-id", HeaderValue::from_static("req-42"));
        let excerpt = ResponseExcerpt::capture(&headers, b"moved", 2048);
        assert_eq!(
            excerpt.header("Location"),
            Some("https://elsewhere.example/x")
        );
        assert_eq!(excerpt.header("x-request-id"), Some("req-42"));
        assert_eq!(excerpt.header("set-cookie"), None);
        assert_eq!(excerpt.headers.len(), 2);
        assert_eq!(excerpt.body, "moved");
        assert!(!excerpt.body_truncated);
        headers.append("x-request-id", HeaderValue::from_static("req-43"));
        let excerpt = ResponseExcerpt::capture(&headers, b"", 2048);
        assert_eq!(excerpt.header("x-request-id"), Some("req-42, req-43"));
    }

    #[test]
    fn the_body_and_long_values_are_cut_to_their_limits() {
        let mut headers = HeaderMap::new();
        let long = "a".repeat(1000);
        headers.insert("www-authenticate", HeaderValue::from_str(&long).unwrap());
        let body = "é".repeat(2000);
        let excerpt = ResponseExcerpt::capture(&headers, body.as_bytes(), 2047);
        assert_eq!(excerpt.headers[0].1.len(), MAX_HEADER_VALUE_BYTES);
        assert!(excerpt.body_truncated);
        // 1023 whole characters, then half of one, replaced.
        assert_eq!(excerpt.body.chars().count(), 1024);
        assert!(excerpt.body.ends_with('\u{FFFD}'));
        let none = ResponseExcerpt::capture(&HeaderMap::new(), b"body", 0);
        assert_eq!(none.body, "");
        assert!(none.body_truncated);
    }
}
