//! The audit log through the real binary: events recorded, reviewers only, proofs that verify with an independent
//! check (cloister-audit's verifier over what the API returned), `cloister audit verify` and `proof`, and tampering
//! caught by the verifier and by the server at start. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_audit::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash};
use cloister_audit::SignedCheckpoint;
use serde_json::{json, Value};
use tests::{Backend, Server};

async fn sign_up(s: &Server, email: &str) -> (String, String) {
    let c = s.client();
    let body = json!({ "email": email, "password": "correct horse battery" });
    let r: Value = c.post(s.url("/api/v1/accounts")).json(&body).send().await.unwrap().json().await.unwrap();
    let user = r["user_id"].as_str().unwrap().to_owned();
    let r: Value = c.post(s.url("/api/v1/sessions")).json(&body).send().await.unwrap().json().await.unwrap();
    (user, r["token"].as_str().unwrap().to_owned())
}

async fn get(s: &Server, token: &str, path: &str) -> (u16, Value) {
    let r = s.client().get(s.url(path)).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn h32(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

async fn scenario(backend: Backend) {
    let mut s = Server::start(backend, &["--audit-checkpoint-secs", "1", "--audit-origin", "test.cloister"]).await;
    let (alice, _) = sign_up(&s, "alice@example.org").await;
    let (bob, bob_token) = sign_up(&s, "bob@example.org").await;

    // Not a reviewer: refused with a stable code, and the refusal is itself an audit entry.
    let (status, body) = get(&s, &bob_token, "/api/v1/audit/checkpoint").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = get(&s, "not-a-token", "/api/v1/audit/entries").await;
    assert_eq!(status, 401);

    // The operator grants alice the reviewer role (with the server stopped or running: appends reconcile).
    let out = s.cli(&["admin", "grant-reviewer", &alice, "--audit-origin", "test.cloister"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.cli(&["admin", "grant-reviewer", "no-such-user", "--audit-origin", "test.cloister"]);
    assert_eq!(out.status.code(), Some(2), "unknown account is an error");
    // The server's next append lands after the operator's entry, not on top of it.
    let (_, carol_token) = sign_up(&s, "carol@example.org").await;
    let (status, _) = get(&s, &carol_token, "/api/v1/audit/entries").await;
    assert_eq!(status, 403);
    let body = json!({ "email": "alice@example.org", "password": "correct horse battery" });
    let r: Value = s.client().post(s.url("/api/v1/sessions")).json(&body).send().await.unwrap().json().await.unwrap();
    let alice_token = r["token"].as_str().unwrap().to_owned();

    let (status, first) = get(&s, &alice_token, "/api/v1/audit/checkpoint").await;
    assert_eq!(status, 200, "{first}");
    let pk = hex::decode(first["public_key"].as_str().unwrap()).unwrap();
    let signed = SignedCheckpoint {
        note: first["note"].as_str().unwrap().into(),
        signature: first["signature"].as_str().unwrap().into(),
    };
    let cp1 = signed.verify(&pk).unwrap();
    assert_eq!(cp1.origin, "test.cloister");

    // Every entry is metadata and proves its inclusion under the signed root.
    let (_, entries) = get(&s, &alice_token, &format!("/api/v1/audit/entries?from=0&limit={}", cp1.tree_size)).await;
    let entries = entries["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len() as u64, cp1.tree_size);
    let kinds: Vec<String> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e["entry"].as_str().unwrap()).unwrap()["event"]["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for k in ["policy_loaded", "account_created", "authz_denied", "role_changed"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let all_text: String = entries.iter().map(|e| e["entry"].as_str().unwrap()).collect();
    assert!(all_text.contains(&bob) && all_text.contains(&alice));
    assert!(!all_text.contains("example.org"), "no email in the audit log");
    for e in &entries {
        let seq = e["seq"].as_u64().unwrap();
        let (status, p) =
            get(&s, &alice_token, &format!("/api/v1/audit/proof/inclusion?seq={seq}&tree_size={}", cp1.tree_size))
                .await;
        assert_eq!(status, 200, "{p}");
        let leaf = leaf_hash(e["entry"].as_str().unwrap().as_bytes());
        assert_eq!(hex::encode(leaf), p["leaf_hash"].as_str().unwrap());
        let path: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(|h| h32(h.as_str().unwrap())).collect();
        verify_inclusion(&leaf, seq, cp1.tree_size, &path, &cp1.root).unwrap();
    }

    // More events, a newer checkpoint, and a consistency proof between the two.
    let _ = sign_up(&s, "dave@example.org").await;
    let (_, second) = get(&s, &alice_token, "/api/v1/audit/checkpoint").await;
    let cp2 = SignedCheckpoint {
        note: second["note"].as_str().unwrap().into(),
        signature: second["signature"].as_str().unwrap().into(),
    }
    .verify(&pk)
    .unwrap();
    assert!(cp2.tree_size > cp1.tree_size);
    let (status, c) = get(
        &s,
        &alice_token,
        &format!("/api/v1/audit/proof/consistency?first={}&second={}", cp1.tree_size, cp2.tree_size),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    let proof: Vec<Hash> = c["proof"].as_array().unwrap().iter().map(|h| h32(h.as_str().unwrap())).collect();
    verify_consistency(cp1.tree_size, cp2.tree_size, &proof, &cp1.root, &cp2.root).unwrap();
    // Bad and out-of-range queries get stable codes.
    let (status, b) = get(&s, &alice_token, "/api/v1/audit/proof/inclusion?seq=x").await;
    assert_eq!((status, b["error"]["code"].as_str()), (422, Some("invalid_request")));
    let (status, b) = get(&s, &alice_token, "/api/v1/audit/proof/inclusion?seq=0&tree_size=100000").await;
    assert_eq!((status, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = get(&s, &alice_token, "/api/v1/audit/entries?limit=0").await;
    assert_eq!(status, 422);

    // Stopped cleanly (a last checkpoint is signed), the operator's tools agree.
    s.shut_down();
    let out = s.cli(&["audit", "verify", "--audit-origin", "test.cloister"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("INTACT:"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("not yet covered"), "the shutdown checkpoint covers everything: {text}");
    let out = s.cli(&["audit", "proof", "2", "--audit-origin", "test.cloister"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(|h| h32(h.as_str().unwrap())).collect();
    verify_inclusion(
        &leaf_hash(p["entry"].as_str().unwrap().as_bytes()),
        2,
        p["tree_size"].as_u64().unwrap(),
        &path,
        &h32(p["root"].as_str().unwrap()),
    )
    .unwrap();
    let out = s.cli(&["audit", "verify", "--audit-origin", "another.log"]);
    assert_eq!(out.status.code(), Some(1), "a checkpoint of another log is a broken verdict");

    // Someone with database access rewrites one entry: the verifier names it, and the server refuses to start.
    // Alice's account_created entry now claims bob (same length, same time: only the hash can tell).
    tamper(&s, &alice, &bob).await;
    let out = s.cli(&["audit", "verify", "--audit-origin", "test.cloister"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("BROKEN:") && text.contains("do not hash to the root"), "{text}");
    let err = s.try_start().unwrap_err();
    assert!(err.contains("the audit log does not verify"), "{err}");
}

async fn tamper(s: &Server, from: &str, to: &str) {
    let pick = |rows: Vec<(i64, Vec<u8>)>| {
        rows.into_iter()
            .find_map(|(seq, e)| {
                let text = String::from_utf8(e).unwrap();
                (text.contains("account_created") && text.contains(from))
                    .then(|| (seq, text.replace(from, to).into_bytes()))
            })
            .expect("the entry to forge")
    };
    let select = "SELECT seq, entry FROM audit_entries ORDER BY seq";
    let update = "UPDATE audit_entries SET entry = $1 WHERE seq = $2";
    tests::with_db!(s, pool => {
        let (seq, forged) = pick(sqlx::query_as(select).fetch_all(pool).await.unwrap());
        sqlx::query(update).bind(forged).bind(seq).execute(pool).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_on_postgres() {
    scenario(Backend::Postgres).await;
}
