//! A run's plot (`--plot run.svg`): throughput over time above, latency percentiles
//! below, one SVG.
//!
//! The coordinator samples the workers' summed counters once a second into a
//! [`Timeline`] (also written to the JSON result). The upper panel draws, per second,
//! the connections open (left axis) and the rates of what the scenario does (right
//! axis): connects, sends, acks and deliveries, a churn's reconnects, a storm's resumes.
//! The lower panel draws every latency histogram with samples as a percentile spectrum,
//! the HdrHistogram way: the x axis counts nines (p90 is 1, p99 2, p99.9 3), the y axis
//! is milliseconds on a log scale, so the tail is as readable as the median.
//!
//! SVG only, with no font files: plotters estimates text sizes and the viewer renders
//! the text.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::stats::{Counters, Histograms, Metric};

/// Longest timeline kept: a day of seconds (runs are bounded far below that).
const MAX_SAMPLES: usize = 86_400;

/// Size of the SVG, pixels.
const SIZE: (u32, u32) = (1100, 900);

/// The percentiles drawn, as fractions.
const SPECTRUM: [f64; 12] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0];

/// Most nines on the x axis (p99.999).
const MAX_NINES: f64 = 5.0;

/// The run's counters, sampled once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Timeline {
    pub(crate) samples: Vec<Sample>,
}

/// One second of the run: counters summed over workers (and the fanout sender) since
/// the start.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// Seconds since the coordinator started.
    pub(crate) secs: f64,
    pub(crate) open: u64,
    pub(crate) connected: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) churned: u64,
    pub(crate) resumed: u64,
}

impl Timeline {
    /// Records the counters at `secs`.
    pub(crate) fn push(&mut self, secs: f64, c: &Counters) {
        if self.samples.len() >= MAX_SAMPLES {
            return;
        }
        self.samples.push(Sample {
            secs,
            open: c.open(),
            connected: c.connected,
            sent: c.sent,
            acked: c.acked,
            delivered: c.delivered,
            churned: c.churned,
            resumed: c.resumed,
        });
    }

    /// Per-second rate of one counter between consecutive samples, at each later sample.
    fn rate(&self, counter: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
        self.samples
            .windows(2)
            .map(|pair| {
                let secs = (pair[1].secs - pair[0].secs).max(1e-3);
                (pair[1].secs, counter(&pair[1]).saturating_sub(counter(&pair[0])) as f64 / secs)
            })
            .collect()
    }
}

/// A histogram's spectrum as (nines, milliseconds) points.
fn spectrum(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    SPECTRUM
        .iter()
        .map(|&p| {
            let nines = if p >= 1.0 { MAX_NINES } else { (-(1.0 - p).log10()).min(MAX_NINES) };
            let micros = hist.value_at_quantile(p).max(1);
            (nines, micros as f64 / 1e3)
        })
        .collect()
}

/// The x axis label of `nines`: the percentile it stands for.
fn percentile_label(nines: f64) -> String {
    if nines >= MAX_NINES {
        return "max".to_owned();
    }
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("p{p:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Writes the plot of a run to `path`.
pub(crate) fn write_svg(path: &Path, title: &str, timeline: &Timeline, histograms: &Histograms) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("cannot draw: {e}"))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| anyhow!("cannot draw the title: {e}"))?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2 - 20);
    draw_throughput(&upper, timeline).context("cannot draw the throughput panel")?;
    draw_latency(&lower, histograms).context("cannot draw the latency panel")?;
    root.present().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One line of a panel: its legend, colour and points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// The legend box, upper left, over a light background.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

fn draw_throughput(area: &Area<'_>, timeline: &Timeline) -> anyhow::Result<()> {
    let end = timeline.samples.last().map_or(1.0, |s| s.secs).max(1.0);
    let open_max = timeline.samples.iter().map(|s| s.open).max().unwrap_or(0).max(1) as f64;
    let series: Vec<Series> = [
        ("connects/s", BLUE, timeline.rate(|s| s.connected)),
        ("sends/s", RGBColor(230, 120, 0), timeline.rate(|s| s.sent)),
        ("acks/s", RGBColor(150, 90, 0), timeline.rate(|s| s.acked)),
        ("deliveries/s", RGBColor(0, 150, 0), timeline.rate(|s| s.delivered)),
        ("reconnects/s (churn)", MAGENTA, timeline.rate(|s| s.churned)),
        ("resumes/s (storm)", CYAN, timeline.rate(|s| s.resumed)),
    ]
    .into_iter()
    .filter(|(_, _, points)| points.iter().any(|&(_, y)| y > 0.0))
    .collect();
    let rate_max = series.iter().flat_map(|(_, _, points)| points.iter().map(|&(_, y)| y)).fold(1.0, f64::max);

    let mut chart = ChartBuilder::on(area)
        .caption("throughput", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..open_max * 1.1)
        .map_err(|e| anyhow!("{e}"))?
        .set_secondary_coord(0.0..end, 0.0..rate_max * 1.1);
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("connections open")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("per second")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(timeline.samples.iter().map(|s| (s.secs, s.open as f64)), BLACK.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label("connections open (left axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    for (name, color, points) in series {
        chart
            .draw_secondary_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    draw_legend(&mut chart)
}

fn draw_latency(area: &Area<'_>, histograms: &Histograms) -> anyhow::Result<()> {
    let palette = [BLUE, RED, RGBColor(0, 150, 0), MAGENTA, RGBColor(230, 120, 0), CYAN, BLACK, RGBColor(120, 60, 160)];
    let curves: Vec<(Metric, Vec<(f64, f64)>)> = Metric::ALL
        .iter()
        .filter(|&&metric| !histograms.get(metric).is_empty())
        .map(|&metric| (metric, spectrum(histograms.get(metric))))
        .collect();
    let values = curves.iter().flat_map(|(_, points)| points.iter().map(|&(_, ms)| ms));
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(lo, hi), ms| (lo.min(ms), hi.max(ms)));
    let (low, high) = if curves.is_empty() { (0.001, 1.0) } else { (low.max(0.001) / 2.0, high * 2.0) };

    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..MAX_NINES, (low..high).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("milliseconds (log)")
        .x_labels(6)
        .x_label_formatter(&|nines| percentile_label(*nines))
        .y_label_formatter(&|ms| format!("{ms}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (k, (metric, points)) in curves.into_iter().enumerate() {
        let color = palette[k % palette.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(metric.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    draw_legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_count_nines() {
        assert_eq!(percentile_label(0.0), "p0");
        assert_eq!(percentile_label(-(0.5f64.log10())), "p50");
        assert_eq!(percentile_label(2.0), "p99");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(percentile_label(MAX_NINES), "max");
    }

    #[test]
    fn rates_are_per_second_between_samples() {
        let mut timeline = Timeline::default();
        let mut c = Counters::default();
        timeline.push(1.0, &c);
        c.delivered = 500;
        timeline.push(1.5, &c);
        c.delivered = 1500;
        timeline.push(2.5, &c);
        assert_eq!(timeline.rate(|s| s.delivered), vec![(1.5, 1000.0), (2.5, 1000.0)]);
    }

    #[test]
    fn writes_an_svg_with_both_panels_and_every_measured_metric() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.svg");
        let mut timeline = Timeline::default();
        let mut c = Counters::default();
        for second in 0..5u64 {
            c.connected = 100 * second;
            c.delivered = 1000 * second;
            timeline.push(second as f64, &c);
        }
        let mut histograms = Histograms::new().expect("histograms");
        for micros in [800, 1200, 2500, 40_000] {
            histograms.record(Metric::Deliver, micros);
            histograms.record(Metric::Synced, micros / 2);
        }
        write_svg(&path, "test run", &timeline, &histograms).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in ["test run", "throughput", "latency by percentile", "deliveries/s", "connects/s"] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Labels are XML-escaped ("->" is "-&gt;").
        let escaped = |metric: Metric| metric.label().replace('>', "&gt;");
        assert!(svg.contains(&escaped(Metric::Deliver)) && svg.contains(&escaped(Metric::Synced)));
        // A metric without samples is not drawn.
        assert!(!svg.contains(&escaped(Metric::Resume)));
    }
}
