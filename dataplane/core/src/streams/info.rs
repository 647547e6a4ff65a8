//! XINFO: a stream's, its groups' and their consumers' descriptions.

use super::*;

impl Streams {
    pub(super) fn xinfo(&mut self, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
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
}
