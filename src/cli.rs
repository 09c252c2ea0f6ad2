//! Command-line interface: `worker`, `publish`, `config check`, `classify`, `eval`, `tiny-model`,
//! `bench`, `check-device`, `inspect`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::batch::BatchLimits;
use crate::bench::BenchWorkload;
use crate::classify::ClassifyOptions;
use crate::config::WorkerConfig;
use crate::engine::prepared::PreparedTask;
use crate::engine::{Engine, WeightFormat};
use crate::task::TaskFile;
use crate::tiny::{self, TinyShape};

/// labelmill: classify documents with a quantised LLaMA model.
#[derive(Debug, Parser)]
#[command(name = "labelmill", version, about)]
pub struct Cli {
    /// Compute threads (default: all cores; same as RAYON_NUM_THREADS).
    #[arg(long, global = true, env = "LABELMILL_THREADS")]
    pub threads: Option<usize>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LABELMILL_LOG_JSON")]
    pub log_json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume documents from Kafka and/or RabbitMQ, publish results (the main job).
    Worker(WorkerArgs),
    /// Publish a JSONL(.gz) file to an input topic or queue (a backfill), resumably.
    Publish(PublishArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Classify a JSONL file (or stdin) without a broker.
    Classify(ClassifyArgs),
    /// Measure quality on labelled JSONL: accuracy, macro-F1, confusion, calibration; compare
    /// models; fit per-task temperatures.
    Eval(EvalArgs),
    /// Train a LoRA adapter for one task from labelled JSONL, through the task's prompt and label
    /// scoring; writes a llama.cpp GGUF adapter and points the task file at it.
    Tune(crate::cli_tune::TuneArgs),
    /// Write a random-weight LLaMA GGUF and its tokenizer (for tests, benchmarks, trying things).
    TinyModel(TinyModelArgs),
    /// Time the engine on synthetic documents; prints one JSON line.
    Bench(BenchArgs),
    /// Check the compute device (CUDA with the `cuda` feature): batch == alone, cached prefix ==
    /// whole prompt, and its scores against the CPU's, on generated models; one JSON line each.
    CheckDevice(CheckDeviceArgs),
    /// Describe a GGUF file: architecture, shape, tensor types, tokenizer, special tokens, chat
    /// template, memory.
    Inspect(InspectArgs),
}

/// `inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The GGUF file.
    model: PathBuf,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

/// `check-device` arguments.
#[derive(Debug, Args)]
pub struct CheckDeviceArgs {
    /// Quantisations of the generated models, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "q8_0,q4_0")]
    quant: Vec<String>,
    /// Weight formats to check, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "quantized,bf16,bf16-per-batch"
    )]
    weights: Vec<WeightFormat>,
    /// Seed of the generated weights.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[command(flatten)]
    shape: ShapeArgs,
}

/// `worker` arguments.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker configuration (TOML); `LABELMILL_SECTION__FIELD` variables override it.
    #[arg(long, env = "LABELMILL_CONFIG")]
    config: PathBuf,
}

/// `publish` arguments.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The worker configuration: brokers and the input topics/queues.
    #[arg(long, env = "LABELMILL_CONFIG")]
    config: PathBuf,
    /// The JSONL file, plain or gzip-compressed.
    #[arg(long)]
    input: PathBuf,
    /// The broker, when the configuration has both.
    #[arg(long, value_parser = ["kafka", "amqp"])]
    to: Option<String>,
    /// The lane: its first input topic/queue is the destination.
    #[arg(long, default_value = "backfill", value_parser = ["live", "backfill"])]
    lane: String,
    /// Publish to this topic or queue instead of the lane's first input.
    #[arg(long)]
    destination: Option<String>,
    /// Most messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Most publishes awaiting the broker's confirmation.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Progress file (default: <input>.publish-state.json).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Ignore saved progress: publish from the first line.
    #[arg(long)]
    restart: bool,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a worker configuration and print the effective one, secrets redacted.
    Check(WorkerArgs),
}

/// Model files.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A LLaMA-architecture GGUF file.
    #[arg(long, env = "LABELMILL_MODEL")]
    pub model: PathBuf,
    /// A HuggingFace tokenizer.json, checked against the GGUF's own tokenizer (default: the
    /// tokenizer the GGUF carries in its metadata).
    #[arg(long, env = "LABELMILL_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// How projection weights are held: quantized (as stored), bf16 (dequantised once at load),
    /// bf16-per-batch (dequantised per product) or auto (quantized on the CPU; on a GPU bf16 where
    /// it fits, else bf16-per-batch).
    #[arg(long, env = "LABELMILL_WEIGHTS", default_value = "quantized")]
    pub weights: WeightFormat,
}

/// `eval` arguments.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task definitions (TOML); `--fit-temperature` writes into it.
    #[arg(long, env = "LABELMILL_TASKS")]
    tasks: PathBuf,
    /// Labelled JSONL: `id`, `text`, `task` (optional), `label`.
    #[arg(long)]
    data: PathBuf,
    /// A second GGUF scored on the same data, side by side (agreement, accuracy difference).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// The second model's tokenizer.json (default: the tokenizer its GGUF carries).
    #[arg(long)]
    compare_tokenizer: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a reliability diagram (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Fit each task's temperature on this data (minimum NLL) and write it into the task file.
    #[arg(long)]
    fit_temperature: bool,
    /// Fit per-label biases on this data (minimum NLL at the task's temperature, on top of its
    /// calibration) and write them into the task file as `bias = { label = b, ... }`.
    #[arg(long)]
    fit_bias: bool,
    /// Most documents per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most tokens (summed over the batch) per forward pass.
    #[arg(long, default_value_t = 8192)]
    max_batch_tokens: usize,
}

/// `classify` arguments.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task definitions (TOML).
    #[arg(long, env = "LABELMILL_TASKS")]
    tasks: PathBuf,
    /// Input JSONL file, or - for stdin.
    #[arg(long, default_value = "-")]
    input: String,
    /// Output JSONL file, or - for stdout.
    #[arg(long, default_value = "-")]
    output: String,
    /// Most documents per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most tokens (summed over the batch) per forward pass.
    #[arg(long, default_value_t = 8192)]
    max_batch_tokens: usize,
    /// Documents read ahead and scored together (memory bound; larger packs batches better).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Longest accepted input line, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_line_bytes: usize,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// `tiny-model` arguments.
#[derive(Debug, Args)]
pub struct TinyModelArgs {
    /// Output directory (gets model.gguf and tokenizer.json).
    #[arg(long)]
    out: PathBuf,
    /// Weight quantisation: f32, f16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    shape: ShapeArgs,
}

/// Shape of a generated model.
#[derive(Debug, Args, Clone)]
pub struct ShapeArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = TinyShape::default().layers)]
    layers: usize,
    /// Embedding width.
    #[arg(long, default_value_t = TinyShape::default().dim)]
    dim: usize,
    /// Attention heads.
    #[arg(long, default_value_t = TinyShape::default().heads)]
    heads: usize,
    /// Key/value heads (fewer than heads: grouped-query attention).
    #[arg(long, default_value_t = TinyShape::default().kv_heads)]
    kv_heads: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = TinyShape::default().vocab)]
    vocab: usize,
    /// Feed-forward width.
    #[arg(long, default_value_t = TinyShape::default().ffn)]
    ffn: usize,
    /// Context length.
    #[arg(long, default_value_t = TinyShape::default().context)]
    context: usize,
}

impl From<&ShapeArgs> for TinyShape {
    fn from(a: &ShapeArgs) -> Self {
        Self {
            layers: a.layers,
            dim: a.dim,
            heads: a.heads,
            kv_heads: a.kv_heads,
            vocab: a.vocab,
            ffn: a.ffn,
            context: a.context,
        }
    }
}

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A GGUF to time (default: generate a tiny model with the shape flags).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A tokenizer.json for it (default: the tokenizer the GGUF carries).
    #[arg(long, requires = "model")]
    tokenizer: Option<PathBuf>,
    /// Quantisation of the generated model.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// How projection weights are held: quantized, bf16, bf16-per-batch or auto.
    #[arg(long, env = "LABELMILL_WEIGHTS", default_value = "quantized")]
    weights: WeightFormat,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Documents per run.
    #[arg(long, default_value_t = 64)]
    docs: usize,
    /// Tokens per document.
    #[arg(long, default_value_t = 64)]
    doc_tokens: usize,
    /// Tokens in the shared prefix.
    #[arg(long, default_value_t = 16)]
    prefix_tokens: usize,
    /// Documents per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the synthetic documents and generated weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Baseline without the prefix cache: each document runs its whole prompt, one at a time.
    #[arg(long)]
    uncached: bool,
    /// Instead of the engine, measure this machine's f32 matrix-product peak (GFLOP/s) with the
    /// `gemm` crate candle uses, on square matrices of this size.
    #[arg(long, value_name = "SIZE")]
    peak: Option<usize>,
}

/// Runs the parsed command; the exit code says whether every record succeeded.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Worker(a) => worker(a),
        Command::Publish(a) => publish(a),
        Command::Config(ConfigCommand::Check(a)) => {
            let cfg = WorkerConfig::load(&a.config)?;
            let files = [("model", &cfg.model.model), ("tasks", &cfg.model.tasks)];
            let tokenizer = cfg.model.tokenizer.iter().map(|t| ("tokenizer", t));
            for (what, p) in files.into_iter().chain(tokenizer) {
                if !p.exists() {
                    bail!("{what} file {} does not exist", p.display());
                }
            }
            let tasks = TaskFile::load(&cfg.model.tasks)?;
            let names: Vec<&str> = tasks.task.iter().map(|t| t.name.as_str()).collect();
            let bound = cfg
                .kafka
                .iter()
                .flat_map(|k| k.inputs.iter().map(|i| &i.task))
                .chain(
                    cfg.amqp
                        .iter()
                        .flat_map(|a| a.inputs.iter().map(|i| &i.task)),
                );
            for t in bound.flatten() {
                if !names.contains(&t.as_str()) {
                    bail!(
                        "an input is bound to task '{t}', which {} does not define",
                        cfg.model.tasks.display()
                    );
                }
            }
            print!("{}", cfg.redacted_toml());
            eprintln!(
                "configuration is valid ({} tasks: {})",
                names.len(),
                names.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify(a) => classify(a),
        Command::Eval(a) => eval(a),
        Command::Tune(a) => crate::cli_tune::tune(a),
        Command::TinyModel(a) => {
            let quant = tiny::parse_quant(&a.quant).map_err(anyhow::Error::msg)?;
            let m = tiny::write(&a.out, &TinyShape::from(&a.shape), quant, a.seed)?;
            println!("{}\n{}", m.model.display(), m.tokenizer.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(a) => bench(a),
        Command::CheckDevice(a) => check_device(a),
        Command::Inspect(a) => {
            let report = crate::inspect::inspect(&a.model)?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn worker(a: WorkerArgs) -> Result<ExitCode> {
    let cfg = WorkerConfig::load(&a.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let shutdown = crate::shutdown::signal();
        crate::worker::run(cfg, shutdown).await
    })?;
    // librdkafka and lapin threads may still be closing; the report is what matters.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    eprintln!("{}", serde_json::to_string(&report)?);
    Ok(if report.fatal.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn publish(a: PublishArgs) -> Result<ExitCode> {
    use crate::config::Lane;
    use crate::publish::dest::Destination;
    let cfg = WorkerConfig::load(&a.config)?;
    let lane = if a.lane == "live" {
        Lane::Live
    } else {
        Lane::Backfill
    };
    let to = match (a.to.as_deref(), &cfg.kafka, &cfg.amqp) {
        (Some(t), _, _) => t,
        (None, Some(_), None) => "kafka",
        (None, None, Some(_)) => "amqp",
        _ => bail!("the configuration has both [kafka] and [amqp]: choose one with --to"),
    };
    let dest = match to {
        "kafka" => {
            let k = cfg
                .kafka
                .context("--to kafka: the configuration has no [kafka]")?;
            let topic = match &a.destination {
                Some(t) => t.clone(),
                None => k
                    .inputs
                    .iter()
                    .find(|i| i.lane == lane)
                    .map(|i| i.topic.clone())
                    .with_context(|| format!("kafka.inputs has no {} topic", lane.as_str()))?,
            };
            Destination::Kafka { cfg: k, topic }
        }
        _ => {
            let q = cfg
                .amqp
                .context("--to amqp: the configuration has no [amqp]")?;
            let queue = match &a.destination {
                Some(t) => t.clone(),
                None => q
                    .inputs
                    .iter()
                    .find(|i| i.lane == lane)
                    .map(|i| i.queue.clone())
                    .with_context(|| format!("amqp.inputs has no {} queue", lane.as_str()))?,
            };
            Destination::Amqp { cfg: q, queue }
        }
    };
    let opts = crate::publish::PublishOptions {
        state: a
            .state
            .clone()
            .unwrap_or_else(|| crate::publish::state::default_path(&a.input)),
        input: a.input,
        restart: a.restart,
        rate: a.rate.filter(|r| *r > 0.0),
        window: a.window,
        progress: !a.no_progress,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let stop = crate::shutdown::signal();
        crate::publish::run(dest, opts, stop).await
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    println!("{}", serde_json::to_string(&report)?);
    // 130: stopped by a signal before the end; run the same command again to resume.
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn load_engine(m: &ModelArgs) -> Result<Engine> {
    let device = crate::device()?;
    let engine = Engine::load_with(&m.model, m.tokenizer.as_deref(), &device, m.weights)?;
    let info = engine.info();
    tracing::info!(model = %info.name, quant = %info.quant, weights = %info.weights, device = %info.device, layers = info.hparams.n_layers, dim = info.hparams.dim,
        heads = info.hparams.n_heads, kv_heads = info.hparams.n_kv_heads, "model loaded");
    Ok(engine)
}

/// Loads a model and prepares (and warms) every task of `specs` for it.
fn prepared(m: &ModelArgs, specs: &TaskFile) -> Result<(Engine, Vec<PreparedTask>)> {
    let engine = load_engine(m)?;
    let tasks: Vec<PreparedTask> = specs
        .task
        .iter()
        .map(|s| engine.prepare(s))
        .collect::<std::result::Result<_, _>>()?;
    for t in &tasks {
        engine.prefix_kv(t)?;
    }
    Ok((engine, tasks))
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    use crate::eval::{self, calibrate, report};
    let specs = TaskFile::load(&a.tasks)?;
    let limits = BatchLimits {
        max_docs: a.batch_size.max(1),
        max_tokens: a.max_batch_tokens.max(1),
    };
    let read = |engine: &Engine, tasks: &[PreparedTask]| -> Result<Vec<eval::Record>> {
        let f = File::open(&a.data).with_context(|| format!("opening {}", a.data.display()))?;
        Ok(eval::read(&mut BufReader::new(f), engine, tasks)?)
    };
    let (engine, tasks) = prepared(&a.model, &specs)?;
    let records = read(&engine, &tasks)?;
    if records.is_empty() {
        bail!("{} has no labelled records", a.data.display());
    }
    let scored = eval::score(&engine, &tasks, &records, limits)?;
    let mine = eval::examples(&tasks, &records, &scored);
    // The file name with its directory: quantisations of one model often share the file name.
    let name = |p: &PathBuf| {
        let parts: Vec<String> = p
            .components()
            .rev()
            .take(2)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts.into_iter().rev().collect::<Vec<_>>().join("/")
    };
    let other = match &a.compare {
        Some(path) => {
            let m2 = ModelArgs {
                model: path.clone(),
                tokenizer: a.compare_tokenizer.clone(),
                weights: a.model.weights,
            };
            let (engine2, tasks2) = prepared(&m2, &specs)?;
            let records2 = read(&engine2, &tasks2)?;
            let scored2 = eval::score(&engine2, &tasks2, &records2, limits)?;
            Some((
                name(path),
                eval::examples(&tasks2, &records2, &scored2),
                scored2.docs_per_s,
            ))
        }
        None => None,
    };
    let mut rep = report::EvalReport {
        documents: records.len(),
        docs_per_s: scored.docs_per_s,
        compare_docs_per_s: other.as_ref().map(|o| o.2),
        tasks: Default::default(),
    };
    let mut corrections = eval::corrections::corrections(&engine, &tasks, &records, &scored)?;
    for t in &tasks {
        let Some(ex) = mine.get(&t.name) else {
            continue;
        };
        let theirs = other
            .as_ref()
            .and_then(|(n, o, _)| o.get(&t.name).map(|e| (n.as_str(), e.as_slice())));
        let mut tr = report::task_report(&t.labels, &name(&a.model.model), ex, theirs);
        tr.corrections = corrections.remove(&t.name);
        rep.tasks.insert(t.name.clone(), tr);
    }
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print!("{}", rep.table());
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, crate::eval::plot::reliability_svg(&rep))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if a.fit_temperature {
        let pairs = eval::log_probs(&tasks, &records, &scored);
        let mut fitted = Vec::new();
        for (task, ex) in &pairs {
            let t = calibrate::fit_temperature(ex);
            eprintln!(
                "task {task}: temperature {t:.4} (NLL {:.4} at T=1, {:.4} fitted)",
                calibrate::nll(ex, 1.0),
                calibrate::nll(ex, t)
            );
            fitted.push((task.clone(), t));
        }
        calibrate::write_temperatures(&a.tasks, &fitted)?;
        eprintln!("temperatures written to {}", a.tasks.display());
    }
    if a.fit_bias {
        let fitted: Vec<(String, Vec<(String, f32)>)> = tasks
            .iter()
            .filter_map(|t| {
                let c = rep.tasks.get(&t.name)?.corrections.as_ref()?;
                let named = t
                    .labels
                    .iter()
                    .cloned()
                    .zip(c.fitted_bias.clone())
                    .collect();
                Some((t.name.clone(), named))
            })
            .collect();
        for (task, b) in &fitted {
            eprintln!("task {task}: bias {b:?}");
        }
        calibrate::write_biases(&a.tasks, &fitted)?;
        eprintln!("biases written to {}", a.tasks.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn classify(a: ClassifyArgs) -> Result<ExitCode> {
    let specs = TaskFile::load(&a.tasks)?;
    let engine = load_engine(&a.model)?;
    let tasks: Vec<PreparedTask> = specs
        .task
        .iter()
        .map(|s| engine.prepare(s))
        .collect::<std::result::Result<_, _>>()?;
    for t in &tasks {
        // Computing each prefix now turns a broken prompt into a start-up error, not a per-batch one.
        engine.prefix_kv(t)?;
        tracing::info!(task = %t.name, prefix_tokens = t.prefix_ids.len(), labels = t.labels.len(), "task ready");
    }
    let mut input: Box<dyn BufRead> = if a.input == "-" {
        Box::new(BufReader::new(std::io::stdin().lock()))
    } else {
        Box::new(BufReader::new(
            File::open(&a.input).with_context(|| format!("opening input {}", a.input))?,
        ))
    };
    let to_file = a.output != "-";
    let mut output: Box<dyn Write> = if to_file {
        Box::new(BufWriter::new(
            File::create(&a.output).with_context(|| format!("creating output {}", a.output))?,
        ))
    } else {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    };
    let opts = ClassifyOptions {
        limits: BatchLimits {
            max_docs: a.batch_size,
            max_tokens: a.max_batch_tokens,
        },
        window: a.window.max(1),
        max_line_bytes: a.max_line_bytes,
        progress: to_file && !a.no_progress && std::io::stderr().is_terminal(),
    };
    let summary = crate::classify::run(&engine, &tasks, &mut input, &mut output, &opts)?;
    eprintln!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check_device(a: CheckDeviceArgs) -> Result<ExitCode> {
    let opts = crate::check_device::CheckOptions {
        shape: TinyShape::from(&a.shape),
        quants: a
            .quant
            .iter()
            .map(|q| tiny::parse_quant(q))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?,
        weights: a.weights,
        seed: a.seed,
    };
    let device = crate::device()?;
    let dir = tempfile::tempdir()?;
    let reports = crate::check_device::run(&opts, &device, dir.path())?;
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    let failed = reports.iter().filter(|r| !r.pass).count();
    if failed > 0 {
        eprintln!(
            "check-device: {failed} of {} checks out of limits",
            reports.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(a: BenchArgs) -> Result<ExitCode> {
    if let Some(size) = a.peak {
        let report = crate::bench::peak(size, a.runs);
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let tmp;
    let (model, tokenizer) = match a.model {
        Some(m) => (m, a.tokenizer),
        None => {
            tmp = tempfile::tempdir()?;
            let quant = tiny::parse_quant(&a.quant).map_err(anyhow::Error::msg)?;
            let m = tiny::write(tmp.path(), &TinyShape::from(&a.shape), quant, a.seed)?;
            (m.model, None)
        }
    };
    let engine = load_engine(&ModelArgs {
        model,
        tokenizer,
        weights: a.weights,
    })?;
    let workload = BenchWorkload {
        docs: a.docs,
        doc_tokens: a.doc_tokens,
        prefix_tokens: a.prefix_tokens,
        batch_size: a.batch_size,
        runs: a.runs,
        seed: a.seed,
        uncached: a.uncached,
    };
    let report = crate::bench::run(&engine, &workload)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
