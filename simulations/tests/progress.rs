//! Progress of `agentmesh-sim sim` as its user sees it: a line every tenth
//! of the virtual time in a log (stderr not a terminal), a bar and no such
//! lines on a terminal (a pseudo-terminal from util-linux `script`), and
//! the report on stdout either way.

use std::{path::Path, process::Command};

/// The arguments of a small, quick run writing to `out`.
fn sim_args(out: &Path) -> Vec<String> {
    [
        "sim",
        "--scenario",
        "steady",
        "--nodes",
        "100",
        "--minutes",
        "10",
        "--seed",
        "7",
        "--out",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([out.display().to_string()])
    .collect()
}

#[test]
fn a_log_gets_a_line_per_tenth_and_no_bar() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentmesh-sim"))
        .args(sim_args(dir.path()))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    let tenths: Vec<&str> = err.lines().filter(|l| l.starts_with("sim: ")).collect();
    assert!(tenths.len() >= 9, "{err}");
    assert!(tenths[0].starts_with("sim:  10 %"), "{err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\r'),
        "no drawing: {err:?}"
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains("wall time"));
}

#[test]
fn a_terminal_gets_a_bar_instead_of_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_agentmesh-sim").to_owned())
        .chain(sim_args(dir.path()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    // `script` gives the command a pseudo-terminal for stdin, stdout and
    // stderr, and copies what it wrote to our stdout.
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("util-linux `script` runs");
    assert!(out.status.success(), "{out:?}");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("wall time"), "the report: {seen}");
    assert!(seen.contains("min virtual"), "the bar's label: {seen:?}");
    assert!(
        seen.contains('\u{1b}'),
        "the bar drawn and cleared: {seen:?}"
    );
    assert!(
        !seen.lines().any(|l| l.starts_with("sim:  10 %")),
        "no log lines on a terminal: {seen}"
    );
}
