//! `labelmill publish`: a JSONL file (plain or gzip) onto an input topic or queue, usually a
//! backfill lane, at a bounded rate, with many publishes in flight and resumable progress.
//!
//! Each non-empty line is one message, sent as it is (the worker validates it and dead-letters
//! what it cannot classify). Progress is the longest prefix of lines the broker confirmed; it is
//! saved every second and on exit, and a restart skips it ([`state`]).

pub mod dest;
pub mod input;
pub mod state;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde::Serialize;

use dest::{Confirm, Destination, Line, Publisher};
use state::{Prefix, Progress};

/// Why a publish stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The input could not be read.
    #[error("reading {path}: {source}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file could not be read or written, or is not ours.
    #[error("state file {path}: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The state belongs to another file or destination.
    #[error("{0} (pass --restart to start over)")]
    Mismatch(String),
    /// Kafka refused or timed out.
    #[error("kafka: {0}")]
    Kafka(rdkafka::error::KafkaError),
    /// RabbitMQ connection or channel failure.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// No queue has the name published to.
    #[error("rabbitmq: queue '{0}' does not exist (the message was returned as unroutable)")]
    Unroutable(String),
    /// The broker refused a message.
    #[error("rabbitmq: the broker refused a message for '{0}' (nack)")]
    Nacked(String),
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The JSONL (or JSONL.gz) input.
    pub input: PathBuf,
    /// The progress file.
    pub state: PathBuf,
    /// Ignore saved progress and publish from the first line.
    pub restart: bool,
    /// Most messages per second (none: as fast as the broker confirms).
    pub rate: Option<f64>,
    /// Most publishes awaiting confirmation.
    pub window: usize,
    /// Show a progress bar (counts the lines first).
    pub progress: bool,
}

/// What a run did, printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// `kafka:<topic>` or `amqp:<queue>`.
    pub destination: String,
    /// Lines skipped because an earlier run had them confirmed.
    pub resumed_after: u64,
    /// Messages confirmed in this run.
    pub published: u64,
    /// Lines confirmed so far, over all runs (the prefix a restart skips).
    pub lines_done: u64,
    /// The whole file is published.
    pub complete: bool,
    /// Stopped by SIGINT/SIGTERM before the end.
    pub interrupted: bool,
    /// Seconds this run took.
    pub seconds: f64,
}

/// How often progress is saved while publishing.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Publishes `opts.input` to `dest` until the end of the file or `stop`.
pub async fn run(
    dest: Destination,
    opts: PublishOptions,
    stop: impl Future<Output = ()>,
) -> Result<PublishReport, PublishError> {
    let started = Instant::now();
    let fingerprint = state::fingerprint(&opts.input)?;
    let saved = if opts.restart {
        None
    } else {
        state::load(&opts.state)?
    };
    if let Some(s) = &saved {
        if s.fingerprint != fingerprint {
            return Err(PublishError::Mismatch(format!(
                "{} records progress of a different file (its content or size changed)",
                opts.state.display()
            )));
        }
        if s.destination != dest.name() {
            return Err(PublishError::Mismatch(format!(
                "{} records progress to {}, not {}",
                opts.state.display(),
                s.destination,
                dest.name()
            )));
        }
    }
    let mut progress = saved.clone().unwrap_or(Progress {
        input: opts.input.display().to_string(),
        fingerprint: fingerprint.clone(),
        destination: dest.name(),
        lines_done: 0,
        published: 0,
        complete: false,
    });
    let resumed_after = progress.lines_done;
    let earlier = progress.published;
    let mut report = PublishReport {
        destination: dest.name(),
        resumed_after,
        published: 0,
        lines_done: resumed_after,
        complete: progress.complete,
        interrupted: false,
        seconds: 0.0,
    };
    if progress.complete {
        tracing::info!(state = %opts.state.display(), "already published completely; nothing to do");
        return Ok(report);
    }

    let io = |source| PublishError::Input {
        path: opts.input.clone(),
        source,
    };
    let bar = progress_bar(&opts).map_err(io)?;
    let mut reader = input::open(&opts.input).map_err(io)?;
    let mut line_no = 0u64;
    while line_no < resumed_after {
        if input::next_line(&mut *reader).map_err(io)?.is_none() {
            break;
        }
        line_no += 1;
    }
    bar.set_position(line_no);
    if resumed_after > 0 {
        tracing::info!(
            lines = resumed_after,
            "resuming: skipped the lines already published"
        );
    }

    // An unwritable state file fails now, before anything is published.
    save(
        &opts,
        &mut progress,
        &Prefix::after(line_no),
        earlier,
        false,
    )?;
    tokio::pin!(stop);
    let publisher = tokio::select! {
        p = Publisher::connect(&dest) => p?,
        _ = &mut stop => {
            report.interrupted = true;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
    };
    let file_name = opts
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut prefix = Prefix::after(line_no);
    let mut inflight: FuturesUnordered<Confirm> = FuturesUnordered::new();
    let (mut eof, mut stopping, mut failure) = (false, false, None);
    let mut next_due = Instant::now();
    let mut last_save = Instant::now();
    let mut last_log = Instant::now();
    loop {
        // Confirmations that are in already.
        while let Some(Some((n, r))) = inflight.next().now_or_never() {
            confirmed(n, r, &mut prefix, &mut report, &mut failure);
        }
        if !stopping && (&mut stop).now_or_never().is_some() {
            stopping = true;
        }
        if failure.is_some() {
            stopping = true;
        }
        if !stopping && !eof && inflight.len() < opts.window.max(1) {
            let line = match input::next_line(&mut *reader) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    eof = true;
                    continue;
                }
                Err(e) => {
                    // A truncated gzip file, say: keep what is confirmed, stop after the in-flight.
                    failure = Some(io(e));
                    continue;
                }
            };
            line_no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                prefix.confirm(line_no);
                continue;
            }
            if let Some(rate) = opts.rate {
                // One message per 1/rate; time lost waiting on the broker is not made up in a burst.
                if next_due > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_due.into()) => {}
                        _ = &mut stop => {
                            // This line is read but not sent: the restart sends it.
                            stopping = true;
                            continue;
                        }
                    }
                }
                let every = Duration::from_secs_f64(1.0 / rate.max(1e-3));
                next_due = next_due.max(Instant::now()) + every;
            }
            let headers = [
                ("labelmill-publish-file", file_name.clone()),
                ("labelmill-publish-line", line_no.to_string()),
            ];
            let msg = Line {
                number: line_no,
                key: document_key(&line),
                payload: &line,
                headers: &headers,
                message_id: format!("{}:{line_no}", &fingerprint[..16]),
            };
            match publisher.send(msg).await {
                Ok(c) => inflight.push(c),
                Err(e) => failure = Some(e),
            }
        } else if inflight.is_empty() {
            break;
        } else {
            tokio::select! {
                Some((n, r)) = inflight.next() => confirmed(n, r, &mut prefix, &mut report, &mut failure),
                _ = &mut stop, if !stopping => stopping = true,
            }
        }
        if last_save.elapsed() >= SAVE_EVERY {
            let published = earlier + report.published;
            if let Err(e) = save(&opts, &mut progress, &prefix, published, false) {
                failure.get_or_insert(e);
            }
            last_save = Instant::now();
        }
        bar.set_position(prefix.done());
        if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                lines_done = prefix.done(),
                published = report.published,
                "publishing"
            );
            last_log = Instant::now();
        }
    }
    publisher.close().await;
    let complete = eof && failure.is_none() && prefix.done() == line_no;
    save(
        &opts,
        &mut progress,
        &prefix,
        earlier + report.published,
        complete,
    )?;
    bar.finish_and_clear();
    report.lines_done = prefix.done();
    report.complete = complete;
    report.interrupted = stopping && failure.is_none() && !complete;
    report.seconds = started.elapsed().as_secs_f64();
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

fn confirmed(
    n: u64,
    r: Result<(), PublishError>,
    prefix: &mut Prefix,
    report: &mut PublishReport,
    failure: &mut Option<PublishError>,
) {
    match r {
        Ok(()) => {
            prefix.confirm(n);
            report.published += 1;
        }
        Err(e) => {
            tracing::error!(line = n, error = %e, "publish failed; stopping (progress is kept)");
            failure.get_or_insert(e);
        }
    }
}

fn save(
    opts: &PublishOptions,
    progress: &mut Progress,
    prefix: &Prefix,
    published: u64,
    complete: bool,
) -> Result<(), PublishError> {
    progress.published = published;
    progress.lines_done = prefix.done();
    progress.complete = complete;
    state::save(&opts.state, progress)
}

/// The document's `id` as a Kafka key, when the line is a JSON object with one.
fn document_key(line: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Id>(line).ok()?.id? {
        serde_json::Value::String(s) => Some(s.into_bytes()),
        serde_json::Value::Null => None,
        other => Some(other.to_string().into_bytes()),
    }
}

fn progress_bar(opts: &PublishOptions) -> std::io::Result<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !opts.progress || !std::io::stderr().is_terminal() {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let total = input::count_lines(&opts.input)?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines  {per_sec}  eta {eta}")
            .expect("a valid template"),
    );
    Ok(bar)
}
