//! Cutting a job into task inputs and the record that says what each proof must state: map
//! tiles for a matvec job (and a matmul job of one input), batch segments for a matmul job,
//! weights, inputs and layer segments for an inference job ([`cut_inference`]).
//! CPU-bound: [`crate::intake`] runs it on the blocking pool. A matmul job's X is read and
//! bound a block of inputs at a time ([`Batch`]), and its Y written to the store as it is
//! computed, so planning holds only A and one block of X and Y.

use std::time::Duration;

use starkscale_cairo::batch::{
    absorb, expected_output, multiply, plan_segments, Binder, Rows, Shape, Stream,
    DEFAULT_SEGMENT_BLOCKS, INITIAL_STATE,
};
use starkscale_cairo::encoding::{a_digest, fact, x_digest};
use starkscale_cairo::inference::{Inference, TaskSpec};
use starkscale_cairo::layer::Model;
use starkscale_cairo::program::Pinned;
use starkscale_common::job::JobError;
use starkscale_common::messages::{
    BatchLayout, InferenceLayout, InferencePart, InferenceSegment, Keys, Layout, SegmentRecord,
    TileInputBlob, TileLayout,
};
use starkscale_common::store::Store;
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, JobLimits, Matrix, TensorError, TilePlan, Vector};
use tokio::runtime::Handle;

use crate::intake::Refusal;

/// A job cut into tasks: its layout, and the keyed values still to store before its tasks go
/// out (a tile job's inputs; a matmul job's are stored while it is cut).
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
    /// Entries of X (and of Y) held at a time while a matmul job is bound.
    pub block_entries: usize,
}

/// Map tiles of A with x; `matmul` marks a matmul job of one input, whose y is also its Y.
pub(crate) fn cut_tiles(a: &Matrix, x: &Vector, options: &CutOptions, matmul: bool) -> Cut {
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

/// Where a matmul job's X is read from, a block of inputs at a time: a `.npy` file (opened in
/// the data directory) or Redis value read by ranges, or inputs already in memory (inline, or
/// JSON).
pub(crate) enum Batch {
    Loaded(Matrix),
    File {
        file: std::fs::File,
        path: String,
        header: npy::Header,
    },
    Stored {
        key: String,
        header: npy::Header,
    },
}

/// Reads a block of X's rows.
struct Reader<'a, S> {
    batch: &'a Batch,
    store: &'a S,
    runtime: &'a Handle,
}

impl Batch {
    /// (B, K).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Batch::Loaded(x) => (x.rows(), x.cols()),
            Batch::File { header, .. } | Batch::Stored { header, .. } => {
                (header.shape[0], header.shape[1])
            }
        }
    }

    /// The first input, as a vector (a batch of one is proven as a matvec).
    pub fn first_input<S: Store>(&self, store: &S, runtime: &Handle) -> Result<Vector, Refusal> {
        let mut reader = Reader {
            batch: self,
            store,
            runtime,
        };
        let row = reader.read(0, 1)?;
        // The reader range-checked every entry as int8.
        let values: Vec<i8> = (0..row.width()).map(|c| row.get(0, c) as i8).collect();
        Vector::new(Dtype::I8, values)
            .map_err(|source| JobError::Input { what: "x", source }.into())
    }
}

impl<S: Store> Reader<'_, S> {
    fn read(&mut self, row0: usize, rows: usize) -> Result<Rows, Refusal> {
        let (_, k) = self.batch.shape();
        let input = |source| JobError::Input { what: "x", source };
        let (header, bytes) = match self.batch {
            Batch::Loaded(x) => {
                let data = &x.data()[row0 * k..(row0 + rows) * k];
                return Ok(Rows::int8(k, data));
            }
            Batch::File { file, path, header } => {
                use std::io::{Read, Seek, SeekFrom};
                let io = |source| {
                    input(TensorError::Io {
                        path: path.clone(),
                        source,
                    })
                };
                let mut file = file;
                let start = header.data_start + row0 * k * header.width;
                let mut bytes = vec![0u8; rows * k * header.width];
                file.seek(SeekFrom::Start(start as u64)).map_err(io)?;
                file.read_exact(&mut bytes).map_err(io)?;
                (header, bytes)
            }
            Batch::Stored { key, header } => {
                let start = header.data_start + row0 * k * header.width;
                let len = rows * k * header.width;
                let bytes =
                    self.runtime
                        .block_on(self.store.get_range(key, start as u64, len as u64))?;
                if bytes.len() != len {
                    return Err(JobError::MissingReference {
                        what: "x",
                        key: key.clone(),
                    }
                    .into());
                }
                (header, bytes)
            }
        };
        let values = header
            .decode(&bytes, row0 * k, |v, i| Dtype::I8.check(v, i))
            .map_err(input)?;
        Ok(Rows::int8(k, &values))
    }
}

/// Inputs per block while binding X and Y: at most `entries` of X and of Y at a time (at
/// least one input).
fn block_rows(shape: &Shape, entries: usize) -> usize {
    (entries / shape.k.max(shape.m).max(1)).max(1)
}

/// Bytes of task inputs gathered before they are written.
const WRITE_BATCH_BYTES: usize = 32 << 20;

/// Task inputs gathered and written in batches of about [`WRITE_BATCH_BYTES`], so that planning
/// holds a bounded part of a large job's inputs.
struct Writes<'a, S> {
    store: &'a S,
    runtime: &'a Handle,
    ttl: Duration,
    pending: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

impl<'a, S: Store> Writes<'a, S> {
    fn new(store: &'a S, runtime: &'a Handle, ttl: Duration) -> Writes<'a, S> {
        Writes {
            store,
            runtime,
            ttl,
            pending: Vec::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), Refusal> {
        self.bytes += value.len();
        self.pending.push((key, value));
        if self.bytes >= WRITE_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Refusal> {
        let batch = std::mem::take(&mut self.pending);
        self.bytes = 0;
        Ok(self.runtime.block_on(self.store.put_all(batch, self.ttl))?)
    }

    fn finish(mut self) -> Result<(), Refusal> {
        self.flush()
    }
}

/// Plans a matmul job reading X a block of inputs at a time. Pass 1 computes each block's
/// outputs, advances the X and Y chains and appends the block of Y to its key; the
/// commitments, seed and challenges follow. Pass 2 cuts the segments, reading each one's rows
/// (of Aᵀ, X, or Y back from the store), computes its honest output and writes its input, in
/// bounded batches. Neither pass holds more of X or Y than a block or a segment.
pub(crate) fn cut_batch<S: Store>(
    store: &S,
    runtime: &Handle,
    a: &Matrix,
    batch: &Batch,
    options: &CutOptions,
    ttl: Duration,
) -> Result<Layout, Refusal> {
    let (b, k) = batch.shape();
    let shape = Shape { m: a.rows(), k, b };
    let mut reader = Reader {
        batch,
        store,
        runtime,
    };
    let a_rows = Rows::int8(a.cols(), a.data());
    let at = a_rows.transpose_i8();
    let y_key = options.keys.y(options.job_id);
    runtime.block_on(store.put(&y_key, &npy::write_i32(&[b, shape.m], &[]), ttl))?;
    let y_start = runtime.block_on(store.len(&y_key))? as usize;
    let per = block_rows(&shape, options.block_entries);
    let mut binder = Binder::new(shape);
    let mut row0 = 0;
    while row0 < b {
        let rows = per.min(b - row0);
        let x = reader.read(row0, rows)?;
        let y = multiply(&a_rows, &x);
        binder.absorb(&x, &y).map_err(JobError::Shape)?;
        let Rows::I32 { data, .. } = &y else {
            return Err(JobError::Limit("Y is not int32".into()).into());
        };
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        runtime.block_on(store.append(&y_key, &bytes, ttl))?;
        row0 += rows;
    }
    let statement = binder.finish(&a_rows, &at).map_err(JobError::Shape)?;
    let blocks = options.segment_blocks.unwrap_or(DEFAULT_SEGMENT_BLOCKS);
    let specs = plan_segments(&shape, blocks);
    if specs.len() + 1 > options.limits.max_tiles {
        return Err(JobError::Limit(format!(
            "the job needs {} segment tasks, over the {} limit",
            specs.len() + 1,
            options.limits.max_tiles
        ))
        .into());
    }
    let program = Pinned::Batch.hash();
    let mut segments = Vec::with_capacity(specs.len());
    let mut writes = Writes::new(store, runtime, ttl);
    let mut states: Option<(Stream, Vec<[u32; 8]>)> = None;
    for (task, spec) in specs.iter().enumerate() {
        let data = match spec.stream {
            Stream::Weights => at.slice(spec.row0, spec.rows),
            Stream::Inputs => reader.read(spec.row0, spec.rows)?,
            Stream::Outputs => {
                let start = y_start + spec.row0 * shape.m * 4;
                let len = spec.rows * shape.m * 4;
                let bytes = runtime.block_on(store.get_range(&y_key, start as u64, len as u64))?;
                if bytes.len() != len {
                    return Err(JobError::MissingReference {
                        what: "Y",
                        key: y_key.clone(),
                    }
                    .into());
                }
                Rows::I32 {
                    width: shape.m,
                    data: bytes
                        .chunks_exact(4)
                        .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                        .collect(),
                }
            }
        };
        // Segments come stream by stream, top to bottom: each continues its predecessor's
        // chains.
        let before = match states.take() {
            Some((stream, s)) if stream == spec.stream => s,
            _ => vec![INITIAL_STATE; spec.stream.chunks(&shape)],
        };
        let mut after = before.clone();
        absorb(&data, &mut after, spec.row0, false);
        let input = statement.segment(spec.stream, spec.row0, data, before);
        let output = expected_output(&input, &statement.v);
        states = Some((spec.stream, after));
        segments.push(SegmentRecord {
            stream: spec.stream.kind(),
            row0: spec.row0,
            rows: spec.rows,
            fact: fact(&program, &output).to_hex(),
        });
        writes.put(
            options.keys.task_input(options.job_id, task),
            input.to_bytes(),
        )?;
    }
    writes.finish()?;
    let [com_a, com_x, com_y] = statement.commitments;
    Ok(Layout::Batch(BatchLayout {
        m: shape.m,
        k: shape.k,
        b: shape.b,
        a_commitment: com_a.to_hex(),
        x_commitment: com_x.to_hex(),
        y_commitment: com_y.to_hex(),
        segments,
    }))
}

/// Plans an inference job: every layer computed natively and committed (`docs/inference.md`),
/// the logits stored at the job's Y key, then each segment's input written (in bounded
/// batches) with the fact of its honest output. Every segment can be proven at once.
pub(crate) fn cut_inference<S: Store>(
    store: &S,
    runtime: &Handle,
    model: &Model,
    x: &Rows,
    options: &CutOptions,
    ttl: Duration,
) -> Result<Layout, Refusal> {
    let inference = Inference::new(model, x).map_err(|e| JobError::Model(e.to_string()))?;
    let logits = inference.logits();
    let (b, classes) = (logits.height(), logits.width());
    // Logits are int8 (each layer requantizes to int8).
    let values: Vec<i8> = (0..b * classes)
        .map(|i| logits.get(i / classes, i % classes) as i8)
        .collect();
    let y_key = options.keys.y(options.job_id);
    runtime.block_on(store.put(&y_key, &npy::write_i8(&[b, classes], &values), ttl))?;
    let specs = inference.plan(options.segment_blocks.unwrap_or(DEFAULT_SEGMENT_BLOCKS));
    if specs.len() + 1 > options.limits.max_tiles {
        return Err(JobError::Limit(format!(
            "the job needs {} segment tasks, over the {} limit",
            specs.len() + 1,
            options.limits.max_tiles
        ))
        .into());
    }
    let mut segments = Vec::with_capacity(specs.len());
    let mut writes = Writes::new(store, runtime, ttl);
    for (task, spec) in specs.iter().enumerate() {
        let input = inference.task(spec);
        let output = inference.expected_output(&input);
        let (part, layer, row0, rows) = match *spec {
            TaskSpec::Weights { layer, row0, rows } => (InferencePart::Weights, layer, row0, rows),
            TaskSpec::Inputs { row0, rows } => (InferencePart::Inputs, 0, row0, rows),
            TaskSpec::Layer { layer, row0, rows } => (InferencePart::Layer, layer, row0, rows),
        };
        segments.push(InferenceSegment {
            part,
            layer,
            row0,
            rows,
            fact: fact(&input.program().hash(), &output).to_hex(),
        });
        writes.put(
            options.keys.task_input(options.job_id, task),
            input.to_bytes(),
        )?;
    }
    writes.finish()?;
    Ok(Layout::Inference(InferenceLayout {
        batch: inference.batch(),
        dims: inference
            .layers
            .iter()
            .map(|l| (l.shape.m, l.shape.k))
            .collect(),
        model_commitment: inference.model_commitment.to_hex(),
        x_commitment: inference.x_commitment.to_hex(),
        logits_commitment: inference.logits_commitment.to_hex(),
        segments,
    }))
}

impl Batch {
    /// X of a matmul job as a reader takes it: the header of a `.npy` file (`file`, opened from
    /// the job's `path`), read and checked against the file's size; anything else loaded whole
    /// by the caller.
    pub fn open_file(file: std::fs::File, path: &str) -> Result<Option<Batch>, JobError> {
        use std::io::Read;
        let input = |source| JobError::Input { what: "x", source };
        let io = |source| {
            input(TensorError::Io {
                path: path.to_string(),
                source,
            })
        };
        let mut file = file;
        let size = file.metadata().map_err(io)?.len();
        let mut probe = Vec::new();
        (&mut file)
            .take(npy::HEADER_PROBE as u64)
            .read_to_end(&mut probe)
            .map_err(io)?;
        if !probe.starts_with(npy::MAGIC) {
            return Ok(None);
        }
        let (len, start) = npy::Header::length(&probe).map_err(input)?;
        if start + len > probe.len() && (start + len) as u64 <= size {
            (&mut file)
                .take((start + len - probe.len()) as u64)
                .read_to_end(&mut probe)
                .map_err(io)?;
        }
        let header = checked_header(&probe, size)?;
        Ok(Some(Batch::File {
            file,
            path: path.to_string(),
            header,
        }))
    }

    /// X by Redis key: its header read by range and checked against the value's size; `None`
    /// when the value is not a `.npy` (JSON rows, read whole by the caller).
    pub async fn open_stored<S: Store>(store: &S, key: &str) -> Result<Option<Batch>, Refusal> {
        let size = store.len(key).await?;
        if size == 0 {
            return Err(JobError::MissingReference {
                what: "x",
                key: key.to_string(),
            }
            .into());
        }
        let mut probe = store.get_range(key, 0, npy::HEADER_PROBE as u64).await?;
        if !probe.starts_with(npy::MAGIC) {
            return Ok(None);
        }
        let input = |source| JobError::Input { what: "x", source };
        let (len, start) = npy::Header::length(&probe).map_err(input)?;
        if start + len > probe.len() && (start + len) as u64 <= size {
            let more = (start + len - probe.len()) as u64;
            probe.extend(store.get_range(key, probe.len() as u64, more).await?);
        }
        let header = checked_header(&probe, size)?;
        Ok(Some(Batch::Stored {
            key: key.to_string(),
            header,
        }))
    }
}

/// A 2-D `.npy` header whose data fills exactly the rest of a value of `size` bytes.
fn checked_header(probe: &[u8], size: u64) -> Result<npy::Header, JobError> {
    let input = |source| JobError::Input { what: "x", source };
    let header = npy::Header::parse(probe).map_err(input)?;
    if header.shape.len() != 2 {
        return Err(JobError::Shape(format!(
            "a matmul job's X is 2-D, one input per row (B x K), not of shape {:?}",
            header.shape
        )));
    }
    let needed = header
        .data_bytes()
        .and_then(|n| n.checked_add(header.data_start));
    if needed.map(|n| n as u64) != Some(size) {
        return Err(input(TensorError::Npy(format!(
            "shape {:?} needs {} bytes, the input has {size}",
            header.shape,
            needed.map_or("too many".to_string(), |n| n.to_string())
        ))));
    }
    Ok(header)
}
