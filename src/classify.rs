//! `labelmill classify`: JSONL in, JSONL out, no broker. Streams in windows so memory stays bounded,
//! batches each window by task and token budget, and writes results in input order.

use std::io::{BufRead, Write};
use std::time::Instant;

use serde_json::Value;

use crate::batch::{plan, BatchLimits};
use crate::decode::DecodeError;
use crate::engine::prepared::{FittedDoc, PreparedTask};
use crate::engine::Engine;
use crate::message::{ErrorLine, LabelResult};

/// Settings of a classify run.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Batch limits for the engine.
    pub limits: BatchLimits,
    /// Records read ahead before a window is scored and written (bounds memory; larger packs
    /// batches better).
    pub window: usize,
    /// Longest accepted input line in bytes (`payload_too_large` beyond).
    pub max_line_bytes: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            limits: BatchLimits::default(),
            window: 256,
            max_line_bytes: 1 << 20,
            progress: false,
        }
    }
}

/// Counts of a finished run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassifySummary {
    /// Records read (blank lines are not records).
    pub records: u64,
    /// Records labelled.
    pub labelled: u64,
    /// Records that produced an error line.
    pub failed: u64,
}

/// An I/O failure reading input or writing output (fatal for the run).
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// Reading the input failed.
    #[error("reading input: {0}")]
    Read(std::io::Error),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Write(std::io::Error),
}

enum Slot {
    Pending {
        task: usize,
        id: Value,
        doc: FittedDoc,
        meta: Option<Value>,
    },
    Done {
        text: String,
        ok: bool,
    },
}

struct Entry {
    line: u64,
    slot: Slot,
}

/// Classifies every record of `input` and writes one output line per record to `output`.
pub fn run(
    engine: &Engine,
    tasks: &[PreparedTask],
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    opts: &ClassifyOptions,
) -> Result<ClassifySummary, ClassifyError> {
    let names: Vec<String> = tasks.iter().map(|t| t.name.clone()).collect();
    let bar = opts.progress.then(progress_bar);
    let mut summary = ClassifySummary::default();
    let mut window: Vec<Entry> = Vec::with_capacity(opts.window);
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    let started = Instant::now();
    loop {
        buf.clear();
        let (read, size) =
            read_line_bounded(input, opts.max_line_bytes, &mut buf).map_err(ClassifyError::Read)?;
        if read == 0 {
            break;
        }
        line_no += 1;
        if size <= opts.max_line_bytes && buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.records += 1;
        // `buf` keeps at most max_line_bytes + 1 bytes; `admit` judges the line by its full `size`.
        let slot = admit(
            engine,
            tasks,
            &names,
            &buf,
            size,
            opts.max_line_bytes,
            line_no,
        );
        window.push(Entry {
            line: line_no,
            slot,
        });
        // Every entry counts, error lines too: memory stays bounded whatever the input holds.
        if window.len() >= opts.window {
            flush(engine, tasks, &mut window, output, opts, &mut summary)?;
        }
        if let Some(b) = &bar {
            b.set_position(summary.records);
        }
    }
    flush(engine, tasks, &mut window, output, opts, &mut summary)?;
    output.flush().map_err(ClassifyError::Write)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    tracing::info!(
        records = summary.records,
        labelled = summary.labelled,
        failed = summary.failed,
        docs_per_s = summary.records as f64 / started.elapsed().as_secs_f64().max(1e-9),
        "classify finished"
    );
    Ok(summary)
}

/// Decodes a line, picks its task and fits its tokens; failures become finished error lines.
fn admit(
    engine: &Engine,
    tasks: &[PreparedTask],
    names: &[String],
    bytes: &[u8],
    size: usize,
    max: usize,
    line: u64,
) -> Slot {
    let err = |id: Option<Value>, code: &str, msg: String| Slot::Done {
        text: to_json(&ErrorLine::new(id, line, code, msg)),
        ok: false,
    };
    if size > max {
        let e = DecodeError::PayloadTooLarge { size, max };
        return err(None, e.code(), e.to_string());
    }
    match crate::admit::admit(bytes, None, tasks, names, engine.tokenizer(), max) {
        Ok(a) => Slot::Pending {
            task: a.task,
            id: a.input.id,
            doc: a.fitted,
            meta: a.input.meta,
        },
        Err(f) => {
            let f = *f;
            err(f.id, f.code, f.message)
        }
    }
}

/// Scores every pending entry of the window, then writes the whole window in input order.
fn flush(
    engine: &Engine,
    tasks: &[PreparedTask],
    window: &mut Vec<Entry>,
    output: &mut dyn Write,
    opts: &ClassifyOptions,
    summary: &mut ClassifySummary,
) -> Result<(), ClassifyError> {
    let model = engine.info().name;
    for (ti, task) in tasks.iter().enumerate() {
        let idx: Vec<usize> = window
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(&e.slot, Slot::Pending { task, .. } if *task == ti))
            .map(|(i, _)| i)
            .collect();
        let lens: Vec<usize> = idx
            .iter()
            .map(|&i| match &window[i].slot {
                Slot::Pending { doc, .. } => doc.ids.len() + task.suffix_ids.len(),
                Slot::Done { .. } => 0,
            })
            .collect();
        for batch in plan(&lens, opts.limits) {
            let members: Vec<usize> = batch.iter().map(|&b| idx[b]).collect();
            let docs: Vec<&[u32]> = members
                .iter()
                .map(|&i| match &window[i].slot {
                    Slot::Pending { doc, .. } => doc.ids.as_slice(),
                    Slot::Done { .. } => unreachable!("only pending entries are batched"),
                })
                .collect();
            let scored = engine.score(task, &docs);
            for (k, &i) in members.iter().enumerate() {
                let entry = &mut window[i];
                let Slot::Pending { id, doc, meta, .. } = &mut entry.slot else {
                    unreachable!()
                };
                entry.slot = match &scored {
                    Ok(s) => Slot::Done {
                        text: to_json(&LabelResult::new(
                            id.clone(),
                            task,
                            doc,
                            &s[k],
                            &model,
                            meta.take(),
                        )),
                        ok: true,
                    },
                    Err(e) => Slot::Done {
                        text: to_json(&ErrorLine::new(
                            Some(id.clone()),
                            entry.line,
                            "engine_error",
                            e.to_string(),
                        )),
                        ok: false,
                    },
                };
            }
        }
    }
    for entry in window.drain(..) {
        let Slot::Done { text, ok } = entry.slot else {
            unreachable!("every entry was scored")
        };
        if ok {
            summary.labelled += 1;
        } else {
            summary.failed += 1;
        }
        output
            .write_all(text.as_bytes())
            .map_err(ClassifyError::Write)?;
        output.write_all(b"\n").map_err(ClassifyError::Write)?;
    }
    output.flush().map_err(ClassifyError::Write)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("output records always serialise")
}

/// Reads one line (without its newline) into `buf`, keeping at most `max + 1` bytes of it.
/// Returns (bytes consumed from the input, full line length).
fn read_line_bounded(
    input: &mut dyn BufRead,
    max: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<(usize, usize)> {
    let (mut consumed, mut size) = (0, 0);
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(p) => (&chunk[..p], p + 1),
            None => (chunk, chunk.len()),
        };
        let keep = part.len().min((max + 1).saturating_sub(buf.len()));
        buf.extend_from_slice(&part[..keep]);
        size += part.len();
        let ended = done > part.len();
        input.consume(done);
        consumed += done;
        if ended {
            break;
        }
    }
    // Only a line kept whole ends where the input line ended; a cut one has no \r to strip.
    if size == buf.len() && buf.last() == Some(&b'\r') {
        buf.pop();
        size -= 1;
    }
    Ok((consumed, size))
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {human_pos} documents [{elapsed_precise}] {per_sec}",
        )
        .expect("valid progress template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let mut input: &[u8] = b"short\r\nthis line is long\nlast";
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut input, 8, &mut buf).unwrap(), (7, 5));
        assert_eq!(buf, b"short");
        buf.clear();
        assert_eq!(
            read_line_bounded(&mut input, 8, &mut buf).unwrap(),
            (18, 17)
        );
        assert_eq!(buf.len(), 9, "keeps max + 1 bytes");
        buf.clear();
        assert_eq!(read_line_bounded(&mut input, 8, &mut buf).unwrap(), (4, 4));
        buf.clear();
        assert_eq!(read_line_bounded(&mut input, 8, &mut buf).unwrap(), (0, 0));
    }
}
