//! Redis Streams with consumer groups, as a replicated state machine (issue 23): every member
//! applies the same commands in the group's order ([`crate::queue::Op::Redis`]) and computes
//! the same reply, which the member that served the client sends back. No I/O; the RESP
//! server that reads the commands off sockets is `control/src/resp`.
//!
//! The commands and their replies follow `redis-server` 7.0 (`t_stream.c`), errors included,
//! checked by running the same script against both (`control/tests/resp_streams.rs`). Time
//! (`*` ids, idle times) is the serving member's clock, carried in the command, so every
//! replica computes the same. Where Conveyor differs:
//! - a pending entry remembers the member whose client it was last delivered to (by a read or
//!   a claim); when that member is removed from the group (it failed), the entry goes back to
//!   the group (its client may never have got it, or died with the member), and the group's
//!   next `XREADGROUP ... >` delivers it first (Redis leaves such entries to `XAUTOCLAIM`);
//!   an `XACK` of it before it is delivered again still counts, once;
//! - `MAXLEN ~` and `MINID ~` trim exactly (Redis trims whole nodes only, so at least as much
//!   is kept there); `LIMIT` is accepted and ignored;
//! - `XINFO STREAM`'s `radix-tree-keys` and `radix-tree-nodes` describe no radix tree (one
//!   key per entry is reported).

mod commands;
mod groups;
pub mod id;
mod info;

use commands::written;
pub use commands::{blocking, is_stream_command, keys, COMMANDS, UNBLOCK};

use crate::types::MemberId;
pub use id::StreamId;
use id::{parse, parse_id, parse_interval, Parsed, INVALID_ID};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A reply, in RESP3's terms (the server encodes it for the connection's protocol).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Simple(String),
    /// The whole message, its code first (`ERR ...`, `NOGROUP ...`).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    /// RESP2 `$-1`.
    Null,
    /// RESP2 `*-1`.
    NullArray,
    /// RESP2: a flat array of keys and values.
    Map(Vec<(Value, Value)>),
    /// RESP3 a map, RESP2 an array of `[key, value]` arrays (`XREADGROUP`'s reply by stream).
    ByKey(Vec<(Value, Value)>),
}

impl Value {
    fn ok() -> Value {
        Value::Simple("OK".into())
    }
    fn err(m: impl Into<String>) -> Value {
        Value::Error(m.into())
    }
    fn bulk(b: impl AsRef<[u8]>) -> Value {
        Value::Bulk(b.as_ref().to_vec())
    }
    fn id(id: StreamId) -> Value {
        Value::Bulk(id.to_string().into_bytes())
    }
    fn int(n: impl TryInto<i64>) -> Value {
        Value::Int(n.try_into().unwrap_or(i64::MAX))
    }
    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Value::bulk(k), v))
                .collect(),
        )
    }
}

const SYNTAX: &str = "ERR syntax error";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// A blocked read waiting in the state for an entry (see [`Streams::run`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Waiter {
    origin: MemberId,
    token: u64,
    keys: Vec<Vec<u8>>,
    /// The command, run again when one of `keys` is written (an XREAD's `$` resolved).
    args: Vec<Vec<u8>>,
}

/// A pending entry: who has it, since when, how many times it was delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Nack {
    consumer: Vec<u8>,
    delivered_ms: u64,
    count: u64,
    /// The member whose client it was last delivered to (see the module docs).
    via: Option<MemberId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Consumer {
    seen_ms: u64,
    pel: BTreeSet<StreamId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    last_id: StreamId,
    /// `None`: not known (Redis's `SCG_INVALID_ENTRIES_READ`).
    entries_read: Option<u64>,
    pel: BTreeMap<StreamId, Nack>,
    consumers: BTreeMap<Vec<u8>, Consumer>,
    /// Pending entries of consumers whose member was removed, with their delivery counts:
    /// delivered first by the next `XREADGROUP ... >`.
    requeued: BTreeMap<StreamId, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stream {
    /// Each entry's fields and values, in turn.
    entries: BTreeMap<StreamId, Vec<Vec<u8>>>,
    last_id: StreamId,
    max_deleted: StreamId,
    entries_added: u64,
    groups: BTreeMap<Vec<u8>, Group>,
}

impl Stream {
    fn first_id(&self) -> StreamId {
        self.entries.keys().next().copied().unwrap_or_default()
    }

    /// `streamRangeHasTombstones(s, start, NULL)`.
    fn tombstones_from(&self, start: StreamId) -> bool {
        if self.entries.is_empty() || self.max_deleted.is_zero() {
            return false;
        }
        if self.first_id() > self.max_deleted {
            return false;
        }
        start <= self.max_deleted
    }

    /// `streamEstimateDistanceFromFirstEverEntry`.
    fn estimate_read(&self, id: StreamId) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if self.entries.is_empty() && id <= self.last_id {
            return Some(self.entries_added);
        }
        match id.cmp(&self.last_id) {
            std::cmp::Ordering::Equal => return Some(self.entries_added),
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
        let first = self.first_id();
        if self.max_deleted.is_zero() || self.max_deleted < first {
            let len = self.entries.len() as u64;
            if id < first {
                return Some(self.entries_added - len);
            } else if id == first {
                return Some(self.entries_added - len + 1);
            }
        }
        None
    }

    fn entry(&self, id: StreamId) -> Option<Value> {
        let fields = self.entries.get(&id)?;
        Some(Value::Array(vec![
            Value::id(id),
            Value::Array(fields.iter().map(Value::bulk).collect()),
        ]))
    }

    fn delete(&mut self, id: StreamId) -> bool {
        if self.entries.remove(&id).is_none() {
            return false;
        }
        if id > self.max_deleted {
            self.max_deleted = id;
        }
        true
    }

    fn lag(&self, g: &Group) -> Value {
        if self.entries_added == 0 {
            return Value::Int(0);
        }
        if let Some(read) = g.entries_read {
            if !self.tombstones_from(g.last_id) {
                return Value::int(self.entries_added.saturating_sub(read));
            }
        }
        match self.estimate_read(g.last_id) {
            Some(read) => Value::int(self.entries_added.saturating_sub(read)),
            None => Value::Null,
        }
    }
}

/// Every stream of the group, by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    keys: BTreeMap<Vec<u8>, Stream>,
    /// Blocked reads, oldest first (served in that order, as Redis serves its clients).
    waiters: Vec<Waiter>,
    /// The time of the last command run (what a view change's service of blocked reads
    /// counts as now).
    last_ms: u64,
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `getLongLongFromObjectOrReply`: a whole decimal `i64`, or the given error.
fn int(arg: &[u8], error: &str) -> Result<i64, Value> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| {
            let sloppy = s.is_empty()
                || s.starts_with('+')
                || (s.len() > 1 && s.starts_with('0'))
                || s.starts_with("-0");
            !sloppy
        })
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Value::err(error))
}

fn arity(name: &str) -> Value {
    Value::err(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// `(minimum, exact)` argument counts, the command name included, as Redis's command table
/// says them (`-n`: at least n).
fn arity_ok(n: usize, spec: i64) -> bool {
    if spec < 0 {
        n >= spec.unsigned_abs() as usize
    } else {
        n == spec as usize
    }
}

impl Streams {
    /// Runs the command `token` of `origin`'s server at `now_ms` (`origin`'s clock) and
    /// returns the replies it gives, each to its (server, token): the command's own (none if
    /// it is a read that blocks: it waits here, in the state, and every replica serves it at
    /// the same place in the order, when an entry for it comes), then those of blocked reads
    /// it served. [`UNBLOCK`] ends a blocked read (its reply: nil) if it still waits.
    pub fn run(
        &mut self,
        origin: MemberId,
        token: u64,
        now_ms: u64,
        args: &[Vec<u8>],
    ) -> Vec<(MemberId, u64, Value)> {
        self.last_ms = now_ms;
        if args
            .first()
            .is_some_and(|a| a.as_slice() == UNBLOCK.as_bytes())
        {
            let which = args
                .get(1)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse::<u64>().ok());
            let at = self
                .waiters
                .iter()
                .position(|w| w.origin == origin && Some(w.token) == which);
            return match at {
                Some(i) => {
                    let w = self.waiters.remove(i);
                    vec![(w.origin, w.token, Value::NullArray)]
                }
                None => Vec::new(),
            };
        }
        let reply = self.execute(origin, now_ms, args);
        let mut out = Vec::new();
        match (reply, blocking(args)) {
            (Value::NullArray, Some((keys, _))) => {
                let args = self.resolve_last(args, keys.len());
                self.waiters.push(Waiter {
                    origin,
                    token,
                    keys,
                    args,
                });
            }
            (reply, _) => {
                let keys = written(args, &reply);
                out.push((origin, token, reply));
                self.serve_waiters(&keys, now_ms, &mut out);
            }
        }
        out
    }

    /// An XREAD's `$` ids as the streams' last ids now (entries added later are after it).
    fn resolve_last(&self, args: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
        let mut args = args.to_vec();
        if !is(&args[0], "xread") {
            return args;
        }
        let at = args.len() - n;
        for k in 0..n {
            if args[at + k].as_slice() == b"$" {
                let last = self
                    .keys
                    .get(&args[at - n + k])
                    .map(|s| s.last_id)
                    .unwrap_or_default();
                args[at + k] = last.to_string().into_bytes();
            }
        }
        args
    }

    /// Runs again, oldest first, the blocked reads on `keys`; those served leave.
    fn serve_waiters(
        &mut self,
        keys: &[Vec<u8>],
        now_ms: u64,
        out: &mut Vec<(MemberId, u64, Value)>,
    ) {
        if keys.is_empty() || self.waiters.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.waiters.len() {
            if !self.waiters[i].keys.iter().any(|k| keys.contains(k)) {
                i += 1;
                continue;
            }
            let w = self.waiters[i].clone();
            match self.execute(w.origin, now_ms, &w.args) {
                Value::NullArray => i += 1,
                reply => {
                    self.waiters.remove(i);
                    out.push((w.origin, w.token, reply));
                }
            }
        }
    }

    /// Blocked reads waiting.
    pub fn blocked(&self) -> usize {
        self.waiters.len()
    }

    /// The whole group restarted: no server that waited lives.
    pub fn drop_waiters(&mut self) {
        self.waiters.clear();
    }

    /// The whole group restarted: every pending entry went through a member that is gone,
    /// and goes back to its group (as at a member's removal).
    pub fn requeue_all(&mut self) {
        for s in self.keys.values_mut() {
            for g in s.groups.values_mut() {
                for (id, n) in std::mem::take(&mut g.pel) {
                    g.requeued.insert(id, n.count);
                }
                for c in g.consumers.values_mut() {
                    c.pel.clear();
                }
            }
        }
    }

    /// Runs one command (`args[0]` its name) for a client served by `member`, at `now_ms` (the
    /// serving member's clock). Deterministic: every replica computes the same reply.
    pub fn execute(&mut self, member: MemberId, now_ms: u64, args: &[Vec<u8>]) -> Value {
        let Some(name) = args.first() else {
            return Value::err("ERR empty command");
        };
        let name = lower(name);
        let spec = match name.as_str() {
            "xadd" => -5,
            "xlen" | "type" => 2,
            "xrange" | "xrevrange" | "xack" | "xtrim" => -4,
            "xgroup" | "xinfo" | "del" | "exists" | "unlink" => -2,
            "xreadgroup" => -7,
            "xread" => -4,
            "xpending" | "xdel" => -3,
            "xclaim" | "xautoclaim" => -6,
            _ => {
                return Value::err(format!("ERR unknown command '{name}'"));
            }
        };
        if !arity_ok(args.len(), spec) {
            return arity(&name);
        }
        let r = match name.as_str() {
            "xadd" => self.xadd(now_ms, args),
            "xlen" => Ok(Value::int(
                self.keys.get(&args[1]).map_or(0, |s| s.entries.len()),
            )),
            "xrange" => self.xrange(args, false),
            "xrevrange" => self.xrange(args, true),
            "xgroup" => self.xgroup(args),
            "xreadgroup" => self.xreadgroup(member, now_ms, args),
            "xread" => self.xread(args),
            "xack" => self.xack(args),
            "xpending" => self.xpending(now_ms, args),
            "xclaim" => self.xclaim(member, now_ms, args),
            "xautoclaim" => self.xautoclaim(member, now_ms, args),
            "xinfo" => self.xinfo(now_ms, args),
            "xdel" => self.xdel(args),
            "xtrim" => self.xtrim(args),
            "del" | "unlink" => Ok(Value::int(
                args[1..]
                    .iter()
                    .filter(|k| self.keys.remove(*k).is_some())
                    .count(),
            )),
            "exists" => Ok(Value::int(
                args[1..]
                    .iter()
                    .filter(|k| self.keys.contains_key(*k))
                    .count(),
            )),
            "type" => Ok(Value::Simple(
                if self.keys.contains_key(&args[1]) {
                    "stream"
                } else {
                    "none"
                }
                .into(),
            )),
            _ => unreachable!("checked above"),
        };
        r.unwrap_or_else(|e| e)
    }

    /// Members removed from the group: the pending entries last delivered through them go
    /// back to their groups (see the module docs), their servers' blocked reads go, and the
    /// blocked reads of others that can now read are served (at the last command's time;
    /// replies as [`Streams::run`]'s).
    pub fn members_removed(&mut self, removed: &[MemberId]) -> Vec<(MemberId, u64, Value)> {
        let now_ms = self.last_ms;
        self.waiters.retain(|w| !removed.contains(&w.origin));
        let mut keys = Vec::new();
        for (key, s) in self.keys.iter_mut() {
            let mut back = false;
            for g in s.groups.values_mut() {
                let gone: Vec<StreamId> = g
                    .pel
                    .iter()
                    .filter(|(_, n)| n.via.is_some_and(|m| removed.contains(&m)))
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if let Some(n) = g.pel.remove(&id) {
                        if let Some(c) = g.consumers.get_mut(&n.consumer) {
                            c.pel.remove(&id);
                        }
                        g.requeued.insert(id, n.count);
                        back = true;
                    }
                }
            }
            if back {
                keys.push(key.clone());
            }
        }
        let mut out = Vec::new();
        self.serve_waiters(&keys, now_ms, &mut out);
        out
    }

    /// How many streams there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn xadd(&mut self, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        let mut i = 2;
        let mut nomkstream = false;
        let mut trim: Option<Trim> = None;
        let mut limit_given = false;
        let mut approx = false;
        let mut given: Option<Parsed> = None;
        while i < a.len() {
            let more = a.len() - 1 - i;
            let opt = &a[i];
            if opt.as_slice() == b"*" {
                break;
            } else if (is(opt, "maxlen") || is(opt, "minid")) && more > 0 {
                let (t, next, ap) = parse_trim(a, i, trim.is_some())?;
                trim = Some(t);
                approx = ap;
                i = next;
            } else if is(opt, "limit") && more > 0 {
                let n = int(&a[i + 1], NOT_INTEGER)?;
                if n < 0 {
                    return Err(Value::err("ERR The LIMIT argument must be >= 0."));
                }
                limit_given = true;
                i += 1;
            } else if is(opt, "nomkstream") {
                nomkstream = true;
            } else {
                given = Some(parse(opt, 0, true, true).map_err(Value::err)?);
                break;
            }
            i += 1;
        }
        if limit_given && trim.is_none() {
            return Err(Value::err(
                "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
            ));
        }
        if limit_given && !approx {
            return Err(Value::err(
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ));
        }
        let fields = i + 1;
        if a.len() < fields + 2 || (a.len() - fields) % 2 == 1 {
            return Err(arity("xadd"));
        }
        if given == Some(Parsed::Id(StreamId::MIN)) {
            return Err(Value::err(
                "ERR The ID specified in XADD must be greater than 0-0",
            ));
        }
        if nomkstream && !self.keys.contains_key(&a[1]) {
            return Ok(Value::Null);
        }
        let s = self.keys.entry(a[1].clone()).or_default();
        if s.last_id == StreamId::MAX {
            return Err(Value::err(
                "ERR The stream has exhausted the last possible ID, unable to add more items",
            ));
        }
        let too_small = || {
            Value::err(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item",
            )
        };
        let id = match given {
            Some(Parsed::Id(id)) => id,
            Some(Parsed::AutoSeq(ms)) if ms == s.last_id.ms => {
                if s.last_id.seq == u64::MAX {
                    return Err(too_small());
                }
                StreamId::new(ms, s.last_id.seq + 1)
            }
            Some(Parsed::AutoSeq(ms)) => StreamId::new(ms, 0),
            None if now_ms > s.last_id.ms => StreamId::new(now_ms, 0),
            None => s.last_id.next().ok_or_else(too_small)?,
        };
        if id <= s.last_id {
            return Err(too_small());
        }
        s.entries.insert(id, a[fields..].to_vec());
        s.last_id = id;
        s.entries_added += 1;
        if let Some(t) = trim {
            t.apply(s);
        }
        Ok(Value::id(id))
    }

    fn xtrim(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
        let mut i = 2;
        let mut trim: Option<Trim> = None;
        let mut limit_given = false;
        let mut approx = false;
        while i < a.len() {
            let more = a.len() - 1 - i;
            let opt = &a[i];
            if (is(opt, "maxlen") || is(opt, "minid")) && more > 0 {
                let (t, next, ap) = parse_trim(a, i, trim.is_some())?;
                trim = Some(t);
                approx = ap;
                i = next;
            } else if is(opt, "limit") && more > 0 {
                let n = int(&a[i + 1], NOT_INTEGER)?;
                if n < 0 {
                    return Err(Value::err("ERR The LIMIT argument must be >= 0."));
                }
                limit_given = true;
                i += 1;
            } else {
                return Err(Value::err(SYNTAX));
            }
            i += 1;
        }
        let Some(trim) = trim else {
            return Err(Value::err(
                "ERR syntax error, XTRIM must be called with a trimming strategy",
            ));
        };
        if limit_given && !approx {
            return Err(Value::err(
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ));
        }
        let Some(s) = self.keys.get_mut(&a[1]) else {
            return Ok(Value::Int(0));
        };
        Ok(Value::int(trim.apply(s)))
    }

    fn xrange(&self, a: &[Vec<u8>], rev: bool) -> Result<Value, Value> {
        let (start_arg, end_arg) = if rev { (&a[3], &a[2]) } else { (&a[2], &a[3]) };
        let (mut start, sx) = parse_interval(start_arg, 0).map_err(Value::err)?;
        if sx {
            start = start
                .next()
                .ok_or_else(|| Value::err("ERR invalid start ID for the interval"))?;
        }
        let (mut end, ex) = parse_interval(end_arg, u64::MAX).map_err(Value::err)?;
        if ex {
            end = end
                .prev()
                .ok_or_else(|| Value::err("ERR invalid end ID for the interval"))?;
        }
        let mut count: i64 = -1;
        let mut j = 4;
        while j < a.len() {
            if is(&a[j], "count") && j + 1 < a.len() {
                count = int(&a[j + 1], NOT_INTEGER)?.max(0);
                j += 2;
            } else {
                return Err(Value::err(SYNTAX));
            }
        }
        let Some(s) = self.keys.get(&a[1]) else {
            return Ok(Value::Array(Vec::new()));
        };
        if count == 0 {
            return Ok(Value::NullArray);
        }
        if start > end {
            return Ok(Value::Array(Vec::new()));
        }
        let limit = if count < 0 {
            usize::MAX
        } else {
            count as usize
        };
        let range = s.entries.range(start..=end);
        let ids: Vec<StreamId> = if rev {
            range.rev().take(limit).map(|(k, _)| *k).collect()
        } else {
            range.take(limit).map(|(k, _)| *k).collect()
        };
        Ok(Value::Array(
            ids.into_iter().filter_map(|id| s.entry(id)).collect(),
        ))
    }

    /// `XREAD [COUNT n] [BLOCK ms] STREAMS key.. id..`: entries after each id (`$`: after the
    /// stream's last id, so none; a blocking server resolves it first). BLOCK is the server's.
    fn xread(&self, a: &[Vec<u8>]) -> Result<Value, Value> {
        let mut count: i64 = 0;
        let mut streams_at = 0;
        let mut i = 1;
        while i < a.len() {
            let more = a.len() - 1 - i;
            let o = &a[i];
            if is(o, "block") && more > 0 {
                i += 1;
                let t = int(&a[i], "ERR timeout is not an integer or out of range")?;
                if t < 0 {
                    return Err(Value::err("ERR timeout is negative"));
                }
            } else if is(o, "count") && more > 0 {
                i += 1;
                count = int(&a[i], NOT_INTEGER)?.max(0);
            } else if is(o, "streams") && more > 0 {
                streams_at = i + 1;
                if !(a.len() - streams_at).is_multiple_of(2) {
                    return Err(Value::err("ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified."));
                }
                break;
            } else if is(o, "group") && more >= 2 {
                return Err(Value::err(
                    "ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            } else if is(o, "noack") {
                return Err(Value::err(
                    "ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            } else {
                return Err(Value::err(SYNTAX));
            }
            i += 1;
        }
        if streams_at == 0 {
            return Err(Value::err(SYNTAX));
        }
        let n = (a.len() - streams_at) / 2;
        let mut after = Vec::with_capacity(n);
        for k in 0..n {
            let key = &a[streams_at + k];
            let idarg = &a[streams_at + n + k];
            after.push(match idarg.as_slice() {
                b"$" => self.keys.get(key).map_or(StreamId::MIN, |s| s.last_id),
                b">" => return Err(Value::err("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.")),
                _ => parse_id(idarg, 0, true).map_err(Value::err)?,
            });
        }
        let limit = if count == 0 {
            usize::MAX
        } else {
            count as usize
        };
        let mut out = Vec::new();
        for (k, after) in after.into_iter().enumerate() {
            let key = &a[streams_at + k];
            let Some(s) = self.keys.get(key) else {
                continue;
            };
            let Some(from) = after.next() else {
                continue;
            };
            let items: Vec<Value> = s
                .entries
                .range(from..)
                .take(limit)
                .filter_map(|(id, _)| s.entry(*id))
                .collect();
            if !items.is_empty() {
                out.push((Value::bulk(key), Value::Array(items)));
            }
        }
        if out.is_empty() {
            Ok(Value::NullArray)
        } else {
            Ok(Value::ByKey(out))
        }
    }

    fn xdel(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
        let Some(s) = self.keys.get_mut(&a[1]) else {
            return Ok(Value::Int(0));
        };
        let ids = a[2..]
            .iter()
            .map(|x| parse_id(x, 0, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Value::err)?;
        Ok(Value::int(
            ids.into_iter().filter(|id| s.delete(*id)).count(),
        ))
    }
}

/// A trimming strategy (`MAXLEN n` or `MINID id`).
#[derive(Clone, Copy, Debug)]
enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

impl Trim {
    /// Trims `s`; how many entries went.
    fn apply(self, s: &mut Stream) -> usize {
        let mut n = 0;
        while let Some(first) = s.entries.keys().next().copied() {
            let go = match self {
                Trim::MaxLen(max) => s.entries.len() as u64 > max,
                Trim::MinId(min) => first < min,
            };
            if !go {
                break;
            }
            s.entries.remove(&first);
            n += 1;
        }
        n
    }
}

/// `MAXLEN [=|~] n` or `MINID [=|~] id` at `a[i]`: the strategy, the index of its last
/// argument, and whether it was approximate.
fn parse_trim(a: &[Vec<u8>], i: usize, already: bool) -> Result<(Trim, usize, bool), Value> {
    let maxlen = is(&a[i], "maxlen");
    if already {
        return Err(Value::err(
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
        ));
    }
    let more = a.len() - 1 - i;
    let mut j = i + 1;
    let mut approx = false;
    if more >= 2 && (a[j].as_slice() == b"~" || a[j].as_slice() == b"=") {
        approx = a[j].as_slice() == b"~";
        j += 1;
    }
    let t = if maxlen {
        let n = int(&a[j], NOT_INTEGER)?;
        if n < 0 {
            return Err(Value::err("ERR The MAXLEN argument must be >= 0."));
        }
        Trim::MaxLen(n as u64)
    } else {
        Trim::MinId(parse_id(&a[j], 0, true).map_err(|_| Value::err(INVALID_ID))?)
    };
    Ok((t, j, approx))
}

#[cfg(test)]
mod tests;
