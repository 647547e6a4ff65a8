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
        ["v1", "members", _, "leave"] => "POST",
        _ => "GET",
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
            let reports = fresh(&st);
            let latest = reports.iter().map(|r| r.1.view).max().unwrap_or(0);
            let members = reports
                .iter()
                .find(|r| r.1.view == latest)
                .map(|r| r.1.members.clone())
                .unwrap_or_default();
            let by: BTreeMap<&str, serde_json::Value> = st
                .reports
                .iter()
                .map(|(n, (t, r))| {
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
            json(
                200,
                serde_json::json!({ "view": latest, "members": members, "reports": by }),
            )
        }
        ("GET", ["v1", "queues"]) => {
            let freshest = st
                .reports
                .values()
                .filter(|(_, r)| r.status == "serving")
                .max_by_key(|(t, r)| (r.view, *t))
                .map(|(_, r)| r.queues.clone())
                .unwrap_or_default();
            json(200, serde_json::json!({ "queues": freshest }))
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
                Ok(r) => {
                    let leave = st.leave.remove(&r.member);
                    st.reports.insert(r.member.clone(), (Instant::now(), r));
                    let answer = ReportAnswer {
                        version: st.persisted.version,
                        admitted: st.admitted(),
                        leave,
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
            st.leave.insert(name.to_string());
            tracing::info!("{name} asked to leave the group (passed on at its next report)");
            json(202, serde_json::json!({ "leaving": name }))
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
            | ["v1", "view" | "queues" | "pipelines" | "report" | "admissions"],
        )
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
}
