//! Small, readable charts with plotters: PNG and SVG of the same drawing, a bundled font (text
//! renders on a machine with no system fonts), the Okabe-Ito colour-blind-safe palette, log
//! axes as log10 coordinates with decade labels, and legends beside the plot, never over data.

use crate::error::{CmlError, Result};
use crate::io::write_atomically;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Okabe-Ito without yellow (too pale on white), then a dark red and a grey, so that the nine
/// estimators of a figure each get their own colour.
pub const PALETTE: [RGBColor; 9] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
    RGBColor(136, 34, 51),
    RGBColor(119, 119, 119),
];

/// Values are floored here before a log axis, so exact zeros stay on the chart.
pub const LOG_FLOOR: f64 = 1e-16;

const FONT: &str = "sans-serif";

/// Registers the bundled Ubuntu Light font once per process.
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(plot_error("the bundled font could not be loaded"))
    }
}

fn plot_error(e: impl std::fmt::Display) -> CmlError {
    CmlError::invalid("figure", "drawing failed", e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Style {
    Line,
    Dashed,
    Points,
    LinePoints,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub style: Style,
    /// A shaded band `(x, low, high)` drawn under the line (spread over seeds).
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: usize, style: Style) -> Self {
        Series {
            label: label.into(),
            points,
            color,
            style,
            band: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

impl Panel {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        log_x: bool,
        log_y: bool,
    ) -> Self {
        Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x,
            log_y,
            series: Vec::new(),
        }
    }
}

/// A figure: panels on a grid of `columns`.
#[derive(Debug, Clone)]
pub struct Figure {
    pub panels: Vec<Panel>,
    pub columns: usize,
}

const PANEL_W: u32 = 620;
const PANEL_H: u32 = 420;

impl Figure {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns) as u32;
        (PANEL_W * self.columns as u32, PANEL_H * rows)
    }

    /// Writes `<stem>.png` and `<stem>.svg`, each whole or not at all.
    pub fn save(&self, stem: &Path) -> Result<()> {
        register_font()?;
        let (w, h) = self.size();
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_error)?;
        }
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(plot_error)?;
        }
        write_atomically(&stem.with_extension("png"), &encode_png(&rgb, w, h)?)?;
        write_atomically(&stem.with_extension("svg"), svg.as_bytes())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(plot_error)?;
        let rows = self.panels.len().div_ceil(self.columns);
        let areas = root.split_evenly((rows, self.columns));
        for (area, panel) in areas.iter().zip(&self.panels) {
            draw_panel(area, panel)?;
        }
        Ok(())
    }
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(plot_error)?;
    writer.write_image_data(rgb).map_err(plot_error)?;
    writer.finish().map_err(plot_error)?;
    Ok(out)
}

fn transform(v: f64, log: bool) -> f64 {
    if log { v.max(LOG_FLOOR).log10() } else { v }
}

fn axis_label(v: f64, log: bool) -> String {
    if !log {
        if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
            return format!("{v:.0e}");
        }
        // Four decimals at most, trailing zeros dropped: 0.29000000000000004 reads 0.29.
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return if s == "-0" { "0".into() } else { s.to_string() };
    }
    if (v - v.round()).abs() < 1e-9 {
        format!("1e{}", v.round() as i64)
    } else {
        format!("{:.1e}", 10f64.powf(v))
    }
}

/// Range with a margin; log ranges are widened to whole decades.
fn range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if log {
        let (lo, hi) = (lo.floor(), hi.ceil());
        if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) }
    } else {
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else {
            0.5 * lo.abs().max(1.0)
        };
        (lo - pad, hi + pad)
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()> {
    // The legend gets its own strip on the right, so it never covers data.
    let (plot_area, legend_area) = area.split_horizontally(PANEL_W as i32 * 70 / 100);
    let tx = |v: f64| transform(v, panel.log_x);
    let ty = |v: f64| transform(v, panel.log_y);
    let all = || {
        panel.series.iter().flat_map(|s| {
            s.points
                .iter()
                .copied()
                .chain(s.band.iter().flat_map(|b| [(b.0, b.1), (b.0, b.2)]))
        })
    };
    let (x0, x1) = range(all().map(|p| tx(p.0)), panel.log_x);
    let (y0, y1) = range(all().map(|p| ty(p.1)), panel.log_y);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(&panel.title, (FONT, 17))
        .margin(8)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    let decades = |lo: f64, hi: f64, log: bool| if log { ((hi - lo) as usize + 1).min(9) } else { 6 };
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(decades(x0, x1, panel.log_x))
        .y_labels(decades(y0, y1, panel.log_y))
        .x_label_formatter(&|v| axis_label(*v, panel.log_x))
        .y_label_formatter(&|v| axis_label(*v, panel.log_y))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(plot_error)?;
    for s in &panel.series {
        let color = PALETTE[s.color % PALETTE.len()];
        if !s.band.is_empty() {
            let mut poly: Vec<(f64, f64)> = s.band.iter().map(|b| (tx(b.0), ty(b.2))).collect();
            poly.extend(s.band.iter().rev().map(|b| (tx(b.0), ty(b.1))));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.18))))
                .map_err(plot_error)?;
        }
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(x, y)| (tx(x), ty(y)))
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let stroke = color.stroke_width(2);
        match s.style {
            Style::Line | Style::LinePoints => {
                chart
                    .draw_series(LineSeries::new(pts.clone(), stroke))
                    .map_err(plot_error)?;
            }
            Style::Dashed => {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, color.stroke_width(1)))
                    .map_err(plot_error)?;
            }
            Style::Points => {}
        }
        if matches!(s.style, Style::Points | Style::LinePoints) {
            for &p in &pts {
                draw_marker(chart.plotting_area(), p, s.color, color)?;
            }
        }
    }
    draw_legend(&legend_area, &panel.series)
}

/// A point marker: circle, triangle and cross in turn, so that neighbouring series differ in
/// shape as well as colour.
fn draw_marker<DB: DrawingBackend, CT: plotters::coord::CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    p: CT::From,
    index: usize,
    color: RGBColor,
) -> Result<()> {
    match index % 3 {
        0 => area.draw(&Circle::new(p, 3, color.filled())),
        1 => area.draw(&TriangleMarker::new(p, 4, color.filled())),
        _ => area.draw(&Cross::new(p, 4, color.stroke_width(2))),
    }
    .map_err(plot_error)
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, series: &[Series]) -> Result<()> {
    let mut y = 40;
    for s in series.iter().filter(|s| !s.label.is_empty()) {
        let color = PALETTE[s.color % PALETTE.len()];
        match s.style {
            // Dashed in the legend as in the plot: two dashes.
            Style::Dashed => {
                for (a, b) in [(6, 14), (20, 28)] {
                    area.draw(&PathElement::new(vec![(a, y), (b, y)], color.stroke_width(1)))
                        .map_err(plot_error)?;
                }
            }
            Style::Points => {}
            _ => area
                .draw(&PathElement::new(vec![(6, y), (30, y)], color.stroke_width(2)))
                .map_err(plot_error)?,
        }
        if matches!(s.style, Style::Points | Style::LinePoints) {
            draw_marker(area, (18, y), s.color, color)?;
        }
        area.draw(&Text::new(s.label.clone(), (36, y - 7), (FONT, 13)))
            .map_err(plot_error)?;
        y += 20;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nine_estimators_of_a_figure_get_nine_colours() {
        // error_vs_compute draws 8-9 series with colour index i; with 7 colours BPTT (0) and
        // truncated BPTT (7) shared one.
        for i in 0..9 {
            for j in 0..i {
                assert_ne!(
                    PALETTE[i % PALETTE.len()],
                    PALETTE[j % PALETTE.len()],
                    "series {j} and {i}"
                );
            }
        }
    }

    #[test]
    fn the_bundled_font_draws_text_without_system_fonts() {
        // Text drawn with the registered font leaves dark pixels on a white canvas; with no font
        // the ab_glyph backend draws nothing.
        register_font().unwrap();
        let (w, h) = (120u32, 40u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            root.draw(&Text::new("beta 1e-3", (4, 10), (FONT, 16))).unwrap();
            root.present().unwrap();
        }
        let dark = rgb.chunks(3).filter(|p| p.iter().all(|&c| c < 128)).count();
        assert!(dark > 30, "only {dark} dark pixels");
    }
}
