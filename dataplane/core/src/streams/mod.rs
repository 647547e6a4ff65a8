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

pub mod id;

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

/// The commands this state machine runs (lowercase): what a server hands to the group's order.
pub const COMMANDS: [&str; 18] = [
    "xadd",
    "xlen",
    "xrange",
    "xrevrange",
    "xgroup",
    "xreadgroup",
    "xread",
    "xack",
    "xpending",
    "xclaim",
    "xautoclaim",
    "xinfo",
    "xdel",
    "xtrim",
    "del",
    "exists",
    "type",
    "unlink",
];

/// The keys (stream names) a command of [`COMMANDS`] reads or writes, as Redis Cluster would
/// route it: a sharded deployment orders the command in the shard owning them, and refuses
/// one whose keys live in several shards. Empty for a command without keys (`XGROUP HELP`)
/// or too short to name one (the state machine answers its arity error).
pub fn keys(args: &[Vec<u8>]) -> Vec<&[u8]> {
    let Some(name) = args.first() else {
        return Vec::new();
    };
    let at = |i: usize| args.get(i).map(|k| k.as_slice()).into_iter().collect();
    match lower(name).as_str() {
        "xgroup" | "xinfo" => match args.get(1).map(|sub| lower(sub)).as_deref() {
            Some("help") | None => Vec::new(),
            Some(_) => at(2),
        },
        "xread" | "xreadgroup" => {
            // The options before STREAMS (a group or consumer may be called "streams").
            let mut i = 1;
            while i < args.len() {
                match lower(&args[i]).as_str() {
                    "group" => i += 3,
                    "count" | "block" => i += 2,
                    "streams" => {
                        let rest = &args[i + 1..];
                        return rest[..rest.len() / 2]
                            .iter()
                            .map(|k| k.as_slice())
                            .collect();
                    }
                    _ => i += 1,
                }
            }
            Vec::new()
        }
        "del" | "exists" | "unlink" => args[1..].iter().map(|k| k.as_slice()).collect(),
        _ => at(1),
    }
}

/// Whether `name` (any case) is one of [`COMMANDS`].
pub fn is_stream_command(name: &[u8]) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
}

/// The keys a command's success may have given blocked reads something on: an entry added, a
/// group's position set, a stream deleted (its readers are told).
fn written(args: &[Vec<u8>], reply: &Value) -> Vec<Vec<u8>> {
    let Some(name) = args.first() else {
        return Vec::new();
    };
    match reply {
        Value::Bulk(_) if is(name, "xadd") => args.get(1).cloned().into_iter().collect(),
        Value::Simple(_) if is(name, "xgroup") && args.get(1).is_some_and(|s| is(s, "setid")) => {
            args.get(2).cloned().into_iter().collect()
        }
        Value::Int(n) if *n > 0 && (is(name, "del") || is(name, "unlink")) => args[1..].to_vec(),
        _ => Vec::new(),
    }
}

/// The name of the command a server sends when a blocked read's time is up (`[UNBLOCK,
/// token]`): not one of [`COMMANDS`], so no client can send it.
pub const UNBLOCK: &str = "conveyor-unblock";

/// The keys of a read that blocks (`XREADGROUP ... BLOCK ms ... STREAMS k.. >..` or `XREAD
/// ... BLOCK ms STREAMS k.. id..`) and its timeout in milliseconds (0: for ever); `None` for
/// anything else (an XREADGROUP of a consumer's history is served at once, as in Redis).
pub fn blocking(args: &[Vec<u8>]) -> Option<(Vec<Vec<u8>>, u64)> {
    let group = match lower(args.first()?).as_str() {
        "xreadgroup" => true,
        "xread" => false,
        _ => return None,
    };
    let mut block = None;
    let mut i = 1;
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "block" => {
                block = std::str::from_utf8(args.get(i + 1)?)
                    .ok()?
                    .parse::<u64>()
                    .ok();
                i += 2;
            }
            "group" => i += 3,
            "count" => i += 2,
            "streams" => {
                let rest = &args[i + 1..];
                let n = rest.len() / 2;
                let ms = block?;
                if group && rest[n..].iter().any(|id| id.as_slice() != b">") {
                    return None;
                }
                return Some((rest[..n].to_vec(), ms));
            }
            _ => i += 1,
        }
    }
    None
}

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

    fn xgroup(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
        let sub = lower(&a[1]);
        let spec = match sub.as_str() {
            "create" | "setid" => -5,
            "destroy" => 4,
            "createconsumer" | "delconsumer" => 5,
            "help" => 2,
            _ => {
                return Err(Value::err(format!(
                    "ERR unknown subcommand '{}'. Try XGROUP HELP.",
                    text(&a[1])
                )))
            }
        };
        if !arity_ok(a.len(), spec) {
            return Err(arity(&format!("xgroup|{sub}")));
        }
        if sub == "help" {
            return Ok(Value::Array(
                [
                    "XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "CREATE <key> <groupname> <id|$> [option]",
                    "    Create a new consumer group. Options are:",
                    "    * MKSTREAM",
                    "      Create the empty stream if it does not exist.",
                    "    * ENTRIESREAD entries_read",
                    "      Set the group's entries_read counter (internal use).",
                    "CREATECONSUMER <key> <groupname> <consumer>",
                    "    Create a new consumer in the specified group.",
                    "DELCONSUMER <key> <groupname> <consumer>",
                    "    Remove the specified consumer.",
                    "DESTROY <key> <groupname>",
                    "    Remove the specified group.",
                    "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
                    "    Set the current group ID and entries_read counter.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|l| Value::Simple(l.to_string()))
                .collect(),
            ));
        }
        let (key, group) = (&a[2], &a[3]);
        let mut mkstream = false;
        let mut entries_read: Option<i64> = None;
        if sub == "create" {
            let mut i = 5;
            while i < a.len() {
                if is(&a[i], "mkstream") {
                    mkstream = true;
                    i += 1;
                } else if is(&a[i], "entriesread") && i + 1 < a.len() {
                    let n = int(&a[i + 1], NOT_INTEGER)?;
                    if n < -1 {
                        return Err(Value::err(
                            "ERR value for ENTRIESREAD must be positive or -1",
                        ));
                    }
                    entries_read = Some(n);
                    i += 2;
                } else {
                    return Err(Value::err(format!(
                        "ERR unknown subcommand or wrong number of arguments for '{}'. Try XGROUP HELP.",
                        text(&a[1])
                    )));
                }
            }
        }
        let exists = self.keys.contains_key(key);
        if !(exists || (sub == "create" && mkstream)) {
            return Err(Value::err("ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically."));
        }
        let has_group = self
            .keys
            .get(key)
            .is_some_and(|s| s.groups.contains_key(group));
        if !has_group && matches!(sub.as_str(), "setid" | "createconsumer" | "delconsumer") {
            return Err(Value::err(format!(
                "NOGROUP No such consumer group '{}' for key name '{}'",
                text(group),
                text(key)
            )));
        }
        match sub.as_str() {
            "create" => {
                if a.len() > 8 {
                    return Err(Value::err(format!(
                        "ERR unknown subcommand or wrong number of arguments for '{}'. Try XGROUP HELP.",
                        text(&a[1])
                    )));
                }
                let last = self.keys.get(key).map(|s| s.last_id).unwrap_or_default();
                let id = if a[4].as_slice() == b"$" {
                    last
                } else {
                    parse_id(&a[4], 0, true).map_err(Value::err)?
                };
                let s = self.keys.entry(key.clone()).or_default();
                if s.groups.contains_key(group) {
                    return Err(Value::err("BUSYGROUP Consumer Group name already exists"));
                }
                s.groups.insert(
                    group.clone(),
                    Group {
                        last_id: id,
                        entries_read: entries_read.and_then(|n| u64::try_from(n).ok()),
                        pel: BTreeMap::new(),
                        consumers: BTreeMap::new(),
                        requeued: BTreeMap::new(),
                    },
                );
                Ok(Value::ok())
            }
            "setid" => {
                if a.len() != 5 && a.len() != 7 {
                    return Err(arity("xgroup|setid"));
                }
                let mut er: Option<u64> = None;
                if a.len() == 7 {
                    if !is(&a[5], "entriesread") {
                        return Err(Value::err(SYNTAX));
                    }
                    let n = int(&a[6], NOT_INTEGER)?;
                    if n < -1 {
                        return Err(Value::err(
                            "ERR value for ENTRIESREAD must be positive or -1",
                        ));
                    }
                    er = u64::try_from(n).ok();
                }
                let s = self.keys.get_mut(key).expect("checked");
                let id = if a[4].as_slice() == b"$" {
                    s.last_id
                } else {
                    parse_id(&a[4], 0, true).map_err(Value::err)?
                };
                let g = s.groups.get_mut(group).expect("checked");
                g.last_id = id;
                g.entries_read = er;
                Ok(Value::ok())
            }
            "destroy" => {
                let s = self.keys.get_mut(key).expect("checked");
                Ok(Value::Int(i64::from(s.groups.remove(group).is_some())))
            }
            "createconsumer" => {
                let g = self.group_mut(key, group).expect("checked");
                if g.consumers.contains_key(&a[4]) {
                    return Ok(Value::Int(0));
                }
                g.consumers.insert(a[4].clone(), Consumer::default());
                Ok(Value::Int(1))
            }
            "delconsumer" => {
                let g = self.group_mut(key, group).expect("checked");
                let Some(c) = g.consumers.remove(&a[4]) else {
                    return Ok(Value::Int(0));
                };
                for id in &c.pel {
                    g.pel.remove(id);
                }
                Ok(Value::int(c.pel.len()))
            }
            _ => unreachable!("checked above"),
        }
    }

    fn group_mut(&mut self, key: &[u8], group: &[u8]) -> Option<&mut Group> {
        self.keys.get_mut(key)?.groups.get_mut(group)
    }

    fn xreadgroup(&mut self, member: MemberId, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        let mut count: i64 = 0;
        let mut noack = false;
        let mut group: Option<(&Vec<u8>, &Vec<u8>)> = None;
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
                    return Err(Value::err("ERR Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must be specified."));
                }
                break;
            } else if is(o, "group") && more >= 2 {
                group = Some((&a[i + 1], &a[i + 2]));
                i += 2;
            } else if is(o, "noack") {
                noack = true;
            } else {
                return Err(Value::err(SYNTAX));
            }
            i += 1;
        }
        if streams_at == 0 {
            return Err(Value::err(SYNTAX));
        }
        let Some((gname, cname)) = group else {
            return Err(Value::err("ERR Missing GROUP option for XREADGROUP"));
        };
        let n = (a.len() - streams_at) / 2;
        let mut wanted: Vec<Option<StreamId>> = Vec::with_capacity(n);
        for k in 0..n {
            let key = &a[streams_at + k];
            let idarg = &a[streams_at + n + k];
            if !self
                .keys
                .get(key)
                .is_some_and(|s| s.groups.contains_key(gname))
            {
                return Err(Value::err(format!(
                    "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                    text(key),
                    text(gname)
                )));
            }
            if idarg.as_slice() == b"$" {
                return Err(Value::err("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set."));
            }
            if idarg.as_slice() == b">" {
                wanted.push(None);
            } else {
                wanted.push(Some(parse_id(idarg, 0, true).map_err(Value::err)?));
            }
        }
        let limit = if count == 0 {
            usize::MAX
        } else {
            count as usize
        };
        let mut out: Vec<(Value, Value)> = Vec::new();
        for (k, want) in wanted.into_iter().enumerate() {
            let key = &a[streams_at + k];
            let s = self.keys.get_mut(key).expect("checked");
            let mut taken = s.groups.remove(gname).expect("checked");
            let g = &mut taken;
            // As Redis: the consumer is made (and seen) when the read is served at once: a
            // read of its history, or of new entries when there are some.
            let newer = s.entries.keys().next_back().is_some_and(|l| *l > g.last_id);
            if want.is_none() && !newer && g.requeued.is_empty() {
                s.groups.insert(gname.clone(), taken);
                continue;
            }
            let c = g.consumers.entry(cname.clone()).or_default();
            c.seen_ms = now_ms;
            match want {
                Some(after) => {
                    // The consumer's own pending entries after `after`.
                    let start = match after.next() {
                        Some(s) => s,
                        None => {
                            s.groups.insert(gname.clone(), taken);
                            out.push((Value::bulk(key), Value::Array(Vec::new())));
                            continue;
                        }
                    };
                    let ids: Vec<StreamId> = c.pel.range(start..).take(limit).copied().collect();
                    let mut items = Vec::new();
                    for id in ids {
                        match s.entry(id) {
                            Some(e) => {
                                items.push(e);
                                if let Some(nack) = g.pel.get_mut(&id) {
                                    nack.delivered_ms = now_ms;
                                    nack.count += 1;
                                    nack.via = Some(member);
                                }
                            }
                            None => items.push(Value::Array(vec![Value::id(id), Value::NullArray])),
                        }
                    }
                    out.push((Value::bulk(key), Value::Array(items)));
                }
                None => {
                    let mut items = Vec::new();
                    // Entries given back by a removed member's consumers come first.
                    while items.len() < limit {
                        let Some((id, n)) = g.requeued.pop_first() else {
                            break;
                        };
                        let Some(e) = s.entry(id) else {
                            continue;
                        };
                        items.push(e);
                        if !noack {
                            g.pel.insert(
                                id,
                                Nack {
                                    consumer: cname.clone(),
                                    delivered_ms: now_ms,
                                    count: n + 1,
                                    via: Some(member),
                                },
                            );
                            g.consumers
                                .get_mut(cname)
                                .expect("made above")
                                .pel
                                .insert(id);
                        }
                    }
                    if newer && items.len() < limit {
                        let from = g.last_id.next().unwrap_or(StreamId::MAX);
                        let ids: Vec<StreamId> = s
                            .entries
                            .range(from..)
                            .take(limit - items.len())
                            .map(|(id, _)| *id)
                            .collect();
                        for id in ids {
                            if id > g.last_id {
                                let known = g.entries_read.is_some() && !s.tombstones_from(id);
                                if known {
                                    g.entries_read = g.entries_read.map(|n| n + 1);
                                } else if s.entries_added > 0 {
                                    g.entries_read = s.estimate_read(id);
                                }
                                g.last_id = id;
                            }
                            items.extend(s.entry(id));
                            if noack {
                                continue;
                            }
                            if let Some(old) = g.pel.get(&id).map(|n| n.consumer.clone()) {
                                if let Some(oc) = g.consumers.get_mut(&old) {
                                    oc.pel.remove(&id);
                                }
                            }
                            g.pel.insert(
                                id,
                                Nack {
                                    consumer: cname.clone(),
                                    delivered_ms: now_ms,
                                    count: 1,
                                    via: Some(member),
                                },
                            );
                            g.requeued.remove(&id);
                            g.consumers
                                .get_mut(cname)
                                .expect("made above")
                                .pel
                                .insert(id);
                        }
                    }
                    if !items.is_empty() {
                        out.push((Value::bulk(key), Value::Array(items)));
                    }
                }
            }
            s.groups.insert(gname.clone(), taken);
        }
        if out.is_empty() {
            Ok(Value::NullArray)
        } else {
            Ok(Value::ByKey(out))
        }
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

    fn xack(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
        let Some(g) = self.group_mut(&a[1], &a[2]) else {
            return Ok(Value::Int(0));
        };
        let ids = a[3..]
            .iter()
            .map(|x| parse_id(x, 0, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Value::err)?;
        let mut acked = 0;
        for id in ids {
            if let Some(n) = g.pel.remove(&id) {
                if let Some(c) = g.consumers.get_mut(&n.consumer) {
                    c.pel.remove(&id);
                }
                acked += 1;
            } else if g.requeued.remove(&id).is_some() {
                acked += 1;
            }
        }
        Ok(Value::Int(acked))
    }

    fn xpending(&mut self, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        if a.len() != 3 && (a.len() < 6 || a.len() > 9) {
            return Err(Value::err(SYNTAX));
        }
        let mut range = None;
        if a.len() >= 6 {
            let mut at = 3;
            let mut minidle = 0;
            if is(&a[3], "idle") {
                minidle = int(&a[4], NOT_INTEGER)?;
                if a.len() < 8 {
                    return Err(Value::err(SYNTAX));
                }
                at += 2;
            }
            let count = int(&a[at + 2], NOT_INTEGER)?.max(0) as u64;
            let (mut start, sx) = parse_interval(&a[at], 0).map_err(Value::err)?;
            if sx {
                start = start
                    .next()
                    .ok_or_else(|| Value::err("ERR invalid start ID for the interval"))?;
            }
            let (mut end, ex) = parse_interval(&a[at + 1], u64::MAX).map_err(Value::err)?;
            if ex {
                end = end
                    .prev()
                    .ok_or_else(|| Value::err("ERR invalid end ID for the interval"))?;
            }
            let consumer = a.get(at + 3).cloned();
            range = Some((minidle, start, end, count, consumer));
        }
        let Some(g) = self.keys.get(&a[1]).and_then(|s| s.groups.get(&a[2])) else {
            return Err(Value::err(format!(
                "NOGROUP No such key '{}' or consumer group '{}'",
                text(&a[1]),
                text(&a[2])
            )));
        };
        let Some((minidle, start, end, mut count, consumer)) = range else {
            if g.pel.is_empty() {
                return Ok(Value::Array(vec![
                    Value::Int(0),
                    Value::Null,
                    Value::Null,
                    Value::NullArray,
                ]));
            }
            let first = *g.pel.keys().next().expect("not empty");
            let last = *g.pel.keys().next_back().expect("not empty");
            let by: Vec<Value> = g
                .consumers
                .iter()
                .filter(|(_, c)| !c.pel.is_empty())
                .map(|(n, c)| {
                    Value::Array(vec![Value::bulk(n), Value::bulk(c.pel.len().to_string())])
                })
                .collect();
            return Ok(Value::Array(vec![
                Value::int(g.pel.len()),
                Value::id(first),
                Value::id(last),
                Value::Array(by),
            ]));
        };
        let ids: Vec<StreamId> = match &consumer {
            Some(name) => match g.consumers.get(name) {
                None => return Ok(Value::Array(Vec::new())),
                Some(c) => c.pel.iter().copied().collect(),
            },
            None => g.pel.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for id in ids {
            if count == 0 {
                break;
            }
            if id < start {
                continue;
            }
            if id > end {
                break;
            }
            let Some(n) = g.pel.get(&id) else {
                continue;
            };
            let idle = now_ms.saturating_sub(n.delivered_ms);
            if minidle > 0 && (idle as i64) < minidle {
                continue;
            }
            count -= 1;
            out.push(Value::Array(vec![
                Value::id(id),
                Value::bulk(&n.consumer),
                Value::int(idle),
                Value::int(n.count),
            ]));
        }
        Ok(Value::Array(out))
    }

    fn xclaim(&mut self, member: MemberId, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        let nogroup = || {
            Value::err(format!(
                "NOGROUP No such key '{}' or consumer group '{}'",
                text(&a[1]),
                text(&a[2])
            ))
        };
        if self.group_mut(&a[1], &a[2]).is_none() {
            return Err(nogroup());
        }
        let minidle = int(&a[4], "ERR Invalid min-idle-time argument for XCLAIM")?.max(0) as u64;
        let mut j = 5;
        let mut ids = Vec::new();
        while j < a.len() {
            match parse_id(&a[j], 0, true) {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
            j += 1;
        }
        let now = now_ms as i64;
        let (mut force, mut justid) = (false, false);
        let mut delivery: Option<i64> = None;
        let mut retry: Option<i64> = None;
        let mut last_id = StreamId::MIN;
        while j < a.len() {
            let more = a.len() - 1 - j;
            let o = &a[j];
            if is(o, "force") {
                force = true;
            } else if is(o, "justid") {
                justid = true;
            } else if is(o, "idle") && more > 0 {
                j += 1;
                delivery = Some(now - int(&a[j], "ERR Invalid IDLE option argument for XCLAIM")?);
            } else if is(o, "time") && more > 0 {
                j += 1;
                delivery = Some(int(&a[j], "ERR Invalid TIME option argument for XCLAIM")?);
            } else if is(o, "retrycount") && more > 0 {
                j += 1;
                retry = Some(int(
                    &a[j],
                    "ERR Invalid RETRYCOUNT option argument for XCLAIM",
                )?);
            } else if is(o, "lastid") && more > 0 {
                j += 1;
                last_id = parse_id(&a[j], 0, true).map_err(Value::err)?;
            } else {
                return Err(Value::err(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    text(o)
                )));
            }
            j += 1;
        }
        let delivered_ms = match delivery {
            Some(d) if d >= 0 && d <= now => d as u64,
            _ => now_ms,
        };
        let cname = a[3].clone();
        let s = self.keys.get_mut(&a[1]).expect("checked");
        let mut taken = s.groups.remove(&a[2]).expect("checked");
        let g = &mut taken;
        if last_id > g.last_id {
            g.last_id = last_id;
        }
        let mut out = Vec::new();
        for id in ids {
            if !s.entries.contains_key(&id) {
                if let Some(n) = g.pel.remove(&id) {
                    if let Some(c) = g.consumers.get_mut(&n.consumer) {
                        c.pel.remove(&id);
                    }
                }
                g.requeued.remove(&id);
                continue;
            }
            let mut created = false;
            if !g.pel.contains_key(&id) {
                if let Some(count) = g.requeued.get(&id).copied().filter(|_| !force) {
                    // Given back by a removed member's consumer: claimable as pending.
                    g.requeued.remove(&id);
                    g.pel.insert(
                        id,
                        Nack {
                            consumer: Vec::new(),
                            delivered_ms: 0,
                            count,
                            via: None,
                        },
                    );
                } else if force {
                    g.requeued.remove(&id);
                    g.pel.insert(
                        id,
                        Nack {
                            consumer: Vec::new(),
                            delivered_ms: 0,
                            count: 1,
                            via: None,
                        },
                    );
                    created = true;
                } else {
                    continue;
                }
            }
            let n = g.pel.get_mut(&id).expect("present");
            let owned = !n.consumer.is_empty() || !created;
            if owned && minidle > 0 && now_ms.saturating_sub(n.delivered_ms) < minidle {
                continue;
            }
            let old = std::mem::replace(&mut n.consumer, cname.clone());
            n.delivered_ms = delivered_ms;
            n.via = Some(member);
            match retry {
                Some(r) => n.count = r.max(0) as u64,
                None if !justid => n.count += 1,
                None => {}
            }
            if old != cname {
                if let Some(oc) = g.consumers.get_mut(&old) {
                    oc.pel.remove(&id);
                }
            }
            let c = g.consumers.entry(cname.clone()).or_default();
            c.seen_ms = now_ms;
            c.pel.insert(id);
            out.push(if justid {
                Value::id(id)
            } else {
                s.entry(id).unwrap_or(Value::Null)
            });
        }
        s.groups.insert(a[2].clone(), taken);
        Ok(Value::Array(out))
    }

    fn xautoclaim(&mut self, member: MemberId, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        let exists = self
            .keys
            .get(&a[1])
            .is_some_and(|s| s.groups.contains_key(&a[2]));
        let minidle =
            int(&a[4], "ERR Invalid min-idle-time argument for XAUTOCLAIM")?.max(0) as u64;
        let (mut start, sx) = parse_interval(&a[5], 0).map_err(Value::err)?;
        if sx {
            start = start
                .next()
                .ok_or_else(|| Value::err("ERR invalid start ID for the interval"))?;
        }
        let mut count: i64 = 100;
        let mut justid = false;
        let mut j = 6;
        while j < a.len() {
            let more = a.len() - 1 - j;
            if is(&a[j], "count") && more > 0 {
                let max = i64::MAX / 16;
                count = match int(&a[j + 1], NOT_INTEGER) {
                    Ok(n) if (1..=max).contains(&n) => n,
                    Ok(_) => return Err(Value::err("ERR COUNT must be > 0")),
                    Err(_) => return Err(Value::err("ERR COUNT must be > 0")),
                };
                j += 1;
            } else if is(&a[j], "justid") {
                justid = true;
            } else {
                return Err(Value::err(SYNTAX));
            }
            j += 1;
        }
        if !exists {
            return Err(Value::err(format!(
                "NOGROUP No such key '{}' or consumer group '{}'",
                text(&a[1]),
                text(&a[2])
            )));
        }
        let cname = a[3].clone();
        let s = self.keys.get_mut(&a[1]).expect("checked");
        let mut taken = s.groups.remove(&a[2]).expect("checked");
        let g = &mut taken;
        // Entries given back by removed members' consumers are pending too.
        for (id, count) in std::mem::take(&mut g.requeued) {
            g.pel.insert(
                id,
                Nack {
                    consumer: Vec::new(),
                    delivered_ms: 0,
                    count,
                    via: None,
                },
            );
        }
        let keys: Vec<StreamId> = g.pel.range(start..).map(|(k, _)| *k).collect();
        let mut attempts = count.saturating_mul(10);
        let mut claimed = Vec::new();
        let mut deleted = Vec::new();
        let mut next = 0;
        while attempts > 0 && count > 0 && next < keys.len() {
            attempts -= 1;
            let id = keys[next];
            next += 1;
            if !s.entries.contains_key(&id) {
                if let Some(n) = g.pel.remove(&id) {
                    if let Some(c) = g.consumers.get_mut(&n.consumer) {
                        c.pel.remove(&id);
                    }
                }
                deleted.push(Value::id(id));
                count -= 1;
                continue;
            }
            let n = g.pel.get_mut(&id).expect("listed");
            if minidle > 0 && now_ms.saturating_sub(n.delivered_ms) < minidle {
                continue;
            }
            let old = std::mem::replace(&mut n.consumer, cname.clone());
            n.delivered_ms = now_ms;
            n.via = Some(member);
            if !justid {
                n.count += 1;
            }
            if old != cname {
                if let Some(oc) = g.consumers.get_mut(&old) {
                    oc.pel.remove(&id);
                }
            }
            let c = g.consumers.entry(cname.clone()).or_default();
            c.seen_ms = now_ms;
            c.pel.insert(id);
            claimed.push(if justid {
                Value::id(id)
            } else {
                s.entry(id).unwrap_or(Value::Null)
            });
            count -= 1;
        }
        // Pending entries of no consumer left unclaimed go back to the group.
        let orphans: Vec<StreamId> = g
            .pel
            .iter()
            .filter(|(_, n)| n.consumer.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for id in orphans {
            if let Some(n) = g.pel.remove(&id) {
                g.requeued.insert(id, n.count);
            }
        }
        s.groups.insert(a[2].clone(), taken);
        let cursor = keys.get(next).copied().unwrap_or_default();
        Ok(Value::Array(vec![
            Value::id(cursor),
            Value::Array(claimed),
            Value::Array(deleted),
        ]))
    }

    fn xinfo(&mut self, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
        let sub = lower(&a[1]);
        let spec = match sub.as_str() {
            "stream" => -3,
            "groups" => 3,
            "consumers" => 4,
            "help" => 2,
            _ => {
                return Err(Value::err(format!(
                    "ERR unknown subcommand '{}'. Try XINFO HELP.",
                    text(&a[1])
                )))
            }
        };
        if !arity_ok(a.len(), spec) {
            return Err(arity(&format!("xinfo|{sub}")));
        }
        if sub == "help" {
            return Ok(Value::Array(
                [
                    "XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "CONSUMERS <key> <groupname>",
                    "    Show consumers of <groupname>.",
                    "GROUPS <key>",
                    "    Show the stream consumer groups.",
                    "STREAM <key> [FULL [COUNT <count>]",
                    "    Show information about the stream.",
                    "HELP",
                    "    Print this help.",
                ]
                .iter()
                .map(|l| Value::Simple(l.to_string()))
                .collect(),
            ));
        }
        let Some(s) = self.keys.get(&a[2]) else {
            return Err(Value::err("ERR no such key"));
        };
        match sub.as_str() {
            "stream" => {
                if a.len() > 3 {
                    // FULL [COUNT n]
                    let ok =
                        is(&a[3], "full") && (a.len() == 4 || (a.len() == 6 && is(&a[4], "count")));
                    if !ok {
                        return Err(Value::err(format!(
                            "ERR unknown subcommand or wrong number of arguments for '{}'. Try XINFO HELP.",
                            text(&a[1])
                        )));
                    }
                    let count = if a.len() == 6 {
                        int(&a[5], NOT_INTEGER)?.max(0) as usize
                    } else {
                        10
                    };
                    return Ok(self.xinfo_full(s, count));
                }
                let first = s.entries.keys().next().and_then(|id| s.entry(*id));
                let last = s.entries.keys().next_back().and_then(|id| s.entry(*id));
                Ok(Value::map(vec![
                    ("length", Value::int(s.entries.len())),
                    ("radix-tree-keys", Value::int(s.entries.len())),
                    ("radix-tree-nodes", Value::int(s.entries.len() + 1)),
                    ("last-generated-id", Value::id(s.last_id)),
                    ("max-deleted-entry-id", Value::id(s.max_deleted)),
                    ("entries-added", Value::int(s.entries_added)),
                    ("recorded-first-entry-id", Value::id(s.first_id())),
                    ("groups", Value::int(s.groups.len())),
                    ("first-entry", first.unwrap_or(Value::Null)),
                    ("last-entry", last.unwrap_or(Value::Null)),
                ]))
            }
            "groups" => Ok(Value::Array(
                s.groups
                    .iter()
                    .map(|(name, g)| {
                        Value::map(vec![
                            ("name", Value::bulk(name)),
                            ("consumers", Value::int(g.consumers.len())),
                            ("pending", Value::int(g.pel.len() + g.requeued.len())),
                            ("last-delivered-id", Value::id(g.last_id)),
                            (
                                "entries-read",
                                g.entries_read.map_or(Value::Null, Value::int),
                            ),
                            ("lag", s.lag(g)),
                        ])
                    })
                    .collect(),
            )),
            _ => {
                let Some(g) = s.groups.get(&a[3]) else {
                    return Err(Value::err(format!(
                        "NOGROUP No such consumer group '{}' for key name '{}'",
                        text(&a[3]),
                        text(&a[2])
                    )));
                };
                Ok(Value::Array(
                    g.consumers
                        .iter()
                        .map(|(name, c)| {
                            Value::map(vec![
                                ("name", Value::bulk(name)),
                                ("pending", Value::int(c.pel.len())),
                                ("idle", Value::int(now_ms.saturating_sub(c.seen_ms))),
                            ])
                        })
                        .collect(),
                ))
            }
        }
    }

    fn xinfo_full(&self, s: &Stream, count: usize) -> Value {
        let limit = if count == 0 { usize::MAX } else { count };
        let entries: Vec<Value> = s
            .entries
            .keys()
            .take(limit)
            .filter_map(|id| s.entry(*id))
            .collect();
        let groups: Vec<Value> = s
            .groups
            .iter()
            .map(|(name, g)| {
                let pel: Vec<Value> = g
                    .pel
                    .iter()
                    .take(limit)
                    .map(|(id, n)| {
                        Value::Array(vec![
                            Value::id(*id),
                            Value::bulk(&n.consumer),
                            Value::int(n.delivered_ms),
                            Value::int(n.count),
                        ])
                    })
                    .collect();
                let consumers: Vec<Value> = g
                    .consumers
                    .iter()
                    .map(|(cn, c)| {
                        let pel: Vec<Value> = c
                            .pel
                            .iter()
                            .take(limit)
                            .filter_map(|id| g.pel.get(id).map(|n| (id, n)))
                            .map(|(id, n)| {
                                Value::Array(vec![
                                    Value::id(*id),
                                    Value::int(n.delivered_ms),
                                    Value::int(n.count),
                                ])
                            })
                            .collect();
                        Value::map(vec![
                            ("name", Value::bulk(cn)),
                            ("seen-time", Value::int(c.seen_ms)),
                            ("pel-count", Value::int(c.pel.len())),
                            ("pending", Value::Array(pel)),
                        ])
                    })
                    .collect();
                Value::map(vec![
                    ("name", Value::bulk(name)),
                    ("last-delivered-id", Value::id(g.last_id)),
                    (
                        "entries-read",
                        g.entries_read.map_or(Value::Null, Value::int),
                    ),
                    ("lag", s.lag(g)),
                    ("pel-count", Value::int(g.pel.len())),
                    ("pending", Value::Array(pel)),
                    ("consumers", Value::Array(consumers)),
                ])
            })
            .collect();
        Value::map(vec![
            ("length", Value::int(s.entries.len())),
            ("radix-tree-keys", Value::int(s.entries.len())),
            ("radix-tree-nodes", Value::int(s.entries.len() + 1)),
            ("last-generated-id", Value::id(s.last_id)),
            ("max-deleted-entry-id", Value::id(s.max_deleted)),
            ("entries-added", Value::int(s.entries_added)),
            ("recorded-first-entry-id", Value::id(s.first_id())),
            ("entries", Value::Array(entries)),
            ("groups", Value::Array(groups)),
        ])
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
