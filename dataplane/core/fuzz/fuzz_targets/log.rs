//! Reading a log segment or a snapshot back never panics, whatever the bytes after a valid
//! header (the scan's torn-tail and corruption logic sees arbitrary records), and whatever the
//! bytes of the whole file.
#![no_main]

use conveyor_core::durable::log::{scan, SegmentHeader};
use conveyor_core::durable::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scan(data, 0xC0);
    let _ = snapshot::parse(data, 0xC0);
    let mut b = SegmentHeader { group: 0xC0, first: 0 }.encode().to_vec();
    b.extend_from_slice(data);
    if let Ok(s) = scan(&b, 0xC0) {
        assert!(s.valid_len <= b.len());
        for w in s.records.windows(2) {
            assert_eq!(w[0].position + 1, w[1].position);
        }
    }
});
