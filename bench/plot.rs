//! SVG charts of bench results (`plotters`, SVG backend only): a latency percentile curve
//! (one or more runs), a per-second throughput / latency timeline of one run, and the
//! side-by-side bars of `compare`.
//!
//! Percentiles are drawn on a "nines" axis (x = -log10(1 - q): 0 = p0, 1 = p90, 2 = p99,
//! 3 = p99.9), the way HdrHistogram's plots show tails: a linear percent axis squeezes p99 to
//! p99.99 into the last pixel, where the interesting part of a latency distribution is.

use crate::report::Report;
use crate::stats::fmt_ns;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (900, 520);
/// Colours for series, in order (colour-blind friendly: Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// One labelled latency curve: (nines, latency ns) points.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, u64)>,
}

impl Curve {
    pub fn of(label: &str, r: &Report) -> Curve {
        Curve {
            label: label.to_string(),
            points: r.percentiles.clone(),
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

fn nines_label(x: &f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    match *x {
        x if x < 0.5 => "p0".into(),
        x if x < 1.5 => "p90".into(),
        _ => format!(
            "p{}",
            format!("{q:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
        ),
    }
}

fn ms_label(v: &f64) -> String {
    fmt_ns((*v * 1e6) as u64)
}

fn secs_label(v: &f64) -> String {
    format!("{v:.0}")
}

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Latency by percentile for each curve (log latency axis), in `path`.
pub fn percentiles(path: &Path, title: &str, curves: &[Curve]) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = curves.iter().flat_map(|c| c.points.iter());
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), p| {
        let ms = p.1 as f64 / 1e6;
        (lo.min(ms), hi.max(ms))
    });
    let (lo, hi) = if hi > 0.0 {
        ((lo / 1.5).max(1e-3), hi * 1.5)
    } else {
        (1e-3, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x.ceil(), (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_labels(max_x.ceil() as usize + 1)
        .x_label_formatter(&nines_label)
        .y_label_formatter(&ms_label)
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let pts = c.points.iter().map(|&(x, ns)| (x, ns as f64 / 1e6));
        let col = color(i);
        chart
            .draw_series(LineSeries::new(pts, col.stroke_width(2)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Per-second throughput (top) and p50 / p99 / max latency (bottom) of one run, in `path`.
pub fn timeline(path: &Path, title: &str, r: &Report) -> Result<(), String> {
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 + 160)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = root.split_vertically(SIZE.1 * 2 / 5);
    let secs = r.per_second.len().max(1) as f64;
    let max_ops = r
        .per_second
        .iter()
        .map(|s| s.ops_per_sec)
        .fold(1.0, f64::max);
    let mut ops = ChartBuilder::on(&top)
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..secs, 0f64..max_ops * 1.1)
        .map_err(err)?;
    ops.configure_mesh()
        .y_desc("ops/s")
        .x_label_formatter(&secs_label)
        .y_label_formatter(&|v: &f64| crate::stats::fmt_rate(*v))
        .draw()
        .map_err(err)?;
    let pts = r.per_second.iter().enumerate();
    ops.draw_series(LineSeries::new(
        pts.map(|(i, s)| (i as f64 + 0.5, s.ops_per_sec)),
        color(0).stroke_width(2),
    ))
    .map_err(err)?;
    latency_panel(&bottom, r, secs)?;
    root.present().map_err(err)
}

fn latency_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    r: &Report,
    secs: f64,
) -> Result<(), String> {
    let ms = |ns: u64| ns as f64 / 1e6;
    let hi = r
        .per_second
        .iter()
        .map(|s| ms(s.max_ns))
        .fold(1e-3, f64::max)
        * 1.5;
    let lo = r
        .per_second
        .iter()
        .map(|s| ms(s.p50_ns))
        .filter(|&v| v > 0.0)
        .fold(hi, f64::min)
        / 1.5;
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..secs, (lo.max(1e-3)..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("second of the run")
        .x_label_formatter(&secs_label)
        .y_desc("latency")
        .y_label_formatter(&ms_label)
        .draw()
        .map_err(err)?;
    type Pick = fn(&crate::stats::Summary) -> u64;
    let lines: [(&str, Pick); 3] = [
        ("p50", |s| s.p50_ns),
        ("p99", |s| s.p99_ns),
        ("max", |s| s.max_ns),
    ];
    for (i, (name, get)) in lines.into_iter().enumerate() {
        let col = color(i);
        let pts = r.per_second.iter().enumerate();
        chart
            .draw_series(LineSeries::new(
                pts.map(|(t, s)| (t as f64 + 0.5, ms(get(s)).max(lo))),
                col.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One bar group of [`bars`]: a name and one value per system (None: no result).
pub struct Group {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// Side-by-side bars: for each group, one bar per system, in `area`; `log` for latencies.
fn bars(
    area: &DrawingArea<SVGBackend, Shift>,
    y_desc: &str,
    systems: &[String],
    groups: &[Group],
    fmt: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    let hi = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(1e-9f64, |a, &b| a.max(b));
    let n = groups.len().max(1) as f64;
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(80)
        // Headroom above the tallest bar for the legend.
        .build_cartesian_2d(0f64..n, 0f64..hi * 1.5)
        .map_err(err)?;
    let label = move |x: &f64| {
        let i = x.floor() as usize;
        (x.fract() > 0.4 && x.fract() < 0.6)
            .then(|| names.get(i).cloned())
            .flatten()
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * groups.len() + 1)
        .x_label_formatter(&label)
        .y_desc(y_desc)
        .y_label_formatter(fmt)
        .draw()
        .map_err(err)?;
    let width = 0.8 / systems.len().max(1) as f64;
    for (si, sys) in systems.iter().enumerate() {
        let col = color(si);
        let rects = groups.iter().enumerate().filter_map(|(gi, g)| {
            let v = (*g.values.get(si)?)?;
            let x0 = gi as f64 + 0.1 + si as f64 * width;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, v)],
                col.filled(),
            ))
        });
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(sys.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], col.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// `compare`'s chart: ops/s (top) and p99 latency (bottom) per workload and client count,
/// one bar per system, in `path`.
pub fn compare(
    path: &Path,
    title: &str,
    systems: &[String],
    ops: &[Group],
    p99_ms: &[Group],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 + 200)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (top, bottom) = root.split_vertically((SIZE.1 + 160) / 2);
    let rate = |v: &f64| crate::stats::fmt_rate(*v);
    bars(&top, "ops/s", systems, ops, &rate)?;
    bars(&bottom, "p99 latency", systems, p99_ms, &ms_label)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chart_is_a_complete_svg_with_its_labels() {
        let t = tempfile::tempdir().unwrap();
        let curve = Curve {
            label: "sys-a".into(),
            points: (0..=60)
                .map(|i| (i as f64 * 0.05, 1_000_000 + i * 50_000))
                .collect(),
        };
        let p = t.path().join("p.svg");
        percentiles(&p, "title-p", &[curve]).unwrap();
        let g = |v| Group {
            name: "put x1".into(),
            values: vec![Some(v), None],
        };
        let c = t.path().join("c.svg");
        let systems = ["sys-a".to_string(), "sys-b".to_string()];
        compare(&c, "title-c", &systems, &[g(1000.0)], &[g(2.5)]).unwrap();
        for (f, want) in [
            (p, ["title-p", "sys-a", "p99"]),
            (c, ["title-c", "sys-b", "put x1"]),
        ] {
            let s = std::fs::read_to_string(&f).unwrap();
            assert!(
                s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
                "{f:?}"
            );
            for w in want {
                assert!(s.contains(w), "{f:?} lacks {w:?}");
            }
        }
    }
}
