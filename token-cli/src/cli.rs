//! The command line (clap derive).
// These doc comments are clap's `--help` text, where `[:DIR]` means
// "optional", not an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use token_profile::{Alg, AuthMethod, Format, ManagedKind, ProfileSpec};

use crate::error::{exit_codes_help, EXIT_CODES_HELP};

/// Cached, refreshed, encrypted-at-rest OAuth 2.0 access tokens for scripts
/// and programs in any language.
///
/// `curl -H "Authorization: $(tokencache get --profile orders --format header)" ...`
#[derive(Debug, Parser)]
#[command(name = "tokencache", version, after_help = EXIT_CODES_HELP)]
pub(crate) struct Cli {
    /// Log to stderr what happens: -v fetches, cache decisions and the
    /// store; -vv more detail; -vvv everything. RUST_LOG (e.g.
    /// `RUST_LOG=token_core=debug`) takes precedence. Never a secret.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print an access token, from the cache when it is fresh, otherwise
    /// from the IdP (client credentials or refresh-token grant).
    #[command(after_help = GET_HELP)]
    Get(Box<GetArgs>),
    /// List cached entries: key, client, scopes, expiry, refresh time and
    /// size (never the token).
    #[command(after_help = EXIT_CODES_HELP)]
    Inspect(InspectArgs),
    /// Remove cached entries: some keys, one client's, or all.
    #[command(after_help = EXIT_CODES_HELP)]
    Purge(PurgeArgs),
    /// Run the token sidecar and egress gateway: routes that add tokens,
    /// a token endpoint, Azure/Google compatible endpoints, /metrics.
    #[command(after_help = EXIT_CODES_HELP)]
    Serve(ServeArgs),
    /// Run a local IdP and many concurrent callers, and show how many IdP
    /// calls the cache saved.
    #[command(after_help = EXIT_CODES_HELP)]
    Demo(DemoArgs),
    /// One process of a multi-process demo (started by `demo --processes`).
    #[command(name = "__demo-worker", hide = true)]
    DemoWorker(WorkerArgs),
}

impl Command {
    /// `--state-dir`, for the commands that take it.
    pub(crate) fn state_dir(&self) -> Option<&std::path::Path> {
        let locations = match self {
            Self::Get(a) => &a.locations,
            Self::Inspect(a) => &a.locations,
            Self::Purge(a) => &a.locations,
            Self::Serve(a) => &a.locations,
            _ => return None,
        };
        locations.state_dir.as_deref()
    }
}

const GET_HELP: &str = concat!(
    "\
Secrets are never taken as arguments (they would show in `ps`): the client secret comes from \
--client-secret-env VAR or --client-secret-file PATH, the private key from --private-key-file, \
--certificate-file or --client-certificate-file, a client assertion from --client-assertion-file \
(re-read at every fetch).

With --managed-identity azure-imds|app-service|gcp, tokens come from the platform the program \
runs on (Azure IMDS, Azure App Service / Container Apps, the Google metadata server) and are \
cached like any other: --identity ID picks a user-assigned identity or service account.

With --refresh-token-env VAR or --refresh-token-file PATH, tokens come from the refresh-token \
grant (a public client unless a client secret or key is given). That refresh token is only the \
first: each rotated one is kept, encrypted, in the store, and every later invocation (and every \
process sharing a Redis store) redeems the newest one, one at a time under a lease, so an IdP \
that rejects reuse never sees an old one twice.

The store's encryption key comes from TOKENCACHE_KEY (base64, 32 bytes), else the key file \
(--key-file, TOKENCACHE_KEY_FILE, else $XDG_CONFIG_HOME/tokencache/key); a key file is created \
(mode 0600) the first time. The default store is encrypted sled in $XDG_CACHE_HOME/tokencache \
(~/.cache/tokencache). With a state directory (--state-dir DIR or TOKENCACHE_STATE_DIR), no \
writable HOME is needed: the default store is DIR/store and the default key file DIR/key. A \
Redis password comes from TOKENCACHE_REDIS_PASSWORD.

Profiles live in $XDG_CONFIG_HOME/tokencache/config.toml (~/.config/tokencache/config.toml), or \
--config PATH / TOKENCACHE_CONFIG, as [profiles.NAME] tables whose keys are the long flag names \
with underscores (token_url, client_id, client_secret_env, scopes = [..], store, format, ...). \
Flags override the profile.

",
    exit_codes_help!()
);

/// Where the profile file and the key file are.
#[derive(Debug, Clone, Args)]
pub(crate) struct Locations {
    /// The profile file (default: $TOKENCACHE_CONFIG, else
    /// $XDG_CONFIG_HOME/tokencache/config.toml).
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// The store's encryption key file (default: $TOKENCACHE_KEY_FILE, else
    /// STATE_DIR/key, else $XDG_CONFIG_HOME/tokencache/key); TOKENCACHE_KEY
    /// takes precedence.
    #[arg(long, value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// Where tokencache keeps its state instead of HOME: the default sled
    /// store (DIR/store) and the default key file (DIR/key) (default:
    /// $TOKENCACHE_STATE_DIR, else the XDG directories).
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GetArgs {
    /// The token endpoint.
    #[arg(long, value_name = "URL", conflicts_with = "issuer")]
    pub(crate) token_url: Option<String>,
    /// The issuer, whose token endpoint is discovered (OIDC / RFC 8414).
    #[arg(long, value_name = "URL")]
    pub(crate) issuer: Option<String>,
    /// The client id.
    #[arg(long, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// Get tokens from the platform's managed identity instead of an IdP
    /// (no token URL, client id or secret). Azure wants one resource:
    /// --resource R or --scope R/.default; Google takes scopes.
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        conflicts_with_all = [
            "token_url", "issuer", "client_id", "client_secret_env", "client_secret_file",
            "private_key_file", "refresh_token_env", "refresh_token_file", "auth",
            "client_assertion_file", "certificate_file", "client_certificate_file", "from_env",
        ]
    )]
    pub(crate) managed_identity: Option<ManagedKind>,
    /// With --managed-identity: a user-assigned identity's client id (Azure)
    /// or a service account's email (Google) [default: the system-assigned
    /// identity / the default service account].
    #[arg(long, value_name = "ID")]
    pub(crate) identity: Option<String>,
    /// Read the client secret from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "client_secret_file")]
    pub(crate) client_secret_env: Option<String>,
    /// Read the client secret from this file (trailing newline ignored).
    #[arg(long, value_name = "PATH")]
    pub(crate) client_secret_file: Option<PathBuf>,
    /// Use the refresh-token grant, starting from the refresh token in this
    /// environment variable. Rotated refresh tokens are kept (encrypted) in
    /// the store and the newest is always the one redeemed.
    #[arg(long, value_name = "VAR", conflicts_with = "refresh_token_file")]
    pub(crate) refresh_token_env: Option<String>,
    /// Like --refresh-token-env, reading the first refresh token from this
    /// file (trailing newline ignored).
    #[arg(long, value_name = "PATH")]
    pub(crate) refresh_token_file: Option<PathBuf>,
    /// Authenticate with private_key_jwt using this PEM (PKCS#8, or PKCS#1
    /// RSA) private key.
    #[arg(long, value_name = "PEM")]
    pub(crate) private_key_file: Option<PathBuf>,
    /// The key id (`kid`) put in the assertion header.
    #[arg(long, value_name = "KID", requires = "private_key_file")]
    pub(crate) key_id: Option<String>,
    /// The private key's algorithm [default: RS256, or ES256 for an EC key].
    #[arg(long, value_enum, requires = "private_key_file")]
    pub(crate) alg: Option<Alg>,
    /// Authenticate with a client assertion read from this file at every
    /// fetch (workload identity: a Kubernetes projected service-account
    /// token, AZURE_FEDERATED_TOKEN_FILE, a SPIFFE JWT-SVID).
    #[arg(long, value_name = "PATH")]
    pub(crate) client_assertion_file: Option<PathBuf>,
    /// Authenticate with private_key_jwt naming this PEM certificate (chain,
    /// leaf first) by x5t#S256; its key is in the same file or in
    /// --private-key-file.
    #[arg(long, value_name = "PEM")]
    pub(crate) certificate_file: Option<PathBuf>,
    /// Also send the certificate's SHA-1 thumbprint (x5t).
    #[arg(long, requires = "certificate_file")]
    pub(crate) x5t: bool,
    /// Also send the certificate chain (x5c).
    #[arg(long, requires = "certificate_file")]
    pub(crate) x5c: bool,
    /// Authenticate by mutual TLS (RFC 8705) with this PEM certificate; its
    /// key is in the same file or in --client-key-file. Tokens are bound to
    /// it and cached under its thumbprint.
    #[arg(long, value_name = "PEM")]
    pub(crate) client_certificate_file: Option<PathBuf>,
    /// The private key of --client-certificate-file, when apart.
    #[arg(long, value_name = "PEM", requires = "client_certificate_file")]
    pub(crate) client_key_file: Option<PathBuf>,
    /// Trust this CA (PEM) for the token endpoint's TLS certificate, besides
    /// the system's.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Take the token endpoint, client id and client authentication from
    /// the environment (TOKEN_CACHE_TOKEN_URL or TOKEN_CACHE_ISSUER,
    /// TOKEN_CACHE_CLIENT_ID, TOKEN_CACHE_CLIENT_SECRET_FILE,
    /// TOKEN_CACHE_CLIENT_ASSERTION_FILE, TOKEN_CACHE_CERTIFICATE_FILE, and
    /// the Azure-standard AZURE_CLIENT_ID, AZURE_TENANT_ID,
    /// AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST,
    /// AZURE_CLIENT_CERTIFICATE_PATH), as token-http's from_env reads them.
    #[arg(long, conflicts_with_all = [
        "token_url", "issuer", "client_id", "client_secret_env", "client_secret_file",
        "private_key_file", "client_assertion_file", "certificate_file",
        "client_certificate_file", "auth", "refresh_token_env", "refresh_token_file",
    ])]
    pub(crate) from_env: bool,
    /// Client authentication [default: from what is given: basic with a
    /// secret, private-key-jwt with a key or certificate, client-assertion
    /// with an assertion file, tls-client-auth with a client certificate].
    #[arg(long, value_enum)]
    pub(crate) auth: Option<AuthMethod>,
    /// A scope to request (repeatable).
    #[arg(long = "scope", value_name = "S")]
    pub(crate) scopes: Vec<String>,
    /// The audience to request.
    #[arg(long, value_name = "A")]
    pub(crate) audience: Option<String>,
    /// The resource (RFC 8707) to request.
    #[arg(long, value_name = "R")]
    pub(crate) resource: Option<String>,
    /// Where tokens are cached: sled[:DIR] | memory | redis://HOST:PORT
    /// [default: sled in the user's cache dir].
    #[arg(long, value_name = "STORE")]
    pub(crate) store: Option<String>,
    /// How to print the token [default: token]. `json` includes
    /// `token_type`; `dpop-headers` prints the `Authorization: DPoP` and
    /// `DPoP` proof header lines for one request (--method, --url).
    #[arg(long, value_enum)]
    pub(crate) format: Option<Format>,
    /// Bind tokens to this DPoP key (RFC 9449; ES256 or Ed25519, PEM or
    /// JWK): tokens are asked for with a DPoP proof and cached under the
    /// key's thumbprint. The key is never stored.
    #[arg(long, value_name = "PATH")]
    pub(crate) dpop_key_file: Option<PathBuf>,
    /// With --format dpop-headers: the request's method [default: GET].
    #[arg(long, value_name = "METHOD", requires = "url")]
    pub(crate) method: Option<String>,
    /// With --format dpop-headers: the request's URL (its query and
    /// fragment are left out of the proof's htu).
    #[arg(long, value_name = "URL")]
    pub(crate) url: Option<String>,
    /// With --format dpop-headers: the resource server's nonce (its last
    /// `DPoP-Nonce` answer) to put in the proof.
    #[arg(long, value_name = "NONCE", requires = "url")]
    pub(crate) dpop_nonce: Option<String>,
    /// Take settings from this profile of the profile file.
    #[arg(long, value_name = "NAME")]
    pub(crate) profile: Option<String>,
    #[command(flatten)]
    pub(crate) locations: Locations,
}

impl GetArgs {
    /// The flags as a profile spec, to lay over the named profile.
    pub(crate) fn spec(&self) -> ProfileSpec {
        let mut spec = ProfileSpec::default();
        spec.from_env = self.from_env;
        spec.token_url.clone_from(&self.token_url);
        spec.issuer.clone_from(&self.issuer);
        spec.client_id.clone_from(&self.client_id);
        spec.client_secret_env.clone_from(&self.client_secret_env);
        spec.client_secret_file.clone_from(&self.client_secret_file);
        spec.private_key_file.clone_from(&self.private_key_file);
        spec.refresh_token_env.clone_from(&self.refresh_token_env);
        spec.refresh_token_file.clone_from(&self.refresh_token_file);
        spec.managed_identity = self.managed_identity;
        spec.identity.clone_from(&self.identity);
        spec.key_id.clone_from(&self.key_id);
        spec.client_assertion_file
            .clone_from(&self.client_assertion_file);
        spec.certificate_file.clone_from(&self.certificate_file);
        spec.x5t = self.x5t;
        spec.x5c = self.x5c;
        spec.client_certificate_file
            .clone_from(&self.client_certificate_file);
        spec.client_key_file.clone_from(&self.client_key_file);
        spec.ca_file.clone_from(&self.ca_file);
        spec.alg = self.alg;
        spec.auth = self.auth;
        spec.scopes.clone_from(&self.scopes);
        spec.audience.clone_from(&self.audience);
        spec.resource.clone_from(&self.resource);
        spec.store.clone_from(&self.store);
        spec.format = self.format;
        spec.key_file.clone_from(&self.locations.key_file);
        spec.dpop_key_file.clone_from(&self.dpop_key_file);
        spec
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct InspectArgs {
    /// The store to inspect: sled[:DIR] | redis://... [default: sled in the
    /// user's cache dir].
    #[arg(long, value_name = "STORE")]
    pub(crate) store: Option<String>,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) locations: Locations,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct PurgeArgs {
    /// Entries to remove: the short ids `inspect` prints (or a unique
    /// prefix of at least 4 digits), or full cache keys. Naming one that is
    /// not cached is not an error.
    #[arg(value_name = "ID")]
    pub(crate) keys: Vec<String>,
    /// Remove every entry of this client id.
    #[arg(long, value_name = "ID")]
    pub(crate) client_id: Option<String>,
    /// Remove every entry.
    #[arg(long, conflicts_with_all = ["keys", "client_id"])]
    pub(crate) all: bool,
    /// With --all on a sled store: delete the whole store directory without
    /// opening it (for a store whose key is lost).
    #[arg(long, requires = "all")]
    pub(crate) force: bool,
    /// The store: sled[:DIR] | redis://... [default: sled in the user's
    /// cache dir].
    #[arg(long, value_name = "STORE")]
    pub(crate) store: Option<String>,
    #[command(flatten)]
    pub(crate) locations: Locations,
}

/// How `serve` writes its log lines (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// How to write log lines on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Check the profile file (every profile, the [serve] table) and exit:
    /// 0 when it is valid, 3 naming the first problem. Starts nothing, opens
    /// no store and calls no IdP.
    #[arg(long)]
    pub(crate) check_config: bool,
    #[command(flatten)]
    pub(crate) locations: Locations,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Concurrent callers (per process with --processes).
    #[arg(long, default_value_t = 200)]
    pub(crate) callers: usize,
    /// How long the callers run, in seconds.
    #[arg(long, default_value_t = 10.0, conflicts_with = "requests")]
    pub(crate) seconds: f64,
    /// Stop after this many requests in all (instead of --seconds).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Lifetime of the tokens the local IdP issues, in seconds.
    #[arg(long, default_value_t = 4)]
    pub(crate) lifetime: u64,
    /// Distinct token requests (scopes) the callers spread over.
    #[arg(long, default_value_t = 3)]
    pub(crate) keys: usize,
    /// The store: memory | sled[:DIR] (a temporary directory by default) |
    /// redis://...
    #[arg(long, default_value = "memory")]
    pub(crate) store: String,
    /// OS processes sharing the store (needs --store redis://...).
    #[arg(long, default_value_t = 1)]
    pub(crate) processes: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    #[arg(long)]
    pub(crate) token_url: String,
    #[arg(long)]
    pub(crate) redis: String,
    #[arg(long)]
    pub(crate) prefix: String,
    #[arg(long)]
    pub(crate) callers: usize,
    #[arg(long)]
    pub(crate) seconds: f64,
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    #[arg(long)]
    pub(crate) keys: usize,
}
