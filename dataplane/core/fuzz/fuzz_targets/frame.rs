//! Frame parsing never panics: on raw bytes (stopped by the MAC), and on bytes signed with the
//! right key (so the parser behind the MAC sees arbitrary headers, rows and entries).
#![no_main]

use conveyor_core::queue::Op;
use conveyor_core::wire::{sign_for_tests, Entry, Frame, Key, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::from_bytes([9; 32]);
    let _ = Frame::parse(&key, data);
    if data.len() >= HEADER_LEN {
        let signed = sign_for_tests(&key, data);
        if let Ok(f) = Frame::parse(&key, &signed) {
            for e in f.entries() {
                if let Entry::Data(p) = e {
                    let _ = Op::decode(p);
                }
            }
            let _ = f.row.to_owned();
        }
    }
    let _ = Op::decode(data);
});
