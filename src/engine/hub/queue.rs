//! A subscription's bounded queue: the hub pushes without waiting, one
//! subscriber takes. Bounded by count and by bytes; a push that finds it
//! full empties and closes it at once, so a subscriber that fell behind
//! gives its whole backlog back the moment it is dropped (it resumes from
//! the database, losing nothing) instead of holding it until it reads.
//!
//! Why not tokio's mpsc: its channel is built for many senders and pads its
//! parts to cache lines, 800 bytes per subscription before the first
//! message (512 for the channel, 288 for its first block). One hub and one
//! reader need a lock, a deque and a waker: about 100 bytes, and the deque
//! holds memory only while messages wait. Every parked stream pays this,
//! so it decides much of an idle stream's cost (BENCHMARKS.md).

use futures_util::task::AtomicWaker;
use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{Arc, Mutex, MutexGuard},
    task::Poll,
};

/// A deque that has grown past this while a reader fell behind gives its
/// memory back once emptied.
const KEEP_CAPACITY: usize = 16;

/// Creates a queue of at most `capacity` items and `max_bytes` bytes (as
/// the pusher counts them; one item always fits).
pub fn queue<T>(capacity: usize, max_bytes: usize) -> (Pusher<T>, Taker<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(Items {
            deque: VecDeque::new(),
            bytes: 0,
            closed: false,
        }),
        waker: AtomicWaker::new(),
    });
    let pusher = Pusher {
        shared: shared.clone(),
        capacity,
        max_bytes,
    };
    (pusher, Taker { shared })
}

struct Shared<T> {
    items: Mutex<Items<T>>,
    /// The taker waiting for an item or the close, if any.
    waker: AtomicWaker,
}

struct Items<T> {
    /// Each item with the bytes it was pushed as.
    deque: VecDeque<(T, usize)>,
    bytes: usize,
    /// The pusher is gone: once the deque is empty, nothing more comes.
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Items<T>> {
        // A deque and a flag: a panicking holder leaves nothing half-done.
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hub's end. Dropping it closes the queue.
pub struct Pusher<T> {
    shared: Arc<Shared<T>>,
    capacity: usize,
    max_bytes: usize,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl<T> Pusher<T> {
    /// Queues `item`, counted as `bytes`, unless that would take the
    /// queue past its count or its bytes. A refused push empties the queue
    /// and closes it: the taker gets [`Taken::Closed`] next, and what was
    /// queued is freed now.
    pub fn try_push(&self, item: T, bytes: usize) -> Result<(), Full> {
        let dropped = {
            let mut items = self.shared.lock();
            let over_bytes = !items.deque.is_empty() && items.bytes + bytes > self.max_bytes;
            if items.deque.len() >= self.capacity || over_bytes {
                items.closed = true;
                items.bytes = 0;
                Some(std::mem::take(&mut items.deque))
            } else {
                items.bytes += bytes;
                items.deque.push_back((item, bytes));
                None
            }
        };
        self.shared.waker.wake();
        match dropped {
            // Freed outside the lock.
            Some(backlog) => {
                drop(backlog);
                Err(Full)
            }
            None => Ok(()),
        }
    }
}

impl<T> Drop for Pusher<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.waker.wake();
    }
}

/// The subscriber's end.
pub struct Taker<T> {
    shared: Arc<Shared<T>>,
}

/// What the taker finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    Item(T),
    /// Empty, and the pusher is gone.
    Closed,
    /// Empty for now.
    Empty,
}

impl<T> Taker<T> {
    /// The next item, without waiting.
    pub fn try_take(&mut self) -> Taken<T> {
        let mut items = self.shared.lock();
        match items.deque.pop_front() {
            Some((item, bytes)) => {
                items.bytes -= bytes;
                if items.deque.is_empty() && items.deque.capacity() > KEEP_CAPACITY {
                    items.deque = VecDeque::new();
                }
                Taken::Item(item)
            }
            None if items.closed => Taken::Closed,
            None => Taken::Empty,
        }
    }

    /// The next item, or `None` once the queue is empty and closed.
    /// Cancel-safe: an item is taken only when this returns it.
    pub async fn take(&mut self) -> Option<T> {
        poll_fn(|context| {
            // Registered before the second look, so a push between the two
            // wakes this task instead of being missed.
            for attempt in 0..2 {
                match self.try_take() {
                    Taken::Item(item) => return Poll::Ready(Some(item)),
                    Taken::Closed => return Poll::Ready(None),
                    Taken::Empty if attempt == 0 => self.shared.waker.register(context.waker()),
                    Taken::Empty => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{Full, Taken, queue};

    #[tokio::test]
    async fn items_come_in_order_then_the_close() {
        let (pusher, mut taker) = queue(2, 100);
        assert_eq!(pusher.try_push(1, 1), Ok(()));
        assert_eq!(pusher.try_push(2, 1), Ok(()));
        assert_eq!(taker.take().await, Some(1));
        assert_eq!(pusher.try_push(3, 1), Ok(()));
        drop(pusher);
        assert_eq!(taker.try_take(), Taken::Item(2));
        assert_eq!(taker.take().await, Some(3));
        assert_eq!(taker.take().await, None);
    }

    #[test]
    fn a_push_past_the_count_frees_the_backlog_and_closes_the_queue() {
        let item = std::sync::Arc::new(0);
        let (pusher, mut taker) = queue(2, usize::MAX);
        assert_eq!(pusher.try_push(item.clone(), 1), Ok(()));
        assert_eq!(pusher.try_push(item.clone(), 1), Ok(()));
        assert_eq!(pusher.try_push(item.clone(), 1), Err(Full));
        assert_eq!(
            std::sync::Arc::strong_count(&item),
            1,
            "the backlog is freed"
        );
        assert_eq!(taker.try_take(), Taken::Closed);
    }

    #[test]
    fn a_push_past_the_bytes_is_refused_but_one_large_item_fits() {
        let (pusher, mut taker) = queue(100, 10);
        assert_eq!(pusher.try_push(1, 50), Ok(()), "one item always fits");
        assert_eq!(taker.try_take(), Taken::Item(1));
        assert_eq!(pusher.try_push(2, 6), Ok(()));
        assert_eq!(pusher.try_push(3, 4), Ok(()));
        assert_eq!(pusher.try_push(4, 1), Err(Full));
        assert_eq!(taker.try_take(), Taken::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_taker_is_woken_by_a_push_from_another_thread() {
        let (pusher, mut taker) = queue(20_000, usize::MAX);
        let pushes = std::thread::spawn(move || {
            for n in 0..10_000 {
                pusher.try_push(n, 1).unwrap();
                if n % 100 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        // A lost wakeup fails here instead of hanging the suite.
        let patience = std::time::Duration::from_secs(20);
        let takes = async {
            for n in 0..10_000 {
                assert_eq!(taker.take().await, Some(n));
            }
            assert_eq!(taker.take().await, None);
        };
        tokio::time::timeout(patience, takes)
            .await
            .expect("every push wakes the taker");
        pushes.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taker_waiting_on_an_empty_queue_is_woken_by_every_push() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Ping-pong: each push comes the moment the taker has taken the
        // last one (the pusher spins on a counter, so it is not a thread
        // wake-up late), while the taker is about to wait, or waiting, on an
        // empty queue: the moment a lost wakeup needs, 20,000 times.
        const ROUNDS: usize = 20_000;
        let (pusher, mut taker) = queue(16, usize::MAX);
        let taken = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = taken.clone();
        let pushes = std::thread::spawn(move || {
            for n in 0..ROUNDS {
                pusher.try_push(n, 1).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while seen.load(Ordering::Acquire) <= n && std::time::Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            }
        });
        let takes = async {
            for n in 0..ROUNDS {
                assert_eq!(taker.take().await, Some(n));
                taken.store(n + 1, Ordering::Release);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), takes)
            .await
            .expect("every push wakes the waiting taker");
        pushes.join().unwrap();
    }

    #[test]
    fn an_emptied_deque_gives_back_what_a_backlog_grew() {
        let (pusher, mut taker) = queue(1_000, usize::MAX);
        for n in 0..100 {
            pusher.try_push(n, 1).unwrap();
        }
        while let Taken::Item(_) = taker.try_take() {}
        assert_eq!(taker.shared.lock().deque.capacity(), 0);
    }
}
