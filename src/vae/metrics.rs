//! Judging a trained VAE's latent space on the CPU: which units are used (active units), how much
//! information each dimension carries about its input (KL per dimension), and how disentangled the
//! code is with respect to known generative factors (Mutual Information Gap).
//!
//! Everything here is a pure function of host slices (row-major `f32`, one row per example) and
//! computes in `f64`. Read the latents back from the GPU first (posterior means and log-variances
//! of a fixed evaluation set). Bad shapes, non-finite values and out-of-range factor values are
//! reported as [`Error::InvalidArgument`]; nothing here panics on user input.
//!
//! References:
//! * Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
//!   (active units, their §5.2).
//! * R. T. Q. Chen, X. Li, R. Grosse, D. Duvenaud, "Isolating Sources of Disentanglement in
//!   Variational Autoencoders", NeurIPS 2018 (Mutual Information Gap).
//! * F. Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
//!   Disentangled Representations", ICML 2019, and its `disentanglement_lib` (the discretised MIG
//!   estimator implemented here).

use crate::error::{Error, Result};

/// The result of [`active_units`].
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveUnits {
    /// Number of latent units whose activity `variances[u]` exceeds the threshold.
    pub count: usize,
    /// Per latent unit u, the activity A_u = Var_x(E_q\[z_u | x\]): the population variance (divide
    /// by n) over the examples of the posterior mean `mu[:, u]`.
    pub variances: Vec<f64>,
}

/// The result of [`mutual_information_gap`].
#[derive(Clone, Debug, PartialEq)]
pub struct Mig {
    /// The Mutual Information Gap: the mean of `per_factor` over the factors with H(v_k) > 0.
    /// In \[0, 1\]; 1 means each factor is captured by exactly one latent dimension.
    pub mig: f64,
    /// Per factor k, the normalised gap (I(v_k; z_(1)) − I(v_k; z_(2))) / H(v_k) between the
    /// latent dimensions with the largest and second-largest mutual information with v_k (with a
    /// single latent dimension: I(v_k; z_(1)) / H(v_k)). 0 for a factor that takes a single value
    /// in the data (zero entropy), which is left out of `mig`.
    pub per_factor: Vec<f64>,
    /// I(v_k; z_j) in nats, indexed `[factor k][latent j]`, estimated from the joint histogram of
    /// the factor's values and the discretised latent.
    pub mutual_information: Vec<Vec<f64>>,
    /// H(v_k) in nats, the entropy of each factor's empirical distribution.
    pub factor_entropy: Vec<f64>,
}

/// Checks `n > 0`, `z > 0`, `len == n·z` and that every value is finite.
fn check_matrix(name: &str, data: &[f32], n: usize, z: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::arg("n", format!("the number of examples must be at least 1 (for `{name}`)")));
    }
    if z == 0 {
        return Err(Error::arg("z", format!("the number of latent dimensions must be at least 1 (for `{name}`)")));
    }
    let expected = n.checked_mul(z).ok_or_else(|| Error::arg("n", format!("n·z = {n}·{z} overflows usize")))?;
    if data.len() != expected {
        return Err(Error::arg(
            name,
            format!("has {} values but n·z = {n}·{z} = {expected} were expected (row-major [n, z])", data.len()),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(
            name,
            format!("value {} at example {}, dimension {} is not finite", data[i], i / z, i % z),
        ));
    }
    Ok(())
}

/// Counts the *active units* of a VAE (Burda et al. 2016, §5.2).
///
/// `mu` is the `[n, z]` row-major matrix of posterior means E_q\[z | x_i\] over n examples. The
/// activity of unit u is A_u = Cov_x(E_q\[z_u | x\]) = (1/n) Σ_i (mu\[i, u\] − mean_u)², the population
/// variance of column u, computed with a two-pass algorithm (mean first, then centred squares) so
/// that a large common offset does not cancel the variance away. A unit is active when
/// A_u > `threshold` (strictly; the paper uses 0.01). Inactive units have collapsed to the prior:
/// their posterior does not depend on the input.
///
/// Errors: `n == 0`, `z == 0`, `mu.len() != n·z`, a non-finite value, or a NaN threshold.
pub fn active_units(mu: &[f32], n: usize, z: usize, threshold: f64) -> Result<ActiveUnits> {
    check_matrix("mu", mu, n, z)?;
    if threshold.is_nan() {
        return Err(Error::arg("threshold", "must be a number (the paper uses 0.01)"));
    }
    let mut mean = vec![0.0f64; z];
    for row in mu.chunks_exact(z) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    let mut variances = vec![0.0f64; z];
    for row in mu.chunks_exact(z) {
        for ((s, &m), &v) in variances.iter_mut().zip(&mean).zip(row) {
            let d = v as f64 - m;
            *s += d * d;
        }
    }
    for s in &mut variances {
        *s /= n as f64;
    }
    let count = variances.iter().filter(|&&a| a > threshold).count();
    Ok(ActiveUnits { count, variances })
}

/// KL(q(z_j | x) || N(0, 1)) per latent dimension j, averaged over the examples, in nats.
///
/// For a diagonal Gaussian posterior q(z | x_i) = N(mu_i, diag(exp(logvar_i))):
/// KL_j = (1/n) Σ_i ½ (mu\[i, j\]² + exp(logvar\[i, j\]) − 1 − logvar\[i, j\]).
/// The sum over j is the KL term of the negative ELBO; dimensions with KL_j ≈ 0 carry no
/// information about the input (posterior collapse). `mu` and `logvar` are `[n, z]` row-major.
///
/// Errors: `n == 0`, `z == 0`, a length other than n·z, or a non-finite value.
pub fn kl_per_dim(mu: &[f32], logvar: &[f32], n: usize, z: usize) -> Result<Vec<f64>> {
    check_matrix("mu", mu, n, z)?;
    check_matrix("logvar", logvar, n, z)?;
    let mut kl = vec![0.0f64; z];
    for (mrow, lrow) in mu.chunks_exact(z).zip(logvar.chunks_exact(z)) {
        for ((k, &m), &lv) in kl.iter_mut().zip(mrow).zip(lrow) {
            let (m, lv) = (m as f64, lv as f64);
            *k += 0.5 * (m * m + lv.exp() - 1.0 - lv);
        }
    }
    for k in &mut kl {
        *k /= n as f64;
    }
    Ok(kl)
}

/// Entropy in nats of the distribution given by `counts` over `n` samples (zero counts skipped).
fn entropy_of_counts(counts: impl IntoIterator<Item = usize>, n: usize) -> f64 {
    let nf = n as f64;
    // `0.0 - sum` rather than `-sum`: a single-valued distribution gets +0, not -0.
    0.0 - counts
        .into_iter()
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / nf;
            p * p.ln()
        })
        .sum::<f64>()
}

/// Run lengths of equal neighbours in a sorted slice.
fn run_lengths<T: PartialEq>(sorted: &[T]) -> impl Iterator<Item = usize> + '_ {
    sorted.chunk_by(|a, b| a == b).map(|run| run.len())
}

/// Equal-width discretisation of column `j` of `codes` into `bins` bins over the column's own
/// \[min, max\] (the last bin closed, like `np.histogram`); a constant column lands in bin 0.
fn discretise(codes: &[f32], z: usize, j: usize, bins: usize) -> Vec<usize> {
    let col = || codes.iter().skip(j).step_by(z).map(|&v| v as f64);
    let (lo, hi) = col().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let width = hi - lo;
    if width <= 0.0 {
        return vec![0; codes.len() / z];
    }
    let last = bins - 1;
    col()
        .map(|v| {
            let b = ((v - lo) / width * bins as f64).floor();
            // `as usize` saturates; the clamp puts the maximum into the last bin.
            (b.max(0.0) as usize).min(last)
        })
        .collect()
}

/// The Mutual Information Gap (Chen et al. 2018) with the discretised estimator of
/// `disentanglement_lib` (Locatello et al. 2019).
///
/// * `codes` — `[n, z]` row-major latent codes, usually the posterior means.
/// * `factors[i]` — the ground-truth factor values v of example i, one per factor, each
///   `factors[i][k] < factor_sizes[k]`.
/// * `bins` — number of equal-width bins per latent dimension (`disentanglement_lib` uses 20).
///
/// Each latent dimension z_j is discretised into `bins` equal-width bins over its own
/// \[min, max\] (a constant dimension puts every example into one bin). With empirical
/// probabilities from counts over the n examples,
///
/// I(v_k; z_j) = Σ_{a,b} p(v_k = a, z_j = b) ln[p(v_k = a, z_j = b) / (p(v_k = a) p(z_j = b))]
///             = H(v_k) + H(z_j) − H(v_k, z_j),
///
/// H(v_k) = −Σ_a p(v_k = a) ln p(v_k = a), all in nats. For each factor, with the mutual
/// informations sorted as I_(1) ≥ I_(2) ≥ …, the normalised gap is (I_(1) − I_(2)) / H(v_k)
/// (I_(1) / H(v_k) when z = 1), and
///
/// MIG = (1/K') Σ_k (I(v_k; z_(1)) − I(v_k; z_(2))) / H(v_k)
///
/// over the K' factors with H(v_k) > 0. A factor that takes a single value in the data has no
/// entropy to explain: its gap is reported as 0 and it is left out of the mean. MIG is
/// invariant to permutations and to strictly monotone rescalings of the latent dimensions. The
/// plug-in estimator is biased upwards by about (bins − 1)(|v_k| − 1) / (2n) nats per pair, so
/// use n well above bins·|v_k| (thousands of examples).
///
/// Errors ([`Error::InvalidArgument`]): `n == 0`, `z == 0`, `bins == 0`, `codes.len() != n·z`,
/// a non-finite code, no factors, `factors.len() != n`, a row of the wrong length, a factor size
/// of 0, a factor value `>= factor_sizes[k]`, or every factor constant (MIG undefined).
pub fn mutual_information_gap(
    codes: &[f32],
    n: usize,
    z: usize,
    factors: &[Vec<u8>],
    factor_sizes: &[usize],
    bins: usize,
) -> Result<Mig> {
    check_matrix("codes", codes, n, z)?;
    if bins == 0 {
        return Err(Error::arg("bins", "must be at least 1 (disentanglement_lib uses 20)"));
    }
    let k_count = factor_sizes.len();
    if k_count == 0 {
        return Err(Error::arg("factor_sizes", "needs at least one factor"));
    }
    if let Some(k) = factor_sizes.iter().position(|&s| s == 0) {
        return Err(Error::arg(
            "factor_sizes",
            format!("factor {k} has size 0; every factor needs at least one value"),
        ));
    }
    if factors.len() != n {
        return Err(Error::arg("factors", format!("has {} rows but n = {n} examples were given", factors.len())));
    }
    for (i, row) in factors.iter().enumerate() {
        if row.len() != k_count {
            return Err(Error::arg(
                "factors",
                format!("row {i} has {} values but factor_sizes has {k_count} factors", row.len()),
            ));
        }
        for (k, (&v, &size)) in row.iter().zip(factor_sizes).enumerate() {
            if v as usize >= size {
                return Err(Error::arg(
                    "factors",
                    format!(
                        "example {i}, factor {k} has value {v} but factor_sizes[{k}] = {size} (values must be < size)"
                    ),
                ));
            }
        }
    }

    let labels: Vec<Vec<usize>> = (0..z).map(|j| discretise(codes, z, j, bins)).collect();
    let latent_entropy: Vec<f64> = labels
        .iter()
        .map(|l| {
            let mut sorted = l.clone();
            sorted.sort_unstable();
            entropy_of_counts(run_lengths(&sorted), n)
        })
        .collect();

    let mut factor_entropy = Vec::with_capacity(k_count);
    let mut mutual_information = Vec::with_capacity(k_count);
    let mut joint: Vec<(usize, u8)> = Vec::with_capacity(n);
    for (k, &size) in factor_sizes.iter().enumerate() {
        let mut counts = vec![0usize; size];
        for row in factors {
            counts[row[k] as usize] += 1;
        }
        let h_v = entropy_of_counts(counts, n);
        factor_entropy.push(h_v);
        let mi_row: Vec<f64> = labels
            .iter()
            .zip(&latent_entropy)
            .map(|(l, &h_z)| {
                joint.clear();
                joint.extend(l.iter().zip(factors).map(|(&b, row)| (b, row[k])));
                joint.sort_unstable();
                let h_joint = entropy_of_counts(run_lengths(&joint), n);
                // Rounding can leave a tiny negative value for independent variables.
                (h_v + h_z - h_joint).max(0.0)
            })
            .collect();
        mutual_information.push(mi_row);
    }

    let per_factor: Vec<f64> = mutual_information
        .iter()
        .zip(&factor_entropy)
        .map(|(mi, &h)| {
            if h <= 0.0 {
                return 0.0;
            }
            let mut sorted = mi.clone();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let second = sorted.get(1).copied().unwrap_or(0.0);
            (sorted[0] - second) / h
        })
        .collect();
    let informative: Vec<f64> =
        per_factor.iter().zip(&factor_entropy).filter(|&(_, &h)| h > 0.0).map(|(&g, _)| g).collect();
    if informative.is_empty() {
        return Err(Error::arg(
            "factors",
            "every factor takes a single value in these examples (zero entropy), so MIG is undefined; \
             use examples in which the factors vary",
        ));
    }
    let mig = informative.iter().sum::<f64>() / informative.len() as f64;
    Ok(Mig { mig, per_factor, mutual_information, factor_entropy })
}
