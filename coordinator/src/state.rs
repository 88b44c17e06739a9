//! A job's state as the coordinator holds it: the record written at planning, how the job is
//! cut into tasks (map tiles and a reduce tree, batch segments and a batch root, or inference
//! segments and an inference root), and every
//! task's [`TaskRecord`]. Pure queries only; what changes the state, and in which order it is
//! written to the store, lives in the modules that drive the transitions.

use std::sync::Arc;

use starkscale_cairo::batch::{self, RootInput, Stream};
use starkscale_cairo::encoding::{Digest, Fact};
use starkscale_cairo::inference::InferRootInput;
use starkscale_cairo::program::Pinned;
use starkscale_cairo::tree::{commit_tiles, x_commitment, Child, ReduceInput};
use starkscale_common::messages::{
    unix_ms, BatchLayout, Ending, InferenceLayout, InferencePart, JobProgress, JobRecord,
    JobStatus, Layout, TaskKind, TaskMsg, TaskRecord, TileLayout,
};
use starkscale_common::plan::NodeSpec;
use starkscale_common::TilePlan;

use crate::acceptance::Expected;

/// How a job's tasks are laid out.
pub(crate) enum Tasks {
    /// Map tiles, then reduce nodes; node k is task `plan.len() + k`, the root last.
    Tiles {
        layout: TileLayout,
        plan: TilePlan,
        tree: Vec<NodeSpec>,
    },
    /// Segments in the root's order, then the batch root.
    Batch { layout: BatchLayout },
    /// Segments in the inference root's order, then the inference root.
    Inference { layout: InferenceLayout },
}

/// A job being proven: its record, its task layout, and the state of each task.
pub(crate) struct Job {
    pub record: JobRecord,
    pub layout: Tasks,
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
        let layout = match &record.layout {
            Layout::Tiles(layout) => {
                let plan = TilePlan::new(layout.rows, layout.cols, layout.tile_rows);
                let tree = plan.reduce_tree(layout.fan_in);
                Tasks::Tiles {
                    layout: layout.clone(),
                    plan,
                    tree,
                }
            }
            Layout::Batch(layout) => Tasks::Batch {
                layout: layout.clone(),
            },
            Layout::Inference(layout) => Tasks::Inference {
                layout: layout.clone(),
            },
        };
        let total = layout.map_tasks() + layout.reduce_tasks();
        Job {
            tasks: vec![TaskRecord::default(); total],
            record,
            layout,
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

    /// Map tiles or segments: the tasks that are always ready.
    pub fn map_tasks(&self) -> usize {
        self.layout.map_tasks()
    }

    /// Reduce nodes or the batch root.
    pub fn reduce_tasks(&self) -> usize {
        self.layout.reduce_tasks()
    }

    pub fn node(&self, task: usize) -> Option<&NodeSpec> {
        match &self.layout {
            Tasks::Tiles { plan, tree, .. } => {
                task.checked_sub(plan.len()).and_then(|k| tree.get(k))
            }
            Tasks::Batch { .. } | Tasks::Inference { .. } => None,
        }
    }

    pub fn kind(&self, task: usize) -> TaskKind {
        let map = task < self.map_tasks();
        match (&self.layout, map) {
            (Tasks::Tiles { .. }, true) => TaskKind::Map,
            (Tasks::Tiles { .. }, false) => TaskKind::Reduce,
            (Tasks::Batch { .. }, true) => TaskKind::Segment,
            (Tasks::Batch { .. }, false) => TaskKind::BatchRoot,
            (Tasks::Inference { layout }, true) => match layout.segments[task].part {
                InferencePart::Weights | InferencePart::Inputs => TaskKind::Segment,
                InferencePart::Layer => TaskKind::LayerSegment,
            },
            (Tasks::Inference { .. }, false) => TaskKind::InferRoot,
        }
    }

    /// A map tile or segment is always ready; a node (or the batch root) once all its children
    /// are accepted.
    pub fn ready(&self, task: usize) -> bool {
        match &self.layout {
            Tasks::Tiles { .. } => self.node(task).is_none_or(|node| {
                node.children
                    .iter()
                    .all(|&c| self.tasks[c].output.is_some())
            }),
            // Every segment is ready at once; the root once all of them are accepted.
            Tasks::Batch { .. } | Tasks::Inference { .. } => {
                let segments = self.map_tasks();
                task < segments || self.tasks[..segments].iter().all(|t| t.output.is_some())
            }
        }
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
        let program = match self.kind(task) {
            TaskKind::Map => Pinned::Map,
            TaskKind::Reduce => Pinned::Reduce,
            TaskKind::Segment => Pinned::Batch,
            TaskKind::BatchRoot => Pinned::BatchRoot,
            TaskKind::LayerSegment => Pinned::Layer,
            TaskKind::InferRoot => Pinned::InferRoot,
        };
        Some(Child {
            program_hash: program.hash(),
            output: self.tasks.get(task)?.output.clone()?,
        })
    }

    pub fn reduce_input(&self, node: &NodeSpec) -> Option<ReduceInput> {
        let Tasks::Tiles { plan, .. } = &self.layout else {
            return None;
        };
        let children = node
            .children
            .iter()
            .map(|&c| self.child(c))
            .collect::<Option<Vec<_>>>()?;
        Some(ReduceInput::for_node(plan, node, children))
    }

    /// The batch root's input: every accepted segment, grouped by stream in the root's order.
    pub fn batch_root_input(&self) -> Option<RootInput> {
        let Tasks::Batch { layout } = &self.layout else {
            return None;
        };
        let mut input = RootInput {
            shape: batch_shape(layout),
            weights: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        for (task, segment) in layout.segments.iter().enumerate() {
            let child = self.child(task)?;
            match Stream::from_kind(segment.stream)? {
                Stream::Weights => input.weights.push(child),
                Stream::Inputs => input.inputs.push(child),
                Stream::Outputs => input.outputs.push(child),
            }
        }
        Some(input)
    }

    /// The inference root's input: every accepted segment, filed as the root reads them.
    pub fn infer_root_input(&self) -> Option<InferRootInput> {
        let Tasks::Inference { layout } = &self.layout else {
            return None;
        };
        let layers = layout.dims.len();
        let mut input = InferRootInput {
            batch: layout.batch,
            dims: layout.dims.clone(),
            weights: vec![Vec::new(); layers],
            inputs: Vec::new(),
            segments: vec![Vec::new(); layers],
        };
        for (task, segment) in layout.segments.iter().enumerate() {
            let child = self.child(task)?;
            match segment.part {
                InferencePart::Weights => input.weights.get_mut(segment.layer)?.push(child),
                InferencePart::Inputs => input.inputs.push(child),
                InferencePart::Layer => input.segments.get_mut(segment.layer)?.push(child),
            }
        }
        Some(input)
    }

    /// The input of a task that is written when the task is published, because it is made of
    /// its children's outputs (a reduce node or the batch root); `None` for tasks whose input
    /// was stored at planning.
    pub fn late_input(&self, task: usize) -> Option<Vec<u8>> {
        match self.kind(task) {
            TaskKind::Reduce => self
                .node(task)
                .and_then(|n| self.reduce_input(n))
                .map(|i| i.to_bytes()),
            TaskKind::BatchRoot => self.batch_root_input().map(|i| i.to_bytes()),
            TaskKind::InferRoot => self.infer_root_input().map(|i| i.to_bytes()),
            TaskKind::Map | TaskKind::Segment | TaskKind::LayerSegment => None,
        }
    }

    /// The A commitment of the planned tiles' digests: what the root must prove.
    fn expected_a_commitment(&self) -> Option<Digest> {
        let Tasks::Tiles { layout, plan, .. } = &self.layout else {
            return None;
        };
        let digests = layout
            .a_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        (digests.len() == plan.len()).then(|| commit_tiles(plan, &digests))
    }

    fn expected_x_commitment(&self) -> Option<Digest> {
        let Tasks::Tiles { layout, .. } = &self.layout else {
            return None;
        };
        let digests = layout
            .x_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        Some(x_commitment(&digests))
    }

    /// What a proof of `task` must state, to be checked away from the event loop.
    pub fn expected(&self, task: usize) -> Result<Expected, String> {
        match &self.layout {
            Tasks::Batch { layout } => return self.expected_batch(layout, task),
            Tasks::Inference { layout } => return self.expected_inference(layout, task),
            Tasks::Tiles { .. } => {}
        }
        let Tasks::Tiles { layout, plan, .. } = &self.layout else {
            return Err("no such task".into());
        };
        match self.node(task) {
            None => {
                let tile = plan.tile(task).ok_or("no such tile")?;
                Ok(Expected::Tile {
                    a_digest: layout.a_digests.get(tile.index).cloned(),
                    x_digest: layout.x_digests.get(tile.col_block).cloned(),
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

    fn expected_batch(&self, layout: &BatchLayout, task: usize) -> Result<Expected, String> {
        let digest = |hex: &str| Digest::from_hex(hex).ok_or("unreadable digest in the job record");
        if let Some(segment) = layout.segments.get(task) {
            return Ok(Expected::Segment {
                fact: digest(&segment.fact)?,
                program: Pinned::Batch,
            });
        }
        let input = self
            .batch_root_input()
            .ok_or("a segment of this job is not accepted")?;
        Ok(Expected::BatchRoot {
            shape: input.shape,
            commitments: [
                digest(&layout.a_commitment)?,
                digest(&layout.x_commitment)?,
                digest(&layout.y_commitment)?,
            ],
            facts: input.children().map(Child::fact).collect(),
        })
    }

    fn expected_inference(
        &self,
        layout: &InferenceLayout,
        task: usize,
    ) -> Result<Expected, String> {
        let digest = |hex: &str| Digest::from_hex(hex).ok_or("unreadable digest in the job record");
        if let Some(segment) = layout.segments.get(task) {
            let program = match segment.part {
                InferencePart::Weights | InferencePart::Inputs => Pinned::Batch,
                InferencePart::Layer => Pinned::Layer,
            };
            return Ok(Expected::Segment {
                fact: digest(&segment.fact)?,
                program,
            });
        }
        let input = self
            .infer_root_input()
            .ok_or("a segment of this job is not accepted")?;
        Ok(Expected::InferRoot {
            batch: layout.batch,
            dims: layout.dims.clone(),
            commitments: [
                digest(&layout.model_commitment)?,
                digest(&layout.x_commitment)?,
                digest(&layout.logits_commitment)?,
            ],
            facts: input.children().map(Child::fact).collect(),
        })
    }

    /// Where the job is, in words, for a deadline's failure reason.
    pub fn stage(&self) -> String {
        match self.status {
            JobStatus::Finishing => "finishing (writing its certificate and result)".into(),
            JobStatus::Planning => "planning".into(),
            _ => {
                let tiles = self.map_tasks();
                let maps = self.tasks[..tiles]
                    .iter()
                    .filter(|t| t.output.is_some())
                    .count();
                let (map, reduce) = match self.layout {
                    Tasks::Tiles { .. } => ("map tiles", "reduce nodes"),
                    Tasks::Batch { .. } => ("segments", "batch roots"),
                    Tasks::Inference { .. } => ("segments", "inference roots"),
                };
                if maps < tiles {
                    format!("proving {map} ({maps} of {tiles} accepted)")
                } else {
                    let nodes = self.tasks[tiles..]
                        .iter()
                        .filter(|t| t.output.is_some())
                        .count();
                    format!(
                        "reducing ({nodes} of {} {reduce} accepted)",
                        self.reduce_tasks()
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

impl Tasks {
    fn map_tasks(&self) -> usize {
        match self {
            Tasks::Tiles { plan, .. } => plan.len(),
            Tasks::Batch { layout } => layout.segments.len(),
            Tasks::Inference { layout } => layout.segments.len(),
        }
    }

    fn reduce_tasks(&self) -> usize {
        match self {
            Tasks::Tiles { tree, .. } => tree.len(),
            Tasks::Batch { .. } | Tasks::Inference { .. } => 1,
        }
    }
}

/// A batch layout's shape, as the batch programs state it.
pub(crate) fn batch_shape(layout: &BatchLayout) -> batch::Shape {
    batch::Shape {
        m: layout.m,
        k: layout.k,
        b: layout.b,
    }
}
