//! The rdma transport over the emulated verbs: layout, rings and credits, links.

use super::*;

/// Every ring slot, status row and staging cell of a region is inside it, and none
/// overlaps another.
#[test]
fn the_layout_places_everything_apart_inside_the_region() {
    for members in 1..5 {
        for max_frame in [1, 57, 1400, 2000] {
            let l = Layout::new(members, max_frame);
            assert!(l.slot >= SLOT_HEADER + max_frame && l.slot.is_multiple_of(CELL));
            let mut spans: Vec<(usize, usize)> = Vec::new();
            for p in 0..members {
                for k in 0..SLOTS as u64 {
                    spans.push((l.recv_slot(p, k), l.slot));
                    spans.push((l.send_slot(p, k), l.slot));
                }
                spans.push((l.status(p), 8));
                spans.push((l.credit(p), 8));
                // Slot numbers wrap around the ring.
                assert_eq!(l.recv_slot(p, SLOTS as u64 + 3), l.recv_slot(p, 3));
            }
            spans.sort();
            for w in spans.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{members} {max_frame}: {w:?}");
            }
            let last = spans.last().unwrap();
            assert!(last.0 + last.1 <= l.region_len());
            assert!(spans.iter().all(|s| s.0 % 8 == 0));
        }
    }
}
