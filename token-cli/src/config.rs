//! Profiles: named `get` settings in a TOML file, so a script says
//! `tokencache get --profile orders` instead of repeating every flag.
//!
//! The file is `--config PATH`, else `$TOKENCACHE_CONFIG`, else
//! `$XDG_CONFIG_HOME/tokencache/config.toml` (`~/.config/...`):
//!
//! ```toml
//! [profiles.orders]
//! token_url = "https://idp.example/oauth2/token"   # or: issuer = "https://idp.example"
//! client_id = "orders-client"
//! client_secret_env = "ORDERS_CLIENT_SECRET"       # or client_secret_file / private_key_file /
//!                                                  # client_assertion_file / certificate_file /
//!                                                  # client_certificate_file
//! # managed_identity = "azure-imds"              # or app-service / gcp, with identity = "ID"
//! # refresh_token_env = "ORDERS_REFRESH_TOKEN"     # or refresh_token_file: the refresh-token grant
//! scopes = ["orders.read", "orders.write"]
//! audience = "https://orders.example"
//! store = "sled"                                   # sled[:DIR] | memory | redis://...
//! format = "header"
//! ```
//!
//! Secrets themselves are not accepted in the file: it names where they
//! are. Flags given on the command line override the profile's values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;
use crate::paths;

/// The environment variable naming the profile file.
pub(crate) const CONFIG_ENV: &str = "TOKENCACHE_CONFIG";

/// One profile: every field is optional, and a flag overrides it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    /// The credential from the environment, as `--from-env`.
    #[serde(default)]
    pub(crate) from_env: bool,
    pub(crate) token_url: Option<String>,
    pub(crate) issuer: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret_env: Option<String>,
    pub(crate) client_secret_file: Option<PathBuf>,
    pub(crate) private_key_file: Option<PathBuf>,
    pub(crate) refresh_token_env: Option<String>,
    pub(crate) refresh_token_file: Option<PathBuf>,
    pub(crate) managed_identity: Option<String>,
    pub(crate) identity: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) client_assertion_file: Option<PathBuf>,
    pub(crate) certificate_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) x5t: bool,
    #[serde(default)]
    pub(crate) x5c: bool,
    pub(crate) client_certificate_file: Option<PathBuf>,
    pub(crate) client_key_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) alg: Option<String>,
    pub(crate) auth: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) store: Option<String>,
    pub(crate) format: Option<String>,
    pub(crate) key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
    /// `tokencache serve`'s table, which token-serve parses and checks.
    #[serde(default)]
    #[allow(dead_code)]
    serve: Option<toml::Table>,
}

/// The profile file's path.
pub(crate) fn config_path(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(paths::config_dir()?.join("config.toml"))
}

/// Reads profile `name` from the file at `path`.
pub(crate) fn load_profile(path: &Path, name: &str) -> Result<Profile, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::config(format!(
            "cannot read the profile file {} (for --profile {name}): {e}",
            path.display()
        ))
    })?;
    let file: File = toml::from_str(&text).map_err(|e| {
        CliError::config(format!(
            "the profile file {} is not valid: {}",
            path.display(),
            e.message()
        ))
    })?;
    let known = file.profiles.keys().cloned().collect::<Vec<_>>().join(", ");
    file.profiles.get(name).cloned().ok_or_else(|| {
        CliError::config(format!(
            "the profile file {} has no profile [profiles.{name}] (it has: {})",
            path.display(),
            if known.is_empty() { "none" } else { &known }
        ))
    })
}

/// The names of every profile in the file at `path`.
pub(crate) fn profile_names(path: &Path) -> Result<Vec<String>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::config(format!(
            "cannot read the profile file {}: {e}",
            path.display()
        ))
    })?;
    let file: File = toml::from_str(&text).map_err(|e| {
        CliError::config(format!(
            "the profile file {} is not valid: {}",
            path.display(),
            e.message()
        ))
    })?;
    Ok(file.profiles.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_profile_and_refuses_secrets_in_the_file() {
        let text = r#"
            [profiles.a]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            scopes = ["x", "y"]
        "#;
        let file: File = toml::from_str(text).expect("valid");
        assert_eq!(file.profiles["a"].scopes, ["x", "y"]);
        let bad = "[profiles.a]\nclient_secret = \"s\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
    }

    #[test]
    fn parses_refresh_token_and_managed_identity_keys_but_no_refresh_token_itself() {
        let text = r#"
            [profiles.rt]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            refresh_token_env = "MY_RT"
            [profiles.mi]
            managed_identity = "app-service"
            identity = "id-1"
        "#;
        let file: File = toml::from_str(text).expect("valid");
        assert_eq!(
            file.profiles["rt"].refresh_token_env.as_deref(),
            Some("MY_RT")
        );
        assert_eq!(
            file.profiles["mi"].managed_identity.as_deref(),
            Some("app-service")
        );
        let bad = "[profiles.a]\nrefresh_token = \"rt\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
    }
}
