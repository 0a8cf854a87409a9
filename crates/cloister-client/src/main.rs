//! `cloister-client`: a terminal participant. Sign up, make a session, host it or join it, and hold an end-to-end
//! encrypted class chat from two terminals. See README ("Two terminals, one encrypted class chat").

use clap::{Args, Parser, Subcommand};
use cloister_client::media::{Media, MediaOptions, PublishOptions};
use cloister_client::{Api, AppMessage, Event, Participant, Role};
use std::path::PathBuf;
use tokio::io::AsyncBufReadExt as _;

#[derive(Parser)]
#[command(name = "cloister-client", about = "A terminal participant for Cloister live sessions")]
struct Cli {
    /// The server, e.g. http://127.0.0.1:8443 or https://classroom.example.org.
    #[arg(long, env = "CLOISTER_SERVER", default_value = "https://127.0.0.1:8443")]
    server: String,
    /// PEM certificate to trust for https (the server prints its self-signed one's path at start).
    #[arg(long, env = "CLOISTER_CA")]
    ca: Option<std::path::PathBuf>,
    /// Account email.
    #[arg(long, env = "CLOISTER_EMAIL")]
    email: String,
    /// Account password (prefer the environment variable over the flag: flags show in `ps`).
    #[arg(long, env = "CLOISTER_PASSWORD", hide_env_values = true)]
    password: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the account (prints the recovery code once).
    Signup,
    /// Create a free public course with a live session starting now; prints the session id.
    NewSession {
        /// Course title.
        #[arg(long, default_value = "A live class")]
        title: String,
        /// How long the session lasts.
        #[arg(long, default_value_t = 2)]
        hours: u32,
        /// Most learners.
        #[arg(long, default_value_t = 30)]
        capacity: u32,
    },
    /// Enroll in a free course.
    Enroll {
        /// Course id.
        course: String,
    },
    /// Host a session you teach: creates its encrypted group and commits joins.
    Host {
        /// Live session id.
        session: String,
        /// This device's id.
        #[arg(long, default_value = "terminal")]
        device: String,
        /// Your display name (sent encrypted to the members only).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Join a session you are enrolled in.
    Join {
        /// Live session id.
        session: String,
        /// This device's id.
        #[arg(long, default_value = "terminal")]
        device: String,
        /// Your display name (sent encrypted to the members only).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        media: MediaArgs,
    },
}

/// Live media (end-to-end encrypted through the server's SFU).
#[derive(Args, Clone, Default)]
struct MediaArgs {
    /// Publish this VP8 IVF file as the camera; give it three times (low, medium, high) for simulcast. Needs the
    /// teacher's role or the stage.
    #[arg(long = "publish-camera", value_name = "IVF")]
    publish_camera: Vec<PathBuf>,
    /// Publish this Ogg Opus file as the microphone.
    #[arg(long = "publish-mic", value_name = "OGG")]
    publish_mic: Option<PathBuf>,
    /// Receive the room's media and report what opens.
    #[arg(long)]
    watch: bool,
    /// Check every opened frame against these camera files (byte for byte).
    #[arg(long = "expect-camera", value_name = "IVF")]
    expect_camera: Vec<PathBuf>,
    /// Check opened audio against this Ogg Opus file.
    #[arg(long = "expect-mic", value_name = "OGG")]
    expect_mic: Option<PathBuf>,
    /// Text appended to every published frame before sealing (tests look for it on the server).
    #[arg(long)]
    canary: Option<String>,
    /// Local IP address for media (ICE); default 127.0.0.1.
    #[arg(long = "media-ip")]
    media_ip: Option<std::net::IpAddr>,
    /// Print the media counters as one JSON line (`media-stats {...}`) this often, in seconds.
    #[arg(long = "stats-every", default_value_t = 5)]
    stats_every: u64,
}

impl MediaArgs {
    fn wanted(&self) -> bool {
        self.watch || !self.publish_camera.is_empty() || self.publish_mic.is_some()
    }

    fn options(&self) -> MediaOptions {
        let canary = self.canary.as_ref().map(|c| c.as_bytes().to_vec());
        let publish = (!self.publish_camera.is_empty() || self.publish_mic.is_some()).then(|| PublishOptions {
            camera: self.publish_camera.clone(),
            mic: self.publish_mic.clone(),
            canary: canary.clone(),
        });
        let expect = (!self.expect_camera.is_empty() || self.expect_mic.is_some()).then(|| PublishOptions {
            camera: self.expect_camera.clone(),
            mic: self.expect_mic.clone(),
            canary,
        });
        MediaOptions {
            publish,
            subscribe: self.watch,
            expect,
            bind_ip: self.media_ip.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        }
    }
}

const HELP: &str =
    "type a line to chat; /ask TEXT, /answer QID TEXT, /upvote QID, /hand, /roster, /code, /leave, /quit";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Warnings (a refused media request, a connection that failed) go to stderr; RUST_LOG for more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ca = match &cli.ca {
        Some(p) => Some(std::fs::read(p)?),
        None => None,
    };
    let api = Api::new(&cli.server, ca.as_deref())?;
    match cli.command {
        Cmd::Signup => {
            let (id, recovery) = api.sign_up(&cli.email, &cli.password).await?;
            println!("account {id}");
            println!("recovery code (shown once; keep it offline): {}", recovery.as_str());
        }
        Cmd::NewSession { title, hours, capacity } => {
            let login = api.log_in(&cli.email, &cli.password).await?;
            let (course, session) = api.new_session(&login, &title, hours, capacity).await?;
            println!("course {course}");
            println!("session {}", session.id);
        }
        Cmd::Enroll { course } => {
            let login = api.log_in(&cli.email, &cli.password).await?;
            api.enroll(&login, &course).await?;
            println!("enrolled in {course}");
        }
        Cmd::Host { session, device, name, media } => {
            let login = api.log_in(&cli.email, &cli.password).await?;
            api.admit(&login, &session).await?;
            let p = Participant::start(api, login, &session, &device, Role::Host { committers: vec![] })?;
            interact(p, name, media).await?;
        }
        Cmd::Join { session, device, name, media } => {
            let login = api.log_in(&cli.email, &cli.password).await?;
            api.admit(&login, &session).await?;
            let p = Participant::start(api, login, &session, &device, Role::Join)?;
            interact(p, name, media).await?;
        }
    }
    Ok(())
}

async fn interact(mut p: Participant, name: Option<String>, media_args: MediaArgs) -> anyhow::Result<()> {
    println!("{HELP}");
    let mut media: Option<Media> = None;
    let mut link = p.take_media();
    let mut stats_tick = tokio::time::interval(std::time::Duration::from_secs(media_args.stats_every.max(1)));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut names: std::collections::HashMap<String, String> = Default::default();
    let mut last_epoch = None;
    let mut hand = false;
    let mut asked = 0u32;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            ev = p.events.recv() => {
                let Some(ev) = ev else { break };
                let who = |u: &str, names: &std::collections::HashMap<String, String>| {
                    names.get(u).cloned().unwrap_or_else(|| u.chars().take(8).collect())
                };
                match ev {
                    Event::Connected => println!("* connected"),
                    Event::Joined { epoch } => {
                        println!("* in the encrypted group (epoch {epoch})");
                        if media_args.wanted() {
                            if let Some(l) = link.take() {
                                media = Some(Media::start(l, media_args.options())?);
                                println!("* media started");
                            }
                        }
                        if let Some(n) = &name {
                            p.say(AppMessage::Profile { display_name: n.clone() });
                        }
                    }
                    Event::Epoch(info) => {
                        println!("* epoch {}: {} members; safety code {}", info.epoch, info.roster.len(), info.safety_code);
                        // Newcomers cannot read what was said before they joined: tell them the name again.
                        let grew = last_epoch.as_ref().is_some_and(|l: &cloister_e2ee::group::EpochInfo| info.roster.len() > l.roster.len());
                        if let (true, Some(n)) = (grew, &name) {
                            p.say(AppMessage::Profile { display_name: n.clone() });
                        }
                        last_epoch = Some(info);
                    }
                    Event::Said { seq, from, message } => match message {
                        AppMessage::Chat { text } => println!("[{seq}] {}: {text}", who(&from, &names)),
                        AppMessage::Question { id, text } => println!("[{seq}] ? {}/{id} asks: {text}", who(&from, &names)),
                        AppMessage::Answer { question_id, text } => println!("[{seq}] ! {} answers {question_id}: {text}", who(&from, &names)),
                        AppMessage::Upvote { question_id } => println!("[{seq}] + {} upvotes {question_id}", who(&from, &names)),
                        AppMessage::RaiseHand { raised } => println!("[{seq}] {} {} a hand", who(&from, &names), if raised { "raises" } else { "lowers" }),
                        AppMessage::Profile { display_name } => {
                            println!("[{seq}] {} is {display_name}", who(&from, &names));
                            names.insert(from, display_name);
                        }
                        other => println!("[{seq}] {}: {other:?}", who(&from, &names)),
                    },
                    Event::Refused { code, message } => println!("! {code}: {message}"),
                    Event::Disconnected { reason } => println!("* disconnected ({reason}); resuming"),
                    Event::Removed => println!("* removed from the group"),
                    Event::Closed => break,
                }
            }
            _ = stats_tick.tick(), if media.is_some() => {
                if let Some(m) = &media {
                    println!("media-stats {}", m.stats.json());
                }
            }
            line = lines.next_line(), if stdin_open => {
                let Some(line) = line? else { stdin_open = false; continue };
                let line = line.trim();
                let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
                match cmd {
                    "" => {}
                    "/quit" => {
                        if let Some(m) = media.take() {
                            println!("media-stats {}", m.stats.json());
                            m.stop().await;
                        }
                        p.close().await;
                        return Ok(());
                    }
                    "/leave" => p.leave(),
                    "/ask" => {
                        asked += 1;
                        p.say(AppMessage::Question { id: format!("q{asked}"), text: rest.to_owned() });
                    }
                    "/answer" => {
                        let (qid, text) = rest.split_once(' ').unwrap_or((rest, ""));
                        p.say(AppMessage::Answer { question_id: qid.to_owned(), text: text.to_owned() });
                    }
                    "/upvote" => p.say(AppMessage::Upvote { question_id: rest.to_owned() }),
                    "/hand" => { hand = !hand; p.say(AppMessage::RaiseHand { raised: hand }); }
                    "/roster" | "/code" => match &last_epoch {
                        Some(info) => {
                            if cmd == "/roster" {
                                for r in &info.roster {
                                    let n = names.get(&r.user_id).cloned().unwrap_or_default();
                                    println!("  leaf {:>3}  {} {}  {}  {n}", r.leaf, r.user_id, r.device_id, r.fingerprint);
                                }
                            }
                            println!("  safety code {} (epoch {}): compare it with the others", info.safety_code, info.epoch);
                        }
                        None => println!("  not in the group yet"),
                    },
                    _ if cmd.starts_with('/') => println!("{HELP}"),
                    _ => p.say(AppMessage::Chat { text: line.to_owned() }),
                }
            }
        }
    }
    Ok(())
}
