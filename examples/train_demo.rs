//! Trains labelmill's demo model: a small LLaMA-architecture model that routes support tickets
//! (billing / technical / account / other), trained with candle on CPU on the synthetic tickets of
//! `labelmill::tiny::tickets`, through the very prompt of `examples/tasks.toml`'s `ticket` task, and
//! written as GGUF (F16, Q8_0, Q4_0) with its tokenizer.json.
//!
//! ```sh
//! cargo run --release --example train_demo -- --out models/demo --steps 300 --seed 1
//! ```
//!
//! Reproducible from `--seed` (data, initial weights and batch order). A development tool: the
//! worker never links it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Init, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use labelmill::engine::prepared::PreparedTask;
use labelmill::engine::tokenizer::TextTokenizer;
use labelmill::task::TaskFile;
use labelmill::tiny::{self, tickets, TinyShape};
use rand::{Rng, SeedableRng};

struct Args {
    out: PathBuf,
    tasks: PathBuf,
    steps: usize,
    batch: usize,
    seed: u64,
    train: usize,
    lr: f64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        out: "models/demo".into(),
        tasks: "examples/tasks.toml".into(),
        steps: 300,
        batch: 16,
        seed: 1,
        train: 4000,
        lr: 3e-3,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let value = pair.get(1).context("every flag takes a value")?;
        match pair[0].as_str() {
            "--out" => a.out = value.into(),
            "--tasks" => a.tasks = value.into(),
            "--steps" => a.steps = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--seed" => a.seed = value.parse()?,
            "--train" => a.train = value.parse()?,
            "--lr" => a.lr = value.parse()?,
            f => anyhow::bail!("unknown flag {f}"),
        }
    }
    Ok(a)
}

/// The model's shape: small enough to train in minutes on two cores, and to commit at Q8_0.
fn shape() -> TinyShape {
    TinyShape {
        layers: 2,
        dim: 128,
        heads: 4,
        kv_heads: 4,
        vocab: 1024,
        ffn: 384,
        context: 512,
    }
}

/// One training example: the prompt's ids with the gold label's tokens after it, and where the
/// label tokens are predicted.
struct Example {
    ids: Vec<u32>,
    /// (position whose output predicts, token predicted)
    targets: Vec<(usize, u32)>,
}

fn examples(task: &PreparedTask, tok: &TextTokenizer, n: usize, seed: u64) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for t in tickets::generate(n, seed) {
        let doc = task
            .encode_doc(tok, &t.text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", t.id))?;
        let gold = task
            .labels
            .iter()
            .position(|l| l == t.label)
            .context("label of the task")?;
        let mut ids = task.prefix_ids.clone();
        ids.extend(&doc.ids);
        ids.extend(&task.suffix_ids);
        let start = ids.len();
        let label = &task.label_ids[gold];
        let targets = label
            .iter()
            .enumerate()
            .map(|(k, &tok)| (start + k - 1, tok))
            .collect();
        ids.extend(&label[..label.len() - 1]);
        out.push(Example { ids, targets });
    }
    Ok(out)
}

/// Every matrix (not the norms) uniform with standard deviation 0.02, from `seed`, in name order.
fn seed_matrices(vars: &VarMap, seed: u64) -> Result<()> {
    let data = vars.data().lock().expect("no other user of the var map");
    let mut names: Vec<&String> = data
        .keys()
        .filter(|n| !n.ends_with("norm.weight"))
        .collect();
    names.sort();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let a = 0.02 * 3f32.sqrt();
    for n in names {
        let var = &data[n];
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-a..a))
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// The LLaMA forward pass in plain differentiable candle ops, with the engine's conventions:
/// `(out, in)` weights under GGUF names, interleaved RoPE, RMSNorm, SwiGLU.
struct Model {
    vars: VarMap,
    shape: TinyShape,
    cos: Tensor,
    sin: Tensor,
}

impl Model {
    fn new(shape: TinyShape, dev: &Device, seed: u64) -> Result<Self> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, dev);
        let (d, f, v) = (shape.dim, shape.ffn, shape.vocab);
        // Matrices start at zero here and get seeded values below (candle's own random init
        // draws from an unseeded generator, which made two trainings of one seed differ).
        let w = Init::Const(0.0);
        let ones = Init::Const(1.0);
        vb.get_with_hints((v, d), "token_embd.weight", w)?;
        for i in 0..shape.layers {
            for (name, s) in [
                ("attn_q", (d, d)),
                ("attn_k", (d, d)),
                ("attn_v", (d, d)),
                ("attn_output", (d, d)),
                ("ffn_gate", (f, d)),
                ("ffn_up", (f, d)),
                ("ffn_down", (d, f)),
            ] {
                vb.get_with_hints(s, &format!("blk.{i}.{name}.weight"), w)?;
            }
            vb.get_with_hints(d, &format!("blk.{i}.attn_norm.weight"), ones)?;
            vb.get_with_hints(d, &format!("blk.{i}.ffn_norm.weight"), ones)?;
        }
        vb.get_with_hints(d, "output_norm.weight", ones)?;
        vb.get_with_hints((v, d), "output.weight", w)?;
        seed_matrices(&vars, seed)?;
        let hd = d / shape.heads;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..shape.context {
            for f in &inv {
                cos.push((p as f32 * f).cos());
                sin.push((p as f32 * f).sin());
            }
        }
        Ok(Self {
            vars,
            cos: Tensor::from_vec(cos, (shape.context, hd / 2), dev)?,
            sin: Tensor::from_vec(sin, (shape.context, hd / 2), dev)?,
            shape,
        })
    }

    fn get(&self, name: &str) -> Tensor {
        self.vars.data().lock().unwrap()[name].as_tensor().clone()
    }

    /// Logits at `positions` (indices into the flattened `(batch, time)` grid).
    fn forward(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let s = &self.shape;
        let (h, hd) = (s.heads, s.dim / s.heads);
        let mut x = self
            .get("token_embd.weight")
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, s.dim))?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), ids.device())?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let lin = |x: &Tensor, name: &str| x.broadcast_matmul(&self.get(name).t()?);
        for i in 0..s.layers {
            let n = candle_nn::ops::rms_norm_slow(
                &x,
                &self.get(&format!("blk.{i}.attn_norm.weight")),
                1e-5,
            )?;
            let heads = |w: &str| -> Result<Tensor> {
                Ok(lin(&n, &format!("blk.{i}.{w}.weight"))?
                    .reshape((b, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = candle_nn::rotary_emb::rope_i_slow(&heads("attn_q")?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i_slow(&heads("attn_k")?, &cos, &sin)?;
            let v = heads("attn_v")?;
            let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, s.dim))?;
            x = (x + lin(&y, &format!("blk.{i}.attn_output.weight"))?)?;
            let n = candle_nn::ops::rms_norm_slow(
                &x,
                &self.get(&format!("blk.{i}.ffn_norm.weight")),
                1e-5,
            )?;
            let g = candle_nn::ops::silu(&lin(&n, &format!("blk.{i}.ffn_gate.weight"))?)?;
            let u = lin(&n, &format!("blk.{i}.ffn_up.weight"))?;
            x = (x + lin(&(g * u)?, &format!("blk.{i}.ffn_down.weight"))?)?;
        }
        let x = candle_nn::ops::rms_norm_slow(&x, &self.get("output_norm.weight"), 1e-5)?;
        let picked = x.reshape((b * t, s.dim))?.index_select(positions, 0)?;
        Ok(picked.matmul(&self.get("output.weight").t()?)?)
    }
}

/// A padded batch: ids `(b, t)`, flattened target positions, target tokens.
fn batch(ex: &[&Example], dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let t = ex.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(ex.len() * t);
    let (mut pos, mut tgt) = (Vec::new(), Vec::new());
    for (r, e) in ex.iter().enumerate() {
        ids.extend(&e.ids);
        ids.extend(std::iter::repeat_n(0u32, t - e.ids.len()));
        for &(p, tok) in &e.targets {
            pos.push((r * t + p) as u32);
            tgt.push(tok);
        }
    }
    Ok((
        Tensor::from_vec(ids, (ex.len(), t), dev)?,
        Tensor::from_vec(pos.clone(), pos.len(), dev)?,
        Tensor::from_vec(tgt.clone(), tgt.len(), dev)?,
    ))
}

fn main() -> Result<()> {
    let a = args()?;
    let dev = Device::Cpu;
    let s = shape();
    let started = Instant::now();
    // The tokenizer: trained on the tickets and the task file's text, so labels and prompt words
    // are single pieces where the corpus allows.
    let train_tickets = tickets::generate(a.train, a.seed);
    let mut corpus: String = std::fs::read_to_string(&a.tasks)?;
    for t in &train_tickets {
        corpus.push('\n');
        corpus.push_str(&t.text);
    }
    let tok_json = tiny::tokenizer::train_on(&corpus, s.vocab).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out)?;
    // Train on the tokens the written GGUF's own tokenizer gives, which is what serving uses.
    let tok = tiny::tokenizer::from_trained(&tok_json).map_err(anyhow::Error::msg)?;
    std::fs::write(
        a.out.join("tokenizer.json"),
        tok.to_json().map_err(anyhow::Error::msg)?,
    )?;
    let specs = TaskFile::load(&a.tasks)?;
    let spec = specs
        .task
        .iter()
        .find(|t| t.name == "ticket")
        .context("the task file has no 'ticket' task")?;
    let task = PreparedTask::new(spec, &tok, s.context)?;
    let train = examples(&task, &tok, a.train, a.seed)?;
    let held_out = examples(&task, &tok, 400, a.seed + 1000)?;
    // The same held-out tickets as labelled JSONL, for `labelmill eval`.
    let mut jsonl = String::new();
    for t in tickets::generate(400, a.seed + 1000) {
        let rec =
            serde_json::json!({"id": t.id, "task": "ticket", "text": t.text, "label": t.label});
        jsonl.push_str(&format!("{rec}\n"));
    }
    std::fs::write(a.out.join("held-out.jsonl"), jsonl)?;
    eprintln!(
        "prefix {} tokens, label tokens {:?}, {} training examples",
        task.prefix_ids.len(),
        task.label_ids,
        train.len()
    );

    let model = Model::new(s.clone(), &dev, a.seed)?;
    let mut opt = AdamW::new(
        model.vars.all_vars(),
        ParamsAdamW {
            lr: a.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    for step in 1..=a.steps {
        let picked: Vec<&Example> = (0..a.batch)
            .map(|_| &train[rng.random_range(0..train.len())])
            .collect();
        let (ids, pos, tgt) = batch(&picked, &dev)?;
        let logits = model.forward(&ids, &pos)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &tgt)?;
        opt.backward_step(&loss)?;
        if step % 20 == 0 || step == 1 {
            eprintln!(
                "step {step}: loss {:.4} ({:.0} s)",
                loss.to_scalar::<f32>()?,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Held-out accuracy on the first label token, before quantisation.
    let mut right = 0;
    for chunk in held_out.chunks(32) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (ids, pos, _) = batch(&refs, &dev)?;
        let firsts: Vec<u32> = task.label_ids.iter().map(|l| l[0]).collect();
        let logits = model.forward(&ids, &pos)?;
        let cand = logits.index_select(&Tensor::new(firsts.as_slice(), &dev)?, 1)?;
        let pred: Vec<u32> = cand.argmax(D::Minus1)?.to_vec1()?;
        let mut row = 0;
        for e in chunk {
            let gold_first = e.targets[0].1;
            if firsts[pred[row] as usize] == gold_first {
                right += 1;
            }
            row += e.targets.len();
        }
    }
    eprintln!(
        "held-out first-token accuracy {:.3} after {:.0} s",
        right as f64 / held_out.len() as f64,
        started.elapsed().as_secs_f64()
    );
    let weights: Vec<(String, Tensor)> = {
        let data = model.vars.data().lock().unwrap();
        let mut w: Vec<_> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        w.sort_by(|x, y| x.0.cmp(&y.0));
        w
    };
    for (q, dir) in [
        (GgmlDType::F16, "f16"),
        (GgmlDType::Q8_0, "q8_0"),
        (GgmlDType::Q4_0, "q4_0"),
    ] {
        let out = a.out.join(dir);
        tiny::write_weights(
            &out,
            &s,
            q,
            &format!("labelmill-demo-tickets-seed{}", a.seed),
            &weights,
            &tok_json,
        )?;
        eprintln!("wrote {}", out.join("model.gguf").display());
    }
    Ok(())
}
