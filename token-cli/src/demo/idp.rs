//! The demo's IdP: a minimal HTTP/1.1 token endpoint on loopback that
//! checks `client_secret_basic`, counts its calls and issues short-lived
//! tokens, so the real `OAuthCredential` is exercised end to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

use crate::error::CliError;

/// How long the IdP takes to issue a token: a real one takes tens of ms.
pub(crate) const LATENCY: Duration = Duration::from_millis(20);

/// A running local IdP. Stops when dropped.
#[derive(Debug)]
pub(crate) struct LocalIdp {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct Config {
    client_id: String,
    secret: Zeroizing<String>,
    lifetime: u64,
    calls: Arc<AtomicU64>,
}

impl LocalIdp {
    /// Listens on 127.0.0.1 (a free port) for `client_id` / `secret`,
    /// issuing tokens that live `lifetime` seconds.
    pub(crate) async fn start(
        client_id: &str,
        secret: &str,
        lifetime: u64,
    ) -> Result<Self, CliError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| {
            CliError::internal(format!("cannot start the local IdP on loopback: {e}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::internal(format!("cannot start the local IdP: {e}")))?;
        let calls = Arc::new(AtomicU64::new(0));
        let config = Arc::new(Config {
            client_id: client_id.to_owned(),
            secret: Zeroizing::new(secret.to_owned()),
            lifetime,
            calls: Arc::clone(&calls),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&config)));
            }
        });
        Ok(Self { addr, calls, task })
    }

    /// The token endpoint URL.
    pub(crate) fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Token requests answered so far (successful or not).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for LocalIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves requests on one connection until it closes (keep-alive).
async fn serve(stream: TcpStream, config: Arc<Config>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match stream.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut content_length = 0usize;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("authorization") {
                    authorization = Some(Zeroizing::new(value.to_owned()));
                }
            }
        }
        let mut body = vec![0u8; content_length.min(64 * 1024)];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, json) = if !request_line.starts_with("POST /token ") {
            ("404 Not Found", r#"{"error":"not_found"}"#.to_owned())
        } else {
            let n = config.calls.fetch_add(1, Ordering::Relaxed) + 1;
            if authorized(authorization.as_deref().map(|s| s.as_str()), &config) {
                tokio::time::sleep(LATENCY).await;
                (
                    "200 OK",
                    format!(
                        r#"{{"access_token":"demo-{n}-{:016x}","token_type":"Bearer","expires_in":{}}}"#,
                        token_core::backend::random_u128() as u64,
                        config.lifetime
                    ),
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"error":"invalid_client"}"#.to_owned(),
                )
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn authorized(header: Option<&str>, config: &Config) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let decoded = Zeroizing::new(decoded);
    let expected = Zeroizing::new(format!("{}:{}", config.client_id, config.secret.as_str()));
    decoded.as_slice() == expected.as_bytes()
}

impl LocalIdp {
    /// A shared handle on the call counter (for the progress line).
    pub(crate) fn calls_handle(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.calls)
    }
}
