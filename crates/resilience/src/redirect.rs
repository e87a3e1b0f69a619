//! Which redirects the delivery client follows.
//!
//! A delivery is a POST with a body and an `Idempotency-Key`. Following a 301, 302 or 303 turns
//! it into a GET without the body, whose 200 would read as delivered although the event reached
//! no one; following a 307 or 308 elsewhere sends the event and its key to whatever host the
//! answer names. So by default nothing is followed and the 3xx is the upstream's final answer;
//! an upstream may opt in to 307/308 within its own origin.

use reqwest::Url;

use crate::policy::RedirectPolicy;

/// Most redirects followed in one attempt under [`RedirectPolicy::SameOrigin`].
const MAX_HOPS: usize = 5;

/// The reqwest redirect policy for an upstream's setting.
pub(crate) fn client_policy(policy: RedirectPolicy) -> reqwest::redirect::Policy {
    match policy {
        RedirectPolicy::None => reqwest::redirect::Policy::none(),
        RedirectPolicy::SameOrigin => reqwest::redirect::Policy::custom(|attempt| {
            // `previous` starts with the URL the delivery was sent to.
            let follow =
                follows_same_origin(attempt.status().as_u16(), attempt.previous(), attempt.url());
            if follow {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }),
    }
}

/// True when a redirect answered with `status` towards `next` keeps the method, the body and
/// the origin of the first request, within the hop limit.
fn follows_same_origin(status: u16, previous: &[Url], next: &Url) -> bool {
    matches!(status, 307 | 308)
        && previous.len() <= MAX_HOPS
        && previous
            .first()
            .is_some_and(|first| first.origin() == next.origin())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn only_307_and_308_within_the_origin_are_followed() {
        let first = [url("http://api.example/events")];
        let same = url("http://api.example/v2/events");
        assert!(follows_same_origin(307, &first, &same));
        assert!(follows_same_origin(308, &first, &same));
        for status in [300, 301, 302, 303, 304, 305] {
            assert!(!follows_same_origin(status, &first, &same), "{status}");
        }
        for elsewhere in [
            "http://other.example/events",
            "https://api.example/events",
            "http://api.example:8080/events",
        ] {
            assert!(
                !follows_same_origin(307, &first, &url(elsewhere)),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn a_chain_stops_at_the_hop_limit() {
        let chain: Vec<Url> = (0..=MAX_HOPS)
            .map(|hop| url(&format!("http://api.example/{hop}")))
            .collect();
        let next = url("http://api.example/next");
        assert!(follows_same_origin(307, &chain[..MAX_HOPS], &next));
        assert!(!follows_same_origin(307, &chain, &next));
    }
}
