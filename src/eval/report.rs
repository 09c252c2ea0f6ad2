//! The evaluation report: per task the quality of one model (and of a second one, side by side),
//! as a readable table or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::corrections::TaskCorrections;
use super::metrics::{quality, Example, Quality};

/// One model's figures on one task.
#[derive(Debug, Clone, Serialize)]
pub struct ModelQuality {
    /// The model file.
    pub model: String,
    /// Its quality.
    #[serde(flatten)]
    pub quality: Quality,
}

/// The second model against the first, on one task.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The second model's figures.
    pub other: ModelQuality,
    /// Share of documents both models give the same label.
    pub agreement: f64,
    /// Second model's accuracy minus the first's.
    pub accuracy_diff: f64,
}

/// Everything about one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    /// Its labels, the order of the confusion matrix.
    pub labels: Vec<String>,
    /// The model evaluated.
    #[serde(flatten)]
    pub main: ModelQuality,
    /// With `--compare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
    /// The model's scores under each label-bias correction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrections: Option<TaskCorrections>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Documents evaluated.
    pub documents: usize,
    /// The model's documents per second (engine, batched).
    pub docs_per_s: f64,
    /// The second model's, with `--compare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_docs_per_s: Option<f64>,
    /// Per task.
    pub tasks: BTreeMap<String, TaskReport>,
}

/// Builds the per-task report; `other` holds the second model's examples, in the same order.
pub fn task_report(
    labels: &[String],
    model: &str,
    mine: &[Example],
    other: Option<(&str, &[Example])>,
) -> TaskReport {
    let main = ModelQuality {
        model: model.to_string(),
        quality: quality(mine, labels.len()),
    };
    let compare = other.map(|(name, theirs)| {
        let q = quality(theirs, labels.len());
        let same = mine
            .iter()
            .zip(theirs)
            .filter(|(a, b)| a.predicted() == b.predicted())
            .count();
        Comparison {
            agreement: same as f64 / mine.len().max(1) as f64,
            accuracy_diff: q.accuracy - main.quality.accuracy,
            other: ModelQuality {
                model: name.to_string(),
                quality: q,
            },
        }
    });
    TaskReport {
        labels: labels.to_vec(),
        main,
        compare,
        corrections: None,
    }
}

impl EvalReport {
    /// A readable table per task.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (name, t) in &self.tasks {
            let _ = writeln!(s, "task {name} ({} documents)", t.main.quality.n);
            let mut cols = vec![&t.main];
            if let Some(c) = &t.compare {
                cols.push(&c.other);
            }
            let _ = write!(s, "  {:<18}", "");
            for c in &cols {
                let _ = write!(s, " {:>22}", truncate(&c.model, 22));
            }
            let _ = writeln!(s);
            let rows: [(&str, Figure); 4] = [
                ("accuracy", |q| q.accuracy),
                ("macro-F1", |q| q.macro_f1),
                ("ECE", |q| q.ece),
                ("mean label mass", |q| q.mean_label_mass),
            ];
            for (label, f) in rows {
                let _ = write!(s, "  {label:<18}");
                for c in &cols {
                    let _ = write!(s, " {:>22.4}", f(&c.quality));
                }
                let _ = writeln!(s);
            }
            if let Some(c) = &t.compare {
                let _ = writeln!(s, "  {:<18} {:>22.4}", "agreement", c.agreement);
                let _ = writeln!(s, "  {:<18} {:>+22.4}", "accuracy diff", c.accuracy_diff);
            }
            if let Some(c) = &t.corrections {
                corrections_table(&mut s, &t.labels, c);
            }
            for c in &cols {
                let _ = writeln!(
                    s,
                    "  confusion of {} (rows: gold, columns: predicted)",
                    c.model
                );
                let w = t.labels.iter().map(|l| l.len()).max().unwrap_or(4).max(5);
                let _ = write!(s, "    {:<w$}", "");
                for l in &t.labels {
                    let _ = write!(s, " {l:>w$}");
                }
                let _ = writeln!(s);
                for (l, row) in t.labels.iter().zip(&c.quality.confusion) {
                    let _ = write!(s, "    {l:<w$}");
                    for n in row {
                        let _ = write!(s, " {n:>w$}");
                    }
                    let _ = writeln!(s);
                }
            }
        }
        let _ = write!(s, "docs/s: {:.1}", self.docs_per_s);
        if let Some(d) = self.compare_docs_per_s {
            let _ = write!(s, " (compared model: {d:.1})");
        }
        s.push('\n');
        s
    }
}

/// The label-bias corrections of one task, a column each.
fn corrections_table(s: &mut String, labels: &[String], c: &TaskCorrections) {
    let _ = write!(s, "  label-bias correction");
    for v in &c.corrections {
        let _ = write!(s, " {:>22}", v.name);
    }
    let _ = writeln!(s);
    let rows: [(&str, Figure); 3] = [
        ("accuracy", |q| q.accuracy),
        ("macro-F1", |q| q.macro_f1),
        ("ECE", |q| q.ece),
    ];
    for (label, f) in rows {
        let _ = write!(s, "  {label:<21}");
        for v in &c.corrections {
            let _ = write!(s, " {:>22.4}", f(&v.quality));
        }
        let _ = writeln!(s);
    }
    let _ = write!(s, "  {:<21}", "top-label share");
    for v in &c.corrections {
        let _ = write!(s, " {:>22.4}", v.top_label_share);
    }
    let _ = writeln!(s);
    let dist: Vec<String> = labels
        .iter()
        .zip(&c.content_free)
        .map(|(l, p)| format!("{l} {p:.3}"))
        .collect();
    let _ = writeln!(s, "  content-free distribution: {}", dist.join(", "));
}

/// Reads one figure of a [`Quality`].
type Figure = fn(&Quality) -> f64;

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
