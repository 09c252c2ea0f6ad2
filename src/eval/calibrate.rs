//! Temperature scaling: the one number per task that makes label probabilities mean what they say.
//!
//! Probabilities are `softmax(log_probs / T)`. The fitted `T` minimises the negative log-likelihood
//! of the gold labels (Guo et al., "On Calibration of Modern Neural Networks", 2017); the NLL is
//! convex in `1/T`, so a golden-section search over `ln T` finds it.

use std::path::Path;

use crate::engine::scoring::softmax;

/// Lowest and highest temperature searched.
const RANGE: (f64, f64) = (0.01, 100.0);

/// Mean negative log-likelihood of `gold` under `softmax(log_probs / t)`.
pub fn nll(examples: &[(Vec<f32>, usize)], t: f64) -> f64 {
    let sum: f64 = examples
        .iter()
        .map(|(lp, gold)| {
            let p = softmax(lp, t as f32);
            -f64::from(p[*gold].max(1e-30)).ln()
        })
        .sum();
    sum / examples.len().max(1) as f64
}

/// The temperature that minimises [`nll`] over `examples` (label log-probs, gold index).
pub fn fit_temperature(examples: &[(Vec<f32>, usize)]) -> f64 {
    let (mut a, mut b) = (RANGE.0.ln(), RANGE.1.ln());
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: f64| nll(examples, x.exp());
    let mut c = b - phi * (b - a);
    let mut d = a + phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + phi * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Errors writing the fitted temperatures.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The task file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The task file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a TOML task file.
    #[error("{path}: {message}")]
    Toml {
        /// The task file.
        path: String,
        /// Why.
        message: String,
    },
}

/// Sets `temperature = T` in each named `[[task]]` of the TOML file at `path`, keeping its
/// comments and layout.
pub fn write_temperatures(path: &Path, fitted: &[(String, f64)]) -> Result<(), WriteError> {
    edit_tasks(path, fitted, |table, t| {
        // Four significant digits are plenty for a temperature.
        let rounded = format!("{t:.4}").parse::<f64>().unwrap_or(*t);
        table["temperature"] = toml_edit::value(rounded);
    })
}

/// Sets `bias = { label = b, ... }` in each named `[[task]]` of the TOML file at `path`.
pub fn write_biases(
    path: &Path,
    fitted: &[(String, Vec<(String, f32)>)],
) -> Result<(), WriteError> {
    edit_tasks(path, fitted, |table, biases| {
        let mut inline = toml_edit::InlineTable::new();
        for (label, b) in biases {
            let rounded = format!("{b:.4}").parse::<f64>().unwrap_or(f64::from(*b));
            inline.insert(label, rounded.into());
        }
        table["bias"] = toml_edit::value(inline);
    })
}

/// Applies `set` to the `[[task]]` table of each named task, keeping comments and layout.
pub(crate) fn edit_tasks<T>(
    path: &Path,
    fitted: &[(String, T)],
    set: impl Fn(&mut toml_edit::Table, &T),
) -> Result<(), WriteError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WriteError::Io {
        path: p.clone(),
        source,
    })?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| WriteError::Toml {
                path: p.clone(),
                message: e.to_string(),
            })?;
    let tasks = doc
        .get_mut("task")
        .and_then(|t| t.as_array_of_tables_mut())
        .ok_or_else(|| WriteError::Toml {
            path: p.clone(),
            message: "no [[task]] tables".into(),
        })?;
    for (name, value) in fitted {
        let table = tasks
            .iter_mut()
            .find(|tab| tab.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
            .ok_or_else(|| WriteError::Toml {
                path: p.clone(),
                message: format!("no task named '{name}'"),
            })?;
        set(table, value);
    }
    std::fs::write(path, doc.to_string()).map_err(|source| WriteError::Io { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overconfident_scores_get_a_temperature_above_one() {
        // Log-probs say 0.99 for label 0 every time, but label 0 is right only 70% of the time:
        // the NLL-optimal temperature flattens them until p(label 0) ~ 0.7.
        let lp = vec![0.99f32.ln(), 0.01f32.ln()];
        let examples: Vec<_> = (0..100)
            .map(|i| (lp.clone(), usize::from(i % 10 >= 7)))
            .collect();
        let t = fit_temperature(&examples);
        assert!(t > 1.0, "{t}");
        let p = softmax(&lp, t as f32);
        assert!((p[0] - 0.7).abs() < 0.01, "{p:?} at T = {t}");
        assert!(nll(&examples, t) < nll(&examples, 1.0));
    }

    #[test]
    fn write_keeps_comments_and_other_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.toml");
        std::fs::write(
            &path,
            "# my tasks\n[[task]]\nname = \"a\" # first\nlabels = [\"x\", \"y\"]\ntemplate = \"{{text}}\"\n\n[[task]]\nname = \"b\"\nlabels = [\"x\", \"y\"]\ntemplate = \"{{text}}\"\ntemperature = 2.0\n",
        )
        .unwrap();
        write_temperatures(&path, &[("a".into(), 1.234_567)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my tasks\n"), "{text}");
        assert!(text.contains("# first"), "{text}");
        let tasks = crate::task::TaskFile::load(&path).unwrap();
        assert_eq!(tasks.task[0].temperature, 1.2346);
        assert_eq!(tasks.task[1].temperature, 2.0);
        let e = write_temperatures(&path, &[("nope".into(), 1.0)]);
        assert!(e.unwrap_err().to_string().contains("nope"));
        write_biases(
            &path,
            &[("b".into(), vec![("x".into(), 0.25), ("y".into(), -0.25)])],
        )
        .unwrap();
        let tasks = crate::task::TaskFile::load(&path).unwrap();
        assert_eq!(tasks.task[1].bias["x"], 0.25);
        assert_eq!(tasks.task[1].bias["y"], -0.25);
        assert!(tasks.task[0].bias.is_empty());
        assert!(std::fs::read_to_string(&path).unwrap().contains("# first"));
    }
}
