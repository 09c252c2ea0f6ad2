//! `labelmill tune`: the command line around [`crate::tune`]: reads the task and the labelled
//! data, trains with a progress bar, writes the adapter and points the task file at it.

use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::engine::load::GgufFile;
use crate::engine::lora::TARGETS;
use crate::engine::prepared::PreparedTask;
use crate::engine::tokenizer::TextTokenizer;
use crate::task::TaskFile;
use crate::tune::model::{LoraShape, TrainModel};
use crate::tune::write::{point_task_at, write_adapter, Provenance};
use crate::tune::{data, EpochReport, Event, TrainOptions, Tuner};

/// `tune` arguments.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The base model (a LLaMA-architecture GGUF, any quantisation).
    #[arg(long, env = "LABELMILL_MODEL")]
    model: PathBuf,
    /// A HuggingFace tokenizer.json (default: the tokenizer the GGUF carries).
    #[arg(long, env = "LABELMILL_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Task definitions (TOML); the trained task's `adapter` is written into it.
    #[arg(long, env = "LABELMILL_TASKS")]
    tasks: PathBuf,
    /// The task to train (may be left out when the file has one task).
    #[arg(long)]
    task: Option<String>,
    /// Labelled JSONL: `text`, `label`, optional `id` and `task`.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the adapter (default: `<task>.lora.gguf` beside the task file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Projections to adapt, comma-separated: attn_q, attn_k, attn_v, attn_output, ffn_gate,
    /// ffn_up, ffn_down.
    #[arg(long, default_value = "attn_q,attn_v", value_delimiter = ',')]
    targets: Vec<String>,
    /// Adapt only the last N blocks (default: all).
    #[arg(long)]
    layers: Option<usize>,
    /// Passes over the training examples.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Examples per optimiser step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Fraction of the examples held out to score each epoch (the best epoch's adapter is kept).
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Seed for the initial adapter, the split and the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the adapter but leave the task file as it is.
    #[arg(long)]
    no_edit: bool,
    /// Print one JSON object with the figures when done.
    #[arg(long)]
    json: bool,
}

/// Runs `labelmill tune`.
pub fn tune(a: TuneArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let specs = TaskFile::load(&a.tasks)?;
    let spec = match (&a.task, specs.task.as_slice()) {
        (Some(name), all) => all
            .iter()
            .find(|t| t.name == *name)
            .with_context(|| format!("no task named '{name}' in {}", a.tasks.display()))?,
        (None, [only]) => only,
        (None, _) => bail!(
            "{} has several tasks: name one with --task",
            a.tasks.display()
        ),
    };
    if a.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if !(0.0..1.0).contains(&a.holdout) {
        bail!("--holdout must be at least 0 and below 1");
    }
    let mut file = GgufFile::open(&a.model)?;
    let shape = lora_shape(&a, file.hparams.n_layers)?;
    let tokenizer = TextTokenizer::for_model(&file, a.tokenizer.as_deref())?;
    let task = PreparedTask::new(spec, &tokenizer, file.hparams.context_length)?;
    let f = File::open(&a.data).with_context(|| format!("opening {}", a.data.display()))?;
    let examples = data::read(&mut BufReader::new(f), &task, &tokenizer)
        .with_context(|| format!("{}", a.data.display()))?;
    if examples.is_empty() {
        bail!("{} has no labelled records", a.data.display());
    }
    let (train, heldout) = data::split(examples, a.holdout, a.seed);
    let device = crate::device()?;
    let base_model = file.model_id.clone();
    let model = TrainModel::load(&mut file, &device, shape.clone(), a.seed)?;
    let tuner = Tuner::new(model, task, &tokenizer).map_err(anyhow::Error::msg)?;
    eprintln!(
        "tune: task '{}', {} training and {} held-out examples; rank {}, alpha {}, {} on blocks {}..{}",
        spec.name,
        train.len(),
        heldout.len(),
        shape.rank,
        shape.alpha,
        a.targets.join(","),
        shape.layers.start,
        shape.layers.end
    );
    let opts = TrainOptions {
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        seed: a.seed,
    };
    let bar = progress_bar();
    let (reports, best) = tuner.train(&train, &heldout, &opts, &mut |e| match e {
        Event::Step {
            epoch,
            step,
            steps,
            loss,
        } => {
            bar.set_length(steps as u64);
            bar.set_position(step as u64);
            bar.set_message(format!("epoch {epoch}/{}  loss {loss:.4}", opts.epochs));
        }
        Event::Epoch(r) if bar.is_hidden() => eprintln!("{}", epoch_line(r)),
        Event::Epoch(r) => bar.println(epoch_line(r)),
    })?;
    bar.finish_and_clear();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.tasks.with_file_name(format!("{}.lora.gguf", spec.name)));
    let provenance = Provenance {
        task: &spec.name,
        base_model: &base_model,
    };
    write_adapter(&out, &best, shape.alpha, &provenance)?;
    let pointed = if a.no_edit {
        None
    } else {
        Some(point_task_at(&a.tasks, &spec.name, &out)?)
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("tune: wrote {} in {seconds:.1} s", out.display());
    if let Some(p) = &pointed {
        eprintln!("tune: task '{}' now has adapter = \"{p}\"", spec.name);
    }
    if a.json {
        let report = serde_json::json!({
            "task": spec.name,
            "adapter": out,
            "train_examples": train.len(),
            "heldout_examples": heldout.len(),
            "epochs": reports,
            "seconds": seconds,
        });
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn lora_shape(a: &TuneArgs, n: usize) -> Result<LoraShape> {
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    if !a.alpha.is_finite() || a.alpha <= 0.0 {
        bail!("--alpha must be a positive number");
    }
    let mut targets = Vec::new();
    for t in &a.targets {
        match TARGETS.iter().position(|x| x == t) {
            Some(i) if !targets.contains(&i) => targets.push(i),
            Some(_) => {}
            None => bail!("unknown target '{t}': one of {}", TARGETS.join(", ")),
        }
    }
    if targets.is_empty() {
        bail!("--targets names no projection");
    }
    let k = a.layers.unwrap_or(n);
    if k == 0 || k > n {
        bail!("--layers must be between 1 and the model's {n} blocks");
    }
    Ok(LoraShape {
        rank: a.rank,
        alpha: a.alpha,
        targets,
        layers: n - k..n,
    })
}

fn epoch_line(r: &EpochReport) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let head = if r.epoch == 0 {
        "base model".to_string()
    } else {
        format!("epoch {}", r.epoch)
    };
    format!(
        "{head:<10}  train loss {}  held-out loss {}  held-out accuracy {}  ({:.1} s)",
        opt(r.train_loss),
        opt(r.heldout_loss),
        opt(r.heldout_accuracy),
        r.seconds
    )
}

fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        // Logs and CI: no bar, one line per epoch.
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed}]")
            .expect("a valid template"),
    );
    bar
}
