//! Per-stage benchmarks on the bundled sample: decode + extract, and sessionize.
#![allow(clippy::unwrap_used, missing_docs)]

use clickstream::decode;
use clickstream::extract::Extractor;
use clickstream::session::Sessionizer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::io::Read;
use std::path::Path;

fn sample_lines() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gz = std::fs::File::open(root.join("integration-tests/fixtures/sample/clicks-2k.jsonl.gz"))
        .unwrap();
    let mut data = Vec::new();
    flate2::read::MultiGzDecoder::new(gz).read_to_end(&mut data).unwrap();
    // Leave out the one megabyte-sized line so the figure is per typical event.
    data.split(|&b| b == b'\n').filter(|l| l.len() < 16 << 10).map(<[u8]>::to_vec).collect()
}

fn stages(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let extractor = Extractor::load(&root.join("schemas")).unwrap();
    let lines = sample_lines();
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| lines.iter().filter(|l| decode::decode(l).is_ok()).count());
    });
    g.bench_function("decode+extract", |b| {
        b.iter(|| {
            let mut ok = 0;
            for l in &lines {
                let mut slots = Vec::new();
                if let Ok(t) = decode::decode(l) {
                    ok += usize::from(extractor.extract(t, &mut slots).is_ok());
                }
            }
            black_box(ok)
        });
    });
    let events: Vec<(String, i64, Option<u32>)> = lines
        .iter()
        .filter_map(|l| {
            let t = decode::decode(l).ok()?;
            let mut slots = Vec::new();
            let e = extractor.extract(t, &mut slots).ok()?;
            Some((
                e.customer_id.into_owned(),
                e.event_time,
                Some(u32::from(e.kind.0)).filter(|_| e.kind.is_classified()),
            ))
        })
        .collect();
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("sessionize", |b| {
        b.iter(|| {
            let mut s = Sessionizer::new(1_800_000, 7 * 3_600_000);
            let mut out = Vec::new();
            for (c, t, k) in &events {
                s.observe(c, *t, *k, &[]);
            }
            s.close_all(&mut out);
            black_box(out.len())
        });
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
