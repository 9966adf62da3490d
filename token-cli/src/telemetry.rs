//! OpenTelemetry traces for `serve`: the `tracing` spans of this workspace
//! (`tokencache.forward` per gateway request, `tokencache.fetch`,
//! `tokencache.refresh`, `tokencache.lease_wait` in the engine) exported
//! over OTLP/HTTP with protobuf, through `tracing-opentelemetry`.
//!
//! Off unless configured, as the OpenTelemetry SDKs read it:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended) turns it on;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off.
//! `OTEL_SERVICE_NAME` (default `tokencache`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_*HEADERS`/`TIMEOUT` and `OTEL_BSP_*` apply as the
//! SDK defines them. The W3C `traceparent` propagator is installed, so a
//! gateway request continues its caller's trace and passes it upstream.
//!
//! The exporter sends through the workspace's hyper (HTTP/1.1, `http://`
//! endpoints: a collector or agent next to the sidecar) on a runtime of its
//! own, so exports never wait on the serving runtime and shutdown can
//! flush them after it. Spans carry names, profile and route names, status
//! codes and the upstream host: never a token, a secret or a query string.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::error::CliError;

/// How long one export may take at most (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest collector answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// Whether the environment asks for traces.
pub(crate) fn configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !off && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The tracer provider, once started: shut down (flushed) at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Starts the exporter and returns the `tracing` layer that feeds it.
pub(crate) fn layer<S>() -> Result<
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
    CliError,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(HyperClient)
        .build()
        .map_err(|e| CliError::usage(format!("OpenTelemetry: cannot set up the exporter: {e}")))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("tokencache");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("tokencache");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Flushes and stops the exporter (at exit; bounded by its timeout).
pub(crate) fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry: spans not flushed at exit");
        }
    }
}

/// The runtime exports run on (one worker thread).
fn runtime() -> Result<&'static tokio::runtime::Runtime, HttpError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| format!("cannot start the export runtime: {e}").into())
}

/// OTLP/HTTP over hyper's HTTP/1.1 client, one connection per export
/// (batches go out every few seconds at most).
#[derive(Debug)]
struct HyperClient;

#[async_trait::async_trait]
impl HttpClient for HyperClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let task = runtime()?.spawn(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, send(request))
                .await
                .map_err(|_| HttpError::from(format!("no answer within {EXPORT_TIMEOUT:?}")))?
        });
        task.await.map_err(|e| HttpError::from(e.to_string()))?
    }
}

async fn send(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "the OTLP endpoint {uri} is not http://: send to a collector or agent next to the \
             sidecar (TLS to the collector is not supported)"
        )
        .into());
    }
    let host = uri.host().ok_or("the OTLP endpoint has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        let authority = uri.authority().map_or(host, |a| a.as_str());
        parts.headers.insert(http::header::HOST, authority.parse()?);
    }
    // Origin form on the wire.
    parts.uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
