//! A job's state as the coordinator holds it: the record written at planning, its reduce tree,
//! and every task's [`TaskRecord`]. Pure queries only; what changes the state, and in which
//! order it is written to the store, lives in the modules that drive the transitions.

use std::sync::Arc;

use starkscale_cairo::encoding::{Digest, Fact};
use starkscale_cairo::program::Pinned;
use starkscale_cairo::tree::{commit_tiles, x_commitment, Child, ReduceInput};
use starkscale_common::messages::{
    unix_ms, Ending, JobProgress, JobRecord, JobStatus, TaskKind, TaskMsg, TaskRecord,
};
use starkscale_common::plan::NodeSpec;
use starkscale_common::TilePlan;

use crate::acceptance::Expected;

/// A job being proven: its record, its reduce tree, and the state of each task.
pub(crate) struct Job {
    pub record: JobRecord,
    pub plan: TilePlan,
    /// Reduce nodes; node k is task `plan.len() + k`, the root last.
    pub tree: Vec<NodeSpec>,
    pub tasks: Vec<TaskRecord>,
    pub retries: usize,
    /// Seconds from receiving the job to its tasks published, when this process planned it.
    pub plan_s: Option<f64>,
    /// Running, or Finishing once `ending` is decided.
    pub status: JobStatus,
    pub ending: Option<Ending>,
    /// The job message, to plan the job again from when the store loses its state.
    pub request: Option<Arc<Vec<u8>>>,
}

impl Job {
    pub fn new(record: JobRecord) -> Job {
        let plan = TilePlan::new(record.rows, record.cols, record.tile_rows);
        let tree = plan.reduce_tree(record.fan_in);
        let total = plan.len() + tree.len();
        Job {
            tasks: vec![TaskRecord::default(); total],
            record,
            plan,
            tree,
            retries: 0,
            plan_s: None,
            status: JobStatus::Running,
            ending: None,
            request: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.record.job_id
    }

    pub fn proven(&self) -> usize {
        self.tasks.iter().filter(|t| t.output.is_some()).count()
    }

    pub fn all_accepted(&self) -> bool {
        self.tasks.iter().all(|t| t.output.is_some())
    }

    pub fn node(&self, task: usize) -> Option<&NodeSpec> {
        task.checked_sub(self.plan.len())
            .and_then(|k| self.tree.get(k))
    }

    pub fn kind(&self, task: usize) -> TaskKind {
        if task < self.plan.len() {
            TaskKind::Map
        } else {
            TaskKind::Reduce
        }
    }

    /// A map task is always ready; a node once all its children are accepted.
    pub fn ready(&self, task: usize) -> bool {
        self.node(task).is_none_or(|node| {
            node.children
                .iter()
                .all(|&c| self.tasks[c].output.is_some())
        })
    }

    /// Tasks to publish now: ready, not accepted, not yet published, not backing off.
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&t| {
                let record = &self.tasks[t];
                record.output.is_none()
                    && record.published_unix_ms.is_none()
                    && record.not_before_unix_ms <= now_ms
                    && self.ready(t)
            })
            .collect()
    }

    /// When the next backing-off task becomes due, if one is waiting.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.tasks
            .iter()
            .filter(|r| r.output.is_none() && r.published_unix_ms.is_none())
            .map(|r| r.not_before_unix_ms)
            .filter(|&t| t > 0)
            .min()
    }

    pub fn task_msg(&self, task: usize) -> TaskMsg {
        TaskMsg {
            job_id: self.id().to_string(),
            task,
            kind: self.kind(task),
            attempt: self.tasks[task].attempt,
        }
    }

    /// The accepted child `task` as its parent's program consumes it.
    fn child(&self, task: usize) -> Option<Child> {
        let program = if task < self.plan.len() {
            Pinned::Map
        } else {
            Pinned::Reduce
        };
        Some(Child {
            program_hash: program.hash(),
            output: self.tasks.get(task)?.output.clone()?,
        })
    }

    pub fn reduce_input(&self, node: &NodeSpec) -> Option<ReduceInput> {
        let children = node
            .children
            .iter()
            .map(|&c| self.child(c))
            .collect::<Option<Vec<_>>>()?;
        Some(ReduceInput::for_node(&self.plan, node, children))
    }

    /// The A commitment of the planned tiles' digests: what the root must prove.
    fn expected_a_commitment(&self) -> Option<Digest> {
        let digests = self
            .record
            .a_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        (digests.len() == self.plan.len()).then(|| commit_tiles(&self.plan, &digests))
    }

    fn expected_x_commitment(&self) -> Option<Digest> {
        let digests = self
            .record
            .x_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        Some(x_commitment(&digests))
    }

    /// What a proof of `task` must state, to be checked away from the event loop.
    pub fn expected(&self, task: usize) -> Result<Expected, String> {
        match self.node(task) {
            None => {
                let tile = self.plan.tile(task).ok_or("no such tile")?;
                Ok(Expected::Tile {
                    a_digest: self.record.a_digests.get(tile.index).cloned(),
                    x_digest: self.record.x_digests.get(tile.col_block).cloned(),
                    tile,
                })
            }
            Some(node) => {
                let input = self
                    .reduce_input(node)
                    .ok_or("a child of this node is not accepted")?;
                let facts: Vec<Fact> = input.children.iter().map(Child::fact).collect();
                let commitments = match node.root {
                    true => Some((self.expected_a_commitment(), self.expected_x_commitment())),
                    false => None,
                };
                Ok(Expected::Node {
                    rows: (node.row0, node.rows),
                    facts,
                    commitments,
                })
            }
        }
    }

    /// Where the job is, in words, for a deadline's failure reason.
    pub fn stage(&self) -> String {
        match self.status {
            JobStatus::Finishing => "finishing (writing its certificate and result)".into(),
            JobStatus::Planning => "planning".into(),
            _ => {
                let tiles = self.plan.len();
                let maps = self.tasks[..tiles]
                    .iter()
                    .filter(|t| t.output.is_some())
                    .count();
                if maps < tiles {
                    format!("proving map tiles ({maps} of {tiles} accepted)")
                } else {
                    let nodes = self.tasks[tiles..]
                        .iter()
                        .filter(|t| t.output.is_some())
                        .count();
                    format!(
                        "reducing ({nodes} of {} reduce nodes accepted)",
                        self.tree.len()
                    )
                }
            }
        }
    }

    pub fn progress(&self) -> JobProgress {
        JobProgress {
            job_id: self.id().to_string(),
            status: self.status,
            tasks: self.tasks.len(),
            proven: self.proven(),
            retries: self.retries,
            started_unix_ms: self.record.started_unix_ms,
            plan_s: self.plan_s,
            ending: self.ending.clone(),
        }
    }

    /// Milliseconds since the job was received.
    pub fn age_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.record.started_unix_ms)
    }
}
