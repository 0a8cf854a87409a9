//! Command line, environment and TOML configuration. Precedence: flag, then environment, then file, then default.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use cloister_accounts::AccountsConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Cloister: a privacy-first live classroom server.
#[derive(Debug, Parser)]
#[command(name = "cloister", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Check the audit log and print proofs (reads the same configuration as `serve`).
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the retention engine by hand (reads the same configuration as `serve`).
    Retention {
        /// What to do.
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Operator tasks (reads the same configuration as `serve`).
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `cloister audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every entry and every signed checkpoint; prints INTACT or BROKEN with the reason (exit 1 when broken).
    Verify(Box<ServeArgs>),
    /// Print entry SEQ with its inclusion proof against the latest signed checkpoint, as JSON.
    Proof(Box<ProofArgs>),
    /// Render the GDPR Art. 30 record of processing (audits/RECORD_OF_PROCESSING.md) from the data-flow inventory
    /// and the retention policy.
    Inventory(Box<InventoryArgs>),
}

/// `cloister audit inventory` arguments.
#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    /// The data-flow inventory to render (default: the one built in, audits/data-inventory.toml).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Write the record here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Where the retention policy is (--policy-dir; default the built-in one).
    #[command(flatten)]
    pub common: ServeArgs,
}

/// `cloister audit proof` arguments.
#[derive(Debug, Clone, Args)]
pub struct ProofArgs {
    /// The entry's sequence number (0-based).
    pub seq: u64,
    /// Where the log is.
    #[command(flatten)]
    pub common: ServeArgs,
}

/// `cloister retention ...`
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete what policy/retention.toml makes due now and print it, one line per class (with --dry-run, only print
    /// what would go, and write nothing).
    Run(Box<RetentionArgs>),
}

/// `cloister retention run` arguments.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// List what is due without deleting or writing audit entries.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the database is.
    #[command(flatten)]
    pub common: ServeArgs,
}

/// `cloister admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Give an account the compliance reviewer role (recorded in the audit log).
    GrantReviewer(Box<GrantArgs>),
}

/// `cloister admin grant-reviewer` arguments.
#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    /// The account's user id (as `GET /api/v1/me` shows it).
    pub user_id: String,
    /// Where the database is.
    #[command(flatten)]
    pub common: ServeArgs,
}

/// `cloister serve` flags. Each can also come from the environment (`CLOISTER_*`) or the TOML file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the long flags with '_' for '-', plus an `[accounts]` table).
    #[arg(long, env = "CLOISTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on; port 0 picks a free port. Default 127.0.0.1:8443.
    #[arg(long, env = "CLOISTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: embedded database, TLS certificate, pepper. Default ./cloister-data.
    #[arg(long, env = "CLOISTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://... to use PostgreSQL instead of the embedded SQLite database.
    #[arg(long, env = "CLOISTER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Serve plain HTTP instead of HTTPS. Allowed only on a loopback address (development and tests).
    #[arg(long, env = "CLOISTER_PLAIN_HTTP")]
    pub plain_http: bool,
    /// PEM certificate chain; with --tls-key. Without both, a self-signed certificate is made in the data dir.
    #[arg(long, env = "CLOISTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CLOISTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// File holding the email pepper. Default DATA_DIR/pepper.key, created with mode 0600 when absent.
    /// CLOISTER_PEPPER, if set, holds the pepper text itself and wins.
    #[arg(long, env = "CLOISTER_PEPPER_FILE")]
    pub pepper_file: Option<PathBuf>,
    /// Session lifetime in seconds (default 43200 = 12 h).
    #[arg(long, env = "CLOISTER_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<i64>,
    /// Seconds between retention runs (expired sessions, old erasure records; default 3600). Each run writes one
    /// audit entry per automated class. Expired tokens are refused at once whether or not their row is gone.
    #[arg(long, env = "CLOISTER_RETENTION_INTERVAL_SECS", alias = "purge-interval-secs")]
    pub retention_interval_secs: Option<u64>,
    /// Log format: "text" (default) or "json".
    #[arg(long, env = "CLOISTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Directory with authz.cedar, schema.cedarschema and retention.toml. Default: the copies built into the binary
    /// (the repository's policy/ at build time).
    #[arg(long, env = "CLOISTER_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// The audit log's Ed25519 signing key (PKCS#8). Default DATA_DIR/audit-signing.key, created with mode 0600.
    /// Keep it apart from database backups: with it, a changed history could be re-signed.
    #[arg(long, env = "CLOISTER_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// The audit log's name in its signed checkpoints (default "cloister").
    #[arg(long, env = "CLOISTER_AUDIT_ORIGIN")]
    pub audit_origin: Option<String>,
    /// Seconds between signed audit checkpoints when there are new entries (default 60).
    #[arg(long, env = "CLOISTER_AUDIT_CHECKPOINT_SECS")]
    pub audit_checkpoint_secs: Option<u64>,
    /// Largest MLS message the delivery service accepts, in bytes (default 2 MiB).
    #[arg(long, env = "CLOISTER_DS_MAX_MESSAGE")]
    pub ds_max_message: Option<usize>,
    /// MLS messages one device may send per second, sustained (default 20; the burst is three times this).
    #[arg(long, env = "CLOISTER_DS_DEVICE_RATE")]
    pub ds_device_rate: Option<u32>,
    /// MLS messages one session's group accepts per second, sustained (default 2000; the burst is twice this).
    #[arg(long, env = "CLOISTER_DS_GROUP_RATE")]
    pub ds_group_rate: Option<u32>,
    /// UDP address the SFU's one media socket binds (default 127.0.0.1:0, a free port on loopback). Every peer
    /// connection of every session shares it.
    #[arg(long, env = "CLOISTER_MEDIA_UDP")]
    pub media_udp: Option<SocketAddr>,
    /// The IP address given to clients in ICE candidates, when --media-udp is a wildcard (0.0.0.0) or behind NAT.
    #[arg(long, env = "CLOISTER_MEDIA_ADVERTISE")]
    pub media_advertise: Option<std::net::IpAddr>,
    /// SFU shard threads (rooms are spread over them; default: the number of cores).
    #[arg(long, env = "CLOISTER_MEDIA_SHARDS")]
    pub media_shards: Option<usize>,
    /// The browser classroom's build (`cargo xtask web` writes it). Default: the checkout's crates/cloister-web/dist
    /// when it is built; without a build only the API is served.
    #[arg(long, env = "CLOISTER_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Do not start the SFU (chat, Q&A and the rest of the live session still work).
    #[arg(long, env = "CLOISTER_NO_MEDIA")]
    pub no_media: bool,
    /// Test hook: append every media payload the SFU forwards to this file (length-prefixed), so a test can scan
    /// what the SFU sees for canaries. Never use it in production.
    #[arg(long, hide = true)]
    pub capture_media: Option<PathBuf>,
    /// Test hook: append every live-session WebSocket frame the server receives (`<`) and sends (`>`) to this file,
    /// so a test can scan the application-layer bytes for canaries. Never use it in production.
    #[arg(long, hide = true)]
    pub capture_frames: Option<PathBuf>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    plain_http: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    pepper_file: Option<PathBuf>,
    #[serde(alias = "purge_interval_secs")]
    retention_interval_secs: Option<u64>,
    log_format: Option<String>,
    policy_dir: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
    audit_origin: Option<String>,
    audit_checkpoint_secs: Option<u64>,
    #[serde(default)]
    accounts: Option<AccountsConfig>,
}

/// How to serve TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP on loopback.
    Plain,
    /// A certificate and key from files.
    Files {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
    /// A self-signed certificate for localhost in the data dir.
    SelfSigned,
}

/// The resolved server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL URL, or `None` for the embedded SQLite.
    pub database_url: Option<String>,
    /// TLS mode.
    pub tls: TlsMode,
    /// Pepper file path.
    pub pepper_file: PathBuf,
    /// Account settings.
    pub accounts: AccountsConfig,
    /// Seconds between retention runs.
    pub retention_interval_secs: u64,
    /// Log as JSON lines.
    pub log_json: bool,
    /// Policy directory, or `None` for the built-in policy files.
    pub policy_dir: Option<PathBuf>,
    /// Audit signing key file.
    pub audit_key_file: PathBuf,
    /// Audit log origin.
    pub audit_origin: String,
    /// Seconds between audit checkpoints.
    pub audit_checkpoint_secs: u64,
}

impl Config {
    /// The authorization policy: from `--policy-dir`, or the files built into the binary.
    pub fn load_policy(&self) -> anyhow::Result<cloister_policy::Policy> {
        match &self.policy_dir {
            Some(dir) => cloister_policy::Policy::load(dir)
                .with_context(|| format!("cannot load the authorization policy from {}", dir.display())),
            None => cloister_policy::Policy::embedded().context("the built-in authorization policy does not load"),
        }
    }

    /// Resolves flags/environment over the optional file over defaults, and checks the result.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))?
            }
            None => FileConfig::default(),
        };
        let listen = args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("cloister-data"));
        let database_url = args.database_url.clone().or(file.database_url).filter(|u| !u.is_empty());
        let plain = args.plain_http || file.plain_http.unwrap_or(false);
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let tls = match (plain, cert, key) {
            (true, None, None) => TlsMode::Plain,
            (true, _, _) => bail!("--plain-http cannot be combined with --tls-cert/--tls-key"),
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfSigned,
            (false, _, _) => bail!("--tls-cert and --tls-key must be given together"),
        };
        if tls == TlsMode::Plain && !listen.ip().is_loopback() {
            bail!("--plain-http is allowed only on a loopback address (got {}); use HTTPS elsewhere", listen.ip());
        }
        let pepper_file = args.pepper_file.clone().or(file.pepper_file).unwrap_or_else(|| data_dir.join("pepper.key"));
        let mut accounts = file.accounts.unwrap_or_default();
        if let Some(ttl) = args.session_ttl_secs {
            accounts.session_ttl_secs = ttl;
        }
        accounts.check().context("invalid [accounts] settings")?;
        let retention_interval_secs = args.retention_interval_secs.or(file.retention_interval_secs).unwrap_or(3600);
        if retention_interval_secs == 0 {
            bail!("retention interval must be at least 1 second");
        }
        let log_json = match args.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("unknown log format '{other}' (text or json)"),
        };
        let policy_dir = args.policy_dir.clone().or(file.policy_dir);
        let audit_key_file =
            args.audit_key_file.clone().or(file.audit_key_file).unwrap_or_else(|| data_dir.join("audit-signing.key"));
        let audit_origin = args.audit_origin.clone().or(file.audit_origin).unwrap_or_else(|| "cloister".to_owned());
        if audit_origin.is_empty() || audit_origin.chars().any(char::is_control) {
            bail!("audit origin must be non-empty text without control characters");
        }
        let audit_checkpoint_secs = args.audit_checkpoint_secs.or(file.audit_checkpoint_secs).unwrap_or(60);
        if audit_checkpoint_secs == 0 {
            bail!("audit checkpoint interval must be at least 1 second");
        }
        Ok(Self {
            listen,
            data_dir,
            database_url,
            tls,
            pepper_file,
            accounts,
            retention_interval_secs,
            log_json,
            policy_dir,
            audit_key_file,
            audit_origin,
            audit_checkpoint_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.tls, TlsMode::SelfSigned);
        assert_eq!(c.pepper_file, PathBuf::from("cloister-data/pepper.key"));
        assert_eq!(c.accounts.session_ttl_secs, 43200);
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cloister.example.toml");
        let c = Config::resolve(&ServeArgs { config: Some(path), ..ServeArgs::default() }).unwrap();
        assert_eq!((c.retention_interval_secs, c.audit_origin.as_str()), (3600, "cloister.example.org"));
        assert_eq!(c.audit_key_file, PathBuf::from("cloister-data/audit-signing.key"));
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let mut a = ServeArgs { plain_http: true, ..ServeArgs::default() };
        assert!(Config::resolve(&a).is_ok());
        a.listen = Some("0.0.0.0:80".parse().unwrap());
        let err = Config::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        a.listen = Some("[::1]:0".parse().unwrap());
        assert!(Config::resolve(&a).is_ok());
    }

    #[test]
    fn file_is_overridden_by_flags_and_weak_argon2_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nplain_http = true\n[accounts]\nsession_ttl_secs = 600\n")
            .unwrap();
        let mut a = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        let c = Config::resolve(&a).unwrap();
        assert_eq!((c.listen.port(), c.tls.clone(), c.accounts.session_ttl_secs), (9000, TlsMode::Plain, 600));
        a.listen = Some("127.0.0.1:0".parse().unwrap());
        assert_eq!(Config::resolve(&a).unwrap().listen.port(), 0);
        std::fs::write(&path, "[accounts.argon2]\nmemory_kib = 1024\n").unwrap();
        assert!(Config::resolve(&a).is_err());
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(Config::resolve(&a).is_err());
    }
}
