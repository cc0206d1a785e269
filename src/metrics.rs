//! Prometheus metrics (SPEC §10): the registry of every counter the service exports and the
//! plain-HTTP listener that serves them in text format on `metrics.listen` (loopback). Labels
//! carry reasons, purposes and results, never personal data.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Why a call is discarded before storage (SPEC §5.1's `reason`).
pub const DISCARD_REASONS: [&str; 3] = ["caller_objection", "call_objection", "deleted"];

/// Why a recording is deleted: its retention ended, its caller objected (registry or during the
/// call), or the DPO erased it.
pub const PURGE_REASONS: [&str; 4] = ["retention", "objection", "call_objection", "erasure"];

/// What became of a receiver's frame (`alarms::receiver`'s counts).
pub const ALARM_FRAME_RESULTS: [&str; 5] = ["ack", "nak", "ignored", "duplicate", "overflow"];

/// Every metric of the process. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    pub ingested: Counter,
    pub discarded: Family<Labels, Counter>,
    pub quarantined: Counter,
    purged: Family<Labels, Counter>,
    pub holds_active: Gauge,
    pub audio_reads: Family<Labels, Counter>,
    pub alarm_frames: Family<Labels, Counter>,
    pub receivers_connected: Gauge,
    pub receivers_silent: Gauge,
    pub alarm_events_waiting: Gauge,
    pub recordings_missing: Gauge,
    pub requests: Family<Labels, Counter>,
    pub request_duration: HistogramFamily,
    tls_failures: Family<Labels, Counter>,
}

/// Why a connection ended before its TLS handshake completed.
pub const TLS_FAILURE_REASONS: [&str; 4] = ["refused", "closed", "timeout", "shed"];

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("callguard");
        let ingested = Counter::default();
        let discarded = Family::<Labels, Counter>::default();
        let quarantined = Counter::default();
        let purged = Family::<Labels, Counter>::default();
        let holds_active = Gauge::default();
        let audio_reads = Family::<Labels, Counter>::default();
        let alarm_frames = Family::<Labels, Counter>::default();
        let receivers_connected = Gauge::default();
        let receivers_silent = Gauge::default();
        let alarm_events_waiting = Gauge::default();
        let recordings_missing = Gauge::default();
        let requests = Family::<Labels, Counter>::default();
        let request_duration = HistogramFamily::new_with_constructor(request_histogram);
        let tls_failures = Family::<Labels, Counter>::default();
        registry.register("recordings_ingested", "Recordings stored", ingested.clone());
        registry.register(
            "recordings_discarded",
            "Recordings discarded before storage, by reason",
            discarded.clone(),
        );
        registry.register(
            "recordings_quarantined",
            "Unparseable recordings stored in quarantine",
            quarantined.clone(),
        );
        registry.register(
            "recordings_purged",
            "Recordings deleted, by reason",
            purged.clone(),
        );
        registry.register(
            "holds_active",
            "Active litigation holds",
            holds_active.clone(),
        );
        registry.register(
            "audio_reads",
            "Audio reads, by purpose",
            audio_reads.clone(),
        );
        registry.register(
            "alarm_frames",
            "Alarm receiver frames, by result",
            alarm_frames.clone(),
        );
        registry.register(
            "receivers_connected",
            "Serial receivers currently open",
            receivers_connected.clone(),
        );
        registry.register(
            "receivers_silent",
            "Serial receivers silent past their heartbeat_timeout",
            receivers_silent.clone(),
        );
        registry.register(
            "alarm_events_waiting",
            "Acknowledged alarm events the catalog could not record yet (retried)",
            alarm_events_waiting.clone(),
        );
        registry.register(
            "recordings_missing",
            "Catalog rows whose blob was not found at start",
            recordings_missing.clone(),
        );
        registry.register(
            "http_requests",
            "API requests, by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request latency",
            request_duration.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Connections ended before their TLS handshake completed: refused (bad or no client \
             certificate, not TLS), closed by the peer, timeout, or shed for a new connection at \
             server.max_connections",
            tls_failures.clone(),
        );
        // Every known label value is exported from the start, at 0: a dashboard or an alert
        // on, say, discards by objection sees a series before the first one happens.
        for (family, name, values) in [
            (&discarded, "reason", &DISCARD_REASONS[..]),
            (&purged, "reason", &PURGE_REASONS[..]),
            (&audio_reads, "purpose", &crate::access::PURPOSES[..]),
            (&alarm_frames, "result", &ALARM_FRAME_RESULTS[..]),
            (&tls_failures, "reason", &TLS_FAILURE_REASONS[..]),
        ] {
            for value in values {
                drop(family.get_or_create(&vec![(name, (*value).to_owned())]));
            }
        }
        Arc::new(Metrics {
            registry,
            ingested,
            discarded,
            quarantined,
            purged,
            holds_active,
            audio_reads,
            alarm_frames,
            receivers_connected,
            receivers_silent,
            alarm_events_waiting,
            recordings_missing,
            requests,
            request_duration,
            tls_failures,
        })
    }

    /// Counts a connection that ended before its TLS handshake (one of `TLS_FAILURE_REASONS`).
    pub fn count_tls_failure(&self, reason: &str) {
        self.tls_failures
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts `n` recordings deleted for `reason` (one of `PURGE_REASONS`).
    pub fn count_purged(&self, reason: &str, n: u64) {
        self.purged
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc_by(n);
    }

    /// OpenMetrics text exposition (`application/openmetrics-text`).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Prometheus text exposition format 0.0.4 (`text/plain`), what SPEC §10 names and what a
    /// scraper that does not ask for OpenMetrics parses.
    pub fn render(&self) -> String {
        classic_of(&self.render_openmetrics())
    }
}

/// The Prometheus 0.0.4 text of an OpenMetrics exposition: a counter family is named with its
/// `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family without it), and the
/// OpenMetrics-only lines (`# UNIT`, `# EOF`, a counter's `_created` sample) are left out.
fn classic_of(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        if let Some((prefix, rest)) = comment {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            match counters.contains(name) {
                true => out.push_str(&format!("{prefix}{name}_total {tail}")),
                false => out.push_str(line),
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let created = name
                .strip_suffix("_created")
                .is_some_and(|family| counters.contains(family));
            if created {
                continue;
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = match (request.method(), request.uri().path()) {
                            (&hyper::Method::GET, "/metrics") | (&hyper::Method::GET, "/") => {
                                // OpenMetrics to a scraper that asks for it, the Prometheus
                                // text format to anyone else.
                                let openmetrics = request
                                    .headers()
                                    .get_all(hyper::header::ACCEPT)
                                    .iter()
                                    .filter_map(|value| value.to_str().ok())
                                    .any(|value| value.contains("application/openmetrics-text"));
                                let (content_type, body) = match openmetrics {
                                    true => (
                                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                        metrics.render_openmetrics(),
                                    ),
                                    false => (
                                        "text/plain; version=0.0.4; charset=utf-8",
                                        metrics.render(),
                                    ),
                                };
                                Response::builder()
                                    .header("content-type", content_type)
                                    .body(Full::new(Bytes::from(body)))
                            }
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found\n"))),
                        };
                        Ok::<_, hyper::http::Error>(
                            response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                        )
                    }
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let builder = hyper::server::conn::http1::Builder::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                builder.serve_connection(io, service),
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_label_value_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        let mut expected: Vec<String> = Vec::new();
        for reason in DISCARD_REASONS {
            expected.push(format!(
                "callguard_recordings_discarded_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for reason in PURGE_REASONS {
            expected.push(format!(
                "callguard_recordings_purged_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for purpose in crate::access::PURPOSES {
            expected.push(format!(
                "callguard_audio_reads_total{{purpose=\"{purpose}\"}} 0"
            ));
        }
        for result in ALARM_FRAME_RESULTS {
            expected.push(format!(
                "callguard_alarm_frames_total{{result=\"{result}\"}} 0"
            ));
        }
        for line in expected {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_format_names_counters_with_their_suffix() {
        let metrics = Metrics::new();
        metrics.ingested.inc();
        metrics.holds_active.set(2);
        metrics
            .request_duration
            .get_or_create(&vec![("endpoint", "status".to_owned())])
            .observe(0.003);
        let text = metrics.render();
        for line in [
            "# HELP callguard_recordings_ingested_total Recordings stored.",
            "# TYPE callguard_recordings_ingested_total counter",
            "callguard_recordings_ingested_total 1",
            "# TYPE callguard_holds_active gauge",
            "callguard_holds_active 2",
            "# TYPE callguard_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("_created"), "{text}");
        // Every sample belongs to the family its `# TYPE` line names.
        let mut family = "";
        for line in text.lines() {
            match line.strip_prefix("# TYPE ") {
                Some(rest) => family = rest.split(' ').next().unwrap(),
                None if line.starts_with('#') => {}
                None => assert!(line.starts_with(family), "`{line}` outside `{family}`"),
            }
        }
        let openmetrics = metrics.render_openmetrics();
        assert!(openmetrics.contains("# TYPE callguard_recordings_ingested counter"));
        assert!(openmetrics.ends_with("# EOF\n"));
    }
}
