//! Small inline SVG charts: denials per bucket, stacked by reason. No
//! script, no external asset; every text is escaped.

use super::html::escape;
use super::model::Denials;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 10.0;

/// Colours for reasons, in order of the reasons' names; repeats beyond.
const PALETTE: [&str; 8] = [
    "#c0392b", "#2471a3", "#d68910", "#7d3c98", "#138d75", "#5d6d7e", "#a04000", "#1e8449",
];

pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A stacked bar chart of `d`, `label` naming the bucket ("day", "hour").
pub fn denials_chart(d: &Denials, bucket: &str) -> String {
    let n = d.buckets.len().max(1);
    let per_bucket: Vec<u64> = (0..n)
        .map(|i| {
            d.by_reason
                .values()
                .map(|c| c.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = per_bucket.iter().copied().max().unwrap_or(0).max(1);
    let plot_w = WIDTH - LEFT - 10.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / n as f64;
    let bar = (slot * 0.8).max(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"denials per {b}\"><title>Denials per {b}: {total} in all</title>",
        b = escape(bucket),
        total = d.total
    );
    // Axes and the top value.
    s += &format!(
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{y0}\" stroke=\"#444\"/><line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#444\"/><text x=\"{tx}\" y=\"{ty}\" font-size=\"10\" text-anchor=\"end\">{max}</text><text x=\"{tx}\" y=\"{y0}\" font-size=\"10\" text-anchor=\"end\">0</text>",
        y0 = HEIGHT - BOTTOM,
        x1 = WIDTH - 10.0,
        tx = LEFT - 4.0,
        ty = TOP + 8.0,
    );
    for i in 0..n {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = HEIGHT - BOTTOM;
        for (k, (reason, counts)) in d.by_reason.iter().enumerate() {
            let c = counts.get(i).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let h = plot_h * c as f64 / max as f64;
            y -= h;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {} {c}</title></rect>",
                colour(k),
                escape(d.buckets.get(i).map(String::as_str).unwrap_or("")),
                escape(reason),
            );
        }
    }
    // First and last bucket names under the axis.
    if let (Some(first), Some(last)) = (d.buckets.first(), d.buckets.last()) {
        s += &format!(
            "<text x=\"{LEFT}\" y=\"{y}\" font-size=\"10\">{}</text><text x=\"{x}\" y=\"{y}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            escape(first),
            escape(last),
            y = HEIGHT - 5.0,
            x = WIDTH - 10.0,
        );
    }
    s += "</svg>";
    s
}
