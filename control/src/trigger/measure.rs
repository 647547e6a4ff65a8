//! The measurements the trigger side and the baselines share: latency percentiles and their
//! breakdown, the CDF, HdrHistogram interval logs, and open-loop pacing.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Breakdown {
    pub send_late: Percentiles,
    pub ordering: Percentiles,
    pub handoff: Percentiles,
}

/// Waits until `intended` on the `now` clock (microseconds), calling `poll` on every look:
/// sleeps while far, yields when close (an open-loop sender's pacing).
pub(crate) fn wait_until(intended: u64, now: impl Fn() -> u64, mut poll: impl FnMut()) {
    loop {
        poll();
        let now = now();
        if now >= intended {
            return;
        }
        let left = intended - now;
        if left > 60 {
            std::thread::sleep(Duration::from_micros(left - 40));
        } else {
            std::thread::yield_now();
        }
    }
}

/// (percent, latency) points of the latency CDF: every percent, then 99.9 and 99.99.
pub(crate) fn cdf(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut cdf = Vec::new();
    if !h.is_empty() {
        for q in (1..=100).map(|p| p as f64).chain([99.9, 99.99]) {
            cdf.push((q, h.value_at_quantile(q / 100.0)));
        }
        cdf.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    cdf
}

/// One latency histogram per interval, by completion time.
pub(crate) struct Intervals {
    start_us: u64,
    every_us: u64,
    hists: Vec<Histogram<u64>>,
}

impl Intervals {
    /// Intervals of one second, longer on long runs (at most about 600 of them).
    pub(crate) fn new(start_us: u64, run_s: f64) -> Intervals {
        Intervals {
            start_us,
            every_us: ((run_s / 600.0).ceil().max(1.0) * 1e6) as u64,
            hists: Vec::new(),
        }
    }

    pub(crate) fn record(&mut self, at_us: u64, v: u64) {
        let i = (at_us.saturating_sub(self.start_us) / self.every_us) as usize;
        while self.hists.len() <= i {
            // Auto-resizing: as large as the largest value seen, not the largest possible.
            self.hists
                .push(Histogram::new(3).expect("3 significant digits are valid"));
        }
        let _ = self.hists[i].record(v);
    }

    pub(crate) fn write(&self, path: &str, start_unix: std::time::SystemTime) -> Result<()> {
        use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
        use hdrhistogram::serialization::V2DeflateSerializer;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        );
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("conveyor trigger: end-to-end latency in microseconds (values in us; the .hgrm beside this log is in milliseconds)")
            .with_start_time(start_unix)
            .with_base_time(start_unix)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut out, &mut ser)
            .with_context(|| format!("writing {path}"))?;
        for (i, h) in self.hists.iter().enumerate() {
            let from = Duration::from_micros(i as u64 * self.every_us);
            w.write_histogram(h, from, Duration::from_micros(self.every_us), None)
                .map_err(|e| anyhow::anyhow!("writing {path}: {e:?}"))?;
        }
        drop(w);
        std::io::Write::flush(&mut out).with_context(|| format!("writing {path}"))?;
        // The whole run's percentile distribution beside it, as HdrHistogram's own
        // `outputPercentileDistribution` writes it (what hdr-plot and the HdrHistogram plotter
        // read), in milliseconds.
        let mut all = Histogram::<u64>::new(3).expect("3 significant digits are valid");
        for h in &self.hists {
            all.add(h)
                .map_err(|e| anyhow::anyhow!("merging the intervals of {path}: {e:?}"))?;
        }
        let hgrm = std::path::Path::new(path).with_extension("hgrm");
        std::fs::write(&hgrm, percentile_distribution(&all, 1000.0))
            .with_context(|| format!("writing {}", hgrm.display()))?;
        Ok(())
    }
}

/// `h`'s percentile distribution in HdrHistogram's `.hgrm` text format (Java's
/// `outputPercentileDistribution` with 5 ticks per half distance), values divided by `scale`.
pub(crate) fn percentile_distribution(h: &Histogram<u64>, scale: f64) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / scale;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = (2 * 10u64.pow(3)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}
