//! The pure part of the per-line work (decode, extract) on several threads, handed back in input
//! order.
//!
//! A chunk of whole lines is cut into slices of whole lines. Helper threads and the calling
//! thread claim slices in order from a shared counter and prepare each into a `Vec`; the calling
//! thread applies the slices strictly in order, and whenever the next one is not ready yet it
//! prepares an unclaimed one itself rather than wait. So the work balances itself between the
//! threads, and what `apply` sees — the same items, in the same order — does not depend on the
//! number of workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Bytes per slice: large enough that claiming and handing over a slice costs nothing next to
/// it, small enough that the thread that applies seldom waits at the end of a chunk.
pub const SLICE_BYTES: usize = 64 << 10;

/// The number of workers to use when none is set: the cores this process may run on (its CPU
/// affinity, e.g. under `taskset`, counts).
#[must_use]
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Cuts `data` into slices of whole lines of about `target` bytes each: every slice but the
/// last ends just after a `\n`, so iterating lines slice by slice gives the lines of `data`.
#[must_use]
pub fn slices(data: &[u8], target: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(data.len() / target.max(1) + 1);
    let mut start = 0;
    while start < data.len() {
        let from = (start + target.max(1)).min(data.len());
        let end = memchr::memchr(b'\n', &data[from - 1..]).map_or(data.len(), |i| from + i);
        out.push(&data[start..end]);
        start = end;
    }
    out
}

/// Prepares every slice of `data` (see [`slices`]) with `prepare`, on `workers` threads (this
/// one included), and calls `apply` on each slice's items in slice order, on this thread.
///
/// `prepare` appends a slice's items to the `Vec` it is given (empty). A helper that panics
/// does not lose a slice: this thread prepares it again, and the panic surfaces when the
/// helpers are joined.
pub fn in_order<'a, T, P, A>(
    data: &'a [u8],
    workers: usize,
    target: usize,
    prepare: P,
    mut apply: A,
) where
    T: Send,
    P: Fn(&'a [u8], &mut Vec<T>) + Sync,
    A: FnMut(Vec<T>),
{
    let parts = slices(data, target);
    if workers <= 1 || parts.len() <= 1 {
        for part in parts {
            let mut items = Vec::new();
            prepare(part, &mut items);
            apply(items);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let claim = || next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<(usize, Vec<T>)>();
    std::thread::scope(|scope| {
        for _ in 1..workers.min(parts.len()) {
            let tx = tx.clone();
            let (parts, prepare, claim) = (&parts, &prepare, &claim);
            scope.spawn(move || {
                loop {
                    let i = claim();
                    let Some(part) = parts.get(i) else { break };
                    let mut items = Vec::new();
                    prepare(part, &mut items);
                    if tx.send((i, items)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut ready: Vec<Option<Vec<T>>> = parts.iter().map(|_| None).collect();
        for i in 0..parts.len() {
            let items = loop {
                if let Some(items) = ready[i].take() {
                    break items;
                }
                if let Ok((j, items)) = rx.try_recv() {
                    ready[j] = Some(items);
                    continue;
                }
                // Not ready: prepare the next unclaimed slice here rather than wait.
                let j = claim();
                if let Some(part) = parts.get(j) {
                    let mut items = Vec::new();
                    prepare(part, &mut items);
                    ready[j] = Some(items);
                    continue;
                }
                if let Ok((j, items)) = rx.recv() {
                    ready[j] = Some(items);
                } else {
                    // Every helper is gone without sending it: one panicked.
                    let mut items = Vec::new();
                    prepare(parts[i], &mut items);
                    break items;
                }
            };
            apply(items);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
            out.push(&data[start..end]);
            start = end + 1;
        }
        out
    }

    #[test]
    fn slices_hold_the_same_lines_as_the_whole() {
        let data = b"a\nbb\n\nccc\ndddd\n\n\ne\nlast without newline";
        for target in 1..=data.len() + 1 {
            let parts = slices(data, target);
            assert_eq!(parts.concat(), data, "target {target}");
            let by_part: Vec<&[u8]> = parts.iter().flat_map(|p| lines(p)).collect();
            assert_eq!(by_part, lines(data), "target {target}");
            for p in &parts[..parts.len() - 1] {
                assert_eq!(p.last(), Some(&b'\n'), "target {target}");
            }
        }
        assert!(slices(b"", 4).is_empty());
        assert_eq!(slices(b"\n\n", 1), [b"\n", b"\n"]);
    }

    #[test]
    fn items_come_back_in_order_whatever_the_workers() {
        let data: Vec<u8> = (0..5000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        let prepare = |part: &[u8], out: &mut Vec<u64>| {
            for l in lines(part) {
                let n: u64 = std::str::from_utf8(l).unwrap().parse().unwrap();
                // Uneven work, so threads overtake each other.
                if n.is_multiple_of(7) {
                    std::thread::yield_now();
                }
                out.push(n);
            }
        };
        for workers in [1, 2, 3, 8] {
            let mut seen = Vec::new();
            in_order(&data, workers, 37, prepare, |items| seen.extend(items));
            assert_eq!(seen, (0..5000).collect::<Vec<u64>>(), "{workers} workers");
        }
    }

    #[test]
    fn a_helper_that_panics_loses_no_slice_and_its_panic_surfaces() {
        let data: Vec<u8> = (0..200).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        let main = std::thread::current().id();
        let failed = std::sync::atomic::AtomicBool::new(false);
        let seen = std::sync::Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_order(
                &data,
                2,
                8,
                |part: &[u8], out: &mut Vec<usize>| {
                    if std::thread::current().id() == main {
                        // Leave the helper a slice to fail on.
                        let t = std::time::Instant::now();
                        while !failed.load(Ordering::SeqCst) && t.elapsed().as_secs() < 10 {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    } else {
                        failed.store(true, Ordering::SeqCst);
                        panic!("helper fails");
                    }
                    out.push(part.len());
                },
                |items| seen.lock().unwrap().extend(items),
            );
        }));
        assert!(result.is_err(), "the helper's panic is not swallowed");
        let total: usize = seen.lock().unwrap().iter().sum();
        assert_eq!(total, data.len(), "every slice was applied, in spite of the helper");
    }
}
