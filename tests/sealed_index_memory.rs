//! Issue 8 item 7: a sealed segment's indexes are not copied to the heap. They were, at
//! about 0.5% of the bytes stored, so a large log pinned memory for indexes it rarely read.
//! Now a sealed index is its file, mapped read-only while the segment is loaded.
//!
//! This binary counts the heap's live bytes with a global allocator of its own. It writes a
//! log of many small sealed segments with an index entry for every batch, then reopens it
//! and reads from every segment. The heap may not grow by more than a fraction of the
//! indexes' bytes on disk. The test is alone in its binary, so nothing else allocates
//! meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tidelog::log::batch::{BatchBuilder, ProducerInfo, RecordRef};
use tidelog::log::{LogConfig, Offset, PartitionLog};

/// Live heap bytes of this process, as the allocator sees them.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call forwards to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SEGMENT_BYTES: u64 = 256 * 1024;
const SEGMENTS: u64 = 40;

fn one_record_batch(value: &[u8], timestamp_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(value.len() + 64);
    builder.push(&RecordRef {
        timestamp_ms,
        key: None,
        key_is_utf8: true,
        value: Some(value),
        value_is_json: false,
        headers: &[],
    });
    builder.finish(ProducerInfo::NONE, None)
}

/// Bytes of every index file (`*.index`, `*.timeindex`) in `dir`.
fn index_bytes_on_disk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".index") || name.ends_with(".timeindex")
        })
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn sealed_segment_indexes_are_mapped_not_copied_to_the_heap() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: SEGMENT_BYTES,
        segment_ms: i64::MAX,
        // An index entry for every batch: the indexes are as large as they get.
        index_interval_bytes: 1,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    };
    let value = [b'v'; 100];
    let (mut log, _) = PartitionLog::open(dir.path(), config, false, 0).unwrap();
    let mut timestamp_ms = 1_000;
    while (log.segment_count() as u64) <= SEGMENTS {
        let mut batch = one_record_batch(&value, timestamp_ms);
        log.append(&mut batch, 0, timestamp_ms).unwrap();
        timestamp_ms += 1;
    }
    log.close().unwrap();
    let end = log.log_end_offset();
    drop(log);
    let index_bytes = index_bytes_on_disk(dir.path());
    assert!(
        index_bytes > 1_000_000,
        "the log should hold over 1 MB of indexes to measure against: {index_bytes}"
    );

    let before = LIVE.load(Ordering::Relaxed);
    let (mut log, _) = PartitionLog::open(dir.path(), config, true, timestamp_ms).unwrap();
    assert!(log.segment_count() as u64 > SEGMENTS);
    // A read from the middle of every segment: each is loaded (its indexes mapped) and looked
    // up, the least recently used unloaded past the per-partition bound.
    let per_segment = end.0 / log.segment_count() as u64;
    for s in 0..log.segment_count() as u64 {
        let offset = Offset(s * per_segment + per_segment / 2);
        let slice = log.read_slice(offset).unwrap().expect("a slice");
        assert!(slice.len > 0);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "{} segments, {index_bytes} bytes of index files, heap grew by {grown} bytes \
         after opening and reading every segment",
        log.segment_count()
    );
    assert!(
        (grown as u64) < index_bytes / 4,
        "the heap grew by {grown} bytes for {index_bytes} bytes of sealed indexes: \
         the indexes are copied to the heap"
    );
    drop(log);
}
