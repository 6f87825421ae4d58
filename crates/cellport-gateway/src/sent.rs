//! What one connection has sent of each job, so that it never sends a job's frame twice
//! (SPEC §5: on one connection, a job's frames have strictly increasing `seq`).
//!
//! The memory is bounded. Past [`MAX_TRACKED_JOBS`], the jobs that ended and were touched
//! longest ago are forgotten, down to half the bound (then, were there too few of them, the
//! live jobs touched longest ago). The recently touched ones stay: they are
//! the jobs a recovery may send again (a connection re-reads the latest event of its user's
//! most recently changed jobs, and a completed job awaiting its download is live), so
//! forgetting them would repeat their terminal frames on the same connection.

use std::collections::HashMap;

use cellport_core::JobId;

/// Jobs a connection keeps seqs for.
pub const MAX_TRACKED_JOBS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    ended: bool,
    /// When it was last raised, in this connection's count of updates.
    touched: u64,
}

#[derive(Debug, Default)]
pub struct SentSeqs {
    jobs: HashMap<JobId, Sent>,
    updates: u64,
}

impl SentSeqs {
    /// The highest seq of `job` sent (or that the client said it has).
    pub fn get(&self, job: &JobId) -> Option<u64> {
        self.jobs.get(job).map(|s| s.seq)
    }

    /// Every job with its seq.
    pub fn known(&self) -> Vec<(JobId, u64)> {
        self.jobs.iter().map(|(id, s)| (*id, s.seq)).collect()
    }

    /// Raises the job's seq to `seq`.
    pub fn remember(&mut self, job: JobId, seq: u64, ended: bool) {
        if self.jobs.len() >= MAX_TRACKED_JOBS && !self.jobs.contains_key(&job) {
            self.forget_oldest();
        }
        self.updates += 1;
        let touched = self.updates;
        let entry = self.jobs.entry(job).or_insert(Sent {
            seq,
            ended,
            touched,
        });
        if seq >= entry.seq {
            *entry = Sent {
                seq,
                ended,
                touched,
            };
        }
    }

    /// Whether `(job, seq)` is new to the client; records it if so.
    pub fn first_time(&mut self, job: JobId, seq: u64, ended: bool) -> bool {
        if self.get(&job).is_some_and(|sent| seq <= sent) {
            return false;
        }
        self.remember(job, seq, ended);
        true
    }

    /// Forgets jobs down to half the bound: ended ones first, each kind least recently touched
    /// first.
    fn forget_oldest(&mut self) {
        let mut order: Vec<(bool, u64, JobId)> = self
            .jobs
            .iter()
            .map(|(id, s)| (!s.ended, s.touched, *id))
            .collect();
        order.sort_unstable();
        let excess = self.jobs.len().saturating_sub(MAX_TRACKED_JOBS / 2);
        for (_, _, id) in order.into_iter().take(excess) {
            self.jobs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_new_once_and_older_ones_never() {
        let mut sent = SentSeqs::default();
        let job = JobId::new();
        assert!(sent.first_time(job, 3, false));
        assert!(!sent.first_time(job, 3, false));
        assert!(!sent.first_time(job, 2, false));
        assert!(sent.first_time(job, 4, true));
        assert_eq!(sent.get(&job), Some(4));
    }

    #[test]
    fn past_the_bound_the_recently_ended_jobs_are_still_known() {
        let mut sent = SentSeqs::default();
        let jobs: Vec<JobId> = (0..MAX_TRACKED_JOBS).map(|_| JobId::new()).collect();
        for job in &jobs {
            assert!(sent.first_time(*job, 9, true));
        }
        // One more job: the oldest ended half is forgotten, the newest half is not.
        assert!(sent.first_time(JobId::new(), 1, false));
        assert!(sent.known().len() <= MAX_TRACKED_JOBS / 2 + 1);
        for job in &jobs[MAX_TRACKED_JOBS / 2..] {
            assert!(
                !sent.first_time(*job, 9, true),
                "a recently ended job's terminal frame would be sent twice"
            );
        }
        assert_eq!(sent.get(&jobs[0]), None);
    }

    #[test]
    fn live_jobs_are_forgotten_after_every_ended_one() {
        let mut sent = SentSeqs::default();
        let ended: Vec<JobId> = (0..10).map(|_| JobId::new()).collect();
        let live: Vec<JobId> = (0..MAX_TRACKED_JOBS - 10).map(|_| JobId::new()).collect();
        for job in &live[..100] {
            sent.remember(*job, 1, false);
        }
        // Ended after those live ones were touched, yet forgotten before them.
        for job in &ended {
            sent.remember(*job, 5, true);
        }
        for job in &live[100..] {
            sent.remember(*job, 1, false);
        }
        let newcomer = JobId::new();
        assert!(sent.first_time(newcomer, 1, false));
        assert!(ended.iter().all(|job| sent.get(job).is_none()));
        assert_eq!(sent.get(&live[0]), None);
        assert_eq!(sent.get(live.last().unwrap()), Some(1));
        assert_eq!(sent.get(&newcomer), Some(1));
    }
}
