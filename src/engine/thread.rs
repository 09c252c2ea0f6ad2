//! The engine runner: async code sends batches through a channel and never blocks on the forward
//! pass, which runs on tokio's blocking pool. A batch that fails is split in halves until the
//! failing document is alone, so one poison document cannot fail its neighbours.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::prepared::PreparedTask;
use super::scoring::LabelScores;
use super::Engine;

/// One batch for the engine: documents of one task, with whatever the caller needs back.
#[derive(Debug)]
pub struct Job<T> {
    /// Index into the task list.
    pub task: usize,
    /// Fitted token ids of each document.
    pub ids: Vec<Vec<u32>>,
    /// The caller's items, one per document, returned with the scores.
    pub items: Vec<T>,
}

/// A finished batch.
#[derive(Debug)]
pub struct Outcome<T> {
    /// Index into the task list.
    pub task: usize,
    /// Each item with its scores, or the engine's error for that document alone.
    pub results: Vec<(T, Result<LabelScores, String>)>,
    /// Time in the engine.
    pub elapsed: Duration,
    /// Forward passes run (more than one when a failure was isolated).
    pub passes: usize,
}

/// Starts the engine runner: a task that takes one job at a time and runs its forward passes on
/// tokio's blocking pool, so async code never blocks on them. It runs until `jobs` closes, then
/// ends after its last outcome.
///
/// The blocking pool, not a thread of its own, because tokio counts a running blocking task as
/// work: under a paused clock (the worker's in-process harness) time then stands still while a
/// batch computes, as it would in the real world, instead of racing to the next timer.
///
/// `free` gets a permit each time a forward pass ends: the caller sends a job only when it holds
/// one, so it chooses the next batch when the engine is free, not one batch ahead.
pub fn spawn<T: Send + 'static>(
    engine: Arc<Engine>,
    tasks: Arc<Vec<PreparedTask>>,
    mut jobs: mpsc::Receiver<Job<T>>,
    outcomes: mpsc::Sender<Outcome<T>>,
    free: Arc<tokio::sync::Semaphore>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut counts = (0u64, 0u64);
        while let Some(job) = jobs.recv().await {
            let (engine, tasks) = (engine.clone(), tasks.clone());
            let ran = tokio::task::spawn_blocking(move || {
                let outcome = run_job(&engine, &tasks, job, &mut counts);
                (outcome, counts)
            })
            .await;
            free.add_permits(1);
            let Ok((outcome, c)) = ran else {
                break;
            };
            counts = c;
            if outcomes.send(outcome).await.is_err() {
                break;
            }
        }
    })
}

/// Runs one job: its forward passes, failures isolated. `counts` holds the batches and passes run
/// so far (for the injected faults).
fn run_job<T>(
    engine: &Engine,
    tasks: &[PreparedTask],
    job: Job<T>,
    (batches, all_passes): &mut (u64, u64),
) -> Outcome<T> {
    *batches += 1;
    if crate::faults::get().engine_hang == Some(*batches) {
        tracing::warn!(batch = *batches, "injected engine hang (LABELMILL_FAULTS)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let started = Instant::now();
    if let Some(ms) = crate::faults::get().engine_slow.filter(|_| *batches == 1) {
        tracing::warn!(ms, "injected slow batch (LABELMILL_FAULTS)");
        std::thread::sleep(Duration::from_millis(ms));
    }
    let task = &tasks[job.task];
    let docs: Vec<&[u32]> = job.ids.iter().map(Vec::as_slice).collect();
    let mut passes = 0;
    let scored = score_isolating(
        &mut |d: &[&[u32]]| {
            passes += 1;
            *all_passes += 1;
            if crate::faults::engine_fails(*all_passes) {
                return Err("injected engine failure (LABELMILL_FAULTS)".to_string());
            }
            // A panic in the forward pass fails this batch (then it is bisected), instead of
            // stranding every later batch.
            let scored =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.score(task, d)));
            match scored {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(p) => Err(format!("the engine panicked: {}", panic_text(&p))),
            }
        },
        &docs,
    );
    Outcome {
        task: job.task,
        results: job.items.into_iter().zip(scored).collect(),
        elapsed: started.elapsed(),
        passes,
    }
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Scores one batch of documents (token ids), or fails for the whole batch.
pub type BatchScorer<'a, S, E> = dyn FnMut(&[&[u32]]) -> Result<Vec<S>, E> + 'a;

/// Scores `docs` in one call; if that fails, scores each half the same way, down to single
/// documents, whose own errors are returned in their place.
pub fn score_isolating<S, E: Clone>(
    score: &mut BatchScorer<'_, S, E>,
    docs: &[&[u32]],
) -> Vec<Result<S, E>> {
    if docs.is_empty() {
        return Vec::new();
    }
    match score(docs) {
        Ok(s) => s.into_iter().map(Ok).collect(),
        Err(e) if docs.len() == 1 => vec![Err(e)],
        Err(_) => {
            let (a, b) = docs.split_at(docs.len() / 2);
            let mut out = score_isolating(score, a);
            out.extend(score_isolating(score, b));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scorer that fails any batch holding a document that starts with token 666.
    fn poisoned(calls: &mut usize) -> impl FnMut(&[&[u32]]) -> Result<Vec<u32>, String> + '_ {
        move |d: &[&[u32]]| {
            *calls += 1;
            if d.iter().any(|x| x[0] == 666) {
                Err("poison".to_string())
            } else {
                Ok(d.iter().map(|x| x[0] * 10).collect())
            }
        }
    }

    #[test]
    fn a_poison_document_fails_alone() {
        let raw: Vec<Vec<u32>> = (1..=8)
            .map(|i| vec![if i == 6 { 666 } else { i }])
            .collect();
        let docs: Vec<&[u32]> = raw.iter().map(Vec::as_slice).collect();
        let mut calls = 0;
        let out = score_isolating(&mut poisoned(&mut calls), &docs);
        let expect: Vec<Result<u32, String>> = (1..=8)
            .map(|i| {
                if i == 6 {
                    Err("poison".into())
                } else {
                    Ok(i * 10)
                }
            })
            .collect();
        assert_eq!(out, expect);
        // 8 -> 4+4 -> (ok) 2+2 -> (ok) 1+1: about 2 log2(n) + 1 calls, not n.
        assert_eq!(calls, 7);
    }

    #[test]
    fn a_clean_batch_is_one_call() {
        let raw: Vec<Vec<u32>> = (1..=5).map(|i| vec![i]).collect();
        let docs: Vec<&[u32]> = raw.iter().map(Vec::as_slice).collect();
        let mut calls = 0;
        let out = score_isolating(&mut poisoned(&mut calls), &docs);
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(calls, 1);
    }
}
