//! Continue tokens: the opaque `metadata.continue` string of a list page, and reading it back.
//!
//! Owns: the token's format, base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`, the
//! shape of k8s.io/apiserver/pkg/storage/continue.go `continueToken` (`EncodeContinue`,
//! `DecodeContinue`), and the 400 for a token that is not one of ours. Leaves paging itself (where
//! a page starts and ends, `remainingItemCount`) and the 410 for a token older than the history
//! kept to `list.rs`, and that history to `watch_cache.rs`.
//!
//! Upstream encodes with `base64.RawURLEncoding`; the test bed has always written padded standard
//! base64 and reads both with and without padding. Clients treat the token as opaque and send it
//! back as they got it, so the difference is not visible to them.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Value, json};

use super::ApiError;
use crate::validate::bad_request;

/// The 410 of a list continuing from a compacted revision (storage.ErrResourceExpired wording).
pub(super) const EXPIRED_MSG: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// The `apiVersion` a token carries (continueToken.APIVersion).
const TOKEN_VERSION: &str = "meta.k8s.io/v1";

/// The token of the page after `last_key`, served at resourceVersion `rv` (the first page's).
pub(super) fn encode(rv: u64, last_key: &str) -> String {
    let tok = json!({"v": TOKEN_VERSION, "rv": rv, "start": format!("{last_key}\u{0}")});
    encode_bytes(tok.to_string().as_bytes())
}

/// The resourceVersion and start key (with its trailing NUL) a token carries.
///
/// # Errors
/// 400 BadRequest (`continue key is not valid: "<token>"`) for a token that is not base64, not
/// JSON, or not of version meta.k8s.io/v1 with a numeric `rv` and a string `start`.
pub(super) fn decode(tok: &str) -> Result<(u64, String), ApiError> {
    let bad = || bad_request(format!("continue key is not valid: {tok:?}"));
    let raw = decode_bytes(tok).ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v["v"] != TOKEN_VERSION {
        return Err(bad());
    }
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, start))
}

/// Padded standard base64 on the way out; on the way in, padding is optional and the bits past
/// the last whole byte are ignored (what the test bed's own decoder accepted before it used the
/// crate; `continue_tokens::tests` pins both directions).
const TOKEN_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn encode_bytes(data: &[u8]) -> String {
    TOKEN_BASE64.encode(data)
}

/// None for anything that is not base64 (a character outside the alphabet, a bad length).
fn decode_bytes(s: &str) -> Option<Vec<u8>> {
    TOKEN_BASE64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_written_as_standard_base64_with_padding() {
        assert_eq!(encode_bytes(br#"{"rv":7}"#), "eyJydiI6N30=");
        assert_eq!(encode_bytes(br#"{"rv":17}"#), "eyJydiI6MTd9");
        assert_eq!(encode_bytes(br#"{"rv":170}"#), "eyJydiI6MTcwfQ==");
        // The standard alphabet, not the URL-safe one.
        assert_eq!(encode_bytes(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn bytes_are_read_with_or_without_padding_and_trailing_bits_are_ignored() {
        assert_eq!(decode_bytes("eyJydiI6N30=").unwrap(), br#"{"rv":7}"#);
        assert_eq!(decode_bytes("eyJydiI6N30").unwrap(), br#"{"rv":7}"#);
        assert_eq!(decode_bytes("eyJydiI6MTcwfQ").unwrap(), br#"{"rv":170}"#);
        // "1" differs from "0" only in the two bits past the last whole byte.
        assert_eq!(decode_bytes("eyJydiI6N31=").unwrap(), br#"{"rv":7}"#);
        assert_eq!(decode_bytes("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    // matches: k8s.io/apiserver/pkg/storage/continue.go continueToken
    #[test]
    fn a_token_is_base64_of_the_upstream_json_shape() {
        let tok = encode(42, "default/a");
        let v: Value = serde_json::from_slice(&decode_bytes(&tok).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"v": "meta.k8s.io/v1", "rv": 42, "start": "default/a\u{0}"})
        );
    }

    #[test]
    fn a_token_gives_back_its_resource_version_and_start_key() {
        for key in ["default/a", "kube-system/x.y-z", "node-1", "ns/ünïcode"] {
            assert_eq!(decode(&encode(7, key)).unwrap(), (7, format!("{key}\u{0}")));
        }
    }

    #[test]
    fn a_token_that_is_not_ours_is_a_bad_request_naming_it() {
        let foreign = [
            "not base64!".to_string(),
            encode_bytes(b"not json"),
            encode_bytes(br#"{"v":"meta.k8s.io/v2","rv":1,"start":"a\u0000"}"#),
            encode_bytes(br#"{"v":"meta.k8s.io/v1","start":"a\u0000"}"#),
            encode_bytes(br#"{"v":"meta.k8s.io/v1","rv":1}"#),
        ];
        for tok in foreign {
            let e = decode(&tok).unwrap_err();
            assert_eq!(e.code, 400, "{tok}");
            assert_eq!(e.reason, "BadRequest");
            assert_eq!(e.message, format!("continue key is not valid: {tok:?}"));
        }
    }
}
