//! Per-kernel GPU time from timestamp queries written between the dispatches of a compute pass
//! (wgpu's `TIMESTAMP_QUERY_INSIDE_PASSES`; lavapipe has it, WebGPU and many tilers do not).
//!
//! While profiling is on ([`crate::Gpu::set_profiling`]), every [`crate::Tape::submit`] writes a
//! timestamp before its first dispatch and after each one, resolves them, waits for the GPU and
//! adds each dispatch's time to its row (kernel entry point and shape). Waiting after every
//! submission changes the timing of a pipelined loop, so a profile explains where GPU time goes;
//! throughput figures come from runs without it.

use std::collections::BTreeMap;

/// Accumulated GPU time of one kind of dispatch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileRow {
    /// Kernel entry point and shape, e.g. `matmul_subgroup NT 128x784x400`.
    pub label: String,
    /// Dispatches timed.
    pub calls: u64,
    /// GPU milliseconds summed over the calls.
    pub total_ms: f64,
}

/// A profile: rows by GPU time, largest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// One row per (kernel, shape), sorted by total time, descending.
    pub rows: Vec<ProfileRow>,
    /// Submissions profiled.
    pub submissions: u64,
    /// Dispatches that could not be timed (more than one query set holds in one submission).
    pub untimed: u64,
}

impl Profile {
    /// Total GPU milliseconds of every timed dispatch.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.total_ms).sum()
    }

    /// A text table, the top kernels first, with each row's share of the total. `per` divides the
    /// times (e.g. the number of training steps, for milliseconds per step).
    pub fn table(&self, per: f64, top: usize) -> String {
        let total = self.total_ms().max(1e-12);
        let per = per.max(1.0);
        let mut s = format!("{:<52} {:>9} {:>12} {:>7}\n", "kernel (entry, layout, shape)", "calls", "ms", "share");
        for r in self.rows.iter().take(top) {
            s.push_str(&format!(
                "{:<52} {:>9.1} {:>12.4} {:>6.1}%\n",
                r.label,
                r.calls as f64 / per,
                r.total_ms / per,
                100.0 * r.total_ms / total
            ));
        }
        if self.rows.len() > top {
            let rest: f64 = self.rows[top..].iter().map(|r| r.total_ms).sum();
            s.push_str(&format!(
                "{:<52} {:>9} {:>12.4} {:>6.1}%\n",
                format!("({} more rows)", self.rows.len() - top),
                "",
                rest / per,
                100.0 * rest / total
            ));
        }
        s.push_str(&format!(
            "{:<52} {:>9.1} {:>12.4} {:>6.1}%\n",
            "total",
            self.calls() as f64 / per,
            total / per,
            100.0
        ));
        if self.untimed > 0 {
            s.push_str(&format!("({} dispatches in very long submissions were not timed)\n", self.untimed));
        }
        s
    }

    /// Dispatches timed.
    pub fn calls(&self) -> u64 {
        self.rows.iter().map(|r| r.calls).sum()
    }
}

/// What the device accumulates while profiling.
#[derive(Default)]
pub(crate) struct ProfileAcc {
    pub rows: BTreeMap<String, (u64, f64)>,
    pub submissions: u64,
    pub untimed: u64,
}

impl ProfileAcc {
    pub fn take(&mut self) -> Profile {
        let acc = std::mem::take(self);
        let mut rows: Vec<ProfileRow> =
            acc.rows.into_iter().map(|(label, (calls, total_ms))| ProfileRow { label, calls, total_ms }).collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then(a.label.cmp(&b.label)));
        Profile { rows, submissions: acc.submissions, untimed: acc.untimed }
    }
}
