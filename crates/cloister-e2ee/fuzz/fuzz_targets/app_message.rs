//! Application-message decoding on hostile bytes: never a panic, and whatever decodes re-encodes to a message that
//! decodes to the same value.
#![no_main]

use cloister_e2ee::message::AppMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = AppMessage::decode(data) {
        let again = AppMessage::decode(&message.encode()).expect("our own encoding decodes");
        assert_eq!(again, message);
    }
});
