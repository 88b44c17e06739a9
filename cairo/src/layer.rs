//! The integer semantics of a quantized dense layer, natively: what the layer epilogue proves
//! and what `starkscale infer` computes. `docs/inference.md` states them in prose.
//!
//! A layer maps int8 inputs x (K entries) to int8 outputs z (M entries) with int8 weights W
//! (M × K, zero point 0):
//!
//! 1. **Product**: y_i = Σ_k W[i][k] x_k, exactly (the batch protocol proves it).
//! 2. **Bias**: acc_i = y_i + b_i, with the input zero point folded into the int32 bias
//!    (b_i = bias_i − zp_x Σ_k W[i][k]), so the product runs on the stored int8 values.
//! 3. **Requantization** by a Q31 multiplier m_i ∈ [2^30, 2^31) and a right shift e_i ∈ 0..=31
//!    ([`Requant`]), rounded as gemmlowp and TFLite round: q = ⌊(acc·m + 2^30) / 2^31⌋ (their
//!    `SaturatingRoundingDoublingHighMul`: nearest, ties up), then q / 2^e rounded to nearest
//!    with ties away from zero (`RoundingDivideByPOT`).
//! 4. **Output**: z_i = clamp(q_i + zp_z, lo, hi). ReLU is the lower bound lo = zp_z; without
//!    it lo = −128; hi = 127.
//!
//! Everything is exact integer arithmetic on i64/i128: where TFLite's int32 intermediate would
//! overflow (|acc| ≥ 2^31), these semantics stay defined; [`MAX_ABS_BIAS`] bounds the rest.

use serde::{Deserialize, Serialize};

use crate::batch::{self, Rows};
use crate::encoding::{blake2s_words, Digest};

/// |b_i| bound: with |y| ≤ 2^31 (K ≤ 2^17), |acc| < 2^41 and acc·m < 2^72 — far inside the
/// field, and inside the epilogue's range checks (docs/inference.md).
pub const MAX_ABS_BIAS: i64 = 1 << 40;
/// Largest right shift (TFLite's: a smaller scale rounds to a zero multiplier).
pub const MAX_SHIFT: u32 = 31;

/// Errors in a layer's or model's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("requantization scale {0} is not in (0, 1): only scales below one are supported")]
    Scale(String),
    #[error("Q31 multiplier {0} is not in [2^30, 2^31) (or 0)")]
    Multiplier(u32),
    #[error("right shift {0} exceeds {MAX_SHIFT}")]
    Shift(u32),
    #[error("bias {0} exceeds ±2^40")]
    Bias(i64),
    #[error("layer {layer}: {what}")]
    Shape { layer: usize, what: String },
    #[error("output range [{lo}, {hi}] does not hold the zero point {zero_point}")]
    Range { lo: i8, hi: i8, zero_point: i8 },
}

/// A requantization: multiply by `multiplier / 2^31`, then divide by `2^shift`, rounded as
/// gemmlowp rounds. `multiplier` is 0 (the scale underflowed) or in [2^30, 2^31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requant {
    pub multiplier: u32,
    pub shift: u32,
}

impl Requant {
    /// TFLite's `QuantizeMultiplier` for a scale in (0, 1): scale = f · 2^-shift with
    /// f ∈ [0.5, 1), multiplier = round(f · 2^31) (a rounding up to 2^31 moves one bit into the
    /// shift); a scale below 2^-32 becomes the zero multiplier.
    pub fn from_scale(scale: f64) -> Result<Requant, LayerError> {
        if !(scale > 0.0 && scale < 1.0) {
            return Err(LayerError::Scale(format!("{scale:e}")));
        }
        let (fraction, mut exponent) = frexp(scale);
        let mut q = (fraction * (1u64 << 31) as f64).round() as u64;
        if q == 1 << 31 {
            q /= 2;
            exponent += 1;
        }
        if exponent > 0 {
            // The scale rounded up to one.
            return Err(LayerError::Scale(format!("{scale:e}")));
        }
        let shift = (-exponent) as u32;
        if shift > MAX_SHIFT {
            return Ok(Requant {
                multiplier: 0,
                shift: 0,
            });
        }
        Ok(Requant {
            multiplier: q as u32,
            shift,
        })
    }

    pub fn check(self) -> Result<(), LayerError> {
        if self.multiplier != 0 && !(1 << 30..1 << 31).contains(&self.multiplier) {
            return Err(LayerError::Multiplier(self.multiplier));
        }
        if self.shift > MAX_SHIFT {
            return Err(LayerError::Shift(self.shift));
        }
        Ok(())
    }

    /// The scale this requantization applies.
    pub fn scale(self) -> f64 {
        self.multiplier as f64 / (1u64 << 31) as f64 / (1u64 << self.shift) as f64
    }

    /// round_half_away(⌊(acc·m + 2^30) / 2^31⌋ / 2^shift).
    pub fn apply(self, acc: i64) -> i64 {
        rounding_divide(high_mul(acc, self.multiplier), self.shift)
    }
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul(acc, m)` on exact integers: the nearest
/// integer to acc·m / 2^31, ties up. (Its saturation case needs m = −2^31, never a multiplier.)
pub fn high_mul(acc: i64, multiplier: u32) -> i64 {
    let p = acc as i128 * multiplier as i128 + (1 << 30);
    p.div_euclid(1 << 31) as i64
}

/// gemmlowp's `RoundingDivideByPOT(x, shift)`: x / 2^shift to nearest, ties away from zero.
/// As one floor: ⌊(x + 2^(shift−1) − [x < 0]) / 2^shift⌋ for shift ≥ 1.
pub fn rounding_divide(x: i64, shift: u32) -> i64 {
    if shift == 0 {
        return x;
    }
    let half = 1i64 << (shift - 1);
    (x + half - (x < 0) as i64).div_euclid(1 << shift)
}

/// What follows a layer's product: bias, requantization and the output's clamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epilogue {
    /// Per output channel, the input zero point folded in.
    pub bias: Vec<i64>,
    /// Per output channel (a per-tensor scale repeats one).
    pub requant: Vec<Requant>,
    pub zero_point: i8,
    /// The clamp: lo = zero_point for ReLU, −128 otherwise; hi = 127 unless the model says less.
    pub lo: i8,
    pub hi: i8,
}

impl Epilogue {
    pub fn channels(&self) -> usize {
        self.bias.len()
    }

    pub fn check(&self) -> Result<(), LayerError> {
        if self.requant.len() != self.bias.len() {
            return Err(LayerError::Shape {
                layer: 0,
                what: format!(
                    "{} biases but {} requantizations",
                    self.bias.len(),
                    self.requant.len()
                ),
            });
        }
        if let Some(&b) = self.bias.iter().find(|b| b.abs() > MAX_ABS_BIAS) {
            return Err(LayerError::Bias(b));
        }
        for r in &self.requant {
            r.check()?;
        }
        if !(self.lo <= self.zero_point && self.zero_point <= self.hi) {
            return Err(LayerError::Range {
                lo: self.lo,
                hi: self.hi,
                zero_point: self.zero_point,
            });
        }
        Ok(())
    }

    /// The words the layer kernel hashes (programs/layer.cairo): zp + 128, lo + 128, hi + 128,
    /// M, then per channel bias + 2^63 as two words (low first), the multiplier, the shift.
    pub fn words(&self) -> Vec<u32> {
        let byte = |v: i8| (v as i32 + 128) as u32;
        let mut words = vec![
            byte(self.zero_point),
            byte(self.lo),
            byte(self.hi),
            self.channels() as u32,
        ];
        for (b, r) in self.bias.iter().zip(&self.requant) {
            let biased = (*b as i128 + (1i128 << 63)) as u64;
            words.extend([biased as u32, (biased >> 32) as u32, r.multiplier, r.shift]);
        }
        words
    }

    /// Blake2s of [`Epilogue::words`]: what a layer segment states and the model commits to.
    pub fn digest(&self) -> Digest {
        blake2s_words(&self.words())
    }

    /// z_i for accumulator y_i of channel i.
    pub fn apply(&self, channel: usize, y: i64) -> i8 {
        let q = self.requant[channel].apply(y + self.bias[channel]);
        (q + self.zero_point as i64).clamp(self.lo as i64, self.hi as i64) as i8
    }

    /// Applies the epilogue to every row of accumulators (B × M int32).
    pub fn apply_rows(&self, y: &Rows) -> Rows {
        let (w, h) = (y.width(), y.height());
        let mut data = Vec::with_capacity(w * h);
        for j in 0..h {
            for i in 0..w {
                data.push(self.apply(i, y.get(j, i)));
            }
        }
        Rows::I8 { width: w, data }
    }
}

/// Folds an input zero point into a bias: b_i − zp · Σ_k W[i][k].
pub fn fold_zero_point(bias: &[i64], weights: &Rows, zero_point: i64) -> Vec<i64> {
    bias.iter()
        .enumerate()
        .map(|(i, b)| b - zero_point * (0..weights.width()).map(|k| weights.get(i, k)).sum::<i64>())
        .collect()
}

/// A dense layer: int8 weights (M × K, one output channel per row) and its epilogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub weights: Rows,
    pub epilogue: Epilogue,
}

impl Layer {
    pub fn outputs(&self) -> usize {
        self.weights.height()
    }

    pub fn inputs(&self) -> usize {
        self.weights.width()
    }

    /// The int32 accumulators Y = X·Wᵀ and the int8 outputs Z = epilogue(Y).
    pub fn forward(&self, x: &Rows) -> (Rows, Rows) {
        let y = batch::multiply(&self.weights, x);
        let z = self.epilogue.apply_rows(&y);
        (y, z)
    }
}

/// How a model's float inputs become int8: q = clamp(round_half_even(x / scale) + zp).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputQuant {
    pub scale: f32,
    pub zero_point: i8,
}

impl InputQuant {
    /// ONNX QuantizeLinear's rounding (to nearest, ties to even) and saturation, in float32.
    pub fn quantize(&self, x: f32) -> i8 {
        let q = (x / self.scale).round_ties_even() + self.zero_point as f32;
        q.clamp(-128.0, 127.0) as i8
    }
}

/// A quantized MLP: layers applied in order, each one's int8 output the next one's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub input: InputQuant,
    pub layers: Vec<Layer>,
}

impl Model {
    /// Checks that the layers chain (each one's inputs are the previous one's outputs) and
    /// that every epilogue is within the proven semantics.
    pub fn check(&self) -> Result<(), LayerError> {
        if self.layers.is_empty() {
            return Err(LayerError::Shape {
                layer: 0,
                what: "a model needs at least one layer".into(),
            });
        }
        for (n, layer) in self.layers.iter().enumerate() {
            let shape = |what: String| LayerError::Shape { layer: n, what };
            if !matches!(layer.weights, Rows::I8 { .. }) {
                return Err(shape("weights must be int8".into()));
            }
            if layer.epilogue.channels() != layer.outputs() {
                return Err(shape(format!(
                    "{} output channels but an epilogue of {}",
                    layer.outputs(),
                    layer.epilogue.channels()
                )));
            }
            if n > 0 && layer.inputs() != self.layers[n - 1].outputs() {
                return Err(shape(format!(
                    "{} inputs after a layer of {} outputs",
                    layer.inputs(),
                    self.layers[n - 1].outputs()
                )));
            }
            layer.epilogue.check().map_err(|e| match e {
                LayerError::Shape { what, .. } => LayerError::Shape { layer: n, what },
                other => other,
            })?;
        }
        Ok(())
    }

    pub fn inputs(&self) -> usize {
        self.layers[0].inputs()
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, Layer::outputs)
    }

    /// Every layer's accumulators and outputs for a batch of int8 inputs (one per row); the
    /// last layer's outputs are the logits.
    pub fn forward(&self, x: &Rows) -> Vec<(Rows, Rows)> {
        let mut out: Vec<(Rows, Rows)> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let input = out.last().map_or(x, |(_, z)| z);
            out.push(layer.forward(input));
        }
        out
    }
}

/// The index of each row's largest entry, the first one on ties (NumPy's argmax).
pub fn argmax(rows: &Rows) -> Vec<usize> {
    (0..rows.height())
        .map(|j| {
            (0..rows.width()).fold(0, |best, i| {
                if rows.get(j, i) > rows.get(j, best) {
                    i
                } else {
                    best
                }
            })
        })
        .collect()
}

/// (f, e) with x = f · 2^e and f ∈ [0.5, 1), for a positive finite x.
fn frexp(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (f, e) = frexp(x * (1u64 << 54) as f64);
        return (f, e - 54);
    }
    let f = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (f, biased - 1022)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gemmlowp's reference code, transcribed on int32 with its own branches, to check the
    /// closed forms above against.
    fn gemmlowp(x: i32, multiplier: i32, shift: u32) -> i32 {
        let ab = x as i64 * multiplier as i64;
        let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
        // C++ integer division truncates toward zero.
        let high = ((ab + nudge) / (1i64 << 31)) as i32;
        let mask = (1i32 << shift).wrapping_sub(1);
        let remainder = high & mask;
        let threshold = (mask >> 1) + (high < 0) as i32;
        (high >> shift) + (remainder > threshold) as i32
    }

    #[test]
    fn closed_forms_match_gemmlowp_on_int32() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let edges = [
            0i32,
            1,
            -1,
            2,
            -2,
            1 << 30,
            -(1 << 30),
            i32::MAX,
            i32::MIN + 1,
        ];
        for n in 0..200_000 {
            let x = if n < edges.len() * 32 {
                edges[n % edges.len()]
            } else {
                next() as i32 >> (next() % 31)
            };
            let m = (1u32 << 30) + (next() as u32 % (1 << 30));
            let shift = (n % 32) as u32;
            let r = Requant {
                multiplier: m,
                shift,
            };
            assert_eq!(
                r.apply(x as i64),
                gemmlowp(x, m as i32, shift) as i64,
                "x {x} m {m} shift {shift}"
            );
        }
    }

    #[test]
    fn multipliers_follow_tflite_quantize_multiplier() {
        let r = Requant::from_scale(0.5).unwrap();
        assert_eq!((r.multiplier, r.shift), (1 << 30, 0));
        let r = Requant::from_scale(0.25).unwrap();
        assert_eq!((r.multiplier, r.shift), (1 << 30, 1));
        // 0.75 = 0.75 · 2^0: multiplier round(0.75 · 2^31).
        let r = Requant::from_scale(0.75).unwrap();
        assert_eq!((r.multiplier, r.shift), (3 << 29, 0));
        // Just below a half: the fraction rounds up to 2^31 and moves into the shift.
        let r = Requant::from_scale(0.5 - 1e-13).unwrap();
        assert_eq!((r.multiplier, r.shift), (1 << 30, 0));
        // Just below one, that rounding reaches one: refused.
        assert!(Requant::from_scale(1.0 - 1e-13).is_err());
        assert_eq!(Requant::from_scale(1e-12).unwrap().multiplier, 0);
        for bad in [0.0, 1.0, 2.0, -0.5, f64::NAN] {
            assert!(Requant::from_scale(bad).is_err(), "{bad}");
        }
        for s in [0.0123, 3.1e-4, 0.9, 1.7e-7] {
            let r = Requant::from_scale(s).unwrap();
            assert!((r.scale() - s).abs() / s < 1e-9, "{s} {r:?}");
            r.check().unwrap();
        }
    }

    #[test]
    fn requantization_is_within_half_an_lsb_of_the_real_product() {
        let r = Requant::from_scale(0.003_17).unwrap();
        for acc in (-200_000i64..200_000).step_by(97) {
            let exact = acc as f64 * r.scale();
            // Two roundings: the first one's half unit is 2^-shift of an output LSB.
            let bound = 0.5 + 0.5 / f64::from(1u32 << r.shift) + 1e-6;
            assert!((r.apply(acc) as f64 - exact).abs() <= bound, "{acc}");
        }
    }

    #[test]
    fn the_epilogue_adds_bias_and_zero_point_and_clamps() {
        let e = Epilogue {
            bias: vec![100, -100],
            requant: vec![Requant::from_scale(0.5).unwrap(); 2],
            zero_point: -128,
            lo: -128,
            hi: 127,
        };
        e.check().unwrap();
        // (10 + 100) / 2 = 55 → 55 − 128.
        assert_eq!(e.apply(0, 10), -73);
        // (10 − 100) / 2 = −45 → below the ReLU bound.
        assert_eq!(e.apply(1, 10), -128);
        assert_eq!(e.apply(0, 1_000_000), 127);
        let bad = Epilogue {
            zero_point: 5,
            lo: 6,
            ..e.clone()
        };
        assert!(bad.check().is_err());
        let bad = Epilogue {
            bias: vec![1 << 41, 0],
            ..e
        };
        assert_eq!(bad.check(), Err(LayerError::Bias(1 << 41)));
    }

    #[test]
    fn folding_the_input_zero_point_matches_subtracting_it() {
        let w = Rows::int8(3, &[1, -2, 3, 4, 5, -6]);
        let x = [7i64, -8, 9];
        let zp = -5;
        let folded = fold_zero_point(&[10, 20], &w, zp);
        for (i, b) in folded.iter().enumerate() {
            let direct: i64 = (0..3).map(|k| w.get(i, k) * (x[k] - zp)).sum::<i64>();
            let stored: i64 = (0..3).map(|k| w.get(i, k) * x[k]).sum::<i64>();
            assert_eq!(stored + b, direct + [10, 20][i]);
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equals() {
        let z = Rows::I8 {
            width: 3,
            data: vec![1, 5, 5, -3, -4, -3],
        };
        assert_eq!(argmax(&z), vec![1, 0]);
    }
}
