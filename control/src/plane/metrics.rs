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
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(t.device.iter().map(|(k, v)| (format!("device_{k}"), *v)))
    .collect()
}

/// A counter of `/metrics`: name, help, and how to read it from a report.
type Counter = (&'static str, &'static str, fn(&MemberReport) -> u64);

pub(super) fn metrics(st: &State) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let counters: [Counter; 6] = [
        (
            "conveyor_delivered_total",
            "Messages delivered in total order",
            |r| r.delivered,
        ),
        (
            "conveyor_retransmitted_slots_total",
            "Slots retransmitted",
            |r| r.retransmitted_slots,
        ),
        (
            "conveyor_view_changes_total",
            "Views installed after the first",
            |r| r.view_changes,
        ),
        (
            "conveyor_failovers_total",
            "Requests re-queued after their invoker was removed",
            |r| r.requeued,
        ),
        (
            "conveyor_rejoins_total",
            "Times a member came back as a new member",
            |r| r.rejoins,
        ),
        (
            "conveyor_joins_refused_total",
            "Join requests refused (not admitted)",
            |r| r.joins_refused,
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (m, (_, r)) in &st.reports {
            let _ = writeln!(out, "{name}{{member=\"{m}\"}} {}", f(r));
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_frames_dropped_total Frames dropped, by reason\n# TYPE conveyor_frames_dropped_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (reason, v) in &r.dropped {
            let _ = writeln!(
                out,
                "conveyor_frames_dropped_total{{member=\"{m}\",reason=\"{reason}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_transport_frames_total The transport's frame counters (kernel_path_*: frames of the afxdp transport that took the kernel's UDP path; device_*: the dpdk port's own counters)\n# TYPE conveyor_transport_frames_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (c, v) in &r.transport {
            let _ = writeln!(
                out,
                "conveyor_transport_frames_total{{member=\"{m}\",counter=\"{c}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_xdp_frames_total Frames seen by the XDP program on the member's interface, by verdict (not_member, not_in_view: dropped)\n# TYPE conveyor_xdp_frames_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (verdict, v) in &r.xdp {
            let _ = writeln!(
                out,
                "conveyor_xdp_frames_total{{member=\"{m}\",verdict=\"{verdict}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_queue_depth Requests waiting, by queue\n# TYPE conveyor_queue_depth gauge"
    );
    for (m, (_, r)) in &st.reports {
        for (q, v) in &r.queues {
            let _ = writeln!(
                out,
                "conveyor_queue_depth{{member=\"{m}\",queue=\"{q}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_view Installed view id\n# TYPE conveyor_view gauge"
    );
    for (m, (_, r)) in &st.reports {
        let _ = writeln!(out, "conveyor_view{{member=\"{m}\"}} {}", r.view);
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_pipelines_version Version of the pipelines the member runs (0: the group file's)\n# TYPE conveyor_pipelines_version gauge"
    );
    for (m, (_, r)) in &st.reports {
        let _ = writeln!(
            out,
            "conveyor_pipelines_version{{member=\"{m}\"}} {}",
            r.pipelines_version
        );
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_member_up Reported within the last 3 s\n# TYPE conveyor_member_up gauge"
    );
    for (m, (t, _)) in &st.reports {
        let up = u8::from(t.elapsed() < Duration::from_secs(3));
        let _ = writeln!(out, "conveyor_member_up{{member=\"{m}\"}} {up}");
    }
    out
}
