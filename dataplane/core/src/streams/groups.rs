//! Consumer groups: XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM and XAUTOCLAIM.

use super::*;

impl Streams {
    pub(super) fn xgroup(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
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

    pub(super) fn group_mut(&mut self, key: &[u8], group: &[u8]) -> Option<&mut Group> {
        self.keys.get_mut(key)?.groups.get_mut(group)
    }

    pub(super) fn xreadgroup(
        &mut self,
        member: MemberId,
        now_ms: u64,
        a: &[Vec<u8>],
    ) -> Result<Value, Value> {
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

    pub(super) fn xack(&mut self, a: &[Vec<u8>]) -> Result<Value, Value> {
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

    pub(super) fn xpending(&mut self, now_ms: u64, a: &[Vec<u8>]) -> Result<Value, Value> {
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

    pub(super) fn xclaim(
        &mut self,
        member: MemberId,
        now_ms: u64,
        a: &[Vec<u8>],
    ) -> Result<Value, Value> {
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

    pub(super) fn xautoclaim(
        &mut self,
        member: MemberId,
        now_ms: u64,
        a: &[Vec<u8>],
    ) -> Result<Value, Value> {
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
}
