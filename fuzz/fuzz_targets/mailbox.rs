//! Mailbox protocol frames as a relay reads them (`Request`) and as an agent
//! reads a relay's answer (`Response`). A decoded request is also applied
//! to a real (temporary) mailbox store: whatever it asks, the store answers
//! with a value or a typed error, never a panic.
#![no_main]

use std::sync::OnceLock;

use agentmesh_relay::{
    mailbox::{MailboxStore, Request, Response},
    MailboxLimits,
};
use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;

fn store() -> &'static MailboxStore {
    static STORE: OnceLock<MailboxStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        MailboxStore::open(&db, MailboxLimits::default()).expect("mailbox store")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = Response::from_bytes(data) {
        let bytes = resp.to_bytes().expect("a decoded answer encodes");
        assert_eq!(Response::from_bytes(&bytes).expect("re-decodes"), resp);
    }
    let Ok(req) = Request::from_bytes(data) else {
        return;
    };
    let bytes = req.to_bytes().expect("a decoded request encodes");
    assert_eq!(Request::from_bytes(&bytes).expect("re-decodes"), req);
    static ME: OnceLock<PeerId> = OnceLock::new();
    let me = *ME.get_or_init(|| {
        libp2p::identity::Keypair::ed25519_from_bytes([7; 32])
            .expect("a valid seed")
            .public()
            .to_peer_id()
    });
    let s = store();
    match req {
        Request::Deposit {
            to,
            id,
            expires_ms,
            envelope,
        } => {
            let _ = s.deposit(&me, &to, id, expires_ms, &envelope, 1_000);
        }
        Request::Fetch { max, .. } => {
            let _ = s.fetch(&me, max as usize, 1_000);
        }
        Request::Ack { ids, .. } => {
            let ids: Vec<[u8; 16]> = ids.into_iter().map(|i| i.into_array()).collect();
            let _ = s.ack(&me, &ids);
        }
        Request::Count { .. } => {
            let _ = s.held(&me, 1_000);
        }
        Request::Senders { known, .. } => {
            let senders: Vec<PeerId> = known
                .iter()
                .filter_map(|k| PeerId::from_bytes(k).ok())
                .collect();
            let _ = s.name_senders(&me, &senders);
        }
    }
});
