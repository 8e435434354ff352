//! One checkpoint interval's output, folded into rows on the thread that writes it.

use crate::aggregate::{RowLayout, SessionRow};
use crate::session::ClosedSession;
use crate::sink::DeadLetter;
use std::sync::Arc;

/// One checkpoint interval's output. The sessions it closed are folded into rows (and sorted)
/// when the rows are first asked for: on the committer's thread, not during the processor's
/// pause (measured: ~half of a checkpoint's pause at 100k sessions closed).
#[derive(Debug, Default)]
pub struct EpochOutput {
    /// Rows folded so far, sorted by customer and start once `closed` is empty.
    rows: Vec<SessionRow>,
    /// Sessions closed and not folded yet, with the names and columns they fold with.
    closed: Vec<ClosedSession>,
    sets: Vec<String>,
    layout: Arc<RowLayout>,
    /// Rejected lines, in input order.
    pub dead: Vec<DeadLetter>,
}

impl EpochOutput {
    /// Output of `closed` sessions, to fold with the schema-set names `sets` and `layout` (the
    /// ones of the interval that closed them), and `dead` letters.
    #[must_use]
    pub fn new(
        closed: Vec<ClosedSession>,
        sets: Vec<String>,
        layout: Arc<RowLayout>,
        dead: Vec<DeadLetter>,
    ) -> Self {
        EpochOutput { rows: Vec::new(), closed, sets, layout, dead }
    }

    /// The rows, sorted by customer and start (folded now if they were not).
    pub fn rows(&mut self) -> &[SessionRow] {
        self.fold();
        &self.rows
    }

    /// The rows (see [`EpochOutput::rows`]) and the dead letters.
    pub fn parts(&mut self) -> (&[SessionRow], &[DeadLetter]) {
        self.fold();
        (&self.rows, &self.dead)
    }

    /// The number of rows, folded or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len() + self.closed.len()
    }

    /// Whether there is no row.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fold(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        let sets: Vec<Arc<str>> = self.sets.iter().map(|s| Arc::from(s.as_str())).collect();
        let layout = &self.layout;
        self.rows.extend(self.closed.drain(..).map(|c| SessionRow::fold(c, &sets, layout)));
        // Unstable: no two rows have the same customer and start (a session closes once).
        self.rows.sort_unstable_by(|a, b| {
            (&a.customer_id, a.session_start).cmp(&(&b.customer_id, b.session_start))
        });
        self.closed = Vec::new();
    }

    /// Appends a later interval's output (after a failed checkpoint, the two commit as one).
    /// Each interval's sessions fold with their own interval's names and columns.
    pub fn absorb(&mut self, mut newer: EpochOutput) {
        self.fold();
        newer.fold();
        self.rows.append(&mut newer.rows);
        self.rows.sort_by(|a, b| {
            (&a.customer_id, a.session_start).cmp(&(&b.customer_id, b.session_start))
        });
        self.dead.append(&mut newer.dead);
    }
}
