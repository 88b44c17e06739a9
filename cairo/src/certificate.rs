//! Job certificates: every proof of a job, linked by facts into one tree, and their verification.
//!
//! A certificate states "y = A·x for the A with commitment C_A and the x with commitment C_x" and
//! carries what proves it: one proof per map tile, one per reduce node, one for the root. The
//! root's public output states the commitments, y and its children's facts; each node's output
//! states its children's facts; so the proofs form a tree that [`verify_certificate`] rebuilds
//! from the facts alone. Layout and encodings: `docs/certificate.md`.
//!
//! Checks, in order, each failing with its own [`CertificateError`]: the file decodes; its
//! program hashes are the pinned ones; every proof's profile, parameters, preprocessed root and
//! program are pinned, in map, reduce, root order; the map tiles cover the matrix exactly, in
//! order; every fact is unique and listed by exactly one parent; the root's shape, commitments
//! and y equal the certificate's (and the caller's commitment and x, when given); finally every
//! STARK verifies. Cheap checks come first so that a tampered certificate is named precisely.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use starkscale_common::Vector;

use crate::encoding::{self, Digest, Fact, MapOutput};
use crate::program::Pinned;
use crate::proof::TileProof;
use crate::prove::Profile;
use crate::tree::{commit_vector, NodeOutput, RootOutput};
use crate::verify::{check_pinned, check_stark, VerifyError};

const MAGIC: &[u8; 4] = b"SSJC";
pub const CERTIFICATE_VERSION: u8 = 1;
/// A certificate holds at most this many proofs (a 3M-entry job has a dozen or so).
const MAX_PROOFS: usize = 1 << 20;

/// A job certificate. Proofs are ordered: map tiles row-major, then reduce nodes, root last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub rows: u32,
    pub cols: u32,
    pub tile_rows: u32,
    pub tile_cols: u32,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    /// Hashes of the map, reduce and root programs the proofs were made with.
    pub program_hashes: [Digest; 3],
    pub y: Vec<i64>,
    pub proofs: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error(
        "program hashes: the certificate names {found}, the pinned {program} program is {expected}"
    )]
    ProgramHash {
        program: &'static str,
        expected: Digest,
        found: Digest,
    },
    #[error("proof {index}: {source}")]
    Proof { index: usize, source: VerifyError },
    #[error(
        "proof order: proof {index} is of the {found} program where a {expected} proof belongs"
    )]
    Order {
        index: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("tile coverage: {0}")]
    Coverage(String),
    #[error("duplicate proof: proofs {first} and {second} state the same fact")]
    Duplicate { first: usize, second: usize },
    #[error("child facts: {0}")]
    Facts(String),
    #[error("root statement: {0}")]
    Root(String),
    #[error(
        "y mismatch: y[{row}] is {in_certificate} in the certificate but the root proves {proven}"
    )]
    Y {
        row: usize,
        in_certificate: i64,
        proven: i64,
    },
    #[error("commitment mismatch: the root proves A commitment {proven}, the given commitment is {given}")]
    Commitment { proven: Digest, given: Digest },
    #[error("x mismatch: the root proves x commitment {proven}, the given x commits to {given}")]
    X { proven: Digest, given: Digest },
}

/// What a verified certificate establishes, for a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCertificate {
    /// The lowest security profile among the proofs.
    pub profile: Profile,
    pub rows: u32,
    pub cols: u32,
    pub tile_rows: u32,
    pub tile_cols: u32,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    pub tiles: usize,
    pub nodes: usize,
    pub y: Vec<i64>,
    pub verify_s: f64,
}

pub(crate) fn malformed(msg: impl Into<String>) -> CertificateError {
    CertificateError::Malformed(msg.into())
}

impl Certificate {
    /// The certificate of a job whose root proved `root`, from all its proofs in order (tiles
    /// row-major, then nodes, the root last).
    pub fn new(root: &RootOutput, proofs: Vec<Vec<u8>>) -> Certificate {
        Certificate {
            rows: root.rows,
            cols: root.cols,
            tile_rows: root.tile_rows,
            tile_cols: root.tile_cols,
            a_commitment: root.a_commitment,
            x_commitment: root.x_commitment,
            program_hashes: Pinned::MATVEC.map(Pinned::hash),
            y: root.y.clone(),
            proofs,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self.proofs.iter().map(|p| p.len() + 8).sum();
        let mut out = Vec::with_capacity(160 + 4 * self.y.len() + size);
        out.extend_from_slice(MAGIC);
        out.push(CERTIFICATE_VERSION);
        for w in [self.rows, self.cols, self.tile_rows, self.tile_cols] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for d in [&self.a_commitment, &self.x_commitment]
            .into_iter()
            .chain(&self.program_hashes)
        {
            out.extend_from_slice(&d.to_bytes());
        }
        out.extend_from_slice(&(self.y.len() as u32).to_le_bytes());
        for &v in &self.y {
            // The root states y + 2^31 as a u32, so every entry fits an i32.
            out.extend_from_slice(&(v as i32).to_le_bytes());
        }
        write_proofs(&mut out, &self.proofs);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Certificate, CertificateError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(malformed("not a STARKScale job certificate"));
        }
        let version = r.take(1)?[0];
        if version != CERTIFICATE_VERSION {
            return Err(malformed(format!(
                "unsupported certificate version {version}"
            )));
        }
        let (rows, cols, tile_rows, tile_cols) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let a_commitment = r.digest()?;
        let x_commitment = r.digest()?;
        let program_hashes = [r.digest()?, r.digest()?, r.digest()?];
        let n = r.u32()? as usize;
        if n > r.remaining() / 4 {
            return Err(malformed("y is longer than the file"));
        }
        let y = (0..n)
            .map(|_| {
                r.take(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let proofs = r.proofs()?;
        Ok(Certificate {
            rows,
            cols,
            tile_rows,
            tile_cols,
            a_commitment,
            x_commitment,
            program_hashes,
            y,
            proofs,
        })
    }

    /// Map tiles the certificate's shape and tiling call for.
    fn grid(&self) -> Result<Vec<(u32, u32, u32, u32)>, CertificateError> {
        if self.rows == 0 || self.cols == 0 || self.tile_rows == 0 || self.tile_cols == 0 {
            return Err(malformed("zero dimension in the job or tile shape"));
        }
        let (rb, cb) = (
            self.rows.div_ceil(self.tile_rows),
            self.cols.div_ceil(self.tile_cols),
        );
        if rb as usize * cb as usize > MAX_PROOFS {
            return Err(malformed(
                "the tiling has more tiles than a certificate may hold",
            ));
        }
        Ok((0..rb)
            .flat_map(|r| (0..cb).map(move |c| (r, c)))
            .map(|(r, c)| {
                let (row0, col0) = (r * self.tile_rows, c * self.tile_cols);
                (
                    row0,
                    col0,
                    self.tile_rows.min(self.rows - row0),
                    self.tile_cols.min(self.cols - col0),
                )
            })
            .collect())
    }
}

/// The proof list that ends a certificate: a u32 count, then each proof as u64 length + bytes.
pub(crate) fn write_proofs(out: &mut Vec<u8>, proofs: &[Vec<u8>]) {
    out.extend_from_slice(&(proofs.len() as u32).to_le_bytes());
    for proof in proofs {
        out.extend_from_slice(&(proof.len() as u64).to_le_bytes());
        out.extend_from_slice(proof);
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CertificateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| malformed("truncated certificate"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CertificateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CertificateError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// The proof list [`write_proofs`] wrote, which must end the file.
    pub(crate) fn proofs(&mut self) -> Result<Vec<Vec<u8>>, CertificateError> {
        let count = self.u32()? as usize;
        if count > MAX_PROOFS {
            return Err(malformed(format!("{count} proofs is over the limit")));
        }
        let mut proofs = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let len = self.u64()?;
            if len > self.remaining() as u64 {
                return Err(malformed("a proof is longer than the file"));
            }
            proofs.push(self.take(len as usize)?.to_vec());
        }
        if self.remaining() != 0 {
            return Err(malformed("trailing bytes after the last proof"));
        }
        Ok(proofs)
    }

    pub(crate) fn digest(&mut self) -> Result<Digest, CertificateError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(Digest::from_bytes(a))
    }
}

/// What the caller checks the certificate against, beyond itself.
#[derive(Debug, Clone, Default)]
pub struct Expectations<'a> {
    /// A published model commitment (`starkscale commit`).
    pub a_commitment: Option<Digest>,
    /// The input vector.
    pub x: Option<&'a Vector>,
    /// Accept proofs at the test profile.
    pub allow_test: bool,
    /// The caller verified every proof's STARK already, and holds these very bytes (the
    /// coordinator, which kept a digest of each proof it verified on acceptance): check
    /// everything but the STARKs again.
    pub starks_verified: bool,
}

/// One decoded, pinned proof and its statement.
struct Entry {
    proof: TileProof,
    program: Pinned,
    fact: Fact,
    statement: Statement,
}

enum Statement {
    Map(MapOutput),
    Node(NodeOutput),
    Root(RootOutput),
}

impl Statement {
    fn facts(&self) -> &[Fact] {
        match self {
            Statement::Map(_) => &[],
            Statement::Node(n) => &n.facts,
            Statement::Root(r) => &r.facts,
        }
    }
}

/// Verifies a certificate; see the module documentation for the checks and their order.
pub fn verify_certificate(
    bytes: &[u8],
    expect: &Expectations,
) -> Result<VerifiedCertificate, CertificateError> {
    let started = Instant::now();
    let cert = Certificate::from_bytes(bytes)?;
    for (program, found) in Pinned::MATVEC.into_iter().zip(cert.program_hashes) {
        if program.hash() != found {
            return Err(CertificateError::ProgramHash {
                program: program.name(),
                expected: program.hash(),
                found,
            });
        }
    }
    let grid = cert.grid()?;
    if cert.proofs.is_empty() {
        return Err(malformed("no proofs"));
    }

    let mut entries = Vec::with_capacity(cert.proofs.len());
    for (index, bytes) in cert.proofs.iter().enumerate() {
        let fail = |source| CertificateError::Proof { index, source };
        let proof = TileProof::from_bytes(bytes).map_err(fail)?;
        let program = check_pinned(&proof, expect.allow_test).map_err(fail)?;
        let words = proof.output_words().map_err(fail)?;
        let bad = |e: String| fail(VerifyError::MalformedOutput(e));
        let statement = match program {
            Pinned::Map => Statement::Map(MapOutput::from_words(&words).map_err(bad)?),
            Pinned::Reduce => Statement::Node(NodeOutput::from_words(&words).map_err(bad)?),
            Pinned::Root => Statement::Root(RootOutput::from_words(&words).map_err(bad)?),
            Pinned::Batch | Pinned::BatchRoot | Pinned::Layer | Pinned::InferRoot => {
                return Err(bad("a batch segment in a matrix-vector certificate".into()))
            }
        };
        entries.push(Entry {
            fact: encoding::fact(&program.hash(), &words),
            proof,
            program,
            statement,
        });
    }
    check_order(&entries)?;
    check_coverage(&entries, &grid)?;
    check_facts(&entries)?;
    let Some(Statement::Root(root)) = entries.last().map(|e| &e.statement) else {
        return Err(malformed("the last proof is not the root"));
    };
    check_root(&cert, root, expect)?;

    let profile = entries
        .iter()
        .map(|e| e.proof.profile)
        .max_by_key(|p| *p == Profile::Test)
        .unwrap_or(Profile::Production);
    let tiles = entries.iter().filter(|e| e.program == Pinned::Map).count();
    let summary = VerifiedCertificate {
        profile,
        rows: cert.rows,
        cols: cert.cols,
        tile_rows: cert.tile_rows,
        tile_cols: cert.tile_cols,
        a_commitment: root.a_commitment,
        x_commitment: root.x_commitment,
        tiles,
        nodes: entries.len() - tiles,
        y: root.y.clone(),
        verify_s: 0.0,
    };
    if !expect.starks_verified {
        check_starks(entries)?;
    }
    Ok(VerifiedCertificate {
        verify_s: started.elapsed().as_secs_f64(),
        ..summary
    })
}

/// Map proofs first, then reduce proofs, the root last and only there.
fn check_order(entries: &[Entry]) -> Result<(), CertificateError> {
    let last = entries.len() - 1;
    let mut seen_node = false;
    for (index, e) in entries.iter().enumerate() {
        let expected = match (index == last, e.program) {
            (true, Pinned::Root) => continue,
            (true, _) => Pinned::Root,
            (false, Pinned::Root) => Pinned::Reduce,
            (false, Pinned::Map) if seen_node => Pinned::Reduce,
            (false, Pinned::Map) => continue,
            (false, Pinned::Batch | Pinned::BatchRoot | Pinned::Layer | Pinned::InferRoot) => {
                Pinned::Map
            }
            (false, Pinned::Reduce) => {
                seen_node = true;
                continue;
            }
        };
        return Err(CertificateError::Order {
            index,
            found: e.program.name(),
            expected: expected.name(),
        });
    }
    Ok(())
}

/// The map tiles are exactly the tiling's, each once, row-major.
fn check_coverage(
    entries: &[Entry],
    grid: &[(u32, u32, u32, u32)],
) -> Result<(), CertificateError> {
    let tiles: Vec<(u32, u32, u32, u32)> = entries
        .iter()
        .filter_map(|e| match &e.statement {
            Statement::Map(m) => Some((m.row0, m.col0, m.rows, m.cols)),
            _ => None,
        })
        .collect();
    let show = |t: &(u32, u32, u32, u32)| format!("{}x{} tile at ({}, {})", t.2, t.3, t.0, t.1);
    let mut seen = HashSet::new();
    for t in &tiles {
        if !seen.insert(*t) {
            return Err(CertificateError::Coverage(format!(
                "the {} is proven twice",
                show(t)
            )));
        }
    }
    if let Some(t) = tiles.iter().find(|t| !grid.contains(t)) {
        return Err(CertificateError::Coverage(format!(
            "the {} is not a tile of the {}x{} tiling",
            show(t),
            grid[0].2,
            grid[0].3
        )));
    }
    if let Some(t) = grid.iter().find(|t| !seen.contains(*t)) {
        return Err(CertificateError::Coverage(format!(
            "the {} has no proof",
            show(t)
        )));
    }
    if let Some(i) = (0..grid.len()).find(|&i| tiles[i] != grid[i]) {
        return Err(CertificateError::Coverage(format!(
            "tiles out of order: proof {i} is of the {}, where the {} belongs",
            show(&tiles[i]),
            show(&grid[i])
        )));
    }
    Ok(())
}

/// Facts are unique; every fact a parent lists is a proof here; every proof but the root is
/// listed by exactly one parent.
fn check_facts(entries: &[Entry]) -> Result<(), CertificateError> {
    let mut by_fact: HashMap<Fact, usize> = HashMap::with_capacity(entries.len());
    for (index, e) in entries.iter().enumerate() {
        if let Some(first) = by_fact.insert(e.fact, index) {
            return Err(CertificateError::Duplicate {
                first,
                second: index,
            });
        }
    }
    let mut parent_of: Vec<Option<usize>> = vec![None; entries.len()];
    for (parent, e) in entries.iter().enumerate() {
        for fact in e.statement.facts() {
            let Some(&child) = by_fact.get(fact) else {
                return Err(CertificateError::Facts(format!(
                    "the {} proof {parent} lists child fact {fact}, which no proof in the certificate has",
                    e.program.name()
                )));
            };
            if let Some(other) = parent_of[child].replace(parent) {
                return Err(CertificateError::Facts(format!(
                    "proof {child} is listed as a child by both proof {other} and proof {parent}"
                )));
            }
        }
    }
    let root = entries.len() - 1;
    if let Some(orphan) = (0..root).find(|&i| parent_of[i].is_none()) {
        return Err(CertificateError::Facts(format!(
            "the {} proof {orphan} (fact {}) is not a child of any reduce proof",
            entries[orphan].program.name(),
            entries[orphan].fact
        )));
    }
    Ok(())
}

fn check_root(
    cert: &Certificate,
    root: &RootOutput,
    expect: &Expectations,
) -> Result<(), CertificateError> {
    let stated = (cert.rows, cert.cols, cert.tile_rows, cert.tile_cols);
    let proven = (root.rows, root.cols, root.tile_rows, root.tile_cols);
    if stated != proven {
        return Err(CertificateError::Root(format!(
            "the certificate says {}x{} in {}x{} tiles, the root proves {}x{} in {}x{} tiles",
            stated.0, stated.1, stated.2, stated.3, proven.0, proven.1, proven.2, proven.3
        )));
    }
    if cert.a_commitment != root.a_commitment {
        return Err(CertificateError::Root(format!(
            "the certificate's A commitment {} is not the proven {}",
            cert.a_commitment, root.a_commitment
        )));
    }
    if cert.x_commitment != root.x_commitment {
        return Err(CertificateError::Root(format!(
            "the certificate's x commitment {} is not the proven {}",
            cert.x_commitment, root.x_commitment
        )));
    }
    if cert.y.len() != root.y.len() {
        return Err(CertificateError::Root(format!(
            "the certificate has {} y entries, the root proves {}",
            cert.y.len(),
            root.y.len()
        )));
    }
    if let Some(row) = (0..root.y.len()).find(|&i| cert.y[i] != root.y[i]) {
        return Err(CertificateError::Y {
            row,
            in_certificate: cert.y[row],
            proven: root.y[row],
        });
    }
    if let Some(given) = expect.a_commitment {
        if given != root.a_commitment {
            return Err(CertificateError::Commitment {
                proven: root.a_commitment,
                given,
            });
        }
    }
    if let Some(x) = expect.x {
        let given = commit_vector(x, root.tile_cols as usize);
        if x.len() != root.cols as usize || given != root.x_commitment {
            return Err(CertificateError::X {
                proven: root.x_commitment,
                given,
            });
        }
    }
    Ok(())
}

/// Every STARK, spread over the machine's cores (each takes ~15 ms).
fn check_starks(entries: Vec<Entry>) -> Result<(), CertificateError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut shares: Vec<Vec<(usize, TileProof)>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, e) in entries.into_iter().enumerate() {
        shares[index % threads].push((index, e.proof));
    }
    let mut failures: Vec<(usize, VerifyError)> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .find_map(|(i, proof)| check_stark(proof).err().map(|e| (i, e)))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    });
    failures.sort_by_key(|(i, _)| *i);
    match failures.into_iter().next() {
        Some((index, source)) => Err(CertificateError::Proof { index, source }),
        None => Ok(()),
    }
}
