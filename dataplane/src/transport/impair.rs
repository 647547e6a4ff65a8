//! A fault-injecting wrapper over any transport: loss, duplication, and delay with jitter
//! (hence reordering) on every frame sent, drawn from a seeded generator. It serves where the
//! kernel cannot (no `tc netem`), works over loopback, namespaces or any medium, and composes
//! with every transport because it is one itself.
//!
//! Specification: comma-separated `key=value`, e.g. `loss=5%,dup=1%,delay=100us,jitter=50us`.
//! Keys: `loss` and `dup` (percent, or a fraction), `delay` and `jitter` (`us` or `ms`), `seed`.

use super::{RecvBatch, Transport, TransportStats};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;

/// Frames held for delay at most; beyond, frames are dropped (and counted as loss).
const MAX_HELD: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq)]
pub struct ImpairSpec {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_us: u64,
    pub jitter_us: u64,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("impairment {key}: {message}")]
pub struct ImpairError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> ImpairError {
    ImpairError {
        key: key.into(),
        message: message.into(),
    }
}

fn probability(key: &str, v: &str) -> Result<f64, ImpairError> {
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (v, 1.0),
    };
    let p: f64 = num
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{v:?} is not a number or a percentage")))?;
    let p = p / scale;
    if !(0.0..1.0).contains(&p) {
        return Err(bad(key, format!("{v:?} must be at least 0 and below 100%")));
    }
    Ok(p)
}

fn micros(key: &str, v: &str) -> Result<u64, ImpairError> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1000)
    } else {
        return Err(bad(key, format!("{v:?} needs a unit: us or ms")));
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        bad(
            key,
            format!(
                "{v:?} is not a whole number of {}",
                if scale == 1 { "us" } else { "ms" }
            ),
        )
    })?;
    if n * scale > 10_000_000 {
        return Err(bad(key, "at most 10 s"));
    }
    Ok(n * scale)
}

impl FromStr for ImpairSpec {
    type Err = ImpairError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = ImpairSpec {
            loss: 0.0,
            duplicate: 0.0,
            delay_us: 0,
            jitter_us: 0,
            seed: 1,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(part, "expected key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "loss" => spec.loss = probability(k, v)?,
                "dup" => spec.duplicate = probability(k, v)?,
                "delay" => spec.delay_us = micros(k, v)?,
                "jitter" => spec.jitter_us = micros(k, v)?,
                "seed" => {
                    spec.seed = v
                        .parse()
                        .map_err(|_| bad(k, format!("{v:?} is not a whole number")))?
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown; known keys: loss, dup, delay, jitter, seed",
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// A frame held back: (due, arrival order, peer, bytes), ordered by due time.
type Held = Reverse<(u64, u64, usize, Vec<u8>)>;

/// A transport whose sends are impaired by an [`ImpairSpec`].
pub struct Impaired {
    inner: Box<dyn Transport>,
    spec: ImpairSpec,
    rng: u64,
    seq: u64,
    held: BinaryHeap<Held>,
    out: Vec<(usize, Vec<u8>)>,
    dropped: u64,
    duplicated: u64,
}

impl std::fmt::Debug for Impaired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Impaired")
            .field("inner", &self.inner.name())
            .field("spec", &self.spec)
            .field("held", &self.held.len())
            .finish()
    }
}

impl Impaired {
    pub fn new(inner: Box<dyn Transport>, spec: ImpairSpec) -> Impaired {
        Impaired {
            inner,
            rng: spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            spec,
            seq: 0,
            held: BinaryHeap::new(),
            out: Vec::new(),
            dropped: 0,
            duplicated: 0,
        }
    }

    /// xorshift64*: a uniform value in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends held frames that are due.
    fn flush(&mut self, now: u64) -> io::Result<()> {
        self.out.clear();
        while let Some(Reverse((due, _, _, _))) = self.held.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, _, peer, frame))) = self.held.pop() {
                self.out.push((peer, frame));
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let batch: Vec<(usize, &[u8])> = self.out.iter().map(|(p, f)| (*p, f.as_slice())).collect();
        self.inner.send(&batch)
    }
}

impl Transport for Impaired {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        let now = crate::sys::monotonic_us();
        let immediate = self.spec.delay_us == 0 && self.spec.jitter_us == 0;
        let mut pass: Vec<(usize, &[u8])> = Vec::with_capacity(batch.len());
        for &(peer, frame) in batch {
            if self.uniform() < self.spec.loss {
                self.dropped += 1;
                continue;
            }
            let copies = if self.uniform() < self.spec.duplicate {
                self.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                if immediate {
                    pass.push((peer, frame));
                } else if self.held.len() >= MAX_HELD {
                    self.dropped += 1;
                } else {
                    let jitter = (self.uniform() * self.spec.jitter_us as f64) as u64;
                    self.seq += 1;
                    self.held.push(Reverse((
                        now + self.spec.delay_us + jitter,
                        self.seq,
                        peer,
                        frame.to_vec(),
                    )));
                }
            }
        }
        if !pass.is_empty() {
            self.inner.send(&pass)?;
        }
        self.flush(now)
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.flush(crate::sys::monotonic_us())?;
        self.inner.recv(batch)
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.inner.poll_fd()
    }

    fn next_deadline_us(&self) -> Option<u64> {
        self.held.peek().map(|Reverse((due, _, _, _))| *due)
    }

    fn view_installed(&mut self, members: &[usize]) {
        self.inner.view_installed(members);
    }

    fn prepare_park(&mut self) -> bool {
        self.inner.prepare_park()
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.inner.stats();
        s.injected_loss = self.dropped;
        s.injected_duplicates = self.duplicated;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

    /// Records what reaches the medium.
    struct Sink(Seen);
    impl Transport for Sink {
        fn name(&self) -> &'static str {
            "sink"
        }
        fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .extend(batch.iter().map(|(p, f)| (*p, f.to_vec())));
            Ok(())
        }
        fn recv(&mut self, _: &mut RecvBatch) -> io::Result<usize> {
            Ok(0)
        }
        fn poll_fd(&self) -> Option<RawFd> {
            None
        }
        fn stats(&self) -> TransportStats {
            TransportStats::default()
        }
    }

    #[test]
    fn spec_parses_and_errors_name_the_key() {
        let s: ImpairSpec = "loss=5%, dup=0.01,delay=2ms,jitter=50us,seed=9"
            .parse()
            .unwrap();
        assert_eq!(
            s,
            ImpairSpec {
                loss: 0.05,
                duplicate: 0.01,
                delay_us: 2000,
                jitter_us: 50,
                seed: 9
            }
        );
        for (text, key) in [
            ("loss=120%", "loss"),
            ("delay=5", "delay"),
            ("speed=1", "speed"),
            ("dup", "dup"),
            ("jitter=xus", "jitter"),
        ] {
            assert_eq!(text.parse::<ImpairSpec>().unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn loss_and_duplication_happen_at_their_rates() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut t = Impaired::new(
            Box::new(Sink(seen.clone())),
            "loss=10%,dup=5%".parse().unwrap(),
        );
        let frame = [7u8; 20];
        for _ in 0..20_000 {
            t.send(&[(1, &frame)]).unwrap();
        }
        let n = seen.lock().unwrap().len() as f64;
        // Expected 20000 * 0.9 * 1.05 = 18900.
        assert!((18_400.0..19_400.0).contains(&n), "{n}");
        assert!(t.stats().injected_loss > 1500 && t.stats().injected_duplicates > 600);
    }

    #[test]
    fn delayed_frames_leave_when_due_and_jitter_reorders() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut t = Impaired::new(
            Box::new(Sink(seen.clone())),
            "delay=2ms,jitter=2ms".parse().unwrap(),
        );
        for i in 0..200u8 {
            t.send(&[(0, &[i])]).unwrap();
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing may leave before its delay"
        );
        assert!(t.next_deadline_us().is_some());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut rb = RecvBatch::new(1, 16);
        t.recv(&mut rb).unwrap();
        let got: Vec<u8> = seen.lock().unwrap().iter().map(|(_, f)| f[0]).collect();
        assert_eq!(got.len(), 200);
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "jitter should reorder some frames"
        );
        assert_eq!(t.next_deadline_us(), None);
    }
}
