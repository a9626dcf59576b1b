//! SVG plots of a result, drawn with `plotters`' SVG backend only (text stays SVG `<text>`,
//! so no font files or system libraries are needed):
//! * `latency_spectrum.svg`: latency by percentile (HdrHistogram style, x = 1/(1-q) on a log
//!   scale, so 99.99% gets as much room as 90%) for delivery, ack and persistence;
//! * `throughput.svg`: sent, acked and delivered messages per second over the run;
//! * `latency_over_time.svg`: delivery p50 / p99 / max per second.

use crate::report::RunResult;
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (960, 540);

pub fn write_all(r: &RunResult, dir: &Path) -> Result<(), String> {
    spectrum(r, &dir.join("latency_spectrum.svg"))
        .map_err(|e| format!("latency_spectrum.svg: {e}"))?;
    throughput(r, &dir.join("throughput.svg")).map_err(|e| format!("throughput.svg: {e}"))?;
    latency_over_time(r, &dir.join("latency_over_time.svg"))
        .map_err(|e| format!("latency_over_time.svg: {e}"))?;
    Ok(())
}

type Res = Result<(), Box<dyn std::error::Error>>;
/// A named, coloured line.
type Line<T> = (&'static str, T, RGBColor);
type Field<T> = fn(&crate::report::SecondPoint) -> T;

/// Largest x of the spectrum: 99.9999%.
const MAX_X: f64 = 1e6;

/// (1/(1-q), ms) points of a histogram's percentile spectrum.
fn spectrum_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                MAX_X
            } else {
                (1.0 / (1.0 - q)).min(MAX_X)
            };
            (
                x,
                h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
            )
        })
        .collect();
    if let Some(&(_, y)) = pts.last() {
        pts.push((MAX_X, y.max(h.max() as f64 / 1000.0)));
    }
    pts
}

fn percentile_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 1.0 / x);
    let s = format!("{q:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn spectrum(r: &RunResult, path: &Path) -> Res {
    let hists = r.histograms.decode()?;
    let lines: Vec<Line<Vec<(f64, f64)>>> = [
        ("delivery", &hists.delivery, BLUE),
        ("ack", &hists.ack, RED),
        ("persistence (sampled)", &hists.persist, GREEN),
    ]
    .into_iter()
    .filter(|(_, h, _)| !h.is_empty())
    .map(|(n, h, c)| (n, spectrum_points(h), c))
    .collect();
    let ymax = lines
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: latency by percentile (from intended send time)",
                r.name
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..MAX_X).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    let lines = lines
        .into_iter()
        .map(|(name, pts, color)| (name, pts, color, 2));
    draw_lines(&mut chart, &root, lines, SeriesLabelPosition::UpperLeft)
}

/// The series without the empty tail (the partial second in which the drain ended).
fn points(r: &RunResult) -> Vec<&crate::report::SecondPoint> {
    r.series
        .iter()
        .filter(|p| p.phase != "drain" || p.sent + p.acked + p.delivered > 0)
        .collect()
}

fn throughput(r: &RunResult, path: &Path) -> Res {
    let s = points(r);
    let xmax = (s.len() as f64).max(1.0);
    let ymax = s
        .iter()
        .map(|p| p.sent.max(p.delivered).max(p.acked) as f64)
        .fold(1.0, f64::max)
        * 1.3;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: messages per second", r.name),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc(format!("seconds (warm-up: first {} s)", r.scenario.warmup))
        .y_desc("messages / s")
        .draw()?;
    let lines: [Line<Field<u64>>; 3] = [
        ("sent", |p| p.sent, CYAN),
        ("acked", |p| p.acked, RED),
        ("delivered (receptions)", |p| p.delivered, GREEN),
    ];
    let lines = lines.into_iter().enumerate().map(|(i, (name, f, color))| {
        // Sent and acked usually coincide: the first line is wider so both stay visible.
        let width = if i == 0 { 6 } else { 2 };
        let pts = s.iter().map(move |p| (p.second as f64 + 0.5, f(p) as f64));
        (name, pts, color, width)
    });
    draw_lines(&mut chart, &root, lines, SeriesLabelPosition::UpperRight)
}

fn latency_over_time(r: &RunResult, path: &Path) -> Res {
    let s: Vec<_> = points(r).into_iter().filter(|p| p.max_ms > 0.0).collect();
    let xmax = (s.len() as f64).max(1.0);
    // Log scale: p50 and max of one second can be orders of magnitude apart.
    const FLOOR_MS: f64 = 0.01;
    let ymax = s.iter().map(|p| p.max_ms).fold(1.0, f64::max) * 1.5;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: delivery latency per second", r.name),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (FLOOR_MS..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (ms, log scale)")
        .draw()?;
    let lines: [Line<Field<f64>>; 3] = [
        ("p50", |p| p.p50_ms, BLUE),
        ("p99", |p| p.p99_ms, RED),
        ("max", |p| p.max_ms, BLACK),
    ];
    let lines = lines.into_iter().map(|(name, f, color)| {
        let pts = s
            .iter()
            .map(move |p| (p.second as f64 + 0.5, f(p).max(FLOOR_MS)));
        (name, pts, color, 2)
    });
    draw_lines(&mut chart, &root, lines, SeriesLabelPosition::UpperLeft)
}

/// A chart of (x, y) points in ms or messages, on linear or log axes.
type Chart<'a, X, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>;

/// Draws each line (name, points, colour, width in pixels) with its legend entry, then the
/// legend at `position`, and writes the file.
fn draw_lines<X, Y, P>(
    chart: &mut Chart<'_, X, Y>,
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    lines: impl IntoIterator<Item = (&'static str, P, RGBColor, u32)>,
    position: SeriesLabelPosition,
) -> Res
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
    P: IntoIterator<Item = (f64, f64)>,
{
    for (name, pts, color, width) in lines {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_points() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        let mut h = crate::stats::new_hist();
        for v in 1..=1000 {
            h.record(v * 1000).unwrap();
        }
        let pts = spectrum_points(&h);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(pts.last().unwrap().0, MAX_X);
    }
}
