//! Verifiable inference from the command line: `starkscale infer MODEL.onnx INPUTS.npy` proves a
//! quantized MLP on a batch of inputs in this process, `starkscale commit MODEL.onnx` prints the
//! model commitment, and `starkscale verify` checks inference certificates (`docs/inference.md`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use starkscale_cairo::batch::{Rows, DEFAULT_SEGMENT_BLOCKS};
use starkscale_cairo::encoding::Digest;
use starkscale_cairo::inference::{model_commitment, model_inputs};
use starkscale_cairo::inference_certificate::{verify_inference, InferenceExpect};
use starkscale_cairo::inference_prove::prove_inference;
use starkscale_cairo::layer::{argmax, Model};
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::Prover;
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, Matrix};

use crate::cli::parse_profile;

#[derive(Args, Debug)]
pub struct InferArgs {
    /// The model: an int8 MLP quantized by onnxruntime's quantize_static (QDQ or QOperator).
    model: PathBuf,
    /// The inputs, one per row: float32 .npy (quantized with the model's input scale and zero
    /// point) or int8 .npy (already quantized).
    inputs: PathBuf,
    /// Where to write the certificate (default: ./<model name>.cert).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the int8 logits (B × outputs) as .npy.
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// Also write the int8 inputs the proof is of (what `verify --x` takes without the model).
    #[arg(long)]
    x_out: Option<PathBuf>,
    /// Security profile: production (96 bits) or test (28 bits, refused by default).
    #[arg(long, env = "STARKSCALE_PROFILE", default_value = "production")]
    profile: String,
    /// Blake2s compressions per segment proof (int8 streams get half, layer segments a quarter).
    #[arg(long, default_value_t = DEFAULT_SEGMENT_BLOCKS)]
    segment_blocks: usize,
    #[arg(long, env = "STARKSCALE_MAX_STEPS", default_value_t = DEFAULT_MAX_STEPS)]
    max_steps: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What `infer` prints.
#[derive(Serialize, Debug)]
struct InferReport {
    model_commitment: String,
    inputs_commitment: String,
    logits_commitment: String,
    batch: usize,
    /// Each layer's (outputs, inputs).
    layers: Vec<(usize, usize)>,
    profile: &'static str,
    /// Each input's predicted class (the first largest logit).
    predictions: Vec<usize>,
    certificate: String,
    certificate_bytes: usize,
    proofs: usize,
    steps: usize,
    wall_s: f64,
    prove_s: f64,
}

pub fn load_model(path: &Path) -> Result<Model> {
    let imported =
        starkscale_onnx::load(path).with_context(|| format!("importing {}", path.display()))?;
    Ok(imported.model)
}

/// Inputs of a model, one per row: int8 as they are, float32 quantized with the model's input
/// quantization (which needs the model).
pub fn load_inputs(path: &Path, model: Option<&Model>) -> Result<Rows> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let what = || {
        format!(
            "{}: inputs must be a float32 or int8 .npy (or JSON rows of int8)",
            path.display()
        )
    };
    if let Some(model) = model {
        return model_inputs(&bytes, model).with_context(what);
    }
    anyhow::ensure!(
        npy::parse_f32(&bytes).is_err(),
        "{} holds float inputs: give the model (--model) to quantize them",
        path.display()
    );
    let m = Matrix::from_bytes(&bytes, Dtype::I8).with_context(what)?;
    Ok(Rows::int8(m.cols(), m.data()))
}

/// The entries of int8 rows (inputs, logits).
fn i8_values(rows: &Rows) -> Vec<i8> {
    let w = rows.width();
    (0..rows.height() * w)
        .map(|i| rows.get(i / w, i % w) as i8)
        .collect()
}

pub fn infer(args: InferArgs) -> Result<()> {
    let started = Instant::now();
    let profile = parse_profile(&args.profile)?;
    let model = load_model(&args.model)?;
    let x = load_inputs(&args.inputs, Some(&model))?;
    anyhow::ensure!(
        x.width() == model.inputs(),
        "{} has inputs of {} entries, the model takes {}",
        args.inputs.display(),
        x.width(),
        model.inputs()
    );
    let prover = Prover::new(profile);
    let (inference, cert, stats) =
        prove_inference(&model, &x, &prover, args.segment_blocks, args.max_steps)?;
    let logits = inference.logits().clone();
    let bytes = cert.to_bytes();
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .model
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from(format!("{stem}.cert"))
    });
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    if let Some(path) = &args.logits_out {
        let shape = [logits.height(), logits.width()];
        std::fs::write(path, npy::write_i8(&shape, &i8_values(&logits)))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.x_out {
        std::fs::write(
            path,
            npy::write_i8(&[x.height(), x.width()], &i8_values(&x)),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    let report = InferReport {
        model_commitment: cert.model_commitment.to_hex(),
        inputs_commitment: cert.x_commitment.to_hex(),
        logits_commitment: cert.logits_commitment.to_hex(),
        batch: cert.batch,
        layers: cert.dims.clone(),
        profile: profile.name(),
        predictions: argmax(&logits),
        certificate: out.display().to_string(),
        certificate_bytes: bytes.len(),
        proofs: cert.proofs.len(),
        steps: stats.steps,
        wall_s: started.elapsed().as_secs_f64(),
        prove_s: stats.prove_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let shown: Vec<String> = report
            .predictions
            .iter()
            .take(20)
            .map(|p| p.to_string())
            .collect();
        println!(
            "OK: {} inputs through {} layers, {} proofs ({} profile) in {:.1} s; certificate {} ({} bytes)",
            report.batch,
            report.layers.len(),
            report.proofs,
            report.profile,
            report.wall_s,
            report.certificate,
            report.certificate_bytes
        );
        println!("model commitment  {}", report.model_commitment);
        println!("inputs commitment {}", report.inputs_commitment);
        println!("logits commitment {}", report.logits_commitment);
        println!(
            "predictions {}{}",
            shown.join(" "),
            if report.predictions.len() > shown.len() {
                " …"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `commit MODEL.onnx`: the model commitment an inference certificate states.
pub fn commit_model(path: &Path) -> Result<()> {
    let model = load_model(path)?;
    println!("{}", model_commitment(&model));
    let dims: Vec<String> = std::iter::once(model.inputs())
        .chain(model.layers.iter().map(|l| l.outputs()))
        .map(|d| d.to_string())
        .collect();
    eprintln!(
        "commitment of the {}-layer model {} (input scale {}, zero point {})",
        model.layers.len(),
        dims.join(" → "),
        model.input.scale,
        model.input.zero_point
    );
    Ok(())
}

/// What `verify` was given for an inference certificate.
#[derive(Debug)]
pub struct VerifyInference<'a> {
    pub commitment: Option<Digest>,
    pub x: Option<&'a Path>,
    pub model: Option<&'a Path>,
    pub logits: Option<&'a Path>,
    pub allow_test: bool,
    pub json: bool,
}

pub fn verify_inference_cmd(bytes: &[u8], given: VerifyInference) -> Result<()> {
    let model = given.model.map(load_model).transpose()?;
    // The model file, when given, is the commitment to check against.
    let commitment = match (&model, given.commitment) {
        (Some(m), Some(c)) => {
            let own = model_commitment(m);
            anyhow::ensure!(
                own == c,
                "the given model commits to {own}, not to the given commitment {c}"
            );
            Some(c)
        }
        (Some(m), None) => Some(model_commitment(m)),
        (None, c) => c,
    };
    let x = given
        .x
        .map(|p| load_inputs(p, model.as_ref()))
        .transpose()?;
    let logits = given
        .logits
        .map(|p| {
            Matrix::load(p, Dtype::I8)
                .map(|m| Rows::int8(m.cols(), m.data()))
                .with_context(|| format!("loading the logits from {}", p.display()))
        })
        .transpose()?;
    let v = verify_inference(
        bytes,
        &InferenceExpect {
            model_commitment: commitment.as_ref(),
            x: x.as_ref(),
            logits: logits.as_ref(),
            allow_test: given.allow_test,
            starks_verified: false,
        },
    )?;
    let checked = |given: bool| {
        if given {
            " (matches the given one)"
        } else {
            ""
        }
    };
    if given.json {
        let json = serde_json::json!({
            "kind": "inference",
            "profile": v.profile.name(),
            "batch": v.batch,
            "layers": v.dims,
            "model_commitment": v.model_commitment.to_hex(),
            "inputs_commitment": v.x_commitment.to_hex(),
            "logits_commitment": v.logits_commitment.to_hex(),
            "segments": v.segments,
            "checked": { "commitment": commitment.is_some(), "x": x.is_some(), "logits": logits.is_some() },
            "verify_s": v.verify_s,
        });
        println!("{json}");
    } else {
        println!(
            "OK: a {}-layer model on a batch of {} inputs ({} segment proofs and a root), {} profile, verified in {:.0} ms",
            v.dims.len(),
            v.batch,
            v.segments,
            v.profile,
            v.verify_s * 1e3
        );
        println!(
            "model commitment  {}{}",
            v.model_commitment,
            checked(commitment.is_some())
        );
        println!(
            "inputs commitment {}{}",
            v.x_commitment,
            checked(x.is_some())
        );
        println!(
            "logits commitment {}{}",
            v.logits_commitment,
            checked(logits.is_some())
        );
    }
    Ok(())
}
