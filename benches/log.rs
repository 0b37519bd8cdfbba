//! Storage engine micro-benchmarks: appending batches to a [`PartitionLog`] (page cache only,
//! no fsync) and reading them back (`read_slice` + `read` + decode of every record).
//!
//! Run: `cargo bench --bench log`. Kept short (small samples) because the machine is shared;
//! end-to-end HTTP figures come from `cargo bench --bench loadgen`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tidelog::log::batch::{BatchBuilder, BatchView, ProducerInfo, RecordRef};
use tidelog::log::{LogConfig, Offset, PartitionLog};

const RECORDS_PER_BATCH: usize = 1_000;
const VALUE_BYTES: usize = 100;
/// Batches written before the read benchmark, so reads cross index entries and segments.
const BATCHES_TO_READ: u64 = 200;

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024 * 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn build_batch(value: &[u8]) -> Vec<u8> {
    let record = RecordRef {
        timestamp_ms: 1_700_000_000_000,
        key: None,
        key_is_utf8: false,
        value: Some(value),
        value_is_json: false,
        headers: &[],
    };
    let mut builder = BatchBuilder::with_capacity(RECORDS_PER_BATCH * record.encoded_len());
    for _ in 0..RECORDS_PER_BATCH {
        builder.push(&record);
    }
    builder.finish(ProducerInfo::NONE, None)
}

fn bench_encode(c: &mut Criterion) {
    let value = vec![b'x'; VALUE_BYTES];
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("batch_1000x100B", |b| {
        b.iter(|| black_box(build_batch(black_box(&value))))
    });
    group.finish();
}

fn bench_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, _) =
        PartitionLog::open(dir.path(), log_config(), false, 0).expect("open the log");
    let template = build_batch(&[b'x'; VALUE_BYTES]);
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.bench_function("batch_1000x100B", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |batch| log.append(batch, 0, 1_700_000_000_000).expect("append"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, _) =
        PartitionLog::open(dir.path(), log_config(), false, 0).expect("open the log");
    let template = build_batch(&[b'x'; VALUE_BYTES]);
    for _ in 0..BATCHES_TO_READ {
        log.append(&mut template.clone(), 0, 1_700_000_000_000)
            .expect("append");
    }
    let end = log.log_end_offset();
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    let mut offset = Offset(0);
    group.bench_function("batch_1000x100B_read_slice_decode", |b| {
        b.iter(|| {
            let slice = log
                .read_slice(offset)
                .expect("segment loads")
                .expect("offset below the log end");
            let bytes = slice.read(template.len() as u64).expect("read");
            let view = BatchView::parse(&bytes).expect("a whole batch");
            let mut value_bytes = 0usize;
            for record in view.records() {
                value_bytes += record.expect("record decodes").value.map_or(0, <[u8]>::len);
            }
            offset = Offset(view.header.next_offset() % end.0);
            black_box(value_bytes)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_encode, bench_append, bench_read
}
criterion_main!(benches);
