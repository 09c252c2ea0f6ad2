//! A reliability diagram as SVG: per task, accuracy against confidence in equal-width bins, with
//! the diagonal a calibrated model would follow.

use std::fmt::Write;

use super::report::{EvalReport, ModelQuality};

const PANEL: f64 = 260.0;
const MARGIN: f64 = 40.0;

/// The SVG of every task's reliability diagram, side by side (the compared model's bars beside).
pub fn reliability_svg(r: &EvalReport) -> String {
    let width = MARGIN + r.tasks.len().max(1) as f64 * (PANEL + MARGIN);
    let height = PANEL + 2.5 * MARGIN;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, (name, t)) in r.tasks.iter().enumerate() {
        let x0 = MARGIN + i as f64 * (PANEL + MARGIN);
        let y0 = MARGIN;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{} (ECE {:.3})</text>"#,
            x0 + PANEL / 2.0,
            y0 - 10.0,
            escape(name),
            t.main.quality.ece
        );
        let _ = writeln!(
            s,
            r#"<rect x="{x0}" y="{y0}" width="{PANEL}" height="{PANEL}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{}" x2="{}" y2="{y0}" stroke="grey" stroke-dasharray="4"/>"#,
            y0 + PANEL,
            x0 + PANEL
        );
        let mut series: Vec<(&ModelQuality, &str)> = vec![(&t.main, "steelblue")];
        if let Some(c) = &t.compare {
            series.push((&c.other, "darkorange"));
        }
        let n = series.len() as f64;
        for (k, (m, colour)) in series.iter().enumerate() {
            for b in m.quality.bins.iter().filter(|b| b.count > 0) {
                let w = (b.hi - b.lo) * PANEL / n;
                let x = x0 + b.lo * PANEL + k as f64 * w;
                let h = b.accuracy * PANEL;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{colour}" fill-opacity="0.7"><title>{}: confidence {:.2}, accuracy {:.2}, n {}</title></rect>"#,
                    y0 + PANEL - h,
                    w - 1.0,
                    escape(&m.model),
                    b.confidence,
                    b.accuracy,
                    b.count
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{x0}" y="{}" fill="{colour}">{}</text>"#,
                y0 + PANEL + 30.0 + 14.0 * k as f64,
                escape(&m.model)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">confidence</text>"#,
            x0 + PANEL / 2.0,
            y0 + PANEL + 15.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
