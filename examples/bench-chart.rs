//! `bench-chart`: draws the results of `scripts/bench.sh` (the JSON lines of
//! `examples/signal-bench.rs`) as one SVG, so that the README can show the
//! comparison as a picture (`docs/bench/chart.svg`) next to the table. Per
//! scenario and system it picks the run the table picks: a complete one first,
//! then the highest rate.
//!
//! ```sh
//! cargo run --release --example bench-chart -- target/bench/results.jsonl target/bench/chart.svg
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::ops::Range;
use std::process::ExitCode;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// Width and height of one panel, height of the header (pixels).
const PANEL: (u32, u32) = (360, 300);
const HEADER: u32 = 60;
/// Panels per row.
const COLUMNS: usize = 3;
const FONT: &str = "sans-serif";

/// The scenarios the table tells apart (`relay` splits on `rate_per_pair`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Key {
    RelayClosed,
    RelayOpen,
    Fanout,
    Conns,
}

/// The fields of one result line that the chart reads.
struct Run {
    per_second: f64,
    /// `Some((delivered, expected))` when the run fell short.
    shortfall: Option<(f64, f64)>,
    /// p50, p90, p99 of `latency_ms` or `join_ms`.
    latency: Option<[f64; 3]>,
    /// Microseconds per unit: all nodes summed, and Redis (the last pid).
    cpu: Option<(f64, f64)>,
    rss_per_connection: Option<f64>,
    rate_per_pair: Option<f64>,
}

/// The best run per scenario and system label.
type Best = BTreeMap<Key, BTreeMap<String, Run>>;

/// One bar: its system (index into the sorted labels), value, and whether the run was incomplete.
struct Bar {
    system: usize,
    value: f64,
    incomplete: bool,
}

/// One small chart: bars grouped by category, one bar per system in each group.
struct Panel {
    title: String,
    groups: Vec<&'static str>,
    /// `bars[g]` are group `g`'s bars.
    bars: Vec<Vec<Bar>>,
    log: bool,
    format: fn(f64) -> String,
    notes: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: bench-chart <results.jsonl> <out.svg>");
        return ExitCode::from(2);
    };
    match run(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-chart: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads `input`, picks the best runs, writes the SVG to `output`.
fn run(input: &str, output: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let (systems, best) = pick(&text).map_err(|e| format!("{input}: {e}"))?;
    let rows = panels(&systems, &best);
    if rows.iter().all(Vec::is_empty) {
        return Err(format!("{input}: nothing to draw"));
    }
    let mut svg = String::new();
    draw(&mut svg, &systems, &rows).map_err(|e| format!("drawing: {e}"))?;
    std::fs::write(output, svg).map_err(|e| format!("{output}: {e}"))
}

/// All system labels (sorted, as the table's columns) and the best run per scenario and system.
fn pick(text: &str) -> Result<(Vec<String>, Best), String> {
    let mut systems = BTreeSet::new();
    let mut best = Best::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("line {line_no}: {e}"))?;
        let (key, label, run) = parse(&value).map_err(|e| format!("line {line_no}: {e}"))?;
        systems.insert(label.clone());
        let Some(key) = key else { continue };
        let runs = best.entry(key).or_default();
        // The best complete run of the rounds; an incomplete one only if none was.
        let better = runs.get(&label).is_none_or(|prev| {
            let rank = |r: &Run| (r.shortfall.is_none(), r.per_second);
            rank(&run) > rank(prev)
        });
        if better {
            runs.insert(label, run);
        }
    }
    if systems.is_empty() {
        return Err("no results".into());
    }
    Ok((systems.into_iter().collect(), best))
}

/// One result line: its scenario (`None` if unknown to the chart), label and figures.
fn parse(v: &Value) -> Result<(Option<Key>, String, Run), String> {
    let scenario = v
        .get("scenario")
        .and_then(Value::as_str)
        .ok_or("no \"scenario\"")?;
    let label = match v.get("label") {
        None | Some(Value::Null) => String::new(),
        Some(l) => l.as_str().ok_or("\"label\" is not a string")?.to_owned(),
    };
    let per_second = number(v, "per_second")?.ok_or("no \"per_second\"")?;
    let rate_per_pair = number(v, "rate_per_pair")?;
    let key = match scenario {
        "relay" if rate_per_pair.is_some_and(|r| r != 0.0) => Some(Key::RelayOpen),
        "relay" => Some(Key::RelayClosed),
        "fanout" => Some(Key::Fanout),
        "conns" => Some(Key::Conns),
        other => {
            eprintln!("bench-chart: skipping unknown scenario {other:?}");
            None
        }
    };
    let shortfall = match number(v, "expected")? {
        Some(expected) if expected != 0.0 => {
            let delivered = number(v, "delivered")?.unwrap_or(0.0);
            (delivered < expected).then_some((delivered, expected))
        }
        _ => None,
    };
    let latency = match v.get("latency_ms").or_else(|| v.get("join_ms")) {
        None | Some(Value::Null) => None,
        Some(l) => {
            let p = |name: &str| number(l, name)?.ok_or(format!("no latency {name}"));
            Some([p("p50")?, p("p90")?, p("p99")?])
        }
    };
    let cpu = match v.get("cpu") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let per_unit = c
                .as_array()
                .ok_or("\"cpu\" is not an array")?
                .iter()
                .map(|p| number(p, "us_per_unit")?.ok_or("no cpu us_per_unit".to_owned()))
                .collect::<Result<Vec<f64>, String>>()?;
            per_unit
                .split_last()
                .map(|(redis, nodes)| (nodes.iter().sum(), *redis))
        }
    };
    let rss_per_connection = match v.get("rss_kib") {
        Some(r) if r.is_object() => number(r, "per_connection")?,
        _ => None,
    };
    let run = Run {
        per_second,
        shortfall,
        latency,
        cpu,
        rss_per_connection,
        rate_per_pair,
    };
    Ok((key, label, run))
}

/// Field `name` of `v` as a finite number; `None` when absent or null.
fn number(v: &Value, name: &str) -> Result<Option<f64>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(format!("\"{name}\" is not a number: {n}")),
        },
    }
}

/// The panels, in rows: throughput, latency, cost. Panels without data are left out.
fn panels(systems: &[String], best: &Best) -> Vec<Vec<Panel>> {
    let panel = |key: Key,
                 title: &str,
                 groups: Vec<&'static str>,
                 log: bool,
                 format: fn(f64) -> String,
                 values: &dyn Fn(&Run) -> Option<Vec<f64>>| {
        let runs = best.get(&key)?;
        let mut bars: Vec<Vec<Bar>> = groups.iter().map(|_| Vec::new()).collect();
        let mut notes = Vec::new();
        for (system, label) in systems.iter().enumerate() {
            let Some(run) = runs.get(label) else { continue };
            let Some(vals) = values(run) else { continue };
            for (group, value) in bars.iter_mut().zip(vals) {
                let incomplete = run.shortfall.is_some();
                group.push(Bar {
                    system,
                    value,
                    incomplete,
                });
            }
            if let Some((delivered, expected)) = run.shortfall {
                notes.push(format!(
                    "{}: INCOMPLETE, {} of {} delivered",
                    name(label),
                    thousands(delivered),
                    thousands(expected)
                ));
            }
        }
        if bars.iter().all(Vec::is_empty) {
            return None;
        }
        if key == Key::RelayOpen {
            let rates: BTreeSet<String> = runs
                .values()
                .filter_map(|r| r.rate_per_pair)
                .map(thousands)
                .collect();
            let rates: Vec<String> = rates.into_iter().collect();
            notes.insert(0, format!("at {} msg/s per pair", rates.join(" / ")));
        }
        Some(Panel {
            title: title.to_owned(),
            groups,
            bars,
            log,
            format,
            notes,
        })
    };
    let pct = vec!["p50", "p90", "p99"];
    let latency = |r: &Run| r.latency.map(Vec::from);
    let throughput = [
        panel(
            Key::RelayClosed,
            "Relay, closed loop: msg/s",
            vec![""],
            false,
            thousands,
            &|r| Some(vec![r.per_second]),
        ),
        panel(
            Key::Fanout,
            "Fanout: deliveries/s",
            vec![""],
            false,
            thousands,
            &|r| Some(vec![r.per_second]),
        ),
        panel(
            Key::Conns,
            "Conns: joins/s",
            vec![""],
            false,
            thousands,
            &|r| Some(vec![r.per_second]),
        ),
    ];
    let latencies = [
        panel(
            Key::RelayClosed,
            "Relay, closed loop: latency ms",
            pct.clone(),
            true,
            sig,
            &latency,
        ),
        panel(
            Key::RelayOpen,
            "Relay, open loop: latency ms",
            pct.clone(),
            true,
            sig,
            &latency,
        ),
        panel(
            Key::Conns,
            "Conns: join latency ms",
            pct,
            true,
            sig,
            &latency,
        ),
    ];
    let cost = [
        panel(
            Key::RelayClosed,
            "CPU µs per msg, relay closed loop",
            vec!["nodes (sum)", "Redis"],
            false,
            sig,
            &|r| r.cpu.map(|(nodes, redis)| vec![nodes, redis]),
        ),
        panel(
            Key::Conns,
            "RSS KiB per idle connection",
            vec![""],
            false,
            sig,
            &|r| r.rss_per_connection.map(|x| vec![x]),
        ),
    ];
    vec![
        throughput.into_iter().flatten().collect(),
        latencies.into_iter().flatten().collect(),
        cost.into_iter().flatten().collect(),
    ]
}

/// A system's colour: fixed for the two systems of bench.sh, a colour-blind safe palette otherwise.
fn colour(systems: &[String], system: usize) -> RGBColor {
    const OTHERS: [RGBColor; 4] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
    ];
    match systems.get(system).map(String::as_str) {
        Some("rust") => RGBColor(213, 94, 0),
        Some("node") => RGBColor(0, 158, 115),
        _ => OTHERS[system % OTHERS.len()],
    }
}

/// A label as shown (the empty label of a run without `--label`).
fn name(label: &str) -> &str {
    if label.is_empty() {
        "(no label)"
    } else {
        label
    }
}

/// Draws the header and the rows of panels into `svg`.
fn draw(svg: &mut String, systems: &[String], rows: &[Vec<Panel>]) -> Result<(), Box<dyn Error>> {
    let rows: Vec<&Vec<Panel>> = rows.iter().filter(|r| !r.is_empty()).collect();
    // At least two panels wide, so that the header fits.
    let columns = rows
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(1)
        .clamp(2, COLUMNS);
    let lines: usize = rows.iter().map(|r| r.len().div_ceil(COLUMNS)).sum();
    let width = PANEL.0 * columns as u32;
    let mut legend: Vec<(String, RGBColor, bool)> = systems
        .iter()
        .enumerate()
        .map(|(i, s)| (name(s).to_owned(), colour(systems, i), false))
        .collect();
    if rows
        .iter()
        .flat_map(|r| r.iter())
        .any(|p| p.bars.iter().flatten().any(|b| b.incomplete))
    {
        legend.push(("incomplete run".to_owned(), RGBColor(120, 120, 120), true));
    }
    // The legend goes right of the title, or on a line of its own when that is too narrow.
    let own_line = 270 + legend_width(&legend) > width as i32;
    let header = HEADER + if own_line { 28 } else { 0 };
    let root =
        SVGBackend::with_string(svg, (width, header + PANEL.1 * lines as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(header);
    draw_header(&top, &legend, own_line)?;
    let mut line = 0;
    for row in rows {
        // The same room for notes under each panel of a row keeps their axes level.
        let notes = row.iter().map(|p| p.notes.len()).max().unwrap_or(0);
        for (i, panel) in row.iter().enumerate() {
            let (x, y) = (
                (i % COLUMNS) as u32 * PANEL.0,
                (line + i / COLUMNS) as u32 * PANEL.1,
            );
            let area = body.clone().shrink((x, y), PANEL);
            draw_panel(&area, systems, panel, notes)?;
        }
        line += row.len().div_ceil(COLUMNS);
    }
    root.present()?;
    Ok(())
}

/// Estimated width in pixels of a legend entry (swatch, label, gap).
fn entry_width(label: &str) -> i32 {
    40 + 8 * label.chars().count() as i32
}

/// Estimated width in pixels of the whole legend.
fn legend_width(legend: &[(String, RGBColor, bool)]) -> i32 {
    legend.iter().map(|(s, _, _)| entry_width(s)).sum()
}

/// The title and the legend (label, colour, pale for an incomplete run), right of the
/// title or on the line under the subtitle.
fn draw_header(
    area: &DrawingArea<SVGBackend, Shift>,
    legend: &[(String, RGBColor, bool)],
    own_line: bool,
) -> Result<(), Box<dyn Error>> {
    let title = (FONT, 22).into_font().style(FontStyle::Bold);
    area.draw(&Text::new("signal-node benchmark", (12, 10), title))?;
    let small = (FONT, 15).into_font().color(&RGBColor(90, 90, 90));
    let subtitle = "best run per scenario and system (scripts/bench.sh); higher throughput, lower latency and cost are better";
    area.draw(&Text::new(subtitle, (12, 38), small))?;
    let text = (FONT, 17).into_font();
    let (mut x, y) = if own_line {
        (12, 62)
    } else {
        (area.dim_in_pixel().0 as i32 - legend_width(legend) - 6, 12)
    };
    for (label, colour, pale) in legend {
        swatch(area, (x, y), *colour, *pale)?;
        area.draw(&Text::new(label.clone(), (x + 22, y), text.clone()))?;
        x += entry_width(label);
    }
    Ok(())
}

/// A 14 px legend square, pale with an outline for an incomplete run.
fn swatch(
    area: &DrawingArea<SVGBackend, Shift>,
    (x, y): (i32, i32),
    colour: RGBColor,
    pale: bool,
) -> Result<(), Box<dyn Error>> {
    let fill = if pale {
        colour.mix(0.3).filled()
    } else {
        colour.filled()
    };
    area.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], fill))?;
    if pale {
        area.draw(&Rectangle::new(
            [(x, y), (x + 14, y + 14)],
            colour.stroke_width(2),
        ))?;
    }
    Ok(())
}

/// One panel: title, y axis (linear from 0, or logarithmic), grouped bars with values, and
/// `note_lines` lines of room for notes below.
fn draw_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    systems: &[String],
    panel: &Panel,
    note_lines: usize,
) -> Result<(), Box<dyn Error>> {
    let note_height = 17 * note_lines as u32;
    let (plot, notes) = area.split_vertically(PANEL.1 - note_height - 6);
    let note_style = (FONT, 14).into_font().color(&RGBColor(180, 30, 30));
    for (i, note) in panel.notes.iter().enumerate() {
        let style = if note.contains("INCOMPLETE") {
            note_style.clone()
        } else {
            note_style.clone().color(&RGBColor(90, 90, 90))
        };
        notes.draw(&Text::new(note.clone(), (14, 17 * i as i32), style))?;
    }
    let values = panel.bars.iter().flatten().map(|b| b.value);
    let max = values.clone().fold(0.0_f64, f64::max);
    let min_positive = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let groups = panel.groups.len();
    let names = panel.groups.clone();
    let named = names.iter().any(|n| !n.is_empty());
    let x = Groups {
        count: groups,
        ticks: named,
    };
    let mut builder = ChartBuilder::on(&plot);
    builder
        .caption(&panel.title, (FONT, 19).into_font().style(FontStyle::Bold))
        .margin(8)
        .margin_right(14)
        .x_label_area_size(if named { 26 } else { 4 })
        .y_label_area_size(54);
    if panel.log && min_positive.is_finite() {
        let lo = 10f64.powf(min_positive.log10().floor());
        let hi = (max * 4.0).max(lo * 10.0);
        let chart = builder.build_cartesian_2d(x, LogAxis { lo, hi })?;
        bars(chart, systems, panel, &names, lo)
    } else {
        // Room above the highest bar for its value (and an "INCOMPLETE" over it).
        let room = if panel.bars.iter().flatten().any(|b| b.incomplete) {
            1.32
        } else {
            1.22
        };
        let hi = if max > 0.0 { max * room } else { 1.0 };
        let chart = builder.build_cartesian_2d(x, 0.0..hi)?;
        bars(chart, systems, panel, &names, 0.0)
    }
}

/// The axes and bars of a panel on `chart`, bars rising from `floor`.
fn bars<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    systems: &[String],
    panel: &Panel,
    names: &[&str],
    floor: f64,
) -> Result<(), Box<dyn Error>>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let label_of = |x: &f64| {
        names
            .get(x.floor() as usize)
            .copied()
            .unwrap_or("")
            .to_owned()
    };
    let tick = |y: &f64| compact(*y);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_labels(6)
        .x_label_formatter(&label_of)
        .y_label_formatter(&tick)
        .x_label_style((FONT, 16))
        .y_label_style((FONT, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (g, group) in panel.bars.iter().enumerate() {
        let n = group.len().max(1) as f64;
        let slot = 0.8 / n;
        // Smaller values over narrow bars, so that neighbours' labels do not touch.
        let (px_slot, _) = chart.backend_coord(&(slot, floor));
        let (px_zero, _) = chart.backend_coord(&(0.0, floor));
        let size = if px_slot - px_zero < 30 { 13 } else { 15 };
        let value_style = (FONT, size).into_font().color(&BLACK);
        let warn = (FONT, size).into_font().color(&RGBColor(180, 30, 30));
        for (j, bar) in group.iter().enumerate() {
            let left = g as f64 + 0.1 + slot * j as f64 + slot * 0.08;
            let right = left + slot * 0.84;
            let top = bar.value.max(floor);
            let colour = colour(systems, bar.system);
            let fill = if bar.incomplete {
                colour.mix(0.3).filled()
            } else {
                colour.filled()
            };
            chart.draw_series([Rectangle::new([(left, floor), (right, top)], fill)])?;
            let centre = (left + right) / 2.0;
            let text = (panel.format)(bar.value);
            let style = if bar.incomplete {
                warn.clone()
            } else {
                value_style.clone()
            };
            let label = EmptyElement::at((centre, top))
                + Text::new(
                    text,
                    (0, -4),
                    style.pos(Pos::new(HPos::Center, VPos::Bottom)),
                );
            chart.draw_series([label])?;
            if bar.incomplete {
                chart.draw_series([Rectangle::new(
                    [(left, floor), (right, top)],
                    colour.stroke_width(2),
                )])?;
                // "INCOMPLETE" up the bar, or over its value, where it fits.
                let (px_left, px_bottom) = chart.backend_coord(&(left, floor));
                let (px_right, px_top) = chart.backend_coord(&(right, top));
                if px_bottom - px_top > 92 && px_right - px_left > 16 {
                    let up = warn
                        .clone()
                        .transform(FontTransform::Rotate270)
                        .pos(Pos::new(HPos::Left, VPos::Center));
                    let text =
                        EmptyElement::at((centre, floor)) + Text::new("INCOMPLETE", (0, -6), up);
                    chart.draw_series([text])?;
                } else if px_right - px_left > 80 {
                    let over = warn.clone().pos(Pos::new(HPos::Center, VPos::Bottom));
                    let text =
                        EmptyElement::at((centre, top)) + Text::new("INCOMPLETE", (0, -22), over);
                    chart.draw_series([text])?;
                }
            }
        }
    }
    Ok(())
}

/// The x axis of a panel: `count` groups side by side, a tick at each group's centre
/// when the groups have names.
struct Groups {
    count: usize,
    ticks: bool,
}

impl Ranged for Groups {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (lo, hi): (i32, i32)) -> i32 {
        lo + (f64::from(hi - lo) * value / self.count.max(1) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        let count = if self.ticks { self.count } else { 0 };
        (0..count).map(|g| g as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.count as f64
    }
}

/// A logarithmic y axis from `lo` (a power of ten) to `hi`, ticks at 1, 2 and 5 of each
/// decade (only 1 when it spans more than three).
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (lo, hi): (i32, i32)) -> i32 {
        let span = (self.hi / self.lo).log10();
        let at = (value.max(self.lo) / self.lo).log10() / span;
        lo + (f64::from(hi - lo) * at).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        let (first, last) = (
            self.lo.log10().round() as i32,
            self.hi.log10().ceil() as i32,
        );
        let steps: &[f64] = if last - first > 3 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        (first..=last)
            .flat_map(|d| steps.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| *v >= self.lo * 0.999 && *v <= self.hi)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 {
        format!("-{out}")
    } else {
        out
    }
}

/// About three significant digits: `0.123`, `1.23`, `12.3`, `1,234`.
fn sig(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => thousands(v),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        0.0 => "0".to_owned(),
        _ => format!("{v:.3}"),
    }
}

/// An axis tick: `40k`, `1.5M`, `0.01`.
fn compact(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(format!("{:.1}", v / 1e6))),
        a if a >= 1e3 => format!("{}k", trim(format!("{:.1}", v / 1e3))),
        a if a >= 1.0 => trim(format!("{v:.1}")),
        0.0 => "0".to_owned(),
        _ => trim(format!("{v:.3}")),
    }
}
