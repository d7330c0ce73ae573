//! The Olm account and the Olm sessions on disk: writing them, reading a
//! peer's back into the cache, and dropping them.
use vodozemac::olm::{Session, SessionPickle};

use crate::{identity::Amid, storage::StorageError};

use super::{be, key, read_be, SessionStore, ACCOUNT_KEY, MAX_OLM_SESSIONS_PER_PEER, OLM_VALUE_V1};

impl SessionStore {
    pub(super) fn put_account(&self, batch: &mut sled::Batch) {
        batch.insert(
            ACCOUNT_KEY,
            self.account
                .pickle()
                .encrypt(&self.pickle_key.0)
                .into_bytes(),
        );
    }

    /// Writes `s` as the most recently used of `peer`'s Olm sessions.
    pub(super) fn put_olm(
        &mut self,
        batch: &mut sled::Batch,
        peer: &Amid,
        s: &Session,
        now_ms: u64,
    ) {
        self.put_pickle(batch, peer, &s.session_id(), s.pickle(), now_ms);
    }

    pub(super) fn put_pickle(
        &mut self,
        batch: &mut sled::Batch,
        peer: &Amid,
        id: &str,
        pickle: SessionPickle,
        now_ms: u64,
    ) {
        self.olm_clock = self.olm_clock.max(now_ms.saturating_mul(1000)) + 1;
        let mut v = vec![OLM_VALUE_V1];
        v.extend_from_slice(&be(self.olm_clock));
        v.extend_from_slice(pickle.encrypt(&self.pickle_key.0).as_bytes());
        batch.insert(key(b"olm/", &[peer.as_bytes(), id.as_bytes()]), v);
    }

    /// Whether any Olm session with `peer` exists, in memory or on disk.
    pub(super) fn has_olm(&self, peer: &Amid) -> bool {
        match self.olm.get(peer) {
            Some(list) => !list.is_empty(),
            None => self
                .tree
                .scan_prefix(key(b"olm/", &[peer.as_bytes()]))
                .next()
                .is_some(),
        }
    }

    /// Puts `peer`'s Olm sessions in memory (read from disk if they are not
    /// there yet), marks them used, and drops the least recently used
    /// peers' sessions from memory when there are too many.
    pub(super) fn load_olm(&mut self, peer: &Amid) -> Result<(), StorageError> {
        self.olm_clock += 1;
        self.olm_used.insert(*peer, self.olm_clock);
        if self.olm.contains_key(peer) {
            return Ok(());
        }
        let mut found: Vec<(u64, Session)> = Vec::new();
        for item in self.tree.scan_prefix(key(b"olm/", &[peer.as_bytes()])) {
            let (_, v) = item?;
            let (at, text) = match v.split_first() {
                Some((&OLM_VALUE_V1, rest)) if rest.len() >= 8 => (read_be(&rest[..8]), &rest[8..]),
                _ => (0, &v[..]),
            };
            let text =
                std::str::from_utf8(text).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            let pickle = SessionPickle::from_encrypted(text, &self.pickle_key.0)
                .map_err(|e| StorageError::Pickle(e.to_string()))?;
            self.olm_clock = self.olm_clock.max(at);
            found.push((at, Session::from_pickle(pickle)));
        }
        found.sort_by_key(|(at, _)| *at);
        self.olm
            .insert(*peer, found.into_iter().map(|(_, s)| s).collect());
        if self.olm.len() > self.olm_cap {
            // Drop an eighth at once, so that a scan over many peers does
            // not sort for every one of them.
            let keep = self.olm_cap - self.olm_cap / 8;
            let mut by_age: Vec<(u64, Amid)> = self
                .olm_used
                .iter()
                .filter(|(p, _)| *p != peer && !self.unsaved.contains(*p))
                .map(|(p, at)| (*at, *p))
                .collect();
            by_age.sort_unstable_by_key(|(at, _)| *at);
            let evict = self.olm.len().saturating_sub(keep);
            for (_, p) in by_age.into_iter().take(evict) {
                self.olm.remove(&p);
                self.olm_used.remove(&p);
            }
        }
        Ok(())
    }

    /// Deletes every Olm session with `peer`, in memory and on disk.
    pub(super) fn drop_olm(&mut self, peer: &Amid) -> Result<(), StorageError> {
        self.unsaved.remove(peer);
        self.olm.remove(peer);
        self.olm_used.remove(peer);
        for item in self.tree.scan_prefix(key(b"olm/", &[peer.as_bytes()])) {
            let (k, _) = item?;
            self.tree.remove(k)?;
        }
        Ok(())
    }

    /// Puts `s` back as `peer`'s most recently used session; the peer's
    /// sessions must be in memory (see [`Self::load_olm`]).
    pub(super) fn push_olm(&mut self, peer: Amid, s: Session) {
        let list = self.olm.entry(peer).or_default();
        list.retain(|x| x.session_id() != s.session_id());
        list.push(s);
        if list.len() > MAX_OLM_SESSIONS_PER_PEER {
            let old = list.remove(0);
            let _ = self.tree.remove(key(
                b"olm/",
                &[peer.as_bytes(), old.session_id().as_bytes()],
            ));
        }
    }
}
