//! A lean SSE subscriber for load tests: raw HTTP/1.1 over TCP, one task per
//! connection, counting events and reading the send time that the tool put
//! in each message (`t=<microseconds>`), so herald's JSON and nchan's raw
//! bodies are measured the same way.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
    sync::Notify,
};

/// What every subscriber reports into.
#[derive(Default)]
pub struct Tally {
    pub connected: AtomicUsize,
    pub events: AtomicUsize,
    pub latencies: Mutex<Vec<u64>>,
    /// `(n, sent at, latency)` of messages that carry a sequence number
    /// (`n=<number>`, as `hostile` sends them).
    pub seen: Mutex<Vec<(u64, u64, u64)>>,
    /// Messages that say `FORGED`: a broker forgery that got through.
    pub forged: AtomicUsize,
    pub changed: Notify,
}

impl Tally {
    /// Counts one message whose text (JSON or raw) is `line`, received at
    /// `now`; returns whether it carried a send time.
    pub fn record(&self, line: &[u8], now: u64) -> bool {
        if find(line, b"FORGED").is_some() {
            self.forged.fetch_add(1, Ordering::Relaxed);
        }
        let Some(sent) = number_after(line, b"t=") else {
            // A reaction event carries no send time: counted, not timed.
            if find(line, b"\"emoji\"").is_some() {
                self.events.fetch_add(1, Ordering::Relaxed);
                self.changed.notify_waiters();
            }
            return false;
        };
        let latency = now.saturating_sub(sent);
        self.events.fetch_add(1, Ordering::Relaxed);
        lock(&self.latencies).push(latency);
        if let Some(n) = number_after(line, b"n=") {
            lock(&self.seen).push((n, sent, latency));
        }
        self.changed.notify_waiters();
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens `GET path` on `addr` as an event stream and tallies what arrives
/// until the connection ends.
pub async fn subscribe(addr: SocketAddr, path: String, tally: Arc<Tally>) -> std::io::Result<()> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let mut stream = socket.connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let mut headers_done = false;
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buffer[..read]);
        if !headers_done {
            let Some(end) = find(&pending, b"\r\n\r\n") else {
                continue;
            };
            pending.drain(..end + 4);
            headers_done = true;
            tally.connected.fetch_add(1, Ordering::Relaxed);
            tally.changed.notify_waiters();
        }
        let now = now_micros();
        while let Some(end) = find(&pending, b"\n") {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.starts_with(b"data:") {
                tally.record(&line, now);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The number after the first `label` in `line`.
fn number_after(line: &[u8], label: &[u8]) -> Option<u64> {
    let start = find(line, label)? + label.len();
    let digits = line[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&line[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}
