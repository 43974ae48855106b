//! `--chart FILE.svg`: the run's tables as bar charts, drawn with plotters (SVG backend).
//!
//! One panel per PEP table (serial / threads / processes for each worker count), one panel
//! of "times faster than CPython" for every figure with a CPython peer, and one panel of
//! costs relative to the raw OS primitive or reference measured in the same run (time per
//! operation; 1.0 = as fast as the reference).

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::place::Placement;
use super::report::{Figure, Report};

const WIDTH: u32 = 1100;
const PEP_GROUPS: [&str; 5] = ["empty", "fib", "primes", "fileio", "url"];

/// One horizontal bar: label, value.
type Bar = (String, f64);

/// One row of a PEP table: the worker count, and serial / threads / processes seconds.
type PepRow = (String, [f64; 3]);

/// The panels the report has data for.
struct Panels {
    pep: Vec<(String, Vec<PepRow>)>,
    cpython: Vec<Bar>,
    reference: Vec<Bar>,
}

fn panels(report: &Report) -> Panels {
    let mut pep = Vec::new();
    for g in PEP_GROUPS {
        let figs: Vec<&Figure> = report.figures.iter().filter(|f| f.group == g).collect();
        if figs.is_empty() {
            continue;
        }
        let mut rows: Vec<PepRow> = Vec::new();
        for f in figs {
            // Names are "serial, 2 workers".
            let Some((how, n)) = f.name.split_once(", ") else {
                continue;
            };
            let col = match how {
                "serial" => 0,
                "threads" => 1,
                _ => 2,
            };
            match rows.iter_mut().find(|r| r.0 == n) {
                Some(r) => r.1[col] = f.value,
                None => {
                    let mut v = [f64::NAN; 3];
                    v[col] = f.value;
                    rows.push((n.to_string(), v));
                }
            }
        }
        pep.push((g.to_string(), rows));
    }
    let mut cpython = Vec::new();
    let mut reference = Vec::new();
    for f in &report.figures {
        for v in &f.versus {
            if !v.ratio.is_finite() {
                continue;
            }
            let label = match f.placement {
                Placement::Unpinned => format!("{}: {}", f.group, f.name),
                p => format!("{}: {} ({})", f.group, f.name, p.short()),
            };
            if v.what.starts_with("CPython") {
                cpython.push((label, v.advantage(f.unit)));
            } else if v.what != "ideal" {
                // As a cost (time per operation) relative to the reference, whatever the
                // unit: 1.0 is parity, lower is better.
                reference.push((format!("{label} / {}", v.what), 1.0 / v.advantage(f.unit)));
            }
        }
    }
    Panels {
        pep,
        cpython,
        reference,
    }
}

fn draw_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("cannot draw the chart: {e}"))
}

/// Writes the chart of `report` to `path`.
pub(crate) fn write(report: &Report, path: &Path) -> std::io::Result<()> {
    let p = panels(report);
    let pep_h = 260u32;
    let bar_h = |n: usize| 80 + 22 * n as u32;
    let mut heights: Vec<u32> = p.pep.iter().map(|_| pep_h).collect();
    if !p.cpython.is_empty() {
        heights.push(bar_h(p.cpython.len()));
    }
    if !p.reference.is_empty() {
        heights.push(bar_h(p.reference.len()));
    }
    let total: u32 = heights.iter().sum::<u32>().max(100) + 40;
    let root = SVGBackend::new(path, (WIDTH, total)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let m = &report.machine;
    let (title, mut rest) = root.split_vertically(40);
    title
        .draw_text(
            &format!(
                "multiproc bench ({:?}): {} CPUs, {}, kernel {}",
                report.size, m.cpus, m.cpu_model, m.kernel
            ),
            &TextStyle::from(("sans-serif", 16).into_font()),
            (10, 12),
        )
        .map_err(draw_err)?;
    for (group, rows) in &p.pep {
        let (area, below) = rest.split_vertically(pep_h);
        rest = below;
        pep_panel(&area, group, rows)?;
    }
    if !p.cpython.is_empty() {
        let (area, below) = rest.split_vertically(bar_h(p.cpython.len()));
        rest = below;
        bar_panel(
            &area,
            "times faster than CPython multiprocessing (same run)",
            &p.cpython,
            &RGBColor(46, 139, 87),
        )?;
    }
    if !p.reference.is_empty() {
        let (area, _) = rest.split_vertically(bar_h(p.reference.len()));
        bar_panel(
            &area,
            "cost relative to the reference measured in the same run (1.0 = as fast as it; lower is better)",
            &p.reference,
            &RGBColor(70, 110, 180),
        )?;
    }
    root.present().map_err(draw_err)
}

fn pep_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    group: &str,
    rows: &[PepRow],
) -> std::io::Result<()> {
    let max = rows
        .iter()
        .flat_map(|r| r.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        * 1.15;
    // Four slots per worker count: serial, threads, processes, a gap.
    let slots = rows.len() * 4;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("PEP 371 table: {group} (seconds, best of N; lower is better)"),
            ("sans-serif", 15),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d((0..slots).into_segmented(), 0.0..max.max(1e-9))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(s) if s % 4 == 1 => {
                rows.get(s / 4).map(|r| r.0.clone()).unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_label_formatter(&|v| super::stats::human(*v))
        .draw()
        .map_err(draw_err)?;
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(230, 140, 40),
        RGBColor(46, 139, 87),
    ];
    let labels = ["serial", "threads", "processes"];
    for k in 0..3 {
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(colors[k].filled())
                    .margin(2)
                    .data(
                        rows.iter()
                            .enumerate()
                            .filter(|(_, r)| r.1[k].is_finite())
                            .map(|(i, r)| (i * 4 + k, r.1[k])),
                    ),
            )
            .map_err(draw_err)?
            .label(labels[k])
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colors[k].filled())
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    bars: &[Bar],
    color: &RGBColor,
) -> std::io::Result<()> {
    let max = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(430)
        .build_cartesian_2d(0.0..max, (0..n).into_segmented())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .style(color.mix(0.85).filled())
                .margin(3)
                .data(bars.iter().enumerate().map(|(i, b)| (i, b.1))),
        )
        .map_err(draw_err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!(" {:.2}", b.1),
                (b.1, SegmentValue::CenterOf(i)),
                ("sans-serif", 11).into_font(),
            )
        }))
        .map_err(draw_err)?;
    // The 1.0 line: parity with the reference.
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(1),
        )))
        .map_err(draw_err)?;
    Ok(())
}
