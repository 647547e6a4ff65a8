//! Loss recovery: retransmission timeouts, gap reports, repeated reports.

use super::*;

/// Two members stepped every 100 us for `until_us`; frames pass unless `lose` says so (called
/// with the sender's index, the frame's kind byte and the time). Returns when each data frame of
/// member 0 left.
fn two_members_with_loss(
    m: &mut [Member; 2],
    from_us: u64,
    until_us: u64,
    mut lose: impl FnMut(usize, u8, u64) -> bool,
    mut done: impl FnMut(&[Member; 2]) -> bool,
) -> (Vec<u64>, u64) {
    let mut sends = Vec::new();
    let mut t = from_us;
    while t < until_us {
        t += 100;
        for i in 0..2 {
            if m[i].poll_timeout() <= Instant(t) {
                m[i].handle_timeout(Instant(t));
            }
            while let Some(x) = m[i].poll_transmit(Instant(t)) {
                let kind = x.frame[3];
                if i == 0 && kind == Kind::Data as u8 {
                    sends.push(t);
                }
                if !lose(i, kind, t) {
                    m[1 - i].handle_frame(Instant(t), &x.frame);
                }
            }
        }
        if done(m) {
            break;
        }
    }
    (sends, t)
}

/// A receiver repeats its gap report every status period while the gap stays, and the sender
/// answers each (once per round trip): a lost resend is made good at the next report, long
/// before the retransmission timeout (here 50 ms, so that only the reports can repair it).
#[test]
fn a_lost_resend_is_asked_for_again_at_the_next_status_period() {
    let cfg = ProtoConfig {
        rto: Duration::from_millis(50),
        ..ProtoConfig::default()
    };
    let mut m = [member(2, 0, cfg.clone()), member(2, 1, cfg)];
    // The two prove their processes to each other first (nothing is lost).
    two_members_with_loss(&mut m, 0, 5_000, |_, _, _| false, |_| false);
    m[0].submit(b"first".to_vec()).unwrap();
    let lost = m[0].poll_transmit(Instant(5_000)).unwrap();
    drop(lost);
    m[0].submit(b"second".to_vec()).unwrap();
    let mut data = 0;
    let (sends, t) = two_members_with_loss(
        &mut m,
        5_000,
        45_000,
        |from, kind, _| {
            // The first resend is lost.
            from == 0 && kind == Kind::Data as u8 && {
                data += 1;
                data == 2
            }
        },
        |m| m[1].has_received(MemberId(0), Seq(0)),
    );
    let t = t - 5_000;
    assert!(
        m[1].has_received(MemberId(0), Seq(0)),
        "not repaired in 40 ms: {sends:?} {:?} {:?}",
        m[0].stats(),
        m[1].stats()
    );
    assert!(sends.len() >= 3, "{sends:?}");
    assert!(
        t <= 2 * cfg_status_us() + 500,
        "repaired at {t} us: the second report should have asked again ({sends:?})"
    );
    assert!(m[0].stats().fast_retransmits >= 2);
}

fn cfg_status_us() -> u64 {
    ProtoConfig::default().status_interval.as_micros() as u64
}

/// A peer that is heard from lost what it is missing at random: the retransmission timeout is
/// not doubled for it (back-off is for a silent peer). Here every resend to member 1 is lost
/// four times running while member 1 keeps sending its rows, after a first message measured
/// the round trip (until one is measured the timeout backs off, as Karn's rule needs).
#[test]
fn the_retransmission_timeout_does_not_back_off_from_a_peer_that_is_heard_from() {
    let cfg = ProtoConfig {
        heartbeat: Duration::from_millis(1),
        ..ProtoConfig::default()
    };
    let rto = cfg.rto.as_micros() as u64;
    let mut m = [member(2, 0, cfg.clone()), member(2, 1, cfg)];
    m[0].submit(b"warm".to_vec()).unwrap();
    two_members_with_loss(&mut m, 0, 5_000, |_, _, _| false, |_| false);
    m[0].submit(b"warm again".to_vec()).unwrap();
    two_members_with_loss(&mut m, 5_000, 10_000, |_, _, _| false, |_| false);
    assert!(m[1].has_received(MemberId(0), Seq(1)));
    m[0].submit(b"only".to_vec()).unwrap();
    let mut data = 0;
    let (sends, _) = two_members_with_loss(
        &mut m,
        10_000,
        110_000,
        |from, kind, _| {
            from == 0 && kind == Kind::Data as u8 && {
                data += 1;
                data <= 5
            }
        },
        |m| m[1].has_received(MemberId(0), Seq(2)),
    );
    assert!(m[1].has_received(MemberId(0), Seq(2)));
    assert_eq!(sends.len(), 6, "{sends:?}");
    for w in sends.windows(2) {
        assert!(
            w[1] - w[0] <= rto + 1_000,
            "resends {sends:?}: backed off although member 1 was heard from"
        );
    }
}

#[test]
fn a_reported_gap_is_resent_without_waiting_for_a_timeout() {
    let mut m0 = member(2, 0, ProtoConfig::default());
    let mut m1 = member(2, 1, ProtoConfig::default());
    m0.submit(b"first".to_vec()).unwrap();
    let lost = m0.poll_transmit(Instant(0)).unwrap();
    drop(lost);
    m0.submit(b"second".to_vec()).unwrap();
    let second = m0.poll_transmit(Instant(0)).unwrap();
    m1.handle_frame(Instant(10), &second.frame);
    assert!(!m1.has_received(MemberId(0), Seq(0)));
    // Member 1 reports the gap at once; member 0 resends; no handle_timeout anywhere.
    let mut rounds = 0;
    while !m1.has_received(MemberId(0), Seq(0)) && rounds < 4 {
        while let Some(t) = m1.poll_transmit(Instant(0)) {
            m0.handle_frame(Instant(20), &t.frame);
        }
        while let Some(t) = m0.poll_transmit(Instant(0)) {
            m1.handle_frame(Instant(30), &t.frame);
        }
        rounds += 1;
    }
    assert!(
        m1.has_received(MemberId(0), Seq(0)),
        "the gap was not repaired"
    );
    assert_eq!(m0.stats().fast_retransmits, 1);
    assert!(m0.stats().retransmitted_slots >= 1);
}
