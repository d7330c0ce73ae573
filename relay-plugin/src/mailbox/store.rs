//! The mailbox's sled storage and its bookkeeping: limits, per-sender
//! shares and rate, expiry. Methods take `now` and never read the clock.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use agentmesh_node::lru::BoundedLru;
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tracing::warn;

use super::{EnvelopeId, ErrorCode, MailItem};
use crate::MailboxLimits;

/// Most senders tracked by the deposit rate limiter before old windows are
/// dropped.
const MAX_TRACKED_SENDERS: usize = 65_536;
/// Length of the deposit rate window.
const RATE_WINDOW_MS: u64 = 60_000;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A stored item could not be decoded.
    #[error("corrupt mailbox item: {0}")]
    Corrupt(String),
}

/// Why a deposit was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DepositError {
    /// The recipient already holds the most envelopes (or bytes) allowed,
    /// or the most allowed from senders it has not named.
    #[error("mailbox full ({0} envelopes)")]
    Full(usize),
    /// The sender already has its whole share of the recipient's mailbox.
    #[error("sender's share of this mailbox is used ({held} of {max} envelopes)")]
    SenderQuota {
        /// Envelopes of this sender waiting for the recipient.
        held: usize,
        /// Its share.
        max: usize,
    },
    /// The relay holds all the bytes it will hold.
    #[error("relay storage full")]
    RelayFull,
    /// The sender is over its deposit rate.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// When a deposit will be accepted again.
        retry_after_ms: u64,
    },
    /// The envelope is larger than allowed.
    #[error("envelope of {size} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope has already expired.
    #[error("envelope expired")]
    Expired,
    /// The recipient is not a PeerId.
    #[error("invalid recipient")]
    InvalidRecipient,
    /// Storage failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DepositError {
    /// The wire code of this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            DepositError::Full(_) => ErrorCode::MailboxFull,
            DepositError::SenderQuota { .. } => ErrorCode::SenderQuota,
            DepositError::RelayFull => ErrorCode::RelayFull,
            DepositError::RateLimited { .. } => ErrorCode::RateLimited,
            DepositError::TooLarge { .. } => ErrorCode::TooLarge,
            DepositError::Expired => ErrorCode::Expired,
            DepositError::InvalidRecipient => ErrorCode::InvalidRecipient,
            DepositError::Store(_) => ErrorCode::Storage,
        }
    }
}

/// What the mailbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MailboxStats {
    /// Envelopes stored.
    pub envelopes: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Recipients with mail.
    pub recipients: u64,
}

/// Sealed envelopes held for recipients, in sled.
///
/// Layout: tree `mailbox` maps `recipient ‖ seq` to the CBOR [`MailItem`]
/// (so a recipient's mail is a prefix scan, oldest first); tree
/// `mailbox-ids` maps `recipient ‖ id` to `seq ‖ size ‖ sender` (duplicates,
/// acks and the per-sender shares, without reading the envelopes). Both
/// change in one transaction. Tree `mailbox-known` holds
/// `recipient ‖ sender` for the senders each recipient named.
#[derive(Debug)]
pub struct MailboxStore {
    db: sled::Db,
    mail: sled::Tree,
    ids: sled::Tree,
    known: sled::Tree,
    /// Bytes held in all (the `mailbox` tree's values).
    total_bytes: AtomicU64,
    limits: MailboxLimits,
    /// Serialises deposits, so the per-recipient limit holds under
    /// concurrency.
    deposit_lock: Mutex<()>,
    /// Per-sender fixed windows: (window start ms, deposits in it), at
    /// most [`MAX_TRACKED_SENDERS`]; a window that has ended is dropped
    /// first.
    rate: Mutex<BoundedLru<PeerId, (u64, u32)>>,
}

/// The keys of one stored item: in the `mailbox` tree and in `mailbox-ids`.
type ItemKeys = (Vec<u8>, Vec<u8>);

fn prefix(recipient: &PeerId) -> Vec<u8> {
    let b = recipient.to_bytes();
    let mut p = Vec::with_capacity(b.len() + 1);
    p.push(b.len() as u8);
    p.extend_from_slice(&b);
    p
}

fn key(prefix: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(tail);
    k
}

/// What `mailbox-ids` holds of one envelope.
struct IdEntry {
    seq: [u8; 8],
    size: u64,
    /// The sender's PeerId bytes; empty for entries stored before senders
    /// were recorded.
    from: Vec<u8>,
}

impl IdEntry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.from.len());
        v.extend_from_slice(&self.seq);
        v.extend_from_slice(&(self.size.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        v.extend_from_slice(&self.from);
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let seq: [u8; 8] = v.get(..8)?.try_into().ok()?;
        let size = v
            .get(8..12)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u64::from(u32::from_be_bytes(b)));
        let from = v.get(12..).unwrap_or_default().to_vec();
        Some(Self { seq, size, from })
    }
}

fn decode_item(bytes: &[u8]) -> Result<MailItem, StoreError> {
    agentmesh_transports::codec::decode(bytes, super::MAX_FRAME_SIZE)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl MailboxStore {
    /// Opens (or creates) the mailbox trees in `db`.
    pub fn open(db: &sled::Db, limits: MailboxLimits) -> Result<Self, StoreError> {
        let mail = db.open_tree("mailbox")?;
        let mut total = 0u64;
        for kv in mail.iter() {
            total += kv?.1.len() as u64;
        }
        Ok(Self {
            db: db.clone(),
            mail,
            ids: db.open_tree("mailbox-ids")?,
            known: db.open_tree("mailbox-known")?,
            total_bytes: AtomicU64::new(total),
            limits,
            deposit_lock: Mutex::new(()),
            rate: Mutex::new(BoundedLru::new(MAX_TRACKED_SENDERS)),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &MailboxLimits {
        &self.limits
    }

    /// Makes every change so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    fn check_rate(&self, from: &PeerId, now_ms: u64) -> Result<(), DepositError> {
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.limits.deposits_per_minute;
        rate.upsert(
            *from,
            now_ms,
            || (now_ms, 0),
            |entry| {
                if now_ms.saturating_sub(entry.0) >= RATE_WINDOW_MS {
                    *entry = (now_ms, 0);
                }
                let ends = entry.0.saturating_add(RATE_WINDOW_MS);
                if entry.1 >= max {
                    let retry_after_ms = ends.saturating_sub(now_ms).max(1);
                    return (Err(DepositError::RateLimited { retry_after_ms }), ends);
                }
                entry.1 += 1;
                (Ok(()), ends)
            },
        )
    }

    /// Stores `envelope` from `from` for `to`. Returns `true` when the same
    /// id was already held for `to` (nothing stored twice). Not durable until
    /// [`MailboxStore::flush`].
    pub fn deposit(
        &self,
        from: &PeerId,
        to: &[u8],
        id: EnvelopeId,
        expires_ms: u64,
        envelope: &[u8],
        now_ms: u64,
    ) -> Result<bool, DepositError> {
        let to = PeerId::from_bytes(to).map_err(|_| DepositError::InvalidRecipient)?;
        if envelope.len() > self.limits.max_envelope_bytes {
            return Err(DepositError::TooLarge {
                size: envelope.len(),
                max: self.limits.max_envelope_bytes,
            });
        }
        if expires_ms <= now_ms {
            return Err(DepositError::Expired);
        }
        let expires_ms =
            expires_ms.min(now_ms.saturating_add(self.limits.ttl().as_millis() as u64));
        let _guard = self.deposit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let p = prefix(&to);
        if self
            .ids
            .contains_key(key(&p, &id))
            .map_err(StoreError::from)?
        {
            return Ok(true);
        }
        self.purge_recipient(&p, now_ms)?;
        self.check_room(&p, from, envelope.len())?;
        self.check_rate(from, now_ms)?;
        let seq = self
            .db
            .generate_id()
            .map_err(StoreError::from)?
            .to_be_bytes();
        let item = MailItem {
            id,
            from: from.to_bytes(),
            deposited_ms: now_ms,
            expires_ms,
            envelope: ByteBuf::from(envelope.to_vec()),
        };
        let bytes = agentmesh_transports::codec::encode(&item)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (mk, ik) = (key(&p, &seq), key(&p, &id));
        let entry = IdEntry {
            seq,
            size: bytes.len() as u64,
            from: from.to_bytes(),
        }
        .encode();
        (&self.mail, &self.ids)
            .transaction(|(mail, ids)| {
                mail.insert(mk.as_slice(), bytes.as_slice())?;
                ids.insert(ik.as_slice(), entry.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.total_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(false)
    }

    /// Whether the recipient under `p` has room for `size` more bytes from
    /// `from`: its count and byte caps, the sender's share (larger for a
    /// sender the recipient named), the strangers' part, and the relay's
    /// byte cap. Called under the deposit lock.
    fn check_room(&self, p: &[u8], from: &PeerId, size: usize) -> Result<(), DepositError> {
        let l = &self.limits;
        if self.total_bytes.load(Ordering::Relaxed) + size as u64 > l.max_total_bytes {
            return Err(DepositError::RelayFull);
        }
        let from_bytes = from.to_bytes();
        let mut named: HashMap<Vec<u8>, bool> = HashMap::new();
        let mut is_named = |sender: &[u8]| -> Result<bool, StoreError> {
            if let Some(k) = named.get(sender) {
                return Ok(*k);
            }
            let k = !sender.is_empty() && self.known.contains_key(key(p, sender))?;
            named.insert(sender.to_vec(), k);
            Ok(k)
        };
        let (mut held, mut bytes, mut mine, mut strangers) = (0usize, 0u64, 0usize, 0usize);
        for kv in self.ids.scan_prefix(p) {
            let (_, v) = kv.map_err(StoreError::from)?;
            let Some(e) = IdEntry::decode(&v) else {
                continue;
            };
            held += 1;
            bytes += e.size;
            if e.from == from_bytes {
                mine += 1;
            }
            if !is_named(&e.from)? {
                strangers += 1;
            }
        }
        if held >= l.max_per_recipient || bytes + size as u64 > l.max_bytes_per_recipient {
            return Err(DepositError::Full(held));
        }
        let share = if is_named(&from_bytes)? {
            l.known_share
        } else {
            if strangers >= l.strangers_total {
                return Err(DepositError::Full(held));
            }
            l.stranger_share
        };
        if mine >= share {
            return Err(DepositError::SenderQuota {
                held: mine,
                max: share,
            });
        }
        Ok(())
    }

    /// Replaces the senders `recipient` named with `senders` (the first
    /// [`MailboxLimits::max_known_senders`] of them). Returns how many are
    /// kept. Not durable until [`MailboxStore::flush`].
    pub fn name_senders(
        &self,
        recipient: &PeerId,
        senders: &[PeerId],
    ) -> Result<usize, StoreError> {
        let p = prefix(recipient);
        let _guard = self.deposit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        for k in self.known.scan_prefix(&p).keys() {
            batch.remove(k?);
        }
        let kept = senders.len().min(self.limits.max_known_senders);
        for s in &senders[..kept] {
            batch.insert(key(&p, &s.to_bytes()), &[][..]);
        }
        self.known.apply_batch(batch)?;
        Ok(kept)
    }

    /// Up to `max` unexpired envelopes held for `recipient`, oldest first,
    /// and whether more remain.
    pub fn fetch(
        &self,
        recipient: &PeerId,
        max: usize,
        now_ms: u64,
    ) -> Result<(Vec<MailItem>, bool), StoreError> {
        let max = max.clamp(1, self.limits.max_fetch.max(1));
        let mut items = Vec::new();
        for kv in self.mail.scan_prefix(prefix(recipient)) {
            let (_, v) = kv?;
            let item = match decode_item(&v) {
                Ok(i) => i,
                Err(e) => {
                    warn!(error = %e, "skipping a corrupt mailbox item");
                    continue;
                }
            };
            if item.expires_ms <= now_ms {
                continue;
            }
            if items.len() == max {
                return Ok((items, true));
            }
            items.push(item);
        }
        Ok((items, false))
    }

    /// How much unexpired mail is held for `recipient`: envelopes and the
    /// size of their sealed envelopes in bytes.
    pub fn held(&self, recipient: &PeerId, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let mut envelopes = 0u64;
        let mut bytes = 0u64;
        for kv in self.mail.scan_prefix(prefix(recipient)) {
            let (_, v) = kv?;
            match decode_item(&v) {
                Ok(item) if item.expires_ms > now_ms => {
                    envelopes += 1;
                    bytes += item.envelope.len() as u64;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "skipping a corrupt mailbox item"),
            }
        }
        Ok((envelopes, bytes))
    }

    /// Removes the envelopes `ids` held for `recipient`. Returns how many
    /// were removed and the ids that were not held. Not durable until
    /// [`MailboxStore::flush`].
    pub fn ack(
        &self,
        recipient: &PeerId,
        ids: &[EnvelopeId],
    ) -> Result<(u32, Vec<EnvelopeId>), StoreError> {
        let p = prefix(recipient);
        let mut held = Vec::new();
        let mut unknown = Vec::new();
        for id in ids {
            let ik = key(&p, id);
            match self.ids.get(&ik)?.as_deref().and_then(IdEntry::decode) {
                Some(e) => held.push((key(&p, &e.seq), ik)),
                None => unknown.push(*id),
            }
        }
        let removed = self.remove_items(held)? as u32;
        Ok((removed, unknown))
    }

    fn remove_items(&self, entries: Vec<ItemKeys>) -> Result<usize, StoreError> {
        let n = entries.len();
        for (mk, ik) in entries {
            let removed = (&self.mail, &self.ids)
                .transaction(|(mail, ids)| {
                    let old = mail.remove(mk.as_slice())?;
                    ids.remove(ik.as_slice())?;
                    Ok::<_, ConflictableTransactionError<()>>(old.map_or(0, |v| v.len() as u64))
                })
                .map_err(tx_error)?;
            // Never below zero, whatever a concurrent removal did.
            let _ = self
                .total_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(removed))
                });
        }
        Ok(n)
    }

    fn expired_in(&self, scan: sled::Iter, now_ms: u64) -> Result<Vec<ItemKeys>, StoreError> {
        let mut out = Vec::new();
        for kv in scan {
            let (k, v) = kv?;
            let Some(plen) = k.first().map(|l| *l as usize + 1) else {
                continue;
            };
            match decode_item(&v) {
                Ok(item) if item.expires_ms > now_ms => {}
                Ok(item) => out.push((k.to_vec(), key(&k[..plen.min(k.len())], &item.id))),
                Err(_) => out.push((k.to_vec(), Vec::new())),
            }
        }
        Ok(out)
    }

    fn purge_recipient(&self, prefix: &[u8], now_ms: u64) -> Result<usize, StoreError> {
        let expired = self.expired_in(self.mail.scan_prefix(prefix), now_ms)?;
        self.remove_items(expired)
    }

    /// Removes every expired envelope. Returns how many.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, StoreError> {
        let expired = self.expired_in(self.mail.iter(), now_ms)?;
        self.remove_items(expired)
    }

    /// Counts what is stored.
    pub fn stats(&self) -> MailboxStats {
        self.scan().0
    }

    /// Counts what is stored, and per recipient (unnamed) how many
    /// envelopes it holds.
    pub fn occupancy(&self) -> crate::metrics::Occupancy {
        let (stats, per_recipient) = self.scan();
        crate::metrics::Occupancy::from_counts(stats, per_recipient)
    }

    /// One pass over the mail: the totals and each recipient's envelope
    /// count, in key order.
    fn scan(&self) -> (MailboxStats, Vec<u64>) {
        let mut s = MailboxStats::default();
        let mut per_recipient = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        for (k, v) in self.mail.iter().flatten() {
            s.envelopes += 1;
            s.bytes += v.len() as u64;
            let plen = k.first().map(|l| *l as usize + 1).unwrap_or(0).min(k.len());
            if last.as_deref() != Some(&k[..plen]) {
                s.recipients += 1;
                last = Some(k[..plen].to_vec());
                per_recipient.push(0);
            }
            if let Some(n) = per_recipient.last_mut() {
                *n += 1;
            }
        }
        (s, per_recipient)
    }
}

fn tx_error(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::Corrupt("transaction aborted".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limits: MailboxLimits) -> (tempfile::TempDir, MailboxStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, MailboxStore::open(&db, limits).unwrap())
    }

    #[test]
    fn deposit_fetch_ack_in_order_and_without_duplicates() {
        let (_d, s) = store(MailboxLimits::default());
        let (alice, bob) = (PeerId::random(), PeerId::random());
        for i in 0..5u8 {
            assert!(!s
                .deposit(&alice, &bob.to_bytes(), [i; 16], 10_000, &[i], 1)
                .unwrap());
        }
        assert!(s
            .deposit(&alice, &bob.to_bytes(), [2; 16], 10_000, &[2], 1)
            .unwrap());
        let (items, more) = s.fetch(&bob, 3, 2).unwrap();
        assert!(more);
        assert_eq!(
            items.iter().map(|i| i.id[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(items[0].from, alice.to_bytes());
        let (removed, unknown) = s.ack(&bob, &[[0; 16], [1; 16], [9; 16]]).unwrap();
        assert_eq!((removed, unknown), (2, vec![[9; 16]]));
        let (items, more) = s.fetch(&bob, 10, 2).unwrap();
        assert!(!more);
        assert_eq!(
            items.iter().map(|i| i.id[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        // Nothing for carol.
        assert!(s.fetch(&PeerId::random(), 10, 2).unwrap().0.is_empty());
        assert_eq!(
            s.stats(),
            MailboxStats {
                envelopes: 3,
                bytes: s.stats().bytes,
                recipients: 1
            }
        );
    }

    #[test]
    fn limits_are_typed_refusals() {
        let limits = MailboxLimits {
            max_per_recipient: 3,
            deposits_per_minute: 4,
            max_envelope_bytes: 8,
            ..MailboxLimits::default()
        };
        let (_d, s) = store(limits);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        for i in 0..3u8 {
            s.deposit(&a, &b.to_bytes(), [i; 16], 10_000, &[0], 1)
                .unwrap();
        }
        assert!(matches!(
            s.deposit(&a, &b.to_bytes(), [3; 16], 10_000, &[0], 1),
            Err(DepositError::Full(3))
        ));
        assert!(matches!(
            s.deposit(&a, &c.to_bytes(), [4; 16], 10_000, &[0; 9], 1),
            Err(DepositError::TooLarge { size: 9, max: 8 })
        ));
        assert!(matches!(
            s.deposit(&a, &c.to_bytes(), [4; 16], 1, &[0], 1),
            Err(DepositError::Expired)
        ));
        assert!(matches!(
            s.deposit(&a, b"nope", [4; 16], 10_000, &[0], 1),
            Err(DepositError::InvalidRecipient)
        ));
        s.deposit(&a, &c.to_bytes(), [5; 16], 10_000, &[0], 1)
            .unwrap();
        let err = s
            .deposit(&a, &c.to_bytes(), [6; 16], 10_000, &[0], 1_000)
            .unwrap_err();
        assert!(
            matches!(
                err,
                DepositError::RateLimited {
                    retry_after_ms: 59_001
                }
            ),
            "{err:?}"
        );
        // A new window.
        s.deposit(&a, &c.to_bytes(), [6; 16], 100_000, &[0], 61_000)
            .unwrap();
    }

    #[test]
    fn each_sender_has_a_share_and_strangers_together_a_part() {
        let limits = MailboxLimits {
            stranger_share: 2,
            strangers_total: 5,
            known_share: 4,
            max_per_recipient: 8,
            ..MailboxLimits::default()
        };
        let (_d, s) = store(limits);
        let bob = PeerId::random();
        let to = bob.to_bytes();
        let (alice, mallory) = (PeerId::random(), PeerId::random());
        let mut id = 0u8;
        let mut put = |from: &PeerId| {
            id += 1;
            s.deposit(from, &to, [id; 16], 10_000, &[0], 1)
        };
        put(&mallory).unwrap();
        put(&mallory).unwrap();
        assert!(matches!(
            put(&mallory),
            Err(DepositError::SenderQuota { held: 2, max: 2 })
        ));
        // Fresh identities fill the strangers' part, then nobody unnamed
        // gets in.
        let sybils: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for p in &sybils {
            let _ = put(p);
        }
        assert!(matches!(put(&alice), Err(DepositError::Full(5))));
        // Bob names alice: she has her own, larger share.
        assert_eq!(s.name_senders(&bob, &[alice]).unwrap(), 1);
        for _ in 0..3 {
            put(&alice).unwrap();
        }
        // The mailbox's own cap still holds.
        assert!(matches!(put(&alice), Err(DepositError::Full(8))));
        // Naming anew replaces the list: alice is a stranger again.
        assert_eq!(s.name_senders(&bob, &[]).unwrap(), 0);
        assert!(matches!(put(&alice), Err(DepositError::Full(_))));
    }

    #[test]
    fn byte_caps_per_recipient_and_per_relay() {
        let limits = MailboxLimits {
            max_bytes_per_recipient: 300,
            ..MailboxLimits::default()
        };
        let (_d, s) = store(limits);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        s.deposit(&a, &b.to_bytes(), [1; 16], 10_000, &[0; 100], 1)
            .unwrap();
        assert!(matches!(
            s.deposit(&a, &b.to_bytes(), [2; 16], 10_000, &[0; 200], 1),
            Err(DepositError::Full(1))
        ));
        let held = s.stats().bytes;
        let (_d2, s) = store(MailboxLimits {
            max_total_bytes: held + 50,
            ..MailboxLimits::default()
        });
        s.deposit(&a, &b.to_bytes(), [1; 16], 10_000, &[0; 100], 1)
            .unwrap();
        assert!(matches!(
            s.deposit(&a, &c.to_bytes(), [2; 16], 10_000, &[0; 100], 1),
            Err(DepositError::RelayFull)
        ));
        // Space comes back with the ack.
        s.ack(&b, &[[1; 16]]).unwrap();
        s.deposit(&a, &c.to_bytes(), [2; 16], 10_000, &[0; 100], 1)
            .unwrap();
    }

    #[test]
    fn entries_without_a_recorded_sender_are_read_and_acked() {
        let (_d, s) = store(MailboxLimits::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        s.deposit(&a, &b.to_bytes(), [1; 16], 10_000, &[1], 1)
            .unwrap();
        // An entry as stored before senders were recorded: the seq alone.
        let k = key(&prefix(&b), &[1; 16]);
        let v = s.ids.get(&k).unwrap().unwrap();
        s.ids.insert(&k, &v[..8]).unwrap();
        s.deposit(&a, &b.to_bytes(), [2; 16], 10_000, &[2], 1)
            .unwrap();
        assert_eq!(s.fetch(&b, 10, 2).unwrap().0.len(), 2);
        assert_eq!(s.ack(&b, &[[1; 16], [2; 16]]).unwrap(), (2, vec![]));
    }

    #[test]
    fn expired_mail_is_never_fetched_and_is_swept() {
        let (_d, s) = store(MailboxLimits::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        s.deposit(&a, &b.to_bytes(), [1; 16], 100, &[1], 1).unwrap();
        s.deposit(&a, &b.to_bytes(), [2; 16], 10_000, &[2], 1)
            .unwrap();
        let (items, _) = s.fetch(&b, 10, 100).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, [2; 16]);
        assert_eq!(s.sweep(100).unwrap(), 1);
        assert_eq!(s.stats().envelopes, 1);
        // The expired id is gone too: acking it reports it unknown.
        assert_eq!(s.ack(&b, &[[1; 16]]).unwrap(), (0, vec![[1; 16]]));
    }

    #[test]
    fn held_counts_the_unexpired_mail_of_its_recipient_only() {
        let (_d, s) = store(MailboxLimits::default());
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        s.deposit(&a, &b.to_bytes(), [1; 16], 100, &[1; 7], 1)
            .unwrap();
        s.deposit(&a, &b.to_bytes(), [2; 16], 10_000, &[2; 5], 1)
            .unwrap();
        s.deposit(&a, &b.to_bytes(), [3; 16], 10_000, &[3; 4], 1)
            .unwrap();
        s.deposit(&a, &c.to_bytes(), [4; 16], 10_000, &[4; 9], 1)
            .unwrap();
        assert_eq!(s.held(&b, 50).unwrap(), (3, 16));
        // The first has expired at 100, swept or not.
        assert_eq!(s.held(&b, 100).unwrap(), (2, 9));
        assert_eq!(s.held(&c, 100).unwrap(), (1, 9));
        assert_eq!(s.held(&a, 100).unwrap(), (0, 0));
        // Counting changes nothing.
        assert_eq!(s.fetch(&b, 10, 50).unwrap().0.len(), 3);
    }

    #[test]
    fn ttl_caps_the_expiry_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        {
            let db = sled::open(dir.path()).unwrap();
            let s = MailboxStore::open(
                &db,
                MailboxLimits {
                    ttl_secs: 1,
                    ..Default::default()
                },
            )
            .unwrap();
            s.deposit(&a, &b.to_bytes(), [1; 16], u64::MAX, &[1], 1)
                .unwrap();
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let s = MailboxStore::open(&db, MailboxLimits::default()).unwrap();
        let (items, _) = s.fetch(&b, 10, 2).unwrap();
        assert_eq!(items[0].expires_ms, 1_001);
        assert!(s.fetch(&b, 10, 1_001).unwrap().0.is_empty());
    }
}
