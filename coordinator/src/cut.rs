//! Cutting a loaded job into task inputs and the record that says what each proof must state:
//! map tiles for a matvec job (and a matmul job of one input), batch segments for a matmul job.
//! Pure and CPU-bound: [`crate::intake`] runs it on the blocking pool and stores what it returns.

use starkscale_cairo::batch::{
    expected_output, multiply, plan_segments, Planner, Rows, DEFAULT_SEGMENT_BLOCKS,
};
use starkscale_cairo::encoding::{a_digest, fact, x_digest};
use starkscale_cairo::program::Pinned;
use starkscale_common::job::{JobError, Operand};
use starkscale_common::messages::{
    BatchLayout, Keys, Layout, SegmentRecord, TileInputBlob, TileLayout,
};
use starkscale_common::tensor::npy;
use starkscale_common::{JobLimits, Matrix, TilePlan, Vector};

/// A job cut into tasks: its layout, and the keyed values to store before its tasks go out
/// (each planned task's input; for a matmul job also Y).
pub(crate) struct Cut {
    pub layout: Layout,
    pub values: Vec<(String, Vec<u8>)>,
}

/// Where a job's values go, and how it is cut.
pub(crate) struct CutOptions<'a> {
    pub keys: &'a Keys,
    pub job_id: &'a str,
    pub tile_rows: usize,
    pub fan_in: usize,
    pub segment_blocks: Option<usize>,
    pub limits: &'a JobLimits,
}

/// Cuts a job whose inputs passed `check_shapes`.
pub(crate) fn cut(a: &Matrix, x: &Operand, options: &CutOptions) -> Result<Cut, JobError> {
    match x {
        Operand::Vector(x) => Ok(cut_tiles(a, x, options, false)),
        // One input: the tile kernel proves it at ~1 step per multiply-add, where the batch
        // protocol would hash all of A at ~6 steps per entry (`docs/bench.md`).
        Operand::Batch(x) if x.rows() == 1 => {
            let row = Vector::new(x.dtype(), x.row(0).to_vec())
                .map_err(|source| JobError::Input { what: "x", source })?;
            Ok(cut_tiles(a, &row, options, true))
        }
        Operand::Batch(x) => cut_batch(a, x, options),
    }
}

fn cut_tiles(a: &Matrix, x: &Vector, options: &CutOptions, matmul: bool) -> Cut {
    let plan = TilePlan::new(a.rows(), a.cols(), options.tile_rows);
    let mut values = Vec::with_capacity(plan.len());
    let mut a_digests = Vec::with_capacity(plan.len());
    let x_blocks: Vec<_> = (0..plan.col_blocks())
        .map(|b| x.block(b * plan.tile_cols, plan.tile_cols))
        .collect();
    for tile in plan.tiles() {
        let blob = TileInputBlob {
            row0: tile.row0 as u32,
            col0: tile.col0 as u32,
            a: a.tile(tile.row0, tile.col0, tile.rows, tile.cols),
            x: x_blocks[tile.col_block].clone(),
        };
        a_digests.push(a_digest(&blob.a).to_hex());
        values.push((
            options.keys.task_input(options.job_id, tile.index),
            blob.to_bytes(),
        ));
    }
    let layout = Layout::Tiles(TileLayout {
        rows: a.rows(),
        cols: a.cols(),
        tile_rows: options.tile_rows,
        a_digests,
        x_digests: x_blocks.iter().map(|b| x_digest(b).to_hex()).collect(),
        fan_in: options.fan_in,
        matmul,
    });
    Cut { layout, values }
}

/// Y computed natively, the three streams committed, the challenges derived, and each segment's
/// input and honest fact: the coordinator then accepts a segment proof by its fact alone.
fn cut_batch(a: &Matrix, x: &Matrix, options: &CutOptions) -> Result<Cut, JobError> {
    let a = Rows::int8(a.cols(), a.data());
    let x = Rows::int8(x.cols(), x.data());
    let y = multiply(&a, &x);
    let planner = Planner::new(&a, &x, &y);
    let blocks = options.segment_blocks.unwrap_or(DEFAULT_SEGMENT_BLOCKS);
    let specs = plan_segments(&planner.shape, blocks);
    if specs.len() + 1 > options.limits.max_tiles {
        return Err(JobError::Limit(format!(
            "the job needs {} segment tasks, over the {} limit",
            specs.len() + 1,
            options.limits.max_tiles
        )));
    }
    let program = Pinned::Batch.hash();
    let mut values = Vec::with_capacity(specs.len() + 1);
    let mut segments = Vec::with_capacity(specs.len());
    for (task, (spec, input)) in specs.iter().zip(planner.segments(&specs)).enumerate() {
        let output = expected_output(&input, &planner.v);
        segments.push(SegmentRecord {
            stream: spec.stream.kind(),
            row0: spec.row0,
            rows: spec.rows,
            fact: fact(&program, &output).to_hex(),
        });
        values.push((
            options.keys.task_input(options.job_id, task),
            input.to_bytes(),
        ));
    }
    let shape = planner.shape;
    let Rows::I32 { data, .. } = &y else {
        return Err(JobError::Limit("Y is not int32".into()));
    };
    values.push((
        options.keys.y(options.job_id),
        npy::write_i32(&[shape.b, shape.m], data),
    ));
    let [com_a, com_x, com_y] = planner.commitments;
    let layout = Layout::Batch(BatchLayout {
        m: shape.m,
        k: shape.k,
        b: shape.b,
        a_commitment: com_a.to_hex(),
        x_commitment: com_x.to_hex(),
        y_commitment: com_y.to_hex(),
        segments,
    });
    Ok(Cut { layout, values })
}
