//! Cost of sealing and opening one message with a 1 KiB payload, side by
//! side with the primitives it is made of, so that the framing overhead can
//! be attributed.
//!
//! Run with `cargo bench -p agentmesh-node --bench crypto`. Every line of the
//! `envelope_1KiB` group handles one message from alice to bob whose payload
//! is a JSON string of exactly 1024 bytes.
//!
//! Primitives:
//! - `olm encrypt+decrypt`: a bare vodozemac session pair, established in
//!   both directions (normal Olm messages); `olm encrypt only` and `olm
//!   decrypt only` its halves; `(pre-key msgs)` on a session that never got a reply and so keeps
//!   sending pre-key messages, as a one-way flow does.
//! - `ed25519 sign+verify`, `sign only`, `verify only`: ed25519-dalek over a
//!   message as long as the signed part of a real envelope (domain || CBOR
//!   body), with the verifying key already decompressed.
//! - `ed25519 key decompress`: `VerifyingKey::from_bytes`, which
//!   `Amid::from_bytes` (every AMID decoded from CBOR) and `Amid::verify` do.
//! - `ed25519 verify via Amid::verify`: what `SignedEnvelope::open` does:
//!   decompress the key, concatenate domain and body, verify.
//! - `cbor encode+decode (envelope)`: `SignedEnvelope::to_bytes/from_bytes`;
//!   `cbor decode (body)`: the inner `EnvelopeBody` decode that `open` and
//!   `peek_id` do; `cbor encode+decode (body + envelope)`: all CBOR of a
//!   seal and an open.
//! - `schema check (…)`: `Schemas::validate` of a 1 KiB payload that
//!   conforms, what a session opened with a schema adds per message.
//! - `json encode+decode (payload)`: `serde_json` to bytes and back to a
//!   `Value`, as the store does around Olm.
//! - `vodozemac pickle encrypt`: `Session::pickle().encrypt`, which the store
//!   does on every seal and on every receive.
//! - `sled apply_batch (receive's 3 writes)`: one `apply_batch` with the
//!   three writes `receive` makes, values of the real sizes, on a temporary
//!   database (the batch is built untimed).
//!
//! Paths:
//! - `seal+open (envelope, no storage)`: JSON, Olm encrypt, CBOR body,
//!   Ed25519 sign, CBOR envelope; then CBOR decode, verify and checks, Olm
//!   decrypt, JSON parse: `SessionStore::seal` + `receive` minus storage.
//!   `open only` is its receiving half.
//! - `seal+receive (full, sled)`: `SessionStore::seal` on alice and
//!   `SessionStore::receive` on bob on temporary sled databases, with the
//!   wire encoding in between. Both sides pickle the Olm session and write
//!   sled; bob also writes the replay entry and the sealed inbox entry. Bob's
//!   inbox is drained every 1024 messages outside the timed region. `seal
//!   only` and `receive only` time one half each.
//! - `seal+receive+flush/64 (full, sled on disk)`: as above on on-disk
//!   databases configured as a node configures its own, flushing bob's
//!   database after every 64 messages as the node's inbound stream does per
//!   burst (time per message).

mod common;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use vodozemac::olm::OlmMessage;

use agentmesh_node::{
    crypto::envelope::{EnvelopeBody, MessageId, SignedEnvelope, DOMAIN_SEP_ENVELOPE},
    identity::Identity,
};
use agentmesh_transports::codec;

use common::{content, olm_pair, pair, payload, NOW, PAYLOAD_BYTES};

/// Inbox entries allowed to pile up before they are drained (untimed).
const DRAIN_EVERY: usize = 1024;
/// Messages per flushed burst (the node's `ACK_BATCH`).
const BURST: u64 = 64;

fn bench_envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_1KiB");
    g.throughput(Throughput::Elements(1));
    let value = payload(3);
    let plain = serde_json::to_vec(&value).expect("json");
    assert_eq!(plain.len(), PAYLOAD_BYTES);

    // --- Olm -------------------------------------------------------------
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
    {
        // Alice's messages are dropped: her chain just moves on.
        let (mut a, _) = olm_pair(true);
        g.bench_function("olm encrypt only", |bench| {
            bench.iter(|| black_box(a.encrypt(black_box(&plain)).expect("encrypts")))
        });
    }
    {
        let (mut a, mut b) = olm_pair(true);
        g.bench_function("olm decrypt only", |bench| {
            bench.iter_batched(
                || a.encrypt(&plain).expect("encrypts"),
                |m| black_box(b.decrypt(&m).expect("decrypts")),
                BatchSize::SmallInput,
            )
        });
    }

    // A real envelope, for sizes and a template body.
    let (mut a, b) = pair(None, true);
    let env = a
        .store
        .seal(
            &a.id,
            &b.amid(),
            None,
            MessageId::random(),
            &content(2),
            NOW,
        )
        .expect("seals");
    let body: EnvelopeBody = env.open(&b.amid(), NOW).expect("opens");
    let body_cbor = codec::encode(&body).expect("body encodes");
    let signed = [DOMAIN_SEP_ENVELOPE, &body_cbor[..]].concat();
    eprintln!(
        "envelope: payload {PAYLOAD_BYTES} B, olm ciphertext {} B, signed part {} B, wire {} B",
        body.ciphertext.len(),
        signed.len(),
        env.to_bytes().len()
    );

    // --- Ed25519 -----------------------------------------------------------
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let sig = key.sign(&signed);
    g.bench_function("ed25519 sign+verify", |bench| {
        bench.iter(|| {
            let sig = key.sign(black_box(&signed));
            vk.verify(black_box(&signed), &sig).expect("verifies");
        })
    });
    g.bench_function("ed25519 sign only", |bench| {
        bench.iter(|| black_box(key.sign(black_box(&signed))))
    });
    g.bench_function("ed25519 verify only", |bench| {
        bench.iter(|| vk.verify(black_box(&signed), &sig).expect("verifies"))
    });
    let vk_bytes = vk.to_bytes();
    g.bench_function("ed25519 key decompress", |bench| {
        bench.iter(|| black_box(VerifyingKey::from_bytes(black_box(&vk_bytes)).expect("key")))
    });
    {
        let signer = Identity::from_seed(&[7; 32]);
        let amid = signer.amid();
        let sig: [u8; 64] = signer.sign(DOMAIN_SEP_ENVELOPE, &body_cbor);
        assert_eq!(Signature::from_bytes(&sig), key.sign(&signed));
        g.bench_function("ed25519 verify via Amid::verify", |bench| {
            bench.iter(|| {
                assert!(amid.verify(DOMAIN_SEP_ENVELOPE, black_box(&body_cbor), &sig));
            })
        });
    }

    // --- CBOR, JSON, pickles -------------------------------------------------
    g.bench_function("cbor encode+decode (envelope)", |bench| {
        bench.iter(|| {
            let bytes = black_box(&env).to_bytes();
            black_box(SignedEnvelope::from_bytes(&bytes).expect("decodes"))
        })
    });
    g.bench_function("cbor decode (body)", |bench| {
        bench.iter(|| {
            black_box(
                codec::decode::<EnvelopeBody>(black_box(&body_cbor), usize::MAX).expect("decodes"),
            )
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
    {
        // What a session opened with a schema adds on the receive path: one
        // check of the JSON payload (already parsed) against its schema.
        let schemas = agentmesh_node::schema::Schemas::standard();
        let mut request = serde_json::json!({
            "type": "request",
            "action": "forecast",
            "params": { "city": "Oslo", "days": 3, "notes": "" },
        });
        let len = serde_json::to_vec(&request).expect("json").len();
        request["params"]["notes"] = serde_json::Value::String("n".repeat(PAYLOAD_BYTES - len));
        assert_eq!(
            serde_json::to_vec(&request).expect("json").len(),
            PAYLOAD_BYTES
        );
        g.bench_function("schema check (agentmesh/request@1)", |bench| {
            bench.iter(|| {
                schemas
                    .validate("agentmesh/request@1", black_box(&request))
                    .expect("conforms")
            })
        });
        let text = serde_json::json!({ "type": "text", "text": "t".repeat(PAYLOAD_BYTES - 27) });
        g.bench_function("schema check (agentmesh/text@1)", |bench| {
            bench.iter(|| {
                schemas
                    .validate("agentmesh/text@1", black_box(&text))
                    .expect("conforms")
            })
        });
    }
    g.bench_function("json encode+decode (payload)", |bench| {
        bench.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).expect("encodes");
            black_box(serde_json::from_slice::<serde_json::Value>(&bytes).expect("decodes"))
        })
    });
    {
        let (s, _) = olm_pair(true);
        let pickle_key = [9u8; 32];
        eprintln!(
            "olm session pickle: {} B",
            s.pickle().encrypt(&pickle_key).len()
        );
        g.bench_function("vodozemac pickle encrypt", |bench| {
            bench.iter(|| black_box(s.pickle().encrypt(black_box(&pickle_key))))
        });
    }

    {
        // The three writes of SessionStore::receive, with values of the
        // real sizes: the Olm pickle (overwritten), the replay entry and the
        // sealed inbox entry (new keys); the inbox is drained untimed.
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("sled opens");
        let tree = db.open_tree("node").expect("tree opens");
        let pickle = vec![b'p'; 1547];
        let inbox_value = vec![b'i'; 1140];
        let olm_key = [&b"olm/"[..], &[1; 32], &[2; 43]].concat();
        let mut n = 0u64;
        g.bench_function("sled apply_batch (receive's 3 writes)", |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let id = db.generate_id().expect("id");
                    let mut batch = sled::Batch::default();
                    batch.insert(olm_key.as_slice(), pickle.as_slice());
                    let seen = [&b"seen/"[..], &[1; 32], &n.to_be_bytes(), &[0; 8]].concat();
                    batch.insert(seen, &NOW.to_be_bytes());
                    let inbox = [&b"inbox/"[..], &id.to_be_bytes()].concat();
                    batch.insert(inbox, inbox_value.as_slice());
                    let t0 = Instant::now();
                    tree.apply_batch(batch).expect("applies");
                    total += t0.elapsed();
                    if n.is_multiple_of(DRAIN_EVERY as u64) {
                        for k in tree.scan_prefix(b"inbox/").keys() {
                            tree.remove(k.expect("key")).expect("removed");
                        }
                    }
                }
                total
            })
        });
    }

    // --- the envelope path, no storage -----------------------------------
    {
        let alice = Identity::from_seed(&[1; 32]);
        let bob = Identity::from_seed(&[2; 32]).amid();
        let mut template = body.clone();
        template.from = alice.amid();
        template.to = bob;
        let mut seq = 0u64;
        // What SessionStore::seal does, minus sled.
        let mut seal = |olm: &mut vodozemac::olm::Session| {
            let plain = serde_json::to_vec(black_box(&value)).expect("json");
            let (t, ct) = olm.encrypt(&plain).expect("encrypts").to_parts();
            seq += 1;
            let mut body = template.clone();
            body.id = MessageId::random();
            body.seq = seq;
            body.olm_type = t as u8;
            body.ciphertext = ct;
            SignedEnvelope::seal(&alice, &body)
                .expect("seals")
                .to_bytes()
        };
        // What SessionStore::receive does, minus sled.
        let open = |olm: &mut vodozemac::olm::Session, wire: &[u8]| {
            let env = SignedEnvelope::from_bytes(black_box(wire)).expect("decodes");
            let got = env.open(&bob, NOW).expect("verifies");
            let m =
                OlmMessage::from_parts(got.olm_type.into(), &got.ciphertext).expect("olm message");
            let plain = olm.decrypt(&m).expect("decrypts");
            serde_json::from_slice::<serde_json::Value>(&plain).expect("json")
        };
        let (mut oa, mut ob) = olm_pair(true);
        g.bench_function("seal+open (envelope, no storage)", |bench| {
            bench.iter(|| {
                let wire = seal(&mut oa);
                black_box(open(&mut ob, &wire))
            })
        });
        g.bench_function("open only (envelope, no storage)", |bench| {
            bench.iter_batched(
                || seal(&mut oa),
                |wire| black_box(open(&mut ob, &wire)),
                BatchSize::SmallInput,
            )
        });
    }

    // --- the store, sled included ------------------------------------------
    // `timed` selects what is timed: (seal, receive).
    for (name, timed) in [
        ("seal+receive (full, sled)", (true, true)),
        ("seal only (full, sled)", (true, false)),
        ("receive only (full, sled)", (false, true)),
    ] {
        let (mut a, mut b) = pair(None, true);
        let to = b.amid();
        let mut pending = 0usize;
        let mut i = 0u64;
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    i += 1;
                    let p = content(i);
                    let id = MessageId::random();
                    let t0 = Instant::now();
                    let env = a.store.seal(&a.id, &to, None, id, &p, NOW).expect("seals");
                    let wire = env.to_bytes();
                    let t1 = Instant::now();
                    let env = SignedEnvelope::from_bytes(&wire).expect("decodes");
                    let got = b.store.receive(&env, None, NOW).expect("receives");
                    let t2 = Instant::now();
                    black_box(got);
                    if timed.0 {
                        total += t1 - t0;
                    }
                    if timed.1 {
                        total += t2 - t1;
                    }
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
                            .seal(&a.id, &to, None, MessageId::random(), &content(i), NOW)
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
