//! Integer matrices and vectors, and the two file formats users hand us: JSON arrays and NumPy
//! `.npy` (little-endian integer dtypes, C order).
//!
//! Entries are held as `i8`, the one dtype jobs take (one byte per entry, however large the
//! matrix), range-checked once, as they are read: JSON is read straight into one int8 buffer
//! ([`Inline8`], no nested vectors of wide integers on the way) and `.npy` entries are decoded
//! into it.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest file we read into memory (an int8 matrix of 1 GiB is ~10^9 inputs).
pub const MAX_INPUT_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, over the {max}-byte input limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid .npy file: {0}")]
    Npy(String),
    #[error("shape error: {0}")]
    Shape(String),
    #[error("value {value} at index {index} is out of range for {dtype}")]
    OutOfRange {
        value: i128,
        index: usize,
        dtype: Dtype,
    },
    #[error("unsupported dtype {0:?} (supported: i8)")]
    UnsupportedDtype(String),
}

/// Element type of a matrix or vector.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    I8,
}

impl Dtype {
    pub fn min(self) -> i64 {
        match self {
            Dtype::I8 => i8::MIN as i64,
        }
    }
    pub fn max(self) -> i64 {
        match self {
            Dtype::I8 => i8::MAX as i64,
        }
    }
    /// Code carried in a tile's public output.
    pub fn code(self) -> u32 {
        match self {
            Dtype::I8 => 1,
        }
    }
    pub fn from_code(code: u32) -> Option<Dtype> {
        match code {
            1 => Some(Dtype::I8),
            _ => None,
        }
    }
    pub fn parse(name: &str) -> Result<Dtype, TensorError> {
        match name {
            "i8" | "int8" => Ok(Dtype::I8),
            other => Err(TensorError::UnsupportedDtype(other.to_string())),
        }
    }

    /// `value`, entry `index` of an input, as held (int8), if it is within the dtype's range.
    pub fn check(self, value: i128, index: usize) -> Result<i8, TensorError> {
        match self {
            Dtype::I8 => i8::try_from(value).map_err(|_| TensorError::OutOfRange {
                value,
                index,
                dtype: self,
            }),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dtype::I8 => f.write_str("i8"),
        }
    }
}

/// A dense row-major integer matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    dtype: Dtype,
    data: Vec<i8>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, dtype: Dtype, data: Vec<i8>) -> Result<Self, TensorError> {
        if rows == 0 || cols == 0 {
            return Err(TensorError::Shape(format!(
                "a matrix needs at least one row and one column, got {rows}x{cols}"
            )));
        }
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(TensorError::Shape(format!(
                "{rows}x{cols} matrix needs {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(Matrix {
            rows,
            cols,
            dtype,
            data,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    pub fn get(&self, row: usize, col: usize) -> i64 {
        i64::from(self.data[row * self.cols + col])
    }
    pub fn row(&self, row: usize) -> &[i8] {
        &self.data[row * self.cols..(row + 1) * self.cols]
    }
    pub fn data(&self) -> &[i8] {
        &self.data
    }
    /// The entries, row-major, giving up the matrix.
    pub fn into_data(self) -> Vec<i8> {
        self.data
    }

    /// The sub-matrix `[row0, row0 + rows) x [col0, col0 + cols)`, clipped to the matrix.
    pub fn tile(&self, row0: usize, col0: usize, rows: usize, cols: usize) -> Matrix {
        let r1 = (row0 + rows).min(self.rows);
        let c1 = (col0 + cols).min(self.cols);
        let mut data = Vec::with_capacity((r1 - row0) * (c1 - col0));
        for r in row0..r1 {
            data.extend_from_slice(&self.row(r)[col0..c1]);
        }
        Matrix {
            rows: r1 - row0,
            cols: c1 - col0,
            dtype: self.dtype,
            data,
        }
    }

    /// y = A x, exactly, in i64.
    pub fn matvec(&self, x: &Vector) -> Result<Vec<i64>, TensorError> {
        if x.len() != self.cols {
            return Err(TensorError::Shape(format!(
                "matrix has {} columns but x has {} entries",
                self.cols,
                x.len()
            )));
        }
        Ok((0..self.rows)
            .map(|r| {
                let row = self.row(r).iter().zip(x.data());
                row.map(|(&a, &b)| i64::from(a) * i64::from(b)).sum()
            })
            .collect())
    }

    /// Reads a matrix from JSON (an array of equal-length rows) or `.npy` (2-D).
    pub fn load(path: &Path, dtype: Dtype) -> Result<Matrix, TensorError> {
        let bytes = read_limited(path)?;
        if is_npy(path, &bytes) {
            Matrix::from_npy(&bytes, dtype)
        } else {
            Matrix::from_json(&bytes, dtype)
        }
    }

    /// A matrix from `.npy` bytes (recognised by their magic) or JSON.
    pub fn from_bytes(bytes: &[u8], dtype: Dtype) -> Result<Matrix, TensorError> {
        if bytes.starts_with(npy::MAGIC) {
            Matrix::from_npy(bytes, dtype)
        } else {
            Matrix::from_json(bytes, dtype)
        }
    }

    fn from_npy(bytes: &[u8], dtype: Dtype) -> Result<Matrix, TensorError> {
        let (shape, values) = npy::parse(bytes, dtype)?;
        match shape.as_slice() {
            [r, c] => Matrix::new(*r, *c, dtype, values),
            other => Err(TensorError::Shape(format!(
                "expected a 2-D array, got shape {other:?}"
            ))),
        }
    }

    pub fn from_json(bytes: &[u8], dtype: Dtype) -> Result<Matrix, TensorError> {
        Inline8::from_json(bytes)?.into_matrix(dtype)
    }

    /// A matrix from equal-length rows, each value range-checked against `dtype`.
    pub fn from_rows<T: Copy + Into<i128>>(
        rows: &[Vec<T>],
        dtype: Dtype,
    ) -> Result<Matrix, TensorError> {
        let n_rows = rows.len();
        let n_cols = rows.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(n_rows * n_cols);
        for (r, row) in rows.iter().enumerate() {
            if row.len() != n_cols {
                return Err(TensorError::Shape(format!(
                    "row {r} has {} entries, row 0 has {n_cols}",
                    row.len()
                )));
            }
            for &v in row {
                data.push(dtype.check(v.into(), data.len())?);
            }
        }
        Matrix::new(n_rows, n_cols, dtype, data)
    }
}

/// A dense integer vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    dtype: Dtype,
    data: Vec<i8>,
}

impl Vector {
    pub fn new(dtype: Dtype, data: Vec<i8>) -> Result<Self, TensorError> {
        if data.is_empty() {
            return Err(TensorError::Shape(
                "a vector needs at least one entry".into(),
            ));
        }
        Ok(Vector { dtype, data })
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    pub fn data(&self) -> &[i8] {
        &self.data
    }
    /// Entries `[start, start + len)`, clipped to the vector.
    pub fn block(&self, start: usize, len: usize) -> Vector {
        let end = (start + len).min(self.data.len());
        Vector {
            dtype: self.dtype,
            data: self.data[start..end].to_vec(),
        }
    }

    /// Reads a vector from JSON (an array of integers) or `.npy` (1-D, or 2-D with one column).
    pub fn load(path: &Path, dtype: Dtype) -> Result<Vector, TensorError> {
        let bytes = read_limited(path)?;
        if is_npy(path, &bytes) {
            Vector::from_npy(&bytes, dtype)
        } else {
            Vector::from_json(&bytes, dtype)
        }
    }

    /// A vector from `.npy` bytes (recognised by their magic) or JSON.
    pub fn from_bytes(bytes: &[u8], dtype: Dtype) -> Result<Vector, TensorError> {
        if bytes.starts_with(npy::MAGIC) {
            Vector::from_npy(bytes, dtype)
        } else {
            Vector::from_json(bytes, dtype)
        }
    }

    fn from_npy(bytes: &[u8], dtype: Dtype) -> Result<Vector, TensorError> {
        let (shape, values) = npy::parse(bytes, dtype)?;
        match shape.as_slice() {
            [_] | [_, 1] => Vector::new(dtype, values),
            other => Err(TensorError::Shape(format!(
                "expected a 1-D array, got shape {other:?}"
            ))),
        }
    }

    pub fn from_json(bytes: &[u8], dtype: Dtype) -> Result<Vector, TensorError> {
        Inline8::from_json(bytes)?.into_vector(dtype)
    }
}

/// An int8 array as JSON writes it: an array of integers (one dimension) or of equal-length
/// rows of integers (two), read straight into one int8 buffer. Every entry is range-checked and
/// every row's length compared with the first's as it is read, so a job's inline values are
/// parsed once, held at one byte each, and never pass through nested vectors of wide integers.
/// Shape rules beyond that (empty arrays, which dimension a job needs) are checked when it
/// becomes a [`Matrix`] or [`Vector`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inline8 {
    /// Rows of a two-dimensional array; `None` for one dimension.
    pub rows: Option<usize>,
    /// Entries per row (all entries, for one dimension).
    pub cols: usize,
    pub data: Vec<i8>,
}

impl Inline8 {
    /// A one-dimensional array.
    pub fn vector(data: Vec<i8>) -> Inline8 {
        Inline8 {
            rows: None,
            cols: data.len(),
            data,
        }
    }

    /// A two-dimensional array of `cols` entries per row.
    pub fn matrix(rows: usize, cols: usize, data: Vec<i8>) -> Inline8 {
        Inline8 {
            rows: Some(rows),
            cols,
            data,
        }
    }

    /// Parses JSON, reporting a range or row-length error as itself rather than as bad JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Inline8, TensorError> {
        take_inline_failure();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = Inline8::deserialize_named("array", &mut de).and_then(|array| {
            de.end()?;
            Ok(array)
        });
        parsed.map_err(|e| match take_inline_failure() {
            Some((_, tensor)) => tensor,
            None => TensorError::Json(e.to_string()),
        })
    }

    /// Deserializes the input called `what`; a range or row-length error is also left for
    /// [`take_inline_failure`] under that name.
    pub fn deserialize_named<'de, D: serde::Deserializer<'de>>(
        what: &'static str,
        deserializer: D,
    ) -> Result<Inline8, D::Error> {
        serde::de::DeserializeSeed::deserialize(ArraySeed { what }, deserializer)
    }

    /// As a matrix: two dimensions, at least one row and one column.
    pub fn into_matrix(self, dtype: Dtype) -> Result<Matrix, TensorError> {
        match self.rows {
            Some(rows) => Matrix::new(rows, self.cols, dtype, self.data),
            None if self.data.is_empty() => Matrix::new(0, 0, dtype, self.data),
            None => Err(TensorError::Shape(
                "expected an array of rows, got an array of numbers".into(),
            )),
        }
    }

    /// As a vector: one dimension.
    pub fn into_vector(self, dtype: Dtype) -> Result<Vector, TensorError> {
        match self.rows {
            None => Vector::new(dtype, self.data),
            Some(_) => Err(TensorError::Shape(
                "expected an array of numbers, got an array of rows".into(),
            )),
        }
    }
}

impl Serialize for Inline8 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.rows {
            None => serializer.collect_seq(&self.data),
            Some(rows) => {
                let mut seq = serializer.serialize_seq(Some(rows))?;
                if self.cols == 0 {
                    for _ in 0..rows {
                        seq.serialize_element(&[0i8; 0])?;
                    }
                } else {
                    for row in self.data.chunks(self.cols) {
                        seq.serialize_element(row)?;
                    }
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Inline8 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Inline8::deserialize_named("array", deserializer)
    }
}

thread_local! {
    /// The range or row-length error that ended the last failed inline read on this thread,
    /// with the input's name. serde's errors carry text only; this lets a caller report the
    /// error as the input's own (`invalid a: …`) rather than as malformed JSON.
    static INLINE_FAILURE: std::cell::RefCell<Option<(&'static str, TensorError)>> =
        const { std::cell::RefCell::new(None) };
}

/// Takes (and clears) the error left by the last failed inline read on this thread; call it
/// once before a parse to clear, and after a failed one to learn why.
pub fn take_inline_failure() -> Option<(&'static str, TensorError)> {
    INLINE_FAILURE.with(|slot| slot.borrow_mut().take())
}

/// Reads an [`Inline8`] named `what`.
struct ArraySeed {
    what: &'static str,
}

impl ArraySeed {
    fn fail<E: serde::de::Error>(&self, error: TensorError) -> E {
        let message = format!("{}: {error}", self.what);
        INLINE_FAILURE.with(|slot| *slot.borrow_mut() = Some((self.what, error)));
        E::custom(message)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ArraySeed {
    type Value = Inline8;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Inline8, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ArraySeed {
    type Value = Inline8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of int8 entries, or of equal-length rows of them")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Inline8, A::Error> {
        // The first element decides the dimension: a number, or a row.
        let mut array = Inline8::default();
        let first = seq.next_element_seed(Entry {
            array: &mut array,
            seed: &self,
        })?;
        if first.is_none() {
            return Ok(array);
        }
        loop {
            let next = match array.rows {
                None => seq.next_element_seed(Number {
                    array: &mut array,
                    seed: &self,
                })?,
                Some(_) => seq.next_element_seed(Row {
                    array: &mut array,
                    seed: &self,
                    first_row: false,
                })?,
            };
            if next.is_none() {
                break;
            }
        }
        if array.rows.is_none() {
            array.cols = array.data.len();
        }
        Ok(array)
    }
}

/// The first element of an array: a number (one dimension) or the first row (two).
struct Entry<'a> {
    array: &'a mut Inline8,
    seed: &'a ArraySeed,
}

impl<'de> serde::de::DeserializeSeed<'de> for Entry<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Entry<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an int8 entry or a row of them")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        push(self.array, self.seed, i128::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        push(self.array, self.seed, i128::from(v))
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<(), E> {
        push(self.array, self.seed, v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Row {
            array: self.array,
            seed: self.seed,
            first_row: true,
        }
        .visit_seq(seq)
    }
}

/// One entry of a one-dimensional array.
struct Number<'a> {
    array: &'a mut Inline8,
    seed: &'a ArraySeed,
}

impl<'de> serde::de::DeserializeSeed<'de> for Number<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // i128, so that values past i64 are reported as out of range rather than as bad JSON.
        let value = i128::deserialize(deserializer)?;
        push(self.array, self.seed, value)
    }
}

/// One row of a two-dimensional array; the first sets the row length.
struct Row<'a> {
    array: &'a mut Inline8,
    seed: &'a ArraySeed,
    first_row: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Row<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Row<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row of int8 entries")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let row = self.array.rows.unwrap_or(0);
        let start = self.array.data.len();
        while let Some(value) = seq.next_element::<i128>()? {
            push(self.array, self.seed, value)?;
        }
        let len = self.array.data.len() - start;
        if self.first_row {
            self.array.cols = len;
        } else if len != self.array.cols {
            return Err(self.seed.fail(TensorError::Shape(format!(
                "row {row} has {len} entries, row 0 has {}",
                self.array.cols
            ))));
        }
        self.array.rows = Some(row + 1);
        Ok(())
    }
}

fn push<E: serde::de::Error>(array: &mut Inline8, seed: &ArraySeed, value: i128) -> Result<(), E> {
    let index = array.data.len();
    match Dtype::I8.check(value, index) {
        Ok(v) => {
            array.data.push(v);
            Ok(())
        }
        Err(e) => Err(seed.fail(e)),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, TensorError> {
    let io = |source| TensorError::Io {
        path: path.display().to_string(),
        source,
    };
    // Size before reading: a hostile path must not make us allocate without bound.
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_INPUT_BYTES {
        return Err(TensorError::TooLarge {
            path: path.display().to_string(),
            size,
            max: MAX_INPUT_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

fn is_npy(path: &Path, bytes: &[u8]) -> bool {
    path.extension().is_some_and(|e| e == "npy") || bytes.starts_with(npy::MAGIC)
}

/// The subset of the NumPy format we accept: versions 1-3, little-endian or single-byte integer
/// dtypes, C order.
pub mod npy {
    use super::{Dtype, TensorError};

    pub const MAGIC: &[u8] = b"\x93NUMPY";

    /// Returns (shape, values), each value range-checked against `dtype`.
    pub fn parse(bytes: &[u8], dtype: Dtype) -> Result<(Vec<usize>, Vec<i8>), TensorError> {
        parse_checked(bytes, |v, i| dtype.check(v, i))
    }

    /// Returns (shape, values), each value checked to be an int32 (a batch job's Y).
    pub fn parse_i32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<i64>), TensorError> {
        parse_checked(bytes, |v, i| {
            i32::try_from(v)
                .map(i64::from)
                .map_err(|_| TensorError::Npy(format!("value {v} at index {i} is not an int32")))
        })
    }

    /// Returns (shape, values) of a little-endian float32 array (a model's float inputs).
    pub fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), TensorError> {
        let err = |m: String| TensorError::Npy(m);
        let (header_len, start) = Header::length(bytes)?;
        let header = bytes
            .get(start..start + header_len)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| err("truncated or non-UTF-8 header".into()))?;
        let descr =
            dict_value(header, "descr").ok_or_else(|| err("no 'descr' in header".into()))?;
        if descr.trim_matches(|c| c == '\'' || c == '"') != "<f4" {
            return Err(err(format!("dtype {descr} is not little-endian float32")));
        }
        if dict_value(header, "fortran_order").map(|f| f.trim() == "False") != Some(true) {
            return Err(err("only C-ordered arrays are supported".into()));
        }
        let shape = parse_shape(
            &dict_value(header, "shape").ok_or_else(|| err("no 'shape' in header".into()))?,
        )?;
        let body = &bytes[start + header_len..];
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count.and_then(|c| c.checked_mul(4)) != Some(body.len()) {
            return Err(err(format!(
                "shape {shape:?} does not match {} data bytes",
                body.len()
            )));
        }
        let values = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, values))
    }

    fn parse_checked<T>(
        bytes: &[u8],
        check: impl Fn(i128, usize) -> Result<T, TensorError>,
    ) -> Result<(Vec<usize>, Vec<T>), TensorError> {
        let header = Header::parse(bytes)?;
        let body = &bytes[header.data_start..];
        if Some(body.len()) != header.data_bytes() {
            return Err(TensorError::Npy(format!(
                "shape {:?} needs {} data bytes, file has {}",
                header.shape,
                header.data_bytes().unwrap_or(usize::MAX),
                body.len()
            )));
        }
        let values = header.decode(body, 0, check)?;
        Ok((header.shape, values))
    }

    /// An array's header: what a reader needs to take its entries a few rows at a time.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Header {
        pub shape: Vec<usize>,
        /// Bytes per entry.
        pub width: usize,
        pub signed: bool,
        /// Where the entries start.
        pub data_start: usize,
    }

    /// Bytes of an array's start that always hold its header (a reader fetches this much
    /// first, then more only for a header longer than usual).
    pub const HEADER_PROBE: usize = 128;

    impl Header {
        /// Parses the header at the start of `bytes` (the entries need not follow).
        pub fn parse(bytes: &[u8]) -> Result<Header, TensorError> {
            let err = |m: &str| TensorError::Npy(m.to_string());
            if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
                return Err(err("missing NUMPY magic"));
            }
            let (header_len, start) = Header::length(bytes)?;
            let header = bytes
                .get(start..start + header_len)
                .ok_or_else(|| err("truncated header"))?;
            let header = std::str::from_utf8(header).map_err(|_| err("header is not UTF-8"))?;
            let descr = dict_value(header, "descr").ok_or_else(|| err("no 'descr' in header"))?;
            let descr = descr.trim_matches(|c| c == '\'' || c == '"');
            let fortran =
                dict_value(header, "fortran_order").ok_or_else(|| err("no 'fortran_order'"))?;
            if fortran.trim() != "False" {
                return Err(err(
                    "Fortran-ordered arrays are not supported; save with C order",
                ));
            }
            let shape = parse_shape(
                &dict_value(header, "shape").ok_or_else(|| err("no 'shape' in header"))?,
            )?;
            let (width, signed) = match descr {
                "|i1" | "i1" | "<i1" => (1, true),
                "|u1" | "u1" | "<u1" => (1, false),
                "<i2" => (2, true),
                "<u2" => (2, false),
                "<i4" => (4, true),
                "<u4" => (4, false),
                "<i8" => (8, true),
                "<u8" => (8, false),
                other => {
                    return Err(TensorError::Npy(format!(
                        "unsupported dtype '{other}' (little-endian integers only)"
                    )))
                }
            };
            Ok(Header {
                shape,
                width,
                signed,
                data_start: start + header_len,
            })
        }

        /// The header dict's length and where it starts, from the first 12 bytes.
        pub fn length(bytes: &[u8]) -> Result<(usize, usize), TensorError> {
            let err = |m: &str| TensorError::Npy(m.to_string());
            if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
                return Err(err("missing NUMPY magic"));
            }
            match bytes[6] {
                1 => Ok((u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)),
                2 | 3 => {
                    let b = bytes.get(8..12).ok_or_else(|| err("truncated header"))?;
                    Ok((u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12))
                }
                v => Err(TensorError::Npy(format!("unsupported version {v}"))),
            }
        }

        /// Entries in all.
        pub fn count(&self) -> Option<usize> {
            self.shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        }

        /// Bytes of entries the shape needs.
        pub fn data_bytes(&self) -> Option<usize> {
            self.count()?.checked_mul(self.width)
        }

        /// Decodes whole entries of `body`, the first being entry `first` of the array (for
        /// the index `check` reports).
        pub fn decode<T>(
            &self,
            body: &[u8],
            first: usize,
            check: impl Fn(i128, usize) -> Result<T, TensorError>,
        ) -> Result<Vec<T>, TensorError> {
            let width = self.width;
            let mut values = Vec::with_capacity(body.len() / width);
            for (i, chunk) in body.chunks_exact(width).enumerate() {
                let mut buf = [0u8; 8];
                buf[..width].copy_from_slice(chunk);
                let raw = u64::from_le_bytes(buf);
                let v: i128 = if self.signed {
                    let shift = 64 - 8 * width as u32;
                    (((raw << shift) as i64) >> shift) as i128
                } else {
                    raw as i128
                };
                values.push(check(v, first + i)?);
            }
            Ok(values)
        }
    }

    /// Serializes a C-order little-endian int32 array (a batch job's Y).
    pub fn write_i32(shape: &[usize], values: &[i32]) -> Vec<u8> {
        let mut out = header(shape, "<i4");
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Serializes a C-order int8 array.
    pub fn write_i8(shape: &[usize], values: &[i8]) -> Vec<u8> {
        let mut out = header(shape, "|i1");
        out.extend(values.iter().map(|&v| v as u8));
        out
    }

    /// Magic, version 1.0 and the header dict, padded so the data starts on a 64-byte boundary.
    fn header(shape: &[usize], descr: &str) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_txt = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out
    }

    fn dict_value(header: &str, key: &str) -> Option<String> {
        let pos = header.find(&format!("'{key}'"))?;
        let rest = &header[pos + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        if rest.starts_with('(') {
            let end = rest.find(')')?;
            Some(rest[..=end].to_string())
        } else {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Some(rest[..end].trim().to_string())
        }
    }

    fn parse_shape(text: &str) -> Result<Vec<usize>, TensorError> {
        let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| TensorError::Npy(format!("bad shape entry '{s}'")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_range() {
        let values: Vec<i8> = vec![-128, -1, 0, 1, 127, 5];
        let bytes = npy::write_i8(&[2, 3], &values);
        let (shape, parsed) = npy::parse(&bytes, Dtype::I8).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(parsed, values);
    }

    #[test]
    fn npy_rejects_out_of_range_wider_dtype() {
        // An int16 file with 300 in it: readable, but not as i8.
        let mut bytes = npy::write_i8(&[1], &[0]);
        let pos = bytes.windows(4).position(|w| w == b"|i1'").unwrap();
        bytes[pos..pos + 3].copy_from_slice(b"<i2");
        bytes.pop();
        bytes.extend_from_slice(&300i16.to_le_bytes());
        let err = npy::parse(&bytes, Dtype::I8).unwrap_err();
        assert!(
            matches!(err, TensorError::OutOfRange { value: 300, .. }),
            "{err}"
        );
    }

    #[test]
    fn npy_rejects_truncated_data() {
        let mut bytes = npy::write_i8(&[4, 4], &[1; 16]);
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            npy::parse(&bytes, Dtype::I8),
            Err(TensorError::Npy(_))
        ));
    }

    #[test]
    fn json_matrix_checks_shape_and_range() {
        let m = Matrix::from_json(b"[[1,2],[3,4]]", Dtype::I8).unwrap();
        assert_eq!((m.rows(), m.cols(), m.get(1, 0)), (2, 2, 3));
        assert!(matches!(
            Matrix::from_json(b"[[1,2],[3]]", Dtype::I8),
            Err(TensorError::Shape(_))
        ));
        assert!(matches!(
            Matrix::from_json(b"[[1,128]]", Dtype::I8),
            Err(TensorError::OutOfRange { value: 128, .. })
        ));
        assert!(matches!(
            Matrix::from_json(b"[]", Dtype::I8),
            Err(TensorError::Shape(_))
        ));
    }

    #[test]
    fn matvec_and_tiles() {
        let m = Matrix::new(3, 2, Dtype::I8, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let x = Vector::new(Dtype::I8, vec![-1, 1]).unwrap();
        assert_eq!(m.matvec(&x).unwrap(), vec![1, 1, 1]);
        let t = m.tile(1, 1, 5, 5);
        assert_eq!((t.rows(), t.cols(), t.data()), (2, 1, &[4i8, 6][..]));
    }

    #[test]
    fn inline_arrays_are_read_once_into_int8_with_their_errors_named() {
        let m = Inline8::from_json(b"[[1, -2, 3], [127, -128, 0]]").unwrap();
        assert_eq!(m, Inline8::matrix(2, 3, vec![1, -2, 3, 127, -128, 0]));
        let v = Inline8::from_json(b" [5, -6, 7] ").unwrap();
        assert_eq!(v, Inline8::vector(vec![5, -6, 7]));
        // Both shapes write back as they were read.
        for array in [&m, &v] {
            let json = serde_json::to_vec(array).unwrap();
            assert_eq!(&Inline8::from_json(&json).unwrap(), array);
        }
        assert_eq!(
            serde_json::to_string(&Inline8::matrix(2, 0, Vec::new())).unwrap(),
            "[[],[]]"
        );
        assert!(matches!(
            Inline8::from_json(b"[[1, 2], [3, 400]]"),
            Err(TensorError::OutOfRange {
                value: 400,
                index: 3,
                ..
            })
        ));
        assert!(matches!(
            Inline8::from_json(b"[1, 99999999999999999999999]"),
            Err(TensorError::OutOfRange { index: 1, .. })
        ));
        let ragged = Inline8::from_json(b"[[1, 2], [3]]").unwrap_err();
        assert_eq!(
            ragged.to_string(),
            "shape error: row 1 has 1 entries, row 0 has 2"
        );
        for bad in [
            &b"[[1], 2]"[..],
            b"[1, [2]]",
            b"[[[1]]]",
            b"[1.5]",
            b"{}",
            b"[1] x",
        ] {
            assert!(
                matches!(Inline8::from_json(bad), Err(TensorError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Shape rules apply when the array becomes what a job needs.
        assert!(Inline8::from_json(b"[]")
            .unwrap()
            .into_matrix(Dtype::I8)
            .is_err());
        assert!(Inline8::from_json(b"[[]]")
            .unwrap()
            .into_matrix(Dtype::I8)
            .is_err());
        assert!(v.clone().into_matrix(Dtype::I8).is_err());
        assert!(m.clone().into_vector(Dtype::I8).is_err());
        assert_eq!(m.into_matrix(Dtype::I8).unwrap().get(1, 1), -128);
    }
}
