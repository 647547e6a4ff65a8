//! How far shards scale, by simulation (issue 22): measures what ordering and applying each kind
//! of operation costs one member on this machine (three real replicas, frames in memory), then
//! runs the virtual-time model of `conveyor_testbed::scale` for 1 to 64 shards with 0%, 10%
//! and 50% of runs crossing to another shard, and writes the figures (JSON) and a chart (SVG).
//!
//!   cargo run --release -p conveyor-testbed --bin shard-scale -- [OUT_DIR] [MEASURE_OPS]
//!
//! OUT_DIR defaults to target/shard-scale; MEASURE_OPS (operations of each kind per
//! measurement, five measurements, the median kept) to 20000.

use conveyor_testbed::scale::{measure, run, Costs, Outcome, Params};
use plotters::prelude::*;
use std::path::PathBuf;

const SHARDS: [u16; 7] = [1, 2, 4, 8, 16, 32, 64];
const CROSS: [f64; 3] = [0.0, 0.1, 0.5];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/shard-scale".into())
        .into();
    let n: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    std::fs::create_dir_all(&out)?;

    let runs: Vec<Costs> = (0..5).map(|_| measure(n)).collect();
    let pick = |f: fn(&Costs) -> f64| median(runs.iter().map(f).collect());
    let costs = Costs {
        push_us: pick(|c| c.push_us),
        complete_us: pick(|c| c.complete_us),
        forwarded_us: pick(|c| c.forwarded_us),
        ack_us: pick(|c| c.ack_us),
    };
    println!(
        "measured per member, median of 5 x {n} operations: push {:.2} us, completion {:.2} us, \
         forwarded entry {:.2} us, acknowledgement {:.2} us",
        costs.push_us, costs.complete_us, costs.forwarded_us, costs.ack_us
    );
    for c in &runs {
        println!(
            "  one measurement: {:.2} / {:.2} / {:.2} / {:.2}",
            c.push_us, c.complete_us, c.forwarded_us, c.ack_us
        );
    }

    let mut results: Vec<Outcome> = Vec::new();
    println!("shards  cross  ordered ops/s  runs/s  forwarded  acks  vs linear");
    for &cross in &CROSS {
        let mut one = None;
        for &s in &SHARDS {
            let o = run(&Params::new(s, cross, costs));
            assert_eq!(o.duplicates, 0, "the model ran something twice: {o:?}");
            let base = *one.get_or_insert(o.runs_per_s);
            println!(
                "{:>6}  {:>4.0}%  {:>13.0}  {:>6.0}  {:>9}  {:>4}  {:.3}",
                s,
                cross * 100.0,
                o.ops_per_s,
                o.runs_per_s,
                o.forwarded,
                o.acks,
                o.runs_per_s / (base * f64::from(s))
            );
            results.push(o);
        }
    }
    let json = serde_json::json!({
        "model": "testbed/src/scale.rs",
        "measured_ops": n,
        "costs_us": {
            "push": costs.push_us,
            "complete": costs.complete_us,
            "forwarded": costs.forwarded_us,
            "ack": costs.ack_us,
            "measurements": runs.iter().map(|c| [c.push_us, c.complete_us, c.forwarded_us, c.ack_us]).collect::<Vec<_>>(),
        },
        "params": {
            "window": Params::new(1, 0.0, costs).window,
            "net_us": Params::new(1, 0.0, costs).net_us,
            "function_us": Params::new(1, 0.0, costs).function_us,
            "ack_every": Params::new(1, 0.0, costs).ack_every,
            "ack_delay_us": Params::new(1, 0.0, costs).ack_delay_us,
        },
        "results": results,
    });
    std::fs::write(
        out.join("shard-scale.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    chart(&out.join("shard-scale.svg"), &results, &costs)?;
    println!(
        "wrote {} and {}",
        out.join("shard-scale.json").display(),
        out.join("shard-scale.svg").display()
    );
    Ok(())
}

/// Ordered operations per second and runs per second against shards, one line per share of
/// cross-shard runs, log-log.
fn chart(
    path: &std::path::Path,
    results: &[Outcome],
    c: &Costs,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "Shards, simulated (per-op cost measured here: push {:.1}, completion {:.1}, forwarded {:.1}, ack {:.1} us)",
            c.push_us, c.complete_us, c.forwarded_us, c.ack_us
        ),
        ("sans-serif", 16),
    )?;
    let halves = root.split_evenly((1, 2));
    let colors = [BLUE, RED, GREEN];
    for (panel, (title, get)) in halves.iter().zip([
        (
            "ordered operations / s",
            (|o: &Outcome| o.ops_per_s) as fn(&Outcome) -> f64,
        ),
        ("pipeline runs (chain 2) / s", |o: &Outcome| o.runs_per_s),
    ]) {
        let ys: Vec<f64> = results.iter().map(get).collect();
        let lo = ys.iter().copied().fold(f64::MAX, f64::min) / 2.0;
        let hi = ys.iter().copied().fold(0.0, f64::max) * 2.0;
        let mut ch = ChartBuilder::on(panel)
            .margin(12)
            .caption(title, ("sans-serif", 15))
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d((0.8f64..80f64).log_scale(), (lo..hi).log_scale())?;
        ch.configure_mesh()
            .x_desc("shards")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()?;
        for (k, &cross) in CROSS.iter().enumerate() {
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|o| o.cross == cross)
                .map(|o| (f64::from(o.shards), get(o)))
                .collect();
            let color = colors[k % colors.len()];
            ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("{:.0}% of runs cross shards", cross * 100.0))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            ch.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
