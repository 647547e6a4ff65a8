//! The load generator's journal: what a trigger sent and heard, kept in a file so that a
//! trigger killed mid-run (`conveyor bench --fault kill:all@S`: every member SIGKILLed, then
//! restarted from its data directory) picks the run up where it was, measuring every request
//! of the run once.
//!
//! One line per fact, written before the fact can matter: a request's line (`S`) before it
//! is submitted, with the shard it is submitted to (a request the journal does not name was
//! never submitted, so it is sent as new; a request it names is never sent twice under another
//! id), each event heard (`E`: completions, failures, refusals, re-queues, views; with its
//! engine timestamp) once it is taken from the ring, and how far each shard's engine had told
//! this member the ends of its runs (`T`, [`EngineHandle::told_through`]) once the events up to
//! it are written. Lines go to the kernel at once (no buffer in the process), so a SIGKILL
//! loses none; a line torn by a crash of the machine itself is the journal's last, and is
//! ignored.
//!
//! Restarted, the trigger replays the journal into its tally, and asks each shard's engine
//! ([`EngineHandle::resume`]) to tell it the ends after that shard's last `T` and to push again
//! those of the unanswered requests it submitted there that never reached the order. A run's
//! end is told in the shard it was submitted to (its origin shard: an end in another shard is
//! forwarded back there, and a run away in another shard counts as held; see
//! `conveyor_core::shard`), so each shard answers for its own.

use anyhow::{Context, Result};
use conveyor_core::queue::Effect;
use conveyor_dataplane::engine::{EngineHandle, Event};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// What a journal held when the trigger restarted.
#[derive(Debug, Default)]
pub struct Replayed {
    /// When the run's load started (CLOCK_MONOTONIC us), if it had.
    pub start_us: Option<u64>,
    /// Requests sent: (index, intended send time, submitted at, shard submitted to).
    pub sent: Vec<(u64, u64, u64, u16)>,
    /// Events heard, in order.
    pub events: Vec<Event>,
    /// Per shard, the last position its engine had told this member through.
    pub told_through: BTreeMap<u16, u64>,
    /// Times the trigger restarted before this one.
    pub restarts: u64,
}

/// The journal being written.
#[derive(Debug)]
pub struct Journal {
    file: std::fs::File,
    line: Vec<u8>,
    told: BTreeMap<u16, u64>,
}

impl Journal {
    /// Opens the journal at `path`: what it holds (nothing for a new run), and the journal to
    /// append to.
    pub fn open(path: &Path) -> Result<(Journal, Replayed)> {
        let mut replayed = Replayed::default();
        let mut whole = 0u64;
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.split_inclusive('\n') {
                // A line without its end was torn: it never counted, and goes.
                let Some(body) = line.strip_suffix('\n') else {
                    break;
                };
                replayed.take(body).with_context(|| {
                    format!("{}: a line that does not read: {body:?}", path.display())
                })?;
                whole += line.len() as u64;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        file.set_len(whole)
            .with_context(|| format!("cutting the torn end of {}", path.display()))?;
        let mut j = Journal {
            file,
            line: Vec::new(),
            told: replayed.told_through.clone(),
        };
        if replayed.start_us.is_some() {
            j.write(format_args!("R\n"))?;
        }
        Ok((j, replayed))
    }

    fn write(&mut self, args: std::fmt::Arguments) -> Result<()> {
        self.line.clear();
        self.line.write_fmt(args)?;
        self.file
            .write_all(&self.line)
            .context("writing the trigger's journal")
    }

    /// The load starts at `start_us`.
    pub fn started(&mut self, start_us: u64) -> Result<()> {
        self.write(format_args!("B {start_us}\n"))
    }

    /// Request `i` is about to be submitted to `shard` (0 for a group of one shard).
    pub fn sent(&mut self, i: u64, intended: u64, submitted: u64, shard: u16) -> Result<()> {
        self.write(format_args!("S {i} {intended} {submitted} {shard}\n"))
    }

    /// An event was taken from the ring (those the tally counts are kept; a result's bytes
    /// are not).
    pub fn heard(&mut self, ev: &Event) -> Result<()> {
        let mut effect = match &ev.effect {
            Effect::Completed { .. }
            | Effect::Failed { .. }
            | Effect::Rejected { .. }
            | Effect::Overwritten { .. }
            | Effect::Requeued { .. }
            | Effect::ViewInstalled { .. } => ev.effect.clone(),
            _ => return Ok(()),
        };
        if let Effect::Completed { result, reply, .. } = &mut effect {
            *result = None;
            *reply = None;
        }
        let json = serde_json::to_string(&effect)?;
        self.write(format_args!("E {} {json}\n", ev.at_us))
    }

    /// `told` (of `shard`'s engine) was read before the events just written were drained:
    /// every end up to it has been heard (and written).
    pub fn told_through(&mut self, shard: u16, told: Option<u64>) -> Result<()> {
        if let Some(t) = told {
            if self.told.get(&shard) != Some(&t) {
                self.told.insert(shard, t);
                self.write(format_args!("T {shard} {t}\n"))?;
            }
        }
        Ok(())
    }

    /// Drains `shard`'s engine's events into `on` (the tally), journalling each, and notes how
    /// far the engine had told this member.
    pub fn drain(
        &mut self,
        shard: u16,
        handle: &EngineHandle,
        mut on: impl FnMut(Event),
    ) -> Result<bool> {
        let told = handle.told_through();
        let mut any = false;
        while let Some(ev) = handle.try_event() {
            self.heard(&ev)?;
            on(ev);
            any = true;
        }
        self.told_through(shard, told)?;
        Ok(any)
    }
}

impl Replayed {
    fn take(&mut self, line: &str) -> Result<()> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: Option<&str>| -> Result<u64> {
            s.context("a field is missing")?
                .parse::<u64>()
                .context("not a number")
        };
        match kind {
            "B" => self.start_us = Some(num(Some(rest))?),
            "S" => {
                let mut w = rest.split(' ');
                let (i, intended, submitted) = (num(w.next())?, num(w.next())?, num(w.next())?);
                let shard = u16::try_from(num(w.next())?).context("not a shard")?;
                self.sent.push((i, intended, submitted, shard));
            }
            "E" => {
                let (at, json) = rest.split_once(' ').context("an event without its time")?;
                self.events.push(Event {
                    at_us: num(Some(at))?,
                    effect: serde_json::from_str(json)?,
                });
            }
            "T" => {
                let mut w = rest.split(' ');
                let shard = u16::try_from(num(w.next())?).context("not a shard")?;
                self.told_through.insert(shard, num(w.next())?);
            }
            "R" => self.restarts += 1,
            other => anyhow::bail!("unknown line kind {other:?}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_core::queue::Meta;
    use conveyor_core::types::{MemberId, RequestId};

    #[test]
    fn a_journal_reads_back_what_was_written_and_ignores_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("cvy-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal");
        let (mut j, r) = Journal::open(&path).unwrap();
        assert!(r.start_us.is_none() && r.sent.is_empty());
        j.started(100).unwrap();
        j.sent(0, 100, 105, 0).unwrap();
        j.sent(1, 100, 107, 1).unwrap();
        let done = Event {
            at_us: 900,
            effect: Effect::Completed {
                consumer: MemberId(1),
                id: RequestId::new(MemberId(0), 0),
                instance: 7,
                step: "b".into(),
                terminal: true,
                result: Some(vec![1, 2, 3]),
                reply: None,
                meta: Meta::default(),
            },
        };
        j.heard(&done).unwrap();
        j.heard(&Event {
            at_us: 901,
            effect: Effect::Empty {
                consumer: MemberId(1),
            },
        })
        .unwrap();
        j.told_through(0, Some(42)).unwrap();
        j.told_through(0, Some(42)).unwrap();
        j.told_through(0, None).unwrap();
        j.told_through(1, Some(9)).unwrap();
        drop(j);
        // A crash tore the next line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"S 2 100 1 0").unwrap();
        drop(f);
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.start_us, Some(100));
        assert_eq!(r.sent, vec![(0, 100, 105, 0), (1, 100, 107, 1)]);
        assert_eq!(r.events.len(), 1, "only what the tally counts");
        assert_eq!(r.events[0].at_us, 900);
        assert!(matches!(
            &r.events[0].effect,
            Effect::Completed {
                instance: 7,
                result: None,
                ..
            }
        ));
        assert_eq!(r.told_through, BTreeMap::from([(0, 42), (1, 9)]));
        assert_eq!(r.restarts, 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("T 0 42").count(), 1);
        let (_, r) = Journal::open(&path).unwrap();
        assert_eq!(r.restarts, 1, "the second open was a restart");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
