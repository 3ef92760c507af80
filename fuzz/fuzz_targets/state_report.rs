//! The state-report parser (`POST /v1/opscore/agent/{agentId}/state` body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opscore_core::ids::AgentId;
use opscore_http::api::parse_state_report;

fuzz_target!(|data: &[u8]| {
    let path_id = AgentId::parse("af8e59ab-6b62-47d1-b0af-fcb520de8640").unwrap();
    match parse_state_report(&path_id, data) {
        Ok(report) => {
            assert_eq!(report.agent_id, path_id, "an accepted report names the path's agent");
            // The ordering key of an accepted report must be computable.
            let _ = opscore_core::time::to_nanos(report.timestamp);
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{e:?}");
            let _ = e.into_response();
        }
    }
});
