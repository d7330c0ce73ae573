//! `GET /v1/diagnostics`: the doctor's checks, run by the node itself. The
//! network part comes from the node's status (its probes); this module adds
//! what is on disk (the data directory probe, the keystore, the policy
//! file) and the clock skew seen in received messages, and hands it all to
//! [`crate::diagnostics::diagnose`].

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{extract::State, Json};
use serde_json::json;

use super::{ApiError, Ctx, ErrorCode};
use crate::{
    diagnostics::{
        diagnose, nat_mapping, DataDirCheck, Inputs, KeystoreCheck, LocalChecks, PolicyCheck,
    },
    events::Message,
    keystore::{Keystore, KEYSTORE_FILE},
    policy::Policy,
    PathKind,
};

/// The file the data directory probe writes, syncs and removes.
const PROBE_FILE: &str = "doctor.probe";
/// Bytes written by the probe.
const PROBE_SIZE: usize = 4096;
/// How many received messages the clock skew estimate looks at.
const SKEW_SAMPLES: usize = 32;

/// Our clock minus the senders', from the last messages that arrived
/// straight from their senders (not from a mailbox).
#[derive(Debug, Default)]
pub(super) struct ClockSkew {
    samples: Mutex<VecDeque<i64>>,
}

impl ClockSkew {
    /// Notes a message received at `now_ms` (our clock).
    pub(super) fn handle_message(&self, now_ms: u64, m: &Message) {
        if m.path == PathKind::Mailbox {
            return;
        }
        let diff = i128::from(now_ms) - i128::from(m.ts_ms);
        let diff = diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SKEW_SAMPLES {
            s.pop_front();
        }
        s.push_back(diff);
    }

    /// The estimate: the smallest difference seen lately. Transit time and
    /// a message that waited (in a queue, across a restart) only make the
    /// difference larger, so the smallest is nearest the true skew.
    pub(super) fn estimate_ms(&self) -> Option<i64> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().copied().min()
    }
}

/// Writes, syncs and removes a small file in `dir`.
fn probe_dir(dir: &Path) -> DataDirCheck {
    use std::io::Write;
    let path = dir.join(PROBE_FILE);
    let started = Instant::now();
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_SIZE])?;
        f.sync_all()
    });
    let fsync = started.elapsed();
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) => DataDirCheck::Writable { fsync },
        Err(e) => DataDirCheck::Failed {
            error: e.to_string(),
        },
    }
}

fn check_keystore(dir: &Path) -> KeystoreCheck {
    match std::fs::read(dir.join(KEYSTORE_FILE)) {
        Ok(bytes) => match Keystore::check_file(&bytes) {
            Ok(()) => KeystoreCheck::Present,
            Err(e) => KeystoreCheck::Unreadable {
                error: e.to_string(),
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeystoreCheck::Missing,
        Err(e) => KeystoreCheck::Unreadable {
            error: e.to_string(),
        },
    }
}

fn check_policy(file: Option<PathBuf>) -> PolicyCheck {
    let Some(path) = file else {
        return PolicyCheck::Default;
    };
    match Policy::from_file(&path) {
        Ok(_) => PolicyCheck::Valid {
            path: path.display().to_string(),
        },
        Err(e) => PolicyCheck::Invalid {
            path: path.display().to_string(),
            error: e.to_string(),
        },
    }
}

/// `GET /v1/diagnostics`.
pub(super) async fn route(
    State(ctx): State<Arc<Ctx>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = ctx.node.status().await;
    let (ready, leased) = ctx.inbox.counts();
    let dir = ctx.dir.clone();
    let policy_file = ctx.node.policy_file().map(Path::to_path_buf);
    // One disk probe at a time.
    let local = {
        let _one = ctx.doctor.lock().await;
        tokio::task::spawn_blocking(move || {
            (
                probe_dir(&dir),
                check_keystore(&dir),
                check_policy(policy_file),
            )
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    };
    let local = LocalChecks {
        data_dir: local.0,
        keystore: local.1,
        policy: local.2,
        clock_skew_ms: ctx.clock_skew.estimate_ms(),
    };
    let amid = status.amid.to_string();
    let (punched, punch_failed) = ctx.metrics.hole_punches();
    let checks = diagnose(
        &Inputs::new(&amid, &status.net, &local)
            .with_inbox(ready as u64, leased as u64)
            .with_hole_punches(punched, punch_failed),
    );
    Ok(Json(json!({
        "checks": checks,
        "nat_mapping": nat_mapping(&status.net.listen_addrs, &status.net.probes),
        "probes": status.net.probes,
        "clock_skew_ms": local.clock_skew_ms,
    })))
}
