//! Prometheus metrics: request counts and latency histograms by route template, method and status.
//!
//! Labels come only from route templates (`/api/v1/me`), HTTP method names and status codes: never a user id, email,
//! token or raw path, so no label can carry user data and cardinality stays bounded.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// The process's metrics registry.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), Series>>,
    routes: Mutex<Vec<&'static str>>,
    /// Expired sessions deleted by the purge job.
    pub sessions_purged: AtomicU64,
    /// Purge job runs that failed.
    pub purge_failures: AtomicU64,
}

fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// Interns a route template so labels are `&'static str` (bounded: there are only as many as routes).
    fn intern(&self, route: &str) -> &'static str {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = routes.iter().find(|r| **r == route) {
            return r;
        }
        if routes.len() >= 256 {
            return "other";
        }
        let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
        routes.push(leaked);
        leaked
    }

    /// Records one request.
    pub fn observe(&self, route: Option<&str>, method: &axum::http::Method, status: u16, seconds: f64) {
        let route = route.map_or("unmatched", |r| self.intern(r));
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry((route, method_label(method), status)).or_default();
        s.count += 1;
        s.sum += seconds;
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                s.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        out.push_str("# HELP cloister_http_requests_total HTTP requests by route template, method and status.\n");
        out.push_str("# TYPE cloister_http_requests_total counter\n");
        for ((route, method, status), s) in &map {
            let _ = writeln!(
                out,
                "cloister_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP cloister_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE cloister_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in &map {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "cloister_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(out, "cloister_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
            let _ = writeln!(out, "cloister_http_request_duration_seconds_sum{{{labels}}} {}", s.sum);
            let _ = writeln!(out, "cloister_http_request_duration_seconds_count{{{labels}}} {}", s.count);
        }
        out.push_str("# HELP cloister_sessions_purged_total Expired sessions deleted by the purge job.\n");
        out.push_str("# TYPE cloister_sessions_purged_total counter\n");
        let _ = writeln!(out, "cloister_sessions_purged_total {}", self.sessions_purged.load(Ordering::Relaxed));
        out.push_str("# HELP cloister_purge_failures_total Purge job runs that failed.\n");
        out.push_str("# TYPE cloister_purge_failures_total counter\n");
        let _ = writeln!(out, "cloister_purge_failures_total {}", self.purge_failures.load(Ordering::Relaxed));
        out
    }
}

/// Middleware: times every request and records it under its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    metrics.observe(route.as_deref(), &method, status, secs);
    tracing::debug!(route = route.as_deref().unwrap_or("unmatched"), %method, status, micros = (secs * 1e6) as u64, "request");
    response
}
