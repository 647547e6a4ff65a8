//! The ramp workload (BENCH.md): the rate rises in steps from 1 to 65,000 requests/s; each step
//! is measured on its own (its requests' latencies from their intended send times, and the
//! throughput from the step's start to its last completion), and the ramp stops after the
//! first step that is not served. The critical rate is the highest step served: every request
//! completed within the step's time plus a settling time, throughput at least 90% of the
//! rate, and no queueing growth (the later half of the step's requests, by send order, not
//! slower at the median than twice the earlier half plus 1 ms).

use crate::trigger::measure::Percentiles;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The rates of the steps, requests per second.
pub const RATES: [f64; 11] = [
    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 40000.0, 65000.0,
];

/// One step: its rate and its number of requests, for a ramp of `duration_s` in all (at
/// least half a second per step, and one request).
pub fn plan(duration_s: f64) -> Vec<(f64, u64)> {
    let step_s = (duration_s / RATES.len() as f64).max(0.5);
    RATES
        .iter()
        .map(|&r| (r, ((r * step_s).round() as u64).max(1)))
        .collect()
}

/// What one step measured (`steps` in the JSON report).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    pub rate: f64,
    pub sent: u64,
    pub completed: u64,
    pub throughput_rps: f64,
    pub latency_us: Percentiles,
    pub served: bool,
}

/// Measures a step from its requests' intended send times and completion times (0: not
/// completed), `start` being the step's first intended send time.
pub fn evaluate(rate: f64, sent_at: &[u64], done_at: &[u64], start: u64) -> StepReport {
    let lat: Vec<u64> = sent_at
        .iter()
        .zip(done_at)
        .filter(|(_, d)| **d > 0)
        .map(|(s, d)| d.saturating_sub(*s).max(1))
        .collect();
    let mut h = Histogram::<u64>::new(3).expect("3 significant digits are valid");
    for l in &lat {
        let _ = h.record(*l);
    }
    let completed = lat.len() as u64;
    let last = done_at.iter().copied().max().unwrap_or(0);
    let span_s = last.saturating_sub(start) as f64 / 1e6;
    let throughput = if completed > 0 && span_s > 0.0 {
        completed as f64 / span_s
    } else {
        0.0
    };
    // Queueing growth: the later half of the requests (send order) against the earlier half.
    let median = |xs: &[u64]| {
        let mut v = xs.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let half = sent_at.len() / 2;
    let (first, second): (Vec<u64>, Vec<u64>) = {
        let early: Vec<u64> = sent_at[..half]
            .iter()
            .zip(&done_at[..half])
            .filter(|(_, d)| **d > 0)
            .map(|(s, d)| d - s)
            .collect();
        let late: Vec<u64> = sent_at[half..]
            .iter()
            .zip(&done_at[half..])
            .filter(|(_, d)| **d > 0)
            .map(|(s, d)| d - s)
            .collect();
        (early, late)
    };
    let growth = !first.is_empty() && median(&second) > 2 * median(&first) + 1000;
    let sent = sent_at.len() as u64;
    // A step of one request has no rate to keep up with.
    let fast_enough = sent <= 1 || throughput >= 0.9 * rate;
    StepReport {
        rate,
        sent,
        completed,
        throughput_rps: (throughput * 10.0).round() / 10.0,
        latency_us: Percentiles::of(&h),
        served: completed == sent && fast_enough && !growth,
    }
}

/// The highest rate of a served step, if any (steps in rising order; the ramp stops after the
/// first that is not served).
pub fn critical_rate(steps: &[StepReport]) -> Option<f64> {
    steps.iter().take_while(|s| s.served).last().map(|s| s.rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_kept_up_with_is_served_and_a_growing_one_is_not() {
        // 100 requests at 1000/s, each done 200 us after its send: served.
        let sent: Vec<u64> = (0..100).map(|i| 1_000 + i * 1_000).collect();
        let done: Vec<u64> = sent.iter().map(|s| s + 200).collect();
        let s = evaluate(1000.0, &sent, &done, 1_000);
        assert!(s.served, "{s:?}");
        assert_eq!(s.completed, 100);
        assert!(s.throughput_rps > 950.0, "{s:?}");
        // The same step where every request waits behind the previous ones (service at half
        // the rate): the latency grows, the throughput falls: not served.
        let done: Vec<u64> = (0..100u64).map(|i| 1_000 + (i + 1) * 2_000).collect();
        let s = evaluate(1000.0, &sent, &done, 1_000);
        assert!(!s.served, "{s:?}");
        // One request missing: not served.
        let mut done: Vec<u64> = sent.iter().map(|s| s + 200).collect();
        done[50] = 0;
        assert!(!evaluate(1000.0, &sent, &done, 1_000).served);
    }

    #[test]
    fn the_critical_rate_is_the_last_served_step_before_the_first_failure() {
        let step = |rate, served| StepReport {
            rate,
            served,
            ..StepReport::default()
        };
        let steps = [
            step(1.0, true),
            step(10.0, true),
            step(100.0, false),
            step(1000.0, true),
        ];
        assert_eq!(critical_rate(&steps), Some(10.0));
        assert_eq!(critical_rate(&[step(1.0, false)]), None);
        let p = plan(11.0);
        assert_eq!(p.len(), RATES.len());
        assert_eq!(p[0], (1.0, 1));
        assert_eq!(p[10], (65000.0, 65000));
    }
}
