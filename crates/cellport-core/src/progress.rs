//! Progress math: items weighted by their cost, mapped onto the overall 0–100 scale.
//!
//! Processing covers 0–80 and the download 80–100 (docs/reference.md, "Progress"). The tracker is
//! plain data: the pipeline feeds it costs as work happens and reads snapshots; time comes in as an
//! argument.

use std::time::Duration;

use crate::job::{TaskProgress, TaskStatus};

/// The share of the overall bar that processing covers; the archive being ready is exactly this.
pub const PROCESSING_SHARE: f64 = 80.0;

/// Below this fraction of the work done, a rate is noise and no estimate is given.
const MIN_FRACTION_FOR_ESTIMATE: f64 = 0.02;
const MIN_ELAPSED_FOR_ESTIMATE: Duration = Duration::from_millis(500);

/// The state of processing at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressSnapshot {
    /// Cost done over total cost, 0–1.
    pub fraction: f64,
    pub items_completed: u64,
    pub items_total: u64,
    pub current_task: Option<String>,
    pub tasks: Vec<TaskProgress>,
    pub estimated_remaining_ms: Option<u64>,
}

impl ProgressSnapshot {
    /// Nothing done yet of `items_total` items (an attempt with no plan of its own to show).
    pub fn nothing_done_of(items_total: u64) -> ProgressSnapshot {
        ProgressSnapshot {
            items_total,
            ..ProgressSnapshot::default()
        }
    }

    /// Overall progress on the 0–100 bar (processing only reaches 80).
    pub fn overall(&self) -> f64 {
        (self.fraction * PROCESSING_SHARE).clamp(0.0, PROCESSING_SHARE)
    }
}

#[derive(Debug, Clone)]
struct TaskState {
    name: String,
    items_total: u64,
    items_completed: u64,
    cost_total: u64,
    cost_done: u64,
    /// Work on the task has begun (an item entered it, or it was started explicitly).
    started: bool,
}

impl TaskState {
    /// Status only ever moves forward: pending → running → completed (or skipped from the start).
    fn status(&self) -> TaskStatus {
        if self.items_total == 0 {
            TaskStatus::Skipped
        } else if self.items_completed == self.items_total {
            TaskStatus::Completed
        } else if self.started || self.items_completed > 0 || self.cost_done > 0 {
            TaskStatus::Running
        } else {
            TaskStatus::Pending
        }
    }
}

/// Accumulates done cost per task. Costs are abstract units (bytes, pixels, polygons).
///
/// Task boundaries come from the tasks' statuses: a report is a boundary when any task's status
/// differs from the last report's, so each task makes at most two (pending → running → completed),
/// however the items of tasks that run side by side interleave.
#[derive(Debug, Clone)]
pub struct ProgressTracker {
    tasks: Vec<TaskState>,
    /// Task statuses as of the last [`ProgressTracker::report`]; `None` before the first.
    reported: Option<Vec<TaskStatus>>,
    /// Cost restored from an earlier attempt: done, but not by this attempt, so not in its rate.
    cost_restored: u64,
}

/// One task of the plan: its name, how many items and how much cost it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    pub name: String,
    pub items: u64,
    pub cost: u64,
}

impl ProgressTracker {
    pub fn new(plan: &[PlannedTask]) -> ProgressTracker {
        ProgressTracker {
            tasks: plan
                .iter()
                .map(|t| TaskState {
                    name: t.name.clone(),
                    items_total: t.items,
                    items_completed: 0,
                    cost_total: t.cost,
                    cost_done: 0,
                    started: false,
                })
                .collect(),
            reported: None,
            cost_restored: 0,
        }
    }

    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// Marks `task` as begun, so it shows as running before its first item is done.
    pub fn start_task(&mut self, task: usize) {
        self.tasks[task].started = true;
    }

    /// Adds done cost to a task, capped at its planned total so progress never overshoots.
    pub fn add_cost(&mut self, task: usize, cost: u64) {
        let t = &mut self.tasks[task];
        t.cost_done = (t.cost_done + cost).min(t.cost_total);
    }

    /// Marks one item of `task` finished and tops its cost up to `item_cost` if it reported less.
    pub fn finish_item(&mut self, task: usize, item_cost: u64, reported: u64) {
        self.add_cost(task, item_cost.saturating_sub(reported));
        let t = &mut self.tasks[task];
        t.items_completed = (t.items_completed + 1).min(t.items_total);
    }

    /// Restores an item finished by an earlier attempt (resume) without redoing it.
    pub fn restore_item(&mut self, task: usize, item_cost: u64) {
        let before = self.tasks[task].cost_done;
        self.finish_item(task, item_cost, 0);
        self.cost_restored += self.tasks[task].cost_done - before;
    }

    /// The task a client shows as current: the earliest one still running (so tasks that run
    /// side by side do not take turns), else the next one to run; none once all are done.
    fn current_task(&self) -> Option<&TaskState> {
        let with = |status| self.tasks.iter().find(|t| t.status() == status);
        with(TaskStatus::Running).or_else(|| with(TaskStatus::Pending))
    }

    pub fn snapshot(&self, elapsed: Duration) -> ProgressSnapshot {
        let cost_total: u64 = self.tasks.iter().map(|t| t.cost_total).sum();
        let cost_done: u64 = self.tasks.iter().map(|t| t.cost_done).sum();
        let fraction = if cost_total == 0 {
            0.0
        } else {
            cost_done as f64 / cost_total as f64
        };
        // The rate is this attempt's: restored items took no time here.
        let done_here = cost_done.saturating_sub(self.cost_restored);
        let estimated_remaining_ms = (cost_total > 0
            && done_here as f64 / cost_total as f64 >= MIN_FRACTION_FOR_ESTIMATE
            && elapsed >= MIN_ELAPSED_FOR_ESTIMATE)
            .then(|| {
                let remaining = (cost_total - cost_done) as f64;
                (elapsed.as_secs_f64() * remaining / done_here as f64 * 1000.0).round() as u64
            });
        ProgressSnapshot {
            fraction,
            items_completed: self.tasks.iter().map(|t| t.items_completed).sum(),
            items_total: self.tasks.iter().map(|t| t.items_total).sum(),
            current_task: self.current_task().map(|t| t.name.clone()),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskProgress {
                    name: t.name.clone(),
                    status: t.status(),
                    progress: if t.cost_total == 0 {
                        if t.items_completed == t.items_total {
                            100.0
                        } else {
                            0.0
                        }
                    } else {
                        t.cost_done as f64 / t.cost_total as f64 * 100.0
                    },
                    items_completed: t.items_completed,
                    items_total: t.items_total,
                })
                .collect(),
            estimated_remaining_ms,
        }
    }

    /// The snapshot to report now, and whether it is a boundary: the first report, or a task
    /// whose status changed since the last report.
    pub fn report(&mut self, elapsed: Duration) -> (ProgressSnapshot, bool) {
        let snapshot = self.snapshot(elapsed);
        let statuses: Vec<TaskStatus> = snapshot.tasks.iter().map(|t| t.status).collect();
        let boundary = self.reported.as_ref() != Some(&statuses);
        self.reported = Some(statuses);
        (snapshot, boundary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Vec<PlannedTask> {
        vec![
            PlannedTask {
                name: "images".into(),
                items: 2,
                cost: 300,
            },
            PlannedTask {
                name: "documentation".into(),
                items: 1,
                cost: 100,
            },
            PlannedTask {
                name: "visualizations".into(),
                items: 0,
                cost: 0,
            },
        ]
    }

    #[test]
    fn progress_is_weighted_by_cost_and_maps_to_eighty() {
        let mut t = ProgressTracker::new(&plan());
        t.start_task(0);
        t.add_cost(0, 150);
        let s = t.snapshot(Duration::ZERO);
        assert_eq!(s.overall(), 30.0);
        assert_eq!(s.tasks[0].status, TaskStatus::Running);
        assert_eq!(s.tasks[1].status, TaskStatus::Pending);
        assert_eq!(s.tasks[2].status, TaskStatus::Skipped);
        assert_eq!(s.estimated_remaining_ms, None);
        t.finish_item(0, 200, 150);
        t.finish_item(0, 100, 0);
        t.start_task(1);
        t.finish_item(1, 100, 0);
        let s = t.snapshot(Duration::from_secs(4));
        assert_eq!(s.overall(), 80.0);
        assert_eq!((s.items_completed, s.items_total), (3, 3));
        assert_eq!(s.estimated_remaining_ms, Some(0));
        assert!(
            s.tasks[..2]
                .iter()
                .all(|t| t.status == TaskStatus::Completed)
        );
    }

    #[test]
    fn reported_cost_never_overshoots_a_task() {
        let mut t = ProgressTracker::new(&plan());
        t.add_cost(0, 10_000);
        assert_eq!(t.snapshot(Duration::ZERO).overall(), 60.0);
    }

    #[test]
    fn estimate_comes_from_the_measured_rate() {
        let mut t = ProgressTracker::new(&plan());
        t.add_cost(0, 100);
        assert_eq!(
            t.snapshot(Duration::from_secs(2)).estimated_remaining_ms,
            Some(6000)
        );
    }

    #[test]
    fn boundaries_are_status_changes_at_most_two_per_task() {
        let plan = vec![
            PlannedTask {
                name: "visualizations".into(),
                items: 3,
                cost: 300,
            },
            PlannedTask {
                name: "metrics".into(),
                items: 3,
                cost: 30,
            },
            PlannedTask {
                name: "archive".into(),
                items: 1,
                cost: 100,
            },
        ];
        let mut t = ProgressTracker::new(&plan);
        let mut boundaries = vec![t.report(Duration::ZERO).1];
        t.start_task(0);
        t.start_task(1);
        boundaries.push(t.report(Duration::ZERO).1);
        // Items of the two tasks interleave: neither status nor the current task flickers.
        for _ in 0..2 {
            for task in [0, 1] {
                t.finish_item(task, plan[task].cost / 3, 0);
                let (snapshot, boundary) = t.report(Duration::ZERO);
                boundaries.push(boundary);
                assert_eq!(snapshot.current_task.as_deref(), Some("visualizations"));
            }
        }
        t.finish_item(0, 100, 0);
        boundaries.push(t.report(Duration::ZERO).1);
        assert_eq!(
            t.snapshot(Duration::ZERO).current_task.as_deref(),
            Some("metrics")
        );
        t.finish_item(1, 10, 0);
        boundaries.push(t.report(Duration::ZERO).1);
        assert_eq!(
            t.snapshot(Duration::ZERO).current_task.as_deref(),
            Some("archive")
        );
        t.start_task(2);
        boundaries.push(t.report(Duration::ZERO).1);
        t.add_cost(2, 50);
        boundaries.push(t.report(Duration::ZERO).1);
        t.finish_item(2, 100, 50);
        boundaries.push(t.report(Duration::ZERO).1);
        assert_eq!(t.snapshot(Duration::ZERO).current_task, None);
        assert_eq!(
            boundaries,
            [
                true, true, false, false, false, false, true, true, true, false, true
            ]
        );
    }

    #[test]
    fn restored_items_count_at_once_but_not_in_the_rate() {
        let mut t = ProgressTracker::new(&plan());
        t.restore_item(0, 200);
        let (first, boundary) = t.report(Duration::ZERO);
        assert!(boundary);
        assert_eq!((first.items_completed, first.overall()), (1, 40.0));
        assert_eq!(first.tasks[0].status, TaskStatus::Running);
        t.add_cost(0, 40);
        // 40 of 400 done here in 2 s: 160 left at 20 per second.
        assert_eq!(
            t.snapshot(Duration::from_secs(2)).estimated_remaining_ms,
            Some(8000)
        );
    }
}
