//! Criterion bench of the batched forward: 32 documents scored one at a time vs in batches of 32.
//!
//! `cargo bench --bench forward`. Speed is measured here and by `labelmill bench`, never asserted
//! in tests.

use candle_core::quantized::GgmlDType;
use candle_core::Device;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use labelmill::engine::prepared::PreparedTask;
use labelmill::engine::Engine;
use labelmill::tiny::{self, TinyShape};

fn forward(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = TinyShape {
        layers: 4,
        dim: 512,
        heads: 8,
        kv_heads: 4,
        vocab: 2048,
        ffn: 1408,
        context: 2048,
    };
    let m = tiny::write(dir.path(), &shape, GgmlDType::Q8_0, 1).expect("tiny model");
    let engine = Engine::load(&m.model, None, &Device::Cpu).expect("load");
    let ids = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| 300 + (i * 37 + salt * 101) % 1700)
            .collect()
    };
    let labels = (0..4).map(|i| (format!("l{i}"), vec![400 + i])).collect();
    let task = PreparedTask::from_ids("bench", [vec![1], ids(63, 0)].concat(), ids(3, 1), labels);
    engine.prefix_kv(&task).expect("prefix");
    let docs: Vec<Vec<u32>> = (0..32).map(|i| ids(64, i + 2)).collect();

    let mut g = c.benchmark_group("score_32_docs_of_64_tokens");
    g.sample_size(10);
    g.throughput(Throughput::Elements(docs.len() as u64));
    for batch in [1usize, 32] {
        g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter(|| {
                for chunk in docs.chunks(batch) {
                    let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                    engine.score(&task, &refs).expect("score");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
