//! Background compaction: once the subject overlay of the published snapshot has grown, it is
//! folded into a new base on a thread of its own and swapped in (same revision, same
//! decisions), so that subject writes stay cheap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::LiveState;

/// Subject overlay size at which it is folded into the base.
const COMPACT_AT: usize = 4096;

/// At most one fold at a time.
#[derive(Default)]
pub(super) struct Compaction {
    running: Arc<AtomicBool>,
}

impl Compaction {
    /// Runs `fold` on a new thread unless one is running; `None` when one is. The mark is
    /// cleared when the thread ends, by returning or by unwinding: a fold that panics never
    /// stops later ones.
    pub(super) fn start(&self, fold: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let running = Running(Arc::clone(&self.running));
        Some(std::thread::spawn(move || {
            let _running = running;
            fold();
        }))
    }
}

/// Marks a fold as running; dropping it (when the fold's thread ends, by returning or by
/// unwinding) clears the mark.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl LiveState {
    /// Starts a fold of the published snapshot's subject overlay once it has grown.
    pub(super) fn maybe_compact(self: &Arc<Self>) {
        let snapshot = self.published.load().snapshot.clone();
        if snapshot.subject_overlay_len() < COMPACT_AT {
            return;
        }
        let live = Arc::clone(self);
        let _ = self.compaction.start(move || {
            let compacted = snapshot.compact_subjects();
            // Under the writer lock: no write publishes between the load and the swap.
            let _writer = live.lock();
            let current = live.published.load_full();
            if let Some(next) = current.snapshot.with_compacted(&compacted) {
                let mut next = current.with_snapshot(next);
                next.published_at = current.published_at;
                live.published.replace_quietly(next);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_fold_that_panics_does_not_stop_the_next_fold() {
        let compaction = Compaction::default();
        let first = compaction
            .start(|| panic!("a fold that fails"))
            .expect("nothing runs yet");
        assert!(first.join().is_err(), "the fold panicked");
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let second = compaction
            .start(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .expect("the panicked fold no longer counts as running");
        second.join().expect("the next fold completes");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the next fold ran");
    }

    #[test]
    fn one_fold_at_a_time() {
        let compaction = Compaction::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let running = compaction
            .start(move || {
                let _ = rx.recv();
            })
            .expect("first fold starts");
        assert!(
            compaction.start(|| {}).is_none(),
            "a second fold waits for the first"
        );
        drop(tx);
        running.join().expect("first fold ends");
        compaction
            .start(|| {})
            .expect("starts again")
            .join()
            .expect("ends");
    }
}
