//! MLS message processing on hostile bytes: never a panic, and a refused message leaves the group as it was (same
//! epoch, same roster, still able to send).
#![no_main]

use cloister_e2ee::group::{ClientIdentity, ExternalSenderIdentity, Provider, SessionGroup};
use cloister_e2ee::message::AppMessage;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static GROUP: RefCell<(Provider, SessionGroup)> = RefCell::new({
        let provider = Provider::default();
        let ds = ExternalSenderIdentity::generate().expect("ds key");
        let id = ClientIdentity::generate(&provider, "teacher", "d1").expect("identity");
        let group = SessionGroup::create(&provider, id, b"fuzz", ds.external_sender(), &[], 1_000, 0).expect("group");
        (provider, group)
    });
}

fuzz_target!(|data: &[u8]| {
    GROUP.with(|g| {
        let (provider, group) = &mut *g.borrow_mut();
        let before = (group.epoch(), group.epoch_info().roster);
        if group.process(provider, data, 1).is_err() {
            assert_eq!((group.epoch(), group.epoch_info().roster), before, "a refused message changed the group");
        }
        group.send(provider, &AppMessage::Chat { text: "still here".into() }).expect("the group still sends");
    });
});
