//! Parsing requests never panics, takes no more bytes than it was given, and a stream of
//! requests parses the same whole as cut anywhere in two (as a socket delivers it).
#![no_main]

use conveyor_resp::{parse, Limits, Parsed};
use libfuzzer_sys::fuzz_target;

fn all(buf: &[u8], limits: &Limits) -> Vec<Result<Parsed, String>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse(&buf[at..], limits) {
            Ok(Parsed::Request(w, n)) => {
                assert!(n > 0 && at + n <= buf.len());
                at += n;
                out.push(Ok(Parsed::Request(w, n)));
            }
            Ok(Parsed::Skip(n)) => {
                assert!(n > 0 && at + n <= buf.len());
                at += n;
            }
            Ok(Parsed::Incomplete) => break,
            Err(e) => {
                out.push(Err(e.0));
                break;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_args: 64,
        max_bulk: 256,
        max_inline: 128,
    };
    let whole = all(data, &limits);
    // Fed in two pieces, the first requests come out the same.
    let cut = data.len() / 2;
    let first = all(&data[..cut], &limits);
    for (a, b) in first.iter().zip(&whole) {
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b);
        }
    }
});
