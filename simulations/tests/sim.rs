//! The virtual-time simulator: deterministic for a seed, and each
//! ready-made scenario shows what it is about. Small sizes here; the large
//! runs are benchmarks (BENCHMARKS.md §10).

use agentmesh_sim::sim::{run, Path, Scenario, READY_MADE};

fn small(name: &str, nodes: u32, minutes: u64) -> Scenario {
    let mut s = Scenario::load(name).expect("ready-made scenario");
    s.nodes = nodes;
    s.duration_min = minutes;
    s.join_min = s.join_min.min(minutes / 4);
    s.warmup_min = minutes / 3;
    for event in &mut s.events {
        event.at_min = minutes / 2;
        if event.target.parse::<u32>().is_ok_and(|n| n > 10) {
            event.target = nodes.to_string();
        }
    }
    s.check().expect("valid");
    s
}

#[test]
fn the_same_scenario_and_seed_give_a_byte_identical_report() {
    let s = small("churn", 200, 60);
    let a = run(&s, false);
    let b = run(&s, false);
    assert_eq!(a.text(), b.text(), "seed {}", s.seed);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let files = a.write(dir_a.path()).unwrap();
    b.write(dir_b.path()).unwrap();
    for f in &files {
        let x = std::fs::read(dir_a.path().join(f)).unwrap();
        let y = std::fs::read(dir_b.path().join(f)).unwrap();
        assert!(x == y, "{f} differs between two runs of seed {}", s.seed);
    }
    assert!(files.iter().any(|f| f.ends_with(".svg")));
    let mut other = s.clone();
    other.seed += 1;
    assert_ne!(
        run(&other, false).text(),
        a.text(),
        "another seed, another run"
    );
}

#[test]
fn steady_state_finds_cards_and_delivers_without_mailboxes() {
    let r = run(&small("steady", 250, 60), false);
    assert!(r.lookups() > 100, "{}", r.text());
    assert!(r.lookup_success() >= 97.0, "{}", r.text());
    assert!(r.median_hops() <= 4, "{}", r.text());
    assert!(r.delivered_by(Path::Direct) > 0, "{}", r.text());
    assert!(r.delivered_by(Path::Relayed) > 0, "{}", r.text());
    assert_eq!(
        r.delivered_by(Path::Mailbox),
        0,
        "nobody leaves: {}",
        r.text()
    );
}

#[test]
fn churn_fills_mailboxes_and_drains_them_on_return() {
    let r = run(&small("churn", 250, 90), false);
    assert!(r.delivered_by(Path::Mailbox) > 0, "{}", r.text());
    assert!(r.lookup_success() >= 90.0, "{}", r.text());
}

#[test]
fn more_nats_mean_more_relayed_first_contacts() {
    let steady = run(&small("steady", 250, 45), false);
    let heavy = run(&small("nat-heavy", 250, 45), false);
    let share = |r: &agentmesh_sim::sim::Report| {
        let relayed = r.first_contacts_by(Path::Relayed) as f64;
        let all: usize = Path::ALL.iter().map(|p| r.first_contacts_by(*p)).sum();
        relayed / all.max(1) as f64
    };
    assert!(
        share(&heavy) > share(&steady),
        "nat-heavy {} vs steady {}",
        share(&heavy),
        share(&steady)
    );
}

#[test]
fn a_relay_that_goes_away_is_reported_down_and_its_agents_move() {
    let r = run(&small("relay-failure", 250, 60), false);
    let text = r.text();
    assert!(text.contains("| 0 | no | 0 |"), "{text}");
    assert!(
        r.delivered_by(Path::Relayed) + r.delivered_by(Path::HolePunched) > 0,
        "{text}"
    );
}

#[test]
fn a_flash_crowd_joins_and_is_found() {
    let r = run(&small("flash-crowd", 200, 60), false);
    assert!(r.lookup_success() >= 95.0, "{}", r.text());
}

#[test]
fn every_ready_made_scenario_runs() {
    for (name, _) in READY_MADE {
        let r = run(&small(name, 60, 20), false);
        assert!(r.events() > 0, "{name}");
    }
}

/// Senders run the node's own delivery machine: a recipient that stopped
/// cleanly told its peers, so no stream waits for acknowledgements that
/// cannot come; one that crashed did not, so its senders give the stream
/// up after the acknowledgement timeout and its mail still arrives, through
/// the mailbox.
#[test]
fn a_crashed_recipient_is_found_out_by_its_missing_acknowledgements() {
    let mut clean = small("churn", 250, 90);
    clean.churn.crash_share = 0.0;
    let mut crashing = clean.clone();
    crashing.churn.crash_share = 1.0;
    let clean = run(&clean, false);
    let crashing = run(&crashing, false);
    assert_eq!(clean.stale_streams(), 0, "{}", clean.text());
    assert!(crashing.stale_streams() > 0, "{}", crashing.text());
    assert!(
        crashing.delivered_by(Path::Mailbox) > 0,
        "{}",
        crashing.text()
    );
    assert!(crashing.text().contains("streams given up unacknowledged"));
}
