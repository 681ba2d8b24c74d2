//! How the server's memory goes back to the system after a burst, on Linux
//! with glibc (elsewhere both functions do nothing). Measured in
//! BENCHMARKS.md: the hostile scenario's RSS after an attack, and the cost
//! at a steady 2,000 messages/s.
//!
//! glibc gives each thread that allocates an arena of its own, and frees
//! the top of a thread's arena only in that arena's own `free`, once the
//! top is larger than the trim threshold; `malloc_trim` gives back the free
//! pages inside every arena but never a thread arena's top. So a burst
//! leaves, in each thread's arena that it used, the arena's top and the
//! pages that blocks still in use sit on (no trim can give those back).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::time::Duration;

/// How often freed memory is handed back to the system: every second, so
/// what a burst freed goes back within a second of the burst's end (every
/// 5 s, a reading 6 s after an attack still found 3.3 MB that the next
/// trim gave back).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The most free memory an arena's top keeps: glibc's own starting value,
/// 128 KiB. glibc raises it to twice the largest block it has mapped and
/// freed (up to 64 MiB), so after a burst of large buffers every thread's
/// arena could keep that much; fixed, it stays at 128 KiB, and blocks of
/// 128 KiB or more stay mapped on their own (the threshold that glibc
/// would raise with it stays put too).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 128 * 1024;

/// Sets glibc's trim threshold (see [`TRIM_THRESHOLD`]) and no padding
/// above an arena's top, before the server starts its work. Measured
/// (BENCHMARKS.md, ninth pass), with the readers as they were then: one
/// hostile round left +14% to +19% of RSS instead of +18% to +29%, at the
/// same CPU and throughput in the `direct` benchmark.
#[allow(unsafe_code)]
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and may be called from any thread;
    // it only changes glibc's parameters for later calls.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

/// Hands memory that glibc's allocator keeps after a burst (a flood of
/// connections, a storm of replays) back to the system every second, so
/// the server's footprint returns to what it serves now; a trim of an idle
/// heap costs microseconds.
#[allow(unsafe_code)]
pub async fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        // On a blocking thread: under attack a trim walks every arena for
        // 0.6 to 3.6 ms (measured), which on a runtime worker would delay
        // every task queued behind it.
        let trimmed = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim takes no pointers and may be called at
            // any time from any thread.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        let _ = trimmed.await;
    }
}
