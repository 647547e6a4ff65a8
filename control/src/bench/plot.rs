//! Charts of bench reports (plotters, SVG): DIFFUSE's figures 4 to 7, every backend of the
//! reports on the same axes. `conveyor bench --plot PATH` draws the run's own reports;
//! `conveyor plot --out PATH REPORT.json...` draws saved ones (several constant runs of
//! different chain lengths make the latency-against-chain-length figure).
//!
//! - constant (figure 4): overhead p50 (solid) and p99 (dashed) against chain length;
//! - ramp (figure 5): throughput against offered rate, and latency p50 against offered rate;
//! - burst (figure 6): the CDF of end-to-end latency, with each backend's drain time;
//! - balance (figure 7): each invoker's share of the function runs (invoker-0 shares its core
//!   with a CPU hog).
//!
//! SVG text is left to the viewer's fonts, so drawing needs no font files. PNG is not offered
//! (it would need a font rasterizer and font files on every machine).

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What the charts read of a report entry (`conveyor-bench/1`).
#[derive(Clone, Debug, Deserialize)]
pub struct Entry {
    pub workload: String,
    pub backend: String,
    #[serde(default)]
    pub transport: String,
    #[serde(default)]
    pub hosts: String,
    pub chain: usize,
    #[serde(default)]
    pub fn_us: u64,
    #[serde(default)]
    pub rate: f64,
    pub overhead_us: Pcts,
    #[serde(default)]
    pub per_invoker: BTreeMap<String, u64>,
    #[serde(default)]
    pub cdf: Vec<(f64, u64)>,
    #[serde(default)]
    pub steps: Option<Vec<Step>>,
    #[serde(default)]
    pub critical_rate_rps: Option<f64>,
    #[serde(default)]
    pub drain_s: Option<f64>,
    #[serde(default)]
    pub drain_floor_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Pcts {
    pub p50: u64,
    pub p99: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    pub rate: f64,
    pub throughput_rps: f64,
    pub latency_us: Pcts,
}

/// Refuses a path the chart could not be written to, before any run starts.
pub fn check_path(path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {}
        Some("png") => bail!("--plot {}: PNG is not offered (it needs font files to draw text); write an .svg (browsers and `rsvg-convert` render it)", path.display()),
        _ => bail!("--plot {}: the file name must end in .svg", path.display()),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--plot {}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Reads report entries from JSON files (each an array, as `--json` writes them).
pub fn read_reports(paths: &[std::path::PathBuf]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let entries: Vec<Entry> = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {} (at {})", p.display(), e.inner(), e.path()))?;
        out.extend(entries);
    }
    Ok(out)
}

/// Draws the chart of `entries` (all of one workload) into `path` (SVG).
pub fn plot(entries: &[Entry], path: &Path) -> Result<()> {
    check_path(path)?;
    let Some(first) = entries.first() else {
        bail!("nothing to plot: no report entry");
    };
    if let Some(e) = entries.iter().find(|e| e.workload != first.workload) {
        bail!(
            "one chart per workload: found {} and {}; plot them separately",
            first.workload,
            e.workload
        );
    }
    let root = SVGBackend::new(path, (1100, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    match first.workload.as_str() {
        "constant" => constant(&root, entries)?,
        "ramp" => ramp(&root, entries)?,
        "burst" => burst(&root, entries)?,
        "balance" => balance(&root, entries)?,
        other => bail!("no chart for workload {other:?}"),
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// One series per backend (and transport, when a backend ran on several), in first-seen order.
fn series(entries: &[Entry]) -> Vec<(String, Vec<&Entry>)> {
    let mut transports: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in entries {
        let t = transports.entry(e.backend.as_str()).or_default();
        if !t.contains(&e.transport.as_str()) {
            t.push(e.transport.as_str());
        }
    }
    let mut out: Vec<(String, Vec<&Entry>)> = Vec::new();
    for e in entries {
        let name = if transports[e.backend.as_str()].len() > 1 {
            format!("{} ({})", e.backend, e.transport)
        } else {
            e.backend.clone()
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(e),
            None => out.push((name, vec![e])),
        }
    }
    out
}

/// The colour of a backend: the same in every chart.
fn color(name: &str, i: usize) -> RGBColor {
    if name.starts_with("conveyor") {
        RGBColor(31, 119, 180)
    } else if name.starts_with("redis") {
        RGBColor(214, 39, 40)
    } else if name.starts_with("kafka") {
        RGBColor(44, 160, 44)
    } else {
        [
            RGBColor(148, 103, 189),
            RGBColor(255, 127, 14),
            RGBColor(140, 86, 75),
        ][i % 3]
    }
}

fn subtitle(e: &Entry) -> String {
    format!(
        "fn {} us, hosts {}{}",
        e.fn_us,
        if e.hosts.is_empty() {
            "local"
        } else {
            &e.hosts
        },
        if e.workload == "constant" || e.workload == "balance" {
            format!(", {} req/s", e.rate)
        } else {
            String::new()
        }
    )
}

/// Figure 4: overhead against chain length.
fn constant(root: &DrawingArea<SVGBackend, Shift>, entries: &[Entry]) -> Result<()> {
    let ser = series(entries);
    let cmin = entries.iter().map(|e| e.chain).min().unwrap_or(1);
    let cmax = entries.iter().map(|e| e.chain).max().unwrap_or(1);
    let ymax = entries
        .iter()
        .map(|e| e.overhead_us.p99.max(e.overhead_us.p50))
        .max()
        .unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Overhead against chain length ({})", subtitle(&entries[0])),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (cmin as f64 - 0.5)..(cmax as f64 + 0.5),
            (1f64..(ymax * 2.0).max(10.0)).log_scale(),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_desc("functions in the chain")
        .y_desc("overhead per request, us (log)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(cmax - cmin + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(draw_err)?;
    for (i, (name, es)) in ser.iter().enumerate() {
        let c = color(name, i);
        let mut pts: Vec<(f64, f64, f64)> = es
            .iter()
            .map(|e| {
                (
                    e.chain as f64,
                    e.overhead_us.p50.max(1) as f64,
                    e.overhead_us.p99.max(1) as f64,
                )
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(
                LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)).point_size(5),
            )
            .map_err(draw_err)?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                pts.iter().map(|p| (p.0, p.2)),
                8,
                5,
                c.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 20, y)], 4, 3, c.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| TriangleMarker::new((p.0, p.2), 6, c.filled())),
            )
            .map_err(draw_err)?;
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("drawing the legend: {e}"))
}

/// Figure 5: throughput and latency against offered rate.
fn ramp(root: &DrawingArea<SVGBackend, Shift>, entries: &[Entry]) -> Result<()> {
    let steps = || entries.iter().flat_map(|e| e.steps.iter().flatten());
    let rmax = steps().map(|s| s.rate).fold(10.0f64, f64::max);
    let tmax = steps().map(|s| s.throughput_rps).fold(10.0f64, f64::max);
    let lmax = steps()
        .map(|s| s.latency_us.p50 as f64)
        .fold(10.0f64, f64::max);
    let (top, body) = root.split_vertically(40);
    top.titled(
        &format!(
            "Ramp: throughput and latency against offered rate ({})",
            subtitle(&entries[0])
        ),
        ("sans-serif", 24),
    )
    .map_err(draw_err)?;
    let panels = body.split_evenly((1, 2));
    let crit = |es: &[&Entry]| {
        es.iter()
            .filter_map(|e| e.critical_rate_rps)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
    };
    ramp_panel(
        &panels[0],
        entries,
        rmax,
        0.8..tmax * 1.5,
        "throughput, req/s (log)",
        |s| s.throughput_rps.max(1.0),
        |name, es| match crit(es) {
            Some(r) => format!("{name} (critical rate {r} req/s)"),
            None => format!("{name} (no step served)"),
        },
    )?;
    ramp_panel(
        &panels[1],
        entries,
        rmax,
        1.0..lmax * 2.0,
        "latency p50, us (log)",
        |s| s.latency_us.p50.max(1) as f64,
        |name, _| name.to_string(),
    )
}

/// One panel of figure 5: `y` of every step against its offered rate, a line per backend.
fn ramp_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[Entry],
    rmax: f64,
    y_range: std::ops::Range<f64>,
    y_desc: &str,
    y: impl Fn(&Step) -> f64,
    label: impl Fn(&str, &[&Entry]) -> String,
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((0.8f64..rmax * 1.5).log_scale(), y_range.log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_desc("offered rate, req/s (log)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(draw_err)?;
    for (i, (name, es)) in series(entries).iter().enumerate() {
        let c = color(name, i);
        let pts: Vec<(f64, f64)> = es
            .iter()
            .flat_map(|e| e.steps.iter().flatten())
            .map(|s| (s.rate.max(1.0), y(s)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)).point_size(4))
            .map_err(draw_err)?
            .label(label(name, es))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

/// Figure 6: the burst's latency CDF.
fn burst(root: &DrawingArea<SVGBackend, Shift>, entries: &[Entry]) -> Result<()> {
    let ser = series(entries);
    let xmax = entries
        .iter()
        .flat_map(|e| e.cdf.iter().map(|p| p.1 as f64 / 1000.0))
        .fold(1.0f64, f64::max);
    let requests = entries
        .iter()
        .find_map(|e| e.drain_floor_s.map(|f| (f, e.chain)))
        .map_or(String::new(), |(f, chain)| {
            format!(", chain {chain}, functions alone {f:.2} s")
        });
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Burst: latency CDF ({}{requests})", subtitle(&entries[0])),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax * 1.05, 0f64..100f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .x_desc("end-to-end latency, ms")
        .y_desc("requests completed, %")
        .draw()
        .map_err(draw_err)?;
    for (i, (name, es)) in ser.iter().enumerate() {
        let c = color(name, i);
        for e in es {
            let mut pts: Vec<(f64, f64)> = vec![(0.0, 0.0)];
            pts.extend(e.cdf.iter().map(|p| (p.1 as f64 / 1000.0, p.0.min(100.0))));
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(draw_err)?
                .label(match e.drain_s {
                    Some(d) => format!("{name}: drained in {d:.2} s"),
                    None => name.clone(),
                })
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

/// Figure 7: each invoker's share of the work, per backend.
fn balance(root: &DrawingArea<SVGBackend, Shift>, entries: &[Entry]) -> Result<()> {
    let ser = series(entries);
    let invokers: Vec<String> = {
        let mut v: Vec<String> = entries
            .iter()
            .flat_map(|e| e.per_invoker.keys().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let n = ser.len().max(1);
    let names: Vec<String> = ser.iter().map(|s| s.0.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "Load split: invoker-0 shares its core with a CPU hog ({})",
                subtitle(&entries[0])
            ),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("share of the function runs, %")
        .draw()
        .map_err(draw_err)?;
    let width = 0.8 / invokers.len().max(1) as f64;
    let shades = [0.95, 0.55, 0.35, 0.25, 0.2];
    for (bi, (name, es)) in ser.iter().enumerate() {
        let c = color(name, bi);
        let Some(e) = es.first() else { continue };
        let total: u64 = e.per_invoker.values().sum::<u64>().max(1);
        for (ii, inv) in invokers.iter().enumerate() {
            let share = *e.per_invoker.get(inv).unwrap_or(&0) as f64 * 100.0 / total as f64;
            let x0 = bi as f64 + 0.1 + ii as f64 * width;
            let style = c.mix(shades[ii.min(shades.len() - 1)]).filled();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, share)],
                    style,
                )))
                .map_err(draw_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{inv} {share:.1}%"),
                    (x0 + 0.01, share + 2.5),
                    ("sans-serif", 14).into_font(),
                )))
                .map_err(draw_err)?;
        }
    }
    // The even split, for reference.
    let even = 100.0 / invokers.len().max(1) as f64;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, even), (n as f64, even)],
            6,
            4,
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(draw_err)?
        .label(format!("even split ({even:.0}%)"))
        .legend(|(x, y)| {
            DashedPathElement::new(vec![(x, y), (x + 20, y)], 4, 3, BLACK.stroke_width(1))
        });
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(workload: &str, backend: &str, chain: usize, p50: u64) -> Entry {
        Entry {
            workload: workload.into(),
            backend: backend.into(),
            transport: "udp".into(),
            hosts: "local".into(),
            chain,
            fn_us: 60,
            rate: 1000.0,
            overhead_us: Pcts { p50, p99: p50 * 3 },
            per_invoker: [("invoker-0".to_string(), 30), ("invoker-1".to_string(), 70)]
                .into_iter()
                .collect(),
            cdf: (1..=100).map(|p| (p as f64, p as u64 * 100)).collect(),
            steps: Some(vec![
                Step {
                    rate: 1.0,
                    throughput_rps: 1.0,
                    latency_us: Pcts { p50: 100, p99: 200 },
                },
                Step {
                    rate: 10.0,
                    throughput_rps: 10.0,
                    latency_us: Pcts { p50: 120, p99: 300 },
                },
            ]),
            critical_rate_rps: Some(10.0),
            drain_s: Some(1.5),
            drain_floor_s: Some(0.9),
        }
    }

    #[test]
    fn every_workload_draws_every_backend_into_an_svg() {
        let dir = std::env::temp_dir().join(format!("conveyor-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for w in ["constant", "ramp", "burst", "balance"] {
            let entries = vec![
                entry(w, "conveyor", 2, 60),
                entry(w, "redis", 2, 230),
                entry(w, "conveyor", 5, 110),
                entry(w, "redis", 5, 390),
            ];
            let path = dir.join(format!("{w}.svg"));
            plot(&entries, &path).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"), "{w}: not an SVG");
            for b in ["conveyor", "redis"] {
                assert!(svg.contains(b), "{w}: no {b} in the chart's text");
            }
        }
        let svg = std::fs::read_to_string(dir.join("constant.svg")).unwrap();
        assert!(svg.contains("conveyor p99") && svg.contains("redis p50"));
        let svg = std::fs::read_to_string(dir.join("balance.svg")).unwrap();
        assert!(svg.contains("invoker-1 70.0%"), "the shares are labelled");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_paths_and_mixed_workloads_are_refused() {
        assert!(check_path(Path::new("x.png"))
            .unwrap_err()
            .to_string()
            .contains("PNG"));
        assert!(check_path(Path::new("x.txt")).is_err());
        assert!(check_path(Path::new("/no/such/dir/x.svg"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        let p = std::env::temp_dir().join(format!("conveyor-mixed-{}.svg", std::process::id()));
        let e = plot(
            &[entry("constant", "a", 2, 1), entry("burst", "b", 2, 1)],
            &p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("one chart per workload"));
        assert!(plot(&[], &p).is_err());
    }
}
