//! `cloister serve`: open the database, load keys, bind, accept (TLS or plain), run background jobs, shut down
//! gracefully on SIGINT/SIGTERM.

use crate::api::{self, AppState, ClientAddr};
use crate::config::{Config, ServeArgs, TlsMode};
use crate::metrics::Metrics;
use anyhow::Context as _;
use async_trait::async_trait;
use cloister_accounts::{Accounts, Offload};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Runs argon2id on tokio's blocking pool, at most `permits` at once, so a login flood cannot exhaust memory
/// (each hash holds m KiB) or starve the reactor.
pub struct TokioOffload {
    permits: Arc<Semaphore>,
}

impl TokioOffload {
    /// At most `n` concurrent jobs.
    pub fn new(n: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(n.max(1))) }
    }
}

#[async_trait]
impl Offload for TokioOffload {
    async fn run(&self, job: Box<dyn FnOnce() + Send + 'static>) {
        let Ok(_permit) = self.permits.acquire().await else { return };
        // A panic inside the job is a bug; the caller sees "job did not run" and answers 500.
        let _ = tokio::task::spawn_blocking(job).await;
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// SIGINT and SIGTERM handlers, installed before the server announces that it listens: a signal that arrives right
/// after `listening on` must start a graceful shutdown, not kill the process with the default action.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args)?;
    init_logging(config.log_json);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));

    let (emails, created) = crate::pepper::load_or_create(&config.pepper_file)?;
    if created {
        tracing::info!(path = %config.pepper_file.display(), "created a new email pepper (mode 0600); back it up apart from the database");
    }
    let db = cloister_store::Database::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("cannot open the database")?;
    tracing::info!(backend = ?db.backend(), "database ready, migrations applied");

    let policy = config.load_policy()?;
    let (signer, key_created) = crate::audit::load_or_create_key(&config.audit_key_file)?;
    if key_created {
        tracing::info!(path = %config.audit_key_file.display(), "created a new audit signing key (mode 0600); back it up apart from the database");
    }
    let audit = crate::audit::AuditLog::open(db.clone(), signer, config.audit_origin.clone()).await?;
    tracing::info!(public_key = %hex::encode(audit.public_key()), origin = audit.origin(), "audit log verified and open");
    let now_ms = api::system_clock()().0.saturating_mul(1000);
    audit
        .record(cloister_audit::AuditEvent::PolicyLoaded { files: policy.digests().to_vec() }, now_ms)
        .await
        .context("cannot write the policy-loaded audit entry")?;
    let audit = Arc::new(audit);

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let offload = Arc::new(TokioOffload::new(cores * 2));
    let accounts = Accounts::new(db.account_store(), emails, config.accounts.clone(), offload)
        .context("invalid account settings")?;
    let d = cloister_ds::Limits::default();
    let (device_rate, group_rate) =
        (args.ds_device_rate.unwrap_or(d.device_rate), args.ds_group_rate.unwrap_or(d.group_rate));
    let live_limits = cloister_ds::Limits {
        max_message: args.ds_max_message.unwrap_or(d.max_message),
        device_rate,
        device_burst: device_rate.saturating_mul(3),
        group_rate,
        group_burst: group_rate.saturating_mul(2),
        ..d
    };
    let (ds_identity, ds_created) =
        crate::live::load_or_create_identity(&config.data_dir.join("ds-external-sender.key"))?;
    if ds_created {
        tracing::info!("created the delivery service's external-sender key (mode 0600); back it up with the data dir");
    }
    let sfu = if args.no_media {
        None
    } else {
        let config = cloister_sfu::SfuConfig {
            bind: args.media_udp.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            advertise: args.media_advertise,
            shards: args.media_shards.unwrap_or(cores),
            capture_payloads: args.capture_media.clone(),
            ..cloister_sfu::SfuConfig::default()
        };
        let (sfu, events) = cloister_sfu::Sfu::start(config).context("cannot start the SFU (see --media-udp)")?;
        tracing::info!(media = %sfu.local_addr(), "SFU serving");
        let _ = writeln!(std::io::stdout().lock(), "media on udp://{}", sfu.local_addr());
        Some((Arc::new(sfu), events))
    };
    let (live, live_jobs) =
        crate::live::LiveHub::open(db.clone(), ds_identity, live_limits, args.capture_frames.as_deref(), sfu).await?;
    let state = AppState {
        accounts: Arc::new(accounts),
        metrics: Arc::new(Metrics::default()),
        clock: api::system_clock(),
        policy: Arc::new(policy),
        audit: audit.clone(),
        db: db.clone(),
        courses: Arc::new(cloister_courses::Courses::new(
            db.course_store(),
            Arc::new(cloister_courses::PaymentsNotConfigured),
            cloister_courses::CoursesConfig::default(),
        )),
        tickets: Default::default(),
        live: live.clone(),
        live_limits,
    };
    let web = match &args.web_dir {
        Some(dir) if cloister_web::is_built(dir) => Some(dir.clone()),
        Some(dir) => anyhow::bail!("--web-dir {} holds no index.html (build it: cargo xtask web)", dir.display()),
        None => Some(cloister_web::default_dist()).filter(|d| cloister_web::is_built(d)),
    };
    match &web {
        Some(dir) => tracing::info!(dir = %dir.display(), "serving the web client"),
        None => tracing::warn!("the web client is not built (cargo xtask web); serving the API only"),
    }
    let app = api::router_with_web(state.clone(), web);

    let tls = match &config.tls {
        TlsMode::Plain => None,
        TlsMode::Files { cert, key } => Some(crate::tls::load(Some((cert, key)), &config.data_dir)?),
        TlsMode::SelfSigned => Some(crate::tls::load(None, &config.data_dir)?),
    };
    let mut signals = ShutdownSignals::install()?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        if let Some(t) = &tls {
            let _ = writeln!(out, "tls certificate sha256 fingerprint {}", t.fingerprint);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _ = writeln!(out, "listening on {scheme}://{local}");
        let _ = out.flush();
    }
    tracing::info!(%local, tls = tls.is_some(), "serving");

    // Background job: the retention engine (expired sessions, old erasure records, ...), one audit entry per class
    // per run.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let retention_state = state.clone();
    let interval = Duration::from_secs(config.retention_interval_secs);
    let purge = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop_rx.changed() => break,
            }
            let s = &retention_state;
            match crate::retention::run(s.policy.retention(), &s.db, (s.clock)().0, false).await {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| r.count > 0) {
                        if r.class == "session" {
                            s.metrics.sessions_purged.fetch_add(r.count, Ordering::Relaxed);
                        }
                        tracing::info!(policy = %r.policy_id, class = %r.class, count = r.count, "retention run deleted rows");
                    }
                }
                Err(e) => {
                    s.metrics.purge_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "retention run failed");
                }
            }
        }
    });

    // Background job: sign audit checkpoints and flush the throttled-sign-in count.
    let mut audit_stop = stop_tx.subscribe();
    let audit_state = state.clone();
    let audit_interval = Duration::from_secs(config.audit_checkpoint_secs);
    let audit_job = tokio::spawn(async move {
        let mut tick = tokio::time::interval(audit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = audit_stop.changed() => true,
            };
            let now = audit_state.now_ms();
            if let Err(e) = audit_state.audit.flush_throttled(now).await {
                tracing::warn!(error = %e, "could not record throttled sign-ins");
            }
            if let Err(e) = audit_state.audit.checkpoint(now).await {
                tracing::warn!(error = %e, "could not sign an audit checkpoint");
            }
            if stopping {
                break;
            }
        }
    });

    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cloister_wire::SERVER_HTTP1_IDLE_SECS));
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let shutdown = signals.recv();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_connection(TokioIo::new(tcp), peer, app, &builder, watcher).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), peer, app, &builder, watcher).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    drop(listener);
    // Live connections are told and closed; what the delivery service accepted is stored before the database closes.
    live.shut_down();
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within 30 s; closing anyway");
    }
    let _ = stop_tx.send(true);
    let _ = purge.await;
    // The audit job signs a last checkpoint as it stops.
    let _ = audit_job.await;
    live_jobs.finish().await;
    db.close().await;
    tracing::info!("shutdown complete; database closed");
    // stdout may be a closed pipe by now (the parent stopped reading): never panic over a status line.
    let _ = writeln!(std::io::stdout().lock(), "shutdown complete");
    Ok(())
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: std::net::SocketAddr,
    app: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer));
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req.map(axum::body::Body::new)).await }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
