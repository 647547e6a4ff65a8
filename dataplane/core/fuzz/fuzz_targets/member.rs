//! The protocol core never panics on any sequence of frames, valid or not: the input is split
//! into frames, each optionally re-signed with the group's key, and fed to a member.
#![no_main]

use conveyor_core::proto::{Member, ProtoConfig};
use conveyor_core::types::{GroupId, Instant, MemberId, View, ViewId};
use conveyor_core::wire::{sign_for_tests, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes([9; 32]);
    let view = View::new(ViewId(1), vec![MemberId(0), MemberId(1), MemberId(2)]);
    let cfg = ProtoConfig { window: 4, max_frame: 1500, max_payload: 200, ..ProtoConfig::default() };
    let Ok(mut m) = Member::new(cfg, key.clone(), GroupId(1), view, MemberId(0), 1, Instant(0)) else { return };
    let _ = m.submit(vec![1, 2, 3]);
    let mut t = 0u64;
    for chunk in data.split(|&b| b == 0xff) {
        t += 100;
        if chunk.first().is_some_and(|b| b & 1 == 1) {
            m.handle_frame(Instant(t), &sign_for_tests(&key, &chunk[1..]));
        } else {
            m.handle_frame(Instant(t), chunk);
        }
        m.handle_timeout(Instant(t));
        while m.poll_delivery().is_some() {}
        while let Some(x) = m.poll_transmit(Instant(t)) {
            m.recycle(x.frame);
        }
    }
});
