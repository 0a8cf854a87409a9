//! `sfu-host`: the Cloister SFU on a loopback socket, signaled by JSON lines on stdin (one request a line) with
//! one reply line each on stdout. Used by `sfu-load`; see the crate docs.
//!
//! Requests: `{"id":1,"op":"publish","offer":SDP,"sources":[[MID,"camera"],...]}` → `{"id":1,"answer":SDP}`;
//! `{"id":2,"op":"subscribe"}` → `{"id":2,"peer":P,"offer":SDP}`; `{"id":3,"op":"answer","peer":P,"sdp":SDP}` →
//! `{"id":3,"ok":true}`. Errors: `{"id":N,"error":TEXT}`.
//! The first line printed is `{"udp":"ADDR"}`.

use cloister_sfu::{Owner, PeerId, Sfu, SfuConfig, Source};
use serde_json::{json, Value};
use std::io::Write as _;
use std::sync::Arc;
use tokio::io::AsyncBufReadExt as _;

fn say(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn handle(sfu: &Sfu, req: &Value) -> anyhow::Result<Value> {
    let s = |k: &str| req[k].as_str().map(str::to_owned).ok_or_else(|| anyhow::anyhow!("{k} missing"));
    match req["op"].as_str().unwrap_or_default() {
        "publish" => {
            let sources = req["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), Source::parse(p[1].as_str()?)?)))
                .collect();
            let owner = Owner { conn: 0, device: "publisher".into() };
            let (peer, answer) = sfu.publish("bench", owner, s("offer")?, sources).await?;
            Ok(json!({ "peer": peer.0, "answer": answer }))
        }
        "subscribe" => {
            let conn = req["id"].as_u64().unwrap_or(0) + 1;
            let (peer, offer, _) = sfu.subscribe("bench", Owner { conn, device: format!("sub{conn}") }).await?;
            Ok(json!({ "peer": peer.0, "offer": offer }))
        }
        "answer" => {
            let peer = PeerId(req["peer"].as_u64().ok_or_else(|| anyhow::anyhow!("peer missing"))?);
            sfu.answer(peer, s("sdp")?).await?;
            Ok(json!({ "ok": true }))
        }
        other => anyhow::bail!("unknown op {other:?}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shards = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let estimate = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let ip: std::net::IpAddr =
        std::env::args().nth(3).and_then(|a| a.parse().ok()).unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let config = SfuConfig {
        bind: std::net::SocketAddr::new(ip, 0),
        shards,
        initial_estimate_bps: estimate,
        // `SFU_GSO=0` sends datagram by datagram, to measure what GSO saves.
        gso: std::env::var("SFU_GSO").map_or(true, |v| v != "0"),
        ..SfuConfig::default()
    };
    let (sfu, mut events) = Sfu::start(config)?;
    let sfu = Arc::new(sfu);
    say(&json!({ "udp": sfu.local_addr().to_string() }));
    // Renegotiations and speaker changes are not part of the workload; drain them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(req) = serde_json::from_str::<Value>(&line) else { continue };
        let sfu = Arc::clone(&sfu);
        tokio::spawn(async move {
            let id = req["id"].clone();
            match handle(&sfu, &req).await {
                Ok(mut v) => {
                    v["id"] = id;
                    say(&v);
                }
                Err(e) => say(&json!({ "id": id, "error": e.to_string() })),
            }
        });
    }
    Ok(())
}
