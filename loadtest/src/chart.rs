//! Latency-over-time charts (SVG, plotters): per-second p50/p90/p99/max on a log scale, and
//! requests/s with the number of users below.

use crate::metrics::SeriesPoint;
use plotters::prelude::*;
use std::path::Path;

type Line = (&'static str, RGBColor, fn(&SeriesPoint) -> f64);

pub fn latency_chart(path: &Path, title: &str, series: &[SeriesPoint]) -> Result<(), String> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(400);
    let t_max = series.len().max(2) as f64;
    let lat_max = series.iter().map(|p| p.max_ms).fold(1.0f64, f64::max).max(10.0) * 1.5;
    let lat_min = series
        .iter()
        .filter(|p| p.requests > 0)
        .map(|p| p.p50_ms)
        .fold(f64::MAX, f64::min)
        .clamp(0.01, 1.0)
        / 2.0;

    let mut c = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, (lat_min..lat_max).log_scale())
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("latency, ms (log)")
        .draw()
        .map_err(|e| e.to_string())?;
    let lines: [Line; 4] = [
        ("p50", RGBColor(31, 119, 180), |p| p.p50_ms),
        ("p90", RGBColor(44, 160, 44), |p| p.p90_ms),
        ("p99", RGBColor(255, 127, 14), |p| p.p99_ms),
        ("max", RGBColor(214, 39, 40), |p| p.max_ms),
    ];
    for (name, color, f) in lines {
        c.draw_series(LineSeries::new(
            series
                .iter()
                .filter(|p| p.requests > 0)
                .map(|p| (p.second as f64 + 0.5, f(p).max(lat_min))),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;

    let rps_max = series.iter().map(|p| p.requests).max().unwrap_or(1).max(1) as f64 * 1.15;
    let users_max = series.iter().map(|p| p.users).max().unwrap_or(1).max(1) as f64 * 1.15;
    let mut b = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..rps_max)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0f64..t_max, 0f64..users_max);
    b.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("requests/s")
        .draw()
        .map_err(|e| e.to_string())?;
    b.configure_secondary_axes()
        .y_desc("users")
        .draw()
        .map_err(|e| e.to_string())?;
    let rps_color = RGBColor(31, 119, 180);
    let users_color = RGBColor(127, 127, 127);
    let err_color = RGBColor(214, 39, 40);
    b.draw_series(LineSeries::new(
        series.iter().map(|p| (p.second as f64 + 0.5, p.requests as f64)),
        rps_color.stroke_width(2),
    ))
    .map_err(|e| e.to_string())?
    .label("requests/s")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], rps_color.stroke_width(2)));
    b.draw_series(LineSeries::new(
        series.iter().map(|p| (p.second as f64 + 0.5, p.errors as f64)),
        err_color.stroke_width(2),
    ))
    .map_err(|e| e.to_string())?
    .label("errors/s")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], err_color.stroke_width(2)));
    b.draw_secondary_series(LineSeries::new(
        series.iter().map(|p| (p.second as f64 + 0.5, p.users as f64)),
        users_color.stroke_width(1),
    ))
    .map_err(|e| e.to_string())?
    .label("users (right axis)")
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], users_color.stroke_width(1)));
    b.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
