//! Prometheus metrics, kept where the events happen (prometheus-client's
//! counters, gauges and histograms) and written by prometheus-client in the
//! OpenMetrics text format for `GET /metrics`. No label ever holds a token
//! or a user id.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use std::{fmt::Write as _, sync::Arc};

/// Registers a counter read now: the parts keep their counts in atomics and
/// register them at each scrape (a registry of a few entries, built in
/// microseconds).
pub fn counted(registry: &mut Registry, name: &str, help: &str, value: u64) {
    registry.register(name, help, ConstCounter::new(value));
}

/// Counters and histograms of the core; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    messages_created: Counter,
    deliveries: Counter,
    resumes: Counter,
    replayed: Counter,
    resets: Counter,
    open: Family<Door, Gauge>,
    delivery_latency: Histogram,
    commit_seconds: Histogram,
    admin_actions: Family<AdminAction, Counter>,
}

/// An Admin rpc, by name (`publish`, `ban`, ...): never the key or the user.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminAction {
    action: &'static str,
}

/// Which door a stream came through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Grpc,
}

/// `sse` and `grpc`, as label values.
impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Transport::Sse => "sse",
            Transport::Grpc => "grpc",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Door {
    transport: Transport,
}

/// Upper bounds of the histogram buckets, in seconds.
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                messages_created: Counter::default(),
                deliveries: Counter::default(),
                resumes: Counter::default(),
                replayed: Counter::default(),
                resets: Counter::default(),
                open: Family::default(),
                delivery_latency: Histogram::new(BOUNDS),
                commit_seconds: Histogram::new(BOUNDS),
                admin_actions: Family::default(),
            }),
        }
    }
}

impl Metrics {
    pub fn created(&self, messages: u64, commit_seconds: f64) {
        self.inner.messages_created.inc_by(messages);
        self.inner.commit_seconds.observe(commit_seconds);
    }

    pub fn delivered(&self, deliveries: u64) {
        self.inner.deliveries.inc_by(deliveries);
    }

    /// A live message reached a transport `seconds` after its commit.
    pub fn written(&self, seconds: f64) {
        self.inner.delivery_latency.observe(seconds.max(0.0));
    }

    /// Counts an Admin action done.
    pub fn admin_action(&self, action: &'static str) {
        self.inner
            .admin_actions
            .get_or_create(&AdminAction { action })
            .inc();
    }

    /// Counts a stream that resumed after an id.
    pub fn resumed(&self) {
        self.inner.resumes.inc();
    }

    /// Counts messages read from the database for a resuming stream.
    pub fn replayed(&self, messages: u64) {
        self.inner.replayed.inc_by(messages);
    }

    /// Counts a resume that could not be replayed (an `event: reset`).
    pub fn replay_impossible(&self) {
        self.inner.resets.inc();
    }

    /// Counts an open stream until the returned guard is dropped.
    pub fn stream_opened(&self, transport: Transport) -> OpenStream {
        let gauge = self.inner.open.get_or_create(&Door { transport }).clone();
        gauge.inc();
        OpenStream { gauge }
    }

    /// Registers the core's metrics (names under the registry's prefix;
    /// counters get their `_total` when written).
    pub fn register(&self, registry: &mut Registry) {
        let inner = &self.inner;
        registry.register(
            "messages_created",
            "Messages committed",
            inner.messages_created.clone(),
        );
        registry.register(
            "deliveries",
            "Messages queued to live subscriptions",
            inner.deliveries.clone(),
        );
        registry.register(
            "resumes",
            "Subscriptions that resumed after an id",
            inner.resumes.clone(),
        );
        registry.register(
            "replayed_messages",
            "Messages replayed to resuming subscriptions",
            inner.replayed.clone(),
        );
        registry.register(
            "resets",
            "Resumes that could not be replayed",
            inner.resets.clone(),
        );
        registry.register(
            "admin_actions",
            "Admin service actions done, by action",
            inner.admin_actions.clone(),
        );
        // Both doors are always written, at 0 before their first stream.
        for transport in [Transport::Sse, Transport::Grpc] {
            drop(inner.open.get_or_create(&Door { transport }));
        }
        registry.register(
            "subscriptions_open",
            "Open message streams",
            inner.open.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From commit to the transport writing a live message",
            inner.delivery_latency.clone(),
        );
        registry.register(
            "db_commit_seconds",
            "Database time of one group commit",
            inner.commit_seconds.clone(),
        );
    }
}

/// Decrements its stream gauge when dropped.
pub struct OpenStream {
    gauge: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(metrics: &Metrics) -> String {
        let mut registry = Registry::with_prefix("herald");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let metrics = Metrics::default();
        metrics.written(0.0004);
        metrics.written(0.003);
        metrics.written(9.0);
        let text = render(&metrics);
        assert!(
            text.contains("herald_delivery_latency_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_latency_seconds_count 3\n"),
            "{text}"
        );
    }

    #[test]
    fn a_stream_gauge_follows_its_guard() {
        let metrics = Metrics::default();
        let guard = metrics.stream_opened(Transport::Sse);
        assert!(render(&metrics).contains("herald_subscriptions_open{transport=\"sse\"} 1\n"));
        drop(guard);
        assert!(render(&metrics).contains("herald_subscriptions_open{transport=\"sse\"} 0\n"));
        assert!(render(&metrics).contains("herald_subscriptions_open{transport=\"grpc\"} 0\n"));
    }
}
