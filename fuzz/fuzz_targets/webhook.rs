//! The AgentKit webhook: signature + freshness verification, then the payload parser.
//!
//! Input: first byte picks the mode. Even: the rest is a body, signed correctly (so the parser is
//! reached the way a real delivery reaches it, and a correct signature must always verify). Odd:
//! the rest is `signature \n timestamp \n body`, all attacker-chosen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opscore_core::config::Secret;
use opscore_http::auth::{sign, verify_webhook};
use opscore_core::delivery::AgentKitEvent;
use opscore_http::webhook::parse_event;
use std::time::Duration;

const NOW: i64 = 1_795_474_230;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secrets = [Secret::new("opscore-test-secret-2026"), Secret::new("rotated")];
    let now = chrono::DateTime::from_timestamp(NOW, 0).unwrap();
    let tol = Duration::from_secs(300);
    let body: &[u8];
    if mode % 2 == 0 {
        body = rest;
        let ts = (NOW + i64::from(mode / 2) - 64).to_string();
        let sig = sign("rotated", &ts, body);
        verify_webhook(Some(&sig), Some(&ts), body, &secrets, now, tol).expect("a correct signature verifies");
        // One flipped hex digit never verifies.
        let mut bad = sig.into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(verify_webhook(Some(&bad), Some(&ts), body, &secrets, now, tol).is_err());
    } else {
        let mut parts = rest.splitn(3, |b| *b == b'\n');
        let sig = parts.next().map(String::from_utf8_lossy);
        let ts = parts.next().map(String::from_utf8_lossy);
        body = parts.next().unwrap_or(&[]);
        if let Err(e) = verify_webhook(sig.as_deref(), ts.as_deref(), body, &secrets, now, tol) {
            assert!(e.status().is_client_error(), "{e:?}");
        }
        // Fail closed: with no secret nothing verifies.
        assert!(verify_webhook(sig.as_deref(), ts.as_deref(), body, &[], now, tol).is_err());
    }
    match parse_event(body) {
        Ok(AgentKitEvent::Register(d)) => {
            // No accepted agent id is a path segment of its own (issue 13).
            assert!(!matches!(d.agent_id.as_str(), "." | ".."), "{:?}", d.agent_id);
            // What was accepted serialises (it is stored as JSON).
            serde_json::to_vec(&d).expect("details serialise");
        }
        Ok(AgentKitEvent::Deregister(_)) => {}
        Err(e) => {
            assert!(e.status().is_client_error(), "{e:?}");
            let _ = e.to_parts();
        }
    }
});
