//! Authentication: bearer keys for the state API, HMAC signatures for the AgentKit webhook.
//! Both compare in constant time and both fail closed when nothing is configured.

use crate::error::HttpError;
use hmac::{Hmac, Mac};
use opscore_core::config::Secret;
use opscore_core::time::Timestamp;
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Checks `Authorization: Bearer <key>` (scheme case-insensitive) against every configured key.
pub fn check_bearer(header: Option<&str>, keys: &[Secret]) -> Result<(), HttpError> {
    if keys.is_empty() {
        tracing::error!(
            "no API key configured (OPSCORE_API_KEY, or the secret OPSCORE_API_KEY_SECRET_ID is unreadable or empty): refusing every authenticated request (fail closed)"
        );
        return Err(HttpError::NotConfigured(
            "this server has no API key configured; it refuses all requests".into(),
        ));
    }
    let header = header
        .ok_or_else(|| HttpError::Unauthorized("missing Authorization header (expected: Bearer <key>)".into()))?;
    let (scheme, key) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| HttpError::Unauthorized("malformed Authorization header (expected: Bearer <key>)".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(HttpError::Unauthorized(
            "unsupported authorization scheme (expected: Bearer)".into(),
        ));
    }
    let key = key.trim().as_bytes();
    // Check every key, not the first match, so timing does not reveal which key matched.
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        let k = k.expose().as_bytes();
        if k.len() == key.len() {
            ok |= k.ct_eq(key);
        }
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(HttpError::Unauthorized("invalid API key".into()))
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Lower-case hex HMAC-SHA256(secret, timestamp + "." + body), as AgentKit computes it.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies an AgentKit delivery: freshness of `X-AgentKit-Timestamp` (±`tolerance` around
/// `now`), then the signature over the raw body against every configured secret (rotation).
pub fn verify_webhook(
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    now: Timestamp,
    tolerance: Duration,
) -> Result<(), HttpError> {
    if secrets.is_empty() {
        tracing::error!(
            "no webhook secret configured (OPSCORE_WEBHOOK_SECRET, or the secret OPSCORE_WEBHOOK_SECRET_ID is unreadable or empty): refusing every webhook delivery (fail closed)"
        );
        return Err(HttpError::NotConfigured(
            "this webhook has no secret configured; it refuses all deliveries".into(),
        ));
    }
    let signature = signature.map(str::trim).filter(|s| !s.is_empty());
    let signature = signature.ok_or_else(|| HttpError::Unauthorized("missing X-AgentKit-Signature header".into()))?;
    let timestamp = timestamp.map(str::trim).filter(|s| !s.is_empty());
    let timestamp = timestamp.ok_or_else(|| HttpError::Unauthorized("missing X-AgentKit-Timestamp header".into()))?;
    let sent = parse_webhook_timestamp(timestamp)
        .ok_or_else(|| HttpError::Unauthorized("malformed X-AgentKit-Timestamp (expected Unix seconds)".into()))?;
    let skew = (now - sent).num_milliseconds().unsigned_abs();
    if u128::from(skew) > tolerance.as_millis() {
        return Err(HttpError::Unauthorized(format!(
            "X-AgentKit-Timestamp is {} s away from the server clock; at most {} s are accepted",
            skew / 1000,
            tolerance.as_secs()
        )));
    }
    let given = match hex::decode(signature) {
        Ok(b) if b.len() == 32 => b,
        _ => {
            return Err(HttpError::Unauthorized(
                "malformed X-AgentKit-Signature (expected 64 hex characters)".into(),
            ));
        }
    };
    let mut ok = false;
    for s in secrets {
        let mut mac = HmacSha256::new_from_slice(s.expose().as_bytes()).expect("HMAC takes any key length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        // verify_slice compares in constant time.
        ok |= mac.verify_slice(&given).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(HttpError::Unauthorized("signature does not match".into()))
    }
}

/// AgentKit sends Unix seconds; its docs say ISO-8601. Accept both (the signature covers the
/// header text either way).
pub fn parse_webhook_timestamp(s: &str) -> Option<Timestamp> {
    if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 12 {
        return chrono::DateTime::from_timestamp(s.parse().ok()?, 0);
    }
    opscore_core::time::parse_rfc3339(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<Secret> {
        k.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_keys_rotate() {
        let ks = keys(&["old-key", "new-key"]);
        assert!(check_bearer(Some("Bearer new-key"), &ks).is_ok());
        assert!(check_bearer(Some("bearer old-key"), &ks).is_ok());
        assert!(check_bearer(Some("BEARER  old-key "), &ks).is_ok());
        assert!(matches!(
            check_bearer(Some("Bearer nope"), &ks),
            Err(HttpError::Unauthorized(_))
        ));
        assert!(matches!(
            check_bearer(Some("Basic old-key"), &ks),
            Err(HttpError::Unauthorized(_))
        ));
        assert!(matches!(
            check_bearer(Some("old-key"), &ks),
            Err(HttpError::Unauthorized(_))
        ));
        assert!(matches!(check_bearer(None, &ks), Err(HttpError::Unauthorized(_))));
        assert!(matches!(
            check_bearer(Some("Bearer x"), &[]),
            Err(HttpError::NotConfigured(_))
        ));
    }

    #[test]
    fn webhook_window_and_rotation() {
        let now = chrono::DateTime::from_timestamp(1_795_474_230, 0).unwrap();
        let body = br#"{"event_type":"REGISTER"}"#;
        let sig = sign("s2", "1795474230", body);
        let tol = Duration::from_secs(300);
        assert!(verify_webhook(Some(&sig), Some("1795474230"), body, &keys(&["s1", "s2"]), now, tol).is_ok());
        assert!(
            verify_webhook(
                Some(&sig.to_uppercase()),
                Some("1795474230"),
                body,
                &keys(&["s2"]),
                now,
                tol
            )
            .is_ok()
        );
        let bad = |sig: Option<&str>, ts: Option<&str>| verify_webhook(sig, ts, body, &keys(&["s2"]), now, tol);
        assert!(bad(Some(&sig[..63]), Some("1795474230")).is_err());
        assert!(bad(Some(""), Some("1795474230")).is_err());
        assert!(bad(None, Some("1795474230")).is_err());
        assert!(bad(Some(&sig), None).is_err());
        assert!(bad(Some(&sig), Some("abc")).is_err());
        // The signature binds the timestamp: changing it breaks the signature.
        assert!(bad(Some(&sig), Some("1795474231")).is_err());
        let skewed = |secs: i64| {
            let ts = (1_795_474_230 + secs).to_string();
            verify_webhook(Some(&sign("s2", &ts, body)), Some(&ts), body, &keys(&["s2"]), now, tol)
        };
        assert!(skewed(299).is_ok());
        assert!(skewed(-299).is_ok());
        assert!(skewed(301).is_err());
        assert!(skewed(-301).is_err());
        assert!(matches!(
            verify_webhook(Some(&sig), Some("1795474230"), body, &[], now, tol),
            Err(HttpError::NotConfigured(_))
        ));
    }
}
