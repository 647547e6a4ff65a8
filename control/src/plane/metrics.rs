//! `/metrics`: the members' reports in Prometheus' text format.

use super::*;

/// The transport counters a member reports, by name.
pub(super) fn transport_counters(
    t: &conveyor_dataplane::transport::TransportStats,
) -> BTreeMap<String, u64> {
    [
        ("frames_sent", t.frames_sent),
        ("frames_received", t.frames_received),
        ("send_errors", t.send_errors),
        ("unknown_source", t.unknown_source),
        ("oversized", t.oversized),
        ("malformed", t.malformed),
        ("kernel_path_sent", t.kernel_path_sent),
        ("kernel_path_received", t.kernel_path_received),
        ("not_for_us", t.not_for_us),
        ("unresolved", t.unresolved),
        ("shared_overflow", t.shared_overflow),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(t.device.iter().map(|(k, v)| (format!("device_{k}"), *v)))
    .collect()
}

/// A member's series are dropped from `/metrics` once it has not reported for this long
/// (`conveyor_member_up` stays, 0, for every member of the group file).
const STALE: Duration = Duration::from_secs(60);

/// One family of series, labelled by member, shard (a sharded group's) and `label` (if any).
fn family(
    r: &prometheus::Registry,
    name: &str,
    help: &str,
    label: Option<&str>,
    gauge: bool,
    sharded: bool,
) -> Result<prometheus::IntGaugeVec, prometheus::Error> {
    // Counters are read from the members' reports, which hold their totals: set as gauges
    // would be, but typed `counter` for Prometheus (rate() and resets apply).
    let labels: Vec<&str> = std::iter::once("member")
        .chain(sharded.then_some("shard"))
        .chain(label)
        .collect();
    let v = prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), &labels)?;
    r.register(Box::new(Typed {
        inner: v.clone(),
        counter: !gauge,
    }))?;
    Ok(v)
}

/// A gauge family exposed as a counter when `counter` (the totals come from the members).
struct Typed {
    inner: prometheus::IntGaugeVec,
    counter: bool,
}

impl prometheus::core::Collector for Typed {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.inner.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut fams = self.inner.collect();
        if self.counter {
            for f in &mut fams {
                f.set_field_type(prometheus::proto::MetricType::COUNTER);
                for m in f.mut_metric() {
                    let v = m.get_gauge().get_value();
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                }
            }
        }
        fams
    }
}

/// `/metrics` in Prometheus' text format (0.0.4), from the members' latest reports.
pub(super) fn metrics(st: &State) -> String {
    match encode(st) {
        Ok(t) => t,
        Err(e) => format!("# the metrics could not be encoded: {e}\n"),
    }
}

type Read = fn(&MemberReport) -> u64;

fn encode(st: &State) -> Result<String, prometheus::Error> {
    let live: Vec<(&str, &MemberReport)> = st
        .reports
        .iter()
        .filter(|(_, (t, _))| t.elapsed() < STALE)
        .map(|((m, _), (_, rep))| (m.as_str(), rep))
        .collect();
    // Up: every shard of the member reported within 3 s.
    let up: Vec<(&str, bool)> = st
        .names
        .iter()
        .map(|m| {
            let fresh = (0..st.shards).all(|s| {
                st.reports
                    .get(&(m.clone(), s))
                    .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(3))
            });
            (m.as_str(), fresh)
        })
        .collect();
    encode_reports(&live, &up, st.shards > 1)
}

/// The series of `live` members' reports, and `up` for each member named.
///
/// `sharded`: every series but `conveyor_member_up` is labelled by shard too (each member
/// reports once per shard).
pub(super) fn encode_reports(
    live: &[(&str, &MemberReport)],
    up_by_name: &[(&str, bool)],
    sharded: bool,
) -> Result<String, prometheus::Error> {
    use prometheus::Encoder;
    let r = prometheus::Registry::new();
    let fam = |name: &str, help: &str, label: Option<&str>, gauge: bool| {
        family(&r, name, help, label, gauge, sharded)
    };
    // The labels of a member's series: its name, its shard (if sharded), then `rest`.
    let labels = |m: &str, rep: &MemberReport, rest: &[&str]| -> Vec<String> {
        std::iter::once(m.to_string())
            .chain(sharded.then(|| rep.shard.to_string()))
            .chain(rest.iter().map(|x| x.to_string()))
            .collect()
    };
    let scalars: [(&str, &str, bool, Read); 12] = [
        (
            "conveyor_delivered_total",
            "Messages delivered in total order",
            false,
            |r| r.delivered,
        ),
        (
            "conveyor_retransmitted_slots_total",
            "Slots retransmitted",
            false,
            |r| r.retransmitted_slots,
        ),
        (
            "conveyor_view_changes_total",
            "Views installed after the first",
            false,
            |r| r.view_changes,
        ),
        (
            "conveyor_requeued_requests_total",
            "Requests put back in their queue after the invoker that held them left or failed",
            false,
            |r| r.requeued,
        ),
        (
            "conveyor_speculated_requests_total",
            "Requests started before their assignment was delivered (speculation)",
            false,
            |r| r.speculated,
        ),
        (
            "conveyor_speculations_confirmed_total",
            "Speculated requests whose assignment the delivered order confirmed",
            false,
            |r| r.speculations_confirmed,
        ),
        (
            "conveyor_speculations_discarded_total",
            "Speculated requests whose result was dropped (the delivered order assigned them elsewhere, or a view change came first)",
            false,
            |r| r.speculations_discarded,
        ),
        (
            "conveyor_rejoins_total",
            "Times the member came back as a new member",
            false,
            |r| r.rejoins,
        ),
        (
            "conveyor_joins_refused_total",
            "Join requests refused (not admitted)",
            false,
            |r| r.joins_refused,
        ),
        (
            "conveyor_view",
            "The view the member has installed (its id)",
            true,
            |r| r.view as u64,
        ),
        (
            "conveyor_pipelines_version",
            "Version of the pipelines the member runs (0: the group file's)",
            true,
            |r| r.pipelines_version,
        ),
        (
            "conveyor_view_members",
            "Members in the member's view",
            true,
            |r| r.members.len() as u64,
        ),
    ];
    for (name, help, gauge, read) in scalars {
        let f = fam(name, help, None, gauge)?;
        for (m, rep) in live {
            f.with_label_values(&labels(m, rep, &[]))
                .set(read(rep) as i64);
        }
    }
    // The transport's counters, each under a name of its own.
    let sent = fam(
        "conveyor_transport_frames_sent_total",
        "Frames the transport sent",
        None,
        false,
    )?;
    let received = fam(
        "conveyor_transport_frames_received_total",
        "Frames the transport received",
        None,
        false,
    )?;
    let send_errors = fam(
        "conveyor_transport_send_errors_total",
        "Frames the transport failed to send",
        None,
        false,
    )?;
    let refused = fam(
        "conveyor_transport_frames_refused_total",
        "Frames the transport dropped before the protocol saw them, by reason",
        Some("reason"),
        false,
    )?;
    let kernel = fam(
        "conveyor_transport_kernel_path_frames_total",
        "Frames of the afxdp transport that took the kernel's UDP path, by direction",
        Some("direction"),
        false,
    )?;
    let device = fam(
        "conveyor_transport_device_events_total",
        "The dpdk port's own counters, by name",
        Some("counter"),
        false,
    )?;
    let dropped = fam(
        "conveyor_frames_dropped_total",
        "Frames the protocol dropped, by reason",
        Some("reason"),
        false,
    )?;
    let xdp = fam("conveyor_xdp_frames_total",
        "Frames seen by the XDP program on the member's interface, by verdict (not_member, not_in_view: dropped)",
        Some("verdict"),
        false,
    )?;
    // The durable log's series, for members with a data directory: (key in the report,
    // name, help, gauge).
    let log_series = [
        ("persisted", "conveyor_log_persisted_position", "Every step of the order before this position is on the member's disk", true),
        ("held_for_disks", "conveyor_log_held_for_disks", "Acceptances and ends of runs of durable queues waiting for a majority's disks", true),
        ("disk_full", "conveyor_log_disk_full", "1 while the member's data directory is full: its writer retries, the member applies nothing more, pushes wait (or, into a queue whose policy is reject, are refused)", true),
        ("refused_for_disks", "conveyor_log_refused_pushes_total", "Pushes into durable queues whose policy is reject, refused while the disks did not take the log", false),
        ("failed_writes", "conveyor_log_failed_writes_total", "Log writes that failed (a full disk, an I/O error) and were tried again", false),
        ("records", "conveyor_log_records_total", "Records written to the member's log", false),
        ("bytes", "conveyor_log_bytes_total", "Bytes written to the member's log", false),
        ("snapshots", "conveyor_log_snapshots_total", "Snapshots of the state written to the member's data directory", false),
    ];
    for (key, name, help, gauge) in log_series {
        if !live.iter().any(|(_, rep)| rep.log.contains_key(key)) {
            continue;
        }
        let f = fam(name, help, None, gauge)?;
        for (m, rep) in live {
            if let Some(v) = rep.log.get(key) {
                f.with_label_values(&labels(m, rep, &[])).set(*v as i64);
            }
        }
    }
    let depth = fam(
        "conveyor_queue_depth",
        "Requests waiting, by queue",
        Some("queue"),
        true,
    )?;
    for (m, rep) in live {
        let m = *m;
        for (c, v) in &rep.transport {
            let v = *v as i64;
            match c.as_str() {
                "frames_sent" => sent.with_label_values(&labels(m, rep, &[])).set(v),
                "frames_received" => received.with_label_values(&labels(m, rep, &[])).set(v),
                "send_errors" => send_errors.with_label_values(&labels(m, rep, &[])).set(v),
                "kernel_path_sent" => kernel.with_label_values(&labels(m, rep, &["sent"])).set(v),
                "kernel_path_received" => kernel
                    .with_label_values(&labels(m, rep, &["received"]))
                    .set(v),
                other => match other.strip_prefix("device_") {
                    Some(d) => device.with_label_values(&labels(m, rep, &[d])).set(v),
                    None => refused.with_label_values(&labels(m, rep, &[other])).set(v),
                },
            }
        }
        for (reason, v) in &rep.dropped {
            dropped
                .with_label_values(&labels(m, rep, &[reason]))
                .set(*v as i64);
        }
        for (verdict, v) in &rep.xdp {
            xdp.with_label_values(&labels(m, rep, &[verdict]))
                .set(*v as i64);
        }
        for (q, v) in &rep.queues {
            depth
                .with_label_values(&labels(m, rep, &[q]))
                .set(*v as i64);
        }
    }
    let up = family(
        &r,
        "conveyor_member_up",
        "1 if the member reported within the last 3 s",
        None,
        true,
        false,
    )?;
    for (m, fresh) in up_by_name {
        up.with_label_values(&[m]).set(i64::from(*fresh));
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
