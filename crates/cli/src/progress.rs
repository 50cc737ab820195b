//! A progress line for long steps (featurizing, evaluating): redrawn in place on a
//! terminal, a line per tenth when stderr is a log file.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts finished units of work and reports them on stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    label: String,
    total: usize,
    started: Instant,
    terminal: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    done: usize,
    drawn: Instant,
    tenth: usize,
}

impl Progress {
    pub(crate) fn new(label: &str, total: usize) -> Self {
        Self {
            label: label.to_owned(),
            total,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                done: 0,
                drawn: Instant::now(),
                tenth: 0,
            }),
        }
    }

    fn line(&self, done: usize) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-3);
        let left = self.total.saturating_sub(done) as f64 / rate.max(1e-9);
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        format!(
            "{} [{}{}] {done}/{} {rate:.0}/s, {secs:.0}s elapsed, ~{left:.0}s left",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled.min(width)),
            self.total
        )
    }

    /// One more unit done.
    pub(crate) fn tick(&self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.done += 1;
        let done = s.done;
        if self.terminal {
            if s.drawn.elapsed() >= Duration::from_millis(200) {
                s.drawn = Instant::now();
                eprint!("\r{}", self.line(done));
                let _ = std::io::stderr().flush();
            }
        } else {
            let tenth = (done * 10).checked_div(self.total).unwrap_or(10);
            if tenth > s.tenth {
                s.tenth = tenth;
                eprintln!("{}", self.line(done));
            }
        }
    }

    /// Final line.
    pub(crate) fn done(&self) {
        let done = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .done;
        if self.terminal {
            eprintln!("\r{}", self.line(done));
        }
    }
}
