//! What the token-serve tests share: a credential that always issues the
//! same token, and a sidecar serving one profile on a free loopback port.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use token_cache::{AccessToken, Credential, CredentialError, TokenCache, TokenRequest};
use token_serve::{ServeConfig, Sidecar};

/// Issues `self.0`, valid for an hour, on every fetch.
#[derive(Debug)]
pub(crate) struct StaticIdp(pub(crate) &'static str);

#[async_trait]
impl Credential for StaticIdp {
    fn id(&self) -> &str {
        "static-idp"
    }

    async fn fetch(
        &self,
        _request: &TokenRequest,
        _previous: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        Ok(AccessToken::new(self.0, SystemTime::now()).with_expires_in(Duration::from_secs(3600)))
    }
}

/// Serves `config` (its routes naming `profile`) with tokens from `idp`;
/// returns the base URL.
pub(crate) async fn gateway(config: &str, profile: &str, idp: StaticIdp) -> String {
    let config = ServeConfig::parse(config).unwrap();
    let cache = TokenCache::builder(idp).build();
    let request = TokenRequest::builder().scope("s").build();
    let sidecar = Sidecar::builder(config)
        .profile(profile, &cache, &request)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(token_serve::serve(
        sidecar,
        listener,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    format!("http://{addr}")
}
