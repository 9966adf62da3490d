//! TLS to upstreams: a route to an `https://` upstream whose certificate
//! comes from a private CA works with that CA in `[serve] ca_file`, and
//! fails (502, nothing sent) without it. The upstream is a real hyper
//! server behind tokio-rustls; the client is reqwest.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use token_serve::{ServeConfig, Sidecar};
use token_testkit::HttpServer;

mod support;
use support::StaticIdp;

/// An HTTPS upstream on 127.0.0.1 answering with the Authorization header
/// it received; returns its port and the CA's PEM.
async fn tls_upstream() -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(server_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = HttpServer::start_wrapped(
        move |tcp| {
            let accept = acceptor.accept(tcp);
            async move { accept.await.ok() }
        },
        |req: Request<hyper::body::Incoming>| async move {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            Response::new(Full::new(Bytes::from(auth)))
        },
    )
    .await;
    let port = server.port();
    (port, ca_cert.pem())
}

async fn gateway(config: &str) -> String {
    support::gateway(config, "orders", StaticIdp("static-token")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_signed_by_the_configured_ca_gets_the_token() {
    let (port, ca_pem) = tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let base = gateway(&format!(
        "[serve]\nca_file = \"{}\"\n[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"https://localhost:{port}\"\nprofile = \"orders\"\n",
        ca_file.display()
    ))
    .await;
    let r = reqwest::get(format!("{base}/orders/x")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "Bearer static-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_unknown_ca_is_refused_with_502() {
    let (port, _) = tls_upstream().await;
    let base = gateway(&format!(
        "[[serve.routes]]\nprefix = \"/orders/\"\nupstream = \"https://localhost:{port}\"\nprofile = \"orders\"\n"
    ))
    .await;
    let r = reqwest::get(format!("{base}/orders/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("upstream_unreachable"), "{body}");
    assert!(!body.contains("static-token"), "{body}");
}

#[test]
fn a_ca_file_without_certificates_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("empty.pem");
    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let config =
        ServeConfig::parse(&format!("[serve]\nca_file = \"{}\"\n", ca_file.display())).unwrap();
    let e = Sidecar::builder(config).build().unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
}
