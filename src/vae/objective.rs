//! How the KL term is weighed against reconstruction: β, the reduction, a KL schedule and free
//! bits. Everything here only changes the *objective* (what the gradients follow); reported
//! losses stay the true negative-ELBO terms in nats per example.
//!
//! Relative to the sum-reduced ELBO (reconstruction summed over the D inputs, KL summed over the Z
//! latent dimensions, both summed over the batch), the KL term is weighted by:
//! * `sum`: β — with β = 1 this is exactly the ELBO;
//! * `mean`: β·D — reconstruction averaged over the batch *and the pixels* (PyTorch's
//!   `reduction='mean'`) while KL is averaged over the batch only: the classic accidental
//!   784-fold KL weight that collapses the posterior;
//! * `normalized`: β·D/Z — reconstruction divided by D and KL by Z, so one β means the same at
//!   any image or latent size (Higgins et al.'s normalised β).

use crate::error::{Error, Result};

/// How the two terms are reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Sums (the ELBO).
    Sum,
    /// Reconstruction mean over batch and pixels, KL mean over the batch.
    Mean,
    /// Reconstruction / D, KL / Z.
    Normalized,
}

impl Reduction {
    /// `sum`, `mean` or `normalized`.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
            Reduction::Normalized => "normalized",
        }
    }
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    /// Reads [`Reduction::name`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            "normalized" | "normalised" => Ok(Reduction::Normalized),
            _ => Err(Error::arg("reduction", format!("`{s}` is not one of: sum, mean, normalized"))),
        }
    }
}

crate::string_serde!(Reduction);

/// KL cost annealing: a multiplier w(step) in \[0, 1\] on the KL term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KlSchedule {
    /// w = 1.
    Constant,
    /// w = min(1, step / warmup).
    Linear {
        /// Steps to reach 1.
        warmup: u64,
    },
    /// Bowman et al. 2015's logistic annealing: w = 1 / (1 + exp(−10·(step/warmup − ½))),
    /// ≈ 0.007 at step 0, ½ at warmup/2, ≈ 0.993 at warmup.
    Sigmoid {
        /// Steps over which w rises.
        warmup: u64,
    },
    /// Fu et al. 2019's cyclical schedule: `cycles` equal cycles over `total` steps, w rising
    /// linearly over the first half of each cycle and staying at 1 over the second.
    Cyclical {
        /// Number of cycles.
        cycles: u64,
        /// Steps of the whole run.
        total: u64,
    },
}

impl KlSchedule {
    /// Builds a schedule from the CLI's names (`warmup` steps; `cycles` over `total` steps).
    pub fn from_name(name: &str, warmup: u64, cycles: u64, total: u64) -> Result<Self> {
        let need_warmup = |s: KlSchedule| {
            if warmup == 0 {
                Err(Error::arg("kl_warmup", format!("the {name} schedule needs a warm-up of at least one step")))
            } else {
                Ok(s)
            }
        };
        match name {
            "constant" => Ok(KlSchedule::Constant),
            "linear" => need_warmup(KlSchedule::Linear { warmup }),
            "sigmoid" => need_warmup(KlSchedule::Sigmoid { warmup }),
            "cyclical" if cycles == 0 => Err(Error::arg("kl_cycles", "the cyclical schedule needs at least one cycle")),
            "cyclical" => Ok(KlSchedule::Cyclical { cycles, total: total.max(1) }),
            _ => Err(Error::arg("kl_schedule", format!("`{name}` is not one of: constant, linear, sigmoid, cyclical"))),
        }
    }

    /// w(step), the KL multiplier for the step about to be taken (0-based).
    pub fn weight(&self, step: u64) -> f64 {
        match *self {
            KlSchedule::Constant => 1.0,
            KlSchedule::Linear { warmup } => (step as f64 / warmup as f64).min(1.0),
            KlSchedule::Sigmoid { warmup } => 1.0 / (1.0 + (-10.0 * (step as f64 / warmup as f64 - 0.5)).exp()),
            KlSchedule::Cyclical { cycles, total } => {
                let period = (total as f64 / cycles as f64).max(1.0);
                let phase = (step as f64 % period) / period;
                (2.0 * phase).min(1.0)
            }
        }
    }

    /// Short description for logs (`linear over 500 steps`).
    pub fn describe(&self) -> String {
        match self {
            KlSchedule::Constant => "constant".into(),
            KlSchedule::Linear { warmup } => format!("linear over {warmup} steps"),
            KlSchedule::Sigmoid { warmup } => format!("sigmoid over {warmup} steps"),
            KlSchedule::Cyclical { cycles, total } => format!("cyclical, {cycles} cycles over {total} steps"),
        }
    }
}

impl std::fmt::Display for KlSchedule {
    /// `constant`, `linear:WARMUP`, `sigmoid:WARMUP` or `cyclical:CYCLES/TOTAL` (what `FromStr` reads).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KlSchedule::Constant => f.write_str("constant"),
            KlSchedule::Linear { warmup } => write!(f, "linear:{warmup}"),
            KlSchedule::Sigmoid { warmup } => write!(f, "sigmoid:{warmup}"),
            KlSchedule::Cyclical { cycles, total } => write!(f, "cyclical:{cycles}/{total}"),
        }
    }
}

impl std::str::FromStr for KlSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::arg("kl_schedule", format!("`{s}` is not constant, linear:STEPS, sigmoid:STEPS or cyclical:N/TOTAL"))
        };
        let num = |v: &str| v.parse::<u64>().map_err(|_| bad());
        match s.split_once(':') {
            None => Self::from_name(s, 0, 0, 0),
            Some(("cyclical", ct)) => {
                let (c, t) = ct.split_once('/').ok_or_else(bad)?;
                Self::from_name("cyclical", 0, num(c)?, num(t)?)
            }
            Some((name @ ("linear" | "sigmoid"), w)) => Self::from_name(name, num(w)?, 0, 0),
            Some(_) => Err(bad()),
        }
    }
}

crate::string_serde!(KlSchedule);

/// The whole objective: recon_scale·Σrecon + kl_scale·Σ KL (or the free-bits KL).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Objective {
    /// β of the β-VAE.
    pub beta: f32,
    /// Reduction of the two terms.
    pub reduction: Reduction,
    /// KL annealing.
    pub schedule: KlSchedule,
    /// Free bits λ per latent dimension (nats, batch-averaged; 0 = off).
    pub free_bits: f32,
}

impl Default for Objective {
    fn default() -> Self {
        Objective { beta: 1.0, reduction: Reduction::Sum, schedule: KlSchedule::Constant, free_bits: 0.0 }
    }
}

impl Objective {
    /// Refuses values that make no sense.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::arg("beta", format!("{} is not a non-negative KL weight", self.beta)));
        }
        if !(self.free_bits.is_finite() && self.free_bits >= 0.0) {
            return Err(Error::arg(
                "free_bits",
                format!("{} nats: the floor must be zero or positive", self.free_bits),
            ));
        }
        Ok(())
    }

    /// (recon scale, KL scale) for a batch of `b` examples of `d` inputs and `z` latents at `step`.
    pub fn scales(&self, step: u64, b: usize, d: usize, z: usize) -> (f32, f32) {
        let w = self.beta as f64 * self.schedule.weight(step);
        let (r, k) = match self.reduction {
            Reduction::Sum => (1.0, w),
            Reduction::Mean => (1.0 / (b as f64 * d as f64), w / b as f64),
            Reduction::Normalized => (1.0 / d as f64, w / z as f64),
        };
        (r as f32, k as f32)
    }

    /// The KL weight relative to the sum-reduced ELBO once the schedule is at 1 (see module docs).
    pub fn effective_kl_weight(&self, d: usize, z: usize) -> f64 {
        let b = self.beta as f64;
        match self.reduction {
            Reduction::Sum => b,
            Reduction::Mean => b * d as f64,
            Reduction::Normalized => b * d as f64 / z as f64,
        }
    }

    /// The KL multiplier β·w(step) at `step` (logged per epoch).
    pub fn kl_weight(&self, step: u64) -> f64 {
        self.beta as f64 * self.schedule.weight(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_at_chosen_steps() {
        let lin = KlSchedule::Linear { warmup: 100 };
        assert_eq!([lin.weight(0), lin.weight(50), lin.weight(100), lin.weight(1000)], [0.0, 0.5, 1.0, 1.0]);
        let sig = KlSchedule::Sigmoid { warmup: 100 };
        assert!((sig.weight(50) - 0.5).abs() < 1e-12);
        assert!(sig.weight(0) < 0.01 && sig.weight(100) > 0.99);
        assert!((sig.weight(25) - 1.0 / (1.0 + 2.5f64.exp())).abs() < 1e-12);
        let cyc = KlSchedule::Cyclical { cycles: 4, total: 400 };
        let w: Vec<f64> = [0, 25, 50, 99, 100, 125, 399].iter().map(|&s| cyc.weight(s)).collect();
        assert_eq!(w, [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0]);
        assert_eq!(KlSchedule::Constant.weight(7), 1.0);
    }

    #[test]
    fn reductions_set_the_effective_kl_weight() {
        let mut o = Objective { beta: 2.0, ..Default::default() };
        assert_eq!(o.effective_kl_weight(784, 20), 2.0);
        let (r, k) = o.scales(0, 128, 784, 20);
        assert_eq!((r, k), (1.0, 2.0));
        o.reduction = Reduction::Mean;
        assert_eq!(o.effective_kl_weight(784, 20), 1568.0);
        let (r, k) = o.scales(0, 128, 784, 20);
        assert!(((k / r) as f64 - 1568.0).abs() < 1e-3, "KL/recon scale ratio is the effective weight");
        o.reduction = Reduction::Normalized;
        let (r, k) = o.scales(0, 128, 784, 20);
        assert!(((k / r) as f64 - 78.4).abs() < 1e-4);
        assert_eq!(o.effective_kl_weight(784, 20), 78.4);
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        assert!(KlSchedule::from_name("linear", 0, 0, 10).is_err());
        assert!(KlSchedule::from_name("cyclical", 0, 0, 10).is_err());
        assert!(KlSchedule::from_name("cosine", 10, 1, 10).is_err());
        assert!("avg".parse::<Reduction>().is_err());
        for s in [
            KlSchedule::Constant,
            KlSchedule::Linear { warmup: 7 },
            KlSchedule::Sigmoid { warmup: 9 },
            KlSchedule::Cyclical { cycles: 3, total: 99 },
        ] {
            assert_eq!(s.to_string().parse::<KlSchedule>().unwrap(), s);
        }
        assert!(Objective { free_bits: -0.5, ..Default::default() }.validate().is_err());
        assert!(Objective { beta: -1.0, ..Default::default() }.validate().is_err());
    }
}
