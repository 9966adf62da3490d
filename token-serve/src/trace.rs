//! Tracing of gateway requests: one `tokencache.forward` span per request
//! that continues the caller's W3C trace (`traceparent`), and the
//! `traceparent` of that span sent upstream.
//!
//! The spans are `tracing` spans; a program that installs
//! `tracing-opentelemetry` and a text-map propagator (as `tokencache
//! serve` does when `OTEL_EXPORTER_OTLP_*ENDPOINT` is set) exports them and
//! links them to the caller's trace. Without one, no context is extracted
//! or injected, and the caller's own `traceparent` passes through
//! untouched as any other end-to-end header.
//!
//! The span's fields are the route's prefix, the method, the upstream's
//! host and the status: never the path's query, a header or a token.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span of one gateway request along `route` to `upstream`, a child
/// of the trace its `traceparent` names (when traces are exported).
pub(crate) fn forward_span(
    route: &str,
    method: &Method,
    upstream: &str,
    headers: &HeaderMap,
) -> Span {
    let span = tracing::info_span!(
        "tokencache.forward",
        otel.kind = "server",
        http.route = route,
        http.request.method = method.as_str(),
        server.address = upstream,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() && headers.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)));
        let _ = span.set_parent(cx);
    }
    span
}

/// Records the answer's status on `span`.
pub(crate) fn record_status(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Sets `traceparent` (and `tracestate`) in `headers` to the current span's
/// context, when it is exported; otherwise leaves them as they are.
pub(crate) fn inject(headers: &mut HeaderMap) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Inject(headers));
    });
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}
