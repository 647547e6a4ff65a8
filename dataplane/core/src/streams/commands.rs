//! The command table: which commands the state machine runs, the keys each names (how a
//! sharded deployment routes it), which reads block and on what, what a command's success
//! may have given blocked reads.

use super::{is, lower, Value};

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
pub(super) fn written(args: &[Vec<u8>], reply: &Value) -> Vec<Vec<u8>> {
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
