//! Bearer tokens: the accepted set on a server, compared in constant time.

use subtle::ConstantTimeEq as _;

/// Tokens shorter than this are refused when the file is read: a guessable token is no lock.
pub const MIN_TOKEN_LENGTH: usize = 32;

/// The tokens a server accepts: one per line of its tokens file; blank lines and lines
/// starting with `#` are skipped. Several tokens let one be replaced without a gap.
#[derive(Clone)]
pub struct AcceptedTokens {
    tokens: Vec<Vec<u8>>,
}

impl std::fmt::Debug for AcceptedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AcceptedTokens({} tokens)", self.tokens.len())
    }
}

impl AcceptedTokens {
    /// Parses a tokens file's content; the error says which line is wrong, not what it holds.
    pub fn parse(content: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (index, line) in content.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < MIN_TOKEN_LENGTH {
                return Err(format!(
                    "line {} holds a token shorter than {MIN_TOKEN_LENGTH} characters",
                    index + 1
                ));
            }
            if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err(format!(
                    "line {} holds a token with spaces or non-ASCII characters",
                    index + 1
                ));
            }
            tokens.push(token.as_bytes().to_vec());
        }
        if tokens.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(Self { tokens })
    }

    /// Hands each token to `check` (start-up rules such as the production profile's); the
    /// first refusal is returned with the token's line number in the file.
    pub fn check_each(&self, check: impl Fn(&str) -> Result<(), String>) -> Result<(), String> {
        for (index, token) in self.tokens.iter().enumerate() {
            check(&String::from_utf8_lossy(token))
                .map_err(|reason| format!("token {} of the file: {reason}", index + 1))?;
        }
        Ok(())
    }

    /// Whether an `authorization` header value (`Bearer <token>`) carries an accepted token.
    /// Every accepted token is compared, so the time taken does not say which one is close.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else {
            return false;
        };
        self.tokens.iter().fold(false, |found, token| {
            found | bool::from(token.ct_eq(presented))
        })
    }
}

fn bearer(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| header[7..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn every_listed_token_is_accepted_and_nothing_else() {
        let tokens = AcceptedTokens::parse(&format!("# rotation: old, then new\n{A}\n\n{B}\n"))
            .expect("valid");
        assert!(tokens.accepts(Some(format!("Bearer {A}").as_bytes())));
        assert!(tokens.accepts(Some(format!("bearer {B}").as_bytes())));
        assert!(!tokens.accepts(Some(format!("Bearer {A}x").as_bytes())));
        assert!(!tokens.accepts(Some(A.as_bytes())));
        assert!(!tokens.accepts(Some(b"Basic dXNlcjpwYXNz")));
        assert!(!tokens.accepts(None));
    }

    #[test]
    fn short_or_missing_tokens_are_refused_by_line() {
        assert!(
            AcceptedTokens::parse("short\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(AcceptedTokens::parse("# nothing\n\n").is_err());
        let spaced = format!("{A} {B}\n");
        assert!(
            AcceptedTokens::parse(&spaced)
                .unwrap_err()
                .contains("spaces")
        );
        assert!(!format!("{:?}", AcceptedTokens::parse(A).unwrap()).contains(A));
    }
}
