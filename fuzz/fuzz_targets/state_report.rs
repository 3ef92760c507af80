//! The state-report parser (`POST /v1/opscore/agent/{agentId}/state` body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opscore_core::ids::AgentId;
use opscore_http::state::parse_state_report;

fuzz_target!(|data: &[u8]| {
    let path_id = AgentId::parse("af8e59ab-6b62-47d1-b0af-fcb520de8640").unwrap();
    match parse_state_report(&path_id, data) {
        Ok(report) => {
            assert_eq!(report.agent_id, path_id, "an accepted report names the path's agent");
            // The ordering key agrees with timestamp order, also against the far ends (issue 13).
            use opscore_core::time::{Timestamp, order_key};
            let k = order_key(report.timestamp);
            assert!(order_key(Timestamp::MIN_UTC) <= k && k <= order_key(Timestamp::MAX_UTC));
            let epoch = Timestamp::UNIX_EPOCH;
            assert_eq!(k.cmp(&order_key(epoch)), report.timestamp.cmp(&epoch));
            // The clock-skew check refuses with a client error or accepts; never panics.
            let now = chrono::DateTime::from_timestamp(1_795_474_230, 0).unwrap();
            if let Err(e) = opscore_http::state::check_report_clock(&report, now, std::time::Duration::from_secs(300)) {
                assert_eq!(e.status().as_u16(), 422, "{e:?}");
                assert!(report.timestamp > now);
            }
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{e:?}");
            let _ = e.to_parts();
        }
    }
});
