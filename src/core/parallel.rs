//! Work split over the cores with results in a fixed order, so that outputs do not depend on
//! the number of threads.

use crate::error::Result;

/// Runs `f` on every item, in contiguous chunks, one per available core; results keep the
/// items' order. `done` is called after each item (for progress bars).
pub fn map_in_order<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> Result<T> + Sync) -> Result<Vec<T>> {
    map_in_order_with_progress(items, f, &|| {})
}

pub fn map_in_order_with_progress<I: Sync, T: Send>(
    items: &[I],
    f: impl Fn(&I) -> Result<T> + Sync,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<T>> {
    map_in_order_on(available_threads(), items, f, done)
}

/// The number of cores this process may use.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// [`map_in_order_with_progress`] on at most `threads` worker threads (at least one). Each
/// worker runs a contiguous chunk of items, so every item is computed by the same code whatever
/// the count, and the results come back in the items' order.
pub fn map_in_order_on<I: Sync, T: Send>(
    threads: usize,
    items: &[I],
    f: impl Fn(&I) -> Result<T> + Sync,
    done: &(dyn Fn() + Sync),
) -> Result<Vec<T>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let threads = threads.clamp(1, items.len());
    let chunk = items.len().div_ceil(threads);
    let parts: Vec<Result<Vec<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                let f = &f;
                s.spawn(move || {
                    c.iter()
                        .map(|item| {
                            let r = f(item);
                            done();
                            r
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}
