//! The message time-sequence diagram: send time against delivery time, one series per
//! direction. A message on the diagonal was delivered instantly; the vertical distance from
//! the diagonal is its latency; a gap in the points is a stall.

use std::path::Path;
use std::sync::Once;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Direction, Report, ReportError};

static FONT: Once = Once::new();

/// The colour failover gaps are marked in.
const ORANGE: RGBColor = RGBColor(255, 165, 0);

/// The plots carry their own font, so they render the same on a machine without fonts.
fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        // The bundled font is known to be valid; if it were not, text would be missing,
        // which the plot tests would catch.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Turns a plotting failure into the error naming the file being drawn.
fn plot_error(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> ReportError {
    let shown = path.display().to_string();
    move |e| ReportError::Plot {
        path: shown.clone(),
        message: e.to_string(),
    }
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series legend every plot here uses: upper left, on a translucent white box.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the time-sequence diagram of `report` into a PNG at `path`.
pub fn time_sequence(report: &Report, path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let mut max_t: f64 = 1.0;
    for m in &report.messages {
        max_t = max_t.max(m.sent_ms);
        for d in &m.delivered_ms {
            max_t = max_t.max(*d);
        }
    }
    let max_t = max_t * 1.05;
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} (seed {}, {}): message time-sequence",
                report.scenario, report.seed, report.protocol
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..max_t, 0f64..max_t)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("sent at (simulated ms)")
        .y_desc("delivered at (simulated ms)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (max_t, max_t)],
            &BLACK.mix(0.3),
        ))
        .map_err(|e| err(&e))?
        .label("instant delivery")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let series = [
        (Direction::ClientToServer, BLUE),
        (Direction::ServerToClient, RED),
    ];
    for (direction, colour) in series {
        let points: Vec<(f64, f64)> = report
            .messages
            .iter()
            .filter(|m| m.direction == direction)
            .flat_map(|m| m.delivered_ms.iter().map(move |d| (m.sent_ms, *d)))
            .collect();
        let lost: Vec<(f64, f64)> = report
            .messages
            .iter()
            .filter(|m| m.direction == direction && m.delivered_ms.is_empty())
            .map(|m| (m.sent_ms, max_t * 0.99))
            .collect();
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))
            .map_err(|e| err(&e))?
            .label(direction.label())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
        if !lost.is_empty() {
            chart
                .draw_series(
                    lost.iter()
                        .map(|p| Cross::new(*p, 5, colour.stroke_width(2))),
                )
                .map_err(|e| err(&e))?
                .label(format!("{} lost", direction.label()))
                .legend(move |(x, y)| Cross::new((x + 10, y), 5, colour.stroke_width(2)));
        }
    }
    // Failover gaps: the stretch without deliveries after each path fault, as a band across
    // the delivery axis, and the fault as a vertical line at its time.
    for (k, g) in report.gaps.iter().enumerate() {
        let band = Rectangle::new(
            [(0.0, g.from_ms), (max_t, g.to_ms)],
            ORANGE.mix(0.35).filled(),
        );
        let s = chart
            .draw_series(std::iter::once(band))
            .map_err(|e| err(&e))?;
        if k == 0 {
            s.label(format!(
                "failover gap (longest {:.0} ms)",
                report.metrics.failover_gap_ms.unwrap_or(0.0)
            ))
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], ORANGE.mix(0.5).filled())
            });
        }
        let line = PathElement::new(vec![(g.fault_ms, 0.0), (g.fault_ms, max_t)], BLACK.mix(0.6));
        let s = chart
            .draw_series(std::iter::once(line))
            .map_err(|e| err(&e))?;
        if k == 0 {
            s.label("path fault")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
        }
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Whether `report` has a client path timeline worth a goodput plot.
pub fn has_paths(report: &Report) -> bool {
    report
        .path_events
        .iter()
        .any(|e| e.event == crate::PathEventKind::Start)
}

/// The client's path over time: `(from ms, to ms, interface or None while dormant)`.
fn path_spans(report: &Report, end: f64) -> Vec<(f64, f64, Option<String>)> {
    let changes: Vec<(f64, Option<String>)> = report
        .path_events
        .iter()
        .filter(|e| e.event.client_path())
        .map(|e| (e.at_ms, e.interface.clone()))
        .collect();
    changes
        .iter()
        .enumerate()
        .map(|(i, (t, iface))| {
            let until = changes.get(i + 1).map_or(end, |(t2, _)| *t2);
            (*t, until, iface.clone())
        })
        .collect()
}

/// Goodput over time (client → server payload delivered per 100 ms), on a background shaded
/// by the interface the client's carrier used (grey while dormant).
pub fn goodput(report: &Report, path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    const BIN_MS: f64 = 100.0;
    let end = report
        .messages
        .iter()
        .flat_map(|m| m.delivered_ms.first().copied())
        .fold(1.0f64, f64::max)
        + BIN_MS;
    let bins = (end / BIN_MS).ceil() as usize;
    let mut bytes = vec![0u64; bins + 1];
    for m in report
        .messages
        .iter()
        .filter(|m| m.direction == Direction::ClientToServer)
    {
        if let Some(&d) = m.delivered_ms.first() {
            bytes[(d / BIN_MS) as usize] += m.bytes;
        }
    }
    // kbit/s over each bin.
    let series: Vec<(f64, f64)> = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| (i as f64 * BIN_MS / 1000.0, *b as f64 * 8.0 / BIN_MS))
        .collect();
    let top = series.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.25;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} (seed {}, {}): goodput and the client's path",
                report.scenario, report.seed, report.protocol
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..end / 1000.0, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("goodput (kbit/s, 100 ms bins)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let palette = [
        RGBColor(120, 170, 230),
        RGBColor(130, 210, 130),
        RGBColor(230, 190, 110),
        RGBColor(200, 140, 210),
    ];
    let mut named: Vec<String> = Vec::new();
    let mut labelled = std::collections::BTreeSet::new();
    for (from, to, iface) in path_spans(report, end) {
        let colour = match &iface {
            Some(name) => {
                let k = match named.iter().position(|n| n == name) {
                    Some(k) => k,
                    None => {
                        named.push(name.clone());
                        named.len() - 1
                    }
                };
                palette[k % palette.len()]
            }
            None => RGBColor(190, 190, 190),
        };
        let label = iface.clone().unwrap_or_else(|| "dormant".into());
        let first = labelled.insert(label.clone());
        let rect = Rectangle::new(
            [(from / 1000.0, 0.0), (to / 1000.0, top)],
            colour.mix(0.35).filled(),
        );
        let s = chart
            .draw_series(std::iter::once(rect))
            .map_err(|e| err(&e))?;
        if first {
            s.label(format!("path: {label}")).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], colour.mix(0.6).filled())
            });
        }
    }
    chart
        .draw_series(LineSeries::new(series, BLACK.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("goodput")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for t in &report.path_faults_ms {
        let line = PathElement::new(vec![(t / 1000.0, 0.0), (t / 1000.0, top)], RED.mix(0.7));
        chart
            .draw_series(std::iter::once(line))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Whether `report` has per-message properties worth a latency-by-niceness plot.
pub fn has_niceness(report: &Report) -> bool {
    let levels: std::collections::BTreeSet<u32> =
        report.messages.iter().filter_map(|m| m.niceness).collect();
    levels.len() > 1
}

/// Latency against send order, one colour per niceness; expired messages are crosses on the
/// top edge. Shows how urgent messages overtake a backlog and which ones a lifetime dropped.
pub fn latency_by_niceness(report: &Report, path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let mut max_latency: f64 = 1.0;
    for m in &report.messages {
        if let Some(d) = m.delivered_ms.first() {
            max_latency = max_latency.max(d - m.sent_ms);
        }
    }
    let max_latency = max_latency * 1.08;
    let count = report.messages.len().max(1) as f64;
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let expired = report.metrics.messages_expired;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} (seed {}, {}): latency by niceness, {} expired",
                report.scenario, report.seed, report.protocol, expired
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..count, 0f64..max_latency)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("message (send order)")
        .y_desc("latency, send to delivery (simulated ms)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let levels: std::collections::BTreeSet<u32> =
        report.messages.iter().filter_map(|m| m.niceness).collect();
    for (i, level) in levels.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let delivered: Vec<(f64, f64)> = report
            .messages
            .iter()
            .filter(|m| m.niceness == Some(*level))
            .filter_map(|m| Some((m.id as f64, m.delivered_ms.first()? - m.sent_ms)))
            .collect();
        let median = report
            .metrics
            .median_latency_by_niceness_ms
            .get(level)
            .map_or("-".to_string(), |v| format!("{v:.0} ms"));
        chart
            .draw_series(
                delivered
                    .iter()
                    .map(|p| Circle::new(*p, 3, colour.filled())),
            )
            .map_err(|e| err(&e))?
            .label(format!("niceness {level} (median {median})"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
        let dropped: Vec<(f64, f64)> = report
            .messages
            .iter()
            .filter(|m| m.niceness == Some(*level) && m.delivered_ms.is_empty())
            .map(|m| (m.id as f64, max_latency * 0.98))
            .collect();
        if !dropped.is_empty() {
            chart
                .draw_series(
                    dropped
                        .iter()
                        .map(|p| Cross::new(*p, 4, colour.stroke_width(2))),
                )
                .map_err(|e| err(&e))?
                .label(format!("niceness {level} not delivered"))
                .legend(move |(x, y)| Cross::new((x + 10, y), 4, colour.stroke_width(2)));
        }
    }
    draw_legend(&mut chart).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Whether `report` has a connection race worth a timeline (more than one attempt, or none
/// that won).
pub fn has_race(report: &Report) -> bool {
    report.establishment.as_ref().is_some_and(|e| {
        e.attempts.len() > 1
            || e.attempts.iter().all(|a| a.outcome != "won")
            || e.resolution.as_ref().is_some_and(|r| {
                r.queries.len() + r.unanswered.len() > 1 || r.race_started_ms > 0.0
            })
    })
}

/// The racing timeline: a bar per DNS query (from the start to its answer) and one per
/// connection attempt, from its start to its end, coloured by outcome.
pub fn racing_timeline(report: &Report, path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let Some(est) = &report.establishment else {
        return Ok(());
    };
    // Attempts count from the race's start; DNS came before it.
    let (offset, queries, unanswered) = match &est.resolution {
        Some(r) => (r.race_started_ms, &r.queries[..], &r.unanswered[..]),
        None => (0.0, &[][..], &[][..]),
    };
    let dns_rows = queries.len() + unanswered.len();
    let n = (est.attempts.len() + dns_rows).max(1);
    let end = est
        .attempts
        .iter()
        .map(|a| offset + a.started_ms + a.duration_ms)
        .chain(queries.iter().map(|q| q.answered_ms))
        .fold(offset + est.duration_ms, f64::max)
        .max(1.0)
        * 1.1;
    let height = (160 + 60 * n) as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let verdict = match &est.error {
        Some(_) => "nothing established".to_string(),
        None => format!("decided after {:.0} ms", est.duration_ms),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} (seed {}): connection race, {verdict}",
                report.scenario, report.seed
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..end, 0f64..n as f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since initiate (simulated ms)")
        .y_labels(0)
        .label_style(("sans-serif", 15))
        .disable_y_mesh()
        .draw()
        .map_err(|e| err(&e))?;
    let colour = |outcome: &str| match outcome {
        "won" => GREEN.mix(0.9),
        "lost race" => BLUE.mix(0.6),
        "failed" => RED.mix(0.8),
        _ => BLACK.mix(0.35),
    };
    let dns = queries
        .iter()
        .map(|q| {
            let what = match &q.error {
                Some(e) => format!("failed: {e}"),
                None if q.addresses.is_empty() => "no address".into(),
                None => q.addresses.join(", "),
            };
            let late = if q.late {
                " (late: joined the race)"
            } else {
                ""
            };
            (q.answered_ms, format!("DNS {}: {what}{late}", q.query))
        })
        .chain(unanswered.iter().map(|q| {
            (
                end,
                format!("DNS {q}: unanswered when the race was decided"),
            )
        }));
    // One row per DNS query, then one per attempt: (from, to, colour, label).
    let mut rows: Vec<(f64, f64, RGBAColor, String)> = dns
        .map(|(until, text)| (0.0, until, MAGENTA.mix(0.45), text))
        .collect();
    rows.extend(est.attempts.iter().map(|a| {
        let start = offset + a.started_ms;
        let text = match &a.reason {
            Some(r) => format!(
                "{} {}: {}: {}",
                a.protocol,
                a.remote,
                a.outcome,
                r.chars().take(70).collect::<String>()
            ),
            None => format!("{} {}: {}", a.protocol, a.remote, a.outcome),
        };
        (start, start + a.duration_ms, colour(&a.outcome), text)
    }));
    for (i, (from, to, fill, text)) in rows.into_iter().enumerate() {
        let y = (n - i - 1) as f64;
        let bar = Rectangle::new(
            [
                (from, y + 0.25),
                (from + (to - from).max(end / 500.0), y + 0.75),
            ],
            fill.filled(),
        );
        chart
            .draw_series(std::iter::once(bar))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                text,
                (end / 100.0, y + 0.95),
                ("sans-serif", 14),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// TTFM of each scenario (its first report) beside its physical limit: bars for the first
/// carrier (and the last, when a scenario runs several), a black tick at each limit.
pub fn ttfm_vs_limit<R: std::borrow::Borrow<Report>>(
    reports: &[R],
    path: &Path,
) -> Result<(), ReportError> {
    let reports: Vec<&Report> = reports.iter().map(|r| r.borrow()).collect();
    register_font();
    let err = plot_error(path);
    let mut firsts: Vec<&Report> = Vec::new();
    for r in reports {
        if r.metrics.ttfm_ms.is_some() && !firsts.iter().any(|f| f.scenario == r.scenario) {
            firsts.push(r);
        }
    }
    firsts.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    let rows: Vec<(String, f64, Option<f64>)> = firsts
        .iter()
        .flat_map(|r| {
            let m = &r.metrics;
            let mut v = vec![(
                r.scenario.clone(),
                m.ttfm_ms.unwrap_or_default(),
                m.ttfm_limit_ms,
            )];
            if let Some(last) = m.ttfm_last_ms.filter(|_| m.ttfm_last_limit_ms.is_some()) {
                v.push((
                    format!("{} (last carrier)", r.scenario),
                    last,
                    m.ttfm_last_limit_ms,
                ));
            }
            v
        })
        .collect();
    let n = rows.len().max(1);
    let max = rows
        .iter()
        .map(|(_, t, l)| t.max(l.unwrap_or(0.0)))
        .fold(1.0, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (1100, (120 + 34 * n) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "time to first message vs its physical limit (seed of the first run)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..max, 0f64..n as f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("simulated ms")
        .y_labels(0)
        .disable_y_mesh()
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, ttfm, limit)) in rows.iter().enumerate() {
        let y = (n - i - 1) as f64;
        let over = limit.is_some_and(|l| *ttfm > l + 2.0);
        let colour = if over {
            RGBColor(230, 140, 40)
        } else {
            RGBColor(70, 130, 200)
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.2), (*ttfm, y + 0.8)],
                colour.filled(),
            )))
            .map_err(|e| err(&e))?;
        if let Some(l) = limit {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*l, y + 0.05), (*l, y + 0.95)],
                    BLACK.stroke_width(3),
                )))
                .map_err(|e| err(&e))?;
        }
        let label = match limit {
            Some(l) => format!("{name}: {ttfm:.0} ms (limit {l:.0} ms)"),
            None => format!("{name}: {ttfm:.0} ms"),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (max * 0.01, y + 0.62),
                ("sans-serif", 14),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One cell of a NAT-pair matrix plot.
#[derive(Debug, Clone)]
pub struct MatrixCell {
    /// Row label (the first peer's NAT).
    pub row: String,
    /// Column label (the second peer's NAT).
    pub column: String,
    /// Direct rate, 0 to 1.
    pub rate: f64,
    /// Relayed rate, 0 to 1 (the rest failed).
    pub relayed: f64,
    /// Median time to ready, ms.
    pub median_ms: Option<f64>,
    /// Whether a direct path is predicted.
    pub predicted: bool,
}

/// The NAT-pair matrix as a heatmap: each cell coloured by its direct rate (red 0 → green 1),
/// labelled with the rate and the median time to ready; a cell whose prediction is "relay"
/// says so.
pub fn nat_matrix(cells: &[MatrixCell], seeds: usize, path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let mut labels: Vec<String> = Vec::new();
    for c in cells {
        if !labels.contains(&c.row) {
            labels.push(c.row.clone());
        }
    }
    let n = labels.len().max(1);
    let root = BitMapBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(60);
    title
        .draw(&Text::new(
            format!(
                "NAT-pair matrix ({seeds} seeds per cell; rows: first peer's NAT, columns: second's)"
            ),
            (20, 20),
            ("sans-serif", 24),
        ))
        .map_err(|e| err(&e))?;
    let (left, grid) = body.split_horizontally(190);
    let (top, grid) = grid.split_vertically(40);
    let (w, h) = grid.dim_in_pixel();
    let (cw, ch) = (w as i32 / n as i32, (h as i32 - 20) / n as i32);
    let index = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0) as i32;
    for (i, l) in labels.iter().enumerate() {
        left.draw(&Text::new(
            l.clone(),
            (10, 40 + i as i32 * ch + ch / 2 - 8),
            ("sans-serif", 16),
        ))
        .map_err(|e| err(&e))?;
        top.draw(&Text::new(
            l.clone(),
            (i as i32 * cw + 8, 12),
            ("sans-serif", 15),
        ))
        .map_err(|e| err(&e))?;
    }
    for c in cells {
        let (x, y) = (index(&c.column) * cw, index(&c.row) * ch);
        // Green for direct, amber for relayed, red for failed, mixed by rate.
        let failed = (1.0 - c.rate - c.relayed).max(0.0);
        let mix = |d: f64, r: f64, f: f64| (d * c.rate + r * c.relayed + f * failed) as u8;
        let colour = RGBColor(
            mix(60.0, 250.0, 240.0),
            mix(190.0, 190.0, 70.0),
            mix(90.0, 60.0, 60.0),
        );
        grid.draw(&Rectangle::new(
            [(x + 2, y + 2), (x + cw - 2, y + ch - 2)],
            colour.mix(0.75).filled(),
        ))
        .map_err(|e| err(&e))?;
        let lines = [
            if c.relayed > 0.0 {
                format!(
                    "{:.0} % direct, {:.0} % relayed",
                    c.rate * 100.0,
                    c.relayed * 100.0
                )
            } else {
                format!("{:.0} % direct", c.rate * 100.0)
            },
            c.median_ms
                .map(|m| format!("ready {m:.0} ms"))
                .unwrap_or_else(|| "—".into()),
            format!(
                "predicted: {}",
                if c.predicted { "direct" } else { "relayed" }
            ),
        ];
        for (k, line) in lines.iter().enumerate() {
            grid.draw(&Text::new(
                line.clone(),
                (x + 10, y + 12 + k as i32 * 20),
                ("sans-serif", 15),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One line of a latency CDF plot: its label and its latencies in ms (any order).
#[derive(Debug, Clone)]
pub struct CdfSeries {
    /// Legend text.
    pub label: String,
    /// Latencies, ms.
    pub latencies_ms: Vec<f64>,
}

const SERIES_COLOURS: [RGBColor; 4] = [
    RGBColor(40, 110, 190),
    RGBColor(220, 110, 30),
    RGBColor(60, 160, 80),
    RGBColor(170, 60, 160),
];

/// Empirical CDFs of message latency, one line per series, on a logarithmic time axis.
pub fn latency_cdf(title: &str, series: &[CdfSeries], path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let all = series.iter().flat_map(|s| s.latencies_ms.iter().copied());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() {
        ((lo * 0.8).max(0.1), (hi * 1.25).max(lo * 2.0))
    } else {
        (1.0, 1000.0)
    };
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("one-way message latency, simulated ms (log)")
        .y_desc("fraction of messages")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let mut xs = s.latencies_ms.clone();
        xs.sort_by(f64::total_cmp);
        let n = xs.len().max(1) as f64;
        let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
        let points: Vec<(f64, f64)> = xs
            .iter()
            .enumerate()
            .map(|(k, &x)| (x.max(lo), (k + 1) as f64 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One point of a head-of-line-blocking plot.
#[derive(Debug, Clone)]
pub struct HolPoint {
    /// The protocol (one line per protocol and panel).
    pub protocol: String,
    /// The path's RTT in ms (one panel per RTT).
    pub rtt_ms: u64,
    /// Loss probability, 0 to 1.
    pub loss: f64,
    /// The 95th-percentile one-way latency, ms.
    pub p95_ms: f64,
}

/// The 95th-percentile message latency against loss, one panel per RTT, one line per
/// protocol: where a lost packet holds back later messages (TCP's one byte stream), the
/// line climbs with loss.
pub fn head_of_line(points: &[HolPoint], path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let mut rtts: Vec<u64> = points.iter().map(|p| p.rtt_ms).collect();
    rtts.sort_unstable();
    rtts.dedup();
    let mut protocols: Vec<String> = points.iter().map(|p| p.protocol.clone()).collect();
    protocols.sort();
    protocols.dedup();
    let root = BitMapBackend::new(path, (420 * rtts.len().max(1) as u32, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, rtts.len().max(1)));
    for (panel, rtt) in panels.iter().zip(&rtts) {
        let here: Vec<&HolPoint> = points.iter().filter(|p| p.rtt_ms == *rtt).collect();
        let max_loss = here.iter().map(|p| p.loss * 100.0).fold(1.0, f64::max);
        let max_ms = here.iter().map(|p| p.p95_ms).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("RTT {rtt} ms"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..max_loss, 0f64..max_ms)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("loss, %")
            .y_desc("p95 latency, ms")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        let lines = protocols.iter().map(|protocol| {
            let line = here
                .iter()
                .filter(|p| &p.protocol == protocol)
                .map(|p| (p.loss * 100.0, p.p95_ms))
                .collect();
            (protocol.clone(), line)
        });
        marked_lines(&mut chart, lines, &err)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One measurement of the simulator's cost at a number of simulated clients.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    /// The series (one line per series and panel), e.g. the protocol.
    pub series: String,
    /// Simulated clients.
    pub clients: f64,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
    /// Peak resident set size of the run's process, MiB.
    pub rss_mib: f64,
}

/// How the simulator's wall time and memory grow with the number of clients: two log-log
/// panels, one line per series.
pub fn scale_curve(points: &[ScalePoint], path: &Path) -> Result<(), ReportError> {
    register_font();
    let err = plot_error(path);
    let mut series: Vec<String> = points.iter().map(|p| p.series.clone()).collect();
    series.sort();
    series.dedup();
    let (lo_n, hi_n) = points.iter().fold((f64::INFINITY, 1.0f64), |(lo, hi), p| {
        (lo.min(p.clients), hi.max(p.clients))
    });
    let lo_n = if lo_n.is_finite() { lo_n } else { 1.0 };
    let root = BitMapBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    type Metric = fn(&ScalePoint) -> f64;
    let metrics: [(&str, Metric); 2] = [
        ("wall time, s (log)", |p| p.wall_s),
        ("peak RSS, MiB (log)", |p| p.rss_mib),
    ];
    for (panel, (label, value)) in panels.iter().zip(metrics) {
        let (lo, hi) = points
            .iter()
            .map(value)
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let (lo, hi) = if lo.is_finite() {
            (lo * 0.7, hi * 1.5)
        } else {
            (0.01, 1.0)
        };
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((lo_n * 0.8..hi_n * 1.25).log_scale(), (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("simulated clients (log)")
            .y_desc(label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| err(&e))?;
        let lines = series.iter().map(|name| {
            let line = points
                .iter()
                .filter(|p| &p.series == name && value(p) > 0.0)
                .map(|p| (p.clients, value(p)))
                .collect();
            (name.clone(), line)
        });
        marked_lines(&mut chart, lines, &err)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws one line per `(label, points)` (sorted by x), a marker on each point, and a legend
/// in the upper left.
fn marked_lines<'a, 'b: 'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
    lines: impl Iterator<Item = (String, Vec<(f64, f64)>)>,
    err: &impl Fn(&dyn std::fmt::Display) -> ReportError,
) -> Result<(), ReportError>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    for (i, (label, mut line)) in lines.enumerate() {
        let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}
