//! SVG plots of a run: latency CDFs and throughput bars (plotters, SVG only).

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// A plot that could not be drawn.
pub type PlotError = String;

/// A scenario's line on a latency CDF.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// The scenario.
    pub name: &'a str,
    /// Its color: an index into the palette, the same in every plot.
    pub color: usize,
    /// (latency in µs, fraction of requests at or below it), as
    /// [`super::latency::cdf`] makes them.
    pub points: Vec<(f64, f64)>,
}

/// A scenario's bar: its median and the range of its rounds.
#[derive(Debug, Clone, Copy)]
pub struct Bar<'a> {
    /// The scenario.
    pub name: &'a str,
    /// Its color: an index into the palette, the same in every plot.
    pub color: usize,
    /// The median and the range of the rounds; `None` draws an empty slot
    /// marked "no value".
    pub value: Option<BarValue>,
}

/// The height of a bar and its whisker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarValue {
    /// The bar.
    pub median: f64,
    /// The whisker's bottom.
    pub min: f64,
    /// The whisker's top.
    pub max: f64,
}

/// Percentile axis: `-log10(1 - q)`, so 90, 99, 99.9 and 99.99 are evenly
/// spaced; quantiles above this are drawn at it.
const MAX_NINES: f64 = 4.0;

fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(10f64.powf(-MAX_NINES)).log10()).clamp(0.0, MAX_NINES)
}

fn percentile_label(y: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-y));
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn err(e: impl std::fmt::Display) -> PlotError {
    e.to_string()
}

/// The latency axis of the `ambit-testbin rr` CDFs.
pub const FROM_INTENDED_SEND: &str = "latency from the intended send time, µs (log scale)";

/// One line per scenario, latency on a log axis described by `x_desc`,
/// percentiles on a "nines" axis. Returns the SVG document.
pub fn latency_cdf(title: &str, x_desc: &str, lines: &[Line<'_>]) -> Result<String, PlotError> {
    let latencies = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let min = latencies().fold(f64::INFINITY, f64::min).max(1.0);
    let max = latencies().fold(0.0, f64::max).max(min * 10.0);
    let lines: Vec<Line<'_>> = (lines.iter())
        .map(|l| Line {
            points: l
                .points
                .iter()
                .map(|&(x, q)| (x.max(min), nines(q)))
                .collect(),
            ..l.clone()
        })
        .collect();
    let frame = Frame {
        title,
        size: (900, 560),
        x: (min, max),
        x_desc,
        y_top: MAX_NINES,
        y_desc: "percentile",
        y_label: &|y| percentile_label(*y),
        legend: SeriesLabelPosition::LowerRight,
        markers: false,
    };
    frame.draw(&lines)
}

/// One line per scenario through `(x, y)` points: x on a log axis described by
/// `x_desc` (a count), y on a linear one from zero described by `y_desc`.
/// Returns the SVG document.
pub fn growth(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line<'_>],
) -> Result<String, PlotError> {
    let points = || lines.iter().flat_map(|l| l.points.iter().copied());
    let min = points().map(|p| p.0).fold(f64::INFINITY, f64::min).max(1.0);
    let max = points().map(|p| p.0).fold(0.0, f64::max).max(min * 10.0);
    let top = points().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let frame = Frame {
        title,
        size: (900, 520),
        x: (min, max),
        x_desc,
        y_top: top,
        y_desc,
        y_label: &|y| format!("{y:.0}"),
        legend: SeriesLabelPosition::UpperLeft,
        markers: true,
    };
    frame.draw(lines)
}

/// A chart of lines over a log x axis and a linear y axis from zero.
struct Frame<'a> {
    title: &'a str,
    size: (u32, u32),
    /// The smallest and largest x of the data (the axis has some room).
    x: (f64, f64),
    x_desc: &'a str,
    y_top: f64,
    y_desc: &'a str,
    y_label: &'a dyn Fn(&f64) -> String,
    legend: SeriesLabelPosition,
    /// A dot on each point (few points), or a plain line.
    markers: bool,
}

impl Frame<'_> {
    fn draw(self, lines: &[Line<'_>]) -> Result<String, PlotError> {
        let (min, max) = self.x;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.title, ("sans-serif", 22))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d((min * 0.8..max * 1.25).log_scale(), 0.0..self.y_top)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_desc)
                .y_desc(self.y_desc)
                .y_labels(5)
                .y_label_formatter(self.y_label)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(err)?;
            for line in lines {
                let color = Palette99::pick(line.color).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        line.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(line.name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                    });
                if self.markers {
                    chart
                        .draw_series(
                            (line.points.iter()).map(|&p| Circle::new(p, 4, color.filled())),
                        )
                        .map_err(err)?;
                }
            }
            chart
                .configure_series_labels()
                .position(self.legend)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
            root.present().map_err(err)?;
        }
        Ok(svg)
    }
}

/// One bar per scenario with a min-to-max whisker. Returns the SVG document.
pub fn throughput_bars(title: &str, bars: &[Bar<'_>]) -> Result<String, PlotError> {
    if bars.is_empty() {
        return Err("no bars to draw".to_owned());
    }
    let top = bars
        .iter()
        .filter_map(|b| b.value.map(|v| v.median.max(v.max)))
        .fold(0.0, f64::max)
        .max(0.1)
        * 1.15;
    let count = i32::try_from(bars.len()).map_err(err)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((0..count - 1).into_segmented(), 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("Gbit/s (median; whisker: min to max of the rounds)")
            .x_labels(bars.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| bars.get(i))
                    .map_or_else(String::new, |b| b.name.to_owned()),
                _ => String::new(),
            })
            .draw()
            .map_err(err)?;
        let label =
            || TextStyle::from(("sans-serif", 15)).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, bar) in (0..count).zip(bars) {
            let center = SegmentValue::CenterOf(i);
            let Some(value) = bar.value else {
                chart
                    .draw_series(std::iter::once(Text::new(
                        "no value",
                        (center, top * 0.02),
                        label(),
                    )))
                    .map_err(err)?;
                continue;
            };
            let mut rectangle = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), value.median),
                ],
                Palette99::pick(bar.color).to_rgba().filled(),
            );
            rectangle.set_margin(0, 0, 18, 18);
            chart.draw_series(std::iter::once(rectangle)).map_err(err)?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(center.clone(), value.min), (center.clone(), value.max)],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{:.2}", value.median),
                    (center, value.max.max(value.median) + top * 0.01),
                    label(),
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_spaces_the_nines() {
        assert!((nines(0.0)).abs() < 1e-12);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert!((nines(1.0) - MAX_NINES).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0");
        assert_eq!(percentile_label(1.0), "90");
        assert_eq!(percentile_label(3.0), "99.9");
    }

    #[test]
    fn svgs_name_every_scenario() {
        let line = |name, color, points: &[(f64, f64)]| Line {
            name,
            color,
            points: points.to_vec(),
        };
        let cdf = latency_cdf(
            "1 KiB",
            FROM_INTENDED_SEND,
            &[
                line("baseline", 0, &[(20.0, 0.0), (30.0, 0.5), (90.0, 1.0)]),
                line("mesh", 1, &[(60.0, 0.0), (80.0, 0.5), (400.0, 1.0)]),
            ],
        )
        .expect("draws");
        assert!(cdf.starts_with("<svg") && cdf.contains("baseline") && cdf.contains("mesh"));
        let bar = |name, color, v: Option<(f64, f64, f64)>| Bar {
            name,
            color,
            value: v.map(|(median, min, max)| BarValue { median, min, max }),
        };
        let bars = throughput_bars(
            "bulk",
            &[
                bar("baseline", 0, Some((10.0, 9.0, 11.0))),
                bar("mesh", 1, Some((6.0, 5.5, 6.5))),
                bar("loopback_on", 2, None),
            ],
        )
        .expect("draws");
        assert!(bars.starts_with("<svg") && bars.contains("mesh") && bars.contains("6.00"));
        assert!(bars.contains("loopback_on") && bars.contains("no value"));
        assert!(throughput_bars("bulk", &[]).is_err());
        let growth = growth(
            "memory",
            "connections",
            "MiB",
            &[line(
                "mesh_no_sockmap",
                3,
                &[(1.0, 20.0), (100.0, 21.0), (10_000.0, 180.0)],
            )],
        )
        .expect("draws");
        assert!(growth.starts_with("<svg") && growth.contains("mesh_no_sockmap"));
        assert!(
            growth.contains("10000"),
            "the log axis reaches the largest count"
        );
    }
}
