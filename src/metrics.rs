//! Prometheus metrics, kept in atomics where the events happen and written
//! in the text exposition format for `GET /metrics`. No label ever holds a
//! token or a user id.

use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64, Ordering},
};

/// Counters and histograms of the core; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    messages_created: AtomicU64,
    deliveries: AtomicU64,
    resumes: AtomicU64,
    replayed: AtomicU64,
    resets: AtomicU64,
    open_sse: AtomicI64,
    open_grpc: AtomicI64,
    delivery_latency: Histogram,
    commit_seconds: Histogram,
}

/// A counter kept outside [`Metrics`]: name, help, and values by label set
/// (`reason="expired"`, or empty for none).
pub type Counter<'a> = (&'a str, &'a str, &'a [(&'a str, u64)]);

/// Which door a stream came through.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Sse,
    Grpc,
}

impl Metrics {
    pub fn created(&self, messages: u64, commit_seconds: f64) {
        self.inner
            .messages_created
            .fetch_add(messages, Ordering::Relaxed);
        self.inner.commit_seconds.observe(commit_seconds);
    }

    pub fn delivered(&self, deliveries: u64) {
        self.inner
            .deliveries
            .fetch_add(deliveries, Ordering::Relaxed);
    }

    /// A live message reached a transport `seconds` after its commit.
    pub fn written(&self, seconds: f64) {
        self.inner.delivery_latency.observe(seconds);
    }

    /// Counts a stream that resumed after an id.
    pub fn resumed(&self) {
        self.inner.resumes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts messages read from the database for a resuming stream.
    pub fn replayed(&self, messages: u64) {
        self.inner.replayed.fetch_add(messages, Ordering::Relaxed);
    }

    /// Counts a resume that could not be replayed (an `event: reset`).
    pub fn replay_impossible(&self) {
        self.inner.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an open stream until the returned guard is dropped.
    pub fn stream_opened(&self, transport: Transport) -> OpenStream {
        self.gauge(transport).fetch_add(1, Ordering::Relaxed);
        OpenStream {
            metrics: self.clone(),
            transport,
        }
    }

    fn gauge(&self, transport: Transport) -> &AtomicI64 {
        match transport {
            Transport::Sse => &self.inner.open_sse,
            Transport::Grpc => &self.inner.open_grpc,
        }
    }

    /// The text exposition of these metrics plus `extra` counters owned
    /// elsewhere.
    pub fn render(&self, extra: &[Counter<'_>]) -> String {
        let inner = &self.inner;
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        counter(
            &mut out,
            "herald_messages_created_total",
            "Messages committed.",
            &[("", load(&inner.messages_created))],
        );
        counter(
            &mut out,
            "herald_deliveries_total",
            "Messages queued to live subscriptions.",
            &[("", load(&inner.deliveries))],
        );
        counter(
            &mut out,
            "herald_resumes_total",
            "Subscriptions that resumed after an id.",
            &[("", load(&inner.resumes))],
        );
        counter(
            &mut out,
            "herald_replayed_messages_total",
            "Messages replayed to resuming subscriptions.",
            &[("", load(&inner.replayed))],
        );
        counter(
            &mut out,
            "herald_resets_total",
            "Resumes that could not be replayed.",
            &[("", load(&inner.resets))],
        );
        for (name, help, values) in extra {
            counter(&mut out, name, help, values);
        }
        let open = |gauge: &AtomicI64| gauge.load(Ordering::Relaxed).max(0) as u64;
        out.push_str("# HELP herald_subscriptions_open Open message streams.\n# TYPE herald_subscriptions_open gauge\n");
        out.push_str(&format!(
            "herald_subscriptions_open{{transport=\"sse\"}} {}\n",
            open(&inner.open_sse)
        ));
        out.push_str(&format!(
            "herald_subscriptions_open{{transport=\"grpc\"}} {}\n",
            open(&inner.open_grpc)
        ));
        inner.delivery_latency.render(
            &mut out,
            "herald_delivery_latency_seconds",
            "From commit to the transport writing a live message.",
        );
        inner.commit_seconds.render(
            &mut out,
            "herald_db_commit_seconds",
            "Database time of one group commit.",
        );
        out
    }
}

/// Writes one counter, with label sets given as `transport="sse"` text (or
/// empty for none).
fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for (labels, value) in values {
        match labels.is_empty() {
            true => out.push_str(&format!("{name} {value}\n")),
            false => out.push_str(&format!("{name}{{{labels}}} {value}\n")),
        }
    }
}

/// Decrements its stream gauge when dropped.
pub struct OpenStream {
    metrics: Metrics,
    transport: Transport,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the histogram buckets, in seconds.
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of seconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(bucket) = BOUNDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            out.push_str(&format!("{name}_bucket{{le=\"{bound}\"}} {cumulative}\n"));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {count}\n"));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {count}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let metrics = Metrics::default();
        metrics.written(0.0004);
        metrics.written(0.003);
        metrics.written(9.0);
        let text = metrics.render(&[]);
        assert!(text.contains("herald_delivery_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("herald_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("herald_delivery_latency_seconds_count 3\n"));
    }

    #[test]
    fn a_stream_gauge_follows_its_guard() {
        let metrics = Metrics::default();
        let guard = metrics.stream_opened(Transport::Sse);
        assert!(
            metrics
                .render(&[])
                .contains("herald_subscriptions_open{transport=\"sse\"} 1\n")
        );
        drop(guard);
        assert!(
            metrics
                .render(&[])
                .contains("herald_subscriptions_open{transport=\"sse\"} 0\n")
        );
    }
}
