//! The floor for the gateway's throughput, as a process of its own that wrk
//! can load: a reverse proxy on hyper and hyper-util's pooled client that
//! strips a prefix and forwards, with no token work, no header rewriting
//! and no metrics. `token-cli/bench/gateway-wrk.sh` runs it beside the
//! gateway.
//!
//! `cargo run --release -p benches --example plain_proxy -- LISTEN PREFIX UPSTREAM`
//! e.g. `127.0.0.1:8800 /up/ http://127.0.0.1:8801`. Prints the address it
//! listens on, then serves until killed.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, prefix, upstream] = args.as_slice() else {
        eprintln!("usage: plain_proxy LISTEN PREFIX UPSTREAM");
        std::process::exit(2);
    };
    let prefix: Arc<str> = Arc::from(prefix.trim_end_matches('/'));
    let upstream: Arc<str> = Arc::from(upstream.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen.as_str())
            .await
            .expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("addr")
        );
        // The gateway's upstream connector settings.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, prefix, upstream) = (client.clone(), prefix.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, prefix, upstream) =
                        (client.clone(), prefix.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        let rest = pq.strip_prefix(&*prefix).unwrap_or(pq);
                        parts.uri = format!("{upstream}{rest}").parse().expect("uri");
                        let resp = match client.request(Request::from_parts(parts, body)).await {
                            Ok(r) => r.map(|b| b.boxed()),
                            Err(_) => Response::builder()
                                .status(StatusCode::BAD_GATEWAY)
                                .body(Full::default().map_err(|e| match e {}).boxed())
                                .expect("response"),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
