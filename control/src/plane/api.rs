//! The control plane's routes: what each answers, and who may change what.

use super::*;

/// An HTTP answer: status and JSON (or text) body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: String,
    pub(super) text: bool,
}

pub(super) fn json(status: u16, v: serde_json::Value) -> Answer {
    Answer {
        status,
        body: v.to_string(),
        text: false,
    }
}

pub(super) fn error(status: u16, msg: impl Into<String>) -> Answer {
    json(status, serde_json::json!({ "error": msg.into() }))
}

/// Constant-time comparison of the presented token with the configured one.
pub(super) fn token_ok(expected: &str, header: Option<&str>) -> bool {
    let Some(got) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), got.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A pipeline document as anyone may see it: its functions' environment values (secrets,
/// often) hidden; the control token shows them.
fn redacted(p: &serde_json::Value) -> serde_json::Value {
    let mut p = p.clone();
    if let Some(steps) = p.get_mut("steps").and_then(|s| s.as_object_mut()) {
        for step in steps.values_mut() {
            if let Some(env) = step
                .get_mut("executor")
                .and_then(|e| e.get_mut("env"))
                .and_then(|e| e.as_object_mut())
            {
                for v in env.values_mut() {
                    *v = "(hidden: the control token shows it)".into();
                }
            }
        }
    }
    p
}

/// The methods a resource takes (for `Allow` on a 405).
pub(super) fn allowed(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "pipelines" | "admissions", _] => "GET, PUT, DELETE",
        ["v1", "report"] => "POST",
        ["v1", "shards", "queues", _] => "PUT",
        ["v1", "members", _, "leave"] => "POST",
        _ => "GET",
    }
}

/// The `?shard=N` of a URL, checked against the group's shards; `Ok(None)` without one.
fn shard_asked(url: &str, shards: u16) -> Result<Option<u16>, Answer> {
    let Some(v) = url
        .split_once('?')
        .into_iter()
        .flat_map(|(_, q)| q.split('&'))
        .find_map(|kv| kv.strip_prefix("shard="))
    else {
        return Ok(None);
    };
    match v.parse::<u16>() {
        Ok(s) if s < shards.max(1) => Ok(Some(s)),
        Ok(s) => Err(error(
            404,
            format!(
                "shard: the group has no shard {s} (shards 0 to {})",
                shards.max(1) - 1
            ),
        )),
        Err(_) => Err(error(400, format!("shard: {v:?} is not a shard number"))),
    }
}

pub(super) fn route(
    state: &Mutex<State>,
    token: &str,
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: &str,
) -> Answer {
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Ok(mut st) = state.lock() else {
        return error(500, "state lock poisoned");
    };
    let writes = matches!(method, "PUT" | "POST" | "DELETE");
    // A member may put itself on the allowlist with the join token.
    let self_admission = method == "PUT"
        && matches!(parts.as_slice(), ["v1", "admissions", _])
        && st.join_token.as_deref().is_some_and(|t| token_ok(t, auth));
    if writes && !self_admission && !token_ok(token, auth) {
        return error(
            401,
            "this change needs the control token (Authorization: Bearer TOKEN)",
        );
    }
    match (method, parts.as_slice()) {
        ("GET", ["health"]) => json(
            200,
            serde_json::json!({
                "ok": true,
                "version": st.persisted.version,
                "members_reporting": fresh(&st).len(),
            }),
        ),
        ("GET", ["v1", "view"]) => {
            let shard = match shard_asked(url, st.shards) {
                Ok(s) => s.unwrap_or(0),
                Err(e) => return e,
            };
            let reports = fresh_of(&st, shard);
            let latest = reports.iter().map(|r| r.1.view).max().unwrap_or(0);
            let members = reports
                .iter()
                .find(|r| r.1.view == latest)
                .map(|r| r.1.members.clone())
                .unwrap_or_default();
            let by: BTreeMap<&str, serde_json::Value> = st
                .reports
                .iter()
                .filter(|((_, s), _)| *s == shard)
                .map(|((n, _), (t, r))| {
                    (
                        n.as_str(),
                        serde_json::json!({
                            "status": r.status,
                            "view": r.view,
                            "age_ms": t.elapsed().as_millis() as u64,
                        }),
                    )
                })
                .collect();
            let mut v = serde_json::json!({ "view": latest, "members": members, "reports": by });
            if st.shards > 1 {
                // A sharded group: which shard's view this is (`?shard=N` for another).
                v["shard"] = shard.into();
                v["shards"] = st.shards.into();
            }
            json(200, v)
        }
        ("GET", ["v1", "queues"]) => {
            let asked = match shard_asked(url, st.shards) {
                Ok(s) => s,
                Err(e) => return e,
            };
            let of = |shard: u16| -> BTreeMap<String, u64> {
                st.reports
                    .values()
                    .filter(|(_, r)| r.status == "serving" && r.shard == shard)
                    .max_by_key(|(t, r)| (r.view, *t))
                    .map(|(_, r)| r.queues.clone())
                    .unwrap_or_default()
            };
            match (&st.persisted.shard_map, asked) {
                (Some(map), None) if st.shards > 1 => {
                    // Each queue as the shard owning it (by the control plane's map) sees it:
                    // another shard holds none of its requests.
                    let by_shard: Vec<BTreeMap<String, u64>> = (0..st.shards).map(of).collect();
                    let mut queues = BTreeMap::new();
                    let mut owner = BTreeMap::new();
                    for q in by_shard.iter().flat_map(|m| m.keys()) {
                        let s = map.owner(q).0;
                        let depth = by_shard
                            .get(usize::from(s))
                            .and_then(|m| m.get(q))
                            .copied()
                            .unwrap_or(0);
                        queues.insert(q.clone(), depth);
                        owner.insert(q.clone(), s);
                    }
                    json(
                        200,
                        serde_json::json!({ "queues": queues, "shard_of": owner, "map_version": map.version }),
                    )
                }
                (_, s) => json(200, serde_json::json!({ "queues": of(s.unwrap_or(0)) })),
            }
        }
        ("GET", ["v1", "pipelines"]) => {
            let full = token_ok(token, auth);
            let pipelines: BTreeMap<&String, serde_json::Value> = st
                .persisted
                .pipelines
                .iter()
                .map(|(n, p)| (n, if full { p.clone() } else { redacted(p) }))
                .collect();
            json(
                200,
                serde_json::json!({
                    "version": st.persisted.version,
                    "pipelines": pipelines,
                }),
            )
        }
        ("GET", ["v1", "pipelines", name]) => match st.persisted.pipelines.get(*name) {
            Some(p) if token_ok(token, auth) => json(200, p.clone()),
            Some(p) => json(200, redacted(p)),
            None => error(404, format!("no pipeline named {name:?}")),
        },
        ("PUT", ["v1", "pipelines", name]) => {
            match Pipeline::from_json_in_group(body, st.durability) {
                Err(e) => error(400, e.to_string()),
                Ok(p) if p.name != *name => error(
                    400,
                    format!("name: the document names {:?}, the URL {name:?}", p.name),
                ),
                Ok(p) => {
                    let created = !st.persisted.pipelines.contains_key(*name);
                    let value = serde_json::from_str(&p.to_json()).unwrap_or_default();
                    let mut next = st.persisted.pipelines.clone();
                    next.insert(name.to_string(), value);
                    let v = st.persisted.version + 1;
                    if let Err(e) = pipelines_op(
                        conveyor_core::types::MemberId(u16::MAX),
                        v,
                        &next,
                        st.max_payload,
                    ) {
                        return error(409, e);
                    }
                    st.persisted.pipelines = next;
                    st.persisted.version = v;
                    match st.save() {
                        Ok(()) => json(
                            if created { 201 } else { 200 },
                            serde_json::json!({ "version": st.persisted.version }),
                        ),
                        Err(e) => error(500, format!("{e:#}")),
                    }
                }
            }
        }
        ("DELETE", ["v1", "pipelines", name]) => {
            if st.persisted.pipelines.remove(*name).is_none() {
                return error(404, format!("no pipeline named {name:?}"));
            }
            st.persisted.version += 1;
            match st.save() {
                Ok(()) => json(200, serde_json::json!({ "version": st.persisted.version })),
                Err(e) => error(500, format!("{e:#}")),
            }
        }
        ("POST", ["v1", "report"]) => {
            let de = &mut serde_json::Deserializer::from_str(body);
            match serde_path_to_error::deserialize::<_, MemberReport>(de) {
                Err(e) => error(400, format!("{}: {}", e.path(), e.inner())),
                Ok(r) if !st.names.contains(&r.member) => error(
                    404,
                    format!("member: {:?} is not a member of the group file", r.member),
                ),
                Ok(r) if r.shard >= st.shards => error(
                    404,
                    format!(
                        "shard: the group has no shard {} ({} shards)",
                        r.shard, st.shards
                    ),
                ),
                Ok(r) => {
                    let leave = st.leave.remove(&(r.member.clone(), r.shard));
                    st.reports
                        .insert((r.member.clone(), r.shard), (Instant::now(), r));
                    let answer = ReportAnswer {
                        version: st.persisted.version,
                        admitted: st.admitted(),
                        leave,
                        shard_map: st.persisted.shard_map.clone(),
                    };
                    json(200, serde_json::to_value(answer).unwrap_or_default())
                }
            }
        }
        ("GET", ["v1", "admissions"]) => json(
            200,
            serde_json::json!({ "admitted": st.admitted(), "join_token": st.join_token.is_some() }),
        ),
        ("PUT" | "DELETE", ["v1", "admissions", name]) => {
            if !st.names.iter().any(|n| n == name) {
                return error(404, format!("{name:?} is not a member of the group file"));
            }
            let set = st.persisted.admitted.get_or_insert_with(BTreeSet::new);
            let changed = if method == "PUT" {
                set.insert(name.to_string())
            } else {
                set.remove(*name)
            };
            if changed {
                tracing::info!(
                    "{name} {} the allowlist",
                    if method == "PUT" {
                        "added to"
                    } else {
                        "removed from"
                    }
                );
                if let Err(e) = st.save() {
                    return error(500, format!("{e:#}"));
                }
            }
            json(200, serde_json::json!({ "admitted": st.admitted() }))
        }
        ("POST", ["v1", "members", name, "leave"]) => {
            if !st.names.iter().any(|n| n == name) {
                return error(404, format!("{name:?} is not a member of the group file"));
            }
            for shard in 0..st.shards {
                st.leave.insert((name.to_string(), shard));
            }
            tracing::info!("{name} asked to leave the group (passed on at its next report)");
            json(202, serde_json::json!({ "leaving": name }))
        }
        ("GET", ["v1", "shards"]) => {
            let Some(map) = st.persisted.shard_map.clone() else {
                return error(
                    404,
                    "the group has no shards (no [shards] in its group file)",
                );
            };
            let shards: Vec<serde_json::Value> = (0..st.shards)
                .map(|s| {
                    let reports = fresh_of(&st, s);
                    let view = reports.iter().map(|r| r.1.view).max().unwrap_or(0);
                    let members = reports
                        .iter()
                        .find(|r| r.1.view == view)
                        .map(|r| r.1.members.clone())
                        .unwrap_or_default();
                    let applied = reports
                        .iter()
                        .filter(|r| r.1.status == "serving")
                        .map(|r| r.1.shard_map_version)
                        .max()
                        .unwrap_or(0);
                    let queues = reports
                        .iter()
                        .filter(|r| r.1.status == "serving")
                        .max_by_key(|r| r.1.view)
                        .map(|r| r.1.queues.clone())
                        .unwrap_or_default();
                    serde_json::json!({
                        "shard": s,
                        "view": view,
                        "members": members,
                        "map_version": applied,
                        "queues": queues,
                    })
                })
                .collect();
            json(200, serde_json::json!({ "map": map, "shards": shards }))
        }
        ("PUT", ["v1", "shards", "queues", queue]) => {
            let Some(map) = st.persisted.shard_map.clone() else {
                return error(
                    404,
                    "the group has no shards (no [shards] in its group file)",
                );
            };
            let Ok(to) = body.trim().parse::<u16>() else {
                return error(
                    400,
                    format!("the body must be a shard number, found {:?}", body.trim()),
                );
            };
            if to >= map.shards {
                return error(
                    400,
                    format!("there is no shard {to}: shards are 0 to {}", map.shards - 1),
                );
            }
            let known = st.persisted.pipelines.values().any(|p| {
                Pipeline::from_json(&p.to_string())
                    .is_ok_and(|p| p.queue_specs().iter().any(|q| q.name == *queue))
            });
            if !known {
                return error(404, format!("no pipeline has a queue {queue:?}"));
            }
            if map.owner(queue).0 == to {
                return json(
                    200,
                    serde_json::json!({ "version": map.version, "moved": false }),
                );
            }
            let mut next = map.with_override(queue, conveyor_core::shard::ShardId(to));
            next.version += 1;
            tracing::info!(
                "queue {queue} moves to shard {to} (map version {})",
                next.version
            );
            let version = next.version;
            st.persisted.shard_map = Some(next);
            match st.save() {
                Ok(()) => json(
                    200,
                    serde_json::json!({ "version": version, "moved": true }),
                ),
                Err(e) => error(500, format!("{e:#}")),
            }
        }
        ("GET", ["metrics"]) => Answer {
            status: 200,
            body: super::metrics::metrics(&st),
            text: true,
        },
        (
            _,
            ["health"]
            | ["metrics"]
            | ["v1", "view" | "queues" | "pipelines" | "report" | "admissions" | "shards"],
        )
        | (_, ["v1", "shards", "queues", _])
        | (_, ["v1", "pipelines" | "admissions", _])
        | (_, ["v1", "members", _, "leave"]) => {
            error(405, format!("{method} is not allowed on {path}"))
        }
        _ => error(404, format!("no such resource: {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{pipelines_op, Persisted, State};
    use super::*;
    use conveyor_core::queue::{Durability, Op};
    use conveyor_core::types::MemberId;
    use std::collections::{BTreeMap, BTreeSet};

    /// A pipeline put through the API gets the group's default durability written into the
    /// document it stores (and so into the operation the members order), unless it says its
    /// own.
    #[test]
    fn a_pipeline_put_gets_the_group_default_durability() {
        let dir = std::env::temp_dir().join(format!("conveyor-plane-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = Mutex::new(State {
            persisted: Persisted::default(),
            path: dir.join("state.json"),
            reports: BTreeMap::new(),
            shards: 1,
            names: vec!["trigger".into()],
            join_token: None,
            max_payload: 60_000,
            durability: Durability::Log,
            leave: BTreeSet::new(),
        });
        let token = "0123456789abcdef0123";
        let put = |name: &str, doc: &str| {
            let a = route(
                &state,
                token,
                "PUT",
                &format!("/v1/pipelines/{name}"),
                Some(&format!("Bearer {token}")),
                doc,
            );
            assert_eq!(a.status, 201, "{}", a.body);
        };
        put(
            "q",
            r#"{"name":"q","entry":"x","steps":{"x":{"function":"echo"}}}"#,
        );
        put(
            "m",
            r#"{"name":"m","entry":"x","queue_defaults":{"durability":"memory"},"steps":{"x":{"function":"echo"}}}"#,
        );
        let st = state.lock().unwrap();
        assert_eq!(
            st.persisted.pipelines["q"]["queue_defaults"]["durability"],
            "log"
        );
        let Op::Pipelines { queues, .. } =
            pipelines_op(MemberId(0), 1, &st.persisted.pipelines, 60_000).unwrap()
        else {
            panic!("not a pipelines operation");
        };
        let by: BTreeMap<_, _> = queues
            .iter()
            .map(|q| (q.name.as_str(), q.durability))
            .collect();
        assert_eq!(by["q.x"], Durability::Log);
        assert_eq!(by["m.x"], Durability::Memory);
        drop(st);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A sharded group's map through the API: shown with each shard's view, a queue moved by
    /// name (a new version, saved), bad moves refused by name, and the map handed to every
    /// reporting member of every shard (a report of a shard the group lacks is refused).
    #[test]
    fn the_shard_map_is_shown_moved_and_handed_to_every_shard() {
        let dir = std::env::temp_dir().join(format!("conveyor-plane-sh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut persisted = Persisted::default();
        let p = conveyor_core::pipeline::Pipeline::chain("p", 2, 10);
        persisted
            .pipelines
            .insert("p".into(), serde_json::from_str(&p.to_json()).unwrap());
        persisted.shard_map = Some(conveyor_core::shard::ShardMap::hashed(1, 2));
        let state = Mutex::new(State {
            persisted,
            path: dir.join("state.json"),
            reports: BTreeMap::new(),
            shards: 2,
            names: vec!["trigger".into()],
            join_token: None,
            max_payload: 60_000,
            durability: Durability::Memory,
            leave: BTreeSet::new(),
        });
        let token = "0123456789abcdef0123";
        let call = |method: &str, url: &str, body: &str| {
            let a = route(
                &state,
                token,
                method,
                url,
                Some(&format!("Bearer {token}")),
                body,
            );
            (
                a.status,
                serde_json::from_str::<serde_json::Value>(&a.body).unwrap_or_default(),
            )
        };
        let (st, v) = call("GET", "/v1/shards", "");
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["map"]["version"], 1);
        assert_eq!(v["shards"].as_array().unwrap().len(), 2);
        let owner = conveyor_core::shard::ShardMap::hashed(1, 2).owner("p.f0").0;
        let to = 1 - owner;
        let (st, v) = call("PUT", "/v1/shards/queues/p.f0", &to.to_string());
        assert_eq!(
            (st, &v["version"], &v["moved"]),
            (200, &2.into(), &true.into()),
            "{v}"
        );
        // Already there: nothing changes.
        let (st, v) = call("PUT", "/v1/shards/queues/p.f0", &to.to_string());
        assert_eq!(
            (st, &v["version"], &v["moved"]),
            (200, &2.into(), &false.into()),
            "{v}"
        );
        for (url, body, status) in [
            ("/v1/shards/queues/p.f0", "2", 400),
            ("/v1/shards/queues/p.f0", "x", 400),
            ("/v1/shards/queues/nope", "1", 404),
        ] {
            assert_eq!(call("PUT", url, body).0, status, "{url} {body}");
        }
        let unauth = route(&state, token, "PUT", "/v1/shards/queues/p.f0", None, "0");
        assert_eq!(unauth.status, 401);
        // Saved: a restarted control plane keeps the move.
        let saved: Persisted =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        let map = saved.shard_map.unwrap();
        assert_eq!((map.version, map.owner("p.f0").0), (2, to));
        // Each shard's member gets the map with the answer to its report. Each shard sees
        // the depths of the queues it owns (the others' are empty there).
        let depth = |shard: u16, q: &str| {
            u64::from(map.owner(q).0 == shard) * (10 + q.len() as u64 + u64::from(shard))
        };
        for shard in 0..2u16 {
            let report = serde_json::json!({"member": "trigger", "shard": shard,
                "status": "serving", "view": 1 + 2 * shard, "members": ["trigger"], "delivered": 0,
                "retransmitted_slots": 0, "view_changes": 0, "requeued": 0, "rejoins": 0,
                "dropped": {}, "queues": {"p.f0": depth(shard, "p.f0"), "p.f1": depth(shard, "p.f1")}});
            let (st, v) = call("POST", "/v1/report", &report.to_string());
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["shard_map"]["version"], 2, "{v}");
        }
        // The view: shard 0's by default, saying so; another shard's by `?shard=N`.
        let (_, v) = call("GET", "/v1/view", "");
        assert_eq!(
            (&v["view"], &v["shard"], &v["shards"]),
            (&1.into(), &0.into(), &2.into()),
            "{v}"
        );
        let (_, v) = call("GET", "/v1/view?shard=1", "");
        assert_eq!((&v["view"], &v["shard"]), (&3.into(), &1.into()), "{v}");
        assert_eq!(call("GET", "/v1/view?shard=2", "").0, 404);
        assert_eq!(call("GET", "/v1/view?shard=x", "").0, 400);
        // The queues: each as its owner sees it, with its owner; one shard's by `?shard=N`.
        let (_, v) = call("GET", "/v1/queues", "");
        for q in ["p.f0", "p.f1"] {
            let o = map.owner(q).0;
            assert_eq!(v["queues"][q], depth(o, q), "{q}: {v}");
            assert_eq!(v["shard_of"][q], o, "{q}: {v}");
        }
        assert_eq!(v["map_version"], 2, "{v}");
        let (_, v) = call("GET", "/v1/queues?shard=1", "");
        assert_eq!(v["queues"]["p.f0"], depth(1, "p.f0"), "{v}");
        assert!(v.get("shard_of").is_none(), "{v}");
        let bad = serde_json::json!({"member": "trigger", "shard": 2, "status": "serving",
            "view": 1, "members": [], "delivered": 0, "retransmitted_slots": 0,
            "view_changes": 0, "requeued": 0, "rejoins": 0, "dropped": {}, "queues": {}});
        assert_eq!(call("POST", "/v1/report", &bad.to_string()).0, 404);
        // /metrics labels the series by shard.
        let m = route(&state, token, "GET", "/metrics", None, "");
        assert!(
            m.body
                .contains(r#"conveyor_view{member="trigger",shard="1"} 3"#),
            "{}",
            m.body
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
