//! Cost of sealing and opening one message with a 1 KiB payload, side by
//! side with the primitives it is made of, so that the framing overhead can
//! be attributed.
//!
//! Run with `cargo bench -p agentmesh-node --bench crypto`. Every line of the
//! `envelope_1KiB` group moves one message from alice to bob:
//!
//! - `olm encrypt+decrypt`: a bare vodozemac session pair (established in
//!   both directions, so normal Olm messages), 1 KiB plaintext.
//! - `olm encrypt+decrypt (pre-key msgs)`: the same on a session that never
//!   received a reply, which keeps sending pre-key messages (what a one-way
//!   flow such as the throughput bench puts on the wire).
//! - `ed25519 sign+verify`: ed25519-dalek, over a message as long as the
//!   signed part of a real envelope (domain || CBOR body).
//! - `ed25519 verify via Amid::verify`: what `SignedEnvelope::open` does:
//!   decompress the key from the AMID bytes, concatenate, verify.
//! - `cbor encode+decode (envelope)`: `SignedEnvelope::to_bytes/from_bytes`.
//! - `cbor encode+decode (body + envelope)`: the same plus the inner
//!   `EnvelopeBody` encode/decode that `seal`/`open` do.
//! - `json encode+decode (payload)`: `serde_json` to bytes and back to a
//!   `Value`, as the store does around Olm.
//! - `vodozemac pickle encrypt`: `Session::pickle().encrypt`, which the store
//!   does on every seal and every receive.
//! - `seal+open (envelope, no storage)`: the whole envelope path with no
//!   storage: JSON, Olm encrypt, CBOR body, Ed25519 sign, CBOR envelope; then
//!   CBOR decode, verify, checks, Olm decrypt, JSON parse.
//! - `seal+receive (full, sled)`: `SessionStore::seal` on alice and
//!   `SessionStore::receive` on bob on temporary sled databases, with the wire
//!   encoding in between. Both sides pickle the Olm session and write sled;
//!   bob also writes the replay entry and the sealed inbox entry. Bob's inbox
//!   is drained every 1024 messages outside the timed region.
//! - `seal+receive+flush/64 (full, sled on disk)`: as above on on-disk
//!   databases configured as a node configures them, flushing bob's database
//!   after every 64 messages as the node's inbound stream does per burst
//!   (time per message).

mod common;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use vodozemac::olm::OlmMessage;

use agentmesh_node::{
    envelope::{EnvelopeBody, MessageId, SignedEnvelope, DOMAIN_SEP_ENVELOPE},
    identity::Identity,
};
use agentmesh_transports::codec;

use common::{olm_pair, pair, payload, NOW, PAYLOAD_BYTES};

/// Inbox entries allowed to pile up before they are drained (untimed).
const DRAIN_EVERY: usize = 1024;
/// Messages per flushed burst (the node's `ACK_BATCH`).
const BURST: u64 = 64;

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_1KiB");
    g.throughput(Throughput::Elements(1));
    let plain = serde_json::to_vec(&payload(7)).expect("json");
    assert_eq!(plain.len(), PAYLOAD_BYTES);

    // --- bare primitives -------------------------------------------------
    for (name, established) in [
        ("olm encrypt+decrypt", true),
        ("olm encrypt+decrypt (pre-key msgs)", false),
    ] {
        let (mut a, mut b) = olm_pair(established);
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let m = a.encrypt(black_box(&plain)).expect("encrypts");
                black_box(b.decrypt(&m).expect("decrypts"))
            })
        });
    }

    // A real envelope, for sizes and a template body.
    let (mut a, b) = pair(None, true);
    let env = a
        .store
        .seal(&a.id, &b.amid(), MessageId::random(), &payload(2), NOW)
        .expect("seals");
    let body: EnvelopeBody = env.open(&b.amid(), NOW).expect("opens");
    let body_cbor = codec::encode(&body).expect("body encodes");
    let signed_len = DOMAIN_SEP_ENVELOPE.len() + body_cbor.len();
    eprintln!(
        "envelope: payload {PAYLOAD_BYTES} B, olm ciphertext {} B, signed part {signed_len} B, wire {} B",
        body.ciphertext.len(),
        env.to_bytes().len()
    );

    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let msg = vec![0x5a; signed_len];
    g.bench_function("ed25519 sign+verify", |bench| {
        bench.iter(|| {
            let sig = key.sign(black_box(&msg));
            vk.verify(black_box(&msg), &sig).expect("verifies");
        })
    });
    let signer = Identity::from_seed(&[7; 32]);
    let sig = signer.sign(DOMAIN_SEP_ENVELOPE, &body_cbor);
    let vk_bytes = signer.amid();
    g.bench_function("ed25519 verify only", |bench| {
        let full = [DOMAIN_SEP_ENVELOPE, &body_cbor[..]].concat();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(vk_bytes.as_bytes()).expect("key");
        let s = ed25519_dalek::Signature::from_bytes(&sig);
        bench.iter(|| vk.verify(black_box(&full), &s).expect("verifies"))
    });
    g.bench_function("ed25519 verify via Amid::verify", |bench| {
        bench.iter(|| {
            assert!(vk_bytes.verify(DOMAIN_SEP_ENVELOPE, black_box(&body_cbor), &sig));
        })
    });

    g.bench_function("cbor encode+decode (envelope)", |bench| {
        bench.iter(|| {
            let bytes = black_box(&env).to_bytes();
            black_box(SignedEnvelope::from_bytes(&bytes).expect("decodes"))
        })
    });
    g.bench_function("cbor encode+decode (body + envelope)", |bench| {
        bench.iter(|| {
            let inner = codec::encode(black_box(&body)).expect("encodes");
            let back: EnvelopeBody = codec::decode(&inner, usize::MAX).expect("decodes");
            let bytes = black_box(&env).to_bytes();
            black_box((back, SignedEnvelope::from_bytes(&bytes).expect("decodes")))
        })
    });
    let value = payload(3);
    g.bench_function("json encode+decode (payload)", |bench| {
        bench.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).expect("encodes");
            black_box(serde_json::from_slice::<serde_json::Value>(&bytes).expect("decodes"))
        })
    });
    {
        let (s, _) = olm_pair(true);
        let pickle_key = [9u8; 32];
        eprintln!("olm session pickle: {} B", s.pickle().encrypt(&pickle_key).len());
        g.bench_function("vodozemac pickle encrypt", |bench| {
            bench.iter(|| black_box(s.pickle().encrypt(black_box(&pickle_key))))
        });
    }

    // --- the envelope path, no storage -----------------------------------
    {
        let (mut oa, mut ob) = olm_pair(true);
        let alice = Identity::from_seed(&[1; 32]);
        let bob = Identity::from_seed(&[2; 32]).amid();
        let mut template = body.clone();
        template.from = alice.amid();
        template.to = bob;
        let mut seq = 0u64;
        g.bench_function("seal+open (envelope, no storage)", |bench| {
            bench.iter(|| {
                // alice: what SessionStore::seal does, minus sled.
                let plain = serde_json::to_vec(black_box(&value)).expect("json");
                let (t, ct) = oa.encrypt(&plain).expect("encrypts").to_parts();
                seq += 1;
                let mut body = template.clone();
                body.id = MessageId::random();
                body.seq = seq;
                body.olm_type = t as u8;
                body.ciphertext = ct;
                let wire = SignedEnvelope::seal(&alice, &body).expect("seals").to_bytes();
                // bob: what SessionStore::receive does, minus sled.
                let env = SignedEnvelope::from_bytes(black_box(&wire)).expect("decodes");
                let got = env.open(&bob, NOW).expect("verifies");
                let m = OlmMessage::from_parts(got.olm_type.into(), &got.ciphertext)
                    .expect("olm message");
                let plain = ob.decrypt(&m).expect("decrypts");
                black_box(serde_json::from_slice::<serde_json::Value>(&plain).expect("json"))
            })
        });
    }

    // --- the store, sled included ------------------------------------------
    {
        let (mut a, mut b) = pair(None, true);
        let to = b.amid();
        let mut pending = 0usize;
        let mut i = 0u64;
        g.bench_function("seal+receive (full, sled)", |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    i += 1;
                    let p = payload(i);
                    let t0 = Instant::now();
                    let env = a
                        .store
                        .seal(&a.id, &to, MessageId::random(), &p, NOW)
                        .expect("seals");
                    let wire = env.to_bytes();
                    let env = SignedEnvelope::from_bytes(&wire).expect("decodes");
                    let got = b.store.receive(&env, None, NOW).expect("receives");
                    total += t0.elapsed();
                    black_box(got);
                    pending += 1;
                    if pending >= DRAIN_EVERY {
                        b.drain();
                        pending = 0;
                    }
                }
                total
            })
        });
    }
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut a, mut b) = pair(Some(dir.path()), true);
        let to = b.amid();
        let mut pending = 0usize;
        let mut i = 0u64;
        g.bench_function("seal+receive+flush/64 (full, sled on disk)", |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BURST);
                    left -= n;
                    let t0 = Instant::now();
                    for _ in 0..n {
                        i += 1;
                        let env = a
                            .store
                            .seal(&a.id, &to, MessageId::random(), &payload(i), NOW)
                            .expect("seals");
                        let env = SignedEnvelope::from_bytes(&env.to_bytes()).expect("decodes");
                        black_box(b.store.receive(&env, None, NOW).expect("receives"));
                    }
                    b.db.flush().expect("flushes");
                    total += t0.elapsed();
                    pending += n as usize;
                    if pending >= DRAIN_EVERY {
                        b.drain();
                        pending = 0;
                    }
                }
                total
            })
        });
        drop((a, b));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_envelope
}
criterion_main!(benches);
