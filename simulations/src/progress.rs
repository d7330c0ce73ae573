//! Progress of long runs on stderr: a bar (indicatif) when stderr is a
//! terminal, plain lines when it is not, so a CI log still shows how far
//! a run got, one line per step, and a terminal is not flooded.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a run reports its progress: a bar on a terminal, lines otherwise,
/// or nothing.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
}

impl Progress {
    /// A bar on stderr when `enabled` and stderr is a terminal; plain
    /// lines on stderr when `enabled` and it is not; nothing otherwise.
    pub fn stderr(enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            lines: enabled && !terminal,
        }
    }

    /// Whether a bar is drawn (stderr is a terminal).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Moves the bar to `pos` of `len`, labelled `what`; nothing without a
    /// bar.
    pub fn set(&self, what: &str, pos: u64, len: u64) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(len) {
                bar.set_length(len);
            }
            bar.set_position(pos);
            if bar.message() != what {
                bar.set_message(what.to_owned());
            }
        }
    }

    /// Says `line`: above the bar on a terminal, as a line of its own on
    /// stderr otherwise.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.lines => eprintln!("{line}"),
            None => {}
        }
    }

    /// A line only for logs (stderr is not a terminal): the bar shows the
    /// same on a terminal.
    pub fn log_line(&self, line: &str) {
        if self.lines {
            eprintln!("{line}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
