//! The protocol core alone under random loss, in virtual time: how fast ordering keeps up when
//! every frame to every peer is lost with probability LOSS (and duplicated with DUP), with no
//! operating system, scheduler or transport in the way. A tool to find and measure why loss
//! recovery falls behind (issue 19), not a test.
//!
//!   cargo run --release -p conveyor-testbed --bin proto-loss -- [LOSS] [DUP] [RATE] [SECONDS] [SEED]
//!
//! Three members (as the bench's trigger and two invokers): member 0 submits RATE messages a
//! second, the two others RATE*3/2 between them (completions of a chain of 3). Links take 30 to
//! 50 us. Prints the ordering latency (submit to delivery at the sender), what was delivered,
//! and the loss-recovery counters. PROTO_RTO_US and PROTO_STATUS_US override the retransmission
//! timeout's floor and the status period (microseconds).

use conveyor_core::proto::{Delivered, Dest, Member, ProtoConfig};
use conveyor_core::types::{GroupId, Instant, MemberId, View, ViewId};
use conveyor_core::wire::Key;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;

/// Frames in flight: (arrival time, tie-breaker, destination, bytes), earliest first.
type InFlight = BinaryHeap<Reverse<(u64, u64, usize, Vec<u8>)>>;

fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let loss: f64 = arg(1, 0.2);
    let dup: f64 = arg(2, 0.1);
    let rate: f64 = arg(3, 500.0);
    let seconds: f64 = arg(4, 10.0);
    let seed: u64 = arg(5, 1);
    let n = 3usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let view = View::new(ViewId(1), (0..n as u16).map(MemberId).collect());
    let d = ProtoConfig::default();
    let us = |name: &str, default: std::time::Duration| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(default, std::time::Duration::from_micros)
    };
    // PROTO_RTO_US and PROTO_STATUS_US override the retransmission floor and status period.
    let cfg = ProtoConfig {
        max_frame: 1472,
        max_payload: 1024,
        rto: us("PROTO_RTO_US", d.rto),
        status_interval: us("PROTO_STATUS_US", d.status_interval),
        ..d
    };
    let mut ms: Vec<Member> = (0..n)
        .map(|i| {
            Member::new(
                cfg.clone(),
                Key::from_bytes([7; 32]),
                GroupId(1),
                view.clone(),
                MemberId(i as u16),
                100 + i as u64,
                Instant(0),
            )
            .expect("config")
        })
        .collect();
    // Per member: the gap between its submissions, and what waits for window room.
    let gaps: Vec<f64> = (0..n)
        .map(|i| {
            if i == 0 {
                1e6 / rate
            } else {
                1e6 / (rate * 1.5 / (n - 1) as f64)
            }
        })
        .collect();
    let mut next_submit: Vec<f64> = gaps.iter().map(|g| g * 0.5).collect();
    let mut waiting: Vec<VecDeque<u64>> = vec![VecDeque::new(); n];
    let end = (seconds * 1e6) as u64;
    let mut frames: InFlight = BinaryHeap::new();
    let mut seq = 0u64;
    let mut now = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    let (mut submitted, mut delivered_own) = (0u64, 0u64);
    let mut views = 0u64;
    loop {
        let t_frame = frames.peek().map_or(u64::MAX, |Reverse((t, ..))| *t);
        let t_timer = ms
            .iter()
            .map(|m| m.poll_timeout().as_micros())
            .min()
            .unwrap_or(u64::MAX);
        let t_submit = next_submit
            .iter()
            .map(|t| *t as u64)
            .min()
            .filter(|t| *t < end)
            .unwrap_or(u64::MAX);
        let t = t_frame.min(t_timer).min(t_submit);
        if t == u64::MAX || t > end + 5_000_000 {
            break;
        }
        now = now.max(t);
        let at = Instant::from_micros(now);
        if t == t_frame {
            let Some(Reverse((_, _, to, frame))) = frames.pop() else {
                break;
            };
            ms[to].handle_frame(at, &frame);
        } else if t == t_timer {
            for m in ms.iter_mut() {
                if m.poll_timeout() <= at {
                    m.handle_timeout(at);
                }
            }
        } else {
            for i in 0..n {
                if next_submit[i] as u64 <= now {
                    waiting[i].push_back(now);
                    next_submit[i] += gaps[i];
                    submitted += 1;
                }
            }
        }
        for (i, m) in ms.iter_mut().enumerate() {
            while let Some(&t0) = waiting[i].front() {
                let mut p = vec![0u8; 64];
                p[..8].copy_from_slice(&t0.to_le_bytes());
                if m.submit(p).is_err() {
                    break;
                }
                waiting[i].pop_front();
            }
            while let Some(tx) = m.poll_transmit(at) {
                let dests: Vec<usize> = match tx.dest {
                    Dest::All => (0..n).filter(|&j| j != i).collect(),
                    Dest::One(x) => vec![x.0 as usize],
                };
                for j in dests {
                    let copies = if rng.gen_bool(loss) {
                        0
                    } else if rng.gen_bool(dup) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        seq += 1;
                        let delay = 30 + rng.gen_range(0..20);
                        frames.push(Reverse((now + delay, seq, j, tx.frame.clone())));
                    }
                }
                m.recycle(tx.frame);
            }
            while let Some(d) = m.poll_delivery() {
                match d {
                    Delivered::Message(d) if d.sender == MemberId(i as u16) => {
                        let t0 = u64::from_le_bytes(d.payload[..8].try_into().unwrap_or([0; 8]));
                        lat.push(now - t0);
                        delivered_own += 1;
                    }
                    Delivered::View(_) => views += 1,
                    _ => {}
                }
            }
        }
        if now > end && waiting.iter().all(VecDeque::is_empty) && delivered_own == submitted {
            break;
        }
    }
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mut out = std::io::stdout().lock();
    // Write errors (a closed pipe) end the report quietly.
    let _ = writeln!(
        out,
        "loss {loss} dup {dup} rate {rate}/s for {seconds} s: submitted {submitted}, delivered {delivered_own} by {:.2} s; ordering latency us p50 {} p90 {} p99 {} max {}; view changes {views}",
        now as f64 / 1e6,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(0)
    );
    for (i, m) in ms.iter().enumerate() {
        let s = m.stats();
        let _ = writeln!(
            out,
            "m{i}: frames out {} (status {}), retransmitted {} frames / {} slots, fast {}, duplicates in {}, beyond window {}, window full {}, nulls {}, suspicions {}",
            s.frames_out,
            s.status_frames,
            s.retransmitted_frames,
            s.retransmitted_slots,
            s.fast_retransmits,
            s.duplicate_slots,
            s.beyond_window_slots,
            s.window_full,
            s.nulls_sent,
            s.suspicions
        );
    }
}
