//! The stream-event decoder: an arbitrary DynamoDB stream record (Lambda event JSON) either
//! decodes or is refused as corrupt; it never panics.
#![no_main]

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use libfuzzer_sys::fuzz_target;
use opscore_dynamo::decode_stream_record;

fuzz_target!(|data: &[u8]| {
    // A whole batch, as Lambda delivers it, or a single record.
    if let Ok(batch) = serde_json::from_slice::<Event>(data) {
        for r in &batch.records {
            let _ = decode_stream_record(r);
        }
    } else if let Ok(r) = serde_json::from_slice::<EventRecord>(data) {
        let _ = decode_stream_record(&r);
    }
});
