//! The member's side of the control plane: its reports, and following the answers.

use super::metrics::transport_counters;
use super::*;

/// The member's agent of the control plane, on a thread of its own: every 500 ms it sends the
/// member's state, and follows the answer: the allowlist (with `control.admission =
/// "control"`), a newer version of the pipelines (fetched and submitted to the group, where
/// the replicas apply it once, in order), a leave. A joiner holding the join token puts itself
/// on the allowlist. A control plane that is down costs nothing but a log line: the member
/// serves on with what it last heard.
pub fn start_reporter(
    cfg: &GroupConfig,
    me: usize,
    handle: conveyor_dataplane::engine::Probe,
    join_token: Option<String>,
) -> Option<std::thread::JoinHandle<()>> {
    start_shard_reporter(cfg, me, handle, join_token, 0)
}

/// [`start_reporter`] for the member's member of shard `shard` (a sharded group: one
/// reporter per shard). It also follows the control plane's shard map: while its shard has
/// applied an older one, it submits the newer to its shard (again every 2 s until applied).
pub fn start_shard_reporter(
    cfg: &GroupConfig,
    me: usize,
    handle: conveyor_dataplane::engine::Probe,
    join_token: Option<String>,
    shard: u16,
) -> Option<std::thread::JoinHandle<()>> {
    use conveyor_core::proto::Admission;
    use conveyor_core::types::MemberId;
    use conveyor_dataplane::engine::Directive;
    let c = cfg.file.control.clone()?;
    let by_control = c.admission == crate::config::AdmissionMode::Control;
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let my_name = names.get(me).cloned().unwrap_or_default();
    let max_payload = cfg.file.group.max_payload;
    let base = format!("http://{}", c.address);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(300))
        .build();
    std::thread::Builder::new()
        .name("conveyor-report".into())
        .spawn(move || {
            let mut down_said = false;
            // The pipelines version last submitted, and when (a lost submission is retried).
            let mut submitted: Option<(u64, Instant)> = None;
            let mut version_said = 0u64;
            // The shard map last submitted, and when.
            let mut map_submitted: Option<(u64, Instant)> = None;
            while !handle.is_finished() {
                let live = handle.live();
                if live.status == "joining" && by_control {
                    if let Some(t) = &join_token {
                        let r = agent
                            .put(&format!("{base}/v1/admissions/{my_name}"))
                            .set("Authorization", &format!("Bearer {t}"))
                            .call();
                        if let Err(e) = r {
                            tracing::warn!("asking the control plane to admit {my_name}: {e}");
                        }
                    }
                }
                let applied = handle.shards().map_or(0, |s| s.map().version);
                let report = report_of(&live, &names, &my_name, shard, applied);
                let r = agent
                    .post(&format!("{base}/v1/report"))
                    .set("Authorization", &format!("Bearer {}", c.token))
                    .send_json(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.into_json::<ReportAnswer>().map_err(|e| e.to_string()));
                let answer = match r {
                    Ok(a) => {
                        down_said = false;
                        a
                    }
                    Err(e) => {
                        if !down_said {
                            down_said = true;
                            tracing::warn!("the control plane at {base} does not answer ({e}); serving on, retrying");
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                if by_control {
                    let ids = answer
                        .admitted
                        .iter()
                        .filter_map(|n| names.iter().position(|m| m == n))
                        .map(|i| MemberId(i as u16))
                        .collect();
                    handle.direct(Directive::Admit(Admission::Listed(ids)));
                }
                if answer.leave {
                    handle.direct(Directive::Leave);
                }
                if let Some(map) = answer.shard_map.filter(|m| m.version > applied) {
                    let again = map_submitted.is_none_or(|(v, t)| {
                        v != map.version || t.elapsed() > Duration::from_secs(2)
                    });
                    if live.status == "serving" && again {
                        tracing::info!(
                            version = map.version,
                            shard,
                            "passing the control plane's shard map on to the shard"
                        );
                        map_submitted = Some((map.version, Instant::now()));
                        handle.direct(Directive::Submit(conveyor_core::queue::Op::ShardMap {
                            by: MemberId(me as u16),
                            me: conveyor_core::shard::ShardId(shard),
                            map,
                        }));
                    }
                }
                let retry = submitted
                    .is_none_or(|(v, t)| v != answer.version || t.elapsed() > Duration::from_secs(2));
                if answer.version > live.pipelines_version && live.status == "serving" && retry {
                    match fetch_pipelines(&agent, &base, &c.token, answer.version)
                        .and_then(|docs| {
                            pipelines_op(MemberId(me as u16), answer.version, &docs, max_payload)
                        }) {
                        Ok(op) => {
                            tracing::info!(
                                version = answer.version,
                                "passing the control plane's pipelines on to the group"
                            );
                            handle.direct(Directive::Submit(op));
                            submitted = Some((answer.version, Instant::now()));
                        }
                        Err(e) if version_said != answer.version => {
                            version_said = answer.version;
                            tracing::error!(version = answer.version, "cannot pass the control plane's pipelines on: {e}");
                        }
                        Err(_) => {}
                    }
                } else if answer.version < live.pipelines_version
                    && version_said != answer.version
                {
                    version_said = answer.version;
                    tracing::warn!(
                        "the control plane's pipelines (version {}) are older than the group's (version {}): was its state file replaced? the group keeps its own",
                        answer.version,
                        live.pipelines_version
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .ok()
}

/// The control plane's pipelines, if still at `version` (else the next round gets the newer).
fn fetch_pipelines(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    version: u64,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    #[derive(Deserialize)]
    struct All {
        version: u64,
        pipelines: BTreeMap<String, serde_json::Value>,
    }
    let all: All = agent
        .get(&format!("{base}/v1/pipelines"))
        // With the token: the functions' environment, which others do not see.
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| e.to_string())?
        .into_json()
        .map_err(|e| e.to_string())?;
    if all.version != version {
        return Err(format!("changed meanwhile (now version {})", all.version));
    }
    Ok(all.pipelines)
}

/// What a member reports of itself (to the control plane, and on its own `/metrics`).
pub(super) fn report_of(
    live: &conveyor_dataplane::engine::Live,
    names: &[String],
    my_name: &str,
    shard: u16,
    shard_map_version: u64,
) -> MemberReport {
    MemberReport {
        member: my_name.to_string(),
        shard,
        shard_map_version,
        status: live.status.to_string(),
        view: live.view,
        members: live
            .members
            .iter()
            .map(|m| names.get(m.0 as usize).cloned().unwrap_or_default())
            .collect(),
        delivered: live.proto.delivered,
        retransmitted_slots: live.proto.retransmitted_slots,
        view_changes: live.proto.view_changes,
        requeued: live.requeued,
        speculated: live.speculation.started,
        speculations_confirmed: live.speculation.confirmed,
        speculations_discarded: live.speculation.discarded,
        rejoins: live.rejoins,
        joins_refused: live.proto.joins_refused,
        pipelines_version: live.pipelines_version,
        dropped: conveyor_core::wire::WireError::ALL
            .iter()
            .map(|e| (e.label().to_string(), live.proto.dropped(*e)))
            .chain(
                conveyor_core::proto::ProtoDrop::ALL
                    .iter()
                    .map(|d| (d.label().to_string(), live.proto.dropped_by(*d))),
            )
            .collect(),
        queues: live
            .queues
            .iter()
            .map(|(q, d)| (q.clone(), *d as u64))
            .collect(),
        transport: transport_counters(&live.transport),
        xdp: live
            .transport
            .xdp
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        log: live
            .log
            .map(|g| {
                [
                    ("persisted", g.persisted),
                    ("held_for_disks", g.held_for_disks),
                    ("refused_for_disks", g.refused_for_disks),
                    ("disk_full", u64::from(g.disk_full)),
                    ("failed_writes", g.failed_writes),
                    ("records", g.records),
                    ("bytes", g.bytes),
                    ("snapshots", g.snapshots),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
            .unwrap_or_default(),
    }
}

/// Serves the member's own `/metrics` on `address` (`member.metrics_address`), the same series
/// as the control plane's for this member, read from the engine at each scrape; served until
/// the returned server is dropped.
pub fn serve_member_metrics(
    cfg: &GroupConfig,
    me: usize,
    probe: conveyor_dataplane::engine::Probe,
    address: &str,
) -> Result<crate::http::Server> {
    serve_shard_metrics(cfg, me, vec![probe], address)
}

/// [`serve_member_metrics`] for a member of several shards: `probes` by shard, every series
/// labelled by shard when there are several.
pub fn serve_shard_metrics(
    cfg: &GroupConfig,
    me: usize,
    probes: Vec<conveyor_dataplane::engine::Probe>,
    address: &str,
) -> Result<crate::http::Server> {
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let my_name = names.get(me).cloned().unwrap_or_default();
    let shown = my_name.clone();
    let opts = crate::http::Options::new(2);
    let server = crate::http::Server::start(address, "conveyor-metrics", opts, move |rq| {
        let (status, body, ctype) = match (rq.method(), rq.path()) {
            ("GET" | "HEAD", "/metrics") => {
                let reports: Vec<MemberReport> = probes
                    .iter()
                    .enumerate()
                    .map(|(s, probe)| {
                        let version = probe.shards().map_or(0, |x| x.map().version);
                        report_of(&probe.live(), &names, &my_name, s as u16, version)
                    })
                    .collect();
                let live: Vec<(&str, &MemberReport)> =
                    reports.iter().map(|r| (my_name.as_str(), r)).collect();
                match super::metrics::encode_reports(
                    &live,
                    &[(my_name.as_str(), true)],
                    probes.len() > 1,
                ) {
                    Ok(t) => (200, t, "text/plain; version=0.0.4; charset=utf-8"),
                    Err(e) => (500, format!("{e}\n"), "text/plain"),
                }
            }
            (_, "/metrics") => (405, "GET /metrics\n".into(), "text/plain"),
            _ => (404, "GET /metrics\n".into(), "text/plain"),
        };
        let mut r = crate::http::Response::new(status, body).with_header("Content-Type", ctype);
        if status == 405 {
            r.add_header("Allow", "GET, HEAD");
        }
        rq.respond(r);
    })
    .map_err(|e| anyhow::anyhow!("member.metrics_address {address}: cannot listen: {e}"))?;
    tracing::info!("member {shown}: /metrics on http://{}", server.address());
    Ok(server)
}
