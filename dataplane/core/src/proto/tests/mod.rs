//! Unit tests of the protocol core: small networks of members driven step by step. Here the
//! helpers and ordering; loss recovery, view changes and joins (with state transfer and
//! leaves) in their own files.

mod joins;
mod loss;
mod views;

use super::membership::{Ballot, Ctl};
use super::*;
use crate::types::{GroupId, Instant, MemberId, Seq, View, ViewId};
use crate::wire::{Key, Kind};
use core::time::Duration;
fn view(n: u16) -> View {
    View::new(crate::types::ViewId(1), (0..n).map(MemberId).collect())
}

fn member(n: u16, me: u16, cfg: ProtoConfig) -> Member {
    member_of_run(n, me, cfg, 1)
}

/// A member of run `run` of the group (same key, same group, another process).
fn member_of_run(n: u16, me: u16, cfg: ProtoConfig, run: u64) -> Member {
    Member::new(
        cfg,
        Key::from_bytes([1; 32]),
        GroupId(3),
        view(n),
        MemberId(me),
        (run << 8) + u64::from(me),
        Instant(0),
    )
    .unwrap()
}

fn msgs(m: &mut Member) -> Vec<Delivery> {
    std::iter::from_fn(|| m.poll_delivery())
        .filter_map(|d| match d {
            Delivered::Message(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// A tiny network for membership tests: members by id, some of them down, time advanced
/// by steps; every frame between two live members arrives at the next step.
struct Net {
    ms: Vec<Member>,
    down: Vec<bool>,
    now: u64,
    out: Vec<Vec<Delivered>>,
    /// Every frame sent, once it is `Some`.
    tape: Option<Vec<Vec<u8>>>,
    /// Control frames of more than 600 bytes (state chunks) to this index are lost.
    starve: Option<usize>,
}

impl Net {
    fn new(n: u16, cfg: ProtoConfig) -> Net {
        Net {
            ms: (0..n).map(|i| member(n, i, cfg.clone())).collect(),
            down: vec![false; n as usize],
            now: 0,
            out: vec![Vec::new(); n as usize],
            tape: None,
            starve: None,
        }
    }
    fn step(&mut self, us: u64) {
        self.now += us;
        let now = Instant(self.now);
        let mut frames = Vec::new();
        for (i, m) in self.ms.iter_mut().enumerate() {
            if self.down[i] {
                continue;
            }
            if now >= m.poll_timeout() {
                m.handle_timeout(now);
            }
            while let Some(t) = m.poll_transmit(now) {
                frames.push((i, t));
            }
        }
        for (from, t) in frames {
            if let Some(tape) = &mut self.tape {
                tape.push(t.frame.clone());
            }
            let dests: Vec<usize> = match t.dest {
                Dest::All => self.ms[from]
                    .view()
                    .members
                    .iter()
                    .map(|m| m.0 as usize)
                    .filter(|&j| j != from)
                    .collect(),
                Dest::One(x) => vec![x.0 as usize],
            };
            // As the transports do: a frame larger than max_frame + 64 does not arrive.
            let limit = self.ms[from].config().max_frame + 64;
            for j in dests {
                if self.starve == Some(j) && t.frame.len() > 600 && t.frame[3] == 3 {
                    continue;
                }
                if j < self.ms.len() && !self.down[j] && t.frame.len() <= limit {
                    self.ms[j].handle_frame(now, &t.frame);
                }
            }
        }
        for (i, m) in self.ms.iter_mut().enumerate() {
            while let Some(d) = m.poll_delivery() {
                self.out[i].push(d);
            }
        }
    }
    /// Adds a member (a joiner) at the next index.
    fn add(&mut self, m: Member) {
        self.ms.push(m);
        self.down.push(false);
        self.out.push(Vec::new());
    }
    fn run(&mut self, total_us: u64) {
        for _ in 0..total_us / 500 {
            self.step(500);
        }
    }
    fn payloads(&self, i: usize) -> Vec<Vec<u8>> {
        self.out[i]
            .iter()
            .filter_map(|d| match d {
                Delivered::Message(d) => Some(d.payload.clone()),
                _ => None,
            })
            .collect()
    }
    fn views(&self, i: usize) -> Vec<ViewChange> {
        self.out[i]
            .iter()
            .filter_map(|d| match d {
                Delivered::View(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Moves every pending frame between members, `rounds` times.
fn pump(ms: &mut [Member], now: u64, rounds: usize) {
    for _ in 0..rounds {
        let mut frames = Vec::new();
        for (i, m) in ms.iter_mut().enumerate() {
            while let Some(t) = m.poll_transmit(Instant(now)) {
                frames.push((i, t));
            }
        }
        for (from, t) in frames {
            for (j, m) in ms.iter_mut().enumerate() {
                let to_j = match t.dest {
                    Dest::All => j != from,
                    Dest::One(x) => x.0 as usize == j,
                };
                if to_j {
                    m.handle_frame(Instant(now), &t.frame);
                }
            }
        }
    }
}

#[test]
fn config_errors() {
    let v = view(3);
    let k = Key::from_bytes([1; 32]);
    let bad = |cfg: ProtoConfig, me: u16| {
        Member::new(
            cfg,
            k.clone(),
            GroupId(1),
            v.clone(),
            MemberId(me),
            1,
            Instant(0),
        )
        .unwrap_err()
    };
    assert_eq!(
        bad(ProtoConfig::default(), 9),
        ConfigError::NotInView(MemberId(9))
    );
    assert_eq!(
        bad(
            ProtoConfig {
                window: 0,
                ..ProtoConfig::default()
            },
            0
        ),
        ConfigError::Window
    );
    assert!(matches!(
        bad(
            ProtoConfig {
                max_payload: 9000,
                ..ProtoConfig::default()
            },
            0
        ),
        ConfigError::Payload { .. }
    ));
}

#[test]
fn oversized_payload_and_full_window_are_refused() {
    let cfg = ProtoConfig {
        window: 3,
        max_payload: 10,
        ..ProtoConfig::default()
    };
    let mut m = member(2, 0, cfg);
    assert_eq!(
        m.submit(vec![0; 11]),
        Err(SubmitError::TooLarge { size: 11, max: 10 })
    );
    for i in 0..3 {
        assert_eq!(m.submit(vec![i]), Ok(Seq(i as u64)));
    }
    assert_eq!(m.submit(vec![9]), Err(SubmitError::WindowFull));
    assert_eq!(m.stats().window_full, 1);
}

#[test]
fn a_single_member_delivers_at_once() {
    let mut m = member(1, 0, ProtoConfig::default());
    m.submit(b"a".to_vec()).unwrap();
    m.submit(b"b".to_vec()).unwrap();
    let got: Vec<Vec<u8>> = msgs(&mut m).into_iter().map(|d| d.payload).collect();
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
    assert!(m.poll_transmit(Instant(0)).is_none());
}

#[test]
fn three_members_agree_and_batch() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| member(3, i, ProtoConfig::default()))
        .collect();
    for k in 0..20u8 {
        ms[(k % 3) as usize].submit(vec![k]).unwrap();
    }
    pump(&mut ms, 10, 6);
    let logs: Vec<Vec<(MemberId, u64)>> = ms
        .iter_mut()
        .map(|m| msgs(m).into_iter().map(|d| (d.sender, d.seq.0)).collect())
        .collect();
    assert_eq!(logs[0].len(), 20);
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    // Seven messages left member 0 in one frame.
    assert!(ms[0].stats().max_batch >= 7, "{:?}", ms[0].stats());
}

#[test]
fn nothing_is_delivered_before_every_member_holds_it() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| member(3, i, ProtoConfig::default()))
        .collect();
    ms[0].submit(b"x".to_vec()).unwrap();
    let t = ms[0].poll_transmit(Instant(0)).unwrap();
    // Only member 1 receives it: member 1 must not deliver (member 2 lacks it).
    ms[1].handle_frame(Instant(1), &t.frame);
    while let Some(t1) = ms[1].poll_transmit(Instant(0)) {
        ms[0].handle_frame(Instant(1), &t1.frame);
    }
    assert!(msgs(&mut ms[0]).is_empty());
    assert!(msgs(&mut ms[1]).is_empty());
    // The lost copy is retransmitted to member 2 after the timeout; then all deliver.
    ms[0].handle_timeout(Instant(10_000));
    pump(&mut ms, 10_000, 6);
    for m in &mut ms {
        let got: Vec<Vec<u8>> = msgs(m).into_iter().map(|d| d.payload).collect();
        assert_eq!(got, vec![b"x".to_vec()]);
    }
    assert!(ms[0].stats().retransmitted_slots >= 1);
}

/// Without loss, deliveries take no timer.
mod hops {
    use super::*;
    /// Without loss, a message from any rank is delivered everywhere within three exchanges
    /// (five for the first, see below) and no timer: nulls pass once a majority holds them, which for three members the
    /// null's sender and its receiver already are.
    #[test]
    fn three_members_deliver_without_timers() {
        let key = Key::from_bytes([1; 32]);
        let view = View::new(ViewId(1), (0..3).map(MemberId).collect());
        let mut ms: Vec<Member> = (0..3)
            .map(|i| {
                Member::new(
                    ProtoConfig::default(),
                    key.clone(),
                    GroupId(3),
                    view.clone(),
                    MemberId(i),
                    0x100 + u64::from(i),
                    Instant(0),
                )
                .unwrap()
            })
            .collect();
        let mut now = 100;
        for round in 0..30u8 {
            let from = (round % 3) as usize;
            ms[from].submit(vec![round]).unwrap();
            let mut got = [false; 3];
            let mut steps = 0;
            // The first message also proves the members' processes to each other (a row
            // naming the receiver's process), which takes two more exchanges.
            let limit = if round == 0 { 5 } else { 3 };
            while !got.iter().all(|g| *g) {
                assert!(
                    steps < limit,
                    "round {round} from m{from}: more than {limit} exchanges"
                );
                now += 10;
                let mut frames = Vec::new();
                for (i, m) in ms.iter_mut().enumerate() {
                    while let Some(t) = m.poll_transmit(Instant(now)) {
                        frames.push((i, t));
                    }
                }
                for (src, t) in frames {
                    for (j, m) in ms.iter_mut().enumerate() {
                        let to = match t.dest {
                            Dest::All => j != src,
                            Dest::One(x) => x.0 as usize == j,
                        };
                        if to {
                            m.handle_frame(Instant(now), &t.frame);
                        }
                    }
                }
                for (i, m) in ms.iter_mut().enumerate() {
                    while let Some(d) = m.poll_delivery() {
                        if let Delivered::Message(d) = d {
                            assert_eq!(d.payload, vec![round]);
                            got[i] = true;
                        }
                    }
                }
                steps += 1;
            }
        }
    }
}
