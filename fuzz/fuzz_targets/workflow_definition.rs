//! The workflow-definition parser, JSON and YAML. An accepted definition must survive a round
//! trip: serialised to JSON (as it is stored) and parsed again, it is accepted and equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opscore_core::workflow::{Format, WorkflowDefinition};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let format = if mode % 2 == 0 { Format::Json } else { Format::Yaml };
    match WorkflowDefinition::parse(body, format) {
        Ok(def) => {
            assert!(def.validate().is_empty());
            let json = serde_json::to_vec(&def).expect("serialises");
            let again = WorkflowDefinition::parse(&json, Format::Json)
                .unwrap_or_else(|p| panic!("stored form re-parses: {p:?}\n{}", String::from_utf8_lossy(&json)));
            assert!(def.same_content(&again), "round trip changes the definition");
            let _ = def.entry();
        }
        Err(problems) => assert!(!problems.is_empty(), "a refusal names at least one problem"),
    }
});
