//! The operator commands besides `serve`: `cloister audit verify`, `cloister audit proof SEQ`,
//! `cloister admin grant-reviewer USER_ID`. Each reads the same configuration as `serve` (flags, environment, file).

use crate::audit::{self, AuditLog};
use crate::config::{Config, GrantArgs, InventoryArgs, ProofArgs, RetentionArgs, ServeArgs};
use anyhow::{bail, Context as _};
use cloister_audit::merkle::{self, leaf_hash};
use cloister_audit::verify::{leaf_hashes, Verdict};
use cloister_audit::{AuditEvent, Checkpoint, Evidence, SignedCheckpoint};
use cloister_store::Database;

async fn open(args: &ServeArgs) -> anyhow::Result<(Config, Database, cloister_audit::CheckpointSigner)> {
    let config = Config::resolve(args)?;
    // The key first: without it there is nothing to verify against, and no empty database gets created by mistake.
    let signer = audit::load_key(&config.audit_key_file)?;
    let db =
        Database::open(config.database_url.as_deref(), &config.data_dir).await.context("cannot open the database")?;
    Ok((config, db, signer))
}

/// `cloister audit verify`: prints the verdict; `Ok(true)` when intact.
pub async fn audit_verify(args: &ServeArgs) -> anyhow::Result<bool> {
    let (config, db, signer) = open(args).await?;
    let verdict = audit::verify_stored(&db, signer.public_key(), &config.audit_origin).await;
    db.close().await;
    let verdict = verdict?;
    println!("{verdict}");
    println!("log {:?}, public key {}", config.audit_origin, hex::encode(signer.public_key()));
    Ok(matches!(verdict, Verdict::Intact { .. }))
}

/// `cloister audit proof SEQ`: the entry, its leaf hash and inclusion proof against the latest signed checkpoint,
/// checked before it is printed.
pub async fn audit_proof(args: &ProofArgs) -> anyhow::Result<()> {
    let (config, db, signer) = open(&args.common).await?;
    let result = async {
        let entries = db.audit_all_entries().await?;
        let Some((note, signature)) = db.audit_latest_checkpoint().await? else {
            bail!("the audit log has no signed checkpoint yet");
        };
        let signed = SignedCheckpoint { note, signature };
        let cp: Checkpoint = signed.verify(signer.public_key()).context("the latest checkpoint does not verify")?;
        if cp.origin != config.audit_origin {
            bail!("the latest checkpoint is for log {:?}, not {:?}", cp.origin, config.audit_origin);
        }
        if args.seq >= cp.tree_size {
            bail!(
                "entry {} is not covered by a signed checkpoint yet (the latest covers {} entries; the server signs one \
                 every --audit-checkpoint-secs)",
                args.seq,
                cp.tree_size
            );
        }
        let covered = entries.get(..cp.tree_size as usize).context("the log holds fewer entries than its checkpoint")?;
        let leaves = leaf_hashes(covered);
        let path = merkle::inclusion_proof(&leaves, args.seq as usize)?;
        let leaf = leaf_hash(&covered[args.seq as usize]);
        merkle::verify_inclusion(&leaf, args.seq, cp.tree_size, &path, &cp.root)
            .context("the stored entries do not match the signed root: run `cloister audit verify`")?;
        let out = serde_json::json!({
            "seq": args.seq,
            "entry": String::from_utf8_lossy(&covered[args.seq as usize]),
            "leaf_hash": hex::encode(leaf),
            "tree_size": cp.tree_size,
            "root": hex::encode(cp.root),
            "proof": path.iter().map(hex::encode).collect::<Vec<_>>(),
            "checkpoint": { "note": signed.note, "signature": signed.signature },
            "public_key": hex::encode(signer.public_key()),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }
    .await;
    db.close().await;
    result
}

/// `cloister audit inventory [--inventory FILE] [--out FILE]`: the record of processing, checked against the
/// retention policy the server would run.
pub fn audit_inventory(args: &InventoryArgs) -> anyhow::Result<()> {
    let policy = Config::resolve(&args.common)?.load_policy()?;
    let text = match &args.inventory {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => cloister_policy::inventory::EMBEDDED.to_owned(),
    };
    let inventory = cloister_policy::inventory::Inventory::parse(&text, policy.retention())?;
    let record = inventory.record_of_processing(policy.retention());
    match &args.out {
        Some(path) => {
            std::fs::write(path, &record).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), record.len());
        }
        None => print!("{record}"),
    }
    Ok(())
}

/// `cloister admin grant-reviewer USER_ID`.
pub async fn grant_reviewer(args: &GrantArgs) -> anyhow::Result<()> {
    let (config, db, signer) = open(&args.common).await?;
    let result = async {
        let log = AuditLog::open(db.clone(), signer, config.audit_origin.clone()).await?;
        let now = crate::api::system_clock()().0;
        let event = AuditEvent::RoleChanged {
            actor: "operator".into(),
            user: args.user_id.clone(),
            role: crate::api::REVIEWER_ROLE.into(),
            scope: "platform".into(),
            granted: true,
        };
        // The grant and its entry are one transaction.
        let granted = db
            .grant_platform_role(&args.user_id, crate::api::REVIEWER_ROLE, now, &Evidence::of(now * 1000, [event]))
            .await
            .map_err(|_| anyhow::anyhow!("no account with user id {:?}", args.user_id))?;
        if granted {
            log.checkpoint(now.saturating_mul(1000)).await?;
            println!("granted the reviewer role to {}", args.user_id);
        } else {
            println!("{} already holds the reviewer role", args.user_id);
        }
        Ok(())
    }
    .await;
    db.close().await;
    result
}

/// `cloister retention run [--dry-run]`.
pub async fn retention_run(args: &RetentionArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args.common)?;
    let policy = config.load_policy()?;
    let db =
        Database::open(config.database_url.as_deref(), &config.data_dir).await.context("cannot open the database")?;
    let result = async {
        let log = if args.dry_run {
            None
        } else {
            let signer = audit::load_key(&config.audit_key_file)?;
            Some(AuditLog::open(db.clone(), signer, config.audit_origin.clone()).await?)
        };
        let now = crate::api::system_clock()().0;
        let reports = crate::retention::run(policy.retention(), &db, now, args.dry_run).await?;
        for r in &reports {
            if args.dry_run {
                println!("{}\t{}\twould delete {}", r.policy_id, r.class, r.count);
            } else {
                println!("{}\t{}\tdeleted {}\tcommitment {}", r.policy_id, r.class, r.count, r.commitment);
            }
        }
        if let Some(log) = &log {
            log.checkpoint(now.saturating_mul(1000)).await?;
        }
        Ok(())
    }
    .await;
    db.close().await;
    result
}
