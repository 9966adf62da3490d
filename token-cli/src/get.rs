//! `tokencache get`: the flags laid over the named profile, built by
//! token-profile (which `serve` builds with too), and the printed token.

use std::io::Write as _;
use std::time::SystemTime;

use token_core::AccessToken;
use token_profile::{ErrorKind, Format, Naming, OpenedStore, ProfilesFile, Resolved};
use zeroize::Zeroizing;

use crate::cli::GetArgs;
use crate::error::{self, CliError, Kind};
use crate::time::rfc3339;

/// The profile `get` runs: the named profile (if any) with the flags laid
/// over it, checked and with its secrets read.
pub(crate) fn settings(args: &GetArgs) -> Result<Resolved, CliError> {
    let flags = args.spec();
    let (spec, naming) = match &args.profile {
        Some(name) => {
            let path = token_profile::config_path(args.locations.config.as_deref())?;
            let file = ProfilesFile::load(&path)
                .map_err(|e| CliError::new(Kind::Config, format!("{e} (for --profile {name})")))?;
            (file.profile(name)?.clone().overlay(flags), Naming::FileKeys)
        }
        None => (flags, Naming::Flags),
    };
    spec.resolve(naming)
        .map_err(|e| incomplete(e, args.profile.as_deref()))
}

/// A setting missing from the command line with no profile named is a
/// usage error (2); missing from a named profile, its configuration (3).
fn incomplete(e: token_profile::Error, profile: Option<&str>) -> CliError {
    match (e.kind(), profile) {
        (ErrorKind::Incomplete, None) => CliError::usage(format!(
            "{e} (or --profile NAME); see `tokencache get --help`"
        )),
        (ErrorKind::Incomplete, Some(name)) if e.missing().is_some() => CliError::config(format!(
            "{e}: the profile {name} has none, and no flag gives one"
        )),
        _ => e.into(),
    }
}

/// The warm path (see token-profile's `warm_token`): a fresh token on a
/// sled store printed without opening sled. `Ok(false)` when it does not
/// apply; then the full path runs. Needs no async runtime: `main` tries it
/// before starting one.
pub(crate) fn warm(s: &Resolved, args: &GetArgs) -> Result<bool, CliError> {
    let output = Output::new(s, args)?;
    let Some((key, token)) = token_profile::warm_token(s) else {
        return Ok(false);
    };
    tracing::info!(key = %key, from_cache = true, "served from the cache (warm file)");
    output.print(&token, true)?;
    Ok(true)
}

/// How the token is printed: the format and, for `dpop-headers`, the key
/// and the request the proof is for.
struct Output {
    format: Format,
    dpop: Option<DpopTarget>,
}

/// What a `dpop-headers` proof is for.
struct DpopTarget {
    key: token_http::DpopKey,
    method: String,
    url: String,
    nonce: Option<String>,
}

impl Output {
    /// Checks that the format has what it needs.
    fn new(s: &Resolved, args: &GetArgs) -> Result<Self, CliError> {
        let format = s.format();
        if format != Format::DpopHeaders {
            if args.url.is_some() {
                return Err(CliError::usage(
                    "--url and --method are for --format dpop-headers",
                ));
            }
            return Ok(Self { format, dpop: None });
        }
        let key = s.dpop_key().cloned().ok_or_else(|| {
            CliError::usage("--format dpop-headers needs a DPoP key: give --dpop-key-file PATH")
        })?;
        let url = args.url.clone().ok_or_else(|| {
            CliError::usage("--format dpop-headers needs the request's --url URL (and --method, GET by default)")
        })?;
        let method = args
            .method
            .clone()
            .unwrap_or_else(|| "GET".to_owned())
            .to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(CliError::usage(format!(
                "--method {method}: not an HTTP method"
            )));
        }
        match reqwest_url_ok(&url) {
            true => Ok(Self {
                format,
                dpop: Some(DpopTarget {
                    key,
                    method,
                    url,
                    nonce: args.dpop_nonce.clone(),
                }),
            }),
            false => Err(CliError::usage(format!(
                "--url {url}: not an absolute http(s) URL"
            ))),
        }
    }

    fn print(&self, token: &AccessToken, from_cache: bool) -> Result<(), CliError> {
        print(token, self.format, from_cache, self.dpop.as_ref())
    }
}

fn reqwest_url_ok(url: &str) -> bool {
    token_http::reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// Runs `get` the full way (after [`warm`] did not apply).
pub(crate) async fn run(s: Resolved, args: &GetArgs) -> Result<(), CliError> {
    let output = Output::new(&s, args)?;
    // Two client authentications (or none) on the command line alone are a
    // usage error; in a named profile, its configuration.
    let on_command_line = s.naming() == Naming::Flags;
    let built = token_profile::build(s, &mut token_profile::Stores::new())
        .await
        .map_err(|e| {
            if on_command_line {
                incomplete(e, None)
            } else {
                e.into()
            }
        })?;
    let (cache, request, key, token_url) =
        (&built.cache, &built.request, &built.key, &built.token_url);

    let mut token = match cache.get_token(request).await {
        Ok(token) => token,
        Err(e) => {
            // A cached endpoint that is not one any more: discover afresh
            // next time.
            let wrong = matches!(&e, token_core::Error::Credential(c) if c.endpoint_is_wrong());
            built.forget_endpoint_if_wrong(wrong).await;
            return Err(error::from_engine(&e, token_url));
        }
    };

    // A token in its refresh window is handed out at once and refreshed in
    // the background; this process would exit before the refresh lands, so
    // refresh it now and print the new token. A failed refresh leaves the
    // still-valid token (stale-if-error).
    if token.refresh_at().is_some_and(|at| SystemTime::now() >= at) {
        tracing::info!(key = %key, "the cached token is due for refresh; refreshing it now");
        match cache.refresh(request).await {
            Ok(fresh) => token = fresh,
            Err(e) => {
                let until = token.expires_at().map(rfc3339).unwrap_or_default();
                crate::log::warning(format_args!(
                    "refreshing the token failed ({}); printing the cached token, valid until \
                     {until}",
                    error::from_engine(&e, token_url)
                ));
            }
        }
    }

    let stats = cache.stats();
    if stats.store_corrupt_reads > 0 {
        crate::log::warning(
            "the cached entry could not be decrypted (damaged, or written with another key); a \
             new token was fetched",
        );
    }
    if stats.store_errors > 0 {
        crate::log::warning(
            "the token store failed during this call; the token was fetched from the IdP and may \
             not be cached",
        );
    }
    let from_cache = stats.idp_calls == 0;
    tracing::info!(
        key = %key,
        from_cache,
        idp_calls = stats.idp_calls,
        expires_at = %token.expires_at().map(rfc3339).unwrap_or_default(),
        "{}",
        if from_cache { "served from the cache" } else { "fetched from the IdP" }
    );
    if stats.idp_calls > 0 {
        // The entries `inspect` lists and `purge --client-id` forgets: the
        // token's, and a refresh-token grant's record of its newest one.
        built.record().await?;
    }
    if let OpenedStore::Sled(sled) = &built.store {
        // What sled now holds for the key, kept for the warm path when it is
        // fresh (a token due for refresh goes through sled anyway).
        if token.refresh_at().is_some_and(|at| SystemTime::now() < at) {
            if let Ok(Some(envelope)) = sled.read_envelope(key) {
                token_profile::write_warm_file(sled.path(), key, &envelope);
            }
        }
    }
    output.print(&token.to_access_token(), from_cache)
}

fn print(
    token: &AccessToken,
    format: Format,
    from_cache: bool,
    dpop: Option<&DpopTarget>,
) -> Result<(), CliError> {
    let mut out: Zeroizing<String> = Zeroizing::new(String::new());
    match format {
        Format::Token => out.push_str(token.secret().expose()),
        Format::Header => out.push_str(token.authorization_header().expose()),
        Format::DpopHeaders => {
            let DpopTarget {
                key,
                method,
                url,
                nonce,
            } = dpop.ok_or_else(|| CliError::internal("dpop-headers without a key"))?;
            if *token.token_type() != token_core::TokenType::DPoP {
                return Err(CliError::config(format!(
                    "the token is a {} token, not DPoP: the token endpoint did not bind it",
                    token.token_type().as_str()
                )));
            }
            let proof = key
                .proof(
                    method,
                    url,
                    SystemTime::now(),
                    nonce.as_deref(),
                    Some(token.secret().expose()),
                )
                .map_err(|e| CliError::usage(format!("--url {url}: {e}")))?;
            out.push_str("Authorization: ");
            out.push_str(token.authorization_header().expose());
            out.push_str("\nDPoP: ");
            out.push_str(proof.expose());
        }
        Format::Json => {
            let now = SystemTime::now();
            let expires_at = token.expires_at();
            let expires_in = expires_at
                .and_then(|at| at.duration_since(now).ok())
                .map_or(0, |d| d.as_secs());
            let quoted = Zeroizing::new(
                serde_json::to_string(token.secret().expose())
                    .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?,
            );
            let token_type = serde_json::to_string(token.token_type().as_str())
                .map_err(|e| CliError::internal(format!("cannot encode JSON: {e}")))?;
            let expires_at = expires_at
                .map(|at| format!("\"{}\"", rfc3339(at)))
                .unwrap_or_else(|| "null".to_owned());
            out.push_str("{\"access_token\":");
            out.push_str(&quoted);
            out.push_str(&format!(
                ",\"token_type\":{token_type},\"expires_at\":{expires_at},\"expires_in\":{expires_in},\"from_cache\":{from_cache}}}"
            ));
        }
    }
    out.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::internal(format!("cannot write to stdout: {e}")))
}
